/* test_cpu_bwd.c: the CPU backward replay (fd_cpu_flash_backward, fd_cpu_flash_bwd_stages)
 * against a straightforward binary64 gradient computed here from the formulas of
 * fd_bwd.h, and the replay's own invariants (dQ orders, stages, bugs, arguments). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fd_case.h"
#include "fd_cpu_bwd.h"
#include "fd_dtype.h"
#include "fd_inputs.h"
#include "fd_philox.h"
#include "fd_test_problem.h"

/* One problem with its inputs, the kernel's forward (o, lse) and the binary64 forward. */
typedef struct {
    fd_case c;
    float *q, *k, *v, *dout, *o, *lse;
    double *o_x, *lse_x; /* exact forward */
} bwd_in;

static void ref_forward(const fd_problem *p, const float *q, const float *k, const float *v, double *o,
                        double *lse);

static bwd_in mk_in(fd_case c)
{
    bwd_in x;
    memset(&x, 0, sizeof x);
    x.c = c;
    const fd_problem *p = &x.c.prob;
    char err[256];
    cr_assert(fd_inputs_make(&x.c, &x.q, &x.k, &x.v, err, sizeof err) == 0, "%s", err);
    /* dO: the Q tensor of the same case with another seed (same shape, dtype values) */
    fd_case cd = x.c;
    cd.input_seed = x.c.input_seed ^ 0x5eedu;
    float *dk_, *dv_;
    cr_assert(fd_inputs_make(&cd, &x.dout, &dk_, &dv_, err, sizeof err) == 0, "%s", err);
    free(dk_); free(dv_);
    x.o = malloc(sizeof(float) * fd_q_numel(p));
    x.lse = malloc(sizeof(float) * fd_lse_numel(p));
    x.o_x = malloc(sizeof(double) * fd_q_numel(p));
    x.lse_x = malloc(sizeof(double) * fd_lse_numel(p));
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    if (p->dtype != FD_DT_FP32) cfg.qk_order = cfg.pv_order = FD_ACC_TC16;
    cr_assert(fd_cpu_flash_forward(p, &cfg, x.q, x.k, x.v, NULL, 0, x.o, x.lse, err, sizeof err) == 0,
              "%s", err);
    ref_forward(p, x.q, x.k, x.v, x.o_x, x.lse_x);
    return x;
}

static void free_in(bwd_in *x)
{
    free(x->q); free(x->k); free(x->v); free(x->dout); free(x->o); free(x->lse);
    free(x->o_x); free(x->lse_x);
}

static double dotd(const float *a, const float *b, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

static int keep_of(const fd_problem *p, int b, int h, int i, int j)
{
    return p->dropout_p <= 0.0 ||
           fd_fa2_keep(p->seed, p->offset, fd_fa2_threshold(p->dropout_p), p->heads, b, h, i, j);
}

/* Binary64 forward: O = (P o Z r) V with P the exact softmax, LSE (+Inf without keys). */
static void ref_forward(const fd_problem *p, const float *q, const float *k, const float *v, double *o,
                        double *lse)
{
    const int D = p->head_dim, sq = p->seqlen_q, sk = p->seqlen_k;
    const double r = 1.0 / (1.0 - p->dropout_p), sc = (double)p->softmax_scale;
    double *s = malloc(sizeof(double) * (size_t)sk);
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int i = 0; i < sq; i++) {
                const int hk = fd_kv_head(p, h), nv = fd_mask_visible_count(p->mask, i, sq, sk);
                double *oi = o + fd_q_index(p, b, i, h, 0);
                for (int d = 0; d < D; d++) oi[d] = 0.0;
                if (nv == 0) {
                    lse[fd_lse_index(p, b, h, i)] = INFINITY;
                    continue;
                }
                double m = -INFINITY, l = 0.0;
                for (int j = 0; j < nv; j++) {
                    s[j] = sc * dotd(q + fd_q_index(p, b, i, h, 0), k + fd_kv_index(p, b, j, hk, 0), D);
                    if (s[j] > m) m = s[j];
                }
                for (int j = 0; j < nv; j++) l += exp(s[j] - m);
                for (int j = 0; j < nv; j++) {
                    const double w = exp(s[j] - m) / l * (keep_of(p, b, h, i, j) ? r : 0.0);
                    const float *vj = v + fd_kv_index(p, b, j, hk, 0);
                    for (int d = 0; d < D; d++) oi[d] += w * (double)vj[d];
                }
                lse[fd_lse_index(p, b, h, i)] = m + log(l);
            }
    free(s);
}

/* Binary64 backward from the formulas of fd_bwd.h: P_ij = exp(scale S_ij - lse_i) with
 * the lse given, D_i = dO_i . o_i with the o given, dP = (dO V^T) o Z r,
 * dS = P o (dP - D), dQ = scale dS K, dK = scale dS^T Q, dV = (P o Z r)^T dO, GQA sums.
 * b* (optional): componentwise bounds of the terms (sums of their absolute values, D's
 * own terms and the terms of O included), the scale of the error of a kernel that
 * perturbs each term by a few roundings; tiny (the dtype's smallest normal, or 0) is
 * added to every P and dS term and to every output, since a rounding to the dtype's
 * subnormals errs by u * tiny absolutely, whatever the value. */
