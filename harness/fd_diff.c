/* fd_diff.c: see fd_diff.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_diff.h"
#include "fd_json.h"
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

void fd_diff_value_str(const json_t *change, const char *side_, char *buf, size_t len)
{
    const json_t *v = json_object_get(change, side_);
    if (!v) snprintf(buf, len, "absent");
    else if (json_is_string(v)) snprintf(buf, len, "%s", json_string_value(v));
    else if (json_is_integer(v)) snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v)) snprintf(buf, len, "%.6g", json_real_value(v));
    else {
        char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        snprintf(buf, len, "%s", t ? t : "?");
        free(t);
    }
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
    const int ident = !strcmp(str(bo, "output_hash"), str(bn, "output_hash"));
    json_object_set_new(out, "identical", json_boolean(ident));
    json_object_set_new(out, "old_hash", json_string(str(bo, "output_hash")));
    json_object_set_new(out, "new_hash", json_string(str(bn, "output_hash")));
    json_t *ms = json_object();
    int worse = 0, better = 0;
    for (int m = 0; fd_report_metrics[m]; m++) {
        const double a = fd_json_number(json_object_get(bo, fd_report_metrics[m]));
        const double b = fd_json_number(json_object_get(bn, fd_report_metrics[m]));
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
        json_object_set_new(ms, fd_report_metrics[m], mj);
    }
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
    if (!list) return NULL;
    size_t n = 0;
    int counts[ST_N] = {0};
    for (size_t i = 0; i < nn + no; i++) {
        const int from_new = i < nn;
        const json_t *c = from_new ? json_array_get(nc, i) : json_array_get(oc, i - nn);
        const char *id = str(c, "id");
        const json_t *o = from_new ? fd_report_find_case(old, id) : c;
        if (!from_new && fd_report_find_case(new_, id)) continue;
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
    json_t *sum = json_object();
    for (int s = ST_N - 1; s >= 0; s--) json_object_set_new(sum, st_name[s], json_integer(counts[s]));
    return json_pack("{s:s, s:o, s:o, s:o, s:o, s:o}", "schema", "flashdrift-diff/1", "old", side(old, old_path),
                     "new", side(new_, new_path), "changes", changes(old, new_), "summary", sum, "cases", arr);
}

int fd_diff_has_regression(const json_t *diff)
{
    const json_t *s = json_object_get(diff, "summary");
    return json_integer_value(json_object_get(s, "new_failure")) + json_integer_value(json_object_get(s, "worse")) > 0;
}

/* "max_abs 1.2e-03 -> 4.5e-03 (+275%)" for each moved metric of a backend. */
static void moved(FILE *f, const json_t *bj, const char *sep)
{
    const char *key;
    json_t *m;
    int first = 1;
    json_object_foreach(json_object_get(bj, "metrics"), key, m) {
        const double a = fd_json_number(json_object_get(m, "old")), b = fd_json_number(json_object_get(m, "new"));
        const double rel = fd_json_number(json_object_get(m, "rel"));
        fprintf(f, "%s%s %.4g -> %.4g (%+.1f%%", first ? "" : sep, key, a, b, 100.0 * rel);
        const json_t *u = json_object_get(m, "ulps");
        if (u) fprintf(f, ", %+.3g ulp", fd_json_number(u));
        fputc(')', f);
        first = 0;
    }
}

/* "old: PATH: flashdrift 0.1.0 (abc), host ci, GPU none, created ..." */
static void print_side(FILE *f, const char *label, const json_t *sd)
{
    const json_t *gpu = json_object_get(sd, "gpu");
    fprintf(f, "%s: %s: flashdrift %s (%s), host %s, GPU %s, created %s\n", label, str(sd, "path"), str(sd, "version"),
            str(sd, "git_commit"), str(sd, "hostname"), json_is_string(gpu) ? json_string_value(gpu) : "none",
            str(sd, "created"));
}

const char *const fd_diff_settings = "flash_config, policy, case file, backends, version, commit, machine and GPU";

