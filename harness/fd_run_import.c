/* fd_run_import.c: a bundle of imported outputs through the reference; see fd_import.h.
 * Kept apart from fd_run.c: the reference and metrics steps are the same, the outputs
 * come from the bundle instead of backends. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fd_dtype.h"
#include "fd_import.h"
#include "fd_inputs.h"
#include "fd_philox.h"
#include "fd_ref.h"
#include "fd_report.h"


/* Two outputs against each other over every element. */
static json_t *pair_json(const fd_problem *p, const fd_import_output *a, const fd_import_output *c)
{
    const size_t n = fd_q_numel(p);
    double max_abs = 0.0, max_ulp = 0.0, se = 0.0, sr = 0.0;
    long identical = 0, nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        const float x = a->o[i], y = c->o[i];
        if (fd_f32_bits(x) == fd_f32_bits(y)) identical++;
        if (!isfinite(x) || !isfinite(y)) {
            nonfinite++;
            continue;
        }
        const double d = fabs((double)x - (double)y);
        if (d > max_abs) max_abs = d;
        const double m = fabs((double)x) > fabs((double)y) ? fabs((double)x) : fabs((double)y);
        const double u = d / fd_ulp_in_dtype(m, p->dtype);
        if (u > max_ulp) max_ulp = u;
        se += d * d;
        sr += (double)y * (double)y;
    }
    return json_pack("{s:s, s:s, s:o, s:o, s:o, s:I, s:I, s:I}", "a", a->name, "b", c->name, "max_abs",
                     fd_json_num(max_abs), "rel_l2", fd_json_num(sr > 0.0 ? sqrt(se / sr) : sqrt(se)),
                     "max_ulp", fd_json_num(max_ulp), "identical", (json_int_t)identical, "elements",
                     (json_int_t)n, "nonfinite", (json_int_t)nonfinite);
}

typedef struct {
    long total, agree, kept;
    int fb, fh, fi, fj, fgot;
} mask_cmp;

/* A supplied dropout mask against FA2's regeneration, over the visible keys of every row. */
static void mask_compare(const fd_problem *p, const uint8_t *keep, int jobs, mask_cmp *mc)
{
    memset(mc, 0, sizeof *mc);
    mc->fb = -1;
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    const long nbh = (long)p->batch * p->heads;
    long total = 0, agree = 0, kept = 0;
    int first_bh = -1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(jobs) reduction(+ : total, agree, kept)
    for (long t = 0; t < nbh; t++) {
        const int b = (int)(t / p->heads), h = (int)(t % p->heads);
        int found = 0;
        for (int i = 0; i < p->seqlen_q; i++) {
            const int nv = fd_mask_visible_count(p->mask, i, p->seqlen_q, p->seqlen_k);
            const uint8_t *row = keep + ((size_t)t * (size_t)p->seqlen_q + (size_t)i) * (size_t)p->seqlen_k;
            for (int j = 0; j < nv; j++) {
                const int g = row[j] != 0, r = fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j);
                total++;
                kept += g;
                if (g == r) agree++;
                else if (!found) {
                    found = 1;
#pragma omp critical
                    if (first_bh < 0 || t < first_bh ||
                        (t == first_bh && ((long)i < mc->fi || ((long)i == mc->fi && j < mc->fj)))) {
                        first_bh = (int)t;
                        mc->fb = b; mc->fh = h; mc->fi = i; mc->fj = j; mc->fgot = g;
                    }
                }
            }
        }
    }
    mc->total = total;
    mc->agree = agree;
    mc->kept = kept;
}

