/* fd_tier_gpu.cu: the binary64 reference tier on the GPU (contract in fd_tier_cpu.h).
 *
 * One warp per query row, the steps of reference/fd_tier.h (the same bounded functions as
 * the CPU tier, compiled for the device with __dmul_rn and friends and --fmad=false):
 *   pass 1: lanes over keys compute the logits, the warp takes their maximum (exact);
 *   pass 2: per chunk of 32 keys, each lane computes one key's weight and its bound and
 *           adds it to its own partial L; the kept keys' weights are broadcast by shuffles
 *           and each lane accumulates the numerator of its columns d = lane + 32 t
 *           (t < 8, head_dim <= 256) in key order, with the running bounds;
 *   the lanes' partial L are merged by a butterfly (fd_tb_acc_merge: every addition of a
 *   tree is bounded like a sequential one), then O, LSE and the decisions per value.
 * The order of the L sum differs from the CPU tier's, so the two tiers' values may differ
 * in the last bits; each is within its own bound of the truth. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cuda_util.h"
#include "fd_tier.h"
#include "fd_tier_cpu.h"

#define FD_TG_WARPS 4
#define FD_TG_NT (FD_TB_HEAD_DIM_MAX / 32)

__device__ static fd_tb_acc shfl_acc(const fd_tb_acc &x, int lanemask)
{
    fd_tb_acc y;
    y.s = __shfl_xor_sync(0xffffffffu, x.s, lanemask);
    y.a = __shfl_xor_sync(0xffffffffu, x.a, lanemask);
    y.r = __shfl_xor_sync(0xffffffffu, x.r, lanemask);
    return y;
}

__global__ void __launch_bounds__(32 * FD_TG_WARPS)
fd_tier_row_kernel(fd_problem p, const float *__restrict__ q, const float *__restrict__ k,
                   const float *__restrict__ v, const int *__restrict__ rows, int nrows, long ntask,
                   double *__restrict__ o, double *__restrict__ lse, unsigned char *__restrict__ row_ok,
                   unsigned long long *__restrict__ ndec)
{
    const int lane = (int)(threadIdx.x & 31u);
    const long t = (long)blockIdx.x * FD_TG_WARPS + (long)(threadIdx.x >> 5);
    if (t >= ntask) return; /* whole warps leave together */
    const int r = (int)(t % nrows), h = (int)((t / nrows) % p.heads), b = (int)(t / nrows / p.heads);
    const int D = p.head_dim;
    fd_tb_row w;
    fd_tb_row_init(&w, &p, q, k, v, b, h, rows[r]);
    double *orow = o + (size_t)t * (size_t)D;
    if (w.n == 0) {
        for (int d = lane; d < D; d += 32) orow[d] = 0.0;
        if (lane == 0) {
            lse[t] = INFINITY;
            row_ok[t] = 1;
            atomicAdd(ndec, (unsigned long long)(D + 1));
        }
        return;
    }
    /* pass 1 */
    int good = 1;
    double m = -INFINITY;
    for (int j = w.lo + lane; j <= w.hi; j += 32) {
        double s, ds;
        if (!fd_tb_logit(&w, j, &s, &ds)) good = 0;
        else if (s > m) m = s;
    }
    for (int off = 16; off > 0; off >>= 1) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, off));
    good = __all_sync(0xffffffffu, good);
    /* pass 2 */
    fd_tb_acc L, N[FD_TG_NT];
    fd_tb_acc_init(&L);
