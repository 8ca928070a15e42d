/* fd_cmd_check.c: `flashdrift check --tensors PATH`: imported tensors judged by the one
 * pipeline (fd_run.h) through the same run loop as `run` (journal, --resume, Ctrl-C,
 * --repeat, --explain): each bundle is a case whose inputs and outputs are given
 * (fd_import.h, docs/import.md). Every bundle is validated before anything runs or is
 * written, so bad input exits 2 with nothing written. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fd_capture.h"
#include "fd_cmds.h"
#include "fd_import.h"
#include "fd_opt.h"
#include "fd_out.h"
#include "fd_run.h"
#include "fd_runfile.h"

/* A new version of summary.md that starts with the current one (fd_doc: written
 * atomically by fd_doc_commit). */
static int open_append(fd_doc *doc, const char *md, char *err, size_t errlen)
{
    if (fd_doc_open(doc, md, err, errlen)) return -1;
    FILE *in = fopen(md, "r");
    if (in) {
        char blk[4096];
        size_t n;
        while ((n = fread(blk, 1, sizeof blk, in)) > 0) fwrite(blk, 1, n, doc->f);
        fclose(in);
    }
    return 0;
}

/* summary.md gets the imported outputs against each other. */
static int append_import_md(const json_t *report, const char *md, char *err, size_t errlen)
{
    fd_doc doc;
    if (open_append(&doc, md, err, errlen)) return -1;
    FILE *f = doc.f;
    fprintf(f, "\n## Imported outputs against each other\n\n");
    fprintf(f, "| case | a | b | max abs | rel l2 | max ulp | identical |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        size_t k;
        json_t *pr;
        json_array_foreach(json_object_get(json_object_get(c, "import"), "pairs"), k, pr) {
            fprintf(f, "| %s | %s | %s | %.3g | %.3g | %.3g | %.4f |\n",
                    json_string_value(json_object_get(c, "id")), json_string_value(json_object_get(pr, "a")),
                    json_string_value(json_object_get(pr, "b")), json_number_value(json_object_get(pr, "max_abs")),
                    json_number_value(json_object_get(pr, "rel_l2")), json_number_value(json_object_get(pr, "max_ulp")),
                    (double)json_integer_value(json_object_get(pr, "identical")) /
                        (double)json_integer_value(json_object_get(pr, "elements")));
        }
    }
    return fd_doc_commit(&doc, err, errlen);
}

static const char *jstr(const json_t *j, const char *k)
{
    const char *s = json_string_value(json_object_get(j, k));
    return s ? s : "";
}

/* summary.md: the training step, call by call, and the first call beyond rounding. */
static int append_capture_md(const json_t *cap, const char *md, char *err, size_t errlen)
{
    fd_doc doc;
    if (open_append(&doc, md, err, errlen)) return -1;
    FILE *f = doc.f;
    fprintf(f, "\n## Training step: ");
    fd_md_text(f, jstr(cap, "model"));
    fprintf(f, " (");
    fd_md_text(f, jstr(cap, "label"));
    fprintf(f, "), loss %.9g\n\n", fd_json_number(json_object_get(cap, "loss")));
    const json_t *first = json_object_get(cap, "first_beyond_rounding");
    if (json_is_object(first)) {
        fprintf(f, "**First call beyond rounding: call %lld, ", json_integer_value(json_object_get(first, "index")));
        fd_md_text(f, jstr(first, "module"));
        fprintf(f, " (%s).** ", jstr(first, "verdict"));
        const json_t *ex = json_object_get(first, "explanation");
        if (json_is_string(ex)) fd_md_text(f, json_string_value(ex));
        else if (json_is_object(ex)) {
            fprintf(f, "Hypothesis `");
            fd_md_text(f, jstr(ex, "hypothesis"));
            fprintf(f, "`: ");
            fd_md_text(f, jstr(ex, "what"));
        } else
            fd_md_text(f, jstr(first, "reasons"));
        fprintf(f, "\n\n");
    } else {
        fprintf(f, "Every captured attention call is within rounding of the exact result.\n\n");
    }
    fprintf(f, "| call | module | op | verdict | max abs | ratio | gradients | consumed as |\n"
               "| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(cap, "calls"), i, e) {
        fprintf(f, "| %lld | ", json_integer_value(json_object_get(e, "index")));
        fd_md_text(f, jstr(e, "module"));
        fprintf(f, " | ");
        fd_md_text(f, jstr(e, "op"));
        fprintf(f, " | %s", jstr(e, "verdict"));
        if (json_object_get(e, "not_measured")) {
            fprintf(f, ": ");
            fd_md_text(f, jstr(e, "not_measured"));
            fprintf(f, " | - | - | - | - |\n");
            continue;
        }
        const json_t *ma = json_object_get(e, "max_abs"), *ra = json_object_get(e, "ratio");
        fprintf(f, " | %.3g | ", fd_json_number(ma));
        if (json_is_null(ra) || !ra) fprintf(f, "-");
        else fprintf(f, "%.3g", fd_json_number(ra));
        fprintf(f, " | %s | %s |\n", json_is_true(json_object_get(e, "gradients")) ? "judged" : "-",
                json_is_string(json_object_get(e, "consumed")) ? jstr(e, "consumed") : "-");
    }
    return fd_doc_commit(&doc, err, errlen);
}

