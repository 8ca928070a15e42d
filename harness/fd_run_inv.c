/* fd_run_inv.c: see fd_run_inv.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_dtype.h"
#include "fd_metrics.h"
#include "fd_obtain.h"
#include "fd_run_inv.h"

static void one_backend(const fd_casefile *cf, const fd_case *c, const float *q, const float *k, const float *v,
                        const fd_case_result *res, fd_backend_result *br, float *ofull, float *osub, float *lbuf)
{
    const fd_problem *p = &c->prob;
    fd_inv_result *iv = &br->inv;
    const size_t H = (size_t)p->heads, D = (size_t)p->head_dim;
    const size_t qs = (size_t)p->seqlen_q * H * D, ks = (size_t)p->seqlen_k * (size_t)p->kv_heads * D;
    float *lse = lbuf;
    double ms;
    char e2[256];
    if (fd_backend_obtain(cf, c, br->be, NULL, NULL, q, k, v, res->rows, res->nrows, ofull, &lse, &ms, e2, sizeof e2)) {
        snprintf(iv->note, sizeof iv->note, "the batched run failed: %s", e2);
        return;
    }
    fd_case cb = *c;
    cb.prob.batch = 1;
    const int nb = p->batch < FD_INV_MAX_BATCH ? p->batch : FD_INV_MAX_BATCH;
    for (int b = 0; b < nb && !fd_interrupted; b++) {
        lse = lbuf;
        if (p->page_size > 0) { /* paged: the entry's cache length and block-table row */
            cb.prob.cache_seqlens[0] = p->cache_seqlens[b];
            cb.prob.block_table = p->block_table + (size_t)b * (size_t)fd_paged_pages(p);
        }
        if (fd_backend_obtain(cf, &cb, br->be, NULL, NULL, q + (size_t)b * qs, k + (size_t)b * ks, v + (size_t)b * ks,
                              res->rows, res->nrows, osub, &lse, &ms, e2, sizeof e2)) {
            snprintf(iv->note, sizeof iv->note, "batch element %d alone failed: %s", b, e2);
            return;
        }
        for (int r = 0; r < res->nrows; r++) {
            const int i = res->rows[r];
            for (int h = 0; h < p->heads; h++)
                for (int d = 0; d < p->head_dim; d++) {
                    const float x = ofull[fd_q_index(p, b, i, h, d)], y = osub[fd_q_index(&cb.prob, 0, i, h, d)];
                    iv->checked++;
                    if (fd_f32_bits(x) == fd_f32_bits(y)) continue;
                    if (!iv->differ) {
                        iv->first_b = b;
                        iv->first_i = i;
                        iv->first_h = h;
                        iv->first_d = d;
                        iv->first_batched = x;
                        iv->first_alone = y;
                    }
                    iv->differ++;
                    const double dd = fabs((double)x - (double)y);
                    if (dd > iv->max_abs || isnan(dd)) iv->max_abs = dd;
                    const double u = dd / fd_ulp_in_dtype(fabs((double)x), p->dtype);
                    if (u > iv->max_ulp || isnan(u)) iv->max_ulp = u;
                }
        }
    }
    iv->batches = nb;
    iv->measured = !fd_interrupted;
}

int fd_inv_stage(const fd_casefile *cf, const fd_case *c, const float *q, const float *k, const float *v,
                 fd_case_result *res, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    res->inv_active = 1;
    float *ofull = malloc(sizeof(float) * fd_q_numel(p)), *osub = malloc(sizeof(float) * fd_q_numel(p));
    float *lbuf = malloc(sizeof(float) * fd_lse_numel(p));
    if (!ofull || !osub || !lbuf) {
        free(ofull); free(osub); free(lbuf);
        snprintf(err, errlen, "out of memory for the batch-invariance stage of case %s", c->id);
        return -1;
    }
    for (int t = 0; t < res->nbe; t++) {
        fd_backend_result *br = &res->be[t];
        fd_inv_result *iv = &br->inv;
        memset(iv, 0, sizeof *iv);
        if (br->origin != FD_ORIGIN_KERNEL || !br->ok || br->skipped)
            snprintf(iv->note, sizeof iv->note, "%s", br->origin == FD_ORIGIN_GIVEN ? "outputs given: no kernel to run"
                                                      : br->origin == FD_ORIGIN_COMPUTED ? "a computed baseline"
                                                                                          : "the backend did not run");
        else if (p->batch < 2)
            snprintf(iv->note, sizeof iv->note, "batch 1: nothing to compare");
        else if (p->dropout_p > 0.0)
            snprintf(iv->note, sizeof iv->note, "dropout: FA2's mask depends on the batch index");
        else
            one_backend(cf, c, q, k, v, res, br, ofull, osub, lbuf);
    }
    free(ofull); free(osub); free(lbuf);
    if (fd_interrupted) {
        snprintf(err, errlen, "interrupted");
        return -1;
    }
    return 0;
}
