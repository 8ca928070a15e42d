/* fd_case.c: case file parsing (jansson) and expansion; see fd_case.h. */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_case.h"
#include "fd_inputs.h"
#include "fd_json.h"

#define FD_MAX_LIST 64
#define FD_MAX_CASES 100000
#define FD_MAX_ELEMS ((size_t)1 << 31) /* per tensor: keeps index arithmetic and memory sane */

const char *fd_dist_name(fd_dist d)
{
    switch (d) {
    case FD_DIST_NORMAL: return "normal";
    case FD_DIST_UNIFORM: return "uniform";
    case FD_DIST_LARGE_LOGIT: return "large_logit";
    case FD_DIST_OUTLIER_ROWS: return "outlier_rows";
    case FD_DIST_GIVEN: return "given";
    case FD_DIST_TIED_MAX: return "tied_max";
    case FD_DIST_SINK: return "sink";
    case FD_DIST_LARGE_OFFSET: return "large_offset";
    case FD_DIST_LOW_RANK: return "low_rank";
    }
    return "?";
}

void fd_policy_default(fd_policy *p)
{
    p->fa_ratio = 2.0;
    p->atol = 1e-5;
    p->max_ulp[FD_DT_FP16] = 0.0;
    p->max_ulp[FD_DT_BF16] = 0.0;
    p->max_ulp[FD_DT_FP32] = 0.0;
    p->max_lse_abs = 0.0;
    p->marginal = 0.75;
    p->keep_sigma = 5.0;
    p->grad_fa_ratio[0] = p->grad_fa_ratio[1] = p->grad_fa_ratio[2] = 3.0; /* FlashAttention's tests */
    p->require_deterministic = 0;
    p->standard_ratio = 8.0; /* PyTorch's eager output: up to 4.4x the computed standard's error (docs/import.md) */
}

typedef fd_jctx fd_ctx;




static int get_int(fd_ctx *cx, const char *path, json_t *j, long lo, long hi, long *out)
{
    if (!json_is_integer(j))
        return fd_jfail(cx, path, "expected an integer in [%ld, %ld], got %s", lo, hi, fd_jtype(j));
    json_int_t v = json_integer_value(j);
    if (v < lo || v > hi)
        return fd_jfail(cx, path, "expected an integer in [%ld, %ld], got %lld", lo, hi, (long long)v);
    *out = (long)v;
    return 0;
}


/* A list field: an array of values or a single value. Calls fn on each element. */
typedef int (*elem_fn)(fd_ctx *cx, const char *path, json_t *j, void *out, int idx);

static int get_list(fd_ctx *cx, const char *path, json_t *j, elem_fn fn, void *out, int *n)
{
    char p[256];
    if (!json_is_array(j)) {
        *n = 1;
        return fn(cx, path, j, out, 0);
    }
    size_t len = json_array_size(j);
    if (len == 0) return fd_jfail(cx, path, "expected a non-empty list");
    if (len > FD_MAX_LIST) return fd_jfail(cx, path, "at most %d values per list", FD_MAX_LIST);
    for (size_t i = 0; i < len; i++) {
        snprintf(p, sizeof p, "%s[%zu]", path, i);
        if (fn(cx, p, json_array_get(j, i), out, (int)i)) return -1;
    }
    *n = (int)len;
    return 0;
}

static int e_size(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    long v = 0;
    if (get_int(cx, path, j, 1, 1L << 20, &v)) return -1;
    ((int *)out)[idx] = (int)v;
    return 0;
}
static int e_headdim(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    long v = 0;
    if (!json_is_integer(j)) return fd_jfail(cx, path, "expected an integer head dim in [1, 256], got %s", fd_jtype(j));
    if (get_int(cx, path, j, 1, 256, &v))
        return fd_jfail(cx, path, "head_dim %lld unsupported: FlashAttention supports 1..256",
                    (long long)json_integer_value(j));
    ((int *)out)[idx] = (int)v;
    return 0;
}
static int e_seed(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    long v = 0;
    if (get_int(cx, path, j, 0, 0x7fffffffL, &v)) return -1;
    ((uint64_t *)out)[idx] = (uint64_t)v;
    return 0;
}
static int e_dropout(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    double v = 0.0;
    if (fd_jget_num(cx, path, j, &v)) return -1;
    if (!(v >= 0.0 && v < 1.0)) return fd_jfail(cx, path, "dropout p must be in [0, 1), got %g", v);
    ((double *)out)[idx] = v;
    return 0;
}
static int e_dtype(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    const char *s = json_string_value(j);
    fd_dtype *o = out;
    if (s && !strcmp(s, "fp16")) o[idx] = FD_DT_FP16;
    else if (s && !strcmp(s, "bf16")) o[idx] = FD_DT_BF16;
    else if (s && !strcmp(s, "fp32")) o[idx] = FD_DT_FP32;
    else if (s && !strcmp(s, "e4m3")) o[idx] = FD_DT_E4M3;
    else if (s && !strcmp(s, "e5m2")) o[idx] = FD_DT_E5M2;
    else return fd_jfail(cx, path, "expected \"fp16\", \"bf16\", \"fp32\", \"e4m3\" or \"e5m2\"%s%s", s ? ", got " : "", s ? s : "");
    return 0;
}
static int e_mask(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    const char *s = json_string_value(j);
    fd_mask_kind *o = out;
    if (s && !strcmp(s, "none")) o[idx] = FD_MASK_NONE;
    else if (s && !strcmp(s, "causal_tl")) o[idx] = FD_MASK_CAUSAL_TL;
    else if (s && !strcmp(s, "causal_br")) o[idx] = FD_MASK_CAUSAL_BR;
    else return fd_jfail(cx, path, "expected \"none\", \"causal_tl\" or \"causal_br\"%s%s", s ? ", got " : "", s ? s : "");
    return 0;
}
static int e_dist(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    const char *s = json_string_value(j);
    fd_dist *o = out;
    for (int d = 0; d < FD_NDISTS; d++)
        if (d != FD_DIST_GIVEN && s && !strcmp(s, fd_dist_name((fd_dist)d))) {
            o[idx] = (fd_dist)d;
            return 0;
        }
    return fd_jfail(cx, path, "expected \"normal\", \"uniform\", \"large_logit\", \"outlier_rows\", \"tied_max\", "
                "\"sink\", \"large_offset\" or \"low_rank\"%s%s", s ? ", got " : "", s ? s : "");
}
static int e_bool(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    if (!json_is_boolean(j)) return fd_jfail(cx, path, "expected true or false, got %s", fd_jtype(j));
    ((int *)out)[idx] = json_is_true(j);
    return 0;
}
/* seqlen: a number (seqlen_q = seqlen_k) or a pair [seqlen_q, seqlen_k]. */
static int e_seqlen(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    int *o = out;
    char p[256];
    if (json_is_integer(j)) {
        if (e_size(cx, path, j, o, 2 * idx)) return -1;
        o[2 * idx + 1] = o[2 * idx];
        return 0;
    }
    if (!json_is_array(j) || json_array_size(j) != 2)
        return fd_jfail(cx, path, "expected a sequence length or a pair [seqlen_q, seqlen_k]");
    snprintf(p, sizeof p, "%s[0]", path);
    if (e_size(cx, p, json_array_get(j, 0), o, 2 * idx)) return -1;
    snprintf(p, sizeof p, "%s[1]", path);
    return e_size(cx, p, json_array_get(j, 1), o, 2 * idx + 1);
}

