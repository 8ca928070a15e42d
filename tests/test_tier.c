/* test_tier.c: the binary64 reference tier (reference/fd_tier.h, fd_tier_cpu.c) against the
 * MPFR reference (fd_ref_row), and the tiered pipeline (fd_reference_rows_tiered).
 *
 * The property checked everywhere: a value the tier decides is within its own stated bound
 * of MPFR's correctly rounded value (|x - r| <= dx + 2^-52 |r|), and within 1/1000 ulp of
 * the output dtype of it, with the same dtype ulp (what the decision promises the metrics).
 * Rows: every row of every case of cases/smoke.json, cases/features.json and cases/varlen.json, the default
 * sweep's own sample (cases/default.json, 32 rows per head: 46,080 rows), and
 * adversarial rows (huge logit spreads, cancellation in P V, tied maxima, spread
 * exponents). FD_TIER_SEED overrides the random tests' seed. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpfr.h>

#include "fd_case.h"
#include "fd_inputs.h"
#include "fd_metrics.h"
#include "fd_obtain.h"
#include "fd_ref.h"
#include "fd_test_problem.h"
#include "fd_test_util.h"
#include "fd_tier.h"
#include "fd_tier_cpu.h"

typedef struct {
    long values, decided, equal_bits, mpfr_undecided, rows, rows_decided;
} tally;

static uint64_t seed_from_env(uint64_t dflt)
{
    const char *s = getenv("FD_TIER_SEED");
    uint64_t x = s ? strtoull(s, NULL, 0) : dflt;
    return x ? x : dflt;
}

/* Every listed row of p: the tier with bounds, MPFR, and the property above. */
static void check_rows(const fd_problem *p, const float *q, const float *k, const float *v, const int *rows,
                       int nrows, const char *what, tally *tl)
{
    const int D = p->head_dim;
    const long ntask = (long)p->batch * p->heads * nrows;
    double *o = malloc(sizeof(double) * (size_t)ntask * (size_t)D), *lse = malloc(sizeof(double) * (size_t)ntask);
    double *bd = malloc(sizeof(double) * (size_t)ntask * (size_t)D), *bl = malloc(sizeof(double) * (size_t)ntask);
    unsigned char *vok = malloc((size_t)ntask * (size_t)(D + 1)), *rok = malloc((size_t)ntask);
    double *ro = malloc(sizeof(double) * (size_t)D);
    cr_assert(o && lse && bd && bl && vok && rok && ro);
    char err[256];
    long nd = 0;
    cr_assert_eq(fd_tier_cpu_rows_bounds(p, q, k, v, rows, nrows, 2, o, lse, bd, bl, vok, rok, &nd, err, sizeof err), 0,
                 "%s: %s", what, err);
    fd_ref_opts ro_opts;
    fd_ref_opts_default(&ro_opts);
    const int prec = fd_tb_prec((int)p->dtype), emin = fd_tb_emin((int)p->dtype);
    long cnt = 0;
    /* MPFR for every row first, on 2 threads (no assertion inside the parallel loop) */
    double *mo = malloc(sizeof(double) * (size_t)ntask * (size_t)D);
    fd_ref_row_info *mi = malloc(sizeof(fd_ref_row_info) * (size_t)(ntask > 0 ? ntask : 1));
    cr_assert(mo && mi);
    int mfail = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(2) reduction(| : mfail)
    for (long t = 0; t < ntask; t++) {
        const int r = (int)(t % nrows), h = (int)((t / nrows) % p->heads), b = (int)(t / nrows / p->heads);
        char e2[256];
        mfail |= fd_ref_row(p, q, k, v, b, h, rows[r], &ro_opts, mo + (size_t)t * (size_t)D, &mi[t], e2, sizeof e2) != 0;
    }
    cr_assert_eq(mfail, 0, "%s: the MPFR reference failed", what);
    for (long t = 0; t < ntask; t++) {
        const int r = (int)(t % nrows), h = (int)((t / nrows) % p->heads), b = (int)(t / nrows / p->heads);
        const fd_ref_row_info info = mi[t];
        memcpy(ro, mo + (size_t)t * (size_t)D, sizeof(double) * (size_t)D);
        if (info.undecided) tl->mpfr_undecided++;
        tl->rows++;
        tl->rows_decided += rok[t];
        for (int d = 0; d <= D; d++) {
            const unsigned char ok = vok[(size_t)t * (size_t)(D + 1) + (size_t)d];
            cnt += ok;
            tl->values++;
            if (!ok) continue;
            tl->decided++;
            const double x = d < D ? o[(size_t)t * (size_t)D + (size_t)d] : lse[t];
            const double dx = d < D ? bd[(size_t)t * (size_t)D + (size_t)d] : bl[t];
            const double rv = d < D ? ro[d] : info.lse;
            if (info.undecided) continue; /* MPFR's value is only an estimate there */
            uint64_t ux, ur;
            memcpy(&ux, &x, 8);
            memcpy(&ur, &rv, 8);
            tl->equal_bits += ux == ur;
            if (isinf(rv) && isinf(x) && (rv > 0) == (x > 0)) continue;
            const double gap = fabs(x - rv);
            const int pr = d < D ? prec : 24, em = d < D ? emin : -126;
            cr_assert(gap <= dx + ldexp(fabs(rv), -52),
                      "%s: b=%d h=%d i=%d %s%d: tier %a (bound %a) vs MPFR %a: off by %a, beyond its bound", what, b,
                      h, rows[r], d < D ? "O_" : "LSE", d < D ? d : 0, x, dx, rv, gap);
            const double U = fd_tb_ulp_dtype(rv, pr, em);
            cr_assert(fd_eq(U, fd_tb_ulp_dtype(x, pr, em)) && gap <= U / 1000.0,
                      "%s: b=%d h=%d i=%d %s%d: tier %a vs MPFR %a: %g dtype ulp apart (decided means <= 1/1000)",
                      what, b, h, rows[r], d < D ? "O_" : "LSE", d < D ? d : 0, x, rv, gap / U);
        }
    }
    cr_assert_eq(cnt, nd, "%s: the tier counted %ld decided values, its flags say %ld", what, nd, cnt);
    free(mo);
    free(mi);
    free(o); free(lse); free(bd); free(bl); free(vok); free(rok); free(ro);
}

