/* fd_gate.c: policy files and their evaluation; see fd_gate.h and docs/gate.md. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_gate.h"
#include "fd_json.h"
#include "fd_out.h"
#include "fd_report_read.h"

const char *const fd_gate_metric_names[FD_GM_N] = {"max_abs", "max_rel", "rel_l2", "max_ulp",
                                                   "p99_ulp", "lse_max_abs"};
static const char *const dtype_keys[] = {"fp16", "bf16", "fp32", "default", NULL};

static int metric_index(const char *s)
{
    for (int m = 0; m < FD_GM_N; m++)
        if (!strcmp(s, fd_gate_metric_names[m])) return m;
    return -1;
}
static int is_ulp_metric(int m) { return m == FD_GM_MAX_ULP || m == FD_GM_P99_ULP; }

static int get_nonneg(fd_jctx *cx, const char *path, const json_t *j, double *out)
{
    if (fd_jget_num(cx, path, j, out)) return -1;
    if (*out < 0) return fd_jfail(cx, path, "expected a number >= 0, got %g", *out);
    return 0;
}

static int get_bool(fd_jctx *cx, const char *path, const json_t *j, int *out)
{
    if (!json_is_boolean(j)) return fd_jfail(cx, path, "expected true or false, got %s", fd_jtype(j));
    *out = json_is_true(j);
    return 0;
}

static int parse_limits(fd_jctx *cx, const json_t *j, fd_gate_policy *p)
{
    static const char *const mk[] = {"max_abs", "max_rel", "rel_l2", "max_ulp", "p99_ulp", "lse_max_abs", NULL};
    if (!json_is_object(j)) return fd_jfail(cx, "limits", "expected an object keyed by dtype, got %s", fd_jtype(j));
    if (fd_jcheck_keys(cx, "limits", j, dtype_keys)) return -1;
    for (int t = 0; t < 4; t++) {
        const json_t *d = json_object_get(j, dtype_keys[t]);
        char path[96];
        snprintf(path, sizeof path, "limits.%s", dtype_keys[t]);
        if (!d) continue;
        if (!json_is_object(d))
            return fd_jfail(cx, path, "expected an object of metric limits {\"max_abs\": X, ...}, got %s", fd_jtype(d));
        if (fd_jcheck_keys(cx, path, d, mk)) return -1;
        for (int m = 0; m < FD_GM_N; m++) {
            const json_t *v = json_object_get(d, mk[m]);
            char mp[128];
            snprintf(mp, sizeof mp, "%s.%s", path, mk[m]);
            if (v && get_nonneg(cx, mp, v, &p->limit[t][m])) return -1;
        }
    }
    return 0;
}

static const char *const grad_keys[] = {"dq", "dk", "dv", NULL};

/* "gradients": {"limits": {DTYPE: {GRAD: {METRIC: X}}}, "fa_ratio": K | {GRAD: K}, "atol": A,
 *               "require_deterministic": B} */
static int parse_gradients(fd_jctx *cx, const json_t *j, fd_gate_policy *p)
{
    static const char *const keys[] = {"limits", "fa_ratio", "atol", "require_deterministic", NULL};
    static const char *const mk[] = {"max_abs", "max_rel", "rel_l2", "max_ulp", "p99_ulp", NULL};
    if (!json_is_object(j)) return fd_jfail(cx, "gradients", "expected an object, got %s", fd_jtype(j));
    if (fd_jcheck_keys(cx, "gradients", j, keys)) return -1;
    const json_t *f;
    if ((f = json_object_get(j, "limits"))) {
        if (!json_is_object(f)) return fd_jfail(cx, "gradients.limits", "expected an object keyed by dtype, got %s", fd_jtype(f));
        if (fd_jcheck_keys(cx, "gradients.limits", f, dtype_keys)) return -1;
        for (int t = 0; t < 4; t++) {
            const json_t *d = json_object_get(f, dtype_keys[t]);
            char path[128];
            if (!d) continue;
            snprintf(path, sizeof path, "gradients.limits.%s", dtype_keys[t]);
            if (!json_is_object(d)) return fd_jfail(cx, path, "expected {\"dq\": {...}, \"dk\": {...}, \"dv\": {...}}, got %s", fd_jtype(d));
            if (fd_jcheck_keys(cx, path, d, grad_keys)) return -1;
            for (int gi = 0; gi < 3; gi++) {
                const json_t *gm = json_object_get(d, grad_keys[gi]);
                char gp[160];
                if (!gm) continue;
                snprintf(gp, sizeof gp, "%s.%s", path, grad_keys[gi]);
                if (!json_is_object(gm)) return fd_jfail(cx, gp, "expected an object of metric limits, got %s", fd_jtype(gm));
                if (fd_jcheck_keys(cx, gp, gm, mk)) return -1;
                for (int m = 0; mk[m]; m++) {
                    const json_t *v = json_object_get(gm, mk[m]);
                    char mp[200];
                    snprintf(mp, sizeof mp, "%s.%s", gp, mk[m]);
                    if (v && get_nonneg(cx, mp, v, &p->grad_limit[t][gi][m])) return -1;
                }
            }
        }
    }
    if ((f = json_object_get(j, "fa_ratio")) && fd_jget_per_grad(cx, "gradients.fa_ratio", f, p->grad_fa_ratio))
        return -1;
    if ((f = json_object_get(j, "atol")) && get_nonneg(cx, "gradients.atol", f, &p->grad_atol)) return -1;
    if ((f = json_object_get(j, "require_deterministic")) &&
        get_bool(cx, "gradients.require_deterministic", f, &p->require_deterministic))
        return -1;
    return 0;
}

