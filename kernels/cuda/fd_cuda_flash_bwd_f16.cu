/* fd_cuda_flash_bwd_f16.cu: the flash backward kernels for __half (fd_cuda_flash_bwd_kernel.cuh),
 * in a translation unit of their own so the dtypes compile in parallel. */
#include "fd_cuda_flash_bwd_kernel.cuh"

namespace fd_flash {
int bwd_launch_f16(const BwdParams &P, int bc, int variant, cudaStream_t st, char *err, size_t errlen)
{
    return bwd_launch_t<__half>(P, bc, variant, st, err, errlen);
}
} // namespace fd_flash
