/* fd_inputs.c: seeded inputs and row sampling; see fd_inputs.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_dtype.h"
#include "fd_inputs.h"
#include "fd_philox.h"

#define FD_TWO_PI 6.283185307179586476925286766559

/* Uniform in (0, 1] with 53 random bits. */
static double u53(uint32_t hi, uint32_t lo)
{
    uint64_t x = ((uint64_t)hi << 21) ^ (uint64_t)(lo >> 11);
    x &= ((uint64_t)1 << 53) - 1;
    return ((double)x + 1.0) / 9007199254740992.0;
}

static double draw(uint64_t seed, uint32_t tensor, uint64_t idx, fd_dist dist, int row)
{
    fd_u32x4 c = {{(uint32_t)idx, (uint32_t)(idx >> 32), tensor, 0x66647266u}};
    fd_u32x4 r = fd_philox4x32(c, (uint32_t)seed, (uint32_t)(seed >> 32), 10);
    double u1 = u53(r.v[0], r.v[1]), u2 = u53(r.v[2], r.v[3]);
    if (dist == FD_DIST_UNIFORM) return 2.0 * u1 - 1.0;
    double z = sqrt(-2.0 * log(u1)) * cos(FD_TWO_PI * u2);
    /* V of the structured families has mean 1: with V symmetric about 0 round-to-nearest
     * is odd in V (V -> -V flips O, the reference and every rounding), so the mean signed
     * error is exactly 0 and no bias can show; Qiu and Yao's bias needs values of one sign */
    if (tensor == 2 && dist >= FD_DIST_TIED_MAX) return 1.0 + z;
    if (tensor >= 2) return z; /* V (and dO) N(0, 1) */
    if (dist == FD_DIST_LARGE_LOGIT) return 4.0 * z;
    if (dist == FD_DIST_OUTLIER_ROWS && row % 17 == 5) return 24.0 * z;
    return z;
}

/* Fills a float tensor (rounded to the dtype) or, when outd is given, a double tensor of
 * the unrounded draws. */
static int fill(const fd_case *c, float **out, double **outd, uint32_t tensor, int seqlen, int nh,
                char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    size_t n = (size_t)p->batch * (size_t)seqlen * (size_t)nh * (size_t)p->head_dim;
    float *x = outd ? NULL : malloc(n * sizeof(float));
    double *xd = outd ? malloc(n * sizeof(double)) : NULL;
    if (!x && !xd) {
        snprintf(err, errlen, "out of memory allocating %zu inputs for case %s", n, c->id);
        return -1;
    }
    size_t per_row = (size_t)nh * (size_t)p->head_dim;
    for (size_t e = 0; e < n; e++) {
        int row = (int)((e / per_row) % (size_t)seqlen);
        double z = draw(c->input_seed, tensor, e, c->dist, row);
        if (xd) xd[e] = z;
        else x[e] = fd_round_to_dtype((float)z, p->dtype);
    }
    if (outd) *outd = xd;
    else *out = x;
    return 0;
}

/* The structured families (FD_DIST_TIED_MAX and after) reshape N(0, 1) draws in binary64
 * before the one rounding to the dtype. B = 6 sqrt(d) + 2: with Q's column 0 at 1 the
 * special keys' logit is B exactly (1 * B plus zero products: exact in any order), about 6
 * standard deviations above the other keys' N(0, d) logits, so they are the row max yet
 * the other keys keep non-negligible probabilities (e^-6 and more). */
