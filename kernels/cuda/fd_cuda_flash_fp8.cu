/* fd_cuda_flash_fp8.cu: the FP8 flash forward (issue 15 item 4, docs/fp8.md) on
 * mma.sync.aligned.m16n8k32 (e4m3 / e5m2 in, fp32 accumulate; sm_89 and newer), with
 * FlashAttention-3's FP8 scaling, and its host side. It is cuda-flash for FP8 dtypes:
 * fd_cuda_flash_forward sends FP8 problems here.
 *
 * Numerics, exactly as fd_cpu_flash_forward replays them for FP8 (fd_cpu_attn.h):
 *   K/V tiles of BC = 64 keys from the last visible one down to 0 (FA2's order), a CTA of
 *   4 warps per 64 query rows (BR = 64: rows are independent, br does not enter);
 *   S = Q K^T: chained m16n8k32 blocks over the head dim from 0 (c = 0 first), Q and K the
 *   FP8 codes; scale_log2 = fd_fp8_scale_log2 (descales folded in, as FA3);
 *   max_scaled = fmaf(m, scale_log2, -8) (FA3's Max_offset 8; 0 for a row with no key);
 *   P = exp2(fmaf(s, scale_log2, -max_scaled)) in [0, 256]; the row sum l is FA2's quad
 *   layout (partials over columns 8a + 2t, 8a + 2t + 1, combined (l0 + l2) + (l1 + l3));
 *   O and l rescaled by exp2((m_old - m_new) scale_log2) every tile; P cast to e4m3 by
 *   cvt.rn.satfinite.e4m3x2.f32 (the cast cutlass and so FA3 use); O += P V chained
 *   m16n8k32 blocks over the tile's two 32-key chunks in key order; O = O ((1 / l)
 *   v_descale) rounded to bfloat16 (FA3's finalize(v_descale)); LSE = fmaf(m, scale_log2
 *   ln 2, fd_logf_portable(l 2^-8)).
 *
 * Operand layouts. An m16n8k32 A fragment holds, per thread (g = lane / 4, t = lane % 4),
 * k = 4t..4t+3 and 16+4t..16+4t+3 of rows g and g + 8; the S accumulator holds columns
 * 8a + 2t, 8a + 2t + 1. P goes from the accumulator to the A fragment without shuffles by
 * relabelling k inside each 32-key chunk: k = 4t + i holds key 2t + i (i < 2) or
 * 8 + 2t + i - 2 (i >= 2), k = 16 + 4t + i the same plus 16 (fd_fp8_pv_key, fd_problem.h). V is fed
 * through the same relabelling, so each product P_ij V_jd still pairs the same key j:
 * the sum is the same set of products in each 32-term block (and in each 16-term half).
 * FP8 mma has only .row.col and ldmatrix has no 8-bit transpose on sm_90, so the host
 * writes V^T ([B][Hk][D][sk rounded up to 64], FP8 codes, zero padded): an exact
 * permutation of the codes. */
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <vector>

#include "fd_cuda.h"
#include "fd_cuda_util.h"
#include "fd_dtype.h"
#include "fd_exp2.h"
#include "fd_cuda_flash_kernel.cuh"

