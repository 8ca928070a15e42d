/* fd_metrics.h: error metrics of one backend's output against the reference.
 *
 * Over the checked rows of every (batch, head): max abs error, max rel error (over
 * nonzero reference values), ||out - ref|| / ||ref||, ulp distance in the output dtype
 * (|out - ref| / ulp(ref), ulp at ref's binade, subnormal ulp floor) as max and 99th
 * percentile, max abs LSE error (rows with visible keys; +Inf == +Inf counts as 0),
 * NaN/Inf counts, and where the worst element is. Rows with no visible key are
 * counted apart when skip_empty is set (eager softmax gives NaN there by design). */
#ifndef FD_METRICS_H
#define FD_METRICS_H
#include <stdint.h>
#include "fd_problem.h"

typedef struct fd_metrics {
    int valid;
    int lse_measured; /* 0: no LSE was given; lse_max_abs is NaN and neither shown nor judged */
    double max_abs, max_rel, rel_l2, max_ulp, p99_ulp, lse_max_abs;
    long n_elems, nan_count, inf_count, empty_rows_skipped;
    int worst_b, worst_h, worst_i, worst_d;
    double worst_got, worst_ref;
    uint64_t hash; /* FNV-1a 64 of the bits of every checked output and LSE value */
    double tflops; /* GPU backends: 4 d (visible query-key pairs) / median time; 0 otherwise */
    double ms; /* backend time for the case (CPU wall or GPU median), milliseconds */
} fd_metrics;

/* ref_o: [b][h][r][d] doubles for the nrows checked rows; ref_lse: [b][h][r];
 * nvis: [r] visible keys per row. o, lse: full backend outputs (fd_problem layouts); lse
 * may be NULL (not supplied: not measured). */
int fd_metrics_compute(const fd_problem *p, const int *rows, int nrows, const int *nvis,
                       const double *ref_o, const double *ref_lse, const float *o,
                       const float *lse, int skip_empty, fd_metrics *m);
/* FNV-1a 64 of the bits of the checked outputs (and LSE values when lse is not NULL), row
 * by row as fd_metrics_compute visits them: the identity of an output for --repeat. */
uint64_t fd_output_hash(const fd_problem *p, const int *rows, int nrows, const int *nvis,
                        int skip_empty, const float *o, const float *lse);
double fd_ulp_in_dtype(double ref, fd_dtype t);
#endif