void fd_diff_print(const json_t *diff, FILE *f)
{
    const json_t *s = json_object_get(diff, "summary");
    fprintf(f, "diff %s (%s) -> %s (%s):", str(json_object_get(diff, "old"), "path"),
            str(json_object_get(diff, "old"), "git_commit"), str(json_object_get(diff, "new"), "path"),
            str(json_object_get(diff, "new"), "git_commit"));
    const char *key;
    json_t *v;
    int first = 1;
    json_object_foreach((json_t *)s, key, v) {
        fprintf(f, "%s %lld %s", first ? "" : ",", (long long)json_integer_value(v), key);
        first = 0;
    }
    fputc('\n', f);
    print_side(f, "old", json_object_get(diff, "old"));
    print_side(f, "new", json_object_get(diff, "new"));
    const json_t *ch = json_object_get(diff, "changes");
    if (!json_array_size(ch)) fprintf(f, "same %s in both runs\n", fd_diff_settings);
    else fprintf(f, "changed between the runs:\n");
    size_t i;
    json_t *c;
    json_array_foreach(ch, i, c) {
        char a[512], b[512];
        fd_diff_value_str(c, "old", a, sizeof a);
        fd_diff_value_str(c, "new", b, sizeof b);
        fprintf(f, "    %s: %s -> %s\n", str(c, "what"), a, b);
    }
    json_array_foreach(json_object_get(diff, "cases"), i, c) {
        const char *st = str(c, "status");
        if (!strcmp(st, "identical")) continue;
        fprintf(f, "%-11s %s", st, str(c, "id"));
        if (json_object_get(c, "old_verdict") && json_object_get(c, "new_verdict") &&
            strcmp(str(c, "old_verdict"), str(c, "new_verdict")))
            fprintf(f, " [%s -> %s]", str(c, "old_verdict"), str(c, "new_verdict"));
        json_t *b;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            const char *bs = str(b, "status");
            if (!strcmp(bs, "identical")) continue;
            fprintf(f, "\n    %s: ", key);
            if (json_object_size(json_object_get(b, "metrics"))) moved(f, b, ", ");
            else if (json_object_get(b, "new_error") && *str(b, "new_error")) fprintf(f, "error: %s", str(b, "new_error"));
            else fprintf(f, "%s", !strcmp(bs, "changed") ? "outputs differ bitwise, metrics equal" : bs);
        }
        fputc('\n', f);
    }
}

/* A Markdown table cell from file text: a '|' or a newline would end the cell or the row. */
static void md_cell(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '|') fputs("\\|", f);
        else if (*s == '\n' || *s == '\r') fputc(' ', f);
        else if (*s == '`') fputc('\'', f);
        else fputc(*s, f);
    }
}

int fd_diff_markdown(const json_t *diff, const char *path, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    const json_t *o = json_object_get(diff, "old"), *nw = json_object_get(diff, "new");
    fprintf(f, "## flashdrift diff: %s\n\n", fd_diff_has_regression(diff) ? "regressions found" : "no regression");
    fprintf(f, "| | report | version | commit | host | GPU | created |\n|---|---|---|---|---|---|---|\n");
    for (int k = 0; k < 2; k++) {
        const json_t *sd = k ? nw : o, *gpu = json_object_get(sd, "gpu");
        fprintf(f, "| %s | `", k ? "new" : "old");
        md_cell(f, str(sd, "path"));
        fprintf(f, "` | ");
        md_cell(f, str(sd, "version"));
        fprintf(f, " | ");
        md_cell(f, str(sd, "git_commit"));
        fprintf(f, " | ");
        md_cell(f, str(sd, "hostname"));
        fprintf(f, " | ");
        md_cell(f, json_is_string(gpu) ? json_string_value(gpu) : "none");
        fprintf(f, " | ");
        md_cell(f, str(sd, "created"));
        fprintf(f, " |\n");
    }
    const json_t *ch = json_object_get(diff, "changes");
    if (!json_array_size(ch)) fprintf(f, "\nSame %s in both runs.\n\n", fd_diff_settings);
    else fprintf(f, "\n### Changed between the runs\n\n| setting | old | new |\n|---|---|---|\n");
    size_t i;
    json_t *c;
    json_array_foreach(ch, i, c) {
        char a[512], b[512];
        fd_diff_value_str(c, "old", a, sizeof a);
        fd_diff_value_str(c, "new", b, sizeof b);
        fprintf(f, "| `");
        md_cell(f, str(c, "what"));
        fprintf(f, "` | ");
        md_cell(f, a);
        fprintf(f, " | ");
        md_cell(f, b);
        fprintf(f, " |\n");
    }
    if (json_array_size(ch)) fputc('\n', f);
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(diff, "summary"), key, v) fprintf(f, "%s: **%lld** · ", key, (long long)json_integer_value(v));
    fprintf(f, "\n\n| status | case | verdict | backend | what moved |\n|---|---|---|---|---|\n");
    int rows = 0;
    json_array_foreach(json_object_get(diff, "cases"), i, c) {
        const char *st = str(c, "status");
        if (!strcmp(st, "identical")) continue;
        char verdict[64];
        snprintf(verdict, sizeof verdict, "%s → %s", json_object_get(c, "old_verdict") ? str(c, "old_verdict") : "—",
                 json_object_get(c, "new_verdict") ? str(c, "new_verdict") : "—");
        if (!json_object_size(json_object_get(c, "backends")))
            fprintf(f, "| %s | `%s` | %s | | |\n", st, str(c, "id"), verdict);
        json_t *b;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            if (!strcmp(str(b, "status"), "identical")) continue;
            fprintf(f, "| %s | `%s` | %s | %s | ", st, str(c, "id"), verdict, key);
            if (json_object_size(json_object_get(b, "metrics"))) moved(f, b, "<br>");
            else fprintf(f, "%s", str(b, "status"));
            fprintf(f, " |\n");
        }
        if (++rows >= 100) {
            fprintf(f, "\n(first 100 cases shown; see the JSON diff for all)\n");
            break;
        }
    }
    if (!rows) fprintf(f, "| identical | every case | | | bitwise-identical outputs |\n");
    fclose(f);
    int rc = fd_write_text_atomic(path, buf, len, err, errlen);
    free(buf);
    return rc;
}
