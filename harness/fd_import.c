/* fd_import.c: see fd_import.h. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fd_dtype.h"
#include "fd_import.h"
#include "fd_json.h"
#include "fd_npy.h"
#include "fd_safetensors.h"

typedef struct {
    char name[64];
    char label[1200]; /* "DIR/q.npy" or "FILE.safetensors: tensor q" */
    fd_array a;
} tens;

typedef struct {
    tens *t;
    int n, cap;
} tlist;

static void tlist_free(tlist *l)
{
    for (int i = 0; i < l->n; i++) fd_array_free(&l->t[i].a);
    free(l->t);
    l->t = NULL;
    l->n = l->cap = 0;
}

static tens *tlist_add(tlist *l)
{
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 16;
        tens *t = realloc(l->t, sizeof *t * (size_t)nc);
        if (!t) return NULL;
        l->t = t;
        l->cap = nc;
    }
    memset(&l->t[l->n], 0, sizeof l->t[0]);
    return &l->t[l->n++];
}

static tens *tlist_find(tlist *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->t[i].name, name)) return &l->t[i];
    return NULL;
}

/* Gradient tensors: dq_X, dk_X, dv_X. Returns 0, 1, 2 (q, k, v) or -1. */
static int grad_kind(const char *s)
{
    if (s[0] != 'd' || !s[1] || s[2] != '_') return -1;
    return s[1] == 'q' ? 0 : s[1] == 'k' ? 1 : s[1] == 'v' ? 2 : -1;
}

/* q, k, v, do, out_X, lse_X, dmask_X, used_X, dq_X, dk_X, dv_X with X of [A-Za-z0-9_-], 1..48 chars. */
static int valid_tensor_name(const char *s)
{
    if (!strcmp(s, "q") || !strcmp(s, "k") || !strcmp(s, "v") || !strcmp(s, "do")) return 1;
    if (!strcmp(s, "alibi_slopes") || !strcmp(s, "cu_seqlens_q") || !strcmp(s, "cu_seqlens_k")) return 1;
    if (!strcmp(s, "block_table") || !strcmp(s, "cache_seqlens")) return 1;
    const char *x = NULL;
    if (!strncmp(s, "out_", 4)) x = s + 4;
    else if (!strncmp(s, "lse_", 4)) x = s + 4;
    else if (!strncmp(s, "dmask_", 6)) x = s + 6;
    else if (!strncmp(s, "used_", 5)) x = s + 5;
    else if (grad_kind(s) >= 0) x = s + 3;
    if (!x || !*x || strlen(x) > 48) return 0;
    for (; *x; x++)
        if (!((*x >= 'a' && *x <= 'z') || (*x >= 'A' && *x <= 'Z') || (*x >= '0' && *x <= '9') ||
              *x == '_' || *x == '-'))
            return 0;
    return 1;
}

static const char *name_rule = "expected q, k, v, do, out_NAME, lse_NAME, dmask_NAME, used_NAME, dq_NAME, "
                               "dk_NAME or dv_NAME, NAME of letters, digits, '_' and '-'";

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_tens(const void *a, const void *b)
{
    return strcmp(((const tens *)a)->name, ((const tens *)b)->name);
}

static int load_dir(const char *dir, tlist *l, json_t **meta, char *err, size_t errlen)
{
    char p[1200];
    snprintf(p, sizeof p, "%s/meta.json", dir);
    /* fd_jload refuses a directory or a FIFO named meta.json (fd_file.h) */
    *meta = fd_jload(p, err, errlen);
    if (!*meta) {
        if (errno == ENOENT)
            snprintf(err, errlen, "%s: missing (a bundle declares its layout and mask there; see docs/import.md)", p);
        return -1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "%s: cannot open the directory: %s", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    int nn = 0, cap = 0, rc = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".npy")) continue;
        if (nn == cap) {
            cap = cap ? 2 * cap : 16;
            char **nw = realloc(names, sizeof *nw * (size_t)cap);
            if (!nw) break;
            names = nw;
        }
        names[nn] = malloc(n + 1);
        if (!names[nn]) break;
        memcpy(names[nn], e->d_name, n + 1);
        nn++;
    }
    closedir(d);
    if (nn) qsort(names, (size_t)nn, sizeof *names, cmp_str);
    for (int i = 0; i < nn; i++) {
        char stem[64];
        size_t sl = strlen(names[i]) - 4;
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        if (sl >= sizeof stem) {
            snprintf(err, errlen, "%s: unexpected tensor file (%s)", p, name_rule);
            goto out;
        }
        memcpy(stem, names[i], sl);
        stem[sl] = 0;
        if (!valid_tensor_name(stem)) {
            snprintf(err, errlen, "%s: unexpected tensor file (%s)", p, name_rule);
            goto out;
        }
        tens *t = tlist_add(l);
        if (!t) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        snprintf(t->name, sizeof t->name, "%s", stem);
        snprintf(t->label, sizeof t->label, "%s", p);
        if (fd_npy_read_file(p, &t->a, err, errlen)) goto out;
    }
    rc = 0;
out:
    for (int i = 0; i < nn; i++) free(names[i]);
    free(names);
    return rc;
}

/* __metadata__ (all strings) -> the meta.json shape: numbers parsed strictly, roles and
 * info parsed as JSON text. */
static int st_meta(const char *path, const json_t *m, json_t **meta, char *err, size_t errlen)
{
    *meta = json_object();
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)m, key, val) {
        const char *s = json_string_value(val);
        if (!strcmp(key, "scale") || !strcmp(key, "dropout_p") || !strcmp(key, "softcap")) {
            char *end;
            errno = 0;
            double x = strtod(s, &end);
            if (!*s || *end || errno) {
                snprintf(err, errlen, "%s: __metadata__.%s: expected a number, got \"%s\"", path, key, s);
                return -1;
            }
            json_object_set_new(*meta, key, json_real(x));
        } else if (!strcmp(key, "roles") || !strcmp(key, "info") || !strcmp(key, "window") ||
                   !strcmp(key, "alibi_slopes") || !strcmp(key, "cu_seqlens_q") || !strcmp(key, "cu_seqlens_k") ||
                   !strcmp(key, "cache_seqlens")) {
            json_error_t je;
            json_t *j = json_loads(s, JSON_REJECT_DUPLICATES, &je);
            if (!j) {
                snprintf(err, errlen, "%s: __metadata__.%s: invalid JSON text: %s", path, key, je.text);
                return -1;
            }
            json_object_set_new(*meta, key, j);
        } else if (!strcmp(key, "deterministic")) {
            if (strcmp(s, "true") && strcmp(s, "false")) {
                snprintf(err, errlen, "%s: __metadata__.deterministic: expected \"true\" or \"false\", got \"%s\"",
                         path, s);
                return -1;
            }
            json_object_set_new(*meta, key, json_boolean(!strcmp(s, "true")));
        } else {
            json_object_set_new(*meta, key, json_string(s));
        }
    }
    return 0;
}

static int load_st(const char *path, tlist *l, json_t **meta, char *err, size_t errlen)
{
    fd_st_file f;
    if (fd_st_read_file(path, &f, err, errlen)) return -1;
    int rc = -1;
    if (!f.meta) {
        snprintf(err, errlen, "%s: no __metadata__ (a bundle declares its layout and mask there; see docs/import.md)", path);
        goto out;
    }
    if (st_meta(path, f.meta, meta, err, errlen)) goto out;
    for (int i = 0; i < f.n; i++) {
        if (!valid_tensor_name(f.t[i].name)) {
            snprintf(err, errlen, "%s: unexpected tensor \"%s\" (%s)", path, f.t[i].name, name_rule);
            goto out;
        }
        tens *t = tlist_add(l);
        if (!t) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        snprintf(t->name, sizeof t->name, "%s", f.t[i].name);
        snprintf(t->label, sizeof t->label, "%s: tensor %s", path, f.t[i].name);
        t->a = f.t[i].a; /* take ownership */
        memset(&f.t[i].a, 0, sizeof f.t[i].a);
    }
    rc = 0;
out:
    fd_st_free(&f);
    return rc;
}

/* ---- meta ---- */

