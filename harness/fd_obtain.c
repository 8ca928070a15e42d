/* fd_obtain.c: see fd_obtain.h. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "fd_obtain.h"
#include "fd_ref.h"

int fd_reference_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                      const int *rows, int nrows, int jobs, double *ref_o, double *ref_lse,
                      int *undecided_out, int *precmax_out, char *err, size_t errlen)
{
    fd_ref_opts ro;
    fd_ref_opts_default(&ro);
    const int D = p->head_dim;
    const long ntask = (long)p->batch * p->heads * nrows;
    int undecided = 0, precmax = 0, failed = 0;
    char ref_err[256] = "";
#pragma omp parallel for schedule(dynamic, 1) num_threads(jobs) reduction(+ : undecided) reduction(max : precmax)
    for (long t = 0; t < ntask; t++) {
        if (fd_interrupted || failed) continue;
        const int r = (int)(t % nrows), h = (int)((t / nrows) % p->heads), b = (int)(t / nrows / p->heads);
        fd_ref_row_info info;
        char e2[256];
        if (fd_ref_row(p, q, k, v, b, h, rows[r], &ro, ref_o + (size_t)t * (size_t)D, &info, e2, sizeof e2)) {
#pragma omp critical
            {
                failed = 1;
                snprintf(ref_err, sizeof ref_err, "%s", e2);
            }
            continue;
        }
        ref_lse[t] = info.lse;
        undecided += info.undecided;
        if (info.prec_used > precmax) precmax = info.prec_used;
    }
    *undecided_out = undecided;
    *precmax_out = precmax;
    if (fd_interrupted) {
        snprintf(err, errlen, "interrupted");
        return -1;
    }
    if (failed) {
        snprintf(err, errlen, "reference failed: %s", ref_err);
        return -1;
    }
    return 0;
}

int fd_backend_obtain(const fd_casefile *cf, const fd_case *c, const fd_backend *be, const float *given_o,
                      const float *given_lse, const float *q, const float *k, const float *v, const int *rows,
                      int nrows, float *o, float **lse, double *ms, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    if (given_o) {
        memcpy(o, given_o, sizeof(float) * fd_q_numel(p));
        if (given_lse) memcpy(*lse, given_lse, sizeof(float) * fd_lse_numel(p));
        else *lse = NULL;
        return 0;
    }
    for (size_t x = 0; x < fd_q_numel(p); x++) o[x] = NAN;
    for (size_t x = 0; x < fd_lse_numel(p); x++) (*lse)[x] = NAN;
    return be->run(cf, c, q, k, v, rows, nrows, o, *lse, ms, err, errlen);
}