static int parse_backends(fd_jctx *cx, const json_t *j, fd_gate_policy *p)
{
    const char *s = json_string_value(j);
    if (s && !strcmp(s, "flash")) return 0;
    if (s && !strcmp(s, "all")) {
        p->apply_all = 1;
        return 0;
    }
    if (!json_is_array(j) || !json_array_size(j))
        return fd_jfail(cx, "backends", "expected \"flash\", \"all\" or a non-empty list of backend names");
    size_t i;
    json_t *e;
    json_array_foreach((json_t *)j, i, e) {
        char path[64];
        snprintf(path, sizeof path, "backends[%zu]", i);
        const char *n = json_string_value(e);
        if (!n || !*n || strchr(n, ','))
            return fd_jfail(cx, path, "expected a backend name such as \"cpu-flash\", got %s", fd_jtype(e));
        if (strlen(p->backends) + strlen(n) + 2 >= sizeof p->backends)
            return fd_jfail(cx, path, "too many backends");
        if (*p->backends) strcat(p->backends, ",");
        strcat(p->backends, n);
    }
    return 0;
}

static int parse_baseline(fd_jctx *cx, const json_t *j, fd_gate_policy *p)
{
    static const char *const keys[] = {"metrics", "factor", "abs", "ulps", "missing_cases", NULL};
    if (!json_is_object(j)) return fd_jfail(cx, "baseline", "expected an object, got %s", fd_jtype(j));
    if (fd_jcheck_keys(cx, "baseline", j, keys)) return -1;
    p->base_on = 1;
    const json_t *f = json_object_get(j, "metrics");
    if (!json_is_array(f) || !json_array_size(f))
        return fd_jfail(cx, "baseline.metrics", "expected a non-empty list of metric names (max_abs, max_rel, rel_l2, max_ulp, p99_ulp, lse_max_abs)");
    size_t i;
    json_t *e;
    json_array_foreach((json_t *)f, i, e) {
        char path[64];
        snprintf(path, sizeof path, "baseline.metrics[%zu]", i);
        const char *s = json_string_value(e);
        /* a gradient's metric: "dq.max_abs" (no LSE for gradients) */
        int gi = 0;
        for (int t = 0; s && t < 3; t++)
            if (!strncmp(s, grad_keys[t], 2) && s[2] == '.') gi = t + 1;
        int m = s ? metric_index(gi ? s + 3 : s) : -1;
        if (m < 0 || (gi && m == FD_GM_LSE_MAX_ABS))
            return fd_jfail(cx, path, "expected one of max_abs, max_rel, rel_l2, max_ulp, p99_ulp, lse_max_abs, or a "
                            "gradient's dq.NAME, dk.NAME, dv.NAME (no lse_max_abs)%s%s", s ? ", got " : "", s ? s : "");
        p->base_metric[gi][m] = 1;
    }
    if ((f = json_object_get(j, "factor"))) {
        if (fd_jget_num(cx, "baseline.factor", f, &p->base_factor)) return -1;
        if (p->base_factor < 1.0)
            return fd_jfail(cx, "baseline.factor", "expected a number >= 1 (1 = no worse than the baseline), got %g", p->base_factor);
    }
    if ((f = json_object_get(j, "abs")) && get_nonneg(cx, "baseline.abs", f, &p->base_abs)) return -1;
    if ((f = json_object_get(j, "ulps")) && get_nonneg(cx, "baseline.ulps", f, &p->base_ulps)) return -1;
    if (p->base_factor < 0 && p->base_ulps < 0)
        return fd_jfail(cx, "baseline", "expected \"factor\" and/or \"ulps\" (how much worse a case may get)");
    int ulp_any = 0, other_any = 0;
    for (int gi = 0; gi < 4; gi++)
        for (int m = 0; m < FD_GM_N; m++) {
            if (!p->base_metric[gi][m]) continue;
            if (is_ulp_metric(m)) ulp_any = 1;
            else other_any = 1;
        }
    if (other_any && p->base_factor < 0)
        return fd_jfail(cx, "baseline", "\"ulps\" only covers max_ulp and p99_ulp: the other metrics listed need \"factor\"");
    (void)ulp_any;
    if ((f = json_object_get(j, "missing_cases"))) {
        const char *s = json_string_value(f);
        if (s && !strcmp(s, "fail")) p->base_missing_fails = 1;
        else if (!(s && !strcmp(s, "ignore")))
            return fd_jfail(cx, "baseline.missing_cases", "expected \"ignore\" or \"fail\"");
    }
    return 0;
}

