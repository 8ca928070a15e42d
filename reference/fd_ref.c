/* fd_ref.c: the decisive MPFR reference for one attention row; see fd_ref.h.
 *
 * Computation at working precision P (all MPFR roundings to nearest, u = 2^-P):
 *
 *   dot_j  exact: the products q_d k_jd of binary32 values are exact binary64
 *          numbers (<= 48 significant bits, exponents in [-298, 256)), so they
 *          are added exactly in a fixed-point integer accumulator (a small
 *          Kulisch accumulator, 24 limbs of 32 bits). This replaces mpfr_set_d +
 *          mpfr_sum, which measured ~10 us per 128-term dot on the 2-core dev VM
 *          (2026-11-21), with ~1.3 us.
 *   s'_j = RN(sigma * dot_j)         sigma = softmax_scale, exact binary32; the
 *                                    product is formed exactly as an integer, so
 *                                    this is the only rounding of s_j
 *   m'   = max_j s'_j                (an exact constant shift, see below)
 *   a'_j = RN(s'_j - m')
 *   e'_j = RN(exp(a'_j))             e'_j = 0 for "truncated" keys (see below)
 *   L'   = mpfr_sum_j e'_j           over visible keys (correctly rounded)
 *   N'_d = RN(sum_j e'_j v_jd)       over visible keys kept by dropout; the products
 *                                    (P + 24 bits) and their sum are EXACT, in a
 *                                    fixed-point accumulator (mpfr_sum of exact
 *                                    products when the exponents span > 131072 bits),
 *                                    rounded once
 *   th'  = RN(1 - p),  D' = RN(th' L'),  O'_d = RN(N'_d / D')
 *          FP8 inputs (issue 15 item 4): sigma = softmax_scale q_descale k_descale,
 *          formed exactly (72 bits, two limb multiplies), still the only rounding of
 *          s_j; th' = RN(1 / v_descale) (FP8 problems have no dropout), bounded below
 *          like RN(1 - p). So the reference is the exact attention of the exactly
 *          dequantised inputs x8 x_descale.
 *   LSE' = RN(m' + RN(log L'))
 *
 * Error bound (rigorous; every term below is an upper bound).
 * Notation: for an MPFR rounding y = RN(x) with ternary t, |y - x| <= [t != 0] 2^(E(y)-P-1)
 * where E(y) is MPFR's exponent (|y| < 2^E(y)): half an ulp of y, and 0 when MPFR
 * says the operation was exact. This "ternary-aware" form is what lets exact cases
 * (identical keys, one visible key, columns of V that cancel exactly) be decided.
 *
 * 1. The shift cancels. For ANY constant c, O_d = sum_j exp(s_j - c) v_jd /
 *    ((1 - p) sum_j exp(s_j - c)) and LSE = c + log sum_j exp(s_j - c). We take
 *    c = m' (the computed maximum, an exact number), so the true quantities are
 *    a_j = s_j - m', e_j = exp(a_j), L = sum e_j, N_d = sum_kept e_j v_jd, and
 *    only the errors in a'_j matter, not whether m' is the true maximum.
 * 2. Argument error. |a'_j - a_j| <= |s'_j - s_j| + |a'_j - (s'_j - m')|
 *    <= [t_s] 2^(E(s'_j)-P-1) + [t_a] 2^(E(a'_j)-P-1) =: alpha_j. It is kept as a
 *    power of two 2^A_j >= alpha_j (a sum of two powers of two is < 2^(max+1)).
 * 3. exp. |e'_j - e_j| <= |e'_j - exp(a'_j)| + exp(a'_j) |1 - exp(a_j - a'_j)|
 *    <= [t_e] u e'_j + exp(a'_j) (exp(alpha_j) - 1). With exp(a'_j) <= (1 + u) e'_j
 *    and, for alpha_j <= 1/2, exp(alpha) - 1 <= alpha + alpha^2 <= 1.5 alpha:
 *    |e'_j - e_j| <= e'_j ([t_e] 2^-P + 2^(A_j+1)) <= 2^(H_j + E(e'_j)) =: beta_j,
 *    H_j the exponent of the (at most two) powers of two in brackets, plus one if
 *    both are present. A key with alpha_j > 1/2 that is not truncated makes the
 *    whole row fail at this precision (it is redone at 2P).
 * 4. Truncation. With T0 = P + 64 (first attempt) or T0 = 2^24 (retries: only where
 *    MPFR's exponent range could underflow), a key with a'_j < -(T0+1) and
 *    alpha_j <= 1, or a'_j < -2 T0 and alpha_j <= |a'_j|/2, has
 *    a_j <= a'_j + alpha_j <= -T0, so 0 < e_j <= exp(-(P+64)) <= 2^(-P-92) =: beta_j,
 *    and e'_j := 0 (no exp call). Retries compute the tiny weights, so that a row
 *    whose large weights are all dropped gets its true, tiny, signed O.
 * 5. Sums. |L' - L| <= [t_L] 2^(E(L')-P-1) + sum_visible beta_j =: dL;
 *    |N'_d - N_d| <= [t_N] 2^(E(N'_d)-P-1) + sum_kept beta_j |v_jd| =: dN_d
 *    (the products e'_j v_jd are exact and summed exactly, then rounded once, so only
 *    e'_j's errors and that final rounding enter). The beta sums are evaluated in
 *    binary64 (see 7).
 * 6. Division and log. dth = [t_th] 2^(E(th')-P-1);
 *    dD = [t_D] 2^(E(D')-P-1) + th' dL + (L' + dL) dth    (|th' L' - th L| expanded);
 *    |O'_d - O_d| <= [t_O] 2^(E(O')-P-1) + dN_d / D' + (|N'_d| + dN_d) dD / (D' (D' - dD))
 *    from N'/D' - N/D = (N' - N)/D' + N (D - D') / (D D'), |N| <= |N'| + dN, D >= D' - dD > 0.
 *    |LSE' - LSE| <= [t_LSE] 2^(E(LSE')-P-1) + [t_lg] 2^(E(lg')-P-1) + dL / (L' - dL)
 *    by the mean value theorem for log between L and L' (both >= L' - dL > 0).
 *    These few operations per value are done in MPFR at 64 bits rounding upward
 *    (denominators downward), so they are themselves rigorous.
 * 7. The beta sums. beta_j are powers of two 2^B_j. They are scaled to
 *    w_j = 2^(B_j - Bmax + 150) (raised to 2^-450 when smaller: an upper bound), with
 *    Bmax the largest B_j over the visible keys for dL and over the kept keys for dN
 *    (so that N's bound stays relative when the dominant keys are dropped), and
 *    sum_j w_j |v_jd| is computed in binary64 with round-to-nearest. Every product is
 *    exact (power of two times a binary32, result in [2^-599, 2^278]), every partial
 *    sum is a normal number below 2^310, so the computed sum of n < 2^31 nonnegative
 *    terms is >= exact * (1 - 2^-53)^n >= exact (1 - 2^-22); multiplying by
 *    (1 + 2^-20), upward, restores an upper bound.
 * 8. Decision. With an upward bound Delta < 2^E(Delta), x = the P-bit value is
 *    within 2^(E(x) - err) of the truth, err = E(x) - E(Delta), strictly inside
 *    that interval. mpfr_can_round(x, err, RNDN, RNDZ, 54) then proves that no
 *    54-bit number (no binary64 number and no midpoint between two) lies in the
 *    interval, so RN(x) to binary64 (mpfr_get_d, subnormals included) is the
 *    correctly rounded truth. (The strictness excludes a truth that is itself a
 *    54-bit number, the caveat of that idiom.) That idiom refuses every interval
 *    that contains a double, which is the normal case for O = v* + tiny (one
 *    dominant key); then the ends x - Delta (RNDD) and x + Delta (RNDU) are each
 *    rounded to binary64, and equal bits prove the answer (RN is monotone).
 *    Delta = 0 means x is exact. A computed 0 with Delta > 0 has ends of opposite
 *    signs, so it is never decided: the row is redone at 2P and finally counted as
 *    undecided. Exact zeros are returned as +0; a nonzero value below the binary64
 *    range rounds to a zero of its own sign.
 *
 * Thread safety: no static mutable state; every MPFR object is local to the call.
 * MPFR's flags and constant caches are per thread only when mpfr_buildopt_tls_p()
 * (fd_ref_thread_safe()). The exponent range is read, never changed. */
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gmp.h>
#include <mpfr.h>

