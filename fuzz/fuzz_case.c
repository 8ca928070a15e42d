/* fuzz_case.c: libFuzzer target for the case-file reader (fd_casefile_load: JSON, keys,
 * sweeps, exclusions, flash knobs, policy, expansion into cases and their ids). The
 * reader takes a path, so the input is written to a file first (fd_fuzz.h). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fd_case.h"
#include "fd_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fd_fuzz_write("case.json", data, size);
    fd_casefile cf;
    char err[1024];
    if (fd_casefile_load(path, &cf, err, sizeof err) == 0) {
        if (cf.ncases <= 0 || !cf.cases) abort();
        for (int i = 0; i < cf.ncases; i++) {
            char id[160];
            fd_case_make_id(&cf.cases[i], id, sizeof id);
            if (strcmp(id, cf.cases[i].id) || !fd_dist_name(cf.cases[i].dist)) abort();
        }
        fd_casefile_free(&cf);
    } else if (!err[0]) {
        abort(); /* every failure explains itself */
    }
    return 0;
}