typedef struct {
    int batch[FD_MAX_LIST], nbatch;
    int heads[FD_MAX_LIST], nheads;
    int kvh[FD_MAX_LIST], nkvh; /* 0 in kvh means "= heads" */
    int seq[2 * FD_MAX_LIST], nseq;
    int hd[FD_MAX_LIST], nhd;
    fd_dtype dt[FD_MAX_LIST]; int ndt;
    fd_mask_kind mask[FD_MAX_LIST]; int nmask;
    double drop[FD_MAX_LIST]; int ndrop;
    fd_dist dist[FD_MAX_LIST]; int ndist;
    uint64_t seed[FD_MAX_LIST]; int nseed;
    int bwd[FD_MAX_LIST]; int nbwd;
    int win[FD_MAX_LIST][3]; int nwin;  /* {on, left, right} */
    float cap[FD_MAX_LIST]; int ncap;
    int alibi[FD_MAX_LIST]; int nalibi; /* 0 off, 1 on (standard or the explicit slopes) */
    float slopes[FD_ALIBI_MAX_HEADS]; int nslopes; /* explicit slopes: "alibi": [s0, s1, ...] */
    /* variable-length batches: "seqlens_q" / "seqlens_k", one packed batch per sweep */
    int nvarlen; /* sequences (0: off) */
    int cu_q[FD_VARLEN_MAX_SEQS + 1], cu_k[FD_VARLEN_MAX_SEQS + 1];
    /* paged KV cache: "cache_seqlens" (one per batch entry; gives the batch), "page_size"
     * (an axis), "seqlen_q" (an axis), "pages_per_entry", "num_pages", "block_table" */
    int npaged;                          /* batch entries (0: off) */
    int cache[FD_PAGED_MAX_BATCH];
    int page[FD_MAX_LIST], npage;
    int pages_per_entry, num_pages;      /* 0: the least that holds the longest cache / the table */
    int table_kind;                      /* 0 shuffled (the case seed), 1 identity, 2 explicit */
    json_t *table;                       /* explicit: [[page, ...], ...] one list per entry */
    int fp8_unit;                        /* "fp8_descale": "one" (1), "amax" (0, the default) */
} fd_sweep;

/* "window": null (none), a pair [left, right] (-1 unbounded, else >= 0), or a list of
 * these. A list whose first element is a number is one pair. */
static int e_window1(fd_ctx *cx, const char *path, json_t *j, int *w)
{
    char p[256];
    if (json_is_null(j)) { w[0] = 0; w[1] = w[2] = -1; return 0; }
    if (!json_is_array(j) || json_array_size(j) != 2)
        return fd_jfail(cx, path, "expected a window [left, right] (each -1 for unbounded or >= 0) or null, got %s",
                        fd_jtype(j));
    for (int t = 0; t < 2; t++) {
        long v = 0;
        snprintf(p, sizeof p, "%s[%d]", path, t);
        if (!json_is_integer(json_array_get(j, (size_t)t)) ||
            get_int(cx, p, json_array_get(j, (size_t)t), -1, 1L << 30, &v))
            return fd_jfail(cx, p, "expected the window's %s size: -1 (unbounded) or an integer >= 0",
                            t ? "right" : "left");
        w[1 + t] = (int)v;
    }
    w[0] = 1;
    return 0;
}

static int get_windows(fd_ctx *cx, const char *path, json_t *j, fd_sweep *s)
{
    char p[256];
    if (json_is_array(j) && json_array_size(j) > 0 && json_is_number(json_array_get(j, 0))) {
        s->nwin = 1;
        return e_window1(cx, path, j, s->win[0]);
    }
    if (!json_is_array(j)) {
        s->nwin = 1;
        return e_window1(cx, path, j, s->win[0]);
    }
    const size_t len = json_array_size(j);
    if (len == 0) return fd_jfail(cx, path, "expected a non-empty list of windows");
    if (len > FD_MAX_LIST) return fd_jfail(cx, path, "at most %d values per list", FD_MAX_LIST);
    for (size_t i = 0; i < len; i++) {
        snprintf(p, sizeof p, "%s[%zu]", path, i);
        if (e_window1(cx, p, json_array_get(j, i), s->win[i])) return -1;
    }
    s->nwin = (int)len;
    return 0;
}

static int e_softcap(fd_ctx *cx, const char *path, json_t *j, void *out, int idx)
{
    double v = 0.0;
    if (fd_jget_num(cx, path, j, &v)) return -1;
    if (!(v >= 0.0 && v <= 1e30)) return fd_jfail(cx, path, "softcap must be a finite number >= 0 (0: none), got %g", v);
    ((float *)out)[idx] = (float)v;
    return 0;
}

/* "alibi": true / false (the standard slopes 2^(-8 (h+1) / heads)), a list of booleans
 * (a sweep), or a list of numbers (the slopes, one per head). */
static int get_alibi(fd_ctx *cx, const char *path, json_t *j, fd_sweep *s)
{
    char p[256];
    if (json_is_array(j) && json_array_size(j) > 0 && json_is_number(json_array_get(j, 0))) {
        const size_t len = json_array_size(j);
        if (len > FD_ALIBI_MAX_HEADS) return fd_jfail(cx, path, "at most %d ALiBi slopes", FD_ALIBI_MAX_HEADS);
        for (size_t i = 0; i < len; i++) {
            double v = 0.0;
            snprintf(p, sizeof p, "%s[%zu]", path, i);
            if (fd_jget_num(cx, p, json_array_get(j, i), &v)) return -1;
            if (!(fabs(v) <= 1e30)) return fd_jfail(cx, p, "expected a finite slope, got %g", v);
            s->slopes[i] = (float)v;
        }
        s->nslopes = (int)len;
        s->alibi[0] = 1;
        s->nalibi = 1;
        return 0;
    }
    return get_list(cx, path, j, e_bool, s->alibi, &s->nalibi);
}

/* "seqlens_q": [l0, l1, ...] (and "seqlens_k", the same count; default the same lengths):
 * one packed variable-length batch, its cu_seqlens the running sums from 0. */
static int get_seqlens(fd_ctx *cx, const char *path, json_t *j, int *cu, int *n)
{
    char p[256];
    if (!json_is_array(j) || json_array_size(j) == 0 || json_array_size(j) > FD_VARLEN_MAX_SEQS)
        return fd_jfail(cx, path, "expected a list of 1..%d sequence lengths, got %s", FD_VARLEN_MAX_SEQS,
                        json_is_array(j) ? "a list of another size" : fd_jtype(j));
    cu[0] = 0;
    for (size_t i = 0; i < json_array_size(j); i++) {
        long v = 0;
        snprintf(p, sizeof p, "%s[%zu]", path, i);
        if (get_int(cx, p, json_array_get(j, i), 0, 1L << 20, &v)) return -1;
        cu[i + 1] = cu[i] + (int)v;
    }
    *n = (int)json_array_size(j);
    if (cu[*n] <= 0) return fd_jfail(cx, path, "expected at least one token in the packed batch");
    return 0;
}

