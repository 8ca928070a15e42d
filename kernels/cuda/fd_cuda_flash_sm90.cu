/* fd_cuda_flash_sm90.cu: the Hopper forward kernel of backend cuda-flash-sm90 (issue 15,
 * item 2): wgmma with operands in shared memory, fp16/bf16, head dims 64, 128 and 256 (32 and
 * 96 padded into 64 and 128 with zero columns; 129..256 run as 256), no mask or causal
 * (top-left, bottom-right), GQA. Compiled for sm_90a only (wgmma is arch-specific):
 * library fd_cuda_sm90, linked into fd_cuda; run_flash (fd_cuda_flash.cu) calls launch_sm90
 * when fd_cuda_cfg.impl is FD_CUDA_IMPL_WGMMA.
 *
 * Numerics: exactly cuda-flash's fast path, hence fd_cpu_flash_forward's (fd_cuda.h), so the
 * replay reproduces it bit for bit with no new model:
 *  - wgmma m64nNk16 computes each output element as mma.sync m16n8k16 does (FD_ACC_TC16;
 *    measured on the H200 for chains of K 16..256, docs/evidence/h200-probe), and the 16-term
 *    blocks are chained in the same order from the same start: S = Q K^T over the head dim
 *    from c = +0 in 16-column blocks, O += P V over the tile's keys in 16-key blocks onto the
 *    rescaled O;
 *  - the accumulator fragment of wgmma m64nN is, for warp w of the warpgroup, mma.sync
 *    m16n8's fragment of rows 16 w..16 w + 15 repeated per 8 columns: each thread owns the
 *    same columns {8a + 2t, 8a + 2t + 1} of each key tile, so the per-thread row sums, the
 *    quad reduction and every binary32 operation of the softmax are cuda-flash's code;
 *  - key tiles from the last visible one down (FA2's order), of the replay's bc;
 *  - exp2: the hardware exp2 (ex2.approx.ftz.f32) as cuda-flash's fast path, or the portable
 *    exp2 (fd_cuda_cfg.exp2_mode = 1) whose bits the replay computes on the host.
 * Key tiles of 64 (the replay's default) or 128 (fd_cuda_cfg.bc; the replay takes the same bc;
 * head dim 256: 64 only).
 * Scheduling (none of it changes an operation or its order): consumer warpgroups of 64 query
 * rows each (three with key tile 64, the default; two with key tile 128; one at head dim 256;
 * FD_SM90_WG=2|3 picks for head dims up to 128); Q and three stages of K/V tiles in shared
 * memory (four with FD_SM90_PIPE=deep, S one tile further ahead); per tile, S_j = Q K_j is
 * issued together with O += P_{j-1} V_{j-1} (FlashAttention-3's intra-warpgroup overlap), the
 * softmax of S_j runs while the PV product is in flight, and O is rescaled by tile j's factor
 * once PV completes: the same sequence O *= f_{j-1}, O += P_{j-1} V_{j-1}, O *= f_j, ... as
 * cuda-flash.
 * Loads (FD_SM90_LOAD):
 *  - tma (the default): FlashAttention-3's warp specialisation. A producer warpgroup gives
 *    its registers to the consumers (setmaxnreg: 24 for it, 240 / 160 for two / three
 *    consumer warpgroups); one of its lanes issues Q's boxes, then each K/V tile's boxes
 *    (cp.async.bulk.tensor, 64 columns x the tile's rows of one head, rows past the sequence
 *    and columns past dp zero-filled) as soon as the stage's empty barrier says every
 *    consumer warp is done with the tile it held; the boxes complete the stage's full
 *    barrier (transaction bytes). The consumers wait on full barriers only: no CTA-wide
 *    barrier in the loop, so each warpgroup runs at its own pace and one's softmax overlaps
 *    another's products. Layout: the 128-byte swizzle TMA writes (64-column panels of
 *    128-byte rows, 16-byte chunk c of row r at chunk c ^ (r mod 8), atoms 1024-aligned),
 *    descriptor layout type 1 (desc_sw128).
 *  - cpasync: every thread's cp.async into the interleaved layout below, two CTA-wide
 *    barriers a tile (the kernel before the TMA work; the GPU test runs both).
 * Interleaved layout (cpasync; no swizzle, descriptor layout type 0): a [rows][D] tile is stored as
 * 8 x 8 core matrices of 128 contiguous bytes, the one of (rows 8r.., columns 8c..) at byte
 * 16 D r + 128 c. Q and K are K-major operands (LBO = 128, the next 8 columns; SBO = 16 D,
 * the next 8 rows), as the probe verified (fd_cuda_wgmma.cu); V is the transposed (MN-major)
 * B operand of O += P V: LBO = 16 D (the next 8 keys), SBO = 128 (the next 8 head-dim
 * columns), CUTLASS's reading for MN-major without swizzle (launch_sm90 can swap the two,
 * FD_SM90_VDESC=swap, for the GPU test's check of that reading). */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <type_traits>

