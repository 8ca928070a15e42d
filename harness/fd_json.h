/* fd_json.h: strict JSON reading helpers shared by the policy, report and journal readers.
 *
 * Every error names the file, the JSON path and what was expected, in the style of the
 * case-file reader (fd_case.c): "FILE: PATH: expected ...". Files are loaded with
 * duplicate keys rejected; syntax errors name FILE:LINE:COL. Report numbers may be the
 * strings "inf", "-inf", "nan" (docs/report-schema.md); fd_jget_rnum reads both (fd_out.h: fd_json_number). */
#ifndef FD_JSON_H
#define FD_JSON_H
#include <jansson.h>
#include <stddef.h>

typedef struct fd_jctx {
    const char *file;
    char *err;
    size_t errlen;
} fd_jctx;

/* Fills err with "FILE: PATH: message" and returns -1. */
int fd_jfail(fd_jctx *cx, const char *path, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
const char *fd_jtype(const json_t *j);
/* Rejects keys not in allowed (NULL-terminated). */
int fd_jcheck_keys(fd_jctx *cx, const char *path, const json_t *obj, const char *const *allowed);
/* A finite number (integer or real). */
int fd_jget_num(fd_jctx *cx, const char *path, const json_t *j, double *out);
/* A report number: a JSON number or "inf", "-inf", "nan". */
int fd_jget_rnum(fd_jctx *cx, const char *path, const json_t *j, double *out);
/* Loads a file with duplicate keys rejected; NULL with err on failure. The file is opened
 * with fd_open_input (fd_file.h): a directory or a FIFO is an error, never a hang; errno
 * is ENOENT when the file is missing. */
/* A value per gradient: one number for dq, dk and dv, or {"dq": A, "dk": B, "dv": C} (keys
 * left out keep out[]'s values); each must be > 0. */
int fd_jget_per_grad(fd_jctx *cx, const char *path, const json_t *j, double out[3]);
json_t *fd_jload(const char *path, char *err, size_t errlen);
#endif
