/* fd_cuda_wgmma.cu: hardware probes of the sm_90 tensor-core accumulation beyond mma.sync
 * m16n8k16 (fd_cuda_mma.cu): wgmma m64n8k16 with fp16/bf16 inputs, mma.sync m16n8k32 with
 * FP8 (e4m3, e5m2) inputs, and wgmma m64n8k32 with FP8 inputs, all with fp32 accumulation.
 * Compiled for sm_90a only (wgmma is an arch-specific instruction): target fd_cuda_probe.
 *
 * Every entry point computes n independent dot products d[w] = c[w] + sum_{i<k} a[k w + i]
 * b[k w + i] with crafted inputs: A's row 0 holds the k terms a, B's column 0 the terms b,
 * C[0][0] = c, every other entry of A, B and C is 0, and D[0][0] comes back. k longer than
 * the instruction's K is issued as consecutive instructions into the same accumulator, in
 * K order (first the terms 0..K-1), which is how a GEMM main loop chains them.
 *
 * wgmma (one warpgroup = 128 threads per CTA, one dot product per CTA): A (64 x K) and B
 * (K x 8, given as its transpose 8 x K, "K-major") lie in shared memory without swizzle
 * (layout type 0, INTERLEAVE). A core matrix is 8 rows x 16 bytes stored as 128 contiguous
 * bytes (row r at byte 16 r); the K-major canonical layout (CUTLASS cute
 * mma_sm90_desc.hpp, make_gmma_desc<Major::K>) is ((8,m),(T,2)):((1T,SBO),(1,LBO)) in
 * 16-byte units: core matrices adjacent in K lie LBO bytes apart, those adjacent in M (or
 * N) SBO bytes apart. Here each instruction's A tile is 2048 bytes with core matrix (mb, kb)
 * at 256 mb + 128 kb (LBO = 128, SBO = 256), B's at 128 kb. Descriptor bits (PTX ISA,
 * "Matrix Descriptor Format"): 0-13 start address >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4,
 * 49-51 base offset (0: no swizzle), 62-63 layout type (0: no swizzle).
 * fd_cuda_probe_set_layout(1) swaps the two fields (LBO = 256, SBO = 128; the memory stays
 * as it is), right if the hardware reads them the other way round: the dump tool's
 * self-check tries 0 first, then 1.
 * D fragment of m64n8 f32 (4 registers per thread): warp w of the group holds rows
 * 16 w .. 16 w + 15 as mma.sync m16n8 does, so D[0][0] is thread 0's first register.
 *
 * mma.sync m16n8k32 e4m3/e5m2 (one warp per dot product): lane = 4 g + t; A registers
 * a0 (row g, k 4t..4t+3), a1 (row g+8), a2 (row g, k 16+4t..), a3 (row g+8, k 16+4t..),
 * one byte per element, lowest k in the lowest byte; B b0 (k 4t..4t+3, column g), b1
 * (k 16+4t..); C/D as m16n8k16 (c0: row g, column 2t). The same kernel chains mma.sync
 * m16n8k16 fp16/bf16 (fd_cuda_mma16_chain_blocks) as the control on the wgmma inputs.
 *
 * Inputs arrive as floats that must be exact values of the input format; the host encodes
 * them (fd_probe_f32_to_fp8 below, local to the probe) and fails on an inexact one. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <vector>

#include "fd_cuda.h"
#include "fd_cuda_util.h"
#include "fd_dtype.h"

namespace {

int g_probe_layout = 0; /* 0: LBO = K-direction offset (CUTLASS); 1: swapped */

/* ---- FP8 encodings, local to the probe (fd_dtype.h will own the library's) ---------- */
/* e4m3 (OCP/NVIDIA "fn"): bias 7, 3 fraction bits, max 448, no Inf, NaN = S.1111.111.
 * e5m2: bias 15, 2 fraction bits, max 57344, Inf/NaN as IEEE. Exact values only: returns
 * -1 when x is not a finite value of the format (NaN in e4m3 and Inf/NaN in e5m2 are
 * encoded as such). */
