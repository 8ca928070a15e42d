/* fd_tier.h: the certified binary64 tier of the reference, one bounded algorithm for host
 * C (reference/fd_tier_cpu.c) and CUDA device code (reference/fd_tier_gpu.cu).
 *
 * For one query row it computes, in binary64 with every operation rounded to nearest
 * (no contraction: FD_TB_MUL/ADD/SUB/DIV are __dmul_rn etc. on the device, and C code is
 * built with -ffp-contract=off), the same quantities as reference/fd_ref.c:
 *   s_j  = sigma q.k_j  [-> c tanh(s_j / c)] [- slope_h |i + sk - sq - j|]
 *   m'   = max computed s'_j (an exact shift: O and LSE do not depend on it)
 *   e_j  = exp(s_j - m'),  L = sum_visible e_j,  N_d = sum_kept e_j v_jd
 *   O_d  = N_d / ((1 - p) L),   LSE = m' + log L
 * together with a rigorous upper bound on |computed - exact| for each O_d and the LSE
 * (docs/reference.md, "The binary64 tier", gives the derivation; every step is named
 * below). A value is DECIDED (fd_tb_decide) when its enclosure [x - dx, x + dx]
 *   - excludes 0 (or is the exact 0 of a row with no visible key),
 *   - lies in one binade of the output dtype's ulp function (fd_tb_ulp_dtype, the same
 *     function as harness/fd_metrics.c's fd_ulp_in_dtype), and
 *   - dx + 2^-53 |hi| <= ulp_dtype / 1000,
 * so that the value the MPFR reference would return (the correctly rounded binary64 of
 * the truth) is within 1/1000 ulp of the output dtype of x and has the same ulp: every
 * metric flashdrift reports (abs, ulps, and rel to the same fraction of an ulp relative)
 * is known to 1/1000 ulp. Undecided values go to the MPFR reference (the caller does it).
 *
 * Named assumption (FD_TB_LIBM_ULP): exp, log and tanh in binary64 are within 8 ulp of
 * the exact result. glibc's manual and the CUDA Programming Guide document at most 1-2
 * ulp for these functions (tables from extensive, not exhaustive, tests);
 * tests/test_tier.c measures the host libm against MPFR. */
#ifndef FD_TIER_H
#define FD_TIER_H
#include <math.h>
#include <stdint.h>
#include "fd_hd.h"
#include "fd_problem.h"
#include "fd_philox.h"

#if defined(__CUDA_ARCH__)
#define FD_TB_MUL(a, b) __dmul_rn((a), (b))
#define FD_TB_ADD(a, b) __dadd_rn((a), (b))
#define FD_TB_SUB(a, b) __dsub_rn((a), (b))
#define FD_TB_DIV(a, b) __ddiv_rn((a), (b))
#else
#define FD_TB_MUL(a, b) ((a) * (b))
#define FD_TB_ADD(a, b) ((a) + (b))
#define FD_TB_SUB(a, b) ((a) - (b))
#define FD_TB_DIV(a, b) ((a) / (b))
#endif

#define FD_TB_U 0x1p-53          /* unit roundoff of binary64 */
#define FD_TB_ETA 0x1p-1074      /* underflow of one product or quotient */
#define FD_TB_LIBM_ULP 8.0       /* assumed max error of exp, log, tanh (ulp) */
#define FD_TB_LIBM (2.0 * FD_TB_LIBM_ULP * FD_TB_U) /* relative: K ulp <= 2K u |y| */
#define FD_TB_INFL (1.0 + 0x1p-20) /* covers <= 2^31 roundings of nonnegative bound terms */
#define FD_TB_TRUNC (-700.0)     /* keys further below the max are given weight 0 */
#define FD_TB_TRUNC_BND 0x1p-1000 /* >= exp(-699): their weight's bound */
#define FD_TB_HEAD_DIM_MAX 256   /* GPU tier's limit (lanes x 8); the CPU has none */

/* An upper bound of a bound computed with rounding to nearest from nonnegative terms. */
FD_HD double fd_tb_up(double x) { return FD_TB_MUL(x, FD_TB_INFL); }

