/* fd_cmd_bench.c: `flashdrift bench`: throughput of cuda-flash, cuda-flash-sm90 (the Hopper
 * kernel; skipped on other GPUs) and cuda-standard.
 *
 * flashdrift bench [--csv FILE] [--repeats N] [--max-n N] [--backward] [--only LIST]
 *                  [--n LIST] [--d LIST] [--dtype LIST] [--causal LIST]
 * Kernels: cuda-flash (key tile 64), cuda-flash-bc128 (key tile 128, FlashAttention-2's own
 * at head dims 33..64 without dropout; timed at those head dims only), cuda-flash-sm90 (key
 * tile 64), cuda-flash-sm90-bc128 (key tile 128), cuda-standard; with --backward cuda-flash-bwd, -bwd-det, cuda-standard-bwd; --only LIST
 * (comma-separated) times those alone.
 * --backward adds the backward pass of each (cuda-flash-bwd: dQ by atomicAdd; -bwd-det:
 * the deterministic dQ, skipped where its per-key-tile buffers do not fit; counted as 2.5x
 * the forward's FLOPs, as FlashAttention's benchmarks count the backward).
 * Shapes: B = 4, H = 16, N in {1024, 4096, 16384} (up to --max-n), d in {64, 128}, fp16
 * and bf16, causal (top-left, seqlen_q = seqlen_k) and not; --n, --d, --dtype and --causal
 * replace those lists (one shape for a profiler, say). Inputs N(0,1) rounded to the
 * dtype; CUDA events around the kernels only (no transfers), one warm-up, median of the
 * repeats (3 for cuda-standard at N = 16384: its N^2 scores make it slow). FLOPs counted
 * as 4 B H N^2 d, halved when causal, as FlashAttention's benchmarks count them.
 * scripts/bench_torch.py times PyTorch's flash SDPA on the same shapes; docs/benchmarks.md
 * holds measured tables. Exit 2 where the CUDA backends are not built or no GPU is present. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_bwd.h"
#include "fd_cmds.h"
#include "fd_dtype.h"
#include "fd_opt.h"
#include "fd_philox.h"
#include "fd_out.h"
#include "fd_run.h"
#include "fd_signal.h"
#ifdef FD_HAVE_CUDA
#include "fd_cuda.h"
#endif

/* a comma-separated list of integers in [lo, hi] into v[0..*nv) (at most max); 0, or a usage
 * error naming the option and what was expected */
static int int_list(const char *opt, const char *arg, long lo, long hi, int *v, int *nv, int max)
{
    *nv = 0;
    for (const char *x = arg;;) {
        char *end;
        const long k = strtol(x, &end, 10);
        if (end == x || (*end && *end != ',') || k < lo || k > hi || *nv == max)
            return fd_usage_error("bench", "--%s expects at most %d comma-separated integers in [%ld, %ld], got '%.64s'",
                                  opt, max, lo, hi, arg);
        v[(*nv)++] = (int)k;
        if (!*end) return 0;
        x = end + 1;
    }
}

