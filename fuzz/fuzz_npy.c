/* fuzz_npy.c: libFuzzer target for the whole .npy reader (fd_npy_parse: magic, version,
 * header length, header, data length). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fd_npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *b = malloc(size ? size : 1);
    if (!b) return 0;
    if (size) memcpy(b, data, size);
    fd_array a;
    char err[256];
    if (fd_npy_parse(b, size, &a, err, sizeof err) == 0) {
        if (a.numel * fd_atype_size(a.type) > size) abort();
        volatile float s = 0.0f;
        for (size_t i = 0; i < a.numel && i < 4096; i++) s += fd_array_get_f32(&a, i);
        (void)s;
        fd_array_free(&a);
    } else if (!err[0]) {
        abort();
    }
    free(b);
    return 0;
}
