/* fd_mods.h: FlashAttention-2's score modifiers (softcap, ALiBi) as the flash kernels
 * apply them, bit-identical on host (the CPU replay) and device (cuda-flash).
 *
 * FA2 (flash_api.cpp set_params_fprop, flash_fwd_kernel.h, mask.h, utils.h) works on
 * the raw score r = q.k (fp32 from the MMA) and folds the scales:
 *   softcap c > 0:  params.softcap = softmax_scale / c (a float division),
 *                   scale_softmax = c; r = tanh(r * params.softcap) (apply_softcap);
 *   otherwise       scale_softmax = softmax_scale;
 *   ALiBi:          slope' = slope / scale_softmax (float division, flash_fwd_kernel.h);
 *                   r -= slope' * |i + sk - sq - j| (Mask::apply_mask, after the softcap);
 *   window/causal:  r = -inf outside the visible interval (after the bias);
 * then the online softmax runs with scale_softmax (exp2 of r * scale_softmax * log2 e,
 * LSE = m * scale_softmax + log l). So the logit is c tanh(s / c) - slope |.| with
 * s = softmax_scale q.k, or s - slope |.| without softcap.
 *
 * Deliberate differences from FA2, so that a CPU replay can be bit-exact:
 * - tanh: FA2 calls cutlass::fast_tanh, i.e. tanh.approx.f32 (MUFU.TANH on sm_75+),
 *   whose bits are not documented (PTX: max relative error about 2^-11). Here
 *   fd_tanh_portable, built from fmaf/mul/add/div and fd_exp2_portable only.
 * - ALiBi with causal: FA2 adds +slope' * j on its causal path (equal to the
 *   distance form up to a constant per row: the same O, but its LSE is larger by
 *   slope * (i + sk - sq)). Here the distance form is used on every path, so the LSE is
 *   the true log-sum-exp of the biased logits.
 * - The bias update r - slope' * d is written as one fmaf (nvcc contracts FA2's
 *   `tensor -= alibi_slope * abs(...)` the same way under its default --fmad=true). */
#ifndef FD_MODS_H
#define FD_MODS_H
#include <math.h>
#include "fd_exp2.h"

#if defined(__CUDA_ARCH__)
#define FD_MODS_DIV(a, b) __fdiv_rn((a), (b))
#define FD_MODS_ADD(a, b) __fadd_rn((a), (b))
#define FD_MODS_SUB(a, b) __fsub_rn((a), (b))
#else
#define FD_MODS_DIV(a, b) ((a) / (b))
#define FD_MODS_ADD(a, b) ((a) + (b))
#define FD_MODS_SUB(a, b) ((a) - (b))
#endif

/* tanh in binary32 from fmaf, mul, add, div and fd_exp2_portable:
 *   |x| < 0.5:   x + x^3 p(x^2), p the Taylor series of (tanh x - x) / x^3 to x^16
 *                (truncation below 1e-9 relative), Horner with fmaf;
 *   |x| < 9.5:   1 - 2 / (2^(2 |x| log2 e) + 1);
 *   otherwise:   1 (tanh(9.5) = 1 - 1.1e-8 rounds to 1);
 * with the sign of x; NaN -> NaN. Accuracy: see docs/features.md (measured on the host). */
FD_HD float fd_tanh_portable(float x)
{
    if (isnan(x)) return x;
    const float a = fabsf(x);
    float r;
    if (a < 0.5f) {
        const float z = FD_EXP2_FMUL(a, a);
        float u = 5.900274409e-4f;          /* 6404582 / 10854718875 */
        u = FD_EXP2_FMA(u, z, -1.455834387e-3f); /* -929569 / 638512875 */
        u = FD_EXP2_FMA(u, z, 3.592128037e-3f);  /* 21844 / 6081075 */
        u = FD_EXP2_FMA(u, z, -8.863235530e-3f); /* -1382 / 155925 */
        u = FD_EXP2_FMA(u, z, 2.186948854e-2f);  /* 62 / 2835 */
        u = FD_EXP2_FMA(u, z, -5.396825397e-2f); /* -17 / 315 */
        u = FD_EXP2_FMA(u, z, 1.333333333e-1f);  /* 2 / 15 */
        u = FD_EXP2_FMA(u, z, -3.333333333e-1f); /* -1 / 3 */
        r = FD_EXP2_FMA(FD_EXP2_FMUL(a, z), u, a);
    } else if (a < 9.5f) {
        const float e = fd_exp2_portable(FD_EXP2_FMUL(a, 2.885390082f)); /* 2 log2 e */
        r = FD_MODS_SUB(1.0f, FD_MODS_DIV(2.0f, FD_MODS_ADD(e, 1.0f)));
    } else {
        r = 1.0f;
    }
    return x < 0.0f ? -r : r;
}

/* The raw-score transform of fd_mods.h's header: softcap (cap_in = softmax_scale / c,
 * 0 for none), then the ALiBi bias (slope_raw = slope / scale_softmax, 0 for none) at
 * distance dist = |i + sk - sq - j|. */
FD_HD float fd_mods_score(float r, float cap_in, float slope_raw, int dist)
{
    if (!fd_eqf(cap_in, 0.0f)) r = fd_tanh_portable(FD_EXP2_FMUL(r, cap_in));
    if (!fd_eqf(slope_raw, 0.0f)) r = FD_EXP2_FMA(-slope_raw, (float)dist, r);
    return r;
}

/* |i + sk - sq - j| */
FD_HD int fd_alibi_dist(int i, int j, int sq, int sk)
{
    const long d = (long)i + sk - sq - j;
    return (int)(d < 0 ? -d : d);
}
#endif