/* A running sum with its bound: s the computed sum; a the propagated bound (sum of the
 * terms' own error bounds); r the sum of |partial sums| (each rounding of an addition errs
 * by at most u |result|). The total error is <= (a + u r) INFL + (count) eta. */
typedef struct fd_tb_acc {
    double s, a, r;
} fd_tb_acc;

FD_HD void fd_tb_acc_init(fd_tb_acc *x) { x->s = 0.0; x->a = 0.0; x->r = 0.0; }
/* s += t where |t - exact| <= bt */
FD_HD void fd_tb_acc_add(fd_tb_acc *x, double t, double bt)
{
    x->s = FD_TB_ADD(x->s, t);
    x->a = FD_TB_ADD(x->a, bt);
    x->r = FD_TB_ADD(x->r, fabs(x->s));
}
/* x += y (two partial sums, any order: a tree reduction is bounded the same way). */
FD_HD void fd_tb_acc_merge(fd_tb_acc *x, const fd_tb_acc *y)
{
    x->s = FD_TB_ADD(x->s, y->s);
    x->a = FD_TB_ADD(x->a, y->a);
    x->r = FD_TB_ADD(FD_TB_ADD(x->r, y->r), fabs(x->s));
}
FD_HD double fd_tb_acc_bound(const fd_tb_acc *x, double nprod)
{
    return fd_tb_up(FD_TB_ADD(x->a, FD_TB_MUL(FD_TB_U, x->r))) + FD_TB_MUL(nprod, FD_TB_ETA);
}

/* The row: what every key and every value needs. Built by fd_tb_row_init. */
typedef struct fd_tb_row {
    const float *q;      /* the query row (head_dim floats) */
    const float *k, *v;  /* K and V of (b, kv head): key j at k + j * kstride */
    long kstride;
    int D, lo, hi, n;    /* visible keys lo..hi, n of them */
    int b, h, i, sq, sk, nheads; /* i packed; sq, sk of the row's sequence (varlen) */
    int ai;              /* i - q0 + k0: the ALiBi distance is |ai + sk - sq - j| */
    double sigma, cap, slope; /* cap 0: none; slope 0: no ALiBi */
    int drop;
    uint8_t thr;
    uint64_t seed, offset;
    double pdrop;
} fd_tb_row;

FD_HD void fd_tb_row_init(fd_tb_row *w, const fd_problem *p, const float *q, const float *k,
                          const float *v, int b, int h, int i)
{
    const int D = p->head_dim, hk = h / (p->heads / p->kv_heads);
    w->D = D;
    w->q = q + (((size_t)b * (size_t)p->seqlen_q + (size_t)i) * (size_t)p->heads + (size_t)h) * (size_t)D;
    w->kstride = (long)p->kv_heads * D;
    const size_t base = ((size_t)b * (size_t)p->seqlen_k * (size_t)p->kv_heads + (size_t)hk) * (size_t)D;
    w->k = k + base;
    w->v = v + base;
    /* the row's sequence (varlen: fd_problem_seq_span's, in FD_HD form); the masks, the
     * window and the ALiBi distance are those of the sequence alone */
    int q0 = 0, sq = p->seqlen_q, k0 = 0, sk = p->seqlen_k;
    if (p->varlen > 0) {
        const int s = fd_varlen_seq(p->cu_seqlens_q, p->varlen, i);
        q0 = p->cu_seqlens_q[s];
        sq = p->cu_seqlens_q[s + 1] - q0;
        k0 = p->cu_seqlens_k[s];
        sk = p->cu_seqlens_k[s + 1] - k0;
    }
    if (p->page_size > 0) sk = p->cache_seqlens[b]; /* paged: the entry's valid keys (fd_mask_visible_range_b) */
    w->n = fd_vis_range((int)p->mask, p->window, p->window_left, p->window_right, i - q0, sq, sk,
                        &w->lo, &w->hi);
    w->lo += k0;
    w->hi += k0;
    w->b = b;
    w->h = h;
    w->i = i;
    w->ai = i - q0 + k0;
    w->sq = sq;
    w->sk = sk;
    w->nheads = p->heads;
    w->sigma = (double)p->softmax_scale;
    w->cap = p->softcap > 0.0f ? (double)p->softcap : 0.0;
    w->slope = p->alibi ? (double)p->alibi_slopes[h] : 0.0;
    w->pdrop = p->dropout_p;
    w->drop = p->dropout_p > 0.0;
    w->thr = fd_fa2_threshold(p->dropout_p);
    w->seed = p->seed;
    w->offset = p->offset;
}