#include "fd_philox.h"
#include "fd_ref.h"
#include "fd_ref_dot.h"

#if GMP_LIMB_BITS != 64 || GMP_NAIL_BITS != 0
#error "fd_ref.c assumes 64-bit GMP limbs without nails"
#endif

#define FD_NOEXP LONG_MIN       /* "this error term is zero" */
#define FD_ACC_LIMBS 24         /* 768 bits: products span bits [2, 608), plus carries */
#define FD_ACC_BASE (-352)      /* exponent of bit 0 of the accumulator */
#define FD_BND_PREC 64          /* precision of the error-bound arithmetic */
#define FD_PREC_LIMIT 65536     /* largest prec_max accepted */
#define FD_HEAD_DIM_LIMIT 65536
#define FD_LANES_MAX 4096       /* wider numerators (tiny weights on retries) use mpfr_sum */ /* keeps the int64 accumulator limbs far from overflow */

void fd_ref_opts_default(fd_ref_opts *o)
{
    o->prec0 = 128;
    o->prec_max = 2048;
}

int fd_ref_thread_safe(void) { return mpfr_buildopt_tls_p() != 0; }

void fd_ref_thread_cleanup(void) { mpfr_free_cache(); }

void fd_ref_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------------------------
 * Arrays of mpfr_t on one limb buffer (MPFR's custom interface): no malloc per term. */
typedef struct {
    mpfr_t *x;
    mpfr_ptr *ptr;
    void *limbs;
    size_t n;
} fd_mparr;

static void mparr_free(fd_mparr *a)
{
    free(a->x);
    free(a->ptr);
    free(a->limbs);
    memset(a, 0, sizeof *a);
}

static int mparr_alloc(fd_mparr *a, size_t n, mpfr_prec_t prec)
{
    size_t sz = mpfr_custom_get_size(prec);
    memset(a, 0, sizeof *a);
    if (n == 0) n = 1;
    a->x = malloc(n * sizeof(mpfr_t));
    a->ptr = malloc(n * sizeof(mpfr_ptr));
    a->limbs = malloc(n * sz);
    if (!a->x || !a->ptr || !a->limbs) {
        mparr_free(a);
        return -1;
    }
    a->n = n;
    for (size_t i = 0; i < n; i++) {
        void *m = (char *)a->limbs + i * sz;
        mpfr_custom_init(m, prec);
        mpfr_custom_init_set(a->x[i], MPFR_ZERO_KIND, 0, prec, m);
        a->ptr[i] = a->x[i];
    }
    return 0;
}

/* ---------------------------------------------------------------------------------
 * Exact dot product of binary32 vectors, times the exact binary32 sigma, rounded once. */

/* 2^0 .. 2^31. Shifting by a multiply: `x << sh` with sh in a register is a shift by
 * %cl, which on x86 carries a dependency on the flags and serialised these loops
 * (the numerator loop measured about 2x slower with shifts on the dev VM). */
static const uint64_t fd_pow2[32] = {
    1ull << 0,  1ull << 1,  1ull << 2,  1ull << 3,  1ull << 4,  1ull << 5,  1ull << 6,  1ull << 7,
    1ull << 8,  1ull << 9,  1ull << 10, 1ull << 11, 1ull << 12, 1ull << 13, 1ull << 14, 1ull << 15,
    1ull << 16, 1ull << 17, 1ull << 18, 1ull << 19, 1ull << 20, 1ull << 21, 1ull << 22, 1ull << 23,
    1ull << 24, 1ull << 25, 1ull << 26, 1ull << 27, 1ull << 28, 1ull << 29, 1ull << 30, 1ull << 31};

/* A finite binary32 as M * 2^E with |M| < 2^24. */
static void f32_split(float x, long *m, long *e)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t ex = (u >> 23) & 0xffu, man = u & 0x7fffffu;
    long mm = ex ? (long)(man | 0x800000u) : (long)man;
    *e = ex ? (long)ex - 150 : -149;
    *m = (u >> 31) ? -mm : mm;
}

typedef struct {
    int64_t acc[FD_ACC_LIMBS];
    mp_limb_t limb[FD_ACC_LIMBS / 2 + 3];
} fd_dotacc;

