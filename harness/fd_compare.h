/* fd_compare.h: two captures of the same training step (docs/capture-format.md), made with
 * two attention implementations, compared call by call (docs/loss-mismatch.md).
 *
 * Each run has been judged first by the one pipeline (`check` of each run: every call
 * against the MPFR reference, the standard and FlashAttention rules, the consumed layout);
 * fd_compare_runs takes both runs' reports and adds, per call:
 *  - how far the call's inputs (q, k, v) differ between the runs (rel l2, max abs, identical
 *    elements), classified as identical, propagated (within `gain` times the largest
 *    relative difference any earlier call's inputs or outputs showed, plus a floor of
 *    `floor_ulps` units of roundoff of the dtype) or differing (the difference arose
 *    outside attention, before this call);
 *  - how far the outputs differ, split exactly into the part the exact attention of the
 *    two inputs explains (E_a - E_b, binary64 attention on every row) and the calls' own
 *    errors (e_a - e_b, e = O - E), beside the accumulation-order spread (the CPU replay of
 *    the flash algorithm against standard attention on run a's inputs: what two correct
 *    accumulation orders alone make of the same inputs);
 *  - the first-order loss attribution <dO, O_a - O_b> with dO the mean of the two runs'
 *    output gradients, split the same way; the calls' own parts summed and set against the
 *    measured loss difference L_a - L_b.
 * The verdict names the earliest event: a call judged wrong, an output consumed in the wrong
 * layout, or inputs differing beyond propagation; else every difference is rounding. */
#ifndef FD_COMPARE_H
#define FD_COMPARE_H
#include <jansson.h>
#include <stddef.h>
#include "fd_capture.h"

typedef struct fd_compare_opts {
    double gain;       /* propagation gain of the threshold (default 16) */
    double floor_ulps; /* floor of the threshold, in units of roundoff of the dtype (default 4) */
} fd_compare_opts;

void fd_compare_opts_default(fd_compare_opts *o);
/* 0 when a and b are captures of the same model and step (same model name, calls, modules,
 * shapes and dtypes); -1 with err naming the first difference. */
int fd_compare_same_model(const fd_capture *a, const fd_capture *b, char *err, size_t errlen);
/* The comparison (a new object), or NULL with err (a bundle could not be read, out of
 * memory). *wrong is set to 1 when an attention call is wrong or its output misused in either
 * run (the verdict's exit 1), 0 when attention is exact up to rounding in both. */
json_t *fd_compare_runs(const fd_capture *a, const fd_capture *b, const json_t *rep_a, const json_t *rep_b,
                        const fd_compare_opts *o, int *wrong, char *err, size_t errlen);
#endif
