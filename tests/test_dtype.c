/* test_dtype.c: fp16/bf16 conversions against independent implementations
 * (GCC's _Float16 for binary16, rint on the scaled significand for bfloat16). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>

#include "fd_dtype.h"
#include "fd_philox.h"

static float bf16_rint(float x)
{
    /* round the significand to 8 bits with rint (ties to even in the default mode) */
    if (!isfinite(x) || fd_eqf(x, 0.0f)) return x;
    if (fabsf(x) < 0x1p-126f) /* binary32 subnormals: bf16 keeps the top 16 bits, grid 2^-133 */
        return (float)ldexp(rint(ldexp((double)x, 133)), -133);
    int e;
    double m = frexp((double)x, &e); /* |m| in [0.5, 1) */
    double r = ldexp(rint(ldexp(m, 8)), e - 8);
    return (float)r; /* overflow to Inf as binary32 would */
}

static void check16(uint32_t u)
{
    float x = fd_bits_f32(u);
    float want = (float)(_Float16)x;
    float got = fd_round_to_dtype(x, FD_DT_FP16);
    if (isnan(x)) {
        cr_assert(isnan(got), "fp16(%a) should be NaN", (double)x);
        return;
    }
    cr_assert(fd_f32_bits(got) == fd_f32_bits(want),
              "fp16 rounding of %a (0x%08x): got %a, _Float16 gives %a", (double)x, u,
              (double)got, (double)want);
}

static void check_bf(uint32_t u)
{
    float x = fd_bits_f32(u);
    if (isnan(x)) {
        cr_assert(isnan(fd_round_to_dtype(x, FD_DT_BF16)));
        return;
    }
    float want = bf16_rint(x), got = fd_round_to_dtype(x, FD_DT_BF16);
    cr_assert(fd_f32_bits(got) == fd_f32_bits(want), "bf16 rounding of %a (0x%08x): got %a, want %a",
              (double)x, u, (double)got, (double)want);
}

Test(dtype, fp16_special_values)
{
    cr_assert(fd_f32_to_f16_bits(65504.0f) == 0x7bff, "max fp16");
    cr_assert(fd_f32_to_f16_bits(65520.0f) == 0x7c00, "65520 ties to Inf");
    cr_assert(fd_f32_to_f16_bits(0x1p-24f) == 0x0001, "smallest subnormal");
    cr_assert(fd_f32_to_f16_bits(0x1p-25f) == 0x0000, "half the smallest subnormal ties to 0");
    cr_assert(fd_f32_to_f16_bits(-0.0f) == 0x8000, "-0 keeps its sign");
    cr_assert(fd_eqf(fd_f16_bits_to_f32(0x3c00), 1.0f));
    cr_assert(fd_eqf(fd_f16_bits_to_f32(0x0001), 0x1p-24f));
}

Test(dtype, fp16_every_fp16_value_round_trips)
{
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float x = fd_f16_bits_to_f32((uint16_t)h);
        if (isnan(x)) continue;
        cr_assert(fd_f32_to_f16_bits(x) == h, "fp16 0x%04x -> %a -> 0x%04x", h, (double)x,
                  fd_f32_to_f16_bits(x));
    }
}

Test(dtype, fp16_near_every_boundary_and_random)
{
    /* every binary32 whose exponent is in fp16's range, step 7 (covers all ties patterns
     * with step coprime to 2^13), then 20 million random words */
    for (uint32_t u = 0x33000000u - 4096u; u < 0x47800000u + 4096u; u += 7) {
        check16(u);
        check16(u | 0x80000000u);
    }
    for (uint64_t i = 0; i < 5000000u; i++) {
        fd_u32x4 c = {{(uint32_t)i, 0, 0, 0}};
        fd_u32x4 r = fd_philox4x32(c, 1234u, 0u, 10);
        for (int t = 0; t < 4; t++) check16(r.v[t]);
    }
}

