/* test_accum.c: the accumulation-order models against H100 hardware data and by hand.
 *
 * FD_ACC_TC16 must reproduce every result in tests/data/tensor-core-h100 (5000 fp16 and
 * 5000 bf16 16-term dot products, binary32 accumulation, real H100 output) bit for bit.
 * An independent implementation of the same model in this file (double arithmetic,
 * trunc/ldexp instead of integer shifts) checks the library off the data as well, and
 * its variants (1 or 3 extra alignment bits, normalised products) must NOT match all of
 * the data: a test that every model passed could not tell them apart. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_accum.h"
#include "fd_dtype.h"

#include "fd_tc_data.h"

/* ------------------------------------------------------------------------------------ */

static int count_lib(const tc_data *d, fd_dtype t, int use_dt, int *first)
{
    int ok = 0;
    *first = -1;
    for (int i = 0; i < d->n; i++) {
        float r = use_dt ? fd_tc16_block_dt(d->a[i], d->b[i], d->c[i], t)
                         : fd_tc16_block(d->a[i], d->b[i], d->c[i]);
        if (fd_f32_bits(r) == d->d[i]) ok++;
        else if (*first < 0) *first = i;
    }
    return ok;
}

static int count_indep(const tc_data *d, int emin, int extra, int normalise)
{
    int ok = 0;
    for (int i = 0; i < d->n; i++)
        if (fd_f32_bits(indep_block(d->a[i], d->b[i], d->c[i], emin, extra, normalise)) ==
            d->d[i])
            ok++;
    return ok;
}

static void check_hardware(const char *dt, fd_dtype t)
{
    tc_data *d = tc_load(dt);
    for (int use_dt = 0; use_dt < 2; use_dt++) {
        int first;
        int ok = count_lib(d, t, use_dt, &first);
        if (first >= 0) {
            char what[96];
            snprintf(what, sizeof what, "%s %s: first mismatch", dt,
                     use_dt ? "fd_tc16_block_dt" : "fd_tc16_block");
            float r = use_dt ? fd_tc16_block_dt(d->a[first], d->b[first], d->c[first], t)
                             : fd_tc16_block(d->a[first], d->b[first], d->c[first]);
            print_case(what, d, first, fd_f32_bits(r));
        }
        cr_log_info("%s %s: %d/%d hardware results reproduced", dt,
                    use_dt ? "fd_tc16_block_dt" : "fd_tc16_block", ok, d->n);
        cr_expect_eq(ok, NCASES, "%s: TC16 model reproduces %d of %d H100 results", dt, ok,
                     NCASES);
    }
}

Test(tc16_hardware, fp16_all_5000_bit_exact) { check_hardware("fp16", FD_DT_FP16); }
Test(tc16_hardware, bf16_all_5000_bit_exact) { check_hardware("bf16", FD_DT_BF16); }

/* The data has to be able to reject a wrong model. The independent implementation with
 * the hardware's parameters matches everything; each variant must miss somewhere. */
static void check_variants(const char *dt, fd_dtype t)
{
    tc_data *d = tc_load(dt);
    int em = fd_dtype_emin(t);
    int right = count_indep(d, em, 2, 0);
    int e1 = count_indep(d, em, 1, 0), e3 = count_indep(d, em, 3, 0);
    int e0 = count_indep(d, em, 0, 0), nrm = count_indep(d, em, 2, 1);
    /* fp16 subnormal inputs at their own exponent instead of -14 (bf16: no change). */
    int sub = count_indep(d, -126, 2, 0);
    fprintf(stderr,
            "%s variants matched (of %d): 2 extra bits %d, 1 extra bit %d, 3 extra bits %d, "
            "0 extra bits %d, normalised products %d, subnormal inputs normalised %d\n",
            dt, NCASES, right, e1, e3, e0, nrm, sub);
    cr_expect_eq(right, NCASES, "%s: independent model matches %d", dt, right);
    cr_expect_lt(e1, NCASES, "%s: 1 extra bit must not match all the data", dt);
    cr_expect_lt(e3, NCASES, "%s: 3 extra bits must not match all the data", dt);
    cr_expect_lt(e0, NCASES, "%s: 0 extra bits must not match all the data", dt);
    cr_expect_lt(nrm, NCASES, "%s: normalised products must not match all the data", dt);
}