static int meta_u64(fd_jctx *cx, const json_t *meta, const char *key, uint64_t *out, int *has)
{
    json_t *v = json_object_get(meta, key);
    *has = v != NULL;
    if (!v) return 0;
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        unsigned long long x = strtoull(s, &end, 0);
        if (*s >= '0' && *s <= '9' && !*end && !errno) {
            *out = (uint64_t)x;
            return 0;
        }
    }
    return fd_jfail(cx, key, "expected a non-negative integer below 2^64 (a decimal string for large values)");
}

/* A number, or a string holding one. */
static int meta_num(fd_jctx *cx, const json_t *meta, const char *key, double *out, int *has)
{
    json_t *v = json_object_get(meta, key);
    *has = v != NULL;
    if (!v) return 0;
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 0;
    }
    if (json_is_string(v)) {
        char *end;
        const char *s = json_string_value(v);
        errno = 0;
        double x = strtod(s, &end);
        if (*s && !*end && !errno) {
            *out = x;
            return 0;
        }
    }
    return fd_jfail(cx, key, "expected a number");
}

static int parse_dtype(const char *s, fd_dtype *t)
{
    if (!strcmp(s, "fp16") || !strcmp(s, "float16")) *t = FD_DT_FP16;
    else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) *t = FD_DT_BF16;
    else if (!strcmp(s, "fp32") || !strcmp(s, "float32")) *t = FD_DT_FP32;
    else return -1;
    return 0;
}

/* ---- conversions ---- */

static int atype_dtype(fd_atype a, fd_dtype *t)
{
    if (a == FD_AT_F16) *t = FD_DT_FP16;
    else if (a == FD_AT_BF16) *t = FD_DT_BF16;
    else if (a == FD_AT_F32) *t = FD_DT_FP32;
    else return -1;
    return 0;
}

/* 4-d array in declared layout ([B][S][H][D] or [B][H][S][D]) -> [B][S][H][D] floats. */
static float *to_bshd(const fd_array *a, int bhsd)
{
    const int64_t B = a->shape[0], D = a->shape[3];
    const int64_t S = bhsd ? a->shape[2] : a->shape[1], H = bhsd ? a->shape[1] : a->shape[2];
    float *o = malloc(sizeof(float) * (a->numel ? a->numel : 1));
    if (!o) return NULL;
    if (!bhsd) {
        for (size_t i = 0; i < a->numel; i++) o[i] = fd_array_get_f32(a, i);
        return o;
    }
    size_t src = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t s = 0; s < S; s++)
                for (int64_t d = 0; d < D; d++)
                    o[(size_t)(((b * S + s) * H + h) * D + d)] = fd_array_get_f32(a, src++);
    return o;
}

static int check_finite(const tens *t, char *err, size_t errlen)
{
    size_t nan = 0, inf = 0, first = (size_t)-1;
    for (size_t i = 0; i < t->a.numel; i++) {
        float x = fd_array_get_f32(&t->a, i);
        if (isnan(x)) nan++;
        else if (isinf(x)) inf++;
        else continue;
        if (first == (size_t)-1) first = i;
    }
    if (!nan && !inf) return 0;
    int64_t idx[FD_ARRAY_MAX_DIMS];
    size_t r = first;
    for (int d = t->a.ndim - 1; d >= 0; d--) {
        idx[d] = (int64_t)(r % (size_t)t->a.shape[d]);
        r /= (size_t)t->a.shape[d];
    }
    char s[160];
    fd_shape_str(t->a.ndim, idx, s, sizeof s);
    snprintf(err, errlen, "%s: %zu NaN and %zu Inf input values (first at index %s, value %g); "
                          "the reference needs finite inputs", t->label, nan, inf, s,
             (double)fd_array_get_f32(&t->a, first));
    return -1;
}

static int shape_is(const fd_array *a, int nd, const int64_t *want)
{
    if (a->ndim != nd) return 0;
    for (int i = 0; i < nd; i++)
        if (a->shape[i] != want[i]) return 0;
    return 1;
}

static void base_name(const char *path, char *out, size_t len)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    const char *b = strrchr(buf, '/');
    b = b ? b + 1 : buf;
    snprintf(out, len, "%s", b);
    n = strlen(out);
    if (n > 12 && !strcmp(out + n - 12, ".safetensors")) out[n - 12] = 0;
}

void fd_bundle_given(const fd_bundle *b, int skip, int only_standard, fd_given *g)
{
    memset(g, 0, sizeof *g);
    g->q = b->q;
    g->k = b->k;
    g->v = b->v;
    g->dout = b->dout;
    for (int i = 0; i < b->nout && g->nout < FD_MAX_BACKENDS; i++) {
        if (i == skip || (only_standard && b->out[i].be.role != FD_ROLE_STANDARD)) continue;
        g->out[g->nout].be = &b->out[i].be;
        g->out[g->nout].o = b->out[i].o;
        g->out[g->nout].lse = b->out[i].lse;
        g->out[g->nout].keep = b->out[i].keep;
        g->out[g->nout].dq = b->out[i].dq;
        g->out[g->nout].dk = b->out[i].dk;
        g->out[g->nout].dv = b->out[i].dv;
        g->nout++;
    }
}

void fd_casefile_bundles(fd_casefile *cf, const char *source, char **paths, int n, int rows_per_head)
{
    memset(cf, 0, sizeof *cf);
    snprintf(cf->path, sizeof cf->path, "%s", source);
    snprintf(cf->name, sizeof cf->name, "check");
    snprintf(cf->description, sizeof cf->description, "imported tensors (flashdrift check --tensors)");
    cf->rows_per_head = rows_per_head;
    cf->reference_budget = FD_REFERENCE_BUDGET_DEFAULT;
    fd_import_flash_cfg(NULL, &cf->flash); /* the key tile: per bundle, fd_casefile_for_bundle */
    fd_policy_default(&cf->policy);
    cf->bundles = paths;
    cf->cases = calloc((size_t)(n > 0 ? n : 1), sizeof *cf->cases);
    if (!cf->cases) return;
    cf->ncases = n;
    for (int i = 0; i < n; i++) {
        fd_case *c = &cf->cases[i];
        base_name(paths[i], c->id, sizeof c->id);
        c->dist = FD_DIST_GIVEN;
        c->bundle = paths[i];
    }
}

int fd_fa2_fwd_key_tile(const fd_problem *p)
{
    if (p->page_size > 0 || (p->dtype != FD_DT_FP16 && p->dtype != FD_DT_BF16)) return 0;
    const int d = p->head_dim, drop = p->dropout_p > 0.0;
    if (d <= 32) return 128;
    if (d <= 64) return drop ? 64 : 128;
    if (d <= 96) return 64;
    if (d <= 128) return drop ? 32 : 64;
    return 64;
}

void fd_import_flash_cfg(const fd_problem *p, fd_flash_cfg *c)
{
    fd_flash_cfg_default(c);
    c->qk_order = c->pv_order = FD_ACC_TC16;
    const int bc = p ? fd_fa2_fwd_key_tile(p) : 0;
    if (bc > 0) c->bc = bc;
}

void fd_casefile_for_bundle(const fd_casefile *cf, const fd_problem *p, fd_casefile *out)
{
    *out = *cf;
    const int bc = fd_fa2_fwd_key_tile(p);
    if (bc > 0) out->flash.bc = bc;
}

void fd_bundle_free(fd_bundle *b)
{
    free(b->q); free(b->k); free(b->v); free(b->dout); free(b->block_table);
    b->q = b->k = b->v = b->dout = NULL;
    b->block_table = NULL;
    b->prob.block_table = NULL;
    for (int i = 0; i < b->nout; i++) {
        free(b->out[i].o); free(b->out[i].lse); free(b->out[i].keep);
        free(b->out[i].dq); free(b->out[i].dk); free(b->out[i].dv); free(b->out[i].used);
        b->out[i].used = NULL;
        b->out[i].o = b->out[i].lse = NULL;
        b->out[i].dq = b->out[i].dk = b->out[i].dv = NULL;
        b->out[i].keep = NULL;
    }
    b->nout = 0;
    if (b->info) json_decref(b->info);
    b->info = NULL;
}

