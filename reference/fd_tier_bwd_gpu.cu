/* fd_tier_bwd_gpu.cu: the backward binary64 tier on the GPU (contract in fd_tier_cpu.h).
 *
 * The same bounded steps as the CPU tier (reference/fd_tier_bwd.h, compiled for the device
 * with __dmul_rn and friends and --fmad=false), in three launches, by default with a warp
 * per task (below: the sums in the CPU tier's order); FD_TIER_GPU_BWD_SIMPLE=1 selects the
 * simpler thread kernels described here:
 *   1. the statistics (m, L, M) of every row of every (batch, head), a thread per row, keys
 *      evaluated again in each of the three passes (no per-thread key buffer);
 *   2. dQ of each listed (batch, head, query row), a thread per row and block of
 *      FD_TBG_COLS columns (each thread evaluates the row's keys, accumulates its columns);
 *   3. dK and dV of each listed (batch, kv head, key row) over the group's heads and rows, a
 *      thread per key and block of FD_TBG_COLS columns likewise.
 * Every sum runs in the CPU tier's order in both forms; only exp, log and tanh (CUDA's
 * libdevice instead of glibc) may make the two tiers' values differ in the last bits; each is
 * within its own bound of the truth. The thread form keeps its accumulators (3 or 6 x 32
 * doubles) in local memory and repeats the keys' dot products per column block; the warp
 * form has 32 lanes on the pair scalars and the columns in registers (ptxas, sm_90: 96, 128
 * and 168 registers, no local accumulators). Neither has run on a GPU yet (2026-12-03). */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cuda_util.h"
#include "fd_tier_bwd.h"
#include "fd_tier_cpu.h"

#define FD_TBG_THREADS 64
#define FD_TBG_COLS 32 /* columns per thread in launches 2 and 3 */

__global__ void __launch_bounds__(FD_TBG_THREADS)
fd_tier_bwd_stat_kernel(fd_problem p, const float *__restrict__ q, const float *__restrict__ k,
                        const float *__restrict__ v, const float *__restrict__ dout, long nstat,
                        fd_tbw_stat *__restrict__ stat)
{
    const long t = (long)blockIdx.x * FD_TBG_THREADS + (long)threadIdx.x;
    if (t >= nstat) return;
    const int Sq = p.seqlen_q, H = p.heads;
    const int i = (int)(t % Sq), h = (int)((t / Sq) % H), b = (int)(t / Sq / H);
    fd_tb_row w;
    fd_tb_row_init(&w, &p, q, k, v, b, h, i);
    fd_tbw_stat st;
    fd_tbw_row_stat(&w, dout + (w.q - q), (fd_tbw_key *)0, &st);
    stat[t] = st;
}

__global__ void __launch_bounds__(FD_TBG_THREADS)
fd_tier_bwd_dq_kernel(fd_problem p, const float *__restrict__ q, const float *__restrict__ k,
                      const float *__restrict__ v, const float *__restrict__ dout, const int *__restrict__ qrows,
                      int nq, long ntq, const fd_tbw_stat *__restrict__ stat, double r, double dr,
                      double *__restrict__ dq, double *__restrict__ bdq, unsigned char *__restrict__ okq,
                      unsigned long long *__restrict__ ndec)
{
    const int H = p.heads, D = p.head_dim, nc = (D + FD_TBG_COLS - 1) / FD_TBG_COLS;
    const long tc = (long)blockIdx.x * FD_TBG_THREADS + (long)threadIdx.x, t = tc / nc;
    if (t >= ntq) return;
    const int d0 = (int)(tc % nc) * FD_TBG_COLS, d1 = min(D, d0 + FD_TBG_COLS);
    const int x = (int)(t % nq), h = (int)((t / nq) % H), b = (int)(t / nq / H);
    double acc[3 * FD_TBG_COLS];
    fd_tb_row w;
    fd_tb_row_init(&w, &p, q, k, v, b, h, qrows[x]);
    const size_t o = (size_t)t * (size_t)D;
    const int n = fd_tbw_row_dq(&w, dout + (w.q - q), &stat[((long)b * H + h) * p.seqlen_q + qrows[x]],
                                (fd_tbw_key *)0, r, dr, (int)p.dtype, d0, d1, acc, dq + o, bdq + o, okq + o);
    atomicAdd(ndec, (unsigned long long)n);
}

