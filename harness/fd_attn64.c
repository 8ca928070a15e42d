/* fd_attn64.c: see fd_attn64.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_attn64.h"
#include "fd_philox.h"

void fd_attn_variant_default(const fd_problem *p, fd_attn_variant *va)
{
    va->scale = (double)p->softmax_scale;
    va->v_scale = 1.0;
    if (fd_dtype_is_fp8(p->dtype)) { /* FP8: the dequantised inputs (docs/fp8.md) */
        va->scale *= (double)fd_descale(p->q_descale) * (double)fd_descale(p->k_descale);
        va->v_scale = (double)fd_descale(p->v_descale);
    }
    va->mask = p->mask;
    va->causal_shift = 0;
    va->dropout = p->dropout_p > 0.0;
    va->seed = p->seed;
    va->offset = p->offset;
    va->p = p->dropout_p;
    va->drop_scale = p->dropout_p > 0.0 ? 1.0 / (1.0 - p->dropout_p) : 1.0;
    va->wrong_axis = 0;
    va->window = p->window;
    va->window_left = p->window_left;
    va->window_right = p->window_right;
    va->window_left_shift = va->window_right_shift = va->window_top_left = 0;
    va->softcap = (double)p->softcap;
    va->softcap_unscaled = 0;
    va->alibi = p->alibi;
    va->alibi_sign = 1.0;
    va->alibi_reversed = va->alibi_scaled = 0;
    va->varlen_leak = va->varlen_cu_shift = va->varlen_pad = 0;
    va->varlen_pad_bias = 0.0;
    va->paged_page_shift = va->paged_identity = va->paged_stale = va->splitkv_unweighted = 0;
    va->splits = 1;
    va->split_bc = 64;
}

/* The problem whose sequences the variant sees: the inner cu_seqlens entries shifted
 * (clamped so they stay in order), or one sequence (leak). */
static void variant_problem(const fd_problem *p, const fd_attn_variant *va, fd_problem *vp)
{
    *vp = *p;
    if (p->page_size > 0 && va->paged_stale)
        for (int b = 0; b < p->batch && b < FD_PAGED_MAX_BATCH; b++) vp->cache_seqlens[b] = p->seqlen_k;
    if (!p->varlen) return;
    if (va->varlen_leak) {
        vp->varlen = 0;
        return;
    }
    for (int s = 1; s < p->varlen && va->varlen_cu_shift; s++) {
        int a = p->cu_seqlens_q[s] + va->varlen_cu_shift, c = p->cu_seqlens_k[s] + va->varlen_cu_shift;
        a = a < vp->cu_seqlens_q[s - 1] ? vp->cu_seqlens_q[s - 1] : a > p->seqlen_q ? p->seqlen_q : a;
        c = c < vp->cu_seqlens_k[s - 1] ? vp->cu_seqlens_k[s - 1] : c > p->seqlen_k ? p->seqlen_k : c;
        vp->cu_seqlens_q[s] = a;
        vp->cu_seqlens_k[s] = c;
    }
}

/* The longest query and key sequence (varlen_pad's padded lengths). */
static void varlen_max(const fd_problem *p, int *mq, int *mk)
{
    *mq = *mk = 0;
    for (int s = 0; s < p->varlen; s++) {
        const int a = p->cu_seqlens_q[s + 1] - p->cu_seqlens_q[s], c = p->cu_seqlens_k[s + 1] - p->cu_seqlens_k[s];
        if (a > *mq) *mq = a;
        if (c > *mk) *mk = c;
    }
}

double *fd_to_f64(const float *x, size_t n)
{
    double *y = malloc((n ? n : 1) * sizeof(double));
    if (y)
        for (size_t i = 0; i < n; i++) y[i] = (double)x[i];
    return y;
}

double fd_max_abs_diff(const double *a, const double *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]);
        if (isnan(e)) return INFINITY;
        if (e > m) m = e;
    }
    return m;
}

/* Key j (local to the row's sequence, in its padded form: sq, sk the sequence's lengths or
 * the padded ones) visible from local row i. */
