/* fd_report.c: see fd_report.h. */
#include <math.h>
#include <mpfr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "fd_out.h"
#include "fd_report.h"

#ifndef FD_VERSION
#define FD_VERSION "0.0.0"
#endif
#ifndef FD_GIT_COMMIT
#define FD_GIT_COMMIT "unknown"
#endif

static void cpu_model(char *buf, size_t len)
{
    snprintf(buf, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) {
                c += 2;
                c[strcspn(c, "\n")] = 0;
                snprintf(buf, len, "%s", c);
            }
            break;
        }
    fclose(f);
}

json_t *fd_report_new(const fd_casefile *cf, const char *backends, int jobs)
{
    char host[256] = "unknown", cpu[256], when[64];
    struct utsname u;
    time_t t = time(NULL);
    struct tm tmv;
    gethostname(host, sizeof host - 1);
    cpu_model(cpu, sizeof cpu);
    gmtime_r(&t, &tmv);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    json_t *machine = json_pack("{s:s, s:s, s:i}", "hostname", host, "cpu", cpu, "cpu_count",
                                (int)sysconf(_SC_NPROCESSORS_ONLN));
    if (uname(&u) == 0) {
        char os[600];
        snprintf(os, sizeof os, "%s %s %s", u.sysname, u.release, u.machine);
        json_object_set_new(machine, "os", json_string(os));
    }
    char gpu[256];
    /* the GPU only when a GPU backend runs: a CPU-only run on a GPU machine names none */
    if (strstr(backends, "cuda") && fd_gpu_describe(gpu, sizeof gpu) == 0)
        json_object_set_new(machine, "gpu", json_string(gpu));
    else
        json_object_set_new(machine, "gpu", json_null());
    json_object_set_new(machine, "mpfr", json_string(mpfr_get_version()));
    const fd_flash_cfg *fc = &cf->flash;
    const fd_policy *po = &cf->policy;
    json_t *root = json_pack(
        "{s:i, s:s, s:s, s:s, s:s, s:o, s:{s:s, s:s, s:s, s:i, s:i}, s:s, s:i, "
        "s:{s:i, s:i, s:s, s:s, s:s, s:b, s:s, s:i}, s:{s:o, s:o, s:{s:o, s:o, s:o}, s:o, s:o, s:o}, s:[], s:b}",
        "schema_version", FD_REPORT_SCHEMA_VERSION, "tool", "flashdrift", "version", FD_VERSION,
        "git_commit", FD_GIT_COMMIT, "created", when, "machine", machine,
        "case_file", "path", cf->path, "name", cf->name, "description", cf->description,
        "cases", cf->ncases, "rows_per_head", cf->rows_per_head,
        "backends", backends, "jobs", jobs,
        "flash_config", "br", fc->br, "bc", fc->bc, "qk_order", fd_accum_name(fc->qk_order),
        "pv_order", fd_accum_name(fc->pv_order), "exp2",
        fc->exp2_mode == FD_EXP2_PORTABLE ? "portable" : "libm", "p_fp32", fc->p_fp32, "rowsum", fc->rowsum == FD_ROWSUM_FA2 ? "fa2" : "seq", "splits", fc->splits,
        "policy", "fa_ratio", fd_json_num(po->fa_ratio), "atol", fd_json_num(po->atol), "max_ulp",
        "fp16", fd_json_num(po->max_ulp[0]), "bf16", fd_json_num(po->max_ulp[1]), "fp32",
        fd_json_num(po->max_ulp[2]), "max_lse_abs", fd_json_num(po->max_lse_abs), "marginal",
        fd_json_num(po->marginal), "keep_sigma", fd_json_num(po->keep_sigma),
        "cases", "complete", 0);
    json_object_set_new(json_object_get(root, "flash_config"), "dq_mode",
                        json_string(cf->bwd.dq_mode == FD_DQ_DETERMINISTIC ? "deterministic" : "atomic"));
    json_t *pol = json_object_get(root, "policy");
    json_object_set_new(pol, "grad_fa_ratio", json_pack("{s:o, s:o, s:o}", "dq", fd_json_num(po->grad_fa_ratio[0]),
                                                        "dk", fd_json_num(po->grad_fa_ratio[1]), "dv",
                                                        fd_json_num(po->grad_fa_ratio[2])));
    json_object_set_new(pol, "require_deterministic", json_boolean(po->require_deterministic));
    json_object_set_new(pol, "standard_ratio", fd_json_num(po->standard_ratio));
    json_object_set_new(json_object_get(root, "flash_config"), "o_round", json_string(fc->o_round_up ? "up" : "nearest"));
    json_t *cfj = json_object_get(root, "case_file");
    json_object_set_new(cfj, "bias_seeds", json_integer(cf->bias_seeds));
    json_object_set_new(cfj, "bias_alpha", fd_json_num(cf->bias_alpha));
    json_object_set_new(cfj, "batch_invariance", json_boolean(cf->batch_invariance));
    json_object_set_new(pol, "require_batch_invariance", json_boolean(po->require_batch_invariance));
    return root;
}

