/* fd_problem.h: the shape of one attention problem, shared by every stage.
 *
 * Tensor layouts (FlashAttention's): Q and O are [batch][seqlen_q][heads][head_dim],
 * K and V are [batch][seqlen_k][kv_heads][head_dim], LSE is [batch][heads][seqlen_q].
 * Values are stored as float holding the exact value of the dtype (fp16/bf16 values
 * are exactly representable in binary32), so kernels and reference see the same bits.
 * Query head h reads kv head h / (heads / kv_heads) (MQA/GQA). */
#ifndef FD_PROBLEM_H
#define FD_PROBLEM_H
#include <stddef.h>
#include <stdint.h>
#include "fd_hd.h"

/* FD_DT_E4M3 / FD_DT_E5M2: FP8 inputs (issue 15 item 4, docs/fp8.md): Q, K, V hold the
 * exact values of FP8 codes and the problem's per-tensor descale factors give the
 * dequantised values (x * x_descale); the output is bfloat16 (fd_out_dtype), as
 * FlashAttention-3's FP8 forward writes it. */
typedef enum { FD_DT_FP16 = 0, FD_DT_BF16 = 1, FD_DT_FP32 = 2, FD_DT_E4M3 = 3, FD_DT_E5M2 = 4 } fd_dtype;
#define FD_NDTYPES 5
FD_HD int fd_dtype_is_fp8(fd_dtype t) { return t == FD_DT_E4M3 || t == FD_DT_E5M2; }

typedef enum {
    FD_MASK_NONE = 0,
    FD_MASK_CAUSAL_TL = 1, /* key j visible from query i when j <= i (PyTorch is_causal) */
    FD_MASK_CAUSAL_BR = 2  /* j <= i + seqlen_k - seqlen_q (FlashAttention >= 2.1) */
} fd_mask_kind;

/* Most heads a problem with ALiBi may have (the slopes live in the problem). */
#define FD_ALIBI_MAX_HEADS 128

/* ---- Variable-length batches (issue 13 item 4): the constants ---- */
/* Most sequences one packed (varlen) problem may hold (cu_seqlens live in the problem). */
#define FD_VARLEN_MAX_SEQS 64
/* ---- end variable-length batches ---- */

/* ---- Paged KV cache (issue 13 item 5): the constants ---- */
/* Most batch entries of a paged problem (cache_seqlens live in the problem). */
#define FD_PAGED_MAX_BATCH 64
/* Most block-table entries (batch x pages per entry) and physical pages. */
#define FD_PAGED_MAX_ENTRIES (1 << 20)
/* ---- end paged KV cache ---- */

