/* fd_capture.c: see fd_capture.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fd_capture.h"
#include "fd_json.h"
#include "fd_npy.h"
#include "fd_out.h"

int fd_capture_is(const char *path)
{
    char p[1200];
    struct stat st;
    snprintf(p, sizeof p, "%s/capture.json", path);
    return !stat(path, &st) && S_ISDIR(st.st_mode) && !stat(p, &st);
}

/* "call-" and 4 to 9 digits: the only bundle names an index may give. */
static int valid_bundle_name(const char *s)
{
    if (strncmp(s, "call-", 5)) return 0;
    size_t n = 0;
    for (const char *x = s + 5; *x; x++, n++)
        if (*x < '0' || *x > '9') return 0;
    return n >= 4 && n <= 9;
}

static int get_str(fd_jctx *cx, const char *path, const json_t *j, char *out, size_t len, int required)
{
    if (!j) {
        if (required) return fd_jfail(cx, path, "required (a string)");
        out[0] = 0;
        return 0;
    }
    const char *s = json_string_value(j);
    if (!s) return fd_jfail(cx, path, "expected a string, got %s", fd_jtype(j));
    if (strlen(s) >= len) return fd_jfail(cx, path, "longer than %zu characters", len - 1);
    for (const unsigned char *x = (const unsigned char *)s; *x; x++)
        if (*x < 0x20 || *x == 0x7f) /* printed to terminals and reports: no control characters */
            return fd_jfail(cx, path, "a control character (0x%02x) in the text", *x);
    snprintf(out, len, "%s", s);
    return 0;
}

static int get_shape(fd_jctx *cx, const char *path, const json_t *j, int64_t out[4])
{
    if (!json_is_array(j) || json_array_size(j) != 4)
        return fd_jfail(cx, path, "expected an array of 4 integers (the tensor's shape in the bundle's layout)");
    for (size_t i = 0; i < 4; i++) {
        const json_t *x = json_array_get(j, i);
        if (!json_is_integer(x) || json_integer_value(x) < 1)
            return fd_jfail(cx, path, "expected an array of 4 positive integers");
        out[i] = json_integer_value(x);
    }
    return 0;
}

static int parse_call(fd_jctx *cx, const json_t *j, int i, fd_capture *c)
{
    static const char *const keys[] = {"index", "bundle", "not_captured", "module", "op", "output", "q_shape",
                                       "k_shape", "dtype", "causal", "dropout_p", NULL};
    fd_capture_call *k = &c->calls[i];
    char p[96], f[128];
    snprintf(p, sizeof p, "calls[%d]", i);
    if (!json_is_object(j)) return fd_jfail(cx, p, "expected an object, got %s", fd_jtype(j));
    if (fd_jcheck_keys(cx, p, j, keys)) return -1;
    const json_t *x = json_object_get(j, "index");
    snprintf(f, sizeof f, "%s.index", p);
    if (!json_is_integer(x) || json_integer_value(x) != i)
        return fd_jfail(cx, f, "expected %d (calls in order, numbered from 0)", i);
    k->index = i;
    snprintf(f, sizeof f, "%s.module", p);
    if (get_str(cx, f, json_object_get(j, "module"), k->module, sizeof k->module, 1)) return -1;
    snprintf(f, sizeof f, "%s.op", p);
    if (get_str(cx, f, json_object_get(j, "op"), k->op, sizeof k->op, 1)) return -1;
    x = json_object_get(j, "bundle");
    snprintf(f, sizeof f, "%s.bundle", p);
    if (!x) return fd_jfail(cx, f, "required (the bundle's directory name, or null when not captured)");
    if (json_is_null(x)) {
        snprintf(f, sizeof f, "%s.not_captured", p);
        if (get_str(cx, f, json_object_get(j, "not_captured"), k->not_captured, sizeof k->not_captured, 1))
            return -1;
        return 0;
    }
    if (get_str(cx, f, x, k->bundle, sizeof k->bundle, 1)) return -1;
    if (!valid_bundle_name(k->bundle)) return fd_jfail(cx, f, "expected call- and 4 to 9 digits");
    if (json_object_get(j, "not_captured")) {
        snprintf(f, sizeof f, "%s.not_captured", p);
        return fd_jfail(cx, f, "only for a call without a bundle");
    }
    for (int u = 0; u < i; u++)
        if (!strcmp(c->calls[u].bundle, k->bundle)) return fd_jfail(cx, f, "%s is also calls[%d]'s", k->bundle, u);
    snprintf(f, sizeof f, "%s.output", p);
    if (get_str(cx, f, json_object_get(j, "output"), k->output, sizeof k->output, 1)) return -1;
    for (const char *s = k->output; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              *s == '-'))
            return fd_jfail(cx, f, "expected letters, digits, '_' and '-' (an out_NAME of the bundle)");
    if (!k->output[0]) return fd_jfail(cx, f, "expected the NAME of the bundle's out_NAME");
    snprintf(f, sizeof f, "%s.q_shape", p);
    if (get_shape(cx, f, json_object_get(j, "q_shape"), k->q_shape)) return -1;
    snprintf(f, sizeof f, "%s.k_shape", p);
    if (get_shape(cx, f, json_object_get(j, "k_shape"), k->k_shape)) return -1;
    char dt[16];
    snprintf(f, sizeof f, "%s.dtype", p);
    if (get_str(cx, f, json_object_get(j, "dtype"), dt, sizeof dt, 1)) return -1;
    if (!strcmp(dt, "fp16")) k->dtype = FD_DT_FP16;
    else if (!strcmp(dt, "bf16")) k->dtype = FD_DT_BF16;
    else if (!strcmp(dt, "fp32")) k->dtype = FD_DT_FP32;
    else return fd_jfail(cx, f, "expected \"fp16\", \"bf16\" or \"fp32\"");
    x = json_object_get(j, "causal");
    snprintf(f, sizeof f, "%s.causal", p);
    if (x && !json_is_boolean(x)) return fd_jfail(cx, f, "expected true or false");
    x = json_object_get(j, "dropout_p");
    snprintf(f, sizeof f, "%s.dropout_p", p);
    double dp;
    if (x && fd_jget_num(cx, f, x, &dp)) return -1;
    snprintf(k->path, sizeof k->path, "%s/%s", c->path, k->bundle);
    struct stat st;
    if (stat(k->path, &st) || !S_ISDIR(st.st_mode))
        return fd_jfail(cx, p, "bundle %s is missing (no directory %s)", k->bundle, k->path);
    return 0;
}

