/* fd_gate_out.h: the gate's outputs, rendered from its model (harness/fd_gate.h:
 * fd_gate_model, a JSON tree holding the gated report, the verdict and items per case,
 * the totals, the policy and the baseline). Every output counts the same way: the cases
 * and FAILs include the baseline cases missing from the report that the policy fails on. */
#ifndef FD_GATE_OUT_H
#define FD_GATE_OUT_H
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

/* "N cases: a PASS, b MARGINAL, c FAIL, d UNDECIDED" (and a note on missing baseline cases). */
void fd_gate_totals(const json_t *gate, char *buf, size_t len);
/* The one-line outcome: "gate PASS|FAIL: TOTALS (policy P, baseline B, ...)". */
void fd_gate_summary(const json_t *gate, FILE *f);
/* One line per failing/marginal case: "FAIL id: item; item" (the CLI prints them on
 * stderr, like run and check), then one per missing baseline case. */
void fd_gate_print(const json_t *gate, FILE *f);
/* JUnit XML: one testsuite per gated backend, one testcase per case; written atomically.
 * 0, or -1 with err. */
int fd_gate_junit(const json_t *gate, const char *path, char *err, size_t errlen);
/* Markdown summary for a CI job summary; written atomically. 0, or -1 with err. */
int fd_gate_markdown(const json_t *gate, const char *path, char *err, size_t errlen);
#endif
