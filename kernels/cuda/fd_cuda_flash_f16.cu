/* fd_cuda_flash_f16.cu: the flash forward kernels for __half (fd_cuda_flash_kernel.cuh),
 * in a translation unit of their own so the dtypes compile in parallel. */
#include "fd_cuda_flash_kernel.cuh"

namespace fd_flash {
int launch_f16(const FlashParams &P, int br, int bc, cudaStream_t st, char *err, size_t errlen)
{
    return launch_t<__half>(P, br, bc, st, err, errlen);
}
} // namespace fd_flash
