/* fd_json.c: see fd_json.h. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fd_file.h"
#include "fd_json.h"
#include "fd_out.h"

int fd_jfail(fd_jctx *cx, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(cx->err, cx->errlen, "%s: %s: %s", cx->file, path, msg);
    return -1;
}

const char *fd_jtype(const json_t *j)
{
    if (!j) return "nothing (field missing)";
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

int fd_jcheck_keys(fd_jctx *cx, const char *path, const json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (!strcmp(*a, key)) ok = 1;
        if (!ok) {
            char list[512] = "";
            for (const char *const *a = allowed; *a; a++) {
                strncat(list, *a, sizeof list - strlen(list) - 1);
                if (a[1]) strncat(list, ", ", sizeof list - strlen(list) - 1);
            }
            return fd_jfail(cx, path, "unknown field \"%s\" (expected one of: %s)", key, list);
        }
    }
    return 0;
}

int fd_jget_num(fd_jctx *cx, const char *path, const json_t *j, double *out)
{
    if (!json_is_number(j)) return fd_jfail(cx, path, "expected a number, got %s", fd_jtype(j));
    *out = json_number_value(j);
    if (!isfinite(*out)) return fd_jfail(cx, path, "expected a finite number");
    return 0;
}

int fd_jget_rnum(fd_jctx *cx, const char *path, const json_t *j, double *out)
{
    const char *s = json_string_value(j);
    if (json_is_number(j) || (s && (!strcmp(s, "inf") || !strcmp(s, "-inf") || !strcmp(s, "nan")))) {
        *out = fd_json_number(j);
        return 0;
    }
    return fd_jfail(cx, path, "expected a number (or \"inf\", \"-inf\", \"nan\"), got %s", fd_jtype(j));
}

int fd_jget_per_grad(fd_jctx *cx, const char *path, const json_t *j, double out[3])
{
    static const char *const gk[] = {"dq", "dk", "dv", NULL};
    if (json_is_number(j)) {
        out[0] = out[1] = out[2] = json_number_value(j);
    } else if (json_is_object(j)) {
        if (fd_jcheck_keys(cx, path, j, gk)) return -1;
        for (int t = 0; t < 3; t++) {
            const json_t *u = json_object_get(j, gk[t]);
            char p[256];
            snprintf(p, sizeof p, "%s.%s", path, gk[t]);
            if (u && fd_jget_num(cx, p, u, &out[t])) return -1;
        }
    } else {
        return fd_jfail(cx, path, "expected a number or {\"dq\": N, \"dk\": N, \"dv\": N}, got %s", fd_jtype(j));
    }
    for (int t = 0; t < 3; t++)
        if (!(out[t] > 0)) return fd_jfail(cx, path, "expected positive numbers, got %g", out[t]);
    return 0;
}

json_t *fd_jload(const char *path, char *err, size_t errlen)
{
    json_error_t je;
    int fd = fd_open_input(path, err, errlen);
    if (fd < 0) return NULL;
    /* through a buffered stream: json_loadfd reads one byte per read(2), which made a
     * 75 MB report (100,000 cases) take a minute of system time to load */
    FILE *f = fdopen(fd, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (root) return root;
    if (je.line > 0) {
        const int eof = strstr(je.text, "end of") != NULL || strstr(je.text, "premature") != NULL;
        snprintf(err, errlen, "%s:%d:%d: invalid JSON%s: %s", path, je.line, je.column,
                 eof ? " (truncated file?)" : "", je.text);
    } else {
        snprintf(err, errlen, "%s: %s", path, je.text);
    }
    return NULL;
}