static const char *const meta_keys[] = {"layout", "mask", "dtype", "scale", "dropout_p", "seed",
                                         "offset", "roles", "info", "format", "deterministic", "window",
                                         "softcap", "alibi_slopes", "cu_seqlens_q", "cu_seqlens_k", "page_size",
                                         "cache_seqlens", NULL};

/* What meta.json (or __metadata__) declares before any tensor is read. */
typedef struct {
    const char *layout; /* "bshd" or "bhsd" */
    int has_dt;
    fd_dtype dt; /* the declared dtype, when has_dt */
} bmeta;

static int bundle_meta(fd_jctx *cx, const json_t *meta, fd_bundle *b, bmeta *m);
static int check_types(fd_jctx *cx, tlist *l, const bmeta *m);
static int bundle_inputs(fd_jctx *cx, const json_t *meta, const bmeta *m, tlist *l, fd_bundle *b,
                         const tens **q_out);
static int bundle_outputs(fd_jctx *cx, const json_t *meta, const tens *tq, tlist *l, fd_bundle *b);
static int bundle_grads(fd_jctx *cx, const tens *tq, tlist *l, fd_bundle *b);

int fd_bundle_load(const char *path, fd_bundle *b, char *err, size_t errlen)
{
    memset(b, 0, sizeof *b);
    snprintf(b->path, sizeof b->path, "%s", path);
    base_name(path, b->name, sizeof b->name);
    struct stat st;
    if (stat(path, &st)) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    tlist l = {NULL, 0, 0};
    json_t *meta = NULL;
    char ml[1200];
    int rc = -1;
    if (S_ISDIR(st.st_mode)) {
        snprintf(ml, sizeof ml, "%s/meta.json", path);
        if (load_dir(path, &l, &meta, err, errlen)) goto out;
    } else {
        const size_t pl = strlen(path);
        if (pl > 4 && !strcmp(path + pl - 4, ".npy")) {
            snprintf(err, errlen, "%s: a bundle is a directory (meta.json and .npy files) or a .safetensors "
                                  "file, not one .npy file", path);
            goto out;
        }
        b->safetensors = 1;
        snprintf(ml, sizeof ml, "%s: __metadata__", path);
        if (load_st(path, &l, &meta, err, errlen)) goto out;
    }
    if (l.n) qsort(l.t, (size_t)l.n, sizeof *l.t, cmp_tens); /* outputs in name order */
    /* messages about the meta read "META: KEY: what was expected" */
    fd_jctx cx = {ml, err, errlen};
    bmeta m;
    const tens *tq = NULL;
    if (bundle_meta(&cx, meta, b, &m) || check_types(&cx, &l, &m) || bundle_inputs(&cx, meta, &m, &l, b, &tq) ||
        bundle_outputs(&cx, meta, tq, &l, b) || bundle_grads(&cx, tq, &l, b))
        goto out;
    b->info = json_incref(json_object_get(meta, "info"));
    rc = 0;
out:
    tlist_free(&l);
    if (meta) json_decref(meta);
    if (rc) fd_bundle_free(b);
    return rc;
}

/* The declarations: known keys only, the layout and the mask (never guessed), the dtype. */
static int bundle_meta(fd_jctx *cx, const json_t *meta, fd_bundle *b, bmeta *m)
{
    if (!json_is_object(meta)) {
        snprintf(cx->err, cx->errlen, "%s: expected a JSON object", cx->file);
        return -1;
    }
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)meta, key, val) {
        int ok = 0;
        for (int i = 0; meta_keys[i]; i++) ok |= !strcmp(key, meta_keys[i]);
        if (!ok) {
            snprintf(cx->err, cx->errlen, "%s: unknown key \"%s\" (expected layout, mask, dtype, scale, dropout_p, "
                                          "seed, offset, roles, info, format, deterministic, window, softcap, "
                                          "alibi_slopes, cu_seqlens_q, cu_seqlens_k, page_size, cache_seqlens)", cx->file, key);
            return -1;
        }
    }
    m->layout = json_string_value(json_object_get(meta, "layout"));
    if (!m->layout || (strcmp(m->layout, "bshd") && strcmp(m->layout, "bhsd")))
        return fd_jfail(cx, "layout", "expected \"bshd\" (batch, seq, heads, dim) or \"bhsd\" "
                                      "(batch, heads, seq, dim); it is never guessed");
    b->bhsd = !strcmp(m->layout, "bhsd");
    fd_problem *p = &b->prob;
    const char *mask = json_string_value(json_object_get(meta, "mask"));
    if (!mask)
        return fd_jfail(cx, "mask", "expected \"none\", \"causal\" (top-left, PyTorch is_causal), "
                                    "\"causal_tl\" or \"causal_br\"");
    if (!strcmp(mask, "none")) p->mask = FD_MASK_NONE;
    else if (!strcmp(mask, "causal") || !strcmp(mask, "causal_tl")) p->mask = FD_MASK_CAUSAL_TL;
    else if (!strcmp(mask, "causal_br")) p->mask = FD_MASK_CAUSAL_BR;
    else return fd_jfail(cx, "mask", "\"%s\" is not one of \"none\", \"causal\", \"causal_tl\", \"causal_br\"", mask);
    json_t *jdet = json_object_get(meta, "deterministic");
    if (jdet) {
        if (!json_is_boolean(jdet))
            return fd_jfail(cx, "deterministic", "expected true or false (torch.are_deterministic_algorithms_enabled())");
        b->has_deterministic = 1;
        b->deterministic = json_is_true(jdet);
    }
    m->has_dt = 0;
    m->dt = FD_DT_FP32;
    json_t *jdt = json_object_get(meta, "dtype");
    if (jdt) {
        if (!json_is_string(jdt) || parse_dtype(json_string_value(jdt), &m->dt))
            return fd_jfail(cx, "dtype", "expected \"fp16\", \"bf16\" or \"fp32\"");
        m->has_dt = 1;
    }
    return 0;
}

/* Resolves raw 16-bit words (bf16 by the declared dtype) and checks each tensor's type. */
static int check_types(fd_jctx *cx, tlist *l, const bmeta *m)
{
    for (int i = 0; i < l->n; i++) {
        tens *t = &l->t[i];
        const int is_mask = !strncmp(t->name, "dmask_", 6), is_lse = !strncmp(t->name, "lse_", 4);
        if (!strncmp(t->name, "cu_seqlens_", 11) || !strcmp(t->name, "block_table") || !strcmp(t->name, "cache_seqlens")) {
            /* varlen offsets, the paged KV cache's table and lengths: integers */
            if (t->a.type != FD_AT_I32 && t->a.type != FD_AT_I64) {
                snprintf(cx->err, cx->errlen, "%s: %s of type %s (expected int32 or int64)", t->label,
                         t->name[0] == 'c' && t->name[1] == 'u' ? "cu_seqlens" : t->name, fd_atype_name(t->a.type));
                return -1;
            }
            continue;
        }
        if (t->a.type == FD_AT_U16 && !is_mask && !is_lse) {
            if (!m->has_dt || m->dt != FD_DT_BF16) {
                snprintf(cx->err, cx->errlen, "%s: 16-bit unsigned words ('<u2'): %s must say \"dtype\": \"bf16\" "
                                              "(npy has no bf16 type)", t->label, cx->file);
                return -1;
            }
            t->a.type = FD_AT_BF16;
        }
        if (is_mask) {
            if (t->a.type != FD_AT_U8 && t->a.type != FD_AT_BOOL) {
                snprintf(cx->err, cx->errlen, "%s: dropout mask of type %s (expected uint8 or bool, 1 = kept)",
                         t->label, fd_atype_name(t->a.type));
                return -1;
            }
            for (size_t x = 0; x < t->a.numel; x++)
                if (((const uint8_t *)t->a.data)[x] > 1) {
                    snprintf(cx->err, cx->errlen, "%s: dropout mask value %u at flat index %zu (expected 0 or 1)",
                             t->label, ((const uint8_t *)t->a.data)[x], x);
                    return -1;
                }
        } else if (is_lse) {
            if (t->a.type != FD_AT_F32) {
                snprintf(cx->err, cx->errlen, "%s: LSE of type %s (expected fp32)", t->label,
                         fd_atype_name(t->a.type));
                return -1;
            }
        } else {
            fd_dtype dt;
            if (atype_dtype(t->a.type, &dt)) {
                snprintf(cx->err, cx->errlen, "%s: unsupported dtype %s (expected fp16, bf16 or fp32)", t->label,
                         fd_atype_name(t->a.type));
                return -1;
            }
        }
    }
    return 0;
}

