/* fd_explain_report.h: an explanation as plain text, a page a person reads in a minute.
 *
 * It renders the explanation's JSON object (harness/fd_explain.h: fd_explain_json; the
 * object report.json's cases carry as "explain" and explain.json lists; its fields in
 * docs/attribution.md), so the same text comes from a fresh explanation, a report or an
 * explain.json. A field an older file lacks prints as nan. */
#ifndef FD_EXPLAIN_REPORT_H
#define FD_EXPLAIN_REPORT_H
#include <jansson.h>
#include <stdio.h>

void fd_explain_text(const json_t *ex, FILE *f);
#endif