#include "fd_cuda_flash_kernel.cuh"
#include "fd_wgmma_ops.cuh"

namespace fd_sm90 {

using fd_flash::DT;
using fd_flash::FlashParams;
using fd_flash::cp_async16;
using fd_flash::cp_async_commit;
using fd_flash::smem_u32;

/* Compile-time shape: key tile BC (the replay's bc: 64 or 128), NWG warpgroups of 64 query
 * rows each (2 or 3: scheduling only). */
/* K/V tiles resident: 3 (in use by S, by PV, and loading); DEEP (S one tile ahead): 4 */
constexpr int stages(bool deep) { return deep ? 4 : 3; }

/* TMA: 1024 bytes of slack to align the tiles to the 128-byte swizzle's 1024-byte atoms, and
 * the mbarriers (a K/V stage's full and empty, Q's) */
template <int D, int BC, int NWG, bool DEEP, bool TMA> constexpr size_t smem_bytes()
{
    return (size_t)(64 * NWG + 2 * stages(DEEP) * BC) * D * 2 + (TMA ? 1024 + 8 * (2 * stages(DEEP) + 1) : 0);
}
/* threads of a CTA: the consumer warpgroups, and with TMA a producer warpgroup (one lane
 * issues the loads; a whole warpgroup so that setmaxnreg can move its registers to the
 * consumers: 24 for it, consumer_regs for each consumer thread) */
constexpr int cta_threads(int nwg, bool tma) { return 128 * nwg + (tma ? 128 : 0); }
constexpr int producer_regs = 24;
constexpr int consumer_regs(int nwg)
{
    const int r = (65536 - 128 * producer_regs) / (128 * nwg) / 8 * 8;
    return r > 240 ? 240 : r;
}

/* Byte offset of the 16-byte chunk (row, ch) (columns 8 ch..8 ch + 7) of an interleaved
 * [rows][D] tile. */
template <int D> __device__ __forceinline__ uint32_t il_off(int row, int ch)
{
    return (uint32_t)((row >> 3) * (16 * D) + ch * 128 + (row & 7) * 16);
}

/* Rows [r0, r0 + ROWS) of a [.][H][dp] tensor (head hh) into an interleaved tile; rows at or
 * past nrows and columns at or past dp (<= D) zero-filled. Index order: row mod 8 fastest, then the chunk, then the 8-row
 * group, so a warp's 32 copies fill 512 contiguous bytes (no bank conflict) and read 64
 * contiguous bytes of 8 rows (whole 32-byte sectors). */
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_il(uint32_t sbase, const T *g, int r0, int nrows, int H, int hh, int dp, int tid)
{
    constexpr int CH = D / 8;
#pragma unroll 4
    for (int idx = tid; idx < ROWS * CH; idx += NT) {
        const int rl = idx & 7, ch = (idx >> 3) % CH, rg = (idx >> 3) / CH;
        const int row = rg * 8 + rl, gr = r0 + row;
        const bool ok = gr < nrows && ch * 8 < dp; /* columns past dp (32 or 96 in D = 64 or 128): zeros */
        const T *src = g + ((size_t)(ok ? gr : 0) * H + hh) * dp + (ok ? ch * 8 : 0);
        cp_async16(sbase + il_off<D>(row, ch), src, ok ? 16 : 0);
    }
}

/* Shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address, LBO
 * and SBO in 16-byte units, base offset 0, layout type 0 (no swizzle). */
__device__ __forceinline__ uint64_t desc(uint32_t saddr, uint32_t lbo, uint32_t sbo)
{
    return (uint64_t)((saddr >> 4) & 0x3fffu) | ((uint64_t)((lbo >> 4) & 0x3fffu) << 16) |
           ((uint64_t)((sbo >> 4) & 0x3fffu) << 32);
}

/* The same descriptor for the 128-byte swizzle (layout type 1, bits 62-63), the layout a TMA
 * box of 64 two-byte columns writes with CU_TENSOR_MAP_SWIZZLE_128B. K-major (Q, K): rows of
 * 128 bytes, 8-row groups SBO = 1024 apart, LBO unused; a 16-column step inside the 128-byte
 * row moves the start address by 32 bytes. MN-major (V): 8-key groups SBO = 1024 apart, LBO =
 * the next 64 head-dim columns' panel (PTX ISA, "Matrix Descriptor Format" and the canonical
 * layouts ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)) and ((8,m),(T,2k)):((8T,SBO),(1,T))). */
__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr, uint32_t lbo, uint32_t sbo)
{
    return desc(saddr, lbo, sbo) | (1ull << 62);
}

