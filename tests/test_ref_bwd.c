/* test_ref_bwd.c: the exact backward reference (reference/fd_ref_bwd.c).
 *
 * Closed forms first (one visible key, identical keys, dO = 0, keys no row sees), then
 * seeded random groups against an independent brute force (plain MPFR at 1000 bits,
 * naive loops, the textbook formulas with P normalised first, D = sum P dP and
 * dP_j - D = sum_k P_k (dP_j - dP_k), keep mask
 * from fd_fa2_keep), the dsum = dO . O consistency with the forward reference, listed
 * subsets against the full call, an adversarial group (huge logits, cancellation in
 * dP - D) that must be decided correctly or counted undecided, and bad arguments.
 * Failures print the seed and the values in decimal and %a. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <mpfr.h>

#include "fd_dtype.h"
#include "fd_mods.h"
#include "fd_philox.h"
#include "fd_problem.h"
#include "fd_ref.h"
#include "fd_ref_bwd.h"
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
static float rng_value(uint64_t *s, double sd, fd_dtype t)
{
    return fd_round_to_dtype((float)(sd * rng_normal(s)), t);
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
    float *q, *k, *v, *dout;
} bcase;

static void bcase_alloc(bcase *c, fd_problem p)
{
    c->p = p;
    c->q = calloc(fd_q_numel(&p), sizeof(float));
    c->dout = calloc(fd_q_numel(&p), sizeof(float));
    c->k = calloc(fd_kv_numel(&p), sizeof(float));
    c->v = calloc(fd_kv_numel(&p), sizeof(float));
    cr_assert(c->q && c->k && c->v && c->dout, "out of memory");
}
static void bcase_free(bcase *c)
{
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->dout);
}
static void bcase_random(bcase *c, uint64_t seed, double sd)
{
    uint64_t s = seed;
    fd_dtype t = c->p.dtype;
    for (size_t x = 0; x < fd_q_numel(&c->p); x++) c->q[x] = rng_value(&s, sd, t);
    for (size_t x = 0; x < fd_kv_numel(&c->p); x++) c->k[x] = rng_value(&s, sd, t);
    for (size_t x = 0; x < fd_kv_numel(&c->p); x++) c->v[x] = rng_value(&s, 1.0, t);
    for (size_t x = 0; x < fd_q_numel(&c->p); x++) c->dout[x] = rng_value(&s, 1.0, t);
}

/* The outputs of one group with every query row and key row listed. */
typedef struct {
    int group, sq, sk, D;
    double *dq, *dk, *dv, *dsum; /* [group][sq][D], [sk][D], [sk][D], [group][sq] */
} bres;

static void bres_alloc(bres *r, const fd_problem *p)
{
    r->group = p->heads / p->kv_heads;
    r->sq = p->seqlen_q;
    r->sk = p->seqlen_k;
    r->D = p->head_dim;
    r->dq = calloc((size_t)r->group * (size_t)r->sq * (size_t)r->D, sizeof(double));
    r->dk = calloc((size_t)r->sk * (size_t)r->D, sizeof(double));
    r->dv = calloc((size_t)r->sk * (size_t)r->D, sizeof(double));
    r->dsum = calloc((size_t)r->group * (size_t)r->sq, sizeof(double));
    cr_assert(r->dq && r->dk && r->dv && r->dsum, "out of memory");
}
static void bres_free(bres *r)
{
    free(r->dq);
    free(r->dk);
    free(r->dv);
    free(r->dsum);
}

/* fd_ref_bwd_group with every row listed, rc checked. */
static fd_ref_bwd_info ref_group(const bcase *c, int b, int hk, int prec0, int prec_max,
                                 bres *r)
{
    int *qr = malloc((size_t)c->p.seqlen_q * sizeof(int));
    int *kr = malloc((size_t)c->p.seqlen_k * sizeof(int));
    cr_assert(qr && kr);
    for (int i = 0; i < c->p.seqlen_q; i++) qr[i] = i;
    for (int j = 0; j < c->p.seqlen_k; j++) kr[j] = j;
    fd_ref_opts opt = {prec0, prec_max};
    fd_ref_bwd_info info = {-1, -1};
    char err[256] = "";
    int rc = fd_ref_bwd_group(&c->p, c->q, c->k, c->v, c->dout, b, hk, qr, c->p.seqlen_q, kr,
                              c->p.seqlen_k, &opt, r->dq, r->dk, r->dv, r->dsum, &info, err,
                              sizeof err);
    cr_assert_eq(rc, 0, "fd_ref_bwd_group(b=%d hk=%d) failed: %s", b, hk, err);
    free(qr);
    free(kr);
    return info;
}

static double rnd(mpfr_srcptr x) { return mpfr_zero_p(x) ? 0.0 : mpfr_get_d(x, MPFR_RNDN); }

/* The brute force: MPFR at W bits, naive loops, the textbook order (P_ij normalised
 * first, D_i = sum_j P_ij dP_ij, dS from pairwise differences: O(n^2) per row), no
 * intervals, no error bound. Its relative error is
 * ~2^-(W-20) per value barring catastrophic cancellation, far below a binary64 ulp. */
