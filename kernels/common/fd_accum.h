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
 * Inputs of FD_ACC_TC16 must be exact fp16 or bf16 values. */
#ifndef FD_ACCUM_H
#define FD_ACCUM_H
#include <stddef.h>
#include "fd_problem.h"

typedef enum { FD_ACC_SEQ = 0, FD_ACC_TC16 = 1 } fd_accum_model;

const char *fd_accum_name(fd_accum_model m);
/* Parses "seq" / "tc16"; returns 0 on success, -1 for an unknown name. */
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