/* stdout: one line for the step and one for its first call beyond rounding. */
static void print_capture(const json_t *cap)
{
    const json_t *first = json_object_get(cap, "first_beyond_rounding");
    char b1[300], b2[300];
    printf("capture %s (%s): %lld calls; ", fd_md(jstr(cap, "model"), b1, sizeof b1), fd_md(jstr(cap, "label"), b2, sizeof b2),
           json_integer_value(json_object_get(cap, "calls_total")));
    if (!json_is_object(first)) {
        printf("every captured attention call is within rounding\n");
        return;
    }
    const json_t *ex = json_object_get(first, "explanation");
    printf("first call beyond rounding: call %lld %s (%s)", json_integer_value(json_object_get(first, "index")),
           fd_md(jstr(first, "module"), b1, sizeof b1), jstr(first, "verdict"));
    if (json_is_string(ex)) printf(": %s", json_string_value(ex));
    else if (json_is_object(ex)) printf(": %s: %s", fd_md(jstr(ex, "hypothesis"), b1, sizeof b1), fd_md(jstr(ex, "what"), b2, sizeof b2));
    printf("\n");
}

/* A captured step: report.json gets the "capture" object (fd_capture_report), rewritten
 * atomically, and summary.md its section (appended by append_capture_md). */
static int capture_section(const fd_capture *cap, json_t *report, const char *out, char *err, size_t errlen)
{
    json_object_set_new(report, "capture", fd_capture_report(cap, report));
    char path[4200];
    snprintf(path, sizeof path, "%s/report.json", out);
    if (fd_write_json_atomic(path, report, err, errlen)) return -1;
    snprintf(path, sizeof path, "%s/summary.md", out);
    return append_capture_md(json_object_get(report, "capture"), path, err, errlen);
}

/* PATH's bundles (a captured step's in call order, loaded into *cap when cap is not NULL),
 * every one loaded and validated (and checked against its index entry): FD_EXIT_PASS with
 * *paths, or the exit code after printing why (nothing allocated is left). */