static const char *const fd_origin_names[] = {"kernel", "given", "computed"};

/* The error fields of one output (or gradient) against the reference; an LSE that was not
 * measured is null. Returns a new object (the caller owns it; json_object_update copies). */
static json_t *error_fields_new(const fd_metrics *m)
{
    return json_pack(
        "{s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:o, s:{s:i, s:i, s:i, s:i, s:o, s:o}}",
        "max_abs", fd_json_num(m->max_abs), "max_rel", fd_json_num(m->max_rel), "rel_l2",
        fd_json_num(m->rel_l2), "max_ulp", fd_json_num(m->max_ulp), "p99_ulp",
        fd_json_num(m->p99_ulp), "lse_max_abs", m->lse_measured ? fd_json_num(m->lse_max_abs) : json_null(), "elements",
        (json_int_t)m->n_elems, "nan", (json_int_t)m->nan_count, "inf", (json_int_t)m->inf_count,
        "empty_rows_skipped", (json_int_t)m->empty_rows_skipped, "ms", fd_json_num(m->ms), "worst",
        "b", m->worst_b, "h", m->worst_h, "row", m->worst_i, "d", m->worst_d, "got",
        fd_json_num(m->worst_got), "ref", fd_json_num(m->worst_ref));
}

/* Per-backend gradients: the same fields as the output's per gradient (no LSE), the rule,
 * repeats and the replay check. */
static json_t *grad_json(const fd_case_result *r, const fd_backend_result *b)
{
    const fd_grad_result *g = &b->g;
    if (!g->measured) return json_pack("{s:b, s:s}", "measured", 0, "note", g->note);
    json_t *j = json_pack("{s:b, s:o}", "measured", 1, "ms", fd_json_num(g->ms));
    if (g->tflops > 0) json_object_set_new(j, "tflops", fd_json_num(g->tflops));
    for (int t = 0; t < FD_NGRAD; t++) {
        json_t *e = error_fields_new(&g->m[t]);
        json_object_del(e, "lse_max_abs");
        json_object_del(e, "ms");
        char hx[20];
        snprintf(hx, sizeof hx, "%016llx", (unsigned long long)g->m[t].hash);
        json_object_set_new(e, "hash", json_string(hx));
        if (g->fa_ratio[t] >= 0) {
            json_object_set_new(e, "fa_ratio", fd_json_num(g->fa_ratio[t]));
            json_object_set_new(e, "fa_limit", fd_json_num(g->fa_limit[t]));
            json_object_set_new(e, "fa_baseline", json_string(r->be[g->baseline].be->name));
        }
        if (g->repeat_runs > 1)
            json_object_set_new(e, "repeat", json_pack("{s:i, s:i, s:b, s:I, s:o}", "runs", g->repeat_runs,
                                                       "distinct", g->repeat_distinct[t], "identical",
                                                       g->repeat_distinct[t] <= 1 && !g->repeat_failed,
                                                       "elements_differing", (json_int_t)g->spread_elems[t],
                                                       "max_ulp_spread", fd_json_num(g->spread_ulp[t])));
        if (g->replay_checked)
            json_object_set_new(e, "replay", json_pack("{s:I, s:I, s:o}", "elements", (json_int_t)g->replay_elems[t],
                                                       "identical", (json_int_t)g->replay_identical[t], "match_rate",
                                                       fd_json_num(g->replay_elems[t] ? (double)g->replay_identical[t] / (double)g->replay_elems[t] : 1.0)));
        json_object_set_new(j, fd_grad_names[t], e);
    }
    return j;
}

