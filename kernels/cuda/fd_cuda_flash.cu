/* fd_cuda_flash.cu: FlashAttention-2 style forward (and its split-KV form), fp16/bf16 on
 * mma.sync m16n8k16, plus the fp32 FMA path and the exp2 test helpers.
 * Numerics and orders are stated in fd_cuda.h; design notes in docs/cuda.md.
 *
 * One CTA computes BR query rows of one (batch, head) with BR/16 warps; warp w owns rows
 * 16w..16w+15. K/V tiles of BC keys go global -> shared by cp.async (two stages), from
 * the last visible tile down to the first (FA2's order). Shared tiles are stored
 * row-major with the 16-byte chunks of each row XOR-swizzled by the row so ldmatrix is
 * conflict-free. Compile-time variants: head dim (32, 64, 96, 128, 256) x dtype x tile
 * ((64, 64) with 4 warps, (128, 64) with 8 warps): 20 kernels, dispatched by a switch. */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <string.h>
#include <vector>

#include "fd_cuda.h"
#include "fd_cuda_util.h"
#include "fd_dtype.h"
#include "fd_exp2.h"
#include "fd_philox.h"

namespace {

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

__device__ __forceinline__ float exp2_mode(int mode, float x)
{
    return mode ? fd_exp2_portable(x) : exp2f(x);
}

/* Element offset of (row, col) in a [rows][D] tile with swizzled 16-byte chunks. */
template <int D> __device__ __forceinline__ int swz(int row, int col)
{
    constexpr int CH = D / 8;
    constexpr int M = (CH % 8 == 0) ? 7 : 3;
    return row * D + ((((col >> 3) ^ (row & M))) << 3) + (col & 7);
}

/* Copies rows [r0, r0 + ROWS) of a [.][H][dp] tensor (head hh) into a swizzled tile. */
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_tile(T *sm, const T *g, int r0, int nrows, int H, int hh,
                                          int dp, int tid)
{
    constexpr int CH = D / 8;
    for (int idx = tid; idx < ROWS * CH; idx += NT) {
        int row = idx / CH, ch = idx % CH;
        int gr = r0 + row;
        bool ok = gr < nrows;
        const T *src = g + ((size_t)(ok ? gr : 0) * H + hh) * dp + ch * 8;
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

/* GEN = false: the fast path, compiled without dropout, debug output, fp32 P and the
 * portable exp2 (the host sends those cases to GEN = true). Same arithmetic otherwise. */
template <typename T, int D, int BR, int BC, bool GEN>
__global__ void __launch_bounds__(KTraits<D, BR, GEN>::NT, KTraits<D, BR, GEN>::MIN_BLOCKS)
flash_fwd_kernel(const FlashParams P)
{
    constexpr int MB = KTraits<D, BR, GEN>::MB;
    constexpr int NT = KTraits<D, BR, GEN>::NT;
    constexpr bool Q_IN_REGS = MB * D <= 128;
    constexpr int NA = BC / 8; /* n-atoms of S per warp row block */
    constexpr int ND = D / 8;  /* n-atoms of O */
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T *sQ = reinterpret_cast<T *>(smem_raw);
    T *sK = sQ + BR * D;           /* 2 stages */
    T *sV = sK + 2 * BC * D;       /* 2 stages */
    float *sP = reinterpret_cast<float *>(sV + 2 * BC * D); /* p_fp32: [BR/16][16][BC] */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int m_block = blockIdx.x, bh = blockIdx.y, split = blockIdx.z;
    const int b = bh / P.H, h = bh % P.H, hk = h / P.h_per_kv;
    const int m0 = m_block * BR;
    const int sq = P.sq, sk = P.sk;
    const long diag = P.mask == FD_MASK_CAUSAL_BR ? (long)sk - sq : 0; /* j <= i + diag */

    /* K/V tiles [n_lo, n_hi) this CTA visits. */
    int n_hi = (sk + BC - 1) / BC;
    if (P.mask != FD_MASK_NONE && !(GEN && P.dbg)) {
        long last_row = (long)min(m0 + BR, sq) - 1;
        long vis = last_row + diag + 1;
        if (vis < 0) vis = 0;
        if (vis < sk) n_hi = (int)((vis + BC - 1) / BC);
    }
    int n_lo = 0;
    if (P.splits) {
        n_lo = split * P.tiles_per_split;
        n_hi = min(n_hi, n_lo + P.tiles_per_split);
    }

    const T *gQ = static_cast<const T *>(P.q) + (size_t)b * sq * P.H * P.dp;
    const T *gK = static_cast<const T *>(P.k) + (size_t)b * sk * P.Hk * P.dp;
    const T *gV = static_cast<const T *>(P.v) + (size_t)b * sk * P.Hk * P.dp;

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
                    T *o = static_cast<T *>(P.o) + (((size_t)b * sq + i) * P.H + h) * P.dp + d;
                    o[0] = DT<T>::from(0.0f); o[1] = DT<T>::from(0.0f);
                }
            }
            if (t == 0) {
                if (P.splits) P.lse_accum[(((size_t)split * P.B + b) * P.H + h) * sq + i] = -INFINITY;
                else P.lse[((size_t)b * P.H + h) * sq + i] = INFINITY;
            }
        }
        return;
    }

    load_tile<T, D, BR, NT>(sQ, gQ, m0, sq, P.H, h, P.dp, tid);
    load_tile<T, D, BC, NT>(sK, gK, (n_hi - 1) * BC, sk, P.Hk, hk, P.dp, tid);
    load_tile<T, D, BC, NT>(sV, gV, (n_hi - 1) * BC, sk, P.Hk, hk, P.dp, tid);
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

    int stage = 0;
    for (int nb = n_hi - 1; nb >= n_lo; nb--, stage ^= 1) {
        if (nb - 1 >= n_lo) {
            load_tile<T, D, BC, NT>(sK + (stage ^ 1) * BC * D, gK, (nb - 1) * BC, sk, P.Hk, hk, P.dp, tid);
            load_tile<T, D, BC, NT>(sV + (stage ^ 1) * BC * D, gV, (nb - 1) * BC, sk, P.Hk, hk, P.dp, tid);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const T *cK = sK + stage * BC * D;
        const T *cV = sV + stage * BC * D;

        if constexpr (Q_IN_REGS) {
            if (nb == n_hi - 1)
#pragma unroll
            for (int mi = 0; mi < MB; mi++)
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                int row = warp * 16 * MB + mi * 16 + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
                ldsm_x4(qf[mi][kk], smem_u32(sQ + swz<D>(row, col)));
            }
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
                    int row = warp * 16 * MB + mi * 16 + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
                    ldsm_x4(af[mi], smem_u32(sQ + swz<D>(row, col)));
                }
            }
