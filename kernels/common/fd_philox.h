/* fd_philox.h: Philox4x32 and FlashAttention-2's dropout scheme, host and device.
 *
 * fd_philox4x32(ctr, key, rounds): Random123's Philox4x32 with the standard
 * multipliers and Weyl key increments; rounds = 10 is Philox4x32-10 (Random123's
 * known-answer vectors), rounds = 7 is FlashAttention-2's `flash::philox`
 * (csrc/flash_attn/src/philox.cuh: six bumped rounds and a seventh).
 *
 * FA2 dropout (dropout.h, flash_fwd_kernel.h): key = 64-bit seed; counter =
 * (offset lo, offset hi, subsequence lo, subsequence hi) with
 *   offset      = generator offset + (batch * nheads + head) * 32 + lane,
 *   subsequence = (row / 16) | (uint64)(col / 32) << 32  (global row and column),
 * one call giving 16 bytes to one lane of the warp that owns the 16x32 tile. Within
 * the tile, element (r, c) (r < 16, c < 32) belongs to the m16n8 accumulator of lane
 * (r % 8) * 4 + (c % 8) / 2, value v = (r / 8) * 2 + c % 2 of MMA n-atom a = c / 8,
 * and takes byte 4 * a + v of the little-endian uint4 (convert_layout_acc_dropout
 * groups two n-atoms per 8 values, the loop over j takes two such groups).
 * Keep when byte <= floor((1 - p) * 255), 1 - p rounded to float first (see
 * fd_fa2_threshold); kept values are scaled by the float 1.f / (1.f - p). Checked against
 * flash-attention 2.8.4 (commit 0251105a2fb19d2957484b7f023cd8c115286ced): see
 * docs/tensor-cores.md and tests/test_philox.c. */
#ifndef FD_PHILOX_H
#define FD_PHILOX_H
#include <stdint.h>
#include "fd_hd.h"

typedef struct { uint32_t v[4]; } fd_u32x4;

#define FD_PHILOX_M0 0xD2511F53u
#define FD_PHILOX_M1 0xCD9E8D57u
#define FD_PHILOX_W0 0x9E3779B9u
#define FD_PHILOX_W1 0xBB67AE85u

FD_HD fd_u32x4 fd_philox4x32(fd_u32x4 ctr, uint32_t k0, uint32_t k1, int rounds)
{
    for (int r = 0; r < rounds; r++) {
        if (r > 0) { k0 += FD_PHILOX_W0; k1 += FD_PHILOX_W1; }
        uint64_t p0 = (uint64_t)FD_PHILOX_M0 * ctr.v[0];
        uint64_t p1 = (uint64_t)FD_PHILOX_M1 * ctr.v[2];
        fd_u32x4 n;
        n.v[0] = (uint32_t)(p1 >> 32) ^ ctr.v[1] ^ k0;
        n.v[1] = (uint32_t)p1;
        n.v[2] = (uint32_t)(p0 >> 32) ^ ctr.v[3] ^ k1;
        n.v[3] = (uint32_t)p0;
        ctr = n;
    }
    return ctr;
}

/* FA2's flash::philox(seed, subsequence, offset). */
FD_HD fd_u32x4 fd_fa2_philox(uint64_t seed, uint64_t subsequence, uint64_t offset)
{
    fd_u32x4 c;
    c.v[0] = (uint32_t)offset; c.v[1] = (uint32_t)(offset >> 32);
    c.v[2] = (uint32_t)subsequence; c.v[3] = (uint32_t)(subsequence >> 32);
    return fd_philox4x32(c, (uint32_t)seed, (uint32_t)(seed >> 32), 7);
}

/* The byte threshold FA2 stores as p_dropout_in_uint8_t: floor((1 - p) * 255), with
 * 1 - p computed in float as flash_api.cpp does (p arrives as a float;
 * params.p_dropout = 1.f - p_dropout; uint8_t(std::floor(params.p_dropout * 255.0))).
 * Not the same as the double formula: p = 0.6 gives 101 here, 102 in double. The
 * product of a float and 255 is exact in double, and truncation is floor for t >= 0. */
FD_HD uint8_t fd_fa2_threshold(double p)
{
    float keep = 1.0f - (float)p;
    double t = (double)keep * 255.0;
    return (uint8_t)t;
}

/* The random byte FA2 compares for element (row, col) of (batch b, head h). */
FD_HD uint8_t fd_fa2_dropout_byte(uint64_t seed, uint64_t offset, int nheads, int b, int h,
                                  int row, int col)
{
    int r = row & 15, c = col & 31;
    uint32_t lane = (uint32_t)((r & 7) * 4 + (c & 7) / 2);
    uint32_t byte = (uint32_t)(4 * (c >> 3) + (r >> 3) * 2 + (c & 1));
    uint64_t off = offset + ((uint64_t)b * (uint64_t)nheads + (uint64_t)h) * 32u + lane;
    uint64_t sub = (uint64_t)(uint32_t)(row >> 4) | ((uint64_t)(uint32_t)(col >> 5) << 32);
    fd_u32x4 x = fd_fa2_philox(seed, sub, off);
    return (uint8_t)(x.v[byte >> 2] >> (8 * (byte & 3)));
}

FD_HD int fd_fa2_keep(uint64_t seed, uint64_t offset, uint8_t threshold, int nheads, int b,
                      int h, int row, int col)
{
    return fd_fa2_dropout_byte(seed, offset, nheads, b, h, row, col) <= threshold;
}
#endif