static int shape_family(const fd_case *c, double *q, double *k, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    const int D = p->head_dim;
    const double B = 6.0 * sqrt((double)D) + 2.0;
    if (c->dist == FD_DIST_TIED_MAX || c->dist == FD_DIST_SINK || c->dist == FD_DIST_LARGE_OFFSET) {
        const double q0 = c->dist == FD_DIST_LARGE_OFFSET ? 32.0 : 1.0;
        for (int b = 0; b < p->batch; b++)
            for (int i = 0; i < p->seqlen_q; i++)
                for (int h = 0; h < p->heads; h++) q[fd_q_index(p, b, i, h, 0)] = q0;
        for (int b = 0; b < p->batch; b++)
            for (int j = 0; j < p->seqlen_k; j++)
                for (int h = 0; h < p->kv_heads; h++) {
                    double *kj = k + fd_kv_index(p, b, j, h, 0);
                    if (c->dist == FD_DIST_LARGE_OFFSET) {
                        kj[0] = 32.0;
                    } else if (c->dist == FD_DIST_TIED_MAX ? j % 37 < 2 : j == 0) {
                        kj[0] = B;
                        for (int d = 1; d < D; d++) kj[d] = 0.0;
                    }
                }
        return 0;
    }
    if (c->dist != FD_DIST_LOW_RANK) return 0;
    /* Q = A_q W, K = A_k W + 0.1 N with W [kv_heads][r][D] ~ N(0, 1) (tensor id 4) and the
     * coefficients N(0, 1/r) (tensor ids 5, 6): entries of Q and K are about N(0, 1), and
     * query and key rows of one kv head lie near one r-dimensional subspace. */
    const int r = D < 4 ? D : 4;
    const size_t nw = (size_t)p->kv_heads * (size_t)r * (size_t)D;
    double *w = malloc(sizeof(double) * nw);
    if (!w) {
        snprintf(err, errlen, "out of memory for the low-rank basis of case %s", c->id);
        return -1;
    }
    for (size_t e = 0; e < nw; e++) w[e] = draw(c->input_seed, 4, e, FD_DIST_NORMAL, 0);
    const double cs = 1.0 / sqrt((double)r);
    for (int t = 0; t < 2; t++) {
        const int rows = t ? p->seqlen_k : p->seqlen_q, nh = t ? p->kv_heads : p->heads;
        double *x = t ? k : q;
        for (int b = 0; b < p->batch; b++)
            for (int i = 0; i < rows; i++)
                for (int h = 0; h < nh; h++) {
                    const int hk = t ? h : fd_kv_head(p, h);
                    const size_t base = t ? fd_kv_index(p, b, i, h, 0) : fd_q_index(p, b, i, h, 0);
                    double a[4];
                    for (int u = 0; u < r; u++)
                        a[u] = cs * draw(c->input_seed, (uint32_t)(5 + t), base / (size_t)D * 4 + (size_t)u,
                                         FD_DIST_NORMAL, 0);
                    for (int d = 0; d < D; d++) {
                        double s = t ? 0.1 * x[base + (size_t)d] : 0.0;
                        for (int u = 0; u < r; u++) s += a[u] * w[((size_t)hk * (size_t)r + (size_t)u) * (size_t)D + (size_t)d];
                        x[base + (size_t)d] = s;
                    }
                }
    }
    free(w);
    return 0;
}

/* The draws in binary64 (and shaped by the family), before any rounding or scaling. */
static int draws(const fd_case *c, double **q, double **k, double **v, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    *q = *k = *v = NULL;
    if (fill(c, NULL, q, 0, p->seqlen_q, p->heads, err, errlen) ||
        fill(c, NULL, k, 1, p->seqlen_k, p->kv_heads, err, errlen) ||
        fill(c, NULL, v, 2, p->seqlen_k, p->kv_heads, err, errlen) || shape_family(c, *q, *k, err, errlen)) {
        free(*q); free(*k); free(*v);
        *q = *k = *v = NULL;
        return -1;
    }
    return 0;
}

/* ---- FP8 (issue 15 item 4): per-tensor quantisation as FP8 users do it ----
 * For each tensor x (binary32 values xf = (float) draw): amax = max |xf|; scale =
 * 448 / amax (e5m2: 57344 / amax) and descale = amax / 448, both in binary32 (two
 * separate divisions, as torch code computes them: scale * descale is 1 only to within
 * an ulp); x8 = fp8(xf * scale) with one binary32 product and the saturating cast
 * (|xf * scale| <= max (1 + 2^-23) rounds to at most max, so torch's non-saturating cast
 * would give the same codes). amax = 0 takes scale = descale = 1. With "fp8_descale":
 * "one" both are 1: x8 = fp8(xf) (values beyond the max saturate). */
static void fp8_scales(const double *x, size_t n, fd_dtype t, int unit, float *scale, float *descale)
{
    float amax = 0.0f;
    for (size_t e = 0; e < n; e++) amax = fmaxf(amax, fabsf((float)x[e]));
    *scale = *descale = 1.0f;
    if (unit || !(amax > 0.0f) || isinf(amax)) return;
    *scale = fd_fp8_max(t) / amax;
    *descale = amax / fd_fp8_max(t);
}

int fd_inputs_fp8_descales(const fd_case *c, float *qd, float *kd, float *vd, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    double *x[3];
    float sc, *out[3] = {qd, kd, vd};
    if (!fd_dtype_is_fp8(p->dtype)) {
        *qd = *kd = *vd = 0.0f;
        return 0;
    }
    if (draws(c, &x[0], &x[1], &x[2], err, errlen)) return -1;
    const size_t n[3] = {fd_q_numel(p), fd_kv_numel(p), fd_kv_numel(p)};
    for (int t = 0; t < 3; t++) fp8_scales(x[t], n[t], p->dtype, c->fp8_unit_descale, &sc, out[t]);
    free(x[0]); free(x[1]); free(x[2]);
    return 0;
}

/* x (n draws) quantised in place to the values before the cast (xf * scale, binary64
 * holds the binary32 product exactly enough: it is the exact product of two floats) */
static void fp8_prescale(double *x, size_t n, fd_dtype t, int unit)
{
    float sc, ds;
    fp8_scales(x, n, t, unit, &sc, &ds);
    for (size_t e = 0; e < n; e++) x[e] = (double)((float)x[e] * sc);
}
/* ---- end FP8 ---- */

