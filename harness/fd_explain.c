/* fd_explain.c: see fd_explain.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_attn64.h"
#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_explain.h"
#include "fd_obtain.h"
#include "fd_explain_bwd.h"
#include "fd_import.h"
#include "fd_inputs.h"
#include "fd_metrics.h"
#include "fd_out.h"

const char *const fd_explain_bugs[] = {"layout_bhsd_as_bshd", "scale_missing", "scale_doubled",
                                       "causal_top_left", "causal_bottom_right", "mask_missing",
                                       "dropout_seed_plus_one", "dropout_scale_missing",
                                       "softmax_wrong_axis",
                                       /* window, ALiBi, softcap (cases with the feature) */
                                       "window_ignored", "window_left_plus_one", "window_left_minus_one",
                                       "window_right_plus_one", "window_right_minus_one", "window_top_left",
                                       "alibi_missing", "alibi_sign_flipped", "alibi_heads_reversed", "alibi_scaled",
                                       "softcap_missing", "softcap_unscaled",
                                       /* variable-length batches (cases with seqlens_q) */
                                       "varlen_leak", "cu_seqlens_plus_one", "cu_seqlens_minus_one",
                                       "varlen_pad_attended",
                                       /* paged KV cache (cases with cache_seqlens) */
                                       "paged_wrong_page", "paged_table_ignored", "paged_stale_tokens",
                                       "splitkv_combine_unweighted",
                                       /* backward (a case with "backward": true) */
                                       "bwd_dq_scale_missing", "bwd_dk_scale_missing", "bwd_causal_top_left",
                                       "bwd_causal_bottom_right", "bwd_mask_missing", "bwd_dropout_missing",
                                       "bwd_dropout_seed_plus_one", "bwd_dropout_offset_plus_one", "bwd_d_zero", "bwd_lse_other_head",
                                       "bwd_gqa_sum_missing", "bwd_dk_dv_swapped",
                                       /* backward with window, ALiBi, softcap */
                                       "bwd_softcap_derivative_missing", "bwd_window_ignored",
                                       "bwd_window_left_plus_one", "bwd_window_right_plus_one", "bwd_alibi_missing",
                                       /* FP8 (cases of dtype e4m3 / e5m2) */
                                       "fp8_qk_descale_missing", "fp8_qk_descale_twice", "fp8_v_descale_missing",
                                       "fp8_v_descale_twice", "fp8_p_unscaled", "fp8_p_saturated", NULL};

/* ---- FP8 (issue 15 item 4): the FP8 hypotheses, their injection and candidates ----
 * Each is played on the backend with the problem's descales or the flash knob
 * fp8_max_offset (FlashAttention-3's Max_offset) changed, and predicted by the replay
 * with the same change: only the replay models the cast of P to e4m3, and a missing
 * v_descale multiplies the kernel's own FP8 rounding error by 1 / v_descale (~100), so a
 * binary64 prediction would leave that amplified rounding as its residual. The generic
 * hypotheses (scale_missing, ...) stay binary64 (fd_attn64, descales included). */
static const struct { const char *name, *what; } fp8_hypos[] = {
    {"fp8_qk_descale_missing", "q_descale and k_descale not applied to the scores (S = Q8 K8^T softmax_scale)"},
    {"fp8_qk_descale_twice", "q_descale and k_descale applied twice (S scaled by (q_descale k_descale)^2)"},
    {"fp8_v_descale_missing", "v_descale not applied to the output (O from V8 instead of V8 v_descale)"},
    {"fp8_v_descale_twice", "v_descale applied twice (O scaled by v_descale^2)"},
    {"fp8_p_unscaled", "P cast to e4m3 in [0, 1], without FlashAttention-3's 2^8 rescaling (Max_offset 0): "
                       "probabilities below 2^-6 lose bits in e4m3's subnormals, below 2^-10 vanish"},
    {"fp8_p_saturated", "P scaled by 2^9 (Max_offset 9) before the e4m3 cast: every P above 448 saturates "
                        "at 448, so the dominant keys lose weight"},
};
#define FD_NFP8HYPO ((int)(sizeof fp8_hypos / sizeof fp8_hypos[0]))

int fd_explain_bug_is_fp8(const char *bug)
{
    for (int t = 0; bug && t < FD_NFP8HYPO; t++)
        if (!strcmp(bug, fp8_hypos[t].name)) return 1;
    return 0;
}

/* Why FP8 bug `bug` changes nothing on p (NULL: it applies). */
static const char *fp8_noop(const fd_problem *p, const char *bug)
{
    if (!fd_dtype_is_fp8(p->dtype)) return "it is not an FP8 case (dtype e4m3 or e5m2)";
    const float qk = fd_descale(p->q_descale) * fd_descale(p->k_descale);
    if (!strncmp(bug, "fp8_qk_", 7) && !(qk < 1.0f || qk > 1.0f)) return "its q_descale k_descale is 1";
    if (!strncmp(bug, "fp8_v_", 6) && !(fd_descale(p->v_descale) < 1.0f || fd_descale(p->v_descale) > 1.0f))
        return "its v_descale is 1";
    return NULL;
}

/* The problem and flash knobs of a kernel with FP8 bug `bug`. */
static void fp8_bug_setup(const char *bug, fd_problem *p, fd_flash_cfg *cfg)
{
    const float qd = fd_descale(p->q_descale), kd = fd_descale(p->k_descale), vd = fd_descale(p->v_descale);
    if (!strcmp(bug, "fp8_qk_descale_missing")) p->q_descale = p->k_descale = 1.0f;
    else if (!strcmp(bug, "fp8_qk_descale_twice")) { p->q_descale = qd * qd; p->k_descale = kd * kd; }
    else if (!strcmp(bug, "fp8_v_descale_missing")) p->v_descale = 1.0f;
    else if (!strcmp(bug, "fp8_v_descale_twice")) p->v_descale = vd * vd;
    else if (!strcmp(bug, "fp8_p_unscaled")) cfg->fp8_max_offset = 0;
    else if (!strcmp(bug, "fp8_p_saturated")) cfg->fp8_max_offset = 9;
}
/* ---- end FP8 ---- */

/* The hypotheses of the score modifiers: name, what it means. */
static const struct { const char *name, *what; } mod_hypos[] = {
    {"window_ignored", "sliding window not applied (the causal mask, if any, kept)"},
    {"window_left_plus_one", "window reaches one key too far left (left bound off by one)"},
    {"window_left_minus_one", "window stops one key short on the left (left bound off by one)"},
    {"window_right_plus_one", "window reaches one key too far right (right bound off by one)"},
    {"window_right_minus_one", "window stops one key short on the right (right bound off by one)"},
    {"window_top_left", "window aligned top-left (diagonal j = i) instead of bottom-right (j = i + seqlen_k - seqlen_q, FlashAttention)"},
    {"alibi_missing", "ALiBi bias not added"},
    {"alibi_sign_flipped", "ALiBi slope with the wrong sign (+slope |i + sk - sq - j|)"},
    {"alibi_heads_reversed", "ALiBi slopes in reversed head order"},
    {"alibi_scaled", "ALiBi bias added before the softmax scale (so multiplied by it)"},
    {"softcap_missing", "softcap not applied"},
    {"softcap_unscaled", "softcap applied to the unscaled q.k, the softmax scale after it"},
    {"varlen_leak", "attention leaks across sequence boundaries (the packed batch attended as one sequence, no block-diagonal mask)"},
    {"cu_seqlens_plus_one", "cu_seqlens off by one: every inner sequence boundary one token later"},
    {"cu_seqlens_minus_one", "cu_seqlens off by one: every inner sequence boundary one token earlier"},
    {"varlen_pad_attended", "pad tokens attended: each sequence zero-padded to the longest and the padding mask lost (eager over a padded batch), where varlen drops them"},
    {"paged_wrong_page", "paged KV cache read through the block table with an off-by-one page index (logical page t from table slot t + 1)"},
    {"paged_table_ignored", "paged KV cache read in identity page order (entry b's page t from physical page b * pages + t), the block table ignored"},
    {"paged_stale_tokens", "keys past cache_seqlens attended (stale tokens of the last page and the unused pages: the capacity taken as the length)"},
    {"splitkv_combine_unweighted", "split-KV partial outputs combined as a plain average, without their LSE weights"},
};
#define FD_NMODHYPO ((int)(sizeof mod_hypos / sizeof mod_hypos[0]))

