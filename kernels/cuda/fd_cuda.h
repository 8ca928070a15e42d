/* fd_cuda.h: the CUDA attention kernels under test, behind a C API.
 *
 * fd_cuda_flash_forward: a FlashAttention-2 style forward (mma.sync m16n8k16, fp16/bf16
 *   in, fp32 accumulate; ldmatrix; K/V through shared memory, cp.async double buffered;
 *   Q in registers for head_dim <= 128). Numerics, exactly as fd_cpu_flash_forward
 *   replays them: K/V tiles visited from the last visible one down to 0 (FA2's order);
 *   S = Q K^T chained 16-term mma blocks in head-dim order from c = 0; P =
 *   exp2(fmaf(S, scale_log2, -m*scale_log2)); O rescaled by exp2((m_old - m_new) *
 *   scale_log2) every visited tile after the first; P rounded to the dtype, dropout
 *   (FA2 Philox, fd_philox.h) zeroes dropped entries, O += P V chained 16-key mma blocks
 *   in key order onto the rescaled O; O *= (1/l) * (1/(1-p)) rounded to the dtype;
 *   LSE = fmaf(m, softmax_scale, logf(l)), +Inf (and O = 0) for rows with no visible key.
 *   The row sum l is FA2's: each of the 4 threads of a quad keeps a partial sum over its
 *   columns {8a + 2t, 8a + 2t + 1} of each tile (a ascending, 2t before 2t+1), partial
 *   sums rescaled with O, combined once at the end as (l0 + l2) + (l1 + l3).
 *   fp32 inputs take fd_cuda_fp32_path() instead (no tensor cores); FP8 inputs (e4m3,
 *   e5m2) take fd_cuda_flash_fp8_forward.
 * fd_cuda_flash_fp8_forward (fd_cuda_flash_fp8.cu): the FP8 forward, mma.sync m16n8k32
 *   e4m3/e5m2 (sm_89+) with FlashAttention-3's FP8 scaling, bf16 output; bit for bit the
 *   FP8 path of fd_cpu_flash_forward when the FP8 tensor-core model is right (numerics in
 *   the .cu file's header and docs/fp8.md). Head dim 64 or 128, no mask or causal, key
 *   tile 64; -1 with err on anything else and on GPUs below sm_89.
 * With cfg->impl = FD_CUDA_IMPL_WGMMA, fd_cuda_flash_forward runs the Hopper kernel
 *   (fd_cuda_flash_sm90.cu: wgmma, two warpgroups, the softmax overlapped with the PV
 *   product) on the same numerics, bit for bit the mma.sync kernel's and the replay's.
 * fd_cuda_standard_forward: eager attention through cuBLAS (see fd_cpu_standard_forward).
 * fd_cuda_splitkv_forward: flash-decoding; `splits` chunks of K/V tiles, partial O (fp32)
 *   and LSE per chunk, LSE-weighted combine, then rounding to the dtype.
 *
 * Host arrays hold exact dtype values as floats, in fd_problem.h's layouts. All entry
 * points return 0, or -1 with err filled (unsupported config, CUDA error with file:line,
 * out of device memory). None creates state that outlives the call. */
#ifndef FD_CUDA_H
#define FD_CUDA_H
#include <stddef.h>
#include <stdint.h>
#include "fd_problem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* fd_cuda_cfg.impl: which forward kernel fd_cuda_flash_forward runs. */
enum { FD_CUDA_IMPL_MMA = 0, FD_CUDA_IMPL_WGMMA = 1 };

typedef struct fd_cuda_cfg {
    int br, bc;     /* tile: (64, 64), (128, 64); (128, 128) at padded head dim 64 (FA2's tile there);
                     * cuda-flash-sm90: bc 64 or 128; 0, 0 picks the default (128, 64) */
    int impl;       /* FD_CUDA_IMPL_MMA (cuda-flash, mma.sync) or FD_CUDA_IMPL_WGMMA (cuda-flash-sm90:
                     * the Hopper kernel, fd_cuda_flash_sm90.cu; sm_90 only; fp16/bf16, head dim
                     * <= 128 padded to 64 or 128, no dropout, window, softcap, ALiBi, varlen, debug
                     * mask or fp32 P; key tile 64; the same numerics) */
    int exp2_mode;  /* 0: hardware exp2 (ex2.approx.ftz.f32, FA2's), 1: fd_exp2_portable */
    int p_fp32;     /* 1: O += P V with P kept in binary32, by fp32 FMAs (see docs/cuda.md) */
    int splits;     /* split-KV only: number of K/V chunks (>= 1) */
    int repeats;    /* timed runs after one warm-up; 0: run once, untimed */
    int fp8_max_offset; /* FP8: FlashAttention-3's Max_offset, P scaled by 2^it before the e4m3
                         * cast (default FD_FP8_MAX_OFFSET; explain's fp8_p_* bugs change it) */
} fd_cuda_cfg;

