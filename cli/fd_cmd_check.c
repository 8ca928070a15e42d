/* fd_cmd_check.c: `flashdrift check --tensors PATH`: imported tensors judged by the one
 * pipeline (fd_run.h) through the same run loop as `run` (journal, --resume, Ctrl-C,
 * --repeat, --explain): each bundle is a case whose inputs and outputs are given
 * (fd_import.h, docs/import.md). Every bundle is validated before anything runs or is
 * written, so bad input exits 2 with nothing written. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fd_cmds.h"
#include "fd_import.h"
#include "fd_report.h"
#include "fd_run.h"
#include "fd_runfile.h"

static void check_usage(FILE *f)
{
    fprintf(f,
            "usage: flashdrift check --tensors PATH [--out DIR] [--jobs N] [--rows-per-head N] [--filter S]\n"
            "                        [--resume] [--repeat N] [--explain fail|all|none] [--quiet]\n\n"
            "Judges tensors dumped by another kernel (a directory with meta.json and .npy files, a\n"
            ".safetensors file, or a directory of such bundles) with the same pipeline as `run`:\n"
            "the MPFR reference on the bundle's exact inputs, every supplied output measured against\n"
            "it; each flash output against a supplied standard output, or, when none is supplied,\n"
            "against standard attention of the same dtype that flashdrift computes from the same\n"
            "inputs (FlashAttention's rule); supplied dropout masks against FA2's regeneration. A\n"
            "metric that was not supplied (no LSE, no mask) is not measured and never judged.\n"
            "Writes DIR/report.json, DIR/summary.md and DIR/report.html (default DIR: out/check).\n"
            "--rows-per-head: query rows checked per (batch, head), 0 = all (default 32). --resume,\n"
            "--repeat, --explain and --filter work as for `run`. docs/import.md has the format.\n"
            "exit: 0 all pass, 1 a case failed (or could not be judged), 2 usage or input error,\n"
            "3 internal error, 130 interrupted (SIGINT), 143 terminated (SIGTERM).\n");
}

/* summary.md gets the imported outputs against each other. */
static int append_import_md(const json_t *report, const char *md, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        snprintf(err, errlen, "%s: out of memory", md);
        return -1;
    }
    FILE *in = fopen(md, "r");
    if (in) {
        char blk[4096];
        size_t n;
        while ((n = fread(blk, 1, sizeof blk, in)) > 0) fwrite(blk, 1, n, f);
        fclose(in);
    }
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
    fclose(f);
    int rc = fd_write_text_atomic(md, buf, len, err, errlen);
    free(buf);
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
    static const struct option longopts[] = {
        {"tensors", required_argument, NULL, 't'}, {"out", required_argument, NULL, 'o'},
        {"jobs", required_argument, NULL, 'j'},    {"rows-per-head", required_argument, NULL, 'r'},
        {"filter", required_argument, NULL, 'f'},  {"repeat", required_argument, NULL, 'R'},
        {"explain", required_argument, NULL, 'e'}, {"resume", no_argument, NULL, 'u'},
        {"quiet", no_argument, NULL, 'q'},         {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc + 1, argv - 1, ":ho:j:", longopts, NULL)) != -1) {
        char *end = NULL;
        long v;
        switch (ch) {
        case 'h':
            check_usage(stdout);
            return FD_EXIT_PASS;
        case 't': tensors = optarg; break;
        case 'o': o.out = optarg; break;
        case 'f': o.filter = optarg; break;
        case 'u': o.resume = 1; break;
        case 'q': o.quiet = 1; break;
        case 'j':
        case 'r':
        case 'R': {
            const long lo = ch == 'r' ? 0 : 1, hi = ch == 'j' ? 1024 : ch == 'R' ? 64 : 1L << 20;
            v = strtol(optarg, &end, 10);
            if (!optarg[0] || *end || v < lo || v > hi) {
                fprintf(stderr, "flashdrift check: --%s expects an integer in [%ld, %ld], got \"%s\"\n",
                        ch == 'j' ? "jobs" : ch == 'R' ? "repeat" : "rows-per-head", lo, hi, optarg);
                return FD_EXIT_USAGE;
            }
            if (ch == 'j') o.jobs = (int)v;
            else if (ch == 'R') o.repeat = (int)v;
            else rows = (int)v;
            break;
        }
        case 'e':
            if (!strcmp(optarg, "fail")) o.explain = FD_EXPLAIN_FAIL;
            else if (!strcmp(optarg, "all")) o.explain = FD_EXPLAIN_ALL;
            else if (!strcmp(optarg, "none")) o.explain = FD_EXPLAIN_NONE;
            else {
                fprintf(stderr, "flashdrift check: --explain expects fail, all or none, got \"%s\"\n", optarg);
                return FD_EXIT_USAGE;
            }
            break;
        case ':':
            fprintf(stderr, "flashdrift check: option %s needs a value (flashdrift check --help)\n", argv[optind - 2]);
            return FD_EXIT_USAGE;
        default:
            fprintf(stderr, "flashdrift check: unrecognized option '%s' (flashdrift check --help)\n", argv[optind - 2]);
            return FD_EXIT_USAGE;
        }
    }
    if (optind - 1 < argc) {
        fprintf(stderr, "flashdrift check: unexpected argument %s (the bundles go after --tensors)\n", argv[optind - 1]);
        return FD_EXIT_USAGE;
    }
    if (!tensors) {
        fprintf(stderr, "flashdrift check: --tensors PATH is required (flashdrift check --help)\n");
        return FD_EXIT_USAGE;
    }
    char err[2048];
    char **paths = NULL;
    int np = 0;
    if (fd_bundle_list(tensors, &paths, &np, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    /* Validate every bundle first: input errors exit 2 before anything is written. */
    int rc = FD_EXIT_PASS;
    for (int i = 0; i < np && rc == FD_EXIT_PASS; i++) {
        fd_bundle b;
        if (fd_bundle_load(paths[i], &b, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = FD_EXIT_USAGE;
        } else {
            if (b.nout == 0) {
                fprintf(stderr, "flashdrift: %s: no output to check (expected at least one out_NAME tensor)\n", paths[i]);
                rc = FD_EXIT_USAGE;
            }
            fd_bundle_free(&b);
        }
    }
    if (rc != FD_EXIT_PASS) {
        for (int i = 0; i < np; i++) free(paths[i]);
        free(paths);
        return rc;
    }
    fd_casefile cf;
    fd_casefile_bundles(&cf, tensors, paths, np, rows);
    if (cf.ncases != np) {
        fprintf(stderr, "flashdrift: out of memory\n");
        fd_casefile_free(&cf);
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
        if (!o.quiet) {
            json_t *t = json_object_get(report, "totals");
            printf("%lld bundles: %lld PASS, %lld MARGINAL, %lld FAIL, %lld UNDECIDED, %lld UNJUDGED -> %s/report.json\n",
                   json_integer_value(json_object_get(t, "cases")), json_integer_value(json_object_get(t, "pass")),
                   json_integer_value(json_object_get(t, "marginal")), json_integer_value(json_object_get(t, "fail")),
                   json_integer_value(json_object_get(t, "undecided")), json_integer_value(json_object_get(t, "unjudged")),
                   o.out);
        }
    }
    json_decref(report);
    return rc;
}