#pragma unroll
    for (int u = 0; u < FD_TG_NT; u++) fd_tb_acc_init(&N[u]);
    double nkept = 0.0;
    for (int c = w.lo; good && c <= w.hi; c += 32) {
        const int j = c + lane;
        double e = 0.0, be = 0.0;
        int kept = 0;
        if (j <= w.hi) {
            double s, ds;
            if (!fd_tb_logit(&w, j, &s, &ds) || !fd_tb_weight(s, ds, m, &e, &be)) {
                good = 0;
            } else {
                fd_tb_acc_add(&L, e, be);
                kept = fd_tb_kept(&w, j);
            }
        }
        good = __all_sync(0xffffffffu, good);
        const unsigned km = __ballot_sync(0xffffffffu, kept);
        nkept += (double)__popc(km);
        for (int jj = 0; jj < 32; jj++) {
            if (!((km >> jj) & 1u)) continue; /* warp-uniform */
            const double ej = __shfl_sync(0xffffffffu, e, jj);
            const double bej = __shfl_sync(0xffffffffu, be, jj);
            const float *vr = w.v + (long)(c + jj) * w.kstride;
#pragma unroll
            for (int u = 0; u < FD_TG_NT; u++) {
                const int d = lane + 32 * u;
                if (d < D) fd_tb_numer_add(&N[u], ej, bej, vr[d]);
            }
        }
    }
    for (int off = 16; off > 0; off >>= 1) {
        const fd_tb_acc y = shfl_acc(L, off);
        fd_tb_acc_merge(&L, &y);
    }
    const double dL = fd_tb_acc_bound(&L, 0.0);
    double Dn, dD, lowD;
    fd_tb_denom(w.pdrop, L.s, dL, &Dn, &dD, &lowD);
    const int prec = fd_tb_prec((int)p.dtype), emin = fd_tb_emin((int)p.dtype);
    int mine = 0, all = 1;
#pragma unroll
    for (int u = 0; u < FD_TG_NT; u++) {
        const int d = lane + 32 * u;
        if (d >= D) continue;
        double x, dx;
        if (fd_eq(N[u].s, 0.0) && fd_eq(N[u].a, 0.0) && fd_eq(N[u].r, 0.0)) {
            x = 0.0;
            dx = 0.0;
        } else {
            const double dN = fd_tb_acc_bound(&N[u], nkept);
            x = fd_tb_out(N[u].s, dN, Dn, dD, lowD, &dx);
        }
        orow[d] = x;
        const int okv = good && (fd_eq(dx, 0.0) && fd_eq(x, 0.0) ? 1 : fd_tb_decide(x, dx, prec, emin));
        mine += okv;
        all &= okv;
    }
    double dl;
    const double lv = fd_tb_lse(m, L.s, dL, &dl);
    const int okl = good && fd_tb_decide(lv, dl, 24, -126);
    for (int off = 16; off > 0; off >>= 1) mine += __shfl_xor_sync(0xffffffffu, mine, off);
    all = __all_sync(0xffffffffu, all);
    if (lane == 0) {
        lse[t] = lv;
        row_ok[t] = (unsigned char)(all && okl);
        atomicAdd(ndec, (unsigned long long)(mine + okl));
    }
}


/* The same steps for R rows of one (batch, head) per warp (head_dim <= 128): each K and V
 * value a lane loads serves R rows, so the cache traffic per row is 1/R of the kernel
 * above. Per row the numerator is summed in the same key order; the partial sums of L are
 * grouped by lane from the first key any of the R rows sees (any grouping is bounded alike).
 * Rows of the group: tasks g R .. g R + R - 1 of the (b, h), r < nrows. */
