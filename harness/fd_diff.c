/* fd_diff.c: see fd_diff.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_diff.h"
#include "fd_out.h"
#include "fd_report_read.h"

enum { ST_IDENTICAL, ST_CHANGED, ST_BETTER, ST_FIXED, ST_ONLY_NEW, ST_ONLY_OLD, ST_WORSE, ST_NEW_FAILURE, ST_N };
static const char *const st_name[ST_N] = {"identical", "changed", "better", "fixed", "only_new", "only_old",
                                          "worse", "new_failure"};

static int vrank(const char *v)
{
    if (!strcmp(v, "PASS")) return 0;
    if (!strcmp(v, "MARGINAL")) return 1;
    if (!strcmp(v, "UNDECIDED")) return 2;
    return 3;
}

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static json_t *side(const json_t *r, const char *path)
{
    const json_t *m = json_object_get(r, "machine");
    const json_t *gpu = json_object_get(m, "gpu");
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:O, s:s}", "path", path, "case_file",
                     str(json_object_get(r, "case_file"), "name"), "version", str(r, "version"), "git_commit",
                     str(r, "git_commit"), "created", str(r, "created"), "hostname", str(m, "hostname"), "gpu",
                     gpu ? gpu : json_null(), "backends", str(r, "backends"));
}

/* Equal values; numbers by value (an integer and a real of the same value are equal). */
static int same_value(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        const double x = json_number_value(a), y = json_number_value(b);
        return !(x < y || x > y);
    }
    return json_equal((json_t *)a, (json_t *)b);
}

/* Appends {"what": "PREFIX.KEY", "old", "new"} for every leaf that differs between a and b
 * (an absent side has no "old"/"new" member). Objects are walked key by key, so a GPU
 * that appears (null -> "H200") or a policy limit that moved is named exactly. */
static void run_changes(json_t *out, const char *what, const json_t *a, const json_t *b)
{
    if ((json_is_object(a) && (!b || json_is_object(b))) || (!a && json_is_object(b))) {
        const char *key;
        json_t *v;
        char sub[256];
        json_object_foreach((json_t *)a, key, v) {
            snprintf(sub, sizeof sub, "%s.%s", what, key);
            run_changes(out, sub, v, json_object_get(b, key));
        }
        json_object_foreach((json_t *)b, key, v) {
            if (json_object_get(a, key)) continue;
            snprintf(sub, sizeof sub, "%s.%s", what, key);
            run_changes(out, sub, NULL, v);
        }
        return;
    }
    if ((!a && !b) || (a && b && same_value(a, b))) return;
    json_t *c = json_pack("{s:s}", "what", what);
    if (a) json_object_set(c, "old", (json_t *)a);
    if (b) json_object_set(c, "new", (json_t *)b);
    json_array_append_new(out, c);
}

/* The settings of the two runs that can explain a difference, in the order a reader
 * looks for them: the kernel's knobs, the limits, the cases, then where it ran. */
static json_t *changes(const json_t *old, const json_t *new_)
{
    static const char *const top[] = {"flash_config", "policy", "case_file", "backends", "version",
                                      "git_commit", "machine", NULL};
    json_t *out = json_array();
    for (int i = 0; top[i]; i++) run_changes(out, top[i], json_object_get(old, top[i]), json_object_get(new_, top[i]));
    return out;
}

