/* fd_ref_bwd.c: the exact reference for attention backward, one (b, kv head) group;
 * see fd_ref_bwd.h for the contract and docs/reference.md ("Backward") for a summary.
 *
 * Method: interval arithmetic (MPFI) at working precision P. Every quantity is an
 * interval [lo, hi] of P-bit numbers that is guaranteed to contain the exact value:
 * each MPFI operation rounds its lower end down and its upper end up (MPFR's correct
 * directed rounding), so containment holds by induction over the computation, with no
 * hand-derived error bound to get wrong. MPFI's own operations are the trusted base
 * (mpfi_exp, mpfi_div, ...: MPFR's correctly rounded functions at the ends); where this
 * file writes interval ends itself (iv_addmul_f/_d) it rounds the same way, by hand.
 * The computation, per query head h of the group and query row i (all rows: dK and dV
 * need every row), on the visible keys lo_i <= j <= hi_i (fd_mask_visible_range: the
 * causal mask and the window) and FA2's keep mask (fd_fa2_keep with fd_fa2_threshold, as fd_ref.c):
 *
 *   s_ij  = scale q_i . k_j     EXACT (fd_ref_dot_exact at FD_BWD_DOT_PREC bits)
 *   g_ij  = keep_ij dO_i . v_j  EXACT likewise (0 for dropped keys)
 *   m     = argmax_j s_ij; softmax is invariant under the shift by s_im, so
 *   e_ij  = exp(s_ij - s_im)    (the subtraction an interval at FD_BWD_DOT_PREC bits:
 *                                exact for usual inputs; e_im = exp(0) = [1, 1]; an
 *                                argument below MPFR's exponent range gives [0, tiny],
 *                                still an enclosure)
 *   L_i   = sum_j e_ij,  P_ij = e_ij / L_i   (LSE_i = s_im + log L_i is never needed)
 *   r     = 1 / (1 - p)         (p the binary64 dropout_p, exact; skipped for p = 0)
 *   delta_j = g_ij - g_im       EXACT (both on the same 2^-298 grid); dP_ij = r g_ij
 *   M_i   = (sum_j e_ij delta_j) / L_i = sum_j P_ij delta_j
 *   D_i   = r (g_im + M_i)                    (= sum_j P_ij dP_ij, as sum_j P_ij = 1)
 *   dS_ij = r P_ij (delta_j - M_i)            (= P_ij (dP_ij - D_i))
 *   dQ_i  = scale r sum_j (dS_ij / r) (k_j - k_0)   (listed rows; sum_j dS_ij = 0)
 *   dK_j  = scale r sum_h sum_i (dS^h_ij / r) q^h_i,  dV_j = r sum_h sum_i P^h_ij keep dO^h_i
 * The pivot g_im, the centring by k_0 and r applied last are not cosmetic: intervals
 * cannot see that x - x = 0, so every cancellation that is exact in the mathematics
 * (one visible key: dS = 0; identical keys or values: dP_ij = D_i; a constant K column:
 * dQ_id = 0; dropout's r in both dP and D) is arranged to be an exact operation on
 * exact numbers, giving a point interval, instead of an interval around 0 that no
 * precision would decide. Exact zeros that the formulation cannot see (e.g. two heads
 * with the same q and opposite dO: dK = dV = 0) stay undecided and are counted.
 *
 * Decision (sound): a value's interval [lo, hi] contains the truth x. RN (round to
 * nearest binary64, mpfr_get_d with MPFR_RNDN) is monotone, so RN(lo) <= RN(x) <= RN(hi);
 * when both ends give the same double, RN(x) is that double. Zeros need care because
 * of signs: the exact value 0 is returned as +0 (the forward reference's convention);
 * an end that is zero is read as +0; so [-tiny, 0] (which may hold 0 or a negative
 * tiny x, whose RN is -0) gives -0 vs +0 and is not decided, [0, tiny] gives +0 twice
 * and is (0 and a positive tiny x both round to +0), and [0, 0] is decided +0.
 * An end that is NaN or infinite is never decided.
 * Undecided values make the whole group run again at 2P (up to prec_max); values
 * decided at a lower precision are kept (they are correct), values still undecided
 * at prec_max are counted in info->undecided and returned as RN of their interval's
 * midpoint (the best estimate).
 *
 * Score modifiers (fd_ref.c's forward semantics). The window: row i's visible keys are
 * the interval [lo_i, hi_i] of fd_mask_visible_range instead of a prefix; every sum over
 * j above runs over it, a key's dK/dV over the rows that see it. ALiBi and softcap make
 * the logit l_ij = c tanh(s_ij / c) - slope_h |i + sk - sq - j| (without the cap: s_ij -
 * slope_h |.|); the softmax runs on l, and dS above is multiplied by dl/ds = 1 -
 * tanh^2(s_ij / c) with the cap: the gradient with respect to s (the slopes are
 * constants: no gradient to them). The logits are intervals at FD_BWD_LOGIT_PREC bits (a
 * point without the cap: s exact minus slope * dist exact, so the cancellations above
 * stay exact; with the cap mpfi_tanh at P + 64 bits), the shift c is the largest lower
 * end (any number is a valid shift), the pivot is the first visible key, and the tanh's
 * interval gives 1 - tanh^2 by mpfi_sqr / mpfi_ui_sub. With the cap the dQ centring by
 * k_0 is off: sum_j dS_ij (1 - tanh^2) is not 0.
 *
 * Limits (counted, never wrong): a value within e^-(gap) of a binary64 midpoint, gap a
 * logit gap, needs ~gap/ln 2 bits; weights below MPFR's exponent range (gaps beyond
 * ~7e8 nats) are enclosed as [0, 2^emin], so values made of them may stay undecided.
 *
 * Memory: O(Sk) intervals and exact numbers per row, O((nq + 2 nk) D) accumulators and
 * Sk D doubles (centred K), allocated once per call (mpfi_set_prec between precisions),
 * none in the inner loops. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpfi.h>
#include <mpfr.h>

#include "fd_mods.h"
#include "fd_philox.h"
#include "fd_ref_bwd.h"
#include "fd_ref_dot.h"

#define FD_BWD_PREC_LIMIT 65536
#define FD_BWD_HEAD_DIM_LIMIT 65536

/* ---------------------------------------------------------------------------------
 * Intervals on one allocation: an array of n mpfi_t. */
