/* fd_cuda_mma.cu: one hardware mma.sync m16n8k16 per 16-term dot product, to confirm the
 * tensor-core block-FMA model (fd_accum.h, FD_ACC_TC16) on the GPU with crafted inputs.
 *
 * Warp w computes D = A B + C with A's row 0 = a[16w..16w+15], B's column 0 =
 * b[16w..16w+15], C[0][0] = c[w], every other entry 0, and returns D[0][0]: exactly one
 * 16-term block with accumulator c, as the flash kernel's S and O accumulation use it.
 * Fragment layout of m16n8k16 (PTX ISA): lane = 4 g + t; A regs a0 (row g, k 2t..2t+1),
 * a1 (row g+8), a2 (row g, k 2t+8..2t+9), a3 (row g+8, k 2t+8..); B regs b0 (k 2t..2t+1,
 * column g), b1 (k 2t+8..2t+9); C/D c0 (row g, column 2t). Row 0 and column 0 live in
 * lanes 0..3 (g = 0). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>

#include "fd_cuda.h"
#include "fd_cuda_util.h"
#include "fd_dtype.h"

namespace {

__device__ __forceinline__ uint32_t pack2(float lo, float hi, int bf16)
{
    uint16_t l = bf16 ? fd_f32_to_bf16_bits(lo) : fd_f32_to_f16_bits(lo);
    uint16_t h = bf16 ? fd_f32_to_bf16_bits(hi) : fd_f32_to_f16_bits(hi);
    return (uint32_t)l | ((uint32_t)h << 16);
}

__global__ void mma_block_kernel(const float *a, const float *b, const float *c, float *d, int n,
                                 int bf16)
{
    const int w = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    const int lane = (int)(threadIdx.x & 31);
    if (w >= n) return; /* whole warps exit together: blockDim is a multiple of 32 */
    const int g = lane >> 2, t = lane & 3;
    const float *aw = a + (size_t)w * 16, *bw = b + (size_t)w * 16;
    uint32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0;
    if (g == 0) {
        a0 = pack2(aw[2 * t], aw[2 * t + 1], bf16);
        a2 = pack2(aw[2 * t + 8], aw[2 * t + 9], bf16);
        b0 = pack2(bw[2 * t], bw[2 * t + 1], bf16);
        b1 = pack2(bw[2 * t + 8], bw[2 * t + 9], bf16);
    }
    float c0 = lane == 0 ? c[w] : 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
    float d0, d1, d2, d3;
    if (bf16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
                     : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c0), "f"(c1),
                       "f"(c2), "f"(c3));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
                     : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c0), "f"(c1),
                       "f"(c2), "f"(c3));
    if (lane == 0) d[w] = d0;
    (void)d1; (void)d2; (void)d3;
}

} /* namespace */

extern "C" int fd_cuda_mma_blocks(const float *a, const float *b, const float *c, float *d, int n,
                                  fd_dtype t, char *err, size_t errlen)
{
    if (n <= 0) FD_FAIL("fd_cuda_mma_blocks: n must be positive, got %d", n);
    if (t != FD_DT_FP16 && t != FD_DT_BF16) FD_FAIL("fd_cuda_mma_blocks: fp16 or bf16 only");
    fd_dbuf da, db, dc, dd;
    const size_t nb = (size_t)n;
    if (fd_dalloc(da, nb * 16 * sizeof(float), "mma a", err, errlen) ||
        fd_dalloc(db, nb * 16 * sizeof(float), "mma b", err, errlen) ||
        fd_dalloc(dc, nb * sizeof(float), "mma c", err, errlen) ||
        fd_dalloc(dd, nb * sizeof(float), "mma d", err, errlen))
        return -1;
    FD_CU(cudaMemcpy(da.p, a, nb * 16 * sizeof(float), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(db.p, b, nb * 16 * sizeof(float), cudaMemcpyHostToDevice));
    FD_CU(cudaMemcpy(dc.p, c, nb * sizeof(float), cudaMemcpyHostToDevice));
    const int threads = 256, warps = threads / 32;
    const unsigned blocks = (unsigned)((n + warps - 1) / warps);
    mma_block_kernel<<<blocks, threads>>>(da.as<float>(), db.as<float>(), dc.as<float>(),
                                          dd.as<float>(), n, t == FD_DT_BF16);
    FD_LAUNCH_CHECK();
    FD_CU(cudaDeviceSynchronize());
    FD_CU(cudaMemcpy(d, dd.p, nb * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}
