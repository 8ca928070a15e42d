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
#include "fd_diff_out.h"
#include "fd_file.h"
#include "fd_gate.h"
#include "fd_gate_out.h"
#include "fd_html.h"
#include "fd_json.h"
#include "fd_opt.h"
#include "fd_out.h"
#include "fd_mpi.h"
#include "fd_report.h"
#include "fd_report_read.h"
#include "fd_runfile.h"

static int load_report(const char *path, json_t **r)
{
    char err[1024];
    if (fd_report_load(path, r, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return -1;
    }
    return 0;
}

/* An output file of the gate (--junit, --markdown), checked before any work: not a
 * directory, its folder exists (made here when missing) and can be written into. */
static int check_out_file(const char *opt, const char *path)
{
    struct stat st;
    if (!*path || (!stat(path, &st) && S_ISDIR(st.st_mode))) {
        fprintf(stderr, "flashdrift: %s %s: is a directory (expected a file name)\n", opt, path);
        return -1;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    for (char *p = dir + 1; ; p++) {
        const int end = !*p;
        if (*p && *p != '/') continue;
        *p = 0;
        if (mkdir(dir, 0755) && errno != EEXIST) {
            fprintf(stderr, "flashdrift: %s %s: cannot create the folder %s: %s\n", opt, path, dir, strerror(errno));
            return -1;
        }
        if (end) break;
        *p = '/';
    }
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "flashdrift: %s %s: %s is not a directory\n", opt, path, dir);
        return -1;
    }
    if (access(dir, W_OK | X_OK)) {
        fprintf(stderr, "flashdrift: %s %s: cannot write into %s: %s\n", opt, path, dir, strerror(errno));
        return -1;
    }
    return 0;
}