int fd_capture_load(const char *path, fd_capture *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    snprintf(c->path, sizeof c->path, "%s", path);
    char file[1200];
    snprintf(file, sizeof file, "%s/capture.json", path);
    json_t *j = fd_jload(file, err, errlen);
    if (!j) return -1;
    fd_jctx cx = {file, err, errlen};
    static const char *const keys[] = {"format", "model", "label", "loss", "info", "calls", NULL};
    int rc = -1;
    if (!json_is_object(j)) {
        fd_jfail(&cx, "(top level)", "expected an object, got %s", fd_jtype(j));
        goto out;
    }
    if (fd_jcheck_keys(&cx, "(top level)", j, keys)) goto out;
    const char *fmt = json_string_value(json_object_get(j, "format"));
    if (!fmt || strcmp(fmt, "flashdrift-capture-1")) {
        fd_jfail(&cx, "format", "expected \"flashdrift-capture-1\"");
        goto out;
    }
    if (get_str(&cx, "model", json_object_get(j, "model"), c->model, sizeof c->model, 1) ||
        get_str(&cx, "label", json_object_get(j, "label"), c->label, sizeof c->label, 1))
        goto out;
    const json_t *l = json_object_get(j, "loss");
    if (!l) {
        fd_jfail(&cx, "loss", "required (the step's loss, a number)");
        goto out;
    }
    if (fd_jget_num(&cx, "loss", l, &c->loss)) goto out;
    const json_t *info = json_object_get(j, "info");
    if (info && !json_is_object(info)) {
        fd_jfail(&cx, "info", "expected an object, got %s", fd_jtype(info));
        goto out;
    }
    if (info) c->info = json_incref((json_t *)info);
    const json_t *calls = json_object_get(j, "calls");
    if (!json_is_array(calls) || !json_array_size(calls)) {
        fd_jfail(&cx, "calls", "expected a non-empty array of calls");
        goto out;
    }
    if (json_array_size(calls) > 100000) {
        fd_jfail(&cx, "calls", "more than 100000 calls");
        goto out;
    }
    c->ncalls = (int)json_array_size(calls);
    if (!(c->calls = calloc((size_t)c->ncalls, sizeof *c->calls))) {
        snprintf(err, errlen, "%s: out of memory", file);
        goto out;
    }
    int ncap = 0;
    for (int i = 0; i < c->ncalls; i++) {
        if (parse_call(&cx, json_array_get(calls, (size_t)i), i, c)) goto out;
        ncap += c->calls[i].bundle[0] != 0;
    }
    if (!ncap) {
        fd_jfail(&cx, "calls", "no call was captured (every bundle is null)");
        goto out;
    }
    rc = 0;
out:
    json_decref(j);
    if (rc) fd_capture_free(c);
    return rc;
}

