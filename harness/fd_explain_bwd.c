/* fd_explain_bwd.c: explain's backward pass; see fd_explain_bwd.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_attn64.h"
#include "fd_cpu_bwd.h"
#include "fd_dtype.h"
#include "fd_explain_bwd.h"
#include "fd_metrics.h"
#include "fd_out.h"
#include "fd_run_bwd.h"

/* The backward bugs explain can inject and name (the tail of fd_explain_bugs). */
static const char *const bwd_bugs[] = {"bwd_dq_scale_missing", "bwd_dk_scale_missing", "bwd_causal_top_left",
                                       "bwd_causal_bottom_right", "bwd_mask_missing", "bwd_dropout_missing",
                                       "bwd_dropout_seed_plus_one", "bwd_dropout_offset_plus_one", "bwd_d_zero", "bwd_lse_other_head",
                                       "bwd_gqa_sum_missing", "bwd_dk_dv_swapped",
                                       "bwd_softcap_derivative_missing", "bwd_window_ignored",
                                       "bwd_window_left_plus_one", "bwd_window_right_plus_one", "bwd_alibi_missing", NULL};

int fd_explain_bug_is_bwd(const char *bug)
{
    for (int i = 0; bug && bwd_bugs[i]; i++)
        if (!strcmp(bug, bwd_bugs[i])) return 1;
    return 0;
}

/* Does the backward's problem q see other keys than p's on some row? */
static int vis_differs(const fd_problem *p, const fd_problem *q)
{
    for (int i = 0; i < p->seqlen_q; i++) {
        int a0, a1, b0, b1;
        const int na = fd_mask_visible_range(p, i, &a0, &a1), nb = fd_mask_visible_range(q, i, &b0, &b1);
        if (na != nb || (na > 0 && (a0 != b0 || a1 != b1))) return 1;
    }
    return 0;
}

const char *fd_explain_bwd_noop(const fd_problem *p, const char *bug)
{
    if (!strcmp(bug, "bwd_softcap_derivative_missing") && !(p->softcap > 0.0f)) return "it has no softcap";
    if (!strcmp(bug, "bwd_alibi_missing") && !p->alibi) return "it has no ALiBi";
    if (!strncmp(bug, "bwd_window", 10)) {
        if (!p->window) return "it has no window";
        if (!strcmp(bug, "bwd_window_left_plus_one") && p->window_left < 0) return "its window is unbounded on the left";
        if (!strcmp(bug, "bwd_window_right_plus_one") && p->window_right < 0) return "its window is unbounded on the right";
        fd_problem q = *p;
        if (!strcmp(bug, "bwd_window_ignored")) q.window = 0;
        else if (!strcmp(bug, "bwd_window_left_plus_one")) q.window_left += 1;
        else if (!strcmp(bug, "bwd_window_right_plus_one")) q.window_right += 1;
        if (!vis_differs(p, &q)) return "its backward's visible keys would not change";
    }
    const int square = p->seqlen_q == p->seqlen_k;
    const int unit_scale = !(p->softmax_scale < 1.0f || p->softmax_scale > 1.0f);
    if ((!strcmp(bug, "bwd_dq_scale_missing") || !strcmp(bug, "bwd_dk_scale_missing")) && unit_scale)
        return "its softmax scale is 1";
    if (!strcmp(bug, "bwd_mask_missing") && p->mask == FD_MASK_NONE) return "it has no causal mask";
    if (!strcmp(bug, "bwd_causal_top_left") && (p->mask != FD_MASK_CAUSAL_BR || square))
        return "its backward mask would not change (no bottom-right mask, or seqlen_q = seqlen_k)";
    if (!strcmp(bug, "bwd_causal_bottom_right") && (p->mask != FD_MASK_CAUSAL_TL || square))
        return "its backward mask would not change (no top-left mask, or seqlen_q = seqlen_k)";
    if (!strncmp(bug, "bwd_dropout", 11) && !(p->dropout_p > 0.0))
        return "it has no dropout (p = 0)";
    if (!strcmp(bug, "bwd_lse_other_head") && p->heads * p->batch < 2) return "it has one (batch, head)";
    if (!strcmp(bug, "bwd_gqa_sum_missing") && p->heads == p->kv_heads) return "it has no GQA (heads = kv_heads)";
    return NULL;
}

