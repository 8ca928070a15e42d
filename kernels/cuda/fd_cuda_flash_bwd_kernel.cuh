/* fd_cuda_flash_bwd_kernel.cuh: the FlashAttention-2 style backward kernel (internal to
 * kernels/cuda), instantiated per dtype in fd_cuda_flash_bwd_f16.cu / _bf16.cu; the host
 * side and the small kernels (D', dQ sum, GQA sum) are in fd_cuda_flash_bwd.cu.
 * Numerics: kernels/common/fd_bwd.h's contract, step by step; design: docs/cuda.md
 * ("Backward kernel").
 *
 * One CTA (4 warps) owns key tile n (BC keys) of one (batch, query head): K_n and V_n sit
 * in shared memory; the query tiles m (BR = 64 rows) that see a key of tile n are visited
 * from the last to the first, Q_m and dO_m double buffered by cp.async. Per tile:
 *   S = Q K^T and dP = dO V^T (warp w: rows 16w..16w+15, mma chains over the head dim
 *   from 0, only the 16-chunks that hold real head-dim columns); P, dS elementwise in
 *   binary32 (contract step 3); Pv and dSr rounded to the dtype into shared memory, dSr
 *   also kept in registers; dQ partial = dSr K (warp: its 16 rows, A from registers;
 *   mma chain over the tile's keys from 0, only chunks holding real keys), added into
 *   dq_accum by 16-byte vector atomicAdds (four consecutive columns of a row per lane
 *   after a swap with the neighbouring lane) or stored likewise in the key tile's own
 *   buffer; one barrier; dV += Pv^T dO and dK += dSr^T Q (warp: two 16-key blocks and a
 *   slice of the head dim; mma chains over the tile's rows, ascending, only the
 *   16-chunks holding real rows). The next tile's opening barrier closes the tile. dK/dV
 *   stay in registers across query tiles; at the end dK * srp and dV * rp are written
 *   per query head in binary32 (the GQA sum is a later kernel).
 * Key tiles of 128 (the default for head dims 65..128) run flash_bwd_kernel8 below: 8
 * warps, the same per-element arithmetic, dQ's A operand read back from shared memory;
 * FD_BWD_VARIANT picks its FAST instantiation (new, default), the one before (old), or the
 * FAST one whose atomic-mode dQ partials of whole tiles go through shared memory and the
 * TMA unit's bulk reduction (cp.reduce.async.bulk ... .add.f32) instead of the lanes'
 * 16-byte atomics (bulk; not yet measured on the GPU). */
#ifndef FD_CUDA_FLASH_BWD_KERNEL_CUH
#define FD_CUDA_FLASH_BWD_KERNEL_CUH
#include "fd_cuda_flash_kernel.cuh"
#include "fd_bwd.h"
#include <type_traits>

namespace fd_flash {

struct BwdParams {
    const void *q, *k, *v, *dout;   /* dtype, [B][S][H(k)][dp] */
    const float *lse2, *dpre;       /* [B][H][Sq]: lse * log2(e), D' (fd_bwd.h steps 1, 2) */
    float *dq_acc;                  /* atomic: [B][Sq][H][dp]; deterministic: [ntn][B][Sq][H][dp] */
    float *dk_h, *dv_h;             /* [B][Sk][H][dp]: per query head dK * srp, dV * rp */
    void *dk_out, *dv_out;          /* one query head a key head: dK, dV in the dtype, [B][Sk][Hk][dp],
                                     * written by the main kernel (store_dkdv); null with GQA */
    int B, H, Hk, sq, sk, d, dp, h_per_kv;
    int mask;
    float scale_log2, srp, rp;
    int dropout;
    uint32_t thr;
    uint64_t seed, offset;
    int exp2_mode;
    int deterministic;
    int ntn; /* number of key tiles */
    /* Score modifiers (fd_bwd.h "Score modifiers"): mods = any of them is on */
    int mods;
    int win, wl, wr;           /* the window (fd_vis_range) */
    float cap_in;              /* softmax_scale / softcap, 0: no cap */
    const float *slope_raw;    /* [H] slope / scale_sm (binary32), nullptr: no ALiBi */
};

/* The main kernel's variant (FD_BWD_VARIANT): the kernel as measured up to 2026-12-03
 * (old), or with the bc = 128 kernel's fast elementwise step (new), or new with the atomic
 * mode's dQ partials of whole tiles added by bulk asynchronous reductions (bulk). Same
 * bits of every dQ partial, dK and dV; the atomic mode's order of additions into dq_acc
 * is nondeterministic in all three. */
enum { FD_BWD_OLD = 0, FD_BWD_NEW = 1, FD_BWD_BULK = 2 };

/* The epilogue's store of key row j's columns c, c + 1 (c even; row = ((b sk + j) H + h) dp):
 * dK * srp and dV * rp (step 5's dX_h). With GQA (P.dk_out null) in binary32 per query head
 * into dk_h / dv_h, which bwd_gqa_kernel sums over the group from 0.0f and rounds once. With
 * one query head a key head (P.dk_out set) that kernel's result is written here directly, in
 * the dtype: 0.0f + x (its sum over one head, which turns -0 into +0), rounded once, and
 * zeros past d, as it writes them: the same bits, and 2 x 4 bytes an element neither
 * written in binary32 nor read back (the whole dK / dV pass of bwd_gqa_kernel). */
template <typename T>
__device__ __forceinline__ void store_dkdv(const BwdParams &P, size_t row, int c, float k0, float k1, float v0,
                                           float v1)
{
    const float dk0 = __fmul_rn(k0, P.srp), dk1 = __fmul_rn(k1, P.srp);
    const float dv0 = __fmul_rn(v0, P.rp), dv1 = __fmul_rn(v1, P.rp);
    if (P.dk_out) {
        const bool in0 = c < P.d, in1 = c + 1 < P.d;
        *reinterpret_cast<uint32_t *>(static_cast<T *>(P.dk_out) + row + c) =
            DT<T>::pack(in0 ? __fadd_rn(0.0f, dk0) : 0.0f, in1 ? __fadd_rn(0.0f, dk1) : 0.0f);
        *reinterpret_cast<uint32_t *>(static_cast<T *>(P.dv_out) + row + c) =
            DT<T>::pack(in0 ? __fadd_rn(0.0f, dv0) : 0.0f, in1 ? __fadd_rn(0.0f, dv1) : 0.0f);
    } else {
        *reinterpret_cast<float2 *>(P.dk_h + row + c) = make_float2(dk0, dk1);
        *reinterpret_cast<float2 *>(P.dv_h + row + c) = make_float2(dv0, dv1);
    }
}

/* One element's score modifiers (mods problems): the softcap's tanh and FA2's dtanh
 * factor (1 - t^2) cap_in (one fmaf, one product), then the ALiBi bias; the visibility
 * from the window and the mask. The replay (fd_cpu_flash_bwd.c tile_pair) computes the
 * same operations in the same order. */
__device__ __forceinline__ float bwd_mods(const BwdParams &P, float sv, float sr, int i, int j, bool *vis,
                                          float *dth)
{
    if (P.cap_in != 0.0f) {
        const float tv = fd_tanh_portable(__fmul_rn(sv, P.cap_in));
        *dth = __fmul_rn(__fmaf_rn(-tv, tv, 1.0f), P.cap_in);
        sv = tv;
    }
    int lo, hi;
    fd_vis_range(P.mask, P.win, P.wl, P.wr, i, P.sq, P.sk, &lo, &hi);
    *vis = *vis && j >= lo && j <= hi;
    if (P.slope_raw && *vis) sv = __fmaf_rn(-sr, (float)fd_alibi_dist(i, j, P.sq, P.sk), sv);
    return sv;
}

/* fd_bwd_qtiles for key tile n; without a window (MODS false) in the closed form the
 * kernels had before the modifiers (the same tiles: the rows from the first that sees key
 * n * bc to the last, none when that row is past the end), which keeps their registers. */
template <bool MODS>
__device__ __forceinline__ void bwd_qtiles(const BwdParams &P, int br, int bc, int n, int *m0, int *m1)
{
    if constexpr (MODS) {
        fd_bwd_qtiles(P.mask, P.win, P.wl, P.wr, P.sq, P.sk, br, bc, n, m0, m1);
    } else {
        long r0 = 0;
        if (P.mask != FD_MASK_NONE) {
            r0 = (long)n * bc - (P.mask == FD_MASK_CAUSAL_BR ? (long)P.sk - P.sq : 0);
            if (r0 < 0) r0 = 0;
        }
        *m1 = (P.sq + br - 1) / br;
        *m0 = r0 >= P.sq ? *m1 : (int)(r0 / br);
    }
}

/* Four binary32 atomic adds, one per element (sm_90's vector atomicAdd is element-wise:
 * each element's add is atomic on its own, as four scalar atomicAdds). */
__device__ __forceinline__ void atomic_add4(float4 *p, float4 v)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(p, v);
#else
    float *f = reinterpret_cast<float *>(p);
    atomicAdd(f, v.x); atomicAdd(f + 1, v.y); atomicAdd(f + 2, v.z); atomicAdd(f + 3, v.w);
#endif
}

