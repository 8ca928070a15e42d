/* fd_tier_bwd_gpu.cu: the backward binary64 tier on the GPU (contract in fd_tier_cpu.h).
 *
 * The same bounded steps as the CPU tier (reference/fd_tier_bwd.h, compiled for the device
 * with __dmul_rn and friends and --fmad=false), in three launches:
 *   1. the statistics (m, L, M) of every row of every (batch, head), a thread per row, keys
 *      evaluated again in each of the three passes (no per-thread key buffer);
 *   2. dQ of each listed (batch, head, query row), a thread per row and block of
 *      FD_TBG_COLS columns (each thread evaluates the row's keys, accumulates its columns);
 *   3. dK and dV of each listed (batch, kv head, key row) over the group's heads and rows, a
 *      thread per key and block of FD_TBG_COLS columns likewise.
 * Every sum runs in the CPU tier's order; only exp, log and tanh (CUDA's libdevice instead of
 * glibc) may make the two tiers' values differ in the last bits; each is within its own
 * bound of the truth. Simple on purpose (no GPU was at hand to tune it): the accumulators
 * (3 or 6 x 32 doubles) live in local memory, and the keys' dot products are repeated per
 * column block; a warp per task with lanes over the columns, as in the forward GPU tier, is
 * the next step if it is too slow. */
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

static long blocks_of(long n) { return (n + FD_TBG_THREADS - 1) / FD_TBG_THREADS; }

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