#pragma unroll
            for (int np = 0; np < NA / 2; np++) {
                uint32_t bf[4];
                int mi8 = lane >> 3;
                int key = np * 16 + (mi8 >> 1) * 8 + (lane & 7), col = kk * 16 + (mi8 & 1) * 8;
                ldsm_x4(bf, smem_u32(cK + swz<D>(key, col)));
#pragma unroll
                for (int mi = 0; mi < MB; mi++) {
                    DT<T>::mma(s[mi][2 * np], af[mi], bf);
                    DT<T>::mma(s[mi][2 * np + 1], af[mi], bf + 2);
                }
            }
        }

        /* Masking: keys beyond sk, causal diagonal. */
        const int j0 = nb * BC;
#pragma unroll
        for (int mi = 0; mi < MB; mi++) {
            const int row_base = warp_row0 + 16 * mi;
            const bool need_mask = (j0 + BC > sk) ||
                                   (P.mask != FD_MASK_NONE && (long)j0 + BC - 1 > (long)row_base + diag);
            if (need_mask) {
#pragma unroll
                for (int a = 0; a < NA; a++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        int i = row_base + g + 8 * (e >> 1), j = j0 + a * 8 + 2 * t + (e & 1);
                        bool vis = j < sk && (P.mask == FD_MASK_NONE || (long)j <= (long)i + diag);
                        if (!vis) s[mi][a][e] = -INFINITY;
                    }
            }
        }

        /* Online softmax, FA2's softmax_rescale_o. */