__global__ void __launch_bounds__(FD_TBG_THREADS)
fd_tier_bwd_dkdv_kernel(fd_problem p, const float *__restrict__ q, const float *__restrict__ k,
                        const float *__restrict__ v, const float *__restrict__ dout, const int *__restrict__ krows,
                        int nk, long ntk, const fd_tbw_stat *__restrict__ stat, double r, double dr,
                        double *__restrict__ dk, double *__restrict__ dv, double *__restrict__ bdk,
                        double *__restrict__ bdv, unsigned char *__restrict__ okk, unsigned char *__restrict__ okv,
                        unsigned long long *__restrict__ ndec)
{
    const int H = p.heads, Hk = p.kv_heads, G = H / Hk, D = p.head_dim, nc = (D + FD_TBG_COLS - 1) / FD_TBG_COLS;
    const long tc = (long)blockIdx.x * FD_TBG_THREADS + (long)threadIdx.x, t = tc / nc;
    if (t >= ntk) return;
    const int d0 = (int)(tc % nc) * FD_TBG_COLS, d1 = min(D, d0 + FD_TBG_COLS);
    const int x = (int)(t % nk), hk = (int)((t / nk) % Hk), b = (int)(t / nk / Hk);
    double acc[6 * FD_TBG_COLS];
    const size_t o = (size_t)t * (size_t)D;
    const int n = fd_tbw_key_dkdv(&p, q, k, v, dout, b, hk, krows[x], &stat[((long)b * H + (long)hk * G) * p.seqlen_q],
                                  r, dr, d0, d1, acc, dk + o, dv + o, bdk + o, bdv + o, okk + o, okv + o);
    atomicAdd(ndec, (unsigned long long)n);
}

/* ---- The warp kernels (the default): a warp per task, the lanes split the keys (statistics,
 * dQ) or the rows (dK, dV) for the pair scalars, which are then broadcast by shuffles in key
 * (row) order so that every lane adds them to its columns d = lane + 32 u in the CPU tier's
 * order; L and M are added in key order by every lane alike. So the sums are the CPU tier's,
 * term for term: only CUDA's exp, log and tanh can make the bits differ. */
#define FD_TBW_WARPS 4
#define FD_TBW_NT (FD_TB_HEAD_DIM_MAX / 32)
#define FD_TBW_FULL 0xffffffffu

