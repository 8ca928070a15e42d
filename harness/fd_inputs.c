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
    if (tensor >= 2) return z; /* V (and dO) are always N(0, 1) */
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

int fd_inputs_make_unrounded(const fd_case *c, double **q, double **k, double **v, char *err,
                             size_t errlen)
{
    const fd_problem *p = &c->prob;
    *q = *k = *v = NULL;
    if (fill(c, NULL, q, 0, p->seqlen_q, p->heads, err, errlen) ||
        fill(c, NULL, k, 1, p->seqlen_k, p->kv_heads, err, errlen) ||
        fill(c, NULL, v, 2, p->seqlen_k, p->kv_heads, err, errlen)) {
        free(*q); free(*k); free(*v);
        *q = *k = *v = NULL;
        return -1;
    }
    return 0;
}

int fd_inputs_make(const fd_case *c, float **q, float **k, float **v, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    *q = *k = *v = NULL;
    if (fill(c, q, NULL, 0, p->seqlen_q, p->heads, err, errlen) ||
        fill(c, k, NULL, 1, p->seqlen_k, p->kv_heads, err, errlen) ||
        fill(c, v, NULL, 2, p->seqlen_k, p->kv_heads, err, errlen)) {
        free(*q); free(*k); free(*v);
        *q = *k = *v = NULL;
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
    int cand[16], nc = 0;
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
    static const int tiles[] = {63, 64, 127, 128};
    for (int t = 0; t < 4; t++) cand[nc++] = tiles[t];
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
