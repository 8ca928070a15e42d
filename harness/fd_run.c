/* fd_run.c: one case through the reference and the backends; see fd_run.h. */
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fd_dtype.h"
#include "fd_inputs.h"
#include "fd_philox.h"
#include "fd_ref.h"
#include "fd_run.h"

volatile sig_atomic_t fd_interrupted = 0;

const char *fd_verdict_name(fd_verdict v)
{
    switch (v) {
    case FD_PASS: return "PASS";
    case FD_MARGINAL: return "MARGINAL";
    case FD_FAIL: return "FAIL";
    case FD_UNDECIDED: return "UNDECIDED";
    }
    return "?";
}

double fd_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void fd_add_reason(fd_case_result *r, const char *fmt, ...)
{
    size_t n = strlen(r->reasons);
    if (n + 4 >= sizeof r->reasons) return;
    if (n) { strcat(r->reasons, "; "); n += 2; }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reasons + n, sizeof r->reasons - n, fmt, ap);
    va_end(ap);
}

void fd_worsen(fd_verdict *v, fd_verdict w)
{
    /* FAIL > UNDECIDED > MARGINAL > PASS */
    static const int rank[] = {0, 1, 3, 2};
    if (rank[w] > rank[*v]) *v = w;
}

void fd_judge(const fd_policy *po, fd_case_result *r)
{
    fd_verdict v = FD_PASS;
    r->reasons[0] = 0;
    const fd_dtype dt = r->c.prob.dtype;
    for (int t = 0; t < r->nbe; t++) {
        fd_backend_result *b = &r->be[t];
        if (b->skipped) continue;
        if (!b->ok) {
            fd_worsen(&v, FD_FAIL);
            fd_add_reason(r, "%s failed: %s", b->be->name, b->error);
            continue;
        }
        if (b->be->role != FD_ROLE_FLASH) continue;
        if (b->m.nan_count || b->m.inf_count) {
            fd_worsen(&v, FD_FAIL);
            fd_add_reason(r, "%s: %ld NaN and %ld Inf outputs", b->be->name, b->m.nan_count, b->m.inf_count);
        }
        if (b->mask_mismatch) {
            fd_worsen(&v, FD_FAIL);
            fd_add_reason(r, "%s: dropout mask differs from the regenerated one in %ld of %ld elements, first at b%d h%d row %d key %d; %s",
                       b->be->name, b->mask_mismatch, b->mask_checked, b->mm_b, b->mm_h, b->mm_i, b->mm_j, b->mask_explained);
        }
        if (b->fa_ratio >= 0) {
            if (b->m.max_abs > b->fa_limit) {
                fd_worsen(&v, FD_FAIL);
                fd_add_reason(r, "%s: max_abs %.3g > %g x standard + %g = %.3g", b->be->name,
                           b->m.max_abs, po->fa_ratio, po->atol, b->fa_limit);
            } else if (b->m.max_abs > po->marginal * b->fa_limit) {
                fd_worsen(&v, FD_MARGINAL);
                fd_add_reason(r, "%s: max_abs %.3g above %g of the limit %.3g", b->be->name,
                           b->m.max_abs, po->marginal, b->fa_limit);
            }
        }
        const double ul = po->max_ulp[dt];
        if (ul > 0) {
            if (b->m.max_ulp > ul) {
                fd_worsen(&v, FD_FAIL);
                fd_add_reason(r, "%s: max_ulp %.3g > %g", b->be->name, b->m.max_ulp, ul);
            } else if (b->m.max_ulp > po->marginal * ul) {
                fd_worsen(&v, FD_MARGINAL);
                fd_add_reason(r, "%s: max_ulp %.3g above %g of %g", b->be->name, b->m.max_ulp, po->marginal, ul);
            }
        }
        if (po->max_lse_abs > 0 && b->m.lse_max_abs > po->max_lse_abs) {
            fd_worsen(&v, FD_FAIL);
            fd_add_reason(r, "%s: LSE error %.3g > %g", b->be->name, b->m.lse_max_abs, po->max_lse_abs);
        }
    }
    if (r->drop.active && r->drop.total > 0 && fabs(r->drop.z_threshold) > po->keep_sigma) {
        fd_worsen(&v, FD_FAIL);
        fd_add_reason(r, "keep rate %.5f is %.1f sigma from the threshold's %.5f", r->drop.keep_rate,
                   r->drop.z_threshold, r->drop.keep_threshold);
    }
    if (r->ref_undecided) {
        fd_worsen(&v, FD_UNDECIDED);
        fd_add_reason(r, "reference undecided for %d values at %d bits", r->ref_undecided, r->ref_prec_max);
    }
    r->verdict = v;
}