__global__ void __launch_bounds__(32 * FD_TBW_WARPS)
fd_tier_bwd_stat_warp(fd_problem p, const float *__restrict__ q, const float *__restrict__ k,
                      const float *__restrict__ v, const float *__restrict__ dout, long nstat,
                      fd_tbw_stat *__restrict__ stat)
{
    const int lane = (int)(threadIdx.x & 31u);
    const long t = (long)blockIdx.x * FD_TBW_WARPS + (long)(threadIdx.x >> 5);
    if (t >= nstat) return; /* whole warps leave together */
    const int Sq = p.seqlen_q, H = p.heads;
    const int i = (int)(t % Sq), h = (int)((t / Sq) % H), b = (int)(t / Sq / H);
    fd_tb_row w;
    fd_tb_row_init(&w, &p, q, k, v, b, h, i);
    const float *dorow = dout + (w.q - q);
    fd_tbw_stat st;
    st.lo = w.lo;
    st.hi = w.hi;
    st.n = w.n;
    st.ok = w.n == 0;
    st.m = st.Ln = st.dLn = st.lowL = st.M = st.dM = 0.0;
    if (w.n > 0) {
        /* pass 1: the maximum logit */
        int good = 1;
        double m = -INFINITY;
        for (int j = w.lo + lane; j <= w.hi; j += 32) {
            fd_tbw_key x;
            if (!fd_tbw_key_eval(&w, dorow, j, &x)) good = 0;
            else if (x.s > m) m = x.s;
        }
        for (int off = 16; off > 0; off >>= 1) m = fmax(m, __shfl_xor_sync(FD_TBW_FULL, m, off));
        good = __all_sync(FD_TBW_FULL, good);
        st.m = m;
        /* pass 2: L, the weights added in key order by every lane */
        fd_tb_acc L;
        fd_tb_acc_init(&L);
        for (int c = w.lo; good && c <= w.hi; c += 32) {
            const int j = c + lane, cnt = min(32, w.hi - c + 1);
            double e = 0.0, be = 0.0;
            int ok = 1;
            if (j <= w.hi) {
                fd_tbw_key x;
                ok = fd_tbw_key_eval(&w, dorow, j, &x) && fd_tb_weight(x.s, x.ds, m, &e, &be);
            }
            if (!__all_sync(FD_TBW_FULL, ok)) {
                good = 0;
                break;
            }
            for (int y = 0; y < cnt; y++)
                fd_tb_acc_add(&L, __shfl_sync(FD_TBW_FULL, e, y), __shfl_sync(FD_TBW_FULL, be, y));
        }
        if (good) {
            fd_tb_denom(0.0, L.s, fd_tb_acc_bound(&L, 0.0), &st.Ln, &st.dLn, &st.lowL);
            good = st.lowL > 0.0;
        }
        /* pass 3: M over the kept keys, in key order */
        fd_tb_acc M;
        fd_tb_acc_init(&M);
        for (int c = w.lo; good && c <= w.hi; c += 32) {
            const int j = c + lane, cnt = min(32, w.hi - c + 1);
            double tm = 0.0, bt = 0.0;
            int ok = 1, kept = 0;
            if (j <= w.hi) { /* as the CPU tier: P only for the kept keys */
                fd_tbw_key x;
                double P, dP;
                ok = fd_tbw_key_eval(&w, dorow, j, &x);
                kept = ok && x.kept;
                if (kept) ok = fd_tbw_prob(&st, &x, &P, &dP);
                if (kept && ok) tm = fd_tbw_mul(P, dP, x.g, x.dg, &bt);
            }
            if (!__all_sync(FD_TBW_FULL, ok)) {
                good = 0;
                break;
            }
            for (int y = 0; y < cnt; y++) {
                const double ty = __shfl_sync(FD_TBW_FULL, tm, y), by = __shfl_sync(FD_TBW_FULL, bt, y);
                if (__shfl_sync(FD_TBW_FULL, kept, y)) fd_tb_acc_add(&M, ty, by);
            }
        }
        st.M = M.s;
        st.dM = fd_tb_acc_bound(&M, 0.0);
        st.ok = good && isfinite(st.M) && isfinite(st.dM);
    }
    if (lane == 0) stat[t] = st;
}

/* The warp's decided count of its columns to *ndec (lane 0). */
__device__ static void add_count(int n, unsigned long long *ndec)
{
    for (int off = 16; off > 0; off >>= 1) n += __shfl_xor_sync(FD_TBW_FULL, n, off);
    if ((threadIdx.x & 31u) == 0) atomicAdd(ndec, (unsigned long long)n);
}