typedef struct fd_problem {
    int batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim;
    fd_dtype dtype;
    fd_mask_kind mask;
    float softmax_scale;   /* the float the kernel receives (1/sqrt(d) rounded to binary32) */
    double dropout_p;      /* probability of dropping, in [0, 1) */
    uint64_t seed, offset; /* FA2 Philox seed and generator offset */
    /* FlashAttention-2's score modifiers. Every field's zero means "off", so a problem
     * cleared with memset is plain attention. */
    int window;                  /* 1: the sliding window (window_left, window_right) applies */
    int window_left, window_right; /* FA2 window_size: -1 unbounded, else >= 0; bottom-right aligned */
    float softcap;               /* > 0: s -> softcap * tanh(s / softcap) on the scaled score */
    int alibi;                   /* 1: bias -alibi_slopes[h] * |i + sk - sq - j| on the scaled score */
    float alibi_slopes[FD_ALIBI_MAX_HEADS];
    /* ---- Variable-length batches (issue 13 item 4), FlashAttention's
     * flash_attn_varlen_func: varlen > 0 packs that many sequences into a problem of
     * batch 1 whose seqlen_q / seqlen_k are the packed totals, so the layouts above are
     * the packed ones (Q, O [total_q][heads][d], K, V [total_k][kv_heads][d], LSE
     * [heads][total_q], FA2's varlen LSE). Sequence s has the query rows
     * cu_seqlens_q[s] .. cu_seqlens_q[s + 1] - 1 and the keys cu_seqlens_k[s] ..
     * cu_seqlens_k[s + 1] - 1; masks, windows and ALiBi distances are aligned per
     * sequence (bottom-right within it, FA2 >= 2.1); no key of another sequence is
     * visible. 0: off (a memset problem is not varlen). ---- */
    int varlen;
    int cu_seqlens_q[FD_VARLEN_MAX_SEQS + 1], cu_seqlens_k[FD_VARLEN_MAX_SEQS + 1];
    /* ---- end variable-length batches ---- */
    /* ---- Paged KV cache (issue 13 item 5), FlashAttention's flash_attn_with_kvcache with
     * block_table and cache_seqlens: page_size > 0 makes the problem paged. K and V above
     * stay the *logical* tensors [batch][seqlen_k][kv_heads][d], seqlen_k the capacity
     * (pages per entry x page_size, fd_paged_pages); the physical cache is [num_pages]
     * [page_size][kv_heads][d] and logical key j of entry b lives in page
     * block_table[b * fd_paged_pages(p) + j / page_size], slot j % page_size. The
     * kernels that consume pages scatter the logical K/V into a physical cache and read
     * through the table; the reference reads the logical tensors. Keys j >=
     * cache_seqlens[b] are not attended, whatever the page holds; masks and windows are
     * bottom-right relative to cache_seqlens[b]. block_table points into storage owned by
     * the case file or the bundle (a problem copy shares it). 0: off. ---- */
    int page_size;
    int num_pages;
    int cache_seqlens[FD_PAGED_MAX_BATCH];
    const int *block_table;
    /* ---- end paged KV cache ---- */
    /* ---- FP8 (issue 15 item 4): per-tensor descale factors, FlashAttention-3's q_descale,
     * k_descale, v_descale (one float per tensor). The dequantised inputs are Q q_descale,
     * K k_descale, V v_descale; fd_descale() reads 0 (a memset problem) as 1. Only FP8
     * dtypes use them (fd_problem_check_fp8). ---- */
    float q_descale, k_descale, v_descale;
    /* ---- end FP8 ---- */
} fd_problem;

/* ---- FP8 (issue 15 item 4): helpers ---- */
/* A descale factor as the kernels use it: 0 (unset) means 1. */
FD_HD float fd_descale(float d) { return d > 0.0f ? d : 1.0f; }
/* The dtype of O: bfloat16 for FP8 inputs (FlashAttention-3: "For FP8 input, output must
 * have dtype BF16"), else the input dtype. Metrics count ulps of this dtype. */
FD_HD fd_dtype fd_out_dtype(fd_dtype t) { return fd_dtype_is_fp8(t) ? FD_DT_BF16 : t; }
/* FlashAttention-3's FP8 softmax_scale_log2 (flash_fwd_kernel_sm90.h): the binary32
 * (float)(softmax_scale log2 e) times (q_descale k_descale), the descale product rounded
 * first; the replay and the CUDA host code both take it from here. */
static inline float fd_fp8_scale_log2(const fd_problem *p)
{
    const float sl2 = (float)((double)p->softmax_scale * 1.4426950408889634073599246810018921);
    return sl2 * (fd_descale(p->q_descale) * fd_descale(p->k_descale));
}
/* The FP8 kernel's k order inside each 32-key chunk of the PV product (the m16n8k32 A
 * fragment filled straight from the S accumulator, kernels/cuda/fd_cuda_flash_fp8.cu):
 * position p holds key fd_fp8_pv_key(p); the replay sums in the same order. */
FD_HD int fd_fp8_pv_key(int p)
{
    const int t = (p & 15) >> 2, i = p & 3;
    return 16 * (p >> 4) + (i < 2 ? 2 * t + i : 8 + 2 * t + i - 2);
}
/* FA3's Max_offset: P = exp2(s scale_log2 - (m scale_log2 - 8)) lies in [0, 256]. */
#define FD_FP8_MAX_OFFSET 8
/* ---- end FP8 ---- */

/* Does the problem use a window, softcap, ALiBi, variable-length sequences or a paged KV
 * cache (the features only the forward kernels and the reference support so far)? */
static inline int fd_problem_has_mods(const fd_problem *p)
{
    return p->window || p->softcap > 0.0f || p->alibi || p->varlen || p->page_size > 0;
}