int fd_cmd_bench(int argc, char **argv)
{
    const char *csv = NULL;
    int reps = 10, maxn = 16384, bwd = 0, maxn_set = 0, n_set = 0;
    /* the timed kernels, in order; --only picks some */
    enum { K_FLASH, K_FLASH128, K_SM90, K_SM90_128, K_STD, K_BWD, K_BWD_DET, K_STD_BWD, NB, FWD = K_BWD };
    static const char *const names[NB] = {"cuda-flash", "cuda-flash-bc128", "cuda-flash-sm90", "cuda-flash-sm90-bc128",
                                          "cuda-standard", "cuda-flash-bwd", "cuda-flash-bwd-det", "cuda-standard-bwd"};
    int pick[NB];
    for (int t = 0; t < NB; t++) pick[t] = 1;
    /* the shapes: N, d, dtype (0 fp16, 1 bf16) and causal lists; --n/--d/--dtype/--causal replace them */
    int Ns[8] = {1024, 4096, 16384}, nN = 3, ds[8] = {64, 128}, nd = 2, dts[2] = {0, 1}, ndt = 2, cs[2] = {0, 1}, nc = 2;
    enum { OPT_CSV = FD_OPT_CMD, OPT_REPEATS, OPT_MAXN, OPT_BWD, OPT_ONLY, OPT_N, OPT_D, OPT_DTYPE, OPT_CAUSAL };
    static const struct option lo[] = {{"csv", required_argument, NULL, OPT_CSV},
                                       {"n", required_argument, NULL, OPT_N},
                                       {"d", required_argument, NULL, OPT_D},
                                       {"dtype", required_argument, NULL, OPT_DTYPE},
                                       {"causal", required_argument, NULL, OPT_CAUSAL},
                                       {"only", required_argument, NULL, OPT_ONLY},
                                       {"backward", no_argument, NULL, OPT_BWD},
                                       {"repeats", required_argument, NULL, OPT_REPEATS},
                                       {"max-n", required_argument, NULL, OPT_MAXN},
                                       {NULL, 0, NULL, 0}};
    for (int a = 0; a < argc; a++)
        if (!strcmp(argv[a], "--reference")) return fd_bench_reference(argc, argv);
    fd_getopt g;
    if (fd_getopt_init(&g, "bench", argc, argv, lo, NULL)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        if (c == FD_OPT_HELP) return FD_EXIT_PASS;
        if (c == FD_OPT_ERROR) return FD_EXIT_USAGE;
        if (c == FD_OPT_POSITIONAL) return fd_usage_error("bench", "unexpected argument %s", g.arg);
        if (c == OPT_CSV) {
            csv = g.arg;
            continue;
        }
        if (c == OPT_BWD) {
            bwd = 1;
            continue;
        }
        if (c == OPT_ONLY) { /* comma-separated names of the list above */
            for (int t = 0; t < NB; t++) pick[t] = 0;
            for (const char *x = g.arg; *x;) {
                const size_t n = strcspn(x, ",");
                int hit = 0;
                for (int t = 0; t < NB; t++)
                    if (strlen(names[t]) == n && !strncmp(names[t], x, n)) hit = pick[t] = 1;
                if (!hit)
                    return fd_usage_error("bench", "--only: unknown kernel '%.*s' (expected a comma-separated list of "
                                          "cuda-flash, cuda-flash-bc128, cuda-flash-sm90, cuda-flash-sm90-bc128, cuda-standard, "
                                          "cuda-flash-bwd, cuda-flash-bwd-det, cuda-standard-bwd)", (int)(n > 64 ? 64 : n), x);
                x += n + (x[n] == ',');
            }
            continue;
        }
        if (c == OPT_N) n_set = 1;
        if (c == OPT_N || c == OPT_D || c == OPT_CAUSAL) {
            if (c == OPT_N ? int_list("n", g.arg, 1, 1 << 20, Ns, &nN, 8)
                           : c == OPT_D ? int_list("d", g.arg, 1, 256, ds, &nd, 8) : int_list("causal", g.arg, 0, 1, cs, &nc, 2))
                return FD_EXIT_USAGE;
            continue;
        }
        if (c == OPT_DTYPE) { /* fp16, bf16 or both */
            ndt = 0;
            for (const char *x = g.arg; *x;) {
                const size_t n = strcspn(x, ",");
                const int k = n == 4 && !strncmp(x, "fp16", 4) ? 0 : n == 4 && !strncmp(x, "bf16", 4) ? 1 : -1;
                if (k < 0 || ndt == 2)
                    return fd_usage_error("bench", "--dtype expects fp16, bf16 or fp16,bf16, got '%.64s'", g.arg);
                dts[ndt++] = k;
                x += n + (x[n] == ',');
            }
            if (!ndt) return fd_usage_error("bench", "--dtype expects fp16, bf16 or fp16,bf16, got ''");
            continue;
        }
        char *end;
        long v = strtol(g.arg, &end, 10);
        if (!*g.arg || *end || v < 1 || v > 1000000)
            return fd_usage_error("bench", "--%s expects a positive integer, got '%s'", c == OPT_REPEATS ? "repeats" : "max-n", g.arg);
        if (c == OPT_REPEATS) reps = (int)v;
        else maxn = (int)v, maxn_set = 1;
    }
    /* lengths asked for by --n run whatever --max-n's default says; an explicit --max-n
     * still caps them */
    if (n_set && !maxn_set) maxn = 1 << 20;
#ifndef FD_HAVE_CUDA
    (void)csv; (void)reps; (void)maxn; (void)bwd; (void)Ns; (void)ds; (void)dts; (void)cs;
    fprintf(stderr, "flashdrift: bench times the CUDA backends; this build has none (no nvcc at build time)\n");
    return FD_EXIT_USAGE;
#else
    if (!fd_gpu_present()) {
        fprintf(stderr, "flashdrift: bench: no CUDA GPU is visible\n");
        return FD_EXIT_USAGE;
    }
    char name[256] = "?";
    fd_gpu_describe(name, sizeof name);
    /* the CSV is built in memory and written atomically at the end (fd_doc) */
    char derr[1024];
    fd_doc doc = {NULL, NULL, 0, NULL};
    if (csv && fd_doc_open(&doc, csv, derr, sizeof derr)) {
        fprintf(stderr, "flashdrift: %s\n", derr);
        return FD_EXIT_INTERNAL;
    }
    FILE *f = doc.f;
    if (f) fprintf(f, "# %s\nbackend,dtype,B,H,N,d,causal,ms_median,ms_min,tflops\n", name);
    printf("device: %s\n%-14s %-5s %6s %4s %6s %10s %8s\n", name, "backend", "dtype", "N", "d", "causal", "ms", "TFLOP/s");
    const int B = 4, H = 16;
    int fails = 0, rows = 0;
    /* SIGINT/SIGTERM (a CI step's timeout): stop after the kernel running, keep the rows */
    fd_signals_catch();
    for (int ni = 0; ni < nN && !fd_interrupted; ni++) {
        const int N = Ns[ni];
        if (N > maxn) continue;
        for (int di = 0; di < nd && !fd_interrupted; di++) {
            const int d = ds[di];
            const size_t n = (size_t)B * (size_t)N * (size_t)H * (size_t)d;
            float *x[3], *o = malloc(n * sizeof(float)), *l = malloc((size_t)B * (size_t)H * (size_t)N * sizeof(float));
            float *gr[4] = {NULL, NULL, NULL, NULL}; /* dO, dQ, dK, dV */
            int oom = 0;
            for (int t = 0; t < 4 && bwd; t++) oom |= !(gr[t] = malloc(n * sizeof(float)));
            for (int t = 0; t < 3; t++) x[t] = malloc(n * sizeof(float));
            if (oom || !o || !l || !x[0] || !x[1] || !x[2]) {
                fprintf(stderr, "flashdrift: bench: out of host memory for N=%d d=%d\n", N, d);
                if (f) fd_doc_discard(&doc);
                return FD_EXIT_INTERNAL;
            }
            for (int dti = 0; dti < ndt && !fd_interrupted; dti++) {
                const fd_dtype t = dts[dti] ? FD_DT_BF16 : FD_DT_FP16;
                /* element e from its own Philox counter: the same bits on any number of threads
                 * (OpenMP: N = 16384, d = 256 draws 805 M values a dtype) */
                for (int a = 0; a < 3 + bwd; a++) {
                    float *dst = a < 3 ? x[a] : gr[0];
#pragma omp parallel for schedule(static)
                    for (size_t e = 0; e < n; e++) {
                        fd_u32x4 c = {{(uint32_t)e, (uint32_t)(e >> 32), (uint32_t)a, 7u}};
                        fd_u32x4 r = fd_philox4x32(c, 2026u, 11u, 10);
                        double u1 = ((double)(r.v[0] >> 8) + 1.0) / 16777217.0, u2 = (double)(r.v[1] >> 8) / 16777216.0;
                        dst[e] = fd_round_to_dtype((float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)), t);
                    }
                }
                for (int ci = 0; ci < nc && !fd_interrupted; ci++) {
                    const int causal = cs[ci];
                    fd_problem p;
                    memset(&p, 0, sizeof p);
                    p.batch = B; p.heads = H; p.kv_heads = H; p.seqlen_q = N; p.seqlen_k = N; p.head_dim = d;
                    p.dtype = t;
                    p.mask = causal ? FD_MASK_CAUSAL_TL : FD_MASK_NONE;
                    p.softmax_scale = (float)(1.0 / sqrt((double)d));
                    const double flops = 4.0 * B * H * (double)N * N * d * (causal ? 0.5 : 1.0);
                    /* forward flash, forward standard; then (--backward) flash atomic, flash
                     * deterministic and standard backward, from the flash forward's O and LSE */
                    int have_fwd = 0; /* the flash forward's O and LSE, read by the backward */
                    for (int be = 0; be < (bwd ? NB : FWD) && !fd_interrupted; be++) {
                        if (!pick[be]) continue;
                        char err[512] = "";
                        fd_cuda_timing tm = {0, 0, 0};
                        int rc;
                        const char *bn = names[be];
                        fd_cuda_cfg cfg;
                        fd_cuda_cfg_default(&cfg);
                        cfg.repeats = reps;
                        fd_bwd_cfg bc;
                        fd_bwd_cfg_default(&bc);
                        /* cuda-flash's key tile 128 exists at padded head dim 64 only */
                        if (be == K_FLASH128 && !(d > 32 && d <= 64)) continue;
                        const int sm90 = be == K_SM90 || be == K_SM90_128;
                        bc.dq_mode = be == K_BWD_DET ? FD_DQ_DETERMINISTIC : FD_DQ_ATOMIC;
                        cfg.impl = sm90 ? FD_CUDA_IMPL_WGMMA : FD_CUDA_IMPL_MMA;
                        if (be == K_SM90_128 || be == K_FLASH128) cfg.bc = 128;
                        if (be >= FWD && !have_fwd) { /* the backward reads the flash forward's O and LSE */
                            cfg.repeats = 0;
                            if (fd_cuda_flash_forward(&p, &cfg, x[0], x[1], x[2], o, l, NULL, NULL, err, sizeof err)) {
                                printf("%s %s N=%d d=%d: the forward for the backward: %s\n", bn, fd_dtype_name(t), N, d, err);
                                fails++;
                                break;
                            }
                            have_fwd = 1;
                            cfg.repeats = reps;
                        }
                        if (be < K_STD) {
                            rc = fd_cuda_flash_forward(&p, &cfg, x[0], x[1], x[2], o, l, NULL, &tm, err, sizeof err);
                            have_fwd = be == K_FLASH && !rc; /* the others' are the same, but O is rewritten below */
                        } else if (be == K_STD) {
                            rc = fd_cuda_standard_forward(&p, N >= 16384 ? 3 : reps, x[0], x[1], x[2], o, l, &tm, err, sizeof err);
                            have_fwd = 0; /* o and l now hold standard attention's */
                        } else if (be < K_STD_BWD) {
                            rc = fd_cuda_flash_backward(&p, &cfg, &bc, x[0], x[1], x[2], o, l, gr[0], gr[1], gr[2], gr[3],
                                                        &tm, err, sizeof err);
                        } else {
                            rc = fd_cuda_standard_backward(&p, N >= 16384 ? 3 : reps, x[0], x[1], x[2], gr[0], gr[1], gr[2],
                                                           gr[3], &tm, err, sizeof err);
                        }
                        const char *dn = fd_dtype_name(t);
                        if (rc) {
                            printf("%s %s N=%d d=%d: %s\n", bn, dn, N, d, err);
                            /* the deterministic dQ's buffers may not fit, the Hopper kernel needs
                             * an sm_90 GPU: limits, not failures */
                            if (be != K_BWD_DET && !(sm90 && strstr(err, "needs an sm_90"))) fails++;
                            continue;
                        }
                        const double tf = (be >= FWD ? 2.5 : 1.0) * flops / ((double)tm.ms_median * 1e-3) / 1e12;
                        printf("%-14s %-5s %6d %4d %6d %10.3f %8.1f\n", bn, dn, N, d, causal, (double)tm.ms_median, tf);
                        if (f) fprintf(f, "%s,%s,%d,%d,%d,%d,%d,%.4f,%.4f,%.2f\n", bn, dn, B, H, N, d, causal,
                                       (double)tm.ms_median, (double)tm.ms_min, tf);
                        rows++;
                        fflush(stdout);
                    }
                }
            }
            for (int t = 0; t < 3; t++) free(x[t]);
            for (int t = 0; t < 4; t++) free(gr[t]);
            free(o); free(l);
        }
    }
    if (f && fd_doc_commit(&doc, derr, sizeof derr)) {
        fprintf(stderr, "flashdrift: %s\n", derr);
        return FD_EXIT_INTERNAL;
    }
    if (fd_interrupted) {
        fprintf(stderr, "flashdrift: bench: interrupted after %d rows%s%s\n", rows, csv ? "; they are in " : "", csv ? csv : "");
        return FD_EXIT_INTERRUPTED;
    }
    return fails ? FD_EXIT_INTERNAL : FD_EXIT_PASS;
#endif
}