FD_HD int fd_tb_kept(const fd_tb_row *w, int j)
{
    return !w->drop || fd_fa2_keep(w->seed, w->offset, w->thr, w->nheads, w->b, w->h, w->i, j);
}

/* Step 1, the logit s'_j and a bound ds on |s'_j - s_j|. Returns 0 when not finite.
 *   dot: the products of two binary32 values are exact binary64 (48 bits, exponents in
 *        [-298, 256)); each addition errs by <= u |partial|: ddot = u sum |partial|.
 *   sigma: s' = RN(sigma dot'): ds = |sigma| ddot + u |s'|.
 *   softcap c: x' = RN(s'/c), t' = tanh(x') (libm, <= K ulp), s' = RN(c t');
 *        tanh is 1-Lipschitz: ds <- ds + c (u |x'| + 2Ku |t'|) + u |s'|.
 *   ALiBi: b' = RN(slope dist) (<= 55 bits: may round), s' = RN(s' - b'):
 *        ds <- ds + u |b'| + u |s'|. */
/* The dot product of step 1 alone: *acc = q.k in binary64, *r = sum |partial| (so that
 * |acc - q.k| <= u r). The GPU tier runs it for several rows per key. */
FD_HD void fd_tb_dot_step(double *acc, double *r, double qd, double kd)
{
    *acc = FD_TB_ADD(*acc, FD_TB_MUL(qd, kd));
    *r = FD_TB_ADD(*r, fabs(*acc));
}

/* The rest of step 1 from the dot product (acc, r). */
FD_HD int fd_tb_logit_finish(const fd_tb_row *w, int j, double acc, double r, double *s, double *ds);
/* The same, also giving (when tc is not NULL) the softcap's t' = tanh(x') and a bound *dtc on
 * |t' - tanh(s / c)| (the backward's dl/ds = 1 - t^2 needs it; both 0 without the cap). */
FD_HD int fd_tb_logit_finish_t(const fd_tb_row *w, int j, double acc, double r, double *s, double *ds,
                               double *tc, double *dtc);

FD_HD int fd_tb_logit(const fd_tb_row *w, int j, double *s, double *ds)
{
    const float *kr = w->k + (long)j * w->kstride;
    double acc = 0.0, r = 0.0;
    for (int d = 0; d < w->D; d++) fd_tb_dot_step(&acc, &r, (double)w->q[d], (double)kr[d]);
    return fd_tb_logit_finish(w, j, acc, r, s, ds);
}

FD_HD int fd_tb_logit_finish_t(const fd_tb_row *w, int j, double acc, double r, double *s, double *ds,
                               double *tc, double *dtc)
{
    double x = FD_TB_MUL(w->sigma, acc);
    double e = FD_TB_ADD(FD_TB_MUL(fabs(w->sigma), FD_TB_MUL(FD_TB_U, r)), FD_TB_MUL(FD_TB_U, fabs(x)));
    if (tc) *tc = *dtc = 0.0;
    if (w->cap > 0.0) {
        const double xc = FD_TB_DIV(x, w->cap);
        const double t = tanh(xc);
        /* |xc' - s/c| <= e/c + u |xc'|; tanh is 1-Lipschitz; tanh itself within K ulp */
        const double et = FD_TB_ADD(FD_TB_MUL(FD_TB_U, fabs(xc)), FD_TB_MUL(FD_TB_LIBM, fabs(t)));
        if (tc) {
            *tc = t;
            *dtc = fd_tb_up(FD_TB_ADD(FD_TB_DIV(e, w->cap), et));
        }
        x = FD_TB_MUL(w->cap, t);
        e = FD_TB_ADD(e, FD_TB_MUL(w->cap, et));
        e = FD_TB_ADD(e, FD_TB_MUL(FD_TB_U, fabs(x)));
    }
    if (!fd_eq(w->slope, 0.0)) {
        const long dd = (long)w->ai + w->sk - w->sq - j; /* packed j: ai holds the k0 shift */
        const double bias = FD_TB_MUL(w->slope, (double)(dd < 0 ? -dd : dd));
        x = FD_TB_SUB(x, bias);
        e = FD_TB_ADD(e, FD_TB_MUL(FD_TB_U, FD_TB_ADD(fabs(bias), fabs(x))));
    }
    *s = x;
    *ds = fd_tb_up(e);
    return isfinite(x) && isfinite(e);
}

