/* test_tier_bwd.c: the backward binary64 tier (reference/fd_tier_bwd.h, fd_tier_bwd_cpu.c)
 * against the MPFR backward reference (fd_ref_bwd_group), and the tiered backward reference
 * stage (fd_reference_bwd_tiered).
 *
 * The property checked everywhere: a gradient value the tier decides is within its own
 * stated bound of MPFR's correctly rounded value (|x - r| <= dx + 2^-52 |r|), and within
 * 1/1000 ulp of the dtype of it with the same dtype ulp (what the decision promises the
 * metrics). Values: the checked rows of every backward case of cases/backward.json and
 * cases/default.json (the run's own samples: rows_per_head query rows and key rows), and adversarial problems (a large logit
 * spread, dP = D cancellation, dropout, GQA, causal, window, ALiBi, softcap). Each test also
 * counts the decided fraction and fails when the tier decides too little (a tier that
 * decided nothing would pass the property vacuously). FD_TIER_SEED overrides the seeds. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_case.h"
#include "fd_inputs.h"
#include "fd_obtain.h"
#include "fd_ref_bwd.h"
#include "fd_test_problem.h"
#include "fd_test_tier_bwd.h"
#include "fd_test_util.h"
#include "fd_tier_bwd.h"
#include "fd_tier_cpu.h"

static uint64_t seed_from_env(uint64_t dflt)
{
    const char *s = getenv("FD_TIER_SEED");
    uint64_t x = s ? strtoull(s, NULL, 0) : dflt;
    return x ? x : dflt;
}

static void check_casefile(const char *rel, tu_btally *tl)
{
    fd_casefile cf;
    char err[512];
    cr_assert_eq(fd_casefile_load(tu_path(TU_SOURCE, rel), &cf, err, sizeof err), 0, "%s", err);
    int ncase = 0;
    for (int ci = 0; ci < cf.ncases; ci++) {
        const fd_case *c = &cf.cases[ci];
        if (!c->backward) continue;
        ncase++;
        float *q, *k, *v, *dout;
        cr_assert_eq(fd_inputs_make(c, &q, &k, &v, err, sizeof err), 0, "%s", err);
        cr_assert_eq(fd_inputs_make_dout(c, &dout, err, sizeof err), 0, "%s", err);
        int *qr = malloc(sizeof(int) * (size_t)(c->prob.seqlen_q + 64)), *kr = malloc(sizeof(int) * (size_t)(c->prob.seqlen_k + 64));
        cr_assert(qr && kr);
        const int nq = fd_sample_rows(&c->prob, cf.rows_per_head, qr), nk = fd_bwd_sample_key_rows(&c->prob, cf.rows_per_head, kr);
        tu_check_bwd(tu_bwd_tier_cpu, &c->prob, q, k, v, dout, qr, nq, kr, nk, c->id, tl, NULL);
        free(qr); free(kr); free(q); free(k); free(v); free(dout);
    }
    cr_assert_gt(ncase, 0, "%s has no backward case", rel);
    fd_casefile_free(&cf);
}

Test(tier_bwd, backward_every_decided_value_agrees_with_mpfr, .timeout = 1800)
{
    tu_btally tl = {0};
    check_casefile("cases/backward.json", &tl);
    tu_bwd_report("backward.json", &tl);
    /* not vacuous: ordinary gradients are mostly decided (measured: see docs/reference.md) */
    cr_assert_gt(tl.decided * 10, tl.values * 7, "only %ld of %ld values decided", tl.decided, tl.values);
}

Test(tier_bwd, default_backward_cases_agree_with_mpfr, .timeout = 1800)
{
    /* the default sweep's 16 backward cases (200 x 320, head_dim 64 and 128, GQA, dropout,
     * causal), on the run's own samples (32 query rows and key rows per head) */
    tu_btally tl = {0};
    check_casefile("cases/default.json", &tl);
    tu_bwd_report("default.json (backward cases)", &tl);
    cr_assert_gt(tl.decided * 10, tl.values * 7, "only %ld of %ld values decided", tl.decided, tl.values);
}