__global__ void __launch_bounds__(32 * FD_TBW_WARPS)
fd_tier_bwd_dq_warp(fd_problem p, const float *__restrict__ q, const float *__restrict__ k,
                    const float *__restrict__ v, const float *__restrict__ dout, const int *__restrict__ qrows, int nq,
                    long ntq, const fd_tbw_stat *__restrict__ stat, double r, double dr, double *__restrict__ dq,
                    double *__restrict__ bdq, unsigned char *__restrict__ okq, unsigned long long *__restrict__ ndec)
{
    const int lane = (int)(threadIdx.x & 31u);
    const long t = (long)blockIdx.x * FD_TBW_WARPS + (long)(threadIdx.x >> 5);
    if (t >= ntq) return;
    const int H = p.heads, D = p.head_dim;
    const int x = (int)(t % nq), h = (int)((t / nq) % H), b = (int)(t / nq / H);
    fd_tb_row w;
    fd_tb_row_init(&w, &p, q, k, v, b, h, qrows[x]);
    const float *dorow = dout + (w.q - q);
    const fd_tbw_stat st = stat[((long)b * H + h) * p.seqlen_q + qrows[x]];
    fd_tb_acc A[FD_TBW_NT];
#pragma unroll
    for (int u = 0; u < FD_TBW_NT; u++) fd_tb_acc_init(&A[u]);
    const int centre = !(w.cap > 0.0);
    const float *kc = w.n > 0 ? w.k + (long)w.lo * w.kstride : w.k;
    int good = st.ok;
    long nterm = 0;
    for (int c = w.lo; good && st.n > 1 && c <= w.hi; c += 32) {
        const int j = c + lane, cnt = min(32, w.hi - c + 1);
        double P, dP, y = 0.0, dy = 0.0;
        int ok = 1, kept;
        if (j <= w.hi) ok = fd_tbw_pair(&w, dorow, &st, j, &P, &dP, &y, &dy, &kept);
        if (!__all_sync(FD_TBW_FULL, ok)) {
            good = 0;
            break;
        }
        for (int z = 0; z < cnt; z++) {
            const double yz = __shfl_sync(FD_TBW_FULL, y, z), dyz = __shfl_sync(FD_TBW_FULL, dy, z);
            if (fd_eq(yz, 0.0) && fd_eq(dyz, 0.0)) continue;
            nterm++;
            const float *kr = w.k + (long)(c + z) * w.kstride;
#pragma unroll
            for (int u = 0; u < FD_TBW_NT; u++) {
                const int d = lane + 32 * u;
                if (d < D) fd_tbw_dq_add(&A[u], yz, dyz, kr[d], kc[d], centre);
            }
        }
    }
    const size_t o = (size_t)t * (size_t)D;
    int nd = 0;
#pragma unroll
    for (int u = 0; u < FD_TBW_NT; u++) {
        const int d = lane + 32 * u;
        if (d >= D) continue;
        double xv = A[u].s, dx = (double)INFINITY;
        int ok = 0;
        if (good) ok = fd_tbw_final(&A[u], nterm, w.sigma, r, dr, (int)p.dtype, &xv, &dx);
        dq[o + d] = xv;
        bdq[o + d] = dx;
        okq[o + d] = (unsigned char)ok;
        nd += ok;
    }
    add_count(nd, ndec);
}