static void ref_backward(const fd_problem *p, const float *q, const float *k, const float *v,
                         const float *dout, const double *o, const double *lse, double *dq,
                         double *dk, double *dv, double *bq, double *bk, double *bv, double tiny)
{
    const int D = p->head_dim, sq = p->seqlen_q, sk = p->seqlen_k;
    const double r = 1.0 / (1.0 - p->dropout_p), sc = (double)p->softmax_scale;
    memset(dq, 0, sizeof(double) * fd_q_numel(p));
    memset(dk, 0, sizeof(double) * fd_kv_numel(p));
    memset(dv, 0, sizeof(double) * fd_kv_numel(p));
    if (bq) {
        memset(bq, 0, sizeof(double) * fd_q_numel(p));
        memset(bk, 0, sizeof(double) * fd_kv_numel(p));
        memset(bv, 0, sizeof(double) * fd_kv_numel(p));
    }
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int i = 0; i < sq; i++) {
                const int hk = fd_kv_head(p, h), nv = fd_mask_visible_count(p->mask, i, sq, sk);
                const double li = lse[fd_lse_index(p, b, h, i)];
                if (nv == 0 || !isfinite(li)) continue;
                const size_t qi = fd_q_index(p, b, i, h, 0);
                double Di = 0.0, Ei = 0.0;
                for (int d = 0; d < D; d++) Di += (double)dout[qi + (size_t)d] * o[qi + (size_t)d];
                if (bq) { /* |dO| (|O| + sum_j P Z r |v|): the terms of D and of O */
                    for (int j = 0; j < nv; j++) {
                        const float *vj = v + fd_kv_index(p, b, j, hk, 0);
                        const double w = exp(sc * dotd(q + qi, k + fd_kv_index(p, b, j, hk, 0), D) - li) *
                                         (keep_of(p, b, h, i, j) ? r : 0.0);
                        for (int d = 0; d < D; d++) Ei += fabs((double)dout[qi + (size_t)d]) * w * fabs((double)vj[d]);
                    }
                    for (int d = 0; d < D; d++) Ei += fabs((double)dout[qi + (size_t)d] * o[qi + (size_t)d]);
                }
                for (int j = 0; j < nv; j++) {
                    const size_t kj = fd_kv_index(p, b, j, hk, 0);
                    const double P = exp(sc * dotd(q + qi, k + kj, D) - li);
                    const double z = keep_of(p, b, h, i, j) ? r : 0.0;
                    const double dP = z * dotd(dout + qi, v + kj, D);
                    const double dS = P * (dP - Di);
                    const double A = P * (fabs(dP) + fabs(Di) + Ei) + tiny;
                    for (int d = 0; d < D; d++) {
                        dq[qi + (size_t)d] += sc * dS * (double)k[kj + (size_t)d];
                        dk[kj + (size_t)d] += sc * dS * (double)q[qi + (size_t)d];
                        dv[kj + (size_t)d] += P * z * (double)dout[qi + (size_t)d];
                        if (bq) {
                            bq[qi + (size_t)d] += sc * A * fabs((double)k[kj + (size_t)d]);
                            bk[kj + (size_t)d] += sc * A * fabs((double)q[qi + (size_t)d]);
                            bv[kj + (size_t)d] += (P * z + tiny) * fabs((double)dout[qi + (size_t)d]);
                        }
                    }
                }
            }
    if (bq) {
        for (size_t t = 0; t < fd_q_numel(p); t++) bq[t] += tiny;
        for (size_t t = 0; t < fd_kv_numel(p); t++) {
            bk[t] += tiny;
            bv[t] += tiny;
        }
    }
}

static void default_cfgs(fd_flash_cfg *f, fd_bwd_cfg *c)
{
    fd_flash_cfg_default(f);
    fd_bwd_cfg_default(c);
}

typedef struct { float *dq, *dk, *dv; } grads;

static grads run_bwd_f(const bwd_in *x, const fd_flash_cfg *fcfg, const fd_bwd_cfg *bc)
{
    const fd_problem *p = &x->c.prob;
    grads g;
    g.dq = malloc(sizeof(float) * fd_q_numel(p));
    g.dk = malloc(sizeof(float) * fd_kv_numel(p));
    g.dv = malloc(sizeof(float) * fd_kv_numel(p));
    fd_flash_cfg fc;
    fd_flash_cfg_default(&fc);
    if (fcfg) fc = *fcfg;
    char err[256];
    cr_assert(fd_cpu_flash_backward(p, &fc, bc, x->q, x->k, x->v, x->o, x->lse, x->dout, g.dq, g.dk,
                                    g.dv, err, sizeof err) == 0, "%s", err);
    return g;
}

static grads run_bwd(const bwd_in *x, const fd_bwd_cfg *bc) { return run_bwd_f(x, NULL, bc); }

static void free_g(grads *g) { free(g->dq); free(g->dk); free(g->dv); }

/* |got - want| <= tol * bound elementwise; returns the worst ratio err / bound. */
static double check_close(const char *what, const char *id, const float *got, const double *want,
                          const double *bound, size_t n, double tol)
{
    double worst = 0.0;
    for (size_t t = 0; t < n; t++) {
        const double e = fabs((double)got[t] - want[t]);
        cr_assert(isfinite((double)got[t]), "%s %s[%zu] not finite", id, what, t);
        cr_assert(e <= tol * bound[t], "%s %s[%zu] = %.9g, binary64 %.9g, error %.3g above %.3g x bound %.3g",
                  id, what, t, (double)got[t], want[t], e, tol, bound[t]);
        if (bound[t] > 0.0 && e / bound[t] > worst) worst = e / bound[t];
    }
    return worst;
}

/* Every term of the gradient is perturbed by roundings to the dtype, each at most
 * u = 2^-11 (fp16) or 2^-8 (bf16) relative (half an ulp): P rounded before dV, dS
 * rounded, D from the rounded O (itself from P rounded and O rounded: u of each term of
 * O), the output rounding (u of the value, at most u of the bound); binary32
 * accumulation and the fp32 LSE add 2^-20 or less; below the dtype's smallest normal the
 * roundings are absolute (see ref_backward). The bound sums the absolute values of all
 * those terms, so the error stays below about 2u times it (measured: up to 1.85u for
 * dV, 0.6u for dQ and dK on these cases, cr_log_info with --verbose); 4u leaves margin,
 * and a missing scale, a wrong mask or a mis-summed GQA head is off by O(1) times the
 * bound. */
static double tol_for(fd_dtype t)
{
    return t == FD_DT_FP16 ? 4 * 0x1p-11 : t == FD_DT_BF16 ? 4 * 0x1p-8 : 0x1p-18;
}