#pragma unroll
        for (int mi = 0; mi < MB; mi++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = m_run[mi][r];
#pragma unroll
            for (int a = 0; a < NA; a++) mx = fmaxf(mx, fmaxf(s[mi][a][2 * r], s[mi][a][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float m_prev = m_run[mi][r];
            m_run[mi][r] = mx;
            const float m_cur = mx == -INFINITY ? 0.0f : mx;
            const float sc = exp2_mode(emode, __fmul_rn(__fsub_rn(m_prev, m_cur), sl2));
            l_run[mi][r] = __fmul_rn(l_run[mi][r], sc);
            /* x * 1.0f == x exactly: when no row of the warp moved its max, the O rescale
             * is skipped (bitwise the same result, ND * 2 fewer FMULs per row block). */
            if (__any_sync(0xffffffffu, sc != 1.0f)) {
#pragma unroll
                for (int a = 0; a < ND; a++) {
                    o_acc[mi][a][2 * r] = __fmul_rn(o_acc[mi][a][2 * r], sc);
                    o_acc[mi][a][2 * r + 1] = __fmul_rn(o_acc[mi][a][2 * r + 1], sc);
                }
            }
            const float max_scaled = mx == -INFINITY ? 0.0f : __fmul_rn(mx, sl2);
            float l = l_run[mi][r];
#pragma unroll
            for (int a = 0; a < NA; a++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float pe = exp2_mode(emode, __fmaf_rn(s[mi][a][2 * r + e], sl2, -max_scaled));
                    s[mi][a][2 * r + e] = pe;
                    l = __fadd_rn(l, pe);
                }
            l_run[mi][r] = l;
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
                    int mi8 = lane >> 3;
                    int key = kk * 16 + (mi8 & 1) * 8 + (lane & 7), col = np * 16 + (mi8 >> 1) * 8;
                    ldsm_x4_t(bf, smem_u32(cV + swz<D>(key, col)));
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
        __syncthreads(); /* this stage is refilled by the next iteration's prefetch */
    }
    cp_async_wait<0>();

    /* normalize_softmax_lse: quad sum (l0 + l2) + (l1 + l3), one reciprocal. */
#pragma unroll
    for (int mi = 0; mi < MB; mi++)
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = l_run[mi][r];
        l = __fadd_rn(l, __shfl_xor_sync(0xffffffffu, l, 2));
        l = __fadd_rn(l, __shfl_xor_sync(0xffffffffu, l, 1));
        const bool empty = (l == 0.0f || l != l);
        const float inv = empty ? 1.0f : __frcp_rn(l);
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
                    empty ? -INFINITY : __fmaf_rn(m_run[mi][r], P.scale, logf(l));
        } else {
            T *o = static_cast<T *>(P.o) + (((size_t)b * sq + i) * P.H + h) * P.dp;
#pragma unroll
            for (int a = 0; a < ND; a++) {
                int d = a * 8 + 2 * t;
                uint32_t w = DT<T>::pack(__fmul_rn(o_acc[mi][a][2 * r], fs), __fmul_rn(o_acc[mi][a][2 * r + 1], fs));
                *reinterpret_cast<uint32_t *>(o + d) = w;
            }
            if (t == 0)
                P.lse[((size_t)b * P.H + h) * sq + i] =
                    empty ? INFINITY : __fmaf_rn(m_run[mi][r], P.scale, logf(l));
        }
    }
}

/* Split-KV combine: lse = log(sum_s exp(lse_s - max)) + max; O = sum_s exp(lse_s - lse) O_s. */
template <typename T>
__global__ void splitkv_combine_kernel(const FlashParams P)
{
    const int i = blockIdx.x, bh = blockIdx.y;
    const int b = bh / P.H, h = bh % P.H;
    const size_t plane = (size_t)P.B * P.H * P.sq;
    const size_t row = ((size_t)b * P.H + h) * P.sq + i;
    float mx = -INFINITY;
    for (int s = 0; s < P.splits; s++) mx = fmaxf(mx, P.lse_accum[s * plane + row]);
    float lse;
    if (mx == -INFINITY) {
        lse = INFINITY;
    } else {
        float sum = 0.0f;
        for (int s = 0; s < P.splits; s++) sum = __fadd_rn(sum, expf(__fsub_rn(P.lse_accum[s * plane + row], mx)));
        lse = __fadd_rn(logf(sum), mx);
    }
    T *o = static_cast<T *>(P.o) + (((size_t)b * P.sq + i) * P.H + h) * P.dp;
    for (int d = threadIdx.x; d < P.dp; d += blockDim.x) {
        float acc = 0.0f;
        if (mx != -INFINITY)
            for (int s = 0; s < P.splits; s++) {
                float w = expf(__fsub_rn(P.lse_accum[s * plane + row], lse));
                acc = __fmaf_rn(w, P.o_accum[(s * plane + row) * P.dp + d], acc);
            }
        o[d] = DT<T>::from(acc);
    }
    if (threadIdx.x == 0) P.lse[row] = lse;
}