/* mbarrier and TMA (cp.async.bulk.tensor) wrappers (PTX ISA 8.0, sm_90) */
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/* until the phase of parity `par` of the barrier has completed */
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t par)
{
    uint32_t ok;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(ok)
                     : "r"(bar), "r"(par)
                     : "memory");
    } while (!ok);
}
/* box at coordinates (c0 column, c1 head, c2 row, c3 batch) of a 4-d tensor map into shared
 * memory; completes `bytes` of the barrier's transaction count when it lands */
__device__ __forceinline__ void tma_load4(uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2, int c3, uint32_t bar)
{
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
                 ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                 : "memory");
}

template <int N> __device__ __forceinline__ void fence_u32(uint32_t *r)
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i])::"memory");
}

/* FlashAttention-3's ping-pong between consumer warpgroups: named barrier 1 + w is warpgroup
 * w's turn to issue its GEMMs (256 threads: its own 128 wait with bar.sync, the previous
 * warpgroup's 128 arrive with bar.arrive once they have issued theirs; barrier 0 is
 * __syncthreads') */
__device__ __forceinline__ void turn_wait(int wg) { asm volatile("bar.sync %0, 256;\n" ::"r"(1 + wg) : "memory"); }
__device__ __forceinline__ void turn_pass(int next) { asm volatile("bar.arrive %0, 256;\n" ::"r"(1 + next) : "memory"); }

__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

/* PORT: fd_exp2_portable (host and device give the same bits: the replay's exp2) instead of
 * the hardware exp2 (ex2.approx.ftz.f32, cuda-flash's fast path). DEEP: S of tile j + 1 is
 * issued with PV of tile j - 1 before the softmax of tile j (two GEMMs in flight during the
 * softmax; one more S register set and a fourth K/V stage); the same operations in the same
 * order either way. */
