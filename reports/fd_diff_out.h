/* fd_diff_out.h: a diff of two reports (the tree harness/fd_diff.h builds, schema
 * "flashdrift-diff/1") as text and as Markdown: both reports named, what differs between
 * the two runs one setting a line, then each case that is not identical with the metrics
 * that moved. */
#ifndef FD_DIFF_OUT_H
#define FD_DIFF_OUT_H
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

void fd_diff_print(const json_t *diff, FILE *f);
/* Written atomically; 0, or -1 with err. */
int fd_diff_markdown(const json_t *diff, const char *path, char *err, size_t errlen);
/* One side ("old" or "new") of a "changes" entry as text: strings as they are, numbers,
 * JSON for anything else, "absent" when that report lacks the key. */
void fd_diff_value_str(const json_t *change, const char *side, char *buf, size_t len);
/* The settings "changes" covers, for a "nothing changed" line. */
extern const char *const fd_diff_settings;
#endif
