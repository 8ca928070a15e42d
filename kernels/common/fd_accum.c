/* fd_accum.c: accumulation-order models for fp32-accumulated dot products.
 *
 * FD_ACC_TC16 models one H100 `mma.sync` block FMA, d = c + sum_{i<16} a_i b_i, with
 * fp16 or bf16 inputs and binary32 accumulation (Khattak & Mikaitis, arXiv 2512.07004;
 * their models/H100TC.m with models/tools/Generic_BFMA_TC.m). It reproduces all 5000 fp16
 * and all 5000 bf16 H100 results in tests/data/tensor-core-h100 bit for bit.
 *
 *   1. Each input x = m * 2^(e - 23) with m an integer below 2^24 and e = floor(log2|x|),
 *      but never below the input format's minimum exponent (-14 for fp16, -126 for bf16),
 *      so a subnormal input has m < 2^23 at that exponent. Products are exact and are not
 *      normalised: m_a m_b < 2^48 is the significand in [1, 4) * 2^46 at exponent
 *      e_a + e_b. Zero products take no part (not in the maximum either).
 *   2. c enters as its binary32 significand at its own exponent (-126 when subnormal);
 *      c = 0 takes no part.
 *   3. E = max of these exponents, but not below -133.
 *   4. Every term is truncated (magnitude, so toward zero) to a multiple of 2^(E - 25),
 *      i.e. 23 + 2 fraction bits at exponent E; no sticky bit.
 *   5. The signed integer sum is normalised and truncated to 24 bits (round toward zero),
 *      to the subnormal grid 2^-149 below 2^-126. An exact zero sum gives +0.
 *
 * Special values (not covered by the hardware data; IEEE-style choices): a NaN input,
 * Inf * 0, or Infs of both signs among the products and c give NaN (bits 0x7fffffff,
 * NVIDIA's canonical binary32 NaN; payloads are not propagated); otherwise an infinite
 * product or c gives Inf of its sign. A finite sum whose exponent exceeds 127 (possible
 * only for bf16 inputs) gives Inf of its sign, as the reference model does, although
 * round-toward-zero in IEEE terms would give FLT_MAX.
 *
 * Integer bounds (why int64 suffices, no 128-bit type): after step 4 a product term is
 * below 4 * 2^25 = 2^27 units and c below 2 * 2^25 = 2^26, so 16 products plus c stay
 * below 17 * 2^27 < 2^32 in magnitude. The only wider intermediate is m_a m_b < 2^48,
 * a uint64_t, shifted right by at least 21 before it is added. */
#include "fd_accum.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fd_dtype.h"
#include "fd_problem.h"

const char *fd_accum_name(fd_accum_model m)
{
    switch (m) {
    case FD_ACC_SEQ: return "seq";
    case FD_ACC_TC16: return "tc16";
    case FD_ACC_TC_FP8: return "tc_fp8";
    }
    return "?";
}

int fd_accum_parse(const char *s, fd_accum_model *out)
{
    if (s == NULL) return -1;
    if (strcmp(s, "seq") == 0) { if (out) *out = FD_ACC_SEQ; return 0; }
    if (strcmp(s, "tc16") == 0) { if (out) *out = FD_ACC_TC16; return 0; }
    if (strcmp(s, "tc_fp8") == 0) { if (out) *out = FD_ACC_TC_FP8; return 0; }
    return -1;
}

/* Model parameters: the hardware is {2, 0}; tests use other values to show that the
 * data rejects them. */
typedef struct {
    int extra_bits;        /* alignment bits beyond 23 fraction bits: 2 on H100 */
    int normalise_products; /* 1: products in [1, 2) (exponent + 1 when >= 2): not H100 */
    int out_bits;          /* significant bits of the result, truncated: 24 (0 reads as 24) */
    int emin_b;            /* b's format minimum exponent when it differs from a's (0: same) */
} fd_tc_params;
#define FD_TC_MAX_TERMS 64