template <int D, int BC> struct BwdTraits {
    static constexpr int BR = 64, NW = 4, NT = 128;
    static constexpr int KB = BC / 16;           /* 16-key blocks of the tile */
    /* dK/dV: a warp owns KBW key blocks and a DW-column slice of the head dim, so that an
     * ldmatrix of dO / Q feeds KBW mmas (per 16 rows: 2 KBW + DW / 8 fragment loads for
     * KBW DW / 4 mmas; bc 64: 2 key groups x 2 slices, bc 32: 1 x 4). */
    static constexpr int KBW = 2;                /* key blocks per warp */
    static constexpr int KG = KB / KBW;          /* key groups */
    static constexpr int DS = NW / KG;           /* head-dim slices per key group */
    static constexpr int DW = D / DS;            /* head-dim columns a warp accumulates */
    static constexpr int NDW = DW / 8;           /* its n-atoms */
    static_assert(KB % KBW == 0 && KG * DS == NW, "warps must cover the key blocks");
    static_assert(DW % 16 == 0, "head-dim slice must be a multiple of 16");
    static constexpr size_t SMEM = (size_t)(2 * BC * D + 4 * BR * D + 2 * BR * BC) * 2;
    /* CTAs an SM should hold: 3 (12 warps, <= 168 registers a thread) where three CTAs'
     * shared memory fits (head dim <= 64), else 2 (what 255 registers allow). */
    static constexpr int MINB = D <= 64 ? 3 : 2;
};

/* MODS: the score modifiers' code is compiled in (the host launches MODS = true for a
 * window, softcap or ALiBi): the plain instantiation keeps its registers (measured with
 * ptxas, 2026-12-03: one variant for both spilled 20 bytes at d 64 and 4 at d 128). */