namespace fd_fp8 {

constexpr int BR = 64, BC = 64, NT = 128;

struct Fp8Params {
    const uint8_t *q, *k; /* FP8 codes [B][S][H][D] */
    const uint8_t *vt;    /* V^T codes [B][Hk][D][skp] */
    __nv_bfloat16 *o;     /* [B][Sq][H][D] */
    float *lse;           /* [B][H][Sq] */
    int B, H, Hk, sq, sk, skp, h_per_kv, mask, exp2_mode;
    float scale_log2, scale_lse, v_descale, max_off, lsum_scale;
};


#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define FD_FP8_MMA_OK 1
#endif

/* d += a b: m16n8k32, A row-major (ta), B column-major (tb), fp32 accumulate. */
template <bool A5, bool B5>
__device__ __forceinline__ void mma32(float *d, const uint32_t *a, const uint32_t *b)
{
#ifdef FD_FP8_MMA_OK
#define FD_FP8_MMA(AT, BT)                                                                                       \
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32." AT "." BT ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "       \
                 "{%8,%9}, {%0,%1,%2,%3};\n"                                                                     \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
    if constexpr (!A5 && !B5) FD_FP8_MMA("e4m3", "e4m3");
    else if constexpr (A5 && B5) FD_FP8_MMA("e5m2", "e5m2");
    else if constexpr (!A5 && B5) FD_FP8_MMA("e4m3", "e5m2");
    else FD_FP8_MMA("e5m2", "e4m3");
#undef FD_FP8_MMA
#else
    (void)d; (void)a; (void)b;
    __trap(); /* the host refuses GPUs below sm_89 before launching */
#endif
}

/* Two floats to e4m3 (or e5m2) codes, round to nearest even, saturating: lo in the low
 * byte. PTX: the first source goes to the upper half of the destination. */
template <bool E5> __device__ __forceinline__ uint32_t cvt2(float lo, float hi)
{
    uint16_t r = 0;
#ifdef FD_FP8_MMA_OK
    if constexpr (E5) asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
#else
    (void)lo; (void)hi;
    __trap();
#endif
    return (uint32_t)r;
}

__device__ __forceinline__ float exp2_mode(int mode, float x) { return mode ? fd_exp2_portable(x) : fd_flash::exp2_hw(x); }

__device__ __forceinline__ uint32_t ld32(const uint8_t *p) { return *reinterpret_cast<const uint32_t *>(p); }

template <int D, bool E5>
__global__ void __launch_bounds__(NT) flash_fwd_fp8_kernel(const Fp8Params P)
{
    constexpr int NA = BC / 8, ND = D / 8;
    __shared__ __align__(16) uint8_t sQ[BR * D], sK[BC * D], sVt[D * BC];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.x * BR, bh = blockIdx.y, b = bh / P.H, h = bh % P.H, hk = h / P.h_per_kv;
    const int sq = P.sq, sk = P.sk;
    const long diag = P.mask == FD_MASK_CAUSAL_BR ? (long)sk - sq : 0;
    int n_hi = (sk + BC - 1) / BC;
    {
        const long last_row = (long)min(m0 + BR, sq) - 1;
        long z = (long)sk - 1;
        if (P.mask != FD_MASK_NONE) z = min(z, last_row + diag);
        n_hi = z < 0 ? 0 : min(n_hi, (int)(z / BC) + 1);
    }
    const int r0 = warp * 16; /* the warp's first row in the tile */
    if (n_hi <= 0) { /* no row of this CTA sees a key: O = 0, LSE = +Inf */
        for (int r = 0; r < 2; r++) {
            const int i = m0 + r0 + g + 8 * r;
            if (i >= sq) continue;
            for (int a = 0; a < ND; a++) {
                __nv_bfloat162 z2 = __floats2bfloat162_rn(0.0f, 0.0f);
                *reinterpret_cast<__nv_bfloat162 *>(P.o + (((size_t)b * sq + i) * P.H + h) * D + a * 8 + 2 * t) = z2;
            }
            if (t == 0) P.lse[((size_t)b * P.H + h) * sq + i] = INFINITY;
        }
        return;
    }
    /* Q tile: 16-byte chunks, rows past sq zero */
    for (int idx = tid; idx < BR * D / 16; idx += NT) {
        const int row = idx / (D / 16), ch = idx % (D / 16), i = m0 + row;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (i < sq) val = *reinterpret_cast<const uint4 *>(P.q + (((size_t)b * sq + i) * P.H + h) * D + ch * 16);
        *reinterpret_cast<uint4 *>(sQ + row * D + ch * 16) = val;
    }
    float o_acc[ND][4];
#pragma unroll
    for (int a = 0; a < ND; a++)
#pragma unroll
        for (int e = 0; e < 4; e++) o_acc[a][e] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    const float sl2 = P.scale_log2;
    const uint8_t *vtg = P.vt + ((size_t)b * P.Hk + hk) * D * (size_t)P.skp;

    for (int nb = n_hi - 1; nb >= 0; nb--) {
        const int j0 = nb * BC;
        __syncthreads(); /* the previous tile's readers are done */
        for (int idx = tid; idx < BC * D / 16; idx += NT) {
            const int row = idx / (D / 16), ch = idx % (D / 16), j = j0 + row;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (j < sk) val = *reinterpret_cast<const uint4 *>(P.k + (((size_t)b * sk + j) * P.Hk + hk) * D + ch * 16);
            *reinterpret_cast<uint4 *>(sK + row * D + ch * 16) = val;
        }
        /* V^T tile relabelled: sVt[d][32 c + p] = V^T[d][j0 + 32 c + perm(p)] (padding is 0) */
        for (int idx = tid; idx < D * BC; idx += NT) {
            const int d = idx / BC, pos = idx % BC;
            sVt[d * BC + pos] = vtg[(size_t)d * P.skp + j0 + (pos & ~31) + fd_fp8_pv_key(pos & 31)];
        }
        __syncthreads();

        /* S = Q K^T: 32-term blocks over the head dim from 0, chained */
        float s[NA][4];
#pragma unroll
        for (int a = 0; a < NA; a++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[a][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 32; kk++) {
            uint32_t af[4];
            af[0] = ld32(sQ + (r0 + g) * D + kk * 32 + 4 * t);
            af[1] = ld32(sQ + (r0 + g + 8) * D + kk * 32 + 4 * t);
            af[2] = ld32(sQ + (r0 + g) * D + kk * 32 + 16 + 4 * t);
            af[3] = ld32(sQ + (r0 + g + 8) * D + kk * 32 + 16 + 4 * t);
#pragma unroll
            for (int a = 0; a < NA; a++) {
                uint32_t bf[2];
                bf[0] = ld32(sK + (a * 8 + g) * D + kk * 32 + 4 * t);
                bf[1] = ld32(sK + (a * 8 + g) * D + kk * 32 + 16 + 4 * t);
                mma32<E5, E5>(s[a], af, bf);
            }
        }
        /* masking: keys past sk, the causal diagonal */
        fd_flash::mask_tile<NA>(&s[0][0], P, m0 + r0, j0, sk, diag, g, t);
        /* online softmax with FA3's FP8 Max_offset */
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const float sc = fd_flash::softmax_row_max<NA>(&s[0][0], r, m_run[r], l_run[r], sl2, P.exp2_mode);
#pragma unroll
            for (int a = 0; a < ND; a++) {
                o_acc[a][2 * r] = __fmul_rn(o_acc[a][2 * r], sc);
                o_acc[a][2 * r + 1] = __fmul_rn(o_acc[a][2 * r + 1], sc);
            }
            fd_flash::softmax_row_exp<NA, true>(&s[0][0], r, m_run[r], l_run[r], sl2, P.max_off, P.exp2_mode);
        }
        /* P to e4m3 in the A layout of each 32-key chunk (see the relabelling above); O += P V */
#pragma unroll
        for (int c = 0; c < BC / 32; c++) {
            const int a0 = 4 * c;
            uint32_t af[4];
            af[0] = cvt2<false>(s[a0][0], s[a0][1]) | (cvt2<false>(s[a0 + 1][0], s[a0 + 1][1]) << 16);
            af[1] = cvt2<false>(s[a0][2], s[a0][3]) | (cvt2<false>(s[a0 + 1][2], s[a0 + 1][3]) << 16);
            af[2] = cvt2<false>(s[a0 + 2][0], s[a0 + 2][1]) | (cvt2<false>(s[a0 + 3][0], s[a0 + 3][1]) << 16);
            af[3] = cvt2<false>(s[a0 + 2][2], s[a0 + 2][3]) | (cvt2<false>(s[a0 + 3][2], s[a0 + 3][3]) << 16);
#pragma unroll
            for (int n = 0; n < ND; n++) {
                uint32_t bf[2];
                bf[0] = ld32(sVt + (n * 8 + g) * BC + c * 32 + 4 * t);
                bf[1] = ld32(sVt + (n * 8 + g) * BC + c * 32 + 16 + 4 * t);
                mma32<false, E5>(o_acc[n], af, bf);
            }
        }
    }
    /* finalize: quad sum (l0 + l2) + (l1 + l3), one reciprocal, times v_descale; bf16 out */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        bool empty;
        float inv;
        const float l = fd_flash::quad_row_sum(l_run[r], &empty, &inv);
        const float fs = __fmul_rn(inv, P.v_descale);
        const int i = m0 + r0 + g + 8 * r;
        if (i >= sq) continue;
        __nv_bfloat16 *o = P.o + (((size_t)b * sq + i) * P.H + h) * D;
#pragma unroll
        for (int a = 0; a < ND; a++) {
            const __nv_bfloat162 w = __floats2bfloat162_rn(__fmul_rn(o_acc[a][2 * r], fs), __fmul_rn(o_acc[a][2 * r + 1], fs));
            *reinterpret_cast<__nv_bfloat162 *>(o + a * 8 + 2 * t) = w;
        }
        if (t == 0)
            P.lse[((size_t)b * P.H + h) * sq + i] =
                empty ? INFINITY : __fmaf_rn(m_run[r], P.scale_lse, fd_logf_portable(__fmul_rn(l, P.lsum_scale)));
    }
}