/* The meta fields of the score modifiers that are on (the slopes in the meta, as numbers). */
static json_t *mods_meta(const fd_problem *p)
{
    json_t *m = json_object();
    if (p->window) json_object_set_new(m, "window", json_pack("[i, i]", p->window_left, p->window_right));
    if (p->softcap > 0.0f) json_object_set_new(m, "softcap", json_real((double)p->softcap));
    if (p->alibi) {
        json_t *a = json_array();
        for (int h = 0; h < p->heads; h++) json_array_append_new(a, json_real((double)p->alibi_slopes[h]));
        json_object_set_new(m, "alibi_slopes", a);
    }
    for (int t = 0; t < 2 && p->varlen; t++) {
        const int *cu = t ? p->cu_seqlens_k : p->cu_seqlens_q;
        json_t *a = json_array();
        for (int x = 0; x <= p->varlen; x++) json_array_append_new(a, json_integer(cu[x]));
        json_object_set_new(m, t ? "cu_seqlens_k" : "cu_seqlens_q", a);
    }
    return m;
}

/* Variable-length batches: cu_seqlens_q and cu_seqlens_k (both or neither), each a tensor
 * (n + 1,) int32 / int64 or a meta list of integers (not both); q, k, v packed, given with
 * batch 1 ((1, total, heads, dim) in bshd). Each must start at 0, never decrease and end
 * at the packed length; no dropout. Errors name the file (or tensor) and the field. */
static int bundle_varlen(fd_jctx *cx, const json_t *meta, tlist *l, fd_problem *p)
{
    static const char *const nm[2] = {"cu_seqlens_q", "cu_seqlens_k"};
    int given[2];
    for (int t = 0; t < 2; t++) given[t] = json_object_get(meta, nm[t]) || tlist_find(l, nm[t]);
    if (!given[0] && !given[1]) return 0;
    if (!given[0] || !given[1])
        return fd_jfail(cx, nm[given[0] ? 1 : 0], "missing: a varlen bundle gives cu_seqlens_q and cu_seqlens_k");
    int n = -1;
    for (int t = 0; t < 2; t++) {
        int *cu = t ? p->cu_seqlens_k : p->cu_seqlens_q;
        const json_t *js = json_object_get(meta, nm[t]);
        const tens *ts = tlist_find(l, nm[t]);
        if (js && ts) return fd_jfail(cx, nm[t], "given both as a tensor and in the meta: give one");
        const size_t len = js ? (json_is_array(js) ? json_array_size(js) : 0) : (ts->a.ndim == 1 ? ts->a.numel : 0);
        if (len < 2 || len > FD_VARLEN_MAX_SEQS + 1)
            return fd_jfail(cx, nm[t], "expected a list (or 1-d tensor) of 2..%d offsets (sequences + 1)", FD_VARLEN_MAX_SEQS + 1);
        if (n >= 0 && (int)len - 1 != n)
            return fd_jfail(cx, nm[t], "%zu offsets where cu_seqlens_q has %d (one more than the sequences)", len, n + 1);
        n = (int)len - 1;
        for (size_t x = 0; x < len; x++) {
            long long v;
            if (js) {
                const json_t *e = json_array_get(js, x);
                if (!json_is_integer(e)) return fd_jfail(cx, nm[t], "element %zu: expected an integer", x);
                v = json_integer_value(e);
            } else {
                v = (long long)fd_array_get_i64(&ts->a, x);
            }
            if (v < 0 || v > INT_MAX / 2) return fd_jfail(cx, nm[t], "element %zu is %lld (expected 0 to %d)", x, v, INT_MAX / 2);
            cu[x] = (int)v;
        }
        char e[200];
        if (fd_cu_seqlens_check(cu, n, t ? p->seqlen_k : p->seqlen_q, e, sizeof e))
            return fd_jfail(cx, nm[t], "%s (q, k, v are packed: batch 1, the total length in the sequence dimension)", e);
    }
    if (p->batch != 1) return fd_jfail(cx, "cu_seqlens_q", "q, k, v of batch %d: a varlen bundle packs them in batch 1", p->batch);
    if (p->dropout_p > 0.0) return fd_jfail(cx, "dropout_p", "varlen with dropout is not supported");
    p->varlen = n;
    return 0;
}

/* Paged KV cache (flash_attn_with_kvcache): the tensor block_table (batch, pages per
 * entry) int32 / int64 and cache_seqlens (batch,) as a tensor or a meta list (not both);
 * k, v the physical cache (num_pages, page_size, kv_heads, d) in the declared layout's
 * order; meta page_size, if given, must be k's. seqlen_k becomes pages x page_size, the
 * table is kept by the bundle. Errors name the file (or tensor) and the field. */
static int bundle_paged(fd_jctx *cx, const json_t *meta, tlist *l, fd_bundle *b)
{
    fd_problem *p = &b->prob;
    const tens *tb = tlist_find(l, "block_table"), *tc = tlist_find(l, "cache_seqlens");
    const json_t *jc = json_object_get(meta, "cache_seqlens"), *jp = json_object_get(meta, "page_size");
    if (!tb) {
        if (tc || jc || jp)
            return fd_jfail(cx, tc || jc ? "cache_seqlens" : "page_size", "given without block_table: a paged bundle gives "
                                                                           "block_table, cache_seqlens and k, v as the paged cache");
        return 0;
    }
    if (!tc && !jc) return fd_jfail(cx, "cache_seqlens", "missing: a paged bundle (block_table) gives cache_seqlens");
    if (tc && jc) return fd_jfail(cx, "cache_seqlens", "given both as a tensor and in the meta: give one");
    if (jp && (!json_is_integer(jp) || json_integer_value(jp) != p->page_size))
        return fd_jfail(cx, "page_size", "expected k's page dimension %d (k, v are (num_pages, page_size, kv_heads, d))",
                        p->page_size);
    if (tb->a.ndim != 2 || tb->a.shape[0] != p->batch || tb->a.shape[1] < 1)
        return fd_jfail(cx, "block_table", "expected a 2-d table (batch %d, pages per entry), got %d dimensions%s", p->batch,
                        tb->a.ndim, tb->a.ndim == 2 ? " of another batch" : "");
    if (p->batch > FD_PAGED_MAX_BATCH)
        return fd_jfail(cx, "block_table", "batch %d: at most %d entries", p->batch, FD_PAGED_MAX_BATCH);
    const size_t len = jc ? (json_is_array(jc) ? json_array_size(jc) : 0) : (tc->a.ndim == 1 ? tc->a.numel : 0);
    if (len != (size_t)p->batch)
        return fd_jfail(cx, "cache_seqlens", "expected a list (or 1-d tensor) of %d lengths (one per batch entry)", p->batch);
    for (size_t x = 0; x < len; x++) {
        long long v;
        if (jc) {
            const json_t *e = json_array_get(jc, x);
            if (!json_is_integer(e)) return fd_jfail(cx, "cache_seqlens", "element %zu: expected an integer", x);
            v = json_integer_value(e);
        } else {
            v = (long long)fd_array_get_i64(&tc->a, x);
        }
        if (v < 0 || v > INT_MAX / 2) return fd_jfail(cx, "cache_seqlens", "element %zu is %lld (expected 0 to %d)", x, v, INT_MAX / 2);
        p->cache_seqlens[x] = (int)v;
    }
    if ((double)tb->a.shape[1] * (double)p->page_size > (double)(INT_MAX / 2) || tb->a.numel > FD_PAGED_MAX_ENTRIES)
        return fd_jfail(cx, "block_table", "%lld pages per entry of %d tokens: too large", (long long)tb->a.shape[1], p->page_size);
    p->seqlen_k = (int)tb->a.shape[1] * p->page_size;
    b->block_table = malloc(sizeof(int) * tb->a.numel);
    if (!b->block_table) return fd_jfail(cx, "block_table", "out of memory");
    for (size_t x = 0; x < tb->a.numel; x++) {
        const long long v = (long long)fd_array_get_i64(&tb->a, x);
        b->block_table[x] = v < -1 ? -1 : v > INT_MAX ? INT_MAX : (int)v;
    }
    p->block_table = b->block_table;
    for (int x = 0; x < p->batch; x++)
        if (p->cache_seqlens[x] < p->seqlen_q || p->cache_seqlens[x] > p->seqlen_k)
            return fd_jfail(cx, "cache_seqlens", "element %d is %d, expected %d..%d (seqlen_q .. pages per entry x page_size)", x,
                            p->cache_seqlens[x], p->seqlen_q, p->seqlen_k);
    char e[256];
    if (fd_problem_check_paged(p, e, sizeof e)) return fd_jfail(cx, "block_table", "%s", e);
    return 0;
}