/* Compares one backend; returns its status and updates *score (largest relative move). */
static int diff_backend(const json_t *bo, const json_t *bn, json_t *out, double *score)
{
    const int oko = json_is_true(json_object_get(bo, "ok")), okn = json_is_true(json_object_get(bn, "ok"));
    if (!oko || !okn) {
        json_object_set_new(out, "old_error", json_string(str(bo, "error")));
        json_object_set_new(out, "new_error", json_string(str(bn, "error")));
        json_object_set_new(out, "identical", json_false());
        if (oko && !okn) { *score = (double)INFINITY; return ST_WORSE; }
        if (!oko && okn) return ST_BETTER;
        return ST_CHANGED;
    }
    /* the output, then the gradients of backward cases ("dq.max_abs", ...) when both
     * runs measured them: a gradient that moved is a move of the backend */
    int ident = !strcmp(str(bo, "output_hash"), str(bn, "output_hash"));
    json_object_set_new(out, "old_hash", json_string(str(bo, "output_hash")));
    json_object_set_new(out, "new_hash", json_string(str(bn, "output_hash")));
    json_t *ms = json_object();
    int worse = 0, better = 0;
    static const char *const grads[] = {NULL, "dq", "dk", "dv"};
    for (int g = 0; g < 4; g++) {
        const json_t *eo = bo, *en = bn;
        if (g) {
            const json_t *go = json_object_get(bo, "grad"), *gn = json_object_get(bn, "grad");
            if (!json_is_true(json_object_get(go, "measured")) || !json_is_true(json_object_get(gn, "measured"))) break;
            eo = json_object_get(go, grads[g]);
            en = json_object_get(gn, grads[g]);
            ident &= !strcmp(str(eo, "hash"), str(en, "hash"));
        }
        for (int m = 0; fd_report_metrics[m]; m++) {
            if (g && !strcmp(fd_report_metrics[m], "lse_max_abs")) continue;
            const double a = fd_json_number(json_object_get(eo, fd_report_metrics[m]));
            const double b = fd_json_number(json_object_get(en, fd_report_metrics[m]));
            const int same = (isnan(a) && isnan(b)) || !(a < b || a > b);
            if (same) continue;
            double rel;
            if (isnan(a) || isnan(b)) rel = NAN;
            else if (a > 0) rel = (b - a) / a;
            else rel = b > a ? (double)INFINITY : -1.0;
            const int w = (isnan(b) && !isnan(a)) || b > a;
            worse |= w;
            better |= !w;
            if (w && !(rel <= *score)) *score = isnan(rel) ? (double)INFINITY : rel;
            json_t *mj = json_pack("{s:o, s:o, s:o}", "old", fd_json_num(a), "new", fd_json_num(b), "rel", fd_json_num(rel));
            if (!strcmp(fd_report_metrics[m], "max_ulp") || !strcmp(fd_report_metrics[m], "p99_ulp"))
                json_object_set_new(mj, "ulps", fd_json_num(b - a));
            char name[32];
            snprintf(name, sizeof name, "%s%s%s", g ? grads[g] : "", g ? "." : "", fd_report_metrics[m]);
            json_object_set_new(ms, name, mj);
        }
    }
    json_object_set_new(out, "identical", json_boolean(ident));
    json_object_set_new(out, "metrics", ms);
    if (worse) return ST_WORSE;
    if (better) return ST_BETTER;
    return ident ? ST_IDENTICAL : ST_CHANGED;
}

static int cmp_cases(const void *pa, const void *pb)
{
    const json_t *a = *(json_t *const *)pa, *b = *(json_t *const *)pb;
    const json_int_t sa = json_integer_value(json_object_get(a, "severity"));
    const json_int_t sb = json_integer_value(json_object_get(b, "severity"));
    if (sa != sb) return sa > sb ? -1 : 1;
    const double ma = fd_json_number(json_object_get(a, "magnitude"));
    const double mb = fd_json_number(json_object_get(b, "magnitude"));
    if (ma > mb) return -1;
    if (ma < mb) return 1;
    return strcmp(str(a, "id"), str(b, "id"));
}

