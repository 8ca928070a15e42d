/* fd_tier_bwd.h: the certified binary64 tier of the BACKWARD reference, one bounded algorithm
 * for host C (reference/fd_tier_bwd_cpu.c) and CUDA device code (reference/fd_tier_bwd_gpu.cu),
 * built on fd_tier.h's pieces (the row, the logit with its bound, the weight, the running sum
 * with its bound, the quotient, the decision rule).
 *
 * It computes the same gradients as reference/fd_ref_bwd.c (MPFR/MPFI), from the exact input
 * values and the exact dO, in binary64 with every operation rounded to nearest (no
 * contraction), each with a rigorous bound on |computed - exact|. Per query row i of head h
 * (docs/reference.md, "The backward tier", gives the derivation; each step is named below):
 *   s_j  = the forward tier's logit (softcap, ALiBi), t_j = tanh(s_j / c) with the cap
 *   m    = max computed s_j (an exact shift), e_j = exp(s_j - m), L = sum_visible e_j
 *   P_j  = e_j / L                                  (= exp(s_j - LSE))
 *   g_j  = keep_j dO_i . v_j                        (dP_j = r g_j, r = 1 / (1 - p))
 *   M    = sum_j P_j g_j                            (D_i = r M)
 *   y_j  = P_j (g_j - M) [(1 - t_j^2) with the cap]  (dS_j = r y_j)
 *   dQ_i = sigma r sum_j y_j (k_j - k_lo)           (sum_j y_j = 0 without the cap: any
 *                                                    constant key may be subtracted)
 *   dK_j = sigma r sum_h sum_i y_ij q_i,  dV_j = r sum_h sum_i P_ij keep_ij dO_i   (GQA)
 * The row's statistics (m, L, M) come first for every row of the group (fd_tbw_row_stat);
 * then dQ per listed query row (fd_tbw_row_dq) and dK, dV per listed key (fd_tbw_key_dkdv)
 * from them. Each value is decided by fd_tb_decide against the ulp of the problem's dtype
 * (harness/fd_run_bwd.c measures gradients in that dtype, fd_metrics_compute on the view).
 *
 * Exact zeros (fd_tb_decide never decides a value whose enclosure holds 0): a row with no
 * visible key has dQ = 0; a row with one visible key has P = 1 and y = 0 exactly (its dQ is
 * 0, it adds nothing to dK and dO exactly to dV); a value to which no term was added (a key
 * no row sees, every row seeing it has one key, or every row dropped it for dV) is the exact
 * +0, decided, as fd_ref_bwd_group returns it. Cancellation that is not structural (dP near
 * D, dQ's and dK's sums near 0) leaves values undecided: the caller sends them to MPFR.
 *
 * Declined (the caller uses MPFR): variable-length and paged problems (the backward does
 * not run on them; fd_ref_bwd_group rejects paged ones). */
#ifndef FD_TIER_BWD_H
#define FD_TIER_BWD_H
#include "fd_tier.h"

/* z = RN(x y) for |x' - x| <= dx, |y' - y| <= dy:
 *   |z - x y| <= dx |y'| + (|x'| + dx) dy + u |z| + eta. */
FD_HD double fd_tbw_mul(double x, double dx, double y, double dy, double *dz)
{
    const double z = FD_TB_MUL(x, y);
    double e = FD_TB_ADD(FD_TB_MUL(dx, fabs(y)), FD_TB_MUL(FD_TB_ADD(fabs(x), dx), dy));
    e = FD_TB_ADD(e, FD_TB_MUL(FD_TB_U, fabs(z)));
    *dz = FD_TB_ADD(fd_tb_up(e), FD_TB_ETA);
    return z;
}

/* r' = RN(1 / RN(1 - p)) and *dr >= |r' - 1/(1 - p)|: th' = RN(1 - p) errs by <= u th', so
 * |1/th' - r| <= u r, and the division adds u r': <= 3u r' in all. p = 0: exactly 1. */
