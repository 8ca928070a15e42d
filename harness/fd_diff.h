/* fd_diff.h: comparing two reports case by case (`flashdrift diff`, the HTML baseline view).
 *
 * Cases are matched by id, backends by name. Per case: the metrics that moved (relative
 * change; for max_ulp and p99_ulp also the change in ulps), whether the outputs are
 * bitwise identical (equal output_hash on every backend), the verdicts, and a status:
 * new_failure, worse (a metric grew or the verdict got worse), only_old, only_new,
 * fixed, better, changed (hashes differ, metrics equal, or backends differ), identical.
 * Beside the cases, "changes" lists what differs between the two runs themselves: each
 * setting of flash_config, policy, case_file, backends, version, git_commit and machine
 * (GPU included) as {"what": "flash_config.br", "old": 64, "new": 128}, a side absent when
 * the report lacks the key. The "old" and "new" members name both reports (path, commit,
 * version, host, GPU, created).
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
/* One side ("old" or "new") of a "changes" entry as text: strings as they are, numbers,
 * JSON for anything else, "absent" when that report lacks the key. */
void fd_diff_value_str(const json_t *change, const char *side, char *buf, size_t len);
/* The settings "changes" covers, for a "nothing changed" line. */
extern const char *const fd_diff_settings;
int fd_diff_markdown(const json_t *diff, const char *path, char *err, size_t errlen);
#endif
