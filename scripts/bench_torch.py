#!/usr/bin/env python3
"""Times torch.nn.functional.scaled_dot_product_attention restricted to the flash
backend (FlashAttention-2's kernels) and, in the same run, to the cuDNN backend (rows
"torch-cudnn"; skipped with a message where PyTorch refuses it) on the shapes of kernels/cuda/fd_bench.cu: B=4, H=16, N in {1024, 4096, 16384},
d in {64, 128}, fp16/bf16, causal and not. CUDA events, warm-up, median of repeats.
With --backward also the backward pass (torch.autograd.grad of the flash SDPA output
for a given dO, the forward not timed), counted as 2.5x the forward's FLOPs as
`flashdrift bench --backward` counts it.
Usage: bench_torch.py [--backward] [out.csv] [repeats] [maxN]"""
import sys
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend


def timed(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1))
    ts.sort()
    med = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
    return med, ts[0]


def main():
    args = [a for a in sys.argv[1:] if a != "--backward"]
    backward = len(args) != len(sys.argv) - 1
    out = args[0] if len(args) > 0 else "bench_torch.csv"
    reps = int(args[1]) if len(args) > 1 else 10
    maxn = int(args[2]) if len(args) > 2 else 16384
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
                        med, t_min = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)), reps)
                    flops = 4.0 * B * H * N * N * d * (0.5 if causal else 1.0)
                    tf = flops / (med * 1e-3) / 1e12
                    rows.append(("torch-flash", dn, B, H, N, d, causal, med, t_min, tf))
                    print(f"{'torch-flash':14s} {dn:5s} {N:6d} {d:4d} {causal:6d} {med:10.3f} {tf:8.1f}", flush=True)
                    try:
                        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                            med_c, min_c = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)), reps)
                        tf_c = flops / (med_c * 1e-3) / 1e12
                        rows.append(("torch-cudnn", dn, B, H, N, d, causal, med_c, min_c, tf_c))
                        print(f"{'torch-cudnn':14s} {dn:5s} {N:6d} {d:4d} {causal:6d} {med_c:10.3f} {tf_c:8.1f}", flush=True)
                    except RuntimeError as e:  # no cuDNN SDPA for this shape or build
                        print(f"torch-cudnn {dn} {N} {d} {causal}: skipped ({str(e).splitlines()[0][:120]})", flush=True)
                    if backward:
                        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
                        do = torch.randn_like(q)
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            out_t = F.scaled_dot_product_attention(qg, kg, vg, is_causal=bool(causal))
                            med_b, min_b = timed(lambda: torch.autograd.grad(out_t, (qg, kg, vg), do, retain_graph=True), reps)
                        tf_b = 2.5 * flops / (med_b * 1e-3) / 1e12
                        rows.append(("torch-flash-bwd", dn, B, H, N, d, causal, med_b, min_b, tf_b))
                        print(f"{'torch-flash-bwd':14s} {dn:5s} {N:6d} {d:4d} {causal:6d} {med_b:10.3f} {tf_b:8.1f}", flush=True)
                        del qg, kg, vg, do, out_t
    with open(out, "w") as f:
        f.write(f"# {dev}, torch {torch.__version__}\n")
        f.write("backend,dtype,B,H,N,d,causal,ms_median,ms_min,tflops\n")
        for r in rows:
            f.write("%s,%s,%d,%d,%d,%d,%d,%.4f,%.4f,%.2f\n" % r)


if __name__ == "__main__":
    main()
