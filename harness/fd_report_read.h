/* fd_report_read.h: reading a report.json back (gate, diff, baseline, html).
 *
 * fd_report_load parses the file and validates what the readers rely on: a JSON object
 * with tool "flashdrift", schema_version FD_REPORT_SCHEMA_VERSION, a case_file object,
 * a cases array whose every case has an id (unique), dtype, verdict (PASS, MARGINAL,
 * FAIL, UNDECIDED or UNJUDGED), shape and a backends object whose every backend has ok
 * and, when ok, the metrics (a number, "inf"/"-inf"/"nan", or null: not measured) and
 * output_hash; an optional role ("flash"/"standard") per backend and baseline
 * ({backend, origin: "supplied"|"computed"}) per case (docs/report-schema.md). A corrupt, truncated, foreign or newer file gets
 * one message naming the file, the JSON path and what was expected. */
#ifndef FD_REPORT_READ_H
#define FD_REPORT_READ_H
#include <jansson.h>
#include <stddef.h>

/* The metrics every ok backend carries, in report order. */
extern const char *const fd_report_metrics[];
#define FD_REPORT_NMETRICS 6

/* 0 and *out (caller json_decref's it), or -1 with err. */
int fd_report_load(const char *path, json_t **out, char *err, size_t errlen);
/* Validates a tree already in memory (file names the source in messages). */
int fd_report_validate(const char *file, const json_t *root, char *err, size_t errlen);
/* An index of the report's cases: a new object, id -> case (caller json_decref's it), so
 * that looking every case of one report up in another is not quadratic; NULL when out of
 * memory. */
json_t *fd_report_case_index(const json_t *report);
/* The case with this id, or NULL. */
json_t *fd_report_find_case(const json_t *report, const char *id);
/* 1 when a backend is a flash kernel: its "role" when the report records it; for older
 * reports, an fa_ratio field, else its name (standard, math, eager or ref in the name:
 * standard; anything else, cpu-splitkv and imported outputs included: flash). Reads
 * the report only: no backend registry. */
int fd_report_backend_is_flash(const char *name, const json_t *be);
#endif
