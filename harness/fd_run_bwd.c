/* fd_run_bwd.c: the backward stage of the judging pipeline; see fd_run_bwd.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cpu_bwd.h"
#include "fd_dtype.h"
#include "fd_inputs.h"
#include "fd_obtain.h"
#include "fd_run_bwd.h"

const char *const fd_grad_names[FD_NGRAD] = {"dq", "dk", "dv"};

/* The problem as seen by a key-row gradient: rows are keys, heads are kv heads, so that
 * fd_q_index of the view is fd_kv_index of the case and fd_metrics_compute applies. */
static fd_problem key_view(const fd_problem *p)
{
    fd_problem v = *p;
    v.seqlen_q = p->seqlen_k;
    v.heads = p->kv_heads;
    return v;
}

/* Query rows that see key j (the mask and the window). */
static int rows_seeing(const fd_problem *p, int j)
{
    int n = 0;
    for (int i = 0; i < p->seqlen_q; i++) n += fd_problem_visible(p, i, j);
    return n;
}

typedef struct {
    fd_problem view;
    const int *rows;
    int nrows;
    int *nvis;
    const double *ref;
    int skip_empty;
} grad_sel;

/* What gradient g of a case is checked on: its view, rows, visible counts, reference. */
static int grad_select(const fd_case_result *res, int g, int role_standard, grad_sel *s)
{
    const fd_problem *p = &res->c.prob;
    s->view = g == 0 ? *p : key_view(p);
    s->rows = g == 0 ? res->rows : res->bwd.krows;
    s->nrows = g == 0 ? res->nrows : res->bwd.nkrows;
    s->ref = g == 0 ? res->bwd.ref_dq : g == 1 ? res->bwd.ref_dk : res->bwd.ref_dv;
    s->skip_empty = g == 0 && role_standard; /* eager attention may give NaN on rows with no key */
    s->nvis = malloc(sizeof(int) * (size_t)(s->nrows > 0 ? s->nrows : 1));
    if (!s->nvis) return -1;
    for (int r = 0; r < s->nrows; r++)
        s->nvis[r] = g == 0 ? fd_problem_visible_count(p, s->rows[r])
                            : rows_seeing(p, s->rows[r]);
    return 0;
}

int fd_bwd_sample_key_rows(const fd_problem *p, int rows_per_head, int *krows)
{
    const fd_problem kv = key_view(p);
    return fd_sample_rows(&kv, rows_per_head, krows);
}

int fd_bwd_prepare(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                   const float *v, const float *given_dout, int jobs, fd_case_result *res,
                   float **dout_owned, const float **dout, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    fd_bwd_result *bw = &res->bwd;
    const int D = p->head_dim;
    bw->active = 1;
    bw->dq_mode = cf->bwd.dq_mode;
    *dout_owned = NULL;
    if (given_dout) {
        *dout = given_dout;
    } else {
        if (fd_inputs_make_dout(c, dout_owned, err, errlen)) return -1;
        *dout = *dout_owned;
    }
    /* key rows: sampled as query rows are, on the case seen from the keys */
    const int cap = (cf->rows_per_head <= 0 || p->seqlen_k <= cf->rows_per_head) ? p->seqlen_k
                                                                               : cf->rows_per_head + 16;
    bw->krows = malloc(sizeof(int) * (size_t)(cap + 16));
    const size_t nq = (size_t)p->batch * (size_t)p->heads * (size_t)res->nrows * (size_t)D;
    const size_t nk = (size_t)p->batch * (size_t)p->kv_heads * (size_t)(cap + 16) * (size_t)D;
    bw->ref_dq = malloc(sizeof(double) * (nq ? nq : 1));
    bw->ref_dk = malloc(sizeof(double) * nk);
    bw->ref_dv = malloc(sizeof(double) * nk);
    if (!bw->krows || !bw->ref_dq || !bw->ref_dk || !bw->ref_dv) {
        snprintf(err, errlen, "out of memory for the backward reference of case %s", c->id);
        return -1;
    }
    bw->nkrows = fd_bwd_sample_key_rows(p, cf->rows_per_head, bw->krows);
    const int nkr = bw->nkrows, nqr = res->nrows;

    int undecided = 0, precmax = 0;
    const double t0 = fd_now_s();
    const int rc = fd_reference_bwd_tiered(p, q, k, v, *dout, res->rows, nqr, bw->krows, nkr, jobs, cf->reference,
                                           bw->ref_dq, bw->ref_dk, bw->ref_dv, &undecided, &precmax, &bw->ref, err,
                                           errlen);
    bw->ref_seconds = fd_now_s() - t0;
    bw->ref_undecided = undecided;
    bw->ref_prec_max = precmax;
    return rc;
}

