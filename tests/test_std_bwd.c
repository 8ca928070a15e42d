/* test_std_bwd.c: fd_cpu_standard_backward (eager attention's autograd) against a
 * straightforward binary64 computation of the same gradients, and its invariants. */
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

/* dO: the Q of the same shape drawn from another seed (exact dtype values). */
static float *make_dout(const fd_case *c)
{
    fd_case c2 = *c;
    c2.input_seed = c->input_seed + 1000;
    float *q, *k, *v;
    char err[256];
    cr_assert(fd_inputs_make(&c2, &q, &k, &v, err, sizeof err) == 0, "%s", err);
    free(k); free(v);
    return q;
}

/* The gradients in binary64 from the same inputs: P = softmax(scale S) (0 on rows with no
 * visible key), Z r = keep / (1 - p), dV = (P Z r)^T dO, dP = (dO V^T) Z r,
 * D = rowsum(P dP), dS = P (dP - D), dQ = scale dS K, dK = scale dS^T Q; GQA sums. */
static void grads64(const fd_problem *p, const float *q, const float *k, const float *v,
                    const float *dout, double *dq, double *dk, double *dv)
{
    const int D = p->head_dim, sq = p->seqlen_q, sk = p->seqlen_k;
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    const double r = 1.0 / (1.0 - p->dropout_p);
    double *P = malloc(sizeof(double) * (size_t)sq * (size_t)sk);
    double *dS = malloc(sizeof(double) * (size_t)sq * (size_t)sk);
    double *Z = malloc(sizeof(double) * (size_t)sq * (size_t)sk);
    memset(dk, 0, sizeof(double) * fd_kv_numel(p));
    memset(dv, 0, sizeof(double) * fd_kv_numel(p));
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++) {
            const int hk = fd_kv_head(p, h);
            for (int i = 0; i < sq; i++) {
                double m = -INFINITY, sum = 0;
                double *Pi = P + (size_t)i * (size_t)sk;
                for (int j = 0; j < sk; j++) {
                    double x = -INFINITY;
                    if (fd_mask_visible(p->mask, i, j, sq, sk)) {
                        x = 0;
                        for (int d = 0; d < D; d++)
                            x += (double)q[fd_q_index(p, b, i, h, d)] * (double)k[fd_kv_index(p, b, j, hk, d)];
                        x *= (double)p->softmax_scale;
                    }
                    Pi[j] = x;
                    if (x > m) m = x;
                    Z[(size_t)i * (size_t)sk + (size_t)j] =
                        p->dropout_p > 0 ? (fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j) ? r : 0.0) : 1.0;
                }
                for (int j = 0; j < sk; j++) {
                    Pi[j] = isinf(m) ? 0.0 : exp(Pi[j] - m);
                    sum += Pi[j];
                }
                for (int j = 0; j < sk; j++) Pi[j] = sum > 0 ? Pi[j] / sum : 0.0;
                double Di = 0;
                double *dSi = dS + (size_t)i * (size_t)sk;
                for (int j = 0; j < sk; j++) {
                    double dp = 0;
                    for (int d = 0; d < D; d++)
                        dp += (double)dout[fd_q_index(p, b, i, h, d)] * (double)v[fd_kv_index(p, b, j, hk, d)];
                    dSi[j] = dp * Z[(size_t)i * (size_t)sk + (size_t)j];
                    Di += Pi[j] * dSi[j];
                }
                for (int j = 0; j < sk; j++) dSi[j] = Pi[j] * (dSi[j] - Di);
            }
            for (int i = 0; i < sq; i++)
                for (int d = 0; d < D; d++) {
                    double x = 0;
                    for (int j = 0; j < sk; j++)
                        x += dS[(size_t)i * (size_t)sk + (size_t)j] * (double)k[fd_kv_index(p, b, j, hk, d)];
                    dq[fd_q_index(p, b, i, h, d)] = (double)p->softmax_scale * x;
                }
            for (int j = 0; j < sk; j++)
                for (int d = 0; d < D; d++) {
                    double xk = 0, xv = 0;
                    for (int i = 0; i < sq; i++) {
                        size_t ij = (size_t)i * (size_t)sk + (size_t)j;
                        xk += dS[ij] * (double)q[fd_q_index(p, b, i, h, d)];
                        xv += P[ij] * Z[ij] * (double)dout[fd_q_index(p, b, i, h, d)];
                    }
                    dk[fd_kv_index(p, b, j, hk, d)] += (double)p->softmax_scale * xk;
                    dv[fd_kv_index(p, b, j, hk, d)] += xv;
                }
        }
    free(P); free(dS); free(Z);
}

