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
#include "fd_metrics.h"
#include <jansson.h>
#include "fd_philox.h"
#include "fd_ref.h"
#include "fd_run.h"
#include "fd_run_bias.h"
#include "fd_run_inv.h"
#include "fd_run_bwd.h"

static const char *origin_word(fd_origin o)
{
    return o == FD_ORIGIN_COMPUTED ? "computed" : o == FD_ORIGIN_GIVEN ? "supplied" : "kernel";
}

/* The rules, in one place: every judged flash output, then the case-level ones. */
static void judge(const fd_policy *po, fd_case_result *r)
{
    fd_verdict v = FD_PASS;
    r->reasons[0] = 0;
    const fd_dtype dt = fd_out_dtype(r->c.prob.dtype); /* FP8: limits of the bf16 output */
    int flash_ok = 0, failed = 0;
    for (int t = 0; t < r->nbe; t++) {
        fd_backend_result *b = &r->be[t];
        if (b->skipped) continue;
        if (!b->ok) {
            fd_worsen(&v, FD_FAIL);
            failed++;
            fd_add_reason(r, "%s failed: %s", b->be->name, b->error);
            continue;
        }
        if (b->repeat_runs > 1 && (b->repeat_distinct > 1 || b->repeat_failed)) {
            fd_worsen(&v, FD_FAIL);
            fd_add_reason(r, "%s: outputs not bitwise identical: %d distinct hashes%s over %d runs", b->be->name,
                          b->repeat_distinct, b->repeat_failed ? " and failed runs" : "", b->repeat_runs);
        }
        fd_bwd_judge(po, r, b, &v);
        if (b->inv.measured && b->inv.differ) {
            fd_worsen(&v, po->require_batch_invariance ? FD_FAIL : FD_PASS);
            fd_add_reason(r, "%s: not batch invariant: %ld of %ld elements differ alone vs in the batch (max %.3g, "
                             "%.3g ulp; first b%d row %d h%d d%d)%s", b->be->name, b->inv.differ, b->inv.checked,
                          b->inv.max_abs, b->inv.max_ulp, b->inv.first_b, b->inv.first_i, b->inv.first_h,
                          b->inv.first_d, po->require_batch_invariance ? "; the policy requires invariance" : "");
        }
        if (fd_supplied_standard(b)) {
            /* someone else's standard attention: the standard rule, when it could be applied */
            if (b->fa_ratio < 0) continue;
            flash_ok++;
            const fd_backend_result *s = &r->be[b->baseline];
            if (b->m.nan_count || b->m.inf_count) {
                fd_worsen(&v, FD_FAIL);
                fd_add_reason(r, "%s: %ld NaN and %ld Inf outputs", b->be->name, b->m.nan_count, b->m.inf_count);
            }
            if (b->m.max_abs > b->fa_limit) {
                fd_worsen(&v, FD_FAIL);
                fd_add_reason(r, "%s (standard): max_abs %.3g > %g x computed standard (%s, %.3g) + %g = %.3g",
                              b->be->name, b->m.max_abs, po->standard_ratio, s->be->name, s->m.max_abs, po->atol,
                              b->fa_limit);
            }
            continue;
        }
        if (b->be->role != FD_ROLE_FLASH) continue;
        flash_ok++;
        int rules = 0;
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
            rules++;
            const fd_backend_result *s = &r->be[b->baseline];
            if (b->m.max_abs > b->fa_limit) {
                fd_worsen(&v, FD_FAIL);
                fd_add_reason(r, "%s: max_abs %.3g > %g x standard (%s %s, %.3g) + %g = %.3g", b->be->name,
                              b->m.max_abs, po->fa_ratio, origin_word(s->origin), s->be->name, s->m.max_abs,
                              po->atol, b->fa_limit);
            } else if (b->m.max_abs > po->marginal * b->fa_limit) {
                fd_worsen(&v, FD_MARGINAL);
                fd_add_reason(r, "%s: max_abs %.3g above %g of the limit %.3g", b->be->name,
                           b->m.max_abs, po->marginal, b->fa_limit);
            }
        }
        const double ul = po->max_ulp[dt];
        if (ul > 0) {
            rules++;
            if (b->m.max_ulp > ul) {
                fd_worsen(&v, FD_FAIL);
                fd_add_reason(r, "%s: max_ulp %.3g > %g", b->be->name, b->m.max_ulp, ul);
            } else if (b->m.max_ulp > po->marginal * ul) {
                fd_worsen(&v, FD_MARGINAL);
                fd_add_reason(r, "%s: max_ulp %.3g above %g of %g", b->be->name, b->m.max_ulp, po->marginal, ul);
            }
        }
        /* an LSE that was not given is not measured: never compared with the limit */
        if (po->max_lse_abs > 0 && b->m.lse_measured) {
            if (b->m.lse_max_abs > po->max_lse_abs) {
                fd_worsen(&v, FD_FAIL);
                fd_add_reason(r, "%s: LSE error %.3g > %g", b->be->name, b->m.lse_max_abs, po->max_lse_abs);
            }
        }
        if (!rules) { /* the output itself was judged by no rule (a mask or LSE check is not one) */
            fd_worsen(&v, FD_UNJUDGED);
            fd_add_reason(r, "%s: no rule could be applied (no standard output to compare with, no limit set)",
                          b->be->name);
        }
    }
    if (!flash_ok && !failed) {
        fd_worsen(&v, FD_UNJUDGED);
        fd_add_reason(r, "no flash output to judge (only standard kernels, or every flash backend skipped)");
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
    if (r->bwd.ref_undecided) {
        fd_worsen(&v, FD_UNDECIDED);
        fd_add_reason(r, "gradient reference undecided for %d values at %d bits", r->bwd.ref_undecided,
                      r->bwd.ref_prec_max);
    }
    r->verdict = v;
}