int fd_explain_bug_is_mod(const char *bug)
{
    for (int t = 0; bug && t < FD_NMODHYPO; t++)
        if (!strcmp(bug, mod_hypos[t].name)) return 1;
    return 0;
}

/* Sets up va (from the default variant) for hypothesis `name` of mod_hypos on p; returns
 * 1, or 0 with *why when it cannot apply (it would change nothing), or -1 for a name
 * that is not one of them. */
static int mod_hypo_setup(const fd_problem *p, const char *name, fd_attn_variant *va, const char **why)
{
    fd_attn_variant_default(p, va);
    *why = NULL;
    if (!fd_explain_bug_is_mod(name)) return -1;
    const int unit_scale = !(p->softmax_scale < 1.0f || p->softmax_scale > 1.0f);
    if (!strncmp(name, "window_", 7)) {
        if (!p->window) { *why = "it has no sliding window"; return 0; }
        if (!strcmp(name, "window_ignored")) { va->window = 0; return 1; }
        if (!strcmp(name, "window_top_left")) {
            if (p->seqlen_q == p->seqlen_k) { *why = "seqlen_q = seqlen_k: both alignments are one window"; return 0; }
            va->window_top_left = 1;
            return 1;
        }
        const int left = !strncmp(name, "window_left", 11), plus = strstr(name, "plus") != NULL;
        if (left && p->window_left < 0) { *why = "its window is unbounded on the left"; return 0; }
        if (!left && p->window_right < 0) { *why = "its window is unbounded on the right"; return 0; }
        if (!left && p->mask != FD_MASK_NONE) { *why = "its right edge is the causal mask's (see causal_off_by_one_*)"; return 0; }
        if (left) va->window_left_shift = plus ? 1 : -1;
        else va->window_right_shift = plus ? 1 : -1;
        return 1;
    }
    if (!strncmp(name, "alibi_", 6)) {
        if (!p->alibi) { *why = "it has no ALiBi"; return 0; }
        if (!strcmp(name, "alibi_missing")) va->alibi = 0;
        else if (!strcmp(name, "alibi_sign_flipped")) va->alibi_sign = -1.0;
        else if (!strcmp(name, "alibi_heads_reversed")) {
            int pal = 1;
            for (int h = 0; h < p->heads; h++) pal &= fd_eqf(p->alibi_slopes[h], p->alibi_slopes[p->heads - 1 - h]);
            if (pal) { *why = "its slopes read the same in reversed head order"; return 0; }
            va->alibi_reversed = 1;
        } else {
            if (unit_scale) { *why = "its softmax scale is 1"; return 0; }
            va->alibi_scaled = 1;
        }
        return 1;
    }
    if (!strncmp(name, "varlen_", 7) || !strncmp(name, "cu_seqlens_", 11)) {
        if (!p->varlen) { *why = "it is not a variable-length batch (no seqlens_q)"; return 0; }
        if (!strcmp(name, "varlen_pad_attended")) {
            va->varlen_pad = 1;
            if (!fd_attn64_varlen_pad_changes(p, va)) {
                *why = "no row sees a pad key or changes its visible keys in the padded shape (equal lengths, or the causal mask hides the pads)";
                return 0;
            }
            return 1;
        }
        int nonempty = 0;
        for (int t = 0; t < p->varlen; t++)
            nonempty += p->cu_seqlens_q[t + 1] > p->cu_seqlens_q[t] || p->cu_seqlens_k[t + 1] > p->cu_seqlens_k[t];
        if (nonempty < 2) { *why = "it packs fewer than two non-empty sequences"; return 0; }
        if (!strcmp(name, "varlen_leak")) va->varlen_leak = 1;
        else va->varlen_cu_shift = strstr(name, "plus") ? 1 : -1;
        return 1;
    }
    if (!strncmp(name, "paged_", 6) || !strncmp(name, "splitkv_", 8)) {
        if (p->page_size <= 0 || !p->block_table) { *why = "it has no paged KV cache (no cache_seqlens)"; return 0; }
        const int nt = p->batch * fd_paged_pages(p);
        if (!strcmp(name, "paged_wrong_page")) {
            if (nt < 2) { *why = "its block table has one page"; return 0; }
            va->paged_page_shift = 1;
        } else if (!strcmp(name, "paged_table_ignored")) {
            int ident = 1;
            for (int t = 0; t < nt; t++) ident &= p->block_table[t] == t;
            if (ident) { *why = "its block table is the identity"; return 0; }
            va->paged_identity = 1;
        } else if (!strcmp(name, "paged_stale_tokens")) {
            int full = 1;
            for (int b = 0; b < p->batch; b++) full &= p->cache_seqlens[b] == p->seqlen_k;
            if (full) { *why = "every cache is full (cache_seqlens = pages x page_size)"; return 0; }
            va->paged_stale = 1;
        } else {
            va->splitkv_unweighted = 1; /* the split count: paged_splits() */
        }
        return 1;
    }
    if (!(p->softcap > 0.0f)) { *why = "it has no softcap"; return 0; }
    if (!strcmp(name, "softcap_missing")) va->softcap = 0.0;
    else {
        if (unit_scale) { *why = "its softmax scale is 1"; return 0; }
        va->softcap_unscaled = 1;
    }
    return 1;
}

/* The split-KV backends' split count and tile for splitkv_combine_unweighted; 0 when no
 * row of p has two splits with a visible key (then the hypothesis changes nothing). */
static int paged_splits(const fd_casefile *cf, const fd_problem *p, fd_attn_variant *va)
{
    va->splits = fd_splitkv_splits(p, cf->flash.splits, cf->flash.sms);
    va->split_bc = cf->flash.bc;
    if (va->splits < 2 || p->page_size <= 0) return 0;
    for (int b = 0; b < p->batch; b++) {
        const int ke = p->cache_seqlens[b], tiles = (ke + va->split_bc - 1) / va->split_bc;
        const int per = (tiles + va->splits - 1) / va->splits;
        for (int i = 0; i < p->seqlen_q; i++) {
            int lo, hi;
            if (fd_mask_visible_range_b(p, b, i, &lo, &hi) && lo / va->split_bc / per != hi / va->split_bc / per) return 1;
        }
    }
    return 0;
}

/* seqlen_q = seqlen_k (varlen: in every sequence, where the causal alignment lives): the
 * top-left and bottom-right masks are one. */
static int all_square(const fd_problem *p)
{
    if (!p->varlen) return p->seqlen_q == p->seqlen_k;
    for (int t = 0; t < p->varlen; t++)
        if (p->cu_seqlens_q[t + 1] - p->cu_seqlens_q[t] != p->cu_seqlens_k[t + 1] - p->cu_seqlens_k[t]) return 0;
    return 1;
}

const char *fd_explain_bug_renamed(const char *name, fd_mask_kind mask)
{
    if (!strcmp(name, "layout_bhsd")) return "layout_bhsd_as_bshd";
    if (!strcmp(name, "dropout_seed")) return "dropout_seed_plus_one";
    /* causal_swap swapped the alignment: the bug is named by the one it produced */
    if (!strcmp(name, "causal_swap")) return mask == FD_MASK_CAUSAL_TL ? "causal_bottom_right" : "causal_top_left";
    return NULL;
}