/* How a backward bug changes the backward call: the problem, the forward outputs it reads,
 * or the replay's bug flags. */
typedef struct bwd_mod {
    fd_problem p;
    int o_zero;      /* D from O = 0 */
    int lse_roll;    /* LSE of the next (batch, head) */
    unsigned flags;  /* FD_BWD_BUG_* */
} bwd_mod;

static int bug_mod(const fd_problem *p, const char *bug, bwd_mod *m)
{
    memset(m, 0, sizeof *m);
    m->p = *p;
    if (!strcmp(bug, "bwd_dq_scale_missing")) m->flags = FD_BWD_BUG_DQ_NOSCALE;
    else if (!strcmp(bug, "bwd_dk_scale_missing")) m->flags = FD_BWD_BUG_DK_NOSCALE;
    else if (!strcmp(bug, "bwd_causal_top_left")) m->p.mask = FD_MASK_CAUSAL_TL;
    else if (!strcmp(bug, "bwd_causal_bottom_right")) m->p.mask = FD_MASK_CAUSAL_BR;
    else if (!strcmp(bug, "bwd_mask_missing")) m->p.mask = FD_MASK_NONE;
    else if (!strcmp(bug, "bwd_dropout_missing")) m->p.dropout_p = 0.0;
    else if (!strcmp(bug, "bwd_dropout_seed_plus_one")) m->p.seed += 1;
    else if (!strcmp(bug, "bwd_dropout_offset_plus_one")) m->p.offset += 1;
    else if (!strcmp(bug, "bwd_d_zero")) m->o_zero = 1;
    else if (!strcmp(bug, "bwd_lse_other_head")) m->lse_roll = 1;
    else if (!strcmp(bug, "bwd_gqa_sum_missing")) m->flags = FD_BWD_BUG_NO_GQA_SUM;
    else if (!strcmp(bug, "bwd_dk_dv_swapped")) m->flags = FD_BWD_BUG_SWAP_DKDV;
    else if (!strcmp(bug, "bwd_softcap_derivative_missing")) m->flags = FD_BWD_BUG_NO_DTANH;
    else if (!strcmp(bug, "bwd_window_ignored")) m->p.window = 0;
    else if (!strcmp(bug, "bwd_window_left_plus_one")) m->p.window_left += 1;
    else if (!strcmp(bug, "bwd_window_right_plus_one")) m->p.window_right += 1;
    else if (!strcmp(bug, "bwd_alibi_missing")) m->p.alibi = 0;
    else return -1;
    return 0;
}

/* The modified forward outputs a bug's backward reads (caller frees *o2, *l2 when set). */
static int mod_inputs(const bwd_mod *m, const fd_problem *p, const float *o, const float *lse, const float **om,
                      const float **lm, float **o2, float **l2)
{
    *om = o;
    *lm = lse;
    *o2 = *l2 = NULL;
    if (m->o_zero) {
        if (!(*o2 = calloc(fd_q_numel(p), sizeof(float)))) return -1;
        *om = *o2;
    }
    if (m->lse_roll) {
        const size_t per = (size_t)p->seqlen_q, n = fd_lse_numel(p);
        if (!(*l2 = malloc(n * sizeof(float)))) return -1;
        for (size_t i = 0; i < n; i++) (*l2)[i] = lse[(i + per) % n];
        *lm = *l2;
    }
    return 0;
}