/* every row (rph 0), or the case file's sample (rph < 0: its rows_per_head) */
static void check_casefile_rows(const char *rel, int rph, tally *tl)
{
    fd_casefile cf;
    char err[512];
    cr_assert_eq(fd_casefile_load(tu_path(TU_SOURCE, rel), &cf, err, sizeof err), 0, "%s", err);
    for (int ci = 0; ci < cf.ncases; ci++) {
        const fd_case *c = &cf.cases[ci];
        float *q, *k, *v;
        cr_assert_eq(fd_inputs_make(c, &q, &k, &v, err, sizeof err), 0, "%s", err);
        int *rows = malloc(sizeof(int) * (size_t)(c->prob.seqlen_q + 64));
        const int nrows = fd_sample_rows(&c->prob, rph < 0 ? cf.rows_per_head : rph, rows);
        check_rows(&c->prob, q, k, v, rows, nrows, c->id, tl);
        free(rows); free(q); free(k); free(v);
    }
    fd_casefile_free(&cf);
}

static void check_casefile(const char *rel, tally *tl) { check_casefile_rows(rel, 0, tl); }

static void report(const char *what, const tally *tl)
{
    printf("%s: %ld values, %ld decided by the tier (%.1f%%), %ld equal to MPFR's bits; rows %ld, %ld decided whole; "
           "%ld rows MPFR left undecided\n", what, tl->values, tl->decided, 100.0 * (double)tl->decided / (double)tl->values,
           tl->equal_bits, tl->rows, tl->rows_decided, tl->mpfr_undecided);
}

/* Every value of every row of the case file's cases against MPFR (check_casefile), and not
 * vacuous: the tier must decide most values of ordinary inputs. */
static void every_value_agrees(const char *path, const char *what)
{
    tally tl = {0};
    check_casefile(path, &tl);
    report(what, &tl);
    cr_assert_gt(tl.decided * 10, tl.values * 8, "only %ld of %ld values decided", tl.decided, tl.values);
}

Test(tier, smoke_every_value_agrees_with_mpfr, .timeout = 600)
{
    every_value_agrees("cases/smoke.json", "smoke");
}

Test(tier, features_every_value_agrees_with_mpfr, .timeout = 600)
{
    every_value_agrees("cases/features.json", "features");
}

