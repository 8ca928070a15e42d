/* fd_out.c: see fd_out.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_out.h"

json_t *fd_json_num(double x)
{
    if (isnan(x)) return json_string("nan");
    if (isinf(x)) return json_string(x > 0 ? "inf" : "-inf");
    return json_real(x);
}

double fd_json_number(const json_t *j)
{
    if (json_is_number(j)) return json_number_value(j);
    const char *s = json_string_value(j);
    if (s && !strcmp(s, "inf")) return (double)INFINITY;
    if (s && !strcmp(s, "-inf")) return -(double)INFINITY;
    return (double)NAN;
}

int fd_write_text_atomic(const char *path, const char *text, size_t len, char *err, size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot create a temporary file: %s", path, strerror(errno));
        return -1;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
            close(fd);
            unlink(tmp);
            return -1;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        snprintf(err, errlen, "%s: flush failed: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    chmod(tmp, 0644);
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: rename failed: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

int fd_write_json_atomic(const char *path, const json_t *root, char *err, size_t errlen)
{
    char *s = json_dumps(root, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
    if (!s) {
        snprintf(err, errlen, "%s: cannot serialise the report", path);
        return -1;
    }
    size_t n = strlen(s);
    int rc = fd_write_text_atomic(path, s, n, err, errlen);
    free(s);
    return rc;
}

void fd_md_text(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '|': fputs("\\|", f); break;
        case '\n':
        case '\r': fputc(' ', f); break;
        case '`': fputc('\'', f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        default: fputc(*s, f);
        }
    }
}

const char *fd_md(const char *s, char *buf, size_t len)
{
    if (!len) return "";
    buf[0] = 0;
    FILE *f = fmemopen(buf, len, "w");
    if (!f) return "";
    setvbuf(f, NULL, _IONBF, 0);
    fd_md_text(f, s);
    fclose(f);
    buf[len - 1] = 0;
    return buf;
}

int fd_doc_open(fd_doc *d, const char *path, char *err, size_t errlen)
{
    d->buf = NULL;
    d->len = 0;
    d->path = path;
    d->f = open_memstream(&d->buf, &d->len);
    if (!d->f) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    return 0;
}

int fd_doc_commit(fd_doc *d, char *err, size_t errlen)
{
    int rc = -1;
    if (fclose(d->f) != 0 || !d->buf) snprintf(err, errlen, "%s: out of memory", d->path);
    else rc = fd_write_text_atomic(d->path, d->buf, d->len, err, errlen);
    free(d->buf);
    d->buf = NULL;
    d->f = NULL;
    return rc;
}

void fd_doc_discard(fd_doc *d)
{
    if (d->f) fclose(d->f);
    free(d->buf);
    d->buf = NULL;
    d->f = NULL;
}