template <typename T, int D, int BC, bool MODS>
__global__ void __launch_bounds__(128, MODS ? 2 : BwdTraits<D, BC>::MINB) flash_bwd_kernel(const BwdParams P)
{
    using TR = BwdTraits<D, BC>;
    constexpr int BR = TR::BR;
    constexpr int NA = BC / 8;  /* n-atoms of S per warp */
    constexpr int ND = D / 8;   /* n-atoms of a dQ row */
    constexpr int NDW = TR::NDW;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T *sK = reinterpret_cast<T *>(smem_raw);
    T *sV = sK + BC * D;
    T *sQ = sV + BC * D;        /* 2 stages */
    T *sdO = sQ + 2 * BR * D;   /* 2 stages */
    T *sP = sdO + 2 * BR * D;   /* [BR][BC] swizzled: Pv (dtype, dropout-zeroed) */
    T *sdS = sP + BR * BC;      /* [BR][BC] swizzled: dSr */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3, mi8 = lane >> 3;
    const int n_block = blockIdx.x, bh = blockIdx.y;
    const int b = bh / P.H, h = bh % P.H, hk = h / P.h_per_kv;
    const int sq = P.sq, sk = P.sk;
    const int n0 = n_block * BC;
    const int vk = min(BC, sk - n0);                 /* real keys of the tile */
    const long diag = P.mask == FD_MASK_CAUSAL_BR ? (long)sk - sq : 0;

    const T *gQ = static_cast<const T *>(P.q) + (size_t)b * sq * P.H * P.dp;
    const T *gdO = static_cast<const T *>(P.dout) + (size_t)b * sq * P.H * P.dp;
    const T *gK = static_cast<const T *>(P.k) + (size_t)b * sk * P.Hk * P.dp;
    const T *gV = static_cast<const T *>(P.v) + (size_t)b * sk * P.Hk * P.dp;
    const float *lse2 = P.lse2 + (size_t)bh * sq;
    const float *dpre = P.dpre + (size_t)bh * sq;

    /* the query tiles that see a key of this tile (fd_bwd_qtiles, as the replay) */
    int m_lo, m_hi;
    bwd_qtiles<MODS>(P, BR, BC, n_block, &m_lo, &m_hi);
    const float sr = MODS && P.slope_raw ? P.slope_raw[h] : 0.0f;

    /* Warp's dK/dV slice: keys kb0*16 .. (kb0 + KBW)*16 - 1, head-dim columns dbase.. */
    constexpr int KBW = TR::KBW;
    const int kb0 = (warp % TR::KG) * KBW, dbase = (warp / TR::KG) * TR::DW;
    float acc_dk[KBW][NDW][4], acc_dv[KBW][NDW][4];
#pragma unroll
    for (int x = 0; x < KBW; x++)
#pragma unroll
        for (int a = 0; a < NDW; a++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc_dk[x][a][e] = acc_dv[x][a][e] = 0.0f;

    const int dch = (P.d + 15) / 16; /* 16-chunks of the head dim holding real columns */
    const float sl2 = P.scale_log2;
    const uint64_t rng_off = P.offset + ((uint64_t)b * P.H + h) * 32u + lane;

    if (m_lo < m_hi) {
        load_tile<T, D, BC, 128>(sK, gK, n0, sk, P.Hk, hk, P.dp, tid);
        load_tile<T, D, BC, 128>(sV, gV, n0, sk, P.Hk, hk, P.dp, tid);
        load_tile<T, D, BR, 128>(sQ, gQ, (m_hi - 1) * BR, sq, P.H, h, P.dp, tid);
        load_tile<T, D, BR, 128>(sdO, gdO, (m_hi - 1) * BR, sq, P.H, h, P.dp, tid);
        cp_async_commit();
    }
    int stage = 0;
    for (int m = m_hi - 1; m >= m_lo; m--, stage ^= 1) {
        const int m0 = m * BR;
        const int vr = min(BR, sq - m0); /* real rows of the tile */
        const int row_base = m0 + warp * 16;
        /* lse2 and D' of the warp's rows, loaded before the wait so that their latency
         * overlaps it and the MMAs below. */
        float l2[2], dd[2];
        bool rok[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = row_base + g + 8 * r;
            rok[r] = i < sq;
            l2[r] = rok[r] ? lse2[i] : INFINITY;
            dd[r] = rok[r] ? dpre[i] : 0.0f;
        }
        /* One barrier both publishes tile m (and, the first time, K_n, V_n) and closes the
         * previous tile: every warp is past its reads of the other stage and of sP/sdS, so
         * the prefetch below and this tile's sP/sdS stores may overwrite them. */
        cp_async_wait<0>();
        __syncthreads();
        if (m - 1 >= m_lo) {
            load_tile<T, D, BR, 128>(sQ + (stage ^ 1) * BR * D, gQ, (m - 1) * BR, sq, P.H, h, P.dp, tid);
            load_tile<T, D, BR, 128>(sdO + (stage ^ 1) * BR * D, gdO, (m - 1) * BR, sq, P.H, h, P.dp, tid);
            cp_async_commit();
        }
        /* The tile's work, compiled twice: FULL (every row, key and head-dim chunk real:
         * all tiles but the last query tile and the last key tile when sq, sk are not
         * multiples of the tile, or head_dim below the padded dim) has no data-dependent
         * exits in its unrolled loops, so the compiler may interleave loads and mma chains
         * freely; the general version skips the chunks with no real row / key / column.
         * Both run the same mma chains in the same order on the same operands. */
        auto tile = [&](auto full_tag) {
            constexpr bool FULL = decltype(full_tag)::value;
            const T *cQ = sQ + stage * BR * D;
            const T *cdO = sdO + stage * BR * D;

            /* S = Q K^T, dP = dO V^T: warp rows 16 warp .. +15, chains over the head dim. */
            float s[NA][4], dp[NA][4];
#pragma unroll
            for (int a = 0; a < NA; a++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[a][e] = dp[a][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                if (!FULL && kk >= dch) break;
                uint32_t aq[4], ao[4];
                const int row = warp * 16 + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
                ldsm_x4(aq, smem_u32(cQ + swz<D>(row, col)));
                ldsm_x4(ao, smem_u32(cdO + swz<D>(row, col)));
#pragma unroll
                for (int np = 0; np < NA / 2; np++) {
                    uint32_t bk[4], bv[4];
                    const int key = np * 16 + (mi8 >> 1) * 8 + (lane & 7), c2 = kk * 16 + (mi8 & 1) * 8;
                    ldsm_x4(bk, smem_u32(sK + swz<D>(key, c2)));
                    ldsm_x4(bv, smem_u32(sV + swz<D>(key, c2)));
                    DT<T>::mma(s[2 * np], aq, bk);
                    DT<T>::mma(s[2 * np + 1], aq, bk + 2);
                    DT<T>::mma(dp[2 * np], ao, bv);
                    DT<T>::mma(dp[2 * np + 1], ao, bv + 2);
                }
            }

            /* P, dS (binary32, contract step 3); Pv and dSr rounded to the dtype into shared
             * memory (the transposed A operands of dV and dK), dSr also kept in registers. */
            uint32_t keepbits[NA]; /* bit e of atom a: element kept by dropout */
#pragma unroll
            for (int a = 0; a < NA; a++) keepbits[a] = 0xfu;
            if (P.dropout) {
#pragma unroll
                for (int cb = 0; cb < BC / 32; cb++) {
                    const uint64_t sub = (uint64_t)(uint32_t)(row_base >> 4) |
                                         ((uint64_t)(uint32_t)((n0 + cb * 32) >> 5) << 32);
                    const fd_u32x4 rnd = fd_fa2_philox(P.seed, sub, rng_off);
#pragma unroll
                    for (int a4 = 0; a4 < 4; a4++) {
                        uint32_t kb4 = 0;
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            if (((rnd.v[a4] >> (8 * e)) & 0xffu) <= P.thr) kb4 |= 1u << e;
                        keepbits[cb * 4 + a4] = kb4;
                    }
                }
            }
            /* dsr[a][r]: the dtype pair (columns a*8 + 2t, +1) of row g + 8r: the same bits the
             * lane wrote to sdS, and in the accumulator layout an mma A fragment takes. */
            uint32_t dsr[NA][2];
#pragma unroll
            for (int a = 0; a < NA; a++) {
                float pv[4], ds[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1;
                    const int i = row_base + g + 8 * r, j = n0 + a * 8 + 2 * t + (e & 1);
                    const bool inr = rok[r] && j < sk;
                    bool vis = inr;
                    float sv = s[a][e], dth = 1.0f;
                    if constexpr (MODS) sv = bwd_mods(P, sv, sr, i, j, &vis, &dth);
                    else vis = vis && (P.mask == FD_MASK_NONE || (long)j <= (long)i + diag);
                    const bool kept = (keepbits[a] >> e) & 1u;
                    float pe = 0.0f;
                    if (vis && isfinite(l2[r])) pe = exp2_mode(P.exp2_mode, __fmaf_rn(sv, sl2, -l2[r]));
                    float dse = kept ? __fmul_rn(pe, __fsub_rn(dp[a][e], dd[r])) : __fmul_rn(pe, -dd[r]);
                    if (MODS && P.cap_in != 0.0f) dse = __fmul_rn(dse, dth);
                    if (!inr) dse = 0.0f;
                    pv[e] = kept ? pe : 0.0f;
                    ds[e] = dse;
                }
                dsr[a][0] = DT<T>::pack(ds[0], ds[1]);
                dsr[a][1] = DT<T>::pack(ds[2], ds[3]);
                const int rl = warp * 16 + g, cl = a * 8 + 2 * t;
                *reinterpret_cast<uint32_t *>(sP + swz<BC>(rl, cl)) = DT<T>::pack(pv[0], pv[1]);
                *reinterpret_cast<uint32_t *>(sP + swz<BC>(rl + 8, cl)) = DT<T>::pack(pv[2], pv[3]);
                *reinterpret_cast<uint32_t *>(sdS + swz<BC>(rl, cl)) = dsr[a][0];
                *reinterpret_cast<uint32_t *>(sdS + swz<BC>(rl + 8, cl)) = dsr[a][1];
            }

            /* dQ partial = dSr K: warp rows, chain over the tile's keys from 0. It needs only
             * the warp's own dSr (registers: for keys kk*16.., the A fragment {rows g, g+8} x
             * {columns 2t, 8+2t} is dsr[2kk][0], dsr[2kk][1], dsr[2kk+1][0], dsr[2kk+1][1],
             * what ldmatrix of sdS returned) and K_n, so it runs before the barrier. */
            {
                constexpr int KC = BC / 16;
                const int i0 = row_base + g, i1 = i0 + 8;
                float *base = P.dq_acc;
                if (P.deterministic) base += (size_t)n_block * P.B * sq * P.H * P.dp;
                float *q0 = base + (((size_t)b * sq + i0) * P.H + h) * P.dp;
                float *q1 = base + (((size_t)b * sq + i1) * P.H + h) * P.dp;
#pragma unroll
                for (int np = 0; np < ND / 2; np++) {
                    float c[2][4];
#pragma unroll
                    for (int e = 0; e < 4; e++) c[0][e] = c[1][e] = 0.0f;
#pragma unroll
                    for (int kk = 0; kk < KC; kk++) {
                        if (!FULL && kk * 16 >= vk) break;
                        const uint32_t ad[4] = {dsr[2 * kk][0], dsr[2 * kk][1], dsr[2 * kk + 1][0], dsr[2 * kk + 1][1]};
                        uint32_t bk[4];
                        const int key = kk * 16 + (mi8 & 1) * 8 + (lane & 7), col = np * 16 + (mi8 >> 1) * 8;
                        ldsm_x4_t(bk, smem_u32(sK + swz<D>(key, col)));
                        DT<T>::mma(c[0], ad, bk);
                        DT<T>::mma(c[1], ad, bk + 2);
                    }
                    /* Lanes t and t ^ 1 swap halves so that each holds four consecutive
                     * columns of one row (even t: row i0, odd t: row i1, columns from
                     * 2 (t & ~1)): one 16-byte store or vector atomicAdd per atom, each
                     * element still one binary32 add (the vector atom is element-wise). */
                    const bool odd = t & 1;
#pragma unroll
                    for (int x = 0; x < 2; x++) {
                        const float r0 = __shfl_xor_sync(0xffffffffu, odd ? c[x][0] : c[x][2], 1);
                        const float r1 = __shfl_xor_sync(0xffffffffu, odd ? c[x][1] : c[x][3], 1);
                        const float4 v = odd ? make_float4(r0, r1, c[x][2], c[x][3])
                                             : make_float4(c[x][0], c[x][1], r0, r1);
                        const int dcol = np * 16 + x * 8 + 2 * (t & ~1);
                        float4 *dst = reinterpret_cast<float4 *>((odd ? q1 : q0) + dcol);
                        if ((odd ? i1 : i0) < sq) {
                            if (P.deterministic) *dst = v;
                            else atomic_add4(dst, v);
                        }
                    }
                }
            }
            __syncthreads(); /* every warp's Pv and dSr are in sP / sdS */

            /* dV += Pv^T dO, dK += dSr^T Q: chains over the tile's rows, 16 at a time. */
#pragma unroll
            for (int kk = 0; kk < BR / 16; kk++) {
                if (!FULL && kk * 16 >= vr) break;
                uint32_t ap[KBW][4], as[KBW][4];
#pragma unroll
                for (int x = 0; x < KBW; x++) {
                    const int prow = kk * 16 + (mi8 >> 1) * 8 + (lane & 7), pcol = (kb0 + x) * 16 + (mi8 & 1) * 8;
                    ldsm_x4_t(ap[x], smem_u32(sP + swz<BC>(prow, pcol)));
                    ldsm_x4_t(as[x], smem_u32(sdS + swz<BC>(prow, pcol)));
                }
#pragma unroll
                for (int np = 0; np < NDW / 2; np++) {
                    uint32_t bo[4], bq[4];
                    const int row = kk * 16 + (mi8 & 1) * 8 + (lane & 7), col = dbase + np * 16 + (mi8 >> 1) * 8;
                    ldsm_x4_t(bo, smem_u32(cdO + swz<D>(row, col)));
                    ldsm_x4_t(bq, smem_u32(cQ + swz<D>(row, col)));
#pragma unroll
                    for (int x = 0; x < KBW; x++) {
                        DT<T>::mma(acc_dv[x][2 * np], ap[x], bo);
                        DT<T>::mma(acc_dv[x][2 * np + 1], ap[x], bo + 2);
                        DT<T>::mma(acc_dk[x][2 * np], as[x], bq);
                        DT<T>::mma(acc_dk[x][2 * np + 1], as[x], bq + 2);
                    }
                }
            }
        };
        if (vr == BR && vk == BC && dch * 16 == D) tile(std::true_type());
        else tile(std::false_type());
        /* no barrier here: the next tile's first barrier closes this one */
    }
    cp_async_wait<0>();

    /* Epilogue: per query head dK * srp, dV * rp (step 5's dX_h; store_dkdv). */
#pragma unroll
    for (int x = 0; x < KBW; x++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int j = n0 + (kb0 + x) * 16 + g + 8 * r;
        if (j >= sk) continue;
        const size_t row = (((size_t)b * sk + j) * P.H + h) * P.dp;
#pragma unroll
        for (int a = 0; a < NDW; a++)
            store_dkdv<T>(P, row, dbase + a * 8 + 2 * t, acc_dk[x][a][2 * r], acc_dk[x][a][2 * r + 1],
                          acc_dv[x][a][2 * r], acc_dv[x][a][2 * r + 1]);
    }
}

/* The 8-warp variant for key tiles of BC = 128 (fd_bwd_tile_default for 64 < d <= 128;
 * FA2's Flash_bwd_kernel_traits<128, 64, 128, 8, 2, 4, 2> layout): twice the keys per
 * CTA, so each Q_m / dO_m tile loaded feeds 128 keys and there are half as many dQ
 * partials. Per query tile:
 *   S = Q K^T, dP = dO V^T: warp (wm, wn) = (warp % 2, warp / 2) takes rows 32 wm .. +31
 *   (two 16-row blocks) x keys 32 wn .. +31 (four n-atoms), mma chains over the head dim
 *   as in flash_bwd_kernel; P, dS elementwise, Pv and dSr rounded into sP / sdS; barrier;
 *   dQ partial = dSr K: warp takes QMB 16-row blocks x QNA n-atoms of the head dim, A by
 *   ldmatrix of sdS (the same bits the S/dP warps packed), chain over the tile's 128 keys
 *   from 0 (only chunks holding real keys); 16-byte atomics / stores as above;
 *   dV += Pv^T dO, dK += dSr^T Q: warp takes two 16-key blocks x D / 2 columns, as above.
 * Every output element sees the same mma operands, chain order and elementwise math as
 * in flash_bwd_kernel with bc = 128 (which is what the replay computes). */
template <int D> struct BwdTraits8 {
    static constexpr int BR = 64, BC = 128, NW = 8, NT = 256;
    static constexpr int SMB = 2, SNA = 4;       /* S/dP: 2 row blocks x 4 key atoms a warp */
    static constexpr int QN = (D / 4) % 16 == 0 ? 4 : 2;  /* dQ: warps along the head dim */
    static constexpr int QM = NW / QN;           /* dQ: warps along the rows */
    static constexpr int QMB = BR / 16 / QM;     /* dQ: 16-row blocks a warp */
    static constexpr int QNA = D / QN / 8;       /* dQ: n-atoms a warp */
    static constexpr int KBW = 2, KG = BC / 16 / KBW, DS = NW / KG, DW = D / DS, NDW = DW / 8;
    static_assert(QMB * QM * 16 == BR && QNA * QN * 8 == D && QNA % 2 == 0, "dQ warp layout");
    static_assert(KG * DS == NW && DW % 16 == 0, "dK/dV warp layout");
    static constexpr size_t SMEM = (size_t)(2 * BC * D + 4 * BR * D + 2 * BR * BC) * 2;
    static constexpr size_t SMEM_CAP = SMEM + (size_t)BR * BC * 4; /* + sT (softcap) */
    /* BULK: sdQ, the tile's dQ partial in binary32, BR rows of D floats with a row stride
     * of D + 8 floats (544 bytes at D = 128, 416 at D = 96: every row starts 16-byte
     * aligned, as cp.reduce.async.bulk requires, and the 32-byte pad puts the 16 lanes of
     * a half warp's float2 stores (rows g, g + 1, .., columns 2 t) in 32 distinct banks). */
    static constexpr int SDQ = D + 8;
    static constexpr size_t SMEM_BULK = SMEM + (size_t)BR * SDQ * 4; /* + sdQ (194 KB at D = 128) */
    static_assert((SDQ * 4) % 16 == 0 && SMEM % 16 == 0, "sdQ rows must be 16-byte aligned");
    static_assert(SMEM_BULK <= 227 * 1024, "BULK: shared memory over the 227 KB of an sm_90 CTA");
};

/* BULK (flash_bwd_kernel8): the TMA unit's bulk asynchronous reduction of `bytes` bytes of
 * binary32 from shared memory (this CTA's) into global memory, elementwise dst[k] += src[k]
 * (PTX ISA, cp.reduce.async.bulk: sm_90, PTX ISA 8.0; both addresses 16-byte aligned,
 * bytes a multiple of 16), in the thread's current bulk async-group (committed below).
 * The ISA: "The floating point operation .add rounds to the nearest even. The current
 * implementation of cp.reduce.async.bulk.add.f32 flushes subnormal inputs and results to
 * sign-preserving zero", i.e. the same rounding and subnormal handling as the 16-byte
 * atomics (SASS REDG.E.ADD.F32x4.FTZ.RN); each element's reduction is atomic on its own
 * (".relaxed.gpu" each), as atomicAdd's. The generic address of a cudaMalloc'd buffer is
 * converted to the global window first (an identity on sm_90, but the operand is .global).
 * Before sm_90 (no bulk copies): scalar atomicAdds from shared memory, the same sums. */
__device__ __forceinline__ void bulk_reduce_add_f32(float *gdst, const float *ssrc, uint32_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned long long g = (unsigned long long)__cvta_generic_to_global(gdst);
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;"
                 :: "l"(g), "r"(smem_u32(ssrc)), "r"(bytes) : "memory");
#else
    for (uint32_t k = 0; k < bytes / 4; k++) atomicAdd(gdst + k, ssrc[k]);
#endif
}
/* Close the thread's bulk async-group (the reductions issued since the last commit). */
__device__ __forceinline__ void bulk_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
#endif
}
/* Wait until the thread's bulk groups have read their shared-memory sources (READ: the
 * source may be overwritten afterwards) or have completed entirely, writes included
 * (!READ). With no group outstanding both return at once. */
