/* fd_bench.cu: times cuda-flash and cuda-standard (fd_cuda.h) on B=4, H=16,
 * N in {1024, 4096, 16384}, d in {64, 128}, fp16/bf16, causal (top-left, sq = sk) and
 * not; CUDA events around the launches only (no transfers), 1 warm-up, median of
 * `repeats`. FLOPs counted as 4 B H N^2 d (halved with causal), as FA2's benchmarks do.
 * Usage: fd_cuda_bench [out.csv] [repeats] [maxN] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <random>
#include "fd_cuda.h"
#include "fd_dtype.h"

int main(int argc, char **argv)
{
    const char *csv = argc > 1 ? argv[1] : "bench_cuda.csv";
    const int reps = argc > 2 ? atoi(argv[2]) : 10;
    const int maxn = argc > 3 ? atoi(argv[3]) : 16384;
    if (fd_cuda_device_count() <= 0) { printf("no CUDA device\n"); return 0; }
    char name[256];
    fd_cuda_device_name(name, sizeof name);
    FILE *f = fopen(csv, "w");
    if (!f) { perror(csv); return 2; }
    fprintf(f, "# %s\nbackend,dtype,B,H,N,d,causal,ms_median,ms_min,tflops\n", name);
    printf("device: %s\n%-14s %-5s %6s %4s %6s %10s %8s\n", name, "backend", "dtype", "N", "d", "causal", "ms", "TFLOP/s");
    const int B = 4, H = 16;
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    int fails = 0;
    for (int N : {1024, 4096, 16384}) {
        if (N > maxn) continue;
        for (int d : {64, 128}) {
            size_t n = (size_t)B * N * H * d;
            std::vector<float> q(n), k(n), v(n), o(n), l((size_t)B * H * N);
            for (fd_dtype dt : {FD_DT_FP16, FD_DT_BF16}) {
                for (size_t x = 0; x < n; x++) { q[x] = fd_round_to_dtype(nd(rng), dt); k[x] = fd_round_to_dtype(nd(rng), dt); v[x] = fd_round_to_dtype(nd(rng), dt); }
                for (int causal = 0; causal < 2; causal++) {
                    fd_problem p;
                    memset(&p, 0, sizeof p);
                    p.batch = B; p.heads = H; p.kv_heads = H; p.seqlen_q = N; p.seqlen_k = N; p.head_dim = d;
                    p.dtype = dt; p.mask = causal ? FD_MASK_CAUSAL_TL : FD_MASK_NONE;
                    p.softmax_scale = (float)(1.0 / sqrt((double)d));
                    double flops = 4.0 * B * H * (double)N * N * d * (causal ? 0.5 : 1.0);
                    for (int be = 0; be < 2; be++) {
                        char err[512] = "";
                        fd_cuda_timing t = {0, 0, 0};
                        int rc;
                        const char *bn = be == 0 ? "cuda-flash" : "cuda-standard";
                        if (be == 0) {
                            fd_cuda_cfg cfg;
                            fd_cuda_cfg_default(&cfg);
                            cfg.repeats = reps;
                            rc = fd_cuda_flash_forward(&p, &cfg, q.data(), k.data(), v.data(), o.data(), l.data(), nullptr, &t, err, sizeof err);
                        } else {
                            rc = fd_cuda_standard_forward(&p, N >= 16384 ? 3 : reps, q.data(), k.data(), v.data(), o.data(), l.data(), &t, err, sizeof err);
                        }
                        if (rc) { printf("%s %s N=%d d=%d: %s\n", bn, (dt == FD_DT_FP16 ? "fp16" : "bf16"), N, d, err); fails++; continue; }
                        double tf = flops / (t.ms_median * 1e-3) / 1e12;
                        const char *dn = dt == FD_DT_FP16 ? "fp16" : "bf16";
                        printf("%-14s %-5s %6d %4d %6d %10.3f %8.1f\n", bn, dn, N, d, causal, t.ms_median, tf);
                        fprintf(f, "%s,%s,%d,%d,%d,%d,%d,%.4f,%.4f,%.2f\n", bn, dn, B, H, N, d, causal, t.ms_median, t.ms_min, tf);
                        fflush(stdout);
                    }
                }
            }
        }
    }
    fclose(f);
    return fails ? 1 : 0;
}