/* fp32 inputs: one warp per query row, no tensor cores. Keys in tiles of 32 (lane j of
 * the warp owns key j of the tile): S_j = sequential fmaf over the head dim from 0;
 * the same online softmax (tiles from the last down, exp2(fmaf(S, scale_log2, -m
 * scale_log2)), rescale); the row sum l adds the tile's P in key order (all lanes
 * hold it); O[d] = fmaf(P_j, V[j][d], O[d]) in key order, lane owns d = lane + 32 c. */
__global__ void __launch_bounds__(128) flash_fwd_fp32_kernel(const FlashParams P)
{
    const int lane = threadIdx.x & 31;
    const int i = blockIdx.x * 4 + (threadIdx.x >> 5);
    const int bh = blockIdx.y, b = bh / P.H, h = bh % P.H, hk = h / P.h_per_kv;
    if (i >= P.sq) return;
    const int sq = P.sq, sk = P.sk, dp = P.dp;
    const float *q = static_cast<const float *>(P.q) + (((size_t)b * sq + i) * P.H + h) * dp;
    const float *K = static_cast<const float *>(P.k) + (size_t)b * sk * P.Hk * dp;
    const float *V = static_cast<const float *>(P.v) + (size_t)b * sk * P.Hk * dp;
    float *o = static_cast<float *>(P.o) + (((size_t)b * sq + i) * P.H + h) * dp;
    const long diag = P.mask == FD_MASK_CAUSAL_BR ? (long)sk - sq : 0;
    long nv = sk;
    if (P.mask != FD_MASK_NONE) nv = min((long)sk, max(0L, (long)i + diag + 1));
    constexpr int MAXC = 8; /* dp <= 256 */
    float acc[MAXC];
#pragma unroll
    for (int c = 0; c < MAXC; c++) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const int nblocks = (int)((nv + 31) / 32);
    const float sl2 = P.scale_log2;
    for (int nb = nblocks - 1; nb >= 0; nb--) {
        const int j = nb * 32 + lane;
        float s = -INFINITY;
        if (j < nv) {
            const float *kj = K + ((size_t)j * P.Hk + hk) * dp;
            float d0 = 0.0f;
            for (int d = 0; d < dp; d++) d0 = __fmaf_rn(q[d], kj[d], d0);
            s = d0;
        }
        float mx = s;
        for (int w = 16; w >= 1; w >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, w));
        const float m_prev = m;
        m = fmaxf(m, mx);
        const float m_cur = m == -INFINITY ? 0.0f : m;
        const float sc = exp2_mode(P.exp2_mode, __fmul_rn(__fsub_rn(m_prev, m_cur), sl2));
        l = __fmul_rn(l, sc);
#pragma unroll
        for (int c = 0; c < MAXC; c++) acc[c] = __fmul_rn(acc[c], sc);
        const float max_scaled = m == -INFINITY ? 0.0f : __fmul_rn(m, sl2);
        float pe = s == -INFINITY ? 0.0f : exp2_mode(P.exp2_mode, __fmaf_rn(s, sl2, -max_scaled));
        float pd = pe;
        if (P.dropout && j < nv &&
            fd_fa2_dropout_byte(P.seed, P.offset, P.H, b, h, i, j) > P.thr)
            pd = 0.0f;
        const int nk = min(32, (int)(sk - nb * 32));
        for (int jj = 0; jj < 32; jj++) {
            float pj = __shfl_sync(0xffffffffu, pe, jj);
            float pdj = __shfl_sync(0xffffffffu, pd, jj);
            l = __fadd_rn(l, pj);
            if (jj < nk) {
                const float *vj = V + ((size_t)(nb * 32 + jj) * P.Hk + hk) * dp;
#pragma unroll
                for (int c = 0; c < MAXC; c++) {
                    int d = lane + 32 * c;
                    if (d < dp) acc[c] = __fmaf_rn(pdj, vj[d], acc[c]);
                }
            }
        }
    }
    const bool empty = (l == 0.0f || l != l);
    const float inv = empty ? 1.0f : __frcp_rn(l);
    const float fs = P.dropout ? __fmul_rn(inv, P.rp) : inv;
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        int d = lane + 32 * c;
        if (d < dp) o[d] = __fmul_rn(acc[c], fs);
    }
    if (lane == 0) P.lse[((size_t)b * P.H + h) * sq + i] = empty ? INFINITY : __fmaf_rn(m, P.scale, logf(l));
}