Test(tier, varlen_every_value_agrees_with_mpfr, .timeout = 600)
{
    /* packed batches: each row sees its own sequence only, ALiBi distances within it (a tier
     * that attended the packed batch as one sequence passed the leaking kernel) */
    every_value_agrees("cases/varlen.json", "varlen");
}

Test(tier, paged_every_value_agrees_with_mpfr, .timeout = 600)
{
    /* paged KV caches: each entry's keys below cache_seqlens only, the causal mask aligned to
     * them (a tier that attended the capacity passed a kernel reading stale tokens) */
    every_value_agrees("cases/paged.json", "paged");
}

Test(tier, default_sweep_sampled_rows_agree_with_mpfr, .timeout = 900)
{
    /* the default sweep (249 cases, up to 2048 keys): its own 32-row sample per (batch, head),
     * every value of which MPFR also computes; every row would take MPFR an hour here */
    tally tl = {0};
    check_casefile_rows("cases/default.json", -1, &tl);
    report("default (sampled rows)", &tl);
    cr_assert_gt(tl.decided * 10, tl.values * 8, "only %ld of %ld values decided", tl.decided, tl.values);
}

/* ---- adversarial rows ---- */
typedef struct {
    fd_problem p;
    float *q, *k, *v;
} adv;

static adv adv_make(int sq, int sk, int D, fd_dtype t, fd_mask_kind mask, double drop)
{
    adv a;
    a.p = tu_make_problem(1, 2, 1, sq, sk, D, t, mask, drop);
    a.q = calloc((size_t)fd_q_numel(&a.p), sizeof(float));
    a.k = calloc((size_t)fd_kv_numel(&a.p), sizeof(float));
    a.v = calloc((size_t)fd_kv_numel(&a.p), sizeof(float));
    cr_assert(a.q && a.k && a.v);
    return a;
}

static void adv_check(adv *a, const char *what, tally *tl)
{
    int *rows = malloc(sizeof(int) * (size_t)a->p.seqlen_q);
    for (int i = 0; i < a->p.seqlen_q; i++) rows[i] = i;
    check_rows(&a->p, a->q, a->k, a->v, rows, a->p.seqlen_q, what, tl);
    free(rows); free(a->q); free(a->k); free(a->v);
}

Test(tier, adversarial_huge_logit_spread)
{
    /* one key per row ~1e4 nats above the others (truncated: weight 0 with a 2^-1000
     * bound), others spread over 1e4 nats; fp32 inputs with exponents in [-8, 8] */
    uint64_t st = seed_from_env(0x5eed1ull);
    tally tl = {0};
    for (int t = 0; t < 3; t++) {
        const fd_dtype dt = (fd_dtype)t;
        adv a = adv_make(24, 80, 16, dt, FD_MASK_NONE, 0.0);
        for (size_t x = 0; x < fd_q_numel(&a.p); x++) a.q[x] = tu_rnd_dtype(tu_urand(&st) * 2 - 1, dt);
        for (size_t x = 0; x < fd_kv_numel(&a.p); x++) {
            const double big = (x / 16) % 7 == 0 ? 400.0 : 1.0;
            a.k[x] = tu_rnd_dtype(big * (tu_urand(&st) * 2 - 1), dt);
            a.v[x] = tu_rnd_dtype(ldexp(tu_urand(&st) * 2 - 1, (int)(tu_urand(&st) * 16) - 8), dt);
        }
        a.p.softmax_scale = 8.0f;
        adv_check(&a, "huge spread", &tl);
    }
    report("huge spread", &tl);
    cr_assert_gt(tl.decided, 0);
}

Test(tier, adversarial_cancellation_in_pv)
{
    /* equal logits (q = 0) and V columns of +x and -x, one column off by one bit in one key:
     * O_0 = 0 exactly (decided as +0 only when exact), O_1 tiny relative to sum |v| */
    tally tl = {0};
    for (int t = 0; t < 3; t++) {
        const fd_dtype dt = (fd_dtype)t;
        adv a = adv_make(4, 64, 8, dt, FD_MASK_CAUSAL_TL, 0.0);
        for (int j = 0; j < 64; j++)
            for (int d = 0; d < 8; d++) {
                const double s = (j & 1) ? -1.0 : 1.0;
                double x = s * (1.0 + d / 8.0);
                if (d == 1 && j == 6) x = nextafterf((float)x, 2.0f);
                if (d == 2) x = s * 1000.0 + (j == 3 ? 0.5 : 0.0);
                a.v[(size_t)j * 8 + (size_t)d] = tu_rnd_dtype(x, dt);
                a.k[(size_t)j * 8 + (size_t)d] = tu_rnd_dtype(0.25 * (d + 1) * (j % 3), dt);
            }
        adv_check(&a, "cancellation", &tl);
    }
    report("cancellation", &tl);
    cr_assert_lt(tl.decided, tl.values, "cancellation should leave some values to MPFR");
    cr_assert_gt(tl.decided, 0);
}

