/* fd_obtain.c: see fd_obtain.h. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include <stdlib.h>

#include "fd_obtain.h"
#include "fd_ref.h"
#include "fd_ref_bwd.h"
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


/* MPFR (fd_ref_bwd_group) on the groups listed in groups (ngr of them; NULL: every group),
 * each on the query-row slots with qsel[g * nq + x] set and the key-row slots with
 * ksel[g * nk + x] set (NULL: every slot), into dq [b][h][x][d] and dk, dv [b][hk][x][d] at
 * those slots. *nvalues receives the values recomputed. */
static int mpfr_bwd_groups(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                           const int *qrows, int nq, const int *krows, int nk, const long *groups, long ngr,
                           const unsigned char *qsel, const unsigned char *ksel, int jobs, double *dq, double *dk,
                           double *dv, int *undecided_out, int *precmax_out, long *nvalues, char *err, size_t errlen)
{
    fd_ref_opts ro;
    fd_ref_opts_default(&ro);
    const int D = p->head_dim, G = p->heads / p->kv_heads;
    int undecided = 0, precmax = 0, failed = 0;
    long nval = 0;
    char ref_err[256] = "";
#pragma omp parallel for schedule(dynamic, 1) num_threads(jobs > 0 ? jobs : 1) reduction(+ : undecided, nval) reduction(max : precmax)
    for (long x = 0; x < ngr; x++) {
        if (fd_interrupted || failed) continue;
        const long t = groups ? groups[x] : x;
        const int b = (int)(t / p->kv_heads), hk = (int)(t % p->kv_heads);
        int *qs = malloc(sizeof(int) * (size_t)(nq + 1) * 2), *ks = malloc(sizeof(int) * (size_t)(nk + 1) * 2);
        double *gq = malloc(sizeof(double) * ((size_t)G * (size_t)nq * (size_t)D + 1));
        double *gk = malloc(sizeof(double) * ((size_t)nk * (size_t)D + 1));
        double *gv = malloc(sizeof(double) * ((size_t)nk * (size_t)D + 1));
        char e2[256] = "out of memory";
        fd_ref_bwd_info info = {0, 0};
        int bad = !qs || !ks || !gq || !gk || !gv;
        int sq = 0, sk = 0; /* the chosen slots: rows in qs[0..sq), their slots in qs[nq + 1 + ..] */
        if (!bad) {
            for (int r = 0; r < nq; r++)
                if (!qsel || qsel[t * nq + r]) {
                    qs[sq] = qrows[r];
                    qs[nq + 1 + sq++] = r;
                }
            for (int r = 0; r < nk; r++)
                if (!ksel || ksel[t * nk + r]) {
                    ks[sk] = krows[r];
                    ks[nk + 1 + sk++] = r;
                }
            bad = fd_ref_bwd_group(p, q, k, v, dout, b, hk, qs, sq, ks, sk, &ro, gq, gk, gv, NULL, &info, e2,
                                   sizeof e2);
        }
        if (bad) {
#pragma omp critical
            {
                failed = 1;
                snprintf(ref_err, sizeof ref_err, "%s", e2);
            }
        } else {
            /* [h_in_group][slot][d] into [b][h][r][d]; [slot][d] into [b][hk][r][d] */
            for (int g = 0; g < G; g++)
                for (int y = 0; y < sq; y++)
                    memcpy(dq + ((((size_t)b * (size_t)p->heads + (size_t)(hk * G + g)) * (size_t)nq +
                                  (size_t)qs[nq + 1 + y]) * (size_t)D),
                           gq + ((size_t)g * (size_t)sq + (size_t)y) * (size_t)D, sizeof(double) * (size_t)D);
            for (int y = 0; y < sk; y++) {
                const size_t o = ((size_t)t * (size_t)nk + (size_t)ks[nk + 1 + y]) * (size_t)D;
                memcpy(dk + o, gk + (size_t)y * (size_t)D, sizeof(double) * (size_t)D);
                memcpy(dv + o, gv + (size_t)y * (size_t)D, sizeof(double) * (size_t)D);
            }
            nval += ((long)G * sq + 2L * sk) * D;
            undecided += info.undecided;
            if (info.prec_used > precmax) precmax = info.prec_used;
        }
        free(qs);
        free(ks);
        free(gq);
        free(gk);
        free(gv);
    }
    *undecided_out = undecided;
    *precmax_out = precmax;
    *nvalues = nval;
    if (fd_interrupted) {
        snprintf(err, errlen, "interrupted");
        return -1;
    }
    if (failed) {
        snprintf(err, errlen, "backward reference failed: %s", ref_err);
        return -1;
    }
    return 0;
}