static void check_grad(fd_case c, int br, int bc)
{
    bwd_in x = mk_in(c);
    const fd_problem *p = &x.c.prob;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p);
    double *dq = malloc(sizeof(double) * nq), *dk = malloc(sizeof(double) * nkv), *dv = malloc(sizeof(double) * nkv);
    double *bq = malloc(sizeof(double) * nq), *bk = malloc(sizeof(double) * nkv), *bv = malloc(sizeof(double) * nkv);
    ref_backward(p, x.q, x.k, x.v, x.dout, x.o_x, x.lse_x, dq, dk, dv, bq, bk, bv,
                 ldexp(1.0, fd_dtype_emin(p->dtype)));
    fd_flash_cfg fc;
    fd_bwd_cfg cfg;
    default_cfgs(&fc, &cfg);
    cfg.br = br;
    cfg.bc = bc;
    grads g = run_bwd(&x, &cfg);
    const double tol = tol_for(p->dtype);
    const double wq = check_close("dq", c.id, g.dq, dq, bq, nq, tol);
    const double wk = check_close("dk", c.id, g.dk, dk, bk, nkv, tol);
    const double wv = check_close("dv", c.id, g.dv, dv, bv, nkv, tol);
    cr_log_info("%s: worst error / bound in units of u: dq %.3f dk %.3f dv %.3f (limit 4)", c.id,
                wq / tol * 4, wk / tol * 4, wv / tol * 4);
    /* rows that see no key: dQ exactly 0 */
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int i = 0; i < p->seqlen_q; i++)
                if (fd_mask_visible_count(p->mask, i, p->seqlen_q, p->seqlen_k) == 0)
                    for (int d = 0; d < p->head_dim; d++)
                        cr_assert(fd_f32_bits(g.dq[fd_q_index(p, b, i, h, d)]) == 0u, "%s: empty row %d", c.id, i);
    free_g(&g);
    free(dq); free(dk); free(dv); free(bq); free(bk); free(bv);
    free_in(&x);
}

Test(cpu_bwd, close_to_binary64_masks_and_dtypes)
{
    const fd_dtype dts[] = {FD_DT_FP16, FD_DT_BF16};
    const fd_mask_kind ms[] = {FD_MASK_NONE, FD_MASK_CAUSAL_TL, FD_MASK_CAUSAL_BR};
    for (int a = 0; a < 2; a++)
        for (int m = 0; m < 3; m++) {
            check_grad(tu_mk_case(1, 2, 2, 75, 140, 64, dts[a], ms[m], 0.0, FD_DIST_NORMAL, 3), 0, 0);
            /* s_q > s_k: the first rows see no key under causal_br */
            check_grad(tu_mk_case(1, 2, 1, 150, 70, 32, dts[a], ms[m], 0.0, FD_DIST_NORMAL, 4), 0, 0);
        }
}

Test(cpu_bwd, close_to_binary64_gqa_dropout_head_dims)
{
    check_grad(tu_mk_case(2, 4, 2, 70, 90, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.17, FD_DIST_NORMAL, 5), 0, 0);
    check_grad(tu_mk_case(1, 4, 2, 96, 80, 32, FD_DT_BF16, FD_MASK_NONE, 0.17, FD_DIST_NORMAL, 6), 0, 0);
    check_grad(tu_mk_case(1, 2, 1, 64, 64, 96, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.0, FD_DIST_NORMAL, 7), 0, 0);
    check_grad(tu_mk_case(1, 1, 1, 40, 72, 40, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.1, FD_DIST_NORMAL, 8), 0, 0);
    check_grad(tu_mk_case(1, 2, 1, 48, 70, 256, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 9), 0, 0);
    check_grad(tu_mk_case(1, 2, 2, 50, 50, 256, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.17, FD_DIST_NORMAL, 10), 0, 0);
    check_grad(tu_mk_case(1, 2, 2, 60, 60, 32, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_LARGE_LOGIT, 11), 0, 0);
    /* other tiles: the same bound */
    check_grad(tu_mk_case(1, 2, 1, 70, 90, 64, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.17, FD_DIST_NORMAL, 12), 16, 32);
    check_grad(tu_mk_case(1, 1, 1, 20, 30, 16, FD_DT_FP32, FD_MASK_CAUSAL_BR, 0.0, FD_DIST_NORMAL, 13), 32, 16);
}

Test(cpu_bwd, exp2_mode_is_used)
{
    bwd_in x = mk_in(tu_mk_case(1, 2, 2, 100, 120, 64, FD_DT_FP32, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 15));
    const fd_problem *p = &x.c.prob;
    fd_flash_cfg fc;
    fd_flash_cfg_default(&fc);
    fc.exp2_mode = FD_EXP2_PORTABLE;
    fd_bwd_cfg c;
    fd_bwd_cfg_default(&c);
    grads a = run_bwd(&x, &c), b = run_bwd_f(&x, &fc, &c);
    cr_assert(memcmp(a.dq, b.dq, sizeof(float) * fd_q_numel(p)) != 0,
              "fp32 gradients see the last bit of P: libm and portable exp2 must differ somewhere");
    free_g(&a); free_g(&b); free_in(&x);
}

Test(cpu_bwd, default_tile_follows_head_dim)
{
    int br, bc;
    fd_bwd_tile_default(64, &br, &bc);
    cr_assert(br == 64 && bc == 64);
    fd_bwd_tile_default(65, &br, &bc);
    cr_assert(br == 64 && bc == (FD_BWD_BC128 ? 128 : 64));
    fd_bwd_tile_default(128, &br, &bc);
    cr_assert(br == 64 && bc == (FD_BWD_BC128 ? 128 : 64));
    fd_bwd_tile_default(256, &br, &bc);
    cr_assert(br == 64 && bc == 32);
    /* bc = 32 for d = 256 must give what an explicit (64, 32) gives */
    bwd_in x = mk_in(tu_mk_case(1, 1, 1, 70, 100, 256, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 14));
    fd_bwd_cfg c0, c1;
    fd_bwd_cfg_default(&c0);
    fd_bwd_cfg_default(&c1);
    c1.br = 64; c1.bc = 32;
    grads g0 = run_bwd(&x, &c0), g1 = run_bwd(&x, &c1);
    const fd_problem *p = &x.c.prob;
    cr_assert(memcmp(g0.dq, g1.dq, sizeof(float) * fd_q_numel(p)) == 0);
    cr_assert(memcmp(g0.dk, g1.dk, sizeof(float) * fd_kv_numel(p)) == 0);
    free_g(&g0); free_g(&g1); free_in(&x);
}