const char *fd_explain_inject_noop(const fd_problem *p, const char *bug)
{
    if (!bug) return NULL;
    const char *now = fd_explain_bug_renamed(bug, p->mask);
    if (now) bug = now;
    if (fd_explain_bug_is_bwd(bug)) return fd_explain_bwd_noop(p, bug);
    if (fd_explain_bug_is_fp8(bug)) return fp8_noop(p, bug);
    if (fd_explain_bug_is_mod(bug)) {
        fd_attn_variant va;
        const char *why;
        return mod_hypo_setup(p, bug, &va, &why) == 1 ? NULL : why;
    }
    const int dropout = p->dropout_p > 0.0;
    const int square = all_square(p);
    const int unit_scale = !(p->softmax_scale < 1.0f || p->softmax_scale > 1.0f);
    if (!strcmp(bug, "mask_missing") && p->mask == FD_MASK_NONE) return "it has no causal mask";
    /* the two alignments are one mask when seqlen_q = seqlen_k */
    if (!strcmp(bug, "causal_top_left") && (p->mask == FD_MASK_CAUSAL_TL || (p->mask == FD_MASK_CAUSAL_BR && square)))
        return square ? "its causal mask is already top-left (seqlen_q = seqlen_k: both alignments are one mask)"
                      : "its causal mask is already top-left";
    if (!strcmp(bug, "causal_bottom_right") &&
        (p->mask == FD_MASK_CAUSAL_BR || (p->mask == FD_MASK_CAUSAL_TL && square)))
        return square ? "its causal mask is already bottom-right (seqlen_q = seqlen_k: both alignments are one mask)"
                      : "its causal mask is already bottom-right";
    if ((!strcmp(bug, "dropout_seed_plus_one") || !strcmp(bug, "dropout_scale_missing")) && !dropout)
        return "it has no dropout (p = 0)";
    if ((!strcmp(bug, "scale_missing") || !strcmp(bug, "scale_doubled")) && unit_scale)
        return "its softmax scale is 1 (head_dim 1)";
    if (!strcmp(bug, "layout_bhsd_as_bshd") && (p->heads == 1 || p->seqlen_q == 1))
        return "with one head or one query row, BHSD and BSHD are the same layout";
    return NULL;
}

typedef struct {
    const fd_problem *p;
    const int *rows;
    int nrows;
    size_t n; /* checked elements */
} fd_chk;

/* full [b][s][h][d] array -> checked vector [b][h][r][d] */
static void gather_d(const fd_chk *c, const double *full, double *out)
{
    const fd_problem *p = c->p;
    size_t t = 0;
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int r = 0; r < c->nrows; r++)
                for (int d = 0; d < p->head_dim; d++) out[t++] = full[fd_q_index(p, b, c->rows[r], h, d)];
}
static void gather_f(const fd_chk *c, const float *full, double *out)
{
    const fd_problem *p = c->p;
    size_t t = 0;
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int r = 0; r < c->nrows; r++)
                for (int d = 0; d < p->head_dim; d++) out[t++] = (double)full[fd_q_index(p, b, c->rows[r], h, d)];
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double l2_diff(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (a[i] - b[i]) * (a[i] - b[i]);
    return sqrt(s);
}
static double l2(const double *a, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * a[i];
    return sqrt(s);
}

/* Source index of element f of a [b][s][h][d] buffer when the data was laid out the other
 * way: kind 0: written (b, h, s, d), read as (b, s, h, d) (FA's output permuted as if it
 * were (b, h, s, d) before a reshape: the ViT accuracy drop); kind 1: the inverse. */
static size_t perm_src(const fd_problem *p, int kind, size_t f)
{
    const size_t D = (size_t)p->head_dim, S = (size_t)p->seqlen_q, H = (size_t)p->heads;
    const size_t d = f % D;
    if (kind == 0) {
        const size_t s = (f / D) % S, h = (f / (D * S)) % H, b = f / (D * S * H);
        return fd_q_index(p, (int)b, (int)s, (int)h, (int)d);
    }
    const size_t h = (f / D) % H, s = (f / (D * H)) % S, b = f / (D * H * S);
    return (((b * H + h) * S + s) * D + d);
}

typedef struct {
    const fd_casefile *cf;
    const fd_case *c;
    const fd_backend *be;
    const float *q, *k, *v;
    const int *rows;
    int nrows;
} fd_kctx;

/* The backend's output on a (possibly modified) case, into a full float array. */
static int run_backend(const fd_kctx *x, const fd_case *c, const int *rows, int nrows, float *o,
                       float *lse, char *err, size_t errlen)
{
    double ms;
    for (size_t i = 0; i < fd_q_numel(&c->prob); i++) o[i] = NAN;
    return x->be->run(x->cf, c, x->q, x->k, x->v, rows, nrows, o, lse, &ms, err, errlen);
}

