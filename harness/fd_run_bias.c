/* fd_run_bias.c: the bias stage of the judging pipeline; see fd_run_bias.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_inputs.h"
#include "fd_obtain.h"
#include "fd_run_bias.h"

uint64_t fd_bias_seed(uint64_t seed, int s)
{
    /* splitmix64 of the case's seed and the seed index: distinct from the case's own
     * seed and from each other, stable across runs and machines */
    uint64_t z = seed + (uint64_t)0x9e3779b97f4a7c15u * (uint64_t)(s + 1);
    z = (z ^ (z >> 30)) * (uint64_t)0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * (uint64_t)0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* The continued fraction of the regularised incomplete beta (modified Lentz). */
static double betacf(double a, double b, double x)
{
    const double tiny = 1e-300;
    double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
    if (fabs(d) < tiny) d = tiny;
    d = 1.0 / d;
    double h = d;
    for (int m = 1; m <= 400; m++) {
        const double m2 = 2.0 * m;
        double aa = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
        d = 1.0 + aa * d; if (fabs(d) < tiny) d = tiny;
        c = 1.0 + aa / c; if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        h *= d * c;
        aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
        d = 1.0 + aa * d; if (fabs(d) < tiny) d = tiny;
        c = 1.0 + aa / c; if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        const double del = d * c;
        h *= del;
        if (fabs(del - 1.0) < 1e-15) break;
    }
    return h;
}

/* I_x(a, b). */
static double betai(double a, double b, double x)
{
    if (x <= 0.0) return 0.0;
    if (x >= 1.0) return 1.0;
    const double lbt = lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x);
    if (x < (a + 1.0) / (a + b + 2.0)) return exp(lbt) * betacf(a, b, x) / a;
    return 1.0 - exp(lbt) * betacf(b, a, 1.0 - x) / b;
}

/* P(|T| > t) for Student's t with df degrees of freedom. */
static double t_two_sided(int df, double t)
{
    const double v = (double)df;
    return betai(0.5 * v, 0.5, v / (v + t * t));
}

double fd_t_critical(int df, double a)
{
    double lo = 0.0, hi = 1.0;
    while (t_two_sided(df, hi) > a && hi < 1e12) hi *= 2.0;
    for (int it = 0; it < 200 && hi - lo > 1e-12 * hi; it++) {
        const double mid = 0.5 * (lo + hi);
        if (t_two_sided(df, mid) > a) lo = mid;
        else hi = mid;
    }
    return hi;
}

/* Every one of the n values is a number (each seed gave the test elements). */
static int complete(const double *x, int n, size_t stride)
{
    for (int i = 0; i < n; i++)
        if (isnan(x[(size_t)i * stride])) return 0;
    return 1;
}

/* The t statistic of n values against mean 0 (+-Inf when they are all equal and non-zero). */
static double t_stat(const double *x, int n, size_t stride)
{
    double s = 0.0;
    for (int i = 0; i < n; i++) s += x[(size_t)i * stride];
    const double mean = s / n;
    double ss = 0.0;
    for (int i = 0; i < n; i++) {
        const double d = x[(size_t)i * stride] - mean;
        ss += d * d;
    }
    const double se = sqrt(ss / (n - 1) / n);
    if (!(se > 0.0)) return mean > 0.0 ? (double)INFINITY : mean < 0.0 ? -(double)INFINITY : 0.0;
    return mean / se;
}

typedef struct {
    int idx;            /* index in res->be */
    double *colm, *rowm; /* per seed: [s][D], [s][R] means (NaN: no element) */
    double sum, sum2;
    long n;
} acc_t;