/* ulp of the dtype at |x| (binary32 for FD_DT_FP32) */
static double ulp_dt(double x, fd_dtype t)
{
    int e;
    (void)frexp(fabs(x), &e); /* |x| in [2^(e-1), 2^e) */
    int ex = e - 1;
    if (ex < fd_dtype_emin(t)) ex = fd_dtype_emin(t);
    return ldexp(1.0, ex - (fd_dtype_precision(t) - 1));
}

Test(cpu_bwd, dq_orders)
{
    bwd_in x = mk_in(tu_mk_case(1, 2, 1, 130, 200, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.1, FD_DIST_NORMAL, 20));
    const fd_problem *p = &x.c.prob;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p);
    fd_bwd_cfg det, asc, desc, sh, sh2;
    fd_bwd_cfg_default(&det);
    det.dq_mode = FD_DQ_DETERMINISTIC;
    det.dq_order = FD_DQ_ORDER_DESC; /* ignored in deterministic mode */
    fd_bwd_cfg_default(&asc);
    desc = asc;
    desc.dq_order = FD_DQ_ORDER_DESC;
    sh = asc;
    sh.dq_order = FD_DQ_ORDER_SHUFFLE;
    sh.order_seed = 77;
    sh2 = sh;
    sh2.order_seed = 78;
    grads gd = run_bwd(&x, &det), ga = run_bwd(&x, &asc), gs = run_bwd(&x, &desc), gh = run_bwd(&x, &sh);
    grads gh1 = run_bwd(&x, &sh);
    cr_assert(memcmp(gd.dq, ga.dq, sizeof(float) * nq) == 0, "deterministic == atomic ascending");
    cr_assert(memcmp(gd.dk, ga.dk, sizeof(float) * nkv) == 0);
    cr_assert(memcmp(gd.dv, ga.dv, sizeof(float) * nkv) == 0);
    cr_assert(memcmp(gh.dq, gh1.dq, sizeof(float) * nq) == 0, "a seed gives one order");
    const grads *o[2] = {&gs, &gh};
    for (int t = 0; t < 2; t++) {
        cr_assert(memcmp(o[t]->dk, ga.dk, sizeof(float) * nkv) == 0, "dK does not depend on the dQ order");
        cr_assert(memcmp(o[t]->dv, ga.dv, sizeof(float) * nkv) == 0, "dV does not depend on the dQ order");
        for (size_t i = 0; i < nq; i++) {
            const double a = (double)ga.dq[i], b = (double)o[t]->dq[i];
            cr_assert(fabs(a - b) <= 2 * ulp_dt(fmax(fabs(a), fabs(b)), p->dtype),
                      "order %d dq[%zu]: %a vs %a", t, i, a, b);
        }
    }
    /* Before the rounding (FD_BSTAGE_OUT) the orders are visible: some sums differ, by
     * a few binary32 ulps of the partials' magnitude. */
    double *q0 = malloc(sizeof(double) * nq), *q1 = malloc(sizeof(double) * nq), *q2 = malloc(sizeof(double) * nq);
    double *k0 = malloc(sizeof(double) * nkv), *v0 = malloc(sizeof(double) * nkv);
    fd_flash_cfg fc;
    fd_flash_cfg_default(&fc);
    char err[256];
    cr_assert(fd_cpu_flash_bwd_stages(p, &fc, &asc, FD_BSTAGE_OUT, x.q, x.k, x.v, x.o, x.lse, x.dout, NULL,
                                      q0, k0, v0, err, sizeof err) == 0, "%s", err);
    cr_assert(fd_cpu_flash_bwd_stages(p, &fc, &desc, FD_BSTAGE_OUT, x.q, x.k, x.v, x.o, x.lse, x.dout, NULL,
                                      q1, k0, v0, err, sizeof err) == 0, "%s", err);
    cr_assert(fd_cpu_flash_bwd_stages(p, &fc, &sh2, FD_BSTAGE_OUT, x.q, x.k, x.v, x.o, x.lse, x.dout, NULL,
                                      q2, k0, v0, err, sizeof err) == 0, "%s", err);
    double mx = 0.0;
    for (size_t i = 0; i < nq; i++) mx = fmax(mx, fabs(q0[i]));
    int nd1 = 0, nd2 = 0;
    for (size_t i = 0; i < nq; i++) {
        nd1 += !fd_eq(q0[i], q1[i]);
        nd2 += !fd_eq(q0[i], q2[i]);
        cr_assert(fabs(q0[i] - q1[i]) <= 0x1p-20 * mx && fabs(q0[i] - q2[i]) <= 0x1p-20 * mx);
    }
    cr_assert(nd1 > 0 && nd2 > 0, "descending and shuffled sums must differ somewhere (%d, %d)", nd1, nd2);
    free(q0); free(q1); free(q2); free(k0); free(v0);
    free_g(&gd); free_g(&ga); free_g(&gs); free_g(&gh); free_g(&gh1);
    free_in(&x);
}

/* fd_cpu_flash_backward_orders: one pass gives, bit for bit, the dQ of a separate replay
 * per order (and the replay's own dq, dk, dv; or dQ orders only, without dK/dV). */