int fd_probe_f32_to_fp8(float x, int e5m2)
{
    const int mbits = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7;
    uint32_t u;
    memcpy(&u, &x, 4);
    const int s = (int)(u >> 31);
    if (x != x) return 0x7f; /* NaN in both formats */
    if (!(x - x == 0.0f)) { /* infinite */
        if (!e5m2) return -1;
        return (s << 7) | 0x7c;
    }
    double ax = x < 0 ? -(double)x : (double)x;
    if (ax == 0.0) return s << 7;
    const int emin = 1 - bias; /* -6 or -14 */
    int e = 0;
    double f = frexp(ax, &e); /* ax = f 2^e, f in [0.5, 1) */
    e -= 1;                   /* ax = (2f) 2^e */
    int code;
    if (e < emin) { /* subnormal: ax = m 2^(emin - mbits) */
        double m = ldexp(ax, mbits - emin);
        if (m != floor(m) || m < 1.0) return -1;
        code = (int)m;
    } else {
        double m = ldexp(ax, mbits - e); /* in [2^mbits, 2^(mbits+1)) */
        if (m != floor(m)) return -1;
        int be = e + bias;
        code = (be << mbits) | ((int)m - (1 << mbits));
    }
    if (e5m2 ? code >= 0x7c : code >= 0x7f) return -1; /* above max */
    return (s << 7) | code;
}

} /* namespace */

static __device__ __forceinline__ uint64_t dev_desc(const void *p, uint32_t lbo, uint32_t sbo)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    return (uint64_t)((a >> 4) & 0x3fffu) | ((uint64_t)((lbo >> 4) & 0x3fffu) << 16) |
           ((uint64_t)((sbo >> 4) & 0x3fffu) << 32);
}

#define FD_WG_MAXSTEPS 16 /* instructions chained per dot product */
#define FD_WG_ATILE 2048  /* bytes of one instruction's A (64 rows x 32 bytes) */
#define FD_WG_BTILE 512   /* bytes reserved for one instruction's B (8 rows x 32 bytes) */

/* kind: 0 fp16, 1 bf16, 2 e4m3, 3 e5m2. x: n * k input codes of esize bytes (2 or 1) for A
 * row 0, y for B column 0. Every instruction covers 32 bytes of K (16 16-bit or 32 8-bit
 * elements). */