__global__ void __launch_bounds__(32 * FD_TBW_WARPS)
fd_tier_bwd_dkdv_warp(fd_problem p, const float *__restrict__ q, const float *__restrict__ k,
                      const float *__restrict__ v, const float *__restrict__ dout, const int *__restrict__ krows,
                      int nk, long ntk, const fd_tbw_stat *__restrict__ stat, double r, double dr,
                      double *__restrict__ dk, double *__restrict__ dv, double *__restrict__ bdk,
                      double *__restrict__ bdv, unsigned char *__restrict__ okk, unsigned char *__restrict__ okv,
                      unsigned long long *__restrict__ ndec)
{
    const int lane = (int)(threadIdx.x & 31u);
    const long t = (long)blockIdx.x * FD_TBW_WARPS + (long)(threadIdx.x >> 5);
    if (t >= ntk) return;
    const int H = p.heads, Hk = p.kv_heads, G = H / Hk, D = p.head_dim, Sq = p.seqlen_q;
    const int x = (int)(t % nk), hk = (int)((t / nk) % Hk), b = (int)(t / nk / Hk), j = krows[x];
    const fd_tbw_stat *gst = &stat[((long)b * H + (long)hk * G) * Sq];
    fd_tb_acc KA[FD_TBW_NT], VA[FD_TBW_NT];
#pragma unroll
    for (int u = 0; u < FD_TBW_NT; u++) {
        fd_tb_acc_init(&KA[u]);
        fd_tb_acc_init(&VA[u]);
    }
    long nkt = 0, nvt = 0;
    int good = 1;
    for (int hh = 0; hh < G && good; hh++) {
        const int h = hk * G + hh;
        for (int c = 0; good && c < Sq; c += 32) {
            const int i = c + lane, cnt = min(32, Sq - c);
            double P = 0.0, dP = 0.0, y = 0.0, dy = 0.0;
            int vis = 0, kept = 0, ok = 1;
            long qo = 0;
            if (i < Sq) {
                const fd_tbw_stat *st = &gst[(long)hh * Sq + i];
                vis = j >= st->lo && j <= st->hi;
                if (vis && !st->ok) ok = 0;
                if (vis && ok) {
                    fd_tb_row w;
                    fd_tb_row_init(&w, &p, q, k, v, b, h, i);
                    qo = (long)(w.q - q);
                    ok = fd_tbw_pair(&w, dout + qo, st, j, &P, &dP, &y, &dy, &kept);
                }
            }
            if (!__all_sync(FD_TBW_FULL, ok)) {
                good = 0;
                break;
            }
            for (int z = 0; z < cnt; z++) {
                if (!__shfl_sync(FD_TBW_FULL, vis, z)) continue;
                const double yz = __shfl_sync(FD_TBW_FULL, y, z), dyz = __shfl_sync(FD_TBW_FULL, dy, z);
                const double Pz = __shfl_sync(FD_TBW_FULL, P, z), dPz = __shfl_sync(FD_TBW_FULL, dP, z);
                const int keptz = __shfl_sync(FD_TBW_FULL, kept, z);
                const long qz = __shfl_sync(FD_TBW_FULL, qo, z);
                const int addk = !(fd_eq(yz, 0.0) && fd_eq(dyz, 0.0));
                nkt += addk;
                nvt += keptz;
                const float *qrow = q + qz, *dorow = dout + qz;
#pragma unroll
                for (int u = 0; u < FD_TBW_NT; u++) {
                    const int d = lane + 32 * u;
                    if (d >= D) continue;
                    if (addk) fd_tbw_exact_add(&KA[u], yz, dyz, qrow[d]);
                    if (keptz) fd_tbw_exact_add(&VA[u], Pz, dPz, dorow[d]);
                }
            }
        }
    }
    const double sigma = (double)p.softmax_scale;
    const size_t o = (size_t)t * (size_t)D;
    int nd = 0;
#pragma unroll
    for (int u = 0; u < FD_TBW_NT; u++) {
        const int d = lane + 32 * u;
        if (d >= D) continue;
        double x1 = KA[u].s, e1 = (double)INFINITY, x2 = VA[u].s, e2 = (double)INFINITY;
        int o1 = 0, o2 = 0;
        if (good) {
            o1 = fd_tbw_final(&KA[u], nkt, sigma, r, dr, (int)p.dtype, &x1, &e1);
            o2 = fd_tbw_final(&VA[u], nvt, 1.0, r, dr, (int)p.dtype, &x2, &e2);
        }
        dk[o + d] = x1;
        dv[o + d] = x2;
        bdk[o + d] = e1;
        bdv[o + d] = e2;
        okk[o + d] = (unsigned char)o1;
        okv[o + d] = (unsigned char)o2;
        nd += o1 + o2;
    }
    add_count(nd, ndec);
}

static long blocks_of(long n) { return (n + FD_TBG_THREADS - 1) / FD_TBG_THREADS; }
static long warp_blocks(long n) { return (n + FD_TBW_WARPS - 1) / FD_TBW_WARPS; }