static void brute_group(const bcase *c, int b, int hk, mpfr_prec_t W, bres *r)
{
    const fd_problem *p = &c->p;
    const int group = r->group, D = r->D, sq = r->sq, sk = r->sk;
    const int drop = p->dropout_p > 0.0;
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    mpfr_t *s = malloc((size_t)sk * sizeof(mpfr_t)), *dP = malloc((size_t)sk * sizeof(mpfr_t));
    mpfr_t *dS = malloc((size_t)sk * sizeof(mpfr_t)), *th = malloc((size_t)sk * sizeof(mpfr_t));
    mpfr_t *dka = malloc((size_t)sk * (size_t)D * sizeof(mpfr_t));
    mpfr_t *dva = malloc((size_t)sk * (size_t)D * sizeof(mpfr_t));
    unsigned char *keep = malloc((size_t)sk);
    cr_assert(s && dP && dS && dka && dva && keep);
    cr_assert(th);
    for (int j = 0; j < sk; j++) mpfr_inits2(W, s[j], dP[j], dS[j], th[j], (mpfr_ptr)0);
    for (int x = 0; x < sk * D; x++) {
        mpfr_inits2(W, dka[x], dva[x], (mpfr_ptr)0);
        mpfr_set_zero(dka[x], 1);
        mpfr_set_zero(dva[x], 1);
    }
    mpfr_t x, y, m, l, Dv, rr, sc, acc;
    mpfr_inits2(W, x, y, m, l, Dv, rr, sc, acc, (mpfr_ptr)0);
    mpfr_set_d(x, p->dropout_p, MPFR_RNDN);
    mpfr_ui_sub(rr, 1, x, MPFR_RNDN);
    mpfr_ui_div(rr, 1, rr, MPFR_RNDN);
    mpfr_set_flt(sc, p->softmax_scale, MPFR_RNDN);
    for (int hh = 0; hh < group; hh++) {
        const int h = hk * group + hh;
        for (int i = 0; i < sq; i++) {
            double *dqi = r->dq + ((size_t)hh * (size_t)sq + (size_t)i) * (size_t)D;
            int lo, hi;
            const int n = fd_mask_visible_range(p, i, &lo, &hi);
            if (n == 0) {
                for (int d = 0; d < D; d++) dqi[d] = 0.0;
                r->dsum[hh * sq + i] = 0.0;
                continue;
            }
            const float *qi = c->q + fd_q_index(p, b, i, h, 0);
            const float *doi = c->dout + fd_q_index(p, b, i, h, 0);
            for (int j = lo; j <= hi; j++) {
                const float *kj = c->k + fd_kv_index(p, b, j, hk, 0);
                const float *vj = c->v + fd_kv_index(p, b, j, hk, 0);
                keep[j] = (unsigned char)(!drop ||
                                          fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j));
                mpfr_set_zero(s[j], 1);
                mpfr_set_zero(dP[j], 1);
                for (int d = 0; d < D; d++) {
                    mpfr_set_flt(x, qi[d], MPFR_RNDN);
                    mpfr_set_flt(y, kj[d], MPFR_RNDN);
                    mpfr_mul(x, x, y, MPFR_RNDN);
                    mpfr_add(s[j], s[j], x, MPFR_RNDN);
                    mpfr_set_flt(x, doi[d], MPFR_RNDN);
                    mpfr_set_flt(y, vj[d], MPFR_RNDN);
                    mpfr_mul(x, x, y, MPFR_RNDN);
                    mpfr_add(dP[j], dP[j], x, MPFR_RNDN);
                }
                mpfr_mul(s[j], s[j], sc, MPFR_RNDN);
                if (p->softcap > 0.0f) { /* l = c tanh(s / c), th[j] = tanh(s / c) */
                    mpfr_div_d(th[j], s[j], (double)p->softcap, MPFR_RNDN);
                    mpfr_tanh(th[j], th[j], MPFR_RNDN);
                    mpfr_mul_d(s[j], th[j], (double)p->softcap, MPFR_RNDN);
                }
                if (p->alibi) {
                    mpfr_set_flt(x, p->alibi_slopes[h], MPFR_RNDN);
                    mpfr_mul_si(x, x, fd_alibi_dist(i, j, sq, sk), MPFR_RNDN);
                    mpfr_sub(s[j], s[j], x, MPFR_RNDN);
                }
                if (keep[j]) mpfr_mul(dP[j], dP[j], rr, MPFR_RNDN);
                else mpfr_set_zero(dP[j], 1);
            }
            mpfr_set(m, s[lo], MPFR_RNDN);
            for (int j = lo + 1; j <= hi; j++) mpfr_max(m, m, s[j], MPFR_RNDN);
            mpfr_set_zero(l, 1);
            for (int j = lo; j <= hi; j++) {
                mpfr_sub(s[j], s[j], m, MPFR_RNDN);
                mpfr_exp(s[j], s[j], MPFR_RNDN);
                mpfr_add(l, l, s[j], MPFR_RNDN);
            }
            mpfr_set_zero(Dv, 1);
            for (int j = lo; j <= hi; j++) {
                mpfr_div(s[j], s[j], l, MPFR_RNDN); /* P_ij */
                mpfr_mul(x, s[j], dP[j], MPFR_RNDN);
                mpfr_add(Dv, Dv, x, MPFR_RNDN);
            }
            r->dsum[hh * sq + i] = rnd(Dv);
            /* dS_ij = P_ij (dP_ij - D_i) with dP_ij - D_i = sum_k P_ik (dP_ij - dP_ik)
             * (sum_k P_ik = 1): written out, so that when one key dominates and the others'
             * weights are below 2^-1000 (P_im rounds to 1) dS_im keeps its tiny true value
             * and sign instead of a rounding residue; dS[j] := dS_ij */
            for (int j = lo; j <= hi; j++) {
                mpfr_set_zero(acc, 1);
                for (int k2 = lo; k2 <= hi; k2++) {
                    mpfr_sub(x, dP[j], dP[k2], MPFR_RNDN);
                    mpfr_mul(x, x, s[k2], MPFR_RNDN);
                    mpfr_add(acc, acc, x, MPFR_RNDN);
                }
                mpfr_mul(dS[j], acc, s[j], MPFR_RNDN);
                if (p->softcap > 0.0f) { /* d l / d s = 1 - tanh^2 */
                    mpfr_sqr(x, th[j], MPFR_RNDN);
                    mpfr_ui_sub(x, 1, x, MPFR_RNDN);
                    mpfr_mul(dS[j], dS[j], x, MPFR_RNDN);
                }
            }
            for (int j = lo; j <= hi; j++) mpfr_set(dP[j], dS[j], MPFR_RNDN);
            for (int d = 0; d < D; d++) {
                mpfr_set_zero(acc, 1);
                for (int j = lo; j <= hi; j++) {
                    mpfr_set_flt(x, c->k[fd_kv_index(p, b, j, hk, d)], MPFR_RNDN);
                    mpfr_mul(x, x, dP[j], MPFR_RNDN);
                    mpfr_add(acc, acc, x, MPFR_RNDN);
                }
                mpfr_mul(acc, acc, sc, MPFR_RNDN);
                dqi[d] = rnd(acc);
            }
            for (int j = lo; j <= hi; j++)
                for (int d = 0; d < D; d++) {
                    mpfr_set_flt(x, qi[d], MPFR_RNDN);
                    mpfr_mul(x, x, dP[j], MPFR_RNDN);
                    mpfr_add(dka[j * D + d], dka[j * D + d], x, MPFR_RNDN);
                    if (!keep[j]) continue;
                    mpfr_set_flt(x, doi[d], MPFR_RNDN);
                    mpfr_mul(x, x, s[j], MPFR_RNDN);
                    mpfr_mul(x, x, rr, MPFR_RNDN);
                    mpfr_add(dva[j * D + d], dva[j * D + d], x, MPFR_RNDN);
                }
        }
    }
    for (int t = 0; t < sk * D; t++) {
        mpfr_mul(dka[t], dka[t], sc, MPFR_RNDN);
        r->dk[t] = rnd(dka[t]);
        r->dv[t] = rnd(dva[t]);
        mpfr_clears(dka[t], dva[t], (mpfr_ptr)0);
    }
    for (int j = 0; j < sk; j++) mpfr_clears(s[j], dP[j], dS[j], th[j], (mpfr_ptr)0);
    free(th);
    mpfr_clears(x, y, m, l, Dv, rr, sc, acc, (mpfr_ptr)0);
    free(s);
    free(dP);
    free(dS);
    free(dka);
    free(dva);
    free(keep);
}

