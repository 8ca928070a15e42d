/* test_reference.c: the MPFR reference (reference/fd_ref.c).
 *
 * Special cases first (identical keys, one dominant logit, masked rows, GQA, exact
 * cancellation), then seeded random rows checked two ways: decisiveness (prec0 = 128
 * and prec0 = 512 give the same bits) and an independent brute force (MPFR at 1000 bits,
 * naive loops, no mpfr_sum, no accumulator, no error bound). Failures print the seed
 * and the values in decimal and %a. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <mpfr.h>

#include "fd_dtype.h"
#include "fd_philox.h"
#include "fd_problem.h"
#include "fd_ref.h"
#include "fd_test_problem.h"

/* ---------------------------------------------------------------- helpers */

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1p-53; }
static double rng_normal(uint64_t *s)
{
    double u1 = rng_unit(s) + 0x1p-54, u2 = rng_unit(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
/* N(0, sd) with, when spread, a random binary exponent in [-spread, spread]. */
static float rng_value(uint64_t *s, double sd, int spread, fd_dtype t)
{
    double x = sd * rng_normal(s);
    if (spread > 0) x = ldexp(x, (int)(rng_next(s) % (uint64_t)(2 * spread + 1)) - spread);
    return fd_round_to_dtype((float)x, t);
}

static int same_bits(double a, double b)
{
    uint64_t x, y;
    memcpy(&x, &a, 8);
    memcpy(&y, &b, 8);
    return x == y;
}

typedef struct {
    fd_problem p;
    float *q, *k, *v;
} tcase;

static void tcase_alloc(tcase *c, fd_problem p)
{
    c->p = p;
    c->q = calloc(fd_q_numel(&p), sizeof(float));
    c->k = calloc(fd_kv_numel(&p), sizeof(float));
    c->v = calloc(fd_kv_numel(&p), sizeof(float));
    cr_assert(c->q && c->k && c->v, "out of memory");
}
static void tcase_free(tcase *c)
{
    free(c->q);
    free(c->k);
    free(c->v);
}
static void tcase_random(tcase *c, uint64_t seed, double sd, int spread)
{
    uint64_t s = seed;
    for (size_t x = 0; x < fd_q_numel(&c->p); x++) c->q[x] = rng_value(&s, sd, spread, c->p.dtype);
    for (size_t x = 0; x < fd_kv_numel(&c->p); x++) c->k[x] = rng_value(&s, sd, spread, c->p.dtype);
    for (size_t x = 0; x < fd_kv_numel(&c->p); x++) c->v[x] = rng_value(&s, 1.0, spread, c->p.dtype);
}

static int ref_row(const tcase *c, int b, int h, int i, int prec0, double *o, fd_ref_row_info *info)
{
    fd_ref_opts opt;
    fd_ref_opts_default(&opt);
    opt.prec0 = prec0;
    char err[256] = "";
    int rc = fd_ref_row(&c->p, c->q, c->k, c->v, b, h, i, &opt, o, info, err, sizeof err);
    cr_assert_eq(rc, 0, "fd_ref_row(b=%d h=%d i=%d) failed: %s", b, h, i, err);
    return rc;
}

/* The brute force: MPFR at 1000 bits, naive loops (mpfr_mul/mpfr_add, no mpfr_sum),
 * exp(s_j - m) written out, keep mask given explicitly (NULL: keep all), then rounded
 * to binary64. At 1000 bits its error is ~2^-990 relative, far below the binary64
 * rounding, so for random inputs it must equal the decisive reference bit for bit. */
static void brute_row(const tcase *c, int b, int h, int i, const unsigned char *keep, double *o,
                      double *lse)
{
    const fd_problem *p = &c->p;
    const mpfr_prec_t W = 1000;
    const int D = p->head_dim, hk = h / (p->heads / p->kv_heads);
    int n = 0;
    for (int j = 0; j < p->seqlen_k; j++)
        if (fd_mask_visible(p->mask, i, j, p->seqlen_q, p->seqlen_k)) n = j + 1;
    if (n == 0) {
        for (int d = 0; d < D; d++) o[d] = 0.0;
        *lse = INFINITY;
        return;
    }
    mpfr_t *s = malloc((size_t)n * sizeof(mpfr_t));
    mpfr_t x, y, m, l, num, den;
    mpfr_inits2(W, x, y, m, l, num, den, (mpfr_ptr)0);
    const float *qr = c->q + fd_q_index(p, b, i, h, 0);
    for (int j = 0; j < n; j++) {
        const float *kr = c->k + fd_kv_index(p, b, j, hk, 0);
        mpfr_init2(s[j], W);
        mpfr_set_zero(s[j], 1);
        for (int d = 0; d < D; d++) {
            mpfr_set_flt(x, qr[d], MPFR_RNDN);
            mpfr_set_flt(y, kr[d], MPFR_RNDN);
            mpfr_mul(x, x, y, MPFR_RNDN);
            mpfr_add(s[j], s[j], x, MPFR_RNDN);
        }
        mpfr_set_flt(x, p->softmax_scale, MPFR_RNDN);
        mpfr_mul(s[j], s[j], x, MPFR_RNDN);
    }
    mpfr_set(m, s[0], MPFR_RNDN);
    for (int j = 1; j < n; j++) mpfr_max(m, m, s[j], MPFR_RNDN);
    mpfr_set_zero(l, 1);
    for (int j = 0; j < n; j++) {
        mpfr_sub(s[j], s[j], m, MPFR_RNDN);
        mpfr_exp(s[j], s[j], MPFR_RNDN); /* s[j] now holds exp(s_j - m) */
        mpfr_add(l, l, s[j], MPFR_RNDN);
    }
    mpfr_set_d(x, p->dropout_p, MPFR_RNDN);
    mpfr_ui_sub(den, 1, x, MPFR_RNDN);
    mpfr_mul(den, den, l, MPFR_RNDN);
    for (int d = 0; d < D; d++) {
        mpfr_set_zero(num, 1);
        for (int j = 0; j < n; j++) {
            if (keep && !keep[j]) continue;
            mpfr_set_flt(x, c->v[fd_kv_index(p, b, j, hk, d)], MPFR_RNDN);
            mpfr_mul(x, x, s[j], MPFR_RNDN);
            mpfr_add(num, num, x, MPFR_RNDN);
        }
        mpfr_div(num, num, den, MPFR_RNDN);
        o[d] = mpfr_zero_p(num) ? 0.0 : mpfr_get_d(num, MPFR_RNDN);
    }
    mpfr_log(l, l, MPFR_RNDN);
    mpfr_add(l, l, m, MPFR_RNDN);
    *lse = mpfr_get_d(l, MPFR_RNDN);
    for (int j = 0; j < n; j++) mpfr_clear(s[j]);
    free(s);
    mpfr_clears(x, y, m, l, num, den, (mpfr_ptr)0);
}

/* FA2's keep mask for row i, built here from fd_fa2_keep (NULL when p = 0). */
static unsigned char *keep_mask(const fd_problem *p, int b, int h, int i)
{
    if (!(p->dropout_p > 0.0)) return NULL;
    unsigned char *keep = malloc((size_t)p->seqlen_k);
    cr_assert(keep);
    uint8_t thr = fd_fa2_threshold(p->dropout_p);
    for (int j = 0; j < p->seqlen_k; j++)
        keep[j] = (unsigned char)fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j);
    return keep;
}

static void expect_row_equal(const char *what, uint64_t seed, int b, int h, int i, const double *got,
                             double got_lse, const double *want, double want_lse, int D)
{
    for (int d = 0; d < D; d++)
        cr_expect(same_bits(got[d], want[d]),
                  "%s: seed %#llx b=%d h=%d i=%d d=%d: got %.17g (%a), expected %.17g (%a)", what,
                  (unsigned long long)seed, b, h, i, d, got[d], got[d], want[d], want[d]);
    cr_expect(same_bits(got_lse, want_lse),
              "%s: seed %#llx b=%d h=%d i=%d LSE: got %.17g (%a), expected %.17g (%a)", what,
              (unsigned long long)seed, b, h, i, got_lse, got_lse, want_lse, want_lse);
}

static const char *dt_name(fd_dtype t) { return t == FD_DT_FP16 ? "fp16" : t == FD_DT_BF16 ? "bf16" : "fp32"; }

/* ---------------------------------------------------------------- special cases */

/* All keys equal: every weight is exactly 1/n, so O_d = RN(sum_j v_jd / n) exactly
 * (the division correctly rounded from the exact sum), LSE = RN(s + log n), decided. */
Test(reference, identical_keys_give_mean_of_v)
{
    const int dims[] = {1, 16, 59, 64, 128};
    const fd_dtype dts[] = {FD_DT_FP16, FD_DT_BF16, FD_DT_FP32};
    for (size_t a = 0; a < sizeof dims / sizeof dims[0]; a++) {
        for (size_t t = 0; t < 3; t++) {
            const int D = dims[a], sk = 37;
            uint64_t seed = 0x5eed0000ull + (uint64_t)(a * 3 + t);
            tcase c;
            tcase_alloc(&c, tu_make_problem(1, 1, 1, 1, sk, D, dts[t], FD_MASK_NONE, 0.0));
            tcase_random(&c, seed, 1.0, 0);
            for (int j = 1; j < sk; j++) memcpy(c.k + (size_t)j * (size_t)D, c.k, (size_t)D * sizeof(float));
            double o[128], lse;
            fd_ref_row_info info;
            ref_row(&c, 0, 0, 0, 128, o, &info);
            cr_expect_eq(info.undecided, 0, "%s D=%d: %d undecided", dt_name(dts[t]), D, info.undecided);
            cr_expect_eq(info.nvisible, sk);
            mpfr_t sum;
            mpfr_init2(sum, 2000);
            for (int d = 0; d < D; d++) {
                mpfr_set_zero(sum, 1);
                for (int j = 0; j < sk; j++) mpfr_add_d(sum, sum, (double)c.v[(size_t)j * (size_t)D + (size_t)d], MPFR_RNDN); /* exact */
                mpfr_t r;
                mpfr_init2(r, 53);
                mpfr_div_ui(r, sum, (unsigned long)sk, MPFR_RNDN);
                double want = mpfr_zero_p(r) ? 0.0 : mpfr_get_d(r, MPFR_RNDN);
                mpfr_clear(r);
                cr_expect(same_bits(o[d], want), "%s D=%d seed %#llx d=%d: got %.17g (%a), mean of V %.17g (%a)",
                          dt_name(dts[t]), D, (unsigned long long)seed, d, o[d], o[d], want, want);
            }
            mpfr_clear(sum);
            double bo[128];
            brute_row(&c, 0, 0, 0, NULL, bo, &lse);
            cr_expect(same_bits(info.lse, lse), "%s D=%d: LSE %a, brute force %a", dt_name(dts[t]), D,
                      info.lse, lse);
            tcase_free(&c);
        }
    }
}

/* One key's logit exceeds the others by >= 100: its weight is 1 - O(e^-100), so every
 * O_d rounds to that key's v_d exactly (v_d nonzero), and LSE to within 1e-15 of s*. */
Test(reference, dominant_logit_gives_its_v_row)
{
    const fd_dtype dts[] = {FD_DT_FP16, FD_DT_BF16, FD_DT_FP32};
    for (size_t t = 0; t < 3; t++) {
        const int D = 64, sk = 50, star = 17;
        uint64_t seed = 0xd0117ull + t, s = seed;
        tcase c;
        tcase_alloc(&c, tu_make_problem(1, 1, 1, 1, sk, D, dts[t], FD_MASK_NONE, 0.0));
        for (int d = 0; d < D; d++) c.q[d] = (rng_next(&s) & 1) ? 1.0f : -1.0f;
        for (size_t x = 0; x < fd_kv_numel(&c.p); x++) {
            c.k[x] = fd_round_to_dtype((float)(rng_unit(&s) - 0.5), dts[t]);
            c.v[x] = fd_round_to_dtype((float)(0.25 + rng_unit(&s)), dts[t]); /* nonzero */
        }
        for (int d = 0; d < D; d++) c.k[(size_t)star * (size_t)D + (size_t)d] = 16.0f * c.q[d];
        /* s* = 1024 / 8 = 128; every other |s| <= 32 / 8 = 4. */
        double o[64];
        fd_ref_row_info info;
        ref_row(&c, 0, 0, 0, 128, o, &info);
        cr_expect_eq(info.undecided, 0);
        for (int d = 0; d < D; d++) {
            double want = (double)c.v[(size_t)star * (size_t)D + (size_t)d];
            cr_expect(same_bits(o[d], want), "%s seed %#llx d=%d: got %.17g (%a), v* %.17g (%a)",
                      dt_name(dts[t]), (unsigned long long)seed, d, o[d], o[d], want, want);
        }
        cr_expect(fabs(info.lse - 128.0) < 1e-13, "%s: LSE %.17g (%a), expected ~128", dt_name(dts[t]),
                  info.lse, info.lse);
        tcase_free(&c);
    }
}

/* causal_br with seqlen_q > seqlen_k: the first seqlen_q - seqlen_k rows see no key and
 * give O = 0, LSE = +Inf; the next row sees key 0 only, so O = v_0 exactly. */
Test(reference, all_masked_rows_give_zero_and_inf)
{
    const int sq = 8, sk = 4, D = 32;
    tcase c;
    tcase_alloc(&c, tu_make_problem(1, 2, 2, sq, sk, D, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.0));
    tcase_random(&c, 0xa11ull, 1.0, 0);
    for (int h = 0; h < 2; h++) {
        for (int i = 0; i < sq - sk; i++) {
            double o[32];
            fd_ref_row_info info;
            ref_row(&c, 0, h, i, 128, o, &info);
            cr_expect_eq(info.nvisible, 0, "row %d: nvisible %d, expected 0", i, info.nvisible);
            cr_expect_eq(info.undecided, 0);
            cr_expect(isinf(info.lse) && info.lse > 0.0, "row %d: LSE %a, expected +Inf", i, info.lse);
            for (int d = 0; d < D; d++)
                cr_expect(same_bits(o[d], 0.0), "row %d d=%d: got %a, expected +0", i, d, o[d]);
        }
        double o[32];
        fd_ref_row_info info;
        ref_row(&c, 0, h, sq - sk, 128, o, &info);
        cr_expect_eq(info.nvisible, 1);
        for (int d = 0; d < D; d++) {
            double want = (double)c.v[fd_kv_index(&c.p, 0, 0, h, d)];
            cr_expect(same_bits(o[d], want), "one visible key, h=%d d=%d: got %a, v_0 %a", h, d, o[d], want);
        }
    }
    tcase_free(&c);
}

/* Top-left: row i sees keys 0..i; bottom-right: 0..i+sk-sq. Both agree with the brute
 * force, which applies fd_mask_visible key by key; with sq == sk they coincide. */
Test(reference, causal_tl_and_br_visible_sets)
{
    const int sq = 5, sk = 12, D = 24;
    const uint64_t seed = 0xca05a1ull;
    for (int mk = 1; mk <= 2; mk++) {
        tcase c;
        tcase_alloc(&c, tu_make_problem(1, 1, 1, sq, sk, D, FD_DT_BF16, (fd_mask_kind)mk, 0.0));
        tcase_random(&c, seed, 1.0, 0);
        for (int i = 0; i < sq; i++) {
            double o[24], bo[24], blse;
            fd_ref_row_info info;
            ref_row(&c, 0, 0, i, 128, o, &info);
            int want_n = mk == FD_MASK_CAUSAL_TL ? i + 1 : i + sk - sq + 1;
            cr_expect_eq(info.nvisible, want_n, "%s row %d: nvisible %d, expected %d",
                         mk == 1 ? "causal_tl" : "causal_br", i, info.nvisible, want_n);
            brute_row(&c, 0, 0, i, NULL, bo, &blse);
            expect_row_equal(mk == 1 ? "causal_tl" : "causal_br", seed, 0, 0, i, o, info.lse, bo, blse, D);
        }
        tcase_free(&c);
    }
    /* square: identical */
    tcase a, b;
    tcase_alloc(&a, tu_make_problem(1, 1, 1, 9, 9, D, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.0));
    tcase_alloc(&b, tu_make_problem(1, 1, 1, 9, 9, D, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.0));
    tcase_random(&a, seed, 1.0, 0);
    tcase_random(&b, seed, 1.0, 0);
    for (int i = 0; i < 9; i++) {
        double oa[24], ob[24];
        fd_ref_row_info ia, ib;
        ref_row(&a, 0, 0, i, 128, oa, &ia);
        ref_row(&b, 0, 0, i, 128, ob, &ib);
        expect_row_equal("square tl vs br", seed, 0, 0, i, oa, ia.lse, ob, ib.lse, D);
    }
    tcase_free(&a);
    tcase_free(&b);
}

/* GQA: query head h reads kv head h / (heads / kv_heads). A 1-head problem holding only
 * that kv head's K, V (and head h's q) must give the same bits. */
Test(reference, gqa_picks_the_right_kv_head)
{
    const int H = 6, sk = 20, D = 16, sq = 3;
    const int hkvs[] = {1, 2, 3};
    const uint64_t seed = 0x6a9ull;
    for (size_t a = 0; a < 3; a++) {
        const int Hk = hkvs[a];
        tcase c;
        tcase_alloc(&c, tu_make_problem(2, H, Hk, sq, sk, D, FD_DT_FP16, FD_MASK_NONE, 0.0));
        tcase_random(&c, seed + (uint64_t)a, 1.0, 0);
        for (int b = 0; b < 2; b++) {
            for (int h = 0; h < H; h++) {
                int hk = h / (H / Hk);
                tcase one;
                tcase_alloc(&one, tu_make_problem(1, 1, 1, sq, sk, D, FD_DT_FP16, FD_MASK_NONE, 0.0));
                for (int i = 0; i < sq; i++)
                    memcpy(one.q + (size_t)i * (size_t)D, c.q + fd_q_index(&c.p, b, i, h, 0), (size_t)D * sizeof(float));
                for (int j = 0; j < sk; j++) {
                    memcpy(one.k + (size_t)j * (size_t)D, c.k + fd_kv_index(&c.p, b, j, hk, 0), (size_t)D * sizeof(float));
                    memcpy(one.v + (size_t)j * (size_t)D, c.v + fd_kv_index(&c.p, b, j, hk, 0), (size_t)D * sizeof(float));
                }
                double o[16], o1[16];
                fd_ref_row_info info, info1;
                ref_row(&c, b, h, 1, 128, o, &info);
                ref_row(&one, 0, 0, 1, 128, o1, &info1);
                expect_row_equal("gqa", seed, b, h, 1, o, info.lse, o1, info1.lse, D);
                tcase_free(&one);
            }
        }
        tcase_free(&c);
    }
}

/* Two identical keys with opposite V rows, the rest of V zero in column 0: the true
 * O_0 is exactly 0. The error bound is exactly 0 there (e' = 1 exactly for both), so
 * it is decided, not left UNDECIDED. */
Test(reference, exact_cancellation_is_decided)
{
    const int sk = 2, D = 8;
    tcase c;
    tcase_alloc(&c, tu_make_problem(1, 1, 1, 1, sk, D, FD_DT_FP16, FD_MASK_NONE, 0.0));
    tcase_random(&c, 0xcafeull, 1.0, 0);
    memcpy(c.k + D, c.k, (size_t)D * sizeof(float));
    for (int d = 0; d < D; d++) c.v[D + d] = -c.v[d];
    double o[8];
    fd_ref_row_info info;
    ref_row(&c, 0, 0, 0, 128, o, &info);
    cr_expect_eq(info.undecided, 0, "%d undecided", info.undecided);
    cr_expect_eq(info.prec_used, 128);
    for (int d = 0; d < D; d++) cr_expect(same_bits(o[d], 0.0), "d=%d: got %a, expected +0", d, o[d]);
    tcase_free(&c);
}

/* Regression: with a logit gap of thousands every other key is truncated (weight
 * below 2^-(P+92)), so O' = v* exactly and the truth is v* + tiny. mpfr_can_round's
 * RNDZ idiom refuses any interval containing a double, which left every O_d
 * UNDECIDED at every precision; the outward-rounded-ends test decides them. */
Test(reference, regression_dominant_key_with_truncated_others_is_decided)
{
    const int D = 64, sk = 30, star = 4;
    uint64_t seed = 0x7a11ull, s = seed;
    tcase c;
    tcase_alloc(&c, tu_make_problem(1, 1, 1, 1, sk, D, FD_DT_FP32, FD_MASK_NONE, 0.0));
    for (int d = 0; d < D; d++) c.q[d] = (rng_next(&s) & 1) ? 1.0f : -1.0f;
    for (size_t x = 0; x < fd_kv_numel(&c.p); x++) {
        c.k[x] = (float)(rng_unit(&s) - 0.5);
        c.v[x] = (float)(rng_normal(&s) + 3.0);
    }
    for (int d = 0; d < D; d++) c.k[(size_t)star * (size_t)D + (size_t)d] = 1024.0f * c.q[d]; /* s* = 8192 */
    double o[64];
    fd_ref_row_info info;
    ref_row(&c, 0, 0, 0, 128, o, &info);
    cr_expect_eq(info.undecided, 0, "%d undecided", info.undecided);
    cr_expect_eq(info.prec_used, 128, "needed precision %d", info.prec_used);
    for (int d = 0; d < D; d++) {
        double want = (double)c.v[(size_t)star * (size_t)D + (size_t)d];
        cr_expect(same_bits(o[d], want), "seed %#llx d=%d: got %a, v* %a", (unsigned long long)seed, d, o[d], want);
    }
    tcase_free(&c);
}

/* Regression: the dominant keys dropped by dropout leave only weights ~e^-40000, so the
 * true O_d are tiny and round to zeros of their own sign. The bound was scaled to the
 * largest error over all visible keys (the dropped one), which swamped N; it is now
 * scaled over the kept keys, and retries compute the tiny weights instead of
 * truncating them. Expected: decided, bit-equal to the brute force (signed zeros). */
Test(reference, regression_dominant_key_dropped_gives_signed_tiny_o)
{
    const int D = 24, sk = 64;
    uint64_t seed = 0xd40bull, s = seed;
    tcase c;
    tcase_alloc(&c, tu_make_problem(1, 1, 1, 1, sk, D, FD_DT_FP32, FD_MASK_NONE, 0.5));
    unsigned char *keep = keep_mask(&c.p, 0, 0, 0);
    int star = -1, star2 = -1; /* two dropped keys: exact weight 1 and an inexact one */
    for (int j = 0; j < sk && star2 < 0; j++)
        if (!keep[j]) {
            if (star < 0) star = j;
            else star2 = j;
        }
    cr_assert(star2 >= 0, "fewer than two dropped keys in row 0 (seed %#llx)", (unsigned long long)seed);
    for (int d = 0; d < D; d++) c.q[d] = (rng_next(&s) & 1) ? 1.0f : -1.0f;
    for (size_t x = 0; x < fd_kv_numel(&c.p); x++) {
        c.k[x] = (float)(rng_unit(&s) - 0.5);
        c.v[x] = (float)rng_normal(&s);
    }
    for (int d = 0; d < D; d++) {
        c.k[(size_t)star * (size_t)D + (size_t)d] = 8192.0f * c.q[d]; /* s* ~ 40132 */
        c.k[(size_t)star2 * (size_t)D + (size_t)d] = (d ? 8192.0f : 8191.0f) * c.q[d]; /* s* - sigma */
    }
    double o[24], bo[24], blse;
    fd_ref_row_info info;
    ref_row(&c, 0, 0, 0, 128, o, &info);
    brute_row(&c, 0, 0, 0, keep, bo, &blse);
    cr_expect_eq(info.undecided, 0, "%d undecided", info.undecided);
    expect_row_equal("dominant dropped", seed, 0, 0, 0, o, info.lse, bo, blse, D);
    free(keep);
    tcase_free(&c);
}

/* ---------------------------------------------------------------- random rows */

typedef struct {
    fd_dtype t;
    fd_mask_kind mask;
    double dropout;
    int spread; /* exponent spread of the inputs (fp32 only) */
    double sd;
} rcfg;

static const rcfg random_cfgs[] = {
    {FD_DT_FP16, FD_MASK_NONE, 0.0, 0, 1.0},      {FD_DT_BF16, FD_MASK_NONE, 0.0, 0, 1.0},
    {FD_DT_FP32, FD_MASK_NONE, 0.0, 0, 1.0},      {FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.17, 0, 1.0},
    {FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.3, 0, 1.0}, {FD_DT_FP32, FD_MASK_NONE, 0.1, 0, 1.0},
    {FD_DT_FP16, FD_MASK_NONE, 0.0, 0, 4.0},      {FD_DT_FP32, FD_MASK_NONE, 0.0, 20, 1.0},
    {FD_DT_BF16, FD_MASK_NONE, 0.5, 8, 2.0},
};

/* prec0 = 128 and prec0 = 512 must give identical doubles (each is either decided,
 * hence correctly rounded, or counted as undecided; none may be undecided here). */
Test(reference, decisive_across_precisions, .timeout = 120)
{
    for (size_t a = 0; a < sizeof random_cfgs / sizeof random_cfgs[0]; a++) {
        const rcfg *r = &random_cfgs[a];
        const int sq = 6, sk = 150, D = 64;
        uint64_t seed = 0xdec1de00ull + a;
        tcase c;
        tcase_alloc(&c, tu_make_problem(2, 4, 2, sq, sk, D, r->t, r->mask, r->dropout));
        tcase_random(&c, seed, r->sd, r->spread);
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < 4; h += 3)
                for (int i = 0; i < sq; i += 2) {
                    double o1[64], o2[64];
                    fd_ref_row_info i1, i2;
                    ref_row(&c, b, h, i, 128, o1, &i1);
                    ref_row(&c, b, h, i, 512, o2, &i2);
                    cr_expect_eq(i1.undecided, 0, "%s cfg %zu: %d undecided at prec0 128", dt_name(r->t), a, i1.undecided);
                    cr_expect_eq(i2.undecided, 0);
                    cr_expect_eq(i1.nkept, i2.nkept);
                    expect_row_equal("prec0 128 vs 512", seed, b, h, i, o1, i1.lse, o2, i2.lse, D);
                }
        tcase_free(&c);
    }
}