static int visible_local(const fd_attn_variant *va, int i, int j, int sq, int sk)
{
    const long br = (long)i + sk - sq;
    if (va->mask != FD_MASK_NONE) {
        const long lim = va->mask == FD_MASK_CAUSAL_TL ? (long)i : br;
        if ((long)j > lim + va->causal_shift) return 0;
    }
    if (va->window) {
        const long dg = va->window_top_left ? (long)i : br;
        if (va->window_right >= 0 && (long)j > dg + va->window_right + va->window_right_shift) return 0;
        if (va->window_left >= 0 && (long)j < dg - va->window_left - va->window_left_shift) return 0;
    }
    return 1;
}

/* Packed key j visible from packed row i: within the row's sequence (p is the variant's
 * problem, variant_problem), at the padded lengths under varlen_pad. */
static int visible(const fd_problem *p, const fd_attn_variant *va, int b, int i, int j)
{
    if (p->page_size > 0) { /* paged: the entry's keys below cache_seqlens[b] */
        const int skb = p->cache_seqlens[b];
        return j < skb && visible_local(va, i, j, p->seqlen_q, skb);
    }
    const fd_seq_span s = fd_problem_seq_span(p, i);
    if (j < s.k0 || j >= s.k0 + s.sk) return 0;
    int sq = s.sq, sk = s.sk;
    if (va->varlen_pad && p->varlen) varlen_max(p, &sq, &sk);
    return visible_local(va, i - s.q0, j - s.k0, sq, sk);
}

/* The logit of (i, j) from x = q_i . k_j under the variant. */
static double score(const fd_problem *p, const fd_attn_variant *va, int h, int i, int j, double x)
{
    double s;
    if (va->softcap > 0.0)
        s = va->softcap_unscaled ? va->scale * va->softcap * tanh(x / va->softcap)
                                 : va->softcap * tanh(va->scale * x / va->softcap);
    else
        s = va->scale * x;
    if (va->alibi) {
        const fd_seq_span sp = fd_problem_seq_span(p, i);
        int sq = sp.sq, sk = sp.sk;
        if (va->varlen_pad && p->varlen) varlen_max(p, &sq, &sk);
        const long d = (long)(i - sp.q0) + sk - sq - (j - sp.k0);
        const double slope = (double)p->alibi_slopes[va->alibi_reversed ? p->heads - 1 - h : h];
        double bias = -va->alibi_sign * slope * (double)(d < 0 ? -d : d);
        if (va->alibi_scaled) bias *= va->scale;
        s += bias;
    }
    return s;
}

int fd_attn64_varlen_pad_changes(const fd_problem *p, const fd_attn_variant *va)
{
    if (!p->varlen) return 0;
    fd_attn_variant plain = *va;
    plain.varlen_pad = 0;
    int mq, mk;
    varlen_max(p, &mq, &mk);
    for (int i = 0; i < p->seqlen_q; i++) {
        const fd_seq_span s = fd_problem_seq_span(p, i);
        for (int j = 0; j < mk; j++) {
            const int padded = visible_local(va, i - s.q0, j, mq, mk);
            const int own = j < s.sk && visible_local(&plain, i - s.q0, j, s.sq, s.sk);
            if (padded != own) return 1;
        }
    }
    return 0;
}

static double dot(const double *a, const double *b, int n)
{
    double s = 0.0;
    for (int d = 0; d < n; d++) s += a[d] * b[d];
    return s;
}

/* The weights of query row i: softmax over visible keys (or over queries with the column
 * statistics when wrong_axis), times the dropout factor. Returns 0 when no key is visible. */