static double rel_l2(const float *g, const double *ref, size_t n)
{
    double se = 0, sr = 0;
    for (size_t x = 0; x < n; x++) {
        double e = (double)g[x] - ref[x];
        se += e * e;
        sr += ref[x] * ref[x];
    }
    return sr > 0 ? sqrt(se / sr) : sqrt(se);
}

/* Bound on the relative l2 error of each gradient, u = 2^-11 (fp16) or 2^-8 (bf16). The
 * output's own rounding alone gives at most u and typically about half of it; the dtype roundings
 * on a gradient's path add comparable, mostly independent terms (P and the dropped P
 * before dV; dO V^T and dS before dQ/dK, the latter amplified a little by the
 * cancellation in dP - D; the GQA sum one more), fp32 accumulation is far below u.
 * Measured on these cases: 0.64u to 1.0u. 3u keeps a margin of 3 while a wrong scale,
 * a missed mask or dropout, or a wrong D is off by O(1). */
static double bound_for(fd_dtype t) { return 3.0 * (t == FD_DT_FP16 ? 0x1p-11 : 0x1p-8); }

static void check_case(fd_case c, fd_accum_model order)
{
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[256];
    cr_assert(fd_inputs_make(&c, &q, &k, &v, err, sizeof err) == 0, "%s", err);
    float *dout = make_dout(&c);
    const size_t nq = fd_q_numel(p), nk = fd_kv_numel(p);
    float *dq = malloc(sizeof(float) * nq), *dk = malloc(sizeof(float) * nk), *dv = malloc(sizeof(float) * nk);
    double *rq = malloc(sizeof(double) * nq), *rk = malloc(sizeof(double) * nk), *rv = malloc(sizeof(double) * nk);
    cr_assert(fd_cpu_standard_backward(p, order, q, k, v, dout, dq, dk, dv, err, sizeof err) == 0, "%s", err);
    grads64(p, q, k, v, dout, rq, rk, rv);
    const double bd = bound_for(p->dtype);
    const double eq = rel_l2(dq, rq, nq), ek = rel_l2(dk, rk, nk), ev = rel_l2(dv, rv, nk);
    cr_assert(eq <= bd, "case %s (%s): dQ rel l2 error %.3g above the bound %.3g", c.id, fd_accum_name(order), eq, bd);
    cr_assert(ek <= bd, "case %s (%s): dK rel l2 error %.3g above the bound %.3g", c.id, fd_accum_name(order), ek, bd);
    cr_assert(ev <= bd, "case %s (%s): dV rel l2 error %.3g above the bound %.3g", c.id, fd_accum_name(order), ev, bd);
    /* every value is a dtype value; rows with no visible key have dQ = 0 */
    for (size_t x = 0; x < nq; x++)
        cr_assert(fd_eqf(dq[x], fd_round_to_dtype(dq[x], p->dtype)) && isfinite(dq[x]), "dQ[%zu] = %a", x, (double)dq[x]);
    for (size_t x = 0; x < nk; x++)
        cr_assert(isfinite(dk[x]) && isfinite(dv[x]) && fd_eqf(dk[x], fd_round_to_dtype(dk[x], p->dtype)) &&
                      fd_eqf(dv[x], fd_round_to_dtype(dv[x], p->dtype)),
                  "dK/dV[%zu] = %a, %a", x, (double)dk[x], (double)dv[x]);
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int i = 0; i < p->seqlen_q; i++)
                if (fd_mask_visible_count(p->mask, i, p->seqlen_q, p->seqlen_k) == 0)
                    for (int d = 0; d < p->head_dim; d++)
                        cr_assert(fd_eqf(dq[fd_q_index(p, b, i, h, d)], 0.0f), "row %d has no visible key: dQ must be 0", i);
    free(q); free(k); free(v); free(dout);
    free(dq); free(dk); free(dv); free(rq); free(rk); free(rv);
}