template <bool READ> __device__ __forceinline__ void bulk_wait_all()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (READ) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
    else asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}
/* Make this thread's generic-proxy writes to shared memory visible to the async proxy
 * (the bulk reductions' reads), before the barrier that hands them over. */
__device__ __forceinline__ void fence_proxy_async_smem()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

/* load_tile's copies when every thread keeps one 16-byte chunk column in every step (NT a
 * multiple of the D / 8 chunks of a row) and the steps are whole multiples of 8 rows (the
 * swizzle's row & 7 then does not change from step to step): thread tid copies chunk
 * tid % CH of rows tid / CH + k RS, k = 0, 1, ..., exactly load_tile's (idx = tid + k NT),
 * to the same swizzled places, with the global and shared addresses stepped by a constant
 * instead of recomputed per copy. Rows at or past nrows are zero-filled from row 0's
 * address, as load_tile does. */
template <int D, int ROWS, int NT> __host__ __device__ constexpr bool load_tile_steps()
{
    return NT % (D / 8) == 0 && (NT / (D / 8)) % 8 == 0 && ROWS % (NT / (D / 8)) == 0;
}
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_tile_step(T *sm, const T *g, int r0, int nrows, int H, int hh, int dp, int tid)
{
    constexpr int CH = D / 8, RS = NT / CH; /* RS rows a step */
    static_assert(load_tile_steps<D, ROWS, NT>(), "load_tile_step: steps must keep the chunk column and swizzle");
    const int row = tid / CH, ch = tid % CH;
    const size_t gstep = (size_t)RS * H * dp;
    const T *src = g + ((size_t)(r0 + row) * H + hh) * dp + ch * 8;
    const T *src0 = g + (size_t)hh * dp + ch * 8;
    const uint32_t dst = smem_u32(sm + swz<D>(row, ch * 8));
#pragma unroll
    for (int k = 0; k < ROWS / RS; k++) {
        const bool ok = r0 + row + k * RS < nrows;
        cp_async16(dst + (uint32_t)(k * RS * D * (int)sizeof(T)), ok ? src + k * gstep : src0, ok ? 16 : 0);
    }
}

/* The grid order of flash_bwd_kernel8 (kernel and launch agree through this one rule):
 * FAST and a causal mask put the key tile in blockIdx.y (at most 65535 of them, else the
 * old order). Causal key tile n sees fewer query tiles the larger n is; blocks are
 * dispatched in linear order, x fastest, so this starts the longest CTAs first. */
template <bool FAST> __host__ __device__ __forceinline__ bool bwd_kfirst8(const BwdParams &P)
{
    return FAST && P.mask != FD_MASK_NONE && P.ntn <= 65535;
}