/* The paged KV cache fields of a sweep (docs/case-files.md). */
static int parse_paged(fd_ctx *cx, const char *path, json_t *j, fd_sweep *s)
{
    char p[256];
    json_t *c = json_object_get(j, "cache_seqlens"), *f;
    if (json_object_get(j, "seqlen") || json_object_get(j, "batch") || json_object_get(j, "seqlens_q"))
        return fd_jfail(cx, path, "\"cache_seqlens\" gives the batch and the key lengths: no \"seqlen\", \"batch\" or \"seqlens_q\" with it");
    snprintf(p, sizeof p, "%s.cache_seqlens", path);
    if (!json_is_array(c) || json_array_size(c) == 0 || json_array_size(c) > FD_PAGED_MAX_BATCH)
        return fd_jfail(cx, p, "expected a list of 1..%d cache lengths (one per batch entry), got %s", FD_PAGED_MAX_BATCH,
                        json_is_array(c) ? "a list of another size" : fd_jtype(c));
    s->npaged = (int)json_array_size(c);
    for (int b = 0; b < s->npaged; b++) {
        long v = 0;
        snprintf(p, sizeof p, "%s.cache_seqlens[%d]", path, b);
        if (get_int(cx, p, json_array_get(c, (size_t)b), 1, 1L << 20, &v)) return -1;
        s->cache[b] = (int)v;
    }
    s->batch[0] = s->npaged; s->nbatch = 1;
    snprintf(p, sizeof p, "%s.page_size", path);
    if (!(f = json_object_get(j, "page_size"))) return fd_jfail(cx, path, "\"cache_seqlens\" needs \"page_size\"");
    if (get_list(cx, p, f, e_size, s->page, &s->npage)) return -1;
    int sq[FD_MAX_LIST], nsq = 1;
    sq[0] = 1;
    snprintf(p, sizeof p, "%s.seqlen_q", path);
    if ((f = json_object_get(j, "seqlen_q")) && get_list(cx, p, f, e_size, sq, &nsq)) return -1;
    for (int t = 0; t < nsq; t++) { s->seq[2 * t] = sq[t]; s->seq[2 * t + 1] = 0; /* the capacity, per page size */ }
    s->nseq = nsq;
    long v = 0;
    snprintf(p, sizeof p, "%s.pages_per_entry", path);
    if ((f = json_object_get(j, "pages_per_entry"))) {
        if (get_int(cx, p, f, 1, FD_PAGED_MAX_ENTRIES, &v)) return -1;
        s->pages_per_entry = (int)v;
    }
    snprintf(p, sizeof p, "%s.num_pages", path);
    if ((f = json_object_get(j, "num_pages"))) {
        if (get_int(cx, p, f, 1, FD_PAGED_MAX_ENTRIES, &v)) return -1;
        s->num_pages = (int)v;
    }
    snprintf(p, sizeof p, "%s.block_table", path);
    f = json_object_get(j, "block_table");
    if (!f || (json_is_string(f) && !strcmp(json_string_value(f), "shuffled"))) s->table_kind = 0;
    else if (json_is_string(f) && !strcmp(json_string_value(f), "identity")) s->table_kind = 1;
    else if (json_is_array(f)) {
        if (json_array_size(f) != (size_t)s->npaged)
            return fd_jfail(cx, p, "expected one list of pages per batch entry (%d), got %zu lists", s->npaged,
                            json_array_size(f));
        if (s->npage != 1) return fd_jfail(cx, p, "an explicit block table needs one page_size, got %d", s->npage);
        s->table_kind = 2;
        s->table = f;
    } else
        return fd_jfail(cx, p, "expected \"shuffled\", \"identity\" or a list of page lists (one per batch entry)");
    if (!json_object_get(j, "head_dim")) return fd_jfail(cx, path, "missing required field \"head_dim\"");
    return 0;
}

#define FD_TABLE_HDR 6
/* A paged case's block table, kept by the case file: "shuffled" draws distinct pages of
 * [0, num_pages) from the case seed (splitmix64, Fisher-Yates), "identity" gives entry b
 * the pages b * pages .. , an explicit table is checked (pages in range, distinct: the
 * generated logical K/V is scattered into them). Sets num_pages. */
static int paged_table(fd_ctx *cx, const char *path, const fd_sweep *s, fd_problem *p, fd_casefile *cf)
{
    char q[256];
    const int np = fd_paged_pages(p), n = p->batch * np;
    if (p->num_pages < n && s->table_kind != 2)
        return fd_jfail(cx, path, "num_pages %d is fewer than the block table's %d entries (%d entries x %d pages)",
                        p->num_pages, n, p->batch, np);
    /* a generated table is shared by the cases that would generate the same one (the
     * header: kind, seed, page size, entries, pages; an explicit table is never shared) */
    const int hdr[FD_TABLE_HDR] = {s->table_kind, (int)(p->seed & 0x7fffffff), (int)((p->seed >> 31) & 0x7fffffff),
                                   p->page_size, n, p->num_pages};
    for (int x = 0; x < cf->ntables && s->table_kind != 2; x++)
        if (!memcmp(cf->tables[x], hdr, sizeof hdr)) {
            p->block_table = cf->tables[x] + FD_TABLE_HDR;
            return 0;
        }
    int *th = malloc(sizeof(int) * ((size_t)n + FD_TABLE_HDR)), *used = calloc((size_t)p->num_pages, sizeof(int));
    int **nt = realloc(cf->tables, sizeof(int *) * (size_t)(cf->ntables + 1));
    if (!th || !used || !nt) {
        free(th); free(used);
        if (nt) cf->tables = nt;
        return fd_jfail(cx, path, "out of memory");
    }
    cf->tables = nt;
    cf->tables[cf->ntables++] = th;
    memcpy(th, hdr, sizeof hdr);
    int *t = th + FD_TABLE_HDR;
    if (s->table_kind == 2) {
        for (int b = 0; b < p->batch; b++) {
            json_t *row = json_array_get(s->table, (size_t)b);
            snprintf(q, sizeof q, "%s.block_table[%d]", path, b);
            if (!json_is_array(row) || json_array_size(row) != (size_t)np) {
                free(used);
                return fd_jfail(cx, q, "expected %d pages (pages_per_entry: seqlen capacity %d / page_size %d), got %s", np,
                                p->seqlen_k, p->page_size, json_is_array(row) ? "a list of another size" : fd_jtype(row));
            }
            for (int x = 0; x < np; x++) {
                long v = 0;
                snprintf(q, sizeof q, "%s.block_table[%d][%d]", path, b, x);
                if (get_int(cx, q, json_array_get(row, (size_t)x), 0, (long)p->num_pages - 1, &v)) {
                    free(used);
                    return fd_jfail(cx, q, "expected a page in 0..%d (num_pages %d), got %s", p->num_pages - 1, p->num_pages,
                                    json_is_integer(json_array_get(row, (size_t)x)) ? "one outside" : "no integer");
                }
                if (used[v]++) {
                    free(used);
                    return fd_jfail(cx, q, "page %ld appears twice in the block table (generated inputs need distinct pages)", v);
                }
                t[b * np + x] = (int)v;
            }
        }
    } else {
        int *perm = used; /* 0 .. num_pages - 1, shuffled, the first n of them */
        for (int x = 0; x < p->num_pages; x++) perm[x] = x;
        if (s->table_kind == 0) {
            uint64_t st = UINT64_C(0x9e3779b97f4a7c15) ^ (p->seed * UINT64_C(0xbf58476d1ce4e5b9)) ^ ((uint64_t)(unsigned)p->page_size << 32) ^ (uint64_t)(unsigned)n;
            for (int x = p->num_pages - 1; x > 0; x--) {
                uint64_t z = (st += UINT64_C(0x9e3779b97f4a7c15));
                z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
                z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
                z ^= z >> 31;
                const int y = (int)(z % (uint64_t)(x + 1));
                const int tmp = perm[x]; perm[x] = perm[y]; perm[y] = tmp;
            }
        }
        memcpy(t, perm, sizeof(int) * (size_t)n);
    }
    free(used);
    p->block_table = t;
    return 0;
}