int fd_reference_bwd_tiered(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                            const int *qrows, int nq, const int *krows, int nk, int jobs, fd_reftier tier,
                            double *dq, double *dk, double *dv, int *undecided_out, int *precmax_out,
                            fd_ref_stats *st, char *err, size_t errlen)
{
    fd_ref_stats s0;
    if (!st) st = &s0;
    const int D = p->head_dim, G = p->heads / p->kv_heads;
    const long ngroups = (long)p->batch * p->kv_heads;
    const size_t nqv = (size_t)p->batch * (size_t)p->heads * (size_t)nq * (size_t)D;
    const size_t nkv = (size_t)ngroups * (size_t)nk * (size_t)D;
    const double t0 = fd_now_s();
    memset(st, 0, sizeof *st);
    st->tier = fd_reftier_resolve(tier);
    if (tier == FD_REFTIER_AUTO && st->tier == FD_REFTIER_GPU && D > FD_TB_HEAD_DIM_MAX) st->tier = FD_REFTIER_CPU;
    st->values = (long)(nqv + 2 * nkv);
    *undecided_out = *precmax_out = 0;
    long nval = 0;
    if (st->tier != FD_REFTIER_MPFR && (p->varlen > 0 || p->page_size > 0)) st->tier = FD_REFTIER_MPFR; /* declined */
    if (st->tier == FD_REFTIER_MPFR) {
        const int rc = mpfr_bwd_groups(p, q, k, v, dout, qrows, nq, krows, nk, NULL, ngroups, NULL, NULL, jobs, dq,
                                       dk, dv, undecided_out, precmax_out, &nval, err, errlen);
        st->values_mpfr = nval;
        st->rows_mpfr = ngroups;
        st->seconds_mpfr = fd_now_s() - t0;
        return rc;
    }
    fd_tier_bwd_out to;
    memset(&to, 0, sizeof to);
    to.dq = dq;
    to.dk = dk;
    to.dv = dv;
    to.okq = malloc(nqv + 1);
    to.okk = malloc(nkv + 1);
    to.okv = malloc(nkv + 1);
    unsigned char *qsel = calloc((size_t)ngroups * (size_t)nq + 1, 1), *ksel = calloc((size_t)ngroups * (size_t)nk + 1, 1);
    long *und = malloc(sizeof(long) * (size_t)(ngroups + 1));
    int rc = -1;
    if (!to.okq || !to.okk || !to.okv || !qsel || !ksel || !und) {
        snprintf(err, errlen, "out of memory for the backward reference tier");
        goto out;
    }
    rc = st->tier == FD_REFTIER_GPU ? fd_tier_bwd_gpu(p, q, k, v, dout, qrows, nq, krows, nk, &to, err, errlen)
                                    : fd_tier_bwd_cpu(p, q, k, v, dout, qrows, nq, krows, nk, jobs, &to, err, errlen);
    st->seconds_tier = fd_now_s() - t0;
    if (rc) goto out;
    /* The query-row slots (any head of the group) and key-row slots with an undecided value
     * go to MPFR, one call per group that has any. */
    long nund = 0;
    for (long g = 0; g < ngroups; g++) {
        int any = 0;
        for (int hh = 0; hh < G; hh++)
            for (int x = 0; x < nq; x++) {
                const size_t o = (((size_t)g * (size_t)G + (size_t)hh) * (size_t)nq + (size_t)x) * (size_t)D;
                for (int d = 0; d < D; d++)
                    if (!to.okq[o + (size_t)d]) {
                        qsel[g * nq + x] = 1;
                        any = 1;
                        break;
                    }
            }
        for (int x = 0; x < nk; x++) {
            const size_t o = ((size_t)g * (size_t)nk + (size_t)x) * (size_t)D;
            for (int d = 0; d < D; d++)
                if (!to.okk[o + (size_t)d] || !to.okv[o + (size_t)d]) {
                    ksel[g * nk + x] = 1;
                    any = 1;
                    break;
                }
        }
        if (any) und[nund++] = g;
    }
    const double t1 = fd_now_s();
    if (nund > 0)
        rc = mpfr_bwd_groups(p, q, k, v, dout, qrows, nq, krows, nk, und, nund, qsel, ksel, jobs, dq, dk, dv,
                             undecided_out, precmax_out, &nval, err, errlen);
    st->seconds_mpfr = fd_now_s() - t1;
    if (rc) goto out;
    st->rows_mpfr = nund;
    st->rows_tier = ngroups - nund;
    st->values_mpfr = nval;
    st->values_tier = st->values - nval;
out:
    free(to.okq);
    free(to.okk);
    free(to.okv);
    free(qsel);
    free(ksel);
    free(und);
    return rc;
}
