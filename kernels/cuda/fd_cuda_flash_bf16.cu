/* fd_cuda_flash_bf16.cu: the flash forward kernels for __nv_bfloat16 (fd_cuda_flash_kernel.cuh),
 * in a translation unit of their own so the dtypes compile in parallel. */
#include "fd_cuda_flash_kernel.cuh"

namespace fd_flash {
int launch_bf16(const FlashParams &P, int br, int bc, cudaStream_t st, char *err, size_t errlen)
{
    return launch_t<__nv_bfloat16>(P, br, bc, st, err, errlen);
}
} // namespace fd_flash
