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
#include <algorithm>
#include <vector>

#include "fd_cuda.h"
#include "fd_cuda_util.h"
#include "fd_dtype.h"
#include "fd_exp2.h"
#include "fd_philox.h"

#include "fd_cuda_flash_kernel.cuh"

namespace fd_flash {

/* Split-KV combine: lse = log(sum_s exp(lse_s - max)) + max; O = sum_s exp(lse_s - lse) O_s,
 * with the portable exp and log of fd_exp2.h (CUDA's expf/logf and glibc's differ in the
 * last bit on some arguments; these give the replay's bits). */
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
        for (int s = 0; s < P.splits; s++)
            sum = __fadd_rn(sum, fd_expf_portable(__fsub_rn(P.lse_accum[s * plane + row], mx)));
        lse = __fadd_rn(fd_logf_portable(sum), mx);
    }
    T *o = static_cast<T *>(P.o) + (((size_t)b * P.sq + i) * P.H + h) * P.dp;
    for (int d = threadIdx.x; d < P.dp; d += blockDim.x) {
        float acc = 0.0f;
        if (mx != -INFINITY)
            for (int s = 0; s < P.splits; s++) {
                float w = fd_expf_portable(__fsub_rn(P.lse_accum[s * plane + row], lse));
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
    float *o = static_cast<float *>(P.o) + (((size_t)b * sq + i) * P.H + h) * dp;
    /* varlen (B = 1, the packed totals): row i's sequence, its keys from k0; il, sqs, sks
     * the row and the lengths within it */
    int il = i, sqs = sq, sks = sk;
    size_t k0 = (size_t)b * sk;
    if (P.cu_q) {
        const int s = fd_varlen_seq(P.cu_q, P.nseq, i);
        il = i - P.cu_q[s];
        sqs = P.cu_q[s + 1] - P.cu_q[s];
        sks = P.cu_k[s + 1] - P.cu_k[s];
        k0 = (size_t)P.cu_k[s];
    }
    const float *K = static_cast<const float *>(P.k) + k0 * P.Hk * dp;
    const float *V = static_cast<const float *>(P.v) + k0 * P.Hk * dp;
    int vlo, vhi;
    const int nvis = fd_vis_range(P.mask, P.win, P.wl, P.wr, il, sqs, sks, &vlo, &vhi);
    constexpr int MAXC = 8; /* dp <= 256 */
    float acc[MAXC];
#pragma unroll
    for (int c = 0; c < MAXC; c++) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const int nb_hi = nvis ? vhi / 32 + 1 : 0, nb_lo = nvis ? vlo / 32 : 0;
    const float sl2 = P.scale_log2;
    const float sr = P.slope_raw ? P.slope_raw[h] : 0.0f;
    for (int nb = nb_hi - 1; nb >= nb_lo; nb--) {
        const int j = nb * 32 + lane;
        float s = -INFINITY;
        if (j >= vlo && j <= vhi) {
            const float *kj = K + ((size_t)j * P.Hk + hk) * dp;
            float d0 = 0.0f;
            for (int d = 0; d < dp; d++) d0 = __fmaf_rn(q[d], kj[d], d0);
            s = fd_mods_score(d0, P.cap_in, sr, fd_alibi_dist(il, j, sqs, sks));
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
        if (P.dropout && j >= vlo && j <= vhi &&
            fd_fa2_dropout_byte(P.seed, P.offset, P.H, b, h, i, j) > P.thr)
            pd = 0.0f;
        const int nk = min(32, (int)(sks - nb * 32));
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
    if (lane == 0) P.lse[((size_t)b * P.H + h) * sq + i] = empty ? INFINITY : __fmaf_rn(m, P.scale, fd_logf_portable(l));
}

__global__ void exp2_batch_kernel(const float *x, float *y, size_t n, int mode)
{
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n)
        y[idx] = mode == 0 ? exp2_hw(x[idx]) : mode == 1 ? fd_exp2_portable(x[idx])
               : mode == 2 ? fd_expf_portable(x[idx]) : fd_logf_portable(x[idx]);
}

/* ---------------------------------------------------------------------------------- */

} // namespace fd_flash

using namespace fd_flash;

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
    if (p->window && (p->window_left < -1 || p->window_right < -1))
        FD_FAIL("window (%d, %d): each side must be >= 0, or -1 for unbounded", p->window_left, p->window_right);
    if (!(p->softcap >= 0.0f) || isinf(p->softcap)) FD_FAIL("softcap %g: must be finite and >= 0", (double)p->softcap);
    if (p->alibi && p->heads > FD_ALIBI_MAX_HEADS) FD_FAIL("ALiBi with %d heads: at most %d", p->heads, FD_ALIBI_MAX_HEADS);
    if (p->varlen) { /* fd_problem_check_varlen's rules (fd_common.c is C; the loop is short) */
        if (p->varlen < 0 || p->varlen > FD_VARLEN_MAX_SEQS || p->batch != 1)
            FD_FAIL("varlen: %d sequences in a batch of %d (expected 1..%d packed in batch 1)", p->varlen, p->batch,
                    FD_VARLEN_MAX_SEQS);
        const int *cu[2] = {p->cu_seqlens_q, p->cu_seqlens_k};
        const int tot[2] = {p->seqlen_q, p->seqlen_k};
        for (int t = 0; t < 2; t++) {
            if (cu[t][0] != 0 || cu[t][p->varlen] != tot[t])
                FD_FAIL("cu_seqlens_%c must run from 0 to the packed length %d", t ? 'k' : 'q', tot[t]);
            for (int s = 0; s < p->varlen; s++)
                if (cu[t][s + 1] < cu[t][s]) FD_FAIL("cu_seqlens_%c decreases at entry %d", t ? 'k' : 'q', s + 1);
        }
        if (p->dropout_p > 0.0) FD_FAIL("varlen with dropout is not supported");
        if ((long)p->varlen * p->heads > 65535) FD_FAIL("sequences * heads exceeds the grid limit 65535");
    }
    if (p->page_size) { /* fd_problem_check_paged's rules (fd_common.c is C) */
        if (p->page_size < 0) FD_FAIL("paged KV cache: page_size %d must be positive", p->page_size);
        if (p->batch > FD_PAGED_MAX_BATCH) FD_FAIL("paged KV cache: batch %d, at most %d", p->batch, FD_PAGED_MAX_BATCH);
        if (p->varlen || p->alibi || p->dropout_p > 0.0) FD_FAIL("paged KV cache with varlen, ALiBi or dropout is not supported");
        if (p->mask != FD_MASK_NONE && p->mask != FD_MASK_CAUSAL_BR) FD_FAIL("paged KV cache: mask none or causal_br");
        const int np = fd_paged_pages(p);
        if (!p->block_table || p->num_pages < 1 || (long)np * p->batch > FD_PAGED_MAX_ENTRIES)
            FD_FAIL("paged KV cache: no block table, or %d pages x %d entries", np, p->batch);
        for (int b = 0; b < p->batch; b++) {
            if (p->cache_seqlens[b] < p->seqlen_q || p->cache_seqlens[b] > p->seqlen_k)
                FD_FAIL("cache_seqlens[%d] = %d, expected %d..%d", b, p->cache_seqlens[b], p->seqlen_q, p->seqlen_k);
            for (int t = 0; t < np; t++) {
                const int e = p->block_table[(size_t)b * np + t];
                if (e < 0 || e >= p->num_pages) FD_FAIL("block_table[%d][%d] = %d, expected 0..%d", b, t, e, p->num_pages - 1);
            }
        }
    }
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
    if (cfg.impl == FD_CUDA_IMPL_WGMMA && cfg.bc == 128 && (cfg.br == 64 || cfg.br == 128)) {
        /* the Hopper kernel's key tile 128 (its rows per CTA are its own: no numerical effect) */
    } else if (cfg.impl == FD_CUDA_IMPL_MMA && cfg.br == 128 && cfg.bc == 128 && dp == 64) {
        /* FA2's own tile at head dim 64 without dropout (any problem runs it) */
    } else if (!((cfg.br == 64 && cfg.bc == 64) || (cfg.br == 128 && cfg.bc == 64))) {
        FD_FAIL("tile %dx%d unsupported: supported (br, bc) = (64, 64), (128, 64)%s", cfg.br, cfg.bc,
                cfg.impl == FD_CUDA_IMPL_WGMMA ? ", and (64 or 128, 128) on cuda-flash-sm90"
                                               : ", and (128, 128) at head dims 33..64");
    }
    if (cfg.exp2_mode != 0 && cfg.exp2_mode != 1) FD_FAIL("exp2_mode %d unsupported (0 hw, 1 portable)", cfg.exp2_mode);
    if (cfg.repeats < 0 || cfg.repeats > 100000) FD_FAIL("repeats %d out of range", cfg.repeats);
    if (cfg.impl != FD_CUDA_IMPL_MMA && cfg.impl != FD_CUDA_IMPL_WGMMA) FD_FAIL("impl %d unsupported (0 mma.sync, 1 wgmma)", cfg.impl);
    const bool sm90 = cfg.impl == FD_CUDA_IMPL_WGMMA;
    if (sm90) {
        char why[160];
        if (mode == MODE_SPLIT) FD_FAIL("cuda-flash-sm90 has no split-KV kernel");
        if (dmask) FD_FAIL("cuda-flash-sm90 has no debug mask output");
        if (!fd_cuda_sm90_supports(p, &cfg, why, sizeof why)) FD_FAIL("%s", why);
    }
    const bool fp32 = p->dtype == FD_DT_FP32;
    if (mode == MODE_SPLIT) {
        if (fp32) FD_FAIL("split-KV supports fp16 and bf16 only (fp32 inputs: use flash)");
        if (cfg.splits < 1 || cfg.splits > 128) FD_FAIL("splits %d out of range [1, 128]", cfg.splits);
        if (dmask) FD_FAIL("split-KV has no debug mask output");
        fd_problem plain = *p; /* the paged KV cache is split-KV's (FA2's kvcache path); the rest not yet */
        plain.page_size = 0;
        if (fd_problem_has_mods(&plain)) FD_FAIL("split-KV does not support windows, softcap, ALiBi or varlen yet");
    } else if (p->page_size > 0) {
        FD_FAIL("a paged KV cache runs on split-KV (cuda-splitkv), as FA2's mha_fwd_kvcache sends it to its split kernel");
    }
    if (dmask && fp32) FD_FAIL("debug mask output needs fp16 or bf16 (the fp32 path has none)");
    int ndev = fd_cuda_device_count();
    if (ndev <= 0) FD_FAIL("no CUDA device");
    if (sm90 && sm90_supported(err, errlen)) return -1;

    const int B = p->batch, H = p->heads, Hk = p->kv_heads, sq = p->seqlen_q, sk = p->seqlen_k, d = p->head_dim;
    fd_dbuf dq, dk, dv, dO, dl, doa, dla, ddbg;
    if (fd_cu_upload(dq, q, B, sq, H, d, dp, p->dtype, "Q", err, errlen)) return -1;
    fd_dbuf dbt, dcl;
    if (p->page_size > 0) {
        /* the physical cache [num_pages][page][Hk][dp] from the logical K, V (fd_paged_scatter,
         * zeros in slots no entry maps), guarded like the outputs; the table and the lengths */
        const size_t row = (size_t)Hk * d, rows = (size_t)p->num_pages * p->page_size;
        std::vector<float> ck(rows * row, 0.0f), cv(rows * row, 0.0f);
        for (int b = 0; b < B; b++)
            for (int j = 0; j < sk; j++) {
                const size_t pr = (size_t)fd_paged_row(p, b, j) * row;
                memcpy(&ck[pr], k + fd_kv_index(p, b, j, 0, 0), sizeof(float) * row);
                memcpy(&cv[pr], v + fd_kv_index(p, b, j, 0, 0), sizeof(float) * row);
            }
        fd_dbuf tk, tv; /* converted to the dtype and padded, then into guarded buffers */
        if (fd_cu_upload(tk, ck.data(), p->num_pages, p->page_size, Hk, d, dp, p->dtype, "K cache", err, errlen)) return -1;
        if (fd_cu_upload(tv, cv.data(), p->num_pages, p->page_size, Hk, d, dp, p->dtype, "V cache", err, errlen)) return -1;
        if (fd_dalloc_guarded(dk, tk.bytes, "the paged K cache", err, errlen) ||
            fd_dalloc_guarded(dv, tv.bytes, "the paged V cache", err, errlen))
            return -1;
        FD_CU(cudaMemcpy(dk.p, tk.p, tk.bytes, cudaMemcpyDeviceToDevice));
        FD_CU(cudaMemcpy(dv.p, tv.p, tv.bytes, cudaMemcpyDeviceToDevice));
        const size_t nt = (size_t)B * fd_paged_pages(p);
        if (fd_dalloc_guarded(dbt, nt * sizeof(int), "the block table", err, errlen) ||
            fd_dalloc_guarded(dcl, (size_t)B * sizeof(int), "cache_seqlens", err, errlen))
            return -1;
        FD_CU(cudaMemcpy(dbt.p, p->block_table, nt * sizeof(int), cudaMemcpyHostToDevice));
        FD_CU(cudaMemcpy(dcl.p, p->cache_seqlens, (size_t)B * sizeof(int), cudaMemcpyHostToDevice));
    } else {
        if (fd_cu_upload(dk, k, B, sk, Hk, d, dp, p->dtype, "K", err, errlen)) return -1;
        if (fd_cu_upload(dv, v, B, sk, Hk, d, dp, p->dtype, "V", err, errlen)) return -1;
    }
    const size_t es = fp32 ? 4 : 2;
    if (fd_dalloc_guarded(dO, (size_t)B * sq * H * dp * es, "O", err, errlen)) return -1;
    if (fd_dalloc_guarded(dl, (size_t)B * H * sq * 4, "LSE", err, errlen)) return -1;
    const bool want_dbg = dmask && p->dropout_p > 0.0;
    if (want_dbg && fd_dalloc_guarded(ddbg, (size_t)B * H * sq * sk * 2, "debug mask", err, errlen)) return -1;

    FlashParams P;
    memset(&P, 0, sizeof P);
    P.q = dq.p; P.k = dk.p; P.v = dv.p; P.o = dO.p; P.lse = dl.as<float>();
    P.dbg = want_dbg ? ddbg.p : nullptr;
    P.B = B; P.H = H; P.Hk = Hk; P.sq = sq; P.sk = sk; P.dp = dp; P.h_per_kv = H / Hk;
    P.mask = (int)p->mask;
    /* FA2's folded scales (fd_mods.h): scale_softmax is the softcap when there is one */
    const float scale_sm = p->softcap > 0.0f ? p->softcap : p->softmax_scale;
    P.scale = scale_sm;
    P.scale_log2 = (float)((double)scale_sm * 1.4426950408889634073599246810018921);
    P.win = p->window ? 1 : 0; P.wl = p->window_left; P.wr = p->window_right;
    P.cap_in = p->softcap > 0.0f ? p->softmax_scale / p->softcap : 0.0f;
    fd_dbuf dsl;
    if (p->alibi) {
        if (fd_alibi_slopes_upload(p, scale_sm, dsl, err, errlen)) return -1;
        P.slope_raw = dsl.as<float>();
    }
    fd_dbuf dcuq, dcuk;
    int max_q = 0, max_k = 0; /* varlen: the longest sequence (the tensor-core kernel's grid) */
    if (p->varlen) {
        const size_t nb = (size_t)(p->varlen + 1) * sizeof(int);
        if (fd_dalloc(dcuq, nb, "cu_seqlens_q", err, errlen) || fd_dalloc(dcuk, nb, "cu_seqlens_k", err, errlen)) return -1;
        FD_CU(cudaMemcpy(dcuq.p, p->cu_seqlens_q, nb, cudaMemcpyHostToDevice));
        FD_CU(cudaMemcpy(dcuk.p, p->cu_seqlens_k, nb, cudaMemcpyHostToDevice));
        P.cu_q = dcuq.as<int>();
        P.cu_k = dcuk.as<int>();
        P.total_q = sq;
        P.nseq = p->varlen;
        for (int s = 0; s < p->varlen; s++) {
            max_q = std::max(max_q, p->cu_seqlens_q[s + 1] - p->cu_seqlens_q[s]);
            max_k = std::max(max_k, p->cu_seqlens_k[s + 1] - p->cu_seqlens_k[s]);
        }
    }
    if (p->page_size > 0) {
        P.bt = dbt.as<int>();
        P.cache_len = dcl.as<int>();
        P.page = p->page_size;
        P.pps = fd_paged_pages(p);
    }
    P.dropout = p->dropout_p > 0.0;
    P.thr = fd_fa2_threshold(p->dropout_p);
    P.rp = 1.0f / (1.0f - (float)p->dropout_p); /* FA2: rp_dropout = 1.f / (1.f - p) */
    P.seed = p->seed; P.offset = p->offset;
    P.exp2_mode = cfg.exp2_mode; P.p_fp32 = cfg.p_fp32 ? 1 : 0;
    if (mode == MODE_SPLIT) {
        const int ntiles = (sk + cfg.bc - 1) / cfg.bc;
        P.tiles_per_split = (ntiles + cfg.splits - 1) / cfg.splits;
        P.splits = cfg.splits;
        if (fd_dalloc_guarded(doa, (size_t)cfg.splits * B * H * sq * dp * 4, "split-KV partial O", err, errlen)) return -1;
        if (fd_dalloc_guarded(dla, (size_t)cfg.splits * B * H * sq * 4, "split-KV partial LSE", err, errlen)) return -1;
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
        FlashParams PT = P; /* varlen: a CTA per (q tile, head, sequence), the grid the longest's */
        if (p->varlen) {
            PT.B = p->varlen;
            PT.sq = std::max(max_q, 1);
            PT.sk = max_k;
        }
        int rc = sm90                      ? launch_sm90(PT, p->dtype == FD_DT_BF16, cfg.bc, st, err, errlen)
                 : p->dtype == FD_DT_FP16 ? launch_f16(PT, cfg.br, cfg.bc, st, err, errlen)
                                          : launch_bf16(PT, cfg.br, cfg.bc, st, err, errlen);
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
    if (fd_time_repeats(cfg.repeats, [&] { return launch(0); }, tm, err, errlen)) return -1;
    if (fd_dguard_check(dO, "O", err, errlen) || fd_dguard_check(dl, "LSE", err, errlen) ||
        fd_dguard_check(ddbg, "the debug mask", err, errlen) || fd_dguard_check(doa, "the split-KV partial O", err, errlen) ||
        fd_dguard_check(dla, "the split-KV partial LSE", err, errlen) || fd_dguard_check(dk, "the paged K cache", err, errlen) ||
        fd_dguard_check(dv, "the paged V cache", err, errlen) || fd_dguard_check(dbt, "the block table", err, errlen) ||
        fd_dguard_check(dcl, "cache_seqlens", err, errlen))
        return -1;
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

/* The guard self-test's kernel: writes 1.0f at x[i] for i in [lo, hi). */
__global__ void guard_write_kernel(float *x, long lo, long hi)
{
    const long i = lo + (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < hi) x[i] = 1.0f;
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
    int drv = 0, dev = 0;
    if (fd_cuda_device_count() <= 0 || cudaGetDevice(&dev) != cudaSuccess ||
        cudaGetDeviceProperties(&pr, dev) != cudaSuccess) {
        cudaGetLastError();
        snprintf(buf, len, "no CUDA device");
        return -1;
    }
    cudaDriverGetVersion(&drv);
    snprintf(buf, len, "%s, sm_%d%d, %d SMs, CUDA driver %d.%d", pr.name, pr.major, pr.minor,
             pr.multiProcessorCount, drv / 1000, (drv % 1000) / 10);
    return 0;
}

int fd_cuda_select_device(int ordinal)
{
    const int n = fd_cuda_device_count();
    if (n <= 0) return -1;
    if (cudaSetDevice(ordinal % n) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    return ordinal % n;
}

void fd_cuda_cfg_default(fd_cuda_cfg *cfg)
{
    cfg->br = 128;
    cfg->bc = 64;
    cfg->exp2_mode = 0;
    cfg->p_fp32 = 0;
    cfg->splits = 1;
    cfg->repeats = 0;
    cfg->fp8_max_offset = FD_FP8_MAX_OFFSET;
    cfg->impl = FD_CUDA_IMPL_MMA;
}

int fd_cuda_sm90_supports(const fd_problem *p, const fd_cuda_cfg *cfg, char *why, size_t len)
{
    const char *no = NULL;
    if (p->dtype != FD_DT_FP16 && p->dtype != FD_DT_BF16) no = "fp16 and bf16 only (fp32 and FP8 run on cuda-flash)";
    else if (p->head_dim > 128 && cfg && cfg->bc == 128) no = "head_dim above 128 with key tile 64 only (shared memory)";
    else if (p->dropout_p > 0.0) no = "no dropout";
    else if (fd_problem_has_mods(p) || p->page_size > 0) no = "no window, softcap, ALiBi, varlen or paged KV cache";
    else if (cfg && cfg->p_fp32) no = "P in the dtype only (no fp32 P)";
    else if (cfg && cfg->bc != 64 && cfg->bc != 128 && cfg->bc != 0) no = "key tile 64 or 128 only";
    if (!no) return 1;
    snprintf(why, len, "cuda-flash-sm90 (the Hopper kernel): %s", no);
    return 0;
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
    if (p && fd_dtype_is_fp8(p->dtype)) { /* FP8: its own kernel (fd_cuda_flash_fp8.cu) */
        if (dmask) FD_FAIL("FP8 flash: no debug mask output (FP8 problems have no dropout)");
        if (cfg && cfg->impl == FD_CUDA_IMPL_WGMMA) FD_FAIL("cuda-flash-sm90 has no FP8 kernel (cuda-flash runs FP8)");
        return fd_cuda_flash_fp8_forward(p, cfg, q, k, v, o, lse, t, err, errlen);
    }
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

int fd_cuda_expf_portable_batch(const float *x, float *out, size_t n, char *err, size_t errlen)
{
    return exp2_batch(2, x, out, n, err, errlen);
}

int fd_cuda_logf_portable_batch(const float *x, float *out, size_t n, char *err, size_t errlen)
{
    return exp2_batch(3, x, out, n, err, errlen);
}

} /* extern "C" */

extern "C" int fd_cuda_guard_selftest(long lo, long hi, char *err, size_t errlen)
{
    if (fd_cuda_device_count() <= 0) FD_FAIL("no CUDA device");
    const long n = 1024;
    if (lo < -(long)(FD_GUARD_BYTES / 4) || hi > n + (long)(FD_GUARD_BYTES / 4) || lo >= hi)
        FD_FAIL("guard self-test: [%ld, %ld) is not within the guards of a %ld-float buffer", lo, hi, n);
    fd_dbuf b;
    if (fd_dalloc_guarded(b, (size_t)n * 4, "the self-test buffer", err, errlen)) return -1;
    const unsigned blocks = (unsigned)((hi - lo + 255) / 256);
    guard_write_kernel<<<blocks, 256>>>(b.as<float>(), lo, hi);
    FD_LAUNCH_CHECK();
    FD_CU(cudaDeviceSynchronize());
    return fd_dguard_check(b, "the self-test buffer", err, errlen);
}