int fd_bias_stage(const fd_casefile *cf, const fd_case *c, int given_inputs, int jobs, fd_case_result *res,
                  char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    const int N = cf->bias_seeds, D = p->head_dim, R = res->nrows;
    const double alpha = cf->bias_alpha > 0 ? cf->bias_alpha : 1e-3;
    const double t0 = fd_now_s();
    res->bias_active = 1;
    acc_t ac[FD_MAX_BACKENDS];
    int na = 0;
    for (int t = 0; t < res->nbe; t++) {
        fd_backend_result *b = &res->be[t];
        fd_bias_result *z = &b->bias;
        memset(z, 0, sizeof *z);
        z->seeds = N;
        z->alpha = alpha;
        z->worst_col = z->worst_row = -1;
        if (b->skipped) snprintf(z->note, sizeof z->note, "backend skipped");
        else if (!b->ok) snprintf(z->note, sizeof z->note, "backend failed");
        else if (given_inputs) snprintf(z->note, sizeof z->note, "inputs given: no input seeds to vary");
        else if (b->origin == FD_ORIGIN_GIVEN) snprintf(z->note, sizeof z->note, "outputs given: cannot run on other seeds");
        else if (b->origin == FD_ORIGIN_COMPUTED) snprintf(z->note, sizeof z->note, "computed baseline: not measured");
        else {
            memset(&ac[na], 0, sizeof ac[na]);
            ac[na].idx = t;
            ac[na].colm = malloc(sizeof(double) * (size_t)N * (size_t)D);
            ac[na].rowm = malloc(sizeof(double) * (size_t)N * (size_t)(R > 0 ? R : 1));
            na++;
        }
    }
    int *nvis = malloc(sizeof(int) * (size_t)(R > 0 ? R : 1));
    const size_t nbhr = (size_t)p->batch * (size_t)p->heads * (size_t)R;
    double *ref_o = malloc(sizeof(double) * (nbhr ? nbhr : 1) * (size_t)D);
    double *ref_lse = malloc(sizeof(double) * (nbhr ? nbhr : 1));
    float *o = malloc(sizeof(float) * fd_q_numel(p));
    float *lsebuf = malloc(sizeof(float) * fd_lse_numel(p));
    double *csum = malloc(sizeof(double) * (size_t)D), *rsum = malloc(sizeof(double) * (size_t)(R > 0 ? R : 1));
    long *ccnt = malloc(sizeof(long) * (size_t)D), *rcnt = malloc(sizeof(long) * (size_t)(R > 0 ? R : 1));
    int rc = -1, oom = !nvis || !ref_o || !ref_lse || !o || !lsebuf || !csum || !rsum || !ccnt || !rcnt;
    for (int a = 0; a < na; a++) oom |= !ac[a].colm || !ac[a].rowm;
    if (oom) {
        snprintf(err, errlen, "out of memory for the bias stage of case %s", c->id);
        goto out;
    }
    for (int r = 0; r < R; r++) nvis[r] = fd_problem_visible_count(p, res->rows[r]);
    for (int s = 0; s < N && na > 0; s++) {
        fd_case cs = *c;
        cs.input_seed = fd_bias_seed(c->input_seed, s);
        /* FP8: this seed's inputs have their own amax, so their own descales */
        if (fd_inputs_fp8_descales(&cs, &cs.prob.q_descale, &cs.prob.k_descale, &cs.prob.v_descale, err, errlen)) goto out;
        float *q, *k, *v;
        if (fd_inputs_make(&cs, &q, &k, &v, err, errlen)) goto out;
        int und = 0, pmax = 0;
        /* the case's reference tiers, as the main stage (values to 1/1000 dtype ulp: far below
         * the biases this stage resolves), so checking every row stays affordable */
        int rrc = fd_reference_rows_tiered(&cs.prob, q, k, v, res->rows, R, jobs, cf->reference, ref_o, ref_lse, &und, &pmax,
                                           NULL, err, errlen);
        for (int a = 0; a < na && !rrc; a++) {
            fd_backend_result *b = &res->be[ac[a].idx];
            float *lse = lsebuf;
            double ms = 0.0;
            char e2[256];
            for (int d = 0; d < D; d++) { csum[d] = 0.0; ccnt[d] = 0; }
            for (int r = 0; r < R; r++) { rsum[r] = 0.0; rcnt[r] = 0; }
            if (fd_backend_obtain(cf, &cs, b->be, NULL, NULL, q, k, v, res->rows, R, o, &lse, &ms, e2, sizeof e2)) {
                snprintf(b->bias.note, sizeof b->bias.note, "seed %d failed: %.100s", s, e2);
                b->bias.measured = -1; /* marked: dropped below */
                continue;
            }
            size_t t = 0;
            for (int bb = 0; bb < p->batch; bb++)
                for (int h = 0; h < p->heads; h++)
                    for (int r = 0; r < R; r++, t++) {
                        if (nvis[r] == 0) continue; /* no visible key: O = 0 by convention, no error */
                        for (int d = 0; d < D; d++) {
                            const double got = (double)o[fd_q_index(p, bb, res->rows[r], h, d)];
                            const double e = got - ref_o[t * (size_t)D + (size_t)d];
                            if (!isfinite(e)) continue;
                            csum[d] += e; ccnt[d]++;
                            rsum[r] += e; rcnt[r]++;
                            ac[a].sum += e; ac[a].sum2 += e * e; ac[a].n++;
                        }
                    }
            for (int d = 0; d < D; d++) ac[a].colm[(size_t)s * (size_t)D + (size_t)d] = ccnt[d] ? csum[d] / (double)ccnt[d] : (double)NAN;
            for (int r = 0; r < R; r++) ac[a].rowm[(size_t)s * (size_t)R + (size_t)r] = rcnt[r] ? rsum[r] / (double)rcnt[r] : (double)NAN;
        }
        free(q); free(k); free(v);
        if (rrc) goto out;
        if (fd_interrupted) {
            snprintf(err, errlen, "interrupted");
            goto out;
        }
    }
    /* The tests: a column (row) is tested when every seed gave it elements. */
    int T = 0;
    for (int a = 0; a < na; a++) {
        if (res->be[ac[a].idx].bias.measured < 0) continue;
        for (int d = 0; d < D; d++) T += complete(ac[a].colm + d, N, (size_t)D);
        for (int r = 0; r < R; r++) T += complete(ac[a].rowm + r, N, (size_t)R);
    }
    const double thr = T > 0 ? fd_t_critical(N - 1, alpha / T) : (double)INFINITY;
    for (int a = 0; a < na; a++) {
        fd_bias_result *z = &res->be[ac[a].idx].bias;
        if (z->measured < 0) {
            z->measured = 0;
            continue;
        }
        z->measured = 1;
        z->tests = T;
        z->threshold = thr;
        z->elements = ac[a].n;
        z->mean_err = ac[a].n ? ac[a].sum / (double)ac[a].n : 0.0;
        z->rms_err = ac[a].n ? sqrt(ac[a].sum2 / (double)ac[a].n) : 0.0;
        z->mean_over_rms = z->rms_err > 0 ? z->mean_err / z->rms_err : 0.0;
        for (int d = 0; d < D; d++) {
            if (!complete(ac[a].colm + d, N, (size_t)D)) continue;
            const double tz = t_stat(ac[a].colm + d, N, (size_t)D);
            if (z->worst_col < 0 || fabs(tz) > fabs(z->worst_col_z)) { z->worst_col_z = tz; z->worst_col = d; }
        }
        for (int r = 0; r < R; r++) {
            if (!complete(ac[a].rowm + r, N, (size_t)R)) continue;
            const double tz = t_stat(ac[a].rowm + r, N, (size_t)R);
            if (z->worst_row < 0 || fabs(tz) > fabs(z->worst_row_z)) { z->worst_row_z = tz; z->worst_row = res->rows[r]; }
        }
        z->biased = fabs(z->worst_col_z) > thr || fabs(z->worst_row_z) > thr;
    }
    rc = 0;
out:
    for (int a = 0; a < na; a++) { free(ac[a].colm); free(ac[a].rowm); }
    free(nvis); free(ref_o); free(ref_lse); free(o); free(lsebuf);
    free(csum); free(rsum); free(ccnt); free(rcnt);
    res->bias_seconds = fd_now_s() - t0;
    return rc;
}