template <typename T, int D, int BC, int NWG, bool DEEP, bool PORT, bool TMA>
__global__ void __launch_bounds__(cta_threads(NWG, TMA), 1)
    flash_fwd_sm90_kernel(const FlashParams P, uint32_t v_lbo, uint32_t v_sbo, const __grid_constant__ CUtensorMap tm_q,
                          const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v, int pingpong)
{
    constexpr int BR = 64 * NWG, NT = 128 * NWG, STG = stages(DEEP);
    constexpr int NA = BC / 8; /* 8-column atoms of S */
    constexpr int ND = D / 8;  /* 8-column atoms of O */
    constexpr int NP = D / 64; /* TMA: 64-column panels of a tile */
    constexpr uint32_t QB = BR * D * 2, KB = BC * D * 2;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    /* TMA: the tiles 1024-aligned (the swizzle atom), the barriers after them */
    const uint32_t sbase = TMA ? (smem_u32(smem_raw) + 1023u) & ~1023u : smem_u32(smem_raw);
    /* TMA barriers: full[s] (the tile's bytes landed), empty[s] (every consumer warp is done
     * with the tile in stage s), Q's */
    const uint32_t sQ = sbase, sK = sQ + QB, sV = sK + STG * KB, bars = sV + STG * KB, ebars = bars + 8 * STG,
                   qbar = ebars + 8 * STG;

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int m_block = blockIdx.x, bh = blockIdx.y;
    const int b = bh / P.H, h = bh % P.H, hk = h / P.h_per_kv;
    const int sq = P.sq, sk = P.sk, m0 = m_block * BR;
    const long diag = P.mask == FD_MASK_CAUSAL_BR ? (long)sk - sq : 0; /* j <= i + diag */
    /* rows of this thread: warp_row0 + g and + 8 (the warp's 16 rows of the warpgroup's 64) */
    const int warp_row0 = m0 + wg * 64 + warp * 16;

    /* K/V tiles [0, n_hi) up to the CTA's last row's right edge (FA2's n_block_max) */
    int n_hi = (sk + BC - 1) / BC;
    {
        const long last_row = (long)min(m0 + BR, sq) - 1;
        long z = (long)sk - 1;
        if (P.mask != FD_MASK_NONE) z = min(z, last_row + diag);
        n_hi = z < 0 ? 0 : min(n_hi, (int)(z / BC) + 1);
    }
    if (n_hi <= 0) { /* no visible key for any row of this CTA */
        if (tid >= NT) return; /* TMA: the producer warp */
        for (int r = 0; r < 2; r++) {
            const int i = warp_row0 + g + 8 * r;
            if (i >= sq) continue;
            T *o = static_cast<T *>(P.o) + (((size_t)b * sq + i) * P.H + h) * P.dp;
            for (int a = 0; a < ND && a * 8 < P.dp; a++) {
                o[a * 8 + 2 * t] = DT<T>::from(0.0f);
                o[a * 8 + 2 * t + 1] = DT<T>::from(0.0f);
            }
            if (t == 0) P.lse[((size_t)b * P.H + h) * sq + i] = INFINITY;
        }
        return;
    }

    const T *gQ = static_cast<const T *>(P.q) + (size_t)b * sq * P.H * P.dp;
    const T *gK = static_cast<const T *>(P.k) + (size_t)b * sk * P.Hk * P.dp;
    const T *gV = static_cast<const T *>(P.v) + (size_t)b * sk * P.Hk * P.dp;
    /* iteration it visits tile n_hi - 1 - it, resident in stage it % STG. TMA: thread 0
     * issues the boxes (64 columns x BC rows, rows past sk and columns past dp zero-filled,
     * as load_il fills them) and the stage's barrier counts their bytes. */
    auto load_kv = [&](int it) {
        const int nb = n_hi - 1 - it;
        const uint32_t st = (uint32_t)(it % STG) * KB;
        if constexpr (TMA) { /* the producer lane */
            const uint32_t bar = bars + 8u * (uint32_t)(it % STG);
            mbar_expect_tx(bar, 2 * KB);
#pragma unroll
            for (int p = 0; p < NP; p++) {
                tma_load4(sK + st + (uint32_t)p * (BC * 128), &tm_k, p * 64, hk, nb * BC, b, bar);
                tma_load4(sV + st + (uint32_t)p * (BC * 128), &tm_v, p * 64, hk, nb * BC, b, bar);
            }
        } else {
            load_il<T, D, BC, NT>(sK + st, gK, nb * BC, sk, P.Hk, hk, P.dp, tid);
            load_il<T, D, BC, NT>(sV + st, gV, nb * BC, sk, P.Hk, hk, P.dp, tid);
        }
    };
    /* TMA: until tile `it` has landed in its stage (its (it / STG)-th use: that phase's parity) */
    auto wait_kv = [&](int it) {
        if constexpr (TMA) mbar_wait(bars + 8u * (uint32_t)(it % STG), (uint32_t)(it / STG) & 1u);
    };
    if constexpr (TMA) {
        /* warp specialisation: the last warp produces (one lane issues Q, then every K/V tile
         * as soon as its stage is empty), the warpgroups consume; no CTA-wide barrier after
         * this one, so each warpgroup runs at its own pace */
        if (tid == 0) {
            for (int x = 0; x < STG; x++) {
                mbar_init(bars + 8u * (uint32_t)x, 1);
                mbar_init(ebars + 8u * (uint32_t)x, 4 * NWG);
            }
            mbar_init(qbar, 1);
            mbar_fence_init();
        }
        __syncthreads();
        if (tid >= NT) {
            if constexpr (NWG > 1) asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(producer_regs) : "memory");
            if (tid == NT) {
                mbar_expect_tx(qbar, QB);
#pragma unroll
                for (int p = 0; p < NP; p++) tma_load4(sQ + (uint32_t)p * (BR * 128), &tm_q, p * 64, h, m0, b, qbar);
                for (int it = 0; it < n_hi; it++) {
                    /* the stage's previous tile (it - STG) released: its (it / STG - 1)-th phase */
                    if (it >= STG) mbar_wait(ebars + 8u * (uint32_t)(it % STG), (uint32_t)(it / STG - 1) & 1u);
                    load_kv(it);
                }
            }
            return;
        }
        /* one consumer warpgroup (head dim 256) has its 255 registers without the move */
        if constexpr (NWG > 1) asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(consumer_regs(NWG)) : "memory");
        mbar_wait(qbar, 0);
    } else {
        load_il<T, D, BR, NT>(sQ, gQ, m0, sq, P.H, h, P.dp, tid);
        load_kv(0);
        cp_async_commit();
        /* tiles 1 .. STG - 2 ahead; always one group per tile, empty or not: the waits count on it */
#pragma unroll
        for (int x = 1; x <= STG - 2; x++) {
            if (x < n_hi) load_kv(x);
            cp_async_commit();
        }
    }

    const uint32_t qa = sQ + (uint32_t)wg * (64 * 16 * D / 8); /* the warpgroup's 64 rows */
    /* ping-pong (TMA, two or three consumer warpgroups, FD_SM90_SCHED): the warpgroups issue
     * their GEMMs in turn, 0, 1, (2,) 0, ..., each n_hi + 1 times (DEEP: n_hi + 2) with the
     * same n_hi (CTA-uniform), so one warpgroup's softmax runs under another's products; the
     * last warpgroup opens warpgroup 0's first turn and does not pass on its last one, so
     * every barrier phase completes. Scheduling only: no operation or order changes. */
    const bool pp = TMA && NWG > 1 && pingpong;
    if (pp && wg == NWG - 1) turn_pass(0);
    auto turn_begin = [&]() {
        if (pp) turn_wait(wg);
    };
    auto turn_end = [&](bool last) {
        if (pp && !(last && wg == NWG - 1)) turn_pass((wg + 1) % NWG);
    };
    constexpr uint32_t KLBO = 128, KSBO = 16 * D;

    float o[ND * 4], s[NA * 4], sn[DEEP ? NA * 4 : 1]; /* sn: the next tile's S (DEEP) */
    uint32_t pk[NA * 2]; /* P in the dtype: atom a, row g (2a) and row g + 8 (2a + 1) */
