/* fuzz_bundle_meta.c: libFuzzer target for a bundle directory's meta.json and everything
 * fd_bundle_load checks against it (layout, mask, dtype, scale, dropout_p, seed, offset,
 * roles, info; shapes and dtypes of the tensors as the meta reads them). The tensors are
 * fixed (fd_fuzz_bundle.h, written once per process); the input is meta.json. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fd_fuzz.h"
#include "fd_fuzz_bundle.h"
#include "fd_import.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[1200];

static void check(const fd_bundle *b)
{
    const fd_problem *p = &b->prob;
    if (!b->q || !b->k || !b->v || b->nout < 1 || b->nout > FD_MAX_BACKENDS) abort();
    if (p->batch <= 0 || p->heads <= 0 || p->kv_heads <= 0 || p->seqlen_q <= 0 || p->seqlen_k <= 0 ||
        p->head_dim <= 0 || p->heads % p->kv_heads)
        abort();
    if (!(p->dropout_p >= 0.0 && p->dropout_p < 1.0)) abort();
    for (int i = 0; i < b->nout; i++)
        if (!b->out[i].o) abort();
}

static void init(void)
{
    fd_bundle b;
    char err[1024];
    fd_fuzz_bundle(&b);
    snprintf(dir, sizeof dir, "%s/bundle", fd_fuzz_dir());
    if (fd_bundle_write(&b, dir, 0, 0, err, sizeof err)) {
        fprintf(stderr, "fuzz_bundle_meta: %s\n", err);
        abort();
    }
    const char *seeds = getenv("FD_FUZZ_WRITE_SEEDS");
    if (seeds) {
        char p[1200];
        snprintf(p, sizeof p, "%s/bundle.safetensors", seeds);
        if (fd_bundle_write(&b, p, 1, 0, err, sizeof err)) abort();
        snprintf(p, sizeof p, "%s/npy", seeds); /* its meta.json is the meta seed */
        if (fd_bundle_write(&b, p, 0, 0, err, sizeof err)) abort();
    }
    fd_bundle_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0]) init();
    char path[1300];
    snprintf(path, sizeof path, "%s/meta.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f)) abort();
    fd_bundle b;
    char err[1024];
    err[0] = 0;
    if (fd_bundle_load(dir, &b, err, sizeof err) == 0) {
        check(&b);
        fd_bundle_free(&b);
    } else if (!err[0]) {
        abort();
    }
    return 0;
}