int fd_gate_policy_parse(const char *file, const json_t *root, fd_gate_policy *p, char *err, size_t errlen)
{
    static const char *const keys[] = {"schema", "description", "backends", "limits", "gradients", "fa_rule", "marginal",
                                       "fail_on_marginal", "fail_on_undecided", "dropout", "baseline", "fail_on_bias", NULL};
    fd_jctx cx = {file, err, errlen};
    memset(p, 0, sizeof *p);
    snprintf(p->path, sizeof p->path, "%s", file);
    for (int t = 0; t < 4; t++)
        for (int m = 0; m < FD_GM_N; m++) {
            p->limit[t][m] = -1.0;
            for (int gi = 0; gi < 3; gi++) p->grad_limit[t][gi][m] = -1.0;
        }
    p->marginal = 1.0;
    p->base_factor = -1.0;
    p->base_ulps = -1.0;
    if (!json_is_object(root)) return fd_jfail(&cx, "(top)", "expected an object, got %s", fd_jtype(root));
    const json_t *f = json_object_get(root, "schema");
    if (!json_is_string(f) || strcmp(json_string_value(f), "flashdrift-policy/1"))
        return fd_jfail(&cx, "schema", "expected \"flashdrift-policy/1\"%s", json_object_get(root, "schema_version")
                        ? " (this looks like a report, not a policy)" : "");
    if (fd_jcheck_keys(&cx, "(top)", root, keys)) return -1;
    if ((f = json_object_get(root, "description"))) {
        if (!json_is_string(f)) return fd_jfail(&cx, "description", "expected a string, got %s", fd_jtype(f));
        snprintf(p->description, sizeof p->description, "%s", json_string_value(f));
    }
    if ((f = json_object_get(root, "backends")) && parse_backends(&cx, f, p)) return -1;
    if ((f = json_object_get(root, "limits")) && parse_limits(&cx, f, p)) return -1;
    if ((f = json_object_get(root, "fa_rule"))) {
        static const char *const fk[] = {"fa_ratio", "atol", NULL};
        if (!json_is_object(f)) return fd_jfail(&cx, "fa_rule", "expected {\"fa_ratio\": K, \"atol\": A}, got %s", fd_jtype(f));
        if (fd_jcheck_keys(&cx, "fa_rule", f, fk)) return -1;
        const json_t *r = json_object_get(f, "fa_ratio");
        if (!r) return fd_jfail(&cx, "fa_rule.fa_ratio", "required: flash error <= fa_ratio x standard's + atol");
        if (fd_jget_num(&cx, "fa_rule.fa_ratio", r, &p->fa_ratio)) return -1;
        if (p->fa_ratio <= 0) return fd_jfail(&cx, "fa_rule.fa_ratio", "expected a positive number, got %g", p->fa_ratio);
        if ((r = json_object_get(f, "atol")) && get_nonneg(&cx, "fa_rule.atol", r, &p->fa_atol)) return -1;
    }
    if ((f = json_object_get(root, "marginal"))) {
        if (fd_jget_num(&cx, "marginal", f, &p->marginal)) return -1;
        if (!(p->marginal > 0 && p->marginal <= 1))
            return fd_jfail(&cx, "marginal", "expected a number in (0, 1] (fraction of a limit above which a case is MARGINAL), got %g", p->marginal);
    }
    if ((f = json_object_get(root, "fail_on_marginal")) && get_bool(&cx, "fail_on_marginal", f, &p->fail_on_marginal)) return -1;
    if ((f = json_object_get(root, "fail_on_undecided")) && get_bool(&cx, "fail_on_undecided", f, &p->fail_on_undecided)) return -1;
    if ((f = json_object_get(root, "fail_on_bias")) && get_bool(&cx, "fail_on_bias", f, &p->fail_on_bias)) return -1;
    if ((f = json_object_get(root, "dropout"))) {
        static const char *const dk[] = {"keep_sigma", "against", NULL};
        if (!json_is_object(f)) return fd_jfail(&cx, "dropout", "expected {\"keep_sigma\": S, \"against\": \"threshold\"}, got %s", fd_jtype(f));
        if (fd_jcheck_keys(&cx, "dropout", f, dk)) return -1;
        const json_t *r = json_object_get(f, "keep_sigma");
        if (!r) return fd_jfail(&cx, "dropout.keep_sigma", "required: allowed |z| of the keep rate");
        if (fd_jget_num(&cx, "dropout.keep_sigma", r, &p->keep_sigma)) return -1;
        if (p->keep_sigma <= 0) return fd_jfail(&cx, "dropout.keep_sigma", "expected a positive number, got %g", p->keep_sigma);
        if ((r = json_object_get(f, "against"))) {
            const char *s = json_string_value(r);
            if (s && !strcmp(s, "nominal")) p->keep_nominal = 1;
            else if (!(s && !strcmp(s, "threshold")))
                return fd_jfail(&cx, "dropout.against", "expected \"threshold\" ((floor((1-p)*255)+1)/256) or \"nominal\" (1-p)");
        }
    }
    if ((f = json_object_get(root, "baseline")) && parse_baseline(&cx, f, p)) return -1;
    if ((f = json_object_get(root, "gradients")) && parse_gradients(&cx, f, p)) return -1;
    return 0;
}

int fd_gate_policy_load(const char *path, fd_gate_policy *p, char *err, size_t errlen)
{
    json_t *root = fd_jload(path, err, errlen);
    if (!root) return -1;
    int rc = fd_gate_policy_parse(path, root, p, err, errlen);
    json_decref(root);
    return rc;
}

int fd_gate_backend_gated(const fd_gate_policy *p, const char *name, const json_t *be)
{
    if (*p->backends) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", p->backends);
        char *save = NULL;
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
            if (!strcmp(t, name)) return 1;
        return 0;
    }
    return p->apply_all || fd_report_backend_is_flash(name, be);
}

/* Does some case of the report have a result of backend name? */
static int in_report(const json_t *report, const char *name)
{
    size_t i;
    const json_t *c;
    json_array_foreach(json_object_get(report, "cases"), i, c)
        if (json_object_get(json_object_get(c, "backends"), name)) return 1;
    return 0;
}