static int zero_sign_free;
static int is_zero(double x) { return !(x < 0.0 || x > 0.0); }
static void expect_same(const char *what, uint64_t seed, const char *name, size_t idx, double got,
                        double want)
{
    if (zero_sign_free && is_zero(want) && same_bits(got, 0.0)) return;
    cr_expect(same_bits(got, want), "%s: seed %#llx %s[%zu]: got %.17g (%a), expected %.17g (%a)",
              what, (unsigned long long)seed, name, idx, got, got, want, want);
}

/* Every value of got equals want bit for bit; with zero_sign_free, a brute-force zero of
 * either sign also accepts +0 (see the adversarial test). */
static void expect_all_same(const char *what, uint64_t seed, const bres *got, const bres *want)
{
    size_t nq = (size_t)got->group * (size_t)got->sq, nk = (size_t)got->sk * (size_t)got->D;
    for (size_t x = 0; x < nq * (size_t)got->D; x++) expect_same(what, seed, "dq", x, got->dq[x], want->dq[x]);
    for (size_t x = 0; x < nk; x++) expect_same(what, seed, "dk", x, got->dk[x], want->dk[x]);
    for (size_t x = 0; x < nk; x++) expect_same(what, seed, "dv", x, got->dv[x], want->dv[x]);
    for (size_t x = 0; x < nq; x++) expect_same(what, seed, "dsum", x, got->dsum[x], want->dsum[x]);
}

/* ---------------------------------------------------------------- closed forms */

/* One key (sq = sk = 1): P = 1 exactly, so dP - D = 0, dS = 0 and dQ = dK = +0 exactly;
 * D_i = dO_i . v_0 and dV_0 = sum over the group's heads of dO^h_0 (p = 0). All of these
 * are computed here in MPFR at 200 bits, exact for these few fp16 products, then rounded. */
Test(ref_bwd, one_visible_key_gives_zero_dq_dk_and_summed_dv)
{
    bcase c;
    bcase_alloc(&c, tu_make_problem(1, 4, 2, 1, 1, 8, FD_DT_FP16, FD_MASK_NONE, 0.0));
    bcase_random(&c, 0x0e1ull, 1.0);
    for (int hk = 0; hk < 2; hk++) {
        bres r;
        bres_alloc(&r, &c.p);
        fd_ref_bwd_info info = ref_group(&c, 0, hk, 128, 2048, &r);
        cr_expect_eq(info.undecided, 0);
        cr_expect_eq(info.prec_used, 128, "exact case needs no retry, used %d", info.prec_used);
        mpfr_t a, x;
        mpfr_inits2(200, a, x, (mpfr_ptr)0);
        for (int d = 0; d < 8; d++) {
            cr_expect(same_bits(r.dk[d], 0.0), "dk[%d] = %a", d, r.dk[d]);
            mpfr_set_zero(a, 1);
            for (int hh = 0; hh < 2; hh++) {
                cr_expect(same_bits(r.dq[hh * 8 + d], 0.0), "dq[%d][%d] = %a", hh, d, r.dq[hh * 8 + d]);
                mpfr_set_flt(x, c.dout[fd_q_index(&c.p, 0, 0, hk * 2 + hh, d)], MPFR_RNDN);
                mpfr_add(a, a, x, MPFR_RNDN);
            }
            cr_expect(same_bits(r.dv[d], mpfr_get_d(a, MPFR_RNDN)), "dv[%d] = %a, expected %a", d,
                      r.dv[d], mpfr_get_d(a, MPFR_RNDN));
        }
        for (int hh = 0; hh < 2; hh++) {
            mpfr_set_zero(a, 1);
            for (int d = 0; d < 8; d++) {
                mpfr_set_flt(x, c.dout[fd_q_index(&c.p, 0, 0, hk * 2 + hh, d)], MPFR_RNDN);
                mpfr_mul_d(x, x, (double)c.v[fd_kv_index(&c.p, 0, 0, hk, d)], MPFR_RNDN);
                mpfr_add(a, a, x, MPFR_RNDN);
            }
            cr_expect(same_bits(r.dsum[hh], mpfr_get_d(a, MPFR_RNDN)), "dsum[%d] = %a, expected %a",
                      hh, r.dsum[hh], mpfr_get_d(a, MPFR_RNDN));
        }
        mpfr_clears(a, x, (mpfr_ptr)0);
        bres_free(&r);
    }
    bcase_free(&c);
}

