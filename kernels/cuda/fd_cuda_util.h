/* fd_cuda_util.h: error checking, device buffers and timing shared by the CUDA backends
 * (internal to kernels/cuda). Every CUDA call and launch goes through FD_CU, which
 * records file and line in err and makes the calling function return -1. */
#ifndef FD_CUDA_UTIL_H
#define FD_CUDA_UTIL_H
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdint.h>
#include <vector>
#include <algorithm>

#include "fd_cuda.h"

#define FD_CU(call)                                                                          \
    do {                                                                                     \
        cudaError_t fd_e_ = (call);                                                          \
        if (fd_e_ != cudaSuccess) {                                                          \
            snprintf(err, errlen, "%s:%d: %s failed: %s (%s)", __FILE__, __LINE__, #call,    \
                     cudaGetErrorString(fd_e_), cudaGetErrorName(fd_e_));                    \
            cudaGetLastError(); /* clear a non-sticky error */                               \
            return -1;                                                                       \
        }                                                                                    \
    } while (0)
/* After every <<<>>> launch: launch-configuration errors and, with sync, faults. */
#define FD_LAUNCH_CHECK() FD_CU(cudaGetLastError())

#define FD_FAIL(...)                                                                         \
    do {                                                                                     \
        snprintf(err, errlen, __VA_ARGS__);                                                  \
        return -1;                                                                           \
    } while (0)

/* A device allocation freed on scope exit; a guarded one (fd_dalloc_guarded) lies between
 * two guard regions of `guard` bytes filled with 0xff, from `base`. */
struct fd_dbuf {
    void *p = nullptr;
    size_t bytes = 0;
    void *base = nullptr;
    size_t guard = 0;
    fd_dbuf() = default;
    fd_dbuf(const fd_dbuf &) = delete;
    fd_dbuf &operator=(const fd_dbuf &) = delete;
    ~fd_dbuf() { if (base) cudaFree(base); else if (p) cudaFree(p); }
    template <typename X> X *as() const { return static_cast<X *>(p); }
};

/* cudaMalloc with a message that names the buffer, the size and what was free. */
static inline int fd_dalloc(fd_dbuf &b, size_t bytes, const char *what, char *err, size_t errlen)
{
    if (bytes == 0) bytes = 16;
    cudaError_t e = cudaMalloc(&b.p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        b.p = nullptr;
        snprintf(err, errlen,
                 "out of device memory: %s needs %zu bytes (%.2f GiB), %zu of %zu bytes free (%s)",
                 what, bytes, (double)bytes / 1073741824.0, fr, tot, cudaGetErrorString(e));
        return -1;
    }
    b.bytes = bytes;
    return 0;
}

/* Out-of-bounds writes (cuDNN's tests do this): every output and accumulator of the CUDA
 * backends is allocated between two guard regions of FD_GUARD_BYTES filled with 0xff (a NaN
 * in fp16, bf16 and fp32), and checked after the kernels by fd_dguard_check: a byte that
 * changed is a write outside the tensor, reported with its distance from the tensor. A few
 * KB copied back per buffer: cheap enough for every run. */
#define FD_GUARD_BYTES 16384

static inline int fd_dalloc_guarded(fd_dbuf &b, size_t bytes, const char *what, char *err, size_t errlen)
{
    fd_dbuf raw;
    if (fd_dalloc(raw, (bytes ? bytes : 16) + 2 * (size_t)FD_GUARD_BYTES, what, err, errlen)) return -1;
    FD_CU(cudaMemset(raw.p, 0xff, raw.bytes));
    b.base = raw.p;
    raw.p = nullptr; /* b owns it now */
    b.guard = FD_GUARD_BYTES;
    b.p = static_cast<uint8_t *>(b.base) + FD_GUARD_BYTES;
    b.bytes = bytes ? bytes : 16;
    return 0;
}

/* 0 when both guards of b are intact (or b has none), else -1 with err naming the buffer,
 * the side, the bytes changed and how far the nearest one lies from the tensor. */