static int row_weights(const fd_problem *p, const fd_attn_variant *va, const double *q,
                       const double *k, int b, int h, int i, uint8_t thr, const double *colmax,
                       const double *colsum, double *w)
{
    const int D = p->head_dim, sk = p->seqlen_k, hk = fd_kv_head(p, h);
    const double *qi = q + fd_q_index(p, b, i, h, 0);
    double m = -INFINITY, l = 0.0;
    for (int j = 0; j < sk; j++) {
        w[j] = visible(p, va, b, i, j) ? score(p, va, h, i, j, dot(qi, k + fd_kv_index(p, b, j, hk, 0), D))
                                    : -(double)INFINITY;
        if (w[j] > m) m = w[j];
    }
    /* varlen_pad: the zero pad keys (K = 0, V = 0) after the row's sequence, up to the
     * longest, where the padded shape's mask lets the row see them */
    int npad = 0, mq = 0, mk = 0;
    fd_seq_span sp = {0, 0, 0, 0};
    if (va->varlen_pad && p->varlen) {
        sp = fd_problem_seq_span(p, i);
        varlen_max(p, &mq, &mk);
        npad = mk - sp.sk;
        for (int t = 0; t < npad; t++)
            if (visible_local(va, i - sp.q0, sp.sk + t, mq, mk)) {
                const double s = score(p, va, h, i, sp.k0 + sp.sk + t, 0.0) + va->varlen_pad_bias;
                if (s > m) m = s;
            }
    }
    for (int j = 0; j < sk; j++) {
        if (isinf(w[j])) {
            w[j] = 0.0;
            continue;
        }
        w[j] = va->wrong_axis ? exp(w[j] - colmax[j]) / colsum[j] : exp(w[j] - m);
        l += w[j];
    }
    for (int t = 0; t < npad; t++)
        if (visible_local(va, i - sp.q0, sp.sk + t, mq, mk)) l += exp(score(p, va, h, i, sp.k0 + sp.sk + t, 0.0) + va->varlen_pad_bias - m);
    if (!(l > 0.0)) return 0; /* no visible key: 0, as FA2 */
    if (va->wrong_axis) l = 1.0;
    if (va->splitkv_unweighted && p->page_size > 0 && va->splits > 1 && va->split_bc > 0) {
        /* each split's weights renormalised to 1 within it, then 1/n over the n splits that
         * hold a visible key: the split outputs averaged without their LSE weights */
        const int bc = va->split_bc, ke = p->cache_seqlens[b];
        const int per = ((ke + bc - 1) / bc + va->splits - 1) / va->splits;
        int n = 0;
        for (int s0 = 0; s0 < sk; s0 += per * bc) {
            double ms = 0.0;
            for (int j = s0; j < s0 + per * bc && j < sk; j++) ms += w[j];
            n += ms > 0.0;
        }
        for (int s0 = 0; s0 < sk; s0 += per * bc) {
            double ms = 0.0;
            for (int j = s0; j < s0 + per * bc && j < sk; j++) ms += w[j];
            for (int j = s0; j < s0 + per * bc && j < sk && ms > 0.0; j++) w[j] = w[j] / ms / (double)n;
        }
        l = 1.0;
    }
    for (int j = 0; j < sk; j++) {
        w[j] = w[j] / l * va->v_scale; /* v_scale: FP8's v_descale (1 otherwise: exact) */
        if (va->dropout && w[j] > 0.0)
            w[j] *= fd_fa2_keep(va->seed, va->offset, thr, p->heads, b, h, i, j) ? va->drop_scale : 0.0;
    }
    return 1;
}

/* Paged: the logical K, V a kernel sees when it reads entry b's page t from block-table
 * slot b * pages + t + shift (paged_page_shift, wrapping past the table's end) or from
 * physical page b * pages + t (paged_identity). Physical row r holds the logical key of
 * whichever (entry, key) the true table maps there (zeros where none does). */
static int paged_wrong_pages(const fd_problem *p, const fd_attn_variant *va, const double *k, const double *v,
                             double **kw, double **vw)
{
    const int np = fd_paged_pages(p), ps = p->page_size, nt = p->batch * np;
    const size_t row = (size_t)p->kv_heads * (size_t)p->head_dim, nkv = fd_kv_numel(p);
    int *inv = malloc(sizeof(int) * (size_t)p->num_pages); /* physical page -> table slot, -1: none */
    *kw = calloc(nkv ? nkv : 1, sizeof(double));
    *vw = calloc(nkv ? nkv : 1, sizeof(double));
    if (!inv || !*kw || !*vw) {
        free(inv); free(*kw); free(*vw);
        *kw = *vw = NULL;
        return -1;
    }
    for (int x = 0; x < p->num_pages; x++) inv[x] = -1;
    for (int t = nt - 1; t >= 0; t--) inv[p->block_table[t]] = t;
    for (int b = 0; b < p->batch; b++)
        for (int j = 0; j < p->seqlen_k; j++) {
            const int slot = b * np + j / ps;
            const int page = va->paged_identity ? slot % p->num_pages : p->block_table[(slot + va->paged_page_shift) % nt];
            const int src = inv[page];
            if (src < 0) continue;
            const int jj = (src % np) * ps + j % ps;
            if (jj >= p->seqlen_k) continue;
            memcpy(*kw + fd_kv_index(p, b, j, 0, 0), k + fd_kv_index(p, src / np, jj, 0, 0), sizeof(double) * row);
            memcpy(*vw + fd_kv_index(p, b, j, 0, 0), v + fd_kv_index(p, src / np, jj, 0, 0), sizeof(double) * row);
        }
    free(inv);
    return 0;
}