/* s = RN(sigma * sum_d q_d k_d) at s's precision, sigma = (sig_neg ? -1 : 1) sig_m sig_m2 2^sig_e
 * (sig_m2: the FP8 descale product q_descale k_descale's integer significand, < 2^48, 1 when
 * not FP8: sigma is then the exact product of three binary32 numbers, formed exactly);
 * returns the ternary value. The accumulator holds 32-bit digits in int64 lanes so that
 * carries are deferred (each lane takes < 2^33 per term, D <= 2^16 terms). */
static int dot_exact(mpfr_ptr s, const float *q, const float *k, int D, mp_limb_t sig_m, mp_limb_t sig_m2,
                     int sig_neg, long sig_e, fd_dotacc *a)
{
    int64_t *acc = a->acc;
    int lmin = FD_ACC_LIMBS, lmax = -1;
    memset(acc, 0, sizeof a->acc);
    for (int d = 0; d < D; d++) {
        double x = (double)q[d] * (double)k[d]; /* exact: 48 bits, no under/overflow */
        uint64_t bits;
        memcpy(&bits, &x, 8);
        unsigned ex = (unsigned)(bits >> 52) & 0x7ffu;
        if (ex == 0) continue; /* zero: a binary32 product is never binary64-subnormal */
        uint64_t m = (bits & 0xfffffffffffffull) | 0x10000000000000ull;
        int pos = (int)ex - 1075 - FD_ACC_BASE; /* in [2, 556) */
        int li = pos >> 5;
        uint64_t p2 = fd_pow2[pos & 31];
        uint64_t lo = (m & 0xffffffffu) * p2, hi = (m >> 32) * p2;
        int64_t sg = -(int64_t)(bits >> 63); /* 0 or -1: branch-free negation */
        acc[li] += ((int64_t)(lo & 0xffffffffu) ^ sg) - sg;
        acc[li + 1] += ((int64_t)((lo >> 32) + (hi & 0xffffffffu)) ^ sg) - sg;
        acc[li + 2] += ((int64_t)(hi >> 32) ^ sg) - sg;
        lmin = li < lmin ? li : lmin;
        lmax = li > lmax ? li : lmax;
    }
    if (lmax < 0 || sig_m == 0) {
        mpfr_set_zero(s, 1);
        return 0;
    }
    /* |sum| < 2^16 * 2^(32 lmax + 85): digits lmin .. lmax+3 hold it with its sign. */
    int i0 = lmin & ~1, top = lmax + 3;
    int neg = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = i0; i < top; i++) {
            int64_t low = acc[i] & (int64_t)0xffffffff;
            acc[i + 1] += (acc[i] - low) / ((int64_t)1 << 32);
            acc[i] = low;
        }
        if (acc[top] >= 0) break;
        neg = 1; /* negative: negate every digit and normalise again */
        for (int i = i0; i <= top; i++) acc[i] = -acc[i];
    }
    int nl = 0;
    for (int i = i0; i <= top; i += 2)
        a->limb[nl++] = (mp_limb_t)acc[i] | ((mp_limb_t)(i + 1 <= top ? acc[i + 1] : 0) << 32);
    a->limb[nl] = mpn_mul_1(a->limb, a->limb, nl, sig_m);
    nl++;
    if (sig_m2 != 1) { /* FP8: the descale product, exactly (one more limb) */
        a->limb[nl] = mpn_mul_1(a->limb, a->limb, nl, sig_m2);
        nl++;
    }
    while (nl > 0 && a->limb[nl - 1] == 0) nl--;
    if (nl == 0) {
        mpfr_set_zero(s, 1);
        return 0;
    }
    mpz_t z;
    mpz_roinit_n(z, a->limb, (neg ^ sig_neg) ? -(mp_size_t)nl : (mp_size_t)nl);
    return mpfr_set_z_2exp(s, z, (mpfr_exp_t)(FD_ACC_BASE + 32 * i0) + sig_e, MPFR_RNDN);
}

int fd_ref_dot_exact(mpfr_ptr s, const float *a, const float *b, int D, float scale)
{
    fd_dotacc acc;
    long sm, se;
    f32_split(scale, &sm, &se);
    return dot_exact(s, a, b, D, (mp_limb_t)(sm < 0 ? -sm : sm), 1, sm < 0, se, &acc);
}

/* ---------------------------------------------------------------------------------
 * Error-bound helpers: exponents of powers of two, FD_NOEXP meaning "no error". */
static long half_ulp_exp(int ternary, mpfr_srcptr y, mpfr_prec_t P)
{
    return ternary ? (long)mpfr_get_exp(y) - (long)P - 1 : FD_NOEXP;
}
/* An exponent of a power of two >= 2^a + 2^b. */
static long exp_add(long a, long b)
{
    if (a == FD_NOEXP) return b;
    if (b == FD_NOEXP) return a;
    return (a > b ? a : b) + 1;
}
/* r += 2^e (upward); tmp is scratch. */
static void bnd_add_pow2(mpfr_ptr r, long e, mpfr_ptr tmp)
{
    if (e == FD_NOEXP) return;
    mpfr_set_ui_2exp(tmp, 1, (mpfr_exp_t)e, MPFR_RNDU);
    mpfr_add(r, r, tmp, MPFR_RNDU);
}

/* Is x, with |x - truth| <= delta, correctly rounded to binary64 by mpfr_get_d?
 * First the standard idiom, mpfr_can_round(x, err, RNDN, RNDZ, 54). It cannot accept
 * an interval that contains a binary64 number, which is exactly the case of a truth
 * within 2^-P of a double (one dominant key, whose weight is 1 - tiny: O = v* + tiny).
 * So, when it refuses, the interval's ends are rounded outward (RNDD / RNDU) and each
 * rounded to binary64: RN is monotone, so if both give the same bits (signed zeros
 * included), every point between them, the truth too, rounds to those bits. */
static int decided(mpfr_srcptr x, mpfr_srcptr delta)
{
    if (!mpfr_number_p(delta)) return 0;
    if (mpfr_zero_p(delta)) return 1;
    if (mpfr_regular_p(x)) {
        mpfr_exp_t err = mpfr_get_exp(x) - mpfr_get_exp(delta);
        if (err > 0 && mpfr_can_round(x, err, MPFR_RNDN, MPFR_RNDZ, 54)) return 1;
    }
    mpfr_t lo, hi;
    mpfr_prec_t w = mpfr_get_prec(x) + 64;
    mpfr_inits2(w, lo, hi, (mpfr_ptr)0);
    mpfr_sub(lo, x, delta, MPFR_RNDD);
    mpfr_add(hi, x, delta, MPFR_RNDU);
    double a = mpfr_get_d(lo, MPFR_RNDN), b = mpfr_get_d(hi, MPFR_RNDN);
    mpfr_clears(lo, hi, (mpfr_ptr)0);
    uint64_t ua, ub;
    memcpy(&ua, &a, 8);
    memcpy(&ub, &b, 8);
    return ua == ub;
}

