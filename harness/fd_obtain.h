/* fd_obtain.h: the two building blocks every stage of the judging pipeline runs: a
 * backend's outputs for listed rows (a kernel run, or given outputs) and the MPFR
 * reference for listed rows (fd_obtain.c). Shared by fd_run.c and the stages
 * (fd_run_bwd.c, fd_run_bias.c, fd_run_inv.c) so that none of them depends on another. */
#ifndef FD_OBTAIN_H
#define FD_OBTAIN_H
#include <stddef.h>
#include "fd_verdict.h"

/* The outputs of one backend into o and lse: a kernel run (o and lse poisoned with NaN
 * first), or a copy of given outputs (*lse set to NULL when none was given). */
int fd_backend_obtain(const fd_casefile *cf, const fd_case *c, const fd_backend *be, const float *given_o,
                      const float *given_lse, const float *q, const float *k, const float *v, const int *rows,
                      int nrows, float *o, float **lse, double *ms, char *err, size_t errlen);
/* The MPFR reference for the listed rows of every (batch, head), OpenMP over rows:
 * ref_o [b][h][r][d], ref_lse [b][h][r]. */
int fd_reference_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                      const int *rows, int nrows, int jobs, double *ref_o, double *ref_lse,
                      int *undecided, int *precmax, char *err, size_t errlen);
#endif