/* |x| = m * 2^(e - 23), 0 < m < 2^24, e >= emin_in. x finite and non-zero. */
static void fd_split(float x, int emin_in, uint64_t *m, int *e)
{
    uint32_t u = fd_f32_bits(x) & 0x7fffffffu;
    uint32_t be = u >> 23;
    uint64_t mm = u & 0x7fffffu;
    int ee;
    if (be == 0) {
        ee = -126; /* binary32 subnormal: fraction at the minimum exponent */
    } else {
        mm |= 0x800000u;
        ee = (int)be - 127;
    }
    /* Below the input format's minimum exponent (fp16 subnormals): fixed exponent, smaller
     * significand. The shift is exact because the value is a multiple of the format's
     * subnormal unit. */
    if (ee < emin_in) {
        mm >>= (unsigned)(emin_in - ee);
        ee = emin_in;
    }
    *m = mm;
    *e = ee;
}

static float fd_nan32(void) { return fd_bits_f32(0x7fffffffu); }

/* Index of the highest set bit of s > 0 (s in [2^k, 2^(k+1))). */
static int fd_top_bit(uint64_t s)
{
#if defined(__GNUC__) || defined(__clang__)
    return 63 - __builtin_clzll(s);
#else
    int k = 0;
    while ((s >> (unsigned)k) > 1u) k++;
    return k;
#endif
}

/* The block's special values (a NaN, an Inf among the inputs or c): the result is NaN or
 * Inf as the header says. Called only when some input or c is not finite. */
static float fd_tc_block_special(const float *a, size_t sa, const float *b, size_t sb, int n, float c)
{
    int pos_inf = 0, neg_inf = 0;
    if (isnan(c)) return fd_nan32();
    if (isinf(c)) { if (c > 0.0f) pos_inf = 1; else neg_inf = 1; }
    for (int i = 0; i < n; i++) {
        float x = a[(size_t)i * sa], y = b[(size_t)i * sb];
        if (isnan(x) || isnan(y)) return fd_nan32();
        int sgn = signbit(x) ? 1 : 0;
        if (signbit(y)) sgn ^= 1;
        if (isinf(x) || isinf(y)) {
            if (fd_f32_bits(x) << 1 == 0 || fd_f32_bits(y) << 1 == 0) return fd_nan32();
            if (sgn) neg_inf = 1; else pos_inf = 1;
        }
    }
    if (pos_inf && neg_inf) return fd_nan32();
    return fd_bits_f32(neg_inf ? 0xff800000u : 0x7f800000u);
}

/* The block FMA with explicit input minimum exponent and model parameters. One pass over
 * the terms splits them (fd_split's arithmetic, inline) and finds the alignment exponent;
 * a second shifts and adds. This is the hot loop of every CPU replay (a TC16 block per 16
 * terms of every dot product), hence written for speed; its results are fixed by
 * tests/data/tensor-core-h100 and the FP8 data (tests/test_accum.c, test_fp8.c). */
