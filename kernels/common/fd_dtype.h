/* fd_dtype.h: binary16 / bfloat16 conversions and ulps, bit-exact on host and device.
 *
 * fd_round_to_dtype(x, t) returns the binary32 value of x rounded to nearest-even in
 * dtype t (binary16 with subnormals, overflow to Inf; bfloat16 with the binary32
 * exponent range; FP8 below). These are integer-only so that the CPU replay and the CUDA
 * kernel get identical bits without relying on the compiler's own conversions.
 *
 * FP8 (OCP 8-bit floating point, NVIDIA's __nv_fp8_e4m3 / __nv_fp8_e5m2, torch's
 * float8_e4m3fn / float8_e5m2):
 *   e4m3 ("e4m3fn"): 1 sign, 4 exponent bits (bias 7), 3 fraction bits; subnormals
 *        m 2^-9; max 448 (S.1111.110); no infinities; NaN only S.1111.111.
 *   e5m2: 1 sign, 5 exponent bits (bias 15), 2 fraction bits; IEEE-like: subnormals
 *        m 2^-16, max 57344, S.11111.00 infinity, S.11111.{01,10,11} NaN.
 * fd_f32_to_fp8_bits rounds binary32 to nearest even, in one rounding (binary32 is
 * decoded exactly; no double rounding through fp16), with a saturation mode for what
 * lies beyond the largest finite value after rounding (e4m3: |x| > 464, e5m2: |x| >=
 * 61440) and for infinities:
 *   FD_FP8_SATFINITE: to +-max finite (448, 57344); Inf too; NaN stays NaN. This is
 *     PTX `cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32` (the only f32 -> fp8 cvt PTX has),
 *     CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, ...) and cutlass's
 *     NumericConverter<float_e4m3_t, float>, which FlashAttention-3 uses to cast P;
 *     the kernels and the replay use it everywhere.
 *   FD_FP8_NOSAT: CUDA's __NV_NOSAT and torch's `x.to(torch.float8_e4m3fn)` (c10
 *     fp8e4m3fn_from_fp32_value: every |x| >= 480 and Inf -> NaN; in (464, 480) the
 *     rounding lands on the NaN code); e5m2 (c10 fp8e5m2_from_fp32_value): overflow
 *     -> Inf of the sign. Kept so that a test can show the difference (and what a
 *     torch-quantised input would hold).
 * Every FP8 value is exact in binary32 (and bfloat16 for e4m3/e5m2 normal values). The
 * NaN this code returns is S.1111.111 (0x7f / 0xff) for both formats. */
#ifndef FD_DTYPE_H
#define FD_DTYPE_H
#include <stdint.h>
#include <string.h>
#include "fd_hd.h"
#include "fd_problem.h"

FD_HD uint32_t fd_f32_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
FD_HD float fd_bits_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* binary32 -> binary16 bits, round to nearest even. */
FD_HD uint16_t fd_f32_to_f16_bits(float x)
{
    uint32_t u = fd_f32_bits(x);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t ax = u & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* Inf or NaN: keep NaN quiet and non-zero */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to Inf */
    if (ax < 0x38800000u) {                                   /* below 2^-14: subnormal or 0 */
        if (ax < 0x33000000u) return (uint16_t)sign;          /* < 2^-25: rounds to 0 */
        uint32_t e = ax >> 23;                                 /* 102..112 */
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;                             /* to units of 2^-24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ax - 0x38000000u; /* rebias 127 -> 15 */
    uint32_t rem = r & 0x1fffu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}

FD_HD float fd_f16_bits_to_f32(uint16_t h)
{
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t e = ((uint32_t)h >> 10) & 0x1fu, m = (uint32_t)h & 0x3ffu;
    if (e == 0x1fu) return fd_bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        if (m == 0) return fd_bits_f32(sign);
        /* subnormal: m * 2^-24, exact in binary32 */
        int k = 0;
        while (!(m & 0x400u)) { m <<= 1; k++; }
        return fd_bits_f32(sign | ((uint32_t)(113 - k) << 23) | ((m & 0x3ffu) << 13));
    }
    return fd_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* binary32 -> bfloat16 bits, round to nearest even. */
FD_HD uint16_t fd_f32_to_bf16_bits(float x)
{
    uint32_t u = fd_f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb;
    return (uint16_t)(u >> 16);
}
FD_HD float fd_bf16_bits_to_f32(uint16_t b) { return fd_bits_f32((uint32_t)b << 16); }

/* ---- FP8 (issue 15 item 4) ---- */
typedef enum { FD_FP8_SATFINITE = 0, FD_FP8_NOSAT = 1 } fd_fp8_sat;

FD_HD uint8_t fd_f32_to_fp8_bits(float x, fd_dtype t, fd_fp8_sat sat)
{
    const int e5 = t == FD_DT_E5M2;
    const int mbits = e5 ? 2 : 3, bias = e5 ? 15 : 7, emin = 1 - bias, emax = e5 ? 15 : 8;
    const uint32_t maxcode = e5 ? 0x7bu : 0x7eu;         /* 57344, 448 */
    const uint32_t ovf = sat == FD_FP8_SATFINITE ? maxcode : e5 ? 0x7cu : 0x7fu; /* max, Inf, NaN */
    const uint32_t u = fd_f32_bits(x);
    const uint32_t sign = (u >> 24) & 0x80u, ax = u & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint8_t)(sign | 0x7fu); /* NaN */
    if (ax == 0x7f800000u) return (uint8_t)(sign | ovf);
    const uint32_t be = ax >> 23;
    if (be == 0) return (uint8_t)sign; /* binary32 zero or subnormal (< 2^-126): rounds to 0 */
    const int e = (int)be - 127;
    if (e > emax) return (uint8_t)(sign | ovf);
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u; /* |x| = m 2^(e - 23) */
    const int ee = e < emin ? emin : e;                 /* exponent of the target binade */
    const int shift = 23 + (ee - mbits) - e;            /* to units of 2^(ee - mbits): >= 20 */
    uint32_t r = 0; /* shift >= 25: m < 2^24 is below half a unit, so it rounds to 0 */
    if (shift < 25) {
        r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
    }
    /* value r 2^(ee - mbits), r <= 2^(mbits + 1); the code is the binade's exponent field
     * (0 for subnormals) times 2^mbits plus r less the implicit bit, which also carries
     * correctly into the next binade (and from the subnormals into the first normal one) */
    const uint32_t code = ((uint32_t)(ee + bias - 1) << mbits) + r;
    if (code > maxcode) return (uint8_t)(sign | ovf);
    return (uint8_t)(sign | code);
}