/* FlashAttention's score modifiers of the call: "window": [left, right] (-1 unbounded),
 * "softcap": c (0 none), ALiBi slopes from the tensor alibi_slopes (heads,) or the meta
 * list "alibi_slopes" (not both). */
static int bundle_mods(fd_jctx *cx, const json_t *meta, tlist *l, fd_problem *p)
{
    json_t *w = json_object_get(meta, "window");
    if (w) {
        json_int_t lr[2];
        if (!json_is_array(w) || json_array_size(w) != 2 || !json_is_integer(json_array_get(w, 0)) ||
            !json_is_integer(json_array_get(w, 1)))
            return fd_jfail(cx, "window", "expected [left, right], two integers (-1: unbounded)");
        for (int t = 0; t < 2; t++) {
            lr[t] = json_integer_value(json_array_get(w, (size_t)t));
            if (lr[t] < -1 || lr[t] > INT_MAX / 2)
                return fd_jfail(cx, "window", "%s size %lld: expected -1 (unbounded) or an integer >= 0",
                                t ? "right" : "left", (long long)lr[t]);
        }
        p->window = 1;
        p->window_left = (int)lr[0];
        p->window_right = (int)lr[1];
    }
    double cap = 0.0;
    int has_cap;
    if (meta_num(cx, meta, "softcap", &cap, &has_cap)) return -1;
    if (has_cap && !(cap >= 0.0 && cap < 1e30))
        return fd_jfail(cx, "softcap", "expected a finite number >= 0 (0: none), got %g", cap);
    p->softcap = (float)cap;
    json_t *js = json_object_get(meta, "alibi_slopes");
    tens *ts = tlist_find(l, "alibi_slopes");
    if (js && ts) return fd_jfail(cx, "alibi_slopes", "given both as a tensor and in the meta: give one");
    if (!js && !ts) return 0;
    if (p->heads > FD_ALIBI_MAX_HEADS)
        return fd_jfail(cx, "alibi_slopes", "%d heads: ALiBi supports at most %d", p->heads, FD_ALIBI_MAX_HEADS);
    if (ts) {
        if (ts->a.ndim != 1 || ts->a.shape[0] != p->heads || ts->a.type != FD_AT_F32) {
            char sh[160];
            fd_shape_str(ts->a.ndim, ts->a.shape, sh, sizeof sh);
            snprintf(cx->err, cx->errlen, "%s: shape %s of %s, expected (%d,) float32: one slope per head",
                     ts->label, sh, fd_atype_name(ts->a.type), p->heads);
            return -1;
        }
        for (int h = 0; h < p->heads; h++) p->alibi_slopes[h] = fd_array_get_f32(&ts->a, (size_t)h);
    } else {
        if (!json_is_array(js) || json_array_size(js) != (size_t)p->heads)
            return fd_jfail(cx, "alibi_slopes", "expected a list of %d numbers (one slope per head), got %s of %zu",
                            p->heads, fd_jtype(js), json_is_array(js) ? json_array_size(js) : (size_t)0);
        for (int h = 0; h < p->heads; h++) {
            json_t *x = json_array_get(js, (size_t)h);
            if (!json_is_number(x)) return fd_jfail(cx, "alibi_slopes", "element %d: expected a number", h);
            p->alibi_slopes[h] = (float)json_number_value(x);
        }
    }
    for (int h = 0; h < p->heads; h++)
        if (!isfinite(p->alibi_slopes[h]))
            return fd_jfail(cx, "alibi_slopes", "slope of head %d is not finite", h);
    p->alibi = 1;
    return 0;
}

/* q, k, v and the problem they define: shapes and dtype from the tensors, scale, dropout
 * and Philox seed/offset from the meta; the inputs converted to (batch, seq, heads, dim). */