Test(std_bwd, close_to_binary64_each_dtype_and_mask)
{
    const fd_dtype dts[] = {FD_DT_FP16, FD_DT_BF16};
    const fd_mask_kind ms[] = {FD_MASK_NONE, FD_MASK_CAUSAL_TL, FD_MASK_CAUSAL_BR};
    for (int a = 0; a < 2; a++)
        for (int m = 0; m < 3; m++) {
            check_case(tu_mk_case(1, 4, 2, 37, 29, 24, dts[a], ms[m], 0.0, FD_DIST_NORMAL, 11), FD_ACC_SEQ); /* sq > sk */
            check_case(tu_mk_case(2, 4, 2, 21, 45, 16, dts[a], ms[m], 0.0, FD_DIST_NORMAL, 12), FD_ACC_TC16); /* sq < sk */
        }
}

Test(std_bwd, close_to_binary64_with_dropout)
{
    const fd_dtype dts[] = {FD_DT_FP16, FD_DT_BF16};
    const fd_mask_kind ms[] = {FD_MASK_NONE, FD_MASK_CAUSAL_TL, FD_MASK_CAUSAL_BR};
    for (int a = 0; a < 2; a++)
        for (int m = 0; m < 3; m++) {
            check_case(tu_mk_case(1, 4, 2, 40, 33, 32, dts[a], ms[m], 0.2, FD_DIST_NORMAL, 21), FD_ACC_TC16);
            check_case(tu_mk_case(1, 4, 4, 19, 50, 16, dts[a], ms[m], 0.2, FD_DIST_NORMAL, 22), FD_ACC_SEQ);
        }
}

Test(std_bwd, zero_output_gradient_gives_zeros)
{
    fd_case c = tu_mk_case(1, 4, 2, 30, 20, 16, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.2, FD_DIST_NORMAL, 31);
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[256];
    cr_assert(fd_inputs_make(&c, &q, &k, &v, err, sizeof err) == 0, "%s", err);
    const size_t nq = fd_q_numel(p), nk = fd_kv_numel(p);
    float *dout = calloc(nq, sizeof(float));
    float *dq = malloc(sizeof(float) * nq), *dk = malloc(sizeof(float) * nk), *dv = malloc(sizeof(float) * nk);
    memset(dq, 0xff, sizeof(float) * nq); /* NaN: every element must be written */
    memset(dk, 0xff, sizeof(float) * nk);
    memset(dv, 0xff, sizeof(float) * nk);
    cr_assert(fd_cpu_standard_backward(p, FD_ACC_TC16, q, k, v, dout, dq, dk, dv, err, sizeof err) == 0, "%s", err);
    for (size_t x = 0; x < nq; x++) cr_assert(fd_eqf(dq[x], 0.0f), "dQ[%zu] = %a, want 0", x, (double)dq[x]);
    for (size_t x = 0; x < nk; x++) {
        cr_assert(fd_eqf(dk[x], 0.0f), "dK[%zu] = %a, want 0", x, (double)dk[x]);
        cr_assert(fd_eqf(dv[x], 0.0f), "dV[%zu] = %a, want 0", x, (double)dv[x]);
    }
    free(q); free(k); free(v); free(dout); free(dq); free(dk); free(dv);
}

/* GQA: dK/dV of a kv head are the fp32 sum (query heads ascending, rounded once) of the
 * per-head gradients that kv_heads = heads gives on K/V expanded to every query head;
 * dQ is the same bits. */