template <int D, bool E5> int launch(const Fp8Params &P, cudaStream_t st, char *err, size_t errlen)
{
    dim3 grid((unsigned)((P.sq + BR - 1) / BR), (unsigned)(P.B * P.H));
    flash_fwd_fp8_kernel<D, E5><<<grid, NT, 0, st>>>(P);
    FD_LAUNCH_CHECK();
    return 0;
}

/* The four instantiations: head dim 64 or 128, e4m3 or e5m2 inputs (the mask is a
 * runtime argument). */
int dispatch(const Fp8Params &P, int D, bool e5, cudaStream_t st, char *err, size_t errlen)
{
    if (D == 64) return e5 ? launch<64, true>(P, st, err, errlen) : launch<64, false>(P, st, err, errlen);
    if (D == 128) return e5 ? launch<128, true>(P, st, err, errlen) : launch<128, false>(P, st, err, errlen);
    FD_FAIL("FP8 flash: head_dim %d unsupported (64 or 128)", D);
}

__global__ void cvt_kernel(const float *x, uint8_t *out, size_t n, int e5)
{
    const size_t i = 2 * ((size_t)blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= n) return;
    const float lo = x[i], hi = i + 1 < n ? x[i + 1] : 0.0f;
    const uint32_t r = e5 ? cvt2<true>(lo, hi) : cvt2<false>(lo, hi);
    out[i] = (uint8_t)(r & 0xffu);
    if (i + 1 < n) out[i + 1] = (uint8_t)(r >> 8);
}