int fd_attn64(const fd_problem *p0, const fd_attn_variant *va, const double *q, const double *k,
              const double *v, const int *rows, int nrows, double *o, char *err, size_t errlen)
{
    fd_problem vp; /* the sequences the variant sees (varlen) */
    variant_problem(p0, va, &vp);
    const fd_problem *p = &vp;
    const int D = p->head_dim, sq = p->seqlen_q, sk = p->seqlen_k;
    double *kw = NULL, *vw = NULL; /* paged: K, V as a kernel reading the wrong pages sees them */
    if (p->page_size > 0 && (va->paged_page_shift || va->paged_identity)) {
        if (paged_wrong_pages(p, va, k, v, &kw, &vw)) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        k = kw;
        v = vw;
    }
    const uint8_t thr = fd_fa2_threshold(va->p);
    double *w = malloc(sizeof(double) * (size_t)sk);
    double *colmax = NULL, *colsum = NULL;
    if (va->wrong_axis) {
        colmax = malloc(sizeof(double) * (size_t)sk);
        colsum = malloc(sizeof(double) * (size_t)sk);
    }
    if (!w || (va->wrong_axis && (!colmax || !colsum))) {
        free(w); free(colmax); free(colsum); free(kw); free(vw);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++) {
            const int hk = fd_kv_head(p, h);
            if (va->wrong_axis) {
                /* column statistics over every query row */
                for (int j = 0; j < sk; j++) { colmax[j] = -INFINITY; colsum[j] = 0.0; }
                for (int i = 0; i < sq; i++)
                    for (int j = 0; j < sk; j++)
                        if (visible(p, va, b, i, j)) {
                            double s = score(p, va, h, i, j, dot(q + fd_q_index(p, b, i, h, 0), k + fd_kv_index(p, b, j, hk, 0), D));
                            if (s > colmax[j]) colmax[j] = s;
                        }
                for (int i = 0; i < sq; i++)
                    for (int j = 0; j < sk; j++)
                        if (visible(p, va, b, i, j))
                            colsum[j] += exp(score(p, va, h, i, j, dot(q + fd_q_index(p, b, i, h, 0), k + fd_kv_index(p, b, j, hk, 0), D)) - colmax[j]);
            }
            for (int r = 0; r < nrows; r++) {
                const int i = rows ? rows[r] : r;
                double *oi = o + fd_q_index(p, b, i, h, 0);
                for (int d = 0; d < D; d++) oi[d] = 0.0;
                if (!row_weights(p, va, q, k, b, h, i, thr, colmax, colsum, w)) continue;
                for (int j = 0; j < sk; j++) {
                    if (fd_eq(w[j], 0.0)) continue;
                    const double *vj = v + fd_kv_index(p, b, j, hk, 0);
                    for (int d = 0; d < D; d++) oi[d] += w[j] * vj[d];
                }
            }
        }
    free(w); free(colmax); free(colsum); free(kw); free(vw);
    return 0;
}

int fd_attn64_condition(const fd_problem *p, const double *q, const double *k, const double *v,
                        const int *rows, int nrows, double *sumabs, double *kappa, char *err,
                        size_t errlen)
{
    const int D = p->head_dim, sk = p->seqlen_k;
    fd_attn_variant va;
    fd_attn_variant_default(p, &va);
    const uint8_t thr = fd_fa2_threshold(va.p);
    double *w = malloc(sizeof(double) * (size_t)sk);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t t = 0;
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++) {
            const int hk = fd_kv_head(p, h);
            for (int r = 0; r < nrows; r++, t += (size_t)D) {
                int any = row_weights(p, &va, q, k, b, h, rows[r], thr, NULL, NULL, w);
                for (int d = 0; d < D; d++) {
                    double s1 = 0.0, s0 = 0.0;
                    for (int j = 0; any && j < sk; j++) {
                        double x = w[j] * v[fd_kv_index(p, b, j, hk, d)];
                        s0 += x;
                        s1 += fabs(x);
                    }
                    sumabs[t + (size_t)d] = s1;
                    kappa[t + (size_t)d] = s1 > 0.0 ? s1 / fabs(s0) : 1.0;
                }
            }
        }
    free(w);
    return 0;
}
