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
 *   FD_ACC_TC_FP8: the FP8 tensor-core dot (e4m3/e5m2 inputs, fp32 accumulate), one
 *                 instruction of K = 32 per block, chained in K order through the fp32
 *                 accumulator (d of one instruction = c of the next), as fd_tc_fp8_params
 *                 says. MEASURED on an NVIDIA H200 (sm_90, driver 580.159.04, CUDA 13.0,
 *                 2026-12-03, scripts/device-probe; tests/data/tensor-core-h200,
 *                 docs/tensor-cores.md), bit for bit on every stored block:
 *   FD_TC_FP8_MMA_SM90 (= FD_TC_FP8_DEFAULT; mma.sync.m16n8k32.row.col.f32.e4m3/e5m2):
 *                 one instruction gives the results of two fp16 HMMA m16n8k16 block FMAs
 *                 (as if ptxas lowered it to fp16 HMMAs; SASS not inspected), each
 *                 FD_ACC_TC16's (exact products, alignment to the largest exponent with
 *                 25 fraction bits truncated, late normalisation, 24-bit result
 *                 truncated), over the instruction's k indices: the first over the k with
 *                 k mod 4 in {0, 1} (16 terms) starting from +0 (NOT from c), the second
 *                 over k mod 4 in {2, 3} starting from the first's result; then c is added
 *                 with one binary32 add rounded to nearest even:
 *                   d = RN(c + TC16(P_hi, TC16(P_lo, +0))).
 *                 mma.sync e4m3 and e5m2, K = 32, 64, 128: 14000 of 14000 blocks.
 *                 (e4m3 subnormals placed at -6 or at fp16's -14: the data agree with both.)
 *   FD_TC_FP8_WGMMA_SM90 (wgmma.mma_async m64nNk32 .e4m3/.e5m2, fp32 accumulator): one
 *                 block FMA of all 32 products and c: exact products at exponent
 *                 e_a + e_b (unnormalised significands in [1, 4), FP8 subnormals at the
 *                 format's minimum exponent), E = the largest exponent of the products
 *                 and c, every term (c included) truncated toward zero to a multiple of
 *                 2^(E - 13), the exact sum of those normalised and truncated to 14
 *                 significant bits (round toward zero). wgmma e4m3 and e5m2, K = 32 to
 *                 512 (chained wgmma, K = 32 each): 16400 of 16400 blocks. (A result
 *                 below 2^-126 keeps 14 bits from its own exponent here: not measured.)
 *                 Both FD_TC_FP8_* keep promote = 0 (the hardware chains); promote N > 0
 *                 restarts the tensor-core accumulator every N terms and adds each partial
 *                 to an fp32 register with one RN add (DeepSeek-V3's promotion).
 * Inputs of FD_ACC_TC16 must be exact fp16 or bf16 values, of FD_ACC_TC_FP8 exact FP8. */
#ifndef FD_ACCUM_H
#define FD_ACCUM_H
#include <stddef.h>
#include "fd_problem.h"

typedef enum { FD_ACC_SEQ = 0, FD_ACC_TC16 = 1, FD_ACC_TC_FP8 = 2 } fd_accum_model;

/* ---- FP8 (issue 15 item 4): the FP8 block-FMA model's parameters, in one place ---- */
typedef struct fd_tc_fp8_params {
    int block;     /* terms per block FMA (1..64); 32 = m16n8k32's / wgmma's K */
    int frac_bits; /* fraction bits kept at the alignment exponent (TC16: 23 + 2 = 25) */
    int out_bits;  /* significant bits of a (sub-)block's result, truncated (24: binary32) */
    int promote;   /* 0: chain blocks in the fp32 accumulator; N > 0: promote every N terms */
    int hmma_pairs; /* 1: sm_90 mma.sync: a block is two sub-blocks (k mod 4 < 2, then
                     * k mod 4 >= 2) chained from +0, then RN(c + result); 0: one block FMA
                     * with c aligned with the products (wgmma) */
} fd_tc_fp8_params;
/* Measured on the H200 (see above). */
#define FD_TC_FP8_MMA_SM90 {32, 25, 24, 0, 1}
#define FD_TC_FP8_WGMMA_SM90 {32, 13, 14, 0, 0}
/* The model of the FP8 kernels' instruction: the cuda-flash FP8 kernel uses mma.sync
 * m16n8k32 (QK^T chained over the head dim, PV over the keys). */
#define FD_TC_FP8_DEFAULT FD_TC_FP8_MMA_SM90
fd_tc_fp8_params fd_tc_fp8_wgmma(void);
fd_tc_fp8_params fd_tc_fp8_default(void);
/* One FP8 block (one instruction): c + sum_{i<n} a[i*sa] b[i*sb] (n <= prm->block; terms
 * past n are the instruction's zero padding) with the inputs' FP8
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