void fd_dropout_stats_compute(const fd_problem *p, const int *rows, int nrows, const int *nvis,
                             fd_dropout_stats *s)
{
    memset(s, 0, sizeof *s);
    if (!(p->dropout_p > 0.0)) return;
    s->active = 1;
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    s->threshold = thr;
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int r = 0; r < nrows; r++)
                for (int j = 0; j < nvis[r]; j++) {
                    s->kept += fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, rows[r], j);
                    s->total++;
                }
    const double n = (double)s->total;
    s->keep_nominal = 1.0 - p->dropout_p;
    s->keep_threshold = ((double)thr + 1.0) / 256.0;
    s->scale_bias = s->keep_threshold / s->keep_nominal - 1.0;
    if (s->total) {
        s->keep_rate = (double)s->kept / n;
        const double qt = s->keep_threshold, qn = s->keep_nominal;
        s->z_threshold = qt < 1.0 ? ((double)s->kept - n * qt) / sqrt(n * qt * (1.0 - qt)) : 0.0;
        s->z_nominal = ((double)s->kept - n * qn) / sqrt(n * qn * (1.0 - qn));
    }
}

void fd_apply_fa_rule(const fd_policy *po, fd_case_result *res, int same_family)
{
    for (int t = 0; t < res->nbe; t++) {
        fd_backend_result *f = &res->be[t];
        if (!f->ok || f->be->role != FD_ROLE_FLASH) continue;
        for (int u = 0; u < res->nbe; u++) {
            fd_backend_result *s = &res->be[u];
            if (s->ok && s->be->role == FD_ROLE_STANDARD &&
                (!same_family || !strcmp(s->be->family, f->be->family))) {
                f->fa_limit = po->fa_ratio * s->m.max_abs + po->atol;
                f->fa_ratio = s->m.max_abs > 0 ? f->m.max_abs / s->m.max_abs
                                               : (f->m.max_abs > 0 ? (double)INFINITY : 1.0);
                break;
            }
        }
    }
}

