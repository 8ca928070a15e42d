/* fd_fuzz.h: helpers shared by the libFuzzer targets whose parser reads a path, not a
 * buffer (header only). fd_fuzz_dir makes one private directory per process (under
 * $TMPDIR, which scripts/fuzz points into build-fuzz/); fd_fuzz_write puts the input
 * there under a fixed name, so the reader sees exactly these bytes. */
#ifndef FD_FUZZ_H
#define FD_FUZZ_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *mkdtemp(char *tmpl); /* POSIX 2008; declared here for -std=c11 */

static inline const char *fd_fuzz_dir(void)
{
    static char dir[1024];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/fdfuzz-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dir)) abort();
    }
    return dir;
}

/* Writes data to DIR/name and returns that path (static storage). */
static inline const char *fd_fuzz_write(const char *name, const uint8_t *data, size_t size)
{
    static char path[1200];
    snprintf(path, sizeof path, "%s/%s", fd_fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) abort();
    return path;
}

/* A NUL-terminated heap copy of the input (the caller frees it). */
static inline char *fd_fuzz_str(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) abort();
    if (size) memcpy(s, data, size);
    s[size] = 0;
    return s;
}
#endif