template <int KIND>
static __global__ void __launch_bounds__(128) wgmma_block_kernel(const uint8_t *x, const uint8_t *y,
                                                                 const float *c, float *d, int k,
                                                                 int layout)
{
    __shared__ __align__(1024) uint8_t sa[FD_WG_MAXSTEPS * FD_WG_ATILE];
    __shared__ __align__(1024) uint8_t sb[FD_WG_MAXSTEPS * FD_WG_BTILE];
    constexpr int esize = KIND < 2 ? 2 : 1;
    const int w = (int)blockIdx.x, tid = (int)threadIdx.x;
    const int rowbytes = k * esize, steps = rowbytes / 32;
    /* Memory: core matrix (mb, kb) of a tile at 256 mb + 128 kb bytes (K stride 128, M/N
     * stride 256), in both layouts; only the descriptor's fields differ: layout 0 says
     * LBO = 128 (K stride), SBO = 256 (M stride), as CUTLASS reads them; layout 1 says
     * LBO = 256, SBO = 128, right if the hardware took LBO as the M stride. Only row 0 of
     * A and of B^T is non-zero, so under the wrong reading the second 16 bytes of K come
     * from a zero row and the self-check's integer sums come out wrong. */
    const uint32_t kst = 128u;
    for (int i = tid; i < (int)sizeof sa / 16; i += 128) reinterpret_cast<uint4 *>(sa)[i] = make_uint4(0, 0, 0, 0);
    for (int i = tid; i < (int)sizeof sb / 16; i += 128) reinterpret_cast<uint4 *>(sb)[i] = make_uint4(0, 0, 0, 0);
    __syncthreads();
    const uint8_t *xw = x + (size_t)w * rowbytes, *yw = y + (size_t)w * rowbytes;
    for (int j = tid; j < rowbytes; j += 128) {
        const int s = j / 32, kb = (j % 32) / 16, byte = j % 16;
        /* row 0 of A (core matrix mb = 0, its row 0) and row 0 of B^T (column 0 of B) */
        sa[s * FD_WG_ATILE + kb * kst + byte] = xw[j];
        sb[s * FD_WG_BTILE + kb * kst + byte] = yw[j];
    }
    /* generic-proxy writes to shared memory -> visible to the async proxy (wgmma) */
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    float d0 = tid == 0 ? c[w] : 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
    const uint32_t lbo = layout == 0 ? 128u : 256u, sbo = layout == 0 ? 256u : 128u;
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    for (int s = 0; s < steps; s++) {
        const uint64_t da = dev_desc(sa + s * FD_WG_ATILE, lbo, sbo);
        const uint64_t db = dev_desc(sb + s * FD_WG_BTILE, lbo, sbo);
        /* scale-d = 1: D = A B + D; scale-a = scale-b = 1; no transpose (K-major) */
        if (KIND == 0)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, %4, %5, p, 1, 1, 0, 0;\n}\n"
                         : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
                         : "l"(da), "l"(db), "r"(1) : "memory");
        else if (KIND == 1)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0,%1,%2,%3}, %4, %5, p, 1, 1, 0, 0;\n}\n"
                         : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
                         : "l"(da), "l"(db), "r"(1) : "memory");
        else if (KIND == 2)
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {%0,%1,%2,%3}, %4, %5, p, 1, 1;\n}\n"
                         : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
                         : "l"(da), "l"(db), "r"(1) : "memory");
        else
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
                         "wgmma.mma_async.sync.aligned.m64n8k32.f32.e5m2.e5m2 {%0,%1,%2,%3}, %4, %5, p, 1, 1;\n}\n"
                         : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
                         : "l"(da), "l"(db), "r"(1) : "memory");
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3) :: "memory");
    if (tid == 0) d[w] = d0;
}

/* mma.sync chained over k through the registers, one warp per dot product: KIND 0/1
 * m16n8k16 fp16/bf16, 2/3 m16n8k32 e4m3/e5m2. Both take 32 bytes of K per instruction
 * and place them alike: register a0 holds bytes 4t..4t+3 of row g (elements 2t, 2t+1 of
 * a 16-bit row, 4t..4t+3 of an 8-bit row; the lowest element in the lowest bits), a2
 * bytes 16+4t..16+4t+3; b0/b1 the same bytes of column g. */
template <int KIND>
static __global__ void mma_chain_kernel(const uint8_t *x, const uint8_t *y, const float *c, float *d,
                                        int n, int rowbytes)
{
    const int w = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    const int lane = (int)(threadIdx.x & 31);
    if (w >= n) return; /* whole warps exit together */
    const int g = lane >> 2, t = lane & 3;
    const uint8_t *xw = x + (size_t)w * rowbytes, *yw = y + (size_t)w * rowbytes;
    float c0 = lane == 0 ? c[w] : 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
    for (int s = 0; s < rowbytes; s += 32) {
        uint32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0;
        if (g == 0) {
            for (int i = 0; i < 4; i++) {
                a0 |= (uint32_t)xw[s + 4 * t + i] << (8 * i);
                a2 |= (uint32_t)xw[s + 16 + 4 * t + i] << (8 * i);
                b0 |= (uint32_t)yw[s + 4 * t + i] << (8 * i);
                b1 |= (uint32_t)yw[s + 16 + 4 * t + i] << (8 * i);
            }
        }
        float d0, d1, d2, d3;
#define FD_MMA_ASM(INSTR)                                                                        \
    asm volatile(INSTR " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"           \
                 : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)                                        \
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c0), "f"(c1),       \
                   "f"(c2), "f"(c3))
        if (KIND == 0) FD_MMA_ASM("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32");
        else if (KIND == 1) FD_MMA_ASM("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32");
        else if (KIND == 2) FD_MMA_ASM("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32");
        else FD_MMA_ASM("mma.sync.aligned.m16n8k32.row.col.f32.e5m2.e5m2.f32");