Test(tc16_hardware, fp16_variants_are_rejected) { check_variants("fp16", FD_DT_FP16); }
Test(tc16_hardware, bf16_variants_are_rejected) { check_variants("bf16", FD_DT_BF16); }

/* ------------------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t next_u64(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static float rand_f16(void) /* any finite fp16, zeros and subnormals included */
{
    for (;;) {
        uint16_t h = (uint16_t)next_u64();
        if ((h & 0x7c00u) != 0x7c00u) return fd_f16_bits_to_f32(h);
    }
}

static float rand_bf16(int emin, int emax) /* bf16 with exponent in [emin, emax] */
{
    uint32_t sign = (uint32_t)(next_u64() & 1u) << 31;
    int e = emin + (int)(next_u64() % (uint64_t)(emax - emin + 1));
    uint32_t frac = (uint32_t)(next_u64() & 0x7fu) << 16;
    if (e < -126) { /* a binary32 subnormal with at most 7 fraction bits in bf16 */
        uint32_t m = (0x80u | (uint32_t)(next_u64() & 0x7fu)) << 16;
        return fd_bits_f32(sign | ((m >> (unsigned)(-126 - e)) & 0x7fff0000u));
    }
    return fd_bits_f32(sign | ((uint32_t)(e + 127) << 23) | frac);
}

/* Library and independent model agree away from the data: spread exponents, subnormal
 * inputs, cancellation, tiny results. The seed is fixed and printed. */
Test(tc16_model, library_equals_independent_model_random)
{
    rng_state = 20261121u;
    fprintf(stderr, "library_equals_independent_model_random: seed %llu\n",
            (unsigned long long)rng_state);
    float a[16], b[16];
    for (int it = 0; it < 200000; it++) {
        int bf = it & 1;
        fd_dtype t = bf ? FD_DT_BF16 : FD_DT_FP16;
        int lo = (it % 3 == 0) ? -133 : -40, hi = (it % 3 == 0) ? -60 : 40;
        for (int i = 0; i < 16; i++) {
            a[i] = bf ? rand_bf16(lo, hi) : rand_f16();
            b[i] = bf ? rand_bf16(lo, hi) : rand_f16();
            if (next_u64() % 8 == 0) a[i] = 0.0f;
        }
        if (it % 5 == 0) { /* exact cancellation of the largest pair */
            a[1] = -a[0];
            b[1] = b[0];
        }
        float c;
        switch (it % 4) {
        case 0: c = 0.0f; break;
        case 1: c = fd_bits_f32((uint32_t)next_u64() & 0x807fffffu); break; /* subnormal */
        default: c = fd_bits_f32(((uint32_t)next_u64() & 0x80ffffffu) |
                                 ((uint32_t)(90 + next_u64() % 70) << 23));
        }
        float r = fd_tc16_block_dt(a, b, c, t);
        float s = indep_block(a, b, c, fd_dtype_emin(t), 2, 0);
        if (fd_f32_bits(r) != fd_f32_bits(s)) {
            fprintf(stderr, "iteration %d (%s): c = %a\n", it, bf ? "bf16" : "fp16", (double)c);
            for (int i = 0; i < 16; i++)
                fprintf(stderr, "  a[%d] = %a  b[%d] = %a\n", i, (double)a[i], i, (double)b[i]);
            cr_assert_fail("library %a (%08x) != independent %a (%08x)", (double)r,
                           (unsigned)fd_f32_bits(r), (double)s, (unsigned)fd_f32_bits(s));
        }
    }
}

static void fill(float *x, int n, float v)
{
    for (int i = 0; i < n; i++) x[i] = v;
}

#define EXPECT_BITS(got, want)                                                              \
    cr_expect_eq(fd_f32_bits(got), fd_f32_bits(want), "%s: got %a (%08x), expected %a (%08x)", \
                 #got, (double)(got), (unsigned)fd_f32_bits(got), (double)(want),             \
                 (unsigned)fd_f32_bits(want))