int fd_check_list(const char *tensors, fd_capture *cap, char ***paths_out, int *np_out)
{
    char err[2048];
    char **paths = NULL;
    int np = 0;
    const int is_cap = cap != NULL;
    *paths_out = NULL;
    *np_out = 0;
    if (is_cap) {
        if (fd_capture_load(tensors, cap, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            return FD_EXIT_USAGE;
        }
        if (fd_capture_paths(cap, &paths, &np)) {
            fprintf(stderr, "flashdrift: out of memory\n");
            fd_capture_free(cap);
            return FD_EXIT_INTERNAL;
        }
    } else if (fd_bundle_list(tensors, &paths, &np, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    /* Validate every bundle first: input errors exit 2 before anything is written. */
    int rc = FD_EXIT_PASS;
    for (int i = 0, call = 0; i < np && rc == FD_EXIT_PASS; i++) {
        fd_bundle b;
        if (fd_bundle_load(paths[i], &b, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = FD_EXIT_USAGE;
        } else {
            if (b.nout == 0) {
                fprintf(stderr, "flashdrift: %s: no output to check (expected at least one out_NAME tensor)\n", paths[i]);
                rc = FD_EXIT_USAGE;
            }
            if (is_cap) {
                while (!cap->calls[call].bundle[0]) call++;
                if (rc == FD_EXIT_PASS && fd_capture_check_bundle(cap, call, &b, err, sizeof err)) {
                    fprintf(stderr, "flashdrift: %s\n", err);
                    rc = FD_EXIT_USAGE;
                }
                call++;
            }
            fd_bundle_free(&b);
        }
    }
    if (rc != FD_EXIT_PASS) {
        for (int i = 0; i < np; i++) free(paths[i]);
        free(paths);
        if (is_cap) fd_capture_free(cap);
        return rc;
    }
    *paths_out = paths;
    *np_out = np;
    return FD_EXIT_PASS;
}

int fd_check_tensors(const char *tensors, int rows, const fd_run_opts *op, json_t **report_out)
{
    fd_run_opts o = *op;
    if (report_out) *report_out = NULL;
    char err[2048];
    char **paths = NULL;
    int np = 0;
    fd_capture cap;
    const int is_cap = fd_capture_is(tensors);
    int rc = fd_check_list(tensors, is_cap ? &cap : NULL, &paths, &np);
    if (rc != FD_EXIT_PASS) return rc;
    fd_casefile cf;
    fd_casefile_bundles(&cf, tensors, paths, np, rows);
    if (cf.ncases != np) {
        fprintf(stderr, "flashdrift: out of memory\n");
        fd_casefile_free(&cf);
        if (is_cap) fd_capture_free(&cap);
        return FD_EXIT_INTERNAL;
    }
    json_t *report = NULL;
    rc = fd_run_and_write_cf(&cf, &o, &report);
    fd_casefile_free(&cf);
    if (report) {
        char md[4200];
        snprintf(md, sizeof md, "%s/summary.md", o.out);
        if (append_import_md(report, md, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = FD_EXIT_INTERNAL;
        }
        if (is_cap && capture_section(&cap, report, o.out, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = FD_EXIT_INTERNAL;
        }
        if (!o.quiet) {
            json_t *t = json_object_get(report, "totals");
            printf("%lld bundles: %lld PASS, %lld MARGINAL, %lld FAIL, %lld UNDECIDED, %lld UNJUDGED -> %s/report.json\n",
                   json_integer_value(json_object_get(t, "cases")), json_integer_value(json_object_get(t, "pass")),
                   json_integer_value(json_object_get(t, "marginal")), json_integer_value(json_object_get(t, "fail")),
                   json_integer_value(json_object_get(t, "undecided")), json_integer_value(json_object_get(t, "unjudged")),
                   o.out);
        }
    }
    if (is_cap) fd_capture_free(&cap);
    if (report_out) *report_out = report;
    else json_decref(report);
    return rc;
}

int fd_cmd_check(int argc, char **argv)
{
    const char *tensors = NULL;
    int rows = 32;
    fd_run_opts o;
    fd_run_opts_default(&o);
    o.out = "out/check";
    o.backend = "import";
    enum { OPT_TENSORS = FD_OPT_CMD, OPT_ROWS };
    static const struct option lo[] = {{"tensors", required_argument, NULL, OPT_TENSORS},
                                       {"rows-per-head", required_argument, NULL, OPT_ROWS},
                                       {NULL, 0, NULL, 0}};
    fd_getopt g;
    if (fd_getopt_init(&g, "check", argc, argv, fd_run_longopts, lo)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        char *end = NULL;
        long v;
        switch (c) {
        case FD_OPT_HELP: return FD_EXIT_PASS;
        case FD_OPT_ERROR: return FD_EXIT_USAGE;
        case FD_OPT_POSITIONAL:
            return fd_usage_error("check", "unexpected argument '%s' (the bundles go after --tensors)", g.arg);
        case OPT_TENSORS: tensors = g.arg; break;
        case OPT_ROWS:
            v = strtol(g.arg, &end, 10);
            if (!*g.arg || *end || v < 0 || v > (1L << 20))
                return fd_usage_error("check", "--rows-per-head expects an integer >= 0 (0: every row), got '%s'", g.arg);
            rows = (int)v;
            break;
        case FD_OPT_RUN_BACKEND:
            return fd_usage_error("check", "--backend does not apply: check judges the outputs the bundles give");
        default:
            if (fd_run_option("check", c, g.arg, &o)) return FD_EXIT_USAGE;
        }
    }
    if (!tensors) return fd_usage_error("check", "--tensors PATH is required");
    json_t *report = NULL;
    const int rc = fd_check_tensors(tensors, rows, &o, &report);
    if (report && json_object_get(report, "capture") && !o.quiet) print_capture(json_object_get(report, "capture"));
    json_decref(report);
    return rc;
}