static int parse_sweep(fd_ctx *cx, const char *path, json_t *j, fd_sweep *s)
{
    static const char *const keys[] = {"batch", "heads", "kv_heads", "seqlen", "head_dim", "dtype",
                                       "mask", "dropout", "dist", "seed", "backward", "window", "softcap",
                                       "alibi", "seqlens_q", "seqlens_k", "cache_seqlens", "page_size", "seqlen_q",
                                       "pages_per_entry", "num_pages", "block_table", "fp8_descale", NULL};
    char p[256];
    if (!json_is_object(j)) return fd_jfail(cx, path, "expected an object (a sweep), got %s", fd_jtype(j));
    if (fd_jcheck_keys(cx, path, j, keys)) return -1;
    memset(s, 0, sizeof *s);
    s->batch[0] = 1; s->nbatch = 1;
    s->heads[0] = 1; s->nheads = 1;
    s->kvh[0] = 0; s->nkvh = 1;
    s->dt[0] = FD_DT_FP16; s->ndt = 1;
    s->mask[0] = FD_MASK_NONE; s->nmask = 1;
    s->drop[0] = 0.0; s->ndrop = 1;
    s->dist[0] = FD_DIST_NORMAL; s->ndist = 1;
    s->seed[0] = 0; s->nseed = 1;
    s->bwd[0] = 0; s->nbwd = 1;
    s->win[0][0] = 0; s->win[0][1] = s->win[0][2] = -1; s->nwin = 1;
    s->cap[0] = 0.0f; s->ncap = 1;
    s->alibi[0] = 0; s->nalibi = 1;
#define FIELD(name, fn, arr, n)                                                              \
    do {                                                                                     \
        json_t *f = json_object_get(j, name);                                                \
        snprintf(p, sizeof p, "%s.%s", path, name);                                          \
        if (f && get_list(cx, p, f, fn, s->arr, &s->n)) return -1;                           \
    } while (0)
    FIELD("batch", e_size, batch, nbatch);
    FIELD("heads", e_size, heads, nheads);
    FIELD("kv_heads", e_size, kvh, nkvh);
    FIELD("head_dim", e_headdim, hd, nhd);
    FIELD("dtype", e_dtype, dt, ndt);
    FIELD("mask", e_mask, mask, nmask);
    FIELD("dropout", e_dropout, drop, ndrop);
    FIELD("dist", e_dist, dist, ndist);
    FIELD("seed", e_seed, seed, nseed);
    FIELD("backward", e_bool, bwd, nbwd);
    FIELD("softcap", e_softcap, cap, ncap);
#undef FIELD
    /* FP8: how the per-tensor descales are chosen (docs/fp8.md) */
    json_t *fds = json_object_get(j, "fp8_descale");
    if (fds) {
        const char *v = json_string_value(fds);
        snprintf(p, sizeof p, "%s.fp8_descale", path);
        if (v && !strcmp(v, "amax")) s->fp8_unit = 0;
        else if (v && !strcmp(v, "one")) s->fp8_unit = 1;
        else return fd_jfail(cx, p, "expected \"amax\" (descale = amax / FP8 max, per tensor) or \"one\"%s%s",
                             v ? ", got " : "", v ? v : "");
        int any8 = 0;
        for (int t = 0; t < s->ndt; t++) any8 |= fd_dtype_is_fp8(s->dt[t]);
        if (!any8) return fd_jfail(cx, p, "applies to FP8 dtypes (\"e4m3\", \"e5m2\") only; this sweep has none");
    }
    json_t *f = json_object_get(j, "window");
    snprintf(p, sizeof p, "%s.window", path);
    if (f && get_windows(cx, p, f, s)) return -1;
    f = json_object_get(j, "alibi");
    snprintf(p, sizeof p, "%s.alibi", path);
    if (f && get_alibi(cx, p, f, s)) return -1;
    static const char *const pkeys[] = {"page_size", "seqlen_q", "pages_per_entry", "num_pages", "block_table", NULL};
    if (json_object_get(j, "cache_seqlens")) return parse_paged(cx, path, j, s);
    for (int t = 0; pkeys[t]; t++)
        if (json_object_get(j, pkeys[t]))
            return fd_jfail(cx, path, "\"%s\" belongs to a paged KV cache: it needs \"cache_seqlens\"", pkeys[t]);
    json_t *vq = json_object_get(j, "seqlens_q"), *vk = json_object_get(j, "seqlens_k");
    if (vk && !vq) return fd_jfail(cx, path, "\"seqlens_k\" needs \"seqlens_q\"");
    if (vq) { /* a packed variable-length batch: batch 1 of the packed totals */
        int nk = 0;
        if (json_object_get(j, "seqlen") || json_object_get(j, "batch"))
            return fd_jfail(cx, path, "\"seqlens_q\" gives the batch and the lengths: no \"seqlen\" or \"batch\" with it");
        snprintf(p, sizeof p, "%s.seqlens_q", path);
        if (get_seqlens(cx, p, vq, s->cu_q, &s->nvarlen)) return -1;
        snprintf(p, sizeof p, "%s.seqlens_k", path);
        if (vk && get_seqlens(cx, p, vk, s->cu_k, &nk)) return -1;
        if (!vk) memcpy(s->cu_k, s->cu_q, sizeof s->cu_k);
        else if (nk != s->nvarlen)
            return fd_jfail(cx, p, "%d key lengths for %d query lengths (one per sequence)", nk, s->nvarlen);
        s->seq[0] = s->cu_q[s->nvarlen];
        s->seq[1] = s->cu_k[s->nvarlen];
        s->nseq = 1;
        if (!json_object_get(j, "head_dim")) return fd_jfail(cx, path, "missing required field \"head_dim\"");
        return 0;
    }
    f = json_object_get(j, "seqlen");
    snprintf(p, sizeof p, "%s.seqlen", path);
    if (!f) return fd_jfail(cx, path, "missing required field \"seqlen\"");
    if (get_list(cx, p, f, e_seqlen, s->seq, &s->nseq)) return -1;
    if (!json_object_get(j, "head_dim")) return fd_jfail(cx, path, "missing required field \"head_dim\"");
    return 0;
}

/* An exclusion: an object whose fields (a subset of a sweep's) all match the case. */
typedef struct {
    int has[13];
    long ival[13];
    double dval;
    fd_dtype dt; fd_mask_kind mask; fd_dist dist;
} fd_excl;
enum { X_BATCH, X_HEADS, X_KVH, X_SQ, X_SK, X_HD, X_DT, X_MASK, X_DROP, X_DIST, X_SEED, X_BWD };

