/* fd_diff.h: comparing two reports case by case (`flashdrift diff`, the HTML baseline view).
 *
 * Cases are matched by id, backends by name. Per case: the metrics that moved (relative
 * change; for max_ulp and p99_ulp also the change in ulps; a backward case's gradients as
 * "dq.max_abs" and so on, when both runs measured them), whether the outputs are
 * bitwise identical (equal output_hash on every backend, and equal gradient hashes), the verdicts, and a status:
 * new_failure, worse (a metric grew or the verdict got worse), only_old, only_new,
 * fixed, better, changed (hashes differ, metrics equal, or backends differ), identical.
 * Beside the cases, "changes" lists what differs between the two runs themselves: each
 * setting of flash_config, policy, case_file, backends, version, git_commit and machine
 * (GPU included) as {"what": "flash_config.br", "old": 64, "new": 128}, a side absent when
 * the report lacks the key. The "old" and "new" members name both reports (path, commit,
 * version, host, GPU, created).
 * The result is a JSON tree (schema "flashdrift-diff/1", docs/gate.md) sorted by severity,
 * with "regression": true when a case is a new failure or got worse; reports/fd_diff_out.h
 * renders it as text and Markdown, reports/fd_html.h in report.html. */
#ifndef FD_DIFF_H
#define FD_DIFF_H
#include <jansson.h>

/* old/new must be validated reports; returns the diff tree or NULL (out of memory). */
json_t *fd_diff_reports(const json_t *old, const char *old_path, const json_t *new_, const char *new_path);
/* 1 when the diff has a new failure or a case that got worse (its "regression"). */
int fd_diff_has_regression(const json_t *diff);
#endif
