/* fuzz_npy_header.c: libFuzzer target for the strict .npy header parser (fd_npy_parse_header).
 * Built by scripts/fuzz with clang -fsanitize=fuzzer,address,undefined. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fd_npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size heap copy, so reading one byte past the header is caught */
    char *h = malloc(size ? size : 1);
    if (!h) return 0;
    if (size) memcpy(h, data, size);
    fd_atype t;
    int fortran = 0, nd = 0;
    int64_t shape[FD_ARRAY_MAX_DIMS];
    char err[256];
    if (fd_npy_parse_header(h, size, &t, &fortran, &nd, shape, err, sizeof err) == 0) {
        if (nd < 0 || nd > FD_ARRAY_MAX_DIMS || fd_shape_numel(nd, shape) < 0 || fortran) abort();
    } else if (!err[0]) {
        abort(); /* every failure explains itself */
    }
    free(h);
    return 0;
}