static float fd_tc_block_model(const float *a, size_t sa, const float *b, size_t sb, int n,
                               float c, int emin_in, fd_tc_params prm)
{
    uint64_t pm[FD_TC_MAX_TERMS];
    int pe[FD_TC_MAX_TERMS], ps[FD_TC_MAX_TERMS]; /* value exponent, sign */
    const int emin_b = prm.emin_b ? prm.emin_b : emin_in;
    int np = 0;
    const int nall = n; /* the specials look at every term, the products at the first 64 */
    if (n > FD_TC_MAX_TERMS) n = FD_TC_MAX_TERMS;
    const uint32_t uc = fd_f32_bits(c);
    if ((uc & 0x7fffffffu) >= 0x7f800000u) return fd_tc_block_special(a, sa, b, sb, nall, c);
    for (int i = n; i < nall; i++)
        if (!isfinite(a[(size_t)i * sa]) || !isfinite(b[(size_t)i * sb]))
            return fd_tc_block_special(a, sa, b, sb, nall, c);

    /* Exact products, in [1, 4) * 2^46 at exponent e_a + e_b (step 1); the alignment
     * exponent (step 3) as they come. */
    int E = -133;
    for (int i = 0; i < n; i++) {
        const uint32_t ux = fd_f32_bits(a[(size_t)i * sa]), uy = fd_f32_bits(b[(size_t)i * sb]);
        const uint32_t ax = ux & 0x7fffffffu, ay = uy & 0x7fffffffu;
        if (ax >= 0x7f800000u || ay >= 0x7f800000u) return fd_tc_block_special(a, sa, b, sb, nall, c);
        if (ax == 0 || ay == 0) continue; /* zero products take no part */
        /* fd_split: |x| = m 2^(e - 23), a binary32 subnormal at -126, then below the
         * format's minimum exponent a smaller significand at that exponent (exact) */
        uint64_t mx = ax & 0x7fffffu, my = ay & 0x7fffffu;
        int ex = -126, ey = -126;
        if (ax >> 23) { mx |= 0x800000u; ex = (int)(ax >> 23) - 127; }
        if (ay >> 23) { my |= 0x800000u; ey = (int)(ay >> 23) - 127; }
        if (ex < emin_in) { mx >>= (unsigned)(emin_in - ex); ex = emin_in; }
        if (ey < emin_b) { my >>= (unsigned)(emin_b - ey); ey = emin_b; }
        pm[np] = mx * my;
        pe[np] = ex + ey;
        ps[np] = (int)((ux ^ uy) >> 31);
        /* Normalising a product in [2, 4) moves only its exponent for the alignment: the
         * halved significand keeps every bit (at most 21 fraction bits for fp16). */
        const int pa = pe[np] + (prm.normalise_products && pm[np] >= ((uint64_t)1 << 47) ? 1 : 0);
        if (pa > E) E = pa;
        np++;
    }

    int have_c = (uc << 1) != 0;
    uint64_t cm = 0;
    int ce = 0;
    if (have_c) fd_split(c, -126, &cm, &ce);
    if (np == 0 && !have_c) return 0.0f;
    if (have_c && ce > E) E = ce;

    /* Truncated terms in units of 2^(E - 23 - extra_bits) (step 4). A product is
     * m_a m_b * 2^(pe - 46): in those units m_a m_b * 2^(pe - 46 - E + 23 + extra), a right
     * shift by 23 - extra + (E - pe) >= 20 for extra <= 3. c is cm * 2^(ce - 23): a shift
     * by (E - ce) - extra, which may be a left shift by at most extra (cm < 2^24). */
    int64_t sum = 0;
    for (int i = 0; i < np; i++) {
        int sh = 23 - prm.extra_bits + (E - pe[i]);
        const int64_t t = sh >= 64 ? 0 : (int64_t)(pm[i] >> (unsigned)sh), neg = -(int64_t)ps[i];
        sum += (t ^ neg) - neg; /* -t when negative, without a branch on the (random) sign */
    }
    if (have_c) {
        int sh = (E - ce) - prm.extra_bits;
        uint64_t t;
        if (sh >= 64) t = 0u;
        else if (sh >= 0) t = cm >> (unsigned)sh;
        else t = cm << (unsigned)(-sh);
        sum += (uc >> 31) ? -(int64_t)t : (int64_t)t;
    }
    if (sum == 0) return 0.0f;

    /* Normalise and truncate to 24 bits (step 5). |sum| * 2^q with q the unit's exponent. */
    uint32_t sign = sum < 0 ? 0x80000000u : 0u;
    uint64_t s = sum < 0 ? (uint64_t)(-sum) : (uint64_t)sum;
    int q = E - 23 - prm.extra_bits;
    int k = fd_top_bit(s); /* s in [2^k, 2^(k+1)) */
    int ex = q + k;                      /* exponent of the result before truncation */
    const int ob = prm.out_bits > 0 && prm.out_bits < 24 ? prm.out_bits : 24;
    int u = ex - (ob - 1) < -149 ? -149 : ex - (ob - 1); /* exponent of the result's last bit kept */
    uint64_t m;
    if (u >= q) {
        int sh = u - q;
        m = sh >= 64 ? 0u : s >> (unsigned)sh;
    } else {
        m = s << (unsigned)(q - u); /* q - u <= 23 - k: m < 2^24 */
    }
    if (ob < 24) { /* back to binary32 units: 2^(ex - 23) when normal, 2^-149 when subnormal */
        if (ex >= -126) m <<= (unsigned)(24 - ob);
        else m <<= (unsigned)(u + 149);
    }
    if (m == 0) return fd_bits_f32(sign); /* truncated below the smallest subnormal */
    if (m < ((uint64_t)1 << 23)) return fd_bits_f32(sign | (uint32_t)m); /* subnormal */
    if (ex > 127) return fd_bits_f32(sign | 0x7f800000u);
    return fd_bits_f32(sign | ((uint32_t)(ex + 127) << 23) | ((uint32_t)m & 0x7fffffu));
}

