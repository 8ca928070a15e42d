/* fd_report.h: report.json (canonical, versioned) and the formats rendered from it.
 *
 * The report is built as a jansson tree: fd_report_new (tool, version, commit, machine,
 * case file, flash knobs, policy), fd_report_add_case per finished case, then
 * fd_report_finish (totals, complete flag). Writers are atomic: the file is written to
 * a temporary beside the target, flushed, fsync'd and renamed over it, so a reader sees
 * the old file or the new one, never half of one. Non-finite numbers are written as the
 * strings "inf", "-inf" and "nan" (JSON has no such numbers). docs/report-schema.md
 * documents every field. */
#ifndef FD_REPORT_H
#define FD_REPORT_H
#include <jansson.h>
#include <stddef.h>
#include "fd_case.h"
#include "fd_run.h"

#define FD_REPORT_SCHEMA_VERSION 1

json_t *fd_report_new(const fd_casefile *cf, const char *backends, int jobs);
json_t *fd_report_case_json(const fd_case_result *r);
void fd_report_add_case(json_t *report, json_t *case_json);
void fd_report_finish(json_t *report, int complete);
int fd_write_json_atomic(const char *path, const json_t *root, char *err, size_t errlen);
int fd_write_text_atomic(const char *path, const char *text, size_t len, char *err, size_t errlen);
/* Markdown summary rendered from a report tree; returns 0 or -1 with err filled. */
int fd_render_summary_md(const json_t *report, const char *path, char *err, size_t errlen);
/* Number helpers shared by the writers. */
json_t *fd_json_num(double x);
#endif