int fd_gate_check_backends(const fd_gate_policy *p, const json_t *report, char *err, size_t errlen)
{
    char want[256];
    snprintf(want, sizeof want, "%s", p->backends);
    char *save = NULL;
    for (char *t = strtok_r(want, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (in_report(report, t)) continue;
        /* the names the report has, each once, in first-seen order */
        char have[512] = "";
        size_t i;
        const json_t *c;
        json_array_foreach(json_object_get(report, "cases"), i, c) {
            const char *key;
            json_t *b;
            json_object_foreach(json_object_get(c, "backends"), key, b) {
                int seen = 0;
                for (size_t k = 0; k < i && !seen; k++)
                    seen = json_object_get(json_object_get(json_array_get(json_object_get(report, "cases"), k), "backends"), key) != NULL;
                if (seen) continue;
                if (*have) strncat(have, ", ", sizeof have - strlen(have) - 1);
                strncat(have, key, sizeof have - strlen(have) - 1);
            }
        }
        snprintf(err, errlen, "%s: policy names backend %s, which is not in the report (has: %s)", p->path, t,
                 *have ? have : "no backend");
        return -1;
    }
    return 0;
}

static void worsen(fd_verdict *v, fd_verdict w)
{
    static const int rank[] = {0, 1, 3, 2}; /* FAIL > UNDECIDED > MARGINAL > PASS */
    if (rank[w] > rank[*v]) *v = w;
}

static int add_item(fd_gate_result *g, int ci, const char *be, const char *metric, double value,
                    double limit, fd_verdict level, const char *fmt, ...)
{
    if (g->nitems == g->cap) {
        int nc = g->cap ? 2 * g->cap : 64;
        fd_gate_item *n = realloc(g->items, sizeof *n * (size_t)nc);
        if (!n) return -1;
        g->items = n;
        g->cap = nc;
    }
    fd_gate_item *it = &g->items[g->nitems++];
    memset(it, 0, sizeof *it);
    it->case_idx = ci;
    snprintf(it->backend, sizeof it->backend, "%s", be);
    snprintf(it->metric, sizeof it->metric, "%s", metric);
    it->value = value;
    it->limit = limit;
    it->level = level;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(it->text, sizeof it->text, fmt, ap);
    va_end(ap);
    return 0;
}

static int dtype_index(const char *s)
{
    /* FP8 inputs write bf16 outputs: their limits are bf16's (fd_out_dtype) */
    if (s && (!strcmp(s, "e4m3") || !strcmp(s, "e5m2"))) return 1;
    for (int t = 0; t < 3; t++)
        if (!strcmp(s, dtype_keys[t])) return t;
    return 3;
}

/* The standard output FlashAttention's rule compares a flash backend with: the case's
 * "baseline" backend when the report names one (supplied or computed by the harness),
 * else the standard backend of name's family (the part before the first '-'), else the
 * case's only standard output (imported outputs: "flash" beside "math"). */
static const json_t *standard_of(const char *name, const json_t *c)
{
    const json_t *bes = json_object_get(c, "backends");
    const char *bn = json_string_value(json_object_get(json_object_get(c, "baseline"), "backend"));
    const json_t *b = bn && strcmp(bn, name) ? json_object_get(bes, bn) : NULL;
    if (b && json_is_true(json_object_get(b, "ok"))) return b;
    size_t fl = strcspn(name, "-");
    const char *key;
    const json_t *only = NULL;
    int nstd = 0;
    json_object_foreach((json_t *)bes, key, b) {
        if (fd_report_backend_is_flash(key, b) || !json_is_true(json_object_get(b, "ok"))) continue;
        if (name[fl] == '-' && !strncmp(key, name, fl) && key[fl] == '-') return b;
        only = b;
        nstd++;
    }
    return nstd == 1 ? only : NULL;
}

/* A metric's value: 0 when it was not measured (null; or, in reports written before null,
 * the string "nan" on a backend whose outputs are all finite: a NaN there can only mean
 * "no data", such as no LSE supplied). */
static int measured(const json_t *b, const char *metric, double *x)
{
    const json_t *j = json_object_get(b, metric);
    if (!j || json_is_null(j)) return 0;
    *x = fd_json_number(j);
    if (isnan(*x) && !json_integer_value(json_object_get(b, "nan")) && !json_integer_value(json_object_get(b, "inf")))
        return 0;
    return 1;
}

static void note_backend(fd_gate_result *g, const char *name)
{
    for (int i = 0; i < g->nbackends; i++)
        if (!strcmp(g->backends[i], name)) return;
    if (g->nbackends < 8) snprintf(g->backends[g->nbackends++], sizeof g->backends[0], "%s", name);
}

static void add_word(char *buf, size_t len, const char *w)
{
    if (*buf) strncat(buf, ", ", len - strlen(buf) - 1);
    strncat(buf, w, len - strlen(buf) - 1);
}

#define TRY(x) do { if ((x)) goto oom; } while (0)

/* The gradient rules of a backward case (the backend's "grad" object): limits, the FA rule
 * against the same standard backend as the output's, determinism. Gradients that were not
 * measured are named in unmeasured and judged by nothing. */
static int eval_gradients(const fd_gate_policy *p, fd_gate_result *g, int ci, const json_t *c, const char *name,
                          const json_t *b, int t, fd_verdict *v, int *nrules, int *nmeasured, char *unmeasured,
                          size_t ulen)
{
    const json_t *gr = json_object_get(b, "grad");
    if (!json_is_object(gr)) return 0;
    const int flash = fd_report_backend_is_flash(name, b);
    const int measured_g = json_is_true(json_object_get(gr, "measured"));
    const char *mode = json_string_value(json_object_get(json_object_get(c, "backward"), "dq_mode"));
    for (int gi = 0; gi < 3; gi++) {
        const json_t *e = measured_g ? json_object_get(gr, grad_keys[gi]) : NULL;
        /* the standard gradients the run compared with (a computed one when the standard
         * output came without gradients), else the output's standard */
        const char *fb = json_string_value(json_object_get(e, "fa_baseline"));
        const json_t *s = !flash ? NULL : fb ? json_object_get(json_object_get(c, "backends"), fb) : standard_of(name, c);
        const json_t *sg = s ? json_object_get(s, "grad") : NULL;
        for (int m = 0; m < FD_GM_N; m++) {
            const double lim = p->grad_limit[t][gi][m] >= 0 ? p->grad_limit[t][gi][m] : p->grad_limit[3][gi][m];
            double x;
            char mname[32];
            if (lim < 0) continue;
            (*nrules)++;
            snprintf(mname, sizeof mname, "%s.%s", grad_keys[gi], fd_gate_metric_names[m]);
            if (!e || !measured(e, fd_gate_metric_names[m], &x)) {
                add_word(unmeasured, ulen, mname);
                continue;
            }
            (*nmeasured)++;
            if (!(x <= lim)) {
                worsen(v, FD_FAIL);
                TRY(add_item(g, ci, name, mname, x, lim, FD_FAIL, "%s %s %.4g > %.4g", name, mname, x, lim));
            } else if (x > p->marginal * lim) {
                worsen(v, FD_MARGINAL);
                TRY(add_item(g, ci, name, mname, x, lim, FD_MARGINAL, "%s %s %.4g above %g of the limit %.4g", name,
                             mname, x, p->marginal, lim));
            }
        }
        if (flash && p->grad_fa_ratio[gi] > 0) {
            const json_t *se = json_is_true(json_object_get(sg, "measured")) ? json_object_get(sg, grad_keys[gi]) : NULL;
            double sx, x;
            char mname[32];
            snprintf(mname, sizeof mname, "%s.fa_rule", grad_keys[gi]);
            (*nrules)++;
            if (!e || !se || !measured(se, "max_abs", &sx) || !measured(e, "max_abs", &x)) {
                add_word(unmeasured, ulen, mname);
            } else {
                (*nmeasured)++;
                const double lim = p->grad_fa_ratio[gi] * sx + p->grad_atol;
                if (!(x <= lim)) {
                    worsen(v, FD_FAIL);
                    TRY(add_item(g, ci, name, mname, x, lim, FD_FAIL,
                                 "%s %s max_abs %.4g > %g x standard %.4g + %g = %.4g (FlashAttention rule)", name,
                                 grad_keys[gi], x, p->grad_fa_ratio[gi], sx, p->grad_atol, lim));
                } else if (x > p->marginal * lim) {
                    worsen(v, FD_MARGINAL);
                    TRY(add_item(g, ci, name, mname, x, lim, FD_MARGINAL,
                                 "%s %s max_abs %.4g above %g of the FlashAttention limit %.4g", name, grad_keys[gi],
                                 x, p->marginal, lim));
                }
            }
        }
        /* the run's determinism rule: dK, dV and a deterministic dQ have no atomics */
        const json_t *rep = e ? json_object_get(e, "repeat") : NULL;
        if (rep && json_is_false(json_object_get(rep, "identical")) &&
            (p->require_deterministic || gi > 0 || !flash || (mode && !strcmp(mode, "deterministic")))) {
            char mname[32];
            snprintf(mname, sizeof mname, "%s.determinism", grad_keys[gi]);
            worsen(v, FD_FAIL);
            TRY(add_item(g, ci, name, mname, (double)json_integer_value(json_object_get(rep, "distinct")), 1, FD_FAIL,
                         "%s %s not deterministic: %lld distinct over %lld runs, up to %.3g ulps apart", name,
                         grad_keys[gi], (long long)json_integer_value(json_object_get(rep, "distinct")),
                         (long long)json_integer_value(json_object_get(rep, "runs")),
                         fd_json_number(json_object_get(rep, "max_ulp_spread"))));
        }
    }
    return 0;
oom:
    return -1;
}

static int eval_backend(const fd_gate_policy *p, fd_gate_result *g, int ci, const json_t *c,
                        const char *name, const json_t *b, const json_t *base_case, fd_verdict *v)
{
    const char *dt = json_string_value(json_object_get(c, "dtype"));
    const int t = dtype_index(dt);
    if (!json_is_true(json_object_get(b, "ok"))) {
        worsen(v, FD_FAIL);
        return add_item(g, ci, name, "error", NAN, NAN, FD_FAIL, "%s failed: %s", name,
                        json_string_value(json_object_get(b, "error")));
    }
    const json_int_t nn = json_integer_value(json_object_get(b, "nan")), ni = json_integer_value(json_object_get(b, "inf"));
    if (nn || ni) {
        worsen(v, FD_FAIL);
        TRY(add_item(g, ci, name, "nonfinite", (double)(nn + ni), 0, FD_FAIL,
                     "%s %lld NaN and %lld Inf outputs", name, (long long)nn, (long long)ni));
    }
    /* Rules that apply to this backend, and those whose numbers were measured: a backend
     * none of whose rules could be measured is not judged, so it does not pass. */
    int nrules = 0, nmeasured = 0;
    char unmeasured[160] = "";
    for (int m = 0; m < FD_GM_N; m++) {
        double lim = p->limit[t][m] >= 0 ? p->limit[t][m] : p->limit[3][m];
        if (lim < 0) continue;
        double x;
        nrules++;
        if (!measured(b, fd_gate_metric_names[m], &x)) {
            add_word(unmeasured, sizeof unmeasured, fd_gate_metric_names[m]);
            continue;
        }
        nmeasured++;
        const char *src = p->limit[t][m] < 0 ? "default" : t < 3 && strcmp(dt, dtype_keys[t]) ? "bf16 (FP8 output)" : dt;
        if (!(x <= lim)) {
            worsen(v, FD_FAIL);
            TRY(add_item(g, ci, name, fd_gate_metric_names[m], x, lim, FD_FAIL, "%s %s %.4g > %.4g (%s limit)",
                         name, fd_gate_metric_names[m], x, lim, src));
        } else if (x > p->marginal * lim) {
            worsen(v, FD_MARGINAL);
            TRY(add_item(g, ci, name, fd_gate_metric_names[m], x, lim, FD_MARGINAL,
                         "%s %s %.4g above %g of the %s limit %.4g", name, fd_gate_metric_names[m], x,
                         p->marginal, src, lim));
        }
    }
    if (p->fa_ratio > 0 && fd_report_backend_is_flash(name, b)) {
        const json_t *s = standard_of(name, c);
        double se, x;
        nrules++;
        if (!s || !measured(s, "max_abs", &se) || !measured(b, "max_abs", &x)) {
            add_word(unmeasured, sizeof unmeasured, "FlashAttention's rule (no standard output)");
        } else {
            nmeasured++;
            const double lim = p->fa_ratio * se + p->fa_atol;
            if (!(x <= lim)) {
                worsen(v, FD_FAIL);
                TRY(add_item(g, ci, name, "fa_rule", x, lim, FD_FAIL,
                             "%s max_abs %.4g > %g x standard %.4g + %g = %.4g (FlashAttention rule)", name, x,
                             p->fa_ratio, se, p->fa_atol, lim));
            } else if (x > p->marginal * lim) {
                worsen(v, FD_MARGINAL);
                TRY(add_item(g, ci, name, "fa_rule", x, lim, FD_MARGINAL,
                             "%s max_abs %.4g above %g of the FlashAttention limit %.4g", name, x, p->marginal, lim));
            }
        }
    }
    /* the bias stage: reported; a failure only under fail_on_bias (not measured: nothing) */
    const json_t *z = json_object_get(b, "bias");
    if (p->fail_on_bias && fd_report_backend_is_flash(name, b) && json_is_true(json_object_get(z, "measured")) &&
        json_is_string(json_object_get(z, "verdict")) && !strcmp(json_string_value(json_object_get(z, "verdict")), "biased")) {
        const double zc = fd_json_number(json_object_get(z, "worst_column_z"));
        const double zr = fd_json_number(json_object_get(z, "worst_row_z"));
        const double th = fd_json_number(json_object_get(z, "threshold"));
        const double w = fabs(zc) > fabs(zr) ? zc : zr;
        worsen(v, FD_FAIL);
        TRY(add_item(g, ci, name, "bias", w, th, FD_FAIL,
                     "%s biased: t %.3g (column %lld: %.3g, row %lld: %.3g) beyond %.3g over %lld seeds, mean/rms %.3g",
                     name, w, (long long)json_integer_value(json_object_get(z, "worst_column")), zc,
                     (long long)json_integer_value(json_object_get(z, "worst_row")), zr, th,
                     (long long)json_integer_value(json_object_get(z, "seeds")),
                     fd_json_number(json_object_get(z, "mean_over_rms"))));
    }
    const json_t *rep = json_object_get(b, "repeat");
    if (rep && json_is_false(json_object_get(rep, "identical"))) {
        const size_t nh = json_array_size(json_object_get(rep, "hashes"));
        const json_int_t runs = json_integer_value(json_object_get(rep, "runs"));
        worsen(v, FD_FAIL);
        TRY(add_item(g, ci, name, "determinism", (double)nh, 1, FD_FAIL,
                     "%s not deterministic: %zu distinct output hashes over %lld runs", name, nh, (long long)runs));
    }
    if (p->base_on && base_case) {
        const json_t *bb = json_object_get(json_object_get(base_case, "backends"), name);
        if (bb && json_is_true(json_object_get(bb, "ok"))) {
            for (int k = 0; k < 4 * FD_GM_N; k++) {
                const int gi = k / FD_GM_N, m = k % FD_GM_N;
                if (!p->base_metric[gi][m]) continue;
                /* a gradient's metric where both runs measured the gradients */
                const json_t *eb = gi ? json_object_get(json_object_get(bb, "grad"), grad_keys[gi - 1]) : bb;
                const json_t *ec = gi ? json_object_get(json_object_get(b, "grad"), grad_keys[gi - 1]) : b;
                char mname[32];
                snprintf(mname, sizeof mname, "%s%s%s", gi ? grad_keys[gi - 1] : "", gi ? "." : "", fd_gate_metric_names[m]);
                double x0, x;
                if (!eb || !ec || !measured(eb, fd_gate_metric_names[m], &x0) || !measured(ec, fd_gate_metric_names[m], &x)) continue;
                double lim = -1.0;
                if (p->base_factor >= 0) lim = p->base_factor * x0 + p->base_abs;
                if (p->base_ulps >= 0 && is_ulp_metric(m) && x0 + p->base_ulps > lim) lim = x0 + p->base_ulps;
                if (lim < 0 || isnan(x0)) continue;
                nrules++;
                nmeasured++;
                if (!(x <= lim)) {
                    worsen(v, FD_FAIL);
                    TRY(add_item(g, ci, name, mname, x, lim, FD_FAIL,
                                 "%s %s %.4g > %.4g (baseline %.4g: worse than allowed)", name, mname, x, lim, x0));
                }
            }
        }
    }
    if (eval_gradients(p, g, ci, c, name, b, t, v, &nrules, &nmeasured, unmeasured, sizeof unmeasured)) goto oom;
    if (nrules && !nmeasured) {
        worsen(v, FD_FAIL);
        TRY(add_item(g, ci, name, "unjudged", NAN, NAN, FD_FAIL, "%s not judged: no rule of the policy could be "
                     "measured (not measured: %s)", name, unmeasured));
    }
    return 0;
oom:
    return -1;
}

/* A standard output someone else supplied (imported eager attention): the run judged it
 * by its standard rule (docs/import.md); the gate holds it to that rule's limit, for the
 * output and each gradient, as the report records them. */
static int supplied_standard(const json_t *b)
{
    const char *role = json_string_value(json_object_get(b, "role"));
    const char *origin = json_string_value(json_object_get(b, "origin"));
    return role && origin && !strcmp(role, "standard") && !strcmp(origin, "given") && json_object_get(b, "fa_limit");
}

static int eval_standard_rule(fd_gate_result *g, int ci, const char *name, const json_t *b, fd_verdict *v)
{
    static const char *const parts[] = {NULL, "dq", "dk", "dv"};
    for (int i = 0; i < 4; i++) {
        const json_t *m = parts[i] ? json_object_get(json_object_get(b, "grad"), parts[i]) : b;
        if (!m || !json_object_get(m, "fa_limit")) continue;
        const double x = fd_json_number(json_object_get(m, "max_abs"));
        const double lim = fd_json_number(json_object_get(m, "fa_limit"));
        char metric[40];
        snprintf(metric, sizeof metric, "%s%sstandard_rule", parts[i] ? parts[i] : "", parts[i] ? "." : "");
        if (!(x <= lim)) {
            worsen(v, FD_FAIL);
            if (add_item(g, ci, name, metric, x, lim, FD_FAIL, "%s%s%s max_abs %.3g > %.3g (the run's standard rule "
                         "against the computed standard)", name, parts[i] ? " " : "", parts[i] ? parts[i] : "", x, lim))
                return -1;
        }
    }
    return 0;
}

int fd_gate_eval(const fd_gate_policy *p, const json_t *report, const json_t *baseline,
                 fd_gate_result *g, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    g->report = report;
    const json_t *cases = json_object_get(report, "cases");
    g->ncases = (int)json_array_size(cases);
    g->verdict = calloc((size_t)(g->ncases ? g->ncases : 1), sizeof *g->verdict);
    /* indexes: each case is looked up in the other report once, not by a scan */
    json_t *base_idx = baseline ? fd_report_case_index(baseline) : NULL;
    json_t *rep_idx = baseline ? fd_report_case_index(report) : NULL;
    if (!g->verdict || (baseline && (!base_idx || !rep_idx))) goto oom;
    for (int ci = 0; ci < g->ncases; ci++) {
        const json_t *c = json_array_get(cases, (size_t)ci);
        const char *id = json_string_value(json_object_get(c, "id"));
        const json_t *base_case = baseline ? json_object_get(base_idx, id) : NULL;
        if (baseline && !base_case) g->baseline_new++;
        fd_verdict v = FD_PASS;
        const char *key;
        json_t *b;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            if (fd_gate_backend_gated(p, key, b)) {
                note_backend(g, key);
                if (eval_backend(p, g, ci, c, key, b, base_case, &v)) goto oom;
            } else if (!*p->backends && supplied_standard(b)) {
                note_backend(g, key);
                if (eval_standard_rule(g, ci, key, b, &v)) goto oom;
            }
        }
        /* An output the model consumed in the wrong layout (a capture's used_NAME): the
         * run's finding, whatever the metrics of the attention output itself. */
        size_t ui;
        json_t *u;
        json_array_foreach(json_object_get(json_object_get(c, "import"), "used"), ui, u) {
            const char *lay = json_string_value(json_object_get(u, "layout"));
            if (!lay || strcmp(lay, "heads_not_transposed")) continue;
            worsen(&v, FD_FAIL);
            if (add_item(g, ci, json_string_value(json_object_get(u, "output")), "consumed", NAN, NAN, FD_FAIL,
                         "output consumed with its heads merged without the transpose (used_%s)",
                         json_string_value(json_object_get(u, "output"))))
                goto oom;
        }
        /* The run could apply no rule at all (no standard output, no reference): a failure. */
        if (!strcmp(json_string_value(json_object_get(c, "verdict")), "UNJUDGED")) {
            const char *why = json_string_value(json_object_get(c, "reasons"));
            worsen(&v, FD_FAIL);
            if (add_item(g, ci, "", "unjudged", NAN, NAN, FD_FAIL, "UNJUDGED by the run: %s",
                         why && *why ? why : "no rule could be applied"))
                goto oom;
        }
        const json_t *ds = json_object_get(c, "dropout_stats");
        if (p->keep_sigma > 0 && ds && json_integer_value(json_object_get(ds, "total")) > 0) {
            const double z = fd_json_number(json_object_get(ds, p->keep_nominal ? "z_nominal" : "z_threshold"));
            const double kr = fd_json_number(json_object_get(ds, "keep_rate"));
            const double kp = fd_json_number(json_object_get(ds, p->keep_nominal ? "keep_nominal" : "keep_threshold"));
            const char *what = p->keep_nominal ? "1 - p" : "the byte threshold's";
            if (!(fabs(z) <= p->keep_sigma)) {
                worsen(&v, FD_FAIL);
                if (add_item(g, ci, "", "keep_rate", fabs(z), p->keep_sigma, FD_FAIL,
                             "keep rate %.5f is %.2f sigma from %s %.5f (limit %g sigma)", kr, z, what, kp, p->keep_sigma))
                    goto oom;
            } else if (fabs(z) > p->marginal * p->keep_sigma) {
                worsen(&v, FD_MARGINAL);
                if (add_item(g, ci, "", "keep_rate", fabs(z), p->keep_sigma, FD_MARGINAL,
                             "keep rate %.5f is %.2f sigma from %s %.5f (above %g of %g sigma)", kr, z, what, kp,
                             p->marginal, p->keep_sigma))
                    goto oom;
            }
        }
        const json_int_t und = json_integer_value(json_object_get(json_object_get(c, "reference"), "undecided"));
        if (und > 0) {
            const fd_verdict l = p->fail_on_undecided ? FD_FAIL : FD_UNDECIDED;
            worsen(&v, l);
            if (add_item(g, ci, "", "reference", (double)und, 0, l, "reference undecided for %lld values", (long long)und))
                goto oom;
        }
        if (v == FD_MARGINAL && p->fail_on_marginal) v = FD_FAIL;
        g->verdict[ci] = v;
        g->npass += v == FD_PASS;
        g->nmarginal += v == FD_MARGINAL;
        g->nfail += v == FD_FAIL;
        g->nundecided += v == FD_UNDECIDED;
    }
    if (baseline) {
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(baseline, "cases"), i, c) {
            const char *id = json_string_value(json_object_get(c, "id"));
            if (json_object_get(rep_idx, id)) continue;
            g->baseline_missing++;
            if (add_item(g, -1, "", "missing", 0, 0, p->base_missing_fails ? FD_FAIL : FD_MARGINAL,
                         "baseline case %s is not in the report", id))
                goto oom;
        }
    }
    g->nmissing_fail = p->base_missing_fails ? g->baseline_missing : 0;
    g->failed = g->nfail > 0 || g->nmissing_fail > 0;
    json_decref(base_idx);
    json_decref(rep_idx);
    return 0;
