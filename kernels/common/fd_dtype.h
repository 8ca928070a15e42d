/* fd_dtype.h: binary16 / bfloat16 conversions and ulps, bit-exact on host and device.
 *
 * fd_round_to_dtype(x, t) returns the binary32 value of x rounded to nearest-even in
 * dtype t (binary16 with subnormals, overflow to Inf; bfloat16 with the binary32
 * exponent range). These are integer-only so that the CPU replay and the CUDA kernel
 * get identical bits without relying on the compiler's own conversions. */
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

FD_HD float fd_round_to_dtype(float x, fd_dtype t)
{
    if (t == FD_DT_FP16) return fd_f16_bits_to_f32(fd_f32_to_f16_bits(x));
    if (t == FD_DT_BF16) return fd_bf16_bits_to_f32(fd_f32_to_bf16_bits(x));
    return x;
}

/* Precision (significand bits incl. the implicit one) and minimum normal exponent. */
FD_HD int fd_dtype_precision(fd_dtype t) { return t == FD_DT_FP16 ? 11 : t == FD_DT_BF16 ? 8 : 24; }
FD_HD int fd_dtype_emin(fd_dtype t) { return t == FD_DT_FP16 ? -14 : -126; }
#endif