FD_HD float fd_fp8_bits_to_f32(uint8_t c, fd_dtype t)
{
    const int e5 = t == FD_DT_E5M2;
    const int mbits = e5 ? 2 : 3, bias = e5 ? 15 : 7;
    const uint32_t sign = ((uint32_t)c & 0x80u) << 24;
    const uint32_t ef = ((uint32_t)c >> mbits) & (e5 ? 0x1fu : 0xfu), m = (uint32_t)c & ((1u << mbits) - 1u);
    if (e5 && ef == 0x1fu) return fd_bits_f32(sign | (m ? 0x7fc00000u : 0x7f800000u));
    if (!e5 && ef == 0xfu && m == 7u) return fd_bits_f32(sign | 0x7fc00000u);
    if (ef == 0) {
        if (m == 0) return fd_bits_f32(sign);
        /* subnormal m 2^(1 - bias - mbits): normalise */
        int k = 0;
        uint32_t mm = m;
        while (!(mm & (1u << mbits))) { mm <<= 1; k++; }
        return fd_bits_f32(sign | ((uint32_t)(127 + 1 - bias - k) << 23) | ((mm & ((1u << mbits) - 1u)) << (23 - mbits)));
    }
    return fd_bits_f32(sign | ((ef + 127u - (uint32_t)bias) << 23) | (m << (23 - mbits)));
}

/* x rounded to FP8 (nearest even, saturating: the kernels' cvt.rn.satfinite). */
FD_HD float fd_round_fp8(float x, fd_dtype t, fd_fp8_sat sat)
{
    return fd_fp8_bits_to_f32(fd_f32_to_fp8_bits(x, t, sat), t);
}
/* Largest finite value: 448 (e4m3), 57344 (e5m2). */
FD_HD float fd_fp8_max(fd_dtype t) { return t == FD_DT_E5M2 ? 57344.0f : 448.0f; }
/* ---- end FP8 ---- */

FD_HD float fd_round_to_dtype(float x, fd_dtype t)
{
    if (t == FD_DT_E4M3 || t == FD_DT_E5M2) return fd_round_fp8(x, t, FD_FP8_SATFINITE);
    if (t == FD_DT_FP16) return fd_f16_bits_to_f32(fd_f32_to_f16_bits(x));
    if (t == FD_DT_BF16) return fd_bf16_bits_to_f32(fd_f32_to_bf16_bits(x));
    return x;
}

/* Precision (significand bits incl. the implicit one) and minimum normal exponent. */
FD_HD int fd_dtype_precision(fd_dtype t)
{
    return t == FD_DT_FP16 ? 11 : t == FD_DT_BF16 ? 8 : t == FD_DT_E4M3 ? 4 : t == FD_DT_E5M2 ? 3 : 24;
}
FD_HD int fd_dtype_emin(fd_dtype t)
{
    return t == FD_DT_FP16 ? -14 : t == FD_DT_E4M3 ? -6 : t == FD_DT_E5M2 ? -14 : -126;
}
#endif