static void check_gqa(fd_dtype dt, fd_mask_kind mask, double dp, fd_accum_model order)
{
    fd_case c = tu_mk_case(2, 4, 2, 26, 35, 16, dt, mask, dp, FD_DIST_NORMAL, 41);
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[256];
    cr_assert(fd_inputs_make(&c, &q, &k, &v, err, sizeof err) == 0, "%s", err);
    float *dout = make_dout(&c);
    fd_problem pe = *p;
    pe.kv_heads = p->heads;
    const size_t nq = fd_q_numel(p), nk = fd_kv_numel(p), nke = fd_kv_numel(&pe);
    float *ke = malloc(sizeof(float) * nke), *ve = malloc(sizeof(float) * nke);
    for (int b = 0; b < p->batch; b++)
        for (int j = 0; j < p->seqlen_k; j++)
            for (int h = 0; h < p->heads; h++)
                for (int d = 0; d < p->head_dim; d++) {
                    ke[fd_kv_index(&pe, b, j, h, d)] = k[fd_kv_index(p, b, j, fd_kv_head(p, h), d)];
                    ve[fd_kv_index(&pe, b, j, h, d)] = v[fd_kv_index(p, b, j, fd_kv_head(p, h), d)];
                }
    float *dq = malloc(sizeof(float) * nq), *dk = malloc(sizeof(float) * nk), *dv = malloc(sizeof(float) * nk);
    float *dqe = malloc(sizeof(float) * nq), *dke = malloc(sizeof(float) * nke), *dve = malloc(sizeof(float) * nke);
    cr_assert(fd_cpu_standard_backward(p, order, q, k, v, dout, dq, dk, dv, err, sizeof err) == 0, "%s", err);
    cr_assert(fd_cpu_standard_backward(&pe, order, q, ke, ve, dout, dqe, dke, dve, err, sizeof err) == 0, "%s", err);
    cr_assert(memcmp(dq, dqe, sizeof(float) * nq) == 0, "dQ differs between GQA and expanded K/V");
    const int group = p->heads / p->kv_heads;
    for (int b = 0; b < p->batch; b++)
        for (int j = 0; j < p->seqlen_k; j++)
            for (int hk = 0; hk < p->kv_heads; hk++)
                for (int d = 0; d < p->head_dim; d++) {
                    float sk_ = 0.0f, sv = 0.0f;
                    for (int g = 0; g < group; g++) {
                        sk_ += dke[fd_kv_index(&pe, b, j, hk * group + g, d)];
                        sv += dve[fd_kv_index(&pe, b, j, hk * group + g, d)];
                    }
                    float wk = fd_round_to_dtype(sk_, dt), wv = fd_round_to_dtype(sv, dt);
                    float gk = dk[fd_kv_index(p, b, j, hk, d)], gv = dv[fd_kv_index(p, b, j, hk, d)];
                    cr_assert(fd_f32_bits(gk) == fd_f32_bits(wk), "dK b%d j%d hk%d d%d: %a, sum of heads %a", b, j, hk,
                              d, (double)gk, (double)wk);
                    cr_assert(fd_f32_bits(gv) == fd_f32_bits(wv), "dV b%d j%d hk%d d%d: %a, sum of heads %a", b, j, hk,
                              d, (double)gv, (double)wv);
                }
    free(q); free(k); free(v); free(dout); free(ke); free(ve);
    free(dq); free(dk); free(dv); free(dqe); free(dke); free(dve);
}

Test(std_bwd, gqa_sum_is_the_sum_over_expanded_heads)
{
    check_gqa(FD_DT_FP16, FD_MASK_NONE, 0.0, FD_ACC_TC16);
    check_gqa(FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.2, FD_ACC_SEQ);
    check_gqa(FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.2, FD_ACC_TC16);
}

Test(std_bwd, bad_arguments_fail_with_a_message)
{
    fd_case c = tu_mk_case(1, 3, 2, 8, 8, 16, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 51);
    float x[8 * 3 * 16] = {0}, y[8 * 3 * 16];
    char err[256] = "";
    cr_assert(fd_cpu_standard_backward(&c.prob, FD_ACC_SEQ, x, x, x, x, y, y, y, err, sizeof err) == -1);
    cr_assert(strstr(err, "multiple") != NULL, "%s", err);
    c.prob.kv_heads = 3;
    err[0] = 0;
    cr_assert(fd_cpu_standard_backward(&c.prob, FD_ACC_SEQ, x, x, x, NULL, y, y, y, err, sizeof err) == -1);
    cr_assert(strstr(err, "null") != NULL, "%s", err);
}
