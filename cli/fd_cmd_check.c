/* fd_cmd_check.c: `flashdrift check --tensors PATH`: imported tensors against the MPFR
 * reference (fd_import.h, docs/import.md). Every bundle is validated before anything
 * runs or is written, so bad input exits 2 with nothing written. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fd_cmds.h"
#include "fd_import.h"
#include "fd_report.h"
#include "fd_run.h"

static void check_usage(FILE *f)
{
    fprintf(f,
            "usage: flashdrift check --tensors PATH [--out DIR] [--jobs N] [--rows-per-head N] [--quiet]\n\n"
            "Runs the MPFR reference on the exact inputs of a bundle of dumped tensors (a directory\n"
            "with meta.json and .npy files, a .safetensors file, or a directory of such bundles),\n"
            "measures every supplied output against it and against each other, and writes\n"
            "DIR/report.json and DIR/summary.md (default DIR: out/check). --rows-per-head: query\n"
            "rows checked per (batch, head), 0 = all (default 32). docs/import.md has the format.\n"
            "exit: 0 all pass, 1 a case failed, 2 usage or input error, 3 internal error.\n");
}

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
    fprintf(f, "\n## Imported outputs against each other and dropout masks\n\n");
    fprintf(f, "| case | a | b | max abs | rel l2 | max ulp | identical |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        json_t *im = json_object_get(c, "import");
        size_t k;
        json_t *pr;
        json_array_foreach(json_object_get(im, "pairs"), k, pr) {
            fprintf(f, "| %s | %s | %s | %.3g | %.3g | %.3g | %.4f |\n",
                    json_string_value(json_object_get(c, "id")), json_string_value(json_object_get(pr, "a")),
                    json_string_value(json_object_get(pr, "b")), json_number_value(json_object_get(pr, "max_abs")),
                    json_number_value(json_object_get(pr, "rel_l2")), json_number_value(json_object_get(pr, "max_ulp")),
                    (double)json_integer_value(json_object_get(pr, "identical")) /
                        (double)json_integer_value(json_object_get(pr, "elements")));
        }
    }
    fprintf(f, "\n| case | output | mask agreement with FA2 regeneration | kernel keep rate | threshold keep prob | z |\n"
               "| --- | --- | --- | --- | --- | --- |\n");
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const char *key;
        json_t *m;
        json_object_foreach(json_object_get(json_object_get(c, "import"), "dropout_masks"), key, m)
            fprintf(f, "| %s | %s | %lld / %lld | %.6f | %.6f | %.2f |\n", json_string_value(json_object_get(c, "id")),
                    key, json_integer_value(json_object_get(m, "agree")),
                    json_integer_value(json_object_get(m, "visible")),
                    json_number_value(json_object_get(m, "keep_rate")),
                    json_number_value(json_object_get(m, "keep_threshold")),
                    json_number_value(json_object_get(m, "z_threshold")));
    }
    fclose(f);
    int rc = fd_write_text_atomic(md, buf, len, err, errlen);
    free(buf);
    return rc;
}

int fd_cmd_check(int argc, char **argv)
{
    const char *tensors = NULL, *out = "out/check";
    int jobs = (int)sysconf(_SC_NPROCESSORS_ONLN), quiet = 0, rows = 32;
    char err[2048];
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            check_usage(stdout);
            return FD_EXIT_PASS;
        }
        if (!strcmp(a, "--tensors") || !strcmp(a, "--out")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "flashdrift check: %s needs a value\n", a);
                return FD_EXIT_USAGE;
            }
            *(a[2] == 't' ? &tensors : &out) = argv[++i];
        } else if (!strcmp(a, "--jobs") || !strcmp(a, "--rows-per-head")) {
            const int isjobs = a[2] == 'j';
            char *end = NULL;
            long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : -1;
            if (i + 1 >= argc || !argv[i + 1][0] || *end || v < (isjobs ? 1 : 0) || v > (isjobs ? 1024 : 1L << 20)) {
                fprintf(stderr, "flashdrift check: %s expects an integer in [%d, %ld]\n", a, isjobs ? 1 : 0,
                        isjobs ? 1024L : 1L << 20);
                return FD_EXIT_USAGE;
            }
            *(isjobs ? &jobs : &rows) = (int)v;
            i++;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else {
            fprintf(stderr, "flashdrift check: unexpected argument %s\n", a);
            check_usage(stderr);
            return FD_EXIT_USAGE;
        }
    }
    if (!tensors) {
        fprintf(stderr, "flashdrift check: --tensors PATH is required\n");
        check_usage(stderr);
        return FD_EXIT_USAGE;
    }
    char **paths = NULL;
    int np = 0;
    if (fd_bundle_list(tensors, &paths, &np, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    int rc = FD_EXIT_PASS;
    /* Validate every bundle first: input errors exit 2 before anything is written. */
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
    if (rc == FD_EXIT_PASS && fd_mkdir_p(out, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_USAGE;
    }
    if (rc != FD_EXIT_PASS) {
        for (int i = 0; i < np; i++) free(paths[i]);
        free(paths);
        return rc;
    }
    fd_casefile cf;
    memset(&cf, 0, sizeof cf);
    snprintf(cf.path, sizeof cf.path, "%s", tensors);
    snprintf(cf.name, sizeof cf.name, "check");
    snprintf(cf.description, sizeof cf.description, "imported tensors (flashdrift check --tensors)");
    cf.rows_per_head = rows;
    fd_flash_cfg_default(&cf.flash);
    fd_policy_default(&cf.policy);
    cf.ncases = np;
    json_t *report = fd_report_new(&cf, "import", jobs);
    int nfail = 0;
    for (int i = 0; i < np && rc == FD_EXIT_PASS; i++) {
        fd_bundle b;
        fd_case_result res;
        json_t *extra = NULL;
        if (fd_bundle_load(paths[i], &b, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = FD_EXIT_USAGE;
            break;
        }
        if (fd_run_import(&cf, &b, jobs, &res, &extra, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = fd_interrupted ? FD_EXIT_INTERRUPTED : FD_EXIT_INTERNAL;
            fd_bundle_free(&b);
            break;
        }
        json_t *cj = fd_report_case_json(&res);
        json_object_set_new(cj, "import", extra);
        fd_report_add_case(report, cj);
        if (!quiet) {
            printf("%-40s %-9s", res.c.id, fd_verdict_name(res.verdict));
            for (int t = 0; t < res.nbe; t++)
                printf("  %s %.3g (%.3g ulp)", res.be[t].be->name, res.be[t].m.max_abs, res.be[t].m.max_ulp);
            printf("\n");
        }
        if (res.verdict == FD_FAIL) {
            nfail++;
            fprintf(stderr, "FAIL %s: %s\n", res.c.id, res.reasons);
        }
        fd_case_result_free(&res);
        fd_bundle_free(&b);
    }
    for (int i = 0; i < np; i++) free(paths[i]);
    free(paths);
    fd_report_finish(report, rc == FD_EXIT_PASS);
    char path[4200];
    if (rc == FD_EXIT_PASS) {
        snprintf(path, sizeof path, "%s/report.json", out);
        if (fd_write_json_atomic(path, report, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = FD_EXIT_INTERNAL;
        } else {
            char md[4200];
            snprintf(md, sizeof md, "%s/summary.md", out);
            if (fd_render_summary_md(report, md, err, sizeof err) || append_import_md(report, md, err, sizeof err)) {
                fprintf(stderr, "flashdrift: %s\n", err);
                rc = FD_EXIT_INTERNAL;
            }
        }
        if (rc == FD_EXIT_PASS && !quiet) printf("%d bundles, %d FAIL -> %s\n", np, nfail, path);
        if (rc == FD_EXIT_PASS && nfail) rc = FD_EXIT_GATE;
    }
    json_decref(report);
    return rc;
}