static double to_double(mpfr_srcptr x)
{
    if (mpfr_zero_p(x)) return 0.0;
    return mpfr_get_d(x, MPFR_RNDN);
}

/* ---------------------------------------------------------------------------------
 * One row at one precision. */
typedef struct {
    /* the row, fixed for all precisions */
    const fd_problem *p;
    const float *qrow;
    const float **krow; /* visible keys: key lo + jj is krow[jj] */
    int n, D, lo, h, i;
    int *kept; /* indices of visible keys kept by dropout */
    int nkept;
    float *vcol; /* V of the kept keys, column-major: vcol[d * nkept + kk] */
    long ymin, ymax; /* exponent range of the nonzero vcol as M 2^y, |M| < 2^24 */
    mp_limb_t sig_m, sig_m2; /* sig_m2: FP8 descale product (1: none) */
    int sig_neg;
    long sig_e;
    /* per precision */
    fd_mparr s, e, t; /* t: exact products, only for the wide-range fallback */
    long *B;   /* beta_j exponent, FD_NOEXP for beta_j = 0 */
    double *w;  /* scaled beta_j, relative to the largest over visible keys (for L) */
    double *wk; /* the same for kept key kk, relative to the largest over kept keys (for N) */
    uint32_t *ksd;     /* significand of e'_kept[kk] as 32-bit digits, nd per key */
    unsigned char *knz; /* e'_kept[kk] != 0 */
    long *kx;          /* e'_kept[kk] = (integer ksd) 2^kx */
    int64_t *nacc;     /* numerator accumulator lanes */
    mp_limb_t *nlimb;  /* and its limbs */
    size_t nacc_cap;
    fd_dotacc dot;
} fd_rowws;

/* Signed 32-bit digits in int64 lanes lane[0..nl) (value sum lane_i 2^(32 i)) to a
 * sign and 64-bit limbs; returns the limb count (0 for zero). Lanes are clobbered. */
static size_t lanes_to_limbs(int64_t *lane, size_t nl, mp_limb_t *limb, int *neg)
{
    *neg = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i + 1 < nl; i++) {
            int64_t low = lane[i] & (int64_t)0xffffffff;
            lane[i + 1] += (lane[i] - low) / ((int64_t)1 << 32);
            lane[i] = low;
        }
        if (lane[nl - 1] >= 0) break;
        *neg = 1;
        for (size_t i = 0; i < nl; i++) lane[i] = -lane[i];
    }
    size_t n = 0;
    for (size_t i = 0; i < nl; i += 2)
        limb[n++] = (mp_limb_t)lane[i] | ((mp_limb_t)(i + 1 < nl ? lane[i + 1] : 0) << 32);
    while (n > 0 && limb[n - 1] == 0) n--;
    return n;
}

/* N = RN(sum_kk e'_kk v_kk,d) at N's precision, summed exactly: e'_kk = S 2^kx with S
 * given as nd 32-bit digits (ksd), v = M 2^y with |M| < 2^24, so each term is a short
 * integer product placed at bit kx + y - base of a deferred-carry accumulator of nl
 * lanes (32-bit digits in int64, < 2^34 added per lane and term), with no library
 * call per term: mpfr_mul_si + mpfr_mul_2si + mpfr_sum measured ~45 ns a term on the
 * 2-core dev VM, this loop ~15.
 * Also returns in *wsum the binary64 sum of w_j |v_jd| for the bound. */
static int numer_exact(fd_rowws *ws, int d, int nd, long base, size_t nl, mpfr_ptr N, double *wsum)
{
    int64_t *lane = ws->nacc;
    const float *vc = ws->vcol + (size_t)d * (size_t)ws->nkept;
    double sw = 0.0;
    memset(lane, 0, nl * sizeof(int64_t));
    long since = 0;
    for (int kk = 0; kk < ws->nkept; kk++) {
        uint32_t u;
        memcpy(&u, &vc[kk], 4);
        if ((u & 0x7fffffffu) == 0) continue;
        sw += ws->wk[kk] * fabs((double)vc[kk]);
        if (!ws->knz[kk]) continue;
        const uint32_t *S = ws->ksd + (size_t)kk * (size_t)nd;
        uint32_t ex = (u >> 23) & 0xffu;
        uint64_t M = ex ? ((u & 0x7fffffu) | 0x800000u) : (u & 0x7fffffu);
        long off = ws->kx[kk] + (ex ? (long)ex - 150 : -149) - base; /* >= 0 */
        int64_t *L = lane + off / 32;
        uint64_t p2 = fd_pow2[off % 32];
        int64_t sg = -(int64_t)(u >> 31);
        /* Each lane is read and written once per term: the carries between a term's
         * digits stay in registers (c1, c2). */
        uint64_t c1 = 0, c2 = 0;
        for (int t = 0; t < nd; t++) {
            uint64_t pr = (uint64_t)S[t] * M; /* < 2^56 */
            uint64_t a = (pr & 0xffffffffu) * p2, b = (pr >> 32) * p2;
            uint64_t c0 = (a & 0xffffffffu) + c1; /* < 2^33 */
            c1 = (a >> 32) + (b & 0xffffffffu) + c2;
            c2 = b >> 32;
            L[t] += ((int64_t)c0 ^ sg) - sg;
        }
        L[nd] += ((int64_t)c1 ^ sg) - sg;
        L[nd + 1] += ((int64_t)c2 ^ sg) - sg;
        if (++since == (1L << 24)) { /* keep the lanes far from int64 overflow */
            since = 0;
            for (size_t i = 0; i + 1 < nl; i++) {
                int64_t low = lane[i] & (int64_t)0xffffffff;
                lane[i + 1] += (lane[i] - low) / ((int64_t)1 << 32);
                lane[i] = low;
            }
        }
    }
    *wsum = sw;
    int neg;
    size_t n = lanes_to_limbs(lane, nl, ws->nlimb, &neg);
    if (n == 0) {
        mpfr_set_zero(N, 1);
        return 0;
    }
    mpz_t z;
    mpz_roinit_n(z, ws->nlimb, neg ? -(mp_size_t)n : (mp_size_t)n);
    return mpfr_set_z_2exp(N, z, (mpfr_exp_t)base, MPFR_RNDN);
}