FD_HD int fd_tb_logit_finish(const fd_tb_row *w, int j, double acc, double r, double *s, double *ds)
{
    return fd_tb_logit_finish_t(w, j, acc, r, s, ds, (double *)0, (double *)0);
}

/* Step 2, the weight e'_j = exp(RN(s'_j - m')) and a bound *be on |e'_j - exp(s_j - m')|.
 *   a' = RN(s' - m'): alpha = ds + u |a'| bounds |a' - (s - m')|;
 *   exp: |e' - exp(a')| <= 2Ku exp(a'), and |exp(a - a') - 1| <= exp(alpha) - 1
 *        <= alpha (1 + alpha) for alpha <= 1, so |e' - e| <= e' (2Ku + alpha (1 + alpha))
 *        (times 1/(1 - 2Ku), inside INFL);
 *   a' < -700 (and alpha <= 1): e' = 0, e <= exp(-699) < 2^-1000 = the bound.
 * Returns 0 when alpha > 1 (the row goes to MPFR). */
FD_HD int fd_tb_weight(double s, double ds, double m, double *e, double *be)
{
    const double a = FD_TB_SUB(s, m);
    const double alpha = fd_tb_up(FD_TB_ADD(ds, FD_TB_MUL(FD_TB_U, fabs(a))));
    if (!(alpha <= 1.0)) return 0;
    if (a < FD_TB_TRUNC) {
        *e = 0.0;
        *be = FD_TB_TRUNC_BND;
        return 1;
    }
    const double x = exp(a);
    *e = x;
    *be = fd_tb_up(FD_TB_MUL(x, FD_TB_ADD(FD_TB_LIBM, FD_TB_MUL(alpha, FD_TB_ADD(1.0, alpha)))));
    return 1;
}

/* Step 3, one key's term of the numerator of column d: N += e' v (the product errs by
 * <= u |e' v| + eta) with the propagated bound be |v|. */
FD_HD void fd_tb_numer_add(fd_tb_acc *N, double e, double be, float v)
{
    const double av = fabs((double)v);
    fd_tb_acc_add(N, FD_TB_MUL(e, (double)v), FD_TB_MUL(FD_TB_ADD(be, FD_TB_MUL(FD_TB_U, e)), av));
}

/* Step 4, the denominator: th' = RN(1 - p), D' = RN(th' L'), with the bound
 *   dD = u D' + th' dL + (L' + dL) u th',  and lowD <= the true D (0 when not positive). */
FD_HD void fd_tb_denom(double pdrop, double L, double dL, double *Dn, double *dD, double *lowD)
{
    const double th = FD_TB_SUB(1.0, pdrop);
    const double x = FD_TB_MUL(th, L);
    double e = FD_TB_ADD(FD_TB_MUL(FD_TB_U, x), FD_TB_MUL(th, dL));
    e = FD_TB_ADD(e, FD_TB_MUL(FD_TB_ADD(L, dL), FD_TB_MUL(FD_TB_U, th)));
    *Dn = x;
    *dD = fd_tb_up(e);
    const double lo = FD_TB_MUL(FD_TB_SUB(x, *dD), 1.0 - 0x1p-50);
    *lowD = lo > 0.0 ? lo : 0.0;
}

/* Step 5, O = RN(N'/D'):
 *   |O' - O| <= u |O'| + eta + dN / D' + (|N'| + dN) dD / (D' lowD)
 * from N'/D' - N/D = (N' - N)/D' + N (D - D') / (D D'), |N| <= |N'| + dN, D >= lowD. */
