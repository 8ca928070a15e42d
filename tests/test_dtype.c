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