/* causal_tl: row 0 sees key 0 only, so its dQ is exactly +0 whatever the other rows do. */
Test(ref_bwd, causal_row_with_one_key_has_zero_dq)
{
    bcase c;
    bcase_alloc(&c, tu_make_problem(1, 2, 1, 5, 5, 16, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.2));
    bcase_random(&c, 0x0e2ull, 1.0);
    bres r;
    bres_alloc(&r, &c.p);
    fd_ref_bwd_info info = ref_group(&c, 0, 0, 128, 2048, &r);
    cr_expect_eq(info.undecided, 0);
    for (int hh = 0; hh < 2; hh++)
        for (int d = 0; d < 16; d++)
            cr_expect(same_bits(r.dq[(size_t)hh * 5 * 16 + (size_t)d], 0.0), "dq[%d][0][%d] = %a", hh,
                      d, r.dq[(size_t)hh * 5 * 16 + (size_t)d]);
    bres_free(&r);
    bcase_free(&c);
}

/* Identical keys (and values): P = 1/n uniform and dP_ij = dO_i . v the same for every j,
 * so D_i = dP_i, dS = 0: dQ = dK = +0, and dV_j = sum_h sum_i dO^h_i / n exactly. */
Test(ref_bwd, identical_keys_give_uniform_p)
{
    const int sq = 5, sk = 4, D = 16;
    bcase c;
    bcase_alloc(&c, tu_make_problem(1, 2, 1, sq, sk, D, FD_DT_FP16, FD_MASK_NONE, 0.0));
    bcase_random(&c, 0x0e3ull, 1.0);
    for (int j = 1; j < sk; j++)
        for (int d = 0; d < D; d++) {
            c.k[fd_kv_index(&c.p, 0, j, 0, d)] = c.k[fd_kv_index(&c.p, 0, 0, 0, d)];
            c.v[fd_kv_index(&c.p, 0, j, 0, d)] = c.v[fd_kv_index(&c.p, 0, 0, 0, d)];
        }
    bres r;
    bres_alloc(&r, &c.p);
    fd_ref_bwd_info info = ref_group(&c, 0, 0, 128, 2048, &r);
    cr_expect_eq(info.undecided, 0);
    mpfr_t a, x;
    mpfr_inits2(200, a, x, (mpfr_ptr)0);
    for (int d = 0; d < D; d++) {
        mpfr_set_zero(a, 1);
        for (int hh = 0; hh < 2; hh++)
            for (int i = 0; i < sq; i++) {
                mpfr_set_flt(x, c.dout[fd_q_index(&c.p, 0, i, hh, d)], MPFR_RNDN);
                mpfr_add(a, a, x, MPFR_RNDN);
            }
        mpfr_div_ui(a, a, (unsigned long)sk, MPFR_RNDN);
        double want = mpfr_get_d(a, MPFR_RNDN);
        for (int j = 0; j < sk; j++) {
            cr_expect(same_bits(r.dv[j * D + d], want), "dv[%d][%d] = %a, expected %a", j, d,
                      r.dv[j * D + d], want);
            cr_expect(same_bits(r.dk[j * D + d], 0.0), "dk[%d][%d] = %a", j, d, r.dk[j * D + d]);
        }
    }
    for (size_t x2 = 0; x2 < (size_t)(2 * sq * D); x2++)
        cr_expect(same_bits(r.dq[x2], 0.0), "dq[%zu] = %a", x2, r.dq[x2]);
    mpfr_clears(a, x, (mpfr_ptr)0);
    bres_free(&r);
    bcase_free(&c);
}

/* dO = 0: dP = D = dS = 0 and dV = 0, every value exactly +0 (dropout and a mask too);
 * causal_br with sq > sk also has rows that see no key. */
Test(ref_bwd, zero_dout_gives_all_zero)
{
    bcase c;
    bcase_alloc(&c, tu_make_problem(2, 4, 2, 7, 4, 8, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.2));
    bcase_random(&c, 0x0e4ull, 1.0);
    memset(c.dout, 0, fd_q_numel(&c.p) * sizeof(float));
    bres r;
    bres_alloc(&r, &c.p);
    fd_ref_bwd_info info = ref_group(&c, 1, 1, 128, 2048, &r);
    cr_expect_eq(info.undecided, 0);
    cr_expect_eq(info.prec_used, 128);
    for (size_t x = 0; x < (size_t)2 * 7 * 8; x++) cr_expect(same_bits(r.dq[x], 0.0), "dq[%zu]", x);
    for (size_t x = 0; x < (size_t)4 * 8; x++) {
        cr_expect(same_bits(r.dk[x], 0.0), "dk[%zu]", x);
        cr_expect(same_bits(r.dv[x], 0.0), "dv[%zu]", x);
    }
    for (size_t x = 0; x < (size_t)2 * 7; x++) cr_expect(same_bits(r.dsum[x], 0.0), "dsum[%zu]", x);
    bres_free(&r);
    bcase_free(&c);
}

/* causal_tl with sk > sq: keys sq .. sk-1 are seen by no row, dK = dV = +0 there. */
Test(ref_bwd, keys_no_row_sees_give_zero)
{
    bcase c;
    bcase_alloc(&c, tu_make_problem(1, 2, 2, 3, 6, 8, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.0));
    bcase_random(&c, 0x0e5ull, 1.0);
    bres r;
    bres_alloc(&r, &c.p);
    fd_ref_bwd_info info = ref_group(&c, 0, 1, 128, 2048, &r);
    cr_expect_eq(info.undecided, 0);
    for (int j = 3; j < 6; j++)
        for (int d = 0; d < 8; d++) {
            cr_expect(same_bits(r.dk[j * 8 + d], 0.0), "dk[%d][%d] = %a", j, d, r.dk[j * 8 + d]);
            cr_expect(same_bits(r.dv[j * 8 + d], 0.0), "dv[%d][%d] = %a", j, d, r.dv[j * 8 + d]);
        }
    bres_free(&r);
    bcase_free(&c);
}

/* ---------------------------------------------------------------- random groups */

typedef struct {
    fd_dtype t;
    fd_mask_kind mask;
    int heads, kv_heads, sq, sk;
    double p;
} rcfg;

