/* fd_report_read.c: see fd_report_read.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_json.h"
#include "fd_report.h"
#include "fd_report_read.h"

const char *const fd_report_metrics[] = {"max_abs", "max_rel", "rel_l2", "max_ulp", "p99_ulp",
                                         "lse_max_abs", NULL};

/* Case verdicts a report may carry: the run's four and UNJUDGED (no rule could be applied). */
static const char *const verdicts[] = {"PASS", "MARGINAL", "FAIL", "UNDECIDED", "UNJUDGED", NULL};

static int one_of(const char *s, const char *const *set)
{
    for (int i = 0; s && set[i]; i++)
        if (!strcmp(s, set[i])) return 1;
    return 0;
}

static int need_string(fd_jctx *cx, const char *path, const json_t *o, const char *key)
{
    const json_t *f = json_object_get(o, key);
    char p[256];
    snprintf(p, sizeof p, "%s%s%s", path, *path ? "." : "", key);
    if (!json_is_string(f)) return fd_jfail(cx, p, "expected a string, got %s", fd_jtype(f));
    return 0;
}

static const char *const roles[] = {"flash", "standard", NULL};

static int check_backend(fd_jctx *cx, const char *path, const json_t *b)
{
    char p[320];
    if (!json_is_object(b)) return fd_jfail(cx, path, "expected an object, got %s", fd_jtype(b));
    const json_t *ok = json_object_get(b, "ok");
    snprintf(p, sizeof p, "%s.ok", path);
    if (!json_is_boolean(ok)) return fd_jfail(cx, p, "expected a boolean, got %s", fd_jtype(ok));
    const json_t *role = json_object_get(b, "role");
    snprintf(p, sizeof p, "%s.role", path);
    if (role && !one_of(json_string_value(role), roles))
        return fd_jfail(cx, p, "expected \"flash\" or \"standard\", got %s", fd_jtype(role));
    if (!json_is_true(ok)) return need_string(cx, path, b, "error");
    for (int m = 0; fd_report_metrics[m]; m++) {
        double v;
        const json_t *f = json_object_get(b, fd_report_metrics[m]);
        snprintf(p, sizeof p, "%s.%s", path, fd_report_metrics[m]);
        if (json_is_null(f)) continue; /* not measured (no LSE supplied, ...) */
        if (fd_jget_rnum(cx, p, f, &v)) return -1;
    }
    static const char *const ints[] = {"elements", "nan", "inf", NULL};
    for (int i = 0; ints[i]; i++) {
        const json_t *f = json_object_get(b, ints[i]);
        snprintf(p, sizeof p, "%s.%s", path, ints[i]);
        if (!json_is_integer(f) || json_integer_value(f) < 0)
            return fd_jfail(cx, p, "expected an integer >= 0, got %s", fd_jtype(f));
    }
    const char *h = json_string_value(json_object_get(b, "output_hash"));
    snprintf(p, sizeof p, "%s.output_hash", path);
    if (!h || strlen(h) != 16 || strspn(h, "0123456789abcdef") != 16)
        return fd_jfail(cx, p, "expected 16 hex digits");
    return 0;
}

