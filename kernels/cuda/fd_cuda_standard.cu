/* fd_cuda_standard.cu: standard (eager) attention on the GPU, as fd_cpu_standard_forward:
 * S = Q K^T by cuBLAS (fp16/bf16 in, fp32 out, CUBLAS_COMPUTE_32F; fp32 in: fp32 GEMM,
 * no TF32), S *= scale (fp32), mask, softmax in fp32 (m = max, e = expf(s - m), sum by
 * a block tree reduction, p = e / sum), P cast to the dtype, dropout with FA2's Philox
 * mask (p * keep * (1/(1-p)) in fp32, cast again), O = P V by cuBLAS (fp32 out), cast to
 * the dtype. LSE = m + logf(sum) (m of the scaled scores); rows with no visible key give
 * O = 0 and LSE = +Inf (eager PyTorch would give NaN). Heads are gathered into
 * [B*H][S][D] (GQA expanded) and the (batch, head) pairs processed in chunks whose S and
 * P fit a workspace bounded by free memory. */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "fd_cuda.h"
#include "fd_cuda_util.h"
#include "fd_dtype.h"
#include "fd_philox.h"

#define FD_CUBLAS(call)                                                                      \
    do {                                                                                     \
        cublasStatus_t fd_s_ = (call);                                                       \
        if (fd_s_ != CUBLAS_STATUS_SUCCESS) {                                                \
            snprintf(err, errlen, "%s:%d: %s failed: cuBLAS status %d (%s)", __FILE__,       \
                     __LINE__, #call, (int)fd_s_, cublasGetStatusString(fd_s_));             \
            return -1;                                                                       \
        }                                                                                    \
    } while (0)

namespace {

struct StdParams {
    int B, H, Hk, sq, sk, d, mask, dtype, dropout;
    float scale, rp;
    uint32_t thr;
    uint64_t seed, offset;
};

__device__ __forceinline__ void st_elem(void *p, size_t i, int dt, float x)
{
    if (dt == FD_DT_FP32) static_cast<float *>(p)[i] = x;
    else if (dt == FD_DT_FP16) static_cast<uint16_t *>(p)[i] = fd_f32_to_f16_bits(x);
    else static_cast<uint16_t *>(p)[i] = fd_f32_to_bf16_bits(x);
}

/* [B][S][Hs][d] head hs(h) -> [bh - bh0][S][d] for bh in [bh0, bh0 + nbh). */
__global__ void gather_heads(const void *src, void *dst, int S, int Hs, int H, int d, int bh0,
                             int nbh, int dt)
{
    const size_t es = dt == FD_DT_FP32 ? 4 : 2;
    size_t n = (size_t)nbh * S * d;
    for (size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(x % d);
        size_t r = x / d;
        int s = (int)(r % S);
        int bh = bh0 + (int)(r / S);
        int b = bh / H, h = bh % H, hs = h / (H / Hs);
        size_t si = (((size_t)b * S + s) * Hs + hs) * d + c;
        if (es == 4) static_cast<float *>(dst)[x] = static_cast<const float *>(src)[si];
        else static_cast<uint16_t *>(dst)[x] = static_cast<const uint16_t *>(src)[si];
    }
}


/* The row's max and sum of exp(s_j * scale - max) over its nv visible keys, for every
 * thread of the block (max by warp shuffles then over the warps' partials in red[], the
 * sum likewise, in binary32): the softmax both the forward and the backward's recompute
 * take, so that the two compute the same P. */
__device__ __forceinline__ void row_max_sum(const float *s, long nv, float scale, float *red, float *mx_out,
                                            float *sum_out)
{
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < nv; j += blockDim.x) mx = fmaxf(mx, __fmul_rn(s[j], scale));
    for (int w = 16; w >= 1; w >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, w));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < nv; j += blockDim.x) sum = __fadd_rn(sum, expf(__fsub_rn(__fmul_rn(s[j], scale), mx)));
    for (int w = 16; w >= 1; w >>= 1) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, w));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) sum = __fadd_rn(sum, red[w]);
    *mx_out = mx;
    *sum_out = sum;
}