typedef struct {
    mpfi_t *x;
    size_t n;
} fd_iv;

static int iv_alloc(fd_iv *a, size_t n)
{
    a->n = 0;
    a->x = malloc((n ? n : 1) * sizeof(mpfi_t));
    if (!a->x) return -1;
    for (size_t i = 0; i < n; i++) mpfi_init2(a->x[i], 64);
    a->n = n;
    return 0;
}
static void iv_free(fd_iv *a)
{
    for (size_t i = 0; i < a->n; i++) mpfi_clear(a->x[i]);
    free(a->x);
    a->x = NULL;
    a->n = 0;
}
static void iv_prec(fd_iv *a, mpfr_prec_t P)
{
    for (size_t i = 0; i < a->n; i++) mpfi_set_prec(a->x[i], P);
}
static void iv_zero(fd_iv *a)
{
    for (size_t i = 0; i < a->n; i++) mpfi_set_ui(a->x[i], 0);
}

/* ---------------------------------------------------------------------------------
 * The decision rule (see the top comment). */
static double end_to_double(mpfr_srcptr e)
{
    return mpfr_zero_p(e) ? 0.0 : mpfr_get_d(e, MPFR_RNDN);
}

/* 1 and *out = the correctly rounded value when [lo, hi] proves it; 0 otherwise. */
static int iv_decide(mpfi_srcptr x, double *out)
{
    if (!mpfr_number_p(&x->left) || !mpfr_number_p(&x->right)) return 0;
    double a = end_to_double(&x->left), b = end_to_double(&x->right);
    uint64_t ua, ub;
    memcpy(&ua, &a, 8);
    memcpy(&ub, &b, 8);
    if (ua != ub) return 0;
    *out = a;
    return 1;
}

/* Best estimate of an undecided value: RN of the midpoint (NaN ends give NaN). */
static double iv_estimate(mpfi_srcptr x, mpfr_ptr tmp)
{
    mpfi_mid(tmp, x);
    return end_to_double(tmp);
}

/* Writes *dst from x unless already decided; returns 1 when still undecided. */
static int settle(mpfi_srcptr x, double *dst, unsigned char *ok, mpfr_ptr tmp)
{
    if (*ok) return 0;
    double v;
    if (iv_decide(x, &v)) {
        *dst = v;
        *ok = 1;
        return 0;
    }
    *dst = iv_estimate(x, tmp);
    return 1;
}

/* ---------------------------------------------------------------------------------
 * The group's fixed data and scratch. */

/* Dots of binary32 vectors are computed EXACTLY at this precision: every product is a
 * multiple of 2^-298 (two multiples of 2^-149) below 2^256 in magnitude, so a sum of
 * at most 2^16 of them is an integer multiple of 2^-298 below 2^272 (570 bits), and
 * times the binary32 scale (24 bits) still fits: 594 < 704. Differences of two such
 * dots (same grid, below 2^273) are exact too. Exactness matters beyond accuracy: it
 * turns the cancellations that are exact in the mathematics (a single visible key,
 * equal keys, dP_ij = D_i) into exact zeros instead of intervals around zero that no
 * precision could decide. */
#define FD_BWD_DOT_PREC 704
/* Logits with ALiBi and no cap: s (594 bits, a multiple of 2^-447) minus slope * dist (55
 * bits, a multiple of 2^-149, below 2^159) is a multiple of 2^-447 below 2^400: exact. */
#define FD_BWD_LOGIT_PREC 1024

