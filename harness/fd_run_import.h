/* fd_run_import.h: a case of a case file through the one judging pipeline (fd_run.h),
 * imported tensors included: a case whose c->bundle names a bundle (fd_import.h) is
 * loaded and its outputs are judged as given ones, with the bundle's provenance and its
 * outputs compared pairwise in the result's "import" (docs/import.md); any other case goes
 * straight to fd_run_case_given. */
#ifndef FD_RUN_IMPORT_H
#define FD_RUN_IMPORT_H
#include <stddef.h>
#include "fd_case.h"
#include "fd_run.h"

/* The kernels in bes (and, for a bundle case, the bundle's outputs as given ones); each
 * kernel runs `repeat` times in all (>= 1). 0, or -1 with err (the case could not be
 * judged: bad input, out of memory, interrupted). Outputs a caller holds itself go to
 * fd_run_case_given (fd_run.h). */
int fd_run_case(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe, int jobs,
                int repeat, fd_case_result *res, char *err, size_t errlen);
#endif