/* The decisive reference equals the 1000-bit brute force exactly, dropout included
 * (the brute force applies the keep mask built here from fd_fa2_keep, and 1/(1-p)). */
Test(reference, equals_brute_force, .timeout = 120)
{
    for (size_t a = 0; a < sizeof random_cfgs / sizeof random_cfgs[0]; a++) {
        const rcfg *r = &random_cfgs[a];
        const int sq = 4, sk = 40, D = 32;
        uint64_t seed = 0xb207e0ull + a;
        tcase c;
        tcase_alloc(&c, tu_make_problem(1, 2, 1, sq, sk, D, r->t, r->mask, r->dropout));
        tcase_random(&c, seed, r->sd, r->spread);
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < sq; i++) {
                double o[32], bo[32], blse;
                fd_ref_row_info info;
                ref_row(&c, 0, h, i, 128, o, &info);
                unsigned char *keep = keep_mask(&c.p, 0, h, i);
                brute_row(&c, 0, h, i, keep, bo, &blse);
                free(keep);
                cr_expect_eq(info.undecided, 0);
                expect_row_equal(dt_name(r->t), seed, 0, h, i, o, info.lse, bo, blse, D);
            }
        tcase_free(&c);
    }
}

/* Dropout: O_d = sum over kept keys e_j v_jd / ((1 - p) l) with the keep mask of
 * fd_fa2_keep (byte <= floor((1-p) 255)); nkept counts it; l uses all visible keys,
 * so LSE does not depend on dropout. */