/* ---- Paged KV cache (issue 13 item 5): helpers ---- */
/* Block-table entries per batch entry: ceil(seqlen_k / page_size). */
static inline int fd_paged_pages(const fd_problem *p)
{
    return p->page_size > 0 ? (p->seqlen_k + p->page_size - 1) / p->page_size : 0;
}
/* The physical cache row (page * page_size + slot) of logical key j of entry b. */
static inline long fd_paged_row(const fd_problem *p, int b, int j)
{
    const int pg = p->block_table[(size_t)b * (size_t)fd_paged_pages(p) + (size_t)(j / p->page_size)];
    return (long)pg * p->page_size + j % p->page_size;
}
/* Elements of the physical cache: num_pages x page_size x kv_heads x d. */
static inline size_t fd_paged_numel(const fd_problem *p)
{
    return (size_t)p->num_pages * (size_t)p->page_size * (size_t)p->kv_heads * (size_t)p->head_dim;
}
/* Keys of batch entry b that exist: cache_seqlens[b] (paged), else seqlen_k. */
static inline int fd_problem_keys(const fd_problem *p, int b)
{
    return p->page_size > 0 ? p->cache_seqlens[b] : p->seqlen_k;
}
/* ---- end paged KV cache ---- */

FD_HD int fd_mask_visible(fd_mask_kind mask, int i, int j, int sq, int sk)
{
    if (mask == FD_MASK_CAUSAL_TL) return j <= i;
    if (mask == FD_MASK_CAUSAL_BR) return (long)j <= (long)i + sk - sq;
    return 1;
}

/* Visible keys of query row i: the interval [*lo, *hi] (empty when *hi < *lo); returns
 * its length. FlashAttention-2's rule (mask.h, flash_api.cpp): the causal mask and the
 * window intersect; with window (wl, wr) key j is visible when
 *   j >= i + sk - sq - wl (wl >= 0)   and   j <= i + sk - sq + wr (wr >= 0),
 * -1 meaning unbounded on that side; causal (bottom-right) is the window (-1, 0). */
FD_HD int fd_vis_range(int mask, int window, int wl, int wr, int i, int sq, int sk, int *lo,
                       int *hi)
{
    const long diag = (long)i + sk - sq;
    long a = 0, z = (long)sk - 1;
    if (mask == FD_MASK_CAUSAL_TL && (long)i < z) z = i;
    if (mask == FD_MASK_CAUSAL_BR && diag < z) z = diag;
    if (window && wr >= 0 && diag + wr < z) z = diag + wr;
    if (window && wl >= 0 && diag - wl > a) a = diag - wl;
    if (z < a) { /* empty: a canonical empty interval inside [0, sk] */
        *lo = (int)(a < sk ? a : sk);
        *hi = *lo - 1;
        return 0;
    }
    *lo = (int)a;
    *hi = (int)z;
    return (int)(z - a + 1);
}

/* ---- Variable-length batches (issue 13 item 4): per-sequence helpers ---- */
/* The sequence s of packed row i: cu[s] <= i < cu[s + 1] (the last such s when empty
 * sequences share the bound); n sequences, cu[0] = 0 <= i < cu[n]. */
FD_HD int fd_varlen_seq(const int *cu, int n, int i)
{
    int a = 0, z = n - 1;
    while (a < z) { /* the largest s with cu[s] <= i */
        const int m = (a + z + 1) / 2;
        if (cu[m] <= i) a = m;
        else z = m - 1;
    }
    return a;
}

/* The sequence of query row i as (first query row q0, its length sq, first key k0,
 * its key count sk); without varlen the whole problem (0, seqlen_q, 0, seqlen_k). */
typedef struct { int q0, sq, k0, sk; } fd_seq_span;
static inline fd_seq_span fd_problem_seq_span(const fd_problem *p, int i)
{
    fd_seq_span r = {0, p->seqlen_q, 0, p->seqlen_k};
    if (p->varlen > 0) {
        const int s = fd_varlen_seq(p->cu_seqlens_q, p->varlen, i);
        r.q0 = p->cu_seqlens_q[s];
        r.sq = p->cu_seqlens_q[s + 1] - r.q0;
        r.k0 = p->cu_seqlens_k[s];
        r.sk = p->cu_seqlens_k[s + 1] - r.k0;
    }
    return r;
}