Test(tier, adversarial_tied_maxima)
{
    /* several identical keys share the row maximum (P exactly tied), with dropout */
    uint64_t st = seed_from_env(0x71edull);
    tally tl = {0};
    for (int t = 0; t < 3; t++) {
        const fd_dtype dt = (fd_dtype)t;
        adv a = adv_make(32, 96, 32, dt, FD_MASK_CAUSAL_BR, 0.2);
        for (size_t x = 0; x < fd_q_numel(&a.p); x++) a.q[x] = tu_rnd_dtype(tu_urand(&st) * 2 - 1, dt);
        for (int j = 0; j < 96; j++)
            for (int d = 0; d < 32; d++) {
                const int src = j % 5 == 0 ? 0 : j; /* every 5th key equals key 0 */
                a.k[(size_t)j * 32 + (size_t)d] = tu_rnd_dtype(2.0 * sin(1.0 + src * 0.37 + d * 1.1), dt);
                a.v[(size_t)j * 32 + (size_t)d] = tu_rnd_dtype(tu_urand(&st) * 2 - 1, dt);
            }
        adv_check(&a, "tied maxima", &tl);
    }
    report("tied maxima", &tl);
    cr_assert_gt(tl.decided * 2, tl.values);
}

Test(tier, adversarial_spread_exponents_and_mods)
{
    /* fp32 with exponents in [-20, 20], softcap, ALiBi, a window and dropout together */
    uint64_t st = seed_from_env(0x5b7eadull);
    tally tl = {0};
    adv a = adv_make(40, 72, 24, FD_DT_FP32, FD_MASK_CAUSAL_BR, 0.1);
    for (size_t x = 0; x < fd_q_numel(&a.p); x++) a.q[x] = (float)ldexp(tu_urand(&st) - 0.5, (int)(tu_urand(&st) * 8) - 4);
    for (size_t x = 0; x < fd_kv_numel(&a.p); x++) {
        a.k[x] = (float)ldexp(tu_urand(&st) - 0.5, (int)(tu_urand(&st) * 8) - 4);
        a.v[x] = (float)ldexp(tu_urand(&st) - 0.5, (int)(tu_urand(&st) * 40) - 20);
    }
    a.p.window = 1;
    a.p.window_left = 20;
    a.p.window_right = -1;
    a.p.softcap = 7.0f;
    a.p.alibi = 1;
    fd_alibi_default_slopes(a.p.heads, a.p.alibi_slopes);
    adv_check(&a, "spread + mods", &tl);
    report("spread + mods", &tl);
    cr_assert_gt(tl.decided, 0);
}

/* ---- the decision rule ---- */
Test(tier, decide_refuses_what_it_must)
{
    const int p16 = fd_tb_prec(FD_DT_FP16), e16 = fd_tb_emin(FD_DT_FP16);
    cr_assert(fd_tb_decide(0.75, 1e-9, p16, e16), "a tight enclosure in one binade");
    cr_assert(!fd_tb_decide(0.75, 1e-3, p16, e16), "a bound above 1/1000 ulp (ulp 2^-11 at 0.75)");
    cr_assert(!fd_tb_decide(1.0 - 0x1p-40, 0x1p-38, p16, e16), "an enclosure across a binade");
    cr_assert(!fd_tb_decide(1e-12, 1e-11, p16, e16), "an enclosure containing 0");
    cr_assert(!fd_tb_decide(0.0, 1e-300, p16, e16), "a computed 0 with a bound");
    cr_assert(!fd_tb_decide(NAN, 0.0, p16, e16));
    cr_assert(!fd_tb_decide(1.0, (double)INFINITY, p16, e16));
    /* below fp16's normal range the ulp is the subnormal one on both sides */
    cr_assert(fd_tb_decide(0x1p-20, 0x1p-40, p16, e16));
    /* fp32 asks for ~2^-33 relative */
    cr_assert(fd_tb_decide(1.5, 0x1p-45, 24, -126));
    cr_assert(!fd_tb_decide(1.5, 0x1p-30, 24, -126));
}

