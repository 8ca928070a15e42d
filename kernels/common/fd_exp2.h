/* fd_exp2.h: a portable binary32 exp2, bit-identical on host and device.
 *
 * fd_exp2_portable(x) returns an approximation of 2^x built only from float add, sub,
 * mul, fmaf and integer/bit operations, each written so that no compiler contraction
 * or library call can change it: fmaf is explicit, the lone multiply is __fmul_rn on
 * the device (so nvcc cannot fuse it with a caller's add after inlining) and a plain
 * multiply on the host (the project compiles C with -ffp-contract=off). Denormals are
 * kept on both sides (the CUDA build never enables fast math or ftz; the kernels' hardware
 * exp2, ex2.approx.ftz.f32, is a separate path written as PTX).
 *
 * Method: n = rint(x) by the 1.5*2^23 trick (ties to even), r = x - n exactly
 * (|r| <= 0.5); 2^r by a degree-6 minimax polynomial in Horner form with fmaf
 * (SLEEF's exp2f coefficients, last step fmaf(u, r, 1)); scaled by 2^n with exact
 * power-of-two multiplies, the last one rounding once (also into the subnormals).
 * Accuracy (measured on the host against binary64 exp2 over every one of the
 * 1,125,515,265 floats in [-150, 0], 2026): max error 0.885 ulp (0.849 ulp for
 * x > -126), 99.49% of results correctly rounded.
 * Special cases: NaN -> NaN; x < -150 (and -Inf) -> +0; x >= 128 (and +Inf) -> +Inf. */
#ifndef FD_EXP2_H
#define FD_EXP2_H
#include <stdint.h>
#include <string.h>
#include <math.h>
#include "fd_hd.h"

#if defined(__CUDA_ARCH__)
#define FD_EXP2_FMUL(a, b) __fmul_rn((a), (b))
#define FD_EXP2_FADD(a, b) __fadd_rn((a), (b))
#define FD_EXP2_FSUB(a, b) __fsub_rn((a), (b))
#define FD_EXP2_FDIV(a, b) __fdiv_rn((a), (b))
#define FD_EXP2_FMA(a, b, c) __fmaf_rn((a), (b), (c))
#else
#define FD_EXP2_FMUL(a, b) ((a) * (b))
#define FD_EXP2_FADD(a, b) ((a) + (b))
#define FD_EXP2_FSUB(a, b) ((a) - (b))
#define FD_EXP2_FDIV(a, b) ((a) / (b))
#define FD_EXP2_FMA(a, b, c) fmaf((a), (b), (c))
#endif

FD_HD float fd_exp2_portable(float x)
{
    if (isnan(x)) return x;               /* NaN */
    if (x < -150.0f) return 0.0f;         /* below half the smallest subnormal */
    if (x >= 128.0f) return (float)INFINITY;
    /* n = rint(x): exact since |x| < 2^22; the adds are not contractible. */
    const float magic = 12582912.0f;     /* 1.5 * 2^23 */
    float t = x + magic;
    float fn = t - magic;
    float r = x - fn;                     /* exact, |r| <= 0.5 */
    int n = (int)fn;
    float u = 0.1535920892e-3f;
    u = FD_EXP2_FMA(u, r, 0.1339262701e-2f);
    u = FD_EXP2_FMA(u, r, 0.9618384764e-2f);
    u = FD_EXP2_FMA(u, r, 0.5550347269e-1f);
    u = FD_EXP2_FMA(u, r, 0.2402264476e+0f);
    u = FD_EXP2_FMA(u, r, 0.6931471825e+0f);
    u = FD_EXP2_FMA(u, r, 1.0f);          /* 2^r in [0.707, 1.415] */
    if (n < -100) {                       /* keep the intermediate normal: exact */
        u = FD_EXP2_FMUL(u, 5.42101086242752217e-20f); /* 2^-64 */
        n += 64;
    }
    /* 2^n as a normal float, n in [-126, 127]; one rounding (maybe to a subnormal). */
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return FD_EXP2_FMUL(u, s);
}

/* 2^n u for n in [-150, 128] and u in [0.7, 1.5]: one rounding (maybe to a subnormal). */
FD_HD float fd_exp2_portable_scale(float u, int n)
{
    if (n < -100) { u = FD_EXP2_FMUL(u, 5.42101086242752217e-20f); n += 64; } /* 2^-64, exact */
    if (n > 127) { u = FD_EXP2_FMUL(u, 2.0f); n -= 1; }                       /* exact */
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return FD_EXP2_FMUL(u, s);
}

