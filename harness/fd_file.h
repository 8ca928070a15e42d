/* fd_file.h: opening input files without hanging, and checking output paths.
 *
 * Every reader of a file named by the user (case files, policies, reports, explain.json,
 * bundles' meta.json, .npy and .safetensors files, the resume journal) opens it through
 * fd_open_input: O_RDONLY|O_NONBLOCK|O_CLOEXEC, then fstat, then only a regular file is
 * accepted (O_NONBLOCK is cleared again before reading). A FIFO, a device or a directory
 * is therefore an error with one line, "FILE: is not a regular file" or "FILE: is a
 * directory", instead of a read that blocks forever or a misleading parse error. */
#ifndef FD_FILE_H
#define FD_FILE_H
#include <stddef.h>
#include <stdio.h>

/* A read-only descriptor of a regular file, or -1 with err ("FILE: ...") and errno set:
 * open's errno (ENOENT when missing), EISDIR for a directory, EINVAL for any other
 * non-regular file. */
int fd_open_input(const char *path, char *err, size_t errlen);
/* The same as a stdio stream ("rb"). */
FILE *fd_fopen_input(const char *path, char *err, size_t errlen);
/* A stream that appends to (append) or truncates path, created 0644 when missing. Opened
 * with O_NONBLOCK, then cleared: a FIFO with no reader is an error (ENXIO), not a hang.
 * NULL with err ("FILE: cannot write: ...") and errno. */
FILE *fd_fopen_output(const char *path, int append, char *err, size_t errlen);
/* An output path that must name a file: -1 with err when it is an existing directory or
 * an existing non-regular file (a usage error), 0 otherwise (missing is fine). */
int fd_check_output_file(const char *path, const char *what, char *err, size_t errlen);
#endif