/* 0 when the current GPU runs FP8 mma.sync (sm_89+), else -1 naming it. */
int check_arch(char *err, size_t errlen)
{
    if (fd_cuda_device_count() <= 0) FD_FAIL("no CUDA device");
    int dev = 0, ma = 0, mi = 0;
    FD_CU(cudaGetDevice(&dev));
    FD_CU(cudaDeviceGetAttribute(&ma, cudaDevAttrComputeCapabilityMajor, dev));
    FD_CU(cudaDeviceGetAttribute(&mi, cudaDevAttrComputeCapabilityMinor, dev));
    if (ma * 10 + mi < 89)
        FD_FAIL("FP8 flash: mma.sync m16n8k32 with e4m3/e5m2 needs compute capability 8.9 or newer, this GPU is sm_%d%d",
                ma, mi);
    return 0;
}

/* Host floats (exact FP8 values) -> codes; -1 naming the first value that is not one. */
int to_codes(const float *x, size_t n, fd_dtype t, std::vector<uint8_t> &c, const char *what, char *err, size_t errlen)
{
    c.resize(n);
    for (size_t e = 0; e < n; e++) {
        c[e] = fd_f32_to_fp8_bits(x[e], t, FD_FP8_SATFINITE);
        const float back = fd_fp8_bits_to_f32(c[e], t);
        if (fd_f32_bits(back) != fd_f32_bits(x[e]))
            FD_FAIL("FP8 flash: %s[%zu] = %a is not an %s value", what, e, (double)x[e], fd_dtype_name(t));
    }
    return 0;
}

} // namespace fd_fp8