/* The same sum for rows whose terms span more than FD_LANES_MAX * 32 bits: exact
 * products (precision P + 24 >= P + bits(M)) and mpfr_sum, which handles any spread. */
static int numer_sum(fd_rowws *ws, int d, mpfr_ptr N, double *wsum)
{
    const float *vc = ws->vcol + (size_t)d * (size_t)ws->nkept;
    double sw = 0.0;
    for (int kk = 0; kk < ws->nkept; kk++) {
        mpfr_ptr t = ws->t.x[kk];
        long vm, ve;
        f32_split(vc[kk], &vm, &ve);
        if (vm != 0) sw += ws->wk[kk] * fabs((double)vc[kk]);
        if (vm == 0 || !ws->knz[kk]) {
            mpfr_set_zero(t, 1);
            continue;
        }
        mpfr_mul_si(t, ws->e.x[ws->kept[kk]], vm, MPFR_RNDN); /* exact */
        mpfr_mul_2si(t, t, ve, MPFR_RNDN);                    /* exact */
    }
    *wsum = sw;
    return mpfr_sum(N, ws->t.ptr, (unsigned long)ws->nkept, MPFR_RNDN);
}

/* The score modifiers on s'_j (the exact s_j = sigma q.k_j rounded, error 2^ES):
 *   softcap c:  s_j <- c tanh(s_j / c), computed x' = RN(s'/c), y' = RN(tanh x'),
 *               s' = RN(c y'); with 2^(ec-1) <= c < 2^ec and tanh 1-Lipschitz,
 *               |s' - c tanh(s/c)| <= 2^ec (2^(ES-ec+1) + hu(x') + hu(y')) + hu(s');
 *   ALiBi:      s_j <- s_j - slope_h |i + sk - sq - j|; the product is exact (24 + 31
 *               bits < P), so s' = RN(s' - bias) adds hu(s').
 * (hu: the half-ulp term of a rounding, 0 when exact.) Returns the new error exponent. */
static long mods_apply(const fd_rowws *ws, mpfr_ptr s, long ES, int h, int i, int j, mpfr_ptr tmp,
                       mpfr_prec_t P)
{
    const fd_problem *p = ws->p;
    if (p->softcap > 0.0f) {
        int ec;
        (void)frexp((double)p->softcap, &ec); /* c = m 2^ec, m in [1/2, 1) */
        const int t1 = mpfr_div_d(tmp, s, (double)p->softcap, MPFR_RNDN);
        long A = ES == FD_NOEXP ? FD_NOEXP : ES - (long)ec + 1;
        A = exp_add(A, half_ulp_exp(t1, tmp, P));
        const int t2 = mpfr_tanh(tmp, tmp, MPFR_RNDN);
        A = exp_add(A, half_ulp_exp(t2, tmp, P));
        const int t3 = mpfr_mul_d(s, tmp, (double)p->softcap, MPFR_RNDN);
        ES = A == FD_NOEXP ? FD_NOEXP : A + (long)ec;
        ES = exp_add(ES, half_ulp_exp(t3, s, P));
    }
    if (p->alibi) {
        const int dd = fd_problem_alibi_dist(p, i, j); /* within the row's sequence (varlen) */
        mpfr_set_d(tmp, (double)p->alibi_slopes[h], MPFR_RNDN); /* exact */
        mpfr_mul_ui(tmp, tmp, (unsigned long)dd, MPFR_RNDN);    /* exact */
        const int t4 = mpfr_sub(s, s, tmp, MPFR_RNDN);
        ES = exp_add(ES, half_ulp_exp(t4, s, P));
    }
    return ES;
}