/* ---- the libm assumption: exp, log, tanh within FD_TB_LIBM_ULP ulp ---- */
static double ulp_err(double got, mpfr_t exact)
{
    mpfr_t g, d;
    mpfr_inits2(256, g, d, (mpfr_ptr)0);
    mpfr_set_d(g, got, MPFR_RNDN);
    mpfr_sub(d, g, exact, MPFR_RNDN);
    mpfr_abs(d, d, MPFR_RNDN);
    double ex = mpfr_get_d(exact, MPFR_RNDN);
    int e;
    (void)frexp(ex, &e);
    const double u = ldexp(1.0, e - 53);
    double r = mpfr_get_d(d, MPFR_RNDU) / u;
    mpfr_clears(g, d, (mpfr_ptr)0);
    return r;
}

Test(tier, host_libm_within_the_assumed_ulp)
{
    uint64_t st = seed_from_env(0x11b3ull);
    double worst[3] = {0, 0, 0};
    mpfr_t x, y;
    mpfr_inits2(256, x, y, (mpfr_ptr)0);
    for (int t = 0; t < 200000; t++) {
        const double a = -700.0 * tu_urand(&st) * (t % 2 ? 1.0 : 1e-3 * tu_urand(&st));
        mpfr_set_d(x, a, MPFR_RNDN);
        mpfr_exp(y, x, MPFR_RNDN);
        double e = ulp_err(exp(a), y);
        if (e > worst[0]) worst[0] = e;
        const double l = 1.0 + 4096.0 * tu_urand(&st) * tu_urand(&st);
        mpfr_set_d(x, l, MPFR_RNDN);
        mpfr_log(y, x, MPFR_RNDN);
        e = ulp_err(log(l), y);
        if (e > worst[1]) worst[1] = e;
        const double th = (tu_urand(&st) * 2 - 1) * ldexp(1.0, (int)(tu_urand(&st) * 30) - 25);
        mpfr_set_d(x, th, MPFR_RNDN);
        mpfr_tanh(y, x, MPFR_RNDN);
        e = ulp_err(tanh(th), y);
        if (e > worst[2]) worst[2] = e;
    }
    mpfr_clears(x, y, (mpfr_ptr)0);
    printf("host libm worst errors over 200000 arguments: exp %.3f, log %.3f, tanh %.3f ulp (assumed <= %g)\n",
           worst[0], worst[1], worst[2], FD_TB_LIBM_ULP);
    for (int f = 0; f < 3; f++)
        cr_assert_leq(worst[f], FD_TB_LIBM_ULP / 2, "function %d: %.3f ulp, the tier assumes %g with a 2x margin",
                      f, worst[f], FD_TB_LIBM_ULP);
}