#undef FD_MMA_ASM
        c0 = d0; c1 = d1; c2 = d2; c3 = d3;
    }
    if (lane == 0) d[w] = c0;
}

/* Host: encodes the inputs (kind 0 fp16, 1 bf16, 2 e4m3, 3 e5m2), exact values only. */
static int encode(const float *v, size_t cnt, int kind, std::vector<uint8_t> &out, const char *who,
                  char *err, size_t errlen)
{
    const int esize = kind < 2 ? 2 : 1;
    out.assign(cnt * (size_t)esize, 0);
    for (size_t i = 0; i < cnt; i++) {
        if (kind < 2) {
            const uint16_t h = kind == 0 ? fd_f32_to_f16_bits(v[i]) : fd_f32_to_bf16_bits(v[i]);
            const float back = kind == 0 ? fd_f16_bits_to_f32(h) : fd_bf16_bits_to_f32(h);
            if (fd_f32_bits(back) != fd_f32_bits(v[i]) && !(v[i] != v[i]))
                FD_FAIL("%s: input %zu (%a) is not an exact %s value", who, i, (double)v[i],
                        kind == 0 ? "fp16" : "bf16");
            out[2 * i] = (uint8_t)(h & 0xff);
            out[2 * i + 1] = (uint8_t)(h >> 8);
        } else {
            const int b = fd_probe_f32_to_fp8(v[i], kind == 3);
            if (b < 0)
                FD_FAIL("%s: input %zu (%a) is not an exact %s value", who, i, (double)v[i],
                        kind == 3 ? "e5m2" : "e4m3");
            out[i] = (uint8_t)b;
        }
    }
    return 0;
}