oom:
    json_decref(base_idx);
    json_decref(rep_idx);
    snprintf(err, errlen, "out of memory evaluating the policy");
    fd_gate_result_free(g);
    return -1;
}

void fd_gate_result_free(fd_gate_result *g)
{
    free(g->verdict);
    free(g->items);
    g->verdict = NULL;
    g->items = NULL;
    g->nitems = g->cap = 0;
}

static json_t *item_json(const fd_gate_item *it)
{
    return json_pack("{s:s, s:s, s:o, s:o, s:s, s:s}", "backend", it->backend, "metric", it->metric, "value",
                     fd_json_num(it->value), "limit", fd_json_num(it->limit), "level", fd_verdict_name(it->level),
                     "text", it->text);
}

json_t *fd_gate_model(const fd_gate_result *g, const fd_gate_policy *p, const char *baseline_path)
{
    const json_t *rcases = json_object_get(g->report, "cases");
    json_t *cases = json_array(), *missing = json_array(), *backends = json_array();
    for (int ci = 0; ci < g->ncases; ci++) {
        json_t *items = json_array();
        /* items are added case by case, so each case's keep the order of fd_gate_eval's list */
        for (int k = 0; k < g->nitems; k++)
            if (g->items[k].case_idx == ci) json_array_append_new(items, item_json(&g->items[k]));
        json_array_append_new(cases, json_pack("{s:s, s:s, s:o}", "id",
                                               json_string_value(json_object_get(json_array_get(rcases, (size_t)ci), "id")),
                                               "verdict", fd_verdict_name(g->verdict[ci]), "items", items));
    }
    for (int k = 0; k < g->nitems; k++)
        if (g->items[k].case_idx < 0) json_array_append_new(missing, item_json(&g->items[k]));
    for (int t = 0; t < g->nbackends; t++) json_array_append_new(backends, json_string(g->backends[t]));
    json_t *m = json_pack(
        "{s:O, s:b, s:b, s:b, s:{s:s, s:s, s:b, s:b}, s:o, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i}, s:o, s:o, s:o}",
        "report", (json_t *)g->report, "failed", g->failed, "partial", g->partial, "baseline_skipped",
        g->baseline_skipped, "policy", "path", p->path, "description", p->description, "baseline_rule", p->base_on,
        "missing_cases_fail", p->base_missing_fails, "baseline",
        baseline_path ? json_pack("{s:s}", "path", baseline_path) : json_null(), "totals", "cases", g->ncases,
        "pass", g->npass, "marginal", g->nmarginal, "fail", g->nfail, "undecided", g->nundecided,
        "baseline_missing", g->baseline_missing, "baseline_missing_fail", g->nmissing_fail, "baseline_new",
        g->baseline_new, "backends", backends, "cases", cases, "missing", missing);
    return m;
}