/* ---- adversarial problems ---- */
typedef struct {
    fd_problem p;
    float *q, *k, *v, *dout;
} badv;

static badv badv_make(int H, int Hk, int sq, int sk, int D, fd_dtype t, fd_mask_kind mask, double drop)
{
    badv a;
    a.p = tu_make_problem(1, H, Hk, sq, sk, D, t, mask, drop);
    a.q = calloc(fd_q_numel(&a.p), sizeof(float));
    a.dout = calloc(fd_q_numel(&a.p), sizeof(float));
    a.k = calloc(fd_kv_numel(&a.p), sizeof(float));
    a.v = calloc(fd_kv_numel(&a.p), sizeof(float));
    cr_assert(a.q && a.k && a.v && a.dout);
    return a;
}

static void badv_fill(badv *a, uint64_t *st, double qs, double ks, double vs, double ds)
{
    const fd_dtype t = a->p.dtype;
    for (size_t x = 0; x < fd_q_numel(&a->p); x++) {
        a->q[x] = tu_rnd_dtype(qs * (tu_urand(st) * 2 - 1), t);
        a->dout[x] = tu_rnd_dtype(ds * (tu_urand(st) * 2 - 1), t);
    }
    for (size_t x = 0; x < fd_kv_numel(&a->p); x++) {
        a->k[x] = tu_rnd_dtype(ks * (tu_urand(st) * 2 - 1), t);
        a->v[x] = tu_rnd_dtype(vs * (tu_urand(st) * 2 - 1), t);
    }
}

/* every query row and every key row */
static void badv_check(badv *a, const char *what, tu_btally *tl)
{
    int *qr = malloc(sizeof(int) * (size_t)a->p.seqlen_q), *kr = malloc(sizeof(int) * (size_t)a->p.seqlen_k);
    cr_assert(qr && kr);
    for (int i = 0; i < a->p.seqlen_q; i++) qr[i] = i;
    for (int j = 0; j < a->p.seqlen_k; j++) kr[j] = j;
    tu_check_bwd(tu_bwd_tier_cpu, &a->p, a->q, a->k, a->v, a->dout, qr, a->p.seqlen_q, kr, a->p.seqlen_k, what, tl, NULL);
    free(qr); free(kr); free(a->q); free(a->k); free(a->v); free(a->dout);
}

Test(tier_bwd, adversarial_large_logit_spread_gqa_causal, .timeout = 600)
{
    /* logits spread over hundreds of nats (scale 8, some keys 40x larger): most P underflow
     * or are truncated (weight 0, bound 2^-1000); GQA 4 heads over 2, causal bottom-right
     * with sq > sk (rows with no key: dQ = 0 exactly), each dtype */
    uint64_t st = seed_from_env(0xb5eed1ull);
    tu_btally tl = {0};
    for (int t = 0; t < 3; t++) {
        badv a = badv_make(4, 2, 40, 32, 16, (fd_dtype)t, FD_MASK_CAUSAL_BR, 0.0);
        badv_fill(&a, &st, 1.0, 1.0, 1.0, 1.0);
        for (size_t x = 0; x < fd_kv_numel(&a.p); x += 48) a.k[x] = tu_rnd_dtype(40.0 * (tu_urand(&st) * 2 - 1), (fd_dtype)t);
        a.p.softmax_scale = 8.0f;
        badv_check(&a, "large spread", &tl);
    }
    tu_bwd_report("large spread", &tl);
    cr_assert_gt(tl.zeros, 0, "rows with no key or one key give exact zeros the tier must decide");
    cr_assert_gt(tl.decided * 2, tl.values);
}

