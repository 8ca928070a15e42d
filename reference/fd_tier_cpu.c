/* fd_tier_cpu.c: see fd_tier_cpu.h. Built with -ffp-contract=off like all C here (the
 * bounds in fd_tier.h assume every operation is rounded once). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_tier.h"
#include "fd_tier_cpu.h"

static int check_args(const fd_problem *p, const float *q, const float *k, const float *v,
                      const int *rows, int nrows, char *err, size_t errlen)
{
    if (!p || !q || !k || !v || (!rows && nrows > 0) || nrows < 0) {
        snprintf(err, errlen, "binary64 reference tier: NULL argument or nrows %d", nrows);
        return -1;
    }
    if (p->batch <= 0 || p->heads <= 0 || p->kv_heads <= 0 || p->heads % p->kv_heads != 0 ||
        p->seqlen_q <= 0 || p->seqlen_k <= 0 || p->head_dim <= 0 ||
        (unsigned)p->dtype > (unsigned)FD_DT_FP32 || !(p->dropout_p >= 0.0 && p->dropout_p < 1.0)) {
        snprintf(err, errlen, "binary64 reference tier: bad problem (batch %d heads %d kv_heads %d "
                 "seqlen %d/%d head_dim %d dtype %d dropout %g)", p->batch, p->heads, p->kv_heads,
                 p->seqlen_q, p->seqlen_k, p->head_dim, (int)p->dtype, p->dropout_p);
        return -1;
    }
    if (fd_problem_check_mods(p, err, errlen)) return -1;
    for (int r = 0; r < nrows; r++)
        if (rows[r] < 0 || rows[r] >= p->seqlen_q) {
            snprintf(err, errlen, "binary64 reference tier: row %d out of range (seqlen_q %d)", rows[r],
                     p->seqlen_q);
            return -1;
        }
    return 0;
}

int fd_tier_cpu_rows_bounds(const fd_problem *p, const float *q, const float *k, const float *v,
                            const int *rows, int nrows, int jobs, double *ref_o, double *ref_lse,
                            double *bound, double *bound_lse, unsigned char *val_ok,
                            unsigned char *row_ok, long *ndecided, char *err, size_t errlen)
{
    if (check_args(p, q, k, v, rows, nrows, err, errlen)) return -1;
    const int D = p->head_dim;
    const long ntask = (long)p->batch * p->heads * nrows;
    long nd = 0;
    int failed = 0;
    if (jobs < 1) jobs = 1;
#pragma omp parallel num_threads(jobs) reduction(+ : nd)
    {
        double *scratch = malloc(sizeof(double) * 2 * (size_t)D);
        unsigned char *ok = malloc((size_t)D + 1);
        double *sbuf = malloc(sizeof(double) * 2 * (size_t)p->seqlen_k);
        if (!scratch || !ok || !sbuf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 4)
        for (long t = 0; t < ntask; t++) {
            if (!scratch || !ok || !sbuf) continue;
            const int r = (int)(t % nrows), h = (int)((t / nrows) % p->heads), b = (int)(t / nrows / p->heads);
            fd_tb_row w;
            fd_tb_row_init(&w, p, q, k, v, b, h, rows[r]);
            double *o = ref_o + (size_t)t * (size_t)D, dl = 0.0;
            const int n = fd_tb_row_compute(&w, (int)p->dtype, o, scratch, &ref_lse[t], &dl, ok, sbuf);
            nd += n;
            row_ok[t] = (unsigned char)(n == D + 1);
            if (bound) memcpy(bound + (size_t)t * (size_t)D, scratch, sizeof(double) * (size_t)D);
            if (bound_lse) bound_lse[t] = dl;
            if (val_ok) memcpy(val_ok + (size_t)t * (size_t)(D + 1), ok, (size_t)D + 1);
        }
        free(scratch);
        free(ok);
        free(sbuf);
    }
    if (failed) {
        snprintf(err, errlen, "binary64 reference tier: out of memory (head_dim %d)", D);
        return -1;
    }
    if (ndecided) *ndecided = nd;
    return 0;
}

int fd_tier_cpu_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                     const int *rows, int nrows, int jobs, double *ref_o, double *ref_lse,
                     unsigned char *row_ok, long *ndecided, char *err, size_t errlen)
{
    return fd_tier_cpu_rows_bounds(p, q, k, v, rows, nrows, jobs, ref_o, ref_lse, NULL, NULL, NULL,
                                   row_ok, ndecided, err, errlen);
}

#ifndef FD_HAVE_TIER_GPU
int fd_tier_gpu_available(void) { return 0; }
int fd_tier_gpu_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                     const int *rows, int nrows, double *ref_o, double *ref_lse,
                     unsigned char *row_ok, long *ndecided, char *err, size_t errlen)
{
    (void)p; (void)q; (void)k; (void)v; (void)rows; (void)nrows; (void)ref_o; (void)ref_lse;
    (void)row_ok; (void)ndecided;
    snprintf(err, errlen, "reference tier gpu: this flashdrift is built without CUDA (configure with CUDA, or use "
                          "--reference auto or cpu; the case file's \"reference\" likewise)");
    return -1;
}
#endif