int fd_inputs_make_unrounded(const fd_case *c, double **q, double **k, double **v, char *err,
                             size_t errlen)
{
    if (draws(c, q, k, v, err, errlen)) return -1;
    const fd_problem *p = &c->prob;
    if (fd_dtype_is_fp8(p->dtype)) { /* FP8: the scaled values before the cast */
        fp8_prescale(*q, fd_q_numel(p), p->dtype, c->fp8_unit_descale);
        fp8_prescale(*k, fd_kv_numel(p), p->dtype, c->fp8_unit_descale);
        fp8_prescale(*v, fd_kv_numel(p), p->dtype, c->fp8_unit_descale);
    }
    return 0;
}

/* Rounds n binary64 values once to the dtype into a new float tensor. */
static float *round_all(const double *x, size_t n, fd_dtype dt)
{
    float *f = malloc(sizeof(float) * (n ? n : 1));
    if (f)
        for (size_t e = 0; e < n; e++) f[e] = fd_round_to_dtype((float)x[e], dt);
    return f;
}

int fd_inputs_make(const fd_case *c, float **q, float **k, float **v, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    *q = *k = *v = NULL;
    if (c->dist < FD_DIST_TIED_MAX && !fd_dtype_is_fp8(p->dtype)) {
        if (fill(c, q, NULL, 0, p->seqlen_q, p->heads, err, errlen) ||
            fill(c, k, NULL, 1, p->seqlen_k, p->kv_heads, err, errlen) ||
            fill(c, v, NULL, 2, p->seqlen_k, p->kv_heads, err, errlen)) {
            free(*q); free(*k); free(*v);
            *q = *k = *v = NULL;
            return -1;
        }
        return 0;
    }
    /* the structured families: shaped in binary64, then rounded once; FP8: scaled per
     * tensor (in binary32), then rounded once */
    double *qd, *kd, *vd;
    if (fd_inputs_make_unrounded(c, &qd, &kd, &vd, err, errlen)) return -1;
    *q = round_all(qd, fd_q_numel(p), p->dtype);
    *k = round_all(kd, fd_kv_numel(p), p->dtype);
    *v = round_all(vd, fd_kv_numel(p), p->dtype);
    free(qd); free(kd); free(vd);
    if (!*q || !*k || !*v) {
        free(*q); free(*k); free(*v);
        *q = *k = *v = NULL;
        snprintf(err, errlen, "out of memory allocating inputs for case %s", c->id);
        return -1;
    }
    return 0;
}

int fd_inputs_make_dout(const fd_case *c, float **dout, char *err, size_t errlen)
{
    *dout = NULL;
    return fill(c, dout, NULL, 3, c->prob.seqlen_q, c->prob.heads, err, errlen);
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int fd_sample_rows(const fd_problem *p, int max_rows, int *rows)
{
    const int sq = p->seqlen_q, sk = p->seqlen_k;
    int n = 0;
    if (max_rows <= 0 || sq <= max_rows) {
        for (int i = 0; i < sq; i++) rows[i] = i;
        return sq;
    }
    int cand[32], nc = 0;
    cand[nc++] = 0;
    cand[nc++] = sq - 1;
    if (p->mask == FD_MASK_CAUSAL_BR) {
        cand[nc++] = sq - sk;     /* first row with a visible key */
        cand[nc++] = sq - sk - 1; /* last empty row */
        cand[nc++] = sq - 1;      /* sees every key */
    } else if (p->mask == FD_MASK_CAUSAL_TL) {
        cand[nc++] = sk - 1; /* first row that sees every key */
        cand[nc++] = sk;
    }
    if (p->window && p->window_left >= 0) { /* the last row whose window starts at key 0, the next */
        cand[nc++] = sq - sk + p->window_left;
        cand[nc++] = sq - sk + p->window_left + 1;
    }
    if (p->window && p->window_right >= 0) { /* the first row with a visible key, the last without */
        cand[nc++] = sq - sk - p->window_right;
        cand[nc++] = sq - sk - p->window_right - 1;
    }
    static const int tiles[] = {63, 64, 127, 128};
    for (int t = 0; t < 4; t++) cand[nc++] = tiles[t];
    /* varlen: the first and last row of (the first six) sequences, where the per-sequence
     * alignment and the boundary with the neighbour show (the cases' seqlen checks above
     * are for the packed totals) */
    for (int s = 0, used = 0; s < p->varlen && used < 6; s++)
        if (p->cu_seqlens_q[s + 1] > p->cu_seqlens_q[s]) {
            cand[nc++] = p->cu_seqlens_q[s];
            cand[nc++] = p->cu_seqlens_q[s + 1] - 1;
            used++;
        }
    for (int t = 0; t < nc; t++)
        if (cand[t] >= 0 && cand[t] < sq) rows[n++] = cand[t];
    int fixed = n;
    int want = max_rows > fixed ? max_rows - fixed : 0;
    for (int t = 0; t < want; t++) {
        /* evenly spaced, offset by a third of the step so they avoid tile edges */
        long r = ((long)t * sq + sq / 3) / want;
        rows[n++] = (int)(r % sq);
    }
    qsort(rows, (size_t)n, sizeof(int), cmp_int);
    int u = 0;
    for (int t = 0; t < n; t++)
        if (u == 0 || rows[u - 1] != rows[t]) rows[u++] = rows[t];
    return u;
}