static const rcfg random_cfgs[] = {
    {FD_DT_FP16, FD_MASK_NONE, 4, 2, 9, 9, 0.0},
    {FD_DT_BF16, FD_MASK_NONE, 4, 2, 8, 11, 0.2},
    {FD_DT_FP16, FD_MASK_CAUSAL_TL, 2, 1, 7, 10, 0.0},
    {FD_DT_BF16, FD_MASK_CAUSAL_TL, 4, 2, 10, 7, 0.2},
    {FD_DT_FP16, FD_MASK_CAUSAL_BR, 4, 2, 10, 6, 0.2},
    {FD_DT_BF16, FD_MASK_CAUSAL_BR, 4, 2, 5, 9, 0.0},
    {FD_DT_FP32, FD_MASK_CAUSAL_BR, 4, 2, 6, 9, 0.2},
};

Test(ref_bwd, equals_brute_force, .timeout = 300)
{
    for (size_t ci = 0; ci < sizeof random_cfgs / sizeof random_cfgs[0]; ci++) {
        const rcfg *g = &random_cfgs[ci];
        uint64_t seed = 0xb00ull + ci;
        bcase c;
        bcase_alloc(&c, tu_make_problem(2, g->heads, g->kv_heads, g->sq, g->sk, 16, g->t, g->mask, g->p));
        bcase_random(&c, seed, 1.5);
        for (int hk = 0; hk < g->kv_heads; hk++) {
            bres r, w;
            bres_alloc(&r, &c.p);
            bres_alloc(&w, &c.p);
            fd_ref_bwd_info info = ref_group(&c, 1, hk, 128, 2048, &r);
            cr_expect_eq(info.undecided, 0, "cfg %zu hk %d: %d undecided", ci, hk, info.undecided);
            brute_group(&c, 1, hk, 1000, &w);
            char what[64];
            snprintf(what, sizeof what, "cfg %zu hk %d", ci, hk);
            expect_all_same(what, seed, &r, &w);
            bres_free(&r);
            bres_free(&w);
        }
        bcase_free(&c);
    }
}

/* The score modifiers (window, ALiBi, softcap; alone and together, with GQA, dropout and
 * both orders of unequal lengths) against the brute force at 1000 bits: every value
 * decided and equal (the brute force's logits and 1 - tanh^2 are plain MPFR). */
typedef struct {
    rcfg g;
    int window, wl, wr;
    float cap;
    int alibi;
} mcfg;

static const mcfg mods_cfgs[] = {
    {{FD_DT_FP16, FD_MASK_NONE, 4, 2, 9, 9, 0.0}, 1, 2, 1, 0.0f, 0},
    {{FD_DT_BF16, FD_MASK_CAUSAL_BR, 4, 2, 7, 11, 0.2}, 1, 3, -1, 0.0f, 0},
    {{FD_DT_FP16, FD_MASK_NONE, 4, 2, 11, 6, 0.0}, 1, 1, 0, 0.0f, 0}, /* rows with no key */
    {{FD_DT_FP16, FD_MASK_NONE, 4, 2, 9, 9, 0.0}, 0, 0, 0, 0.0f, 1},
    {{FD_DT_BF16, FD_MASK_CAUSAL_BR, 4, 4, 6, 10, 0.2}, 0, 0, 0, 0.0f, 1},
    {{FD_DT_FP16, FD_MASK_NONE, 4, 2, 9, 9, 0.0}, 0, 0, 0, 2.0f, 0},
    {{FD_DT_FP32, FD_MASK_CAUSAL_TL, 2, 1, 8, 8, 0.2}, 0, 0, 0, 5.0f, 0},
    {{FD_DT_BF16, FD_MASK_CAUSAL_BR, 4, 2, 10, 7, 0.2}, 1, 4, -1, 3.0f, 1},
};

Test(ref_bwd, mods_equal_brute_force, .timeout = 300)
{
    for (size_t ci = 0; ci < sizeof mods_cfgs / sizeof mods_cfgs[0]; ci++) {
        const mcfg *m = &mods_cfgs[ci];
        const rcfg *g = &m->g;
        uint64_t seed = 0xc0dull + ci;
        bcase c;
        fd_problem p = tu_make_problem(2, g->heads, g->kv_heads, g->sq, g->sk, 16, g->t, g->mask, g->p);
        p.window = m->window;
        p.window_left = m->wl;
        p.window_right = m->wr;
        p.softcap = m->cap;
        p.alibi = m->alibi;
        if (p.alibi) fd_alibi_default_slopes(p.heads, p.alibi_slopes);
        bcase_alloc(&c, p);
        bcase_random(&c, seed, 1.5);
        for (int hk = 0; hk < g->kv_heads; hk++) {
            bres r, w;
            bres_alloc(&r, &c.p);
            bres_alloc(&w, &c.p);
            fd_ref_bwd_info info = ref_group(&c, 1, hk, 128, 2048, &r);
            cr_expect_eq(info.undecided, 0, "mods cfg %zu hk %d: %d undecided", ci, hk, info.undecided);
            brute_group(&c, 1, hk, 1000, &w);
            char what[64];
            snprintf(what, sizeof what, "mods cfg %zu hk %d", ci, hk);
            expect_all_same(what, seed, &r, &w);
            bres_free(&r);
            bres_free(&w);
        }
        bcase_free(&c);
    }
}

/* Decisiveness across precisions: fp32 inputs with binary exponents spread over
 * [-8, 8] (logit gaps up to ~1e6 nats: weights far below binary64's range, within
 * MPFR's; gaps beyond ~7e8 would underflow MPFR itself, see docs/reference.md). A run confined to
 * 64 bits may leave values undecided, but every value it decides equals the default run's
 * (prec0 = 128 up to 2048), whose decided values equal the brute force. */