static int kernel_output(const fd_kctx *x, const char *inject, const double *qd, const double *kd,
                         const double *vd, float *o, float *lse, char *err, size_t errlen)
{
    fd_case c = *x->c;
    fd_problem *p = &c.prob;
    /* a backward bug leaves the forward as it is */
    if (!inject || fd_explain_bug_is_bwd(inject)) return run_backend(x, &c, x->rows, x->nrows, o, lse, err, errlen);
    if (!strcmp(inject, "layout_bhsd_as_bshd")) {
        size_t n = fd_q_numel(p);
        float *full = malloc(n * sizeof(float));
        float *fl = malloc(fd_lse_numel(p) * sizeof(float));
        if (!full || !fl) {
            free(full); free(fl);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        int rc = run_backend(x, &c, NULL, 0, full, fl, err, errlen);
        for (size_t f = 0; !rc && f < n; f++) o[f] = full[perm_src(p, 0, f)];
        memcpy(lse, fl, fd_lse_numel(p) * sizeof(float));
        free(full); free(fl);
        return rc;
    }
    if (fd_explain_bug_is_fp8(inject)) { /* the backend with the bug's descales or knobs */
        fd_casefile cf8 = *x->cf;
        fp8_bug_setup(inject, p, &cf8.flash);
        fd_kctx x8 = *x;
        x8.cf = &cf8;
        return run_backend(&x8, &c, x->rows, x->nrows, o, lse, err, errlen);
    }
    fd_attn_variant vmod;
    const char *why;
    int modh = mod_hypo_setup(p, inject, &vmod, &why);
    if (modh == 1 && vmod.splitkv_unweighted && !paged_splits(x->cf, p, &vmod)) {
        why = "no row has two splits with a visible key (flash.splits, or the heuristic's count)";
        modh = 0;
    }
    if (modh == 0) {
        snprintf(err, errlen, "--inject %s: does not apply to this case: %s", inject, why);
        return -1;
    }
    if (!strcmp(inject, "softmax_wrong_axis") || modh == 1) {
        /* computed in binary64 under the variant, rounded to the dtype */
        fd_attn_variant va;
        if (modh == 1) va = vmod;
        else {
            fd_attn_variant_default(p, &va);
            va.wrong_axis = 1;
        }
        double *od = calloc(fd_q_numel(p), sizeof(double));
        if (!od) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        int rc = fd_attn64(p, &va, qd, kd, vd, x->rows, x->nrows, od, err, errlen);
        for (size_t f = 0; !rc && f < fd_q_numel(p); f++) o[f] = fd_round_to_dtype((float)od[f], fd_out_dtype(p->dtype));
        free(od);
        return rc;
    }
    int post_scale = 0;
    if (!strcmp(inject, "scale_missing")) p->softmax_scale = 1.0f;
    else if (!strcmp(inject, "scale_doubled")) p->softmax_scale = p->softmax_scale * p->softmax_scale;
    else if (!strcmp(inject, "causal_top_left")) p->mask = FD_MASK_CAUSAL_TL;
    else if (!strcmp(inject, "causal_bottom_right")) p->mask = FD_MASK_CAUSAL_BR;
    else if (!strcmp(inject, "mask_missing")) p->mask = FD_MASK_NONE;
    else if (!strcmp(inject, "dropout_seed_plus_one")) p->seed += 1;
    else if (!strcmp(inject, "dropout_scale_missing")) post_scale = 1;
    else {
        snprintf(err, errlen, "--inject: unknown bug \"%s\"", inject);
        return -1;
    }
    int rc = run_backend(x, &c, x->rows, x->nrows, o, lse, err, errlen);
    if (!rc && post_scale)
        for (size_t f = 0; f < fd_q_numel(p); f++)
            if (!isnan(o[f])) o[f] = fd_round_to_dtype(o[f] * (float)(1.0 - p->dropout_p), fd_out_dtype(p->dtype));
    return rc;
}

static int add_variant(fd_explanation *ex, const char *name, const double *out, const double *base,
                       const double *ref, size_t n)
{
    if (ex->nvar >= FD_EX_MAX_VARIANTS) return 0;
    fd_ex_variant *v = &ex->var[ex->nvar++];
    snprintf(v->name, sizeof v->name, "%s", name);
    v->max_abs_vs_base = fd_max_abs_diff(out, base, n);
    v->l2_vs_base = l2_diff(out, base, n);
    v->err_max_abs = fd_max_abs_diff(out, ref, n);
    v->identical = fd_eq(v->max_abs_vs_base, 0.0);
    if (v->max_abs_vs_base > ex->order_spread_max_abs) ex->order_spread_max_abs = v->max_abs_vs_base;
    return 0;
}

static void add_hypo(fd_explanation *ex, const char *name, const char *what, const double *cand,
                     const double *kout, size_t n)
{
    if (ex->nhypo >= FD_EX_MAX_HYPO) return;
    fd_ex_hypo *h = &ex->hypo[ex->nhypo++];
    snprintf(h->name, sizeof h->name, "%s", name);
    snprintf(h->what, sizeof h->what, "%s", what);
    h->residual_max_abs = fd_max_abs_diff(kout, cand, n);
    h->explains = h->residual_max_abs <= ex->hypo_limit;
}

void fd_explanation_free(fd_explanation *ex)
{
    for (int i = 0; i < ex->nparts; i++) {
        free(ex->part[i].diff);
        ex->part[i].diff = NULL;
    }
}

#define FD_FAIL_OOM()                                  \
    do {                                               \
        snprintf(err, errlen, "out of memory");        \
        goto out;                                      \
    } while (0)

int fd_explain_case(const fd_casefile *cf, const fd_case *c, const fd_explain_opts *o,
                    fd_explanation *ex, char *err, size_t errlen)
{
    if (!c->bundle) {
        fd_explain_src src = {c->id, &c->prob, c, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0};
        return fd_explain_run(cf, &src, o, ex, err, errlen);
    }
    fd_bundle *b = malloc(sizeof *b);
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (fd_bundle_load(c->bundle, b, err, errlen)) {
        free(b);
        return FD_EX_EUSAGE;
    }
    int pick = -1, rc = FD_EX_EUSAGE;
    for (int i = 0; i < b->nout && pick < 0; i++)
        if (o->backend ? !strcmp(b->out[i].name, o->backend) : b->out[i].be.role == FD_ROLE_FLASH) pick = i;
    if (pick < 0) {
        snprintf(err, errlen, "%s: %s", c->bundle, o->backend ? "no output with that name" : "no flash output to explain");
    } else {
        /* judged beside the bundle's standard outputs, as check judges it */
        fd_given beside;
        fd_bundle_given(b, pick, 1, &beside);
        char id[200];
        snprintf(id, sizeof id, "%s/%s", c->id, b->out[pick].name);
        fd_explain_src src = {id, &b->prob, NULL, b->q, b->k, b->v, b->out[pick].o, b->out[pick].lse,
                              b->out[pick].name, &beside, b->out[pick].dq ? b->dout : NULL, b->out[pick].dq,
                              b->out[pick].dk, b->out[pick].dv, b->out[pick].be.role == FD_ROLE_STANDARD};
        fd_explain_opts eo = *o;
        eo.backend = NULL;
        /* the replay with FlashAttention-2's key tile for the bundle (as check runs it) */
        fd_casefile cfb;
        fd_casefile_for_bundle(cf, &b->prob, &cfb);
        rc = fd_explain_run(&cfb, &src, &eo, ex, err, errlen);
    }
    fd_bundle_free(b);
    free(b);
    return rc;
}

int fd_explain_run(const fd_casefile *cf, const fd_explain_src *src, const fd_explain_opts *o,
                   fd_explanation *ex, char *err, size_t errlen)
{
    const fd_problem *p = src->p;
    const fd_case *c = src->c;
    memset(ex, 0, sizeof *ex);
    snprintf(ex->case_id, sizeof ex->case_id, "%s", src->id);
    snprintf(ex->backend, sizeof ex->backend, "%s",
             src->kernel_o ? (src->kernel_name ? src->kernel_name : "imported") : o->backend ? o->backend : "cpu-flash");
    /* an old bug name runs, and is recorded, as the bug it names now */
    const char *inject = o->inject && fd_explain_bug_renamed(o->inject, p->mask)
                             ? fd_explain_bug_renamed(o->inject, p->mask) : o->inject;
    snprintf(ex->inject, sizeof ex->inject, "%s", inject ? inject : "");
    ex->dtype = p->dtype;
    ex->best = -1;
    const fd_backend *be = NULL;
    if (!src->kernel_o && !(be = fd_backend_find(ex->backend))) {
        snprintf(err, errlen, "--backend: unknown backend \"%s\"", ex->backend);
        return FD_EX_EUSAGE;
    }
    if (!c && (o->inject || !src->q || !src->k || !src->v || !src->kernel_o)) {
        snprintf(err, errlen, "explaining given tensors needs q, k, v and an output, and takes no --inject");
        return FD_EX_EUSAGE;
    }
    const int backward = c ? c->backward : src->kernel_dq != NULL;
    if (inject && fd_explain_bug_is_bwd(inject) && !backward) {
        snprintf(err, errlen, "--inject %s: case %s has no backward pass (\"backward\": true in its sweep)", inject, src->id);
        return FD_EX_EUSAGE;
    }
    if (backward && !src->kernel_o && !be->run_bwd) {
        snprintf(err, errlen, "--backend %s has no backward pass: case %s asks for one", ex->backend, src->id);
        return FD_EX_EUSAGE;
    }
    const char *noop = c ? fd_explain_inject_noop(p, inject) : NULL;
    if (noop) {
        snprintf(err, errlen, "--inject %s changes nothing on case %s: %s", o->inject, src->id, noop);
        return FD_EX_EUSAGE;
    }
    int rc = -1;
    fd_case_result *jr = NULL; /* the pipeline's judgement of the explained output */
    float *qo = NULL, *ko = NULL, *vo = NULL, *of = NULL, *lf = NULL;
    double *qu = NULL, *ku = NULL, *vu = NULL, *qd = NULL, *kd = NULL, *vd = NULL;
    double *full = NULL, *lfull = NULL, *kout = NULL, *base = NULL;
    double *fin = NULL, *tmp = NULL, *sumabs = NULL, *kappa = NULL, *e = NULL, *acc = NULL;
    int *rows = NULL, *nvis = NULL;
    float *dout_own = NULL, *kg[FD_NGRAD] = {NULL, NULL, NULL};
    if (c) {
        if (fd_inputs_make(c, &qo, &ko, &vo, err, errlen)) return -1;
        if (fd_inputs_make_unrounded(c, &qu, &ku, &vu, err, errlen)) goto out;
    }
    const float *q = c ? qo : src->q, *k = c ? ko : src->k, *v = c ? vo : src->v;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p);
    /* the rows the judging pipeline checks (fd_run.c): every row under the reference budget */
    const int rph = fd_reference_rows_per_head(cf, p, o->jobs, NULL);
    int cap = (rph <= 0 || p->seqlen_q <= rph) ? p->seqlen_q : rph + 16;
    rows = malloc(sizeof(int) * (size_t)(cap + 16));
    nvis = malloc(sizeof(int) * (size_t)(cap + 16));
    if (!rows || !nvis) FD_FAIL_OOM();
    const int nrows = fd_sample_rows(p, rph, rows);
    for (int r = 0; r < nrows; r++) nvis[r] = fd_problem_visible_count(p, rows[r]);
    fd_chk ck = {p, rows, nrows, (size_t)p->batch * (size_t)p->heads * (size_t)nrows * (size_t)p->head_dim};
    const size_t n = ck.n;
    ex->nchecked = (long)n;
    qd = fd_to_f64(q, nq); kd = fd_to_f64(k, nkv); vd = fd_to_f64(v, nkv);
    of = malloc(nq * sizeof(float)); lf = malloc(fd_lse_numel(p) * sizeof(float));
    full = malloc(nq * sizeof(double)); lfull = malloc(fd_lse_numel(p) * sizeof(double));
    kout = malloc(n * sizeof(double)); base = malloc(n * sizeof(double)); fin = malloc(n * sizeof(double));
    tmp = malloc(n * sizeof(double)); e = malloc(n * sizeof(double)); acc = calloc(n, sizeof(double));
    sumabs = malloc(n * sizeof(double)); kappa = malloc(n * sizeof(double));
    jr = malloc(sizeof *jr);
    if (!qd || !kd || !vd || !of || !lf || !full || !lfull || !kout || !base ||
        !fin || !tmp || !e || !acc || !sumabs || !kappa || !jr)
        FD_FAIL_OOM();
    memset(jr, 0, sizeof *jr);

    /* 1. the kernel's output (every row when its gradients are wanted) and gradients */
    const float *klse = lf;
    const float *dout = src->dout;
    const float *gq = src->kernel_dq, *gk = src->kernel_dk, *gv = src->kernel_dv;
    if (c) {
        fd_kctx kx = {cf, c, be, q, k, v, backward ? NULL : rows, backward ? p->seqlen_q : nrows};
        if (kernel_output(&kx, inject, qd, kd, vd, of, lf, err, errlen)) goto out;
        if (backward) {
            if (fd_inputs_make_dout(c, &dout_own, err, errlen)) goto out;
            dout = dout_own;
            kg[0] = malloc(nq * sizeof(float));
            kg[1] = malloc(nkv * sizeof(float));
            kg[2] = malloc(nkv * sizeof(float));
            if (!kg[0] || !kg[1] || !kg[2]) FD_FAIL_OOM();
            const int kr = fd_explain_kernel_grads(cf, c, be, inject, q, k, v, of, lf, dout, kg[0], kg[1], kg[2], err, errlen);
            if (kr > 0) rc = FD_EX_EUSAGE; /* the backend's backward does not apply to this case */
            if (kr) goto out;
            gq = kg[0]; gk = kg[1]; gv = kg[2];
        }
    } else {
        memcpy(of, src->kernel_o, nq * sizeof(float));
        klse = src->kernel_lse;
    }
    gather_f(&ck, of, kout);

    /* 2. judged by the one pipeline, as a given output beside any supplied standard ones:
     * the verdict run and check give it, and the reference on the same rows */
    {
        fd_backend kb = {ex->backend, be ? be->family : "import", src->standard ? FD_ROLE_STANDARD : FD_ROLE_FLASH,
                         NULL, NULL, NULL, NULL};
        fd_given g;
        memset(&g, 0, sizeof g);
        g.q = q;
        g.k = k;
        g.v = v;
        g.out[0].be = &kb;
        g.out[0].o = of;
        g.out[0].lse = klse;
        g.out[0].dq = gq;
        g.out[0].dk = gk;
        g.out[0].dv = gv;
        g.dout = dout;
        g.nout = 1;
        for (int i = 0; src->beside && i < src->beside->nout && g.nout < FD_MAX_BACKENDS - 1; i++)
            g.out[g.nout++] = src->beside->out[i];
        fd_case jc;
        memset(&jc, 0, sizeof jc);
        if (c) jc = *c;
        snprintf(jc.id, sizeof jc.id, "%s", src->id);
        jc.prob = *p;
        jc.bundle = NULL;
        jc.backward = backward;
        if (!c) jc.dist = FD_DIST_GIVEN;
        if (fd_run_case_given(cf, &jc, NULL, 0, &g, o->jobs, 1, jr, err, errlen)) goto out;
        ex->verdict = jr->verdict;
        snprintf(ex->reasons, sizeof ex->reasons, "%s", jr->reasons);
    }
    const double *ref = jr->ref_o;
    ex->ref_max_abs = 0.0;
    for (size_t i = 0; i < n; i++) ex->ref_max_abs = fmax(ex->ref_max_abs, fabs(ref[i]));
    const double refl2 = l2(ref, n);
    ex->k_err_max_abs = fd_max_abs_diff(kout, ref, n);
    ex->k_err_l2 = refl2 > 0 ? l2_diff(kout, ref, n) / refl2 : l2_diff(kout, ref, n);

    /* 3. the replay's error budget by stage */
    const fd_flash_cfg *cfg = &cf->flash;
    ex->replay_bc = cfg->bc;
    if (fd_cpu_flash_stages(p, cfg, 0u, q, k, v, rows, nrows, full, lfull, err, errlen)) goto out;
    gather_d(&ck, full, base);
    for (size_t i = 0; i < n; i++) e[i] = base[i] - ref[i];
    ex->r_err_max_abs = fd_max_abs_diff(base, ref, n);
    ex->r_err_l2 = refl2 > 0 ? l2_diff(base, ref, n) / refl2 : 0.0;
    ex->replay_mismatches = 0;
    for (size_t i = 0; i < n; i++)
        ex->replay_mismatches += fd_f32_bits((float)base[i]) != fd_f32_bits((float)kout[i]);
    ex->replay_matches_kernel = ex->replay_mismatches == 0;
    if (inject && !fd_explain_bug_is_bwd(inject) && ex->replay_matches_kernel)
        fprintf(stderr, "flashdrift explain: warning: --inject %s left %s's output bit-identical to the "
                        "bug-free replay: the backend may not apply this bug\n", inject, be->name);
    const double ee = l2(e, n) * l2(e, n);
    if (fd_cpu_flash_stages(p, cfg, FD_STAGE_FINAL, q, k, v, rows, nrows, full, lfull, err, errlen)) goto out;
    gather_d(&ck, full, fin);
    static const struct { unsigned bit; const char *name; } stages[] = {
        {FD_STAGE_QK, "QK^T accumulation"},
        {FD_STAGE_SOFTMAX, "softmax (max, exp2, rescaling, row sum)"},
        {FD_STAGE_PROUND, "rounding of P to the dtype"},
        {FD_STAGE_PV, "PV accumulation"},
        {FD_STAGE_DROPSCALE, "dropout scale 1/(1-p) in fp32"},
    };
    /* FP8 (issue 15 item 4): the same stages under their FP8 names; the quantisation of
     * Q, K, V is input rounding (below), not a kernel stage */
    const int fp8 = fd_dtype_is_fp8(p->dtype);
    for (int s = -1; s < (int)(sizeof stages / sizeof stages[0]); s++) {
        if (s >= 0 && stages[s].bit == FD_STAGE_DROPSCALE && !(p->dropout_p > 0.0)) continue;
        if (s >= 0 && stages[s].bit == FD_STAGE_PROUND && (p->dtype == FD_DT_FP32 || cfg->p_fp32)) continue;
        fd_ex_part *pt = &ex->part[ex->nparts];
        pt->diff = malloc(n * sizeof(double));
        if (!pt->diff) FD_FAIL_OOM();
        ex->nparts++;
        if (s < 0) {
            snprintf(pt->name, sizeof pt->name, "%s",
                     fp8 ? "final normalisation (1/l, v_descale) and bf16 output rounding" : "final normalisation and output rounding");
            for (size_t i = 0; i < n; i++) pt->diff[i] = base[i] - fin[i];
        } else {
            const char *nm8 = stages[s].bit == FD_STAGE_QK ? "QK^T accumulation (FP8 tensor-core model)"
                              : stages[s].bit == FD_STAGE_PROUND ? "rounding of P to e4m3 (FP8)"
                              : stages[s].bit == FD_STAGE_PV ? "PV accumulation (FP8 tensor-core model)" : stages[s].name;
            snprintf(pt->name, sizeof pt->name, "%s", fp8 ? nm8 : stages[s].name);
            if (fd_cpu_flash_stages(p, cfg, FD_STAGE_FINAL | stages[s].bit, q, k, v, rows, nrows, full, lfull, err, errlen)) goto out;
            gather_d(&ck, full, tmp);
            for (size_t i = 0; i < n; i++) pt->diff[i] = fin[i] - tmp[i];
        }
        double dot = 0.0, mx = 0.0;
        for (size_t i = 0; i < n; i++) {
            dot += pt->diff[i] * e[i];
            mx = fmax(mx, fabs(pt->diff[i]));
            acc[i] += pt->diff[i];
        }
        pt->max_abs = mx;
        pt->l2 = refl2 > 0 ? l2(pt->diff, n) / refl2 : 0.0;
        pt->share = ee > 0 ? dot / ee : 0.0;
    }
    if (fd_cpu_flash_stages(p, cfg, FD_STAGE_ALL, q, k, v, rows, nrows, full, lfull, err, errlen)) goto out;
    gather_d(&ck, full, tmp);
    ex->allexact_max_abs = fd_max_abs_diff(tmp, ref, n);
    {
        double dot = 0.0, s2 = 0.0;
        for (size_t i = 0; i < n; i++) {
            double it = (base[i] - tmp[i]) - acc[i];
            dot += it * e[i];
            s2 += it * it;
        }
        ex->interaction_l2 = refl2 > 0 ? sqrt(s2) / refl2 : 0.0;
        ex->interaction_share = ee > 0 ? dot / ee : 0.0;
    }
    /* input rounding: the exact output moves when the inputs are rounded to the dtype
     * (unknown for given tensors: they arrive rounded) */
    ex->input_rounding_max_abs = ex->input_rounding_l2 = NAN;
    if (qu) {
        fd_attn_variant va;
        fd_attn_variant_default(p, &va);
        double *o1 = full, *o2 = malloc(nq * sizeof(double));
        if (!o2) FD_FAIL_OOM();
        int r1 = fd_attn64(p, &va, qu, ku, vu, rows, nrows, o1, err, errlen);
        if (!r1) {
            gather_d(&ck, o1, tmp);
            r1 = fd_attn64(p, &va, qd, kd, vd, rows, nrows, o2, err, errlen);
        }
        if (!r1) {
            gather_d(&ck, o2, acc);
            ex->input_rounding_max_abs = fd_max_abs_diff(tmp, acc, n);
            ex->input_rounding_l2 = refl2 > 0 ? l2_diff(tmp, acc, n) / refl2 : 0.0;
        }
        free(o2);
        if (r1) goto out;
    }

    /* 4. accumulation order on the same inputs */
    {
        fd_flash_cfg vc;
        char name[40];
        static const int bcs[] = {16, 32, 64, 128, 256};
        for (int t = 0; t < 5; t++) {
            if (bcs[t] == cfg->bc) continue;
            vc = *cfg;
            vc.bc = bcs[t];
            if (fd_cpu_flash_forward(p, &vc, q, k, v, rows, nrows, of, lf, err, errlen)) goto out;
            gather_f(&ck, of, tmp);
            snprintf(name, sizeof name, "tile bc=%d", bcs[t]);
            add_variant(ex, name, tmp, base, ref, n);
        }
        if (p->dtype != FD_DT_FP32) {
            vc = *cfg;
            vc.qk_order = vc.pv_order = cfg->qk_order == FD_ACC_SEQ ? FD_ACC_TC16 : FD_ACC_SEQ;
            if (fd_cpu_flash_forward(p, &vc, q, k, v, rows, nrows, of, lf, err, errlen)) goto out;
            gather_f(&ck, of, tmp);
            snprintf(name, sizeof name, "dot order %s", fd_accum_name(vc.qk_order));
            add_variant(ex, name, tmp, base, ref, n);
        }
        vc = *cfg;
        vc.rowsum = cfg->rowsum == FD_ROWSUM_FA2 ? FD_ROWSUM_SEQ : FD_ROWSUM_FA2;
        if (fd_cpu_flash_forward(p, &vc, q, k, v, rows, nrows, of, lf, err, errlen)) goto out;
        gather_f(&ck, of, tmp);
        add_variant(ex, vc.rowsum == FD_ROWSUM_SEQ ? "row sum sequential" : "row sum fa2 quad", tmp, base, ref, n);
        static const int splits[] = {2, 4, 8};
        for (int t = 0; t < 3; t++) {
            if (fd_cpu_splitkv_forward(p, cfg, splits[t], q, k, v, rows, nrows, of, lf, err, errlen)) goto out;
            gather_f(&ck, of, tmp);
            snprintf(name, sizeof name, "split-KV %d", splits[t]);
            add_variant(ex, name, tmp, base, ref, n);
        }
        /* standard attention: errors on rows with no key are NaN by construction; skip them */
        if (fd_cpu_standard_forward(p, cfg->qk_order, q, k, v, rows, nrows, of, lf, err, errlen)) goto out;
        gather_f(&ck, of, tmp);
        for (size_t i = 0; i < n; i++)
            if (isnan(tmp[i])) tmp[i] = ref[i];
        double se = 0, sf = 0, sd = 0, sfs = 0;
        for (size_t i = 0; i < n; i++) {
            double ef = base[i] - ref[i], es = tmp[i] - ref[i];
            sf += ef * ef; se += es * es; sfs += ef * es;
            sd += (base[i] - tmp[i]) * (base[i] - tmp[i]);
        }
        ex->std_err_max_abs = fd_max_abs_diff(tmp, ref, n);
        ex->flash_std_diff_max_abs = fd_max_abs_diff(tmp, base, n);
        ex->flash_std_diff_l2 = sqrt(sd);
        ex->flash_err_l2_abs = sqrt(sf);
        ex->std_err_l2_abs = sqrt(se);
        ex->flash_std_corr = (sf > 0 && se > 0) ? sfs / sqrt(sf * se) : 0.0;
    }

    /* 5. conditioning of PV against the classic bound for fp32 recursive summation */
    if (fd_attn64_condition(p, qd, kd, vd, rows, nrows, sumabs, kappa, err, errlen)) goto out;
    {
        const fd_ex_part *pv = NULL;
        for (int t = 0; t < ex->nparts; t++)
            if (!strncmp(ex->part[t].name, "PV accumulation", 15)) pv = &ex->part[t];
        size_t t = 0, nk = 0;
        double *ks = tmp;
        for (int b = 0; b < p->batch; b++)
            for (int h = 0; h < p->heads; h++)
                for (int r = 0; r < nrows; r++)
                    for (int d = 0; d < p->head_dim; d++, t++) {
                        /* n additions plus one rescaling multiply per tile */
                        const double nn = (double)nvis[r] + (double)((nvis[r] + cfg->bc - 1) / cfg->bc + (p->window ? 1 : 0));
                        const double u = 0x1p-24, gam = nn * u / (1.0 - nn * u);
                        const double bound = gam * sumabs[t];
                        if (pv && bound > 0) {
                            const double ratio = fabs(pv->diff[t]) / bound;
                            if (ratio > ex->pv_bound_worst_ratio) ex->pv_bound_worst_ratio = ratio;
                            if (ratio > 1.0) ex->pv_bound_violations++;
                        }
                        if (isfinite(kappa[t])) {
                            ks[nk++] = kappa[t];
                            if (kappa[t] > ex->kappa_max) ex->kappa_max = kappa[t];
                        }
                    }
        qsort(ks, nk, sizeof(double), cmp_dbl);
        ex->kappa_median = nk ? ks[nk / 2] : 1.0;
    }

    /* 6. dropout */
    fd_dropout_stats_compute(p, rows, nrows, nvis, &ex->drop);
    if (ex->drop.active) ex->drop_bias_max_abs = fabs(ex->drop.scale_bias) * ex->ref_max_abs;

    /* 7. bug hypotheses when the error is far above the rounding budget */
    ex->budget = fmax(ex->r_err_max_abs, ex->std_err_max_abs);
    ex->limit = cf->policy.fa_ratio * ex->budget + cf->policy.atol;
    ex->gross = !(ex->k_err_max_abs <= ex->limit);
    if (ex->gross) {
        /* a buggy kernel rounds its own (different) outputs: allow two ulps of the dtype at
         * the output's magnitude besides the rounding limit of the correct computation */
        double kmax = 0.0;
        for (size_t i = 0; i < n; i++)
            if (isfinite(kout[i])) kmax = fmax(kmax, fabs(kout[i]));
        ex->hypo_limit = fmax(ex->limit, 2.0 * fd_ulp_in_dtype(kmax, fd_out_dtype(p->dtype)));
        fd_attn_variant va;
        double *cand = malloc(nq * sizeof(double));
        if (!cand) FD_FAIL_OOM();
#define HYPO(NAME, WHAT, SETUP)                                                        \
    do {                                                                               \
        fd_attn_variant_default(p, &va);                                               \
        SETUP;                                                                         \
        if (fd_attn64(p, &va, qd, kd, vd, rows, nrows, cand, err, errlen)) {           \
            free(cand);                                                                \
            goto out;                                                                  \
        }                                                                              \
        gather_d(&ck, cand, tmp);                                                      \
        add_hypo(ex, NAME, WHAT, tmp, kout, n);                                        \
    } while (0)
        /* FP8: va.scale holds the descales too; these two change the softmax scale alone */
        HYPO("scale_missing", "softmax scale not applied (scale 1)", va.scale = va.scale / (double)p->softmax_scale);
        HYPO("scale_doubled", "softmax scale applied twice (scale^2)", va.scale = va.scale * (double)p->softmax_scale);
        if (p->mask != FD_MASK_NONE) {
            HYPO("mask_missing", "causal mask not applied", va.mask = FD_MASK_NONE);
            if (!all_square(p)) {
                if (p->mask == FD_MASK_CAUSAL_BR)
                    HYPO("causal_top_left", "causal mask aligned top-left (PyTorch is_causal) instead of bottom-right (FA >= 2.1)", va.mask = FD_MASK_CAUSAL_TL);
                else
                    HYPO("causal_bottom_right", "causal mask aligned bottom-right (FA >= 2.1) instead of top-left", va.mask = FD_MASK_CAUSAL_BR);
            }
            HYPO("causal_off_by_one_plus", "causal mask lets each query see one key too many", va.causal_shift = 1);
            HYPO("causal_off_by_one_minus", "causal mask hides the diagonal key", va.causal_shift = -1);
        } else {
            HYPO("causal_added", "a causal (top-left) mask applied to a non-causal call", va.mask = FD_MASK_CAUSAL_TL);
        }
        if (p->dropout_p > 0.0) {
            HYPO("dropout_not_applied", "dropout not applied (or p = 0)", va.dropout = 0);
            HYPO("dropout_scale_missing", "kept values not scaled by 1/(1-p)", va.drop_scale = 1.0);
            HYPO("dropout_scale_twice", "kept values scaled by 1/(1-p) twice", va.drop_scale = va.drop_scale * va.drop_scale);
            HYPO("dropout_seed_plus_one", "dropout mask drawn with seed + 1", va.seed = va.seed + 1);
            HYPO("dropout_offset_plus_one", "dropout mask drawn with Philox offset + 1", va.offset = va.offset + 1);
            HYPO("dropout_next_call", "dropout mask of the next call (offset + batch*heads*32, PyTorch's increment)",
                 va.offset = va.offset + (uint64_t)p->batch * (uint64_t)p->heads * 32u);
        }
        HYPO("softmax_wrong_axis", "softmax normalised over queries instead of keys", va.wrong_axis = 1);
        if (fd_dtype_is_fp8(p->dtype)) { /* FP8 (issue 15 item 4) */
            for (int t = 0; t < FD_NFP8HYPO; t++) {
                const char *nm = fp8_hypos[t].name;
                if (fp8_noop(p, nm)) continue;
                { /* the replay with the bug's descales or Max_offset */
                    fd_problem pb = *p;
                    fd_flash_cfg cb = *cfg;
                    fp8_bug_setup(nm, &pb, &cb);
                    if (fd_cpu_flash_forward(&pb, &cb, q, k, v, rows, nrows, of, lf, err, errlen)) {
                        free(cand);
                        goto out;
                    }
                    gather_f(&ck, of, tmp);
                    add_hypo(ex, nm, fp8_hypos[t].what, tmp, kout, n);
                }
            }
        }
        for (int t = 0; t < FD_NMODHYPO; t++) {
            const char *why;
            if (mod_hypo_setup(p, mod_hypos[t].name, &va, &why) != 1) continue;
            if (va.splitkv_unweighted && !paged_splits(cf, p, &va)) continue;
            if (fd_attn64(p, &va, qd, kd, vd, rows, nrows, cand, err, errlen)) {
                free(cand);
                goto out;
            }
            gather_d(&ck, cand, tmp);
            add_hypo(ex, mod_hypos[t].name, mod_hypos[t].what, tmp, kout, n);
        }
#undef HYPO
        /* layouts: need the whole output */
        if ((double)p->batch * p->heads * p->seqlen_q * (double)p->seqlen_k * p->head_dim <= 4e9) {
            fd_attn_variant_default(p, &va);
            if (fd_attn64(p, &va, qd, kd, vd, NULL, p->seqlen_q, full, err, errlen)) {
                free(cand);
                goto out;
            }
            for (int kind = 0; kind < 2; kind++) {
                for (size_t f = 0; f < nq; f++) cand[f] = full[perm_src(p, kind, f)];
                gather_d(&ck, cand, tmp);
                add_hypo(ex, kind == 0 ? "layout_bhsd_as_bshd" : "layout_bshd_as_bhsd",
                         kind == 0 ? "output (batch, seq, heads, dim) permuted as if (batch, heads, seq, dim) before a reshape (or written bhsd, read bshd)"
                                   : "output written (batch, seq, heads, dim), read as (batch, heads, seq, dim)",
                         tmp, kout, n);
            }
        }
        free(cand);
        for (int t = 0; t < ex->nhypo; t++)
            if (ex->best < 0 || ex->hypo[t].residual_max_abs < ex->hypo[ex->best].residual_max_abs) ex->best = t;
    }

    /* 8. the gradients' attribution */
    if (backward && gq && fd_explain_grads(cf, p, q, k, v, dout, gq, gk, gv, jr, ex, err, errlen)) goto out;

    /* 9. one-line summary */
    const double fa_limit = cf->policy.fa_ratio * ex->std_err_max_abs + cf->policy.atol;
    if (!ex->gross && ex->k_err_max_abs > fa_limit) {
        snprintf(ex->summary, sizeof ex->summary,
                 "rounding, but more than FlashAttention's rule allows: max abs error %.3g exceeds "
                 "%g x standard attention's %.3g + %g = %.3g, yet stays within %.3g, the flash "
                 "algorithm's own rounding budget (replay %.3g): an accuracy loss of the kernel's "
                 "arithmetic, not a semantic bug", ex->k_err_max_abs, cf->policy.fa_ratio,
                 ex->std_err_max_abs, cf->policy.atol, fa_limit, ex->limit, ex->r_err_max_abs);
    } else if (!ex->gross) {
        snprintf(ex->summary, sizeof ex->summary,
                 "rounding and accumulation order only: max abs error %.3g is within %.3g "
                 "(%g x the larger of the replay's %.3g and standard attention's %.3g, + %g)",
                 ex->k_err_max_abs, ex->limit, cf->policy.fa_ratio, ex->r_err_max_abs,
                 ex->std_err_max_abs, cf->policy.atol);
    } else if (ex->best >= 0 && ex->hypo[ex->best].explains) {
        snprintf(ex->summary, sizeof ex->summary,
                 "a bug, not rounding: max abs error %.3g is %.0fx the rounding budget; "
                 "hypothesis %s (%s) explains it: %.3g left", ex->k_err_max_abs,
                 ex->budget > 0 ? ex->k_err_max_abs / ex->budget : (double)INFINITY, ex->hypo[ex->best].name,
                 ex->hypo[ex->best].what, ex->hypo[ex->best].residual_max_abs);
    } else {
        snprintf(ex->summary, sizeof ex->summary,
                 "a bug, not rounding: max abs error %.3g is %.0fx the rounding budget; no named "
                 "hypothesis explains it (closest: %s, %.3g left)", ex->k_err_max_abs,
                 ex->budget > 0 ? ex->k_err_max_abs / ex->budget : (double)INFINITY,
                 ex->best >= 0 ? ex->hypo[ex->best].name : "none",
                 ex->best >= 0 ? ex->hypo[ex->best].residual_max_abs : 0.0);
    }
    if (ex->grad.active) {
        /* a correct forward with wrong gradients is explained by the gradients */
        char f[512];
        snprintf(f, sizeof f, "%s", ex->summary);
        if (!ex->gross && ex->grad.gross) snprintf(ex->summary, sizeof ex->summary, "%s (forward: %.200s)", ex->grad.summary, f);
        else snprintf(ex->summary, sizeof ex->summary, "%.250s; %.250s", f, ex->grad.summary);
    }
    rc = 0;
out:
    free(qo); free(ko); free(vo); free(qu); free(ku); free(vu); free(qd); free(kd); free(vd);
    free(of); free(lf); free(full); free(lfull); free(kout); free(base);
    if (jr) fd_case_result_free(jr);
    free(jr);
    free(fin); free(tmp); free(e); free(acc); free(sumabs); free(kappa); free(rows); free(nvis);
    free(dout_own); free(kg[0]); free(kg[1]); free(kg[2]);
    if (rc) fd_explanation_free(ex);
    return rc;
}

