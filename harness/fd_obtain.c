/* fd_obtain.c: see fd_obtain.h. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include <stdlib.h>

#include "fd_obtain.h"
#include "fd_ref.h"
#include "fd_tier.h"
#include "fd_tier_cpu.h"

/* MPFR on the tasks t (t = (b * heads + h) * nrows + r) listed in tasks, or on all ntask
 * of them when tasks is NULL: ref_o/ref_lse at t, undecided values counted, the largest
 * precision used. */
static int mpfr_tasks(const fd_problem *p, const float *q, const float *k, const float *v, const int *rows,
                      int nrows, const long *tasks, long ntask, int jobs, double *ref_o, double *ref_lse,
                      int *undecided_out, int *precmax_out, char *err, size_t errlen)
{
    fd_ref_opts ro;
    fd_ref_opts_default(&ro);
    const int D = p->head_dim;
    int undecided = 0, precmax = 0, failed = 0;
    char ref_err[256] = "";
#pragma omp parallel for schedule(dynamic, 1) num_threads(jobs > 0 ? jobs : 1) reduction(+ : undecided) reduction(max : precmax)
    for (long x = 0; x < ntask; x++) {
        if (fd_interrupted || failed) continue;
        const long t = tasks ? tasks[x] : x;
        const int r = (int)(t % nrows), h = (int)((t / nrows) % p->heads), b = (int)(t / nrows / p->heads);
        fd_ref_row_info info;
        char e2[256];
        if (fd_ref_row(p, q, k, v, b, h, rows[r], &ro, ref_o + (size_t)t * (size_t)D, &info, e2, sizeof e2)) {
#pragma omp critical
            {
                failed = 1;
                snprintf(ref_err, sizeof ref_err, "%s", e2);
            }
            continue;
        }
        ref_lse[t] = info.lse;
        undecided += info.undecided;
        if (info.prec_used > precmax) precmax = info.prec_used;
    }
    *undecided_out = undecided;
    *precmax_out = precmax;
    if (fd_interrupted) {
        snprintf(err, errlen, "interrupted");
        return -1;
    }
    if (failed) {
        snprintf(err, errlen, "reference failed: %s", ref_err);
        return -1;
    }
    return 0;
}

int fd_reference_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                      const int *rows, int nrows, int jobs, double *ref_o, double *ref_lse,
                      int *undecided_out, int *precmax_out, char *err, size_t errlen)
{
    return mpfr_tasks(p, q, k, v, rows, nrows, NULL, (long)p->batch * p->heads * nrows, jobs, ref_o, ref_lse,
                      undecided_out, precmax_out, err, errlen);
}

/* Seconds per (visible key x head_dim) on one core, measured with `flashdrift bench
 * --reference` on the shared 2-core development VM (2026-12-03, B1 H4 N2048 d128 fp16, one
 * thread; load from other builds doubles these at times): MPFR ~35-70 ns (9.6-18.8 ms a
 * row), the binary64 tier on the CPU ~4 ns (1.0 ms a row);
 * the GPU tier (all SMs together, not divided by jobs) 0.01 ns (the H200, 2026-12-03:
 * 0.012 ns, scripts/device-reference). Rough on purpose: they only choose every row or a
 * sample. */
static double tier_cost(fd_reftier t)
{
    switch (t) {
    case FD_REFTIER_MPFR: return 50e-9;
    case FD_REFTIER_GPU: return 0.01e-9;
    default: return 4e-9;
    }
}

fd_reftier fd_reftier_resolve(fd_reftier t)
{
    if (t != FD_REFTIER_AUTO) return t;
    return fd_tier_gpu_available() ? FD_REFTIER_GPU : FD_REFTIER_CPU;
}

double fd_reference_estimate(const fd_problem *p, const int *rows, int nrows, int jobs, fd_reftier tier)
{
    tier = fd_dtype_is_fp8(p->dtype) ? FD_REFTIER_MPFR : fd_reftier_resolve(tier); /* FP8: MPFR only */
    double keys = 0.0;
    for (int r = 0; r < nrows; r++) keys += (double)fd_problem_visible_count(p, rows ? rows[r] : r);
    const double par = tier == FD_REFTIER_GPU ? 1.0 : (double)(jobs > 0 ? jobs : 1);
    return keys * (double)p->batch * (double)p->heads * (double)p->head_dim * tier_cost(tier) / par;
}

/* Seconds of the CPU kernels that compute the checked rows (the replay and eager attention,
 * the computed baseline: two of them in most runs), rows over `jobs` threads, for every row: eager
 * attention goes over all seqlen_k keys of a row at 13-70 ns per key x head_dim (measured:
 * cpu-standard, B1 H1 N1024 d128 fp16, 1.8 s on the 2-core dev VM; B1 H4 N1023 d128 bf16
 * with the tensor-core block model and window/ALiBi/softcap, 37 s on the H200's host,
 * 2026-12-03, one thread each). Without it "every row" made `check` of an imported N = 1023 bundle take a
 * minute (the reference took 0.1 s). */
