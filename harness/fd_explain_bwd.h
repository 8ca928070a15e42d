/* fd_explain_bwd.h: attribution of a kernel's gradients (explain's backward pass;
 * internal to harness/fd_explain.c).
 *
 * On a backward case, after the one pipeline has judged the kernel's gradients:
 *  - the replay's error budget by backward stage, per gradient: the change of dQ, dK, dV
 *    when one stage alone is computed in binary64 (P recomputation, P rounding, dP, D,
 *    dS rounding, dQ accumulation, dK/dV accumulation; final scaling and rounding),
 *    with each part's share of the replay's error (projection, as the forward's);
 *  - the dQ order spread the pipeline measured (the replay's partials in other orders);
 *  - when a gradient's error is far above the rounding budget, named bug hypotheses, each
 *    the replay with that bug, ranked by the largest error it leaves in units of the
 *    hypothesis limit. */
#ifndef FD_EXPLAIN_BWD_H
#define FD_EXPLAIN_BWD_H
#include "fd_explain.h"

/* Why a backward bug changes nothing on problem p (or NULL when it changes the gradients). */
const char *fd_explain_bwd_noop(const fd_problem *p, const char *bug);

/* The kernel's gradients for explain: backend be's backward on its own forward outputs
 * o, lse (every row), with backward bug `inject` (NULL: none) built in. */
int fd_explain_kernel_grads(const fd_casefile *cf, const fd_case *c, const fd_backend *be, const char *inject,
                            const float *q, const float *k, const float *v, const float *o, const float *lse,
                            const float *dout, float *dq, float *dk, float *dv, char *err, size_t errlen);

/* Fills ex->grad from the judged case jr (the kernel's gradients kdq/kdk/kdv were its
 * given output 0). */
int fd_explain_grads(const fd_casefile *cf, const fd_problem *p, const float *q, const float *k, const float *v,
                     const float *dout, const float *kdq, const float *kdk, const float *kdv,
                     const fd_case_result *jr, fd_explanation *ex, char *err, size_t errlen);

json_t *fd_explain_grad_json(const fd_ex_grad *g);
#endif