typedef struct fd_cuda_timing {
    float ms_median, ms_min;
    int repeats;
} fd_cuda_timing;

/* Number of CUDA devices; 0 when there is no GPU or no driver (never fails loudly). */
int fd_cuda_device_count(void);
/* "gpu name, sm_XY, driver N" of the current device (0 unless selected) into buf; 0 or -1. */
int fd_cuda_device_name(char *buf, size_t len);
/* Makes device ordinal % count current for this process (an MPI rank's GPU); returns the
 * device, or -1 when there is none. */
int fd_cuda_select_device(int ordinal);
void fd_cuda_cfg_default(fd_cuda_cfg *cfg);
/* 1 when cuda-flash-sm90's kernel runs problem p under cfg (NULL: the defaults), else 0 with
 * the reason in why; needs no GPU (the device check comes at the call). */
int fd_cuda_sm90_supports(const fd_problem *p, const fd_cuda_cfg *cfg, char *why, size_t len);
/* Path taken for fp32 inputs, in words. */
const char *fd_cuda_fp32_path(void);

/* dmask (optional, may be NULL): [B][H][Sq][Sk], 1 kept, 0 dropped, decoded from the
 * kernel's sign-encoded debug output (FA2's return_attn_probs); needs dropout_p > 0.
 * t (optional): timing over cfg->repeats runs. */
int fd_cuda_flash_forward(const fd_problem *p, const fd_cuda_cfg *cfg, const float *q,
                          const float *k, const float *v, float *o, float *lse, uint8_t *dmask,
                          fd_cuda_timing *t, char *err, size_t errlen);
int fd_cuda_flash_fp8_forward(const fd_problem *p, const fd_cuda_cfg *cfg, const float *q, const float *k,
                              const float *v, float *o, float *lse, fd_cuda_timing *t, char *err, size_t errlen);
/* out[i] = the FP8 code of x[i] by the device's cvt.rn.satfinite.{e4m3,e5m2}x2.f32, two at a
 * time as the FP8 kernel converts P (low byte = first value); sm_89+. */
int fd_cuda_fp8_cvt_batch(const float *x, uint8_t *out, size_t n, fd_dtype t, char *err, size_t errlen);
int fd_cuda_standard_forward(const fd_problem *p, int repeats, const float *q, const float *k,
                             const float *v, float *o, float *lse, fd_cuda_timing *t, char *err,
                             size_t errlen);
int fd_cuda_splitkv_forward(const fd_problem *p, const fd_cuda_cfg *cfg, const float *q,
                            const float *k, const float *v, float *o, float *lse,
                            fd_cuda_timing *t, char *err, size_t errlen);

/* The backward pass (fd_bwd.h's contract: bit-identical to fd_cpu_flash_backward in
 * deterministic mode). o and lse: the forward's outputs (host, every row); dout: the
 * output gradient; dq like q, dk/dv like k. bcfg->dq_mode picks atomicAdd (default) or
 * the per-key-tile buffers summed in order; bcfg->br/bc 0 take fd_bwd_tile_default.
 *
 * fd_cuda_flash_backward (fd_cuda_flash_bwd.cu): fp16/bf16 on mma.sync m16n8k16, ldmatrix,
 *   cp.async. A prepass gives D'_i (fmaf chain over d from 0 of dO*O, times 1.f - p when
 *   p > 0) and lse_i * (float)M_LOG2E. The main kernel: one CTA (4 warps) per (key tile
 *   n of bc keys, batch, query head), K_n/V_n in shared memory, the query tiles (64 rows)
 *   that see a key of tile n from the last to the first; S and dP = chained mma blocks
 *   over the head dim from 0 (only 16-chunks holding real columns); P =
 *   exp2(fmaf(S, scale_log2, -lse2)) for visible entries of rows with finite LSE, else
 *   0; FA2 Philox dropout exactly as the forward; dS = P * (dP - D') or P * (-D')
 *   (dropped), binary32; Pv = round(kept ? P : 0), dSr = round(dS); dV += Pv^T dO and
 *   dK += dSr^T Q chained over the tile's rows in ascending 16-row blocks onto register
 *   accumulators kept across query tiles; dQ partial = dSr K chained over the tile's keys
 *   from 0, atomicAdd (atomic mode) or stored per key tile (deterministic mode, then
 *   added from 0.0f in ascending key-tile order over the tiles that visited the row's
 *   query tile). dQ = round(acc * srp); dK_h = acc * srp, dV_h = acc * rp per query head,
 *   summed over the GQA group from 0.0f in ascending head order, rounded once.
 *   scale_log2 = (float)((double)scale * M_LOG2E), pk = 1.f - (float)p, rp = 1.f / pk,
 *   srp = rp * scale, as FA2. Tiles (br, bc): (64, 64) for head_dim <= 128, (64, 32)
 *   for head_dim 33..256. Rejected (-1, err): fp32 inputs, p_fp32, other tiles, bugs.
 *   Atomic mode: dK/dV as deterministic bit for bit, dQ may differ by the fp32 order.
 *   The environment variable FD_BWD_VARIANT (read per call) picks the bc = 128 kernel's
 *   variant: "new" (default; unset or empty too), "old" (docs/cuda.md, "Backward
 *   pipelining"); the same bits either way; or "bulk" (new with the atomic mode's dQ
 *   partials added by TMA bulk reductions: deterministic mode, dK and dV the same bits,
 *   atomic dQ within the atomic mode's spread); any other value fails the call. */