Test(ref_bwd, decisive_across_precisions, .timeout = 300)
{
    for (int k = 0; k < 3; k++) {
        uint64_t seed = UINT64_C(0x5d0) + (uint64_t)k;
        uint64_t st = seed;
        bcase c;
        bcase_alloc(&c, tu_make_problem(1, 2, 1, 6, 7, 8, FD_DT_FP32, k == 1 ? FD_MASK_CAUSAL_BR : FD_MASK_NONE,
                                     k == 2 ? 0.2 : 0.0));
        bcase_random(&c, seed, 1.0);
        float *arrs[2] = {c.q, c.k};
        size_t lens[2] = {fd_q_numel(&c.p), fd_kv_numel(&c.p)};
        for (int a = 0; a < 2; a++)
            for (size_t x = 0; x < lens[a]; x++)
                arrs[a][x] = ldexpf(arrs[a][x], (int)(rng_next(&st) % 17u) - 8);
        bres lo, hi, w;
        bres_alloc(&lo, &c.p);
        bres_alloc(&hi, &c.p);
        bres_alloc(&w, &c.p);
        fd_ref_bwd_info ilo = ref_group(&c, 0, 0, 64, 64, &lo);
        fd_ref_bwd_info ihi = ref_group(&c, 0, 0, 128, 2048, &hi);
        brute_group(&c, 0, 0, 1000, &w);
        /* A value within e^-(huge gap) of a binary64 midpoint (seed 0x5d0 has one, about
         * -1.2488371289931644581, a midpoint to the 30 digits printed at 2048 bits; e.g.
         * D_i = g0 + M_i with an exact 54-bit g0) cannot be decided below ~gap/ln2 bits: the
         * reference counts it,
         * and the 1000-bit brute force cannot resolve it (it rounds the tie to even). So: decided
         * values equal the brute force (at most `undecided` values differ), few undecided. */
        size_t nq = (size_t)2 * 6 * 8, nkd = (size_t)7 * 8, nds = (size_t)2 * 6;
        size_t dw = 0, diff = 0;
        for (size_t x = 0; x < nq; x++) dw += !same_bits(hi.dq[x], w.dq[x]);
        for (size_t x = 0; x < nkd; x++)
            dw += (size_t)(!same_bits(hi.dk[x], w.dk[x]) + !same_bits(hi.dv[x], w.dv[x]));
        for (size_t x = 0; x < nds; x++) dw += !same_bits(hi.dsum[x], w.dsum[x]);
        cr_expect(dw <= (size_t)ihi.undecided, "seed %#llx: %zu differ from the brute force, %d "
                  "undecided", (unsigned long long)seed, dw, ihi.undecided);
        cr_expect(ihi.undecided <= 2, "seed %#llx: %d undecided", (unsigned long long)seed,
                  ihi.undecided);
        for (size_t x = 0; x < nq; x++) diff += !same_bits(lo.dq[x], hi.dq[x]);
        for (size_t x = 0; x < nkd; x++)
            diff += (size_t)(!same_bits(lo.dk[x], hi.dk[x]) + !same_bits(lo.dv[x], hi.dv[x]));
        for (size_t x = 0; x < nds; x++) diff += !same_bits(lo.dsum[x], hi.dsum[x]);
        cr_expect(diff <= (size_t)ilo.undecided + (size_t)ihi.undecided,
                  "seed %#llx: 64 bits: %zu differ, %d undecided", (unsigned long long)seed, diff,
                  ilo.undecided);
        cr_log_info("spread seed %#llx: 64 bits: %d undecided, %zu differ; default: %d undecided, "
                    "prec_used %d, %zu differ from the brute force", (unsigned long long)seed,
                    ilo.undecided, diff, ihi.undecided, ihi.prec_used, dw);
        bres_free(&lo);
        bres_free(&hi);
        bres_free(&w);
        bcase_free(&c);
    }
}