/* ---- the pipeline ---- */
Test(tier, pipeline_counts_and_fallback, .timeout = 300)
{
    fd_case c = tu_mk_case(1, 2, 1, 70, 90, 40, FD_DT_FP32, FD_MASK_CAUSAL_BR, 0.17, FD_DIST_NORMAL, 9);
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[256];
    cr_assert_eq(fd_inputs_make(&c, &q, &k, &v, err, sizeof err), 0, "%s", err);
    /* an adversarial V column: exact cancellation pairs, so some rows go to MPFR */
    for (int j = 0; j + 1 < p->seqlen_k; j += 2) v[fd_kv_index(p, 0, j + 1, 0, 3)] = -v[fd_kv_index(p, 0, j, 0, 3)];
    const int nrows = p->seqlen_q, D = p->head_dim;
    int *rows = malloc(sizeof(int) * (size_t)nrows);
    for (int i = 0; i < nrows; i++) rows[i] = i;
    const long ntask = (long)p->batch * p->heads * nrows;
    double *om = malloc(sizeof(double) * (size_t)ntask * (size_t)D), *lm = malloc(sizeof(double) * (size_t)ntask);
    double *ot = malloc(sizeof(double) * (size_t)ntask * (size_t)D), *lt = malloc(sizeof(double) * (size_t)ntask);
    int und = 0, pm = 0, und2 = 0, pm2 = 0;
    fd_ref_stats sm, stt;
    cr_assert_eq(fd_reference_rows_tiered(p, q, k, v, rows, nrows, 2, FD_REFTIER_MPFR, om, lm, &und, &pm, &sm, err,
                                          sizeof err), 0, "%s", err);
    cr_assert_eq(sm.rows_mpfr, ntask);
    cr_assert_eq(sm.rows_tier, 0);
    cr_assert_eq(fd_reference_rows_tiered(p, q, k, v, rows, nrows, 2, FD_REFTIER_CPU, ot, lt, &und2, &pm2, &stt, err,
                                          sizeof err), 0, "%s", err);
    cr_assert_eq(stt.tier, FD_REFTIER_CPU);
    cr_assert_eq(stt.rows_tier + stt.rows_mpfr, ntask);
    cr_assert_eq(stt.values_tier + stt.values_mpfr, ntask * (D + 1));
    cr_assert_gt(stt.rows_tier, 0, "the tier decided no row");
    cr_assert_gt(stt.rows_mpfr, 0, "the cancelling column should send rows to MPFR");
    printf("pipeline: %ld rows, %ld from the tier, %ld MPFR calls\n", ntask, stt.rows_tier, stt.rows_mpfr);
    long same_rows = 0;
    for (long t = 0; t < ntask; t++) {
        int same = 1;
        for (int d = 0; d < D; d++) {
            const double a = om[(size_t)t * (size_t)D + (size_t)d], b = ot[(size_t)t * (size_t)D + (size_t)d];
            const double U = fd_ulp_in_dtype(a, p->dtype);
            cr_assert_leq(fabs(a - b), U / 1000.0, "row task %ld d %d: tiered %a vs MPFR %a", t, d, b, a);
            same &= fd_eq(a, b);
        }
        same_rows += same;
    }
    /* the MPFR rows are MPFR's bits exactly */
    cr_assert_geq(same_rows, stt.rows_mpfr);
    free(rows); free(om); free(lm); free(ot); free(lt); free(q); free(k); free(v);
}

Test(tier, budget_chooses_all_rows_or_a_sample)
{
    fd_casefile cf;
    memset(&cf, 0, sizeof cf);
    cf.rows_per_head = 32;
    cf.reference = FD_REFTIER_CPU;
    cf.reference_budget = 2.0;
    fd_case small = tu_mk_case(1, 2, 2, 128, 128, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 1);
    fd_case big = tu_mk_case(4, 16, 16, 4096, 4096, 128, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 1);
    double e1, e2;
    cr_assert_eq(fd_reference_rows_per_head(&cf, &small.prob, 2, &e1), 0, "small case: every row (estimate %g s)", e1);
    cr_assert_eq(fd_reference_rows_per_head(&cf, &big.prob, 2, &e2), 32, "big case: sampled (estimate %g s)", e2);
    cr_assert_gt(e2, e1);
    cf.reference_budget = 0.0;
    cr_assert_eq(fd_reference_rows_per_head(&cf, &small.prob, 2, &e1), 32, "budget 0: always sampled");
    cf.reference_budget = 2.0;
    cf.reference = FD_REFTIER_MPFR;
    double e3;
    (void)fd_reference_rows_per_head(&cf, &small.prob, 2, &e3);
    cr_assert_gt(e3, e1, "MPFR is estimated slower than the tier");
    /* a narrow window: the reference is cheap (73 visible keys a row), but the CPU kernels
     * compute every key of every checked row (eager attention): sampled */
    cf.reference = FD_REFTIER_CPU;
    fd_case win = tu_mk_case(1, 4, 4, 1023, 1023, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, FD_DIST_NORMAL, 1);
    win.prob.window = 1;
    win.prob.window_left = 64;
    win.prob.window_right = 8;
    const double eref = fd_reference_estimate(&win.prob, NULL, 1023, 2, FD_REFTIER_CPU);
    double e4;
    cr_assert_lt(eref, 0.5, "the reference alone is cheap (%g s)", eref);
    cr_assert_eq(fd_reference_rows_per_head(&cf, &win.prob, 2, &e4), 32,
                 "the CPU kernels' rows count in the budget (estimate %g s)", e4);
}