struct fd_bwd_cfg;
int fd_cuda_flash_backward(const fd_problem *p, const fd_cuda_cfg *cfg, const struct fd_bwd_cfg *bcfg,
                           const float *q, const float *k, const float *v, const float *o,
                           const float *lse, const float *dout, float *dq, float *dk, float *dv,
                           fd_cuda_timing *t, char *err, size_t errlen);
/* Eager attention's autograd through cuBLAS (fd_cpu_standard_backward's arithmetic). */
int fd_cuda_standard_backward(const fd_problem *p, int repeats, const float *q, const float *k,
                              const float *v, const float *dout, float *dq, float *dk, float *dv,
                              fd_cuda_timing *t, char *err, size_t errlen);

/* The out-of-bounds guards (fd_cuda_util.h): a kernel writes x[lo..hi) of a guarded
 * 1024-float buffer (lo < 0 or hi > 1024 writes outside it); 0 when the guards are intact,
 * -1 with the guard check's message otherwise. */
int fd_cuda_guard_selftest(long lo, long hi, char *err, size_t errlen);
/* out[i] = fd_exp2_portable(x[i]) computed on the device (host/device bit-identity test). */
int fd_cuda_exp2_portable_batch(const float *x, float *out, size_t n, char *err, size_t errlen);
/* The same for fd_expf_portable and fd_logf_portable (the split-KV combine's exp and log). */
int fd_cuda_expf_portable_batch(const float *x, float *out, size_t n, char *err, size_t errlen);
int fd_cuda_logf_portable_batch(const float *x, float *out, size_t n, char *err, size_t errlen);
/* d[w] = hardware mma.sync m16n8k16 block: c[w] + sum_{i<16} a[16w+i] * b[16w+i], fp16 or
 * bf16 inputs (exact dtype values), fp32 accumulate (fd_cuda_mma.cu). */
int fd_cuda_mma_blocks(const float *a, const float *b, const float *c, float *d, int n,
                       fd_dtype t, char *err, size_t errlen);
/* Tensor-core probes (fd_cuda_wgmma.cu, target fd_cuda_probe, sm_90a; fail cleanly on any
 * other GPU): d[w] = c[w] + sum_{i<k} a[k w + i] b[k w + i] computed by the hardware as one
 * dot product (A's row 0, B's column 0, C[0][0] = c, all else 0), k split into consecutive
 * instructions chained through the same fp32 accumulator in K order. Inputs must be exact
 * values of the input format (else -1).
 *   fd_cuda_wgmma_blocks: wgmma m64n8k16 fp16/bf16 (t), k a multiple of 16, at most 256;
 *   fd_cuda_mma16_chain_blocks: mma.sync m16n8k16 fp16/bf16 chained, k a multiple of 16
 *     (the control beside wgmma: FD_ACC_TC16 holds for it);
 *   fd_cuda_mma_fp8_blocks: mma.sync m16n8k32 e4m3 (e5m2 = 0) or e5m2, k a multiple of 32;
 *   fd_cuda_wgmma_fp8_blocks: wgmma m64n8k32 e4m3/e5m2, k a multiple of 32, at most 512. */
int fd_cuda_wgmma_blocks(const float *a, const float *b, const float *c, float *d, int n, int k,
                         fd_dtype t, char *err, size_t errlen);
int fd_cuda_mma16_chain_blocks(const float *a, const float *b, const float *c, float *d, int n, int k,
                               fd_dtype t, char *err, size_t errlen);
int fd_cuda_mma_fp8_blocks(const float *a, const float *b, const float *c, float *d, int n, int k,
                           int e5m2, char *err, size_t errlen);
int fd_cuda_wgmma_fp8_blocks(const float *a, const float *b, const float *c, float *d, int n, int k,
                             int e5m2, char *err, size_t errlen);
/* 0 (default): shared-memory descriptor LBO = K-direction core-matrix offset, SBO = M/N
 * direction (CUTLASS's reading); 1: the two fields swapped, the memory unchanged. */
void fd_cuda_probe_set_layout(int layout);
/* Number of CUDA devices (0 when none or no driver); "name, sm_XY, driver N" of device 0
 * into buf. Needs only the probe library. */
int fd_cuda_probe_device(char *buf, size_t len);
/* out[i] = the kernels' hardware exp2 of x[i] on the device (ex2.approx.ftz.f32). */
int fd_cuda_exp2_hw_batch(const float *x, float *out, size_t n, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