/* Hand-made cases whose answers follow from the model's rules. */
Test(tc16_model, two_extra_bits_and_truncation)
{
    float a[16], b[16];
    /* 16 products of 2^-25 with c = 1: each is one unit of 2^(0-25), kept: 1 + 2^-21. */
    fill(a, 16, 0x1p-12f);
    fill(b, 16, 0x1p-13f);
    EXPECT_BITS(fd_tc16_block(a, b, 1.0f), 0x1.000008p0f);
    /* 2^-26 is below the last alignment bit: every term is truncated away. */
    fill(b, 16, 0x1p-14f);
    EXPECT_BITS(fd_tc16_block(a, b, 1.0f), 1.0f);
    /* 1 - 2^-25 truncated to 24 bits is the float below 1 (round to nearest would give 1). */
    fill(a, 16, 0.0f);
    fill(b, 16, 0.0f);
    a[0] = -0x1p-12f;
    b[0] = 0x1p-13f;
    EXPECT_BITS(fd_tc16_block(a, b, 1.0f), 0x1.fffffep-1f);
    /* Round toward zero is symmetric: -1 + 2^-25 gives -(1 - 2^-24). */
    a[0] = 0x1p-12f;
    EXPECT_BITS(fd_tc16_block(a, b, -1.0f), -0x1.fffffep-1f);
    /* Products are exact: 2047 * 2047 (fp16 operands) = 4190209, 22 bits. */
    fill(a, 16, 0.0f);
    fill(b, 16, 0.0f);
    a[0] = 2047.0f;
    b[0] = 2047.0f;
    EXPECT_BITS(fd_tc16_block(a, b, 0.0f), 4190209.0f);
    /* Late normalisation: 1.5 * 1.5 = 2.25 stays at exponent 0, so the grid is 2^-25 and
     * a 2^-25 product survives the cancellation of the two large ones. Normalising the
     * products first would align to exponent 1 (grid 2^-24) and lose it. */
    a[0] = 1.5f;
    b[0] = 1.5f;
    a[1] = -1.5f;
    b[1] = 1.5f;
    a[2] = 0x1p-12f;
    b[2] = 0x1p-13f;
    EXPECT_BITS(fd_tc16_block(a, b, 0.0f), 0x1p-25f);
    EXPECT_BITS(indep_block(a, b, 0.0f, -14, 2, 0), 0x1p-25f);
    EXPECT_BITS(indep_block(a, b, 0.0f, -14, 2, 1), 0.0f);
    /* The same shows the extra bits: with 1 the grid is 2^-24, with 3 it is 2^-26. */
    EXPECT_BITS(indep_block(a, b, 0.0f, -14, 1, 0), 0.0f);
    b[2] = 0x1p-14f; /* a 2^-26 product */
    EXPECT_BITS(fd_tc16_block(a, b, 0.0f), 0.0f);
    EXPECT_BITS(indep_block(a, b, 0.0f, -14, 3, 0), 0x1p-26f);
}