typedef struct {
    const fd_problem *p;
    const float *q, *k, *v, *dout;
    int b, hk, group, D;
    const int *qrows, *krows;
    int nq, nk;
    int *qfirst, *qnext; /* listed slots of query row i: qfirst[i], qnext[t], ..., -1 */
    unsigned char *kept; /* per key of the current row */
    double *kc;          /* [Sk][D]: k_jd - k_0d, or k_jd for columns where that is inexact */
    /* exact numbers (FD_BWD_DOT_PREC bits), per key of the current row */
    mpfr_t *sx; /* s_ij = scale q_i . k_j */
    mpfr_t *gx; /* keep_ij (dO_i . v_j) */
    mpfr_t x;   /* scratch */
    mpfi_t a;   /* s_ij - s_max, an interval at FD_BWD_DOT_PREC bits */
    /* ALiBi / softcap (mods): logits l_ij and tanh(s_ij / c), per key of the current row */
    int mods, capped;
    fd_iv lg, th;
    mpfi_t la;      /* l_ij - shift, at the logits' precision */
    mpfr_t shift;   /* the shift c (the largest lower end of the row's logits) */
    int *kcum;      /* kcum[j]: listed key rows below j (kcum[Sk] = nk) */
    /* intervals at the working precision P */
    fd_iv e, dl, ds; /* per key of the current row: e then P_ij; delta_j then dV weight; dS/r */
    fd_iv dqa;       /* D accumulators for the current row's dQ */
    fd_iv dka, dva;  /* [nk][D] */
    mpfi_t L, N, M, t, r, sc;
    mpfr_t mid, tr;
    int drop;
    /* decided flags, kept across precisions */
    unsigned char *ok_dq, *ok_dk, *ok_dv, *ok_ds;
} fd_bwdws;

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

/* acc += x * c for an interval x and a binary32 c, outward: the lower end takes the
 * product of the end that is smaller after scaling by c (the left end for c > 0, the
 * right end for c < 0), rounded down, and adds it rounded down; the upper end likewise
 * upward. c = M 2^E: mpfr_mul_si (one limb multiply) then an exact power-of-two scaling,
 * which is 2-3x cheaper than mpfi_mul_d + mpfi_add (a temporary per call). t is scratch
 * at the working precision. */
static void iv_addmul_f(mpfi_ptr acc, mpfi_srcptr x, float c, mpfr_ptr t)
{
    long m, e;
    f32_split(c, &m, &e);
    if (m == 0) return;
    mpfr_srcptr lo = m > 0 ? &x->left : &x->right, hi = m > 0 ? &x->right : &x->left;
    mpfr_mul_si(t, lo, m, MPFR_RNDD);
    mpfr_mul_2si(t, t, e, MPFR_RNDD);
    mpfr_add(&acc->left, &acc->left, t, MPFR_RNDD);
    mpfr_mul_si(t, hi, m, MPFR_RNDU);
    mpfr_mul_2si(t, t, e, MPFR_RNDU);
    mpfr_add(&acc->right, &acc->right, t, MPFR_RNDU);
}

/* acc += x * c for a binary64 c, outward, as iv_addmul_f (53-bit integer multiplier). */
static void iv_addmul_d(mpfi_ptr acc, mpfi_srcptr x, double c, mpfr_ptr t)
{
    if (!(c < 0.0 || c > 0.0)) return;
    int ex;
    double f = frexp(c, &ex);
    long m = (long)ldexp(f, 53), e = (long)ex - 53; /* c = m 2^e exactly, |m| < 2^53 */
    mpfr_srcptr lo = m > 0 ? &x->left : &x->right, hi = m > 0 ? &x->right : &x->left;
    mpfr_mul_si(t, lo, m, MPFR_RNDD);
    mpfr_mul_2si(t, t, e, MPFR_RNDD);
    mpfr_add(&acc->left, &acc->left, t, MPFR_RNDD);
    mpfr_mul_si(t, hi, m, MPFR_RNDU);
    mpfr_mul_2si(t, t, e, MPFR_RNDU);
    mpfr_add(&acc->right, &acc->right, t, MPFR_RNDU);
}

/* *out = a - b when that difference of two binary32 is a binary64 (returns 1), else 0.
 * Integer arithmetic, no rounding: with a = ma 2^ea, b = mb 2^eb (|m| < 2^24) and
 * e = min(ea, eb), a - b = (ma 2^(ea-e) - mb 2^(eb-e)) 2^e, exact in int64 when the
 * shifts are <= 29, a binary64 when that integer is below 2^53 (e >= -149: no underflow). */
static int f32_diff_exact(float a, float b, double *out)
{
    long ma, ea, mb, eb;
    f32_split(a, &ma, &ea);
    f32_split(b, &mb, &eb);
    if (ma == 0 || mb == 0) {
        *out = (double)a - (double)b; /* one operand is zero: exact */
        return 1;
    }
    long e = ea < eb ? ea : eb;
    if (ea - e > 29 || eb - e > 29) return 0;
    int64_t d = (int64_t)ma * ((int64_t)1 << (ea - e)) - (int64_t)mb * ((int64_t)1 << (eb - e));
    if (d >= ((int64_t)1 << 53) || d <= -((int64_t)1 << 53)) return 0;
    *out = ldexp((double)d, (int)e);
    return 1;
}

/* MPFI's convention for zero ends ([+0, -0]), restored after iv_addmul_f wrote the
 * ends directly (x + (-x) rounded down is -0), before the interval goes back to MPFI. */
static void iv_fix_zeros(mpfi_ptr x)
{
    if (mpfr_zero_p(&x->left)) mpfr_set_zero(&x->left, 1);
    if (mpfr_zero_p(&x->right)) mpfr_set_zero(&x->right, -1);
}