Test(dtype, bf16_random_and_ties)
{
    for (uint32_t u = 0; u < 0x00800000u * 3u; u += 0x3fffu) check_bf(u);
    for (uint32_t k = 0; k < 100000u; k++) {
        uint32_t u = (k << 16) | 0x8000u; /* exact ties */
        check_bf(u);
    }
    for (uint64_t i = 0; i < 2000000u; i++) {
        fd_u32x4 c = {{(uint32_t)i, 7, 0, 0}};
        fd_u32x4 r = fd_philox4x32(c, 99u, 0u, 10);
        for (int t = 0; t < 4; t++) check_bf(r.v[t]);
    }
}

/* ---- FP8 (issue 15 item 4): e4m3 and e5m2 against a brute-force oracle ---- */

/* The oracle: the nearest of all finite FP8 values (plus one virtual value an ulp above
 * the largest, standing for "overflow"), ties to the even code; computed in binary64 from
 * the code's definition (sign, exponent field, fraction field), not from fd_fp8_bits_to_f32. */
static double fp8_def_value(unsigned c, int e5)
{
    const int mbits = e5 ? 2 : 3, bias = e5 ? 15 : 7;
    const unsigned ef = (c >> mbits) & (e5 ? 31u : 15u), m = c & ((1u << mbits) - 1u);
    double v = ef == 0 ? ldexp((double)m, 1 - bias - mbits) : ldexp((double)((1u << mbits) + m), (int)ef - bias - mbits);
    return (c & 0x80u) ? -v : v;
}

/* returns the code, or -1 for "beyond the largest finite value" */
static int fp8_oracle(double x, int e5)
{
    const unsigned maxcode = e5 ? 0x7bu : 0x7eu;
    static double tab[2][0x80];
    static int init[2];
    if (!init[e5]) {
        for (unsigned c = 0; c <= maxcode + 1u; c++)
            tab[e5][c] = c == maxcode + 1u ? fp8_def_value(maxcode, e5) + ldexp(1.0, e5 ? 13 : 5) : fp8_def_value(c, e5);
        init[e5] = 1;
    }
    const double ax = fabs(x);
    int best = 0;
    double bd = INFINITY;
    for (unsigned c = 0; c <= maxcode + 1u; c++) {
        const double d = fabs(ax - tab[e5][c]);
        if (d < bd || (fd_eq(d, bd) && (c & 1u) == 0)) {
            bd = d;
            best = (int)c;
        }
    }
    if (best == (int)maxcode + 1) return -1;
    return best | (signbit(x) ? 0x80 : 0);
}

static void check_fp8(float x, fd_dtype t)
{
    const int e5 = t == FD_DT_E5M2;
    const int want = fp8_oracle((double)x, e5);
    const unsigned got = fd_f32_to_fp8_bits(x, t, FD_FP8_SATFINITE);
    const unsigned got_ns = fd_f32_to_fp8_bits(x, t, FD_FP8_NOSAT);
    const unsigned sign = signbit(x) ? 0x80u : 0u;
    if (want >= 0) {
        cr_assert(got == (unsigned)want && got_ns == (unsigned)want,
                  "%s of %a (0x%08x): got 0x%02x (satfinite) 0x%02x (nosat), want 0x%02x", fd_dtype_name(t),
                  (double)x, fd_f32_bits(x), got, got_ns, (unsigned)want);
    } else {
        cr_assert(got == (sign | (e5 ? 0x7bu : 0x7eu)), "%s of %a saturates to the max, got 0x%02x",
                  fd_dtype_name(t), (double)x, got);
        cr_assert(got_ns == (sign | (e5 ? 0x7cu : 0x7fu)), "%s of %a without saturation: Inf/NaN, got 0x%02x",
                  fd_dtype_name(t), (double)x, got_ns);
    }
}