Test(tier_bwd, adversarial_dp_equals_d_cancellation, .timeout = 600)
{
    /* identical values in most keys: dP_ij = D_i for them (dS = 0 exactly in the mathematics,
     * the tier's enclosure straddles 0: undecided, never wrong); a few keys differ by one ulp */
    uint64_t st = seed_from_env(0xcafe5ull);
    tu_btally tl = {0};
    for (int t = 0; t < 2; t++) {
        badv a = badv_make(2, 1, 24, 48, 16, (fd_dtype)t, FD_MASK_NONE, 0.0);
        badv_fill(&a, &st, 1.0, 1.0, 1.0, 1.0);
        for (int j = 1; j < 48; j++)
            for (int d = 0; d < 16; d++) {
                float x = a.v[d];
                if (j % 11 == 0 && d == 3) x = nextafterf(x, 10.0f);
                a.v[(size_t)j * 16 + (size_t)d] = x;
            }
        badv_check(&a, "dP = D", &tl);
    }
    tu_bwd_report("dP = D", &tl);
    cr_assert_lt(tl.decided, tl.values, "the cancellation should leave values to MPFR");
    cr_assert_gt(tl.decided, 0);
}

Test(tier_bwd, adversarial_dropout_window_alibi_softcap, .timeout = 600)
{
    /* dropout 0.3 (keep/(1-p), dropped keys in dS), a window (both sides), ALiBi and softcap
     * (dl/ds = 1 - tanh^2, keys deep in the cap's saturation), GQA, fp32 spread exponents */
    uint64_t st = seed_from_env(0xd0d0ull);
    tu_btally tl = {0};
    for (int t = 0; t < 3; t++) {
        badv a = badv_make(4, 2, 48, 64, 24, (fd_dtype)t, FD_MASK_CAUSAL_BR, 0.3);
        badv_fill(&a, &st, 3.0, 3.0, 1.0, 1.0);
        if (t == FD_DT_FP32)
            for (size_t x = 0; x < fd_kv_numel(&a.p); x++) a.v[x] = (float)ldexp(a.v[x], (int)(tu_urand(&st) * 24) - 12);
        a.p.window = 1;
        a.p.window_left = 24;
        a.p.window_right = 8;
        a.p.softcap = t == 1 ? 2.0f : 6.0f;
        a.p.alibi = 1;
        fd_alibi_default_slopes(a.p.heads, a.p.alibi_slopes);
        badv_check(&a, "dropout + mods", &tl);
    }
    tu_bwd_report("dropout + mods", &tl);
    cr_assert_gt(tl.decided * 2, tl.values);
}

