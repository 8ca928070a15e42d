/* fd_run_bwd.h: the backward stage of the one judging pipeline (harness-internal; called
 * by fd_run_case_given for cases with `backward`).
 *
 * prepare: dO (drawn from the case's seeds, or given), the checked key rows (sampled as
 *   query rows are), the exact gradients from the MPFR reference (OpenMP over (batch, kv
 *   head) groups);
 * backend: one backend's gradients: its backward pass run on its own forward outputs (or
 *   gradients given), metrics against the exact ones, --repeat (bitwise identity and the
 *   run-to-run spread per gradient), a GPU flash kernel against the CPU replay bit for
 *   bit, and the replay's dQ order model (the spread that accumulation order alone makes);
 * fa_rule / judge: FlashAttention's rule per gradient against the baseline the forward
 *   rule chose, determinism, and "not measured" where a backend has no backward. */
#ifndef FD_RUN_BWD_H
#define FD_RUN_BWD_H
#include "fd_verdict.h"

/* The checked key rows of a backward case: sampled as query rows are (fd_sample_rows), on the
 * case seen from the keys; krows needs room for min(seqlen_k, rows_per_head + 16) + 16. */
int fd_bwd_sample_key_rows(const fd_problem *p, int rows_per_head, int *krows);
int fd_bwd_prepare(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                   const float *v, const float *given_dout, int jobs, fd_case_result *res,
                   float **dout_owned, const float **dout, char *err, size_t errlen);
/* gdq/gdk/gdv: given gradients (all three or NULL). Returns -1 only when the case cannot go
 * on (out of memory, interrupted); a failed backward is recorded in br->g.note. */
int fd_bwd_backend(const fd_casefile *cf, const fd_case *c, fd_backend_result *br, const float *q,
                   const float *k, const float *v, const float *o, const float *lse,
                   const float *dout, const float *gdq, const float *gdk, const float *gdv,
                   int repeat, fd_case_result *res, char *err, size_t errlen);
void fd_bwd_fa_rule(const fd_policy *po, fd_case_result *res);
/* Adds the gradient rules' outcome to *v and r->reasons; returns the number of rules that
 * were applied to flash gradients. */
int fd_bwd_judge(const fd_policy *po, fd_case_result *r, const fd_backend_result *b, fd_verdict *v);
void fd_bwd_free(fd_bwd_result *b);
/* The checked elements of gradient g (0 dq, 1 dk, 2 dv) of a full tensor (float f, or
 * double d when f is NULL) into out, in the order of the reference (res->bwd.ref_*);
 * returns their count. */
size_t fd_bwd_gather(const fd_case_result *res, int g, const float *f, const double *d, double *out);
size_t fd_bwd_count(const fd_case_result *res, int g);
#endif
