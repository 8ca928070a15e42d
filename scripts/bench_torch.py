#!/usr/bin/env python3
"""Times torch.nn.functional.scaled_dot_product_attention restricted to the flash
backend on the shapes of kernels/cuda/fd_bench.cu: B=4, H=16, N in {1024, 4096, 16384},
d in {64, 128}, fp16/bf16, causal and not. CUDA events, warm-up, median of repeats.
Usage: bench_torch.py [out.csv] [repeats] [maxN]"""
import sys
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench_torch.csv"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    maxn = int(sys.argv[3]) if len(sys.argv) > 3 else 16384
    dev = torch.cuda.get_device_name(0)
    B, H = 4, 16
    rows = []
    print(f"device: {dev}, torch {torch.__version__}, cuda {torch.version.cuda}")
    for N in (1024, 4096, 16384):
        if N > maxn:
            continue
        for d in (64, 128):
            for dt, dn in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
                # SDPA takes [B, H, N, d]; build from [B, N, H, d] as the C kernels store it.
                q = torch.randn(B, N, H, d, device="cuda", dtype=dt).transpose(1, 2)
                k = torch.randn(B, N, H, d, device="cuda", dtype=dt).transpose(1, 2)
                v = torch.randn(B, N, H, d, device="cuda", dtype=dt).transpose(1, 2)
                for causal in (0, 1):
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        for _ in range(3):
                            F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
                        torch.cuda.synchronize()
                        ts = []
                        for _ in range(reps):
                            e0 = torch.cuda.Event(enable_timing=True)
                            e1 = torch.cuda.Event(enable_timing=True)
                            e0.record()
                            F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))
                            e1.record()
                            e1.synchronize()
                            ts.append(e0.elapsed_time(e1))
                    ts.sort()
                    med = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
                    flops = 4.0 * B * H * N * N * d * (0.5 if causal else 1.0)
                    tf = flops / (med * 1e-3) / 1e12
                    rows.append(("torch-flash", dn, B, H, N, d, causal, med, ts[0], tf))
                    print(f"{'torch-flash':14s} {dn:5s} {N:6d} {d:4d} {causal:6d} {med:10.3f} {tf:8.1f}", flush=True)
    with open(out, "w") as f:
        f.write(f"# {dev}, torch {torch.__version__}\n")
        f.write("backend,dtype,B,H,N,d,causal,ms_median,ms_min,tflops\n")
        for r in rows:
            f.write("%s,%s,%d,%d,%d,%d,%d,%.4f,%.4f,%.2f\n" % r)


if __name__ == "__main__":
    main()