/* Listing a subset (out of order, a duplicate) gives the same values as the full call. */
Test(ref_bwd, listed_subsets_equal_the_full_call)
{
    bcase c;
    bcase_alloc(&c, tu_make_problem(1, 4, 2, 8, 8, 8, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.2));
    bcase_random(&c, 0x5b5ull, 1.0);
    bres full;
    bres_alloc(&full, &c.p);
    ref_group(&c, 0, 1, 128, 2048, &full);
    const int qr[3] = {5, 2, 5}, kr[2] = {6, 0};
    double dq[2 * 3 * 8], dk[2 * 8], dv[2 * 8], ds[2 * 3];
    char err[256] = "";
    fd_ref_bwd_info info;
    int rc = fd_ref_bwd_group(&c.p, c.q, c.k, c.v, c.dout, 0, 1, qr, 3, kr, 2, NULL, dq, dk, dv, ds,
                              &info, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect_eq(info.undecided, 0);
    for (int hh = 0; hh < 2; hh++)
        for (int t = 0; t < 3; t++) {
            expect_same("subset", 0, "dsum", (size_t)(hh * 3 + t), ds[hh * 3 + t],
                        full.dsum[hh * 8 + qr[t]]);
            for (int d = 0; d < 8; d++)
                expect_same("subset", 0, "dq", (size_t)((hh * 3 + t) * 8 + d), dq[(hh * 3 + t) * 8 + d],
                            full.dq[(hh * 8 + qr[t]) * 8 + d]);
        }
    for (int t = 0; t < 2; t++)
        for (int d = 0; d < 8; d++) {
            expect_same("subset", 0, "dk", (size_t)(t * 8 + d), dk[t * 8 + d], full.dk[kr[t] * 8 + d]);
            expect_same("subset", 0, "dv", (size_t)(t * 8 + d), dv[t * 8 + d], full.dv[kr[t] * 8 + d]);
        }
    /* no rows at all: valid, nothing written, no output pointers needed */
    rc = fd_ref_bwd_group(&c.p, c.q, c.k, c.v, c.dout, 0, 1, NULL, 0, NULL, 0, NULL, NULL, NULL,
                          NULL, NULL, &info, err, sizeof err);
    cr_expect_eq(rc, 0, "%s", err);
    bres_free(&full);
    bcase_free(&c);
}

/* D_i = sum_j P_ij dP_ij = dO_i . O_i with O from the forward reference (dropout
 * included): agreement to ~1e-15 relative to sum_d |dO_id O_id|. */
Test(ref_bwd, dsum_is_dout_dot_o)
{
    bcase c;
    bcase_alloc(&c, tu_make_problem(1, 4, 2, 9, 12, 16, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.2));
    bcase_random(&c, 0xd5ull, 1.0);
    for (int hk = 0; hk < 2; hk++) {
        bres r;
        bres_alloc(&r, &c.p);
        ref_group(&c, 0, hk, 128, 2048, &r);
        for (int hh = 0; hh < 2; hh++)
            for (int i = 0; i < 9; i++) {
                double o[16], dot = 0.0, mag = 0.0;
                char err[256] = "";
                int h = hk * 2 + hh;
                cr_assert_eq(fd_ref_row(&c.p, c.q, c.k, c.v, 0, h, i, NULL, o, NULL, err, sizeof err),
                             0, "%s", err);
                for (int d = 0; d < 16; d++) {
                    double t = (double)c.dout[fd_q_index(&c.p, 0, i, h, d)] * o[d];
                    dot += t;
                    mag += fabs(t);
                }
                double got = r.dsum[hh * 9 + i];
                cr_expect(fabs(got - dot) <= 1e-15 * mag + 1e-300,
                          "h=%d i=%d: dsum %.17g, dO . O %.17g (|.| sum %.3g)", h, i, got, dot, mag);
            }
        bres_free(&r);
    }
    bcase_free(&c);
}

/* ---------------------------------------------------------------- adversarial */

/* Huge logits (|s| ~ 1e4, spread ~ 1e4 between keys), two near-tied dominant keys whose
 * V rows differ in one bit (dP_i0 - D_i cancels to ~2^-24 relative), a key ~ 745 below
 * (weight ~ e^-745, the binary64 underflow edge), a constant K column (dQ there is 0
 * exactly, decided thanks to the centring in row_dq), and dropout. Decided values must equal
 * a 4000-bit brute force; undecided ones are only counted. At prec_max = 128 some values
 * may be undecided; at the default prec_max none should be. */
Test(ref_bwd, adversarial_is_decided_or_counted_never_wrong, .timeout = 300)
{
    const int sq = 4, sk = 6, D = 4;
    bcase c;
    bcase_alloc(&c, tu_make_problem(1, 2, 1, sq, sk, D, FD_DT_FP32, FD_MASK_NONE, 0.2));
    c.p.softmax_scale = 0.5f;
    uint64_t s = 0xad7ull;
    for (size_t x = 0; x < fd_q_numel(&c.p); x++) c.dout[x] = (float)rng_normal(&s);
    for (int i = 0; i < sq; i++)
        for (int hh = 0; hh < 2; hh++)
            for (int d = 0; d < D; d++) c.q[fd_q_index(&c.p, 0, i, hh, d)] = d == 0 ? 100.0f + (float)i : 0.0f;
    /* s_ij = 0.5 * q_i0 * k_j0: keys 0, 1 tie up to one ulp of k; key 2 is ~745 nats lower
     * for row 0; keys 3..5 are thousands below */
    const float k0[6] = {200.0f, nextafterf(200.0f, 0.0f), 200.0f - 14.9f, -50.0f, 20.0f, -200.0f};
    for (int j = 0; j < sk; j++)
        for (int d = 0; d < D; d++) {
            c.k[fd_kv_index(&c.p, 0, j, 0, d)] = d == 0 ? k0[j] : (float)rng_normal(&s);
            c.v[fd_kv_index(&c.p, 0, j, 0, d)] = (float)rng_normal(&s);
        }
    for (int j = 0; j < sk; j++) c.k[fd_kv_index(&c.p, 0, j, 0, 3)] = 0.375f; /* constant column */
    for (int d = 0; d < D; d++) { /* v_1 = v_0 but for one bit */
        float v0 = c.v[fd_kv_index(&c.p, 0, 0, 0, d)];
        c.v[fd_kv_index(&c.p, 0, 1, 0, d)] = d == 1 ? nextafterf(v0, INFINITY) : v0;
    }
    bres w;
    bres_alloc(&w, &c.p);
    brute_group(&c, 0, 0, 4000, &w);
    const int pmax[2] = {128, 2048};
    for (int t = 0; t < 2; t++) {
        bres r;
        bres_alloc(&r, &c.p);
        int *qr = malloc((size_t)sq * sizeof(int)), *kr = malloc((size_t)sk * sizeof(int));
        cr_assert(qr && kr);
        for (int i = 0; i < sq; i++) qr[i] = i;
        for (int j = 0; j < sk; j++) kr[j] = j;
        fd_ref_opts opt = {128, pmax[t]};
        fd_ref_bwd_info info;
        char err[256] = "";
        cr_assert_eq(fd_ref_bwd_group(&c.p, c.q, c.k, c.v, c.dout, 0, 0, qr, sq, kr, sk, &opt, r.dq,
                                      r.dk, r.dv, r.dsum, &info, err, sizeof err),
                     0, "%s", err);
        /* an undecided value may be anything; count the decided mismatches: there must be
         * none, and the undecided count bounds the values allowed to differ. The constant K
         * column's dQ is exactly 0 (+0 here); the 4000-bit brute force computes it as
         * ~2^-4000 noise, whose binary64 rounding is a zero of either sign: any brute zero
         * accepts +0 there. */
        size_t nq = (size_t)2 * (size_t)sq, nkd = (size_t)sk * (size_t)D, diff = 0;
        for (size_t x = 0; x < nq * (size_t)D; x++)
            diff += !same_bits(r.dq[x], w.dq[x]) && !(is_zero(w.dq[x]) && same_bits(r.dq[x], 0.0));
        for (size_t x = 0; x < nkd; x++) diff += (size_t)(!same_bits(r.dk[x], w.dk[x]) + !same_bits(r.dv[x], w.dv[x]));
        for (size_t x = 0; x < nq; x++) diff += !same_bits(r.dsum[x], w.dsum[x]);
        cr_expect(diff <= (size_t)info.undecided,
                  "prec_max %d: %zu values differ from the brute force, only %d undecided", pmax[t],
                  diff, info.undecided);
        if (pmax[t] == 2048) {
            cr_expect_eq(info.undecided, 0, "prec_max 2048: %d undecided", info.undecided);
            zero_sign_free = 1;
            expect_all_same("adversarial", 0xad7ull, &r, &w);
            zero_sign_free = 0;
        }
        cr_log_info("adversarial prec_max %d: %d undecided, prec_used %d, %zu differ", pmax[t],
                    info.undecided, info.prec_used, diff);
        free(qr);
        free(kr);
        bres_free(&r);
    }
    bres_free(&w);
    bcase_free(&c);
}

/* An exact zero that interval arithmetic cannot see: two query heads with the same q
 * and opposite dO have dS^1 = -dS^0 and the same P, so dK = dV = 0 exactly, while each
 * head's intervals are computed separately and their sum straddles 0 at every precision.
 * Those 2 sk D values must be counted undecided (at prec_max, with prec_used = prec_max);
 * dQ and dsum are decided and equal the brute force. */
Test(ref_bwd, symmetric_exact_zero_is_counted_undecided, .timeout = 120)
{
    const int sq = 3, sk = 4, D = 8;
    bcase c;
    bcase_alloc(&c, tu_make_problem(1, 2, 1, sq, sk, D, FD_DT_FP16, FD_MASK_NONE, 0.0));
    bcase_random(&c, 0x5e7ull, 1.0);
    for (int i = 0; i < sq; i++)
        for (int d = 0; d < D; d++) {
            c.q[fd_q_index(&c.p, 0, i, 1, d)] = c.q[fd_q_index(&c.p, 0, i, 0, d)];
            c.dout[fd_q_index(&c.p, 0, i, 1, d)] = -c.dout[fd_q_index(&c.p, 0, i, 0, d)];
        }
    bres r, w;
    bres_alloc(&r, &c.p);
    bres_alloc(&w, &c.p);
    fd_ref_bwd_info info = ref_group(&c, 0, 0, 128, 512, &r);
    brute_group(&c, 0, 0, 1000, &w);
    cr_expect_eq(info.undecided, 2 * sk * D, "undecided %d, expected %d (dK and dV)", info.undecided,
                 2 * sk * D);
    cr_expect_eq(info.prec_used, 512);
    for (size_t x = 0; x < (size_t)(2 * sq * D); x++) expect_same("symmetric", 0x5e7, "dq", x, r.dq[x], w.dq[x]);
    for (size_t x = 0; x < (size_t)(2 * sq); x++)
        expect_same("symmetric", 0x5e7, "dsum", x, r.dsum[x], w.dsum[x]);
    for (size_t x = 0; x < (size_t)(sk * D); x++) {
        /* the brute force adds the heads' terms in sequence: its 0 carries ~2^-1000 noise */
        cr_expect(fabs(w.dk[x]) < 1e-250 && fabs(w.dv[x]) < 1e-250, "brute dk %a dv %a [%zu]",
                  w.dk[x], w.dv[x], x);
        cr_expect(fabs(r.dk[x]) < 1e-100 && fabs(r.dv[x]) < 1e-100, "estimate dk %a dv %a", r.dk[x],
                  r.dv[x]);
    }
    bres_free(&r);
    bres_free(&w);
    bcase_free(&c);
}

/* ---------------------------------------------------------------- bad arguments */

Test(ref_bwd, bad_arguments_give_minus_one_and_a_message)
{
    bcase c;
    bcase_alloc(&c, tu_make_problem(2, 4, 2, 3, 5, 8, FD_DT_FP16, FD_MASK_NONE, 0.0));
    bcase_random(&c, 0xbadull, 1.0);
    const fd_problem *p = &c.p;
    int qr[1] = {0}, kr[1] = {0};
    double dq[2 * 8], dk[8], dv[8];
    char err[256];
    fd_problem bad = *p;
    fd_ref_opts opt = {256, 128};
    struct {
        const char *what;
        const fd_problem *p;
        const float *q, *dout;
        int b, hk, qrow, krow;
        const fd_ref_opts *opt;
    } cases[] = {
        {"NULL problem", NULL, c.q, c.dout, 0, 0, 0, 0, NULL},
        {"NULL q", p, NULL, c.dout, 0, 0, 0, 0, NULL},
        {"NULL dout", p, c.q, NULL, 0, 0, 0, 0, NULL},
        {"b = batch", p, c.q, c.dout, 2, 0, 0, 0, NULL},
        {"hk = kv_heads", p, c.q, c.dout, 0, 2, 0, 0, NULL},
        {"qrow = seqlen_q", p, c.q, c.dout, 0, 0, 3, 0, NULL},
        {"krow = -1", p, c.q, c.dout, 0, 0, 0, -1, NULL},
        {"prec_max < prec0", p, c.q, c.dout, 0, 0, 0, 0, &opt},
        {"heads not a multiple of kv_heads", &bad, c.q, c.dout, 0, 0, 0, 0, NULL},
    };
    bad.kv_heads = 3;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        qr[0] = cases[t].qrow;
        kr[0] = cases[t].krow;
        err[0] = '\0';
        int rc = fd_ref_bwd_group(cases[t].p, cases[t].q, c.k, c.v, cases[t].dout, cases[t].b,
                                  cases[t].hk, qr, 1, kr, 1, cases[t].opt, dq, dk, dv, NULL, NULL,
                                  err, sizeof err);
        cr_expect_eq(rc, -1, "%s: expected -1, got %d", cases[t].what, rc);
        cr_expect(err[0] != '\0', "%s: no error message", cases[t].what);
    }
    qr[0] = 0;
    kr[0] = 0;
    c.dout[fd_q_index(p, 0, 1, 1, 2)] = NAN;
    err[0] = '\0';
    cr_expect_eq(fd_ref_bwd_group(p, c.q, c.k, c.v, c.dout, 0, 0, qr, 1, kr, 1, NULL, dq, dk, dv,
                                  NULL, NULL, err, sizeof err),
                 -1, "NaN in dout of the group must be refused");
    cr_expect(err[0] != '\0');
    /* a NaN in another group is not this group's business; a NULL err works too */
    cr_expect_eq(fd_ref_bwd_group(p, c.q, c.k, c.v, c.dout, 1, 0, qr, 1, kr, 1, NULL, dq, dk, dv,
                                  NULL, NULL, NULL, 0),
                 0);
    bcase_free(&c);
}
