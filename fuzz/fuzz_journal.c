/* fuzz_journal.c: libFuzzer target for the resume journal (fd_journal_read on a
 * cases.partial.jsonl: header line, one case per line, truncated last line), then what
 * `run --resume` does with the kept cases short of recomputing: the verdict and reasons
 * it prints, fd_report_add_case, fd_report_finish, fd_render_summary_md, and
 * fd_report_validate on the resulting report. The case file is cases/smoke.json; the
 * header the run expects is the fixed line below (the seed journal starts with it). */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_case.h"
#include "fd_fuzz.h"
#include "fd_html.h"
#include "fd_report.h"
#include "fd_report_read.h"
#include "fd_runfile.h"
#include "fd_summary.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char header[] =
    "{\"journal\":\"flashdrift-journal/1\",\"case_file\":\"/fuzz/cases/smoke.json\",\"name\":\"smoke\","
    "\"cases\":150,\"case_ids_fnv\":\"0123456789abcdef\",\"flash_config\":{\"br\":128},"
    "\"policy\":{\"fa_ratio\":2.0},\"rows_per_head\":16,\"backends\":\"cpu-flash,cpu-standard\",\"repeat\":1}";

static fd_casefile cf;
static json_t *want, *empty; /* the expected header; an empty report (fd_report_new is slow) */

static void init(void)
{
    char err[1024];
    setenv("FD_GNUPLOT", "true", 1);
    if (fd_casefile_load(FD_FUZZ_ROOT "/cases/smoke.json", &cf, err, sizeof err)) {
        fprintf(stderr, "fuzz_journal: %s\n", err);
        abort();
    }
    json_error_t je;
    want = json_loads(header, 0, &je);
    if (!want) abort();
    empty = fd_report_new(&cf, "cpu-flash,cpu-standard", 1);
    if (!empty) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!want) init();
    const char *path = fd_fuzz_write("cases.partial.jsonl", data, size);
    json_t **done = calloc((size_t)cf.ncases, sizeof *done);
    if (!done) abort();
    int found = 0;
    char err[1024];
    err[0] = 0;
    if (fd_journal_read(path, &cf, want, done, &found, err, sizeof err) == 0) {
        if (!found) abort();
        json_t *report = json_deep_copy(empty);
        if (!report) abort();
        for (int i = 0; i < cf.ncases; i++) {
            if (!done[i]) continue;
            /* what fd_run_casefile reads of a kept case before adding it */
            const char *v = json_string_value(json_object_get(done[i], "verdict"));
            if (!v) abort();
            if (!strcmp(v, "FAIL")) (void)json_string_value(json_object_get(done[i], "reasons"));
            fd_report_add_case(report, json_incref(done[i]));
        }
        fd_report_finish(report, 1);
        char md[1200];
        snprintf(md, sizeof md, "%s/summary.md", fd_fuzz_dir());
        if (fd_render_summary_md(report, md, err, sizeof err)) abort();
        snprintf(md, sizeof md, "%s/report.html", fd_fuzz_dir());
        if (fd_render_html(report, NULL, NULL, md, err, sizeof err)) abort();
        err[0] = 0;
        if (fd_report_validate("report.json", report, err, sizeof err) && !err[0]) abort();
        json_decref(report);
    } else if (!err[0]) {
        abort();
    }
    for (int i = 0; i < cf.ncases; i++) json_decref(done[i]);
    free(done);
    return 0;
}
