/* fuzz_capture.c: libFuzzer target for the capture index (capture.json of a captured
 * training step, docs/capture-format.md): fd_capture_load on the input written as
 * DIR/capture.json beside an empty bundle directory call-0000, then, when it loads,
 * fd_capture_paths and fd_capture_report against an empty report. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "fd_capture.h"
#include "fd_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *report;
    char sub[1200], err[2048];
    if (!report) {
        snprintf(sub, sizeof sub, "%s/call-0000", fd_fuzz_dir());
        if (mkdir(sub, 0755)) abort();
        report = json_pack("{s:[]}", "cases");
    }
    fd_fuzz_write("capture.json", data, size);
    fd_capture c;
    if (fd_capture_load(fd_fuzz_dir(), &c, err, sizeof err)) return 0;
    char **paths = NULL;
    int n = 0;
    if (!fd_capture_paths(&c, &paths, &n)) {
        for (int i = 0; i < n; i++) free(paths[i]);
    }
    free(paths);
    json_decref(fd_capture_report(&c, report));
    fd_capture_free(&c);
    return 0;
}