/* The batch-invariance stage's result of one backend (fd_run_inv.h). */
static json_t *inv_json(const fd_inv_result *iv)
{
    if (!iv->measured) return json_pack("{s:b, s:s}", "measured", 0, "note", iv->note);
    json_t *j = json_pack("{s:b, s:i, s:I, s:I, s:o, s:o, s:b}", "measured", 1, "batches", iv->batches, "checked",
                          (json_int_t)iv->checked, "differ", (json_int_t)iv->differ, "max_abs", fd_json_num(iv->max_abs),
                          "max_ulp", fd_json_num(iv->max_ulp), "invariant", iv->differ == 0);
    if (iv->differ)
        json_object_set_new(j, "first", json_pack("{s:i, s:i, s:i, s:i, s:o, s:o}", "b", iv->first_b, "row", iv->first_i,
                                                  "h", iv->first_h, "d", iv->first_d, "batched",
                                                  fd_json_num(iv->first_batched), "alone", fd_json_num(iv->first_alone)));
    return j;
}

/* The bias stage's result of one backend (fd_run_bias.h). */
static json_t *bias_json(const fd_bias_result *z)
{
    if (!z->measured) return json_pack("{s:b, s:s}", "measured", 0, "note", z->note);
    return json_pack("{s:b, s:i, s:i, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:s}",
                     "measured", 1, "seeds", z->seeds, "tests", z->tests, "statistic", "t", "alpha",
                     fd_json_num(z->alpha), "threshold", fd_json_num(z->threshold), "worst_column_z",
                     fd_json_num(z->worst_col_z), "worst_column", z->worst_col >= 0 ? json_integer(z->worst_col) : json_null(),
                     "worst_row_z", fd_json_num(z->worst_row_z), "worst_row",
                     z->worst_row >= 0 ? json_integer(z->worst_row) : json_null(), "mean_error",
                     fd_json_num(z->mean_err), "rms_error", fd_json_num(z->rms_err), "mean_over_rms",
                     fd_json_num(z->mean_over_rms), "elements", (json_int_t)z->elements,
                     "verdict", z->biased ? "biased" : "unbiased");
}

static json_t *metrics_json(const fd_case_result *r, const fd_backend_result *b)
{
    const char *role = b->be->role == FD_ROLE_FLASH ? "flash" : "standard";
    if (!b->ok) {
        json_t *j = json_pack("{s:b, s:s, s:s, s:s}", "ok", 0, "error", b->error, "role", role, "origin",
                              fd_origin_names[b->origin]);
        if (r->bias_active) json_object_set_new(j, "bias", bias_json(&b->bias));
        if (r->inv_active) json_object_set_new(j, "batch_invariance", inv_json(&b->inv));
        return j;
    }
    const fd_metrics *m = &b->m;
    json_t *j = json_pack("{s:b}", "ok", 1);
    json_t *ef = error_fields_new(m);
    json_object_update(j, ef);
    json_decref(ef);
    if (b->mask_checked) {
        json_t *mk = json_pack("{s:I, s:I}", "checked", (json_int_t)b->mask_checked, "mismatches",
                               (json_int_t)b->mask_mismatch);
        if (b->mask_mismatch) {
            json_object_set_new(mk, "first", json_pack("{s:i, s:i, s:i, s:i}", "b", b->mm_b, "h", b->mm_h,
                                                       "row", b->mm_i, "key", b->mm_j));
            json_object_set_new(mk, "explained", json_string(b->mask_explained));
        }
        json_object_set_new(j, "dropout_mask", mk);
    }
    if (m->tflops > 0) json_object_set_new(j, "tflops", fd_json_num(m->tflops));
    if (r->bwd.active) json_object_set_new(j, "grad", grad_json(r, b));
    if (r->bias_active) json_object_set_new(j, "bias", bias_json(&b->bias));
    if (r->inv_active) json_object_set_new(j, "batch_invariance", inv_json(&b->inv));
    char hx[20];
    snprintf(hx, sizeof hx, "%016llx", (unsigned long long)m->hash);
    json_object_set_new(j, "output_hash", json_string(hx));
    json_object_set_new(j, "role", json_string(role));
    json_object_set_new(j, "origin", json_string(fd_origin_names[b->origin]));
    if (b->fa_ratio >= 0) {
        json_object_set_new(j, "fa_ratio", fd_json_num(b->fa_ratio));
        json_object_set_new(j, "fa_limit", fd_json_num(b->fa_limit));
        json_object_set_new(j, "fa_baseline", json_string(r->be[b->baseline].be->name));
    }
    if (b->repeat_runs > 1) {
        json_t *hashes = json_array();
        for (int u = 0; u < b->repeat_distinct && u < 8; u++) {
            char hx[20];
            snprintf(hx, sizeof hx, "%016llx", (unsigned long long)b->repeat_hash[u]);
            json_array_append_new(hashes, json_string(hx));
        }
        json_object_set_new(j, "repeat", json_pack("{s:i, s:b, s:o, s:i}", "runs", b->repeat_runs, "identical",
                                                   b->repeat_distinct <= 1 && !b->repeat_failed, "hashes", hashes,
                                                   "failed_runs", b->repeat_failed));
    }
    return j;
}