int fd_run_import(const fd_casefile *cf, const fd_bundle *bd, int jobs, fd_case_result *res,
                  json_t **extra, char *err, size_t errlen)
{
    const fd_problem *p = &bd->prob;
    const double t0 = fd_now_s();
    memset(res, 0, sizeof *res);
    *extra = NULL;
    snprintf(res->c.id, sizeof res->c.id, "%s", bd->name);
    res->c.prob = *p;
    res->c.dist = FD_DIST_NORMAL;
    res->c.input_seed = 0;
    const int D = p->head_dim;
    const int cap = p->seqlen_q + 64;
    res->rows = malloc(sizeof(int) * (size_t)cap);
    int *nvis = malloc(sizeof(int) * (size_t)cap);
    const size_t nbhr = (size_t)p->batch * (size_t)p->heads * (size_t)cap;
    double *ref_o = malloc(sizeof(double) * nbhr * (size_t)D);
    double *ref_lse = malloc(sizeof(double) * nbhr);
    float *nanlse = NULL;
    int rc = -1;
    if (!res->rows || !nvis || !ref_o || !ref_lse) {
        snprintf(err, errlen, "out of memory for bundle %s", bd->path);
        goto out;
    }
    res->nrows = fd_sample_rows(p, cf->rows_per_head, res->rows);
    const int nrows = res->nrows;
    for (int r = 0; r < nrows; r++) {
        nvis[r] = fd_mask_visible_count(p->mask, res->rows[r], p->seqlen_q, p->seqlen_k);
        if (nvis[r] == 0) res->empty_rows++;
    }
    int undecided = 0, precmax = 0;
    const double tr = fd_now_s();
    char rerr[512];
    int rrc = fd_reference_rows(p, bd->q, bd->k, bd->v, res->rows, nrows, jobs, ref_o, ref_lse,
                                &undecided, &precmax, rerr, sizeof rerr);
    res->ref_seconds = fd_now_s() - tr;
    if (rrc) {
        snprintf(err, errlen, "bundle %s: %s", bd->path, rerr);
        goto out;
    }
    res->ref_undecided = undecided;
    res->ref_prec_max = precmax;

    nanlse = malloc(sizeof(float) * fd_lse_numel(p));
    if (!nanlse) {
        snprintf(err, errlen, "out of memory for bundle %s", bd->path);
        goto out;
    }
    for (size_t x = 0; x < fd_lse_numel(p); x++) nanlse[x] = NAN;
    res->nbe = bd->nout;
    for (int t = 0; t < bd->nout; t++) {
        const fd_import_output *io = &bd->out[t];
        fd_backend_result *br = &res->be[t];
        br->be = &io->be;
        br->fa_ratio = -1.0;
        br->ok = 1;
        if (fd_metrics_compute(p, res->rows, nrows, nvis, ref_o, ref_lse, io->o, io->lse ? io->lse : nanlse,
                               io->be.role == FD_ROLE_STANDARD, &br->m)) {
            snprintf(err, errlen, "out of memory computing metrics for bundle %s", bd->path);
            goto out;
        }
        if (!io->lse) br->m.lse_max_abs = NAN; /* not supplied: neither measured nor judged */
        br->m.ms = 0.0;
    }
    /* FlashAttention's rule: each flash output against the first standard one. */
    fd_apply_fa_rule(&cf->policy, res, 0);
    fd_dropout_stats_compute(p, res->rows, nrows, nvis, &res->drop);
    fd_judge(&cf->policy, res);

    json_t *x = json_object();
    json_t *outs = json_array();
    for (int t = 0; t < bd->nout; t++)
        json_array_append_new(outs, json_pack("{s:s, s:s, s:b, s:b}", "name", bd->out[t].name, "role",
                                              bd->out[t].be.role == FD_ROLE_FLASH ? "flash" : "standard",
                                              "lse", bd->out[t].lse != NULL, "dropout_mask",
                                              bd->out[t].keep != NULL));
    json_object_set_new(x, "bundle", json_string(bd->path));
    json_object_set_new(x, "format", json_string(bd->safetensors ? "safetensors" : "npy"));
    json_object_set_new(x, "layout", json_string(bd->bhsd ? "bhsd" : "bshd"));
    json_object_set_new(x, "outputs", outs);
    if (bd->info) json_object_set(x, "info", bd->info);
    json_t *pairs = json_array();
    for (int a = 0; a < bd->nout; a++)
        for (int c = a + 1; c < bd->nout; c++) json_array_append_new(pairs, pair_json(p, &bd->out[a], &bd->out[c]));
    json_object_set_new(x, "pairs", pairs);
    json_t *masks = json_object();
    fd_verdict v = res->verdict;
    for (int t = 0; t < bd->nout; t++) {
        const fd_import_output *io = &bd->out[t];
        if (!io->keep) continue;
        mask_cmp mc;
        mask_compare(p, io->keep, jobs, &mc);
        const double n = (double)mc.total;
        const double qt = ((double)fd_fa2_threshold(p->dropout_p) + 1.0) / 256.0;
        const double rate = mc.total ? (double)mc.kept / n : 0.0;
        const double z = (mc.total && qt < 1.0) ? ((double)mc.kept - n * qt) / sqrt(n * qt * (1.0 - qt)) : 0.0;
        json_t *mj = json_pack("{s:I, s:I, s:o, s:I, s:o, s:o, s:o}", "visible", (json_int_t)mc.total,
                               "agree", (json_int_t)mc.agree, "agreement",
                               fd_json_num(mc.total ? (double)mc.agree / n : 1.0), "kept", (json_int_t)mc.kept,
                               "keep_rate", fd_json_num(rate), "keep_threshold", fd_json_num(qt),
                               "z_threshold", fd_json_num(z));
        if (mc.agree != mc.total) {
            json_object_set_new(mj, "first_disagreement",
                                json_pack("{s:i, s:i, s:i, s:i, s:i}", "b", mc.fb, "h", mc.fh, "row", mc.fi,
                                          "col", mc.fj, "kernel_kept", mc.fgot));
            fd_worsen(&v, FD_FAIL);
            fd_add_reason(res, "%s: dropout mask differs from FA2's regeneration from (seed %llu, offset %llu) at "
                            "%ld of %ld visible elements (first b=%d h=%d row=%d col=%d): the reference does not "
                            "model this kernel's dropout",
                       io->name, (unsigned long long)p->seed, (unsigned long long)p->offset, mc.total - mc.agree,
                       mc.total, mc.fb, mc.fh, mc.fi, mc.fj);
        }
        json_object_set_new(masks, io->name, mj);
    }
    json_object_set_new(x, "dropout_masks", masks);
    res->verdict = v;
    *extra = x;
    res->seconds = fd_now_s() - t0;
    rc = 0;
out:
    free(nvis); free(ref_o); free(ref_lse); free(nanlse);
    if (rc) {
        free(res->rows);
        res->rows = NULL;
    }
    return rc;
}