extern "C" int fd_tier_bwd_gpu(const fd_problem *p, const float *q, const float *k, const float *v,
                               const float *dout, const int *qrows, int nq, const int *krows, int nk,
                               fd_tier_bwd_out *out, char *err, size_t errlen)
{
    const int rc = fd_tier_bwd_check(p, q, k, v, dout, qrows, nq, krows, nk, out, err, errlen);
    if (rc) return rc;
    if (p->head_dim > FD_TB_HEAD_DIM_MAX)
        FD_FAIL("GPU backward reference tier: head_dim %d, at most %d", p->head_dim, FD_TB_HEAD_DIM_MAX);
    const int D = p->head_dim, H = p->heads, Hk = p->kv_heads;
    const long nstat = (long)p->batch * H * p->seqlen_q, ntq = (long)p->batch * H * nq,
               ntk = (long)p->batch * Hk * nk;
    const long nc = (D + FD_TBG_COLS - 1) / FD_TBG_COLS;
    if (blocks_of(nstat) > 0x7fffffffL || blocks_of(ntq * nc) > 0x7fffffffL || blocks_of(ntk * nc) > 0x7fffffffL)
        FD_FAIL("GPU backward reference tier: %ld rows is too many for one launch", nstat);
    const size_t nqe = fd_q_numel(p), nkv = fd_kv_numel(p);
    const size_t nqv = (size_t)ntq * (size_t)D, nkvv = (size_t)ntk * (size_t)D;
    fd_dbuf dq_in, dk_in, dv_in, ddo, dqr, dkr, dstat, ddq, dbq, dokq, ddk, ddv, dbk, dbv, dokk, dokv, dcnt;
    if (fd_dalloc(dq_in, nqe * sizeof(float), "backward tier Q", err, errlen) ||
        fd_dalloc(dk_in, nkv * sizeof(float), "backward tier K", err, errlen) ||
        fd_dalloc(dv_in, nkv * sizeof(float), "backward tier V", err, errlen) ||
        fd_dalloc(ddo, nqe * sizeof(float), "backward tier dO", err, errlen) ||
        fd_dalloc(dqr, (size_t)nq * sizeof(int), "backward tier query rows", err, errlen) ||
        fd_dalloc(dkr, (size_t)nk * sizeof(int), "backward tier key rows", err, errlen) ||
        fd_dalloc(dstat, (size_t)nstat * sizeof(fd_tbw_stat), "backward tier row statistics", err, errlen) ||
        fd_dalloc(ddq, nqv * sizeof(double), "backward tier dQ", err, errlen) ||
        fd_dalloc(dbq, nqv * sizeof(double), "backward tier dQ bounds", err, errlen) ||
        fd_dalloc(dokq, nqv, "backward tier dQ flags", err, errlen) ||
        fd_dalloc(ddk, nkvv * sizeof(double), "backward tier dK", err, errlen) ||
        fd_dalloc(ddv, nkvv * sizeof(double), "backward tier dV", err, errlen) ||
        fd_dalloc(dbk, nkvv * sizeof(double), "backward tier dK bounds", err, errlen) ||
        fd_dalloc(dbv, nkvv * sizeof(double), "backward tier dV bounds", err, errlen) ||
        fd_dalloc(dokk, nkvv, "backward tier dK flags", err, errlen) ||
        fd_dalloc(dokv, nkvv, "backward tier dV flags", err, errlen) ||
        fd_dalloc(dcnt, sizeof(unsigned long long), "backward tier count", err, errlen))
        return -1;
    FD_CU(cudaMemcpy(dq_in.p, q, nqe * sizeof(float), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(dk_in.p, k, nkv * sizeof(float), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(dv_in.p, v, nkv * sizeof(float), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(ddo.p, dout, nqe * sizeof(float), cudaMemcpyHostToDevice));
    if (nq > 0) FD_CU(cudaMemcpy(dqr.p, qrows, (size_t)nq * sizeof(int), cudaMemcpyHostToDevice));
    if (nk > 0) FD_CU(cudaMemcpy(dkr.p, krows, (size_t)nk * sizeof(int), cudaMemcpyHostToDevice));
    FD_CU(cudaMemset(dcnt.p, 0, sizeof(unsigned long long)));
    double dr;
    const double r = fd_tbw_rscale(p->dropout_p, &dr);
    /* FD_TIER_GPU_BWD_SIMPLE=1: the thread-per-task kernels (for comparison; gpu_test_tier
     * checks both) */
    const char *ev = getenv("FD_TIER_GPU_BWD_SIMPLE");
    if (!(ev && !strcmp(ev, "1"))) {
        if (warp_blocks(nstat) > 0x7fffffffL || warp_blocks(ntq) > 0x7fffffffL || warp_blocks(ntk) > 0x7fffffffL)
            FD_FAIL("GPU backward reference tier: %ld rows is too many for one launch", nstat);
        fd_tier_bwd_stat_warp<<<(unsigned)warp_blocks(nstat), 32 * FD_TBW_WARPS>>>(
            *p, dq_in.as<float>(), dk_in.as<float>(), dv_in.as<float>(), ddo.as<float>(), nstat, dstat.as<fd_tbw_stat>());
        FD_LAUNCH_CHECK();
        if (ntq > 0) {
            fd_tier_bwd_dq_warp<<<(unsigned)warp_blocks(ntq), 32 * FD_TBW_WARPS>>>(
                *p, dq_in.as<float>(), dk_in.as<float>(), dv_in.as<float>(), ddo.as<float>(), dqr.as<int>(), nq, ntq,
                dstat.as<fd_tbw_stat>(), r, dr, ddq.as<double>(), dbq.as<double>(), dokq.as<unsigned char>(),
                dcnt.as<unsigned long long>());
            FD_LAUNCH_CHECK();
        }
        if (ntk > 0) {
            fd_tier_bwd_dkdv_warp<<<(unsigned)warp_blocks(ntk), 32 * FD_TBW_WARPS>>>(
                *p, dq_in.as<float>(), dk_in.as<float>(), dv_in.as<float>(), ddo.as<float>(), dkr.as<int>(), nk, ntk,
                dstat.as<fd_tbw_stat>(), r, dr, ddk.as<double>(), ddv.as<double>(), dbk.as<double>(),
                dbv.as<double>(), dokk.as<unsigned char>(), dokv.as<unsigned char>(), dcnt.as<unsigned long long>());
            FD_LAUNCH_CHECK();
        }
    } else {
    fd_tier_bwd_stat_kernel<<<(unsigned)blocks_of(nstat), FD_TBG_THREADS>>>(
        *p, dq_in.as<float>(), dk_in.as<float>(), dv_in.as<float>(), ddo.as<float>(), nstat, dstat.as<fd_tbw_stat>());
    FD_LAUNCH_CHECK();
    if (ntq > 0) {
        fd_tier_bwd_dq_kernel<<<(unsigned)blocks_of(ntq * nc), FD_TBG_THREADS>>>(
            *p, dq_in.as<float>(), dk_in.as<float>(), dv_in.as<float>(), ddo.as<float>(), dqr.as<int>(), nq, ntq,
            dstat.as<fd_tbw_stat>(), r, dr, ddq.as<double>(), dbq.as<double>(), dokq.as<unsigned char>(),
            dcnt.as<unsigned long long>());
        FD_LAUNCH_CHECK();
    }
    if (ntk > 0) {
        fd_tier_bwd_dkdv_kernel<<<(unsigned)blocks_of(ntk * nc), FD_TBG_THREADS>>>(
            *p, dq_in.as<float>(), dk_in.as<float>(), dv_in.as<float>(), ddo.as<float>(), dkr.as<int>(), nk, ntk,
            dstat.as<fd_tbw_stat>(), r, dr, ddk.as<double>(), ddv.as<double>(), dbk.as<double>(), dbv.as<double>(),
            dokk.as<unsigned char>(), dokv.as<unsigned char>(), dcnt.as<unsigned long long>());
        FD_LAUNCH_CHECK();
    }
    }
    FD_CU(cudaDeviceSynchronize());
    if (ntq > 0) {
        FD_CU(cudaMemcpy(out->dq, ddq.p, nqv * sizeof(double), cudaMemcpyDeviceToHost));
        FD_CU(cudaMemcpy(out->okq, dokq.p, nqv, cudaMemcpyDeviceToHost));
        if (out->bdq) FD_CU(cudaMemcpy(out->bdq, dbq.p, nqv * sizeof(double), cudaMemcpyDeviceToHost));
    }
    if (ntk > 0) {
        FD_CU(cudaMemcpy(out->dk, ddk.p, nkvv * sizeof(double), cudaMemcpyDeviceToHost));
        FD_CU(cudaMemcpy(out->dv, ddv.p, nkvv * sizeof(double), cudaMemcpyDeviceToHost));
        FD_CU(cudaMemcpy(out->okk, dokk.p, nkvv, cudaMemcpyDeviceToHost));
        FD_CU(cudaMemcpy(out->okv, dokv.p, nkvv, cudaMemcpyDeviceToHost));
        if (out->bdk) FD_CU(cudaMemcpy(out->bdk, dbk.p, nkvv * sizeof(double), cudaMemcpyDeviceToHost));
        if (out->bdv) FD_CU(cudaMemcpy(out->bdv, dbv.p, nkvv * sizeof(double), cudaMemcpyDeviceToHost));
    }
    unsigned long long cnt = 0;
    FD_CU(cudaMemcpy(&cnt, dcnt.p, sizeof cnt, cudaMemcpyDeviceToHost));
    out->ndecided = (long)cnt;
    return 0;
}
