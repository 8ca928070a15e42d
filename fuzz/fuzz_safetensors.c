/* fuzz_safetensors.c: libFuzzer target for the safetensors reader (fd_st_parse: header
 * size, JSON header through jansson, entries, offsets, coverage of the buffer). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fd_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *b = malloc(size ? size : 1);
    if (!b) return 0;
    if (size) memcpy(b, data, size);
    fd_st_file f;
    char err[256];
    if (fd_st_parse(b, size, &f, err, sizeof err) == 0) {
        size_t total = 0;
        for (int i = 0; i < f.n; i++) {
            total += f.t[i].a.numel * fd_atype_size(f.t[i].a.type);
            if (f.t[i].a.numel) (void)fd_array_get_f32(&f.t[i].a, f.t[i].a.numel - 1);
        }
        if (total > size) abort();
        fd_st_free(&f);
    } else if (!err[0]) {
        abort();
    }
    free(b);
    return 0;
}
