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
 * FP8 inputs (FD_DT_E4M3 / FD_DT_E5M2; issue 15 item 4; docs/fp8.md) follow
 * FlashAttention-3's FP8 forward (hopper/flash_fwd_kernel_sm90.h, softmax.h): S = Q K^T of
 * the FP8 values under the FP8 tensor-core model (qk_order tc16 or tc_fp8: FD_ACC_TC_FP8;
 * seq: fmaf chain); scale_log2 = (float)(softmax_scale log2 e) * (q_descale * k_descale) in
 * binary32; P = exp2(fmaf(s, scale_log2, -fmaf(m, scale_log2, -8))) in [0, 256] (Max_offset
 * 8, cfg->fp8_max_offset); l sums the fp32 P; P cast to e4m3 (round to nearest even,
 * saturating at 448) whatever the input format; O += P V under the FP8 model (P e4m3, V
 * the input format); O = O * ((1 / l) * v_descale) rounded to bfloat16; LSE = fmaf(m,
 * scale_log2 ln 2, logf(l 2^-8)).
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

/* Order of the row sum l: FD_ROWSUM_SEQ adds each key's P in key order; FD_ROWSUM_FA2
 * keeps four per-thread partial sums (thread t of a quad owns columns 8a + 2t and
 * 8a + 2t + 1 of every 8-column MMA n-atom a, added in that order, rescaled with O),
 * combined once at the end as (l0 + l2) + (l1 + l3), FA2's quad_allreduce. */
typedef enum { FD_ROWSUM_SEQ = 0, FD_ROWSUM_FA2 = 1 } fd_rowsum_order;

/* Stages the attribution replay can make exact (binary64 instead of the kernel's
 * arithmetic); see fd_cpu_flash_stages. */
#define FD_STAGE_QK 0x01u        /* S = Q K^T: one rounding of the exact dot instead of fp32 accumulation */
#define FD_STAGE_SOFTMAX 0x02u   /* max, exp2, rescale factors and row sum in binary64 */
#define FD_STAGE_PROUND 0x04u    /* P not rounded to the dtype before PV */
#define FD_STAGE_PV 0x08u        /* O accumulation (and its rescaling) in binary64 */
#define FD_STAGE_FINAL 0x10u     /* 1/l, the final scaling and the output rounding */
#define FD_STAGE_DROPSCALE 0x20u /* 1/(1-p) exact instead of binary32 */
#define FD_STAGE_ALL 0x3fu

typedef struct fd_flash_cfg {
    int br, bc;                /* tile sizes (rows of Q, keys of K/V) */
    fd_accum_model qk_order;   /* order model of S = Q K^T */
    fd_accum_model pv_order;   /* order model of O += P V */
    fd_exp2_mode exp2_mode;    /* libm exp2f (correctly rounded on glibc) or portable */
    int p_fp32;                /* 1: P stays binary32 before PV (the P-precision knob) */
    fd_rowsum_order rowsum;    /* order of the row sum (default FD_ROWSUM_FA2) */
    int splits;                /* split-KV backends: number of K/V chunks (default 4); 0: FA2's
                                * num_splits heuristic (fd_splitkv_heuristic) for sms SMs */
    int sms;                   /* the SM count the heuristic assumes (default 132, an H200) */
    int o_round_up;            /* planted bias (CPU replay only, a test of the bias detector):
                                * 1 rounds the output toward +Inf instead of to nearest */
    int fp8_max_offset;        /* FP8: FA3's Max_offset (default 8: P in [0, 256]); 0 leaves P
                                * in [0, 1] (the "P not rescaled" bug), 9 makes the largest P
                                * saturate at 448 (the "P saturating" bug) */
} fd_flash_cfg;

void fd_flash_cfg_default(fd_flash_cfg *cfg);

int fd_cpu_flash_forward(const fd_problem *p, const fd_flash_cfg *cfg, const float *q,
                         const float *k, const float *v, const int *rows, int nrows, float *o,
                         float *lse, char *err, size_t errlen);

/* The replay with the stages in `exact` computed in binary64 (0: identical bits to
 * fd_cpu_flash_forward). Outputs are binary64: with FD_STAGE_FINAL the output is not
 * rounded to the dtype. Used by attribution: the change of the output when one stage
 * alone is exact is that stage's contribution to the error. */
int fd_cpu_flash_stages(const fd_problem *p, const fd_flash_cfg *cfg, unsigned exact,
                        const float *q, const float *k, const float *v, const int *rows,
                        int nrows, double *o, double *lse, char *err, size_t errlen);

/* Split-KV (flash-decoding) replay: keys split into `splits` contiguous chunks (each a
 * multiple of bc; every row of a sequence splits the sequence's ceil(seqlen_k / bc) tiles
 * alike, whatever its mask leaves it: FA2's n_blocks_per_split, and cuda-splitkv's; a
 * paged entry its ceil(cache_seqlens / bc)), each chunk runs the flash replay and yields
 * (O_i, LSE_i) in fp32;
 * the combine weights each by exp(LSE_i - max LSE) in fp32 (as FA2's combine kernel). */
int fd_cpu_splitkv_forward(const fd_problem *p, const fd_flash_cfg *cfg, int splits,
                           const float *q, const float *k, const float *v, const int *rows,
                           int nrows, float *o, float *lse, char *err, size_t errlen);
/* Paged KV cache (p->page_size > 0): cpu-flash and cpu-splitkv with K and V given as the
 * physical caches [num_pages][page_size][kv_heads][d] (fd_paged_numel(p) floats each),
 * read through p->block_table; the logical forms above scatter their K, V into such
 * caches first (fd_paged_scatter), so both read through the table alike. */
int fd_cpu_flash_forward_paged(const fd_problem *p, const fd_flash_cfg *cfg, const float *q, const float *kc,
                               const float *vc, const int *rows, int nrows, float *o, float *lse, char *err,
                               size_t errlen);
int fd_cpu_splitkv_forward_paged(const fd_problem *p, const fd_flash_cfg *cfg, int splits, const float *q,
                                 const float *kc, const float *vc, const int *rows, int nrows, float *o, float *lse,
                                 char *err, size_t errlen);

int fd_cpu_standard_forward(const fd_problem *p, fd_accum_model order, const float *q,
                            const float *k, const float *v, const int *rows, int nrows,
                            float *o, float *lse, char *err, size_t errlen);
#endif