/* Visible keys of query row i of batch entry b as (packed) key indices [*lo, *hi]: the
 * row's own sequence only, aligned within it (varlen); paged: the keys below
 * cache_seqlens[b], aligned bottom-right to them. */
static inline int fd_mask_visible_range_b(const fd_problem *p, int b, int i, int *lo, int *hi)
{
    if (p->page_size > 0)
        return fd_vis_range((int)p->mask, p->window, p->window_left, p->window_right, i, p->seqlen_q,
                            p->cache_seqlens[b], lo, hi);
    const fd_seq_span s = fd_problem_seq_span(p, i);
    const int n = fd_vis_range((int)p->mask, p->window, p->window_left, p->window_right, i - s.q0,
                               s.sq, s.sk, lo, hi);
    *lo += s.k0;
    *hi += s.k0;
    return n;
}

/* The same for callers that hold a row but no batch entry (row counts, budgets, cost
 * estimates): the batch entry whose cache is longest (paged), else any (they agree). */
static inline int fd_mask_visible_range(const fd_problem *p, int i, int *lo, int *hi)
{
    int bb = 0;
    if (p->page_size > 0)
        for (int b = 1; b < p->batch && b < FD_PAGED_MAX_BATCH; b++)
            if (p->cache_seqlens[b] > p->cache_seqlens[bb]) bb = b;
    return fd_mask_visible_range_b(p, bb, i, lo, hi);
}

/* |i + sk - sq - j| within the row's sequence (FA2's ALiBi distance). */
static inline int fd_problem_alibi_dist(const fd_problem *p, int i, int j)
{
    const fd_seq_span s = fd_problem_seq_span(p, i);
    const long d = (long)(i - s.q0) + s.sk - s.sq - (j - s.k0);
    return (int)(d < 0 ? -d : d);
}
/* ---- end variable-length batches ---- */

static inline int fd_problem_visible_count(const fd_problem *p, int i)
{
    int lo, hi;
    return fd_mask_visible_range(p, i, &lo, &hi);
}

static inline int fd_problem_visible_count_b(const fd_problem *p, int b, int i)
{
    int lo, hi;
    return fd_mask_visible_range_b(p, b, i, &lo, &hi);
}

static inline int fd_problem_visible(const fd_problem *p, int i, int j)
{
    int lo, hi;
    fd_mask_visible_range(p, i, &lo, &hi);
    return j >= lo && j <= hi;
}

/* Number of keys visible from query row i: keys 0..n-1 (the masks are prefixes).
 * The causal masks only (the backward pass); with a window use fd_mask_visible_range. */
FD_HD int fd_mask_visible_count(fd_mask_kind mask, int i, int sq, int sk)
{
    long n = sk;
    if (mask == FD_MASK_CAUSAL_TL) n = (long)i + 1;
    else if (mask == FD_MASK_CAUSAL_BR) n = (long)i + sk - sq + 1;
    if (n < 0) n = 0;
    if (n > sk) n = sk;
    return (int)n;
}

