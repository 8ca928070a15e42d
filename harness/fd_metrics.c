/* fd_metrics.c: see fd_metrics.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fd_dtype.h"
#include "fd_metrics.h"

double fd_ulp_in_dtype(double ref, fd_dtype t)
{
    const int prec = fd_dtype_precision(t), emin = fd_dtype_emin(t);
    int e = emin;
    if (!fd_eq(ref, 0.0) && isfinite(ref)) {
        int fe;
        frexp(ref, &fe); /* |ref| in [2^(fe-1), 2^fe) */
        e = fe - 1;
        if (e < emin) e = emin;
    }
    return ldexp(1.0, e - (prec - 1));
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

uint64_t fd_output_hash(const fd_problem *p, const int *rows, int nrows, const int *nvis,
                        int skip_empty, const float *o, const float *lse)
{
    const int D = p->head_dim;
    uint64_t hash = 0xcbf29ce484222325ull;
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int r = 0; r < nrows; r++) {
                const int i = rows[r];
                if (nvis[r] == 0 && skip_empty) continue;
                for (int d = 0; d <= D; d++) {
                    if (d == D && !lse) break;
                    uint32_t u = fd_f32_bits(d < D ? o[fd_q_index(p, b, i, h, d)] : lse[fd_lse_index(p, b, h, i)]);
                    for (int t = 0; t < 4; t++) {
                        hash ^= (u >> (8 * t)) & 0xffu;
                        hash *= 0x100000001b3ull;
                    }
                }
            }
    return hash;
}

int fd_metrics_compute(const fd_problem *p, const int *rows, int nrows, const int *nvis,
                       const double *ref_o, const double *ref_lse, const float *o,
                       const float *lse, int skip_empty, fd_metrics *m)
{
    const int D = p->head_dim;
    memset(m, 0, sizeof *m);
    m->valid = 1;
    size_t cap = (size_t)p->batch * (size_t)p->heads * (size_t)nrows * (size_t)D;
    double *ulps = malloc((cap ? cap : 1) * sizeof(double));
    if (!ulps) return -1;
    size_t nu = 0;
    m->lse_measured = lse != NULL;
    if (!lse) m->lse_max_abs = NAN;
    double se = 0.0, sr = 0.0;
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int r = 0; r < nrows; r++) {
                const int i = rows[r];
                const size_t rix = ((size_t)b * (size_t)p->heads + (size_t)h) * (size_t)nrows + (size_t)r;
                if (nvis[r] == 0 && skip_empty) {
                    m->empty_rows_skipped++;
                    continue;
                }
                if (lse) {
                    const double lr = ref_lse[rix];
                    const double lg = (double)lse[fd_lse_index(p, b, h, i)];
                    double le = (isinf(lr) && isinf(lg) && (lr > 0) == (lg > 0)) ? 0.0 : fabs(lg - lr);
                    if (isnan(le)) le = INFINITY;
                    if (le > m->lse_max_abs) m->lse_max_abs = le;
                }
                for (int d = 0; d < D; d++) {
                    const double ref = ref_o[rix * (size_t)D + (size_t)d];
                    const double got = (double)o[fd_q_index(p, b, i, h, d)];
                    m->n_elems++;
                    if (isnan(got)) { m->nan_count++; continue; }
                    if (isinf(got)) { m->inf_count++; continue; }
                    const double ae = fabs(got - ref);
                    if (ae > m->max_abs || (m->n_elems == 1)) {
                        if (ae > m->max_abs) m->max_abs = ae;
                        m->worst_b = b; m->worst_h = h; m->worst_i = i; m->worst_d = d;
                        m->worst_got = got; m->worst_ref = ref;
                    }
                    if (!fd_eq(ref, 0.0) && ae / fabs(ref) > m->max_rel) m->max_rel = ae / fabs(ref);
                    se += ae * ae;
                    sr += ref * ref;
                    ulps[nu++] = ae / fd_ulp_in_dtype(ref, fd_out_dtype(p->dtype));
                }
            }
    m->hash = fd_output_hash(p, rows, nrows, nvis, skip_empty, o, lse);
    m->rel_l2 = sr > 0.0 ? sqrt(se / sr) : sqrt(se);
    if (nu) {
        qsort(ulps, nu, sizeof(double), cmp_dbl);
        m->max_ulp = ulps[nu - 1];
        size_t k = (size_t)ceil(0.99 * (double)nu);
        m->p99_ulp = ulps[k ? k - 1 : 0];
    }
    free(ulps);
    return 0;
}
