/* fd_accum.h: named accumulation-order models for fp32-accumulated dot products.
 *
 * fd_dot_acc(m, a, sa, b, sb, n, c) returns c + sum_{i<n} a[i*sa] * b[i*sb] in binary32
 * as the model m orders and rounds it:
 *   FD_ACC_SEQ  : c = fmaf(a_i, b_i, c) for i = 0..n-1 (one rounding per term);
 *   FD_ACC_TC16 : the H100 mma.sync block FMA (fp16/bf16 inputs, fp32 accumulate):
 *                 16-term blocks in K order, each block d = BFMA(a[16], b[16], c) with
 *                 exact products, alignment to the largest exponent keeping 23 + 2
 *                 fraction bits (truncated), late normalisation, result truncated to
 *                 24 bits (round toward zero); a short last block is padded with zeros.
 *                 Reproduces every result in tests/data/tensor-core-h100.
 *   FD_ACC_TC_FP8: the FP8 tensor-core dot (mma.sync m16n8k32 .e4m3/.e5m2, fp32
 *                 accumulate) as the same block FMA, generalised by fd_tc_fp8_params:
 *                 `block` terms per block (32: the instruction's K), `frac_bits` fraction
 *                 bits kept at the alignment exponent (truncated), the block result
 *                 truncated to `out_bits` significant bits, and `promote`: 0 chains the
 *                 blocks through the fp32 accumulator (as mma.sync does), N > 0 restarts
 *                 the tensor-core accumulator at 0 every N terms and adds each partial sum
 *                 to an fp32 register with one round-to-nearest add (DeepSeek-V3's
 *                 promotion). NOT YET MEASURED: the default (FD_TC_FP8_DEFAULT) is the
 *                 TC16 model with 32-term blocks; tests/test_accum_fp8.c fits it to
 *                 hardware data when tests/data/tensor-core-fp8-h200 exists.
 * Inputs of FD_ACC_TC16 must be exact fp16 or bf16 values, of FD_ACC_TC_FP8 exact FP8. */
#ifndef FD_ACCUM_H
#define FD_ACCUM_H
#include <stddef.h>
#include "fd_problem.h"

typedef enum { FD_ACC_SEQ = 0, FD_ACC_TC16 = 1, FD_ACC_TC_FP8 = 2 } fd_accum_model;

/* ---- FP8 (issue 15 item 4): the FP8 block-FMA model's parameters, in one place ---- */
typedef struct fd_tc_fp8_params {
    int block;     /* terms per block FMA (1..64); 32 = m16n8k32's K */
    int frac_bits; /* fraction bits kept at the alignment exponent (TC16: 23 + 2 = 25) */
    int out_bits;  /* significant bits of a block's result, truncated (24: binary32) */
    int promote;   /* 0: chain blocks in the fp32 accumulator; N > 0: promote every N terms */
} fd_tc_fp8_params;
/* The assumed H100/H200 parameters until the hardware says otherwise (not measured). */
#define FD_TC_FP8_DEFAULT {32, 25, 24, 0}
fd_tc_fp8_params fd_tc_fp8_default(void);
/* One FP8 block: c + sum_{i<n} a[i*sa] b[i*sb] (n <= prm->block) with the inputs' FP8
 * formats given (ta, tb: FD_DT_E4M3 or FD_DT_E5M2, which place subnormals). */
float fd_tc_fp8_block(const fd_tc_fp8_params *prm, const float *a, size_t sa, fd_dtype ta, const float *b,
                      size_t sb, fd_dtype tb, int n, float c);
/* The whole dot under the model: blocks in K order, promotion as prm says. */
float fd_dot_tc_fp8(const fd_tc_fp8_params *prm, const float *a, size_t sa, fd_dtype ta, const float *b,
                    size_t sb, fd_dtype tb, int n, float c);
/* ---- end FP8 ---- */

const char *fd_accum_name(fd_accum_model m);
/* Parses "seq" / "tc16" / "tc_fp8"; returns 0 on success, -1 for an unknown name. */
int fd_accum_parse(const char *s, fd_accum_model *out);

/* One 16-term tensor-core block: c + sum_{i<16} a[i] * b[i] (contiguous). */
float fd_tc16_block(const float *a, const float *b, float c);

float fd_dot_acc(fd_accum_model m, const float *a, size_t sa, const float *b, size_t sb, int n,
                 float c);

/* The same with the input dtype given (FD_DT_FP16 or FD_DT_BF16), so that inputs below
 * 2^-14 are placed as the tensor core does for that format rather than guessed from
 * the block's values. SEQ ignores t. Kernels should call these. */
float fd_tc16_block_dt(const float *a, const float *b, float c, fd_dtype t);
float fd_dot_acc_dt(fd_accum_model m, const float *a, size_t sa, const float *b, size_t sb, int n,
                    float c, fd_dtype t);
#endif