FD_HD double fd_tb_out(double N, double dN, double Dn, double dD, double lowD, double *dO)
{
    const double o = FD_TB_DIV(N, Dn);
    double e = FD_TB_ADD(FD_TB_MUL(FD_TB_U, fabs(o)), FD_TB_DIV(dN, Dn));
    const double num = FD_TB_MUL(FD_TB_ADD(fabs(N), dN), dD);
    e = FD_TB_ADD(e, FD_TB_DIV(num, FD_TB_MUL(FD_TB_MUL(Dn, lowD), 1.0 - 0x1p-50)));
    *dO = FD_TB_ADD(fd_tb_up(e), FD_TB_ETA);
    if (!(lowD > 0.0)) *dO = (double)INFINITY;
    return o;
}

/* Step 6, LSE = RN(m' + RN(log L')) (log within K ulp):
 *   |LSE' - LSE| <= u |LSE'| + 2Ku |lg'| + dL / lowL, lowL <= the true L (mean value). */
FD_HD double fd_tb_lse(double m, double L, double dL, double *dLSE)
{
    const double lg = log(L);
    const double x = FD_TB_ADD(m, lg);
    const double lowL = FD_TB_MUL(FD_TB_SUB(L, dL), 1.0 - 0x1p-50);
    double e = FD_TB_ADD(FD_TB_MUL(FD_TB_U, fabs(x)), FD_TB_MUL(FD_TB_LIBM, fabs(lg)));
    e = FD_TB_ADD(e, FD_TB_DIV(dL, lowL));
    *dLSE = lowL > 0.0 ? fd_tb_up(e) : (double)INFINITY;
    return x;
}

/* harness/fd_metrics.c's fd_ulp_in_dtype: the ulp of the output dtype at |x|'s binade,
 * floored at the dtype's subnormal ulp. Monotone nondecreasing in |x|. */
FD_HD double fd_tb_ulp_dtype(double x, int prec, int emin)
{
    int e = emin;
    if (!fd_eq(x, 0.0) && isfinite(x)) {
        int fe;
        (void)frexp(x, &fe);
        e = fe - 1;
        if (e < emin) e = emin;
    }
    return ldexp(1.0, e - (prec - 1));
}

/* Is x, with |x - truth| <= dx, decided for the metrics of a dtype of precision prec and
 * minimum exponent emin? (See the header comment.) The ends are widened outward so that
 * lo <= |truth| <= hi hold for the computed doubles; RN to binary64 is monotone, so the
 * MPFR value lies in [lo, hi] too, and the ulp function is constant there. */
FD_HD int fd_tb_decide(double x, double dx, int prec, int emin)
{
    if (!isfinite(x) || !(dx >= 0.0) || !isfinite(dx)) return 0;
    const double ax = fabs(x);
    const double lo = FD_TB_MUL(FD_TB_SUB(ax, dx), 1.0 - 0x1p-51);
    const double hi = FD_TB_MUL(FD_TB_ADD(ax, dx), 1.0 + 0x1p-51);
    /* lo > 0: the sign is known; above 2^-1000 every rounding here is relative (normal) */
    if (!(lo > 0x1p-1000) || !isfinite(hi)) return 0;
    const double U = fd_tb_ulp_dtype(lo, prec, emin);
    if (!fd_eq(U, fd_tb_ulp_dtype(hi, prec, emin))) return 0;
    const double gap = fd_tb_up(FD_TB_ADD(dx, FD_TB_MUL(FD_TB_U, hi)));
    return gap <= FD_TB_MUL(U, 0.001);
}

/* The dtypes' (precision, emin): fd_dtype_precision / fd_dtype_emin. */
FD_HD int fd_tb_prec(int dtype) { return dtype == FD_DT_FP16 ? 11 : dtype == FD_DT_BF16 ? 8 : 24; }
FD_HD int fd_tb_emin(int dtype) { return dtype == FD_DT_FP16 ? -14 : -126; }