/* Checked elements of gradient g where a and b differ, and the largest difference in
 * ulps of the dtype at the reference value. */
static void spread(const fd_case_result *res, int g, const float *a, const float *b, long *elems,
                   long *differ, double *max_ulp)
{
    grad_sel s;
    const fd_dtype dt = res->c.prob.dtype;
    if (grad_select(res, g, 0, &s)) return;
    const int D = s.view.head_dim;
    size_t x = 0;
    for (int bb = 0; bb < s.view.batch; bb++)
        for (int h = 0; h < s.view.heads; h++)
            for (int r = 0; r < s.nrows; r++)
                for (int d = 0; d < D; d++, x++) {
                    const size_t i = fd_q_index(&s.view, bb, s.rows[r], h, d);
                    (*elems)++;
                    if (fd_f32_bits(a[i]) == fd_f32_bits(b[i])) continue;
                    (*differ)++;
                    const double u = fabs((double)a[i] - (double)b[i]) / fd_ulp_in_dtype(s.ref[x], dt);
                    if (u > *max_ulp || isnan(u)) *max_ulp = isnan(u) ? (double)INFINITY : u;
                }
    free(s.nvis);
}

static int metrics_of(const fd_case_result *res, const fd_backend_result *br, const float *const *grad,
                      fd_metrics *m, uint64_t *hash)
{
    for (int g = 0; g < FD_NGRAD; g++) {
        grad_sel s;
        if (grad_select(res, g, br->be->role == FD_ROLE_STANDARD, &s)) return -1;
        int rc = 0;
        if (m) rc = fd_metrics_compute(&s.view, s.rows, s.nrows, s.nvis, s.ref, NULL, grad[g], NULL, s.skip_empty, &m[g]);
        if (hash) hash[g] = fd_output_hash(&s.view, s.rows, s.nrows, s.nvis, s.skip_empty, grad[g], NULL);
        free(s.nvis);
        if (rc) return -1;
    }
    return 0;
}

static int run_kernel_bwd(const fd_casefile *cf, const fd_case *c, const fd_backend *be, const float *q,
                          const float *k, const float *v, const float *o, const float *lse,
                          const float *dout, float *const *grad, double *ms, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    for (size_t x = 0; x < fd_q_numel(p); x++) grad[0][x] = NAN;
    for (size_t x = 0; x < fd_kv_numel(p); x++) grad[1][x] = grad[2][x] = NAN;
    *ms = 0.0;
    return be->run_bwd(cf, c, q, k, v, o, lse, dout, grad[0], grad[1], grad[2], ms, err, errlen);
}

/* The dQ order model: the replay's dQ with its partials in other orders (descending,
 * shuffled with seed 1), against the ascending dQ asc. */
#define FD_NORDER 2
static void order_configs(const fd_casefile *cf, fd_bwd_cfg *oc)
{
    static const struct { fd_dq_order o; uint64_t seed; } orders[FD_NORDER] = {{FD_DQ_ORDER_DESC, 0},
                                                                            {FD_DQ_ORDER_SHUFFLE, 1}};
    for (int t = 0; t < FD_NORDER; t++) {
        oc[t] = cf->bwd;
        oc[t].dq_mode = FD_DQ_ATOMIC;
        oc[t].dq_order = orders[t].o;
        oc[t].order_seed = orders[t].seed;
    }
}

static void order_model(const float *asc, float *const *odq, fd_case_result *res)
{
    for (int t = 0; t < FD_NORDER; t++) {
        long e = 0;
        spread(res, 0, asc, odq[t], &e, &res->bwd.order_differ, &res->bwd.order_max_ulp);
        res->bwd.order_elems += e;
    }
    res->bwd.order_checked = 1;
}

