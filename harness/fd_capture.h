/* fd_capture.h: a training step captured by scripts/flashdrift_capture.py
 * (docs/capture-format.md): RUN/capture.json, the index, and one bundle (fd_import.h)
 * per attention call, in call order.
 *
 * fd_capture_load reads and validates the index: every key known, every call's fields of
 * the right type, indices 0, 1, 2, ... in order, bundle names of the form call-NNNN (no
 * other string from the index ever reaches a file name) and present in RUN. The bundles
 * themselves are checked against their index entries by fd_capture_check_bundle (shapes in
 * the bundle's layout, dtype, the named output), once loaded. Every error names the file,
 * the field and what was expected. */
#ifndef FD_CAPTURE_H
#define FD_CAPTURE_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "fd_import.h"

typedef struct fd_capture_call {
    int index;
    char bundle[48];        /* "call-NNNN", or "" when not captured */
    char output[64];        /* the out_NAME of its bundle */
    char module[256];       /* the module that made the call ("" at the top level) */
    char op[64];
    char not_captured[256]; /* why it has no bundle */
    int64_t q_shape[4], k_shape[4];
    fd_dtype dtype;
    char path[1200];        /* RUN/bundle */
} fd_capture_call;

typedef struct fd_capture {
    char path[1024];        /* RUN */
    char model[128], label[128];
    double loss;
    json_t *info;           /* or NULL */
    int ncalls;
    fd_capture_call *calls;
} fd_capture;

/* 1 when PATH is a directory holding capture.json. */
int fd_capture_is(const char *path);
int fd_capture_load(const char *path, fd_capture *c, char *err, size_t errlen);
void fd_capture_free(fd_capture *c);
/* The bundle paths of the captured calls, in call order (caller frees each and the array);
 * 0 or -1 (out of memory). */
int fd_capture_paths(const fd_capture *c, char ***paths, int *n);
/* Bundle b (loaded from call i's path) agrees with its index entry. */
int fd_capture_check_bundle(const fd_capture *c, int i, const fd_bundle *b, char *err, size_t errlen);
/* The call whose bundle has case id `id` (its base name), or -1. */
int fd_capture_call_of(const fd_capture *c, const char *id);
/* Reading a check report's case (shared by fd_capture_report and fd_compare.c): the case
 * with id `id` or NULL; its explanation's best hypothesis that explains, or NULL; how the
 * model consumed its output ("heads_not_transposed" when any output was so consumed, else
 * the first output's layout; NULL when no used_NAME was captured). */
const json_t *fd_capture_case(const json_t *report, const char *id);
const json_t *fd_capture_hypothesis(const json_t *cs);
const char *fd_capture_consumed(const json_t *cs);
/* The "capture" object of a `check` report: per call (in order) its verdict, what was
 * judged and how the model consumed its output; per module; the first call beyond
 * rounding with its reasons and the explanation's best hypothesis. report is the run's. */
json_t *fd_capture_report(const fd_capture *c, const json_t *report);
#endif
