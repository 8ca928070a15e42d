/* fuzz_bundle_st.c: libFuzzer target for a whole .safetensors bundle through fd_bundle_load
 * (the safetensors reader, "__metadata__" as the bundle's meta with string values, tensor
 * names, shapes and dtypes checked against each other, conversion to fd_problem layouts). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "fd_fuzz.h"
#include "fd_import.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fd_fuzz_write("bundle.safetensors", data, size);
    fd_bundle b;
    char err[1024];
    err[0] = 0;
    if (fd_bundle_load(path, &b, err, sizeof err) == 0) {
        const fd_problem *p = &b.prob;
        if (!b.q || !b.k || !b.v || b.nout < 1 || p->batch <= 0 || p->heads <= 0 || p->kv_heads <= 0 ||
            p->heads % p->kv_heads || !(p->dropout_p >= 0.0 && p->dropout_p < 1.0))
            abort();
        /* touch the last element of every converted tensor */
        const size_t nq = (size_t)p->batch * (size_t)p->seqlen_q * (size_t)p->heads * (size_t)p->head_dim;
        const size_t nkv = (size_t)p->batch * (size_t)p->seqlen_k * (size_t)p->kv_heads * (size_t)p->head_dim;
        volatile float s = b.q[nq - 1] + b.k[nkv - 1] + b.v[nkv - 1];
        for (int i = 0; i < b.nout; i++) s += b.out[i].o[nq - 1];
        (void)s;
        fd_bundle_free(&b);
    } else if (!err[0]) {
        abort();
    }
    return 0;
}
