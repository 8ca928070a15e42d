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

typedef enum { FD_DT_FP16 = 0, FD_DT_BF16 = 1, FD_DT_FP32 = 2 } fd_dtype;

typedef enum {
    FD_MASK_NONE = 0,
    FD_MASK_CAUSAL_TL = 1, /* key j visible from query i when j <= i (PyTorch is_causal) */
    FD_MASK_CAUSAL_BR = 2  /* j <= i + seqlen_k - seqlen_q (FlashAttention >= 2.1) */
} fd_mask_kind;

typedef struct fd_problem {
    int batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim;
    fd_dtype dtype;
    fd_mask_kind mask;
    float softmax_scale;   /* the float the kernel receives (1/sqrt(d) rounded to binary32) */
    double dropout_p;      /* probability of dropping, in [0, 1) */
    uint64_t seed, offset; /* FA2 Philox seed and generator offset */
} fd_problem;

FD_HD int fd_mask_visible(fd_mask_kind mask, int i, int j, int sq, int sk)
{
    if (mask == FD_MASK_CAUSAL_TL) return j <= i;
    if (mask == FD_MASK_CAUSAL_BR) return (long)j <= (long)i + sk - sq;
    return 1;
}

/* Number of keys visible from query row i: keys 0..n-1 (the masks are prefixes). */
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
const char *fd_dtype_name(fd_dtype t);
const char *fd_mask_name(fd_mask_kind m);
#endif