void fd_capture_free(fd_capture *c)
{
    free(c->calls);
    c->calls = NULL;
    c->ncalls = 0;
    if (c->info) json_decref(c->info);
    c->info = NULL;
}

int fd_capture_paths(const fd_capture *c, char ***paths, int *n)
{
    *n = 0;
    if (!(*paths = calloc((size_t)c->ncalls + 1, sizeof **paths))) return -1;
    for (int i = 0; i < c->ncalls; i++) {
        if (!c->calls[i].bundle[0]) continue;
        if (!((*paths)[*n] = strdup(c->calls[i].path))) return -1;
        (*n)++;
    }
    return 0;
}

int fd_capture_check_bundle(const fd_capture *c, int i, const fd_bundle *b, char *err, size_t errlen)
{
    const fd_capture_call *k = &c->calls[i];
    const fd_problem *p = &b->prob;
    const int64_t q[4] = {p->batch, b->bhsd ? p->heads : p->seqlen_q, b->bhsd ? p->seqlen_q : p->heads, p->head_dim};
    const int64_t kk[4] = {p->batch, b->bhsd ? p->kv_heads : p->seqlen_k, b->bhsd ? p->seqlen_k : p->kv_heads,
                           p->head_dim};
    char s1[96], s2[96];
    for (int w = 0; w < 2; w++) {
        const int64_t *have = w ? kk : q, *want = w ? k->k_shape : k->q_shape;
        if (memcmp(have, want, sizeof q)) {
            fd_shape_str(4, want, s1, sizeof s1);
            fd_shape_str(4, have, s2, sizeof s2);
            snprintf(err, errlen, "%s/capture.json: calls[%d].%s is %s but %s holds %s (%s layout)", c->path, i,
                     w ? "k_shape" : "q_shape", s1, k->path, s2, b->bhsd ? "bhsd" : "bshd");
            return -1;
        }
    }
    if (k->dtype != p->dtype) {
        snprintf(err, errlen, "%s/capture.json: calls[%d].dtype is %s but %s holds %s", c->path, i,
                 fd_dtype_name(k->dtype), k->path, fd_dtype_name(p->dtype));
        return -1;
    }
    for (int t = 0; t < b->nout; t++)
        if (!strcmp(b->out[t].name, k->output)) return 0;
    snprintf(err, errlen, "%s/capture.json: calls[%d].output is %s but %s has no out_%s", c->path, i, k->output,
             k->path, k->output);
    return -1;
}

int fd_capture_call_of(const fd_capture *c, const char *id)
{
    for (int i = 0; i < c->ncalls; i++)
        if (c->calls[i].bundle[0] && !strcmp(c->calls[i].bundle, id)) return i;
    return -1;
}

const json_t *fd_capture_case(const json_t *report, const char *id)
{
    size_t i;
    json_t *cs;
    json_array_foreach(json_object_get(report, "cases"), i, cs) {
        const char *x = json_string_value(json_object_get(cs, "id"));
        if (x && !strcmp(x, id)) return cs;
    }
    return NULL;
}

const json_t *fd_capture_hypothesis(const json_t *cs)
{
    size_t i;
    json_t *h;
    json_array_foreach(json_object_get(json_object_get(cs, "explain"), "hypotheses"), i, h)
        if (json_is_true(json_object_get(h, "best")) && json_is_true(json_object_get(h, "explains"))) return h;
    return NULL;
}

const char *fd_capture_consumed(const json_t *cs)
{
    size_t i;
    json_t *u;
    const char *first = NULL;
    json_array_foreach(json_object_get(json_object_get(cs, "import"), "used"), i, u) {
        const char *l = json_string_value(json_object_get(u, "layout"));
        if (l && !strcmp(l, "heads_not_transposed")) return l;
        if (!first) first = l;
    }
    return first;
}