Test(dtype, fp8_every_code_round_trips)
{
    for (int e5 = 0; e5 < 2; e5++) {
        const fd_dtype t = e5 ? FD_DT_E5M2 : FD_DT_E4M3;
        int nfinite = 0;
        for (unsigned c = 0; c < 256; c++) {
            const float x = fd_fp8_bits_to_f32((uint8_t)c, t);
            const unsigned ef = e5 ? (c >> 2) & 31u : (c >> 3) & 15u, m = e5 ? c & 3u : c & 7u;
            const int is_nan = e5 ? (ef == 31u && m != 0u) : (ef == 15u && m == 7u);
            const int is_inf = e5 && ef == 31u && m == 0u;
            if (is_nan) {
                cr_assert(isnan(x), "%s code 0x%02x is NaN, decoded %a", fd_dtype_name(t), c, (double)x);
                cr_assert(fd_f32_to_fp8_bits(x, t, FD_FP8_SATFINITE) == ((c & 0x80u) | 0x7fu));
                continue;
            }
            if (is_inf) {
                cr_assert(isinf(x) && (signbit(x) != 0) == ((c & 0x80u) != 0));
                cr_assert(fd_f32_to_fp8_bits(x, t, FD_FP8_NOSAT) == c, "Inf round-trips without saturation");
                cr_assert(fd_f32_to_fp8_bits(x, t, FD_FP8_SATFINITE) == ((c & 0x80u) | 0x7bu), "Inf saturates");
                continue;
            }
            nfinite++;
            cr_assert(fd_eq((double)x, fp8_def_value(c, e5)) && (signbit(x) != 0) == ((c & 0x80u) != 0),
                      "%s code 0x%02x decodes to %a, the definition gives %a", fd_dtype_name(t), c, (double)x,
                      fp8_def_value(c, e5));
            cr_assert(fd_f32_to_fp8_bits(x, t, FD_FP8_SATFINITE) == c && fd_f32_to_fp8_bits(x, t, FD_FP8_NOSAT) == c,
                      "%s code 0x%02x (%a) does not round-trip", fd_dtype_name(t), c, (double)x);
            cr_assert(fd_f32_bits(fd_round_to_dtype(x, t)) == fd_f32_bits(x));
        }
        cr_assert(nfinite == (e5 ? 248 : 254), "%s: %d finite codes", fd_dtype_name(t), nfinite);
    }
}

Test(dtype, fp8_constants_and_saturation)
{
    cr_assert(fd_eqf(fd_fp8_bits_to_f32(0x7e, FD_DT_E4M3), 448.0f), "e4m3 max");
    cr_assert(fd_eqf(fd_fp8_bits_to_f32(0x01, FD_DT_E4M3), 0x1p-9f), "e4m3 smallest subnormal");
    cr_assert(fd_eqf(fd_fp8_bits_to_f32(0x08, FD_DT_E4M3), 0x1p-6f), "e4m3 smallest normal");
    cr_assert(fd_eqf(fd_fp8_bits_to_f32(0x38, FD_DT_E4M3), 1.0f));
    cr_assert(fd_eqf(fd_fp8_bits_to_f32(0x7b, FD_DT_E5M2), 57344.0f), "e5m2 max");
    cr_assert(fd_eqf(fd_fp8_bits_to_f32(0x01, FD_DT_E5M2), 0x1p-16f), "e5m2 smallest subnormal");
    cr_assert(fd_eqf(fd_fp8_bits_to_f32(0x3c, FD_DT_E5M2), 1.0f));
    cr_assert(fd_eqf(fd_fp8_max(FD_DT_E4M3), 448.0f) && fd_eqf(fd_fp8_max(FD_DT_E5M2), 57344.0f));
    /* e4m3: 464 is the midpoint of 448 and the (missing) 480: ties to the even code 0x7e */
    cr_assert(fd_f32_to_fp8_bits(464.0f, FD_DT_E4M3, FD_FP8_NOSAT) == 0x7e);
    cr_assert(fd_f32_to_fp8_bits(nextafterf(464.0f, 1e9f), FD_DT_E4M3, FD_FP8_NOSAT) == 0x7f, "torch: NaN");
    cr_assert(fd_f32_to_fp8_bits(nextafterf(464.0f, 1e9f), FD_DT_E4M3, FD_FP8_SATFINITE) == 0x7e, "cvt.satfinite");
    cr_assert(fd_f32_to_fp8_bits(-1e30f, FD_DT_E4M3, FD_FP8_SATFINITE) == 0xfe);
    cr_assert(fd_f32_to_fp8_bits(-INFINITY, FD_DT_E4M3, FD_FP8_NOSAT) == 0xff, "e4m3 has no Inf: NaN");
    /* e5m2: 61440 is the midpoint of 57344 (odd code 0x7b) and Inf (0x7c): ties to Inf */
    cr_assert(fd_f32_to_fp8_bits(61440.0f, FD_DT_E5M2, FD_FP8_NOSAT) == 0x7c);
    cr_assert(fd_f32_to_fp8_bits(61440.0f, FD_DT_E5M2, FD_FP8_SATFINITE) == 0x7b);
    cr_assert(fd_f32_to_fp8_bits(nextafterf(61440.0f, 0.0f), FD_DT_E5M2, FD_FP8_NOSAT) == 0x7b);
    /* underflow: half the smallest subnormal ties to 0, just above it to the subnormal */
    cr_assert(fd_f32_to_fp8_bits(0x1p-10f, FD_DT_E4M3, FD_FP8_SATFINITE) == 0x00);
    cr_assert(fd_f32_to_fp8_bits(nextafterf(0x1p-10f, 1.0f), FD_DT_E4M3, FD_FP8_SATFINITE) == 0x01);
    cr_assert(fd_f32_to_fp8_bits(-0x1p-17f, FD_DT_E5M2, FD_FP8_SATFINITE) == 0x80, "-0 keeps its sign");
    cr_assert(fd_f32_to_fp8_bits(0x1p-149f, FD_DT_E4M3, FD_FP8_SATFINITE) == 0x00);
    cr_assert(fd_f32_to_fp8_bits(NAN, FD_DT_E5M2, FD_FP8_SATFINITE) == 0x7f);
    cr_assert(fd_dtype_precision(FD_DT_E4M3) == 4 && fd_dtype_emin(FD_DT_E4M3) == -6);
    cr_assert(fd_dtype_precision(FD_DT_E5M2) == 3 && fd_dtype_emin(FD_DT_E5M2) == -14);
    cr_assert(fd_out_dtype(FD_DT_E4M3) == FD_DT_BF16 && fd_out_dtype(FD_DT_FP16) == FD_DT_FP16);
}