int fd_bwd_backend(const fd_casefile *cf, const fd_case *c, fd_backend_result *br, const float *q,
                   const float *k, const float *v, const float *o, const float *lse,
                   const float *dout, const float *gdq, const float *gdk, const float *gdv,
                   int repeat, fd_case_result *res, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    fd_grad_result *gr = &br->g;
    for (int g = 0; g < FD_NGRAD; g++) gr->fa_ratio[g] = -1.0;
    /* kernels and computed baselines run their backward; given outputs bring gradients */
    const int given = br->origin == FD_ORIGIN_GIVEN;
    if (given && !gdq) {
        snprintf(gr->note, sizeof gr->note, "no gradients given");
        return 0;
    }
    if (!given && !br->be->run_bwd) {
        snprintf(gr->note, sizeof gr->note, "%s has no backward pass", br->be->name);
        return 0;
    }
    if (!given && br->be->role == FD_ROLE_FLASH && !lse) {
        snprintf(gr->note, sizeof gr->note, "no LSE from the forward pass");
        return 0;
    }
    const size_t nq = fd_q_numel(p), nk = fd_kv_numel(p);
    float *buf[2][FD_NGRAD] = {{NULL}};
    int rc = -1;
    for (int r = 0; r < 2; r++) {
        buf[r][0] = malloc(sizeof(float) * nq);
        buf[r][1] = malloc(sizeof(float) * nk);
        buf[r][2] = malloc(sizeof(float) * nk);
        if (!buf[r][0] || !buf[r][1] || !buf[r][2]) {
            snprintf(err, errlen, "out of memory for the gradients of case %s", c->id);
            goto out;
        }
    }
    const float *grad[FD_NGRAD] = {gdq, gdk, gdv};
    if (!gdq) {
        double ms = 0.0;
        const double t0 = fd_now_s();
        const int rb = run_kernel_bwd(cf, c, br->be, q, k, v, o, lse, dout, buf[0], &ms, gr->note, sizeof gr->note);
        if (rb > 0) { /* the backward does not apply here: not measured, said in the note */
            rc = 0;
            goto out;
        }
        if (rb) {
            rc = 0; /* recorded: the backward failed */
            br->ok = 0;
            snprintf(br->error, sizeof br->error, "backward: %s", gr->note);
            goto out;
        }
        gr->ms = ms > 0.0 ? ms : 1e3 * (fd_now_s() - t0);
        if (ms > 0.0 && !strcmp(br->be->family, "cuda")) {
            double pairs = 0.0;
            for (int i = 0; i < p->seqlen_q; i++) pairs += (double)fd_problem_visible_count(p, i);
            gr->tflops = 2.5 * 4.0 * (double)p->head_dim * pairs * (double)p->batch * (double)p->heads / (ms * 1e-3) / 1e12;
        }
        for (int g = 0; g < FD_NGRAD; g++) grad[g] = buf[0][g];
    }
    gr->measured = 1;
    if (metrics_of(res, br, grad, gr->m, NULL)) {
        snprintf(err, errlen, "out of memory computing gradient metrics for case %s", c->id);
        goto out;
    }
    /* --repeat: the same backward again on the same forward outputs */
    if (!gdq && repeat > 1) {
        uint64_t h0[FD_NGRAD], hh[FD_NGRAD];
        if (metrics_of(res, br, grad, NULL, h0)) goto oom;
        uint64_t seen[FD_NGRAD][8];
        for (int g = 0; g < FD_NGRAD; g++) {
            seen[g][0] = h0[g];
            gr->repeat_distinct[g] = 1;
        }
        gr->repeat_runs = repeat;
        for (int rr = 1; rr < repeat && !fd_interrupted; rr++) {
            double ms;
            char e2[160];
            if (run_kernel_bwd(cf, c, br->be, q, k, v, o, lse, dout, buf[1], &ms, e2, sizeof e2)) {
                gr->repeat_failed++;
                continue;
            }
            if (metrics_of(res, br, (const float *const *)buf[1], NULL, hh)) goto oom;
            for (int g = 0; g < FD_NGRAD; g++) {
                int known = 0;
                for (int u = 0; u < gr->repeat_distinct[g] && u < 8; u++) known |= seen[g][u] == hh[g];
                if (!known) {
                    if (gr->repeat_distinct[g] < 8) seen[g][gr->repeat_distinct[g]] = hh[g];
                    gr->repeat_distinct[g]++;
                }
                long e = 0;
                spread(res, g, grad[g], buf[1][g], &e, &gr->spread_elems[g], &gr->spread_ulp[g]);
            }
        }
        if (fd_interrupted) {
            snprintf(err, errlen, "interrupted");
            goto out;
        }
    }
    /* A flash kernel: the replay on its own forward outputs (the GPU kernel's bits in
     * deterministic mode), and the dQ order model of the replay (more than one key tile,
     * first flash kernel of the case). cpu-flash adding its partials in ascending order
     * is that replay already: it is not run twice. One pass of the replay gives both (its
     * partials added in every order); the order model alone needs no dK/dV. */
    const int is_cuda = !strcmp(br->be->name, "cuda-flash");
    if (!gdq && br->be->role == FD_ROLE_FLASH && lse && (is_cuda || !strcmp(br->be->name, "cpu-flash"))) {
        int br_, bc_ = cf->bwd.bc;
        if (!bc_) fd_bwd_tile_default(p->head_dim, &br_, &bc_);
        const int need_order = !res->bwd.order_checked && p->seqlen_k > bc_;
        const int kernel_is_replay =
            !is_cuda && (cf->bwd.dq_mode == FD_DQ_DETERMINISTIC || cf->bwd.dq_order == FD_DQ_ORDER_ASC);
        if (is_cuda || need_order) {
            fd_bwd_cfg bc = cf->bwd, oc[FD_NORDER];
            bc.dq_mode = FD_DQ_DETERMINISTIC;
            order_configs(cf, oc);
            float *odq[FD_NORDER] = {NULL};
            const int rdq = is_cuda || !kernel_is_replay; /* the replay's dQ is needed */
            int orc = 0;
            for (int t = 0; t < FD_NORDER && need_order; t++)
                if (!(odq[t] = malloc(sizeof(float) * nq))) orc = -1;
            if (orc)
                snprintf(err, errlen, "out of memory for the dQ order model");
            else
                orc = fd_cpu_flash_backward_orders(p, &cf->flash, &bc, q, k, v, o, lse, dout, rdq ? buf[1][0] : NULL,
                                                   is_cuda ? buf[1][1] : NULL, is_cuda ? buf[1][2] : NULL,
                                                   need_order ? FD_NORDER : 0, oc, odq, err, errlen);
            if (!orc && need_order) order_model(kernel_is_replay ? grad[0] : buf[1][0], odq, res);
            for (int t = 0; t < FD_NORDER; t++) free(odq[t]);
            if (orc) goto out;
        }
        if (is_cuda) {
            gr->replay_checked = 1;
            for (int g = 0; g < FD_NGRAD; g++) {
                long d = 0;
                double u = 0.0;
                spread(res, g, grad[g], buf[1][g], &gr->replay_elems[g], &d, &u);
                gr->replay_identical[g] = gr->replay_elems[g] - d;
            }
        }
    }
    rc = 0;
    goto out;
oom:
    snprintf(err, errlen, "out of memory hashing gradients of case %s", c->id);
out:
    for (int r = 0; r < 2; r++)
        for (int g = 0; g < FD_NGRAD; g++) free(buf[r][g]);
    return rc;
}