/* One block per row of S (fp32) -> P (dtype) and LSE. */
__global__ void softmax_rows(const float *S, void *Pm, float *lse, StdParams p, int bh0)
{
    __shared__ float red[32];
    const int row = blockIdx.x; /* within chunk: (bh - bh0) * sq + i */
    const int i = row % p.sq, bh = bh0 + row / p.sq;
    const int b = bh / p.H, h = bh % p.H;
    const float *s = S + (size_t)row * p.sk;
    const long diag = p.mask == FD_MASK_CAUSAL_BR ? (long)p.sk - p.sq : 0;
    const long nv = p.mask == FD_MASK_NONE ? p.sk : min((long)p.sk, max(0L, (long)i + diag + 1));
    float mx, sum;
    row_max_sum(s, nv, p.scale, red, &mx, &sum);
    const bool empty = nv == 0;
    const size_t prow = (size_t)row * p.sk;
    for (int j = threadIdx.x; j < p.sk; j += blockDim.x) {
        float pr = 0.0f;
        if (j < nv) {
            pr = __fdiv_rn(expf(__fsub_rn(__fmul_rn(s[j], p.scale), mx)), sum);
            if (p.dtype != FD_DT_FP32) pr = fd_round_to_dtype(pr, (fd_dtype)p.dtype);
            if (p.dropout) {
                bool keep = fd_fa2_dropout_byte(p.seed, p.offset, p.H, b, h, i, j) <= p.thr;
                pr = keep ? __fmul_rn(pr, p.rp) : 0.0f;
                if (p.dtype != FD_DT_FP32) pr = fd_round_to_dtype(pr, (fd_dtype)p.dtype);
            }
        }
        st_elem(Pm, prow + j, p.dtype, pr);
    }
    if (threadIdx.x == 0) lse[((size_t)b * p.H + h) * p.sq + i] = empty ? INFINITY : __fadd_rn(mx, logf(sum));
}

/* Of [bh - bh0][sq][d] fp32 -> O [B][sq][H][d] dtype. */
__global__ void scatter_out(const float *Of, void *O, StdParams p, int bh0, int nbh)
{
    size_t n = (size_t)nbh * p.sq * p.d;
    for (size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(x % p.d);
        size_t r = x / p.d;
        int i = (int)(r % p.sq);
        int bh = bh0 + (int)(r / p.sq);
        int b = bh / p.H, h = bh % p.H;
        st_elem(O, (((size_t)b * p.sq + i) * p.H + h) * p.d + c, p.dtype, Of[x]);
    }
}

/* C (column-major m x n, ldc = m, fp32) = op(A) op(B) for `count` strided batches, A and B
 * in the dtype ct, fp32 compute: every GEMM of standard attention, forward and backward. */
static cublasStatus_t gemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void *A, int lda, long long sa, const void *B, int ldb, long long sb,
                                   void *C, long long sc, int count, cudaDataType_t ct)
{
    const float one = 1.0f, zero = 0.0f;
    return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &one, A, ct, lda, sa, B, ct, ldb, sb, &zero, C, CUDA_R_32F,
                                      m, sc, count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

struct Cublas {
    cublasHandle_t h = nullptr;
    ~Cublas() { if (h) cublasDestroy(h); }
};

} // namespace