FD_HD double fd_tbw_rscale(double pdrop, double *dr)
{
    if (!(pdrop > 0.0)) {
        *dr = 0.0;
        return 1.0;
    }
    const double r = FD_TB_DIV(1.0, FD_TB_SUB(1.0, pdrop));
    *dr = fd_tb_up(FD_TB_MUL(3.0 * FD_TB_U, r));
    return r;
}

/* One key of a row: the logit, the cap's tanh, g = keep dO_i . v_j, each with its bound. */
typedef struct fd_tbw_key {
    double s, ds, t, dt, g, dg;
    int kept;
} fd_tbw_key;

/* Step B1. The logit as the forward tier's step 1 (fd_tb_logit_finish_t); g by the same
 * exact-product dot (|g' - g| <= u sum |partial|); 0 for a dropped key (exact). Returns 0
 * when a value is not finite. */
FD_HD int fd_tbw_key_eval(const fd_tb_row *w, const float *dorow, int j, fd_tbw_key *x)
{
    const float *kr = w->k + (long)j * w->kstride, *vr = w->v + (long)j * w->kstride;
    double acc = 0.0, r = 0.0, ga = 0.0, gr = 0.0;
    x->kept = fd_tb_kept(w, j);
    if (x->kept)
        for (int d = 0; d < w->D; d++) {
            fd_tb_dot_step(&acc, &r, (double)w->q[d], (double)kr[d]);
            fd_tb_dot_step(&ga, &gr, (double)dorow[d], (double)vr[d]);
        }
    else
        for (int d = 0; d < w->D; d++) fd_tb_dot_step(&acc, &r, (double)w->q[d], (double)kr[d]);
    x->g = ga;
    x->dg = fd_tb_up(FD_TB_MUL(FD_TB_U, gr));
    if (!fd_tb_logit_finish_t(w, j, acc, r, &x->s, &x->ds, &x->t, &x->dt)) return 0;
    return isfinite(ga) && isfinite(gr);
}

/* A row's statistics: the shift m, the denominator L (fd_tb_denom's form: Ln, dLn, lowL),
 * M = D_i / r with its bound; the visible keys; ok = 0 when the row could not be bounded
 * (not finite, or a logit bound above 1: fd_tb_weight), and then no value that depends on
 * it is decided. */
typedef struct fd_tbw_stat {
    double m, Ln, dLn, lowL, M, dM;
    int lo, hi, n, ok;
} fd_tbw_stat;

/* Step B3, P_j = e_j / L (fd_tb_weight, then fd_tb_out's quotient bound with th = 1); a row
 * with one visible key: P = 1 exactly. */
FD_HD int fd_tbw_prob(const fd_tbw_stat *st, const fd_tbw_key *x, double *P, double *dP)
{
    if (st->n == 1) {
        *P = 1.0;
        *dP = 0.0;
        return 1;
    }
    double e, be;
    if (!fd_tb_weight(x->s, x->ds, st->m, &e, &be)) return 0;
    *P = fd_tb_out(e, be, st->Ln, st->dLn, st->lowL, dP);
    return isfinite(*dP);
}

/* Step B5, y_j = dS_j / r = P_j (g_j - M) [(1 - t_j^2) with the cap]:
 *   y' = RN(g' - M'): dy = dg + dM + u |y'|; then the products by fd_tbw_mul, with
 *   t'^2 bounded as a product and 1 - t'^2 adding u |f|.  One visible key: exactly 0. */
FD_HD int fd_tbw_dsr(const fd_tbw_stat *st, const fd_tbw_key *x, double cap, double P, double dP, double *y,
                     double *dy)
{
    if (st->n == 1) {
        *y = 0.0;
        *dy = 0.0;
        return 1;
    }
    const double a = FD_TB_SUB(x->g, st->M);
    const double da = fd_tb_up(FD_TB_ADD(FD_TB_ADD(x->dg, st->dM), FD_TB_MUL(FD_TB_U, fabs(a))));
    double z = fd_tbw_mul(P, dP, a, da, dy);
    if (cap > 0.0) {
        double dtt;
        const double tt = fd_tbw_mul(x->t, x->dt, x->t, x->dt, &dtt);
        const double f = FD_TB_SUB(1.0, tt);
        const double df = fd_tb_up(FD_TB_ADD(dtt, FD_TB_MUL(FD_TB_U, fabs(f))));
        z = fd_tbw_mul(z, *dy, f, df, dy);
    }
    *y = z;
    return isfinite(z) && isfinite(*dy);
}