/* First visible key of row i (nvis[r] keys from there: the visible keys are an interval). */
static int vis_lo(const fd_problem *p, int i)
{
    int lo, hi;
    fd_mask_visible_range(p, i, &lo, &hi);
    return lo;
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
                for (int j = vis_lo(p, rows[r]); j < vis_lo(p, rows[r]) + nvis[r]; j++) {
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

/* The baseline of a flash output: a standard output of its own family (a kernel beside
 * a kernel, a supplied output beside a supplied one), else a computed one; -1 if none. */
static int baseline_of(const fd_case_result *res, const fd_backend_result *f)
{
    for (int pass = 0; pass < 2; pass++)
        for (int u = 0; u < res->nbe; u++) {
            const fd_backend_result *s = &res->be[u];
            if (!s->ok || s->be->role != FD_ROLE_STANDARD) continue;
            if (pass == 0 ? !strcmp(s->be->family, f->be->family) : s->origin == FD_ORIGIN_COMPUTED) return u;
        }
    return -1;
}

/* The computed standard result, or -1. */
static int computed_of(const fd_case_result *res)
{
    for (int u = 0; u < res->nbe; u++)
        if (res->be[u].ok && res->be[u].origin == FD_ORIGIN_COMPUTED && res->be[u].be->role == FD_ROLE_STANDARD)
            return u;
    return -1;
}

/* FlashAttention's rule: flash max abs error <= fa_ratio x its baseline's + atol (off
 * when fa_ratio <= 0, which case files refuse but a caller of the engine may set); and
 * the standard rule: a supplied standard output (someone else's eager attention) max abs
 * error <= standard_ratio x the computed standard's + atol. */
static void apply_fa_rule(const fd_policy *po, fd_case_result *res)
{
    for (int t = 0; t < res->nbe; t++) {
        fd_backend_result *f = &res->be[t];
        f->baseline = -1;
        const int sup = fd_supplied_standard(f);
        if (!f->ok || (sup ? !(po->standard_ratio > 0) : (!(po->fa_ratio > 0) || f->be->role != FD_ROLE_FLASH)))
            continue;
        const int u = sup ? computed_of(res) : baseline_of(res, f);
        if (u < 0) continue;
        const fd_backend_result *s = &res->be[u];
        f->baseline = u;
        f->fa_limit = (sup ? po->standard_ratio : po->fa_ratio) * s->m.max_abs + po->atol;
        f->fa_ratio = s->m.max_abs > 0 ? f->m.max_abs / s->m.max_abs
                                       : (f->m.max_abs > 0 ? (double)INFINITY : 1.0);
    }
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
                        for (int j = vis_lo(p, rows[r]); j < vis_lo(p, rows[r]) + nvis[r] && n < 4096 && !bad; j++, n++) {
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

/* The applied dropout mask ([b][h][r][j] over the checked rows: from the backend, or
 * gathered from a given [b][h][s_q][s_k] mask) against the regenerated one. */
static int check_mask(const fd_casefile *cf, const fd_case *c, const fd_backend *be, const uint8_t *given,
                      const float *q, const float *k, const float *v, const int *rows, int nrows,
                      const int *nvis, fd_backend_result *br)
{
    const fd_problem *p = &c->prob;
    const size_t Sk = (size_t)p->seqlen_k;
    const size_t n = (size_t)p->batch * (size_t)p->heads * (size_t)nrows * Sk;
    uint8_t *mask = malloc(n ? n : 1);
    if (!mask) return -1;
    if (given) {
        for (size_t bh = 0; bh < (size_t)p->batch * (size_t)p->heads; bh++)
            for (int r = 0; r < nrows; r++)
                memcpy(mask + (bh * (size_t)nrows + (size_t)r) * Sk,
                       given + (bh * (size_t)p->seqlen_q + (size_t)rows[r]) * Sk, Sk);
    } else if (be->applied_mask(cf, c, q, k, v, rows, nrows, mask, br->error, sizeof br->error)) {
        free(mask);
        return -1;
    }
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    br->mm_b = br->mm_h = br->mm_i = br->mm_j = -1;
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int r = 0; r < nrows; r++)
                for (int j = vis_lo(p, rows[r]); j < vis_lo(p, rows[r]) + nvis[r]; j++) {
                    size_t x = (((size_t)b * (size_t)p->heads + (size_t)h) * (size_t)nrows + (size_t)r) * Sk + (size_t)j;
                    br->mask_checked++;
                    if ((mask[x] != 0) != fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, rows[r], j)) {
                        if (!br->mask_mismatch) { br->mm_b = b; br->mm_h = h; br->mm_i = rows[r]; br->mm_j = j; }
                        br->mask_mismatch++;
                    }
                }
    if (br->mask_mismatch) mask_search(p, rows, nrows, nvis, mask, br->mask_explained, sizeof br->mask_explained);
    free(mask);
    return 0;
}

/* The outputs of one backend into o and lse: a kernel run, or a copy of given outputs
 * (lse NULL when none was given). */
/* The backends of the computed baselines: standard attention of the flash output's
 * family where it has one (cuda) that supports the case, the CPU's otherwise. */
static const fd_backend *computed_standard(const char *family, const fd_case *c)
{
    const fd_backend *b = !strcmp(family, "cuda") ? fd_backend_find("cuda-standard") : NULL;
    char why[160];
    if (b && b->supports && !b->supports(c, why, sizeof why)) b = NULL; /* e.g. a window: the CPU's */
    return b ? b : fd_backend_find("cpu-standard");
}

int fd_run_case_given(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe,
                      const fd_given *given, int jobs, int repeat, fd_case_result *res, char *err,
                      size_t errlen)
{
    const fd_problem *p = &c->prob;
    const double t0 = fd_now_s();
    memset(res, 0, sizeof *res);
    res->c = *c;
    res->budget_standard = res->budget_replay = NAN;
    const int ngiven = given ? given->nout : 0;
    if (nbe + ngiven + 1 > FD_MAX_BACKENDS) {
        snprintf(err, errlen, "case %s: %d backends and %d given outputs: at most %d in all", c->id, nbe, ngiven,
                 FD_MAX_BACKENDS - 1);
        return -1;
    }
    float *qg = NULL, *kg = NULL, *vg = NULL;
    if (!(given && given->q) && fd_inputs_make(c, &qg, &kg, &vg, err, errlen)) return -1;
    const float *q = qg ? qg : given->q, *k = qg ? kg : given->k, *v = qg ? vg : given->v;
    const int D = p->head_dim;
    /* every row when the reference's estimated time is under the budget, else sampled */
    double ref_est = 0.0;
    const int rph = fd_reference_rows_per_head(cf, p, jobs, &ref_est);
    int cap = (rph <= 0 || p->seqlen_q <= rph) ? p->seqlen_q : rph + 16;
    res->rows = malloc(sizeof(int) * (size_t)(cap + 16));
    int *nvis = malloc(sizeof(int) * (size_t)(cap + 16));
    const size_t nbhr = (size_t)p->batch * (size_t)p->heads * (size_t)(cap + 16);
    res->ref_o = malloc(sizeof(double) * nbhr * (size_t)D);
    res->ref_lse = malloc(sizeof(double) * nbhr);
    float *o = malloc(sizeof(float) * fd_q_numel(p));
    float *lsebuf = malloc(sizeof(float) * fd_lse_numel(p));
    float *kout = NULL, *rout = NULL; /* checked outputs of the kernel and its replay */
    /* the kernel and its replay: cuda-flash (cuda-flash-sm90 when cuda-flash does not run) and
     * cpu-flash; a paged case's are cuda-splitkv and cpu-splitkv (FA2 runs paged calls on its
     * split-KV kernel) */
    const char *kname = p->page_size > 0 ? "cuda-splitkv" : "cuda-flash";
    const char *rname = p->page_size > 0 ? "cpu-splitkv" : "cpu-flash";
    if (p->page_size <= 0) { /* the Hopper kernel has the same replay: compared when cuda-flash did not run */
        int mma = 0, sm90 = 0;
        for (int t = 0; t < nbe; t++) {
            mma |= !strcmp(bes[t]->name, "cuda-flash");
            sm90 |= !strcmp(bes[t]->name, "cuda-flash-sm90");
        }
        if (sm90 && !mma) kname = "cuda-flash-sm90";
    }
    res->replay_kernel = kname;
    res->replay_name = rname;
    float *dout_owned = NULL;
    const float *dout = NULL;
    int *allrows = NULL; /* backward: the forward runs on every row (dK, dV need them all) */
    int rc = -1;
    if (!res->rows || !nvis || !res->ref_o || !res->ref_lse || !o || !lsebuf) {
        snprintf(err, errlen, "out of memory for case %s", c->id);
        goto out;
    }
    res->nrows = fd_sample_rows(p, rph, res->rows);
    res->splitkv_splits = fd_splitkv_splits(p, cf->flash.splits, cf->flash.sms);
    const int nrows = res->nrows;
    for (int r = 0; r < nrows; r++) {
        nvis[r] = fd_problem_visible_count(p, res->rows[r]);
        if (nvis[r] == 0) res->empty_rows++;
    }

    /* The reference, one row per task. */
    int undecided = 0, precmax = 0;
    const double tr = fd_now_s();
    int rrc = fd_reference_rows_tiered(p, q, k, v, res->rows, nrows, jobs, cf->reference, res->ref_o,
                                       res->ref_lse, &undecided, &precmax, &res->ref, err, errlen);
    res->ref.all_rows = nrows == p->seqlen_q;
    res->ref.estimate_s = ref_est;
    res->ref_seconds = fd_now_s() - tr;
    if (rrc) goto out;
    res->ref_undecided = undecided;
    res->ref_prec_max = precmax;
    if (c->backward) {
        if (fd_bwd_prepare(cf, c, q, k, v, given ? given->dout : NULL, jobs, res, &dout_owned, &dout, err, errlen))
            goto out;
        if (!(allrows = malloc(sizeof(int) * (size_t)p->seqlen_q))) {
            snprintf(err, errlen, "out of memory for case %s", c->id);
            goto out;
        }
        for (int i = 0; i < p->seqlen_q; i++) allrows[i] = i;
    }
    const int *frows = allrows ? allrows : res->rows;
    const int nfrows = allrows ? p->seqlen_q : nrows;

    /* Every backend's outputs: the kernels, the given outputs, then a computed standard
     * baseline for flash outputs that have none (the last slot, added below). */
    for (int t = 0; t < nbe + ngiven + 1; t++) {
        fd_backend_result *br = &res->be[res->nbe];
        const float *go = NULL, *gl = NULL;
        const uint8_t *gk = NULL;
        memset(br, 0, sizeof *br);
        br->fa_ratio = -1.0;
        br->baseline = -1;
        if (t < nbe) {
            br->be = bes[t];
            br->origin = FD_ORIGIN_KERNEL;
        } else if (t < nbe + ngiven) {
            br->be = given->out[t - nbe].be;
            br->origin = FD_ORIGIN_GIVEN;
            go = given->out[t - nbe].o;
            gl = given->out[t - nbe].lse;
            gk = given->out[t - nbe].keep;
        } else {
            /* Nothing passes unjudged: a flash output without a standard output of its own
             * family (or a supplied one) gets standard attention computed here. */
            const fd_backend_result *need = NULL;
            for (int u = 0; u < res->nbe && !need; u++) {
                const fd_backend_result *f = &res->be[u];
                if (!f->ok || f->be->role != FD_ROLE_FLASH) continue;
                const int bl = baseline_of(res, f);
                /* likewise flash gradients whose standard output came without gradients */
                if (bl < 0 || (f->g.measured && !res->be[bl].g.measured)) need = f;
            }
            /* and supplied standard outputs: judged against the computed one (standard rule) */
            for (int u = 0; u < res->nbe && !need; u++)
                if (res->be[u].ok && fd_supplied_standard(&res->be[u])) need = &res->be[u];
            if (!need || !(br->be = computed_standard(need->be->family, c))) break;
            br->origin = FD_ORIGIN_COMPUTED;
        }
        res->nbe++;
        if (!go && br->be->supports && !br->be->supports(c, br->error, sizeof br->error)) {
            br->skipped = 1;
            continue;
        }
        double ms = 0.0;
        float *lse = lsebuf;
        const double tb = fd_now_s();
        if (fd_backend_obtain(cf, c, br->be, go, gl, q, k, v, frows, nfrows, o, &lse, &ms, br->error, sizeof br->error))
            continue;
        br->ok = 1;
        if (fd_metrics_compute(p, res->rows, nrows, nvis, res->ref_o, res->ref_lse, o, lse,
                               br->be->role == FD_ROLE_STANDARD, &br->m)) {
            snprintf(err, errlen, "out of memory computing metrics for case %s", c->id);
            goto out;
        }
        if (!go) br->m.ms = ms > 0.0 ? ms : 1e3 * (fd_now_s() - tb);
        /* the backward pass, on this backend's own forward outputs (timed apart) */
        if (c->backward) {
            const int gi = t - nbe;
            const int hasg = go && given->out[gi].dq;
            if (fd_bwd_backend(cf, c, br, q, k, v, o, lse, dout, hasg ? given->out[gi].dq : NULL,
                               hasg ? given->out[gi].dk : NULL, hasg ? given->out[gi].dv : NULL, repeat, res,
                               err, errlen))
                goto out;
        }
        if (!go && ms > 0.0 && !strcmp(br->be->family, "cuda")) {
            /* the GPU computes every row: 2 flops per multiply-add in QK^T and in PV */
            double pairs = 0.0;
            for (int i = 0; i < p->seqlen_q; i++)
                pairs += (double)fd_problem_visible_count(p, i);
            br->m.tflops = 4.0 * (double)p->head_dim * pairs * (double)p->batch * (double)p->heads / (ms * 1e-3) / 1e12;
        }
        float **keep = br->origin != FD_ORIGIN_KERNEL ? NULL
                     : !strcmp(br->be->name, kname) ? &kout : !strcmp(br->be->name, rname) ? &rout : NULL;
        if (keep && !*keep && (*keep = malloc(sizeof(float) * nbhr * (size_t)D))) {
            size_t x = 0;
            for (int b = 0; b < p->batch; b++)
                for (int h = 0; h < p->heads; h++)
                    for (int r = 0; r < nrows; r++)
                        for (int d = 0; d < D; d++) (*keep)[x++] = o[fd_q_index(p, b, res->rows[r], h, d)];
        }
        /* --repeat: a kernel run again on the same inputs must give the same bits */
        if (!go && br->origin == FD_ORIGIN_KERNEL && repeat > 1) {
            br->repeat_runs = repeat;
            br->repeat_hash[0] = br->m.hash;
            br->repeat_distinct = 1;
            for (int rr = 1; rr < repeat && !fd_interrupted; rr++) {
                float *l2 = lsebuf;
                char e2[256];
                if (fd_backend_obtain(cf, c, br->be, NULL, NULL, q, k, v, frows, nfrows, o, &l2, &ms, e2, sizeof e2)) {
                    br->repeat_failed++;
                    continue;
                }
                const uint64_t hh = fd_output_hash(p, res->rows, nrows, nvis, br->be->role == FD_ROLE_STANDARD, o, l2);
                int seen = 0;
                for (int u = 0; u < br->repeat_distinct && u < 8; u++) seen |= br->repeat_hash[u] == hh;
                if (!seen) {
                    if (br->repeat_distinct < 8) br->repeat_hash[br->repeat_distinct] = hh;
                    br->repeat_distinct++;
                }
            }
            if (fd_interrupted) {
                snprintf(err, errlen, "interrupted");
                goto out;
            }
        }
        if ((gk || (!go && br->be->applied_mask)) && p->dropout_p > 0.0 &&
            check_mask(cf, c, br->be, gk, q, k, v, res->rows, nrows, nvis, br)) {
            br->ok = 0;
            if (!br->error[0]) snprintf(br->error, sizeof br->error, "out of memory checking the dropout mask");
        }
    }
    /* The rounding budget beside a computed baseline: the CPU replay's own error. */
    for (int t = 0; t < res->nbe; t++) {
        const fd_backend_result *s = &res->be[t];
        if (s->origin != FD_ORIGIN_COMPUTED || !s->ok) continue;
        res->budget_standard = s->m.max_abs;
        for (int u = 0; u < res->nbe; u++)
            if (res->be[u].ok && res->be[u].origin == FD_ORIGIN_KERNEL && !strcmp(res->be[u].be->name, "cpu-flash"))
                res->budget_replay = res->be[u].m.max_abs;
        const fd_backend *rb = fd_backend_find("cpu-flash");
        float *lse = lsebuf;
        double ms;
        char e2[256];
        fd_metrics m;
        if (isnan(res->budget_replay) && rb &&
            !fd_backend_obtain(cf, c, rb, NULL, NULL, q, k, v, frows, nfrows, o, &lse, &ms, e2, sizeof e2) &&
            !fd_metrics_compute(p, res->rows, nrows, nvis, res->ref_o, res->ref_lse, o, lse, 0, &m))
            res->budget_replay = m.max_abs;
        break;
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
    /* the bias stage: the kernels again on the case's bias seeds (fd_run_bias.h) */
    if (cf->bias_seeds > 0 && fd_bias_stage(cf, c, given && given->q, jobs, res, err, errlen)) goto out;
    /* the batch-invariance stage: each batch element alone against the batch (fd_run_inv.h) */
    if (cf->batch_invariance && fd_inv_stage(cf, c, q, k, v, res, err, errlen)) goto out;
    apply_fa_rule(&cf->policy, res);
    fd_bwd_fa_rule(&cf->policy, res);
    fd_dropout_stats_compute(p, res->rows, nrows, nvis, &res->drop);
    judge(&cf->policy, res);
    res->seconds = fd_now_s() - t0;
    rc = 0;
out:
    free(qg); free(kg); free(vg); free(nvis); free(o); free(lsebuf);
    free(kout); free(rout);
    free(dout_owned); free(allrows);
    if (rc) fd_case_result_free(res);
    return rc;
}

void fd_case_result_free(fd_case_result *r)
{
    free(r->rows);
    free(r->ref_o);
    free(r->ref_lse);
    fd_bwd_free(&r->bwd);
    json_decref((json_t *)r->extra);
    if (r->owned_free) r->owned_free(r->owned);
    r->owned = NULL;
    r->owned_free = NULL;
    r->rows = NULL;
    r->ref_o = r->ref_lse = NULL;
    r->extra = NULL;
}