#pragma unroll
    for (int x = 0; x < ND * 4; x++) o[x] = 0.0f;
#pragma unroll
    for (int x = 0; x < NA * 2; x++) pk[x] = 0u;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}, sc[2] = {1.0f, 1.0f};
    const float sl2 = P.scale_log2;
    /* S = Q K^T of tile `it` into d: 16-column blocks of the head dim from c = +0 */
    auto issue_s = [&](float *d, int it) {
        const uint32_t kb = sK + (uint32_t)(it % STG) * KB;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            if constexpr (TMA) { /* panel kk / 4, 32 bytes a 16-column step inside it */
                const uint32_t qs = sQ + (uint32_t)(kk >> 2) * (BR * 128) + (uint32_t)wg * (64 * 128) + (kk & 3) * 32;
                const uint32_t ks = kb + (uint32_t)(kk >> 2) * (BC * 128) + (kk & 3) * 32;
                Wgmma<T, BC>::ss(d, desc_sw128(qs, 16, 1024), desc_sw128(ks, 16, 1024));
            } else {
                Wgmma<T, BC>::ss(d, desc(qa + kk * 256, KLBO, KSBO), desc(kb + kk * 256, KLBO, KSBO));
            }
        }
    };
    /* O += P V of tile `it`: 16-key blocks in key order */
    auto issue_pv = [&](int it) {
        const uint32_t pv = sV + (uint32_t)(it % STG) * KB;
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) {
            const uint32_t af[4] = {pk[4 * kk], pk[4 * kk + 1], pk[4 * kk + 2], pk[4 * kk + 3]};
            if constexpr (TMA) /* 16 keys = two 8-key groups of 1024 bytes; panels BC * 128 apart */
                Wgmma<T, D>::rs(o, af, desc_sw128(pv + kk * 2048, BC * 128, 1024));
            else
                Wgmma<T, D>::rs(o, af, desc(pv + kk * (32 * D), v_lbo, v_sbo));
        }
    };
    auto zero_s = [&](float *d) {
#pragma unroll
        for (int x = 0; x < NA * 4; x++) d[x] = 0.0f;
        fd_sm90::fence_regs<NA * 4>(d);
    };
    if constexpr (DEEP) { /* S of tile 0 ahead of the loop */
        if constexpr (TMA) {
            wait_kv(0);
        } else {
            cp_wait<STG - 2>();
            fence_proxy_async();
            __syncthreads();
        }
        zero_s(s);
        turn_begin();
        fd_sm90::wg_arrive();
        issue_s(s, 0);
        fd_sm90::wg_commit();
        turn_end(false);
        fd_sm90::wg_wait<0>();
        fd_sm90::fence_regs<NA * 4>(s);
    }

    for (int it = 0; it < n_hi; it++) {
        const int nb = n_hi - 1 - it;
        /* the tile S is issued for now (it; DEEP: it + 1) landed, the next may be in flight */
        if constexpr (TMA) {
            if (!DEEP || it + 1 < n_hi) wait_kv(DEEP ? it + 1 : it);
        } else {
            cp_wait<1>();
            fence_proxy_async();
            __syncthreads();
        }
        if constexpr (DEEP) { /* S of the next tile and PV of the previous, both in flight
                               * during this tile's softmax */
            zero_s(sn);
            fd_sm90::fence_regs<ND * 4>(o);
            turn_begin();
            fd_sm90::wg_arrive();
            if (it + 1 < n_hi) issue_s(sn, it + 1);
            if (it > 0) issue_pv(it - 1);
            fd_sm90::wg_commit();
            turn_end(false);
        } else { /* S of this tile, then PV of the previous one in flight during the softmax */
            zero_s(s);
            fd_sm90::fence_regs<ND * 4>(o);
            turn_begin();
            fd_sm90::wg_arrive();
            issue_s(s, it);
            fd_sm90::wg_commit();
            if (it > 0) issue_pv(it - 1);
            fd_sm90::wg_commit();
            turn_end(false);
            fd_sm90::wg_wait<1>(); /* S done; PV may run on */
            fd_sm90::fence_regs<NA * 4>(s);
        }

        /* Masking: keys beyond sk, the causal diagonal. */
        fd_flash::mask_tile<NA>(s, P, warp_row0, nb * BC, sk, diag, g, t);
        /* Online softmax, cuda-flash's (FA2's softmax_rescale_o), the O rescale deferred. */
#pragma unroll
        for (int r = 0; r < 2; r++) {
            sc[r] = fd_flash::softmax_row_max<NA>(s, r, m_run[r], l_run[r], sl2, PORT);
            fd_flash::softmax_row_exp<NA, false>(s, r, m_run[r], l_run[r], sl2, 0.0f, PORT);
        }

        fd_sm90::wg_wait<0>(); /* PV of the previous tile (and DEEP: S of the next) done */
        /* TMA: this warp is done with tile it - 1 (K long ago, V now): release its stage */
        if constexpr (TMA)
            if (it > 0 && lane == 0) mbar_arrive(ebars + 8u * (uint32_t)((it - 1) % STG));
        fd_sm90::fence_regs<ND * 4>(o);
        fence_u32<NA * 2>(pk);
        if constexpr (DEEP) fd_sm90::fence_regs<NA * 4>(sn);
        /* x * 1.0f == x: the rescale is skipped when no row of the warp moved its max */
        if (__any_sync(0xffffffffu, sc[0] != 1.0f || sc[1] != 1.0f)) {
#pragma unroll
            for (int a = 0; a < ND; a++) {
                o[4 * a] = __fmul_rn(o[4 * a], sc[0]);
                o[4 * a + 1] = __fmul_rn(o[4 * a + 1], sc[0]);
                o[4 * a + 2] = __fmul_rn(o[4 * a + 2], sc[1]);
                o[4 * a + 3] = __fmul_rn(o[4 * a + 3], sc[1]);
            }
        }
#pragma unroll
        for (int a = 0; a < NA; a++) {
            pk[2 * a] = DT<T>::pack(s[4 * a], s[4 * a + 1]);
            pk[2 * a + 1] = DT<T>::pack(s[4 * a + 2], s[4 * a + 3]);
        }
        if constexpr (DEEP) {
#pragma unroll
            for (int x = 0; x < NA * 4; x++) s[x] = sn[x];
        }
        /* every warpgroup is done with tile it - 1 (its K long ago, its V now): that stage
         * takes tile it + STG - 1 */
        if constexpr (!TMA) {
            __syncthreads();
            if (it + STG - 1 < n_hi) load_kv(it + STG - 1);
            cp_async_commit();
        }
    }
    /* O += P V of the last tile */
    fd_sm90::fence_regs<ND * 4>(o);
    turn_begin();
    fd_sm90::wg_arrive();
    issue_pv(n_hi - 1);
    fd_sm90::wg_commit();
    turn_end(true);
    fd_sm90::wg_wait<0>();
    fd_sm90::fence_regs<ND * 4>(o);
    fence_u32<NA * 2>(pk);
    if constexpr (!TMA) cp_wait<0>();

    /* normalize_softmax_lse: quad sum (l0 + l2) + (l1 + l3), one reciprocal (cuda-flash's) */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        bool empty;
        float inv;
        const float l = fd_flash::quad_row_sum(l_run[r], &empty, &inv);
        const int i = warp_row0 + g + 8 * r;
        if (i >= sq) continue;
        T *op = static_cast<T *>(P.o) + (((size_t)b * sq + i) * P.H + h) * P.dp;
