/* fd_cuda_flash_kernel.cuh: the templated FlashAttention-2 forward kernel, its launch
 * dispatch and device helpers (internal to kernels/cuda). Instantiated per dtype in
 * fd_cuda_flash_f16.cu and fd_cuda_flash_bf16.cu so that the two compile in parallel;
 * fd_cuda_flash.cu holds the host side. Numerics and orders: fd_cuda.h; design: docs/cuda.md. */
#ifndef FD_CUDA_FLASH_KERNEL_CUH
#define FD_CUDA_FLASH_KERNEL_CUH
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cuda.h"
#include "fd_cuda_util.h"
#include "fd_dtype.h"
#include "fd_exp2.h"
#include "fd_mods.h"
#include "fd_philox.h"

namespace fd_flash {

struct FlashParams {
    const void *q, *k, *v;       /* dtype, [B][S][H][dp] with dp the padded head dim */
    void *o;                     /* dtype [B][Sq][H][dp] */
    float *lse;                  /* [B][H][Sq] */
    float *o_accum, *lse_accum;  /* split-KV: [splits][B][H][Sq][dp], [splits][B][H][Sq] */
    void *dbg;                   /* dtype [B][H][Sq][Sk]: P, sign set where dropped; or null */
    int B, H, Hk, sq, sk, dp, h_per_kv;
    int mask;                    /* fd_mask_kind */
    float scale, scale_log2;
    int dropout;
    uint32_t thr;
    float rp;
    uint64_t seed, offset;
    int exp2_mode, p_fp32;
    int splits, tiles_per_split; /* splits == 0: plain forward */
    /* score modifiers (fd_mods.h): window (FA2 window_size, -1 unbounded), the folded
     * softcap factor softmax_scale / softcap (0: none), ALiBi slopes / scale_softmax per
     * head (device, or null); scale and scale_log2 above are scale_softmax's */
    int win, wl, wr;
    float cap_in;
    const float *slope_raw;
    /* variable-length batches (fd_problem's varlen): device cu_seqlens_q/k of B sequences
     * (null: off); Q, O and K, V packed [total][H][dp], LSE [H][total_q]. The tensor-core
     * kernel then runs a CTA per (q tile, head, sequence), its tiles from the sequence's
     * first query and key (FA2's varlen kernel), and returns at once past the sequence's
     * end; sq, sk above are the longest sequence's (the grid). */
    const int *cu_q, *cu_k;
    int total_q, nseq;
    /* paged KV cache (fd_problem's page_size; split-KV, GEN only): device block table
     * [B][pps] and cache_seqlens [B] (null: off); K and V are then the physical cache
     * [num_pages][page][Hk][dp] and key j of entry b is row bt[b][j / page] * page + j %
     * page; entry b has cache_len[b] keys, the masks aligned bottom-right to them. Each
     * entry's ceil(cache_len[b] / BC) tiles are split alike into `splits` chunks. */
    const int *bt, *cache_len;
    int page, pps;
};

template <typename T> struct DT;
template <> struct DT<__half> {
    static __device__ __forceinline__ uint32_t pack(float a, float b)
    {
        __half2 h = __floats2half2_rn(a, b); /* low half = a (lower column) */
        uint32_t u;
        memcpy(&u, &h, 4);
        return u;
    }
    static __device__ __forceinline__ __half from(float a) { return __float2half_rn(a); }
    static __device__ __forceinline__ float to(__half a) { return __half2float(a); }
    static __device__ __forceinline__ void mma(float *d, const uint32_t *a, const uint32_t *b)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
};
template <> struct DT<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float a, float b)
    {
        __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
        uint32_t u;
        memcpy(&u, &h, 4);
        return u;
    }
    static __device__ __forceinline__ __nv_bfloat16 from(float a) { return __float2bfloat16_rn(a); }
    static __device__ __forceinline__ float to(__nv_bfloat16 a) { return __bfloat162float(a); }
    static __device__ __forceinline__ void mma(float *d, const uint32_t *a, const uint32_t *b)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
};

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void ldsm_x4(uint32_t *r, uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
/* 16-byte async copy; src_bytes 0 zero-fills the destination (out-of-range rows). */
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* The hardware exp2: the instruction FlashAttention-2's exp2f compiles to in its build,
 * ex2.approx.ftz.f32, one MUFU.EX2; without ftz (plain exp2f) ptxas adds a range test and
 * two predicated multiplies per element to produce subnormal results. The two differ only
 * where 2^x is below 2^-126 (ftz gives +0). One instruction written as PTX: this build
 * sets no compiler option that changes floating point (kernels/cuda/CMakeLists.txt). */
__device__ __forceinline__ float exp2_hw(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float exp2_mode(int mode, float x)
{
    return mode ? fd_exp2_portable(x) : exp2_hw(x);
}

/* -inf where a key is not visible (P.mask) in the scores of a row block of 16 (rows row0..row0 + 15;
 * lane (g, t) holds rows row0 + g and + 8) and key tile j0..j0 + 8 NA - 1, flat as the
 * softmax steps below take it: keys past sk and, with a causal mask, keys past the diagonal
 * (j <= i + diag). The whole tile is left alone when every key is visible to every row. For
 * the kernels without windows (the FP8 and Hopper kernels); cuda-flash's own test adds the
 * window's edges. */
template <int NA, typename Prm>
__device__ __forceinline__ void mask_tile(float *s, const Prm &P, int row0, int j0, int sk, long diag, int g, int t)
{
    if (j0 + 8 * NA > sk || (P.mask != FD_MASK_NONE && (long)j0 + 8 * NA - 1 > (long)row0 + diag)) {
#pragma unroll
        for (int a = 0; a < NA; a++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = row0 + g + 8 * (e >> 1), j = j0 + a * 8 + 2 * t + (e & 1);
                const bool vis = j < sk && (P.mask == FD_MASK_NONE || (long)j <= (long)i + diag);
                if (!vis) s[4 * a + e] = -INFINITY;
            }
    }
}

/* FA2's softmax_rescale_o for row half r (row g or g + 8 of the warp's 16) of a row block,
 * in two steps around the caller's O rescale; shared by cuda-flash, its FP8 kernel and the
 * Hopper kernel. s holds the row block's scores as NA 8-column atoms of 4 (mma.sync's and
 * wgmma's accumulator fragment: element e of row half r of atom a at s[4 a + 2 r + e]).
 * Step 1: the running max over the row's elements and the quad (m_run updated), the
 * factor sc = exp2((m_prev - m_cur) * sl2) (m_cur 0 for a row with no key yet), l_run *=
 * sc; returns sc. */
template <int NA>
__device__ __forceinline__ float softmax_row_max(const float *s, int r, float &m_run, float &l_run, float sl2, int emode)
{
    float mx = m_run;
#pragma unroll
    for (int a = 0; a < NA; a++) mx = fmaxf(mx, fmaxf(s[4 * a + 2 * r], s[4 * a + 2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_prev = m_run;
    m_run = mx;
    const float m_cur = mx == -INFINITY ? 0.0f : mx;
    const float sc = exp2_mode(emode, __fmul_rn(__fsub_rn(m_prev, m_cur), sl2));
    l_run = __fmul_rn(l_run, sc);
    return sc;
}
/* Step 2: P = exp2(fmaf(s, sl2, -max_scaled)) in place of s, with max_scaled = mx * sl2
 * (OFF: fmaf(mx, sl2, -off), the FP8 kernel's Max_offset; 0 for a row with no key), and
 * l_run += P element by element in atom order (the replay's row-sum order). */
template <int NA, bool OFF>
__device__ __forceinline__ void softmax_row_exp(float *s, int r, float mx, float &l_run, float sl2, float off, int emode)
{
    const float max_scaled = mx == -INFINITY ? 0.0f : (OFF ? __fmaf_rn(mx, sl2, -off) : __fmul_rn(mx, sl2));
    float l = l_run;
#pragma unroll
    for (int a = 0; a < NA; a++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const float pe = exp2_mode(emode, __fmaf_rn(s[4 * a + 2 * r + e], sl2, -max_scaled));
            s[4 * a + 2 * r + e] = pe;
            l = __fadd_rn(l, pe);
        }
    l_run = l;
}

/* FA2's normalize_softmax_lse for the row of thread quad: the four lanes' partial row sums
 * combined as (l0 + l2) + (l1 + l3) (the replay's FD_ROWSUM_FA2); *empty for a row with no
 * visible key (l 0, or NaN), *inv = 1 / l (1 when empty). Returns l. Shared by cuda-flash,
 * its FP8 kernel and the Hopper kernel. */
__device__ __forceinline__ float quad_row_sum(float l, bool *empty, float *inv)
{
    l = __fadd_rn(l, __shfl_xor_sync(0xffffffffu, l, 2));
    l = __fadd_rn(l, __shfl_xor_sync(0xffffffffu, l, 1));
    *empty = (l == 0.0f || l != l);
    *inv = *empty ? 1.0f : __frcp_rn(l);
    return l;
}

/* Element offset of (row, col) in a [rows][D] tile with swizzled 16-byte chunks. */
template <int D> __device__ __forceinline__ int swz(int row, int col)
{
    constexpr int CH = D / 8;
    constexpr int M = (CH % 8 == 0) ? 7 : 3;
    return row * D + ((((col >> 3) ^ (row & M))) << 3) + (col & 7);
}

/* Copies rows [r0, r0 + ROWS) of a [.][H][dp] tensor (head hh) into a swizzled tile.
 * When the CTA's threads cover whole rows (NT a multiple of the D / 8 chunks of a row),
 * thread tid always copies chunk tid % CH of rows tid / CH + RS i (RS = NT / CH): its
 * global pointer and shared address are set up once and step by constants (the swizzle's
 * row bits do not change when RS is a multiple of 8 rows, or of 4 when M is 3), and a
 * whole tile skips the row test. Same bytes to the same places as the loop below. */
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_tile(T *sm, const T *g, int r0, int nrows, int H, int hh,
                                          int dp, int tid)
{
    constexpr int CH = D / 8;
    if constexpr (NT % CH == 0 && ROWS % (NT / CH) == 0) {
        constexpr int RS = NT / CH, NI = ROWS / RS;
        constexpr bool FIXED = RS % ((CH % 8 == 0) ? 8 : 4) == 0;
        const int ch = tid % CH, rt = tid / CH;
        const size_t step = (size_t)RS * H * dp;
        const T *src = g + ((size_t)(r0 + rt) * H + hh) * dp + ch * 8;
        const uint32_t dst = smem_u32(sm + swz<D>(rt, ch * 8));
        auto dst_at = [&](int i) {
            return FIXED ? dst + (uint32_t)(i * RS * D * sizeof(T)) : smem_u32(sm + swz<D>(rt + RS * i, ch * 8));
        };
        if (r0 + ROWS <= nrows) {
#pragma unroll
            for (int i = 0; i < NI; i++) cp_async16(dst_at(i), src + i * step, 16);
        } else {
            const T *g0 = g + (size_t)hh * dp + ch * 8; /* a valid address for the zero-fills */
#pragma unroll
            for (int i = 0; i < NI; i++) {
                const bool ok = r0 + rt + RS * i < nrows;
                cp_async16(dst_at(i), ok ? src + i * step : g0, ok ? 16 : 0);
            }
        }
    } else {
        for (int idx = tid; idx < ROWS * CH; idx += NT) {
            int row = idx / CH, ch = idx % CH;
            int gr = r0 + row;
            bool ok = gr < nrows;
            const T *src = g + ((size_t)(ok ? gr : 0) * H + hh) * dp + ch * 8;
            cp_async16(smem_u32(sm + swz<D>(row, ch * 8)), src, ok ? 16 : 0);
        }
    }
}

/* The same for K/V rows of a paged cache: logical row gr of the entry whose block-table
 * row is bt lives in physical row bt[gr / page] * page + gr % page of g ([.][H][dp]);
 * rows at or past nrows (the entry's cache_seqlens) are zero-filled, their table never
 * read. */
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_tile_paged(T *sm, const T *g, int r0, int nrows, int H, int hh, int dp, int tid,
                                                const int *bt, int page)
{
    constexpr int CH = D / 8;
    for (int idx = tid; idx < ROWS * CH; idx += NT) {
        int row = idx / CH, ch = idx % CH;
        int gr = r0 + row;
        bool ok = gr < nrows;
        const size_t pr = ok ? (size_t)bt[gr / page] * (size_t)page + (size_t)(gr % page) : 0;
        const T *src = g + (pr * H + hh) * dp + ch * 8;
        cp_async16(smem_u32(sm + swz<D>(row, ch * 8)), src, ok ? 16 : 0);
    }
}

/* Row blocks of 16 per warp: 2 (32 rows, FA2's d = 64 / 128 layout: each shared K/V
 * fragment feeds four mma ops) on the fast path for head dims 64 and 128, else 1 (d = 32
 * and 96 stay at 16 rows to keep the build time of this file down). Per-row arithmetic
 * and the quad's column ownership do not depend on it. */
template <int D, bool GEN> struct RowBlocks {
    static constexpr int value = (!GEN && (D == 64 || D == 128)) ? 2 : 1;
};
template <int D, int BR, bool GEN> struct KTraits {
    static constexpr int MB = RowBlocks<D, GEN>::value;
    static constexpr int NW = BR / (16 * MB), NT = NW * 32;
    /* 2 CTAs per SM when a warp owns 32 rows (255 registers a thread, 4 warps). */
    static constexpr int MIN_BLOCKS = MB == 2 ? 2 : 1;
};

/* GEN = false: the fast path, compiled without dropout, debug output, fp32 P, the
 * portable exp2 and the score modifiers (window, softcap, ALiBi; the host sends those
 * cases to GEN = true). Same arithmetic otherwise.
 * SCHED: the schedule, which no value depends on. 0, the default: one barrier a key tile
 * (FA2's way, below), and the CTAs of a (batch, head) take their query tiles last first,
 * so the longest causal ones start first. Bit 0 set: two barriers a tile; bit 1 set:
 * query tiles in launch order. Variants 1-3 exist for the fast path at head dims 64 and
 * 128 only, for measurements (FD_FLASH_SCHED, launch_variant). */
template <typename T, int D, int BR, int BC, bool GEN, int SCHED = 0>
__global__ void __launch_bounds__(KTraits<D, BR, GEN>::NT, KTraits<D, BR, GEN>::MIN_BLOCKS)
flash_fwd_kernel(const FlashParams P)
{
    constexpr int MB = KTraits<D, BR, GEN>::MB;
    constexpr int NT = KTraits<D, BR, GEN>::NT;
    constexpr bool Q_IN_REGS = MB * D <= 128 && BC <= 64; /* key tile 128: S takes the registers */
    constexpr int NA = BC / 8; /* n-atoms of S per warp row block */
    constexpr int ND = D / 8;  /* n-atoms of O */
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T *sQ = reinterpret_cast<T *>(smem_raw);
    T *sK = sQ + BR * D;           /* 2 stages */
    T *sV = sK + 2 * BC * D;       /* 2 stages */
    float *sP = reinterpret_cast<float *>(sV + 2 * BC * D); /* p_fp32: [BR/16][16][BC] */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int m_block = (SCHED & 2) ? (int)blockIdx.x : (int)gridDim.x - 1 - (int)blockIdx.x, bh = blockIdx.y, split = blockIdx.z;
    const int b = bh / P.H, h = bh % P.H, hk = h / P.h_per_kv;
    const int m0 = m_block * BR;
    /* The sequence: plain, batch b of [B][sq]; varlen (GEN only), sequence b of the packed
     * tensors, its lengths from cu_seqlens. The offsets are the macros below, evaluated
     * where used, so that the fast path's code (and registers) stay what they were. */
    const bool vl = GEN && P.cu_q;
    const bool pg = GEN && P.bt; /* paged KV cache: K, V through the block table */
    const int sq = vl ? P.cu_q[b + 1] - P.cu_q[b] : P.sq;
    const int sk = vl ? P.cu_k[b + 1] - P.cu_k[b] : pg ? P.cache_len[b] : P.sk;
#define FD_QOFF (vl ? (size_t)P.cu_q[b] : (size_t)b * sq) /* first row of Q, O */
#define FD_KOFF (vl ? (size_t)P.cu_k[b] : pg ? (size_t)0 : (size_t)b * sk) /* first row of K, V (paged: the cache) */
#define FD_LSE0 (vl ? (size_t)h * P.total_q + (size_t)P.cu_q[b] : ((size_t)b * P.H + h) * sq) /* LSE row 0 */
    if (vl && m0 >= sq) return; /* past this sequence's end (the grid is the longest's) */
    const long diag = P.mask == FD_MASK_CAUSAL_BR ? (long)sk - sq : 0; /* j <= i + diag */
    const long dbr = (long)sk - sq; /* the window's diagonal: bottom-right, as FA2 */
    /* the modifiers only in the GEN variant (the host sends such problems there): the
     * fast path keeps its registers */
    const bool win_r = GEN && P.win && P.wr >= 0, win_l = GEN && P.win && P.wl >= 0;

    /* K/V tiles [n_lo, n_hi) this CTA visits: up to the last row's right edge, from the
     * first row's left edge (FA2's n_block_max, n_block_min). */
    int n_hi = (sk + BC - 1) / BC;
    int n_lo = 0;
    if (!(GEN && P.dbg)) {
        const long last_row = (long)min(m0 + BR, sq) - 1;
        long z = (long)sk - 1;
        if (P.mask != FD_MASK_NONE) z = min(z, last_row + diag);
        if (win_r) z = min(z, last_row + dbr + P.wr);
        n_hi = z < 0 ? 0 : min(n_hi, (int)(z / BC) + 1);
        if (win_l) {
            const long a = (long)m0 + dbr - P.wl;
            if (a > 0) n_lo = (int)min(a / BC, (long)n_hi);
        }
    }
    if (P.splits) { /* paged: the entry's own tiles split alike (fd_cpu_splitkv_forward) */
        const int tps = pg ? ((sk + BC - 1) / BC + P.splits - 1) / P.splits : P.tiles_per_split;
        n_lo = split * tps;
        n_hi = min(n_hi, n_lo + tps);
    }

    const T *gQ = static_cast<const T *>(P.q) + FD_QOFF * P.H * P.dp;
    const T *gK = static_cast<const T *>(P.k) + FD_KOFF * P.Hk * P.dp;
    const T *gV = static_cast<const T *>(P.v) + FD_KOFF * P.Hk * P.dp;

    /* Row block mi of the warp: rows warp_row0 + 16 mi + (g, g + 8) of the CTA's tile
     * (r = 0 -> row g, r = 1 -> row g + 8). */
    const int warp_row0 = m0 + warp * 16 * MB;

    if (n_hi <= n_lo) { /* no visible key for any row of this CTA (or an empty split) */
        for (int mi = 0; mi < MB; mi++)
        for (int r = 0; r < 2; r++) {
            int i = warp_row0 + 16 * mi + g + 8 * r;
            if (i >= sq) continue;
            for (int a = 0; a < ND; a++) {
                int d = a * 8 + 2 * t;
                if (P.splits) {
                    float *oa = P.o_accum + ((((size_t)split * P.B + b) * P.H + h) * sq + i) * P.dp + d;
                    oa[0] = 0.0f; oa[1] = 0.0f;
                } else {
                    T *o = static_cast<T *>(P.o) + ((FD_QOFF + i) * P.H + h) * P.dp + d;
                    o[0] = DT<T>::from(0.0f); o[1] = DT<T>::from(0.0f);
                }
            }
            if (t == 0) {
                if (P.splits) P.lse_accum[(((size_t)split * P.B + b) * P.H + h) * sq + i] = -INFINITY;
                else P.lse[FD_LSE0 + i] = INFINITY;
            }
        }
        return;
    }

    const int *btb = pg ? P.bt + (size_t)b * P.pps : nullptr; /* the entry's block-table row */
    load_tile<T, D, BR, NT>(sQ, gQ, m0, sq, P.H, h, P.dp, tid);
    if (pg) {
        load_tile_paged<T, D, BC, NT>(sK, gK, (n_hi - 1) * BC, sk, P.Hk, hk, P.dp, tid, btb, P.page);
        load_tile_paged<T, D, BC, NT>(sV, gV, (n_hi - 1) * BC, sk, P.Hk, hk, P.dp, tid, btb, P.page);
    } else {
        load_tile<T, D, BC, NT>(sK, gK, (n_hi - 1) * BC, sk, P.Hk, hk, P.dp, tid);
        load_tile<T, D, BC, NT>(sV, gV, (n_hi - 1) * BC, sk, P.Hk, hk, P.dp, tid);
    }
    cp_async_commit();

    float o_acc[MB][ND][4];
#pragma unroll
    for (int mi = 0; mi < MB; mi++)
#pragma unroll
    for (int a = 0; a < ND; a++)
#pragma unroll
        for (int e = 0; e < 4; e++) o_acc[mi][a][e] = 0.0f;
    float m_run[MB][2], l_run[MB][2];
#pragma unroll
    for (int mi = 0; mi < MB; mi++) {
        m_run[mi][0] = m_run[mi][1] = -INFINITY;
        l_run[mi][0] = l_run[mi][1] = 0.0f;
    }
    uint32_t qf[Q_IN_REGS ? MB : 1][Q_IN_REGS ? D / 16 : 1][4];

    const float sl2 = P.scale_log2;
    const int emode = GEN ? P.exp2_mode : 0;
    const bool dropout = GEN && P.dropout, p_fp32 = GEN && P.p_fp32;
    void *const dbg = GEN ? P.dbg : nullptr;
    const uint64_t rng_off = P.offset + ((uint64_t)b * P.H + h) * 32u + lane;

    /* ldmatrix addresses (bytes). Every row a lane reads has row & M == lane & M (the
     * swizzle's row bits, see swz), and chunk 2 kk + c (c = 0, 1) of such a row sits at
     * chunk (2 kk) ^ (c ^ (lane & M)): so each lane's address is a fixed row part plus
     * ((kk << 5) ^ x) with x = (c ^ (lane & M)) << 4 its own, and the rest constants. */
    constexpr uint32_t RB = D * sizeof(T), TILE_B = BC * RB; /* bytes a row, a K or V stage */
    constexpr int SWM = ((D / 8) % 8 == 0) ? 7 : 3;
    const int l8 = lane >> 3;
    const uint32_t q_a = smem_u32(sQ) + (uint32_t)(warp * 16 * MB + (lane & 15)) * RB;
    const uint32_t q_x = (uint32_t)(((lane >> 4) ^ (lane & SWM)) << 4);
    const uint32_t k_a = smem_u32(sK) + (uint32_t)((l8 >> 1) * 8 + (lane & 7)) * RB;
    const uint32_t k_x = (uint32_t)(((l8 & 1) ^ (lane & SWM)) << 4);
    const uint32_t v_a = smem_u32(sV) + (uint32_t)((l8 & 1) * 8 + (lane & 7)) * RB;
    const uint32_t v_x = (uint32_t)(((l8 >> 1) ^ (lane & SWM)) << 4);

    /* The next tile's K and V go to the other stage. One barrier (FA2's way): wait for this
     * tile, barrier (every warp is then also done with the other stage), issue the copy.
     * Two barriers (SCHED bit 0): the copy is issued first, then this tile is waited for,
     * and a closing barrier frees the stage for the next copy. */
    constexpr bool one_sync = !(SCHED & 1);
    int stage = 0;
    auto prefetch = [&](int nb) {
        if (nb - 1 >= n_lo) {
            if (pg) {
                load_tile_paged<T, D, BC, NT>(sK + (stage ^ 1) * BC * D, gK, (nb - 1) * BC, sk, P.Hk, hk, P.dp, tid, btb, P.page);
                load_tile_paged<T, D, BC, NT>(sV + (stage ^ 1) * BC * D, gV, (nb - 1) * BC, sk, P.Hk, hk, P.dp, tid, btb, P.page);
            } else {
                load_tile<T, D, BC, NT>(sK + (stage ^ 1) * BC * D, gK, (nb - 1) * BC, sk, P.Hk, hk, P.dp, tid);
                load_tile<T, D, BC, NT>(sV + (stage ^ 1) * BC * D, gV, (nb - 1) * BC, sk, P.Hk, hk, P.dp, tid);
            }
        }
        cp_async_commit();
    };
    for (int nb = n_hi - 1; nb >= n_lo; nb--, stage ^= 1) {
        if (one_sync) {
            cp_async_wait<0>();
            __syncthreads();
            prefetch(nb);
        } else {
            prefetch(nb);
            cp_async_wait<1>();
            __syncthreads();
        }
        const T *cV = sV + stage * BC * D;
        const uint32_t ck_a = k_a + (uint32_t)stage * TILE_B, cv_a = v_a + (uint32_t)stage * TILE_B;

        if constexpr (Q_IN_REGS) {
            if (nb == n_hi - 1)
#pragma unroll
            for (int mi = 0; mi < MB; mi++)
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) ldsm_x4(qf[mi][kk], q_a + mi * 16 * RB + ((kk << 5) ^ q_x));
        }

        /* S = Q K^T, 16-term blocks in head-dim order from 0. */
        float s[MB][NA][4];
#pragma unroll
        for (int mi = 0; mi < MB; mi++)
#pragma unroll
        for (int a = 0; a < NA; a++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[mi][a][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t af[MB][4];
#pragma unroll
            for (int mi = 0; mi < MB; mi++) {
                if constexpr (Q_IN_REGS) {
#pragma unroll
                    for (int e = 0; e < 4; e++) af[mi][e] = qf[mi][kk][e];
                } else {
                    ldsm_x4(af[mi], q_a + mi * 16 * RB + ((kk << 5) ^ q_x));
                }
            }
            const uint32_t kaddr = ck_a + ((kk << 5) ^ k_x);
#pragma unroll
            for (int np = 0; np < NA / 2; np++) {
                uint32_t bf[4];
                ldsm_x4(bf, kaddr + np * 16 * RB);
#pragma unroll
                for (int mi = 0; mi < MB; mi++) {
                    DT<T>::mma(s[mi][2 * np], af[mi], bf);
                    DT<T>::mma(s[mi][2 * np + 1], af[mi], bf + 2);
                }
            }
        }

        const int j0 = nb * BC;
        /* Softcap, then the ALiBi bias (FA2's order: apply_softcap, then Mask::apply_mask). */
        if (GEN && (!fd_eqf(P.cap_in, 0.0f) || P.slope_raw)) {
            const float sr = P.slope_raw ? P.slope_raw[h] : 0.0f;
#pragma unroll
            for (int mi = 0; mi < MB; mi++)
#pragma unroll
            for (int a = 0; a < NA; a++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = warp_row0 + 16 * mi + g + 8 * (e >> 1), j = j0 + a * 8 + 2 * t + (e & 1);
                    s[mi][a][e] = fd_mods_score(s[mi][a][e], P.cap_in, sr, fd_alibi_dist(i, j, sq, sk));
                }
        }

        /* Masking: keys beyond sk, causal diagonal, window edges. */
#pragma unroll
        for (int mi = 0; mi < MB; mi++) {
            const int row_base = warp_row0 + 16 * mi;
            const bool need_mask = (j0 + BC > sk) ||
                                   (P.mask != FD_MASK_NONE && (long)j0 + BC - 1 > (long)row_base + diag) ||
                                   (win_r && (long)j0 + BC - 1 > (long)row_base + dbr + P.wr) ||
                                   (win_l && (long)j0 < (long)row_base + 15 + dbr - P.wl);
            if (need_mask) {
#pragma unroll
                for (int a = 0; a < NA; a++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int i = row_base + g + 8 * (e >> 1), j = j0 + a * 8 + 2 * t + (e & 1);
                        bool vis = j < sk && (P.mask == FD_MASK_NONE || (long)j <= (long)i + diag) &&
                                   (!win_r || (long)j <= (long)i + dbr + P.wr) &&
                                   (!win_l || (long)j >= (long)i + dbr - P.wl);
                        if (!vis) s[mi][a][e] = -INFINITY;
                    }
            }
        }

        /* Online softmax, FA2's softmax_rescale_o. */
#pragma unroll
        for (int mi = 0; mi < MB; mi++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const float sc = softmax_row_max<NA>(&s[mi][0][0], r, m_run[mi][r], l_run[mi][r], sl2, emode);
            /* x * 1.0f == x exactly: when no row of the warp moved its max, the O rescale
             * is skipped (bitwise the same result, ND * 2 fewer FMULs per row block). */
            if (__any_sync(0xffffffffu, sc != 1.0f)) {
#pragma unroll
                for (int a = 0; a < ND; a++) {
                    o_acc[mi][a][2 * r] = __fmul_rn(o_acc[mi][a][2 * r], sc);
                    o_acc[mi][a][2 * r + 1] = __fmul_rn(o_acc[mi][a][2 * r + 1], sc);
                }
            }
            softmax_row_exp<NA, false>(&s[mi][0][0], r, m_run[mi][r], l_run[mi][r], sl2, 0.0f, emode);
        }

        /* P to the dtype, dropout, debug output; then O += P V. */
        uint32_t pk[MB][NA][2]; /* packed dtype P: [row block][atom][row half] */
#pragma unroll
        for (int mi = 0; mi < MB; mi++)
#pragma unroll
        for (int a = 0; a < NA; a++) {
            pk[mi][a][0] = DT<T>::pack(s[mi][a][0], s[mi][a][1]);
            pk[mi][a][1] = DT<T>::pack(s[mi][a][2], s[mi][a][3]);
        }
        if (dropout) {
#pragma unroll
            for (int mi = 0; mi < MB; mi++) {
            const int row_base = warp_row0 + 16 * mi;
#pragma unroll
            for (int cb = 0; cb < BC / 32; cb++) {
                uint64_t sub = (uint64_t)(uint32_t)(row_base >> 4) |
                               ((uint64_t)(uint32_t)((j0 + cb * 32) >> 5) << 32);
                fd_u32x4 rnd = fd_fa2_philox(P.seed, sub, rng_off);
#pragma unroll
                for (int a4 = 0; a4 < 4; a4++) {
                    const int a = cb * 4 + a4;
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        uint32_t byte = (rnd.v[a4] >> (8 * e)) & 0xffu;
                        bool keep = byte <= P.thr;
                        uint32_t &w = pk[mi][a][e >> 1];
                        const uint32_t sh = 16 * (e & 1);
                        if (dbg) {
                            int i = row_base + g + 8 * (e >> 1), j = j0 + a * 8 + 2 * t + (e & 1);
                            if (i < sq && j < sk) {
                                uint16_t bits = (uint16_t)((w >> sh) & 0xffffu);
                                if (!keep) bits ^= 0x8000u; /* FA2: dropped written as -P */
                                reinterpret_cast<uint16_t *>(dbg)[(((size_t)b * P.H + h) * sq + i) * sk + j] = bits;
                            }
                        }
                        if (!keep) {
                            w &= ~(0xffffu << sh);
                            if (p_fp32) s[mi][a][e] = 0.0f;
                        }
                    }
                }
            }
            }
        }

        if (!p_fp32) {
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
#pragma unroll
                for (int np = 0; np < ND / 2; np++) {
                    uint32_t bf[4];
                    ldsm_x4_t(bf, cv_a + kk * 16 * RB + ((np << 5) ^ v_x));
#pragma unroll
                    for (int mi = 0; mi < MB; mi++) {
                        uint32_t af[4] = {pk[mi][2 * kk][0], pk[mi][2 * kk][1], pk[mi][2 * kk + 1][0],
                                          pk[mi][2 * kk + 1][1]};
                        DT<T>::mma(o_acc[mi][2 * np], af, bf);
                        DT<T>::mma(o_acc[mi][2 * np + 1], af, bf + 2);
                    }
                }
            }
        } else {
            /* P in binary32: O = fmaf(P[j], V[j][d], O) for the tile's keys in order. */
#pragma unroll
            for (int mi = 0; mi < MB; mi++) {
            float *wP = sP + (warp * MB + mi) * 16 * BC;
#pragma unroll
            for (int a = 0; a < NA; a++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    wP[(g + 8 * (e >> 1)) * BC + a * 8 + 2 * t + (e & 1)] = s[mi][a][e];
            __syncwarp();
            for (int j = 0; j < BC; j++) {
                float p0 = wP[g * BC + j], p1 = wP[(g + 8) * BC + j];
#pragma unroll
                for (int a = 0; a < ND; a++) {
                    int d = a * 8 + 2 * t;
                    float v0 = DT<T>::to(cV[swz<D>(j, d)]), v1 = DT<T>::to(cV[swz<D>(j, d + 1)]);
                    o_acc[mi][a][0] = __fmaf_rn(p0, v0, o_acc[mi][a][0]);
                    o_acc[mi][a][1] = __fmaf_rn(p0, v1, o_acc[mi][a][1]);
                    o_acc[mi][a][2] = __fmaf_rn(p1, v0, o_acc[mi][a][2]);
                    o_acc[mi][a][3] = __fmaf_rn(p1, v1, o_acc[mi][a][3]);
                }
            }
            }
        }
        if (!one_sync) __syncthreads(); /* this stage is refilled by the next iteration's prefetch */
    }
    cp_async_wait<0>();

    /* normalize_softmax_lse: quad sum (l0 + l2) + (l1 + l3), one reciprocal. */
#pragma unroll
    for (int mi = 0; mi < MB; mi++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
        bool empty;
        float inv;
        const float l = quad_row_sum(l_run[mi][r], &empty, &inv);
        const float fs = dropout ? __fmul_rn(inv, P.rp) : inv;
        const int i = warp_row0 + 16 * mi + g + 8 * r;
        if (i >= sq) continue;
        if (P.splits) {
            float *oa = P.o_accum + ((((size_t)split * P.B + b) * P.H + h) * sq + i) * P.dp;
#pragma unroll
            for (int a = 0; a < ND; a++) {
                int d = a * 8 + 2 * t;
                float2 v2 = make_float2(__fmul_rn(o_acc[mi][a][2 * r], fs), __fmul_rn(o_acc[mi][a][2 * r + 1], fs));
                *reinterpret_cast<float2 *>(oa + d) = v2;
            }
            if (t == 0)
                P.lse_accum[(((size_t)split * P.B + b) * P.H + h) * sq + i] =
                    empty ? -INFINITY : __fmaf_rn(m_run[mi][r], P.scale, fd_logf_portable(l));
        } else {
            T *o = static_cast<T *>(P.o) + ((FD_QOFF + i) * P.H + h) * P.dp;
#pragma unroll
            for (int a = 0; a < ND; a++) {
                int d = a * 8 + 2 * t;
                uint32_t w = DT<T>::pack(__fmul_rn(o_acc[mi][a][2 * r], fs), __fmul_rn(o_acc[mi][a][2 * r + 1], fs));
                *reinterpret_cast<uint32_t *>(o + d) = w;
            }
            if (t == 0)
                P.lse[FD_LSE0 + i] = empty ? INFINITY : __fmaf_rn(m_run[mi][r], P.scale, fd_logf_portable(l));
        }
    }
}

#undef FD_QOFF
#undef FD_KOFF
#undef FD_LSE0

template <typename T, int D, int BR, int BC>
int launch_variant(const FlashParams &P, size_t smem, cudaStream_t st, char *err, size_t errlen)
{
    /* FD_FLASH_GEN=1 sends every problem to the general kernel (tests: the fast path's bits
     * against the general kernel's, whose arithmetic the replay checks) */
    const char *force = getenv("FD_FLASH_GEN");
    const bool gen = P.dropout || P.dbg || P.p_fp32 || P.exp2_mode || P.win || P.slope_raw || !fd_eqf(P.cap_in, 0.0f) ||
                     P.cu_q || P.bt || (force && !strcmp(force, "1"));
    auto kern = gen ? flash_fwd_kernel<T, D, BR, BC, true> : flash_fwd_kernel<T, D, BR, BC, false>;
    if constexpr ((D == 64 || D == 128) && BC == 64) { /* FD_FLASH_SCHED=1..3: the fast path's other schedules */
        const char *e = getenv("FD_FLASH_SCHED");
        const int sched = e && e[0] >= '1' && e[0] <= '3' && !e[1] ? e[0] - '0' : 0;
        if (!gen && sched == 1) kern = flash_fwd_kernel<T, D, BR, BC, false, 1>;
        if (!gen && sched == 2) kern = flash_fwd_kernel<T, D, BR, BC, false, 2>;
        if (!gen && sched == 3) kern = flash_fwd_kernel<T, D, BR, BC, false, 3>;
    }
    const int nt = gen ? KTraits<D, BR, true>::NT : KTraits<D, BR, false>::NT;
    FD_CU(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((unsigned)((P.sq + BR - 1) / BR), (unsigned)(P.B * P.H), (unsigned)(P.splits ? P.splits : 1));
    kern<<<grid, nt, smem, st>>>(P);
    FD_LAUNCH_CHECK();
    return 0;
}

template <typename T, int D>
int launch_d(const FlashParams &P, int br, int bc, cudaStream_t st, char *err, size_t errlen)
{
    const size_t sm = ((size_t)br * D + 4 * (size_t)bc * D) * sizeof(T) +
                      (P.p_fp32 ? (size_t)(br / 16) * 16 * bc * sizeof(float) : 0);
    if (br == 64 && bc == 64) return launch_variant<T, D, 64, 64>(P, sm, st, err, errlen);
    if (br == 128 && bc == 64) return launch_variant<T, D, 128, 64>(P, sm, st, err, errlen);
    /* FA2's tile at head dim 64 without dropout (flash_fwd_launch_template.h): 128 x 128 */
    if constexpr (D == 64)
        if (br == 128 && bc == 128) return launch_variant<T, D, 128, 128>(P, sm, st, err, errlen);
    FD_FAIL("tile %dx%d unsupported: supported (br, bc) = (64, 64), (128, 64), and (128, 128) at padded head dim 64", br, bc);
    return -1;
}

template <typename T>
int launch_t(const FlashParams &P, int br, int bc, cudaStream_t st, char *err, size_t errlen)
{
    switch (P.dp) {
    case 32: return launch_d<T, 32>(P, br, bc, st, err, errlen);
    case 64: return launch_d<T, 64>(P, br, bc, st, err, errlen);
    case 96: return launch_d<T, 96>(P, br, bc, st, err, errlen);
    case 128: return launch_d<T, 128>(P, br, bc, st, err, errlen);
    case 256: return launch_d<T, 256>(P, br, bc, st, err, errlen);
    default: FD_FAIL("internal: padded head_dim %d", P.dp);
    }
    return -1;
}

/* Defined in fd_cuda_flash_f16.cu / fd_cuda_flash_bf16.cu: launch_t for one dtype. */
int launch_f16(const FlashParams &P, int br, int bc, cudaStream_t st, char *err, size_t errlen);
int launch_bf16(const FlashParams &P, int br, int bc, cudaStream_t st, char *err, size_t errlen);
/* Defined in fd_cuda_flash_sm90.cu (library fd_cuda_sm90, sm_90a): the Hopper (wgmma)
 * kernel of cuda-flash-sm90, fast-path problems only (run_flash checks); sm90_supported
 * fails unless the current device is sm_90. */
int launch_sm90(const FlashParams &P, int is_bf16, int bc, cudaStream_t st, char *err, size_t errlen);
int sm90_supported(char *err, size_t errlen);

} // namespace fd_flash
#endif