Test(dtype, fp8_midpoints_round_to_even)
{
    /* every midpoint between neighbouring finite codes, and the floats next to it */
    int nmid = 0;
    for (int e5 = 0; e5 < 2; e5++) {
        const fd_dtype t = e5 ? FD_DT_E5M2 : FD_DT_E4M3;
        const unsigned maxcode = e5 ? 0x7bu : 0x7eu;
        for (unsigned c = 0; c < maxcode; c++) {
            for (int s = 0; s < 2; s++) {
                const double a = fp8_def_value(c, e5), b = fp8_def_value(c + 1u, e5);
                const float mid = (float)((a + b) / 2.0) * (s ? -1.0f : 1.0f); /* exact in binary32 */
                const unsigned even = (c & 1u) ? c + 1u : c;
                cr_assert(fd_f32_to_fp8_bits(mid, t, FD_FP8_SATFINITE) == (even | (s ? 0x80u : 0u)),
                          "%s midpoint %a of codes 0x%02x, 0x%02x: got 0x%02x", fd_dtype_name(t), (double)mid, c,
                          c + 1u, fd_f32_to_fp8_bits(mid, t, FD_FP8_SATFINITE));
                check_fp8(nextafterf(mid, 0.0f), t);
                check_fp8(nextafterf(mid, INFINITY), t);
                check_fp8(nextafterf(mid, -INFINITY), t);
                nmid++;
            }
        }
    }
    cr_assert(nmid == 2 * (0x7e + 0x7b), "%d midpoints", nmid);
}

Test(dtype, fp8_sweep_against_oracle)
{
    /* every 512th binary32 from 2^-20 to 2^17 of both signs: all binades of both formats,
     * the underflow and the overflow ranges (about 1.2 million values per format) */
    long n = 0;
    for (int e5 = 0; e5 < 2; e5++)
        for (uint32_t u = 0x35800000u; u < 0x48000000u; u += 509u) {
            check_fp8(fd_bits_f32(u), e5 ? FD_DT_E5M2 : FD_DT_E4M3);
            check_fp8(-fd_bits_f32(u), e5 ? FD_DT_E5M2 : FD_DT_E4M3);
            n += 2;
        }
    cr_assert(n > 2000000, "too few values checked: %ld", n);
}