/* The replay's gradients under a bug (the hypotheses' predictions). */
static int replay_bug(const fd_casefile *cf, const fd_problem *p, const char *bug, const float *q, const float *k,
                      const float *v, const float *o, const float *lse, const float *dout, float *dq, float *dk,
                      float *dv, char *err, size_t errlen)
{
    bwd_mod m;
    if (bug_mod(p, bug, &m)) {
        snprintf(err, errlen, "unknown backward bug \"%s\"", bug);
        return -1;
    }
    const float *om, *lm;
    float *o2, *l2;
    int rc = -1;
    if (mod_inputs(&m, p, o, lse, &om, &lm, &o2, &l2)) {
        snprintf(err, errlen, "out of memory");
    } else {
        fd_bwd_cfg bc = cf->bwd;
        bc.bugs = m.flags;
        rc = fd_cpu_flash_backward(&m.p, &cf->flash, &bc, q, k, v, om, lm, dout, dq, dk, dv, err, errlen);
    }
    free(o2);
    free(l2);
    return rc;
}

int fd_explain_kernel_grads(const fd_casefile *cf, const fd_case *c, const fd_backend *be, const char *inject,
                            const float *q, const float *k, const float *v, const float *o, const float *lse,
                            const float *dout, float *dq, float *dk, float *dv, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    double ms;
    if (!be->run_bwd) {
        snprintf(err, errlen, "backend %s has no backward pass", be->name);
        return -1;
    }
    if (!inject || !fd_explain_bug_is_bwd(inject))
        return be->run_bwd(cf, c, q, k, v, o, lse, dout, dq, dk, dv, &ms, err, errlen);
    bwd_mod m;
    bug_mod(p, inject, &m);
    const float *om, *lm;
    float *o2 = NULL, *l2 = NULL, *kx = NULL, *vx = NULL, *dkx = NULL, *dvx = NULL;
    int rc = -1;
    if (mod_inputs(&m, p, o, lse, &om, &lm, &o2, &l2)) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    fd_case cm = *c;
    cm.prob = m.p;
    if (m.flags == FD_BWD_BUG_NO_GQA_SUM) {
        /* per-head dK, dV: the backward on K, V repeated for every query head, then the
         * first head of each group taken as the kv head's gradient */
        const int G = p->heads / p->kv_heads, D = p->head_dim;
        fd_case ce = *c;
        ce.prob.kv_heads = p->heads;
        const size_t ne = fd_kv_numel(&ce.prob);
        kx = malloc(ne * sizeof(float)); vx = malloc(ne * sizeof(float));
        dkx = malloc(ne * sizeof(float)); dvx = malloc(ne * sizeof(float));
        if (!kx || !vx || !dkx || !dvx) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        for (int b = 0; b < p->batch; b++)
            for (int j = 0; j < p->seqlen_k; j++)
                for (int h = 0; h < p->heads; h++) {
                    memcpy(kx + fd_kv_index(&ce.prob, b, j, h, 0), k + fd_kv_index(p, b, j, h / G, 0), sizeof(float) * (size_t)D);
                    memcpy(vx + fd_kv_index(&ce.prob, b, j, h, 0), v + fd_kv_index(p, b, j, h / G, 0), sizeof(float) * (size_t)D);
                }
        if ((rc = be->run_bwd(cf, &ce, q, kx, vx, om, lm, dout, dq, dkx, dvx, &ms, err, errlen))) goto out;
        for (int b = 0; b < p->batch; b++)
            for (int j = 0; j < p->seqlen_k; j++)
                for (int hk = 0; hk < p->kv_heads; hk++) {
                    memcpy(dk + fd_kv_index(p, b, j, hk, 0), dkx + fd_kv_index(&ce.prob, b, j, hk * G, 0), sizeof(float) * (size_t)D);
                    memcpy(dv + fd_kv_index(p, b, j, hk, 0), dvx + fd_kv_index(&ce.prob, b, j, hk * G, 0), sizeof(float) * (size_t)D);
                }
        rc = 0;
        goto out;
    }
    if (m.flags == FD_BWD_BUG_NO_DTANH) {
        /* no backend leaves the factor out on request: the replay's gradient without it
         * stands for the injected kernel's, whatever the backend */
        fd_bwd_cfg bc = cf->bwd;
        bc.bugs = m.flags;
        rc = fd_cpu_flash_backward(&cm.prob, &cf->flash, &bc, q, k, v, om, lm, dout, dq, dk, dv, err, errlen);
        goto out;
    }
    if ((rc = be->run_bwd(cf, &cm, q, k, v, om, lm, dout, dq, dk, dv, &ms, err, errlen))) goto out;
    if (m.flags == FD_BWD_BUG_SWAP_DKDV) {
        for (size_t i = 0; i < fd_kv_numel(p); i++) {
            const float t = dk[i];
            dk[i] = dv[i];
            dv[i] = t;
        }
    } else if (m.flags == FD_BWD_BUG_DQ_NOSCALE || m.flags == FD_BWD_BUG_DK_NOSCALE) {
        /* the scale left out: the kernel's gradient divided by it (to within a rounding) */
        float *x = m.flags == FD_BWD_BUG_DQ_NOSCALE ? dq : dk;
        const size_t n = m.flags == FD_BWD_BUG_DQ_NOSCALE ? fd_q_numel(p) : fd_kv_numel(p);
        for (size_t i = 0; i < n; i++) x[i] = fd_round_to_dtype(x[i] / p->softmax_scale, p->dtype);
    }
    rc = 0;
out:
    free(o2); free(l2); free(kx); free(vx); free(dkx); free(dvx);
    return rc;
}