static inline size_t fd_q_index(const fd_problem *p, int b, int i, int h, int d)
{
    return (((size_t)b * (size_t)p->seqlen_q + (size_t)i) * (size_t)p->heads + (size_t)h) *
               (size_t)p->head_dim + (size_t)d;
}
static inline size_t fd_kv_index(const fd_problem *p, int b, int j, int hk, int d)
{
    return (((size_t)b * (size_t)p->seqlen_k + (size_t)j) * (size_t)p->kv_heads + (size_t)hk) *
               (size_t)p->head_dim + (size_t)d;
}
static inline size_t fd_lse_index(const fd_problem *p, int b, int h, int i)
{
    return ((size_t)b * (size_t)p->heads + (size_t)h) * (size_t)p->seqlen_q + (size_t)i;
}
static inline int fd_kv_head(const fd_problem *p, int h) { return h / (p->heads / p->kv_heads); }
static inline size_t fd_q_numel(const fd_problem *p)
{
    return (size_t)p->batch * (size_t)p->seqlen_q * (size_t)p->heads * (size_t)p->head_dim;
}
static inline size_t fd_kv_numel(const fd_problem *p)
{
    return (size_t)p->batch * (size_t)p->seqlen_k * (size_t)p->kv_heads * (size_t)p->head_dim;
}
static inline size_t fd_lse_numel(const fd_problem *p)
{
    return (size_t)p->batch * (size_t)p->heads * (size_t)p->seqlen_q;
}
#ifdef __cplusplus /* the C functions of fd_common.c, callable from the CUDA host code */
extern "C" {
#endif
const char *fd_dtype_name(fd_dtype t);
const char *fd_mask_name(fd_mask_kind m);
/* 0, or -1 with err filled: window sides >= -1, softcap finite >= 0, ALiBi slopes finite
 * and heads <= FD_ALIBI_MAX_HEADS; varlen: 1..FD_VARLEN_MAX_SEQS sequences, batch 1,
 * cu_seqlens from 0, non-decreasing, ending at seqlen_q / seqlen_k, no dropout. */
int fd_problem_check_mods(const fd_problem *p, char *err, size_t errlen);
/* ---- Variable-length batches (issue 13 item 4) ---- */
/* cu (n + 1 entries) starts at 0, never decreases and ends at total; else -1 and err
 * says which ("must start at 0, got 3"). */
int fd_cu_seqlens_check(const int *cu, int n, int total, char *err, size_t errlen);
int fd_problem_check_varlen(const fd_problem *p, char *err, size_t errlen);
/* ---- end variable-length batches ---- */
/* ---- Paged KV cache (issue 13 item 5) ---- */
/* page_size >= 1, 1..FD_PAGED_MAX_BATCH entries, seqlen_q <= cache_seqlens[b] <=
 * seqlen_k, a block table whose entries lie in [0, num_pages), mask none or causal
 * bottom-right, no dropout, ALiBi or varlen; else -1 and err names what. */
int fd_problem_check_paged(const fd_problem *p, char *err, size_t errlen);
/* The logical K or V (fd_kv_index layout) scattered into a physical cache of
 * fd_paged_numel(p) elements through the block table (slots no entry maps hold NaN). */
void fd_paged_scatter(const fd_problem *p, const float *logical, float *phys);
/* The logical K or V gathered from a physical cache through the block table. */
void fd_paged_gather(const fd_problem *p, const float *phys, float *logical);
/* FlashAttention-2's num_splits_heuristic (flash_api.cpp), re-implemented: the split count
 * mha_fwd_kvcache picks for this problem on a GPU of num_sms SMs (1..128). */
int fd_splitkv_heuristic(const fd_problem *p, int num_sms);
/* The split count a split-KV backend uses: cfg_splits (>= 1) or, for 0, the heuristic. */
int fd_splitkv_splits(const fd_problem *p, int cfg_splits, int num_sms);
/* ---- end paged KV cache ---- */
/* ---- FP8 (issue 15 item 4) ---- */
/* FP8 problems: descales finite and > 0 (0: 1), no dropout, softcap, ALiBi, window,
 * varlen or paged KV (not modelled for FP8 yet); non-FP8 problems: descales 0 or 1.
 * 0, or -1 with err naming the field and what was expected. */
int fd_problem_check_fp8(const fd_problem *p, char *err, size_t errlen);
/* Standard attention's view of an FP8 problem (cpu-standard, cuda-standard): the inputs
 * dequantised to bfloat16, x8.to(bfloat16) * x_descale (one binary32 product rounded to
 * bf16), into new arrays *qb, *kb, *vb (free them), and *pb the bf16 problem without
 * descales. 0, or -1 when out of memory (nothing allocated then). */
int fd_fp8_dequant_bf16(const fd_problem *p, const float *q, const float *k, const float *v, fd_problem *pb,
                        float **qb, float **kb, float **vb);
/* ---- end FP8 ---- */
/* The standard ALiBi slopes 2^(-8 (h + 1) / heads), h = 0 .. heads - 1. */
void fd_alibi_default_slopes(int heads, float *slopes);
/* "window (l, r), softcap c, alibi" (only what is on); returns the length. */
int fd_problem_describe_mods(const fd_problem *p, char *buf, size_t len);
#ifdef __cplusplus
}
#endif
#endif