static int bundle_inputs(fd_jctx *cx, const json_t *meta, const bmeta *m, tlist *l, fd_bundle *b,
                         const tens **q_out)
{
    char *err = cx->err;
    const size_t errlen = cx->errlen;
    fd_problem *p = &b->prob;
    tens *tq = tlist_find(l, "q"), *tk = tlist_find(l, "k"), *tv = tlist_find(l, "v");
    if (!tq || !tk || !tv) {
        const char *miss = !tq ? "q" : !tk ? "k" : "v";
        if (b->safetensors) snprintf(err, errlen, "%s: missing required tensor \"%s\"", b->path, miss);
        else snprintf(err, errlen, "%s/%s.npy: missing required tensor", b->path, miss);
        return -1;
    }
    const char *lay = b->bhsd ? "(batch, heads, seq, dim)" : "(batch, seq, heads, dim)";
    for (tens *t = tq; t; t = (t == tq ? tk : t == tk ? tv : NULL)) {
        if (t->a.ndim != 4) {
            snprintf(err, errlen, "%s: %d dimensions, expected 4 %s as the layout \"%s\" says", t->label,
                     t->a.ndim, lay, m->layout);
            return -1;
        }
        for (int d = 0; d < 4; d++)
            if (t->a.shape[d] < 1 || t->a.shape[d] > INT_MAX / 2) {
                snprintf(err, errlen, "%s: dimension %d is %lld (expected 1 to %d)", t->label, d,
                         (long long)t->a.shape[d], INT_MAX / 2);
                return -1;
            }
    }
    const int sI = b->bhsd ? 2 : 1, hI = b->bhsd ? 1 : 2;
    p->batch = (int)tq->a.shape[0];
    p->seqlen_q = (int)tq->a.shape[sI];
    p->heads = (int)tq->a.shape[hI];
    p->head_dim = (int)tq->a.shape[3];
    p->seqlen_k = (int)tk->a.shape[sI];
    p->kv_heads = (int)tk->a.shape[hI];
    /* paged KV cache: k, v are the physical cache (num_pages, page_size, kv_heads, d) */
    const int paged = tlist_find(l, "block_table") != NULL;
    if (paged) {
        p->num_pages = (int)tk->a.shape[0];
        p->page_size = (int)tk->a.shape[sI];
    }
    char s1[160], s2[160];
    if (!shape_is(&tv->a, 4, tk->a.shape)) {
        fd_shape_str(4, tk->a.shape, s1, sizeof s1);
        fd_shape_str(4, tv->a.shape, s2, sizeof s2);
        snprintf(err, errlen, "%s: shape %s disagrees with k's %s", tv->label, s2, s1);
        return -1;
    }
    if ((!paged && tk->a.shape[0] != p->batch) || tk->a.shape[3] != p->head_dim || p->heads % p->kv_heads) {
        fd_shape_str(4, tq->a.shape, s1, sizeof s1);
        fd_shape_str(4, tk->a.shape, s2, sizeof s2);
        snprintf(err, errlen, "%s: shape %s disagrees with q's %s in layout %s %s: batch and dim must "
                              "match and q's heads be a multiple of k's", tk->label, s2, s1, m->layout, lay);
        return -1;
    }
    if (tk->a.type != tq->a.type || tv->a.type != tq->a.type) {
        const tens *o = tk->a.type != tq->a.type ? tk : tv;
        snprintf(err, errlen, "%s: dtype %s disagrees with q's %s", o->label, fd_atype_name(o->a.type),
                 fd_atype_name(tq->a.type));
        return -1;
    }
    atype_dtype(tq->a.type, &p->dtype);
    if (m->has_dt && m->dt != p->dtype) {
        snprintf(err, errlen, "%s: dtype \"%s\" disagrees with the tensors' %s (%s)", cx->file,
                 fd_dtype_name(m->dt), fd_dtype_name(p->dtype), tq->label);
        return -1;
    }
    double scale = 0.0, dp = 0.0;
    int has_scale, has_dp, has_seed, has_off;
    if (meta_num(cx, meta, "scale", &scale, &has_scale) || meta_num(cx, meta, "dropout_p", &dp, &has_dp) ||
        meta_u64(cx, meta, "seed", &p->seed, &has_seed) || meta_u64(cx, meta, "offset", &p->offset, &has_off))
        return -1;
    if (has_scale && !(scale > 0.0 && scale < 1e30))
        return fd_jfail(cx, "scale", "expected a positive finite number, got %g", scale);
    p->softmax_scale = has_scale ? (float)scale : (float)(1.0 / sqrt((double)p->head_dim));
    if (!(dp >= 0.0 && dp < 1.0)) return fd_jfail(cx, "dropout_p", "expected a number in [0, 1), got %g", dp);
    p->dropout_p = dp;
    if (dp > 0.0 && (!has_seed || !has_off)) {
        snprintf(err, errlen, "%s: dropout_p %g needs seed and offset (the reference regenerates "
                              "FlashAttention-2's Philox mask from them)", cx->file, dp);
        return -1;
    }
    /* paged: only the keys below cache_seqlens must be finite (checked after the gather) */
    if (check_finite(tq, err, errlen) || (!paged && (check_finite(tk, err, errlen) || check_finite(tv, err, errlen))))
        return -1;
    if (bundle_mods(cx, meta, l, p) || bundle_varlen(cx, meta, l, p) || bundle_paged(cx, meta, l, b)) return -1;
    b->q = to_bshd(&tq->a, b->bhsd);
    b->k = to_bshd(&tk->a, b->bhsd);
    b->v = to_bshd(&tv->a, b->bhsd);
    if (!b->q || !b->k || !b->v) {
        snprintf(err, errlen, "%s: out of memory", b->path);
        return -1;
    }
    if (paged) { /* the logical K, V gathered through the block table (fd_problem's layout) */
        float *lk = malloc(sizeof(float) * (fd_kv_numel(p) ? fd_kv_numel(p) : 1));
        float *lv = malloc(sizeof(float) * (fd_kv_numel(p) ? fd_kv_numel(p) : 1));
        if (!lk || !lv) {
            free(lk); free(lv);
            snprintf(err, errlen, "%s: out of memory", b->path);
            return -1;
        }
        fd_paged_gather(p, b->k, lk);
        fd_paged_gather(p, b->v, lv);
        free(b->k); free(b->v);
        b->k = lk;
        b->v = lv;
        const size_t row = (size_t)p->kv_heads * (size_t)p->head_dim;
        for (int bb = 0; bb < p->batch; bb++)
            for (int j = 0; j < p->cache_seqlens[bb]; j++)
                for (size_t x = 0; x < row; x++)
                    if (!isfinite(lk[fd_kv_index(p, bb, j, 0, 0) + x]) || !isfinite(lv[fd_kv_index(p, bb, j, 0, 0) + x])) {
                        snprintf(err, errlen, "%s: a non-finite value in key %d of batch entry %d (page %ld, below cache_seqlens)",
                                 tk->label, j, bb, fd_paged_row(p, bb, j) / p->page_size);
                        return -1;
                    }
    }
    *q_out = tq;
    return 0;
}

/* The outputs (out_NAME, the same shape and dtype as q) with their roles, and each one's
 * LSE (lse_NAME) and dropout mask (dmask_NAME). */
static int bundle_outputs(fd_jctx *cx, const json_t *meta, const tens *tq, tlist *l, fd_bundle *b)
{
    char *err = cx->err;
    const size_t errlen = cx->errlen;
    const fd_problem *p = &b->prob;
    char s1[160], s2[160];
    json_t *roles = json_object_get(meta, "roles");
    if (roles && !json_is_object(roles))
        return fd_jfail(cx, "roles", "expected an object {NAME: \"flash\" | \"standard\"}");
    for (int i = 0; i < l->n; i++) {
        tens *t = &l->t[i];
        if (strncmp(t->name, "out_", 4)) continue;
        if (b->nout == FD_MAX_BACKENDS) {
            snprintf(err, errlen, "%s: more than %d outputs", t->label, FD_MAX_BACKENDS);
            return -1;
        }
        if (!shape_is(&t->a, 4, tq->a.shape)) {
            fd_shape_str(t->a.ndim, t->a.shape, s1, sizeof s1);
            fd_shape_str(4, tq->a.shape, s2, sizeof s2);
            snprintf(err, errlen, "%s: shape %s disagrees with q's %s", t->label, s1, s2);
            return -1;
        }
        if (t->a.type != tq->a.type) {
            snprintf(err, errlen, "%s: dtype %s disagrees with q's %s", t->label, fd_atype_name(t->a.type),
                     fd_atype_name(tq->a.type));
            return -1;
        }
        fd_import_output *o = &b->out[b->nout++];
        snprintf(o->name, sizeof o->name, "%s", t->name + 4);
        o->be.name = o->name;
        o->be.family = "import";
        o->be.run = NULL;
        const char *nm = o->name;
        o->be.role = (strstr(nm, "math") || strstr(nm, "eager") || strstr(nm, "standard") || strstr(nm, "ref"))
                         ? FD_ROLE_STANDARD : FD_ROLE_FLASH;
        json_t *r = roles ? json_object_get(roles, nm) : NULL;
        if (r) {
            const char *rs = json_string_value(r);
            if (rs && !strcmp(rs, "flash")) o->be.role = FD_ROLE_FLASH;
            else if (rs && !strcmp(rs, "standard")) o->be.role = FD_ROLE_STANDARD;
            else {
                char rp[128];
                snprintf(rp, sizeof rp, "roles.%s", nm);
                return fd_jfail(cx, rp, "expected \"flash\" or \"standard\"");
            }
        }
        if (!(o->o = to_bshd(&t->a, b->bhsd))) {
            snprintf(err, errlen, "%s: out of memory", b->path);
            return -1;
        }
    }
    if (roles) {
        const char *key;
        json_t *val;
        json_object_foreach(roles, key, val) {
            int found = 0;
            for (int i = 0; i < b->nout; i++) found |= !strcmp(b->out[i].name, key);
            if (!found) {
                snprintf(err, errlen, "%s: roles.%s names no output (no tensor out_%s)", cx->file, key, key);
                return -1;
            }
        }
    }
    for (int i = 0; i < l->n; i++) {
        tens *t = &l->t[i];
        if (strncmp(t->name, "used_", 5)) continue;
        fd_import_output *o = NULL;
        for (int j = 0; j < b->nout; j++)
            if (!strcmp(b->out[j].name, t->name + 5)) o = &b->out[j];
        if (!o) {
            snprintf(err, errlen, "%s: belongs to no output (no tensor out_%s)", t->label, t->name + 5);
            return -1;
        }
        const int64_t want[3] = {p->batch, p->seqlen_q, (int64_t)p->heads * p->head_dim};
        if (!shape_is(&t->a, 3, want)) {
            fd_shape_str(t->a.ndim, t->a.shape, s1, sizeof s1);
            fd_shape_str(3, want, s2, sizeof s2);
            snprintf(err, errlen, "%s: shape %s, expected %s (batch, seqlen_q, heads x dim)", t->label, s1, s2);
            return -1;
        }
        if (t->a.type != tq->a.type) {
            snprintf(err, errlen, "%s: dtype %s disagrees with q's %s", t->label, fd_atype_name(t->a.type),
                     fd_atype_name(tq->a.type));
            return -1;
        }
        if (!(o->used = malloc(sizeof(float) * t->a.numel))) goto oom;
        for (size_t x = 0; x < t->a.numel; x++) o->used[x] = fd_array_get_f32(&t->a, x);
    }
    for (int i = 0; i < l->n; i++) {
        tens *t = &l->t[i];
        const int is_lse = !strncmp(t->name, "lse_", 4), is_mask = !strncmp(t->name, "dmask_", 6);
        if (!is_lse && !is_mask) continue;
        const char *nm = t->name + (is_lse ? 4 : 6);
        fd_import_output *o = NULL;
        for (int j = 0; j < b->nout; j++)
            if (!strcmp(b->out[j].name, nm)) o = &b->out[j];
        if (!o) {
            snprintf(err, errlen, "%s: belongs to no output (no tensor out_%s)", t->label, nm);
            return -1;
        }
        const int64_t want_lse[3] = {p->batch, p->heads, p->seqlen_q};
        const int64_t want_mask[4] = {p->batch, p->heads, p->seqlen_q, p->seqlen_k};
        if (is_lse ? !shape_is(&t->a, 3, want_lse) : !shape_is(&t->a, 4, want_mask)) {
            fd_shape_str(t->a.ndim, t->a.shape, s1, sizeof s1);
            fd_shape_str(is_lse ? 3 : 4, is_lse ? want_lse : want_mask, s2, sizeof s2);
            snprintf(err, errlen, "%s: shape %s, expected %s (%s)", t->label, s1, s2,
                     is_lse ? "batch, heads, seqlen_q" : "batch, heads, seqlen_q, seqlen_k");
            return -1;
        }
        if (is_lse) {
            o->lse = malloc(sizeof(float) * t->a.numel);
            if (!o->lse) goto oom;
            for (size_t x = 0; x < t->a.numel; x++) o->lse[x] = fd_array_get_f32(&t->a, x);
        } else {
            o->keep = malloc(t->a.numel);
            if (!o->keep) goto oom;
            memcpy(o->keep, t->a.data, t->a.numel);
        }
    }
    return 0;
oom:
    snprintf(err, errlen, "%s: out of memory", b->path);
    return -1;
}

