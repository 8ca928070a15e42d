/* fd_repeat.c: re-running backends for the determinism gate; see fd_runfile.h.
 * The reference is not recomputed: output_hash depends only on the backend's outputs,
 * so fd_metrics_compute runs against a zero reference and only its hash is kept. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "fd_inputs.h"
#include "fd_metrics.h"
#include "fd_runfile.h"

int fd_repeat_hashes(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe,
                     const int *rows, int nrows, uint64_t *hash, int *ok, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    float *q, *k, *v;
    if (fd_inputs_make(c, &q, &k, &v, err, errlen)) return -1;
    const size_t nbhr = (size_t)p->batch * (size_t)p->heads * (size_t)(nrows ? nrows : 1);
    int *nvis = malloc(sizeof(int) * (size_t)(nrows ? nrows : 1));
    double *ref_o = calloc(nbhr * (size_t)p->head_dim, sizeof(double));
    double *ref_lse = calloc(nbhr, sizeof(double));
    float *o = malloc(sizeof(float) * fd_q_numel(p));
    float *lse = malloc(sizeof(float) * fd_lse_numel(p));
    int rc = -1;
    if (!nvis || !ref_o || !ref_lse || !o || !lse) {
        snprintf(err, errlen, "out of memory repeating case %s", c->id);
        goto out;
    }
    for (int r = 0; r < nrows; r++) nvis[r] = fd_mask_visible_count(p->mask, rows[r], p->seqlen_q, p->seqlen_k);
    for (int t = 0; t < nbe; t++) {
        for (size_t x = 0; x < fd_q_numel(p); x++) o[x] = NAN;
        for (size_t x = 0; x < fd_lse_numel(p); x++) lse[x] = NAN;
        double ms = 0.0;
        char e2[256];
        ok[t] = 0;
        hash[t] = 0;
        if (bes[t]->run(cf, c, q, k, v, rows, nrows, o, lse, &ms, e2, sizeof e2)) continue;
        fd_metrics m;
        if (fd_metrics_compute(p, rows, nrows, nvis, ref_o, ref_lse, o, lse, bes[t]->role == FD_ROLE_STANDARD, &m)) {
            snprintf(err, errlen, "out of memory hashing case %s", c->id);
            goto out;
        }
        ok[t] = 1;
        hash[t] = m.hash;
    }
    rc = 0;
out:
    free(q); free(k); free(v); free(nvis); free(ref_o); free(ref_lse); free(o); free(lse);
    return rc;
}
