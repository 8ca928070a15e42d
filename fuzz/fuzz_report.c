/* fuzz_report.c: libFuzzer target for reading reports back: fd_report_validate on what
 * jansson makes of the input, then on a valid tree what gate and diff do with it:
 * fd_gate_eval under the stored CI and strict policies (with and without a baseline),
 * fd_gate_print / markdown / junit, fd_diff_reports, fd_diff_print / markdown. The input
 * is one report (used as both old and new, baseline and current) or two separated by the
 * first NUL byte (old, then new). */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_diff.h"
#include "fd_diff_out.h"
#include "fd_fuzz.h"
#include "fd_gate.h"
#include "fd_gate_out.h"
#include "fd_html.h"
#include "fd_report_read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static fd_gate_policy pol[2];
static FILE *devnull;

static void init(void)
{
    static const char *const files[2] = {FD_FUZZ_ROOT "/cases/policy-ci.json", FD_FUZZ_ROOT "/cases/policy-strict.json"};
    char err[1024];
    setenv("FD_GNUPLOT", "true", 1);
    for (int i = 0; i < 2; i++)
        if (fd_gate_policy_load(files[i], &pol[i], err, sizeof err)) {
            fprintf(stderr, "fuzz_report: %s\n", err);
            abort();
        }
    devnull = fopen("/dev/null", "w");
    if (!devnull) abort();
}

static json_t *load(const uint8_t *d, size_t n, const char *name)
{
    json_error_t je;
    json_t *j = json_loadb((const char *)d, n, JSON_REJECT_DUPLICATES, &je);
    if (!j) return NULL;
    char err[1024];
    err[0] = 0;
    if (fd_report_validate(name, j, err, sizeof err)) {
        if (!err[0]) abort();
        json_decref(j);
        return NULL;
    }
    return j;
}

static void gate(const json_t *report, const json_t *base)
{
    char err[1024], path[1200];
    for (int i = 0; i < 2; i++) {
        fd_gate_result g;
        if (fd_gate_eval(&pol[i], report, base, &g, err, sizeof err)) abort();
        json_t *gm = fd_gate_model(&g, &pol[i], base ? "old.json" : NULL);
        if (!gm) abort();
        fd_gate_print(gm, devnull);
        fd_gate_summary(gm, devnull);
        snprintf(path, sizeof path, "%s/gate.md", fd_fuzz_dir());
        if (fd_gate_markdown(gm, path, err, sizeof err)) abort();
        snprintf(path, sizeof path, "%s/junit.xml", fd_fuzz_dir());
        if (fd_gate_junit(gm, path, err, sizeof err)) abort();
        json_decref(gm);
        fd_gate_result_free(&g);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!devnull) init();
    const uint8_t *nul = memchr(data, 0, size);
    json_t *old = load(data, nul ? (size_t)(nul - data) : size, "old.json");
    json_t *nw = nul ? load(nul + 1, size - (size_t)(nul - data) - 1, "new.json") : json_incref(old);
    if (old && nw) {
        gate(nw, NULL);
        gate(nw, old);
        json_t *d = fd_diff_reports(old, "old.json", nw, "new.json");
        if (!d) abort();
        (void)fd_diff_has_regression(d);
        fd_diff_print(d, devnull);
        char err[1024], path[1200];
        snprintf(path, sizeof path, "%s/diff.md", fd_fuzz_dir());
        if (fd_diff_markdown(d, path, err, sizeof err)) abort();
        snprintf(path, sizeof path, "%s/report.html", fd_fuzz_dir());
        if (fd_render_html(nw, old, d, path, err, sizeof err)) abort();
        json_decref(d);
    }
    json_decref(old);
    json_decref(nw);
    return 0;
}