/* FAST (FD_BWD_VARIANT=new, docs/cuda.md "Backward pipelining"; MODS false only):
 *  - interior tiles whose every element is visible and kept (FULL, no dropout, no mask or
 *    a tile wholly on the visible side of the causal diagonal) take a straight-line P / dS
 *    step: no per-element index, mask, dropout-bit or range tests, the exp2 mode hoisted
 *    out of the element loop. Every value is the same binary32 expression as the general
 *    step's for such an element (vis, inr and kept are all true there);
 *  - FULL tiles store / add their dQ partials without the per-row test and with the dQ
 *    mode picked once (the same float4 to the same address);
 *  - causal problems launch the key tiles heaviest first (bwd_kfirst8);
 *  - the Q / dO prefetch steps its addresses (load_tile_step: load_tile's copies) where
 *    the head dim allows it (d = 128).
 * So the bits are the same; all other tiles and every mma chain run the code of
 * FAST = false unchanged.
 *
 * BULK (FD_BWD_VARIANT=bulk, the default; FAST and MODS false only): FAST,
 * except that in the atomic mode (!P.deterministic) a FULL tile's dQ partial (64 rows x
 * D binary32) is not added by the lanes' 16-byte atomics but staged in shared memory
 * (sdQ, after sdS) and added by 64 bulk asynchronous reductions of one row each
 * (cp.reduce.async.bulk .add.f32, the TMA unit, FA3's way on Hopper): an ncu profile on
 * the H200 (N 4096, d 128, bf16 causal) put ~10% of the warp stall samples on long
 * scoreboard waits for registers that were operands of the REDG.E.ADD.F32x4 atomics
 * (the LSU had not yet accepted them) and ~4% on the barrier after them. Per FULL tile:
 * every thread stores its accumulators (float2s, conflict-free), fences them to the
 * async proxy; one barrier; threads 0..63 issue row m0 + tid (< sq on FULL tiles) and
 * commit; the next query tile's opening barrier is preceded by a wait until those reads
 * of sdQ are done (wait_group.read), and the kernel's end by a wait for completion. (The
 * issue one barrier later, after the next tile's opening one, measured slower on the H200:
 * 230.7 against 239.1 TFLOP/s at N 4096, d 128, fp16; docs/benchmarks.md.)
 * Every dQ partial has the same bits (the same accumulators, the same RN/FTZ adds); the
 * order of the additions into dq_acc was nondeterministic and stays so. Tiles that are
 * not FULL and the deterministic mode run FAST's code.
 * Caveat (PTX memory model): where some tiles are not FULL (sq % 64, sk % 128 or the
 * head dim's last 16-chunk), rows of dq_acc receive both generic-proxy atomics (those
 * tiles) and async-proxy bulk reductions (the FULL tiles of other CTAs); each is atomic
 * per element, but the model calls operations "morally strong" only within one proxy.
 * Both are performed at L2 as reductions; gpu_test_bwd checks such a shape against new. */