/* Step B2 and B4 for one row (every row of the group: dK and dV need them all): pass 1 the
 * maximum logit, pass 2 L (fd_tb_acc), pass 3 M = sum_kept P_j g_j (each term by fd_tbw_mul,
 * summed with fd_tb_acc). kbuf: NULL (the keys are evaluated again in each pass) or room for
 * the row's visible keys (seqlen_k). */
FD_HD void fd_tbw_row_stat(const fd_tb_row *w, const float *dorow, fd_tbw_key *kbuf, fd_tbw_stat *st)
{
    st->lo = w->lo;
    st->hi = w->hi;
    st->n = w->n;
    st->ok = 0;
    st->m = st->Ln = st->dLn = st->lowL = st->M = st->dM = 0.0;
    if (w->n == 0) {
        st->ok = 1;
        return;
    }
    fd_tbw_key x;
    double m = -INFINITY;
    for (int j = w->lo; j <= w->hi; j++) {
        fd_tbw_key *kx = kbuf ? &kbuf[j - w->lo] : &x;
        if (!fd_tbw_key_eval(w, dorow, j, kx)) return;
        if (kx->s > m) m = kx->s;
    }
    st->m = m;
    fd_tb_acc L;
    fd_tb_acc_init(&L);
    for (int j = w->lo; j <= w->hi; j++) {
        fd_tbw_key *kx = kbuf ? &kbuf[j - w->lo] : &x;
        if (!kbuf && !fd_tbw_key_eval(w, dorow, j, kx)) return;
        double e, be;
        if (!fd_tb_weight(kx->s, kx->ds, m, &e, &be)) return;
        fd_tb_acc_add(&L, e, be);
    }
    fd_tb_denom(0.0, L.s, fd_tb_acc_bound(&L, 0.0), &st->Ln, &st->dLn, &st->lowL);
    if (!(st->lowL > 0.0)) return;
    fd_tb_acc M;
    fd_tb_acc_init(&M);
    for (int j = w->lo; j <= w->hi; j++) {
        fd_tbw_key *kx = kbuf ? &kbuf[j - w->lo] : &x;
        if (!kbuf && !fd_tbw_key_eval(w, dorow, j, kx)) return;
        if (!kx->kept) continue;
        double P, dP, bt;
        if (!fd_tbw_prob(st, kx, &P, &dP)) return;
        const double t = fd_tbw_mul(P, dP, kx->g, kx->dg, &bt);
        fd_tb_acc_add(&M, t, bt);
    }
    st->M = M.s;
    st->dM = fd_tb_acc_bound(&M, 0.0);
    st->ok = isfinite(st->M) && isfinite(st->dM);
}

/* Step B6, a gradient value from its accumulated sum (acc; nterm terms, each bounded with its
 * own eta) times c1 (exact: sigma or 1) times r' (bound dr): the products by fd_tbw_mul,
 * skipped when a factor is an exact 1. No term: the exact +0. Returns decided (fd_tb_decide
 * for the dtype). */
FD_HD int fd_tbw_final(const fd_tb_acc *a, long nterm, double c1, double r, double dr, int dtype, double *x,
                       double *dx)
{
    if (nterm == 0) {
        *x = 0.0;
        *dx = 0.0;
        return 1;
    }
    double b = fd_tb_acc_bound(a, 0.0), y = a->s;
    if (!fd_eq(c1, 1.0)) y = fd_tbw_mul(y, b, c1, 0.0, &b);
    if (!fd_eq(r, 1.0) || dr > 0.0) y = fd_tbw_mul(y, b, r, dr, &b);
    *x = y;
    *dx = b;
    return fd_tb_decide(y, b, fd_tb_prec(dtype), fd_tb_emin(dtype));
}

