/* fd_safetensors.c: see fd_safetensors.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_safetensors.h"

#define FD_ST_MAX_HEADER ((uint64_t)100000000)

static const struct { const char *name; fd_atype t; } st_types[] = {
    {"F16", FD_AT_F16}, {"BF16", FD_AT_BF16}, {"F32", FD_AT_F32}, {"F64", FD_AT_F64},
    {"U8", FD_AT_U8},   {"BOOL", FD_AT_BOOL}, {"U16", FD_AT_U16},
    {"I32", FD_AT_I32}, {"I64", FD_AT_I64},
};

void fd_st_free(fd_st_file *f)
{
    for (int i = 0; i < f->n; i++) fd_array_free(&f->t[i].a);
    free(f->t);
    f->t = NULL;
    f->n = 0;
    if (f->meta) json_decref(f->meta);
    f->meta = NULL;
}

const fd_array *fd_st_find(const fd_st_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i].a;
    return NULL;
}

typedef struct { uint64_t begin, end; int idx; } span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

static int get_u64(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int fd_st_parse(const uint8_t *buf, size_t len, fd_st_file *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    if (len < 8) {
        snprintf(err, errlen, "truncated safetensors file (%zu bytes, no 8-byte header size)", len);
        return -1;
    }
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--) hn = hn << 8 | buf[i];
    if (hn > FD_ST_MAX_HEADER) {
        snprintf(err, errlen, "safetensors header size %llu is over the 100 MB limit (not a safetensors file?)",
                 (unsigned long long)hn);
        return -1;
    }
    if (hn > len - 8) {
        snprintf(err, errlen, "truncated safetensors file: header claims %llu bytes, %zu present",
                 (unsigned long long)hn, len - 8);
        return -1;
    }
    if (hn < 2 || buf[8] != '{') {
        snprintf(err, errlen, "not a safetensors file (the header does not start with '{')");
        return -1;
    }
    json_error_t je;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hn, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errlen, "safetensors header: invalid JSON at byte %d: %s", je.position, je.text);
        return -1;
    }
    const uint64_t dlen = (uint64_t)(len - 8 - (size_t)hn);
    const uint8_t *data = buf + 8 + hn;
    span *sp = NULL;
    int rc = -1;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "safetensors header: expected a JSON object");
        goto out;
    }
    size_t cap = json_object_size(root);
    f->t = calloc(cap ? cap : 1, sizeof *f->t);
    sp = calloc(cap ? cap : 1, sizeof *sp);
    if (!f->t || !sp) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            const char *mk;
            json_t *mv;
            if (!json_is_object(val)) {
                snprintf(err, errlen, "safetensors header: __metadata__ must be an object of strings");
                goto out;
            }
            json_object_foreach(val, mk, mv) if (!json_is_string(mv)) {
                snprintf(err, errlen, "safetensors header: __metadata__.%s must be a string", mk);
                goto out;
            }
            f->meta = json_incref(val);
            continue;
        }
        if (strlen(key) >= sizeof f->t[0].name || !key[0]) {
            snprintf(err, errlen, "safetensors header: tensor name of %zu bytes (1 to 127 expected)", strlen(key));
            goto out;
        }
        json_t *dt = json_object_get(val, "dtype"), *sh = json_object_get(val, "shape"),
               *of = json_object_get(val, "data_offsets");
        if (!json_is_object(val) || !json_is_string(dt) || !json_is_array(sh) || !json_is_array(of) ||
            json_array_size(of) != 2 || json_object_size(val) != 3) {
            snprintf(err, errlen, "safetensors header: tensor \"%s\": expected {\"dtype\": string, "
                                  "\"shape\": [ints], \"data_offsets\": [begin, end]}", key);
            goto out;
        }
        fd_atype t = FD_AT_F32;
        int found = 0;
        for (size_t i = 0; i < sizeof st_types / sizeof st_types[0]; i++)
            if (!strcmp(json_string_value(dt), st_types[i].name)) {
                t = st_types[i].t;
                found = 1;
            }
        if (!found) {
            snprintf(err, errlen, "tensor \"%s\": unsupported dtype %s (expected F16, BF16, F32, F64, U8, BOOL, I32 or I64)",
                     key, json_string_value(dt));
            goto out;
        }
        int64_t shape[FD_ARRAY_MAX_DIMS];
        size_t nd = json_array_size(sh);
        if (nd > FD_ARRAY_MAX_DIMS) {
            snprintf(err, errlen, "tensor \"%s\": %zu dimensions (at most %d)", key, nd, FD_ARRAY_MAX_DIMS);
            goto out;
        }
        for (size_t i = 0; i < nd; i++) {
            uint64_t d;
            if (get_u64(json_array_get(sh, i), &d) || d > ((uint64_t)1 << 48)) {
                snprintf(err, errlen, "tensor \"%s\": shape[%zu] must be a non-negative integer", key, i);
                goto out;
            }
            shape[i] = (int64_t)d;
        }
        uint64_t b, e;
        if (get_u64(json_array_get(of, 0), &b) || get_u64(json_array_get(of, 1), &e) || b > e) {
            snprintf(err, errlen, "tensor \"%s\": data_offsets must be two non-negative integers, begin <= end", key);
            goto out;
        }
        const int64_t n = fd_shape_numel((int)nd, shape);
        if (n < 0 || (uint64_t)n * fd_atype_size(t) != e - b) {
            char s[160];
            fd_shape_str((int)nd, shape, s, sizeof s);
            snprintf(err, errlen, "tensor \"%s\": data_offsets [%llu, %llu] hold %llu bytes, shape %s of %s needs %llu",
                     key, (unsigned long long)b, (unsigned long long)e, (unsigned long long)(e - b), s,
                     json_string_value(dt), n < 0 ? 0ull : (unsigned long long)n * fd_atype_size(t));
            goto out;
        }
        if (e > dlen) {
            snprintf(err, errlen, "tensor \"%s\": data_offsets end %llu is past the data (%llu bytes): truncated file?",
                     key, (unsigned long long)e, (unsigned long long)dlen);
            goto out;
        }
        fd_st_tensor *tt = &f->t[f->n];
        snprintf(tt->name, sizeof tt->name, "%s", key);
        if (fd_array_alloc(&tt->a, t, (int)nd, shape, err, errlen)) goto out;
        if (e > b) memcpy(tt->a.data, data + b, (size_t)(e - b));
        sp[f->n].begin = b;
        sp[f->n].end = e;
        sp[f->n].idx = f->n;
        f->n++;
    }
    qsort(sp, (size_t)f->n, sizeof *sp, cmp_span);
    uint64_t at = 0;
    for (int i = 0; i < f->n; i++) {
        if (sp[i].begin != at) {
            snprintf(err, errlen, "tensor \"%s\": data starts at %llu, expected %llu (%s)", f->t[sp[i].idx].name,
                     (unsigned long long)sp[i].begin, (unsigned long long)at,
                     sp[i].begin < at ? "overlaps the previous tensor" : "gap in the buffer");
            goto out;
        }
        at = sp[i].end;
    }
    if (at != dlen) {
        snprintf(err, errlen, "%llu bytes after the last tensor's data (the buffer must be fully indexed)",
                 (unsigned long long)(dlen - at));
        goto out;
    }
    rc = 0;
out:
    free(sp);
    json_decref(root);
    if (rc) fd_st_free(f);
    return rc;
}

int fd_st_read_file(const char *path, fd_st_file *f, char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    memset(f, 0, sizeof *f);
    if (fd_read_whole_file(path, &buf, &len, err, errlen)) return -1;
    char e2[512];
    int rc = fd_st_parse(buf, len, f, e2, sizeof e2);
    if (rc) snprintf(err, errlen, "%s: %s", path, e2);
    free(buf);
    return rc;
}

int fd_st_write_file(const char *path, const char *const *names, const fd_array *const *arrays,
                     int n, const json_t *meta, char *err, size_t errlen)
{
    json_t *root = json_object();
    uint64_t at = 0;
    if (meta) json_object_set_new(root, "__metadata__", json_deep_copy(meta));
    for (int i = 0; i < n; i++) {
        const fd_array *a = arrays[i];
        const char *tn = "?";
        for (size_t k = 0; k < sizeof st_types / sizeof st_types[0]; k++)
            if (st_types[k].t == a->type) tn = st_types[k].name;
        json_t *sh = json_array();
        for (int d = 0; d < a->ndim; d++) json_array_append_new(sh, json_integer((json_int_t)a->shape[d]));
        const uint64_t nb = (uint64_t)a->numel * fd_atype_size(a->type);
        json_object_set_new(root, names[i],
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", tn, "shape", sh, "data_offsets",
                                      (json_int_t)at, (json_int_t)(at + nb)));
        at += nb;
    }
    char *hs = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    if (!hs) {
        snprintf(err, errlen, "%s: cannot serialise the header", path);
        return -1;
    }
    size_t hl = strlen(hs), hp = (hl + 7) / 8 * 8;
    uint8_t *buf = malloc(8 + hp + (size_t)at);
    if (!buf) {
        free(hs);
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    for (int k = 0; k < 8; k++) buf[k] = (uint8_t)((uint64_t)hp >> (8 * k));
    memset(buf + 8, ' ', hp);
    memcpy(buf + 8, hs, hl);
    free(hs);
    size_t off = 8 + hp;
    for (int i = 0; i < n; i++) {
        const size_t nb = arrays[i]->numel * fd_atype_size(arrays[i]->type);
        if (nb) memcpy(buf + off, arrays[i]->data, nb);
        off += nb;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp), rc = -1;
    if (fd >= 0) {
        FILE *fp = fdopen(fd, "wb");
        if (!fp) {
            close(fd);
        } else {
            const size_t w = fwrite(buf, 1, off, fp);
            const int c = fclose(fp);
            if (w == off && c == 0 && rename(tmp, path) == 0) rc = 0;
        }
        if (rc) unlink(tmp);
        else chmod(path, 0644);
    }
    if (rc) snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
    free(buf);
    return rc;
}