Test(cpu_bwd, dq_orders_in_one_pass)
{
    bwd_in x = mk_in(tu_mk_case(1, 4, 2, 130, 400, 64, FD_DT_FP16, FD_MASK_NONE, 0.1, FD_DIST_NORMAL, 21));
    const fd_problem *p = &x.c.prob;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p);
    fd_bwd_cfg det, oc[3];
    fd_bwd_cfg_default(&det);
    det.dq_mode = FD_DQ_DETERMINISTIC;
    for (int t = 0; t < 3; t++) fd_bwd_cfg_default(&oc[t]);
    oc[0].dq_order = FD_DQ_ORDER_DESC;
    oc[1].dq_order = FD_DQ_ORDER_SHUFFLE;
    oc[1].order_seed = 1;
    oc[2].dq_order = FD_DQ_ORDER_SHUFFLE;
    oc[2].order_seed = 99;
    grads gd = run_bwd(&x, &det), sep[3];
    for (int t = 0; t < 3; t++) sep[t] = run_bwd(&x, &oc[t]);
    fd_flash_cfg fc;
    fd_flash_cfg_default(&fc);
    char err[256];
    float *dq = malloc(sizeof(float) * nq), *dk = malloc(sizeof(float) * nkv), *dv = malloc(sizeof(float) * nkv);
    float *odq[3];
    for (int t = 0; t < 3; t++) odq[t] = malloc(sizeof(float) * nq);
    for (int only = 0; only < 2; only++) { /* with the replay's outputs, then dQ orders only */
        for (int t = 0; t < 3; t++) memset(odq[t], 0xff, sizeof(float) * nq);
        cr_assert(fd_cpu_flash_backward_orders(p, &fc, &det, x.q, x.k, x.v, x.o, x.lse, x.dout, only ? NULL : dq,
                                               only ? NULL : dk, only ? NULL : dv, 3, oc, odq, err, sizeof err) == 0,
                  "%s", err);
        if (!only) {
            cr_assert(memcmp(dq, gd.dq, sizeof(float) * nq) == 0, "the pass's own dq");
            cr_assert(memcmp(dk, gd.dk, sizeof(float) * nkv) == 0, "the pass's own dk");
            cr_assert(memcmp(dv, gd.dv, sizeof(float) * nkv) == 0, "the pass's own dv");
        }
        for (int t = 0; t < 3; t++)
            cr_assert(memcmp(odq[t], sep[t].dq, sizeof(float) * nq) == 0, "order %d (dQ only: %d)", t, only);
    }
    cr_assert(memcmp(odq[0], gd.dq, sizeof(float) * nq) != 0, "descending differs from ascending somewhere");
    cr_assert(fd_cpu_flash_backward_orders(p, &fc, &det, x.q, x.k, x.v, x.o, x.lse, x.dout, NULL, NULL, NULL, 0,
                                           NULL, NULL, err, sizeof err) != 0, "nothing to compute is an error");
    cr_assert(fd_cpu_flash_backward_orders(p, &fc, &det, x.q, x.k, x.v, x.o, x.lse, x.dout, dq, dk, NULL, 0,
                                           NULL, NULL, err, sizeof err) != 0, "dk without dv is an error");
    free(dq); free(dk); free(dv);
    for (int t = 0; t < 3; t++) {
        free(odq[t]);
        free_g(&sep[t]);
    }
    free_g(&gd);
    free_in(&x);
}

/* stages with exact = 0 reproduce the float kernel */
static void check_stages_zero(fd_case c, const fd_bwd_cfg *cfg, fd_exp2_mode e2)
{
    bwd_in x = mk_in(c);
    const fd_problem *p = &x.c.prob;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p);
    fd_flash_cfg fc;
    fd_flash_cfg_default(&fc);
    fc.exp2_mode = e2;
    grads g = run_bwd_f(&x, &fc, cfg);
    double *dq = malloc(sizeof(double) * nq), *dk = malloc(sizeof(double) * nkv), *dv = malloc(sizeof(double) * nkv);
    char err[256];
    cr_assert(fd_cpu_flash_bwd_stages(p, &fc, cfg, 0u, x.q, x.k, x.v, x.o, x.lse, x.dout, x.o_x, dq, dk, dv,
                                      err, sizeof err) == 0, "%s", err);
    for (size_t i = 0; i < nq; i++)
        cr_assert(fd_f32_bits((float)dq[i]) == fd_f32_bits(g.dq[i]) && fd_eq(dq[i], (double)g.dq[i]),
                  "%s dq[%zu]", c.id, i);
    for (size_t i = 0; i < nkv; i++) {
        cr_assert(fd_f32_bits((float)dk[i]) == fd_f32_bits(g.dk[i]) && fd_eq(dk[i], (double)g.dk[i]), "%s dk[%zu]", c.id, i);
        cr_assert(fd_f32_bits((float)dv[i]) == fd_f32_bits(g.dv[i]) && fd_eq(dv[i], (double)g.dv[i]), "%s dv[%zu]", c.id, i);
    }
    free(dq); free(dk); free(dv);
    free_g(&g);
    free_in(&x);
}

Test(cpu_bwd, stages_zero_is_the_kernel)
{
    fd_bwd_cfg c;
    fd_bwd_cfg_default(&c);
    check_stages_zero(tu_mk_case(1, 4, 2, 70, 90, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.17, FD_DIST_NORMAL, 30), &c, FD_EXP2_LIBM);
    check_stages_zero(tu_mk_case(1, 2, 1, 90, 50, 32, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, FD_DIST_NORMAL, 31), &c, FD_EXP2_PORTABLE);
    check_stages_zero(tu_mk_case(1, 2, 2, 30, 40, 24, FD_DT_FP32, FD_MASK_CAUSAL_TL, 0.1, FD_DIST_NORMAL, 32), &c, FD_EXP2_LIBM);
    c.dq_order = FD_DQ_ORDER_SHUFFLE;
    c.order_seed = 5;
    c.bugs = FD_BWD_BUG_DQ_NOSCALE | FD_BWD_BUG_SWAP_DKDV | FD_BWD_BUG_NO_GQA_SUM;
    check_stages_zero(tu_mk_case(1, 4, 2, 100, 130, 64, FD_DT_FP16, FD_MASK_NONE, 0.17, FD_DIST_NORMAL, 33), &c, FD_EXP2_PORTABLE);
}

/* FD_BSTAGE_ALL: everything in binary64 from the given inputs. The kernel's inputs o and
 * lse stay what they are (lse is binary32), so the comparable binary64 gradient is the
 * formulas' with the same P = exp(scale S - lse) and D from o_exact: they agree to a few
 * binary64 roundings of the terms (1e-12 of the bound, which sums |terms|). Against the
 * true gradient (exact LSE) they differ by the binary32 rounding of the LSE only. */