/* The reference tiers' counts (docs/reference.md) into a reference object: the forward's
 * (mpfr_calls: rows) and the backward's (mpfr_calls: (batch, kv head) groups). */
static void ref_stats_json(json_t *rf, const fd_ref_stats *st, int sampling)
{
    json_object_set_new(rf, "tier", json_string(fd_reftier_name(st->tier)));
    if (sampling) { /* the forward's: every row or a sample, and the estimate that chose */
        json_object_set_new(rf, "rows", json_string(st->all_rows ? "all" : "sampled"));
        json_object_set_new(rf, "estimate_seconds", fd_json_num(st->estimate_s));
    }
    json_object_set_new(rf, "values", json_integer((json_int_t)st->values));
    json_object_set_new(rf, "values_tier", json_integer((json_int_t)st->values_tier));
    json_object_set_new(rf, "values_mpfr", json_integer((json_int_t)st->values_mpfr));
    json_object_set_new(rf, "mpfr_calls", json_integer((json_int_t)st->rows_mpfr));
    json_object_set_new(rf, "mpfr_calls_avoided", json_integer((json_int_t)st->rows_tier));
    json_object_set_new(rf, "seconds_tier", fd_json_num(st->seconds_tier));
    json_object_set_new(rf, "seconds_mpfr", fd_json_num(st->seconds_mpfr));
}