int fd_cmd_gate(int argc, char **argv)
{
    const char *input = NULL, *policy = NULL, *baseline = NULL, *junit = NULL, *md = NULL;
    fd_run_opts o;
    fd_run_opts_default(&o);
    int run_opts_given = 0, allow_partial = 0, no_baseline = 0, allow_missing_backend = 0;
    enum { OPT_POLICY = FD_OPT_CMD, OPT_BASELINE, OPT_JUNIT, OPT_MARKDOWN, OPT_ALLOW_PARTIAL, OPT_NO_BASELINE,
           OPT_ALLOW_MISSING };
    static const struct option lo[] = {{"policy", required_argument, NULL, OPT_POLICY},
                                       {"allow-partial", no_argument, NULL, OPT_ALLOW_PARTIAL},
                                       {"no-baseline", no_argument, NULL, OPT_NO_BASELINE},
                                       {"allow-missing-backend", no_argument, NULL, OPT_ALLOW_MISSING},
                                       {"baseline", required_argument, NULL, OPT_BASELINE},
                                       {"junit", required_argument, NULL, OPT_JUNIT},
                                       {"markdown", required_argument, NULL, OPT_MARKDOWN},
                                       {NULL, 0, NULL, 0}};
    fd_getopt go;
    if (fd_getopt_init(&go, "gate", argc, argv, fd_run_longopts, lo)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&go)) != FD_OPT_END;) {
        switch (c) {
        case FD_OPT_HELP: return FD_EXIT_PASS;
        case FD_OPT_ERROR: return FD_EXIT_USAGE;
        case OPT_POLICY: policy = go.arg; break;
        case OPT_BASELINE: baseline = go.arg; break;
        case OPT_JUNIT: junit = go.arg; break;
        case OPT_MARKDOWN: md = go.arg; break;
        case OPT_ALLOW_PARTIAL: allow_partial = 1; break;
        case OPT_NO_BASELINE: no_baseline = 1; break;
        case OPT_ALLOW_MISSING: allow_missing_backend = 1; break;
        case FD_OPT_POSITIONAL:
            if (input) return fd_usage_error("gate", "one case file or report expected, got also %s", go.arg);
            input = go.arg;
            break;
        default:
            if (fd_run_option("gate", c, go.arg, &o)) return FD_EXIT_USAGE;
            run_opts_given |= c != FD_OPT_RUN_QUIET;
        }
    }
    if (!input || !policy) return fd_usage_error("gate", "CASEFILE|REPORT and --policy FILE are required");
    char err[1024];
    fd_gate_policy pol;
    if (fd_gate_policy_load(policy, &pol, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    json_t *base = NULL, *report = NULL;
    if (baseline && no_baseline) {
        fprintf(stderr, "flashdrift: gate: --baseline and --no-baseline exclude each other\n");
        return FD_EXIT_USAGE;
    }
    if (pol.base_on && !baseline && !no_baseline) {
        fprintf(stderr, "flashdrift: %s has a baseline rule: give --baseline FILE, or --no-baseline to gate without it\n",
                policy);
        return FD_EXIT_USAGE;
    }
    if ((junit && check_out_file("--junit", junit)) || (md && check_out_file("--markdown", md)))
        return FD_EXIT_USAGE;
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
        if (fd_mkdir_p(o.out, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            json_decref(base);
            return FD_EXIT_USAGE;
        }
        rc = fd_run_and_write(input, &o, &report);
        if (!report) {
            json_decref(base);
            return rc;
        }
    } else {
        if (fd_mpi_rank() != 0) { /* a report to gate: rank 0's work alone under mpirun */
            json_decref(probe);
            json_decref(base);
            return FD_EXIT_PASS;
        }
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
        if (!json_is_true(json_object_get(report, "complete")) && !allow_partial) {
            fprintf(stderr, "flashdrift: %s is a partial report (an interrupted run, %zu cases): the gate refuses it; "
                            "resume the run, or --allow-partial to gate the finished cases\n", input,
                    json_array_size(json_object_get(report, "cases")));
            json_decref(report);
            json_decref(base);
            return FD_EXIT_USAGE;
        }
    }
    if (!json_array_size(json_object_get(report, "cases"))) { /* gating nothing is not a pass */
        fprintf(stderr, "flashdrift: %s: no case matches: the report has no case\n", input);
        json_decref(report);
        json_decref(base);
        return FD_EXIT_USAGE;
    }
    if (!allow_missing_backend && fd_gate_check_backends(&pol, report, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s; --allow-missing-backend gates the others\n", err);
        json_decref(report);
        json_decref(base);
        return FD_EXIT_USAGE;
    }
    fd_gate_result g;
    json_t *model = NULL;
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
    g.partial = !json_is_true(json_object_get(report, "complete"));
    g.baseline_skipped = pol.base_on && !baseline;
    /* the outputs render the gate's model, never the engine's structs */
    model = fd_gate_model(&g, &pol, baseline);
    if (!model) {
        fprintf(stderr, "flashdrift: out of memory\n");
        rc = FD_EXIT_INTERNAL;
        goto out;
    }
    fd_gate_print(model, stderr);
    if (junit && fd_gate_junit(model, junit, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_USAGE;
        goto out;
    }
    if (md && fd_gate_markdown(model, md, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_USAGE;
        goto out;
    }
    fd_gate_summary(model, stdout);
    rc = g.failed ? FD_EXIT_GATE : FD_EXIT_PASS;
out:
    json_decref(model);
    fd_gate_result_free(&g);
    json_decref(report);
    json_decref(base);
    return rc;
}

int fd_cmd_diff(int argc, char **argv)
{
    const char *files[2] = {NULL, NULL}, *md = NULL, *js = NULL, *html = NULL;
    int nf = 0, fail_on_reg = 0;
    enum { OPT_MARKDOWN = FD_OPT_CMD, OPT_JSON, OPT_HTML, OPT_FAIL_ON_REGRESSION };
    static const struct option lo[] = {{"markdown", required_argument, NULL, OPT_MARKDOWN},
                                       {"json", required_argument, NULL, OPT_JSON},
                                       {"html", required_argument, NULL, OPT_HTML},
                                       {"fail-on-regression", no_argument, NULL, OPT_FAIL_ON_REGRESSION},
                                       {NULL, 0, NULL, 0}};
    fd_getopt g;
    if (fd_getopt_init(&g, "diff", argc, argv, lo, NULL)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        switch (c) {
        case FD_OPT_HELP: return FD_EXIT_PASS;
        case OPT_MARKDOWN: md = g.arg; break;
        case OPT_JSON: js = g.arg; break;
        case OPT_HTML: html = g.arg; break;
        case OPT_FAIL_ON_REGRESSION: fail_on_reg = 1; break;
        case FD_OPT_POSITIONAL:
            if (nf == 2) return fd_usage_error("diff", "two reports expected, got also %s", g.arg);
            files[nf++] = g.arg;
            break;
        default: return FD_EXIT_USAGE;
        }
    }
    if (nf != 2) return fd_usage_error("diff", "two reports expected: OLD NEW");
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
        int h = fd_render_html(nw, old, d, html, err, sizeof err);
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
    const char *input = NULL, *name = NULL, *dir = "reports/baselines";
    int force = 0, update = 0;
    enum { OPT_NAME = FD_OPT_CMD, OPT_DIR, OPT_FORCE };
    static const struct option lo[] = {{"name", required_argument, NULL, OPT_NAME},
                                       {"dir", required_argument, NULL, OPT_DIR},
                                       {"force", no_argument, NULL, OPT_FORCE},
                                       {NULL, 0, NULL, 0}};
    fd_getopt g;
    if (fd_getopt_init(&g, "baseline", argc, argv, lo, NULL)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        switch (c) {
        case FD_OPT_HELP: return FD_EXIT_PASS;
        case OPT_NAME: name = g.arg; break;
        case OPT_DIR: dir = g.arg; break;
        case OPT_FORCE: force = 1; break;
        case FD_OPT_POSITIONAL:
            if (!update) {
                if (strcmp(g.arg, "update"))
                    return fd_usage_error("baseline", "unknown action '%s' (expected: update)", g.arg);
                update = 1;
            } else if (input) {
                return fd_usage_error("baseline", "one report expected, got also %s", g.arg);
            } else {
                input = g.arg;
            }
            break;
        default: return FD_EXIT_USAGE;
        }
    }
    if (!update) return fd_usage_error("baseline", "an action is required: update");
    if (!input || !name) return fd_usage_error("baseline", "REPORT and --name NAME are required");
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
    enum { OPT_OUT = FD_OPT_CMD, OPT_BASELINE };
    static const struct option lo[] = {{"out", required_argument, NULL, OPT_OUT},
                                       {"baseline", required_argument, NULL, OPT_BASELINE},
                                       {NULL, 0, NULL, 0}};
    fd_getopt g;
    if (fd_getopt_init(&g, "html", argc, argv, lo, NULL)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        switch (c) {
        case FD_OPT_HELP: return FD_EXIT_PASS;
        case OPT_OUT: out = g.arg; break;
        case OPT_BASELINE: baseline = g.arg; break;
        case FD_OPT_POSITIONAL:
            if (input) return fd_usage_error("html", "one report expected, got also %s", g.arg);
            input = g.arg;
            break;
        default: return FD_EXIT_USAGE;
        }
    }
    if (!input) return fd_usage_error("html", "a REPORT (or an explain.json) is required");
    char def[4200], err[1024];
    if (!out) {
        /* report.json -> report.html beside it */
        snprintf(def, sizeof def, "%s", input);
        char *dot = strrchr(def, '.'), *slash = strrchr(def, '/');
        if (dot && (!slash || dot > slash)) *dot = 0;
        strncat(def, ".html", sizeof def - strlen(def) - 1);
        out = def;
    }
    /* a directory given as --out is a usage error, found before anything is rendered */
    if (fd_check_output_file(out, "--out", err, sizeof err)) {
        fprintf(stderr, "flashdrift: html: %s\n", err);
        return FD_EXIT_USAGE;
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
    /* the baseline section shows the diff baseline -> report */
    json_t *d = b ? fd_diff_reports(b, baseline, r, input) : NULL;
    int h = -1;
    if (b && !d) snprintf(err, sizeof err, "out of memory");
    else h = fd_render_html(r, b, d, out, err, sizeof err);
    json_decref(d);
    json_decref(r);
    json_decref(b);
    if (h) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return h > 0 ? FD_EXIT_USAGE : FD_EXIT_INTERNAL;
    }
    printf("%s\n", out);
    return FD_EXIT_PASS;
}