#pragma unroll
        for (int a = 0; a < ND; a++) {
            if (a * 8 >= P.dp) break; /* the padding of dp 32 / 96 */
            const uint32_t w = DT<T>::pack(__fmul_rn(o[4 * a + 2 * r], inv), __fmul_rn(o[4 * a + 2 * r + 1], inv));
            *reinterpret_cast<uint32_t *>(op + a * 8 + 2 * t) = w;
        }
        if (t == 0)
            P.lse[((size_t)b * P.H + h) * sq + i] = empty ? INFINITY : __fmaf_rn(m_run[r], P.scale, fd_logf_portable(l));
    }
}

/* cuTensorMapEncodeTiled through the runtime (no link against the driver library) */
static PFN_cuTensorMapEncodeTiled_v12000 encode_fn(char *err, size_t errlen)
{
    static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
    if (fn) return fn;
    void *f = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !f) {
        snprintf(err, errlen, "cuda-flash-sm90: cuTensorMapEncodeTiled not available from the driver (%s)", cudaGetErrorString(e));
        return nullptr;
    }
    fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
    return fn;
}

/* The tensor map of a [B][S][H][dp] tensor of 2-byte elements: dims (column, head, row,
 * batch), boxes of 64 columns x `rows` rows of one head, 128-byte swizzle; out-of-range
 * rows and columns are filled with zeros */
