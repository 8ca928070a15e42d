/* fd_safetensors.h: reading and writing .safetensors files.
 *
 * Format (huggingface/safetensors, docs "format"): an 8-byte little-endian header size
 * N, N bytes of JSON (an object: tensor name -> {"dtype", "shape", "data_offsets"},
 * plus an optional "__metadata__" object of string values), then the byte buffer.
 * The JSON is parsed with jansson (duplicate keys rejected). Checked as the reference
 * implementation checks: header size within the file and at most 100 MB, every entry
 * with exactly those three keys, offsets inside the buffer, end - begin equal to the
 * shape's size, tensors contiguous and covering the buffer with no gap or overlap.
 * Dtypes read: F16, BF16, F32, F64, U8, BOOL; anything else is an error naming the
 * tensor. Every message from fd_st_read_file starts with the file name. */
#ifndef FD_SAFETENSORS_H
#define FD_SAFETENSORS_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "fd_npy.h"

typedef struct fd_st_tensor {
    char name[128];
    fd_array a;
} fd_st_tensor;

typedef struct fd_st_file {
    int n;
    fd_st_tensor *t;
    json_t *meta; /* the "__metadata__" object (string values), or NULL */
} fd_st_file;

int fd_st_parse(const uint8_t *buf, size_t len, fd_st_file *f, char *err, size_t errlen);
int fd_st_read_file(const char *path, fd_st_file *f, char *err, size_t errlen);
void fd_st_free(fd_st_file *f);
const fd_array *fd_st_find(const fd_st_file *f, const char *name);
/* Writes n tensors (FD_AT_U16 is written as U16) and meta (an object of strings, or
 * NULL); atomic. */
int fd_st_write_file(const char *path, const char *const *names, const fd_array *const *arrays,
                     int n, const json_t *meta, char *err, size_t errlen);
#endif