int fd_reference_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                      const int *rows, int nrows, int jobs, double *ref_o, double *ref_lse,
                      int *undecided_out, int *precmax_out, char *err, size_t errlen)
{
    fd_ref_opts ro;
    fd_ref_opts_default(&ro);
    const int D = p->head_dim;
    const long ntask = (long)p->batch * p->heads * nrows;
    int undecided = 0, precmax = 0, failed = 0;
    char ref_err[256] = "";
#pragma omp parallel for schedule(dynamic, 1) num_threads(jobs) reduction(+ : undecided) reduction(max : precmax)
    for (long t = 0; t < ntask; t++) {
        if (fd_interrupted || failed) continue;
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

/* Which (seed, offset) near the case's would have produced the applied mask: tries seeds
 * seed-2..seed+2 and offsets offset-512..offset+512 on the first 4096 visible elements. */
static void mask_search(const fd_problem *p, const int *rows, int nrows, const int *nvis,
                        const uint8_t *mask, char *out, size_t len)
{
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    out[0] = 0;
    for (int ds = -2; ds <= 2; ds++)
        for (long doff = -512; doff <= 512; doff++) {
            if (ds == 0 && doff == 0) continue;
            const uint64_t seed = p->seed + (uint64_t)(int64_t)ds, off = p->offset + (uint64_t)(int64_t)doff;
            long n = 0, bad = 0;
            for (int b = 0; b < p->batch && n < 4096 && !bad; b++)
                for (int h = 0; h < p->heads && n < 4096 && !bad; h++)
                    for (int r = 0; r < nrows && n < 4096 && !bad; r++)
                        for (int j = 0; j < nvis[r] && n < 4096 && !bad; j++, n++) {
                            size_t x = (((size_t)b * (size_t)p->heads + (size_t)h) * (size_t)nrows + (size_t)r) * (size_t)p->seqlen_k + (size_t)j;
                            bad = mask[x] != (uint8_t)fd_fa2_keep(seed, off, thr, p->heads, b, h, rows[r], j);
                        }
            if (n > 0 && !bad) {
                snprintf(out, len, "the applied mask matches seed %llu, offset %llu (case: seed %llu, offset %llu)",
                         (unsigned long long)seed, (unsigned long long)off,
                         (unsigned long long)p->seed, (unsigned long long)p->offset);
                return;
            }
        }
    snprintf(out, len, "no seed within +-2 and offset within +-512 of the case's explains the applied mask");
}

static int check_mask(const fd_casefile *cf, const fd_case *c, const fd_backend *be, const float *q,
                      const float *k, const float *v, const int *rows, int nrows, const int *nvis,
                      fd_backend_result *br)
{
    const fd_problem *p = &c->prob;
    const size_t n = (size_t)p->batch * (size_t)p->heads * (size_t)nrows * (size_t)p->seqlen_k;
    uint8_t *mask = malloc(n ? n : 1);
    if (!mask) return -1;
    if (be->applied_mask(cf, c, q, k, v, rows, nrows, mask, br->error, sizeof br->error)) {
        free(mask);
        return -1;
    }
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    br->mm_b = br->mm_h = br->mm_i = br->mm_j = -1;
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int r = 0; r < nrows; r++)
                for (int j = 0; j < nvis[r]; j++) {
                    size_t x = (((size_t)b * (size_t)p->heads + (size_t)h) * (size_t)nrows + (size_t)r) * (size_t)p->seqlen_k + (size_t)j;
                    br->mask_checked++;
                    if (mask[x] != (uint8_t)fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, rows[r], j)) {
                        if (!br->mask_mismatch) { br->mm_b = b; br->mm_h = h; br->mm_i = rows[r]; br->mm_j = j; }
                        br->mask_mismatch++;
                    }
                }
    if (br->mask_mismatch) mask_search(p, rows, nrows, nvis, mask, br->mask_explained, sizeof br->mask_explained);
    free(mask);
    return 0;
}