__global__ void exp2_batch_kernel(const float *x, float *y, size_t n, int mode)
{
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n) y[idx] = mode ? fd_exp2_portable(x[idx]) : exp2f(x[idx]);
}

/* ---------------------------------------------------------------------------------- */

template <typename T, int D, int BR, int BC>
int launch_variant(const FlashParams &P, size_t smem, cudaStream_t st, char *err, size_t errlen)
{
    const bool gen = P.dropout || P.dbg || P.p_fp32 || P.exp2_mode;
    auto kern = gen ? flash_fwd_kernel<T, D, BR, BC, true> : flash_fwd_kernel<T, D, BR, BC, false>;
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
    FD_FAIL("tile %dx%d unsupported: supported (br, bc) = (64, 64), (128, 64)", br, bc);
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

} // namespace

int fd_cu_padded_dim(int d)
{
    static const int dims[] = {32, 64, 96, 128, 256};
    for (int x : dims)
        if (d <= x) return x;
    return -1;
}

int fd_cu_check_problem(const fd_problem *p, char *err, size_t errlen)
{
    if (!p) FD_FAIL("null problem");
    if (p->batch <= 0 || p->heads <= 0 || p->kv_heads <= 0 || p->seqlen_q <= 0 ||
        p->seqlen_k <= 0 || p->head_dim <= 0)
        FD_FAIL("sizes must be positive (batch %d, heads %d, kv_heads %d, seqlen_q %d, seqlen_k %d, head_dim %d)",
                p->batch, p->heads, p->kv_heads, p->seqlen_q, p->seqlen_k, p->head_dim);
    if (p->heads % p->kv_heads != 0)
        FD_FAIL("heads (%d) must be a multiple of kv_heads (%d)", p->heads, p->kv_heads);
    if (fd_cu_padded_dim(p->head_dim) < 0)
        FD_FAIL("head_dim %d unsupported: supported 32, 64, 96, 128, 256 (smaller ones are padded up with zeros)",
                p->head_dim);
    if (!(p->dropout_p >= 0.0 && p->dropout_p < 1.0))
        FD_FAIL("dropout p must be in [0, 1), got %g", p->dropout_p);
    if (p->dtype != FD_DT_FP16 && p->dtype != FD_DT_BF16 && p->dtype != FD_DT_FP32)
        FD_FAIL("dtype %d unsupported", (int)p->dtype);
    if (p->mask != FD_MASK_NONE && p->mask != FD_MASK_CAUSAL_TL && p->mask != FD_MASK_CAUSAL_BR)
        FD_FAIL("mask %d unsupported", (int)p->mask);
    if ((long)p->batch * p->heads > 65535)
        FD_FAIL("batch * heads = %ld exceeds the grid limit 65535", (long)p->batch * p->heads);
    return 0;
}