static double cpu_kernels_estimate(const fd_problem *p, int jobs)
{
    return 2.0 * (double)p->batch * (double)p->heads * (double)p->seqlen_q * (double)p->seqlen_k *
           (double)p->head_dim * 40e-9 / (double)(jobs > 0 ? jobs : 1);
}

int fd_reference_rows_per_head(const fd_casefile *cf, const fd_problem *p, int jobs, double *estimate_s)
{
    const double est = fd_reference_estimate(p, NULL, p->seqlen_q, jobs, cf->reference) + cpu_kernels_estimate(p, jobs);
    if (estimate_s) *estimate_s = est;
    if (cf->reference_budget > 0.0 && est <= cf->reference_budget) return 0;
    return cf->rows_per_head;
}

int fd_reference_rows_tiered(const fd_problem *p, const float *q, const float *k, const float *v,
                             const int *rows, int nrows, int jobs, fd_reftier tier, double *ref_o,
                             double *ref_lse, int *undecided_out, int *precmax_out, fd_ref_stats *st,
                             char *err, size_t errlen)
{
    fd_ref_stats s0;
    if (!st) st = &s0;
    const long ntask = (long)p->batch * p->heads * nrows;
    const int D = p->head_dim;
    const double t0 = fd_now_s();
    st->tier = fd_reftier_resolve(tier);
    if (tier == FD_REFTIER_AUTO && st->tier == FD_REFTIER_GPU && D > FD_TB_HEAD_DIM_MAX) st->tier = FD_REFTIER_CPU;
    /* FP8 (issue 15 item 4): the binary64 tier takes sigma as one binary32 and O without
     * v_descale; the descales are modelled in MPFR only (fd_ref.c), so FP8 rows go there */
    if (fd_dtype_is_fp8(p->dtype)) st->tier = FD_REFTIER_MPFR;
    st->values = ntask * (D + 1);
    st->values_tier = st->values_mpfr = st->rows_tier = st->rows_mpfr = 0;
    st->seconds_tier = st->seconds_mpfr = 0.0;
    if (st->tier == FD_REFTIER_MPFR) {
        int rc = fd_reference_rows(p, q, k, v, rows, nrows, jobs, ref_o, ref_lse, undecided_out, precmax_out,
                                   err, errlen);
        st->values_mpfr = st->values;
        st->rows_mpfr = ntask;
        st->seconds_mpfr = fd_now_s() - t0;
        return rc;
    }
    unsigned char *ok = malloc((size_t)(ntask > 0 ? ntask : 1));
    if (!ok) {
        snprintf(err, errlen, "out of memory for the reference of %ld rows", ntask);
        return -1;
    }
    long nd = 0;
    int rc = st->tier == FD_REFTIER_GPU
                 ? fd_tier_gpu_rows(p, q, k, v, rows, nrows, ref_o, ref_lse, ok, &nd, err, errlen)
                 : fd_tier_cpu_rows(p, q, k, v, rows, nrows, jobs, ref_o, ref_lse, ok, &nd, err, errlen);
    st->seconds_tier = fd_now_s() - t0;
    if (rc) {
        free(ok);
        return -1;
    }
    /* The rows the tier did not decide whole, to MPFR (one call per row). */
    long nund = 0;
    for (long t = 0; t < ntask; t++) nund += !ok[t];
    long *utask = malloc(sizeof(long) * (size_t)(nund > 0 ? nund : 1));
    if (!utask) {
        free(ok);
        snprintf(err, errlen, "out of memory for the reference of %ld rows", ntask);
        return -1;
    }
    long u = 0;
    for (long t = 0; t < ntask; t++)
        if (!ok[t]) utask[u++] = t;
    const double t1 = fd_now_s();
    rc = mpfr_tasks(p, q, k, v, rows, nrows, utask, nund, jobs, ref_o, ref_lse, undecided_out, precmax_out, err,
                    errlen);
    st->seconds_mpfr = fd_now_s() - t1;
    free(ok);
    free(utask);
    if (rc) return -1;
    st->rows_mpfr = nund;
    st->rows_tier = ntask - nund;
    st->values_mpfr = nund * (D + 1);
    st->values_tier = st->rows_tier * (D + 1);
    (void)nd; /* decided values of undecided rows: MPFR recomputes the whole row */
    return 0;
}

int fd_backend_obtain(const fd_casefile *cf, const fd_case *c, const fd_backend *be, const float *given_o,
                      const float *given_lse, const float *q, const float *k, const float *v, const int *rows,
                      int nrows, float *o, float **lse, double *ms, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    if (given_o) {
        memcpy(o, given_o, sizeof(float) * fd_q_numel(p));
        if (given_lse) memcpy(*lse, given_lse, sizeof(float) * fd_lse_numel(p));
        else *lse = NULL;
        return 0;
    }
    for (size_t x = 0; x < fd_q_numel(p); x++) o[x] = NAN;
    for (size_t x = 0; x < fd_lse_numel(p); x++) (*lse)[x] = NAN;
    return be->run(cf, c, q, k, v, rows, nrows, o, *lse, ms, err, errlen);
}

