/* fd_diff.h: comparing two reports case by case (`flashdrift diff`, the HTML baseline view).
 *
 * Cases are matched by id, backends by name. Per case: the metrics that moved (relative
 * change; for max_ulp and p99_ulp also the change in ulps), whether the outputs are
 * bitwise identical (equal output_hash on every backend), the verdicts, and a status:
 * new_failure, worse (a metric grew or the verdict got worse), only_old, only_new,
 * fixed, better, changed (hashes differ, metrics equal, or backends differ), identical.
 * The result is a JSON tree (schema "flashdrift-diff/1", docs/gate.md) sorted by severity. */
#ifndef FD_DIFF_H
#define FD_DIFF_H
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

/* old/new must be validated reports; returns the diff tree or NULL (out of memory). */
json_t *fd_diff_reports(const json_t *old, const char *old_path, const json_t *new_, const char *new_path);
/* 1 when the diff has a new failure or a case that got worse. */
int fd_diff_has_regression(const json_t *diff);
void fd_diff_print(const json_t *diff, FILE *f);
int fd_diff_markdown(const json_t *diff, const char *path, char *err, size_t errlen);
#endif