Test(reference, dropout_matches_explicit_mask)
{
    const double ps[] = {0.1, 0.17, 0.5, 0.9};
    const int sk = 96, D = 16;
    for (size_t a = 0; a < 4; a++) {
        uint64_t seed = 0xd509ull + a;
        tcase c, c0;
        tcase_alloc(&c, tu_make_problem(2, 3, 3, 2, sk, D, FD_DT_FP16, FD_MASK_NONE, ps[a]));
        tcase_alloc(&c0, tu_make_problem(2, 3, 3, 2, sk, D, FD_DT_FP16, FD_MASK_NONE, 0.0));
        tcase_random(&c, seed, 1.0, 0);
        tcase_random(&c0, seed, 1.0, 0);
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < 3; h++) {
                const int i = 1;
                unsigned char *keep = keep_mask(&c.p, b, h, i);
                int nk = 0;
                for (int j = 0; j < sk; j++) nk += keep[j];
                double o[16], bo[16], blse, o0[16];
                fd_ref_row_info info, info0;
                ref_row(&c, b, h, i, 128, o, &info);
                ref_row(&c0, b, h, i, 128, o0, &info0);
                brute_row(&c, b, h, i, keep, bo, &blse);
                cr_expect_eq(info.nkept, nk, "p=%g b=%d h=%d: nkept %d, mask keeps %d", ps[a], b, h, info.nkept, nk);
                cr_expect_eq(info0.nkept, sk);
                expect_row_equal("dropout", seed, b, h, i, o, info.lse, bo, blse, D);
                cr_expect(same_bits(info.lse, info0.lse), "p=%g: LSE %a differs from p=0's %a", ps[a], info.lse, info0.lse);
                free(keep);
            }
        tcase_free(&c);
        tcase_free(&c0);
    }
}

