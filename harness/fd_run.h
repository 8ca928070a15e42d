/* fd_run.h: the one judging pipeline: every command that judges (run, check, explain,
 * gate's runs, --repeat) goes through fd_run_case.
 *
 * fd_run_case: inputs (from the case's seeds, or given) -> sampled rows -> MPFR
 * reference (OpenMP over rows) -> each backend's outputs (a kernel run, outputs poisoned
 * with NaN first so unwritten values show; or outputs given: an imported output is a
 * backend whose outputs were given) -> repeats (--repeat: bitwise identity) -> metrics ->
 * baselines (a flash output is compared with a standard output of its family, else with
 * a supplied standard output, else with standard attention the harness computes itself
 * from the same inputs, origin "computed", together with the replay's rounding budget)
 * -> rules (FlashAttention's relative rule, ulp and LSE limits, the applied dropout mask
 * against the regenerated one, keep-rate statistics) -> verdict. With the case file's
 * bias_seeds the bias stage (fd_run_bias.h) runs the kernels again on that many input seeds
 * and tests the mean signed error per column and row; it is reported, and gated only by a
 * gate policy's fail_on_bias. A metric that was not
 * measured (no LSE given, no mask given) is never compared with a limit. A case where no
 * rule could be applied to a flash output is UNJUDGED, never PASS. */
#ifndef FD_RUN_H
#define FD_RUN_H
#include <stdint.h>
#include "fd_case.h"
#include "fd_obtain.h"
#include "fd_verdict.h"

/* Fills out with the backends named in spec ("auto", "cpu", "cuda", or a comma list of
 * names; "import": none, the outputs are given). Returns the count, or -1 with err filled
 * (unknown name, no GPU for cuda). */
int fd_backends_select(const char *spec, const fd_backend **out, char *err, size_t errlen);
const fd_backend *fd_backend_find(const char *name);
/* 1 when the CUDA backends are built and a GPU is visible. */
int fd_gpu_present(void);
/* "name, sm_XY, driver N" of the current GPU (0 unless fd_gpu_select chose another); -1
 * when there is none. */
int fd_gpu_describe(char *buf, size_t len);
/* Makes GPU ordinal % count this process's (an MPI rank's, fd_mpi.h): the device, or -1
 * when there is no GPU or the build has no CUDA. */
int fd_gpu_select(int ordinal);


void fd_case_result_free(fd_case_result *r);
/* The pipeline for one case: the kernels in bes, then the given outputs (given may be
 * NULL); each kernel runs `repeat` times in all (>= 1). 0, or -1 with err (the case could
 * not be judged: bad input, out of memory, interrupted). A case of a case file enters
 * through fd_run_case (fd_run_import.h), which loads an imported case's bundle first. */
int fd_run_case_given(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe,
                      const fd_given *given, int jobs, int repeat, fd_case_result *res, char *err,
                      size_t errlen);
/* Building blocks of a judged case. */
/* Keep-rate statistics of the FA2 mask over the visible elements of the listed rows. */
void fd_dropout_stats_compute(const fd_problem *p, const int *rows, int nrows, const int *nvis,
                              fd_dropout_stats *s);
#endif