json_t *fd_capture_report(const fd_capture *c, const json_t *report)
{
    json_t *calls = json_array(), *mods = json_object(), *first = json_null();
    int counts[FD_NVERDICTS] = {0}, notcap = 0;
    for (int i = 0; i < c->ncalls; i++) {
        const fd_capture_call *k = &c->calls[i];
        json_t *e = json_pack("{s:i, s:s, s:s}", "index", i, "module", k->module, "op", k->op);
        const char *verdict = "NOT_MEASURED";
        const json_t *cs = k->bundle[0] ? fd_capture_case(report, k->bundle) : NULL;
        if (!k->bundle[0]) {
            notcap++;
            json_object_set_new(e, "not_measured", json_string(k->not_captured));
        } else if (!cs) {
            json_object_set_new(e, "case", json_string(k->bundle));
            json_object_set_new(e, "not_measured", json_string("not run (filtered out or interrupted)"));
        } else {
            verdict = json_string_value(json_object_get(cs, "verdict"));
            json_object_set_new(e, "case", json_string(k->bundle));
            json_object_set_new(e, "output", json_string(k->output));
            const json_t *be = json_object_get(json_object_get(cs, "backends"), k->output);
            json_object_set_new(e, "max_abs", json_deep_copy(json_object_get(be, "max_abs") ? json_object_get(be, "max_abs") : json_null()));
            json_object_set_new(e, "ratio", json_deep_copy(json_object_get(be, "fa_ratio") ? json_object_get(be, "fa_ratio") : json_null()));
            json_object_set_new(e, "gradients", json_boolean(json_object_get(be, "grad") != NULL));
            const char *ul = fd_capture_consumed(cs);
            json_object_set_new(e, "consumed", ul ? json_string(ul) : json_null());
            json_object_set_new(e, "reasons", json_deep_copy(json_object_get(cs, "reasons") ? json_object_get(cs, "reasons") : json_string("")));
            for (int v = 0; v < FD_NVERDICTS; v++)
                if (verdict && !strcmp(verdict, fd_verdict_name((fd_verdict)v))) counts[v]++;
            const int beyond = verdict && (!strcmp(verdict, "FAIL") || !strcmp(verdict, "UNJUDGED"));
            if (beyond && json_is_null(first)) {
                json_decref(first);
                const json_t *h = fd_capture_hypothesis(cs);
                first = json_pack("{s:i, s:s, s:s, s:s, s:O}", "index", i, "case", k->bundle, "module", k->module,
                                  "verdict", verdict, "reasons", json_object_get(e, "reasons"));
                if (ul && !strcmp(ul, "heads_not_transposed"))
                    json_object_set_new(first, "explanation",
                                        json_string("the attention output is exact; the model merged its heads "
                                                    "without the transpose ((b, h, s, d) reshaped to (b, s, h x d))"));
                else if (h)
                    json_object_set_new(first, "explanation",
                                        json_pack("{s:O, s:O}", "hypothesis", json_object_get(h, "name"), "what",
                                                  json_object_get(h, "what")));
                else if (json_object_get(json_object_get(cs, "explain"), "summary"))
                    json_object_set_new(first, "explanation",
                                        json_deep_copy(json_object_get(json_object_get(cs, "explain"), "summary")));
            }
        }
        json_object_set_new(e, "verdict", json_string(verdict ? verdict : "?"));
        /* per module: calls and the worst verdict */
        json_t *m = json_object_get(mods, k->module);
        if (!m) {
            m = json_pack("{s:[], s:s}", "calls", "verdict", "NOT_MEASURED");
            json_object_set_new(mods, k->module, m);
        }
        json_array_append_new(json_object_get(m, "calls"), json_integer(i));
        static const char *const rank[] = {"NOT_MEASURED", "PASS", "MARGINAL", "UNDECIDED", "UNJUDGED", "FAIL"};
        int have = 0, now = 0;
        for (int r = 0; r < 6; r++) {
            if (!strcmp(json_string_value(json_object_get(m, "verdict")), rank[r])) have = r;
            if (verdict && !strcmp(verdict, rank[r])) now = r;
        }
        if (now > have) json_object_set_new(m, "verdict", json_string(rank[now]));
        json_array_append_new(calls, e);
    }
    json_t *layers = json_array();
    const char *key;
    json_t *m;
    json_object_foreach(mods, key, m) {
        json_t *x = json_deep_copy(m);
        json_object_set_new(x, "module", json_string(key));
        json_array_append_new(layers, x);
    }
    json_decref(mods);
    json_t *tot = json_object();
    for (int v = 0; v < FD_NVERDICTS; v++)
        json_object_set_new(tot, fd_verdict_name((fd_verdict)v), json_integer(counts[v]));
    json_object_set_new(tot, "NOT_MEASURED", json_integer(notcap));
    return json_pack("{s:s, s:s, s:s, s:o, s:O, s:i, s:o, s:o, s:o, s:o}", "run", c->path, "model", c->model, "label",
                     c->label, "loss", fd_json_num(c->loss), "info", c->info ? c->info : json_null(), "calls_total",
                     c->ncalls, "verdicts", tot, "calls", calls, "layers", layers, "first_beyond_rounding", first);
}