/* fd_expf_portable(x): e^x in binary32, bit-identical on host and device (the split-KV
 * combine's weights, where CUDA's expf and glibc's differ in the last bit).
 * Method: n = rint(x log2 e) (the 1.5*2^23 trick on one fmaf), r = x - n ln2 by two fmaf
 * with ln2 split in hi + lo (|r| <= 0.347), e^r by its degree-7 Taylor polynomial in
 * Horner form with fmaf (truncation < r^8/8! < 5.6e-9 relative), scaled by 2^n.
 * Accuracy and bit-identity: tests/test_exp2.c (max error measured against binary64 exp).
 * Special cases: NaN -> NaN; x < -104 (and -Inf) -> +0; x > 88.8 (and +Inf) -> +Inf. */
FD_HD float fd_expf_portable(float x)
{
    if (isnan(x)) return x;
    if (x < -104.0f) return 0.0f;          /* e^-104 < 2^-150: rounds to 0 */
    if (x > 88.8f) return (float)INFINITY; /* e^88.73 > 2^128 */
    const float magic = 12582912.0f;       /* 1.5 * 2^23 */
    const float fn = FD_EXP2_FSUB(FD_EXP2_FMA(x, 1.44269502163f, magic), magic);
    float r = FD_EXP2_FMA(-fn, 0.693145751953125f, x); /* ln2 hi: 16 significant bits */
    r = FD_EXP2_FMA(-fn, 1.42860676533018e-06f, r);    /* ln2 lo */
    float u = 1.0f / 5040.0f;
    u = FD_EXP2_FMA(u, r, 1.0f / 720.0f);
    u = FD_EXP2_FMA(u, r, 1.0f / 120.0f);
    u = FD_EXP2_FMA(u, r, 1.0f / 24.0f);
    u = FD_EXP2_FMA(u, r, 1.0f / 6.0f);
    u = FD_EXP2_FMA(u, r, 0.5f);
    u = FD_EXP2_FMA(u, r, 1.0f);
    u = FD_EXP2_FMA(u, r, 1.0f);           /* e^r in [0.707, 1.415] */
    return fd_exp2_portable_scale(u, (int)fn);
}

/* fd_logf_portable(x): ln x in binary32, bit-identical on host and device (the split-KV
 * LSEs). Method: x = 2^e m with m in [sqrt(1/2), sqrt(2)) (subnormals scaled by 2^24
 * first, exactly), f = m - 1 (exact), s = f / (2 + f), ln m = 2 atanh s = 2s + sR with
 * R = z (2/3 + 2z/5 + 2z^2/7 + 2z^3/9 + 2z^4/11), z = s^2 <= 0.0295 (truncation < 2 z^5
 * |s| / 13 < 6e-10 |ln m|), evaluated as fdlibm does, f - (f^2/2 - s (f^2/2 + R)), so
 * that the exact f carries the result; then e ln2 added by two fmaf, ln2 split hi + lo.
 * Special cases: NaN or x < 0 -> NaN; +-0 -> -Inf; +Inf -> +Inf. */
FD_HD float fd_logf_portable(float x)
{
    if (isnan(x) || x < 0.0f) return (float)NAN;
    if (!(x > 0.0f)) return -(float)INFINITY; /* +-0 (x < 0 and NaN are above) */
    if (isinf(x)) return x;
    int e = 0;
    if (x < 1.17549435e-38f) { x = FD_EXP2_FMUL(x, 16777216.0f); e = -24; } /* 2^24, exact */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    e += (int)(u >> 23) - 127;
    u = (u & 0x7fffffu) | 0x3f800000u; /* m in [1, 2) */
    float m;
    memcpy(&m, &u, sizeof m);
    if (m > 1.41421356f) { m = FD_EXP2_FMUL(m, 0.5f); e += 1; } /* exact */
    const float f = FD_EXP2_FSUB(m, 1.0f);                      /* exact (Sterbenz) */
    const float s = FD_EXP2_FDIV(f, FD_EXP2_FADD(2.0f, f));
    const float z = FD_EXP2_FMUL(s, s);
    float R = 2.0f / 11.0f;
    R = FD_EXP2_FMA(R, z, 2.0f / 9.0f);
    R = FD_EXP2_FMA(R, z, 2.0f / 7.0f);
    R = FD_EXP2_FMA(R, z, 2.0f / 5.0f);
    R = FD_EXP2_FMA(R, z, 2.0f / 3.0f);
    R = FD_EXP2_FMUL(R, z);
    const float hfsq = FD_EXP2_FMUL(FD_EXP2_FMUL(0.5f, f), f); /* 0.5 f exact */
    /* ln(1 + f) = 2s + sR = f - (hfsq - s (hfsq + R)): the exact f carries the result */
    float r = FD_EXP2_FSUB(f, FD_EXP2_FSUB(hfsq, FD_EXP2_FMUL(s, FD_EXP2_FADD(hfsq, R))));
    const float fe = (float)e;
    r = FD_EXP2_FMA(fe, 1.42860676533018e-06f, r);
    return FD_EXP2_FMA(fe, 0.693145751953125f, r);
}
#endif