static inline int fd_dguard_check(const fd_dbuf &b, const char *what, char *err, size_t errlen)
{
    if (!b.guard) return 0;
    std::vector<uint8_t> h(b.guard);
    for (int side = 0; side < 2; side++) {
        const uint8_t *src = side == 0 ? static_cast<const uint8_t *>(b.base) : static_cast<const uint8_t *>(b.p) + b.bytes;
        FD_CU(cudaMemcpy(h.data(), src, b.guard, cudaMemcpyDeviceToHost));
        size_t changed = 0, nearest = 0;
        for (size_t i = 0; i < b.guard; i++) {
            if (h[i] == 0xff) continue;
            const size_t dist = side == 0 ? b.guard - i : i; /* bytes from the tensor's edge */
            if (!changed || dist < nearest) nearest = dist;
            changed++;
        }
        if (changed) {
            if (side == 0)
                snprintf(err, errlen, "out-of-bounds write before the start of %s: %zu guard bytes changed, the nearest "
                         "at byte -%zu (before its first byte)", what, changed, nearest);
            else
                snprintf(err, errlen, "out-of-bounds write past the end of %s (%zu bytes): %zu guard bytes changed, the "
                         "first at byte +%zu after its end", what, b.bytes, changed, nearest);
            return -1;
        }
    }
    return 0;
}

static inline float fd_median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    if (n == 0) return 0.0f;
    return (n & 1) ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

#include "fd_problem.h"
/* Shared by the CUDA backends (fd_cuda_flash.cu). */
int fd_cu_padded_dim(int d); /* 32, 64, 96, 128, 256, or -1 above 256 */
int fd_cu_check_problem(const fd_problem *p, char *err, size_t errlen);
/* Host floats -> device dtype [B][S][H][dp] (head dim zero-padded from d to dp). */
int fd_cu_upload(fd_dbuf &buf, const float *x, int B, int S, int H, int d, int dp, fd_dtype dt,
                 const char *what, char *err, size_t errlen);
int fd_cu_download_o(float *o, const fd_dbuf &buf, int B, int S, int H, int d, int dp,
                     fd_dtype dt, char *err, size_t errlen);
/* CUDA events destroyed on scope exit. */
struct fd_events {
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    fd_events() = default;
    fd_events(const fd_events &) = delete;
    fd_events &operator=(const fd_events &) = delete;
    ~fd_events()
    {
        if (e0) cudaEventDestroy(e0);
        if (e1) cudaEventDestroy(e1);
    }
};

/* Times `repeats` calls of launch() (an int() callable: 0, or -1 with err filled) between
 * CUDA events, after the caller's untimed warm-up; tm (optional) gets the median and the
 * minimum in milliseconds, zeros when repeats <= 0. */
template <typename F>
static inline int fd_time_repeats(int repeats, F &&launch, fd_cuda_timing *tm, char *err,
                                  size_t errlen)
{
    if (tm) { tm->ms_median = tm->ms_min = 0.0f; tm->repeats = 0; }
    if (repeats <= 0) return 0;
    fd_events ev;
    FD_CU(cudaEventCreate(&ev.e0));
    FD_CU(cudaEventCreate(&ev.e1));
    std::vector<float> ms;
    for (int r = 0; r < repeats; r++) {
        FD_CU(cudaEventRecord(ev.e0));
        if (launch()) return -1;
        FD_CU(cudaEventRecord(ev.e1));
        FD_CU(cudaEventSynchronize(ev.e1));
        float x = 0.0f;
        FD_CU(cudaEventElapsedTime(&x, ev.e0, ev.e1));
        ms.push_back(x);
    }
    if (tm) {
        tm->ms_median = fd_median(ms);
        tm->ms_min = *std::min_element(ms.begin(), ms.end());
        tm->repeats = repeats;
    }
    return 0;
}

/* FA2's ALiBi slopes as its kernels take them, onto the device: slope / scale_softmax in
 * binary32, one per head (the kernels have folded scale_softmax into the logits). */
static inline int fd_alibi_slopes_upload(const fd_problem *p, float scale_sm, fd_dbuf &d, char *err, size_t errlen)
{
    std::vector<float> raw((size_t)p->heads);
    for (int h = 0; h < p->heads; h++) raw[(size_t)h] = p->alibi_slopes[h] / scale_sm;
    if (fd_dalloc(d, raw.size() * sizeof(float), "ALiBi slopes", err, errlen)) return -1;
    FD_CU(cudaMemcpy(d.p, raw.data(), raw.size() * sizeof(float), cudaMemcpyHostToDevice));
    return 0;
}

#endif