static int make_map(CUtensorMap *m, const void *g, bool bf16, int B, int S, int H, int dp, int rows, char *err, size_t errlen)
{
    PFN_cuTensorMapEncodeTiled_v12000 enc = encode_fn(err, errlen);
    if (!enc) return -1;
    const cuuint64_t dim[4] = {(cuuint64_t)dp, (cuuint64_t)H, (cuuint64_t)S, (cuuint64_t)B};
    const cuuint64_t stride[3] = {(cuuint64_t)dp * 2, (cuuint64_t)H * dp * 2, (cuuint64_t)S * H * dp * 2};
    const cuuint32_t box[4] = {64, 1, (cuuint32_t)rows, 1}, estr[4] = {1, 1, 1, 1};
    const CUresult r = enc(m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, const_cast<void *>(g), dim,
                           stride, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        snprintf(err, errlen, "cuda-flash-sm90: cuTensorMapEncodeTiled failed (CUresult %d) for B %d S %d H %d dp %d, %d-row boxes",
                 (int)r, B, S, H, dp, rows);
        return -1;
    }
    return 0;
}

template <typename T, int D, int BC, int NWG, bool DEEP, bool TMA>
int launch_shape(const FlashParams &P, uint32_t vl, uint32_t vs, int pp, cudaStream_t st, char *err, size_t errlen)
{
    constexpr size_t sm = smem_bytes<D, BC, NWG, DEEP, TMA>();
    static_assert(sm <= 227 * 1024, "shared memory of the tile");
    auto kern = P.exp2_mode ? flash_fwd_sm90_kernel<T, D, BC, NWG, DEEP, true, TMA>
                            : flash_fwd_sm90_kernel<T, D, BC, NWG, DEEP, false, TMA>;
    FD_CU(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
    CUtensorMap tq, tk, tv;
    memset(&tq, 0, sizeof tq); memset(&tk, 0, sizeof tk); memset(&tv, 0, sizeof tv);
    if (TMA) {
        const bool bf = std::is_same<T, __nv_bfloat16>::value;
        if (make_map(&tq, P.q, bf, P.B, P.sq, P.H, P.dp, 64 * NWG, err, errlen) ||
            make_map(&tk, P.k, bf, P.B, P.sk, P.Hk, P.dp, BC, err, errlen) ||
            make_map(&tv, P.v, bf, P.B, P.sk, P.Hk, P.dp, BC, err, errlen))
            return -1;
    }
    dim3 grid((unsigned)((P.sq + 64 * NWG - 1) / (64 * NWG)), (unsigned)(P.B * P.H));
    kern<<<grid, cta_threads(NWG, TMA), sm, st>>>(P, vl, vs, tq, tk, tv, pp);
    FD_LAUNCH_CHECK();
    return 0;
}

} // namespace fd_sm90

