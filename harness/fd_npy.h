/* fd_npy.h: n-dimensional arrays as read from and written to .npy files.
 *
 * An fd_array holds a little-endian, C-ordered buffer with its element type and shape.
 * fd_npy_parse_header parses exactly the header grammar numpy writes (format versions
 * 1.0, 2.0 and 3.0): a Python dict literal with the keys 'descr', 'fortran_order' and
 * 'shape', each once and no other, then spaces and one newline. It is strict on
 * purpose: anything else (big-endian or unsupported descr, Fortran order, negative or
 * overflowing dimensions, stray bytes) is an error with a message saying what was
 * expected where. fd_npy_parse checks the magic, the version and that the data
 * is exactly as long as the header says; fd_npy_read_file adds the file name to every
 * message. Supported descrs: '<f2' (fp16), '<u2' (raw 16-bit words: bf16 when the
 * bundle says so), '<f4', '<f8', '|u1' and '|b1'. */
#ifndef FD_NPY_H
#define FD_NPY_H
#include <stddef.h>
#include <stdint.h>

#define FD_ARRAY_MAX_DIMS 8

typedef enum {
    FD_AT_F16 = 0,  /* IEEE binary16 */
    FD_AT_BF16 = 1, /* bfloat16 (safetensors BF16, or npy '<u2' declared bf16) */
    FD_AT_U16 = 2,  /* npy '<u2' before the bundle says what it holds */
    FD_AT_F32 = 3,
    FD_AT_F64 = 4,
    FD_AT_U8 = 5,
    FD_AT_BOOL = 6,
    FD_AT_I32 = 7,  /* integer tensors: cu_seqlens_q / cu_seqlens_k of varlen bundles */
    FD_AT_I64 = 8
} fd_atype;

typedef struct fd_array {
    fd_atype type;
    int ndim;
    int64_t shape[FD_ARRAY_MAX_DIMS];
    size_t numel;
    void *data; /* numel * fd_atype_size(type) bytes, little-endian, C order; owned */
} fd_array;

size_t fd_atype_size(fd_atype t);
const char *fd_atype_name(fd_atype t);
void fd_array_free(fd_array *a);
/* Allocates a zeroed array; 0, or -1 with err filled (too large, no memory). */
int fd_array_alloc(fd_array *a, fd_atype t, int ndim, const int64_t *shape, char *err, size_t errlen);
/* numel from a shape, -1 on overflow past 2^48 elements. */
int64_t fd_shape_numel(int ndim, const int64_t *shape);
/* "(2, 113, 4, 64)" */
void fd_shape_str(int ndim, const int64_t *shape, char *buf, size_t len);
/* Element i as a float (fp16/bf16/fp32 exact; f64 rounded; u8/bool 0 or the value). */
/* Element i of an integer array (I32, I64, U8, BOOL) as a 64-bit integer; 0 for float types. */
int64_t fd_array_get_i64(const fd_array *a, size_t i);
float fd_array_get_f32(const fd_array *a, size_t i);

/* Parses header text (what follows the length field, len bytes). */
int fd_npy_parse_header(const char *hdr, size_t len, fd_atype *type, int *fortran, int *ndim,
                        int64_t *shape, char *err, size_t errlen);
/* Parses a whole .npy image; the array's data is copied. */
int fd_npy_parse(const uint8_t *buf, size_t len, fd_array *a, char *err, size_t errlen);
int fd_npy_read_file(const char *path, fd_array *a, char *err, size_t errlen);
/* Writes version 1.0 (2.0 when the header needs it), 64-byte aligned as numpy does;
 * FD_AT_BF16 is written as '<u2'. Atomic (temporary file, then rename). */
int fd_npy_write_file(const char *path, const fd_array *a, char *err, size_t errlen);
/* Reads a whole file into memory (limit: 16 GiB); the caller frees *buf. */
int fd_read_whole_file(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen);
#endif
