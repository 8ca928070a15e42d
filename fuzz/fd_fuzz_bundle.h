/* fd_fuzz_bundle.h: the small bundle the bundle fuzz targets start from (header only):
 * fp16, b1 h2 kv1 s_q 3 s_k 4 d 2, causal_br, dropout 0.17, outputs flash (with lse and
 * dmask) and math. FD_FUZZ_WRITE_SEEDS=DIR makes fuzz_bundle_meta write it to DIR as
 * npy/ (a bundle directory) and bundle.safetensors: the stored seeds come from there. */
#ifndef FD_FUZZ_BUNDLE_H
#define FD_FUZZ_BUNDLE_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_import.h"

static inline void fd_fuzz_bundle(fd_bundle *b)
{
    memset(b, 0, sizeof *b);
    fd_problem *p = &b->prob;
    p->batch = 1; p->heads = 2; p->kv_heads = 1; p->seqlen_q = 3; p->seqlen_k = 4; p->head_dim = 2;
    p->dtype = FD_DT_FP16;
    p->mask = FD_MASK_CAUSAL_BR;
    p->softmax_scale = 0.70710677f;
    p->dropout_p = 0.17;
    p->seed = 42;
    p->offset = 7;
    const size_t nq = 12, nkv = 8, nl = 6, nm = 24;
    b->q = malloc(sizeof(float) * nq);
    b->k = malloc(sizeof(float) * nkv);
    b->v = malloc(sizeof(float) * nkv);
    if (!b->q || !b->k || !b->v) abort();
    for (size_t i = 0; i < nq; i++) b->q[i] = (float)((int)i - 6) * 0.25f;
    for (size_t i = 0; i < nkv; i++) b->k[i] = (float)((int)i % 3) * 0.5f;
    for (size_t i = 0; i < nkv; i++) b->v[i] = (float)i * 0.125f;
    b->nout = 2;
    for (int o = 0; o < 2; o++) {
        fd_import_output *io = &b->out[o];
        snprintf(io->name, sizeof io->name, "%s", o ? "math" : "flash");
        io->be.name = io->name;
        io->be.family = "import";
        io->be.role = o ? FD_ROLE_STANDARD : FD_ROLE_FLASH;
        io->o = malloc(sizeof(float) * nq);
        if (!io->o) abort();
        for (size_t i = 0; i < nq; i++) io->o[i] = (float)i * 0.0625f;
        if (o) continue;
        io->lse = malloc(sizeof(float) * nl);
        io->keep = malloc(nm);
        if (!io->lse || !io->keep) abort();
        for (size_t i = 0; i < nl; i++) io->lse[i] = 1.5f;
        for (size_t i = 0; i < nm; i++) io->keep[i] = (uint8_t)(i % 5 != 0);
    }
}
#endif