/* Returns the number of undecided outputs (0..D+1), or -1 for no memory. */
static int row_at(fd_rowws *ws, mpfr_prec_t P, int first, double *o, double *lse)
{
    const int n = ws->n, D = ws->D;
    const fd_problem *p = ws->p;
    int undecided = 0, row_ok = 1;

    mparr_free(&ws->s);
    mparr_free(&ws->e);
    mparr_free(&ws->t);
    if (mparr_alloc(&ws->s, (size_t)n, P) || mparr_alloc(&ws->e, (size_t)n, P)) return -1;

    mpfr_t a, L, th, Dn, N, O, lg, LSE, pm;
    mpfr_t dL, dth, dD, dN, dO, dLSE, bt, bt2, lowD, fudge;
    mpfr_inits2(P, a, L, th, Dn, N, O, lg, LSE, (mpfr_ptr)0);
    mpfr_init2(pm, 53);
    mpfr_inits2(FD_BND_PREC, dL, dth, dD, dN, dO, dLSE, bt, bt2, lowD, fudge, (mpfr_ptr)0);
    mpfr_set_ui_2exp(fudge, (1ul << 20) + 1ul, -20, MPFR_RNDU); /* 1 + 2^-20, exact */

    /* s'_j and their error exponents; m' = max. */
    int jm = 0;
    long *ES = ws->B; /* reuse: error exponent of s'_j, overwritten by beta below */
    for (int j = 0; j < n; j++) {
        int ts = dot_exact(ws->s.x[j], ws->qrow, ws->krow[j], D, ws->sig_m, ws->sig_m2, ws->sig_neg, ws->sig_e,
                           &ws->dot);
        ES[j] = half_ulp_exp(ts, ws->s.x[j], P);
        if (fd_problem_has_mods(p))
            ES[j] = mods_apply(ws, ws->s.x[j], ES[j], ws->h, ws->i, ws->lo + j, a, P);
        if (mpfr_cmp(ws->s.x[j], ws->s.x[jm]) > 0) jm = j;
    }
    mpfr_srcptr m = ws->s.x[jm];
    /* Truncate at T0 = P + 64 on the first attempt; on retries only where MPFR's
     * exponent range would underflow, so that rows whose every kept key is tiny (the
     * dominant key dropped) get their true, tiny, signed O. */
    const long T0 = first ? (long)P + 64 : (1L << 24);

    /* e'_j and beta_j. */
    long Bmax = FD_NOEXP;
    for (int j = 0; j < n; j++) {
        int ta = mpfr_sub(a, ws->s.x[j], m, MPFR_RNDN);
        long A = exp_add(ES[j], half_ulp_exp(ta, a, P));
        long Bj;
        int trunc = 0;
        if (mpfr_cmp_si(a, -(T0 + 1)) < 0 && (A == FD_NOEXP || A <= 0)) trunc = 1;
        else if (mpfr_cmp_si(a, -2 * T0) < 0 && (A == FD_NOEXP || A <= (long)mpfr_get_exp(a) - 2))
            trunc = 1;
        if (trunc) {
            mpfr_set_zero(ws->e.x[j], 1);
            Bj = -(long)P - 92;
        } else {
            if (A != FD_NOEXP && A > -1) row_ok = 0; /* alpha_j may exceed 1/2 */
            int te = mpfr_exp(ws->e.x[j], a, MPFR_RNDN);
            long H = exp_add(te ? -(long)P : FD_NOEXP, A == FD_NOEXP ? FD_NOEXP : A + 1);
            Bj = H == FD_NOEXP ? FD_NOEXP : H + (long)mpfr_get_exp(ws->e.x[j]);
        }
        ws->B[j] = Bj;
        if (Bj != FD_NOEXP && (Bmax == FD_NOEXP || Bj > Bmax)) Bmax = Bj;
    }
    double sumw = 0.0;
    for (int j = 0; j < n; j++) {
        long Bj = ws->B[j];
        if (Bj == FD_NOEXP) ws->w[j] = 0.0;
        else if (Bj - Bmax < -600) ws->w[j] = 0x1p-450;
        else ws->w[j] = ldexp(1.0, (int)(Bj - Bmax + 150));
        sumw += ws->w[j];
    }
    /* The numerator's own scale: when the keys that dominate L are dropped, N may be
     * far smaller than L, and its bound must be relative to the kept keys' errors. */
    long BmaxK = FD_NOEXP;
    for (int kk = 0; kk < ws->nkept; kk++) {
        long Bj = ws->B[ws->kept[kk]];
        if (Bj != FD_NOEXP && (BmaxK == FD_NOEXP || Bj > BmaxK)) BmaxK = Bj;
    }
    for (int kk = 0; kk < ws->nkept; kk++) {
        long Bj = ws->B[ws->kept[kk]];
        if (Bj == FD_NOEXP) ws->wk[kk] = 0.0;
        else if (Bj - BmaxK < -600) ws->wk[kk] = 0x1p-450;
        else ws->wk[kk] = ldexp(1.0, (int)(Bj - BmaxK + 150));
    }

    /* L', dL. */
    int tL = mpfr_sum(L, ws->e.ptr, (unsigned long)n, MPFR_RNDN);
    mpfr_set_d(dL, sumw, MPFR_RNDU);
    if (Bmax != FD_NOEXP) mpfr_mul_2si(dL, dL, Bmax - 150, MPFR_RNDU);
    mpfr_mul(dL, dL, fudge, MPFR_RNDU);
    bnd_add_pow2(dL, half_ulp_exp(tL, L, P), bt2);

    /* th' = RN(1 - p), D' = RN(th' L'), dD. */
    mpfr_set_d(pm, p->dropout_p, MPFR_RNDN); /* exact */
    int tth = mpfr_ui_sub(th, 1, pm, MPFR_RNDN);
    if (fd_dtype_is_fp8(p->dtype)) {
        /* FP8: O = v_descale N / L, i.e. th = 1 / v_descale (no dropout on FP8 problems),
         * one rounding with its ternary: the bound below (dth) covers it */
        mpfr_set_flt(pm, fd_descale(p->v_descale), MPFR_RNDN); /* exact */
        tth = mpfr_ui_div(th, 1, pm, MPFR_RNDN);
    }
    mpfr_set_zero(dth, 1);
    bnd_add_pow2(dth, half_ulp_exp(tth, th, P), bt2);
    int tD = mpfr_mul(Dn, th, L, MPFR_RNDN);
    mpfr_set_zero(dD, 1);
    bnd_add_pow2(dD, half_ulp_exp(tD, Dn, P), bt2);
    mpfr_mul(bt, th, dL, MPFR_RNDU);
    mpfr_add(dD, dD, bt, MPFR_RNDU);
    mpfr_add(bt, L, dL, MPFR_RNDU);
    mpfr_mul(bt, bt, dth, MPFR_RNDU);
    mpfr_add(dD, dD, bt, MPFR_RNDU);
    mpfr_sub(lowD, Dn, dD, MPFR_RNDD); /* lower bound of the true denominator */
    if (mpfr_sgn(lowD) <= 0) row_ok = 0;

    /* The numerator accumulator: term kk,d is S |M| 2^(kx + y), S < 2^(32 nd),
     * |M| < 2^24; lane 0 at 2^base, room above for the carries of nkept < 2^31 terms
     * and the sign. */
    const int nd = 2 * (int)((P + 63) / 64);
    free(ws->ksd);
    ws->ksd = malloc(((size_t)ws->nkept * (size_t)nd + 1) * sizeof(uint32_t));
    if (!ws->ksd) {
        mpfr_clears(a, L, th, Dn, N, O, lg, LSE, pm, (mpfr_ptr)0);
        mpfr_clears(dL, dth, dD, dN, dO, dLSE, bt, bt2, lowD, fudge, (mpfr_ptr)0);
        return -1;
    }
    long xmin = LONG_MAX, xmax = LONG_MIN;
    for (int kk = 0; kk < ws->nkept; kk++) {
        mpfr_ptr ej = ws->e.x[ws->kept[kk]];
        ws->knz[kk] = !mpfr_zero_p(ej);
        if (!ws->knz[kk]) continue;
        const mp_limb_t *sg = (const mp_limb_t *)mpfr_custom_get_significand(ej);
        uint32_t *S = ws->ksd + (size_t)kk * (size_t)nd;
        for (int t = 0; t < nd / 2; t++) {
            S[2 * t] = (uint32_t)sg[t];
            S[2 * t + 1] = (uint32_t)(sg[t] >> 32);
        }
        ws->kx[kk] = (long)mpfr_get_exp(ej) - 32L * nd;
        if (ws->kx[kk] < xmin) xmin = ws->kx[kk];
        if (ws->kx[kk] > xmax) xmax = ws->kx[kk];
    }
    const int any_terms = xmin <= xmax && ws->ymin <= ws->ymax;
    const long base = any_terms ? xmin + ws->ymin : 0;
    const size_t Lacc = any_terms ? (size_t)((xmax + ws->ymax - base) / 32) + (size_t)nd + 6 : 2;
    if (Lacc > FD_LANES_MAX && !ws->t.x && mparr_alloc(&ws->t, (size_t)ws->nkept, P + 24)) {
        mpfr_clears(a, L, th, Dn, N, O, lg, LSE, pm, (mpfr_ptr)0);
        mpfr_clears(dL, dth, dD, dN, dO, dLSE, bt, bt2, lowD, fudge, (mpfr_ptr)0);
        return -1;
    }
    if (Lacc <= FD_LANES_MAX && Lacc > ws->nacc_cap) {
        free(ws->nacc);
        free(ws->nlimb);
        ws->nacc = malloc(Lacc * sizeof(int64_t));
        ws->nlimb = malloc((Lacc / 2 + 1) * sizeof(mp_limb_t));
        ws->nacc_cap = ws->nacc && ws->nlimb ? Lacc : 0;
        if (!ws->nacc_cap) {
            mpfr_clears(a, L, th, Dn, N, O, lg, LSE, pm, (mpfr_ptr)0);
            mpfr_clears(dL, dth, dD, dN, dO, dLSE, bt, bt2, lowD, fudge, (mpfr_ptr)0);
            return -1;
        }
    }

    /* O_d. */
    for (int d = 0; d < D; d++) {
        double wsum = 0.0;
        int tN = Lacc <= FD_LANES_MAX ? numer_exact(ws, d, nd, base, Lacc, N, &wsum)
                                      : numer_sum(ws, d, N, &wsum);
        mpfr_set_d(dN, wsum, MPFR_RNDU);
        if (BmaxK != FD_NOEXP) mpfr_mul_2si(dN, dN, BmaxK - 150, MPFR_RNDU);
        mpfr_mul(dN, dN, fudge, MPFR_RNDU);
        bnd_add_pow2(dN, half_ulp_exp(tN, N, P), bt2);
        int tO = mpfr_div(O, N, Dn, MPFR_RNDN);
        o[d] = to_double(O);
        if (!row_ok) {
            undecided++;
            continue;
        }
        /* dO = half ulp + dN / D' + (|N'| + dN) dD / (D' (D' - dD)) */
        mpfr_div(dO, dN, Dn, MPFR_RNDU);
        mpfr_abs(bt, N, MPFR_RNDU);
        mpfr_add(bt, bt, dN, MPFR_RNDU);
        mpfr_mul(bt, bt, dD, MPFR_RNDU);
        mpfr_mul(bt2, Dn, lowD, MPFR_RNDD);
        mpfr_div(bt, bt, bt2, MPFR_RNDU);
        mpfr_add(dO, dO, bt, MPFR_RNDU);
        bnd_add_pow2(dO, half_ulp_exp(tO, O, P), bt2);
        if (!decided(O, dO)) undecided++;
    }

    /* LSE = m' + log L. */
    int tlg = mpfr_log(lg, L, MPFR_RNDN);
    int tlse = mpfr_add(LSE, m, lg, MPFR_RNDN);
    *lse = to_double(LSE);
    mpfr_sub(bt, L, dL, MPFR_RNDD);
    if (!row_ok || mpfr_sgn(bt) <= 0) {
        undecided++;
    } else {
        mpfr_div(dLSE, dL, bt, MPFR_RNDU);
        bnd_add_pow2(dLSE, half_ulp_exp(tlg, lg, P), bt2);
        bnd_add_pow2(dLSE, half_ulp_exp(tlse, LSE, P), bt2);
        if (!decided(LSE, dLSE)) undecided++;
    }

    mpfr_clears(a, L, th, Dn, N, O, lg, LSE, pm, (mpfr_ptr)0);
    mpfr_clears(dL, dth, dD, dN, dO, dLSE, bt, bt2, lowD, fudge, (mpfr_ptr)0);
    return undecided;
}