using namespace fd_fp8;

extern "C" int fd_cuda_flash_fp8_forward(const fd_problem *p, const fd_cuda_cfg *cfg_in, const float *q, const float *k,
                                         const float *v, float *o, float *lse, fd_cuda_timing *tm, char *err,
                                         size_t errlen)
{
    if (!p || !q || !k || !v || !o || !lse) FD_FAIL("null argument");
    if (!fd_dtype_is_fp8(p->dtype)) FD_FAIL("FP8 flash: dtype %s is not FP8", fd_dtype_name(p->dtype));
    fd_cuda_cfg cfg;
    fd_cuda_cfg_default(&cfg);
    if (cfg_in) cfg = *cfg_in;
    if (p->batch <= 0 || p->heads <= 0 || p->kv_heads <= 0 || p->seqlen_q <= 0 || p->seqlen_k <= 0 ||
        p->heads % p->kv_heads != 0)
        FD_FAIL("FP8 flash: bad shape (batch %d, heads %d, kv_heads %d, seqlen_q %d, seqlen_k %d)", p->batch, p->heads,
                p->kv_heads, p->seqlen_q, p->seqlen_k);
    if (p->head_dim != 64 && p->head_dim != 128) FD_FAIL("FP8 flash: head_dim %d unsupported (64 or 128)", p->head_dim);
    if (fd_problem_check_fp8(p, err, errlen)) return -1;
    if (p->mask != FD_MASK_NONE && p->mask != FD_MASK_CAUSAL_TL && p->mask != FD_MASK_CAUSAL_BR)
        FD_FAIL("FP8 flash: mask %d unsupported", (int)p->mask);
    if (cfg.bc != 0 && cfg.bc != BC) FD_FAIL("FP8 flash: key tile bc %d unsupported (64)", cfg.bc);
    if (cfg.p_fp32) FD_FAIL("FP8 flash: p_fp32 unsupported (P is cast to e4m3 for the FP8 mma)");
    if (cfg.exp2_mode != 0 && cfg.exp2_mode != 1) FD_FAIL("exp2_mode %d unsupported (0 hw, 1 portable)", cfg.exp2_mode);
    if (cfg.repeats < 0 || cfg.repeats > 100000) FD_FAIL("repeats %d out of range", cfg.repeats);
    if ((long)p->batch * p->heads > 65535) FD_FAIL("batch * heads = %ld exceeds the grid limit 65535", (long)p->batch * p->heads);
    if (check_arch(err, errlen)) return -1;

    const int B = p->batch, H = p->heads, Hk = p->kv_heads, sq = p->seqlen_q, sk = p->seqlen_k, D = p->head_dim;
    const int skp = (sk + BC - 1) / BC * BC;
    std::vector<uint8_t> cq, ck, cv, cvt((size_t)B * Hk * D * skp, 0);
    if (to_codes(q, fd_q_numel(p), p->dtype, cq, "Q", err, errlen) || to_codes(k, fd_kv_numel(p), p->dtype, ck, "K", err, errlen) ||
        to_codes(v, fd_kv_numel(p), p->dtype, cv, "V", err, errlen))
        return -1;
    for (int b = 0; b < B; b++) /* V^T: an exact permutation of the codes */
        for (int j = 0; j < sk; j++)
            for (int hk = 0; hk < Hk; hk++)
                for (int d = 0; d < D; d++)
                    cvt[(((size_t)b * Hk + hk) * D + d) * skp + j] = cv[fd_kv_index(p, b, j, hk, d)];
    fd_dbuf dq, dk, dvt, dO, dl;
    if (fd_dalloc(dq, cq.size(), "FP8 Q", err, errlen) || fd_dalloc(dk, ck.size(), "FP8 K", err, errlen) ||
        fd_dalloc(dvt, cvt.size(), "FP8 V^T", err, errlen) ||
        fd_dalloc_guarded(dO, fd_q_numel(p) * 2, "O", err, errlen) ||
        fd_dalloc_guarded(dl, fd_lse_numel(p) * 4, "LSE", err, errlen))
        return -1;
    FD_CU(cudaMemcpy(dq.p, cq.data(), cq.size(), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(dk.p, ck.data(), ck.size(), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(dvt.p, cvt.data(), cvt.size(), cudaMemcpyHostToDevice));
    FD_CU(cudaMemset(dO.p, 0xff, dO.bytes)); /* poison: unwritten outputs read back as NaN */
    FD_CU(cudaMemset(dl.p, 0xff, dl.bytes));

    Fp8Params P;
    memset(&P, 0, sizeof P);
    P.q = dq.as<uint8_t>(); P.k = dk.as<uint8_t>(); P.vt = dvt.as<uint8_t>();
    P.o = dO.as<__nv_bfloat16>(); P.lse = dl.as<float>();
    P.B = B; P.H = H; P.Hk = Hk; P.sq = sq; P.sk = sk; P.skp = skp; P.h_per_kv = H / Hk;
    P.mask = (int)p->mask;
    P.exp2_mode = cfg.exp2_mode;
    P.scale_log2 = fd_fp8_scale_log2(p);
    P.scale_lse = P.scale_log2 * (float)0.69314718055994530942; /* FA3: softmax_scale_log2 * float(M_LN2) */
    P.v_descale = fd_descale(p->v_descale);
    if (cfg.fp8_max_offset < 0 || cfg.fp8_max_offset > 16)
        FD_FAIL("cuda-flash FP8: Max_offset %d outside 0..16", cfg.fp8_max_offset);
    P.max_off = (float)cfg.fp8_max_offset;
    P.lsum_scale = ldexpf(1.0f, -cfg.fp8_max_offset);
    const bool e5 = p->dtype == FD_DT_E5M2;
    if (dispatch(P, D, e5, 0, err, errlen)) return -1;
    FD_CU(cudaDeviceSynchronize());
    if (fd_time_repeats(cfg.repeats, [&] { return dispatch(P, D, e5, 0, err, errlen); }, tm, err, errlen)) return -1;
    if (fd_dguard_check(dO, "O", err, errlen) || fd_dguard_check(dl, "LSE", err, errlen)) return -1;
    std::vector<uint16_t> ho(fd_q_numel(p));
    FD_CU(cudaMemcpy(ho.data(), dO.p, ho.size() * 2, cudaMemcpyDeviceToHost));
    for (size_t e = 0; e < ho.size(); e++) o[e] = fd_bf16_bits_to_f32(ho[e]);
    FD_CU(cudaMemcpy(lse, dl.p, dl.bytes, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int fd_cuda_fp8_cvt_batch(const float *x, uint8_t *out, size_t n, fd_dtype t, char *err, size_t errlen)
{
    if (!fd_dtype_is_fp8(t)) FD_FAIL("fd_cuda_fp8_cvt_batch: dtype %s is not FP8", fd_dtype_name(t));
    if (check_arch(err, errlen)) return -1;
    fd_dbuf dx, dy;
    if (fd_dalloc(dx, n * 4, "cvt input", err, errlen) || fd_dalloc(dy, n, "cvt output", err, errlen)) return -1;
    FD_CU(cudaMemcpy(dx.p, x, n * 4, cudaMemcpyHostToDevice));
    const size_t pairs = (n + 1) / 2;
    cvt_kernel<<<(unsigned)((pairs + 255) / 256), 256>>>(dx.as<float>(), dy.as<uint8_t>(), n, t == FD_DT_E5M2);
    FD_LAUNCH_CHECK();
    FD_CU(cudaDeviceSynchronize());
    FD_CU(cudaMemcpy(out, dy.p, n, cudaMemcpyDeviceToHost));
    return 0;
}
