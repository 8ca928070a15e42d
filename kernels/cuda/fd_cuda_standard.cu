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
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < nv; j += blockDim.x) mx = fmaxf(mx, __fmul_rn(s[j], p.scale));
    for (int w = 16; w >= 1; w >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, w));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < nv; j += blockDim.x) sum = __fadd_rn(sum, expf(__fsub_rn(__fmul_rn(s[j], p.scale), mx)));
    for (int w = 16; w >= 1; w >>= 1) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, w));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) sum = __fadd_rn(sum, red[w]);
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

struct Cublas {
    cublasHandle_t h = nullptr;
    ~Cublas() { if (h) cublasDestroy(h); }
};

} // namespace

extern "C" int fd_cuda_standard_forward(const fd_problem *p, int repeats, const float *q,
                                        const float *k, const float *v, float *o, float *lse,
                                        fd_cuda_timing *tm, char *err, size_t errlen)
{
    if (fd_cu_check_problem(p, err, errlen)) return -1;
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
    if (fd_dalloc(dO, (size_t)B * sq * H * d * es, "O", err, errlen)) return -1;
    if (fd_dalloc(dl, (size_t)B * H * sq * 4, "LSE", err, errlen)) return -1;
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
    if (fd_dalloc(wS, (size_t)nbh * sq * sk * 4, "standard S workspace", err, errlen)) return -1;
    if (fd_dalloc(wP, (size_t)nbh * sq * sk * es, "standard P workspace", err, errlen)) return -1;
    if (fd_dalloc(wQ, (size_t)nbh * sq * d * es, "gathered Q", err, errlen)) return -1;
    if (fd_dalloc(wK, (size_t)nbh * sk * d * es, "gathered K", err, errlen)) return -1;
    if (fd_dalloc(wV, (size_t)nbh * sk * d * es, "gathered V", err, errlen)) return -1;
    if (fd_dalloc(wO, (size_t)nbh * sq * d * 4, "standard O workspace", err, errlen)) return -1;
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
        const float one = 1.0f, zero = 0.0f;
        for (int bh0 = 0; bh0 < B * H; bh0 += nbh) {
            const int n = std::min(nbh, B * H - bh0);
            gather_heads<<<1024, 256>>>(dq.p, wQ.p, sq, H, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            gather_heads<<<1024, 256>>>(dk.p, wK.p, sk, Hk, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            gather_heads<<<1024, 256>>>(dv.p, wV.p, sk, Hk, H, d, bh0, n, dt);
            FD_LAUNCH_CHECK();
            /* S^T (col-major sk x sq) = K (col-major d x sk)^T * Q (col-major d x sq). */
            FD_CUBLAS(cublasGemmStridedBatchedEx(cb.h, CUBLAS_OP_T, CUBLAS_OP_N, sk, sq, d, &one,
                                                 wK.p, ct, d, (long long)sk * d, wQ.p, ct, d,
                                                 (long long)sq * d, &zero, wS.p, CUDA_R_32F, sk,
                                                 (long long)sq * sk, n, CUBLAS_COMPUTE_32F,
                                                 CUBLAS_GEMM_DEFAULT));
            softmax_rows<<<(unsigned)((size_t)n * sq), 256>>>(wS.as<float>(), wP.p, dl.as<float>(), sp, bh0);
            FD_LAUNCH_CHECK();
            /* O^T (col-major d x sq) = V (col-major d x sk) * P^T (col-major sk x sq). */
            FD_CUBLAS(cublasGemmStridedBatchedEx(cb.h, CUBLAS_OP_N, CUBLAS_OP_N, d, sq, sk, &one,
                                                 wV.p, ct, d, (long long)sk * d, wP.p, ct, sk,
                                                 (long long)sq * sk, &zero, wO.p, CUDA_R_32F, d,
                                                 (long long)sq * d, n, CUBLAS_COMPUTE_32F,
                                                 CUBLAS_GEMM_DEFAULT));
            scatter_out<<<1024, 256>>>(wO.as<float>(), dO.p, sp, bh0, n);
            FD_LAUNCH_CHECK();
        }
        return 0;
    };
    if (run_once()) return -1;
    FD_CU(cudaDeviceSynchronize());
    if (fd_time_repeats(repeats, run_once, tm, err, errlen)) return -1;
    if (fd_cu_download_o(o, dO, B, sq, H, d, d, p->dtype, err, errlen)) return -1;
    FD_CU(cudaMemcpy(lse, dl.p, dl.bytes, cudaMemcpyDeviceToHost));
    return 0;
}
