/* fd_hd.h: one qualifier for code compiled for host and device alike.
 * Under nvcc FD_HD is __host__ __device__; under a C compiler it is empty. */
#ifndef FD_HD_H
#define FD_HD_H
#ifdef __CUDACC__
#define FD_HD __host__ __device__ __forceinline__
#else
#define FD_HD static inline
#endif

/* Exact floating-point equality, on purpose (-Wfloat-equal flags accidental uses). */
#if defined(__GNUC__) && !defined(__CUDACC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wfloat-equal"
#endif
FD_HD int fd_eqf(float a, float b) { return a == b; }
FD_HD int fd_eq(double a, double b) { return a == b; }
#if defined(__GNUC__) && !defined(__CUDACC__)
#pragma GCC diagnostic pop
#endif
#endif