/* y = exp(a), outward. When a is a point (the usual case: s_ij - s_im is exact), one
 * mpfr_exp rounded down gives the lower end, and the upper end is the same number when
 * MPFR says it was exact, else its successor (correct rounding down: lo <= exp(a) <
 * succ(lo)); this halves the exponentials against mpfi_exp, which computes both ends.
 * Otherwise mpfi_exp. */
static void iv_exp_point(mpfi_ptr y, mpfi_srcptr a)
{
    if (!mpfr_equal_p(&a->left, &a->right)) {
        mpfi_exp(y, a);
        return;
    }
    int t = mpfr_exp(&y->left, &a->left, MPFR_RNDD);
    mpfr_set(&y->right, &y->left, MPFR_RNDN); /* same precision: exact */
    if (t != 0) mpfr_nextabove(&y->right);
    iv_fix_zeros(y);
}


/* s = scale * sum_d a_d b_d, exact (FD_BWD_DOT_PREC bits); -1 if it was not (impossible
 * by the bound in fd_ref_dot.h; checked because every later step relies on it). */
static int dot_exact(mpfr_ptr s, const float *a, const float *b, int D, float scale)
{
    return fd_ref_dot_exact(s, a, b, D, scale) == 0 ? 0 : -1;
}

/* Row i of head h, keys j < n. With the shift c = s_max (an exact number: softmax does
 * not depend on it) and the pivot g0 = keep_im (dO_i . v_m) of the key m with the largest
 * logit, and delta_j = keep_ij (dO_i . v_j) - g0 (exact), dP_ij = r (g0 + delta_j) and
 * sum_j P_ij = 1 give
 *   D_i = r (g0 + M_i),  M_i = sum_j P_ij delta_j = (sum_j e_ij delta_j) / L_i,
 *   dS_ij = r P_ij (delta_j - M_i).
 * Leaves P_ij in e, the dV weight P_ij keep_ij in dl, dS_ij / r in ds, M_i in M; the
 * factor r is applied once per output (r is an interval unless p = 0, and multiplying
 * it into dP before the subtraction would widen dP - D around its exact zeros). */
static int row_intervals(fd_bwdws *w, int h, int i, int lo, int hi)
{
    const fd_problem *p = w->p;
    const int D = w->D;
    const float *qi = w->q + fd_q_index(p, w->b, i, h, 0);
    const float *doi = w->dout + fd_q_index(p, w->b, i, h, 0);
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);

    int jm = lo;
    for (int j = lo; j <= hi; j++) {
        const float *kj = w->k + fd_kv_index(p, w->b, j, w->hk, 0);
        if (dot_exact(w->sx[j], qi, kj, D, p->softmax_scale)) return -1;
        if (w->mods) {
            /* l = c tanh(s / c) - slope |i + sk - sq - j| */
            mpfi_ptr l = w->lg.x[j];
            mpfi_set_fr(l, w->sx[j]);
            if (w->capped) {
                mpfi_div_d(l, l, (double)p->softcap);
                mpfi_tanh(w->th.x[j], l);
                mpfi_mul_d(l, w->th.x[j], (double)p->softcap);
            }
            if (p->alibi) {
                mpfr_set_d(w->x, (double)p->alibi_slopes[h], MPFR_RNDN); /* exact */
                mpfr_mul_si(w->x, w->x, fd_alibi_dist(i, j, p->seqlen_q, p->seqlen_k), MPFR_RNDN);
                mpfi_sub_fr(l, l, w->x); /* slope * dist exact (55 bits) */
            }
            if (j == lo || mpfr_cmp(&l->left, w->shift) > 0) mpfr_set(w->shift, &l->left, MPFR_RNDN);
        } else if (mpfr_cmp(w->sx[j], w->sx[jm]) > 0) {
            jm = j;
        }
        w->kept[j] = (unsigned char)(!w->drop || fd_fa2_keep(p->seed, p->offset, thr, p->heads,
                                                              w->b, h, i, j));
        if (!w->kept[j]) mpfr_set_zero(w->gx[j], 1);
        else if (dot_exact(w->gx[j], doi, w->v + fd_kv_index(p, w->b, j, w->hk, 0), D, 1.0f))
            return -1;
    }
    mpfi_set_ui(w->L, 0);
    mpfi_set_ui(w->N, 0);
    for (int j = lo; j <= hi; j++) {
        if (w->mods) {
            mpfi_sub_fr(w->la, w->lg.x[j], w->shift);
            iv_exp_point(w->e.x[j], w->la);
        } else {
            mpfi_set_fr(w->a, w->sx[j]);
            mpfi_sub_fr(w->a, w->a, w->sx[jm]);
            iv_exp_point(w->e.x[j], w->a); /* rounded outward to P; exp(0) = [1, 1] */
        }
        mpfi_add(w->L, w->L, w->e.x[j]);
        mpfr_sub(w->x, w->gx[j], w->gx[jm], MPFR_RNDN); /* exact */
        mpfi_set_fr(w->dl.x[j], w->x);
        mpfi_mul(w->t, w->e.x[j], w->dl.x[j]);
        mpfi_add(w->N, w->N, w->t);
    }
    mpfi_div(w->M, w->N, w->L);
    for (int j = lo; j <= hi; j++) {
        mpfi_div(w->e.x[j], w->e.x[j], w->L); /* P_ij */
        mpfi_sub(w->ds.x[j], w->dl.x[j], w->M);
        mpfi_mul(w->ds.x[j], w->ds.x[j], w->e.x[j]);
        if (w->capped) { /* times dl/ds = 1 - tanh^2(s / c) */
            mpfi_sqr(w->t, w->th.x[j]);
            mpfi_ui_sub(w->t, 1, w->t);
            mpfi_mul(w->ds.x[j], w->ds.x[j], w->t);
        }
        if (w->kept[j]) mpfi_set(w->dl.x[j], w->e.x[j]);
        else mpfi_set_ui(w->dl.x[j], 0);
    }
    /* D_i = r (g0 + M_i), into M */
    mpfi_add_fr(w->M, w->M, w->gx[jm]);
    if (w->drop) mpfi_mul(w->M, w->M, w->r);
    return 0;
}