Test(tc16_model, zeros_subnormals_and_underflow)
{
    float a[16], b[16];
    fill(a, 16, 0.0f);
    fill(b, 16, 0.0f);
    EXPECT_BITS(fd_tc16_block(a, b, 0.0f), 0.0f);
    EXPECT_BITS(fd_tc16_block(a, b, -0.0f), 0.0f); /* no term at all: +0 */
    EXPECT_BITS(fd_tc16_block(a, b, 0x1p-140f), 0x1p-140f); /* c alone passes through */
    /* Exact cancellation gives +0. */
    a[0] = 3.0f;
    b[0] = 5.0f;
    a[1] = -3.0f;
    b[1] = 5.0f;
    EXPECT_BITS(fd_tc16_block(a, b, 0.0f), 0.0f);
    /* bf16: 2^-70 * 2^-70 = 2^-140 is a binary32 subnormal, exact. */
    fill(a, 16, 0.0f);
    fill(b, 16, 0.0f);
    a[0] = 0x1p-70f;
    b[0] = 0x1p-70f;
    EXPECT_BITS(fd_tc16_block_dt(a, b, 0.0f, FD_DT_BF16), 0x1p-140f);
    /* 1.5 * 2^-149 truncates to the smallest subnormal; 1.5 * 2^-150 to zero. */
    a[0] = 0x1.8p-74f;
    b[0] = 0x1p-75f;
    EXPECT_BITS(fd_tc16_block_dt(a, b, 0.0f, FD_DT_BF16), 0x1p-149f);
    a[0] = 0x1.8p-75f;
    EXPECT_BITS(fd_tc16_block_dt(a, b, 0.0f, FD_DT_BF16), 0.0f);
    a[0] = -0x1.8p-75f;
    EXPECT_BITS(fd_tc16_block_dt(a, b, 0.0f, FD_DT_BF16), -0.0f); /* toward zero keeps sign */
    /* fp16 subnormal inputs sit at exponent -14: a = 2^-24 (the smallest fp16 subnormal)
     * times b = 1 is a product at exponent -14, which sets the grid to 2^-39, so
     * c = 0x1.000002p-17 loses its last bit (2^-40): 2^-17 + 2^-24. */
    fill(a, 16, 0.0f);
    fill(b, 16, 0.0f);
    a[0] = 0x1p-24f;
    b[0] = 1.0f;
    EXPECT_BITS(fd_tc16_block_dt(a, b, 0x1.000002p-17f, FD_DT_FP16), 0x1.02p-17f);
    /* The same numbers as bf16: the product's exponent is -24, c's exponent -17 is the
     * maximum and nothing is lost: 2^-17 + 2^-40 + 2^-24. */
    EXPECT_BITS(fd_tc16_block_dt(a, b, 0x1.000002p-17f, FD_DT_BF16), 0x1.020002p-17f);
    /* The guessing entry point takes these (all bf16 values) as bf16 ... */
    EXPECT_BITS(fd_tc16_block(a, b, 0x1.000002p-17f), 0x1.020002p-17f);
    /* ... and a block with an input that is not a bf16 value as fp16. */
    a[1] = 0x1.004p0f; /* 11 significant bits; its product with b[1] = 0 takes no part */
    EXPECT_BITS(fd_tc16_block(a, b, 0x1.000002p-17f), 0x1.02p-17f);
}

Test(tc16_model, nan_and_inf)
{
    float a[16], b[16];
    fill(a, 16, 1.0f);
    fill(b, 16, 1.0f);
    cr_expect(isnan(fd_tc16_block(a, b, NAN)), "NaN c gives NaN");
    a[3] = NAN;
    cr_expect(isnan(fd_tc16_block(a, b, 0.0f)), "NaN input gives NaN");
    a[3] = INFINITY;
    EXPECT_BITS(fd_tc16_block(a, b, 1.0f), INFINITY);
    b[3] = -1.0f;
    EXPECT_BITS(fd_tc16_block(a, b, 1.0f), -INFINITY);
    cr_expect(isnan(fd_tc16_block(a, b, INFINITY)), "-Inf product + Inf c gives NaN");
    b[3] = 0.0f;
    cr_expect(isnan(fd_tc16_block(a, b, 1.0f)), "Inf * 0 gives NaN");
    fill(a, 16, 1.0f);
    fill(b, 16, 1.0f);
    EXPECT_BITS(fd_tc16_block(a, b, -INFINITY), -INFINITY);
    /* bf16 products beyond binary32's range overflow to Inf (reference model's choice). */
    fill(a, 16, 0.0f);
    fill(b, 16, 0.0f);
    a[0] = 0x1p100f;
    b[0] = 0x1p100f;
    EXPECT_BITS(fd_tc16_block_dt(a, b, 0.0f, FD_DT_BF16), INFINITY);
    /* Cancelling products are exact, but they set the grid at 2^175: c = 2 is lost, +0. */
    a[1] = -0x1p100f;
    b[1] = 0x1p100f;
    EXPECT_BITS(fd_tc16_block_dt(a, b, 2.0f, FD_DT_BF16), 0.0f);
}

/* Longer K: 16-term blocks chained in K order; a short last block is padded with zeros;
 * strides are honoured. */