/* The output gradient `do` (q's shape and dtype, finite: the reference takes it as an
 * input) and each output's gradients dq_NAME, dk_NAME, dv_NAME (shapes of q, k, v, q's
 * dtype; all three or none; each needs out_NAME and do). */
static int bundle_grads(fd_jctx *cx, const tens *tq, tlist *l, fd_bundle *b)
{
    char *err = cx->err;
    const size_t errlen = cx->errlen;
    static const char *const gname[3] = {"dq", "dk", "dv"};
    const tens *tk = tlist_find(l, "k");
    const tens *tdo = tlist_find(l, "do");
    char s1[160], s2[160];
    const char *lay = b->bhsd ? "batch, heads, seqlen_q, dim" : "batch, seqlen_q, heads, dim";
    if (tdo && b->prob.varlen) {
        snprintf(err, errlen, "%s: a backward (do) with varlen (cu_seqlens) is not supported yet "
                              "(the forward is)", tdo->label);
        return -1;
    }
    if (tdo && b->prob.page_size > 0) {
        snprintf(err, errlen, "%s: a backward (do) with a paged KV cache (block_table) is not supported (forward only)",
                 tdo->label);
        return -1;
    }
    if (tdo) {
        if (!shape_is(&tdo->a, 4, tq->a.shape)) {
            fd_shape_str(tdo->a.ndim, tdo->a.shape, s1, sizeof s1);
            fd_shape_str(4, tq->a.shape, s2, sizeof s2);
            snprintf(err, errlen, "%s: output gradient of shape %s, expected q's %s (%s)", tdo->label, s1, s2, lay);
            return -1;
        }
        if (tdo->a.type != tq->a.type) {
            snprintf(err, errlen, "%s: output gradient of dtype %s, expected q's %s", tdo->label,
                     fd_atype_name(tdo->a.type), fd_atype_name(tq->a.type));
            return -1;
        }
        if (check_finite(tdo, err, errlen)) return -1;
        if (!(b->dout = to_bshd(&tdo->a, b->bhsd))) goto oom;
    }
    const tens *seen[FD_MAX_BACKENDS][3];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < l->n; i++) {
        const tens *t = &l->t[i];
        const int g = grad_kind(t->name);
        if (g < 0) continue;
        const char *nm = t->name + 3;
        int oi = -1;
        for (int j = 0; j < b->nout; j++)
            if (!strcmp(b->out[j].name, nm)) oi = j;
        if (oi < 0) {
            snprintf(err, errlen, "%s: gradient of no output (no tensor out_%s)", t->label, nm);
            return -1;
        }
        if (!tdo) {
            snprintf(err, errlen, "%s: a gradient needs the output gradient it was computed for: expected tensor do "
                                  "(like q) in the bundle", t->label);
            return -1;
        }
        const tens *like = g == 0 ? tq : tk;
        if (!shape_is(&t->a, 4, like->a.shape)) {
            fd_shape_str(t->a.ndim, t->a.shape, s1, sizeof s1);
            fd_shape_str(4, like->a.shape, s2, sizeof s2);
            snprintf(err, errlen, "%s: shape %s, expected %s's %s", t->label, s1, g == 0 ? "q" : g == 1 ? "k" : "v", s2);
            return -1;
        }
        if (t->a.type != tq->a.type) {
            snprintf(err, errlen, "%s: dtype %s, expected the bundle's %s", t->label, fd_atype_name(t->a.type),
                     fd_atype_name(tq->a.type));
            return -1;
        }
        seen[oi][g] = t;
        float *x = to_bshd(&t->a, b->bhsd);
        if (!x) goto oom;
        fd_import_output *o = &b->out[oi];
        if (g == 0) o->dq = x;
        else if (g == 1) o->dk = x;
        else o->dv = x;
    }
    for (int j = 0; j < b->nout; j++) {
        const tens *any = seen[j][0] ? seen[j][0] : seen[j][1] ? seen[j][1] : seen[j][2];
        if (!any) continue;
        for (int g = 0; g < 3; g++)
            if (!seen[j][g]) {
                snprintf(err, errlen, "%s: no %s_%s beside it (expected dq_%s, dk_%s and dv_%s together, or none)",
                         any->label, gname[g], b->out[j].name, b->out[j].name, b->out[j].name, b->out[j].name);
                return -1;
            }
    }
    return 0;
oom:
    snprintf(err, errlen, "%s: out of memory", b->path);
    return -1;
}

/* ---- writing ---- */

static int make_array(fd_array *a, fd_atype t, int nd, const int64_t *shape, const float *src, int bhsd,
                      char *err, size_t errlen)
{
    if (fd_array_alloc(a, t, nd, shape, err, errlen)) return -1;
    uint8_t *d = a->data;
    for (size_t i = 0; i < a->numel; i++) {
        size_t s = i;
        if (bhsd && nd == 4) { /* element i of [B][H][S][D] comes from [B][S][H][D] */
            const size_t H = (size_t)shape[1], S = (size_t)shape[2], D = (size_t)shape[3];
            size_t dd = i % D, ss = (i / D) % S, hh = (i / D / S) % H, bb = i / D / S / H;
            s = ((bb * S + ss) * H + hh) * D + dd;
        }
        const float x = src[s];
        uint32_t u;
        switch (t) {
        case FD_AT_F16: u = fd_f32_to_f16_bits(x); d[2 * i] = (uint8_t)u; d[2 * i + 1] = (uint8_t)(u >> 8); break;
        case FD_AT_BF16: u = fd_f32_to_bf16_bits(x); d[2 * i] = (uint8_t)u; d[2 * i + 1] = (uint8_t)(u >> 8); break;
        default:
            u = fd_f32_bits(x);
            for (int k = 0; k < 4; k++) d[4 * i + (size_t)k] = (uint8_t)(u >> (8 * k));
        }
    }
    return 0;
}

