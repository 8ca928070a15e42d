/* fd_out.h: what every writer of flashdrift's files shares, the engine's and the renderers'.
 *
 * Report numbers: JSON has no NaN or infinity, so a report writes them as the strings
 * "nan", "inf" and "-inf" (fd_json_num) and reads either form back (fd_json_number;
 * docs/report-schema.md). Atomic writes: the file is written to a temporary beside the
 * target, flushed, fsync'd and renamed over it, so a reader sees the old file or the new
 * one, never half of one. Nothing here knows what a report contains. */
#ifndef FD_OUT_H
#define FD_OUT_H
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

/* x as a report number: a JSON real, or "nan", "inf", "-inf". */
json_t *fd_json_num(double x);
/* Value of a report number (NAN when absent or not a number). */
double fd_json_number(const json_t *j);
/* 0, or -1 with err ("PATH: ..."); the file is created 0644. */
int fd_write_text_atomic(const char *path, const char *text, size_t len, char *err, size_t errlen);
/* root as indented JSON (reals with 17 significant digits, so they read back exactly). */
int fd_write_json_atomic(const char *path, const json_t *root, char *err, size_t errlen);
/* A text file built in memory and written atomically at the end: fd_doc_open (0, or -1
 * with err: out of memory), write to d->f, then fd_doc_commit (closes, writes path
 * atomically, frees; 0 or -1 with err) or fd_doc_discard. */
typedef struct fd_doc {
    FILE *f;
    char *buf;
    size_t len;
    const char *path;
} fd_doc;
int fd_doc_open(fd_doc *d, const char *path, char *err, size_t errlen);
int fd_doc_commit(fd_doc *d, char *err, size_t errlen);
void fd_doc_discard(fd_doc *d);

/* s (text from a report, a policy, a journal: data) into Markdown, as a table cell or inside
 * a code span: '|' escaped, newlines as spaces, '`' as '\'', and '<', '>', '&' as entities,
 * so that no input text ends a cell, a row or a span, or becomes markup. NULL writes nothing. */
void fd_md_text(FILE *f, const char *s);
/* The same into buf (cut to len - 1 bytes); returns buf, for printf arguments. */
const char *fd_md(const char *s, char *buf, size_t len);
#endif
