/* fd_cpu_attn.h: CPU kernels under test, in IEEE binary32 arithmetic.
 *
 * fd_cpu_flash_forward replays the FlashAttention-2 forward algorithm: for each Q tile
 * of br rows, K/V tiles of bc keys in order; S = Q K^T accumulated in fp32 under the
 * qk_order model; running row max m and row sum l in fp32; P = exp2(S * scale_log2 -
 * m * scale_log2) written as one fmaf, as nvcc contracts FA2's expression; l sums the
 * fp32 P (before rounding, before dropout); P rounded to the input dtype (unless
 * p_fp32), dropout applied to the rounded P with the FA2 Philox mask (dropped -> 0);
 * O = O * exp2((m_old - m_new) * scale_log2) + P V under pv_order; finally
 * O *= (1 / l) * (1 / (1 - p)) and rounded to the dtype; LSE = m * scale + log(l) in
 * fp32 (+Inf for rows with no visible key, whose O is 0, as FA2 writes them).
 *
 * fd_cpu_standard_forward is standard attention as eager frameworks run it:
 * S = Q K^T (fp32 accumulate), S *= scale, mask, softmax in fp32 (max-subtracted expf,
 * sequential sum, divide), P cast to the dtype, dropout (P * keep * (1/(1-p)) in fp32,
 * cast again), O = P V (fp32 accumulate) cast to the dtype. LSE is not produced by
 * eager attention; it is written as m * scale + log(sum) for comparison.
 *
 * rows/nrows: the query rows to compute (for every batch and head); NULL computes all.
 * Rows not listed are left untouched in o and lse. Returns 0, or -1 with err filled. */
#ifndef FD_CPU_ATTN_H
#define FD_CPU_ATTN_H
#include <stddef.h>
#include "../common/fd_problem.h"
#include "../common/fd_accum.h"

typedef enum { FD_EXP2_LIBM = 0, FD_EXP2_PORTABLE = 1 } fd_exp2_mode;

typedef struct fd_flash_cfg {
    int br, bc;                /* tile sizes (rows of Q, keys of K/V) */
    fd_accum_model qk_order;   /* order model of S = Q K^T */
    fd_accum_model pv_order;   /* order model of O += P V */
    fd_exp2_mode exp2_mode;    /* libm exp2f (correctly rounded on glibc) or portable */
    int p_fp32;                /* 1: P stays binary32 before PV (the P-precision knob) */
} fd_flash_cfg;

void fd_flash_cfg_default(fd_flash_cfg *cfg);

int fd_cpu_flash_forward(const fd_problem *p, const fd_flash_cfg *cfg, const float *q,
                         const float *k, const float *v, const int *rows, int nrows, float *o,
                         float *lse, char *err, size_t errlen);

int fd_cpu_standard_forward(const fd_problem *p, fd_accum_model order, const float *q,
                            const float *k, const float *v, const int *rows, int nrows,
                            float *o, float *lse, char *err, size_t errlen);
#endif
