/* fd_html.h: report.html, one self-contained file (no network): summary table, per-case
 * details and plots made by gnuplot (error vs sequence length per dtype and backend, a
 * histogram of p99 ulp errors, the dropout keep rate against 1 - p and the byte
 * threshold's probability, and with a baseline: baseline vs current and a diff table).
 * gnuplot runs as a subprocess (no shell) on data files written to a temporary directory;
 * its SVG output is embedded as base64 data URIs. The gnuplot binary is $FD_GNUPLOT or
 * "gnuplot" on PATH. Reports are data: the gnuplot program is fixed text, every string
 * from the input reaches gnuplot only as a data-file field (never evaluated), and is
 * HTML-escaped in the page (docs/gate.md, "Reports are data"). */
#ifndef FD_HTML_H
#define FD_HTML_H
#include <jansson.h>
#include <stddef.h>

/* 0 written; 1 gnuplot unavailable (err says so, nothing written); -1 error (err).
 * Cases with an "explain" object (run --explain) add the error-budget plot (stage shares
 * stacked per case, the interaction beside) and an Explanations section. With a baseline
 * report and diff, the diff of baseline -> report (harness/fd_diff.h, whose "old" and
 * "new" name the two files), the baseline-vs-current plot and a section on what differs
 * between the two runs; baseline and diff NULL: none. */
int fd_render_html(const json_t *report, const json_t *baseline, const json_t *diff, const char *path, char *err,
                   size_t errlen);
/* The same plot and section for an explain.json (`flashdrift explain --out DIR`):
 * {"explain": [explanation, ...], "case_file": ...}. Same return values. */
int fd_render_explain_html(const json_t *doc, const char *path, char *err, size_t errlen);
#endif