/* ---- the stage ---- */
Test(tier_bwd, stage_counts_fallback_and_values, .timeout = 900)
{
    /* fd_reference_bwd_tiered with the CPU tier against MPFR alone on a case with dropout and
     * one with dP = D cancellation: every value within 1/1000 dtype ulp of MPFR's (MPFR's own
     * where the tier left one undecided: the group's undecided rows go to MPFR), the counts add
     * up, and the cancellation case makes at least one MPFR call */
    uint64_t st = seed_from_env(0x57a9eull);
    for (int which = 0; which < 2; which++) {
        badv a = badv_make(4, 2, 40, 56, 16, FD_DT_BF16, FD_MASK_CAUSAL_TL, which ? 0.0 : 0.2);
        badv_fill(&a, &st, 1.0, 1.0, 1.0, 1.0);
        if (which)
            for (int j = 1; j < 56; j++)
                for (int d = 0; d < 16; d++) a.v[((size_t)j * 2 + 1) * 16 + (size_t)d] = a.v[16 + (size_t)d];
        int qr[40], kr[56];
        for (int i = 0; i < 40; i++) qr[i] = i;
        for (int j = 0; j < 56; j++) kr[j] = j;
        const size_t nqv = 4 * 40 * 16, nkv = 2 * 56 * 16;
        double *tq = malloc(sizeof(double) * nqv), *tk = malloc(sizeof(double) * nkv), *tv = malloc(sizeof(double) * nkv);
        double *mq = malloc(sizeof(double) * nqv), *mk = malloc(sizeof(double) * nkv), *mv = malloc(sizeof(double) * nkv);
        cr_assert(tq && tk && tv && mq && mk && mv);
        int u1, p1, u2, p2;
        fd_ref_stats s1, s2;
        char err[256];
        cr_assert_eq(fd_reference_bwd_tiered(&a.p, a.q, a.k, a.v, a.dout, qr, 40, kr, 56, 2, FD_REFTIER_MPFR, mq, mk, mv,
                                             &u1, &p1, &s1, err, sizeof err), 0, "%s", err);
        cr_assert_eq(fd_reference_bwd_tiered(&a.p, a.q, a.k, a.v, a.dout, qr, 40, kr, 56, 2, FD_REFTIER_CPU, tq, tk, tv,
                                             &u2, &p2, &s2, err, sizeof err), 0, "%s", err);
        cr_assert_eq(u1, 0);
        cr_assert_eq(u2, 0);
        cr_assert_eq(s1.tier, FD_REFTIER_MPFR);
        cr_assert_eq(s2.tier, FD_REFTIER_CPU);
        cr_assert_eq(s1.values, (long)(nqv + 2 * nkv));
        cr_assert_eq(s1.values_mpfr, s1.values);
        cr_assert_eq(s2.values, s1.values);
        cr_assert_eq(s2.values_tier + s2.values_mpfr, s2.values);
        cr_assert_eq(s2.rows_tier + s2.rows_mpfr, 2, "two groups");
        printf("stage %s: %ld values, %ld from the tier, %ld from MPFR in %ld calls; tier %.3f s, MPFR %.3f s (MPFR alone "
               "%.3f s)\n", which ? "dP = D" : "dropout", s2.values, s2.values_tier, s2.values_mpfr, s2.rows_mpfr,
               s2.seconds_tier, s2.seconds_mpfr, s1.seconds_mpfr);
        if (which) cr_assert_gt(s2.rows_mpfr, 0, "the cancellation case should send a group to MPFR");
        const int prec = fd_tb_prec(FD_DT_BF16), emin = fd_tb_emin(FD_DT_BF16);
        for (int g = 0; g < 3; g++) {
            const double *x = g == 0 ? tq : g == 1 ? tk : tv, *m = g == 0 ? mq : g == 1 ? mk : mv;
            for (size_t e = 0; e < (g ? nkv : nqv); e++) {
                const double U = fd_tb_ulp_dtype(m[e], prec, emin);
                cr_assert(fabs(x[e] - m[e]) <= U / 1000.0 && (fd_eq(x[e], 0.0) == fd_eq(m[e], 0.0)),
                          "gradient %d element %zu: stage %a vs MPFR %a", g, e, x[e], m[e]);
            }
        }
        free(tq); free(tk); free(tv); free(mq); free(mk); free(mv);
        free(a.q); free(a.k); free(a.v); free(a.dout);
    }
}

Test(tier_bwd, declines_varlen)
{
    /* variable-length problems are the MPFR reference's (the tier says so; the stage falls back) */
    badv a = badv_make(2, 2, 8, 8, 8, FD_DT_FP16, FD_MASK_NONE, 0.0);
    a.p.varlen = 2;
    a.p.cu_seqlens_q[1] = a.p.cu_seqlens_k[1] = 4;
    a.p.cu_seqlens_q[2] = a.p.cu_seqlens_k[2] = 8;
    int rows[1] = {0};
    double x[64];
    unsigned char ok[64];
    fd_tier_bwd_out o;
    memset(&o, 0, sizeof o);
    o.dq = o.dk = o.dv = x;
    o.okq = o.okk = o.okv = ok;
    char err[256] = "";
    cr_assert_eq(fd_tier_bwd_cpu(&a.p, a.q, a.k, a.v, a.dout, rows, 1, rows, 1, 1, &o, err, sizeof err),
                 FD_TIER_DECLINED, "%s", err);
    cr_assert(strstr(err, "variable-length") != NULL, "%s", err);
    free(a.q); free(a.k); free(a.v); free(a.dout);
}
