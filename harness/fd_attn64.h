/* fd_attn64.h: attention in binary64 with deliberate deviations, the engine of the bug
 * hypotheses (and of the input-rounding and conditioning parts of the error budget).
 *
 * fd_attn64 computes softmax(scale * Q K^T + mask) V with FA2's dropout mask, in plain
 * binary64 arithmetic (not the MPFR reference: its error, ~1e-15 relative, is far below
 * anything it is used to detect), for the listed query rows of every batch and head,
 * under a variant that may change the scale, the causal alignment and offset, the
 * dropout seed/offset/scale, the window (bounds, alignment), softcap and ALiBi, or
 * normalise over the wrong axis. Inputs are doubles in the
 * fd_problem layouts; o is a full [b][s][h][d] array (only listed rows written). */
#ifndef FD_ATTN64_H
#define FD_ATTN64_H
#include <stddef.h>
#include <stdint.h>
#include "fd_problem.h"

typedef struct fd_attn_variant {
    double scale;       /* softmax scale applied to Q K^T (FP8: times q_descale k_descale) */
    double v_scale;     /* factor on V: FP8's v_descale (1 otherwise) */
    fd_mask_kind mask;
    int causal_shift;   /* added to the causal limit: +1 sees one key more, -1 one less */
    int dropout;        /* apply the FA2 mask */
    uint64_t seed, offset;
    double p;           /* dropout probability deciding the threshold */
    double drop_scale;  /* factor on kept values: 1/(1-p) correct, 1 missing, 1/(1-p)^2 twice */
    int wrong_axis;     /* normalise over queries (softmax(dim=-2)) instead of keys */
    /* FA2's score modifiers (copied from the problem) and their deviations */
    int window, window_left, window_right;
    int window_left_shift;  /* +1: the window reaches one key further left, -1 one less */
    int window_right_shift; /* +1: one key further right, -1 one less */
    int window_top_left;    /* window aligned top-left (diagonal j = i) instead of bottom-right */
    double softcap;         /* > 0: c tanh(s / c) on the scaled score s */
    int softcap_unscaled;   /* the cap applied to the unscaled q.k, then scaled: scale c tanh(q.k / c) */
    int alibi;              /* add -slope_h |i + sk - sq - j| */
    double alibi_sign;      /* 1 correct, -1 the slope's sign flipped */
    int alibi_reversed;     /* slope of head H-1-h instead of h */
    int alibi_scaled;       /* bias added before the softmax scale (so multiplied by it) */
    /* variable-length batches (p->varlen) and their deviations */
    int varlen_leak;        /* no sequence boundaries: the packed batch is one sequence */
    int varlen_cu_shift;    /* +1 / -1: the inner cu_seqlens_q/k entries off by one */
    int varlen_pad;         /* each sequence zero-padded to the longest and the pad keys
                             * attended (eager over a padded batch, the padding mask lost) */
    double varlen_pad_bias; /* varlen_pad: the additive mask on the pad keys' logits (0: lost;
                             * -1e4 or -FLT_MAX: the mask eager code adds) */
    /* paged KV cache (p->page_size > 0) and its deviations */
    int paged_page_shift;   /* +1: logical page t of an entry read from block-table slot t + 1
                             * (the flat [batch][pages] table: past a row's end, the next
                             * row's first page; past the table's end, slot 0) */
    int paged_identity;     /* the block table ignored: entry b's page t read from physical
                             * page b * pages + t (identity order) */
    int paged_stale;        /* cache_seqlens ignored: every key the entry's pages hold
                             * attended (seqlen_k, the capacity), aligned bottom-right to it */
    int splitkv_unweighted; /* split-KV partial outputs averaged without their LSE weights
                             * (each split normalised alone, the mean over the splits with a
                             * visible key); splits and split_bc as the split-KV backends */
    int splits, split_bc;
} fd_attn_variant;

void fd_attn_variant_default(const fd_problem *p, fd_attn_variant *va);

int fd_attn64(const fd_problem *p, const fd_attn_variant *va, const double *q, const double *k,
              const double *v, const int *rows, int nrows, double *o, char *err, size_t errlen);

/* Per checked element ([b][h][r][d]): sumabs = sum_j |w_j v_jd| (w: normalised, dropped
 * weights) and the condition number kappa = sumabs / |sum_j w_j v_jd| (1 when all terms
 * are 0, +Inf when they cancel exactly). */
int fd_attn64_condition(const fd_problem *p, const double *q, const double *k, const double *v,
                        const int *rows, int nrows, double *sumabs, double *kappa, char *err,
                        size_t errlen);

/* Varlen: does the variant's padded shape (va->varlen_pad) make some row see a pad key,
 * or see other keys of its own sequence, than p's sequences do? */
int fd_attn64_varlen_pad_changes(const fd_problem *p, const fd_attn_variant *va);

/* Copies a float tensor into a new double array (NULL when out of memory). */
double *fd_to_f64(const float *x, size_t n);
/* max |a_i - b_i| over n values; +Inf when any difference is NaN. */
double fd_max_abs_diff(const double *a, const double *b, size_t n);
#endif
