/* fd_cpu_bwd.h: the attention backward pass on the CPU, in IEEE binary32 arithmetic.
 *
 * fd_cpu_flash_backward replays FlashAttention-2's backward exactly as fd_bwd.h's
 * contract states (the CUDA kernel's arithmetic): bit-identical dQ, dK, dV to
 * cuda-flash in deterministic mode; in atomic mode the dQ partials are added in the
 * order bcfg names, which models one possible schedule of the kernel's atomicAdds.
 * fcfg gives the forward knobs it shares (exp2_mode). o and lse are the backend's own
 * forward outputs (every row), dout the output gradient; all tensors in fd_problem.h's
 * layouts (dq like q, dk/dv like k), floats holding exact dtype values. Every element of
 * dq, dk, dv is written.
 *
 * The replay (kernels/cpu/fd_cpu_flash_bwd.c; fd_bwd.h's steps and its "Precisions"):
 * per (batch, query head): D' from dO and o; then query tiles m from the last to the
 * first, each against the key tiles n it sees: S, P from lse, dP, dS, Pv and dSr for the
 * pair, the dK/dV chains of the tile's keys, and the dQ partial of (m, n); when m's key
 * tiles are done its partials are added in the dQ order and dQ is scaled and rounded.
 * (The kernel runs n outside and m inside; every key's chain sees the same m in the same
 * order either way.) Then the head's dK, dV are scaled and added to its kv head's sums
 * (heads ascending), rounded at the end. Bugs (bcfg->bugs) as fd_bwd.h defines them.
 * Tiles: bcfg->br, bc (0, 0: fd_bwd_tile_default(head_dim)), positive multiples of 16.
 * fp32 inputs are accepted (the CUDA kernel takes fp16/bf16 only): every TC16 product
 * becomes an FD_ACC_SEQ fmaf chain in the same order, rounding to the dtype the identity.
 * Cost: about 5 s_q s_k d / 16 TC16 block evaluations per head (less under a causal
 * mask); single-threaded.
 *
 * fd_cpu_flash_bwd_stages: the replay with the stages in `exact` computed in binary64
 * (exact = 0: the same values as fd_cpu_flash_backward, as doubles). o_exact (optional,
 * [b][s_q][h][d] binary64, e.g. the reference's O) is what FD_BSTAGE_D takes D from;
 * when NULL, FD_BSTAGE_D computes D in binary64 from the rounded o. With FD_BSTAGE_OUT
 * the outputs are not rounded to the dtype. Used by attribution.
 * The stages (a stage not in `exact` keeps the kernel's binary32 arithmetic and rounds
 * to binary32, and to the dtype, exactly where the kernel does; an exact stage feeding
 * one that is not hands it its value rounded to binary32):
 *   P       S = the exact dot q_i . k_j (products exact in binary64, summed in long
 *           double, rounded once) and P = exp(S scale - lse_i) in binary64, from the
 *           given (binary32) lse;
 *   PROUND  Pv = P o Z, not rounded to the dtype before dV;
 *   DP      dP = the exact dot dO_i . v_j;
 *   D       D = the exact dot dO_i . o_i (o_exact when given), times (1 - p) in binary64;
 *   DSROUND dS = P (dP - D) in binary64, not rounded to the dtype;
 *   DQACC   dQ partials (binary64 sums of binary64 products) and their sum in binary64;
 *   DKDV    dK/dV chains and the GQA sum in binary64;
 *   OUT     final scales scale / (1 - p) and 1 / (1 - p) in binary64, no rounding.
 * With FD_BSTAGE_ALL and o_exact the result is the binary64 gradient of the formulas
 * with P = exp(scale S - lse) from the lse given (to about 1e-12 of the sum of the
 * terms' magnitudes; tests/test_cpu_bwd.c): lse is binary32, so it differs from the
 * true gradient by the rounding of the LSE (about 1e-7 relative) unless the caller's
 * lse is exact.
 *
 * fd_cpu_standard_backward: eager attention's autograd for fd_cpu_standard_forward's
 * arithmetic (S = Q K^T fp32, scale, mask, fp32 softmax, P cast to the dtype, dropout
 * P * keep * (1/(1-p)) in fp32 and cast, O = P V): dV = Pd^T dO and dPd = dO V^T as dtype
 * GEMMs (fp32 accumulate under `order`, result rounded to the dtype), dP = dPd * keep *
 * (1/(1-p)) rounded to the dtype (dropout's backward, as eager's dropout returns it),
 * softmax backward in fp32 dS = P (dP - sum_j P dP) (D from P and dP,
 * not from O), dS *= scale, cast to the dtype, dQ = dS K and dK = dS^T Q as dtype GEMMs.
 * GQA: dK/dV summed in fp32 over the group's heads in ascending order, then rounded.
 *
 * Return 0, or -1 with err filled (bad arguments, no memory). */