Test(cpu_bwd, stages_all_is_binary64)
{
    const fd_case cs[] = {tu_mk_case(1, 4, 2, 70, 90, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.17, FD_DIST_NORMAL, 40),
                          tu_mk_case(1, 2, 1, 90, 50, 40, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, FD_DIST_NORMAL, 41),
                          tu_mk_case(1, 2, 2, 40, 40, 256, FD_DT_FP16, FD_MASK_NONE, 0.1, FD_DIST_NORMAL, 42)};
    for (int t = 0; t < 3; t++) {
        bwd_in x = mk_in(cs[t]);
        const fd_problem *p = &x.c.prob;
        const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p), nl = fd_lse_numel(p);
        float *lsef = malloc(sizeof(float) * nl);
        double *lsed = malloc(sizeof(double) * nl);
        for (size_t i = 0; i < nl; i++) {
            lsef[i] = (float)x.lse_x[i];
            lsed[i] = (double)lsef[i];
        }
        double *rq = malloc(sizeof(double) * nq), *rk = malloc(sizeof(double) * nkv), *rv = malloc(sizeof(double) * nkv);
        double *bq = malloc(sizeof(double) * nq), *bk = malloc(sizeof(double) * nkv), *bv = malloc(sizeof(double) * nkv);
        double *dq = malloc(sizeof(double) * nq), *dk = malloc(sizeof(double) * nkv), *dv = malloc(sizeof(double) * nkv);
        double *tq = malloc(sizeof(double) * nq), *tk = malloc(sizeof(double) * nkv), *tv = malloc(sizeof(double) * nkv);
        ref_backward(p, x.q, x.k, x.v, x.dout, x.o_x, lsed, rq, rk, rv, bq, bk, bv, 0.0);
        ref_backward(p, x.q, x.k, x.v, x.dout, x.o_x, x.lse_x, tq, tk, tv, NULL, NULL, NULL, 0.0);
        fd_flash_cfg fc;
        fd_bwd_cfg c;
        default_cfgs(&fc, &c);
        char err[256];
        cr_assert(fd_cpu_flash_bwd_stages(p, &fc, &c, FD_BSTAGE_ALL, x.q, x.k, x.v, x.o, lsef, x.dout, x.o_x,
                                          dq, dk, dv, err, sizeof err) == 0, "%s", err);
        const double *got[3] = {dq, dk, dv}, *want[3] = {rq, rk, rv}, *bd[3] = {bq, bk, bv}, *tru[3] = {tq, tk, tv};
        const size_t n[3] = {nq, nkv, nkv};
        for (int a = 0; a < 3; a++)
            for (size_t i = 0; i < n[a]; i++) {
                cr_assert(fabs(got[a][i] - want[a][i]) <= 1e-12 * bd[a][i], "%s tensor %d [%zu]: %.17g vs %.17g (bound %g)",
                          x.c.id, a, i, got[a][i], want[a][i], bd[a][i]);
                cr_assert(fabs(got[a][i] - tru[a][i]) <= 1e-5 * bd[a][i], "%s tensor %d [%zu] vs true gradient",
                          x.c.id, a, i);
            }
        /* the float kernel is far from that agreement: the stages change something */
        grads g = run_bwd(&x, &c);
        double worst = 0.0;
        for (size_t i = 0; i < nq; i++) worst = fmax(worst, fabs((double)g.dq[i] - dq[i]));
        cr_assert(worst > 0.0);
        free_g(&g);
        free(lsef); free(lsed); free(rq); free(rk); free(rv); free(bq); free(bk); free(bv);
        free(dq); free(dk); free(dv); free(tq); free(tk); free(tv);
        free_in(&x);
    }
}

/* Each stage alone changes the result (it is wired), and keeps it close to the kernel. */
Test(cpu_bwd, each_stage_changes_something)
{
    bwd_in x = mk_in(tu_mk_case(1, 4, 2, 70, 90, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.17, FD_DIST_NORMAL, 45));
    const fd_problem *p = &x.c.prob;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p);
    double *q0 = malloc(sizeof(double) * nq), *k0 = malloc(sizeof(double) * nkv), *v0 = malloc(sizeof(double) * nkv);
    double *q1 = malloc(sizeof(double) * nq), *k1 = malloc(sizeof(double) * nkv), *v1 = malloc(sizeof(double) * nkv);
    fd_flash_cfg fc;
    fd_bwd_cfg c;
    default_cfgs(&fc, &c);
    char err[256];
    cr_assert(fd_cpu_flash_bwd_stages(p, &fc, &c, 0u, x.q, x.k, x.v, x.o, x.lse, x.dout, x.o_x, q0, k0, v0,
                                      err, sizeof err) == 0);
    for (unsigned s = 1; s <= FD_BSTAGE_OUT; s <<= 1) {
        cr_assert(fd_cpu_flash_bwd_stages(p, &fc, &c, s, x.q, x.k, x.v, x.o, x.lse, x.dout, x.o_x, q1, k1, v1,
                                          err, sizeof err) == 0);
        int nd = 0;
        for (size_t i = 0; i < nq; i++) nd += !fd_eq(q0[i], q1[i]);
        for (size_t i = 0; i < nkv; i++) nd += !fd_eq(k0[i], k1[i]) + !fd_eq(v0[i], v1[i]);
        cr_assert(nd > 0, "stage 0x%x changes nothing", s);
    }
    free(q0); free(k0); free(v0); free(q1); free(k1); free(v1);
    free_in(&x);
}