json_t *fd_diff_reports(const json_t *old, const char *old_path, const json_t *new_, const char *new_path)
{
    const json_t *oc = json_object_get(old, "cases"), *nc = json_object_get(new_, "cases");
    const size_t no = json_array_size(oc), nn = json_array_size(nc);
    json_t **list = calloc(no + nn + 1, sizeof *list);
    json_t *old_idx = fd_report_case_index(old), *new_idx = fd_report_case_index(new_);
    if (!list || !old_idx || !new_idx) {
        free(list);
        json_decref(old_idx);
        json_decref(new_idx);
        return NULL;
    }
    size_t n = 0;
    int counts[ST_N] = {0};
    for (size_t i = 0; i < nn + no; i++) {
        const int from_new = i < nn;
        const json_t *c = from_new ? json_array_get(nc, i) : json_array_get(oc, i - nn);
        const char *id = str(c, "id");
        const json_t *o = from_new ? json_object_get(old_idx, id) : c;
        if (!from_new && json_object_get(new_idx, id)) continue;
        const json_t *nw = from_new ? c : NULL;
        json_t *cj = json_pack("{s:s}", "id", id);
        int st;
        double score = 0.0;
        if (!o || !nw) {
            st = o ? ST_ONLY_OLD : ST_ONLY_NEW;
            json_object_set_new(cj, o ? "old_verdict" : "new_verdict", json_string(str(o ? o : nw, "verdict")));
        } else {
            const char *vo = str(o, "verdict"), *vn = str(nw, "verdict");
            json_object_set_new(cj, "old_verdict", json_string(vo));
            json_object_set_new(cj, "new_verdict", json_string(vn));
            json_t *bes = json_object();
            int any_worse = 0, any_better = 0, all_ident = 1;
            const json_t *bo = json_object_get(o, "backends"), *bn = json_object_get(nw, "backends");
            const char *key;
            json_t *b;
            json_object_foreach((json_t *)bn, key, b) {
                const json_t *ob = json_object_get(bo, key);
                json_t *bj = json_object();
                int bs;
                if (!ob) {
                    bs = ST_ONLY_NEW;
                    all_ident = 0;
                } else {
                    bs = diff_backend(ob, b, bj, &score);
                    if (!json_is_true(json_object_get(bj, "identical"))) all_ident = 0;
                }
                any_worse |= bs == ST_WORSE;
                any_better |= bs == ST_BETTER;
                json_object_set_new(bj, "status", json_string(st_name[bs]));
                json_object_set_new(bes, key, bj);
            }
            json_object_foreach((json_t *)bo, key, b) {
                if (json_object_get(bn, key)) continue;
                all_ident = 0;
                json_object_set_new(bes, key, json_pack("{s:s}", "status", "only_old"));
            }
            json_object_set_new(cj, "backends", bes);
            json_object_set_new(cj, "identical", json_boolean(all_ident));
            const int ro = vrank(vo), rn = vrank(vn);
            if (rn == 3 && ro != 3) st = ST_NEW_FAILURE;
            else if (ro == 3 && rn != 3) st = ST_FIXED;
            else if (rn > ro || any_worse) st = ST_WORSE;
            else if (all_ident) st = ST_IDENTICAL;
            else if (any_better && rn <= ro) st = ST_BETTER;
            else st = ST_CHANGED;
        }
        counts[st]++;
        json_object_set_new(cj, "status", json_string(st_name[st]));
        json_object_set_new(cj, "severity", json_integer(st));
        json_object_set_new(cj, "magnitude", fd_json_num(score));
        list[n++] = cj;
    }
    qsort(list, n, sizeof *list, cmp_cases);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(arr, list[i]);
    free(list);
    json_decref(old_idx);
    json_decref(new_idx);
    json_t *sum = json_object();
    for (int s = ST_N - 1; s >= 0; s--) json_object_set_new(sum, st_name[s], json_integer(counts[s]));
    return json_pack("{s:s, s:o, s:o, s:o, s:o, s:b, s:o}", "schema", "flashdrift-diff/1", "old", side(old, old_path),
                     "new", side(new_, new_path), "changes", changes(old, new_), "summary", sum, "regression",
                     counts[ST_NEW_FAILURE] + counts[ST_WORSE] > 0, "cases", arr);
}

int fd_diff_has_regression(const json_t *diff)
{
    return json_is_true(json_object_get(diff, "regression"));
}
