/* fd_run_bias.h: the bias stage of the one judging pipeline (harness-internal; called by
 * fd_run_case_given when the case file sets bias_seeds).
 *
 * Rounding error that does not average out (Qiu and Yao 2025) is invisible to max-error
 * rules. The stage runs every kernel backend of the case on N input seeds derived from the
 * case's seed (fd_bias_seed; the dropout seed and offset stay the case's), takes the signed
 * error e = O - reference on the case's checked rows (the case's reference tiers, as the main
 * stage: each value within 1/1000 ulp of the dtype of the exact one, in practice ~1e-5 ulp
 * (fp32) or less, far below the biases the t-tests resolve; --reference mpfr: correctly
 * rounded; rows with no visible key are left out), and per output column (head-dim index,
 * pooled over batch, heads and checked rows) and per checked query row (pooled over batch,
 * heads and columns) computes each seed's mean error m_s. The seeds are the independent
 * unit (elements of one row share the normaliser's rounding), so each test is a one-sample
 * t-test of the N means against 0 (N - 1 degrees of freedom), two-sided, at alpha / T
 * (Bonferroni over the T tests of all measured backends of the case): the family-wise
 * false-alarm rate of a case is at most alpha. A backend whose outputs were given or
 * computed as a baseline is "not measured", as is every backend of a case whose inputs
 * were given (there are no seeds to vary). */
#ifndef FD_RUN_BIAS_H
#define FD_RUN_BIAS_H
#include "fd_verdict.h"

/* Input seed s (0-based) of the bias stage of a case with input seed `seed`. */
uint64_t fd_bias_seed(uint64_t seed, int s);
/* The two-sided critical |t| of Student's t with df degrees of freedom at level a. */
double fd_t_critical(int df, double a);
/* Fills res->be[*].bias (given_inputs: the case's inputs were given, nothing is measured).
 * -1 with err only when the case cannot go on (out of memory, interrupted, the reference
 * failed). */
int fd_bias_stage(const fd_casefile *cf, const fd_case *c, int given_inputs, int jobs, fd_case_result *res,
                  char *err, size_t errlen);
#endif
