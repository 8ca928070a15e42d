/* fd_npy.c: see fd_npy.h. The header grammar follows numpy/lib/format.py
 * (write_array_header_1_0 and _read_array_header), without its Python-2 leniencies. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_dtype.h"
#include "fd_file.h"
#include "fd_npy.h"

#define FD_NPY_MAX_FILE ((size_t)1 << 34)
#define FD_MAX_NUMEL ((int64_t)1 << 48)

size_t fd_atype_size(fd_atype t)
{
    switch (t) {
    case FD_AT_F16: case FD_AT_BF16: case FD_AT_U16: return 2;
    case FD_AT_F32: return 4;
    case FD_AT_F64: return 8;
    case FD_AT_U8: case FD_AT_BOOL: return 1;
    case FD_AT_I32: return 4;
    case FD_AT_I64: return 8;
    }
    return 0;
}

const char *fd_atype_name(fd_atype t)
{
    switch (t) {
    case FD_AT_F16: return "fp16";
    case FD_AT_BF16: return "bf16";
    case FD_AT_U16: return "uint16";
    case FD_AT_F32: return "fp32";
    case FD_AT_F64: return "fp64";
    case FD_AT_U8: return "uint8";
    case FD_AT_BOOL: return "bool";
    case FD_AT_I32: return "int32";
    case FD_AT_I64: return "int64";
    }
    return "?";
}

void fd_array_free(fd_array *a)
{
    free(a->data);
    a->data = NULL;
    a->numel = 0;
}

int64_t fd_shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] == 0) n = 0;
        else if (n > FD_MAX_NUMEL / shape[i]) return -1;
        else n *= shape[i];
    }
    return n;
}

void fd_shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t n = 0;
    if (len == 0) return;
    buf[0] = 0;
    n += (size_t)snprintf(buf + n, len - n, "(");
    for (int i = 0; i < ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < len) snprintf(buf + n, len - n, ")");
}

int fd_array_alloc(fd_array *a, fd_atype t, int ndim, const int64_t *shape, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    if (ndim < 0 || ndim > FD_ARRAY_MAX_DIMS) {
        snprintf(err, errlen, "%d dimensions (at most %d)", ndim, FD_ARRAY_MAX_DIMS);
        return -1;
    }
    const int64_t n = fd_shape_numel(ndim, shape);
    if (n < 0) {
        snprintf(err, errlen, "shape too large");
        return -1;
    }
    a->type = t;
    a->ndim = ndim;
    for (int i = 0; i < ndim; i++) a->shape[i] = shape[i];
    a->numel = (size_t)n;
    a->data = calloc(a->numel ? a->numel : 1, fd_atype_size(t));
    if (!a->data) {
        snprintf(err, errlen, "out of memory for %zu elements", a->numel);
        return -1;
    }
    return 0;
}

int64_t fd_array_get_i64(const fd_array *a, size_t i)
{
    const uint8_t *p = (const uint8_t *)a->data + i * fd_atype_size(a->type);
    uint64_t u = 0;
    switch (a->type) {
    case FD_AT_I32:
        u = (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
        return (int64_t)(int32_t)(uint32_t)u;
    case FD_AT_I64:
        for (int k = 7; k >= 0; k--) u = u << 8 | p[k];
        return (int64_t)u;
    case FD_AT_U8: case FD_AT_BOOL: return (int64_t)p[0];
    default: return 0;
    }
}

float fd_array_get_f32(const fd_array *a, size_t i)
{
    const uint8_t *p = (const uint8_t *)a->data + i * fd_atype_size(a->type);
    switch (a->type) {
    case FD_AT_F16: return fd_f16_bits_to_f32((uint16_t)(p[0] | p[1] << 8));
    case FD_AT_BF16: return fd_bf16_bits_to_f32((uint16_t)(p[0] | p[1] << 8));
    case FD_AT_U16: return (float)(p[0] | p[1] << 8);
    case FD_AT_F32: {
        uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        return fd_bits_f32(u);
    }
    case FD_AT_F64: {
        uint64_t u = 0;
        for (int k = 7; k >= 0; k--) u = u << 8 | p[k];
        double d;
        memcpy(&d, &u, 8);
        return (float)d;
    }
    case FD_AT_U8: case FD_AT_BOOL: return (float)p[0];
    case FD_AT_I32: case FD_AT_I64: return (float)fd_array_get_i64(a, i);
    }
    return 0.0f;
}

/* ---- header parser ---- */