template <typename T, int D, bool MODS, bool FAST = false, bool BULK = false>
__global__ void __launch_bounds__(256, 1) flash_bwd_kernel8(const BwdParams P)
{
    static_assert(!BULK || (FAST && !MODS), "BULK is a variant of FAST without score modifiers");
    using TR = BwdTraits8<D>;
    constexpr int BR = TR::BR, BC = TR::BC, NT = TR::NT;
    constexpr int SMB = TR::SMB, SNA = TR::SNA, QMB = TR::QMB, QNA = TR::QNA;
    constexpr int KBW = TR::KBW, NDW = TR::NDW;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T *sK = reinterpret_cast<T *>(smem_raw);
    T *sV = sK + BC * D;
    T *sQ = sV + BC * D;        /* 2 stages */
    T *sdO = sQ + 2 * BR * D;   /* 2 stages */
    T *sP = sdO + 2 * BR * D;   /* [BR][BC] swizzled: Pv */
    T *sdS = sP + BR * BC;      /* [BR][BC] swizzled: dSr */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    /* FAST with a causal mask: key tiles in the grid's y, (batch, head) in x, so the CTAs
     * are dispatched heaviest first (key tile 0 sees the most query tiles) and the last
     * wave holds the short ones (bwd_kfirst8). The work of each CTA is unchanged. */
    const bool kfirst = bwd_kfirst8<FAST>(P);
    const int n_block = kfirst ? blockIdx.y : blockIdx.x, bh = kfirst ? blockIdx.x : blockIdx.y;
    const int b = bh / P.H, h = bh % P.H, hk = h / P.h_per_kv;
    const int sq = P.sq, sk = P.sk;
    const int n0 = n_block * BC;
    const int vk = min(BC, sk - n0);
    const long diag = P.mask == FD_MASK_CAUSAL_BR ? (long)sk - sq : 0;

    const T *gQ = static_cast<const T *>(P.q) + (size_t)b * sq * P.H * P.dp;
    const T *gdO = static_cast<const T *>(P.dout) + (size_t)b * sq * P.H * P.dp;
    const T *gK = static_cast<const T *>(P.k) + (size_t)b * sk * P.Hk * P.dp;
    const T *gV = static_cast<const T *>(P.v) + (size_t)b * sk * P.Hk * P.dp;
    const float *lse2 = P.lse2 + (size_t)bh * sq;
    const float *dpre = P.dpre + (size_t)bh * sq;

    int m_lo, m_hi;
    bwd_qtiles<MODS>(P, BR, BC, n_block, &m_lo, &m_hi);
    /* softcap: each thread keeps its elements' dtanh factors between P and dS in its own
     * slots of sT (32 KB after sdS, allocated only for capped problems; slot
     * ((mb SNA + a) 4 + e) NT + tid: thread-private, so no barrier) */
    float *sT = reinterpret_cast<float *>(sdS + BR * BC);

    /* S/dP rows (the lse2 / D' loads); the dK/dV slice (the epilogue); the tile's work
     * recomputes these and the other warp offsets from an opaque copy of tid. */
    const int srow0 = (warp % 2) * 32;
    const int kb0 = (warp % TR::KG) * KBW, dbase = (warp / TR::KG) * TR::DW;
    float acc_dk[KBW][NDW][4], acc_dv[KBW][NDW][4];
#pragma unroll
    for (int x = 0; x < KBW; x++)
#pragma unroll
        for (int a = 0; a < NDW; a++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc_dk[x][a][e] = acc_dv[x][a][e] = 0.0f;

    const int dch = (P.d + 15) / 16;
    const float sl2 = P.scale_log2;
    const uint64_t rng_off = P.offset + ((uint64_t)b * P.H + h) * 32u + lane;

    if (m_lo < m_hi) {
        load_tile<T, D, BC, NT>(sK, gK, n0, sk, P.Hk, hk, P.dp, tid);
        load_tile<T, D, BC, NT>(sV, gV, n0, sk, P.Hk, hk, P.dp, tid);
        load_tile<T, D, BR, NT>(sQ, gQ, (m_hi - 1) * BR, sq, P.H, h, P.dp, tid);
        load_tile<T, D, BR, NT>(sdO, gdO, (m_hi - 1) * BR, sq, P.H, h, P.dp, tid);
        cp_async_commit();
    }
    int stage = 0;
    for (int m = m_hi - 1; m >= m_lo; m--, stage ^= 1) {
        const int m0 = m * BR;
        const int vr = min(BR, sq - m0);
        float l2[SMB][2], dd[SMB][2];
        bool rok[SMB][2];
#pragma unroll
        for (int mb = 0; mb < SMB; mb++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int i = m0 + srow0 + mb * 16 + g + 8 * r;
                rok[mb][r] = i < sq;
                l2[mb][r] = rok[mb][r] ? lse2[i] : INFINITY;
                dd[mb][r] = rok[mb][r] ? dpre[i] : 0.0f;
            }
        /* publishes tile m (and K_n, V_n) and closes the previous tile, as in flash_bwd_kernel */
        cp_async_wait<0>();
        /* BULK: the previous tile's bulk reductions (if it issued any) have read sdQ before
         * this barrier, after which this tile may write it again (no-op for the others) */
        if constexpr (BULK) bulk_wait_all<true>();
        __syncthreads();
        if (m - 1 >= m_lo) {
            if constexpr (FAST && load_tile_steps<D, BR, NT>()) {
                load_tile_step<T, D, BR, NT>(sQ + (stage ^ 1) * BR * D, gQ, (m - 1) * BR, sq, P.H, h, P.dp, tid);
                load_tile_step<T, D, BR, NT>(sdO + (stage ^ 1) * BR * D, gdO, (m - 1) * BR, sq, P.H, h, P.dp, tid);
            } else {
                load_tile<T, D, BR, NT>(sQ + (stage ^ 1) * BR * D, gQ, (m - 1) * BR, sq, P.H, h, P.dp, tid);
                load_tile<T, D, BR, NT>(sdO + (stage ^ 1) * BR * D, gdO, (m - 1) * BR, sq, P.H, h, P.dp, tid);
            }
            cp_async_commit();
        }
        auto tile = [&](auto full_tag) {
            constexpr bool FULL = decltype(full_tag)::value;
            /* The thread's index through an empty asm: the shared-memory offsets below are
             * computed from it per tile, near their use, instead of being hoisted out of the
             * query loop as loop invariants (dozens of registers at D = 128). */
            int tid_o = tid;
            asm volatile("" : "+r"(tid_o));
            const int warp = tid_o >> 5, lane = tid_o & 31;
            const int g = lane >> 2, t = lane & 3, mi8 = lane >> 3;
            const int srow0 = (warp % 2) * 32, skey0 = (warp / 2) * 32;
            const int qrow0 = (warp % TR::QM) * QMB * 16, qcol0 = (warp / TR::QM) * QNA * 8;
            const int kb0 = (warp % TR::KG) * KBW, dbase = (warp / TR::KG) * TR::DW;
            const T *cQ = sQ + stage * BR * D;
            const T *cdO = sdO + stage * BR * D;

            /* S = Q K^T (rows srow0 + 16 mb .., keys skey0 .., chain over the head dim from
             * 0, the same B fragments as flash_bwd_kernel offset by skey0), then P in place
             * of S, then dP = dO V^T likewise: only one of the two chains' fragments is live
             * at a time (FA2's order; the chains are independent, so the bits are the same). */
            float s[SMB][SNA][4];
#pragma unroll
            for (int mb = 0; mb < SMB; mb++)
#pragma unroll
                for (int a = 0; a < SNA; a++)
#pragma unroll
                    for (int e = 0; e < 4; e++) s[mb][a][e] = 0.0f;
            /* unrolled by 2 only (and dP's likewise): fully unrolled, ptxas spills at
             * D = 128 (172 bytes stored, 484 loaded, with the opaque tid 68 / 88). */
#pragma unroll 2
            for (int kk = 0; kk < D / 16; kk++) {
                if (!FULL && kk >= dch) break;
                uint32_t aq[SMB][4];
#pragma unroll
                for (int mb = 0; mb < SMB; mb++) {
                    const int row = srow0 + mb * 16 + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
                    ldsm_x4(aq[mb], smem_u32(cQ + swz<D>(row, col)));
                }
#pragma unroll
                for (int np = 0; np < SNA / 2; np++) {
                    uint32_t bk[4];
                    const int key = skey0 + np * 16 + (mi8 >> 1) * 8 + (lane & 7), c2 = kk * 16 + (mi8 & 1) * 8;
                    ldsm_x4(bk, smem_u32(sK + swz<D>(key, c2)));
#pragma unroll
                    for (int mb = 0; mb < SMB; mb++) {
                        DT<T>::mma(s[mb][2 * np], aq[mb], bk);
                        DT<T>::mma(s[mb][2 * np + 1], aq[mb], bk + 2);
                    }
                }
            }
            /* FAST: is every element of this tile visible and kept? (FULL: every row < sq and
             * key < sk; the causal test j <= i + diag holds for all when it holds for the
             * tile's last key and first row.) A CTA-uniform branch. */
            bool allvis = false;
            if constexpr (FAST && FULL && !MODS)
                allvis = !P.dropout && (P.mask == FD_MASK_NONE || (long)(n0 + BC - 1) <= (long)m0 + diag);
            /* P (flash_bwd_kernel's elementwise step on the warp's 2 x 16 rows and 32 keys),
             * kept in s; 0 where not visible or lse is not finite. */
            if (allvis) {
                /* every element visible: pe = exp2(fmaf(s, sl2, -lse2)) where lse2 is finite,
                 * else 0 (a select: the discarded exp2 of a non-finite argument is never
                 * used); the exp2 mode picked once, outside the loop */
                auto p_all = [&](auto port_tag) {
                    constexpr bool PORT = decltype(port_tag)::value;
#pragma unroll
                    for (int mb = 0; mb < SMB; mb++)
#pragma unroll
                        for (int r = 0; r < 2; r++) {
                            const bool lok = isfinite(l2[mb][r]);
                            const float nl2 = -l2[mb][r];
#pragma unroll
                            for (int a = 0; a < SNA; a++)
#pragma unroll
                                for (int c = 0; c < 2; c++) {
                                    const float x = __fmaf_rn(s[mb][a][2 * r + c], sl2, nl2);
                                    const float ex = PORT ? fd_exp2_portable(x) : exp2_hw(x);
                                    s[mb][a][2 * r + c] = lok ? ex : 0.0f;
                                }
                        }
                };
                if (P.exp2_mode) p_all(std::true_type());
                else p_all(std::false_type());
            } else {
#pragma unroll
                for (int mb = 0; mb < SMB; mb++)
#pragma unroll
                    for (int a = 0; a < SNA; a++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int r = e >> 1;
                            const int i = m0 + srow0 + mb * 16 + g + 8 * r, j = n0 + skey0 + a * 8 + 2 * t + (e & 1);
                            bool vis = rok[mb][r] && j < sk;
                            float sv = s[mb][a][e];
                            if constexpr (MODS) {
                                float dth = 1.0f;
                                sv = bwd_mods(P, sv, P.slope_raw ? P.slope_raw[h] : 0.0f, i, j, &vis, &dth);
                                if (P.cap_in != 0.0f) sT[((mb * SNA + a) * 4 + e) * NT + tid_o] = dth;
                            } else {
                                vis = vis && (P.mask == FD_MASK_NONE || (long)j <= (long)i + diag);
                            }
                            float pe = 0.0f;
                            if (vis && isfinite(l2[mb][r])) pe = exp2_mode(P.exp2_mode, __fmaf_rn(sv, sl2, -l2[mb][r]));
                            s[mb][a][e] = pe;
                        }
            }
            float dp[SMB][SNA][4];
#pragma unroll
            for (int mb = 0; mb < SMB; mb++)
#pragma unroll
                for (int a = 0; a < SNA; a++)
#pragma unroll
                    for (int e = 0; e < 4; e++) dp[mb][a][e] = 0.0f;
#pragma unroll 2
            for (int kk = 0; kk < D / 16; kk++) {
                if (!FULL && kk >= dch) break;
                uint32_t ao[SMB][4];
#pragma unroll
                for (int mb = 0; mb < SMB; mb++) {
                    const int row = srow0 + mb * 16 + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
                    ldsm_x4(ao[mb], smem_u32(cdO + swz<D>(row, col)));
                }
#pragma unroll
                for (int np = 0; np < SNA / 2; np++) {
                    uint32_t bv[4];
                    const int key = skey0 + np * 16 + (mi8 >> 1) * 8 + (lane & 7), c2 = kk * 16 + (mi8 & 1) * 8;
                    ldsm_x4(bv, smem_u32(sV + swz<D>(key, c2)));
#pragma unroll
                    for (int mb = 0; mb < SMB; mb++) {
                        DT<T>::mma(dp[mb][2 * np], ao[mb], bv);
                        DT<T>::mma(dp[mb][2 * np + 1], ao[mb], bv + 2);
                    }
                }
            }

            /* dS, Pv, dSr as in flash_bwd_kernel; dropout bits from one Philox call per
             * 16 x 32 block (the same subsequence / offset and lane mapping). */
            static_assert(SNA == 4, "one 32-key dropout block a warp");
            if (allvis) {
                /* every element visible and kept: dS = P * (dP - D') (the general step with
                 * kept and inr true), Pv = P */
#pragma unroll
                for (int mb = 0; mb < SMB; mb++)
#pragma unroll
                    for (int a = 0; a < SNA; a++) {
                        float ds[4];
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            ds[e] = __fmul_rn(s[mb][a][e], __fsub_rn(dp[mb][a][e], dd[mb][e >> 1]));
                        const int rl = srow0 + mb * 16 + g, cl = skey0 + a * 8 + 2 * t;
                        *reinterpret_cast<uint32_t *>(sP + swz<BC>(rl, cl)) = DT<T>::pack(s[mb][a][0], s[mb][a][1]);
                        *reinterpret_cast<uint32_t *>(sP + swz<BC>(rl + 8, cl)) = DT<T>::pack(s[mb][a][2], s[mb][a][3]);
                        *reinterpret_cast<uint32_t *>(sdS + swz<BC>(rl, cl)) = DT<T>::pack(ds[0], ds[1]);
                        *reinterpret_cast<uint32_t *>(sdS + swz<BC>(rl + 8, cl)) = DT<T>::pack(ds[2], ds[3]);
                    }
            } else {
                uint32_t keepbits[SMB][SNA];
#pragma unroll
                for (int mb = 0; mb < SMB; mb++)
#pragma unroll
                    for (int a = 0; a < SNA; a++) keepbits[mb][a] = 0xfu;
                if (P.dropout) {
#pragma unroll
                    for (int mb = 0; mb < SMB; mb++) {
                        const int rb = m0 + srow0 + mb * 16;
                        const uint64_t sub = (uint64_t)(uint32_t)(rb >> 4) |
                                             ((uint64_t)(uint32_t)((n0 + skey0) >> 5) << 32);
                        const fd_u32x4 rnd = fd_fa2_philox(P.seed, sub, rng_off);
#pragma unroll
                        for (int a4 = 0; a4 < 4; a4++) {
                            uint32_t kb4 = 0;
#pragma unroll
                            for (int e = 0; e < 4; e++)
                                if (((rnd.v[a4] >> (8 * e)) & 0xffu) <= P.thr) kb4 |= 1u << e;
                            keepbits[mb][a4] = kb4;
                        }
                    }
                }
#pragma unroll
                for (int mb = 0; mb < SMB; mb++)
#pragma unroll
                    for (int a = 0; a < SNA; a++) {
                        float pv[4], ds[4];
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int r = e >> 1;
                            const int j = n0 + skey0 + a * 8 + 2 * t + (e & 1);
                            const bool inr = rok[mb][r] && j < sk;
                            const bool kept = (keepbits[mb][a] >> e) & 1u;
                            const float pe = s[mb][a][e];
                            float dse = kept ? __fmul_rn(pe, __fsub_rn(dp[mb][a][e], dd[mb][r])) : __fmul_rn(pe, -dd[mb][r]);
                            if (MODS && P.cap_in != 0.0f) dse = __fmul_rn(dse, sT[((mb * SNA + a) * 4 + e) * NT + tid_o]);
                            if (!inr) dse = 0.0f;
                            pv[e] = kept ? pe : 0.0f;
                            ds[e] = dse;
                        }
                        const int rl = srow0 + mb * 16 + g, cl = skey0 + a * 8 + 2 * t;
                        *reinterpret_cast<uint32_t *>(sP + swz<BC>(rl, cl)) = DT<T>::pack(pv[0], pv[1]);
                        *reinterpret_cast<uint32_t *>(sP + swz<BC>(rl + 8, cl)) = DT<T>::pack(pv[2], pv[3]);
                        *reinterpret_cast<uint32_t *>(sdS + swz<BC>(rl, cl)) = DT<T>::pack(ds[0], ds[1]);
                        *reinterpret_cast<uint32_t *>(sdS + swz<BC>(rl + 8, cl)) = DT<T>::pack(ds[2], ds[3]);
                    }
            } /* !allvis */
            __syncthreads(); /* every warp's Pv and dSr are in sP / sdS */

            /* dQ partial = dSr K: rows qrow0 + 16 mb .., head-dim atoms qcol0 / 8 ..; chain
             * over the tile's keys from 0, 16 at a time, only chunks holding real keys. */
            {
                float c[QMB][QNA][4];
#pragma unroll
                for (int mb = 0; mb < QMB; mb++)
#pragma unroll
                    for (int a = 0; a < QNA; a++)
#pragma unroll
                        for (int e = 0; e < 4; e++) c[mb][a][e] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < BC / 16; kk++) {
                    if (!FULL && kk * 16 >= vk) break;
                    uint32_t ad[QMB][4];
#pragma unroll
                    for (int mb = 0; mb < QMB; mb++) {
                        const int row = qrow0 + mb * 16 + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
                        ldsm_x4(ad[mb], smem_u32(sdS + swz<BC>(row, col)));
                    }
#pragma unroll
                    for (int np = 0; np < QNA / 2; np++) {
                        uint32_t bk[4];
                        const int key = kk * 16 + (mi8 & 1) * 8 + (lane & 7), col = qcol0 + np * 16 + (mi8 >> 1) * 8;
                        ldsm_x4_t(bk, smem_u32(sK + swz<D>(key, col)));
#pragma unroll
                        for (int mb = 0; mb < QMB; mb++) {
                            DT<T>::mma(c[mb][2 * np], ad[mb], bk);
                            DT<T>::mma(c[mb][2 * np + 1], ad[mb], bk + 2);
                        }
                    }
                }
                float *base = P.dq_acc;
                if (P.deterministic) base += (size_t)n_block * P.B * sq * P.H * P.dp;
                const bool odd = t & 1;
                if constexpr (FAST && FULL) {
                    /* FAST, whole tile (every row < sq): one row pointer a lane (row i0 or
                     * i1 = i0 + 8, as the swap below gives it), no row test, the dQ mode
                     * picked once; the same float4 to the same address as the general code */
                    auto put = [&](auto det_tag) {
                        constexpr bool DET = decltype(det_tag)::value;
#pragma unroll
                        for (int mb = 0; mb < QMB; mb++) {
                            const int ir = m0 + qrow0 + mb * 16 + g + (odd ? 8 : 0);
                            float *qr = base + (((size_t)b * sq + ir) * P.H + h) * P.dp + qcol0 + 2 * (t & ~1);
#pragma unroll
                            for (int a = 0; a < QNA; a++) {
                                const float r0 = __shfl_xor_sync(0xffffffffu, odd ? c[mb][a][0] : c[mb][a][2], 1);
                                const float r1 = __shfl_xor_sync(0xffffffffu, odd ? c[mb][a][1] : c[mb][a][3], 1);
                                const float4 v = odd ? make_float4(r0, r1, c[mb][a][2], c[mb][a][3])
                                                     : make_float4(c[mb][a][0], c[mb][a][1], r0, r1);
                                float4 *dst = reinterpret_cast<float4 *>(qr + a * 8);
                                if constexpr (DET) *dst = v;
                                else atomic_add4(dst, v);
                            }
                        }
                    };
                    if constexpr (BULK) {
                        if (P.deterministic) {
                            put(std::true_type());
                        } else {
                            /* BULK, atomic mode: element (row qrow0 + 16 mb + g (+ 8 for
                             * e >= 2), column qcol0 + 8 a + 2 t (+ 1)) of the partial, the
                             * mapping the swap above starts from, as float2s into sdQ */
                            float *sdQ = reinterpret_cast<float *>(sdS + BR * BC);
#pragma unroll
                            for (int mb = 0; mb < QMB; mb++) {
                                float *s0 = sdQ + (qrow0 + mb * 16 + g) * TR::SDQ + qcol0 + 2 * t;
#pragma unroll
                                for (int a = 0; a < QNA; a++) {
                                    *reinterpret_cast<float2 *>(s0 + a * 8) = make_float2(c[mb][a][0], c[mb][a][1]);
                                    *reinterpret_cast<float2 *>(s0 + 8 * TR::SDQ + a * 8) =
                                        make_float2(c[mb][a][2], c[mb][a][3]);
                                }
                            }
                            fence_proxy_async_smem();
                            __syncthreads(); /* sdQ complete, seen by the async proxy */
                            /* one row a thread of the first BR = 64 (warps 0 and 1; the H200
                             * measured 239.1 TFLOP/s at N 4096, d 128, fp16 against 225.6 with
                             * the rows spread over lanes 0..7 of all 8 warps, docs/benchmarks.md):
                             * row m0 + rr (< sq: FULL), all D = P.dp columns (the dispatch
                             * instantiates D = dp), D * 4 bytes: 512 / 384, multiples of 16; the
                             * global row starts 16-byte aligned since dp * 4 is a multiple of 16
                             * and dq_acc is (cudaMalloc's 256-byte alignment + the 16 KB guard) */
                            if (tid_o < BR) {
                                const int rr = tid_o;
                                float *gr = base + (((size_t)b * sq + m0 + rr) * P.H + h) * P.dp;
                                bulk_reduce_add_f32(gr, sdQ + rr * TR::SDQ, (uint32_t)(D * 4));
                                bulk_commit();
                            }
                        }
                    } else {
                        if (P.deterministic) put(std::true_type());
                        else put(std::false_type());
                    }
                } else {
#pragma unroll
                    for (int mb = 0; mb < QMB; mb++) {
                        const int i0 = m0 + qrow0 + mb * 16 + g, i1 = i0 + 8;
                        float *q0 = base + (((size_t)b * sq + i0) * P.H + h) * P.dp;
                        float *q1 = base + (((size_t)b * sq + i1) * P.H + h) * P.dp;
                        /* lane pair swap: four consecutive columns of one row per lane */
#pragma unroll
                        for (int a = 0; a < QNA; a++) {
                            const float r0 = __shfl_xor_sync(0xffffffffu, odd ? c[mb][a][0] : c[mb][a][2], 1);
                            const float r1 = __shfl_xor_sync(0xffffffffu, odd ? c[mb][a][1] : c[mb][a][3], 1);
                            const float4 v = odd ? make_float4(r0, r1, c[mb][a][2], c[mb][a][3])
                                                 : make_float4(c[mb][a][0], c[mb][a][1], r0, r1);
                            const int dcol = qcol0 + a * 8 + 2 * (t & ~1);
                            float4 *dst = reinterpret_cast<float4 *>((odd ? q1 : q0) + dcol);
                            if ((odd ? i1 : i0) < sq) {
                                if (P.deterministic) *dst = v;
                                else atomic_add4(dst, v);
                            }
                        }
                    }
                }
            }

            /* dV += Pv^T dO, dK += dSr^T Q: as in flash_bwd_kernel. */
#pragma unroll
            for (int kk = 0; kk < BR / 16; kk++) {
                if (!FULL && kk * 16 >= vr) break;
                uint32_t ap[KBW][4], as[KBW][4];
#pragma unroll
                for (int x = 0; x < KBW; x++) {
                    const int prow = kk * 16 + (mi8 >> 1) * 8 + (lane & 7), pcol = (kb0 + x) * 16 + (mi8 & 1) * 8;
                    ldsm_x4_t(ap[x], smem_u32(sP + swz<BC>(prow, pcol)));
                    ldsm_x4_t(as[x], smem_u32(sdS + swz<BC>(prow, pcol)));
                }
#pragma unroll
                for (int np = 0; np < NDW / 2; np++) {
                    uint32_t bo[4], bq[4];
                    const int row = kk * 16 + (mi8 & 1) * 8 + (lane & 7), col = dbase + np * 16 + (mi8 >> 1) * 8;
                    ldsm_x4_t(bo, smem_u32(cdO + swz<D>(row, col)));
                    ldsm_x4_t(bq, smem_u32(cQ + swz<D>(row, col)));
#pragma unroll
                    for (int x = 0; x < KBW; x++) {
                        DT<T>::mma(acc_dv[x][2 * np], ap[x], bo);
                        DT<T>::mma(acc_dv[x][2 * np + 1], ap[x], bo + 2);
                        DT<T>::mma(acc_dk[x][2 * np], as[x], bq);
                        DT<T>::mma(acc_dk[x][2 * np + 1], as[x], bq + 2);
                    }
                }
            }
        };
        if (vr == BR && vk == BC && dch * 16 == D) tile(std::true_type());
        else tile(std::false_type());
    }
    cp_async_wait<0>();
    /* BULK: no bulk reduction in flight (sdQ read, dq_acc written) when the CTA retires */
    if constexpr (BULK) bulk_wait_all<false>();