/* dQ of row i (head h_in_group hh) into every listed slot of row i; returns undecided.
 * sum_j dS_ij = sum_j P_ij (dP_ij - D_i) = D_i - D_i = 0 over the visible keys, so
 * dQ_i = scale sum_j dS_ij (k_j - c) for any constant vector c (visible or not); with
 * c = k_0, a column where K is
 * constant gives an exact 0 instead of an interval around 0 that no precision decides,
 * and near-equal keys lose their common part before the sum. */
static int row_dq(fd_bwdws *w, int hh, int i, int lo, int hi, double *dq, double *dsum)
{
    const int D = w->D;
    int und = 0;
    for (int d = 0; d < D; d++) mpfi_set_ui(w->dqa.x[d], 0);
    for (int j = lo; j <= hi; j++) {
        if (mpfi_is_zero(w->ds.x[j])) continue;
        const double *kj = w->kc + (size_t)j * (size_t)D;
        for (int d = 0; d < D; d++) iv_addmul_d(w->dqa.x[d], w->ds.x[j], kj[d], w->tr);
    }
    for (int d = 0; d < D; d++) {
        mpfi_ptr acc = w->dqa.x[d];
        iv_fix_zeros(acc);
        mpfi_mul(acc, acc, w->sc);
        if (w->drop) mpfi_mul(acc, acc, w->r);
    }
    for (int t = w->qfirst[i]; t >= 0; t = w->qnext[t]) {
        size_t base = ((size_t)hh * (size_t)w->nq + (size_t)t) * (size_t)D;
        for (int d = 0; d < D; d++)
            und += settle(w->dqa.x[d], &dq[base + (size_t)d], &w->ok_dq[base + (size_t)d], w->mid);
        size_t si = (size_t)hh * (size_t)w->nq + (size_t)t;
        double scratch;
        und += settle(w->M, dsum ? &dsum[si] : &scratch, &w->ok_ds[si], w->mid);
    }
    return und;
}

/* Adds row i's contributions to the listed keys' dK / (scale r) and dV / r. */
static void row_dkdv(fd_bwdws *w, int h, int i, int lo, int hi)
{
    const int D = w->D;
    const float *qi = w->q + fd_q_index(w->p, w->b, i, h, 0);
    const float *doi = w->dout + fd_q_index(w->p, w->b, i, h, 0);
    for (int t = 0; t < w->nk; t++) {
        int j = w->krows[t];
        if (j < lo || j > hi) continue;
        mpfi_t *dk = w->dka.x + (size_t)t * (size_t)D, *dv = w->dva.x + (size_t)t * (size_t)D;
        if (!mpfi_is_zero(w->ds.x[j]))
            for (int d = 0; d < D; d++) iv_addmul_f(dk[d], w->ds.x[j], qi[d], w->tr);
        if (w->kept[j])
            for (int d = 0; d < D; d++) iv_addmul_f(dv[d], w->dl.x[j], doi[d], w->tr);
    }
}

static void ws_prec(fd_bwdws *w, mpfr_prec_t P)
{
    iv_prec(&w->e, P);
    iv_prec(&w->dl, P);
    iv_prec(&w->ds, P);
    iv_prec(&w->dqa, P);
    iv_prec(&w->dka, P);
    iv_prec(&w->dva, P);
    mpfi_set_prec(w->L, P);
    mpfi_set_prec(w->N, P);
    mpfi_set_prec(w->M, P);
    mpfi_set_prec(w->t, P);
    mpfi_set_prec(w->r, P);
    mpfi_set_prec(w->sc, P);
    mpfr_set_prec(w->mid, P);
    mpfr_set_prec(w->tr, P);
    if (w->mods) {
        const mpfr_prec_t LP = w->capped ? P + 64 : FD_BWD_LOGIT_PREC;
        iv_prec(&w->lg, LP);
        iv_prec(&w->th, LP);
        mpfi_set_prec(w->la, LP);
        mpfr_set_prec(w->shift, LP);
    }
}

/* The whole group at precision P; returns the number of values still undecided, or -1
 * when an exact dot was not exact (an internal error). */