Test(cpu_bwd, bugs)
{
    bwd_in x = mk_in(tu_mk_case(1, 4, 2, 70, 90, 64, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.0, FD_DIST_NORMAL, 50));
    const fd_problem *p = &x.c.prob;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p);
    fd_bwd_cfg c;
    fd_bwd_cfg_default(&c);
    grads g = run_bwd(&x, &c);
    const double sc = (double)p->softmax_scale;

    c.bugs = FD_BWD_BUG_DQ_NOSCALE;
    grads b = run_bwd(&x, &c);
    int moved = 0;
    for (size_t i = 0; i < nq; i++) {
        const double want = (double)g.dq[i], got = (double)b.dq[i] * sc;
        cr_assert(fabs(got - want) <= 2 * ulp_dt(want, p->dtype) * (1 + sc), "NOSCALE dq[%zu]", i);
        moved += !fd_eqf(b.dq[i], g.dq[i]);
    }
    cr_assert(moved > 0);
    cr_assert(memcmp(b.dk, g.dk, sizeof(float) * nkv) == 0 && memcmp(b.dv, g.dv, sizeof(float) * nkv) == 0);
    free_g(&b);

    c.bugs = FD_BWD_BUG_DK_NOSCALE;
    b = run_bwd(&x, &c);
    for (size_t i = 0; i < nkv; i++)
        cr_assert(fabs((double)b.dk[i] * sc - (double)g.dk[i]) <= 2 * ulp_dt((double)g.dk[i], p->dtype) * (1 + sc),
                  "DK_NOSCALE dk[%zu]", i);
    cr_assert(memcmp(b.dq, g.dq, sizeof(float) * nq) == 0 && memcmp(b.dv, g.dv, sizeof(float) * nkv) == 0);
    free_g(&b);

    c.bugs = FD_BWD_BUG_SWAP_DKDV;
    b = run_bwd(&x, &c);
    cr_assert(memcmp(b.dk, g.dv, sizeof(float) * nkv) == 0 && memcmp(b.dv, g.dk, sizeof(float) * nkv) == 0);
    cr_assert(memcmp(b.dq, g.dq, sizeof(float) * nq) == 0);
    free_g(&b);

    /* NO_GQA_SUM: kv head g gets query head 2g's gradient alone, which is what the
     * problem made of query heads 0 and 2 only (one query head per kv head) gives. */
    c.bugs = FD_BWD_BUG_NO_GQA_SUM;
    b = run_bwd(&x, &c);
    cr_assert(memcmp(b.dq, g.dq, sizeof(float) * nq) == 0);
    bwd_in y = x;
    y.c.prob.heads = 2;
    const fd_problem *py = &y.c.prob;
    y.q = malloc(sizeof(float) * fd_q_numel(py));
    y.o = malloc(sizeof(float) * fd_q_numel(py));
    y.dout = malloc(sizeof(float) * fd_q_numel(py));
    y.lse = malloc(sizeof(float) * fd_lse_numel(py));
    for (int i = 0; i < p->seqlen_q; i++)
        for (int h = 0; h < 2; h++) {
            memcpy(y.q + fd_q_index(py, 0, i, h, 0), x.q + fd_q_index(p, 0, i, 2 * h, 0), sizeof(float) * 64);
            memcpy(y.o + fd_q_index(py, 0, i, h, 0), x.o + fd_q_index(p, 0, i, 2 * h, 0), sizeof(float) * 64);
            memcpy(y.dout + fd_q_index(py, 0, i, h, 0), x.dout + fd_q_index(p, 0, i, 2 * h, 0), sizeof(float) * 64);
            y.lse[fd_lse_index(py, 0, h, i)] = x.lse[fd_lse_index(p, 0, 2 * h, i)];
        }
    c.bugs = 0;
    grads gy = run_bwd(&y, &c);
    cr_assert(memcmp(b.dk, gy.dk, sizeof(float) * nkv) == 0 && memcmp(b.dv, gy.dv, sizeof(float) * nkv) == 0);
    int differ = memcmp(b.dk, g.dk, sizeof(float) * nkv) != 0;
    cr_assert(differ, "the sum over the group's heads matters");
    free_g(&gy); free_g(&b);
    free(y.q); free(y.o); free(y.dout); free(y.lse);

    /* a bugged kernel fails the accuracy bound that the correct one meets */
    double *rq = malloc(sizeof(double) * nq), *rk = malloc(sizeof(double) * nkv), *rv = malloc(sizeof(double) * nkv);
    double *bq = malloc(sizeof(double) * nq), *bk = malloc(sizeof(double) * nkv), *bv = malloc(sizeof(double) * nkv);
    ref_backward(p, x.q, x.k, x.v, x.dout, x.o_x, x.lse_x, rq, rk, rv, bq, bk, bv,
                 ldexp(1.0, fd_dtype_emin(p->dtype)));
    c.bugs = FD_BWD_BUG_DQ_NOSCALE;
    b = run_bwd(&x, &c);
    int bad = 0;
    for (size_t i = 0; i < nq; i++) bad += fabs((double)b.dq[i] - rq[i]) > tol_for(p->dtype) * bq[i];
    cr_assert(bad > (int)(nq / 2), "NOSCALE must fail the bound (%d of %zu)", bad, nq);
    free_g(&b);
    free(rq); free(rk); free(rv); free(bq); free(bk); free(bv);
    free_g(&g);
    free_in(&x);
}

/* The binary64 formulas above are the gradient of <dO, O>: central differences of the
 * binary64 forward on a tiny fp32 problem, and the fp32 kernel agrees with both. */
Test(cpu_bwd, finite_differences)
{
    bwd_in x = mk_in(tu_mk_case(1, 2, 1, 9, 12, 16, FD_DT_FP32, FD_MASK_CAUSAL_BR, 0.0, FD_DIST_NORMAL, 60));
    const fd_problem *p = &x.c.prob;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p);
    double *rq = malloc(sizeof(double) * nq), *rk = malloc(sizeof(double) * nkv), *rv = malloc(sizeof(double) * nkv);
    ref_backward(p, x.q, x.k, x.v, x.dout, x.o_x, x.lse_x, rq, rk, rv, NULL, NULL, NULL, 0.0);
    double *o = malloc(sizeof(double) * nq), *l = malloc(sizeof(double) * fd_lse_numel(p));
    fd_bwd_cfg c;
    fd_bwd_cfg_default(&c);
    c.br = 16; c.bc = 16;
    grads g = run_bwd(&x, &c);
    float *ts[3] = {x.q, x.k, x.v};
    const double *rs[3] = {rq, rk, rv};
    const float *gs[3] = {g.dq, g.dk, g.dv};
    const size_t n[3] = {nq, nkv, nkv};
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; i < n[a]; i += 7) {
            const float keep = ts[a][i];
            const float hstep = 0x1p-10f;
            double L[2];
            for (int s = 0; s < 2; s++) {
                ts[a][i] = keep + (s ? hstep : -hstep);
                ref_forward(p, x.q, x.k, x.v, o, l);
                L[s] = 0.0;
                for (size_t t = 0; t < nq; t++) L[s] += (double)x.dout[t] * o[t];
            }
            ts[a][i] = keep;
            const double den = (double)(keep + hstep) - (double)(keep - hstep);
            const double fdg = (L[1] - L[0]) / den;
            cr_assert(fabs(fdg - rs[a][i]) <= 1e-5 * (1.0 + fabs(rs[a][i])), "tensor %d [%zu]: fd %.9g formula %.9g",
                      a, i, fdg, rs[a][i]);
            cr_assert(fabs((double)gs[a][i] - rs[a][i]) <= 1e-5 * (1.0 + fabs(rs[a][i])), "tensor %d [%zu]: fp32 %.9g",
                      a, i, (double)gs[a][i]);
        }
    free(rq); free(rk); free(rv); free(o); free(l);
    free_g(&g);
    free_in(&x);
}