#pragma unroll
    for (int x = 0; x < KBW; x++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int j = n0 + (kb0 + x) * 16 + g + 8 * r;
        if (j >= sk) continue;
        const size_t row = (((size_t)b * sk + j) * P.H + h) * P.dp;
#pragma unroll
        for (int a = 0; a < NDW; a++)
            store_dkdv<T>(P, row, dbase + a * 8 + 2 * t, acc_dk[x][a][2 * r], acc_dk[x][a][2 * r + 1],
                          acc_dv[x][a][2 * r], acc_dv[x][a][2 * r + 1]);
    }
}

template <typename T, int D, bool MODS, bool FAST, bool BULK = false>
int bwd_launch_variant8m(const BwdParams &P, cudaStream_t st, char *err, size_t errlen)
{
    auto kern = flash_bwd_kernel8<T, D, MODS, FAST, BULK>;
    /* d 128: 160 KB, d 96: 128 KB: one CTA an SM; with a softcap 32 KB more (sT); BULK
     * (never with a softcap: MODS) 34 / 26 KB more (sdQ) */
    const size_t smem = BULK ? BwdTraits8<D>::SMEM_BULK
                             : P.cap_in != 0.0f ? BwdTraits8<D>::SMEM_CAP : BwdTraits8<D>::SMEM;
    FD_CU(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    FD_CU(cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout,
                               (int)cudaSharedmemCarveoutMaxShared));
    const dim3 grid = bwd_kfirst8<FAST>(P) ? dim3((unsigned)(P.B * P.H), (unsigned)P.ntn)
                                            : dim3((unsigned)P.ntn, (unsigned)(P.B * P.H));
    kern<<<grid, BwdTraits8<D>::NT, smem, st>>>(P);
    FD_LAUNCH_CHECK();
    return 0;
}