/* B3 and B5 for the pair (row w, key j) from the row's statistics: P_ij, y_ij with their
 * bounds, and whether the key is kept. Returns 0 when a value could not be bounded. */
FD_HD int fd_tbw_pair(const fd_tb_row *w, const float *dorow, const fd_tbw_stat *st, int j, double *P, double *dP,
                      double *y, double *dy, int *kept)
{
    fd_tbw_key x;
    if (!fd_tbw_key_eval(w, dorow, j, &x) || !fd_tbw_prob(st, &x, P, dP) || !fd_tbw_dsr(st, &x, w->cap, *P, *dP, y, dy))
        return 0;
    *kept = x.kept;
    return 1;
}

/* B6, one dQ term of column d: A += RN(y kc'), kc' = RN(k_d - kc_d) (centre; <= u |kc'|) or
 * k_d (exact), by the product rule. */
FD_HD void fd_tbw_dq_add(fd_tb_acc *A, double y, double dy, float kd, float kcd, int centre)
{
    double kv = (double)kd, dk = 0.0;
    if (centre) {
        kv = FD_TB_SUB(kv, (double)kcd);
        dk = FD_TB_MUL(FD_TB_U, fabs(kv));
    }
    double bt;
    const double t = fd_tbw_mul(y, dy, kv, dk, &bt);
    fd_tb_acc_add(A, t, bt);
}

/* B6, one dK or dV term: A += RN(x c) for an exact input c (q_d, dO_d). */
FD_HD void fd_tbw_exact_add(fd_tb_acc *A, double x, double dx, float c)
{
    double bt;
    const double t = fd_tbw_mul(x, dx, (double)c, 0.0, &bt);
    fd_tb_acc_add(A, t, bt);
}

/* Step B6 for dQ of one row, columns d0 <= d < d1 (the GPU splits a row's columns over
 * threads; the CPU takes 0, D): acc[0..3 (d1 - d0)) scratch (s, a, r per column); writes
 * dq[d], its bound bdq[d] (may be NULL) and ok[d] for those d; returns the number decided.
 * The centring key c = lo (any constant vector: sum_j y_j = 0 over the visible keys) is used
 * only without the cap; its difference k_jd - k_cd is rounded (<= u |kc'|) and bounded as
 * such. */
FD_HD int fd_tbw_row_dq(const fd_tb_row *w, const float *dorow, const fd_tbw_stat *st, fd_tbw_key *kbuf,
                        double r, double dr, int dtype, int d0, int d1, double *acc, double *dq, double *bdq,
                        unsigned char *ok)
{
    const int D = d1 - d0;
    long nterm = 0;
    for (int d = 0; d < 3 * D; d++) acc[d] = 0.0;
    const int centre = !(w->cap > 0.0);
    const float *kc = w->n > 0 ? w->k + (long)w->lo * w->kstride : w->k;
    int good = st->ok;
    for (int j = w->lo; good && j <= w->hi && st->n > 1; j++) {
        fd_tbw_key x, *kx = kbuf ? &kbuf[j - w->lo] : &x;
        double P, dP, y, dy;
        if (!kbuf && !fd_tbw_key_eval(w, dorow, j, kx)) good = 0;
        else if (!fd_tbw_prob(st, kx, &P, &dP) || !fd_tbw_dsr(st, kx, w->cap, P, dP, &y, &dy)) good = 0;
        if (!good || (fd_eq(y, 0.0) && fd_eq(dy, 0.0))) continue;
        nterm++;
        const float *kr = w->k + (long)j * w->kstride;
        for (int d = 0; d < D; d++) {
            fd_tb_acc A = {acc[d], acc[D + d], acc[2 * D + d]};
            fd_tbw_dq_add(&A, y, dy, kr[d0 + d], kc[d0 + d], centre);
            acc[d] = A.s;
            acc[D + d] = A.a;
            acc[2 * D + d] = A.r;
        }
    }
    int nd = 0;
    for (int d = 0; d < D; d++) {
        const fd_tb_acc A = {acc[d], acc[D + d], acc[2 * D + d]};
        double x = 0.0, dx = (double)INFINITY;
        int o = 0;
        if (good) o = fd_tbw_final(&A, nterm, w->sigma, r, dr, dtype, &x, &dx);
        else x = A.s;
        dq[d0 + d] = x;
        if (bdq) bdq[d0 + d] = dx;
        ok[d0 + d] = (unsigned char)o;
        nd += o;
    }
    return nd;
}