/* Is x a bfloat16 value (at most 8 significant bits; every binary32 exponent is one)? */
static int fd_is_bf16(float x) { return (fd_f32_bits(x) & 0xffffu) == 0; }

/* The dtype-less entry points cannot tell an fp16 block from a bf16 block, which matters
 * only for inputs below 2^-14 (fp16 subnormals sit at exponent -14, bf16 values at their
 * own). They take a block as bf16 when every input in it is a bf16 value, else as fp16:
 * every bf16 value in [2^-17, 65504] is also an fp16 value, so the opposite guess would
 * misread bf16 blocks with small inputs, while an fp16 block passes for bf16 only when
 * all 32 inputs have at most 8 significant bits. The _dt entry points do not guess. */
static int fd_block_emin(const float *a, size_t sa, const float *b, size_t sb, int n)
{
    for (int i = 0; i < n; i++)
        if (!fd_is_bf16(a[(size_t)i * sa]) || !fd_is_bf16(b[(size_t)i * sb])) return -14;
    return -126;
}

static const fd_tc_params fd_tc_h100 = {2, 0, 24, 0};
#define FD_EMIN_GUESS 1 /* fd_dot_tc16: guess the input format per block */

float fd_tc16_block(const float *a, const float *b, float c)
{
    return fd_tc_block_model(a, 1, b, 1, 16, c, fd_block_emin(a, 1, b, 1, 16), fd_tc_h100);
}

/* With the input dtype given (FD_DT_FP16 or FD_DT_BF16): no guessing. Not yet declared
 * in fd_accum.h. */
float fd_tc16_block_dt(const float *a, const float *b, float c, fd_dtype t)
{
    return fd_tc_block_model(a, 1, b, 1, 16, c, fd_dtype_emin(t), fd_tc_h100);
}

static float fd_dot_tc16(const float *a, size_t sa, const float *b, size_t sb, int n, float c,
                         int emin_in)
{
    /* A short last block is the hardware block padded with zeros; zero products take no
     * part, so it is the model applied to the remaining terms. */
    for (int k = 0; k < n; k += 16) {
        int len = n - k < 16 ? n - k : 16;
        const float *ak = a + (size_t)k * sa, *bk = b + (size_t)k * sb;
        int e = emin_in != FD_EMIN_GUESS ? emin_in : fd_block_emin(ak, sa, bk, sb, len);
        c = fd_tc_block_model(ak, sa, bk, sb, len, c, e, fd_tc_h100);
    }
    return c;
}

float fd_dot_acc(fd_accum_model m, const float *a, size_t sa, const float *b, size_t sb, int n,
                 float c)
{
    if (m == FD_ACC_TC16) return fd_dot_tc16(a, sa, b, sb, n, c, FD_EMIN_GUESS);
    if (m == FD_ACC_TC_FP8) { /* no dtype given: e4m3 (use fd_dot_acc_dt) */
        const fd_tc_fp8_params prm = FD_TC_FP8_DEFAULT;
        return fd_dot_tc_fp8(&prm, a, sa, FD_DT_E4M3, b, sb, FD_DT_E4M3, n, c);
    }
    for (int i = 0; i < n; i++) c = fmaf(a[(size_t)i * sa], b[(size_t)i * sb], c);
    return c;
}

/* fd_dot_acc with the input dtype given; the SEQ model ignores it. Not yet declared in
 * fd_accum.h. */
float fd_dot_acc_dt(fd_accum_model m, const float *a, size_t sa, const float *b, size_t sb,
                    int n, float c, fd_dtype t)
{
    /* the tensor-core order of the inputs' format: tc16 and tc_fp8 both name it in case
     * files (the FP8 block model for FP8 inputs, TC16's for fp16 / bf16) */
    if (m != FD_ACC_SEQ && !fd_dtype_is_fp8(t)) return fd_dot_tc16(a, sa, b, sb, n, c, fd_dtype_emin(t));
    if (m != FD_ACC_SEQ) {
        const fd_tc_fp8_params prm = FD_TC_FP8_DEFAULT;
        return fd_dot_tc_fp8(&prm, a, sa, t, b, sb, t, n, c);
    }
    for (int i = 0; i < n; i++) c = fmaf(a[(size_t)i * sa], b[(size_t)i * sb], c);
    return c;
}

