/* fd_report.h: building report.json, the report model (canonical, versioned).
 *
 * The report is built as a jansson tree: fd_report_new (tool, version, commit, machine,
 * case file, flash knobs, policy), fd_report_case_json per finished case (each backend
 * with its role, so that reading a report needs no kernel), fd_report_add_case, then
 * fd_report_finish (totals, complete flag). It is written with fd_write_json_atomic and
 * its numbers follow fd_out.h (non-finite numbers as "inf", "-inf", "nan"); reading it
 * back is fd_report_read.h. The renderers (reports/) read the tree, never this module.
 * docs/report-schema.md documents every field. */
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
#endif