typedef struct {
    const char *s;
    size_t n, i;
    char *err;
    size_t errlen;
} hp;

static int hp_fail(hp *h, const char *what)
{
    char near[24];
    size_t k = 0;
    for (size_t j = h->i; j < h->n && k < 12; j++) {
        unsigned char c = (unsigned char)h->s[j];
        near[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    near[k] = 0;
    if (h->i >= h->n)
        snprintf(h->err, h->errlen, "npy header: expected %s at byte %zu (found the end of the header)", what, h->i);
    else
        snprintf(h->err, h->errlen, "npy header: expected %s at byte %zu (found \"%s\")", what, h->i, near);
    return -1;
}

static void hp_ws(hp *h)
{
    while (h->i < h->n && (h->s[h->i] == ' ' || h->s[h->i] == '\t')) h->i++;
}

static int hp_char(hp *h, char c)
{
    hp_ws(h);
    if (h->i < h->n && h->s[h->i] == c) {
        h->i++;
        return 1;
    }
    return 0;
}

/* A quoted string of printable ASCII without escapes into buf. */
static int hp_string(hp *h, char *buf, size_t len)
{
    hp_ws(h);
    if (h->i >= h->n || (h->s[h->i] != '\'' && h->s[h->i] != '"')) return hp_fail(h, "a quoted string");
    const char q = h->s[h->i++];
    size_t k = 0;
    while (h->i < h->n && h->s[h->i] != q) {
        unsigned char c = (unsigned char)h->s[h->i];
        if (c < 0x20 || c >= 0x7f || c == '\\') return hp_fail(h, "a plain ASCII string without escapes");
        if (k + 1 >= len) return hp_fail(h, "a short string");
        buf[k++] = (char)c;
        h->i++;
    }
    if (h->i >= h->n) return hp_fail(h, "the closing quote");
    h->i++;
    buf[k] = 0;
    return 0;
}

static int hp_word(hp *h, const char *w)
{
    hp_ws(h);
    size_t n = strlen(w);
    if (h->n - h->i >= n && !memcmp(h->s + h->i, w, n)) {
        /* not a prefix of a longer identifier */
        if (h->i + n < h->n) {
            char c = h->s[h->i + n];
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') return 0;
        }
        h->i += n;
        return 1;
    }
    return 0;
}

static int hp_uint(hp *h, int64_t *v)
{
    hp_ws(h);
    if (h->i >= h->n || h->s[h->i] < '0' || h->s[h->i] > '9') return hp_fail(h, "a non-negative integer");
    if (h->s[h->i] == '0' && h->i + 1 < h->n && h->s[h->i + 1] >= '0' && h->s[h->i + 1] <= '9')
        return hp_fail(h, "an integer without leading zeros");
    int64_t x = 0;
    while (h->i < h->n && h->s[h->i] >= '0' && h->s[h->i] <= '9') {
        if (x > (FD_MAX_NUMEL - 9) / 10) return hp_fail(h, "a dimension below 2^48");
        x = x * 10 + (h->s[h->i] - '0');
        h->i++;
    }
    *v = x;
    return 0;
}

static int descr_type(hp *h, const char *d, fd_atype *t)
{
    static const struct { const char *d; fd_atype t; } known[] = {
        {"<f2", FD_AT_F16}, {"<u2", FD_AT_U16}, {"<f4", FD_AT_F32}, {"<f8", FD_AT_F64},
        {"|u1", FD_AT_U8}, {"|b1", FD_AT_BOOL}, {"<i4", FD_AT_I32}, {"<i8", FD_AT_I64},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(d, known[i].d)) {
            *t = known[i].t;
            return 0;
        }
    if (d[0] == '>' && d[1] && strcmp(d + 1, "u1") && strcmp(d + 1, "b1"))
        snprintf(h->err, h->errlen,
                 "npy header: big-endian array (descr '%s'); flashdrift reads little-endian only "
                 "(numpy: a.astype(a.dtype.newbyteorder('<')))", d);
    else
        snprintf(h->err, h->errlen,
                 "npy header: unsupported dtype descr '%s' (expected '<f2', '<u2' (bf16 bits), "
                 "'<f4', '<f8', '|u1', '|b1', '<i4' or '<i8')", d);
    return -1;
}

int fd_npy_parse_header(const char *hdr, size_t len, fd_atype *type, int *fortran, int *ndim,
                        int64_t *shape, char *err, size_t errlen)
{
    hp h = {hdr, len, 0, err, errlen};
    int seen_descr = 0, seen_fortran = 0, seen_shape = 0;
    if (!hp_char(&h, '{')) return hp_fail(&h, "'{' opening the header dict");
    for (;;) {
        if (hp_char(&h, '}')) break;
        char key[32];
        if (hp_string(&h, key, sizeof key)) return -1;
        if (!hp_char(&h, ':')) return hp_fail(&h, "':' after a key");
        if (!strcmp(key, "descr")) {
            if (seen_descr++) return hp_fail(&h, "each key once ('descr' repeated)");
            char d[32];
            if (hp_string(&h, d, sizeof d)) return -1;
            if (descr_type(&h, d, type)) return -1;
        } else if (!strcmp(key, "fortran_order")) {
            if (seen_fortran++) return hp_fail(&h, "each key once ('fortran_order' repeated)");
            if (hp_word(&h, "True")) *fortran = 1;
            else if (hp_word(&h, "False")) *fortran = 0;
            else return hp_fail(&h, "True or False");
        } else if (!strcmp(key, "shape")) {
            if (seen_shape++) return hp_fail(&h, "each key once ('shape' repeated)");
            if (!hp_char(&h, '(')) return hp_fail(&h, "'(' opening the shape tuple");
            int nd = 0, comma = 0;
            for (;;) {
                if (hp_char(&h, ')')) break;
                if (nd == FD_ARRAY_MAX_DIMS) return hp_fail(&h, "at most 8 dimensions");
                if (hp_uint(&h, &shape[nd])) return -1;
                nd++;
                comma = hp_char(&h, ',');
                if (!comma) {
                    if (hp_char(&h, ')')) break;
                    return hp_fail(&h, "',' or ')' in the shape tuple");
                }
            }
            /* (n) is an int in Python, not a tuple: numpy writes (n,) */
            if (nd == 1 && !comma) return hp_fail(&h, "a one-element shape written (n,)");
            *ndim = nd;
            if (fd_shape_numel(nd, shape) < 0) return hp_fail(&h, "a shape with fewer than 2^48 elements");
        } else {
            snprintf(err, errlen, "npy header: unexpected key '%s' (expected 'descr', 'fortran_order', 'shape')", key);
            return -1;
        }
        if (hp_char(&h, ',')) continue;
        if (hp_char(&h, '}')) break;
        return hp_fail(&h, "',' or '}' after a value");
    }
    if (!seen_descr || !seen_fortran || !seen_shape) {
        snprintf(err, errlen, "npy header: missing key '%s'",
                 !seen_descr ? "descr" : !seen_fortran ? "fortran_order" : "shape");
        return -1;
    }
    hp_ws(&h);
    if (h.i + 1 != h.n || h.s[h.i] != '\n') return hp_fail(&h, "spaces and one newline ending the header");
    if (*fortran) {
        snprintf(err, errlen, "npy header: Fortran-order array; flashdrift reads C order only "
                              "(numpy: np.ascontiguousarray(a))");
        return -1;
    }
    return 0;
}

int fd_npy_parse(const uint8_t *buf, size_t len, fd_array *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    if (len < 10 || memcmp(buf, magic, 6)) {
        snprintf(err, errlen, len < 6 || memcmp(buf, magic, len < 6 ? len : 6)
                                  ? "not a .npy file (wrong magic: expected \\x93NUMPY)"
                                  : "truncated .npy file (%zu bytes, shorter than its preamble)", len);
        return -1;
    }
    const int major = buf[6], minor = buf[7];
    size_t hlen, off;
    if (major == 1 && minor == 0) {
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
        off = 10;
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (len < 12) {
            snprintf(err, errlen, "truncated .npy file (%zu bytes, shorter than its preamble)", len);
            return -1;
        }
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        off = 12;
    } else {
        snprintf(err, errlen, "unsupported .npy format version %d.%d (expected 1.0, 2.0 or 3.0)", major, minor);
        return -1;
    }
    if (hlen > len - off) {
        snprintf(err, errlen, "truncated .npy file: header of %zu bytes, only %zu present", hlen, len - off);
        return -1;
    }
    fd_atype t = FD_AT_F32;
    int fortran = 0, ndim = 0;
    int64_t shape[FD_ARRAY_MAX_DIMS];
    if (fd_npy_parse_header((const char *)buf + off, hlen, &t, &fortran, &ndim, shape, err, errlen)) return -1;
    off += hlen;
    const int64_t n = fd_shape_numel(ndim, shape);
    const size_t need = (size_t)n * fd_atype_size(t), have = len - off;
    char sh[160];
    fd_shape_str(ndim, shape, sh, sizeof sh);
    if (need > have) {
        snprintf(err, errlen, "header claims %zu bytes of data (%s %s), the file holds %zu (truncated?)",
                 need, fd_atype_name(t), sh, have);
        return -1;
    }
    if (need < have) {
        snprintf(err, errlen, "%zu bytes after the data (header says %s %s, %zu bytes)", have - need,
                 fd_atype_name(t), sh, need);
        return -1;
    }
    if (fd_array_alloc(a, t, ndim, shape, err, errlen)) return -1;
    if (need) memcpy(a->data, buf + off, need);
    return 0;
}

int fd_read_whole_file(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
    *buf = NULL;
    *len = 0;
    /* a FIFO or a directory is refused before anything is read (fd_file.h) */
    FILE *f = fd_fopen_input(path, err, errlen);
    if (!f) return -1;
    struct stat st;
    if (fstat(fileno(f), &st)) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        fclose(f);
        return -1;
    }
    if ((uint64_t)st.st_size > FD_NPY_MAX_FILE) {
        snprintf(err, errlen, "%s: %lld bytes, larger than the 16 GiB limit", path, (long long)st.st_size);
        fclose(f);
        return -1;
    }
    const size_t n = (size_t)st.st_size;
    uint8_t *b = malloc(n ? n : 1);
    if (!b) {
        snprintf(err, errlen, "%s: out of memory for %zu bytes", path, n);
        fclose(f);
        return -1;
    }
    size_t got = n ? fread(b, 1, n, f) : 0;
    const int bad = ferror(f);
    fclose(f);
    if (bad || got != n) {
        snprintf(err, errlen, "%s: read failed (%zu of %zu bytes)", path, got, n);
        free(b);
        return -1;
    }
    *buf = b;
    *len = n;
    return 0;
}

int fd_npy_read_file(const char *path, fd_array *a, char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    memset(a, 0, sizeof *a);
    if (fd_read_whole_file(path, &buf, &len, err, errlen)) return -1;
    char e2[512];
    int rc = fd_npy_parse(buf, len, a, e2, sizeof e2);
    if (rc) snprintf(err, errlen, "%s: %s", path, e2);
    free(buf);
    return rc;
}

static const char *descr_of(fd_atype t)
{
    switch (t) {
    case FD_AT_F16: return "<f2";
    case FD_AT_BF16: case FD_AT_U16: return "<u2";
    case FD_AT_F32: return "<f4";
    case FD_AT_F64: return "<f8";
    case FD_AT_U8: return "|u1";
    case FD_AT_BOOL: return "|b1";
    case FD_AT_I32: return "<i4";
    case FD_AT_I64: return "<i8";
    }
    return "?";
}

int fd_npy_write_file(const char *path, const fd_array *a, char *err, size_t errlen)
{
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr_of(a->type));
    for (int i = 0; i < a->ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)a->shape[i],
                      i + 1 < a->ndim ? " " : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    /* Pad with spaces and a newline so that the data starts at a multiple of 64. */
    size_t pre = 10, hl = (size_t)n + 1;
    size_t total = (pre + hl + 63) / 64 * 64;
    hl = total - pre;
    const size_t dbytes = a->numel * fd_atype_size(a->type);
    uint8_t *buf = malloc(total + dbytes);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (uint8_t)(hl & 0xff);
    buf[9] = (uint8_t)(hl >> 8);
    memset(buf + pre, ' ', hl);
    memcpy(buf + pre, dict, (size_t)n);
    buf[total - 1] = '\n';
    if (dbytes) memcpy(buf + total, a->data, dbytes);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    int rc = -1;
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        free(buf);
        return -1;
    }
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
    } else {
        const size_t w = fwrite(buf, 1, total + dbytes, f);
        const int c = fclose(f);
        if (w == total + dbytes && c == 0 && rename(tmp, path) == 0) rc = 0;
    }
    if (rc) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
    } else {
        chmod(path, 0644);
    }
    free(buf);
    return rc;
}
