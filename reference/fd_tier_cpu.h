/* fd_tier_cpu.h: the binary64 tier of the reference on the CPU (fd_tier.h's algorithm,
 * OpenMP over rows), and the GPU tier's entry points (reference/fd_tier_gpu.cu, built
 * when CUDA is on; fd_tier_gpu_available() is 0 in a build without CUDA or without a GPU).
 *
 * Both compute the listed rows of every (batch, head), task t = (b * heads + h) * nrows + r,
 * into ref_o [t][d] and ref_lse [t] (the same layout as fd_reference_rows), and set
 * row_ok[t] = 1 when every value of the row (head_dim outputs and the LSE) is decided
 * (fd_tier.h: known to 1/1000 ulp of the output dtype). Rows with row_ok[t] = 0 must be
 * recomputed by the MPFR reference; their values here are estimates only.
 * *ndecided receives the number of decided values over all rows (decided rows or not).
 * Return 0, or -1 with err (bad arguments, no memory, a CUDA error). */
#ifndef FD_TIER_CPU_H
#define FD_TIER_CPU_H
#include <stddef.h>
#include "../kernels/common/fd_problem.h"

#ifdef __cplusplus
extern "C" {
#endif
int fd_tier_cpu_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                     const int *rows, int nrows, int jobs, double *ref_o, double *ref_lse,
                     unsigned char *row_ok, long *ndecided, char *err, size_t errlen);
/* Also fills bound [t][d] (and bound_lse [t]) with each value's error bound when not NULL. */
int fd_tier_cpu_rows_bounds(const fd_problem *p, const float *q, const float *k, const float *v,
                            const int *rows, int nrows, int jobs, double *ref_o, double *ref_lse,
                            double *bound, double *bound_lse, unsigned char *val_ok,
                            unsigned char *row_ok, long *ndecided, char *err, size_t errlen);

/* The backward tier (fd_tier_bwd.h), for every (batch, kv head) group: dq [b][h][r][d] for
 * the listed query rows, dk and dv [b][hk][t][d] for the listed key rows (fd_ref_bwd_group's
 * per-group layouts concatenated in (b, hk) order, as harness/fd_run_bwd.c keeps them). Every
 * row of the group enters the sums (dK, dV need them all). ok*: one flag per value, 1 =
 * decided (known to 1/1000 ulp of the dtype); the values of the others are estimates only.
 * Bounds b* may be NULL. Returns 0, -1 with err, or FD_TIER_DECLINED with err naming why
 * (variable-length or paged problems: the caller uses MPFR). */
#define FD_TIER_DECLINED (-2)
typedef struct fd_tier_bwd_out {
    double *dq, *dk, *dv;
    double *bdq, *bdk, *bdv;
    unsigned char *okq, *okk, *okv;
    long ndecided; /* decided values in all */
} fd_tier_bwd_out;
int fd_tier_bwd_cpu(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                    const int *qrows, int nq, const int *krows, int nk, int jobs, fd_tier_bwd_out *out,
                    char *err, size_t errlen);
int fd_tier_bwd_gpu(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                    const int *qrows, int nq, const int *krows, int nk, fd_tier_bwd_out *out, char *err,
                    size_t errlen);
/* The checks both run first: 0, -1 (bad arguments) or FD_TIER_DECLINED, with err. */
int fd_tier_bwd_check(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                      const int *qrows, int nq, const int *krows, int nk, const fd_tier_bwd_out *out, char *err,
                      size_t errlen);

int fd_tier_gpu_available(void);
int fd_tier_gpu_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                     const int *rows, int nrows, double *ref_o, double *ref_lse,
                     unsigned char *row_ok, long *ndecided, char *err, size_t errlen);
#ifdef __cplusplus
}
#endif
#endif