/* Host floats -> device dtype in [B][S][H][dp] with zero padding of the head dim. */
int fd_cu_upload(fd_dbuf &buf, const float *x, int B, int S, int H, int d, int dp, fd_dtype dt,
           const char *what, char *err, size_t errlen)
{
    const size_t rows = (size_t)B * S * H;
    const size_t es = dt == FD_DT_FP32 ? 4 : 2;
    if (fd_dalloc(buf, rows * dp * es, what, err, errlen)) return -1;
    if (dt == FD_DT_FP32) {
        std::vector<float> h(rows * dp, 0.0f);
        for (size_t r = 0; r < rows; r++) memcpy(&h[r * dp], x + r * d, sizeof(float) * d);
        FD_CU(cudaMemcpy(buf.p, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    } else {
        std::vector<uint16_t> h(rows * dp, 0);
        for (size_t r = 0; r < rows; r++)
            for (int c = 0; c < d; c++)
                h[r * dp + c] = dt == FD_DT_FP16 ? fd_f32_to_f16_bits(x[r * d + c])
                                                 : fd_f32_to_bf16_bits(x[r * d + c]);
        FD_CU(cudaMemcpy(buf.p, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    }
    return 0;
}

int fd_cu_download_o(float *o, const fd_dbuf &buf, int B, int S, int H, int d, int dp, fd_dtype dt,
               char *err, size_t errlen)
{
    const size_t rows = (size_t)B * S * H;
    if (dt == FD_DT_FP32) {
        std::vector<float> h(rows * dp);
        FD_CU(cudaMemcpy(h.data(), buf.p, h.size() * 4, cudaMemcpyDeviceToHost));
        for (size_t r = 0; r < rows; r++) memcpy(o + r * d, &h[r * dp], sizeof(float) * d);
    } else {
        std::vector<uint16_t> h(rows * dp);
        FD_CU(cudaMemcpy(h.data(), buf.p, h.size() * 2, cudaMemcpyDeviceToHost));
        for (size_t r = 0; r < rows; r++)
            for (int c = 0; c < d; c++)
                o[r * d + c] = dt == FD_DT_FP16 ? fd_f16_bits_to_f32(h[r * dp + c])
                                                : fd_bf16_bits_to_f32(h[r * dp + c]);
    }
    return 0;
}

namespace {

enum Mode { MODE_FLASH, MODE_SPLIT };

int run_flash(Mode mode, const fd_problem *p, const fd_cuda_cfg *cfg_in, const float *q,
              const float *k, const float *v, float *o, float *lse, uint8_t *dmask,
              fd_cuda_timing *tm, char *err, size_t errlen)
{
    if (fd_cu_check_problem(p, err, errlen)) return -1;
    if (!q || !k || !v || !o || !lse) FD_FAIL("null tensor argument");
    fd_cuda_cfg cfg;
    fd_cuda_cfg_default(&cfg);
    if (cfg_in) cfg = *cfg_in;
    const int dp = fd_cu_padded_dim(p->head_dim);
    if (cfg.br == 0 && cfg.bc == 0) { cfg.br = 128; cfg.bc = 64; }
    if (!((cfg.br == 64 && cfg.bc == 64) || (cfg.br == 128 && cfg.bc == 64)))
        FD_FAIL("tile %dx%d unsupported: supported (br, bc) = (64, 64), (128, 64)", cfg.br, cfg.bc);
    if (cfg.exp2_mode != 0 && cfg.exp2_mode != 1) FD_FAIL("exp2_mode %d unsupported (0 hw, 1 portable)", cfg.exp2_mode);
    if (cfg.repeats < 0 || cfg.repeats > 100000) FD_FAIL("repeats %d out of range", cfg.repeats);
    const bool fp32 = p->dtype == FD_DT_FP32;
    if (mode == MODE_SPLIT) {
        if (fp32) FD_FAIL("split-KV supports fp16 and bf16 only (fp32 inputs: use flash)");
        if (cfg.splits < 1 || cfg.splits > 128) FD_FAIL("splits %d out of range [1, 128]", cfg.splits);
        if (dmask) FD_FAIL("split-KV has no debug mask output");
    }
    if (dmask && fp32) FD_FAIL("debug mask output needs fp16 or bf16 (the fp32 path has none)");
    int ndev = fd_cuda_device_count();
    if (ndev <= 0) FD_FAIL("no CUDA device");

    const int B = p->batch, H = p->heads, Hk = p->kv_heads, sq = p->seqlen_q, sk = p->seqlen_k, d = p->head_dim;
    fd_dbuf dq, dk, dv, dO, dl, doa, dla, ddbg;
    if (fd_cu_upload(dq, q, B, sq, H, d, dp, p->dtype, "Q", err, errlen)) return -1;
    if (fd_cu_upload(dk, k, B, sk, Hk, d, dp, p->dtype, "K", err, errlen)) return -1;
    if (fd_cu_upload(dv, v, B, sk, Hk, d, dp, p->dtype, "V", err, errlen)) return -1;
    const size_t es = fp32 ? 4 : 2;
    if (fd_dalloc(dO, (size_t)B * sq * H * dp * es, "O", err, errlen)) return -1;
    if (fd_dalloc(dl, (size_t)B * H * sq * 4, "LSE", err, errlen)) return -1;
    const bool want_dbg = dmask && p->dropout_p > 0.0;
    if (want_dbg && fd_dalloc(ddbg, (size_t)B * H * sq * sk * 2, "debug mask", err, errlen)) return -1;

    FlashParams P;
    memset(&P, 0, sizeof P);
    P.q = dq.p; P.k = dk.p; P.v = dv.p; P.o = dO.p; P.lse = dl.as<float>();
    P.dbg = want_dbg ? ddbg.p : nullptr;
    P.B = B; P.H = H; P.Hk = Hk; P.sq = sq; P.sk = sk; P.dp = dp; P.h_per_kv = H / Hk;
    P.mask = (int)p->mask;
    P.scale = p->softmax_scale;
    P.scale_log2 = (float)((double)p->softmax_scale * 1.4426950408889634073599246810018921);
    P.dropout = p->dropout_p > 0.0;
    P.thr = fd_fa2_threshold(p->dropout_p);
    P.rp = 1.0f / (1.0f - (float)p->dropout_p); /* FA2: rp_dropout = 1.f / (1.f - p) */
    P.seed = p->seed; P.offset = p->offset;
    P.exp2_mode = cfg.exp2_mode; P.p_fp32 = cfg.p_fp32 ? 1 : 0;
    if (mode == MODE_SPLIT) {
        const int ntiles = (sk + cfg.bc - 1) / cfg.bc;
        P.tiles_per_split = (ntiles + cfg.splits - 1) / cfg.splits;
        P.splits = cfg.splits;
        if (fd_dalloc(doa, (size_t)cfg.splits * B * H * sq * dp * 4, "split-KV partial O", err, errlen)) return -1;
        if (fd_dalloc(dla, (size_t)cfg.splits * B * H * sq * 4, "split-KV partial LSE", err, errlen)) return -1;
        P.o_accum = doa.as<float>(); P.lse_accum = dla.as<float>();
    }
    /* Poison: anything the kernels fail to write reads back as NaN. */
    FD_CU(cudaMemset(dO.p, 0xff, dO.bytes));
    FD_CU(cudaMemset(dl.p, 0xff, dl.bytes));
    if (want_dbg) FD_CU(cudaMemset(ddbg.p, 0xff, ddbg.bytes));

    auto launch = [&](cudaStream_t st) -> int {
        if (fp32) {
            dim3 grid((unsigned)((sq + 3) / 4), (unsigned)(B * H));
            flash_fwd_fp32_kernel<<<grid, 128, 0, st>>>(P);
            FD_LAUNCH_CHECK();
            return 0;
        }
        int rc = p->dtype == FD_DT_FP16 ? launch_t<__half>(P, cfg.br, cfg.bc, st, err, errlen)
                                        : launch_t<__nv_bfloat16>(P, cfg.br, cfg.bc, st, err, errlen);
        if (rc) return rc;
        if (mode == MODE_SPLIT) {
            dim3 grid((unsigned)sq, (unsigned)(B * H));
            if (p->dtype == FD_DT_FP16) splitkv_combine_kernel<__half><<<grid, 128, 0, st>>>(P);
            else splitkv_combine_kernel<__nv_bfloat16><<<grid, 128, 0, st>>>(P);
            FD_LAUNCH_CHECK();
        }
        return 0;
    };
    if (launch(0)) return -1;
    FD_CU(cudaDeviceSynchronize());
    if (tm) { tm->ms_median = tm->ms_min = 0.0f; tm->repeats = 0; }
    if (cfg.repeats > 0) {
        cudaEvent_t e0, e1;
        FD_CU(cudaEventCreate(&e0));
        FD_CU(cudaEventCreate(&e1));
        std::vector<float> ms;
        for (int r = 0; r < cfg.repeats; r++) {
            FD_CU(cudaEventRecord(e0));
            if (launch(0)) { cudaEventDestroy(e0); cudaEventDestroy(e1); return -1; }
            FD_CU(cudaEventRecord(e1));
            FD_CU(cudaEventSynchronize(e1));
            float x = 0.0f;
            FD_CU(cudaEventElapsedTime(&x, e0, e1));
            ms.push_back(x);
        }
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        if (tm) {
            tm->ms_median = fd_median(ms);
            tm->ms_min = *std::min_element(ms.begin(), ms.end());
            tm->repeats = cfg.repeats;
        }
    }
    if (fd_cu_download_o(o, dO, B, sq, H, d, dp, p->dtype, err, errlen)) return -1;
    FD_CU(cudaMemcpy(lse, dl.p, dl.bytes, cudaMemcpyDeviceToHost));
    if (dmask) {
        const size_t n = (size_t)B * H * sq * sk;
        if (!want_dbg) {
            memset(dmask, 1, n); /* no dropout: every entry kept */
        } else {
            std::vector<uint16_t> h(n);
            FD_CU(cudaMemcpy(h.data(), ddbg.p, n * 2, cudaMemcpyDeviceToHost));
            for (size_t x = 0; x < n; x++) dmask[x] = (h[x] & 0x8000u) ? 0 : 1;
        }
    }
    return 0;
}

int exp2_batch(int mode, const float *x, float *out, size_t n, char *err, size_t errlen)
{
    if (fd_cuda_device_count() <= 0) FD_FAIL("no CUDA device");
    fd_dbuf dx, dy;
    if (fd_dalloc(dx, n * 4, "exp2 input", err, errlen)) return -1;
    if (fd_dalloc(dy, n * 4, "exp2 output", err, errlen)) return -1;
    FD_CU(cudaMemcpy(dx.p, x, n * 4, cudaMemcpyHostToDevice));
    exp2_batch_kernel<<<(unsigned)((n + 255) / 256), 256>>>(dx.as<float>(), dy.as<float>(), n, mode);
    FD_LAUNCH_CHECK();
    FD_CU(cudaDeviceSynchronize());
    FD_CU(cudaMemcpy(out, dy.p, n * 4, cudaMemcpyDeviceToHost));
    return 0;
}

} // namespace

extern "C" {

int fd_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

int fd_cuda_device_name(char *buf, size_t len)
{
    cudaDeviceProp pr;
    int drv = 0;
    if (fd_cuda_device_count() <= 0 || cudaGetDeviceProperties(&pr, 0) != cudaSuccess) {
        cudaGetLastError();
        snprintf(buf, len, "no CUDA device");
        return -1;
    }
    cudaDriverGetVersion(&drv);
    snprintf(buf, len, "%s, sm_%d%d, %d SMs, CUDA driver %d.%d", pr.name, pr.major, pr.minor,
             pr.multiProcessorCount, drv / 1000, (drv % 1000) / 10);
    return 0;
}

void fd_cuda_cfg_default(fd_cuda_cfg *cfg)
{
    cfg->br = 128;
    cfg->bc = 64;
    cfg->exp2_mode = 0;
    cfg->p_fp32 = 0;
    cfg->splits = 1;
    cfg->repeats = 0;
}

const char *fd_cuda_fp32_path(void)
{
    return "fp32 FMA (no tensor cores, no tf32): one warp per query row, keys in tiles of 32 "
           "visited last to first, S by sequential fmaf over the head dim, FA2 online softmax, "
           "row sum and O += P V by fmaf in key order";
}

int fd_cuda_flash_forward(const fd_problem *p, const fd_cuda_cfg *cfg, const float *q,
                          const float *k, const float *v, float *o, float *lse, uint8_t *dmask,
                          fd_cuda_timing *t, char *err, size_t errlen)
{
    return run_flash(MODE_FLASH, p, cfg, q, k, v, o, lse, dmask, t, err, errlen);
}

int fd_cuda_splitkv_forward(const fd_problem *p, const fd_cuda_cfg *cfg, const float *q,
                            const float *k, const float *v, float *o, float *lse,
                            fd_cuda_timing *t, char *err, size_t errlen)
{
    return run_flash(MODE_SPLIT, p, cfg, q, k, v, o, lse, nullptr, t, err, errlen);
}

int fd_cuda_exp2_portable_batch(const float *x, float *out, size_t n, char *err, size_t errlen)
{
    return exp2_batch(1, x, out, n, err, errlen);
}

int fd_cuda_exp2_hw_batch(const float *x, float *out, size_t n, char *err, size_t errlen)
{
    return exp2_batch(0, x, out, n, err, errlen);
}

} /* extern "C" */