static int group_at(fd_bwdws *w, mpfr_prec_t P, double *dq, double *dk, double *dv,
                    double *dsum)
{
    const fd_problem *p = w->p;
    const int D = w->D, Sq = p->seqlen_q;
    int und = 0;
    ws_prec(w, P);
    iv_zero(&w->dka);
    iv_zero(&w->dva);
    mpfi_set_d(w->sc, (double)p->softmax_scale); /* exact */
    mpfi_set_d(w->r, p->dropout_p);               /* exact */
    mpfi_ui_sub(w->r, 1, w->r);                    /* 1 - p */
    mpfi_ui_div(w->r, 1, w->r);                    /* 1 / (1 - p) */

    for (int hh = 0; hh < w->group; hh++) {
        const int h = w->hk * w->group + hh;
        for (int i = 0; i < Sq; i++) {
            int lo, hi;
            const int n = fd_mask_visible_range(p, i, &lo, &hi);
            const int listed = w->qfirst[i] >= 0;
            if (n == 0) {
                /* no visible key: dQ = 0 and D = 0 exactly, nothing for dK, dV */
                for (int t = w->qfirst[i]; t >= 0; t = w->qnext[t]) {
                    size_t si = (size_t)hh * (size_t)w->nq + (size_t)t;
                    for (int d = 0; d < D; d++) {
                        dq[si * (size_t)D + (size_t)d] = 0.0;
                        w->ok_dq[si * (size_t)D + (size_t)d] = 1;
                    }
                    if (dsum) dsum[si] = 0.0;
                    w->ok_ds[si] = 1;
                }
                continue;
            }
            if (!listed && w->kcum[hi + 1] == w->kcum[lo]) continue; /* feeds no output */
            if (row_intervals(w, h, i, lo, hi)) return -1;
            if (listed) und += row_dq(w, hh, i, lo, hi, dq, dsum);
            row_dkdv(w, h, i, lo, hi);
        }
    }
    for (size_t x = 0; x < (size_t)w->nk * (size_t)D; x++) {
        iv_fix_zeros(w->dka.x[x]);
        iv_fix_zeros(w->dva.x[x]);
        mpfi_mul(w->dka.x[x], w->dka.x[x], w->sc);
        if (w->drop) {
            mpfi_mul(w->dka.x[x], w->dka.x[x], w->r);
            mpfi_mul(w->dva.x[x], w->dva.x[x], w->r);
        }
        und += settle(w->dka.x[x], &dk[x], &w->ok_dk[x], w->mid);
        und += settle(w->dva.x[x], &dv[x], &w->ok_dv[x], w->mid);
    }
    return und;
}

/* ---------------------------------------------------------------------------------
 * Arguments. */