json_t *fd_report_case_json(const fd_case_result *r)
{
    const fd_problem *p = &r->c.prob;
    json_t *rows = json_array();
    for (int i = 0; i < r->nrows; i++) json_array_append_new(rows, json_integer(r->rows[i]));
    json_t *bes = json_object(), *skipped = json_object();
    for (int t = 0; t < r->nbe; t++) {
        if (r->be[t].skipped) json_object_set_new(skipped, r->be[t].be->name, json_string(r->be[t].error));
        else json_object_set_new(bes, r->be[t].be->name, metrics_json(r, &r->be[t]));
    }
    json_t *j = json_pack(
        "{s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i}, s:s, s:s, s:o, s:s, s:I, s:I, s:I, s:o, "
        "s:o, s:I, s:{s:i, s:i, s:o}, s:o, s:s, s:s, s:o}",
        "id", r->c.id, "shape", "batch", p->batch, "heads", p->heads, "kv_heads", p->kv_heads,
        "seqlen_q", p->seqlen_q, "seqlen_k", p->seqlen_k, "head_dim", p->head_dim, "dtype",
        fd_dtype_name(p->dtype), "mask", fd_mask_name(p->mask), "dropout", fd_json_num(p->dropout_p),
        "dist", fd_dist_name(r->c.dist), "input_seed", (json_int_t)r->c.input_seed,
        "dropout_seed", (json_int_t)p->seed, "dropout_offset", (json_int_t)p->offset,
        "softmax_scale", fd_json_num((double)p->softmax_scale), "rows_checked", rows,
        "empty_rows", (json_int_t)r->empty_rows, "reference", "undecided", r->ref_undecided,
        "max_precision", r->ref_prec_max, "seconds", fd_json_num(r->ref_seconds), "backends", bes,
        "verdict", fd_verdict_name(r->verdict), "reasons", r->reasons, "seconds",
        fd_json_num(r->seconds));
    if (json_object_size(skipped)) json_object_set_new(j, "skipped_backends", skipped);
    else json_decref(skipped);
    /* the reference tiers (docs/reference.md): who decided what, all rows or a sample */
    json_t *rf = json_object_get(j, "reference");
    if (rf && r->ref.values > 0) ref_stats_json(rf, &r->ref, 1);
    /* FP8 (issue 15 item 4): the descales and the output dtype, present only for FP8 cases */
    if (fd_dtype_is_fp8(p->dtype))
        json_object_set_new(j, "fp8", json_pack("{s:o, s:o, s:o, s:s, s:s}", "q_descale", fd_json_num((double)fd_descale(p->q_descale)),
                                                "k_descale", fd_json_num((double)fd_descale(p->k_descale)), "v_descale",
                                                fd_json_num((double)fd_descale(p->v_descale)), "descale",
                                                r->c.fp8_unit_descale ? "one" : "amax", "out_dtype", "bf16"));
    /* FlashAttention's score modifiers, present only when on (older reports unchanged) */
    if (p->window) json_object_set_new(j, "window", json_pack("[i, i]", p->window_left, p->window_right));
    if (p->softcap > 0.0f) json_object_set_new(j, "softcap", fd_json_num((double)p->softcap));
    if (p->alibi) {
        json_t *sl = json_array();
        for (int h = 0; h < p->heads; h++) json_array_append_new(sl, fd_json_num((double)p->alibi_slopes[h]));
        json_object_set_new(j, "alibi_slopes", sl);
    }
    for (int t = 0; t < 2 && p->varlen; t++) { /* variable-length batches: the packed offsets */
        const int *cu = t ? p->cu_seqlens_k : p->cu_seqlens_q;
        json_t *a = json_array();
        for (int x = 0; x <= p->varlen; x++) json_array_append_new(a, json_integer(cu[x]));
        json_object_set_new(j, t ? "cu_seqlens_k" : "cu_seqlens_q", a);
    }
    if (p->page_size > 0) { /* paged KV cache: the cache's shape and the split count chosen */
        json_t *a = json_array();
        for (int b = 0; b < p->batch && b < FD_PAGED_MAX_BATCH; b++) json_array_append_new(a, json_integer(p->cache_seqlens[b]));
        json_object_set_new(j, "paged", json_pack("{s:i, s:i, s:i, s:o, s:i}", "page_size", p->page_size, "num_pages",
                                                  p->num_pages, "pages_per_entry", fd_paged_pages(p), "cache_seqlens", a,
                                                  "splits", r->splitkv_splits));
    }
    /* where the baseline of FlashAttention's rule came from (the first judged flash output's) */
    for (int t = 0; t < r->nbe; t++) {
        const fd_backend_result *f = &r->be[t];
        if (!f->ok || f->be->role != FD_ROLE_FLASH || f->baseline < 0) continue;
        const fd_backend_result *s = &r->be[f->baseline];
        json_object_set_new(j, "baseline", json_pack("{s:s, s:s}", "backend", s->be->name, "origin",
                                                     s->origin == FD_ORIGIN_COMPUTED ? "computed" : "supplied"));
        break;
    }
    if (!isnan(r->budget_standard))
        json_object_set_new(j, "budget", json_pack("{s:o, s:o, s:o}", "standard_max_abs", fd_json_num(r->budget_standard),
                                                   "replay_max_abs", isnan(r->budget_replay) ? json_null() : fd_json_num(r->budget_replay),
                                                   "max_abs", fd_json_num(isnan(r->budget_replay) ? r->budget_standard
                                                                          : fmax(r->budget_standard, r->budget_replay))));
    if (r->extra) json_object_set(j, "import", (json_t *)r->extra);
    if (r->bias_active) json_object_set_new(j, "bias_seconds", fd_json_num(r->bias_seconds));
    if (r->bwd.active) {
        const fd_bwd_result *w = &r->bwd;
        json_t *kr = json_array();
        for (int i = 0; i < w->nkrows; i++) json_array_append_new(kr, json_integer(w->krows[i]));
        json_t *bj = json_pack("{s:s, s:o, s:{s:i, s:i, s:o}}", "dq_mode",
                               w->dq_mode == FD_DQ_DETERMINISTIC ? "deterministic" : "atomic", "key_rows_checked", kr,
                               "reference", "undecided", w->ref_undecided, "max_precision", w->ref_prec_max,
                               "seconds", fd_json_num(w->ref_seconds));
        json_t *bref = json_object_get(bj, "reference");
        if (bref && w->ref.values > 0) ref_stats_json(bref, &w->ref, 0);
        if (w->order_checked)
            json_object_set_new(bj, "dq_order_model",
                                json_pack("{s:s, s:I, s:I, s:o}", "orders", "desc, shuffle(1) vs asc",
                                          "elements", (json_int_t)w->order_elems, "differing",
                                          (json_int_t)w->order_differ, "max_ulp", fd_json_num(w->order_max_ulp)));
        json_object_set_new(j, "backward", bj);
    }
    if (r->replay_checked) {
        json_t *mis = json_array();
        for (int t = 0; t < r->nmis; t++)
            json_array_append_new(mis, json_pack("{s:i, s:i, s:i, s:i, s:o, s:o}", "b", r->mis[t].b, "h",
                                                 r->mis[t].h, "row", r->mis[t].i, "d", r->mis[t].d, "kernel",
                                                 fd_json_num((double)r->mis[t].kernel), "replay",
                                                 fd_json_num((double)r->mis[t].replay)));
        json_object_set_new(j, "replay", json_pack("{s:s, s:s, s:I, s:I, s:o, s:o}", "kernel",
                                                   r->replay_kernel ? r->replay_kernel : "cuda-flash", "replay",
                                                   r->replay_name ? r->replay_name : "cpu-flash", "elements", (json_int_t)r->replay_elems,
                                                   "identical", (json_int_t)r->replay_identical, "match_rate",
                                                   fd_json_num(r->replay_elems ? (double)r->replay_identical / (double)r->replay_elems : 1.0),
                                                   "mismatches", mis));
    }
    if (r->drop.active) {
        const fd_dropout_stats *d = &r->drop;
        json_object_set_new(j, "dropout_stats",
            json_pack("{s:i, s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:o}", "threshold", d->threshold,
                      "kept", (json_int_t)d->kept, "total", (json_int_t)d->total, "keep_rate",
                      fd_json_num(d->keep_rate), "keep_nominal", fd_json_num(d->keep_nominal),
                      "keep_threshold", fd_json_num(d->keep_threshold), "z_threshold",
                      fd_json_num(d->z_threshold), "z_nominal", fd_json_num(d->z_nominal),
                      "scale_bias", fd_json_num(d->scale_bias)));
    }
    return j;
}

void fd_report_add_case(json_t *report, json_t *case_json)
{
    json_array_append_new(json_object_get(report, "cases"), case_json);
}

void fd_report_finish(json_t *report, int complete)
{
    json_t *cases = json_object_get(report, "cases");
    int n[FD_NVERDICTS] = {0};
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *v = json_string_value(json_object_get(c, "verdict"));
        for (int t = 0; t < FD_NVERDICTS; t++)
            if (v && !strcmp(v, fd_verdict_name((fd_verdict)t))) n[t]++;
    }
    json_object_set_new(report, "totals",
        json_pack("{s:i, s:i, s:i, s:i, s:i, s:i}", "cases", (int)json_array_size(cases), "pass", n[0],
                  "marginal", n[1], "fail", n[2], "undecided", n[3], "unjudged", n[4]));
    json_object_set_new(report, "complete", json_boolean(complete));
}
