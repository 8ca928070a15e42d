/* fd_tier_bwd_cpu.c: the backward binary64 tier on the CPU (fd_tier_bwd.h's algorithm; the
 * contract in fd_tier_cpu.h). Three OpenMP loops: the statistics of every row of every group,
 * dQ of the listed query rows, dK and dV of the listed keys. Built with -ffp-contract=off
 * like all C here (the bounds assume every operation is rounded once). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_tier_bwd.h"
#include "fd_tier_cpu.h"

int fd_tier_bwd_check(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                      const int *qrows, int nq, const int *krows, int nk, const fd_tier_bwd_out *out, char *err,
                      size_t errlen)
{
    if (!p || !q || !k || !v || !dout || !out || nq < 0 || nk < 0 || (nq > 0 && (!qrows || !out->dq || !out->okq)) ||
        (nk > 0 && (!krows || !out->dk || !out->dv || !out->okk || !out->okv))) {
        snprintf(err, errlen, "backward reference tier: NULL argument or bad row counts (nq %d, nk %d)", nq, nk);
        return -1;
    }
    if (p->batch <= 0 || p->heads <= 0 || p->kv_heads <= 0 || p->heads % p->kv_heads != 0 || p->seqlen_q <= 0 ||
        p->seqlen_k <= 0 || p->head_dim <= 0 || (unsigned)p->dtype > (unsigned)FD_DT_FP32 ||
        !(p->dropout_p >= 0.0 && p->dropout_p < 1.0)) {
        snprintf(err, errlen, "backward reference tier: bad problem (batch %d heads %d kv_heads %d seqlen %d/%d "
                 "head_dim %d dtype %d dropout %g)", p->batch, p->heads, p->kv_heads, p->seqlen_q, p->seqlen_k,
                 p->head_dim, (int)p->dtype, p->dropout_p);
        return -1;
    }
    if (fd_problem_check_mods(p, err, errlen)) return -1;
    if (p->varlen > 0 || p->page_size > 0) {
        snprintf(err, errlen, "backward reference tier: %s problems are declined (the MPFR reference computes them)",
                 p->varlen > 0 ? "variable-length" : "paged");
        return FD_TIER_DECLINED;
    }
    for (int r = 0; r < nq; r++)
        if (qrows[r] < 0 || qrows[r] >= p->seqlen_q) {
            snprintf(err, errlen, "backward reference tier: query row %d out of range (seqlen_q %d)", qrows[r],
                     p->seqlen_q);
            return -1;
        }
    for (int t = 0; t < nk; t++)
        if (krows[t] < 0 || krows[t] >= p->seqlen_k) {
            snprintf(err, errlen, "backward reference tier: key row %d out of range (seqlen_k %d)", krows[t],
                     p->seqlen_k);
            return -1;
        }
    return 0;
}

int fd_tier_bwd_cpu(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                    const int *qrows, int nq, const int *krows, int nk, int jobs, fd_tier_bwd_out *out,
                    char *err, size_t errlen)
{
    const int rc = fd_tier_bwd_check(p, q, k, v, dout, qrows, nq, krows, nk, out, err, errlen);
    if (rc) return rc;
    const int D = p->head_dim, H = p->heads, Hk = p->kv_heads, G = H / Hk, Sq = p->seqlen_q;
    const long nstat = (long)p->batch * H * Sq, ntq = (long)p->batch * H * nq, ntk = (long)p->batch * Hk * nk;
    fd_tbw_stat *stat = malloc(sizeof(fd_tbw_stat) * (size_t)nstat);
    if (!stat) {
        snprintf(err, errlen, "backward reference tier: out of memory for %ld row statistics", nstat);
        return -1;
    }
    double dr;
    const double r = fd_tbw_rscale(p->dropout_p, &dr);
    long nd = 0;
    int failed = 0;
    if (jobs < 1) jobs = 1;
#pragma omp parallel num_threads(jobs) reduction(+ : nd)
    {
        fd_tbw_key *kbuf = malloc(sizeof(fd_tbw_key) * (size_t)p->seqlen_k);
        double *acc = malloc(sizeof(double) * 6 * (size_t)D);
        const int mine = kbuf && acc;
        if (!mine) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 8)
        for (long t = 0; t < nstat; t++) {
            if (!mine) continue;
            const int i = (int)(t % Sq), h = (int)((t / Sq) % H), b = (int)(t / Sq / H);
            fd_tb_row w;
            fd_tb_row_init(&w, p, q, k, v, b, h, i);
            fd_tbw_row_stat(&w, dout + (w.q - q), kbuf, &stat[t]);
        }
#pragma omp for schedule(dynamic, 4)
        for (long t = 0; t < ntq; t++) {
            if (!mine) continue;
            const int x = (int)(t % nq), h = (int)((t / nq) % H), b = (int)(t / nq / H);
            fd_tb_row w;
            fd_tb_row_init(&w, p, q, k, v, b, h, qrows[x]);
            const size_t o = (size_t)t * (size_t)D;
            nd += fd_tbw_row_dq(&w, dout + (w.q - q), &stat[((long)b * H + h) * Sq + qrows[x]], NULL, r, dr,
                                (int)p->dtype, 0, D, acc, out->dq + o, out->bdq ? out->bdq + o : NULL, out->okq + o);
        }
#pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < ntk; t++) {
            if (!mine) continue;
            const int x = (int)(t % nk), hk = (int)((t / nk) % Hk), b = (int)(t / nk / Hk);
            const size_t o = (size_t)t * (size_t)D;
            nd += fd_tbw_key_dkdv(p, q, k, v, dout, b, hk, krows[x], &stat[((long)b * H + (long)hk * G) * Sq], r, dr,
                                  0, D, acc, out->dk + o, out->dv + o, out->bdk ? out->bdk + o : NULL,
                                  out->bdv ? out->bdv + o : NULL, out->okk + o, out->okv + o);
        }
        free(kbuf);
        free(acc);
    }
    free(stat);
    if (failed) {
        snprintf(err, errlen, "backward reference tier: out of memory (seqlen_k %d, head_dim %d)", p->seqlen_k, D);
        return -1;
    }
    out->ndecided = nd;
    return 0;
}

#ifndef FD_HAVE_TIER_GPU
int fd_tier_bwd_gpu(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                    const int *qrows, int nq, const int *krows, int nk, fd_tier_bwd_out *out, char *err,
                    size_t errlen)
{
    (void)p; (void)q; (void)k; (void)v; (void)dout; (void)qrows; (void)nq; (void)krows; (void)nk; (void)out;
    snprintf(err, errlen, "reference tier gpu: this flashdrift is built without CUDA (configure with CUDA, or use "
                          "--reference auto or cpu; the case file's \"reference\" likewise)");
    return -1;
}
#endif