static int check_case(fd_jctx *cx, const char *path, const json_t *c)
{
    char p[320];
    if (!json_is_object(c)) return fd_jfail(cx, path, "expected a case object, got %s", fd_jtype(c));
    if (need_string(cx, path, c, "id") || need_string(cx, path, c, "dtype") ||
        need_string(cx, path, c, "mask") || need_string(cx, path, c, "verdict"))
        return -1;
    const char *v = json_string_value(json_object_get(c, "verdict"));
    snprintf(p, sizeof p, "%s.verdict", path);
    if (!one_of(v, verdicts))
        return fd_jfail(cx, p, "expected PASS, MARGINAL, FAIL, UNDECIDED or UNJUDGED, got \"%s\"", v);
    const json_t *sh = json_object_get(c, "shape");
    snprintf(p, sizeof p, "%s.shape", path);
    if (!json_is_object(sh)) return fd_jfail(cx, p, "expected an object, got %s", fd_jtype(sh));
    static const char *const dims[] = {"batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "head_dim", NULL};
    for (int i = 0; dims[i]; i++) {
        const json_t *f = json_object_get(sh, dims[i]);
        snprintf(p, sizeof p, "%s.shape.%s", path, dims[i]);
        if (!json_is_integer(f) || json_integer_value(f) < 0)
            return fd_jfail(cx, p, "expected an integer >= 0, got %s", fd_jtype(f));
    }
    double d;
    snprintf(p, sizeof p, "%s.dropout", path);
    if (fd_jget_rnum(cx, p, json_object_get(c, "dropout"), &d)) return -1;
    const json_t *ds = json_object_get(c, "dropout_stats");
    if (ds) {
        static const char *const dk[] = {"keep_rate", "keep_nominal", "keep_threshold", "z_threshold", "z_nominal", NULL};
        snprintf(p, sizeof p, "%s.dropout_stats", path);
        if (!json_is_object(ds)) return fd_jfail(cx, p, "expected an object, got %s", fd_jtype(ds));
        for (int i = 0; dk[i]; i++) {
            snprintf(p, sizeof p, "%s.dropout_stats.%s", path, dk[i]);
            if (fd_jget_rnum(cx, p, json_object_get(ds, dk[i]), &d)) return -1;
        }
    }
    const json_t *bes = json_object_get(c, "backends");
    snprintf(p, sizeof p, "%s.backends", path);
    if (!json_is_object(bes)) return fd_jfail(cx, p, "expected an object, got %s", fd_jtype(bes));
    const json_t *base = json_object_get(c, "baseline");
    if (base) {
        static const char *const origins[] = {"supplied", "computed", NULL};
        snprintf(p, sizeof p, "%s.baseline", path);
        if (!json_is_object(base)) return fd_jfail(cx, p, "expected an object {backend, origin}, got %s", fd_jtype(base));
        if (need_string(cx, p, base, "backend")) return -1;
        snprintf(p, sizeof p, "%s.baseline.origin", path);
        if (!one_of(json_string_value(json_object_get(base, "origin")), origins))
            return fd_jfail(cx, p, "expected \"supplied\" or \"computed\"");
    }
    const char *key;
    json_t *b;
    json_object_foreach((json_t *)bes, key, b) {
        snprintf(p, sizeof p, "%s.backends.%s", path, key);
        if (check_backend(cx, p, b)) return -1;
    }
    return 0;
}

typedef struct {
    const char *id;
    size_t idx;
} id_ref;

static int cmp_id_ref(const void *a, const void *b)
{
    const id_ref *x = a, *y = b;
    const int c = strcmp(x->id, y->id);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

int fd_report_validate(const char *file, const json_t *root, char *err, size_t errlen)
{
    fd_jctx cx = {file, err, errlen};
    if (!json_is_object(root))
        return fd_jfail(&cx, "(top)", "not a flashdrift report: expected an object, got %s", fd_jtype(root));
    const json_t *sv = json_object_get(root, "schema_version");
    if (!sv) {
        const char *schema = json_string_value(json_object_get(root, "schema"));
        if (schema)
            return fd_jfail(&cx, "schema_version", "not a flashdrift report (this is a \"%s\" file)", schema);
        return fd_jfail(&cx, "schema_version", "not a flashdrift report (no schema_version field)");
    }
    if (!json_is_integer(sv))
        return fd_jfail(&cx, "schema_version", "expected the integer %d, got %s", FD_REPORT_SCHEMA_VERSION, fd_jtype(sv));
    if (json_integer_value(sv) != FD_REPORT_SCHEMA_VERSION)
        return fd_jfail(&cx, "schema_version", "version %lld is not supported (this flashdrift reads %d)",
                        (long long)json_integer_value(sv), FD_REPORT_SCHEMA_VERSION);
    const char *tool = json_string_value(json_object_get(root, "tool"));
    if (!tool || strcmp(tool, "flashdrift"))
        return fd_jfail(&cx, "tool", "expected \"flashdrift\"%s%s", tool ? ", got " : "", tool ? tool : "");
    const json_t *cf = json_object_get(root, "case_file");
    if (!json_is_object(cf)) return fd_jfail(&cx, "case_file", "expected an object, got %s", fd_jtype(cf));
    if (need_string(&cx, "case_file", cf, "name")) return -1;
    const json_t *cases = json_object_get(root, "cases");
    if (!json_is_array(cases)) return fd_jfail(&cx, "cases", "expected an array, got %s", fd_jtype(cases));
    size_t i;
    json_t *c;
    json_array_foreach((json_t *)cases, i, c) {
        char p[64];
        snprintf(p, sizeof p, "cases[%zu]", i);
        if (check_case(&cx, p, c)) return -1;
    }
    /* duplicate ids by sorting (a report may hold 100,000 cases): the first case whose id
     * an earlier case has is named, with that earlier case */
    const size_t n = json_array_size(cases);
    id_ref *r = malloc(sizeof *r * (n ? n : 1));
    if (!r) return fd_jfail(&cx, "cases", "out of memory");
    for (i = 0; i < n; i++) {
        r[i].id = json_string_value(json_object_get(json_array_get(cases, i), "id"));
        r[i].idx = i;
    }
    qsort(r, n, sizeof *r, cmp_id_ref);
    size_t dup = n, first = 0;
    for (size_t a = 0, b; a < n; a = b) {
        for (b = a + 1; b < n && !strcmp(r[a].id, r[b].id); b++) {}
        if (b - a > 1 && r[a + 1].idx < dup) {
            dup = r[a + 1].idx;
            first = r[a].idx;
        }
    }
    free(r);
    if (dup < n) {
        char p[64];
        snprintf(p, sizeof p, "cases[%zu]", dup);
        return fd_jfail(&cx, p, "duplicate case id \"%s\" (also cases[%zu])",
                        json_string_value(json_object_get(json_array_get(cases, dup), "id")), first);
    }
    const json_t *complete = json_object_get(root, "complete");
    if (!json_is_boolean(complete)) return fd_jfail(&cx, "complete", "expected a boolean, got %s", fd_jtype(complete));
    return 0;
}

int fd_report_load(const char *path, json_t **out, char *err, size_t errlen)
{
    json_t *root = fd_jload(path, err, errlen);
    if (!root) return -1;
    if (fd_report_validate(path, root, err, errlen)) {
        json_decref(root);
        return -1;
    }
    *out = root;
    return 0;
}

json_t *fd_report_case_index(const json_t *report)
{
    json_t *idx = json_object();
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const char *id = json_string_value(json_object_get(c, "id"));
        if (idx && id && !json_object_get(idx, id) && json_object_set(idx, id, c)) {
            json_decref(idx);
            return NULL;
        }
    }
    return idx;
}

json_t *fd_report_find_case(const json_t *report, const char *id)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(report, "cases"), i, c)
        if (!strcmp(json_string_value(json_object_get(c, "id")), id)) return c;
    return NULL;
}

int fd_report_backend_is_flash(const char *name, const json_t *be)
{
    const char *role = json_string_value(json_object_get(be, "role"));
    if (role) return !strcmp(role, "flash");
    /* Reports written before "role": only flash backends carry fa_ratio; otherwise the
     * names: the built-in standard kernels are *-standard, and imported outputs follow
     * fd_import's rule (math, eager, standard, ref: standard; anything else: flash). */
    if (json_object_get(be, "fa_ratio")) return 1;
    static const char *const std_words[] = {"standard", "math", "eager", "ref", NULL};
    for (int i = 0; std_words[i]; i++)
        if (strstr(name, std_words[i])) return 0;
    return 1;
}
