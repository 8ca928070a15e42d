/* fd_hd.h: one qualifier for code compiled for host and device alike.
 * Under nvcc FD_HD is __host__ __device__; under a C compiler it is empty. */
#ifndef FD_HD_H
#define FD_HD_H
#ifdef __CUDACC__
#define FD_HD __host__ __device__ __forceinline__
#else
#define FD_HD static inline
#endif
#endif