static int run_blocks(const float *a, const float *b, const float *c, float *d, int n, int k, int kind,
                      int use_wgmma, const char *who, char *err, size_t errlen)
{
    const int kstep = kind < 2 ? 16 : 32;
    if (n <= 0) FD_FAIL("%s: n must be positive, got %d", who, n);
    if (k <= 0 || k % kstep) FD_FAIL("%s: k must be a positive multiple of %d, got %d", who, kstep, k);
    if (use_wgmma && k / kstep > FD_WG_MAXSTEPS)
        FD_FAIL("%s: k = %d is more than %d chained instructions", who, k, FD_WG_MAXSTEPS);
    int dev = 0;
    cudaDeviceProp prop;
    FD_CU(cudaGetDevice(&dev));
    FD_CU(cudaGetDeviceProperties(&prop, dev));
    if (prop.major != 9) FD_FAIL("%s: needs an sm_90 GPU (this one is sm_%d%d)", who, prop.major, prop.minor);
    std::vector<uint8_t> hx, hy;
    const size_t cnt = (size_t)n * (size_t)k;
    if (encode(a, cnt, kind, hx, who, err, errlen) || encode(b, cnt, kind, hy, who, err, errlen)) return -1;
    fd_dbuf dx, dy, dc, dd;
    if (fd_dalloc(dx, hx.size(), "probe a", err, errlen) || fd_dalloc(dy, hy.size(), "probe b", err, errlen) ||
        fd_dalloc(dc, (size_t)n * sizeof(float), "probe c", err, errlen) ||
        fd_dalloc_guarded(dd, (size_t)n * sizeof(float), "probe d", err, errlen))
        return -1;
    FD_CU(cudaMemcpy(dx.p, hx.data(), hx.size(), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(dy.p, hy.data(), hy.size(), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(dc.p, c, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
    const uint8_t *px = dx.as<uint8_t>(), *py = dy.as<uint8_t>();
    const float *pc = dc.as<float>();
    float *pd = dd.as<float>();
    if (use_wgmma) {
        const int L = g_probe_layout;
        switch (kind) {
        case 0: wgmma_block_kernel<0><<<(unsigned)n, 128>>>(px, py, pc, pd, k, L); break;
        case 1: wgmma_block_kernel<1><<<(unsigned)n, 128>>>(px, py, pc, pd, k, L); break;
        case 2: wgmma_block_kernel<2><<<(unsigned)n, 128>>>(px, py, pc, pd, k, L); break;
        default: wgmma_block_kernel<3><<<(unsigned)n, 128>>>(px, py, pc, pd, k, L); break;
        }
    } else {
        const int threads = 256, warps = threads / 32;
        const unsigned blocks = (unsigned)((n + warps - 1) / warps);
        const int rb = k * (kind < 2 ? 2 : 1);
        switch (kind) {
        case 0: mma_chain_kernel<0><<<blocks, threads>>>(px, py, pc, pd, n, rb); break;
        case 1: mma_chain_kernel<1><<<blocks, threads>>>(px, py, pc, pd, n, rb); break;
        case 2: mma_chain_kernel<2><<<blocks, threads>>>(px, py, pc, pd, n, rb); break;
        default: mma_chain_kernel<3><<<blocks, threads>>>(px, py, pc, pd, n, rb); break;
        }
    }
    FD_LAUNCH_CHECK();
    FD_CU(cudaDeviceSynchronize());
    if (fd_dguard_check(dd, "probe d", err, errlen)) return -1;
    FD_CU(cudaMemcpy(d, dd.p, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int fd_cuda_wgmma_blocks(const float *a, const float *b, const float *c, float *d, int n,
                                    int k, fd_dtype t, char *err, size_t errlen)
{
    if (t != FD_DT_FP16 && t != FD_DT_BF16) FD_FAIL("fd_cuda_wgmma_blocks: fp16 or bf16 only");
    return run_blocks(a, b, c, d, n, k, t == FD_DT_BF16 ? 1 : 0, 1, "fd_cuda_wgmma_blocks", err, errlen);
}

extern "C" int fd_cuda_mma16_chain_blocks(const float *a, const float *b, const float *c, float *d, int n,
                                          int k, fd_dtype t, char *err, size_t errlen)
{
    if (t != FD_DT_FP16 && t != FD_DT_BF16) FD_FAIL("fd_cuda_mma16_chain_blocks: fp16 or bf16 only");
    return run_blocks(a, b, c, d, n, k, t == FD_DT_BF16 ? 1 : 0, 0, "fd_cuda_mma16_chain_blocks", err, errlen);
}

extern "C" int fd_cuda_mma_fp8_blocks(const float *a, const float *b, const float *c, float *d, int n,
                                      int k, int e5m2, char *err, size_t errlen)
{
    return run_blocks(a, b, c, d, n, k, e5m2 ? 3 : 2, 0, "fd_cuda_mma_fp8_blocks", err, errlen);
}

extern "C" int fd_cuda_wgmma_fp8_blocks(const float *a, const float *b, const float *c, float *d, int n,
                                        int k, int e5m2, char *err, size_t errlen)
{
    return run_blocks(a, b, c, d, n, k, e5m2 ? 3 : 2, 1, "fd_cuda_wgmma_fp8_blocks", err, errlen);
}

extern "C" void fd_cuda_probe_set_layout(int layout) { g_probe_layout = layout ? 1 : 0; }

extern "C" int fd_cuda_probe_device(char *buf, size_t len)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        n = 0;
    }
    if (buf && len) {
        buf[0] = 0;
        cudaDeviceProp p;
        int drv = 0;
        if (n > 0 && cudaGetDeviceProperties(&p, 0) == cudaSuccess) {
            cudaDriverGetVersion(&drv);
            snprintf(buf, len, "%s, sm_%d%d, driver %d", p.name, p.major, p.minor, drv);
        }
    }
    return n;
}