int fd_bundle_write(const fd_bundle *b, const char *path, int safetensors, int bhsd, char *err,
                    size_t errlen)
{
    if (b->prob.page_size > 0) { /* the logical K, V would lose the pages: not written yet */
        snprintf(err, errlen, "%s: writing a paged KV cache bundle is not supported yet", path);
        return -1;
    }
    const fd_problem *p = &b->prob;
    const fd_atype at = p->dtype == FD_DT_FP16 ? FD_AT_F16 : p->dtype == FD_DT_BF16 ? FD_AT_BF16 : FD_AT_F32;
    enum { MAXT = 4 + 7 * FD_MAX_BACKENDS };
    fd_array arr[MAXT];
    char names[MAXT][64];
    const fd_array *ap[MAXT];
    const char *np[MAXT];
    int n = 0, rc = -1;
    memset(arr, 0, sizeof arr);
    const int64_t qs[4] = {p->batch, bhsd ? p->heads : p->seqlen_q, bhsd ? p->seqlen_q : p->heads, p->head_dim};
    const int64_t ks[4] = {p->batch, bhsd ? p->kv_heads : p->seqlen_k, bhsd ? p->seqlen_k : p->kv_heads, p->head_dim};
    const int64_t ls[3] = {p->batch, p->heads, p->seqlen_q};
    const int64_t ms[4] = {p->batch, p->heads, p->seqlen_q, p->seqlen_k};
    if (make_array(&arr[n], at, 4, qs, b->q, bhsd, err, errlen)) goto out;
    snprintf(names[n++], 64, "q");
    if (make_array(&arr[n], at, 4, ks, b->k, bhsd, err, errlen)) goto out;
    snprintf(names[n++], 64, "k");
    if (make_array(&arr[n], at, 4, ks, b->v, bhsd, err, errlen)) goto out;
    snprintf(names[n++], 64, "v");
    if (b->dout) {
        if (make_array(&arr[n], at, 4, qs, b->dout, bhsd, err, errlen)) goto out;
        snprintf(names[n++], 64, "do");
    }
    for (int i = 0; i < b->nout; i++) {
        const fd_import_output *o = &b->out[i];
        if (make_array(&arr[n], at, 4, qs, o->o, bhsd, err, errlen)) goto out;
        snprintf(names[n++], 64, "out_%s", o->name);
        if (o->lse) {
            if (make_array(&arr[n], FD_AT_F32, 3, ls, o->lse, 0, err, errlen)) goto out;
            snprintf(names[n++], 64, "lse_%s", o->name);
        }
        if (o->keep) {
            if (fd_array_alloc(&arr[n], FD_AT_U8, 4, ms, err, errlen)) goto out;
            memcpy(arr[n].data, o->keep, arr[n].numel);
            snprintf(names[n++], 64, "dmask_%s", o->name);
        }
        if (o->used) {
            const int64_t us[3] = {p->batch, p->seqlen_q, (int64_t)p->heads * p->head_dim};
            if (make_array(&arr[n], at, 3, us, o->used, 0, err, errlen)) goto out;
            snprintf(names[n++], 64, "used_%s", o->name);
        }
        const float *gr[3] = {o->dq, o->dk, o->dv};
        for (int g = 0; g < 3; g++) {
            if (!gr[g]) continue;
            if (make_array(&arr[n], at, 4, g == 0 ? qs : ks, gr[g], bhsd, err, errlen)) goto out;
            snprintf(names[n++], 64, "%s_%s", g == 0 ? "dq" : g == 1 ? "dk" : "dv", o->name);
        }
    }
    for (int i = 0; i < n; i++) {
        ap[i] = &arr[i];
        np[i] = names[i];
    }
    char sc[64], dp[64], sd[32], of[32];
    snprintf(sc, sizeof sc, "%.17g", (double)p->softmax_scale);
    snprintf(dp, sizeof dp, "%.17g", p->dropout_p);
    snprintf(sd, sizeof sd, "%llu", (unsigned long long)p->seed);
    snprintf(of, sizeof of, "%llu", (unsigned long long)p->offset);
    json_t *roles = json_object();
    for (int i = 0; i < b->nout; i++)
        json_object_set_new(roles, b->out[i].name,
                            json_string(b->out[i].be.role == FD_ROLE_FLASH ? "flash" : "standard"));
    json_t *meta = json_pack("{s:s, s:s, s:s}", "layout", bhsd ? "bhsd" : "bshd", "mask",
                             fd_mask_name(p->mask), "dtype", fd_dtype_name(p->dtype));
    if (safetensors) {
        json_object_set_new(meta, "scale", json_string(sc));
        json_object_set_new(meta, "dropout_p", json_string(dp));
        json_object_set_new(meta, "seed", json_string(sd));
        json_object_set_new(meta, "offset", json_string(of));
        char *r = json_dumps(roles, JSON_COMPACT);
        json_object_set_new(meta, "roles", json_string(r ? r : "{}"));
        free(r);
        if (b->info) {
            char *s = json_dumps(b->info, JSON_COMPACT | JSON_ENCODE_ANY);
            json_object_set_new(meta, "info", json_string(s ? s : "null"));
            free(s);
        }
        if (b->has_deterministic) json_object_set_new(meta, "deterministic", json_string(b->deterministic ? "true" : "false"));
        json_t *mods = mods_meta(p);
        const char *key;
        json_t *val;
        json_object_foreach(mods, key, val) {
            char *t = json_dumps(val, JSON_COMPACT | JSON_ENCODE_ANY);
            json_object_set_new(meta, key, json_string(t ? t : "null"));
            free(t);
        }
        json_decref(mods);
        json_decref(roles);
        rc = fd_st_write_file(path, np, ap, n, meta, err, errlen);
        json_decref(meta);
        goto out;
    }
    json_object_set_new(meta, "scale", json_real((double)p->softmax_scale));
    json_object_set_new(meta, "dropout_p", json_real(p->dropout_p));
    json_object_set_new(meta, "seed", json_string(sd));
    json_object_set_new(meta, "offset", json_string(of));
    json_object_set_new(meta, "roles", roles);
    if (b->info) json_object_set(meta, "info", b->info);
    if (b->has_deterministic) json_object_set_new(meta, "deterministic", json_boolean(b->deterministic));
    json_t *mods = mods_meta(p);
    json_object_update(meta, mods);
    json_decref(mods);
    if (mkdir(path, 0755) && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        json_decref(meta);
        goto out;
    }
    char fp[1200];
    snprintf(fp, sizeof fp, "%s/meta.json", path);
    if (json_dump_file(meta, fp, JSON_INDENT(1) | JSON_REAL_PRECISION(17))) {
        snprintf(err, errlen, "%s: cannot write", fp);
        json_decref(meta);
        goto out;
    }
    json_decref(meta);
    for (int i = 0; i < n; i++) {
        snprintf(fp, sizeof fp, "%s/%s.npy", path, names[i]);
        if (fd_npy_write_file(fp, &arr[i], err, errlen)) goto out;
    }
    rc = 0;
out:
    for (int i = 0; i < MAXT; i++) fd_array_free(&arr[i]);
    return rc;
}

int fd_bundle_list(const char *path, char ***paths, int *n, char *err, size_t errlen)
{
    *paths = NULL;
    *n = 0;
    struct stat st;
    if (stat(path, &st)) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char mp[1200];
    snprintf(mp, sizeof mp, "%s/meta.json", path);
    if (!S_ISDIR(st.st_mode) || !stat(mp, &st)) {
        *paths = malloc(sizeof(char *));
        if (!*paths || !((*paths)[0] = strdup(path))) return -1;
        *n = 1;
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) {
        snprintf(err, errlen, "%s: cannot open the directory: %s", path, strerror(errno));
        return -1;
    }
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char sub[1200];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        size_t l = strlen(e->d_name);
        int take = 0;
        if (l > 12 && !strcmp(e->d_name + l - 12, ".safetensors") && !stat(sub, &st) && S_ISREG(st.st_mode))
            take = 1;
        else {
            snprintf(mp, sizeof mp, "%s/meta.json", sub);
            take = !stat(mp, &st);
        }
        if (!take) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **np = realloc(*paths, sizeof *np * (size_t)cap);
            if (!np) break;
            *paths = np;
        }
        if (!((*paths)[*n] = strdup(sub))) break;
        (*n)++;
    }
    closedir(d);
    if (!*n) {
        snprintf(err, errlen, "%s: no bundle here (expected meta.json, or subdirectories with meta.json, "
                              "or .safetensors files)", path);
        free(*paths);
        *paths = NULL;
        return -1;
    }
    qsort(*paths, (size_t)*n, sizeof **paths, cmp_str);
    return 0;
}