static int parse_excl(fd_ctx *cx, const char *path, json_t *j, fd_excl *x)
{
    static const char *const keys[] = {"batch", "heads", "kv_heads", "seqlen_q", "seqlen_k",
                                       "head_dim", "dtype", "mask", "dropout", "dist", "seed", "backward", NULL};
    static const int ikeys[] = {X_BATCH, X_HEADS, X_KVH, X_SQ, X_SK, X_HD};
    char p[256];
    memset(x, 0, sizeof *x);
    if (!json_is_object(j) || json_object_size(j) == 0)
        return fd_jfail(cx, path, "expected a non-empty object of fields to match");
    if (fd_jcheck_keys(cx, path, j, keys)) return -1;
    for (int t = 0; t < 6; t++) {
        json_t *f = json_object_get(j, keys[t]);
        snprintf(p, sizeof p, "%s.%s", path, keys[t]);
        if (f) {
            if (get_int(cx, p, f, 0, 1L << 30, &x->ival[ikeys[t]])) return -1;
            x->has[ikeys[t]] = 1;
        }
    }
    json_t *f;
    if ((f = json_object_get(j, "dtype"))) { snprintf(p, sizeof p, "%s.dtype", path); if (e_dtype(cx, p, f, &x->dt, 0)) return -1; x->has[X_DT] = 1; }
    if ((f = json_object_get(j, "mask"))) { snprintf(p, sizeof p, "%s.mask", path); if (e_mask(cx, p, f, &x->mask, 0)) return -1; x->has[X_MASK] = 1; }
    if ((f = json_object_get(j, "dist"))) { snprintf(p, sizeof p, "%s.dist", path); if (e_dist(cx, p, f, &x->dist, 0)) return -1; x->has[X_DIST] = 1; }
    if ((f = json_object_get(j, "dropout"))) { snprintf(p, sizeof p, "%s.dropout", path); if (e_dropout(cx, p, f, &x->dval, 0)) return -1; x->has[X_DROP] = 1; }
    if ((f = json_object_get(j, "seed"))) { snprintf(p, sizeof p, "%s.seed", path); if (get_int(cx, p, f, 0, 0x7fffffffL, &x->ival[X_SEED])) return -1; x->has[X_SEED] = 1; }
    if ((f = json_object_get(j, "backward"))) {
        int b = 0;
        snprintf(p, sizeof p, "%s.backward", path);
        if (e_bool(cx, p, f, &b, 0)) return -1;
        x->ival[X_BWD] = b;
        x->has[X_BWD] = 1;
    }
    return 0;
}

static int excl_match(const fd_excl *x, const fd_case *c)
{
    const fd_problem *p = &c->prob;
    if (x->has[X_BATCH] && x->ival[X_BATCH] != p->batch) return 0;
    if (x->has[X_HEADS] && x->ival[X_HEADS] != p->heads) return 0;
    if (x->has[X_KVH] && x->ival[X_KVH] != p->kv_heads) return 0;
    if (x->has[X_SQ] && x->ival[X_SQ] != p->seqlen_q) return 0;
    if (x->has[X_SK] && x->ival[X_SK] != p->seqlen_k) return 0;
    if (x->has[X_HD] && x->ival[X_HD] != p->head_dim) return 0;
    if (x->has[X_DT] && x->dt != p->dtype) return 0;
    if (x->has[X_MASK] && x->mask != p->mask) return 0;
    if (x->has[X_DROP] && fabs(x->dval - p->dropout_p) > 1e-12) return 0;
    if (x->has[X_DIST] && x->dist != c->dist) return 0;
    if (x->has[X_SEED] && (uint64_t)x->ival[X_SEED] != c->input_seed) return 0;
    if (x->has[X_BWD] && x->ival[X_BWD] != c->backward) return 0;
    return 1;
}

void fd_case_make_id(const fd_case *c, char *buf, size_t len)
{
    const fd_problem *p = &c->prob;
    snprintf(buf, len, "b%dh%dk%d-q%dk%d-d%d-%s-%s-p%g-%s-s%llu", p->batch, p->heads, p->kv_heads,
             p->seqlen_q, p->seqlen_k, p->head_dim, fd_dtype_name(p->dtype), fd_mask_name(p->mask),
             p->dropout_p, fd_dist_name(c->dist), (unsigned long long)c->input_seed);
    size_t n = strlen(buf);
    if (p->window && n < len) n += (size_t)snprintf(buf + n, len - n, "-w%d_%d", p->window_left, p->window_right);
    if (p->softcap > 0.0f && n < len) n += (size_t)snprintf(buf + n, len - n, "-cap%g", (double)p->softcap);
    if (fd_dtype_is_fp8(p->dtype) && c->fp8_unit_descale && n < len) n += (size_t)snprintf(buf + n, len - n, "-ds1");
    if (p->alibi && n < len) {
        /* the standard slopes: "-alibi"; others: "-alibi" and a hash of their bits */
        float std[FD_ALIBI_MAX_HEADS];
        fd_alibi_default_slopes(p->heads, std);
        uint32_t hsh = 2166136261u;
        int same = 1;
        for (int h = 0; h < p->heads && h < FD_ALIBI_MAX_HEADS; h++) {
            uint32_t u;
            memcpy(&u, &p->alibi_slopes[h], 4);
            same &= fd_eqf(p->alibi_slopes[h], std[h]);
            for (int by = 0; by < 4; by++) hsh = (hsh ^ ((u >> (8 * by)) & 0xffu)) * 16777619u;
        }
        n += (size_t)(same ? snprintf(buf + n, len - n, "-alibi") : snprintf(buf + n, len - n, "-alibi%08x", hsh));
    }
    if (p->varlen && n < len) { /* "-vlN_HASH": N sequences, a hash of the lengths */
        uint32_t hsh = 2166136261u;
        for (int s = 0; s <= p->varlen; s++) {
            const uint32_t u[2] = {(uint32_t)p->cu_seqlens_q[s], (uint32_t)p->cu_seqlens_k[s]};
            for (int t = 0; t < 2; t++)
                for (int by = 0; by < 4; by++) hsh = (hsh ^ ((u[t] >> (8 * by)) & 0xffu)) * 16777619u;
        }
        n += (size_t)snprintf(buf + n, len - n, "-vl%d_%08x", p->varlen, hsh);
    }
    if (p->page_size > 0 && n < len) { /* "-pgP_HASH": page size, a hash of cache_seqlens and the table */
        uint32_t hsh = 2166136261u;
        const int nt = p->block_table ? p->batch * fd_paged_pages(p) : 0;
        for (int x = 0; x < p->batch + nt + 1; x++) {
            const uint32_t u = (uint32_t)(x < p->batch ? p->cache_seqlens[x] : x < p->batch + nt ? p->block_table[x - p->batch] : p->num_pages);
            for (int by = 0; by < 4; by++) hsh = (hsh ^ ((u >> (8 * by)) & 0xffu)) * 16777619u;
        }
        n += (size_t)snprintf(buf + n, len - n, "-pg%d_%08x", p->page_size, hsh);
    }
    if (c->backward && n < len) snprintf(buf + n, len - n, "-bwd");
}

static int sizes_ok(fd_ctx *cx, const char *path, const fd_problem *p)
{
    double q = (double)p->batch * p->seqlen_q * p->heads * p->head_dim;
    double kv = (double)p->batch * p->seqlen_k * p->kv_heads * p->head_dim;
    if (q > (double)FD_MAX_ELEMS || kv > (double)FD_MAX_ELEMS)
        return fd_jfail(cx, path, "case b%d h%d q%d k%d d%d is too large (%.3g elements; limit 2^31 per tensor)",
                    p->batch, p->heads, p->seqlen_q, p->seqlen_k, p->head_dim, q > kv ? q : kv);
    if (p->heads % p->kv_heads)
        return fd_jfail(cx, path, "heads (%d) must be a multiple of kv_heads (%d)", p->heads, p->kv_heads);
    return 0;
}

/* Cases are appended with their duplicates and deduplicated by dedupe() when this many
 * are held, and once at the end: the held list stays bounded, and each dedupe either
 * removes a quarter of it or finds more than FD_MAX_CASES distinct cases. */
#define FD_DEDUPE_AT (FD_MAX_CASES + FD_MAX_CASES / 4)

typedef struct {
    const char *id;
    int idx;
} fd_idref;