extern "C" int fd_cuda_standard_forward(const fd_problem *p, int repeats, const float *q,
                                        const float *k, const float *v, float *o, float *lse,
                                        fd_cuda_timing *tm, char *err, size_t errlen)
{
    if (p && q && k && v && fd_dtype_is_fp8(p->dtype)) { /* eager bf16 on the dequantised inputs (docs/fp8.md) */
        fd_problem pb;
        float *qb, *kb, *vb;
        if (fd_problem_check_fp8(p, err, errlen)) return -1;
        if (fd_fp8_dequant_bf16(p, q, k, v, &pb, &qb, &kb, &vb)) FD_FAIL("out of memory dequantising FP8 inputs");
        const int rc = fd_cuda_standard_forward(&pb, repeats, qb, kb, vb, o, lse, tm, err, errlen);
        free(qb); free(kb); free(vb);
        return rc;
    }
    if (fd_cu_check_problem(p, err, errlen)) return -1;
    if (p->varlen) FD_FAIL("cuda-standard does not support variable-length batches (varlen: cpu-standard)");
    if (!q || !k || !v || !o || !lse) FD_FAIL("null tensor argument");
    if (repeats < 0 || repeats > 100000) FD_FAIL("repeats %d out of range", repeats);
    if (fd_cuda_device_count() <= 0) FD_FAIL("no CUDA device");
    const int B = p->batch, H = p->heads, Hk = p->kv_heads, sq = p->seqlen_q, sk = p->seqlen_k, d = p->head_dim;
    const int dt = (int)p->dtype;
    const size_t es = p->dtype == FD_DT_FP32 ? 4 : 2;
    fd_dbuf dq, dk, dv, dO, dl;
    if (fd_cu_upload(dq, q, B, sq, H, d, d, p->dtype, "Q", err, errlen)) return -1;
    if (fd_cu_upload(dk, k, B, sk, Hk, d, d, p->dtype, "K", err, errlen)) return -1;
    if (fd_cu_upload(dv, v, B, sk, Hk, d, d, p->dtype, "V", err, errlen)) return -1;
    if (fd_dalloc_guarded(dO, (size_t)B * sq * H * d * es, "O", err, errlen)) return -1;
    if (fd_dalloc_guarded(dl, (size_t)B * H * sq * 4, "LSE", err, errlen)) return -1;
    FD_CU(cudaMemset(dO.p, 0xff, dO.bytes));
    FD_CU(cudaMemset(dl.p, 0xff, dl.bytes));

    /* Chunk of (batch, head) pairs: S (fp32) + P + gathered Q, K, V + O fp32 per pair. */
    const size_t per_bh = (size_t)sq * sk * (4 + es) + ((size_t)sq + 2 * (size_t)sk) * d * es + (size_t)sq * d * 4;
    size_t fr = 0, tot = 0;
    FD_CU(cudaMemGetInfo(&fr, &tot));
    size_t budget = fr / 2;
    if (budget > ((size_t)8 << 30)) budget = (size_t)8 << 30;
    int nbh = (int)std::min<size_t>((size_t)B * H, budget / per_bh);
    if (nbh < 1)
        FD_FAIL("out of device memory: one (batch, head) of standard attention needs %zu bytes (S and P are %d x %d), %zu free",
                per_bh, sq, sk, fr);
    fd_dbuf wS, wP, wQ, wK, wV, wO;
    if (fd_dalloc_guarded(wS, (size_t)nbh * sq * sk * 4, "standard S workspace", err, errlen)) return -1;
    if (fd_dalloc_guarded(wP, (size_t)nbh * sq * sk * es, "standard P workspace", err, errlen)) return -1;
    if (fd_dalloc(wQ, (size_t)nbh * sq * d * es, "gathered Q", err, errlen)) return -1;
    if (fd_dalloc(wK, (size_t)nbh * sk * d * es, "gathered K", err, errlen)) return -1;
    if (fd_dalloc(wV, (size_t)nbh * sk * d * es, "gathered V", err, errlen)) return -1;
    if (fd_dalloc_guarded(wO, (size_t)nbh * sq * d * 4, "standard O workspace", err, errlen)) return -1;
    /* compute-sanitizer's initcheck does not see cuBLAS's sm_90 (TMA) stores and flags every
     * read of S and of the PV output (seen 2026-11-21, H200); zero both once so initcheck
     * can judge our kernels. That they are really written is shown by the results. */
    FD_CU(cudaMemset(wS.p, 0, wS.bytes));
    FD_CU(cudaMemset(wO.p, 0, wO.bytes));

    Cublas cb;
    FD_CUBLAS(cublasCreate(&cb.h));
    FD_CUBLAS(cublasSetMathMode(cb.h, CUBLAS_PEDANTIC_MATH)); /* no TF32, no reduced-precision reductions */
    const cudaDataType_t ct = p->dtype == FD_DT_FP16 ? CUDA_R_16F : p->dtype == FD_DT_BF16 ? CUDA_R_16BF : CUDA_R_32F;

    StdParams sp;
    sp.B = B; sp.H = H; sp.Hk = Hk; sp.sq = sq; sp.sk = sk; sp.d = d; sp.mask = (int)p->mask; sp.dtype = dt;
    sp.dropout = p->dropout_p > 0.0; sp.scale = p->softmax_scale;
    sp.rp = 1.0f / (1.0f - (float)p->dropout_p);
    sp.thr = fd_fa2_threshold(p->dropout_p);
    sp.seed = p->seed; sp.offset = p->offset;

    auto run_once = [&]() -> int {
        for (int bh0 = 0; bh0 < B * H; bh0 += nbh) {
            const int n = std::min(nbh, B * H - bh0);
            gather_heads<<<1024, 256>>>(dq.p, wQ.p, sq, H, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            gather_heads<<<1024, 256>>>(dk.p, wK.p, sk, Hk, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            gather_heads<<<1024, 256>>>(dv.p, wV.p, sk, Hk, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            /* S^T (col-major sk x sq) = K (col-major d x sk)^T * Q (col-major d x sq). */
            FD_CUBLAS(gemm_batched(cb.h, CUBLAS_OP_T, CUBLAS_OP_N, sk, sq, d, wK.p, d, (long long)sk * d, wQ.p, d, (long long)sq * d, wS.p, (long long)sq * sk, n, ct));
            softmax_rows<<<(unsigned)((size_t)n * sq), 256>>>(wS.as<float>(), wP.p, dl.as<float>(), sp, bh0);
            FD_LAUNCH_CHECK();
            /* O^T (col-major d x sq) = V (col-major d x sk) * P^T (col-major sk x sq). */
            FD_CUBLAS(gemm_batched(cb.h, CUBLAS_OP_N, CUBLAS_OP_N, d, sq, sk, wV.p, d, (long long)sk * d, wP.p, sk, (long long)sq * sk, wO.p, (long long)sq * d, n, ct));
            scatter_out<<<1024, 256>>>(wO.as<float>(), dO.p, sp, bh0, n);
            FD_LAUNCH_CHECK();
        }
        return 0;
    };
    if (run_once()) return -1;
    FD_CU(cudaDeviceSynchronize());
    if (fd_time_repeats(repeats, run_once, tm, err, errlen)) return -1;
    if (fd_dguard_check(dO, "O", err, errlen) || fd_dguard_check(dl, "LSE", err, errlen) ||
        fd_dguard_check(wS, "the standard S workspace", err, errlen) ||
        fd_dguard_check(wP, "the standard P workspace", err, errlen) ||
        fd_dguard_check(wO, "the standard O workspace", err, errlen))
        return -1;
    if (fd_cu_download_o(o, dO, B, sq, H, d, d, p->dtype, err, errlen)) return -1;
    FD_CU(cudaMemcpy(lse, dl.p, dl.bytes, cudaMemcpyDeviceToHost));
    return 0;
}

/* The backward (fd_cpu_standard_backward's arithmetic): per chunk of (batch, head) pairs,
 *   S = Q K^T (cuBLAS, fp32 out); P = round(softmax(S * scale)) and Pd = round(keep ? P * rp
 *   : 0) (softmax_fwd_rows: the forward's softmax_rows arithmetic, rows with no visible
 *   key P = Pd = 0); dV_h = Pd^T dO (cuBLAS, fp32 out); dPd = dO V^T (cuBLAS, fp32 out,
 *   into S's workspace); softmax_bwd_rows: dP = keep ? round(round(dPd) * rp) : 0 (dropout's
 *   backward in the dtype, as PyTorch's eager dropout returns it),
 *   D = sum_j P dP (block tree reduction), dS = round((P (dP - D)) * scale) into Pd's
 *   workspace; dQ = dS K and dK_h = dS^T Q (cuBLAS, fp32 out). dQ is rounded into the
 *   output; dK_h, dV_h are rounded and added in fp32 to per-kv-head accumulators, the
 *   group's query heads in ascending order (chunks run in ascending (batch, head) order
 *   and gqa_accum walks a chunk's heads in order), and rounded once at the end. */
namespace {

__device__ __forceinline__ float ld_elem(const void *p, size_t i, int dt)
{
    if (dt == FD_DT_FP32) return static_cast<const float *>(p)[i];
    if (dt == FD_DT_FP16) return fd_f16_bits_to_f32(static_cast<const uint16_t *>(p)[i]);
    return fd_bf16_bits_to_f32(static_cast<const uint16_t *>(p)[i]);
}

__device__ __forceinline__ float rnd(float x, int dt)
{
    return dt == FD_DT_FP32 ? x : fd_round_to_dtype(x, (fd_dtype)dt);
}

__device__ __forceinline__ bool bwd_keep(const StdParams &p, int b, int h, int i, int j)
{
    return fd_fa2_dropout_byte(p.seed, p.offset, p.H, b, h, i, j) <= p.thr;
}

/* Visible keys of row i: 0..nv-1 (the masks are prefixes). */
__device__ __forceinline__ long bwd_nvis(const StdParams &p, int i)
{
    const long diag = p.mask == FD_MASK_CAUSAL_BR ? (long)p.sk - p.sq : 0;
    return p.mask == FD_MASK_NONE ? p.sk : min((long)p.sk, max(0L, (long)i + diag + 1));
}

/* One block per row of S (fp32) -> P (dtype, undropped) and Pd (dtype, dropped). */
__global__ void softmax_fwd_rows(const float *S, void *Pm, void *Pdm, StdParams p, int bh0)
{
    __shared__ float red[32];
    const int row = blockIdx.x;
    const int i = row % p.sq, bh = bh0 + row / p.sq;
    const int b = bh / p.H, h = bh % p.H;
    const float *s = S + (size_t)row * p.sk;
    const long nv = bwd_nvis(p, i);
    float mx, sum;
    row_max_sum(s, nv, p.scale, red, &mx, &sum);
    const size_t prow = (size_t)row * p.sk;
    for (int j = threadIdx.x; j < p.sk; j += blockDim.x) {
        float pr = 0.0f, pd = 0.0f;
        if (j < nv) {
            pr = rnd(__fdiv_rn(expf(__fsub_rn(__fmul_rn(s[j], p.scale), mx)), sum), p.dtype);
            pd = pr;
            if (p.dropout) pd = rnd(bwd_keep(p, b, h, i, j) ? __fmul_rn(pr, p.rp) : 0.0f, p.dtype);
        }
        st_elem(Pm, prow + j, p.dtype, pr);
        st_elem(Pdm, prow + j, p.dtype, pd);
    }
}

/* One block per row: dPd (fp32, in S's workspace) and P (dtype) -> dS (dtype). dP is
 * kept in place of dPd between the two passes (each thread its own columns). */
__global__ void softmax_bwd_rows(float *dPd, const void *Pm, void *dSm, StdParams p, int bh0)
{
    __shared__ float red[32];
    const int row = blockIdx.x;
    const int i = row % p.sq, bh = bh0 + row / p.sq;
    const int b = bh / p.H, h = bh % p.H;
    float *dp = dPd + (size_t)row * p.sk;
    const size_t prow = (size_t)row * p.sk;
    float acc = 0.0f;
    for (int j = threadIdx.x; j < p.sk; j += blockDim.x) {
        float x = rnd(dp[j], p.dtype);
        if (p.dropout) x = bwd_keep(p, b, h, i, j) ? rnd(__fmul_rn(x, p.rp), p.dtype) : 0.0f;
        dp[j] = x;
        acc = __fadd_rn(acc, __fmul_rn(ld_elem(Pm, prow + j, p.dtype), x));
    }
    for (int w = 16; w >= 1; w >>= 1) acc = __fadd_rn(acc, __shfl_xor_sync(0xffffffffu, acc, w));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc;
    __syncthreads();
    float D = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) D = __fadd_rn(D, red[w]);
    for (int j = threadIdx.x; j < p.sk; j += blockDim.x) {
        const float pj = ld_elem(Pm, prow + j, p.dtype);
        st_elem(dSm, prow + j, p.dtype, rnd(__fmul_rn(__fmul_rn(pj, __fsub_rn(dp[j], D)), p.scale), p.dtype));
    }
}

/* Per-head [bh - bh0][sk][d] fp32 gradients, rounded to the dtype, added to the kv head's
 * fp32 accumulator [B][sk][Hk][d]; each accumulator element takes the chunk's heads of
 * its group in ascending order (no two threads write one element). */
__global__ void gqa_accum(const float *g, float *acc, StdParams p, int bh0, int nbh)
{
    const int group = p.H / p.Hk;
    const size_t n = (size_t)p.B * p.sk * p.Hk * p.d;
    for (size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(x % p.d);
        size_t r = x / p.d;
        const int hk = (int)(r % p.Hk);
        r /= p.Hk;
        const int j = (int)(r % p.sk);
        const int b = (int)(r / p.sk);
        float a = acc[x];
        for (int gi = 0; gi < group; gi++) {
            const int bh = b * p.H + hk * group + gi;
            if (bh < bh0 || bh >= bh0 + nbh) continue;
            a = __fadd_rn(a, rnd(g[((size_t)(bh - bh0) * p.sk + j) * p.d + c], p.dtype));
        }
        acc[x] = a;
    }
}

/* fp32 [n] -> dtype [n], rounded. */
__global__ void round_out(const float *src, void *dst, size_t n, int dt)
{
    for (size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += (size_t)gridDim.x * blockDim.x)
        st_elem(dst, x, dt, src[x]);
}

} // namespace

extern "C" int fd_cuda_standard_backward(const fd_problem *p, int repeats, const float *q,
                                         const float *k, const float *v, const float *dout,
                                         float *dq, float *dk, float *dv, fd_cuda_timing *tm,
                                         char *err, size_t errlen)
{
    if (fd_cu_check_problem(p, err, errlen)) return -1;
    if (p->varlen) FD_FAIL("cuda-standard does not support variable-length batches (varlen: cpu-standard)");
    if (!q || !k || !v || !dout || !dq || !dk || !dv) FD_FAIL("null tensor argument");
    if (repeats < 0 || repeats > 100000) FD_FAIL("repeats %d out of range", repeats);
    if (fd_cuda_device_count() <= 0) FD_FAIL("no CUDA device");
    const int B = p->batch, H = p->heads, Hk = p->kv_heads, sq = p->seqlen_q, sk = p->seqlen_k, d = p->head_dim;
    const int dt = (int)p->dtype;
    const size_t es = p->dtype == FD_DT_FP32 ? 4 : 2;
    const size_t nkv = (size_t)B * sk * Hk * d;
    fd_dbuf gq, gk, gv, gdo, gdq, gdk, gdv, accK, accV;
    if (fd_cu_upload(gq, q, B, sq, H, d, d, p->dtype, "Q", err, errlen)) return -1;
    if (fd_cu_upload(gk, k, B, sk, Hk, d, d, p->dtype, "K", err, errlen)) return -1;
    if (fd_cu_upload(gv, v, B, sk, Hk, d, d, p->dtype, "V", err, errlen)) return -1;
    if (fd_cu_upload(gdo, dout, B, sq, H, d, d, p->dtype, "dO", err, errlen)) return -1;
    if (fd_dalloc_guarded(gdq, (size_t)B * sq * H * d * es, "dQ", err, errlen)) return -1;
    if (fd_dalloc_guarded(gdk, nkv * es, "dK", err, errlen)) return -1;
    if (fd_dalloc_guarded(gdv, nkv * es, "dV", err, errlen)) return -1;
    if (fd_dalloc_guarded(accK, nkv * 4, "dK fp32 GQA accumulator", err, errlen)) return -1;
    if (fd_dalloc_guarded(accV, nkv * 4, "dV fp32 GQA accumulator", err, errlen)) return -1;
    FD_CU(cudaMemset(gdq.p, 0xff, gdq.bytes));
    FD_CU(cudaMemset(gdk.p, 0xff, gdk.bytes));
    FD_CU(cudaMemset(gdv.p, 0xff, gdv.bytes));

    /* Per (batch, head): S/dP (fp32), P and Pd/dS (dtype), gathered Q, dO, K, V (dtype),
     * dQ, dK, dV (fp32). */
    const size_t per_bh = (size_t)sq * sk * (4 + 2 * es) + (2 * (size_t)sq + 2 * (size_t)sk) * d * es +
                          ((size_t)sq + 2 * (size_t)sk) * d * 4;
    size_t fr = 0, tot = 0;
    FD_CU(cudaMemGetInfo(&fr, &tot));
    size_t budget = fr / 2;
    if (budget > ((size_t)8 << 30)) budget = (size_t)8 << 30;
    int nbh = (int)std::min<size_t>((size_t)B * H, budget / per_bh);
    if (nbh < 1)
        FD_FAIL("out of device memory: one (batch, head) of the standard backward needs %zu bytes (S and P are %d x %d), %zu free",
                per_bh, sq, sk, fr);
    fd_dbuf wS, wP, wPd, wQ, wDO, wK, wV, wdQ, wdK, wdV;
    if (fd_dalloc_guarded(wS, (size_t)nbh * sq * sk * 4, "standard backward S/dP workspace", err, errlen)) return -1;
    if (fd_dalloc_guarded(wP, (size_t)nbh * sq * sk * es, "standard backward P workspace", err, errlen)) return -1;
    if (fd_dalloc_guarded(wPd, (size_t)nbh * sq * sk * es, "standard backward Pd/dS workspace", err, errlen)) return -1;
    if (fd_dalloc(wQ, (size_t)nbh * sq * d * es, "gathered Q", err, errlen)) return -1;
    if (fd_dalloc(wDO, (size_t)nbh * sq * d * es, "gathered dO", err, errlen)) return -1;
    if (fd_dalloc(wK, (size_t)nbh * sk * d * es, "gathered K", err, errlen)) return -1;
    if (fd_dalloc(wV, (size_t)nbh * sk * d * es, "gathered V", err, errlen)) return -1;
    if (fd_dalloc_guarded(wdQ, (size_t)nbh * sq * d * 4, "standard backward dQ workspace", err, errlen)) return -1;
    if (fd_dalloc_guarded(wdK, (size_t)nbh * sk * d * 4, "standard backward dK workspace", err, errlen)) return -1;
    if (fd_dalloc_guarded(wdV, (size_t)nbh * sk * d * 4, "standard backward dV workspace", err, errlen)) return -1;
    /* As the forward: cuBLAS's sm_90 stores are invisible to initcheck; zero its outputs once. */
    FD_CU(cudaMemset(wS.p, 0, wS.bytes));
    FD_CU(cudaMemset(wdQ.p, 0, wdQ.bytes));
    FD_CU(cudaMemset(wdK.p, 0, wdK.bytes));
    FD_CU(cudaMemset(wdV.p, 0, wdV.bytes));

    Cublas cb;
    FD_CUBLAS(cublasCreate(&cb.h));
    FD_CUBLAS(cublasSetMathMode(cb.h, CUBLAS_PEDANTIC_MATH)); /* no TF32, no reduced-precision reductions */
    const cudaDataType_t ct = p->dtype == FD_DT_FP16 ? CUDA_R_16F : p->dtype == FD_DT_BF16 ? CUDA_R_16BF : CUDA_R_32F;

    StdParams sp;
    sp.B = B; sp.H = H; sp.Hk = Hk; sp.sq = sq; sp.sk = sk; sp.d = d; sp.mask = (int)p->mask; sp.dtype = dt;
    sp.dropout = p->dropout_p > 0.0; sp.scale = p->softmax_scale;
    sp.rp = (float)(1.0 / (1.0 - p->dropout_p)); /* as fd_cpu_standard_backward takes it */
    sp.thr = fd_fa2_threshold(p->dropout_p);
    sp.seed = p->seed; sp.offset = p->offset;

    auto run_once = [&]() -> int {
        FD_CU(cudaMemsetAsync(accK.p, 0, accK.bytes));
        FD_CU(cudaMemsetAsync(accV.p, 0, accV.bytes));
        for (int bh0 = 0; bh0 < B * H; bh0 += nbh) {
            const int n = std::min(nbh, B * H - bh0);
            gather_heads<<<1024, 256>>>(gq.p, wQ.p, sq, H, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            gather_heads<<<1024, 256>>>(gdo.p, wDO.p, sq, H, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            gather_heads<<<1024, 256>>>(gk.p, wK.p, sk, Hk, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            gather_heads<<<1024, 256>>>(gv.p, wV.p, sk, Hk, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            /* S^T (col-major sk x sq) = K (col-major d x sk)^T * Q (col-major d x sq). */
            FD_CUBLAS(gemm_batched(cb.h, CUBLAS_OP_T, CUBLAS_OP_N, sk, sq, d, wK.p, d, (long long)sk * d, wQ.p, d, (long long)sq * d, wS.p, (long long)sq * sk, n, ct));
            softmax_fwd_rows<<<(unsigned)((size_t)n * sq), 256>>>(wS.as<float>(), wP.p, wPd.p, sp, bh0);
            FD_LAUNCH_CHECK();
            /* dV^T (col-major d x sk) = dO^T (col-major d x sq) * Pd (row-major sq x sk). */
            FD_CUBLAS(gemm_batched(cb.h, CUBLAS_OP_N, CUBLAS_OP_T, d, sk, sq, wDO.p, d, (long long)sq * d, wPd.p, sk, (long long)sq * sk, wdV.p, (long long)sk * d, n, ct));
            /* dPd^T (col-major sk x sq) = V (col-major d x sk)^T * dO (col-major d x sq). */
            FD_CUBLAS(gemm_batched(cb.h, CUBLAS_OP_T, CUBLAS_OP_N, sk, sq, d, wV.p, d, (long long)sk * d, wDO.p, d, (long long)sq * d, wS.p, (long long)sq * sk, n, ct));
            softmax_bwd_rows<<<(unsigned)((size_t)n * sq), 256>>>(wS.as<float>(), wP.p, wPd.p, sp, bh0);
            FD_LAUNCH_CHECK();
            /* dQ^T (col-major d x sq) = K (col-major d x sk) * dS^T (col-major sk x sq). */
            FD_CUBLAS(gemm_batched(cb.h, CUBLAS_OP_N, CUBLAS_OP_N, d, sq, sk, wK.p, d, (long long)sk * d, wPd.p, sk, (long long)sq * sk, wdQ.p, (long long)sq * d, n, ct));
            /* dK^T (col-major d x sk) = Q^T (col-major d x sq) * dS (row-major sq x sk). */
            FD_CUBLAS(gemm_batched(cb.h, CUBLAS_OP_N, CUBLAS_OP_T, d, sk, sq, wQ.p, d, (long long)sq * d, wPd.p, sk, (long long)sq * sk, wdK.p, (long long)sk * d, n, ct));
            scatter_out<<<1024, 256>>>(wdQ.as<float>(), gdq.p, sp, bh0, n);
            FD_LAUNCH_CHECK();
            gqa_accum<<<1024, 256>>>(wdK.as<float>(), accK.as<float>(), sp, bh0, n);
            FD_LAUNCH_CHECK();
            gqa_accum<<<1024, 256>>>(wdV.as<float>(), accV.as<float>(), sp, bh0, n);
            FD_LAUNCH_CHECK();
        }
        round_out<<<1024, 256>>>(accK.as<float>(), gdk.p, nkv, dt);
        FD_LAUNCH_CHECK();
        round_out<<<1024, 256>>>(accV.as<float>(), gdv.p, nkv, dt);
        FD_LAUNCH_CHECK();
        return 0;
    };
    if (run_once()) return -1;
    FD_CU(cudaDeviceSynchronize());
    if (fd_time_repeats(repeats, run_once, tm, err, errlen)) return -1;
    FD_CU(cudaDeviceSynchronize());
    if (fd_dguard_check(gdq, "dQ", err, errlen) || fd_dguard_check(gdk, "dK", err, errlen) ||
        fd_dguard_check(gdv, "dV", err, errlen) || fd_dguard_check(accK, "the dK GQA accumulator", err, errlen) ||
        fd_dguard_check(accV, "the dV GQA accumulator", err, errlen) ||
        fd_dguard_check(wS, "the backward S/dP workspace", err, errlen) ||
        fd_dguard_check(wP, "the backward P workspace", err, errlen) ||
        fd_dguard_check(wPd, "the backward Pd/dS workspace", err, errlen) ||
        fd_dguard_check(wdQ, "the backward dQ workspace", err, errlen) ||
        fd_dguard_check(wdK, "the backward dK workspace", err, errlen) ||
        fd_dguard_check(wdV, "the backward dV workspace", err, errlen))
        return -1;
    if (fd_cu_download_o(dq, gdq, B, sq, H, d, d, p->dtype, err, errlen)) return -1;
    if (fd_cu_download_o(dk, gdk, B, sk, Hk, d, d, p->dtype, err, errlen)) return -1;
    if (fd_cu_download_o(dv, gdv, B, sk, Hk, d, d, p->dtype, err, errlen)) return -1;
    return 0;
}
