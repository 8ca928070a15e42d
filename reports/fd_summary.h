/* fd_summary.h: summary.md, a table a person reads in a CI log, rendered from a report
 * tree (harness/fd_report.h builds it): totals, one row per case and backend ("-" for a
 * metric that was not measured), why each case that is not PASS is so, and the stage
 * budget of each explained case. Written atomically. */
#ifndef FD_SUMMARY_H
#define FD_SUMMARY_H
#include <jansson.h>
#include <stddef.h>

/* 0, or -1 with err filled. */
int fd_render_summary_md(const json_t *report, const char *path, char *err, size_t errlen);
#endif