static int all_finite(const float *x, int D)
{
    for (int d = 0; d < D; d++)
        if (!isfinite(x[d])) return 0;
    return 1;
}

int fd_ref_row(const fd_problem *p, const float *q, const float *k, const float *v, int b, int h,
               int i, const fd_ref_opts *opt, double *o, fd_ref_row_info *info, char *err,
               size_t errlen)
{
    if (!p || !q || !k || !v || !o) {
        fd_ref_seterr(err, errlen, "fd_ref_row: NULL argument (problem %p, q %p, k %p, v %p, o %p)",
               (const void *)p, (const void *)q, (const void *)k, (const void *)v, (void *)o);
        return -1;
    }
    if (p->batch <= 0 || p->heads <= 0 || p->kv_heads <= 0 || p->seqlen_q <= 0 ||
        p->seqlen_k <= 0 || p->head_dim <= 0 || p->head_dim > FD_HEAD_DIM_LIMIT ||
        p->heads % p->kv_heads != 0) {
        fd_ref_seterr(err, errlen,
               "fd_ref_row: bad shape batch=%d heads=%d kv_heads=%d seqlen_q=%d seqlen_k=%d "
               "head_dim=%d (all > 0, heads a multiple of kv_heads, head_dim <= %d)",
               p->batch, p->heads, p->kv_heads, p->seqlen_q, p->seqlen_k, p->head_dim,
               FD_HEAD_DIM_LIMIT);
        return -1;
    }
    if (b < 0 || b >= p->batch || h < 0 || h >= p->heads || i < 0 || i >= p->seqlen_q) {
        fd_ref_seterr(err, errlen,
               "fd_ref_row: row out of range: b=%d (batch %d), h=%d (heads %d), i=%d (seqlen_q %d)",
               b, p->batch, h, p->heads, i, p->seqlen_q);
        return -1;
    }
    if ((unsigned)p->mask > (unsigned)FD_MASK_CAUSAL_BR || (unsigned)p->dtype > (unsigned)FD_DT_E5M2) {
        fd_ref_seterr(err, errlen, "fd_ref_row: bad mask %d or dtype %d", (int)p->mask, (int)p->dtype);
        return -1;
    }
    if (!(p->dropout_p >= 0.0 && p->dropout_p < 1.0)) {
        fd_ref_seterr(err, errlen, "fd_ref_row: dropout_p = %g (%a) is not in [0, 1)", p->dropout_p,
               p->dropout_p);
        return -1;
    }
    if (!isfinite(p->softmax_scale)) {
        fd_ref_seterr(err, errlen, "fd_ref_row: softmax_scale is not finite (%a)", (double)p->softmax_scale);
        return -1;
    }
    fd_ref_opts dflt;
    fd_ref_opts_default(&dflt);
    if (!opt) opt = &dflt;
    if (opt->prec0 < 64 || opt->prec_max < opt->prec0 || opt->prec_max > FD_PREC_LIMIT) {
        fd_ref_seterr(err, errlen, "fd_ref_row: bad precisions prec0=%d prec_max=%d (need 64 <= prec0 <= "
               "prec_max <= %d)", opt->prec0, opt->prec_max, FD_PREC_LIMIT);
        return -1;
    }
    if (mpfr_get_emin() > -(1L << 20) || mpfr_get_emax() < (1L << 20)) {
        fd_ref_seterr(err, errlen, "fd_ref_row: MPFR exponent range [%ld, %ld] is too narrow (someone "
               "changed it with mpfr_set_emin/emax in this thread)",
               (long)mpfr_get_emin(), (long)mpfr_get_emax());
        return -1;
    }

    const int D = p->head_dim;
    if (fd_problem_check_mods(p, err, errlen)) return -1;
    int lo, hi;
    const int n = fd_mask_visible_range_b(p, b, i, &lo, &hi);
    const int hk = fd_kv_head(p, h);
    fd_ref_row_info inf;
    memset(&inf, 0, sizeof inf);
    inf.nvisible = n;
    if (n == 0) {
        for (int d = 0; d < D; d++) o[d] = 0.0;
        inf.lse = INFINITY;
        if (info) *info = inf;
        return 0;
    }

    fd_rowws ws;
    memset(&ws, 0, sizeof ws);
    ws.p = p;
    ws.n = n;
    ws.D = D;
    ws.lo = lo;
    ws.h = h;
    ws.i = i;
    ws.qrow = q + fd_q_index(p, b, i, h, 0);
    ws.krow = malloc((size_t)n * sizeof(float *));
    ws.kept = malloc((size_t)n * sizeof(int));
    ws.B = malloc((size_t)n * sizeof(long));
    ws.w = malloc((size_t)n * sizeof(double));
    ws.wk = malloc((size_t)n * sizeof(double));
    ws.knz = malloc((size_t)n);
    ws.kx = malloc((size_t)n * sizeof(long));
    int rc = -1;
    if (!ws.krow || !ws.kept || !ws.B || !ws.w || !ws.wk || !ws.knz || !ws.kx) {
        fd_ref_seterr(err, errlen, "fd_ref_row: out of memory for %d keys", n);
        goto out;
    }
    if (!all_finite(ws.qrow, D)) {
        fd_ref_seterr(err, errlen, "fd_ref_row: non-finite q in row b=%d i=%d h=%d", b, i, h);
        goto out;
    }
    const int drop = p->dropout_p > 0.0;
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    for (int jj = 0; jj < n; jj++) { /* kept[] holds indices into the visible keys */
        const int j = lo + jj;
        ws.krow[jj] = k + fd_kv_index(p, b, j, hk, 0);
        if (!all_finite(ws.krow[jj], D) || !all_finite(v + fd_kv_index(p, b, j, hk, 0), D)) {
            fd_ref_seterr(err, errlen, "fd_ref_row: non-finite k or v at b=%d key %d kv head %d", b, j, hk);
            goto out;
        }
        if (!drop || fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j))
            ws.kept[ws.nkept++] = jj;
    }
    inf.nkept = ws.nkept;
    /* V of the kept keys, transposed once so that the per-d loops run contiguously. */
    ws.vcol = malloc(((size_t)ws.nkept * (size_t)D + 1) * sizeof(float));
    if (!ws.vcol) {
        fd_ref_seterr(err, errlen, "fd_ref_row: out of memory for %d x %d values of V", ws.nkept, D);
        goto out;
    }
    ws.ymin = LONG_MAX;
    ws.ymax = LONG_MIN;
    for (int kk = 0; kk < ws.nkept; kk++) {
        const float *vr = v + fd_kv_index(p, b, lo + ws.kept[kk], hk, 0);
        for (int d = 0; d < D; d++) {
            float x = vr[d];
            ws.vcol[(size_t)d * (size_t)ws.nkept + (size_t)kk] = x;
            long vm, ve;
            f32_split(x, &vm, &ve);
            if (vm == 0) continue;
            if (ve < ws.ymin) ws.ymin = ve;
            if (ve > ws.ymax) ws.ymax = ve;
        }
    }
    long sm;
    f32_split(p->softmax_scale, &sm, &ws.sig_e);
    ws.sig_neg = sm < 0;
    ws.sig_m = (mp_limb_t)(sm < 0 ? -sm : sm);
    ws.sig_m2 = 1;
    if (fd_dtype_is_fp8(p->dtype)) { /* sigma = softmax_scale q_descale k_descale, exactly */
        long qm, qe, km, ke;
        f32_split(fd_descale(p->q_descale), &qm, &qe);
        f32_split(fd_descale(p->k_descale), &km, &ke);
        ws.sig_m2 = (mp_limb_t)qm * (mp_limb_t)km;
        ws.sig_e += qe + ke;
    }

    for (long P = opt->prec0;; P *= 2) {
        if (P > opt->prec_max) P = opt->prec_max;
        int u = row_at(&ws, (mpfr_prec_t)P, P == opt->prec0, o, &inf.lse);
        if (u < 0) {
            fd_ref_seterr(err, errlen, "fd_ref_row: out of memory at precision %ld (%d keys)", P, n);
            goto out;
        }
        inf.undecided = u;
        inf.prec_used = (int)P;
        if (u == 0 || P >= opt->prec_max) break;
    }
    if (info) *info = inf;
    rc = 0;
out:
    mparr_free(&ws.s);
    mparr_free(&ws.e);
    mparr_free(&ws.t);
    free(ws.krow);
    free(ws.kept);
    free(ws.B);
    free(ws.w);
    free(ws.wk);
    free(ws.knz);
    free(ws.kx);
    free(ws.ksd);
    free(ws.vcol);
    free(ws.nacc);
    free(ws.nlimb);
    return rc;
}