int fd_run_case(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe,
                int jobs, fd_case_result *res, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    const double t0 = fd_now_s();
    memset(res, 0, sizeof *res);
    res->c = *c;
    float *q, *k, *v;
    if (fd_inputs_make(c, &q, &k, &v, err, errlen)) return -1;
    const int D = p->head_dim;
    int cap = (cf->rows_per_head <= 0 || p->seqlen_q <= cf->rows_per_head) ? p->seqlen_q
                                                                          : cf->rows_per_head + 16;
    res->rows = malloc(sizeof(int) * (size_t)(cap + 16));
    int *nvis = malloc(sizeof(int) * (size_t)(cap + 16));
    const size_t nbhr = (size_t)p->batch * (size_t)p->heads * (size_t)(cap + 16);
    double *ref_o = malloc(sizeof(double) * nbhr * (size_t)D);
    double *ref_lse = malloc(sizeof(double) * nbhr);
    float *o = malloc(sizeof(float) * fd_q_numel(p));
    float *lse = malloc(sizeof(float) * fd_lse_numel(p));
    float *kout = NULL, *rout = NULL; /* checked outputs of cuda-flash and cpu-flash */
    int rc = -1;
    if (!res->rows || !nvis || !ref_o || !ref_lse || !o || !lse) {
        snprintf(err, errlen, "out of memory for case %s", c->id);
        goto out;
    }
    res->nrows = fd_sample_rows(p, cf->rows_per_head, res->rows);
    const int nrows = res->nrows;
    for (int r = 0; r < nrows; r++) {
        nvis[r] = fd_mask_visible_count(p->mask, res->rows[r], p->seqlen_q, p->seqlen_k);
        if (nvis[r] == 0) res->empty_rows++;
    }

    /* The reference, one row per task. */
    int undecided = 0, precmax = 0;
    const double tr = fd_now_s();
    int rrc = fd_reference_rows(p, q, k, v, res->rows, nrows, jobs, ref_o, ref_lse, &undecided,
                                &precmax, err, errlen);
    res->ref_seconds = fd_now_s() - tr;
    if (rrc) goto out;
    res->ref_undecided = undecided;
    res->ref_prec_max = precmax;

    res->nbe = nbe;
    for (int t = 0; t < nbe; t++) {
        fd_backend_result *br = &res->be[t];
        br->be = bes[t];
        br->fa_ratio = -1.0;
        for (size_t x = 0; x < fd_q_numel(p); x++) o[x] = NAN;
        for (size_t x = 0; x < fd_lse_numel(p); x++) lse[x] = NAN;
        if (bes[t]->supports && !bes[t]->supports(c, br->error, sizeof br->error)) {
            br->skipped = 1;
            continue;
        }
        double ms = 0.0;
        const double tb = fd_now_s();
        if (bes[t]->run(cf, c, q, k, v, res->rows, nrows, o, lse, &ms, br->error, sizeof br->error)) {
            br->ok = 0;
            continue;
        }
        br->ok = 1;
        if (fd_metrics_compute(p, res->rows, nrows, nvis, ref_o, ref_lse, o, lse,
                               bes[t]->role == FD_ROLE_STANDARD, &br->m)) {
            snprintf(err, errlen, "out of memory computing metrics for case %s", c->id);
            goto out;
        }
        br->m.ms = ms > 0.0 ? ms : 1e3 * (fd_now_s() - tb);
        if (ms > 0.0 && !strcmp(bes[t]->family, "cuda")) {
            /* the GPU computes every row: 2 flops per multiply-add in QK^T and in PV */
            double pairs = 0.0;
            for (int i = 0; i < p->seqlen_q; i++)
                pairs += (double)fd_mask_visible_count(p->mask, i, p->seqlen_q, p->seqlen_k);
            br->m.tflops = 4.0 * (double)p->head_dim * pairs * (double)p->batch * (double)p->heads / (ms * 1e-3) / 1e12;
        }
        float **keep = !strcmp(bes[t]->name, "cuda-flash") ? &kout : !strcmp(bes[t]->name, "cpu-flash") ? &rout : NULL;
        if (keep && !*keep && (*keep = malloc(sizeof(float) * nbhr * (size_t)D))) {
            size_t x = 0;
            for (int b = 0; b < p->batch; b++)
                for (int h = 0; h < p->heads; h++)
                    for (int r = 0; r < nrows; r++)
                        for (int d = 0; d < D; d++) (*keep)[x++] = o[fd_q_index(p, b, res->rows[r], h, d)];
        }
        if (bes[t]->applied_mask && p->dropout_p > 0.0 &&
            check_mask(cf, c, bes[t], q, k, v, res->rows, nrows, nvis, br)) {
            br->ok = 0;
            if (!br->error[0]) snprintf(br->error, sizeof br->error, "out of memory checking the dropout mask");
        }
    }
    /* The GPU kernel against its CPU replay, bit for bit. */
    if (kout && rout) {
        res->replay_checked = 1;
        size_t t = 0;
        for (int b = 0; b < p->batch; b++)
            for (int h = 0; h < p->heads; h++)
                for (int r = 0; r < nrows; r++)
                    for (int d = 0; d < D; d++, t++) {
                        res->replay_elems++;
                        if (fd_f32_bits(kout[t]) == fd_f32_bits(rout[t])) {
                            res->replay_identical++;
                        } else if (res->nmis < 16) {
                            res->mis[res->nmis].b = b; res->mis[res->nmis].h = h;
                            res->mis[res->nmis].i = res->rows[r]; res->mis[res->nmis].d = d;
                            res->mis[res->nmis].kernel = kout[t]; res->mis[res->nmis].replay = rout[t];
                            res->nmis++;
                        }
                    }
    }
    fd_apply_fa_rule(&cf->policy, res, 1);
    fd_dropout_stats_compute(p, res->rows, nrows, nvis, &res->drop);
    fd_judge(&cf->policy, res);
    res->seconds = fd_now_s() - t0;
    rc = 0;
out:
    free(q); free(k); free(v); free(nvis); free(ref_o); free(ref_lse); free(o); free(lse);
    free(kout); free(rout);
    if (rc) {
        free(res->rows);
        res->rows = NULL;
    }
    return rc;
}

void fd_case_result_free(fd_case_result *r)
{
    free(r->rows);
    r->rows = NULL;
}