/* Step B6 for dK and dV of key j of group (b, hk), columns d0 <= d < d1: every query head of
 * the group, every row i that sees j (stat [hh][i], seqlen_q rows per head), y_ij q_i into dK
 * and P_ij dO_i (kept) into dV. acc[0..6 (d1 - d0)) scratch; writes dk[d], dv[d], the bounds
 * (may be NULL) and the flags for those d; returns the number decided. */
FD_HD int fd_tbw_key_dkdv(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                          int b, int hk, int j, const fd_tbw_stat *stat, double r, double dr, int d0, int d1,
                          double *acc, double *dk, double *dv, double *bdk, double *bdv, unsigned char *okk,
                          unsigned char *okv)
{
    const int D = d1 - d0, G = p->heads / p->kv_heads, Sq = p->seqlen_q;
    double *ka = acc, *va = acc + 3 * D;
    for (int d = 0; d < 6 * D; d++) acc[d] = 0.0;
    long nk = 0, nv = 0;
    int good = 1;
    for (int hh = 0; hh < G && good; hh++) {
        const int h = hk * G + hh;
        for (int i = 0; i < Sq && good; i++) {
            const fd_tbw_stat *st = &stat[(long)hh * Sq + i];
            if (j < st->lo || j > st->hi) continue;
            if (!st->ok) {
                good = 0;
                break;
            }
            fd_tb_row w;
            fd_tb_row_init(&w, p, q, k, v, b, h, i);
            const float *dorow = dout + (w.q - q);
            double P, dP, y, dy;
            int kept;
            if (!fd_tbw_pair(&w, dorow, st, j, &P, &dP, &y, &dy, &kept)) {
                good = 0;
                break;
            }
            const int addk = !(fd_eq(y, 0.0) && fd_eq(dy, 0.0));
            nk += addk;
            nv += kept;
            for (int d = 0; d < D; d++) {
                if (addk) {
                    fd_tb_acc A = {ka[d], ka[D + d], ka[2 * D + d]};
                    fd_tbw_exact_add(&A, y, dy, w.q[d0 + d]);
                    ka[d] = A.s;
                    ka[D + d] = A.a;
                    ka[2 * D + d] = A.r;
                }
                if (kept) {
                    fd_tb_acc A = {va[d], va[D + d], va[2 * D + d]};
                    fd_tbw_exact_add(&A, P, dP, dorow[d0 + d]);
                    va[d] = A.s;
                    va[D + d] = A.a;
                    va[2 * D + d] = A.r;
                }
            }
        }
    }
    const double sigma = (double)p->softmax_scale;
    int nd = 0;
    for (int d = 0; d < D; d++) {
        const fd_tb_acc A = {ka[d], ka[D + d], ka[2 * D + d]}, B = {va[d], va[D + d], va[2 * D + d]};
        double x1 = A.s, e1 = (double)INFINITY, x2 = B.s, e2 = (double)INFINITY;
        int o1 = 0, o2 = 0;
        if (good) {
            o1 = fd_tbw_final(&A, nk, sigma, r, dr, (int)p->dtype, &x1, &e1);
            o2 = fd_tbw_final(&B, nv, 1.0, r, dr, (int)p->dtype, &x2, &e2);
        }
        dk[d0 + d] = x1;
        dv[d0 + d] = x2;
        if (bdk) bdk[d0 + d] = e1;
        if (bdv) bdv[d0 + d] = e2;
        okk[d0 + d] = (unsigned char)o1;
        okv[d0 + d] = (unsigned char)o2;
        nd += o1 + o2;
    }
    return nd;
}
#endif
