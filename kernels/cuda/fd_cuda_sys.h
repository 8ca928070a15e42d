/* fd_cuda_sys.h: include first in every .cu file. glibc's <sys/select.h> declares a type
 * `fd_mask` when _GNU_SOURCE is on (always under C++; nvcc includes it before any line
 * of ours), which collides with fd_problem.h's enum fd_mask. In CUDA translation units
 * the project's enum is renamed fd_problem_mask; only the type name changes (the C API
 * takes fd_problem by pointer and the enum stays an int), so C callers are unaffected. */
#ifndef FD_CUDA_SYS_H
#define FD_CUDA_SYS_H
#define fd_mask fd_problem_mask
#endif
