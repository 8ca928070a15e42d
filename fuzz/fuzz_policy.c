/* fuzz_policy.c: libFuzzer target for the gate's policy reader (fd_gate_policy_parse on
 * whatever jansson makes of the input: schema, limits per dtype, fa_rule, marginal band,
 * dropout, baseline rule, backends). A policy that parses is then applied (fd_gate_eval,
 * fd_gate_print, fd_gate_markdown, fd_gate_junit) to the stored seed report, once alone and
 * once against itself as the baseline. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fd_fuzz.h"
#include "fd_gate.h"
#include "fd_gate_out.h"
#include "fd_report_read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_t *report;
static FILE *devnull;

static void init(void)
{
    char err[1024];
    if (fd_report_load(FD_FUZZ_ROOT "/fuzz/corpus/report/real.json", &report, err, sizeof err)) {
        fprintf(stderr, "fuzz_policy: %s\n", err);
        abort();
    }
    devnull = fopen("/dev/null", "w");
    if (!devnull) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!report) init();
    json_error_t je;
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!root) return 0;
    fd_gate_policy p;
    char err[1024];
    if (fd_gate_policy_parse("policy.json", root, &p, err, sizeof err) == 0) {
        if (!(p.marginal > 0.0 && p.marginal <= 1.0)) abort(); /* fd_gate.h: band in (0, 1] */
        for (int base = 0; base < 2; base++) {
            fd_gate_result g;
            if (fd_gate_eval(&p, report, base ? report : NULL, &g, err, sizeof err)) abort();
            json_t *gm = fd_gate_model(&g, &p, base ? "base.json" : NULL);
        if (!gm) abort();
        fd_gate_print(gm, devnull);
        fd_gate_summary(gm, devnull);
            char path[1200];
            snprintf(path, sizeof path, "%s/gate.md", fd_fuzz_dir());
            if (fd_gate_markdown(gm, path, err, sizeof err)) abort();
            snprintf(path, sizeof path, "%s/junit.xml", fd_fuzz_dir());
            if (fd_gate_junit(gm, path, err, sizeof err)) abort();
            json_decref(gm);
        fd_gate_result_free(&g);
        }
    } else if (!err[0]) {
        abort();
    }
    json_decref(root);
    return 0;
}