#define FD_TG_R 4
#define FD_TG_NT4 4 /* head_dim <= 128 */
__global__ void __launch_bounds__(32 * FD_TG_WARPS)
fd_tier_rows4_kernel(fd_problem p, const float *__restrict__ q, const float *__restrict__ k,
                     const float *__restrict__ v, const int *__restrict__ rows, int nrows, long ngroups,
                     double *__restrict__ o, double *__restrict__ lse, unsigned char *__restrict__ row_ok,
                     unsigned long long *__restrict__ ndec)
{
    __shared__ float qs[FD_TG_WARPS][FD_TG_R][128];
    const int lane = (int)(threadIdx.x & 31u), wid = (int)(threadIdx.x >> 5);
    const long gw = (long)blockIdx.x * FD_TG_WARPS + wid;
    if (gw >= ngroups) return; /* whole warps leave together */
    const long gpb = (nrows + FD_TG_R - 1) / FD_TG_R;
    const long bh = gw / gpb;
    const int g = (int)(gw % gpb);
    const int h = (int)(bh % p.heads), b = (int)(bh / p.heads);
    const int D = p.head_dim;
    fd_tb_row w[FD_TG_R];
    int act[FD_TG_R];
    long tk[FD_TG_R];
    int ulo = 0x7fffffff, uhi = -1;
#pragma unroll
    for (int x = 0; x < FD_TG_R; x++) {
        const int r = g * FD_TG_R + x;
        for (int d = lane; d < D; d += 32) qs[wid][x][d] = 0.0f; /* rows without keys read zeros */
        act[x] = 0;
        tk[x] = bh * nrows + r;
        if (r >= nrows) continue;
        fd_tb_row_init(&w[x], &p, q, k, v, b, h, rows[r]);
        double *orow = o + (size_t)tk[x] * (size_t)D;
        if (w[x].n == 0) {
            for (int d = lane; d < D; d += 32) orow[d] = 0.0;
            if (lane == 0) {
                lse[tk[x]] = INFINITY;
                row_ok[tk[x]] = 1;
                atomicAdd(ndec, (unsigned long long)(D + 1));
            }
            continue;
        }
        act[x] = 1;
        for (int d = lane; d < D; d += 32) qs[wid][x][d] = w[x].q[d];
        if (w[x].lo < ulo) ulo = w[x].lo;
        if (w[x].hi > uhi) uhi = w[x].hi;
    }
    __syncwarp();
    if (uhi < ulo) return; /* every row of the group was empty (warp-uniform) */
    const float *kbase = w[0].k, *vbase = w[0].v;
    const long kst = w[0].kstride;
    /* pass 1 */
    int good[FD_TG_R];
    double m[FD_TG_R];
#pragma unroll
    for (int x = 0; x < FD_TG_R; x++) {
        good[x] = 1;
        m[x] = -INFINITY;
    }
    for (int j = ulo + lane; j <= uhi; j += 32) {
        const float *kr = kbase + (long)j * kst;
        double acc[FD_TG_R], rr[FD_TG_R];
#pragma unroll
        for (int x = 0; x < FD_TG_R; x++) acc[x] = rr[x] = 0.0;
        for (int d = 0; d < D; d++) {
            const double kd = (double)kr[d];
#pragma unroll
            for (int x = 0; x < FD_TG_R; x++) fd_tb_dot_step(&acc[x], &rr[x], (double)qs[wid][x][d], kd);
        }
#pragma unroll
        for (int x = 0; x < FD_TG_R; x++) {
            if (!act[x] || j < w[x].lo || j > w[x].hi) continue;
            double s, ds;
            if (!fd_tb_logit_finish(&w[x], j, acc[x], rr[x], &s, &ds)) good[x] = 0;
            else if (s > m[x]) m[x] = s;
        }
    }
#pragma unroll
    for (int x = 0; x < FD_TG_R; x++) {
        for (int off = 16; off > 0; off >>= 1) m[x] = fmax(m[x], __shfl_xor_sync(0xffffffffu, m[x], off));
        good[x] = __all_sync(0xffffffffu, good[x]);
    }
    /* pass 2 */
    fd_tb_acc L[FD_TG_R], N[FD_TG_R][FD_TG_NT4];
    double nkept[FD_TG_R];
#pragma unroll
    for (int x = 0; x < FD_TG_R; x++) {
        fd_tb_acc_init(&L[x]);
        nkept[x] = 0.0;
#pragma unroll
        for (int u = 0; u < FD_TG_NT4; u++) fd_tb_acc_init(&N[x][u]);
    }
    for (int c = ulo; c <= uhi; c += 32) {
        const int j = c + lane;
        double e[FD_TG_R], be[FD_TG_R];
        int kept[FD_TG_R];
#pragma unroll
        for (int x = 0; x < FD_TG_R; x++) {
            e[x] = be[x] = 0.0;
            kept[x] = 0;
        }
        if (j <= uhi) {
            const float *kr = kbase + (long)j * kst;
            double acc[FD_TG_R], rr[FD_TG_R];
#pragma unroll
            for (int x = 0; x < FD_TG_R; x++) acc[x] = rr[x] = 0.0;
            for (int d = 0; d < D; d++) {
                const double kd = (double)kr[d];
#pragma unroll
                for (int x = 0; x < FD_TG_R; x++) fd_tb_dot_step(&acc[x], &rr[x], (double)qs[wid][x][d], kd);
            }
#pragma unroll
            for (int x = 0; x < FD_TG_R; x++) {
                if (!act[x] || !good[x] || j < w[x].lo || j > w[x].hi) continue;
                double s, ds, ee, bb;
                if (!fd_tb_logit_finish(&w[x], j, acc[x], rr[x], &s, &ds) || !fd_tb_weight(s, ds, m[x], &ee, &bb)) {
                    good[x] = 0;
                    continue;
                }
                fd_tb_acc_add(&L[x], ee, bb);
                if (fd_tb_kept(&w[x], j)) {
                    kept[x] = 1;
                    e[x] = ee;
                    be[x] = bb;
                }
            }
        }
        unsigned km[FD_TG_R], any = 0u;
#pragma unroll
        for (int x = 0; x < FD_TG_R; x++) {
            good[x] = __all_sync(0xffffffffu, good[x]);
            km[x] = __ballot_sync(0xffffffffu, kept[x]);
            nkept[x] += (double)__popc(km[x]);
            any |= km[x];
        }
        for (int jj = 0; jj < 32; jj++) {
            if (!((any >> jj) & 1u)) continue; /* warp-uniform */
            double ej[FD_TG_R], bej[FD_TG_R];
#pragma unroll
            for (int x = 0; x < FD_TG_R; x++) {
                ej[x] = __shfl_sync(0xffffffffu, e[x], jj);
                bej[x] = __shfl_sync(0xffffffffu, be[x], jj);
            }
            const float *vr = vbase + (long)(c + jj) * kst;
#pragma unroll
            for (int u = 0; u < FD_TG_NT4; u++) {
                const int d = lane + 32 * u;
                if (d >= D) continue;
                const float vv = vr[d];
#pragma unroll
                for (int x = 0; x < FD_TG_R; x++)
                    if ((km[x] >> jj) & 1u) fd_tb_numer_add(&N[x][u], ej[x], bej[x], vv);
            }
        }
    }
    const int prec = fd_tb_prec((int)p.dtype), emin = fd_tb_emin((int)p.dtype);
#pragma unroll
    for (int x = 0; x < FD_TG_R; x++) {
        if (!act[x]) continue; /* warp-uniform */
        for (int off = 16; off > 0; off >>= 1) {
            const fd_tb_acc y = shfl_acc(L[x], off);
            fd_tb_acc_merge(&L[x], &y);
        }
        const double dL = fd_tb_acc_bound(&L[x], 0.0);
        double Dn, dD, lowD;
        fd_tb_denom(w[x].pdrop, L[x].s, dL, &Dn, &dD, &lowD);
        double *orow = o + (size_t)tk[x] * (size_t)D;
        int mine = 0, all = 1;
#pragma unroll
        for (int u = 0; u < FD_TG_NT4; u++) {
            const int d = lane + 32 * u;
            if (d >= D) continue;
            double y, dy;
            if (fd_eq(N[x][u].s, 0.0) && fd_eq(N[x][u].a, 0.0) && fd_eq(N[x][u].r, 0.0)) {
                y = 0.0;
                dy = 0.0;
            } else {
                const double dN = fd_tb_acc_bound(&N[x][u], nkept[x]);
                y = fd_tb_out(N[x][u].s, dN, Dn, dD, lowD, &dy);
            }
            orow[d] = y;
            const int okv = good[x] && (fd_eq(dy, 0.0) && fd_eq(y, 0.0) ? 1 : fd_tb_decide(y, dy, prec, emin));
            mine += okv;
            all &= okv;
        }
        double dl;
        const double lv = fd_tb_lse(m[x], L[x].s, dL, &dl);
        const int okl = good[x] && fd_tb_decide(lv, dl, 24, -126);
        for (int off = 16; off > 0; off >>= 1) mine += __shfl_xor_sync(0xffffffffu, mine, off);
        all = __all_sync(0xffffffffu, all);
        if (lane == 0) {
            lse[tk[x]] = lv;
            row_ok[tk[x]] = (unsigned char)(all && okl);
            atomicAdd(ndec, (unsigned long long)(mine + okl));
        }
    }
}

