/* fd_file.c: see fd_file.h. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_file.h"

int fd_open_input(const char *path, char *err, size_t errlen)
{
    /* O_NONBLOCK: opening a FIFO for reading with no writer would block in open() itself */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        const int e = errno;
        if (e == EISDIR) snprintf(err, errlen, "%s: is a directory", path);
        else snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
        errno = e;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        const int e = errno;
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        const int dir = S_ISDIR(st.st_mode);
        snprintf(err, errlen, "%s: %s", path, dir ? "is a directory" : "is not a regular file");
        close(fd);
        errno = dir ? EISDIR : EINVAL;
        return -1;
    }
    const int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        const int e = errno;
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

FILE *fd_fopen_input(const char *path, char *err, size_t errlen)
{
    int fd = fd_open_input(path, err, errlen);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        const int e = errno;
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
        close(fd);
        errno = e;
    }
    return f;
}

FILE *fd_fopen_output(const char *path, int append, char *err, size_t errlen)
{
    const int fd = open(path, O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0644);
    int fl;
    FILE *f = NULL;
    if (fd >= 0 && (fl = fcntl(fd, F_GETFL)) >= 0 && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0)
        f = fdopen(fd, append ? "a" : "w");
    if (!f) {
        const int e = errno;
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(e));
        if (fd >= 0) close(fd);
        errno = e;
    }
    return f;
}

int fd_check_output_file(const char *path, const char *what, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    if (S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s %s: is a directory (expected the path of a file)", what, path);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s %s: is not a regular file", what, path);
        return -1;
    }
    return 0;
}
