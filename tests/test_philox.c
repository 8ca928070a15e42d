/* test_philox.c: Philox4x32 and FlashAttention-2's dropout mapping.
 *
 * 1. fd_philox4x32 against Random123's known-answer vectors (DEShawResearch/random123,
 *    tests/kat_vectors lines 24-29, commit 9545ff6413f258be2f04c1d319d99aaef7521150):
 *    philox4x32 with 7 and with 10 rounds.
 * 2. fd_fa2_philox against a line-by-line transcription of FA2's flash::philox
 *    (csrc/flash_attn/src/philox.cuh, flash-attention 2.8.4, commit
 *    0251105a2fb19d2957484b7f023cd8c115286ced), written here without fd_philox4x32.
 * 3. fd_fa2_dropout_byte / fd_fa2_keep against a simulation of the kernel's own loops:
 *    Dropout's constructor (dropout.h:18-24), the row/column block indices of
 *    flash_fwd_kernel.h:355-356, apply_dropout (dropout.h:26-91) with
 *    convert_layout_acc_dropout (utils.h:216-224) and the SM80 m16n8 accumulator layout,
 *    for several tile configurations, shapes, batches, heads, seeds and offsets.
 * 4. The threshold (flash_api.cpp:142-148) and the keep rate. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_dtype.h"
#include "fd_philox.h"

/* ---- 1. Random123 known answers: counter[4], key[2] -> output[4] ---------------------- */
typedef struct {
    int rounds;
    uint32_t ctr[4], key[2], out[4];
} kat;