extern "C" int fd_tier_gpu_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}

extern "C" int fd_tier_gpu_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                                const int *rows, int nrows, double *ref_o, double *ref_lse,
                                unsigned char *row_ok, long *ndecided, char *err, size_t errlen)
{
    if (!p || !q || !k || !v || !rows || nrows <= 0 || !ref_o || !ref_lse || !row_ok)
        FD_FAIL("GPU reference tier: NULL argument or nrows %d", nrows);
    if (p->head_dim <= 0 || p->head_dim > FD_TB_HEAD_DIM_MAX || p->heads <= 0 || p->kv_heads <= 0 ||
        p->heads % p->kv_heads != 0 || p->batch <= 0 || p->seqlen_q <= 0 || p->seqlen_k <= 0)
        FD_FAIL("GPU reference tier: unsupported problem (head_dim %d, at most %d; heads %d kv_heads %d)",
                p->head_dim, FD_TB_HEAD_DIM_MAX, p->heads, p->kv_heads);
    if (p->alibi && p->heads > FD_ALIBI_MAX_HEADS) FD_FAIL("GPU reference tier: ALiBi with %d heads", p->heads);
    for (int r = 0; r < nrows; r++)
        if (rows[r] < 0 || rows[r] >= p->seqlen_q) FD_FAIL("GPU reference tier: row %d out of range", rows[r]);
    const long ntask = (long)p->batch * p->heads * nrows;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p), D = (size_t)p->head_dim;
    fd_dbuf dq, dk, dv, drows, dout, dlse, dok, dcnt;
    if (fd_dalloc(dq, nq * sizeof(float), "reference tier Q", err, errlen) ||
        fd_dalloc(dk, nkv * sizeof(float), "reference tier K", err, errlen) ||
        fd_dalloc(dv, nkv * sizeof(float), "reference tier V", err, errlen) ||
        fd_dalloc(drows, (size_t)nrows * sizeof(int), "reference tier rows", err, errlen) ||
        fd_dalloc(dout, (size_t)ntask * D * sizeof(double), "reference tier O", err, errlen) ||
        fd_dalloc(dlse, (size_t)ntask * sizeof(double), "reference tier LSE", err, errlen) ||
        fd_dalloc(dok, (size_t)ntask, "reference tier flags", err, errlen) ||
        fd_dalloc(dcnt, sizeof(unsigned long long), "reference tier count", err, errlen))
        return -1;
    FD_CU(cudaMemcpy(dq.p, q, nq * sizeof(float), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(dk.p, k, nkv * sizeof(float), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(dv.p, v, nkv * sizeof(float), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(drows.p, rows, (size_t)nrows * sizeof(int), cudaMemcpyHostToDevice));
    FD_CU(cudaMemset(dcnt.p, 0, sizeof(unsigned long long)));
    /* R rows per warp where head_dim <= 128, unless FD_TIER_GPU_ROWS=1 asks for the kernel
     * with one row per warp (the simpler one, for comparison) */
    const char *ev = getenv("FD_TIER_GPU_ROWS");
    const int multi = p->head_dim <= 128 && !(ev && !strcmp(ev, "1"));
    if (multi) {
        const long ngroups = (long)p->batch * p->heads * ((nrows + FD_TG_R - 1) / FD_TG_R);
        const long nblk = (ngroups + FD_TG_WARPS - 1) / FD_TG_WARPS;
        if (nblk > 0x7fffffffL) FD_FAIL("GPU reference tier: %ld rows is too many for one launch", ntask);
        fd_tier_rows4_kernel<<<(unsigned)nblk, 32 * FD_TG_WARPS>>>(
            *p, dq.as<float>(), dk.as<float>(), dv.as<float>(), drows.as<int>(), nrows, ngroups, dout.as<double>(),
            dlse.as<double>(), dok.as<unsigned char>(), dcnt.as<unsigned long long>());
    } else {
        const long nblk = (ntask + FD_TG_WARPS - 1) / FD_TG_WARPS;
        if (nblk > 0x7fffffffL) FD_FAIL("GPU reference tier: %ld rows is too many for one launch", ntask);
        fd_tier_row_kernel<<<(unsigned)nblk, 32 * FD_TG_WARPS>>>(
            *p, dq.as<float>(), dk.as<float>(), dv.as<float>(), drows.as<int>(), nrows, ntask, dout.as<double>(),
            dlse.as<double>(), dok.as<unsigned char>(), dcnt.as<unsigned long long>());
    }
    FD_LAUNCH_CHECK();
    FD_CU(cudaDeviceSynchronize());
    FD_CU(cudaMemcpy(ref_o, dout.p, (size_t)ntask * D * sizeof(double), cudaMemcpyDeviceToHost));
    FD_CU(cudaMemcpy(ref_lse, dlse.p, (size_t)ntask * sizeof(double), cudaMemcpyDeviceToHost));
    FD_CU(cudaMemcpy(row_ok, dok.p, (size_t)ntask, cudaMemcpyDeviceToHost));
    unsigned long long cnt = 0;
    FD_CU(cudaMemcpy(&cnt, dcnt.p, sizeof cnt, cudaMemcpyDeviceToHost));
    if (ndecided) *ndecided = (long)cnt;
    return 0;
}
