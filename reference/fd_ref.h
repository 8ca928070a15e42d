/* fd_ref.h: the MPFR reference for attention forward, one query row at a time.
 *
 * For query row i of (batch b, head h) it computes, from the exact input values,
 *   s_j = softmax_scale * sum_d q_d k_jd           (softmax_scale: the float in fd_problem)
 *   s_j <- softcap * tanh(s_j / softcap)           (when softcap > 0; mpfr_tanh)
 *   s_j <- s_j - slope_h * |i + sk - sq - j|       (with ALiBi; FA2's order: after the cap)
 *   visible j: the interval of fd_mask_visible_range (causal mask and sliding window)
 *   m   = max over visible j of s_j
 *   l   = sum over visible j of exp(s_j - m)
 *   O_d = sum over visible, kept j of exp(s_j - m) v_jd / ((1 - p) * l)
 *   LSE = m + log(l)
 * where "kept" is FA2's dropout mask regenerated from (seed, offset) by fd_philox.h.
 * Rows with no visible key give O = 0 and LSE = +Inf (FlashAttention's convention).
 *
 * Decisive: each value is returned rounded to binary64 only when mpfr_can_round,
 * with a rigorous bound on the accumulated error, says the rounding is correct;
 * otherwise the row is recomputed at twice the precision, up to prec_max; values
 * still not decided are counted in info->undecided (and their best estimate returned).
 * Thread-safe when MPFR is built thread-safe (one call per thread). */
#ifndef FD_REF_H
#define FD_REF_H
#include <stddef.h>
#include "../kernels/common/fd_problem.h"

typedef struct fd_ref_opts {
    int prec0;    /* starting working precision in bits (default 128) */
    int prec_max; /* give up (UNDECIDED) above this (default 2048) */
} fd_ref_opts;

typedef struct fd_ref_row_info {
    double lse;    /* +Inf when no key is visible */
    int undecided; /* outputs (O entries and LSE) not decided at prec_max */
    int prec_used; /* precision of the accepted computation */
    int nvisible;  /* visible keys */
    int nkept;     /* visible keys kept by dropout */
} fd_ref_row_info;

void fd_ref_opts_default(fd_ref_opts *o);

/* 1 when MPFR keeps its flags and caches per thread (mpfr_buildopt_tls_p), so that
 * fd_ref_row may run on several threads at once; 0 otherwise. */
int fd_ref_thread_safe(void);
/* Frees this thread's MPFR caches (mpfr_free_cache); call before a worker thread exits. */
void fd_ref_thread_cleanup(void);

/* o receives head_dim doubles; info may be NULL, opt NULL means the defaults.
 * Returns 0, or -1 with err filled (bad arguments, non-finite inputs, no memory). */
int fd_ref_row(const fd_problem *p, const float *q, const float *k, const float *v, int b, int h,
               int i, const fd_ref_opts *opt, double *o, fd_ref_row_info *info, char *err,
               size_t errlen);
#endif