Test(cpu_bwd, rejects_bad_arguments)
{
    fd_case c = tu_mk_case(1, 3, 2, 8, 8, 16, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 1);
    float x[3 * 8 * 16] = {0}, g[3 * 8 * 16], l[24] = {0};
    char err[256] = "";
    fd_flash_cfg fc;
    fd_bwd_cfg bc;
    default_cfgs(&fc, &bc);
    cr_assert(fd_cpu_flash_backward(&c.prob, &fc, &bc, x, x, x, x, l, x, g, g, g, err, sizeof err) == -1);
    cr_assert(strstr(err, "multiple of kv_heads"), "%s", err);
    c.prob.heads = 2;
    err[0] = 0;
    cr_assert(fd_cpu_flash_backward(&c.prob, &fc, &bc, x, x, x, x, NULL, x, g, g, g, err, sizeof err) == -1);
    cr_assert(strstr(err, "NULL"), "%s", err);
    bc.br = 24;
    bc.bc = 16;
    cr_assert(fd_cpu_flash_backward(&c.prob, &fc, &bc, x, x, x, x, l, x, g, g, g, err, sizeof err) == -1);
    cr_assert(strstr(err, "tile"), "%s", err);
    fd_bwd_cfg_default(&bc);
    double dd[3 * 8 * 16];
    cr_assert(fd_cpu_flash_bwd_stages(&c.prob, &fc, &bc, 0u, x, x, x, x, l, x, NULL, dd, NULL, dd, err,
                                      sizeof err) == -1);
    cr_assert(fd_cpu_flash_backward(&c.prob, &fc, &bc, x, x, x, x, l, x, g, g, g, err, sizeof err) == 0, "%s", err);
}

/* fd_bwd_qtiles (the tile ranges the kernel and the replay share) against a brute force
 * over every (row, key) pair: every query tile with a visible pair in key tile n is in
 * [m0, m1), and so are only such tiles (the range is tight: its first and last tile each
 * hold a visible pair) unless the top-left mask meets a window (rows with an empty
 * interval may then lie inside). Sizes, masks and windows in a sweep that includes empty
 * tiles, rows with no key and both orders of unequal lengths. */
Test(cpu_bwd, qtiles_are_the_visited_tiles)
{
    const int sizes[][2] = {{1, 1}, {5, 300}, {300, 5}, {96, 160}, {160, 96}, {128, 128}, {200, 333}, {333, 70}};
    const int wins[][3] = {{0, -1, -1}, {1, 16, 8}, {1, 40, -1}, {1, -1, 24}, {1, 0, 0}, {1, 200, 3}, {1, 5, 90}};
    const int tiles[][2] = {{64, 64}, {64, 128}, {64, 32}};
    long checked = 0;
    for (size_t a = 0; a < sizeof sizes / sizeof sizes[0]; a++)
        for (int mask = 0; mask < 3; mask++)
            for (size_t w = 0; w < sizeof wins / sizeof wins[0]; w++)
                for (size_t t = 0; t < sizeof tiles / sizeof tiles[0]; t++) {
                    const int sq = sizes[a][0], sk = sizes[a][1], br = tiles[t][0], bc = tiles[t][1];
                    const int win = wins[w][0], wl = wins[w][1], wr = wins[w][2];
                    const int nm = (sq + br - 1) / br, nn = (sk + bc - 1) / bc;
                    for (int n = 0; n < nn; n++) {
                        int m0, m1;
                        fd_bwd_qtiles(mask, win, wl, wr, sq, sk, br, bc, n, &m0, &m1);
                        int first = -1, last = -1;
                        for (int m = 0; m < nm; m++) {
                            int seen = 0;
                            for (int i = m * br; i < (m + 1) * br && i < sq && !seen; i++) {
                                int lo, hi;
                                fd_vis_range(mask, win, wl, wr, i, sq, sk, &lo, &hi);
                                seen = lo <= hi && hi >= n * bc && lo < (n + 1) * bc;
                            }
                            if (seen) {
                                if (first < 0) first = m;
                                last = m;
                                cr_assert(m >= m0 && m < m1, "sq %d sk %d mask %d window %d (%d, %d) tile (%d, %d): "
                                          "key tile %d sees query tile %d outside [%d, %d)", sq, sk, mask, win, wl, wr,
                                          br, bc, n, m, m0, m1);
                            }
                            checked++;
                        }
                        if (!(mask == FD_MASK_CAUSAL_TL && win)) {
                            if (first < 0) cr_assert(m1 <= m0, "key tile %d: no row sees it, range [%d, %d)", n, m0, m1);
                            else cr_assert(m0 == first && m1 == last + 1, "sq %d sk %d mask %d window %d (%d, %d) tile "
                                           "(%d, %d): key tile %d range [%d, %d), visible tiles %d..%d", sq, sk, mask,
                                           win, wl, wr, br, bc, n, m0, m1, first, last);
                        }
                    }
                }
    cr_assert(checked > 4000, "only %ld (tile, tile) pairs checked", checked);
}