Test(tc16_model, dot_chains_blocks_and_pads)
{
    enum { N = 37, SA = 2, SB = 3 };
    float a[N * SA], b[N * SB], pa[48], pb[48];
    rng_state = 7u;
    memset(pa, 0, sizeof pa);
    memset(pb, 0, sizeof pb);
    for (int i = 0; i < N; i++) {
        a[i * SA] = rand_f16();
        b[i * SB] = rand_f16();
        pa[i] = a[i * SA];
        pb[i] = b[i * SB];
        if (i * SA + 1 < N * SA) a[i * SA + 1] = NAN; /* between the strided elements */
    }
    for (int i = 0; i < N; i++) {
        b[i * SB + 1] = NAN;
        b[i * SB + 2] = NAN;
    }
    float c = 0.25f;
    float want = c;
    for (int k = 0; k < 48; k += 16) want = fd_tc16_block(pa + k, pb + k, want);
    EXPECT_BITS(fd_dot_acc(FD_ACC_TC16, a, SA, b, SB, N, c), want);
    EXPECT_BITS(fd_dot_acc_dt(FD_ACC_TC16, a, SA, b, SB, N, c, FD_DT_FP16), want);
    EXPECT_BITS(fd_dot_acc(FD_ACC_TC16, a, SA, b, SB, 0, c), c);
}

/* The sequential model: one rounding per term, so the order decides. */
Test(seq_model, order_changes_the_result)
{
    float ones[8];
    fill(ones, 8, 1.0f);
    /* 2^24 + 1 rounds back to 2^24 (tie to even), eight times over. */
    EXPECT_BITS(fd_dot_acc(FD_ACC_SEQ, ones, 1, ones, 1, 8, 0x1p24f), 0x1p24f);
    /* The same terms added first: 8 + 2^24 is exact. */
    float a[9] = {1, 1, 1, 1, 1, 1, 1, 1, 0x1p24f}, b[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    EXPECT_BITS(fd_dot_acc(FD_ACC_SEQ, a, 1, b, 1, 9, 0.0f), 0x1.000008p24f);
    /* TC16 aligns everything to 2^24 with 2 extra bits: 2^24 + 8, exact. */
    EXPECT_BITS(fd_dot_acc(FD_ACC_TC16, ones, 1, ones, 1, 8, 0x1p24f), 0x1.000008p24f);
    /* Each step is one fma, one rounding: y^2 = 1 + 2^-22 + 2^-46 rounds to 1 + 2^-22, but
     * with c = -(1 + 2^-22) the exact product leaves 2^-46 (a multiply, then an add, would
     * give 0). */
    float y = 0x1.000002p0f;
    EXPECT_BITS(fd_dot_acc(FD_ACC_SEQ, &y, 1, &y, 1, 1, 0.0f), 0x1.000004p0f);
    EXPECT_BITS(fd_dot_acc(FD_ACC_SEQ, &y, 1, &y, 1, 1, -0x1.000004p0f), 0x1p-46f);
    /* Strides. */
    float s[6] = {2, -1, 3, -1, 4, -1};
    EXPECT_BITS(fd_dot_acc(FD_ACC_SEQ, s, 2, s, 2, 3, 1.0f), 30.0f);
}

Test(names, parse_and_name)
{
    fd_accum_model m = FD_ACC_TC16;
    cr_expect_eq(fd_accum_parse("seq", &m), 0);
    cr_expect_eq(m, FD_ACC_SEQ);
    cr_expect_eq(fd_accum_parse("tc16", &m), 0);
    cr_expect_eq(m, FD_ACC_TC16);
    cr_expect_str_eq(fd_accum_name(FD_ACC_SEQ), "seq");
    cr_expect_str_eq(fd_accum_name(FD_ACC_TC16), "tc16");
    const char *bad[] = {"", "SEQ", "Tc16", "tc", "tc16 ", " seq", "tc8", "sequential", "fma"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        m = FD_ACC_TC16;
        cr_expect_eq(fd_accum_parse(bad[i], &m), -1, "\"%s\" must be rejected", bad[i]);
        cr_expect_eq(m, FD_ACC_TC16, "a rejected name leaves *out alone");
    }
    cr_expect_eq(fd_accum_parse(NULL, &m), -1);
}
