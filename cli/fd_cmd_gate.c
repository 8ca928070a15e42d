/* fd_cmd_gate.c: `flashdrift gate`, `diff`, `baseline update` and `html`; see fd_cmds.h. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fd_cmds.h"
#include "fd_diff.h"
#include "fd_gate.h"
#include "fd_html.h"
#include "fd_json.h"
#include "fd_report.h"
#include "fd_report_read.h"
#include "fd_runfile.h"

/* An option's value, or NULL after printing the error. */
static const char *value(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) {
        fprintf(stderr, "flashdrift: %s needs a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

static int load_report(const char *path, json_t **r)
{
    char err[1024];
    if (fd_report_load(path, r, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return -1;
    }
    return 0;
}

int fd_cmd_gate(int argc, char **argv)
{
    const char *input = NULL, *policy = NULL, *baseline = NULL, *junit = NULL, *md = NULL;
    fd_run_opts o;
    fd_run_opts_default(&o);
    int run_opts_given = 0;
    for (int i = 0; i < argc; i++) {
        const int i0 = i;
        int r = fd_parse_run_option(argc, argv, &i, &o);
        if (r < 0) return FD_EXIT_USAGE;
        if (r == 0) {
            run_opts_given |= strcmp(argv[i0], "--quiet") != 0;
            continue;
        }
        const char *a = argv[i];
        const char **dst = NULL;
        if (!strcmp(a, "--policy")) dst = &policy;
        else if (!strcmp(a, "--baseline")) dst = &baseline;
        else if (!strcmp(a, "--junit")) dst = &junit;
        else if (!strcmp(a, "--markdown")) dst = &md;
        if (dst) {
            if (!(*dst = value(argc, argv, &i))) return FD_EXIT_USAGE;
        } else if (a[0] == '-') {
            fprintf(stderr, "flashdrift: gate: unknown option %s\n", a);
            fd_usage(stderr);
            return FD_EXIT_USAGE;
        } else if (!input) {
            input = a;
        } else {
            fprintf(stderr, "flashdrift: gate: one case file or report expected, got also %s\n", a);
            return FD_EXIT_USAGE;
        }
    }
    if (!input || !policy) {
        fprintf(stderr, "flashdrift: gate needs CASEFILE|REPORT and --policy FILE\n");
        fd_usage(stderr);
        return FD_EXIT_USAGE;
    }
    char err[1024];
    fd_gate_policy pol;
    if (fd_gate_policy_load(policy, &pol, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    json_t *base = NULL, *report = NULL;
    if (baseline) {
        if (!pol.base_on) {
            fprintf(stderr, "flashdrift: %s: --baseline given but the policy has no \"baseline\" rule (docs/gate.md)\n", policy);
            return FD_EXIT_USAGE;
        }
        if (load_report(baseline, &base)) return FD_EXIT_USAGE;
    }
    /* A case file or a report? Decide by its schema field, then read it strictly. */
    json_t *probe = fd_jload(input, err, sizeof err);
    if (!probe) {
        fprintf(stderr, "flashdrift: %s\n", err);
        json_decref(base);
        return FD_EXIT_USAGE;
    }
    const char *schema = json_string_value(json_object_get(probe, "schema"));
    const int is_casefile = schema && !strcmp(schema, "flashdrift-cases/1");
    int rc = FD_EXIT_PASS;
    if (is_casefile) {
        json_decref(probe);
        rc = fd_run_and_write(input, &o, &report);
        if (!report) {
            json_decref(base);
            return rc;
        }
    } else {
        if (o.repeat > 1 || o.resume || run_opts_given) {
            fprintf(stderr, "flashdrift: %s is a report: --repeat, --resume, --backend, --jobs, --filter, --out and --explain "
                            "need a case file (run it with --repeat to gate on determinism)\n", input);
            json_decref(probe);
            json_decref(base);
            return FD_EXIT_USAGE;
        }
        if (fd_report_validate(input, probe, err, sizeof err)) {
            if (json_is_object(probe) && !json_object_get(probe, "schema_version"))
                fprintf(stderr, "flashdrift: %s: neither a case file (schema \"flashdrift-cases/1\") nor a report: %s\n",
                        input, err + strlen(input) + 2);
            else
                fprintf(stderr, "flashdrift: %s\n", err);
            json_decref(probe);
            json_decref(base);
            return FD_EXIT_USAGE;
        }
        report = probe;
        if (!json_is_true(json_object_get(report, "complete")))
            fprintf(stderr, "flashdrift: warning: %s is an incomplete run (%zu cases)\n", input,
                    json_array_size(json_object_get(report, "cases")));
    }
    fd_gate_result g;
    if (fd_gate_eval(&pol, report, base, &g, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        json_decref(report);
        json_decref(base);
        return FD_EXIT_INTERNAL;
    }
    if (!g.nbackends && g.ncases) {
        fprintf(stderr, "flashdrift: %s: the policy gates no backend of the report (backends: %s)\n", policy,
                json_string_value(json_object_get(report, "backends")));
        rc = FD_EXIT_USAGE;
        goto out;
    }
    fd_gate_print(&g, stdout);
    if (junit && fd_gate_junit(&g, &pol, junit, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_USAGE;
        goto out;
    }
    if (md && fd_gate_markdown(&g, &pol, baseline, md, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_USAGE;
        goto out;
    }
    printf("gate %s: %d cases: %d PASS, %d MARGINAL, %d FAIL, %d UNDECIDED (policy %s%s%s)\n",
           g.failed ? "FAIL" : "PASS", g.ncases, g.npass, g.nmarginal, g.nfail, g.nundecided, policy,
           baseline ? ", baseline " : "", baseline ? baseline : "");
    rc = g.failed ? FD_EXIT_GATE : FD_EXIT_PASS;
out:
    fd_gate_result_free(&g);
    json_decref(report);
    json_decref(base);
    return rc;
}

int fd_cmd_diff(int argc, char **argv)
{
    const char *files[2] = {NULL, NULL}, *md = NULL, *js = NULL, *html = NULL;
    int nf = 0, fail_on_reg = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL;
        if (!strcmp(a, "--markdown")) dst = &md;
        else if (!strcmp(a, "--json")) dst = &js;
        else if (!strcmp(a, "--html")) dst = &html;
        if (dst) {
            if (!(*dst = value(argc, argv, &i))) return FD_EXIT_USAGE;
        } else if (!strcmp(a, "--fail-on-regression")) {
            fail_on_reg = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "flashdrift: diff: unknown option %s\n", a);
            return FD_EXIT_USAGE;
        } else if (nf < 2) {
            files[nf++] = a;
        } else {
            fprintf(stderr, "flashdrift: diff expects two reports, got also %s\n", a);
            return FD_EXIT_USAGE;
        }
    }
    if (nf != 2) {
        fprintf(stderr, "flashdrift: diff expects two reports: OLD NEW\n");
        return FD_EXIT_USAGE;
    }
    json_t *old = NULL, *nw = NULL;
    if (load_report(files[0], &old)) return FD_EXIT_USAGE;
    if (load_report(files[1], &nw)) {
        json_decref(old);
        return FD_EXIT_USAGE;
    }
    int rc = FD_EXIT_PASS;
    char err[1024];
    json_t *d = fd_diff_reports(old, files[0], nw, files[1]);
    if (!d) {
        fprintf(stderr, "flashdrift: out of memory\n");
        rc = FD_EXIT_INTERNAL;
        goto out;
    }
    fd_diff_print(d, stdout);
    if ((md && fd_diff_markdown(d, md, err, sizeof err)) || (js && fd_write_json_atomic(js, d, err, sizeof err))) {
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_USAGE;
        goto out;
    }
    if (html) {
        int h = fd_render_html(nw, files[1], old, files[0], html, err, sizeof err);
        if (h) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = h > 0 ? FD_EXIT_USAGE : FD_EXIT_INTERNAL;
            goto out;
        }
    }
    if (fail_on_reg && fd_diff_has_regression(d)) rc = FD_EXIT_GATE;
out:
    json_decref(d);
    json_decref(old);
    json_decref(nw);
    return rc;
}

static int valid_name(const char *s)
{
    if (!*s || *s == '.' || strlen(s) > 100) return 0;
    for (; *s; s++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", *s)) return 0;
    return 1;
}

int fd_cmd_baseline(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "update")) {
        fprintf(stderr, "flashdrift: usage: flashdrift baseline update REPORT --name NAME [--force] [--dir DIR]\n");
        return FD_EXIT_USAGE;
    }
    const char *input = NULL, *name = NULL, *dir = "reports/baselines";
    int force = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--name") || !strcmp(a, "--dir")) {
            const char *v = value(argc, argv, &i);
            if (!v) return FD_EXIT_USAGE;
            if (a[2] == 'n') name = v;
            else dir = v;
        } else if (!strcmp(a, "--force")) {
            force = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "flashdrift: baseline update: unknown option %s\n", a);
            return FD_EXIT_USAGE;
        } else if (!input) {
            input = a;
        } else {
            fprintf(stderr, "flashdrift: baseline update: one report expected, got also %s\n", a);
            return FD_EXIT_USAGE;
        }
    }
    if (!input || !name) {
        fprintf(stderr, "flashdrift: baseline update needs REPORT and --name NAME\n");
        return FD_EXIT_USAGE;
    }
    if (!valid_name(name)) {
        fprintf(stderr, "flashdrift: --name %s: expected letters, digits, '.', '_' or '-' (a file name)\n", name);
        return FD_EXIT_USAGE;
    }
    json_t *r;
    if (load_report(input, &r)) return FD_EXIT_USAGE;
    char err[1024];
    if (!json_is_true(json_object_get(r, "complete"))) {
        fprintf(stderr, "flashdrift: %s: an incomplete run cannot be a baseline\n", input);
        json_decref(r);
        return FD_EXIT_USAGE;
    }
    if (fd_mkdir_p(dir, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        json_decref(r);
        return FD_EXIT_USAGE;
    }
    char when[64], target[4200], tmp[4300];
    time_t t = time(NULL);
    struct tm tmv;
    gmtime_r(&t, &tmv);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    const json_t *m = json_object_get(r, "machine");
    const json_t *gpu = json_object_get(m, "gpu");
    json_object_set_new(r, "baseline",
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:O}", "name", name, "stored", when, "source", input,
                  "git_commit", json_string_value(json_object_get(r, "git_commit")) ? json_string_value(json_object_get(r, "git_commit")) : "",
                  "created", json_string_value(json_object_get(r, "created")) ? json_string_value(json_object_get(r, "created")) : "",
                  "hostname", json_string_value(json_object_get(m, "hostname")) ? json_string_value(json_object_get(m, "hostname")) : "",
                  "gpu", gpu ? gpu : json_null()));
    snprintf(target, sizeof target, "%s/%s.json", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.json.new.%d", dir, name, (int)getpid());
    int rc = FD_EXIT_PASS;
    if (fd_write_json_atomic(tmp, r, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_INTERNAL;
    } else if (force ? rename(tmp, target) != 0 : link(tmp, target) != 0) {
        if (errno == EEXIST)
            fprintf(stderr, "flashdrift: %s exists; refusing to overwrite a baseline without --force\n", target);
        else
            fprintf(stderr, "flashdrift: %s: cannot write: %s\n", target, strerror(errno));
        rc = FD_EXIT_USAGE;
    }
    unlink(tmp);
    if (rc == FD_EXIT_PASS)
        printf("baseline %s <- %s (%zu cases, commit %s, host %s, gpu %s)\n", target, input,
               json_array_size(json_object_get(r, "cases")), json_string_value(json_object_get(r, "git_commit")),
               json_string_value(json_object_get(m, "hostname")),
               json_is_object(gpu) ? json_string_value(json_object_get(gpu, "name")) : "none");
    json_decref(r);
    return rc;
}

int fd_cmd_html(int argc, char **argv)
{
    const char *input = NULL, *out = NULL, *baseline = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--out") || !strcmp(a, "--baseline")) {
            const char *v = value(argc, argv, &i);
            if (!v) return FD_EXIT_USAGE;
            if (a[2] == 'o') out = v;
            else baseline = v;
        } else if (a[0] == '-') {
            fprintf(stderr, "flashdrift: html: unknown option %s\n", a);
            return FD_EXIT_USAGE;
        } else if (!input) {
            input = a;
        } else {
            fprintf(stderr, "flashdrift: html: one report expected, got also %s\n", a);
            return FD_EXIT_USAGE;
        }
    }
    if (!input) {
        fprintf(stderr, "flashdrift: html needs a REPORT\n");
        return FD_EXIT_USAGE;
    }
    char def[4200], err[1024];
    if (!out) {
        /* report.json -> report.html beside it */
        snprintf(def, sizeof def, "%s", input);
        char *dot = strrchr(def, '.'), *slash = strrchr(def, '/');
        if (dot && (!slash || dot > slash)) *dot = 0;
        strncat(def, ".html", sizeof def - strlen(def) - 1);
        out = def;
    }
    json_t *r = NULL, *b = NULL;
    /* an explain.json (flashdrift explain --out DIR): its error budgets */
    json_t *probe = fd_jload(input, err, sizeof err);
    if (json_is_object(probe) && json_object_get(probe, "explain") && !json_object_get(probe, "cases")) {
        int bad = baseline != NULL;
        if (bad) fprintf(stderr, "flashdrift: %s is an explain.json: --baseline needs a report\n", input);
        else if (!json_is_array(json_object_get(probe, "explain")) ||
                 json_integer_value(json_object_get(probe, "schema_version")) != FD_REPORT_SCHEMA_VERSION) {
            fprintf(stderr, "flashdrift: %s: explain: expected an array of explanations and schema_version %d "
                            "(written by flashdrift explain --out DIR)\n", input, FD_REPORT_SCHEMA_VERSION);
            bad = 1;
        }
        int h = bad ? 0 : fd_render_explain_html(probe, out, err, sizeof err);
        json_decref(probe);
        if (bad) return FD_EXIT_USAGE;
        if (h) {
            fprintf(stderr, "flashdrift: %s\n", err);
            return h > 0 ? FD_EXIT_USAGE : FD_EXIT_INTERNAL;
        }
        printf("%s\n", out);
        return FD_EXIT_PASS;
    }
    json_decref(probe);
    if (load_report(input, &r)) return FD_EXIT_USAGE;
    if (baseline && load_report(baseline, &b)) {
        json_decref(r);
        return FD_EXIT_USAGE;
    }
    int h = fd_render_html(r, input, b, baseline, out, err, sizeof err);
    json_decref(r);
    json_decref(b);
    if (h) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return h > 0 ? FD_EXIT_USAGE : FD_EXIT_INTERNAL;
    }
    printf("%s\n", out);
    return FD_EXIT_PASS;
}