#ifndef FD_CPU_BWD_H
#define FD_CPU_BWD_H
#include <stddef.h>
#include "../common/fd_bwd.h"
#include "fd_cpu_attn.h"

#define FD_BSTAGE_P 0x01u       /* S and P recomputed in binary64 (exact dot, exp) from lse */
#define FD_BSTAGE_PROUND 0x02u  /* P not rounded to the dtype before dV */
#define FD_BSTAGE_DP 0x04u      /* dP = dO V^T: one rounding of the exact dot */
#define FD_BSTAGE_D 0x08u       /* D in binary64 (from o_exact when given) */
#define FD_BSTAGE_DSROUND 0x10u /* dS in binary64, not rounded to the dtype */
#define FD_BSTAGE_DQACC 0x20u   /* dQ partials and their sum in binary64 */
#define FD_BSTAGE_DKDV 0x40u    /* dK/dV accumulation (and GQA sum) in binary64 */
#define FD_BSTAGE_OUT 0x80u     /* final scales exact, outputs not rounded */
#define FD_BSTAGE_ALL 0xffu

int fd_cpu_flash_backward(const fd_problem *p, const fd_flash_cfg *fcfg, const fd_bwd_cfg *bcfg,
                          const float *q, const float *k, const float *v, const float *o,
                          const float *lse, const float *dout, float *dq, float *dk, float *dv,
                          char *err, size_t errlen);

/* fd_cpu_flash_backward_orders: fd_cpu_flash_backward, and in the same pass its dQ with
 * the partials added in norder further orders: dq_orders[t] gets, bit for bit, the dq of
 * fd_cpu_flash_backward with orders[t]'s dq_mode, dq_order and order_seed (the other
 * fields of orders[t] are not read: the partials, the scales and the bugs are bcfg's).
 * The partials do not depend on the order, so they are computed once (the dQ order model
 * of the harness costs one replay's S, dP and dQ partials, not one replay per order).
 * dq may be NULL (not computed); dk and dv both NULL skip the dK/dV chains (about 2/5 of
 * the work), which no dQ depends on. */
int fd_cpu_flash_backward_orders(const fd_problem *p, const fd_flash_cfg *fcfg, const fd_bwd_cfg *bcfg,
                                 const float *q, const float *k, const float *v, const float *o,
                                 const float *lse, const float *dout, float *dq, float *dk, float *dv,
                                 int norder, const fd_bwd_cfg *orders, float *const *dq_orders, char *err,
                                 size_t errlen);

int fd_cpu_flash_bwd_stages(const fd_problem *p, const fd_flash_cfg *fcfg, const fd_bwd_cfg *bcfg,
                            unsigned exact, const float *q, const float *k, const float *v,
                            const float *o, const float *lse, const float *dout,
                            const double *o_exact, double *dq, double *dk, double *dv, char *err,
                            size_t errlen);

int fd_cpu_standard_backward(const fd_problem *p, fd_accum_model order, const float *q,
                             const float *k, const float *v, const float *dout, float *dq,
                             float *dk, float *dv, char *err, size_t errlen);
#endif