/* ---- FP8 (issue 15 item 4) ----
 * The FP8 block FMA reuses fd_tc_block_model: products of FP8 values are exact (at most
 * 4 x 4 significant bits) and the model's integer bounds hold for up to 64 terms (64
 * product terms below 2^(frac_bits + 2) units plus c below 2^(frac_bits + 1) stay below
 * 2^(frac_bits + 9) <= 2^41 for frac_bits <= 32). frac_bits = 23 + extra_bits; the
 * wgmma model's 13 is extra_bits = -10 (shifts of at least 33 for products, 10 for c). */
fd_tc_fp8_params fd_tc_fp8_default(void)
{
    const fd_tc_fp8_params d = FD_TC_FP8_DEFAULT;
    return d;
}

fd_tc_fp8_params fd_tc_fp8_wgmma(void)
{
    const fd_tc_fp8_params d = FD_TC_FP8_WGMMA_SM90;
    return d;
}

/* sm_90 mma.sync m16n8k32 (FD_TC_FP8_MMA_SM90): two 16-term sub-blocks of the
 * instruction's k indices, k mod 4 in {0, 1} first, then k mod 4 in {2, 3}, each the
 * block FMA with prm's bits, the first from +0 and the second from the first's result;
 * then c joins with one binary32 add, rounded to nearest even. Terms past n are zero
 * padding (no part in a block FMA). */
static float fd_tc_fp8_hmma_pairs(const fd_tc_params tp, const float *a, size_t sa, int emin_a, const float *b,
                                  size_t sb, int n, float c)
{
    float x[FD_TC_MAX_TERMS], y[FD_TC_MAX_TERMS];
    float t = 0.0f;
    for (int h = 0; h < 2; h++) {
        int m = 0;
        for (int i = 0; i < n && i < FD_TC_MAX_TERMS; i++)
            if (((i >> 1) & 1) == h) {
                x[m] = a[(size_t)i * sa];
                y[m] = b[(size_t)i * sb];
                m++;
            }
        t = fd_tc_block_model(x, 1, y, 1, m, t, emin_a, tp);
    }
    volatile float d = c + t; /* the fp32 add (FADD, RN); volatile: no contraction */
    return d;
}

float fd_tc_fp8_block(const fd_tc_fp8_params *prm, const float *a, size_t sa, fd_dtype ta, const float *b,
                      size_t sb, fd_dtype tb, int n, float c)
{
    fd_tc_params tp = {prm->frac_bits - 23, 0, prm->out_bits, fd_dtype_emin(tb)};
    if (prm->hmma_pairs) return fd_tc_fp8_hmma_pairs(tp, a, sa, fd_dtype_emin(ta), b, sb, n, c);
    return fd_tc_block_model(a, sa, b, sb, n, c, fd_dtype_emin(ta), tp);
}

float fd_dot_tc_fp8(const fd_tc_fp8_params *prm, const float *a, size_t sa, fd_dtype ta, const float *b,
                    size_t sb, fd_dtype tb, int n, float c)
{
    const int blk = prm->block >= 1 && prm->block <= FD_TC_MAX_TERMS ? prm->block : 32;
    float part = prm->promote > 0 ? 0.0f : c; /* the tensor core's accumulator */
    int since = 0;
    for (int k = 0; k < n; k += blk) {
        const int len = n - k < blk ? n - k : blk;
        part = fd_tc_fp8_block(prm, a + (size_t)k * sa, sa, ta, b + (size_t)k * sb, sb, tb, len, part);
        since += len;
        if (prm->promote > 0 && (since >= prm->promote || k + len >= n)) {
            c = c + part; /* the CUDA-core fp32 add, round to nearest */
            part = 0.0f;
            since = 0;
        }
    }
    return prm->promote > 0 ? c : part;
}
/* ---- end FP8 ---- */