void fd_bwd_fa_rule(const fd_policy *po, fd_case_result *res)
{
    for (int t = 0; t < res->nbe; t++) {
        fd_backend_result *f = &res->be[t];
        for (int g = 0; g < FD_NGRAD; g++) f->g.fa_ratio[g] = -1.0;
        f->g.baseline = -1;
        const int sup = fd_supplied_standard(f);
        if (!f->ok || !f->g.measured || (f->be->role != FD_ROLE_FLASH && !sup)) continue;
        /* the output's baseline when it has gradients, else standard gradients computed here
         * (always for a supplied standard output: the standard rule) */
        int u = !sup && f->baseline >= 0 && res->be[f->baseline].g.measured ? f->baseline : -1;
        for (int w = 0; w < res->nbe && u < 0; w++)
            if (res->be[w].ok && res->be[w].be->role == FD_ROLE_STANDARD && res->be[w].origin == FD_ORIGIN_COMPUTED &&
                res->be[w].g.measured)
                u = w;
        if (u < 0) continue;
        f->g.baseline = u;
        const fd_backend_result *s = &res->be[u];
        for (int g = 0; g < FD_NGRAD; g++) {
            const double se = s->g.m[g].max_abs, fe = f->g.m[g].max_abs;
            f->g.fa_limit[g] = (sup ? po->standard_ratio : po->grad_fa_ratio[g]) * se + po->atol;
            f->g.fa_ratio[g] = se > 0 ? fe / se : (fe > 0 ? (double)INFINITY : 1.0);
        }
    }
}