static const kat kats[] = {
    {7, {0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u}, {0x00000000u, 0x00000000u},
     {0x5f6fb709u, 0x0d893f64u, 0x4f121f81u, 0x4f730a48u}},
    {7, {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu},
     {0x5207ddc2u, 0x45165e59u, 0x4d8ee751u, 0x8c52f662u}},
    {7, {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u},
     {0x4dfccabau, 0x190a87f0u, 0xc47362bau, 0xb6b5242au}},
    {10, {0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u}, {0x00000000u, 0x00000000u},
     {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
    {10, {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu},
     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
    {10, {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u},
     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
};

Test(philox, random123_known_answers)
{
    for (size_t t = 0; t < sizeof kats / sizeof kats[0]; t++) {
        fd_u32x4 c;
        memcpy(c.v, kats[t].ctr, sizeof c.v);
        fd_u32x4 r = fd_philox4x32(c, kats[t].key[0], kats[t].key[1], kats[t].rounds);
        for (int w = 0; w < 4; w++)
            cr_expect_eq(r.v[w], kats[t].out[w],
                         "philox4x32-%d vector %zu word %d: got %08x, expected %08x",
                         kats[t].rounds, t, w, (unsigned)r.v[w], (unsigned)kats[t].out[w]);
    }
}

/* ---- 2. FA2's flash::philox, transcribed ---------------------------------------------- */
typedef struct { uint32_t x, y; } u2;
typedef struct { uint32_t x, y, z, w; } u4;
typedef struct { unsigned long long x, y; } ull2;

static int host_is_little_endian(void)
{
    uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* mul.wide.u32 into a 64-bit register, then reinterpreted as uint2 (x = low word). */
static u2 mulhilo32(uint32_t a, uint32_t b)
{
    unsigned long long tmp = (unsigned long long)a * b;
    u2 res;
    memcpy(&res, &tmp, sizeof res);
    return res;
}

static u4 philox_single_round(u4 ctr, u2 key)
{
    const unsigned long kPhiloxSA = 0xD2511F53;
    const unsigned long kPhiloxSB = 0xCD9E8D57;
    u2 res0 = mulhilo32((uint32_t)kPhiloxSA, ctr.x);
    u2 res1 = mulhilo32((uint32_t)kPhiloxSB, ctr.z);
    u4 ret = {res1.y ^ ctr.y ^ key.x, res1.x, res0.y ^ ctr.w ^ key.y, res0.x};
    return ret;
}

static u4 fa2_philox(unsigned long long seed, unsigned long long subsequence,
                     unsigned long long offset)
{
    const unsigned long kPhilox10A = 0x9E3779B9;
    const unsigned long kPhilox10B = 0xBB67AE85;
    u2 key;
    memcpy(&key, &seed, sizeof key); /* reinterpret_cast<uint2&>(seed) */
    u4 counter;
    ull2 tmp = {offset, subsequence}; /* tmp->x = offset; tmp->y = subsequence */
    memcpy(&counter, &tmp, sizeof counter);
    for (int i = 0; i < 6; i++) {
        counter = philox_single_round(counter, key);
        key.x += (uint32_t)kPhilox10A;
        key.y += (uint32_t)kPhilox10B;
    }
    return philox_single_round(counter, key);
}

static uint64_t rng = 1;
static uint64_t next_u64(void) /* splitmix64 */
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

Test(philox, fa2_philox_equals_transcription)
{
    cr_assert(host_is_little_endian(), "the transcription reinterprets memory as the GPU does");
    /* The transcription reproduces Random123's 7-round vectors (counter = offset lo, hi,
     * subsequence lo, hi; key = seed lo, hi). */
    for (size_t t = 0; t < 3; t++) {
        const kat *k = &kats[t];
        u4 r = fa2_philox((unsigned long long)k->key[0] | (unsigned long long)k->key[1] << 32,
                          (unsigned long long)k->ctr[2] | (unsigned long long)k->ctr[3] << 32,
                          (unsigned long long)k->ctr[0] | (unsigned long long)k->ctr[1] << 32);
        cr_expect(r.x == k->out[0] && r.y == k->out[1] && r.z == k->out[2] && r.w == k->out[3],
                  "transcription vs Random123 philox4x32-7 vector %zu", t);
    }
    /* A few fixed FA2 draws, then many random ones. */
    const uint64_t fixed[][3] = {{0u, 0u, 0u},
                                 {42u, 0u, 0u},
                                 {42u, 1u, 0u},
                                 {42u, (uint64_t)1 << 32, 31u},
                                 {0x0123456789abcdefu, 0x0000000300000007u, 0x100000020u}};
    rng = 12345u;
    for (int it = 0; it < 100005; it++) {
        uint64_t seed, sub, off;
        if (it < 5) {
            seed = fixed[it][0];
            sub = fixed[it][1];
            off = fixed[it][2];
        } else {
            seed = next_u64();
            sub = next_u64() & 0x0000ffff0000ffffu;
            off = next_u64() >> (next_u64() & 63u);
        }
        fd_u32x4 a = fd_fa2_philox(seed, sub, off);
        u4 b = fa2_philox(seed, sub, off);
        if (a.v[0] != b.x || a.v[1] != b.y || a.v[2] != b.z || a.v[3] != b.w)
            cr_assert_fail("seed %016llx sub %016llx off %016llx: fd %08x %08x %08x %08x, "
                           "FA2 %08x %08x %08x %08x",
                           (unsigned long long)seed, (unsigned long long)sub,
                           (unsigned long long)off, (unsigned)a.v[0], (unsigned)a.v[1],
                           (unsigned)a.v[2], (unsigned)a.v[3], (unsigned)b.x, (unsigned)b.y,
                           (unsigned)b.z, (unsigned)b.w);
    }
}

/* ---- 3. The kernel's loops, simulated ---------------------------------------------------
 * For one (batch, head): every CTA m_block, every n_block, every thread tid. The S tile of
 * a CTA is kBlockM x kBlockN; the TiledMMA has kNWarps warps along M (kernel_traits.h:74-77),
 * so acc_s has shape (4, MMA_M, MMA_N) with MMA_M = kBlockM / (16 kNWarps), MMA_N =
 * kBlockN / 8, and accumulator (v, m, k) of lane l in warp w is element
 *   row = 16 w + 16 kNWarps m + l / 4 + 8 (v / 2),  col = 8 k + 2 (l % 4) + v % 2
 * (SM80_16x8_Row: thread (l % 4, l / 4) strides (32, 1), value (v % 2, v / 2) strides
 * (16, 8) in a column-major 16 x 8 tile). convert_layout_acc_dropout splits mode 2 into
 * (2, MMA_N / 2) and joins the 2 to mode 0: tensor(i, m, k2) = acc(i % 4, m, 2 k2 + i / 4).
 */
typedef struct {
    int kBlockM, kBlockN, kNWarps;
} cfg;

typedef struct {
    int sq, sk, B, H;
    uint64_t seed, offset;
    uint8_t thr;
    uint8_t *byte;  /* [B][H][sq][sk], the byte apply_dropout compares */
    uint8_t *keep;  /* the keep decision of the generic branch (byte <= threshold) */
    uint8_t *keep2; /* the keep decision of the f16x2 branch (set.le.u32.f16x2) */
    uint8_t *hits;  /* how many times an element was written */
} sim;

static size_t idx(const sim *s, int b, int h, int i, int j)
{
    return (((size_t)b * (size_t)s->H + (size_t)h) * (size_t)s->sq + (size_t)i) * (size_t)s->sk +
           (size_t)j;
}

/* set.le.u32.f16x2 on one half: both operands are f16 bit patterns 0..255 (subnormals,
 * which set without .ftz keeps). */
static int f16_le(uint16_t a, uint16_t b)
{
    return !(fd_f16_bits_to_f32(a) > fd_f16_bits_to_f32(b));
}

static void simulate(sim *s, cfg c)
{
    const int MMA_M = c.kBlockM / (16 * c.kNWarps), MMA_N = c.kBlockN / 8;
    const int n_m_blocks = (s->sq + c.kBlockM - 1) / c.kBlockM;
    const int n_n_blocks = (s->sk + c.kBlockN - 1) / c.kBlockN;
    cr_assert(MMA_M >= 1 && MMA_N % 4 == 0, "bad tile configuration");
    for (int bidb = 0; bidb < s->B; bidb++)
        for (int bidh = 0; bidh < s->H; bidh++)
            for (int m_block = 0; m_block < n_m_blocks; m_block++)
                for (int n_block = 0; n_block < n_n_blocks; n_block++)
                    for (int tid = 0; tid < 32 * c.kNWarps; tid++) {
                        /* Dropout dropout(seed, offset, p, bidb, bidh, tidx, params.h) */
                        unsigned long long offset =
                            s->offset + (unsigned long long)((bidb * s->H + bidh) * 32 + tid % 32);
                        int block_row_start = m_block * (c.kBlockM / 16) + tid / 32;
                        int block_col_start = n_block * (c.kBlockN / 32);
                        const int block_row_stride = c.kNWarps;
                        const int lane = tid % 32, warp = tid / 32;
                        for (int m = 0; m < MMA_M; ++m, block_row_start += block_row_stride) {
                            u2 rowcol = {(uint32_t)block_row_start, (uint32_t)block_col_start};
                            for (int n = 0; n < (MMA_N / 2) / 2; ++n, ++rowcol.y) {
                                unsigned long long sub;
                                memcpy(&sub, &rowcol, sizeof sub);
                                u4 rnd = fa2_philox(s->seed, sub, offset);
                                uint8_t rnd_8[16];
                                memcpy(rnd_8, &rnd, sizeof rnd_8);
                                uint16_t rnd_16[16];
                                for (int i = 0; i < 16; i++) rnd_16[i] = (uint16_t)rnd_8[i];
                                for (int j = 0; j < 2; j++)
                                    for (int i = 0; i < 8; i++) {
                                        /* tensor(i, m, n * 2 + j) */
                                        int v = i % 4, k = 2 * (n * 2 + j) + i / 4;
                                        int row = m_block * c.kBlockM + 16 * warp +
                                                  16 * c.kNWarps * m + lane / 4 + 8 * (v / 2);
                                        int col = n_block * c.kBlockN + 8 * k + 2 * (lane % 4) +
                                                  v % 2;
                                        /* f16x2 branch: tensor_uint32(i / 2) holds elements
                                         * i & ~1 (low half) and i | 1 (high half) and is
                                         * masked by rnd_32[j * 4 + i / 2]. */
                                        uint32_t r32;
                                        memcpy(&r32, &rnd_16[j * 8 + (i & ~1)], 4);
                                        uint16_t half =
                                            (uint16_t)(i & 1 ? r32 >> 16 : r32 & 0xffffu);
                                        if (row >= s->sq || col >= s->sk) continue;
                                        size_t e = idx(s, bidb, bidh, row, col);
                                        s->byte[e] = rnd_8[j * 8 + i];
                                        s->keep[e] = rnd_8[j * 8 + i] <= s->thr;
                                        s->keep2[e] = (uint8_t)f16_le(half, (uint16_t)s->thr);
                                        s->hits[e]++;
                                    }
                            }
                        }
                    }
}

static void check_mapping(int sq, int sk, int B, int H, uint64_t seed, uint64_t offset,
                          double p, cfg c)
{
    sim s = {sq, sk, B, H, seed, offset, fd_fa2_threshold(p), NULL, NULL, NULL, NULL};
    size_t n = (size_t)B * (size_t)H * (size_t)sq * (size_t)sk;
    s.byte = calloc(n, 1);
    s.keep = calloc(n, 1);
    s.keep2 = calloc(n, 1);
    s.hits = calloc(n, 1);
    cr_assert(s.byte && s.keep && s.keep2 && s.hits);
    simulate(&s, c);
    size_t bad = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < sq; i++)
                for (int j = 0; j < sk; j++) {
                    size_t e = idx(&s, b, h, i, j);
                    uint8_t want = fd_fa2_dropout_byte(seed, offset, H, b, h, i, j);
                    int k = fd_fa2_keep(seed, offset, s.thr, H, b, h, i, j);
                    if (s.hits[e] != 1 || s.byte[e] != want || s.keep[e] != k ||
                        s.keep2[e] != k) {
                        if (bad++ == 0)
                            cr_log_error("sq %d sk %d B %d H %d seed %llx offset %llx "
                                         "tile %dx%d/%d warps: (b %d, h %d, %d, %d): hits %d, "
                                         "kernel byte %u, fd byte %u, keep %d/%d/%d",
                                         sq, sk, B, H, (unsigned long long)seed,
                                         (unsigned long long)offset, c.kBlockM, c.kBlockN,
                                         c.kNWarps, b, h, i, j, s.hits[e], s.byte[e], want,
                                         s.keep[e], s.keep2[e], k);
                    }
                }
    cr_expect_eq(bad, 0, "%zu of %zu elements differ (sq %d sk %d B %d H %d)", bad, n, sq, sk,
                 B, H);
    free(s.byte);
    free(s.keep);
    free(s.keep2);
    free(s.hits);
}

Test(fa2_dropout, mapping_matches_kernel_loops)
{
    cr_assert(host_is_little_endian());
    /* The FA2 forward configurations use kBlockN in {32, 64, 128} and 4 or 8 warps; the
     * pattern must not depend on them (flash_fwd_kernel.h:1090-1096 says so). */
    const cfg cfgs[] = {{128, 64, 4}, {64, 128, 4}, {128, 32, 8}, {64, 64, 4}, {128, 128, 8}};
    const int shapes[][2] = {{16, 32}, {1, 1}, {113, 203}, {130, 70}, {257, 33}, {64, 128}};
    const uint64_t seeds[] = {0u, 42u, 0xdeadbeefcafef00du};
    const uint64_t offsets[] = {0u, 4096u, 0xffffffe0u, ((uint64_t)1 << 40) + 12345u};
    int run = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t ki = 0; ki < sizeof seeds / sizeof seeds[0]; ki++) {
            uint64_t off = offsets[(si + ki) % 4];
            cfg c = cfgs[(si + 2 * ki) % 5];
            int B = 1 + (int)((si + ki) % 3), H = 1 + (int)((si * 3 + ki) % 4);
            check_mapping(shapes[si][0], shapes[si][1], B, H, seeds[ki], off,
                          ki == 0 ? 0.17 : 0.5, c);
            run++;
        }
    /* One shape under every configuration. */
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++)
        check_mapping(200, 150, 2, 3, 7u, 1u << 20, 0.1, cfgs[ci]);
    cr_expect_eq(run, 18);
}

/* The documented formula itself, independently of the simulation: lane and byte of
 * element (r, c) inside its 16 x 32 tile. */
Test(fa2_dropout, tile_formula)
{
    const uint64_t seed = 99u, offset = 77u;
    for (int row = 0; row < 48; row++)
        for (int col = 0; col < 96; col++) {
            int r = row % 16, c = col % 32;
            unsigned lane = (unsigned)((r % 8) * 4 + (c % 8) / 2);
            unsigned v = (unsigned)((r / 8) * 2 + c % 2), atom = (unsigned)(c / 8);
            unsigned long long sub =
                (unsigned long long)(row / 16) | (unsigned long long)(col / 32) << 32;
            u4 x = fa2_philox(seed, sub, offset + (1u * 5u + 2u) * 32u + lane);
            uint8_t bytes[16];
            memcpy(bytes, &x, 16);
            cr_assert_eq(fd_fa2_dropout_byte(seed, offset, 5, 1, 2, row, col),
                         bytes[4 * atom + v], "(%d, %d)", row, col);
        }
}

/* ---- 4. Threshold and keep rate --------------------------------------------------------- */
Test(fa2_dropout, threshold)
{
    /* floor(float(1 - p) * 255) as flash_api.cpp:142-147 computes it. */
    cr_expect_eq(fd_fa2_threshold(0.0), 255);
    cr_expect_eq(fd_fa2_threshold(0.1), 229);
    cr_expect_eq(fd_fa2_threshold(0.17), 211);
    cr_expect_eq(fd_fa2_threshold(0.5), 127);
    cr_expect_eq(fd_fa2_threshold(0.9), 25);
    /* float(1.f - 0.6f) = 0x1.999998p-2 < 0.4, times 255 is 101.99999...: 101, where the
     * same formula in double gives 102. */
    cr_expect_eq(fd_fa2_threshold(0.6), 101);
    cr_expect_eq(fd_fa2_threshold(0.999), 0);
    /* Keep probability (threshold + 1) / 256: at p = 0.17 the drop rate is 0.171875. */
    const double ps[] = {0.0, 0.1, 0.17, 0.5, 0.9};
    const double keep[] = {1.0, 230.0 / 256, 212.0 / 256, 0.5, 26.0 / 256};
    for (int i = 0; i < 5; i++) {
        double q = ((double)fd_fa2_threshold(ps[i]) + 1.0) / 256.0;
        cr_expect(fabs(q - keep[i]) < 1e-15, "p = %g: keep probability %.10f, expected %.10f",
                  ps[i], q, keep[i]);
    }
    cr_expect(fabs((1.0 - (212.0 / 256)) - 0.171875) < 1e-15);
}

static int within_5_sigma(double kept, double n, double q)
{
    return fabs(kept - n * q) <= 5.0 * sqrt(n * q * (1.0 - q));
}

static void check_rate(double p, uint64_t seed)
{
    const int B = 2, H = 4, S = 1024;
    uint8_t thr = fd_fa2_threshold(p);
    double n = (double)B * H * S * S, kept = 0.0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < S; i++)
                for (int j = 0; j < S; j++) kept += fd_fa2_keep(seed, 0u, thr, H, b, h, i, j);
    double q = ((double)thr + 1.0) / 256.0;
    fprintf(stderr, "p = %g: kept %.0f of %.0f (%.6f); (threshold+1)/256 = %.6f, 1-p = %.6f\n",
            p, kept, n, kept / n, q, 1.0 - p);
    cr_expect(within_5_sigma(kept, n, q), "p = %g: keep rate %.6f not within 5 sigma of %.6f",
              p, kept / n, q);
    /* The sample tells (threshold + 1) / 256 from 1 - p: with 8.4M draws the two are more
     * than 10 sigma apart at these p, so this must come out false. */
    cr_expect(!within_5_sigma(kept, n, 1.0 - p),
              "p = %g: keep rate %.6f is also within 5 sigma of 1 - p = %.6f: the test "
              "cannot tell the two apart", p, kept / n, 1.0 - p);
}

Test(fa2_dropout, keep_rate_p017, .timeout = 120) { check_rate(0.17, 0x5eed5eedu); }
Test(fa2_dropout, keep_rate_p01, .timeout = 120) { check_rate(0.1, 31337u); }