/* The whole row, sequentially (the CPU tier; the GPU tier runs the same steps with lanes
 * over keys and over d). o: D doubles; dO: 2 D doubles of scratch, on return dO[0..D)
 * are the bounds of o; ok: D + 1 flags (O_0..O_{D-1}, LSE), 1 = decided; sbuf: NULL, or
 * 2 n doubles where pass 1 keeps the logits and their bounds for pass 2 (the same values
 * as recomputing them). Returns the number of decided values.
 * A row with no visible key: O = +0, LSE = +Inf, all decided (exact, as fd_ref_row). */
FD_HD int fd_tb_row_compute(const fd_tb_row *w, int dtype, double *o, double *dO, double *lse,
                            double *dlse, unsigned char *ok, double *sbuf)
{
    const int D = w->D;
    if (w->n == 0) {
        for (int d = 0; d < D; d++) {
            o[d] = 0.0;
            dO[d] = 0.0;
            ok[d] = 1;
        }
        *lse = INFINITY;
        *dlse = 0.0;
        ok[D] = 1;
        return D + 1;
    }
    for (int d = 0; d <= D; d++) ok[d] = 0;
    /* pass 1: the maximum computed logit */
    double m = -INFINITY;
    for (int j = w->lo; j <= w->hi; j++) {
        double s, ds;
        if (!fd_tb_logit(w, j, &s, &ds)) return 0;
        if (s > m) m = s;
        if (sbuf) {
            sbuf[2 * (j - w->lo)] = s;
            sbuf[2 * (j - w->lo) + 1] = ds;
        }
    }
    /* pass 2: weights; L over visible keys, N over kept keys (o holds N', dO its a, r) */
    fd_tb_acc L;
    fd_tb_acc_init(&L);
    fd_tb_acc N;
    double nkept = 0.0;
    /* column d's accumulator: s in o[d], a in Na[d], r in Na[D + d] */
    double *Na = dO;
    for (int d = 0; d < D; d++) o[d] = 0.0;
    for (int d = 0; d < 2 * D; d++) Na[d] = 0.0;
    for (int j = w->lo; j <= w->hi; j++) {
        double s, ds, e, be;
        if (sbuf) {
            s = sbuf[2 * (j - w->lo)];
            ds = sbuf[2 * (j - w->lo) + 1];
        } else if (!fd_tb_logit(w, j, &s, &ds)) {
            return 0;
        }
        if (!fd_tb_weight(s, ds, m, &e, &be)) return 0;
        fd_tb_acc_add(&L, e, be);
        if (!fd_tb_kept(w, j)) continue;
        nkept += 1.0;
        const float *vr = w->v + (long)j * w->kstride;
        for (int d = 0; d < D; d++) {
            N.s = o[d];
            N.a = Na[d];
            N.r = Na[D + d];
            fd_tb_numer_add(&N, e, be, vr[d]);
            o[d] = N.s;
            Na[d] = N.a;
            Na[D + d] = N.r;
        }
    }
    const double dL = fd_tb_acc_bound(&L, 0.0);
    double Dn, dD, lowD;
    fd_tb_denom(w->pdrop, L.s, dL, &Dn, &dD, &lowD);
    const int prec = fd_tb_prec(dtype), emin = fd_tb_emin(dtype);
    int nd = 0;
    for (int d = 0; d < D; d++) {
        N.s = o[d];
        N.a = Na[d];
        N.r = Na[D + d];
        double e;
        if (fd_eq(N.s, 0.0) && fd_eq(N.a, 0.0) && fd_eq(N.r, 0.0)) {
            /* every kept term was an exact 0 (v = 0, or no key kept): O = +0 exactly */
            o[d] = 0.0;
            Na[d] = 0.0;
            ok[d] = 1;
            nd++;
            continue;
        }
        const double dN = fd_tb_acc_bound(&N, nkept);
        o[d] = fd_tb_out(N.s, dN, Dn, dD, lowD, &e);
        Na[d] = e;
        ok[d] = (unsigned char)fd_tb_decide(o[d], e, prec, emin);
        nd += ok[d];
    }
    *lse = fd_tb_lse(m, L.s, dL, dlse);
    ok[D] = (unsigned char)fd_tb_decide(*lse, *dlse, 24, -126);
    return nd + ok[D];
}
#endif