json_t *fd_explain_json(const fd_explanation *ex)
{
    json_t *parts = json_array(), *vars = json_array(), *hyps = json_array();
    for (int i = 0; i < ex->nparts; i++)
        json_array_append_new(parts, json_pack("{s:s, s:o, s:o, s:o}", "stage", ex->part[i].name,
                                               "max_abs", fd_json_num(ex->part[i].max_abs), "rel_l2",
                                               fd_json_num(ex->part[i].l2), "share", fd_json_num(ex->part[i].share)));
    json_array_append_new(parts, json_pack("{s:s, s:o, s:o}", "stage", "interaction", "rel_l2",
                                           fd_json_num(ex->interaction_l2), "share", fd_json_num(ex->interaction_share)));
    for (int i = 0; i < ex->nvar; i++)
        json_array_append_new(vars, json_pack("{s:s, s:o, s:o, s:o, s:b}", "order", ex->var[i].name,
                                              "max_abs_vs_kernel_order", fd_json_num(ex->var[i].max_abs_vs_base),
                                              "rel_l2_vs_kernel_order", fd_json_num(ex->var[i].l2_vs_base),
                                              "err_max_abs", fd_json_num(ex->var[i].err_max_abs),
                                              "identical", ex->var[i].identical));
    for (int i = 0; i < ex->nhypo; i++)
        json_array_append_new(hyps, json_pack("{s:s, s:s, s:o, s:b, s:b}", "name", ex->hypo[i].name,
                                              "what", ex->hypo[i].what, "residual_max_abs",
                                              fd_json_num(ex->hypo[i].residual_max_abs), "explains",
                                              ex->hypo[i].explains, "best", i == ex->best));
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:I, s:s, s:b, s:{s:o, s:o}, s:o, s:o, s:{s:o, s:o, s:o, s:b, s:I, s:i}, "
        "s:o, s:{s:o, s:o}, s:o, s:{s:o, s:o, s:o, s:o, s:o}, s:{s:o, s:o, s:o, s:I}, s:o}",
        "case", ex->case_id, "backend", ex->backend, "inject", ex->inject, "checked", (json_int_t)ex->nchecked,
        "summary", ex->summary, "gross", ex->gross, "kernel_error", "max_abs", fd_json_num(ex->k_err_max_abs),
        "rel_l2", fd_json_num(ex->k_err_l2), "rounding_budget", fd_json_num(ex->budget), "limit",
        fd_json_num(ex->limit), "replay", "err_max_abs", fd_json_num(ex->r_err_max_abs), "err_rel_l2",
        fd_json_num(ex->r_err_l2), "all_exact_err_max_abs", fd_json_num(ex->allexact_max_abs),
        "bitwise_equal_to_kernel", ex->replay_matches_kernel, "mismatches", (json_int_t)ex->replay_mismatches,
        "key_tile", ex->replay_bc, "stages", parts, "input_rounding", "max_abs", fd_json_num(ex->input_rounding_max_abs), "rel_l2",
        fd_json_num(ex->input_rounding_l2), "orders", vars, "flash_vs_standard", "diff_max_abs",
        fd_json_num(ex->flash_std_diff_max_abs), "diff_l2", fd_json_num(ex->flash_std_diff_l2),
        "flash_err_l2", fd_json_num(ex->flash_err_l2_abs), "standard_err_l2", fd_json_num(ex->std_err_l2_abs),
        "error_correlation", fd_json_num(ex->flash_std_corr), "conditioning", "kappa_median",
        fd_json_num(ex->kappa_median), "kappa_max", fd_json_num(ex->kappa_max), "pv_bound_worst_ratio",
        fd_json_num(ex->pv_bound_worst_ratio), "pv_bound_violations", (json_int_t)ex->pv_bound_violations,
        "hypotheses", hyps);
    json_object_set_new(j, "verdict", json_string(fd_verdict_name(ex->verdict)));
    json_object_set_new(j, "reasons", json_string(ex->reasons));
    json_object_set_new(j, "dtype", json_string(fd_dtype_name(ex->dtype)));
    json_object_set_new(j, "hypothesis_limit", fd_json_num(ex->hypo_limit));
    if (ex->grad.active) json_object_set_new(j, "gradients", fd_explain_grad_json(&ex->grad));
    json_object_set_new(json_object_get(j, "flash_vs_standard"), "standard_err_max_abs",
                        fd_json_num(ex->std_err_max_abs));
    if (ex->drop.active) {
        const fd_dropout_stats *d = &ex->drop;
        json_object_set_new(j, "dropout",
            json_pack("{s:o, s:o, s:o, s:o, s:I, s:I, s:i, s:o, s:o, s:o}", "keep_rate", fd_json_num(d->keep_rate),
                      "keep_threshold", fd_json_num(d->keep_threshold), "scale_bias", fd_json_num(d->scale_bias),
                      "bias_max_abs", fd_json_num(ex->drop_bias_max_abs), "kept", (json_int_t)d->kept,
                      "total", (json_int_t)d->total, "threshold", d->threshold, "keep_nominal",
                      fd_json_num(d->keep_nominal), "z_threshold", fd_json_num(d->z_threshold), "z_nominal",
                      fd_json_num(d->z_nominal)));
    }
    return j;
}