/* Rows computed on several OpenMP threads equal the rows computed serially. */
Test(reference, threads_give_the_same_bits, .timeout = 120)
{
    cr_assert(fd_ref_thread_safe(), "this MPFR is not thread-safe (mpfr_buildopt_tls_p() == 0)");
    const int sq = 16, sk = 64, D = 32;
    tcase c;
    tcase_alloc(&c, tu_make_problem(1, 2, 2, sq, sk, D, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.1));
    tcase_random(&c, 0x7d5ull, 1.0, 0);
    const int nrow = 2 * sq;
    double *ser = malloc(sizeof(double) * (size_t)(nrow * (D + 1)));
    double *par = malloc(sizeof(double) * (size_t)(nrow * (D + 1)));
    cr_assert(ser && par);
    int fails = 0;
    for (int r = 0; r < nrow; r++) {
        fd_ref_row_info info;
        if (fd_ref_row(&c.p, c.q, c.k, c.v, 0, r / sq, r % sq, NULL, ser + r * (D + 1), &info, NULL, 0)) fails++;
        ser[r * (D + 1) + D] = info.lse;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(4) schedule(dynamic, 1) reduction(+ : fails)
#endif
    for (int r = 0; r < nrow; r++) {
        fd_ref_row_info info;
        if (fd_ref_row(&c.p, c.q, c.k, c.v, 0, r / sq, r % sq, NULL, par + r * (D + 1), &info, NULL, 0)) fails++;
        par[r * (D + 1) + D] = info.lse;
        fd_ref_thread_cleanup();
    }
    cr_expect_eq(fails, 0);
    for (int x = 0; x < nrow * (D + 1); x++)
        cr_expect(same_bits(ser[x], par[x]), "index %d: serial %a, threaded %a", x, ser[x], par[x]);
    free(ser);
    free(par);
    tcase_free(&c);
}

/* ---------------------------------------------------------------- bad arguments */

static void expect_fail(const fd_problem *p, const float *q, const float *k, const float *v, int b, int h,
                        int i, const fd_ref_opts *opt, double *o, const char *what)
{
    char err[256] = "";
    fd_ref_row_info info;
    int rc = fd_ref_row(p, q, k, v, b, h, i, opt, o, &info, err, sizeof err);
    cr_expect_eq(rc, -1, "%s: expected -1, got %d", what, rc);
    cr_expect(err[0] != '\0', "%s: no error message", what);
}

Test(reference, bad_arguments_give_minus_one_and_a_message)
{
    tcase c;
    tcase_alloc(&c, tu_make_problem(2, 4, 2, 3, 5, 8, FD_DT_FP16, FD_MASK_NONE, 0.0));
    tcase_random(&c, 0xbadull, 1.0, 0);
    double o[8];
    const fd_problem *p = &c.p;
    expect_fail(NULL, c.q, c.k, c.v, 0, 0, 0, NULL, o, "NULL problem");
    expect_fail(p, NULL, c.k, c.v, 0, 0, 0, NULL, o, "NULL q");
    expect_fail(p, c.q, NULL, c.v, 0, 0, 0, NULL, o, "NULL k");
    expect_fail(p, c.q, c.k, NULL, 0, 0, 0, NULL, o, "NULL v");
    expect_fail(p, c.q, c.k, c.v, 0, 0, 0, NULL, NULL, "NULL o");
    expect_fail(p, c.q, c.k, c.v, -1, 0, 0, NULL, o, "b = -1");
    expect_fail(p, c.q, c.k, c.v, 2, 0, 0, NULL, o, "b = batch");
    expect_fail(p, c.q, c.k, c.v, 0, -1, 0, NULL, o, "h = -1");
    expect_fail(p, c.q, c.k, c.v, 0, 4, 0, NULL, o, "h = heads");
    expect_fail(p, c.q, c.k, c.v, 0, 0, -1, NULL, o, "i = -1");
    expect_fail(p, c.q, c.k, c.v, 0, 0, 3, NULL, o, "i = seqlen_q");
    fd_problem bad = *p;
    bad.kv_heads = 3;
    expect_fail(&bad, c.q, c.k, c.v, 0, 0, 0, NULL, o, "heads not a multiple of kv_heads");
    bad = *p;
    bad.dropout_p = 1.0;
    expect_fail(&bad, c.q, c.k, c.v, 0, 0, 0, NULL, o, "dropout_p = 1");
    bad.dropout_p = NAN;
    expect_fail(&bad, c.q, c.k, c.v, 0, 0, 0, NULL, o, "dropout_p = NaN");
    fd_ref_opts opt = {256, 128};
    expect_fail(p, c.q, c.k, c.v, 0, 0, 0, &opt, o, "prec_max < prec0");
    c.k[3] = INFINITY;
    expect_fail(p, c.q, c.k, c.v, 0, 0, 0, NULL, o, "infinite k");
    /* and a good call still works, with a NULL err buffer too */
    c.k[3] = 0.5f;
    cr_expect_eq(fd_ref_row(p, c.q, c.k, c.v, 1, 3, 2, NULL, o, NULL, NULL, 0), 0);
    tcase_free(&c);
}