static const char *bug_what(const char *bug)
{
    static const struct { const char *n, *w; } t[] = {
        {"bwd_dq_scale_missing", "dQ not multiplied by the softmax scale"},
        {"bwd_dk_scale_missing", "dK not multiplied by the softmax scale"},
        {"bwd_causal_top_left", "backward causal mask aligned top-left while the forward's is bottom-right"},
        {"bwd_causal_bottom_right", "backward causal mask aligned bottom-right while the forward's is top-left"},
        {"bwd_mask_missing", "causal mask not applied in the backward pass"},
        {"bwd_dropout_missing", "dropout mask not reapplied in the backward pass"},
        {"bwd_dropout_seed_plus_one", "backward dropout mask regenerated with seed + 1"},
        {"bwd_dropout_offset_plus_one", "backward dropout mask regenerated with Philox offset + 1"},
        {"bwd_d_zero", "D = rowsum(dO o O) not computed (taken as 0): D from a different O"},
        {"bwd_lse_other_head", "P recomputed from the LSE of another (batch, head): LSE of another call"},
        {"bwd_gqa_sum_missing", "GQA reduction missing: dK, dV of a kv head from its first query head only"},
        {"bwd_dk_dv_swapped", "dK and dV written to each other's tensor"},
        {"bwd_softcap_derivative_missing", "softcap's derivative missing in the backward: dS not multiplied by 1 - tanh^2"},
        {"bwd_window_ignored", "sliding window not applied in the backward pass (the forward's applied)"},
        {"bwd_window_left_plus_one", "backward window reaches one key further left than the forward's"},
        {"bwd_window_right_plus_one", "backward window reaches one key further right than the forward's"},
        {"bwd_alibi_missing", "ALiBi bias missing in the backward's recomputation of P"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(t[i].n, bug)) return t[i].w;
    return "";
}

#define OOM()                                   \
    do {                                        \
        snprintf(err, errlen, "out of memory"); \
        goto out;                               \
    } while (0)

int fd_explain_grads(const fd_casefile *cf, const fd_problem *p, const float *q, const float *k, const float *v,
                     const float *dout, const float *kdq, const float *kdk, const float *kdv,
                     const fd_case_result *jr, fd_explanation *ex, char *err, size_t errlen)
{
    fd_ex_grad *g = &ex->grad;
    memset(g, 0, sizeof *g);
    g->best = -1;
    g->active = 1;
    const fd_bwd_result *bw = &jr->bwd;
    const size_t nq = fd_q_numel(p), nk = fd_kv_numel(p);
    size_t n[FD_NGRAD], nmax = 0;
    for (int t = 0; t < FD_NGRAD; t++) {
        n[t] = fd_bwd_count(jr, t);
        g->nchecked[t] = (long)n[t];
        if (n[t] > nmax) nmax = n[t];
    }
    const double *ref[FD_NGRAD] = {bw->ref_dq, bw->ref_dk, bw->ref_dv};
    const float *kg[FD_NGRAD] = {kdq, kdk, kdv};
    int rc = -1;
    float *o = malloc(nq * sizeof(float)), *lse = malloc(fd_lse_numel(p) * sizeof(float));
    float *fg[FD_NGRAD] = {malloc(nq * sizeof(float)), malloc(nk * sizeof(float)), malloc(nk * sizeof(float))};
    double *dg[FD_NGRAD] = {malloc(nq * sizeof(double)), malloc(nk * sizeof(double)), malloc(nk * sizeof(double))};
    double *kout[FD_NGRAD] = {NULL}, *base[FD_NGRAD] = {NULL}, *fin[FD_NGRAD] = {NULL}, *e[FD_NGRAD] = {NULL};
    double *tmp = malloc((nmax ? nmax : 1) * sizeof(double)), *oex = NULL, *qd = NULL, *kd = NULL, *vd = NULL;
    if (!o || !lse || !tmp) OOM();
    for (int t = 0; t < FD_NGRAD; t++) {
        kout[t] = malloc((n[t] ? n[t] : 1) * sizeof(double));
        base[t] = malloc((n[t] ? n[t] : 1) * sizeof(double));
        fin[t] = malloc((n[t] ? n[t] : 1) * sizeof(double));
        e[t] = malloc((n[t] ? n[t] : 1) * sizeof(double));
        if (!fg[t] || !dg[t] || !kout[t] || !base[t] || !fin[t] || !e[t]) OOM();
        fd_bwd_gather(jr, t, kg[t], NULL, kout[t]);
        g->k_err[t] = fd_max_abs_diff(kout[t], ref[t], n[t]);
    }
    /* the replay's own forward (every row), the outputs its backward reads */
    const fd_flash_cfg *fc = &cf->flash;
    if (fd_cpu_flash_forward(p, fc, q, k, v, NULL, 0, o, lse, err, errlen)) goto out;
    /* the exact O (binary64 attention) for the D stage */
    qd = fd_to_f64(q, nq); kd = fd_to_f64(k, nk); vd = fd_to_f64(v, nk);
    oex = malloc(nq * sizeof(double));
    if (!qd || !kd || !vd || !oex) OOM();
    {
        fd_attn_variant va;
        fd_attn_variant_default(p, &va);
        if (fd_attn64(p, &va, qd, kd, vd, NULL, p->seqlen_q, oex, err, errlen)) goto out;
    }
    /* stages: base, final exact, each stage exact on top of final, all exact */
    if (fd_cpu_flash_bwd_stages(p, fc, &cf->bwd, 0u, q, k, v, o, lse, dout, oex, dg[0], dg[1], dg[2], err, errlen)) goto out;
    for (int t = 0; t < FD_NGRAD; t++) {
        fd_bwd_gather(jr, t, NULL, dg[t], base[t]);
        g->r_err[t] = fd_max_abs_diff(base[t], ref[t], n[t]);
        for (size_t i = 0; i < n[t]; i++) e[t][i] = base[t][i] - ref[t][i];
    }
    if (fd_cpu_flash_bwd_stages(p, fc, &cf->bwd, FD_BSTAGE_OUT, q, k, v, o, lse, dout, oex, dg[0], dg[1], dg[2], err, errlen)) goto out;
    for (int t = 0; t < FD_NGRAD; t++) fd_bwd_gather(jr, t, NULL, dg[t], fin[t]);
    static const struct { unsigned bit; const char *name; } st[] = {
        {FD_BSTAGE_P, "P recomputation (S, exp2 from LSE)"},
        {FD_BSTAGE_PROUND, "rounding of P to the dtype (dV)"},
        {FD_BSTAGE_DP, "dP = dO V^T accumulation"},
        {FD_BSTAGE_D, "D from the rounded O in fp32"},
        {FD_BSTAGE_DSROUND, "rounding of dS to the dtype"},
        {FD_BSTAGE_DQACC, "dQ accumulation"},
        {FD_BSTAGE_DKDV, "dK/dV accumulation"},
    };
    for (int s = -1; s < (int)(sizeof st / sizeof st[0]); s++) {
        if (g->nparts >= FD_EX_MAX_GPARTS) break;
        if (s >= 0 && (st[s].bit == FD_BSTAGE_PROUND || st[s].bit == FD_BSTAGE_DSROUND) && p->dtype == FD_DT_FP32) continue;
        __typeof__(g->part[0]) *pt = &g->part[g->nparts++];
        snprintf(pt->name, sizeof pt->name, "%s", s < 0 ? "final scaling and output rounding" : st[s].name);
        if (s >= 0 && fd_cpu_flash_bwd_stages(p, fc, &cf->bwd, FD_BSTAGE_OUT | st[s].bit, q, k, v, o, lse, dout, oex,
                                              dg[0], dg[1], dg[2], err, errlen))
            goto out;
        for (int t = 0; t < FD_NGRAD; t++) {
            const double *a = s < 0 ? base[t] : fin[t];
            if (s >= 0) fd_bwd_gather(jr, t, NULL, dg[t], tmp);
            const double *b = s < 0 ? fin[t] : tmp;
            double dot = 0.0, ee = 0.0, mx = 0.0;
            for (size_t i = 0; i < n[t]; i++) {
                const double d = a[i] - b[i];
                dot += d * e[t][i];
                ee += e[t][i] * e[t][i];
                mx = fmax(mx, fabs(d));
            }
            pt->max_abs[t] = mx;
            pt->share[t] = ee > 0 ? dot / ee : 0.0;
        }
    }
    if (fd_cpu_flash_bwd_stages(p, fc, &cf->bwd, FD_BSTAGE_ALL, q, k, v, o, lse, dout, oex, dg[0], dg[1], dg[2], err, errlen)) goto out;
    for (int t = 0; t < FD_NGRAD; t++) {
        fd_bwd_gather(jr, t, NULL, dg[t], tmp);
        g->allexact[t] = fd_max_abs_diff(tmp, ref[t], n[t]);
    }
    /* standard attention's autograd: the other half of the rounding budget */
    if (fd_cpu_standard_backward(p, fc->qk_order, q, k, v, dout, fg[0], fg[1], fg[2], err, errlen)) goto out;
    for (int t = 0; t < FD_NGRAD; t++) {
        fd_bwd_gather(jr, t, fg[t], NULL, tmp);
        for (size_t i = 0; i < n[t]; i++)
            if (isnan(tmp[i])) tmp[i] = ref[t][i]; /* rows eager attention leaves NaN by design */
        g->std_err[t] = fd_max_abs_diff(tmp, ref[t], n[t]);
        g->budget[t] = fmax(g->r_err[t], g->std_err[t]);
        g->limit[t] = cf->policy.grad_fa_ratio[t] * g->budget[t] + cf->policy.atol;
        if (!(g->k_err[t] <= g->limit[t])) g->gross = 1;
        double kmax = 0.0;
        for (size_t i = 0; i < n[t]; i++)
            if (isfinite(kout[t][i])) kmax = fmax(kmax, fabs(kout[t][i]));
        g->hypo_limit[t] = fmax(g->limit[t], 2.0 * fd_ulp_in_dtype(kmax, p->dtype));
    }
    g->order_checked = bw->order_checked;
    g->order_differ = bw->order_differ;
    g->order_elems = bw->order_elems;
    g->order_max_ulp = bw->order_max_ulp;
    const fd_grad_result *kr = &jr->be[0].g;
    g->replay_checked = kr->replay_checked;
    for (int t = 0; t < FD_NGRAD; t++) {
        g->replay_identical[t] = kr->replay_identical[t];
        g->replay_elems[t] = kr->replay_elems[t];
    }
    /* hypotheses, when some gradient is far above the rounding budget */
    if (g->gross) {
        for (int b = 0; bwd_bugs[b] && g->nhypo < FD_EX_MAX_HYPO; b++) {
            if (fd_explain_bwd_noop(p, bwd_bugs[b])) continue;
            if (replay_bug(cf, p, bwd_bugs[b], q, k, v, o, lse, dout, fg[0], fg[1], fg[2], err, errlen)) goto out;
            fd_ex_hypo *h = &g->hypo[g->nhypo++];
            snprintf(h->name, sizeof h->name, "%s", bwd_bugs[b]);
            snprintf(h->what, sizeof h->what, "%s", bug_what(bwd_bugs[b]));
            for (int t = 0; t < FD_NGRAD; t++) {
                fd_bwd_gather(jr, t, fg[t], NULL, tmp);
                const double r = fd_max_abs_diff(kout[t], tmp, n[t]);
                h->residual_max_abs = fmax(h->residual_max_abs, r);
                const double ratio = g->hypo_limit[t] > 0 ? r / g->hypo_limit[t] : (r > 0 ? (double)INFINITY : 0.0);
                h->residual_ratio = fmax(h->residual_ratio, ratio);
            }
            h->explains = h->residual_ratio <= 1.0;
            if (g->best < 0 || h->residual_ratio < g->hypo[g->best].residual_ratio) g->best = g->nhypo - 1;
        }
    }
    /* the summary */
    int worst = 0;
    double wr = 0.0;
    for (int t = 0; t < FD_NGRAD; t++) {
        const double r = g->budget[t] > 0 ? g->k_err[t] / g->budget[t] : 0.0;
        if (r > wr) { wr = r; worst = t; }
    }
    int over = -1; /* a gradient above FlashAttention's rule, though within the flash budget */
    for (int t = 0; t < FD_NGRAD && !g->gross; t++)
        if (g->k_err[t] > cf->policy.grad_fa_ratio[t] * g->std_err[t] + cf->policy.atol &&
            (over < 0 || g->k_err[t] / fmax(g->std_err[t], 1e-300) > g->k_err[over] / fmax(g->std_err[over], 1e-300)))
            over = t;
    if (over >= 0) {
        int top = -1;
        for (int i = 0; i < g->nparts; i++)
            if (top < 0 || g->part[i].share[over] > g->part[top].share[over]) top = i;
        snprintf(g->summary, sizeof g->summary,
                 "gradients: rounding, but more than FlashAttention's rule allows: %s max abs error %.3g is %.2fx "
                 "standard attention's %.3g (rule: %g x), yet within the flash algorithm's own rounding budget "
                 "(replay %.3g); its largest part: %s (%.0f%% of the replay's error)",
                 fd_grad_names[over], g->k_err[over], g->k_err[over] / g->std_err[over], g->std_err[over],
                 cf->policy.grad_fa_ratio[over], g->r_err[over], top >= 0 ? g->part[top].name : "-",
                 top >= 0 ? 100.0 * g->part[top].share[over] : 0.0);
    } else if (!g->gross) {
        snprintf(g->summary, sizeof g->summary,
                 "gradients: rounding and accumulation order only: max abs errors dq %.3g, dk %.3g, dv %.3g within "
                 "the limits %.3g, %.3g, %.3g (replay %.3g, %.3g, %.3g; standard %.3g, %.3g, %.3g)%s",
                 g->k_err[0], g->k_err[1], g->k_err[2], g->limit[0], g->limit[1], g->limit[2], g->r_err[0],
                 g->r_err[1], g->r_err[2], g->std_err[0], g->std_err[1], g->std_err[2],
                 g->order_checked ? "" : "");
    } else if (g->best >= 0 && g->hypo[g->best].explains) {
        snprintf(g->summary, sizeof g->summary,
                 "gradients: a bug, not rounding: %s max abs error %.3g is %.0fx its rounding budget; hypothesis "
                 "%s (%s) explains it", fd_grad_names[worst], g->k_err[worst], wr, g->hypo[g->best].name,
                 g->hypo[g->best].what);
    } else {
        snprintf(g->summary, sizeof g->summary,
                 "gradients: a bug, not rounding: %s max abs error %.3g is %.0fx its rounding budget; no named "
                 "hypothesis explains it (closest: %s, %.3g x its limit left)", fd_grad_names[worst], g->k_err[worst],
                 wr, g->best >= 0 ? g->hypo[g->best].name : "none", g->best >= 0 ? g->hypo[g->best].residual_ratio : 0.0);
    }
    rc = 0;
out:
    free(o); free(lse); free(tmp); free(oex); free(qd); free(kd); free(vd);
    for (int t = 0; t < FD_NGRAD; t++) {
        free(fg[t]); free(dg[t]); free(kout[t]); free(base[t]); free(fin[t]); free(e[t]);
    }
    return rc;
}

json_t *fd_explain_grad_json(const fd_ex_grad *g)
{
    json_t *j = json_object();
    json_object_set_new(j, "summary", json_string(g->summary));
    json_object_set_new(j, "gross", json_boolean(g->gross));
    for (int t = 0; t < FD_NGRAD; t++) {
        json_t *x = json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "checked", (json_int_t)g->nchecked[t],
                              "kernel_err_max_abs", fd_json_num(g->k_err[t]), "replay_err_max_abs",
                              fd_json_num(g->r_err[t]), "standard_err_max_abs", fd_json_num(g->std_err[t]),
                              "rounding_budget", fd_json_num(g->budget[t]), "limit", fd_json_num(g->limit[t]),
                              "hypothesis_limit", fd_json_num(g->hypo_limit[t]), "all_exact_err_max_abs",
                              fd_json_num(g->allexact[t]));
        if (g->replay_checked)
            json_object_set_new(x, "replay_identical", json_pack("{s:I, s:I}", "identical", (json_int_t)g->replay_identical[t],
                                                                 "elements", (json_int_t)g->replay_elems[t]));
        json_object_set_new(j, fd_grad_names[t], x);
    }
    json_t *parts = json_array();
    for (int i = 0; i < g->nparts; i++) {
        json_t *pt = json_pack("{s:s}", "stage", g->part[i].name);
        for (int t = 0; t < FD_NGRAD; t++)
            json_object_set_new(pt, fd_grad_names[t], json_pack("{s:o, s:o}", "max_abs", fd_json_num(g->part[i].max_abs[t]),
                                                                "share", fd_json_num(g->part[i].share[t])));
        json_array_append_new(parts, pt);
    }
    json_object_set_new(j, "stages", parts);
    if (g->order_checked)
        json_object_set_new(j, "dq_order", json_pack("{s:I, s:I, s:o}", "elements", (json_int_t)g->order_elems,
                                                     "differing", (json_int_t)g->order_differ, "max_ulp",
                                                     fd_json_num(g->order_max_ulp)));
    json_t *hy = json_array();
    for (int i = 0; i < g->nhypo; i++)
        json_array_append_new(hy, json_pack("{s:s, s:s, s:o, s:o, s:b, s:b}", "name", g->hypo[i].name, "what",
                                            g->hypo[i].what, "residual_max_abs", fd_json_num(g->hypo[i].residual_max_abs),
                                            "residual_over_limit", fd_json_num(g->hypo[i].residual_ratio), "explains",
                                            g->hypo[i].explains, "best", i == g->best));
    json_object_set_new(j, "hypotheses", hy);
    return j;
}
