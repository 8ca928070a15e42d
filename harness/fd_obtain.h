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
/* The same through the reference tiers (docs/reference.md): tier FD_REFTIER_AUTO runs the
 * binary64 tier on the GPU when built and present, else on the CPU; FD_REFTIER_CPU / _GPU
 * force one (GPU without a GPU: an error); every row with a value the tier leaves undecided
 * is recomputed by fd_ref_row (MPFR), and FD_REFTIER_MPFR runs MPFR on every row. Values
 * of rows taken from the tier are known to 1/1000 ulp of the output dtype (not correctly
 * rounded binary64). st (may be NULL) receives the counts. */
int fd_reference_rows_tiered(const fd_problem *p, const float *q, const float *k, const float *v,
                             const int *rows, int nrows, int jobs, fd_reftier tier, double *ref_o,
                             double *ref_lse, int *undecided, int *precmax, fd_ref_stats *st, char *err,
                             size_t errlen);
/* The backward reference (dQ of the listed query rows, dK and dV of the listed key rows, every
 * (batch, kv head) group; dq [b][h][r][d], dk, dv [b][hk][t][d]) through the same tiers: the
 * binary64 backward tier (fd_tier_bwd.h) on the GPU or the CPU, then fd_ref_bwd_group (MPFR)
 * once per group that has an undecided value, on the query-row and key-row slots holding
 * one (varlen and paged problems: MPFR for all). st: values = gradient values, values_tier
 * / values_mpfr who gave them, rows_mpfr = MPFR calls (groups), rows_tier = groups taken
 * whole from the tier. */
int fd_reference_bwd_tiered(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                            const int *qrows, int nq, const int *krows, int nk, int jobs, fd_reftier tier,
                            double *dq, double *dk, double *dv, int *undecided, int *precmax, fd_ref_stats *st,
                            char *err, size_t errlen);
/* The estimated seconds of the reference for the listed rows of every (batch, head) with
 * `jobs` threads: visible keys x head_dim x a per-tier cost (docs/reference.md). */
double fd_reference_estimate(const fd_problem *p, const int *rows, int nrows, int jobs, fd_reftier tier);
/* The tier AUTO resolves to here (GPU when built and present, else CPU). */
fd_reftier fd_reftier_resolve(fd_reftier t);
/* Rows per head for a case under cf's budget: 0 (every row) when the estimate for every
 * row (the reference's and the CPU kernels' rows) is at most cf->reference_budget, else
 * cf->rows_per_head; *estimate_s receives it. */
int fd_reference_rows_per_head(const fd_casefile *cf, const fd_problem *p, int jobs, double *estimate_s);
#endif