int fd_bwd_judge(const fd_policy *po, fd_case_result *r, const fd_backend_result *b, fd_verdict *v)
{
    const fd_grad_result *gr = &b->g;
    int rules = 0;
    if (!r->bwd.active) return 0;
    if (!gr->measured) {
        if (b->be->role == FD_ROLE_FLASH)
            fd_add_reason(r, "%s: gradients not measured (%s)", b->be->name, gr->note);
        return 0;
    }
    for (int g = 0; g < FD_NGRAD; g++) {
        const fd_metrics *m = &gr->m[g];
        if (b->be->role == FD_ROLE_FLASH && (m->nan_count || m->inf_count)) {
            fd_worsen(v, FD_FAIL);
            fd_add_reason(r, "%s: %ld NaN and %ld Inf in %s", b->be->name, m->nan_count, m->inf_count, fd_grad_names[g]);
        }
        if (gr->repeat_runs > 1 && gr->repeat_distinct[g] > 1) {
            /* dK and dV have no atomics in any kernel here, and a deterministic dQ has none */
            const int must = po->require_deterministic || g > 0 || r->bwd.dq_mode == FD_DQ_DETERMINISTIC ||
                             b->be->role == FD_ROLE_STANDARD;
            if (must) {
                fd_worsen(v, FD_FAIL);
                fd_add_reason(r, "%s: %s not bitwise identical over %d runs (%d distinct; %ld elements differ, up to %.3g ulps)%s",
                              b->be->name, fd_grad_names[g], gr->repeat_runs, gr->repeat_distinct[g],
                              gr->spread_elems[g], gr->spread_ulp[g],
                              po->require_deterministic ? "; the policy requires determinism" : "");
            } else if (r->bwd.order_checked && gr->spread_ulp[g] > 2.0 * fmax(r->bwd.order_max_ulp, 1.0)) {
                fd_worsen(v, FD_MARGINAL);
                fd_add_reason(r, "%s: %s run-to-run spread %.3g ulps exceeds what accumulation order explains (%.3g)",
                              b->be->name, fd_grad_names[g], gr->spread_ulp[g], r->bwd.order_max_ulp);
            }
        }
        if (gr->replay_checked && r->bwd.dq_mode == FD_DQ_DETERMINISTIC &&
            gr->replay_identical[g] != gr->replay_elems[g]) {
            /* reported, not judged: the forward's replay check decides bit-identity policy */
            fd_add_reason(r, "%s: %s matches the replay in %ld of %ld elements", b->be->name, fd_grad_names[g],
                          gr->replay_identical[g], gr->replay_elems[g]);
        }
        const int sup = fd_supplied_standard(b);
        if ((b->be->role != FD_ROLE_FLASH && !sup) || gr->fa_ratio[g] < 0) continue;
        rules++;
        const fd_backend_result *s = &r->be[gr->baseline];
        if (m->max_abs > gr->fa_limit[g]) {
            fd_worsen(v, FD_FAIL);
            fd_add_reason(r, "%s: %s max_abs %.3g > %g x %s (%s, %.3g) + %g = %.3g", b->be->name, fd_grad_names[g],
                          m->max_abs, sup ? po->standard_ratio : po->grad_fa_ratio[g],
                          sup ? "computed standard" : "standard", s->be->name, s->g.m[g].max_abs, po->atol,
                          gr->fa_limit[g]);
        } else if (!sup && m->max_abs > po->marginal * gr->fa_limit[g]) {
            fd_worsen(v, FD_MARGINAL);
            fd_add_reason(r, "%s: %s max_abs %.3g above %g of the limit %.3g", b->be->name, fd_grad_names[g],
                          m->max_abs, po->marginal, gr->fa_limit[g]);
        }
    }
    if (b->be->role == FD_ROLE_FLASH && !rules) {
        fd_worsen(v, FD_UNJUDGED);
        fd_add_reason(r, "%s: gradients judged by no rule (no standard gradients to compare with)", b->be->name);
    }
    return rules;
}

size_t fd_bwd_count(const fd_case_result *res, int g)
{
    const fd_problem *p = &res->c.prob;
    return (size_t)p->batch * (size_t)(g == 0 ? p->heads : p->kv_heads) *
           (size_t)(g == 0 ? res->nrows : res->bwd.nkrows) * (size_t)p->head_dim;
}

size_t fd_bwd_gather(const fd_case_result *res, int g, const float *f, const double *d, double *out)
{
    const fd_problem *p = &res->c.prob;
    const fd_problem view = g == 0 ? *p : key_view(p);
    const int *rows = g == 0 ? res->rows : res->bwd.krows;
    const int nrows = g == 0 ? res->nrows : res->bwd.nkrows;
    size_t x = 0;
    for (int b = 0; b < view.batch; b++)
        for (int h = 0; h < view.heads; h++)
            for (int r = 0; r < nrows; r++)
                for (int e = 0; e < view.head_dim; e++, x++) {
                    const size_t i = fd_q_index(&view, b, rows[r], h, e);
                    out[x] = f ? (double)f[i] : d[i];
                }
    return x;
}

void fd_bwd_free(fd_bwd_result *b)
{
    free(b->krows);
    free(b->ref_dq);
    free(b->ref_dk);
    free(b->ref_dv);
    b->krows = NULL;
    b->ref_dq = b->ref_dk = b->ref_dv = NULL;
}