static int cmp_idref(const void *a, const void *b)
{
    const fd_idref *x = a, *y = b;
    const int c = strcmp(x->id, y->id);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Keeps the first case of each id, in expansion order, and drops the later copies; then
 * more than FD_MAX_CASES distinct cases is an error. Sorting the ids (with their index)
 * makes the copies adjacent: O(n log n), where comparing every pair took 100 s for 150k
 * expanded cases (docs/measurements.md). */
static int dedupe(fd_ctx *cx, const char *path, fd_casefile *cf)
{
    const size_t n = (size_t)cf->ncases;
    if (n > 1) {
        fd_idref *r = malloc(n * sizeof *r);
        unsigned char *drop = calloc(n, 1);
        if (!r || !drop) {
            free(r);
            free(drop);
            return fd_jfail(cx, path, "out of memory");
        }
        for (size_t i = 0; i < n; i++) r[i] = (fd_idref){cf->cases[i].id, (int)i};
        qsort(r, n, sizeof *r, cmp_idref);
        for (size_t i = 1; i < n; i++)
            if (!strcmp(r[i].id, r[i - 1].id)) drop[r[i].idx] = 1;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (!drop[i]) cf->cases[k++] = cf->cases[i];
        cf->ncases = (int)k;
        free(r);
        free(drop);
    }
    if (cf->ncases > FD_MAX_CASES) return fd_jfail(cx, path, "more than %d cases after expansion", FD_MAX_CASES);
    return 0;
}

static int expand(fd_ctx *cx, const char *path, const fd_sweep *s, const fd_excl *ex, int nex,
                  fd_casefile *cf, int *cap)
{
    /* before exclusions and duplicates: lists repeating one value made 64^10 iterations */
    const double combos = (double)s->nbatch * s->nheads * s->nkvh * s->nseq * s->nhd * s->ndt * s->nmask *
                          s->ndrop * s->ndist * s->nseed * s->nbwd * s->nwin * s->ncap * s->nalibi *
                          (s->npaged ? s->npage : 1);
    if (combos > FD_MAX_CASES)
        return fd_jfail(cx, path, "%.0f combinations (at most %d per sweep, before exclusions)", combos,
                        FD_MAX_CASES);
    for (int a = 0; a < s->nbatch; a++)
    for (int b = 0; b < s->nheads; b++)
    for (int c = 0; c < s->nkvh; c++)
    for (int d = 0; d < s->nseq; d++)
    for (int e = 0; e < s->nhd; e++)
    for (int f = 0; f < s->ndt; f++)
    for (int g = 0; g < s->nmask; g++)
    for (int h = 0; h < s->ndrop; h++)
    for (int i = 0; i < s->ndist; i++)
    for (int k = 0; k < s->nseed; k++)
    for (int w = 0; w < s->nbwd; w++)
    for (int wi = 0; wi < s->nwin; wi++)
    for (int ci = 0; ci < s->ncap; ci++)
    for (int ai = 0; ai < s->nalibi; ai++)
    for (int pi = 0; pi < (s->npaged ? s->npage : 1); pi++) {
        fd_case cs;
        memset(&cs, 0, sizeof cs);
        fd_problem *p = &cs.prob;
        p->batch = s->batch[a];
        p->heads = s->heads[b];
        p->kv_heads = s->kvh[c] ? s->kvh[c] : p->heads;
        p->seqlen_q = s->seq[2 * d];
        p->seqlen_k = s->seq[2 * d + 1];
        p->head_dim = s->hd[e];
        p->dtype = s->dt[f];
        p->mask = s->mask[g];
        p->dropout_p = s->drop[h];
        p->softmax_scale = (float)(1.0 / sqrt((double)p->head_dim));
        p->seed = s->seed[k];
        p->offset = 0;
        cs.dist = s->dist[i];
        cs.input_seed = s->seed[k];
        cs.backward = s->bwd[w];
        p->window = s->win[wi][0];
        p->window_left = s->win[wi][1];
        p->window_right = s->win[wi][2];
        p->softcap = s->cap[ci];
        p->alibi = s->alibi[ai];
        if (p->kv_heads > p->heads) continue; /* kv_heads list larger than this heads value */
        if (sizes_ok(cx, path, p)) return -1;
        if (p->alibi) {
            if (p->heads > FD_ALIBI_MAX_HEADS)
                return fd_jfail(cx, path, "alibi with %d heads: at most %d supported", p->heads, FD_ALIBI_MAX_HEADS);
            if (s->nslopes && s->nslopes != p->heads)
                return fd_jfail(cx, path, "alibi: %d slopes given for %d heads (one per head)", s->nslopes, p->heads);
            if (s->nslopes) memcpy(p->alibi_slopes, s->slopes, sizeof(float) * (size_t)p->heads);
            else fd_alibi_default_slopes(p->heads, p->alibi_slopes);
        }
        if (s->nvarlen) {
            p->varlen = s->nvarlen;
            memcpy(p->cu_seqlens_q, s->cu_q, sizeof p->cu_seqlens_q);
            memcpy(p->cu_seqlens_k, s->cu_k, sizeof p->cu_seqlens_k);
            if (p->dropout_p > 0.0)
                return fd_jfail(cx, path, "seqlens_q (varlen) with dropout is not supported");
        }
        if (fd_dtype_is_fp8(p->dtype)) { /* FP8 (issue 15 item 4): forward, plain or causal */
            char e[256];
            if (cs.backward)
                return fd_jfail(cx, path, "dtype %s with backward: the FP8 path is forward only", fd_dtype_name(p->dtype));
            cs.fp8_unit_descale = s->fp8_unit;
            if (fd_problem_check_fp8(p, e, sizeof e)) return fd_jfail(cx, path, "%s", e);
        }
        if (cs.backward && p->varlen)
            return fd_jfail(cx, path, "backward with varlen (seqlens_q) is not supported yet (forward only)");
        if (s->npaged) { /* paged KV cache: the capacity, the table, then fd_problem_check_paged */
            char e[256];
            int mx = 0;
            p->page_size = s->page[pi];
            memcpy(p->cache_seqlens, s->cache, sizeof p->cache_seqlens);
            for (int t = 0; t < s->npaged; t++) mx = s->cache[t] > mx ? s->cache[t] : mx;
            int np = s->pages_per_entry ? s->pages_per_entry : (mx + p->page_size - 1) / p->page_size;
            if (s->table_kind == 2) np = (int)json_array_size(json_array_get(s->table, 0));
            if ((double)np * p->page_size > (double)(1 << 20) || (double)np * p->batch > (double)FD_PAGED_MAX_ENTRIES)
                return fd_jfail(cx, path, "%d pages of %d tokens per entry: too large", np, p->page_size);
            p->seqlen_k = np * p->page_size;
            p->num_pages = s->num_pages ? s->num_pages : p->batch * np;
            if (cs.backward) return fd_jfail(cx, path, "backward with a paged KV cache (cache_seqlens) is not supported (forward only)");
            if (sizes_ok(cx, path, p) || paged_table(cx, path, s, p, cf)) return -1;
            if (fd_problem_check_paged(p, e, sizeof e)) return fd_jfail(cx, path, "%s", e);
        }
        int skip = 0;
        for (int x = 0; x < nex && !skip; x++) skip = excl_match(&ex[x], &cs);
        if (skip) continue;
        fd_case_make_id(&cs, cs.id, sizeof cs.id);
        if (fd_dtype_is_fp8(p->dtype)) { /* the descales come from the drawn inputs (amax) */
            char e[256];
            if (fd_inputs_fp8_descales(&cs, &p->q_descale, &p->k_descale, &p->v_descale, e, sizeof e))
                return fd_jfail(cx, path, "%s", e);
        }
        if (cf->ncases >= FD_DEDUPE_AT && dedupe(cx, path, cf)) return -1;
        if (cf->ncases == *cap) {
            *cap = *cap ? 2 * *cap : 64;
            fd_case *nc = realloc(cf->cases, sizeof(fd_case) * (size_t)*cap);
            if (!nc) return fd_jfail(cx, path, "out of memory");
            cf->cases = nc;
        }
        cf->cases[cf->ncases++] = cs;
    }
    return 0;
}

static int parse_flash(fd_ctx *cx, json_t *j, fd_flash_cfg *fc, fd_bwd_cfg *bc)
{
    static const char *const keys[] = {"br", "bc", "qk_order", "pv_order", "exp2", "p_fp32", "rowsum", "splits", "sms",
                                       "dq_mode", "dq_order", "o_round", NULL};
    if (!json_is_object(j)) return fd_jfail(cx, "flash", "expected an object, got %s", fd_jtype(j));
    if (fd_jcheck_keys(cx, "flash", j, keys)) return -1;
    json_t *f;
    long v = 0;
    if ((f = json_object_get(j, "br"))) { if (get_int(cx, "flash.br", f, 16, 256, &v)) return -1; fc->br = (int)v; }
    if ((f = json_object_get(j, "bc"))) {
        if (get_int(cx, "flash.bc", f, 16, 256, &v)) return -1;
        if (v % 16) return fd_jfail(cx, "flash.bc", "expected a multiple of 16, got %ld", v);
        fc->bc = (int)v;
    }
    const char *names[2] = {"qk_order", "pv_order"};
    fd_accum_model *dst[2] = {&fc->qk_order, &fc->pv_order};
    for (int t = 0; t < 2; t++)
        if ((f = json_object_get(j, names[t]))) {
            char p[64];
            snprintf(p, sizeof p, "flash.%s", names[t]);
            if (!json_is_string(f) || fd_accum_parse(json_string_value(f), dst[t]))
                return fd_jfail(cx, p, "expected \"seq\", \"tc16\" or \"tc_fp8\"");
        }
    if ((f = json_object_get(j, "exp2"))) {
        const char *s = json_string_value(f);
        if (s && !strcmp(s, "libm")) fc->exp2_mode = FD_EXP2_LIBM;
        else if (s && !strcmp(s, "portable")) fc->exp2_mode = FD_EXP2_PORTABLE;
        else return fd_jfail(cx, "flash.exp2", "expected \"libm\" or \"portable\"");
    }
    if ((f = json_object_get(j, "splits"))) { if (get_int(cx, "flash.splits", f, 0, 128, &v)) return -1; fc->splits = (int)v; }
    if ((f = json_object_get(j, "sms"))) { if (get_int(cx, "flash.sms", f, 1, 4096, &v)) return -1; fc->sms = (int)v; }
    if ((f = json_object_get(j, "rowsum"))) {
        const char *s = json_string_value(f);
        if (s && !strcmp(s, "seq")) fc->rowsum = FD_ROWSUM_SEQ;
        else if (s && !strcmp(s, "fa2")) fc->rowsum = FD_ROWSUM_FA2;
        else return fd_jfail(cx, "flash.rowsum", "expected \"seq\" or \"fa2\"");
    }
    if ((f = json_object_get(j, "p_fp32"))) {
        if (!json_is_boolean(f)) return fd_jfail(cx, "flash.p_fp32", "expected true or false");
        fc->p_fp32 = json_is_true(f);
    }
    if ((f = json_object_get(j, "o_round"))) {
        const char *s = json_string_value(f);
        if (s && !strcmp(s, "nearest")) fc->o_round_up = 0;
        else if (s && !strcmp(s, "up")) fc->o_round_up = 1;
        else return fd_jfail(cx, "flash.o_round", "expected \"nearest\" or \"up\" (a planted bias of the CPU replay)");
    }
    if ((f = json_object_get(j, "dq_mode"))) {
        const char *s = json_string_value(f);
        if (s && !strcmp(s, "atomic")) bc->dq_mode = FD_DQ_ATOMIC;
        else if (s && !strcmp(s, "deterministic")) bc->dq_mode = FD_DQ_DETERMINISTIC;
        else return fd_jfail(cx, "flash.dq_mode", "expected \"atomic\" or \"deterministic\"");
    }
    if ((f = json_object_get(j, "dq_order"))) {
        const char *s = json_string_value(f);
        if (s && !strcmp(s, "asc")) bc->dq_order = FD_DQ_ORDER_ASC;
        else if (s && !strcmp(s, "desc")) bc->dq_order = FD_DQ_ORDER_DESC;
        else if (s && !strcmp(s, "shuffle")) bc->dq_order = FD_DQ_ORDER_SHUFFLE;
        else return fd_jfail(cx, "flash.dq_order", "expected \"asc\", \"desc\" or \"shuffle\"");
    }
    return 0;
}

static int parse_policy(fd_ctx *cx, json_t *j, fd_policy *po)
{
    static const char *const keys[] = {"fa_ratio", "atol", "max_ulp", "max_lse_abs", "marginal",
                                       "keep_sigma", "grad_fa_ratio", "require_deterministic", "standard_ratio",
                                       "require_batch_invariance", NULL};
    if (!json_is_object(j)) return fd_jfail(cx, "policy", "expected an object, got %s", fd_jtype(j));
    if (fd_jcheck_keys(cx, "policy", j, keys)) return -1;
    json_t *f;
    if ((f = json_object_get(j, "fa_ratio")) && fd_jget_num(cx, "policy.fa_ratio", f, &po->fa_ratio)) return -1;
    if ((f = json_object_get(j, "atol")) && fd_jget_num(cx, "policy.atol", f, &po->atol)) return -1;
    if ((f = json_object_get(j, "max_lse_abs")) && fd_jget_num(cx, "policy.max_lse_abs", f, &po->max_lse_abs)) return -1;
    if ((f = json_object_get(j, "marginal")) && fd_jget_num(cx, "policy.marginal", f, &po->marginal)) return -1;
    if ((f = json_object_get(j, "keep_sigma")) && fd_jget_num(cx, "policy.keep_sigma", f, &po->keep_sigma)) return -1;
    if ((f = json_object_get(j, "standard_ratio")) && fd_jget_num(cx, "policy.standard_ratio", f, &po->standard_ratio))
        return -1;
    if (po->fa_ratio <= 0) return fd_jfail(cx, "policy.fa_ratio", "expected a positive number");
    if (!(po->standard_ratio > 0)) return fd_jfail(cx, "policy.standard_ratio", "expected a positive number");
    if (po->atol < 0) return fd_jfail(cx, "policy.atol", "expected a number >= 0");
    if (!(po->marginal > 0 && po->marginal <= 1)) return fd_jfail(cx, "policy.marginal", "expected a number in (0, 1]");
    if (po->keep_sigma <= 0) return fd_jfail(cx, "policy.keep_sigma", "expected a positive number");
    if ((f = json_object_get(j, "require_deterministic"))) {
        if (!json_is_boolean(f)) return fd_jfail(cx, "policy.require_deterministic", "expected true or false");
        po->require_deterministic = json_is_true(f);
    }
    if ((f = json_object_get(j, "require_batch_invariance"))) {
        if (!json_is_boolean(f)) return fd_jfail(cx, "policy.require_batch_invariance", "expected true or false");
        po->require_batch_invariance = json_is_true(f);
    }
    /* one number for the three gradients, or {"dq": A, "dk": B, "dv": C} */
    if ((f = json_object_get(j, "grad_fa_ratio")) && fd_jget_per_grad(cx, "policy.grad_fa_ratio", f, po->grad_fa_ratio))
        return -1;
    if ((f = json_object_get(j, "max_ulp"))) {
        static const char *const dk[] = {"fp16", "bf16", "fp32", NULL};
        if (!json_is_object(f)) return fd_jfail(cx, "policy.max_ulp", "expected an object {\"fp16\": N, ...}");
        if (fd_jcheck_keys(cx, "policy.max_ulp", f, dk)) return -1;
        for (int t = 0; t < 3; t++) {
            json_t *u = json_object_get(f, dk[t]);
            char p[64];
            snprintf(p, sizeof p, "policy.max_ulp.%s", dk[t]);
            if (u && fd_jget_num(cx, p, u, &po->max_ulp[t])) return -1;
        }
    }
    return 0;
}

const char *fd_reftier_name(fd_reftier t)
{
    switch (t) {
    case FD_REFTIER_MPFR: return "mpfr";
    case FD_REFTIER_CPU: return "cpu";
    case FD_REFTIER_GPU: return "gpu";
    default: return "auto";
    }
}

int fd_reftier_parse(const char *s, fd_reftier *t)
{
    static const fd_reftier all[] = {FD_REFTIER_AUTO, FD_REFTIER_MPFR, FD_REFTIER_CPU, FD_REFTIER_GPU};
    for (int i = 0; i < 4; i++)
        if (s && !strcmp(s, fd_reftier_name(all[i]))) {
            *t = all[i];
            return 0;
        }
    return -1;
}

int fd_casefile_load(const char *path, fd_casefile *cf, char *err, size_t errlen)
{
    fd_ctx cx = {path, err, errlen};
    memset(cf, 0, sizeof *cf);
    snprintf(cf->path, sizeof cf->path, "%s", path);
    fd_flash_cfg_default(&cf->flash);
    fd_bwd_cfg_default(&cf->bwd);
    fd_policy_default(&cf->policy);
    cf->rows_per_head = 32;
    cf->reference = FD_REFTIER_AUTO;
    cf->reference_budget = FD_REFERENCE_BUDGET_DEFAULT;
    /* not a regular file (a directory, a FIFO) is an error here, never a hang */
    json_t *root = fd_jload(path, err, errlen);
    if (!root) return -1;
    static const char *const keys[] = {"schema", "name", "description", "sweeps", "exclude",
                                       "rows_per_head", "flash", "policy", "bias_seeds", "bias_alpha",
                                       "batch_invariance", "reference", "reference_budget", NULL};
    int rc = -1, cap = 0;
    fd_excl *ex = NULL;
    if (!json_is_object(root)) { fd_jfail(&cx, "(top)", "expected an object, got %s", fd_jtype(root)); goto out; }
    if (fd_jcheck_keys(&cx, "(top)", root, keys)) goto out;
    json_t *f = json_object_get(root, "schema");
    if (!f || !json_is_string(f) || strcmp(json_string_value(f), "flashdrift-cases/1")) {
        fd_jfail(&cx, "schema", "expected \"flashdrift-cases/1\"");
        goto out;
    }
    f = json_object_get(root, "name");
    if (!f || !json_is_string(f) || !json_string_length(f)) { fd_jfail(&cx, "name", "expected a non-empty string"); goto out; }
    snprintf(cf->name, sizeof cf->name, "%s", json_string_value(f));
    if ((f = json_object_get(root, "description"))) {
        if (!json_is_string(f)) { fd_jfail(&cx, "description", "expected a string"); goto out; }
        snprintf(cf->description, sizeof cf->description, "%s", json_string_value(f));
    }
    if ((f = json_object_get(root, "rows_per_head"))) {
        long v = 0;
        if (get_int(&cx, "rows_per_head", f, 0, 1L << 20, &v)) goto out;
        cf->rows_per_head = (int)v;
    }
    if ((f = json_object_get(root, "reference"))) {
        if (!json_is_string(f) || fd_reftier_parse(json_string_value(f), &cf->reference)) {
            fd_jfail(&cx, "reference", "expected \"auto\", \"mpfr\", \"cpu\" or \"gpu\"");
            goto out;
        }
    }
    if ((f = json_object_get(root, "reference_budget"))) {
        if (fd_jget_num(&cx, "reference_budget", f, &cf->reference_budget)) goto out;
        if (!(cf->reference_budget >= 0.0 && cf->reference_budget <= 1e6)) {
            fd_jfail(&cx, "reference_budget", "expected seconds in [0, 1e6], got %g", cf->reference_budget);
            goto out;
        }
    }
    cf->bias_alpha = 1e-3;
    if ((f = json_object_get(root, "bias_seeds"))) {
        long v = 0;
        if (get_int(&cx, "bias_seeds", f, 0, 4096, &v)) goto out;
        if (v != 0 && v < 16) {
            fd_jfail(&cx, "bias_seeds", "expected 0 (off) or 16..4096 input seeds, got %ld", v);
            goto out;
        }
        cf->bias_seeds = (int)v;
    }
    if ((f = json_object_get(root, "bias_alpha"))) {
        if (fd_jget_num(&cx, "bias_alpha", f, &cf->bias_alpha)) goto out;
        if (!(cf->bias_alpha > 0 && cf->bias_alpha < 0.5)) {
            fd_jfail(&cx, "bias_alpha", "expected a family-wise false-alarm rate in (0, 0.5), got %g", cf->bias_alpha);
            goto out;
        }
    }
    if ((f = json_object_get(root, "batch_invariance"))) {
        if (!json_is_boolean(f)) { fd_jfail(&cx, "batch_invariance", "expected true or false"); goto out; }
        cf->batch_invariance = json_is_true(f);
    }
    if ((f = json_object_get(root, "flash")) && parse_flash(&cx, f, &cf->flash, &cf->bwd)) goto out;
    if ((f = json_object_get(root, "policy")) && parse_policy(&cx, f, &cf->policy)) goto out;
    int nex = 0;
    if ((f = json_object_get(root, "exclude"))) {
        if (!json_is_array(f)) { fd_jfail(&cx, "exclude", "expected a list of objects"); goto out; }
        nex = (int)json_array_size(f);
        ex = calloc((size_t)(nex ? nex : 1), sizeof *ex);
        if (!ex) { fd_jfail(&cx, "exclude", "out of memory"); goto out; }
        for (int i = 0; i < nex; i++) {
            char p[64];
            snprintf(p, sizeof p, "exclude[%d]", i);
            if (parse_excl(&cx, p, json_array_get(f, (size_t)i), &ex[i])) goto out;
        }
    }
    json_t *sw = json_object_get(root, "sweeps");
    if (!sw || !json_is_array(sw) || json_array_size(sw) == 0) {
        fd_jfail(&cx, "sweeps", "expected a non-empty list of sweeps");
        goto out;
    }
    for (size_t i = 0; i < json_array_size(sw); i++) {
        char p[64];
        fd_sweep s;
        snprintf(p, sizeof p, "sweeps[%zu]", i);
        if (parse_sweep(&cx, p, json_array_get(sw, i), &s)) goto out;
        if (expand(&cx, p, &s, ex, nex, cf, &cap)) goto out;
    }
    if (dedupe(&cx, "sweeps", cf)) goto out;
    if (cf->ncases == 0) { fd_jfail(&cx, "sweeps", "no case left after exclusions"); goto out; }
    rc = 0;
out:
    free(ex);
    json_decref(root);
    if (rc) fd_casefile_free(cf);
    return rc;
}

void fd_casefile_free(fd_casefile *cf)
{
    for (int i = 0; cf->bundles && i < cf->ncases; i++) free(cf->bundles[i]);
    free(cf->bundles);
    cf->bundles = NULL;
    free(cf->cases);
    cf->cases = NULL;
    cf->ncases = 0;
    for (int i = 0; i < cf->ntables; i++) free(cf->tables[i]);
    free(cf->tables);
    cf->tables = NULL;
    cf->ntables = 0;
}