/* variant: FD_BWD_OLD, FD_BWD_NEW or FD_BWD_BULK (fd_cuda_flash_bwd.cu reads
 * FD_BWD_VARIANT). The new and bulk variants' fast steps exist for problems without score
 * modifiers only; with them all variants run the same (old) kernel. */
template <typename T, int D>
int bwd_launch_variant8(const BwdParams &P, int variant, cudaStream_t st, char *err, size_t errlen)
{
    if (P.mods) return bwd_launch_variant8m<T, D, true, false>(P, st, err, errlen);
    if (variant == FD_BWD_BULK) return bwd_launch_variant8m<T, D, false, true, true>(P, st, err, errlen);
    return variant == FD_BWD_NEW ? bwd_launch_variant8m<T, D, false, true>(P, st, err, errlen)
                                 : bwd_launch_variant8m<T, D, false, false>(P, st, err, errlen);
}

template <typename T, int D, int BC, bool MODS>
int bwd_launch_variantm(const BwdParams &P, cudaStream_t st, char *err, size_t errlen)
{
    auto kern = flash_bwd_kernel<T, D, BC, MODS>;
    const size_t smem = BwdTraits<D, BC>::SMEM;
    FD_CU(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    /* All of L1 as shared memory (the kernel reads global memory through cp.async.cg, which
     * bypasses L1): two CTAs of up to 113 KB (d <= 128: 112 KB + 1 KB reserved each) fit
     * an SM's 228 KB, as their registers do (<= 255 x 128 threads each). A hint only. */
    FD_CU(cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout,
                               (int)cudaSharedmemCarveoutMaxShared));
    dim3 grid((unsigned)P.ntn, (unsigned)(P.B * P.H));
    kern<<<grid, 128, smem, st>>>(P);
    FD_LAUNCH_CHECK();
    return 0;
}

template <typename T, int D, int BC>
int bwd_launch_variant(const BwdParams &P, cudaStream_t st, char *err, size_t errlen)
{
    return P.mods ? bwd_launch_variantm<T, D, BC, true>(P, st, err, errlen)
                  : bwd_launch_variantm<T, D, BC, false>(P, st, err, errlen);
}

template <typename T>
int bwd_launch_t(const BwdParams &P, int bc, int variant, cudaStream_t st, char *err, size_t errlen)
{
    if (bc == 64) {
        switch (P.dp) {
        case 32: return bwd_launch_variant<T, 32, 64>(P, st, err, errlen);
        case 64: return bwd_launch_variant<T, 64, 64>(P, st, err, errlen);
        case 96: return bwd_launch_variant<T, 96, 64>(P, st, err, errlen);
        case 128: return bwd_launch_variant<T, 128, 64>(P, st, err, errlen);
        default: break;
        }
    } else if (bc == 128) {
        switch (P.dp) {
        case 96: return bwd_launch_variant8<T, 96>(P, variant, st, err, errlen);
        case 128: return bwd_launch_variant8<T, 128>(P, variant, st, err, errlen);
        default: break;
        }
    } else if (bc == 32) {
        switch (P.dp) {
        case 64: return bwd_launch_variant<T, 64, 32>(P, st, err, errlen);
        case 128: return bwd_launch_variant<T, 128, 32>(P, st, err, errlen);
        case 256: return bwd_launch_variant<T, 256, 32>(P, st, err, errlen);
        default: break;
        }
    }
    FD_FAIL("backward tile (64, %d) with padded head_dim %d not compiled: supported (br, bc) = "
            "(64, 64) for head_dim <= 128, (64, 128) for head_dim 65..128 (padded 96, 128), (64, 32) "
            "for head_dim 33..256 (padded 64, 128, 256)",
            bc, P.dp);
    return -1;
}

int bwd_launch_f16(const BwdParams &P, int bc, int variant, cudaStream_t st, char *err, size_t errlen);
int bwd_launch_bf16(const BwdParams &P, int bc, int variant, cudaStream_t st, char *err, size_t errlen);

} // namespace fd_flash
#endif