static int all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static int check_args(const fd_problem *p, const float *q, const float *k, const float *v,
                      const float *dout, int b, int hk, const int *qrows, int nq,
                      const int *krows, int nk, const fd_ref_opts *opt, double *dq, double *dk,
                      double *dv, char *err, size_t errlen)
{
    if (!p || !q || !k || !v || !dout || !opt) {
        fd_ref_seterr(err, errlen, "fd_ref_bwd_group: NULL argument (problem, q, k, v, dout must be "
               "non-NULL)");
        return -1;
    }
    if (p->batch <= 0 || p->heads <= 0 || p->kv_heads <= 0 || p->seqlen_q <= 0 ||
        p->seqlen_k <= 0 || p->head_dim <= 0 || p->head_dim > FD_BWD_HEAD_DIM_LIMIT ||
        p->heads % p->kv_heads != 0) {
        fd_ref_seterr(err, errlen,
               "fd_ref_bwd_group: bad shape batch=%d heads=%d kv_heads=%d seqlen_q=%d "
               "seqlen_k=%d head_dim=%d (all > 0, heads a multiple of kv_heads, head_dim <= %d)",
               p->batch, p->heads, p->kv_heads, p->seqlen_q, p->seqlen_k, p->head_dim,
               FD_BWD_HEAD_DIM_LIMIT);
        return -1;
    }
    if (b < 0 || b >= p->batch || hk < 0 || hk >= p->kv_heads) {
        fd_ref_seterr(err, errlen, "fd_ref_bwd_group: group out of range: b=%d (batch %d), hk=%d "
               "(kv_heads %d)", b, p->batch, hk, p->kv_heads);
        return -1;
    }
    if ((unsigned)p->mask > (unsigned)FD_MASK_CAUSAL_BR ||
        (unsigned)p->dtype > (unsigned)FD_DT_FP32) {
        fd_ref_seterr(err, errlen, "fd_ref_bwd_group: bad mask %d or dtype %d", (int)p->mask,
               (int)p->dtype);
        return -1;
    }
    if (!(p->dropout_p >= 0.0 && p->dropout_p < 1.0)) {
        fd_ref_seterr(err, errlen, "fd_ref_bwd_group: dropout_p = %g is not in [0, 1)", p->dropout_p);
        return -1;
    }
    if (p->page_size > 0) {
        fd_ref_seterr(err, errlen, "the backward of a paged KV cache is not supported (forward only)");
        return -1;
    }
    if (fd_problem_check_mods(p, err, errlen)) return -1;
    if (!isfinite(p->softmax_scale)) {
        fd_ref_seterr(err, errlen, "fd_ref_bwd_group: softmax_scale is not finite (%a)",
               (double)p->softmax_scale);
        return -1;
    }
    if (nq < 0 || nk < 0 || (nq > 0 && (!qrows || !dq)) || (nk > 0 && (!krows || !dk || !dv))) {
        fd_ref_seterr(err, errlen, "fd_ref_bwd_group: bad row lists nq=%d nk=%d (need counts >= 0 and "
               "non-NULL qrows/dq, krows/dk/dv when the count is > 0)", nq, nk);
        return -1;
    }
    for (int t = 0; t < nq; t++)
        if (qrows[t] < 0 || qrows[t] >= p->seqlen_q) {
            fd_ref_seterr(err, errlen, "fd_ref_bwd_group: qrows[%d] = %d, expected 0 <= row < %d", t,
                   qrows[t], p->seqlen_q);
            return -1;
        }
    for (int t = 0; t < nk; t++)
        if (krows[t] < 0 || krows[t] >= p->seqlen_k) {
            fd_ref_seterr(err, errlen, "fd_ref_bwd_group: krows[%d] = %d, expected 0 <= row < %d", t,
                   krows[t], p->seqlen_k);
            return -1;
        }
    if (opt->prec0 < 64 || opt->prec_max < opt->prec0 || opt->prec_max > FD_BWD_PREC_LIMIT) {
        fd_ref_seterr(err, errlen, "fd_ref_bwd_group: bad precisions prec0=%d prec_max=%d (need 64 <= "
               "prec0 <= prec_max <= %d)", opt->prec0, opt->prec_max, FD_BWD_PREC_LIMIT);
        return -1;
    }
    /* the group's rows of q and dO, and its keys: finite, or the intervals are meaningless */
    const int group = p->heads / p->kv_heads, D = p->head_dim;
    for (int i = 0; i < p->seqlen_q; i++)
        for (int hh = 0; hh < group; hh++) {
            size_t x = fd_q_index(p, b, i, hk * group + hh, 0);
            if (!all_finite(q + x, (size_t)D) || !all_finite(dout + x, (size_t)D)) {
                fd_ref_seterr(err, errlen, "fd_ref_bwd_group: non-finite q or dout at b=%d row %d "
                       "head %d, expected finite values", b, i, hk * group + hh);
                return -1;
            }
        }
    for (int j = 0; j < p->seqlen_k; j++) {
        size_t x = fd_kv_index(p, b, j, hk, 0);
        if (!all_finite(k + x, (size_t)D) || !all_finite(v + x, (size_t)D)) {
            fd_ref_seterr(err, errlen, "fd_ref_bwd_group: non-finite k or v at b=%d key %d kv head %d, "
                   "expected finite values", b, j, hk);
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------
 * Workspace. */
static void ws_free(fd_bwdws *w)
{
    iv_free(&w->e);
    iv_free(&w->dl);
    iv_free(&w->ds);
    iv_free(&w->dqa);
    iv_free(&w->dka);
    iv_free(&w->dva);
    mpfi_clear(w->L);
    mpfi_clear(w->N);
    mpfi_clear(w->M);
    mpfi_clear(w->t);
    mpfi_clear(w->r);
    mpfi_clear(w->sc);
    mpfi_clear(w->a);
    iv_free(&w->lg);
    iv_free(&w->th);
    mpfi_clear(w->la);
    mpfr_clear(w->shift);
    free(w->kcum);
    mpfr_clear(w->mid);
    mpfr_clear(w->tr);
    mpfr_clear(w->x);
    if (w->sx)
        for (int j = 0; j < w->p->seqlen_k; j++) mpfr_clear(w->sx[j]);
    if (w->gx)
        for (int j = 0; j < w->p->seqlen_k; j++) mpfr_clear(w->gx[j]);
    free(w->sx);
    free(w->gx);
    free(w->qfirst);
    free(w->qnext);
    free(w->kept);
    free(w->kc);
    free(w->ok_dq);
    free(w->ok_dk);
    free(w->ok_dv);
    free(w->ok_ds);
}

static int ws_alloc(fd_bwdws *w)
{
    const fd_problem *p = w->p;
    const size_t Sk = (size_t)p->seqlen_k, D = (size_t)w->D;
    const size_t nqs = (size_t)w->group * (size_t)w->nq, nkd = (size_t)w->nk * D;
    mpfi_init2(w->L, 64);
    mpfi_init2(w->N, 64);
    mpfi_init2(w->M, 64);
    mpfi_init2(w->t, 64);
    mpfi_init2(w->r, 64);
    mpfi_init2(w->sc, 64);
    mpfi_init2(w->a, FD_BWD_DOT_PREC);
    mpfi_init2(w->la, FD_BWD_LOGIT_PREC);
    mpfr_init2(w->shift, FD_BWD_LOGIT_PREC);
    mpfr_init2(w->mid, 64);
    mpfr_init2(w->tr, 64);
    mpfr_init2(w->x, FD_BWD_DOT_PREC);
    mpfr_t *sx = malloc(Sk * sizeof(mpfr_t)), *gx = malloc(Sk * sizeof(mpfr_t));
    if (!sx || !gx) {
        free(sx);
        free(gx);
        return -1;
    }
    for (size_t j = 0; j < Sk; j++) mpfr_inits2(FD_BWD_DOT_PREC, sx[j], gx[j], (mpfr_ptr)0);
    w->sx = sx;
    w->gx = gx;
    w->qfirst = malloc((size_t)p->seqlen_q * sizeof(int));
    w->qnext = malloc(((size_t)w->nq + 1) * sizeof(int));
    w->kept = malloc(Sk);
    w->kc = malloc(Sk * D * sizeof(double) + 1);
    w->ok_dq = calloc(nqs * D + 1, 1);
    w->ok_dk = calloc(nkd + 1, 1);
    w->ok_dv = calloc(nkd + 1, 1);
    w->ok_ds = calloc(nqs + 1, 1);
    if (!w->qfirst || !w->qnext || !w->kept || !w->kc || !w->ok_dq || !w->ok_dk || !w->ok_dv ||
        !w->ok_ds)
        return -1;
    w->kcum = calloc(Sk + 1, sizeof(int));
    if (!w->kcum) return -1;
    for (int t = 0; t < w->nk; t++) w->kcum[w->krows[t] + 1]++;
    for (size_t j = 0; j < Sk; j++) w->kcum[j + 1] += w->kcum[j];
    if (iv_alloc(&w->lg, w->mods ? Sk : 0) || iv_alloc(&w->th, w->capped ? Sk : 0)) return -1;
    if (iv_alloc(&w->e, Sk) || iv_alloc(&w->dl, Sk) ||
        iv_alloc(&w->ds, Sk) || iv_alloc(&w->dqa, D) || iv_alloc(&w->dka, nkd) ||
        iv_alloc(&w->dva, nkd))
        return -1;
    for (int i = 0; i < p->seqlen_q; i++) w->qfirst[i] = -1;
    for (int t = w->nq - 1; t >= 0; t--) { /* slots of a row in ascending order */
        w->qnext[t] = w->qfirst[w->qrows[t]];
        w->qfirst[w->qrows[t]] = t;
    }
    for (size_t d = 0; d < D; d++) { /* the centred K columns (see row_dq) */
        const float k0 = w->k[fd_kv_index(p, w->b, 0, w->hk, (int)d)];
        int exact = !w->capped; /* the cap: no centring (see the top) */
        for (size_t j = 0; j < Sk && exact; j++)
            exact = f32_diff_exact(w->k[fd_kv_index(p, w->b, (int)j, w->hk, (int)d)], k0,
                                   &w->kc[j * D + d]);
        if (!exact)
            for (size_t j = 0; j < Sk; j++)
                w->kc[j * D + d] = (double)w->k[fd_kv_index(p, w->b, (int)j, w->hk, (int)d)];
    }
    return 0;
}

int fd_ref_bwd_group(const fd_problem *p, const float *q, const float *k, const float *v,
                     const float *dout, int b, int hk, const int *qrows, int nq,
                     const int *krows, int nk, const fd_ref_opts *opt, double *dq, double *dk,
                     double *dv, double *dsum, fd_ref_bwd_info *info, char *err, size_t errlen)
{
    fd_ref_opts dflt;
    fd_ref_opts_default(&dflt);
    if (!opt) opt = &dflt;
    if (check_args(p, q, k, v, dout, b, hk, qrows, nq, krows, nk, opt, dq, dk, dv, err, errlen))
        return -1;

    fd_bwdws w;
    memset(&w, 0, sizeof w);
    w.p = p;
    w.q = q;
    w.k = k;
    w.v = v;
    w.dout = dout;
    w.b = b;
    w.hk = hk;
    w.group = p->heads / p->kv_heads;
    w.D = p->head_dim;
    w.qrows = qrows;
    w.nq = nq;
    w.krows = krows;
    w.nk = nk;
    w.drop = p->dropout_p > 0.0;
    w.capped = p->softcap > 0.0f;
    w.mods = w.capped || p->alibi;
    int rc = -1;
    if (ws_alloc(&w)) {
        fd_ref_seterr(err, errlen, "fd_ref_bwd_group: out of memory for %d keys, %d query rows x %d "
               "heads, %d key rows, head_dim %d", p->seqlen_k, nq, w.group, nk, w.D);
        goto out;
    }
    fd_ref_bwd_info inf = {0, 0};
    for (long P = opt->prec0;; P *= 2) {
        if (P > opt->prec_max) P = opt->prec_max;
        inf.undecided = group_at(&w, (mpfr_prec_t)P, dq, dk, dv, dsum);
        if (inf.undecided < 0) {
            fd_ref_seterr(err, errlen, "fd_ref_bwd_group: internal error: a dot product of b=%d kv head "
                   "%d was not exact at %d bits, expected exact", b, hk, FD_BWD_DOT_PREC);
            goto out;
        }
        inf.prec_used = (int)P;
        if (inf.undecided == 0 || P >= opt->prec_max) break;
    }
    if (info) *info = inf;
    rc = 0;
out:
    ws_free(&w);
    return rc;
}
