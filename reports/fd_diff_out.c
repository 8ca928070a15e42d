/* fd_diff_out.c: the diff as text and Markdown; see fd_diff_out.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_diff_out.h"
#include "fd_out.h"

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
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

int fd_diff_markdown(const json_t *diff, const char *path, char *err, size_t errlen)
{
    fd_doc doc;
    if (fd_doc_open(&doc, path, err, errlen)) return -1;
    FILE *f = doc.f;
    const json_t *o = json_object_get(diff, "old"), *nw = json_object_get(diff, "new");
    fprintf(f, "## flashdrift diff: %s\n\n", json_is_true(json_object_get(diff, "regression")) ? "regressions found" : "no regression");
    fprintf(f, "| | report | version | commit | host | GPU | created |\n|---|---|---|---|---|---|---|\n");
    for (int k = 0; k < 2; k++) {
        const json_t *sd = k ? nw : o, *gpu = json_object_get(sd, "gpu");
        fprintf(f, "| %s | `", k ? "new" : "old");
        fd_md_text(f, str(sd, "path"));
        fprintf(f, "` | ");
        fd_md_text(f, str(sd, "version"));
        fprintf(f, " | ");
        fd_md_text(f, str(sd, "git_commit"));
        fprintf(f, " | ");
        fd_md_text(f, str(sd, "hostname"));
        fprintf(f, " | ");
        fd_md_text(f, json_is_string(gpu) ? json_string_value(gpu) : "none");
        fprintf(f, " | ");
        fd_md_text(f, str(sd, "created"));
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
        fd_md_text(f, str(c, "what"));
        fprintf(f, "` | ");
        fd_md_text(f, a);
        fprintf(f, " | ");
        fd_md_text(f, b);
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
        if (!json_object_size(json_object_get(c, "backends"))) {
            fprintf(f, "| %s | `", st);
            fd_md_text(f, str(c, "id"));
            fprintf(f, "` | ");
            fd_md_text(f, verdict);
            fprintf(f, " | | |\n");
        }
        json_t *b;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            if (!strcmp(str(b, "status"), "identical")) continue;
            fprintf(f, "| %s | `", st);
            fd_md_text(f, str(c, "id"));
            fprintf(f, "` | ");
            fd_md_text(f, verdict);
            fprintf(f, " | ");
            fd_md_text(f, key);
            fprintf(f, " | ");
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
    return fd_doc_commit(&doc, err, errlen);
}
