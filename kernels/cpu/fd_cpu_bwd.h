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
 * fd_cpu_flash_bwd_stages: the replay with the stages in `exact` computed in binary64
 * (exact = 0: the same values as fd_cpu_flash_backward, as doubles). o_exact (optional,
 * [b][s_q][h][d] binary64, e.g. the reference's O) is what FD_BSTAGE_D takes D from;
 * when NULL, FD_BSTAGE_D computes D in binary64 from the rounded o. With FD_BSTAGE_OUT
 * the outputs are not rounded to the dtype. Used by attribution.
 *
 * fd_cpu_standard_backward: eager attention's autograd for fd_cpu_standard_forward's
 * arithmetic (S = Q K^T fp32, scale, mask, fp32 softmax, P cast to the dtype, dropout
 * P * keep * (1/(1-p)) in fp32 and cast, O = P V): dV = Pd^T dO and dPd = dO V^T as dtype
 * GEMMs (fp32 accumulate under `order`, result rounded to the dtype), dP = dPd * keep *
 * (1/(1-p)) in fp32, softmax backward in fp32 dS = P (dP - sum_j P dP) (D from P and dP,
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

int fd_cpu_flash_bwd_stages(const fd_problem *p, const fd_flash_cfg *fcfg, const fd_bwd_cfg *bcfg,
                            unsigned exact, const float *q, const float *k, const float *v,
                            const float *o, const float *lse, const float *dout,
                            const double *o_exact, double *dq, double *dk, double *dv, char *err,
                            size_t errlen);

int fd_cpu_standard_backward(const fd_problem *p, fd_accum_model order, const float *q,
                             const float *k, const float *v, const float *dout, float *dq,
                             float *dk, float *dv, char *err, size_t errlen);
#endif