namespace fd_flash {

int sm90_supported(char *err, size_t errlen)
{
    int dev = 0;
    cudaDeviceProp pr;
    FD_CU(cudaGetDevice(&dev));
    FD_CU(cudaGetDeviceProperties(&pr, dev));
    if (pr.major != 9 || pr.minor != 0)
        FD_FAIL("cuda-flash-sm90 needs an sm_90 GPU (wgmma; built for sm_90a), this one is sm_%d%d", pr.major, pr.minor);
    return 0;
}

int launch_sm90(const FlashParams &P, int is_bf16, int bc, cudaStream_t st, char *err, size_t errlen)
{
    /* V's descriptor: LBO = the 8-key step (16 dp bytes), SBO = the 8-column step (128);
     * FD_SM90_VDESC=swap swaps the two (the GPU test's check of CUTLASS's MN-major reading) */

    /* warpgroups per CTA: 3 for key tile 64 (faster on the H200: 263 vs 204 TFLOP/s at
     * N = 4096, d = 128, fp16; docs/benchmarks.md), 2 for key tile 128 (shared memory);
     * FD_SM90_WG=2 or 3 picks */
    const char *wgs = getenv("FD_SM90_WG");
    int nwg = bc == 64 ? 3 : 2;
    if (wgs && !strcmp(wgs, "2")) nwg = 2;
    if (wgs && !strcmp(wgs, "3")) nwg = 3;
    /* S one tile ahead: FD_SM90_PIPE=deep (key tile 64, two warpgroups: registers, shared memory) */
    const char *pipe = getenv("FD_SM90_PIPE");
    const bool deep = pipe && !strcmp(pipe, "deep");
    if (bc != 64 && bc != 128) FD_FAIL("cuda-flash-sm90: key tile %d unsupported (64 or 128)", bc);
    /* head dims 129..256 (dp 256): one consumer warpgroup, key tile 64 (shared memory: Q 32 KB
     * and three K/V stages of 64 KB), whatever FD_SM90_WG says */
    const int dk = P.dp <= 64 ? 64 : P.dp <= 128 ? 128 : 256;
    if (dk == 256) {
        if (bc != 64) FD_FAIL("cuda-flash-sm90: head_dim above 128 runs key tile 64 only (shared memory), not %d", bc);
        nwg = 1;
        wgs = "1";
    }
    if (nwg == 3 && bc != 64) FD_FAIL("cuda-flash-sm90: three warpgroups need the key tile 64");
    if (deep && dk == 256) FD_FAIL("cuda-flash-sm90: FD_SM90_PIPE=deep needs head_dim up to 128");
    if (deep && bc == 64 && !wgs) nwg = 2; /* deep: two warpgroups (registers) */
    if (deep && (nwg != 2 || bc != 64)) FD_FAIL("cuda-flash-sm90: FD_SM90_PIPE=deep needs two warpgroups and the key tile 64");
    /* dp 32 and 96 run in the D = 64 and 128 kernels, the extra columns zero: each extra
     * 16-term block adds exact zeros to S (c + 0 = c), and O's extra columns are not stored */
    /* loads: TMA boxes into 128-byte-swizzled tiles, completed on mbarriers, with a producer
     * warpgroup (the default; FD_SM90_LOAD=tma), or every thread's cp.async into the
     * interleaved layout with two CTA-wide barriers a tile (FD_SM90_LOAD=cpasync, the kernel
     * before 2026-12-03's TMA work: 264 against 531 TFLOP/s at N = 4096, d = 128, fp16) */
    const char *ld = getenv("FD_SM90_LOAD");
    if (ld && *ld && strcmp(ld, "tma") && strcmp(ld, "cpasync"))
        FD_FAIL("FD_SM90_LOAD=%s unknown: \"tma\" or \"cpasync\"", ld);
    const bool tma = !ld || strcmp(ld, "cpasync");
    /* TMA with two or three consumer warpgroups: FlashAttention-3's ping-pong, the warpgroups
     * issuing their GEMMs in turn (FD_SM90_SCHED=pingpong, the default), or each at its own
     * pace (free) */
    const char *sch = getenv("FD_SM90_SCHED");
    if (sch && *sch && strcmp(sch, "pingpong") && strcmp(sch, "free"))
        FD_FAIL("FD_SM90_SCHED=%s unknown: \"pingpong\" or \"free\"", sch);
    const int pp = !sch || strcmp(sch, "free");
    const char *sw = getenv("FD_SM90_VDESC");
    const bool swap = sw && !strcmp(sw, "swap");
    const uint32_t l = 16u * (uint32_t)dk, s = 128u; /* the kernel's D, not dp: the tile's row pitch */
    const uint32_t vl = swap ? s : l, vs = swap ? l : s;
    if (P.dp != 32 && P.dp != 64 && P.dp != 96 && P.dp != 128 && P.dp != 256)
        FD_FAIL("cuda-flash-sm90: padded head_dim %d unsupported", P.dp);
#define FD_SM90_CASE(TT, DD, BB, WW, DEEP)                                                       \
    if (dk == DD && bc == BB && nwg == WW && deep == DEEP)                                     \
        return tma ? fd_sm90::launch_shape<TT, DD, BB, WW, DEEP, true>(P, vl, vs, pp, st, err, errlen)  \
                   : fd_sm90::launch_shape<TT, DD, BB, WW, DEEP, false>(P, vl, vs, pp, st, err, errlen);
#define FD_SM90_T(TT)                                                                            \
    FD_SM90_CASE(TT, 64, 64, 2, false) FD_SM90_CASE(TT, 64, 64, 3, false)                        \
    FD_SM90_CASE(TT, 64, 128, 2, false) FD_SM90_CASE(TT, 64, 64, 2, true)                        \
    FD_SM90_CASE(TT, 128, 64, 2, false) FD_SM90_CASE(TT, 128, 64, 3, false)                      \
    FD_SM90_CASE(TT, 128, 128, 2, false) FD_SM90_CASE(TT, 128, 64, 2, true)                      \
    FD_SM90_CASE(TT, 256, 64, 1, false)
    if (is_bf16) {
        FD_SM90_T(__nv_bfloat16)
    } else {
        FD_SM90_T(__half)
    }
#undef FD_SM90_T
#undef FD_SM90_CASE
    FD_FAIL("internal: cuda-flash-sm90 shape d %d, bc %d, %d warpgroups", P.dp, bc, nwg);
    return -1;
}

} // namespace fd_flash
