/* test_bias.c: the bias stage of the judging pipeline (harness/fd_run_bias.h) and the input
 * families that provoke systematic bias (tied_max, sink, large_offset, low_rank).
 *
 * Wrong must fail: the CPU replay with its planted bias (output rounded toward +Inf,
 * flash.o_round "up") is flagged on normal inputs in bf16 and fp16, while cpu-standard of
 * the same cases is not. Right must pass: correct cpu-flash and cpu-standard over many
 * independent cases stay quiet; the false-alarm rate is measured and printed (at the
 * default alpha and at 0.05, where Bonferroni must keep it at or below alpha), and a case
 * count can be raised with FD_BIAS_CASES for the measurement in docs/measurements.md.
 * The families are deterministic and have their property in every row. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_inputs.h"
#include "fd_run.h"
#include "fd_run_bias.h"
#include "fd_run_import.h"
#include "fd_test_problem.h"
#include "fd_test_util.h"

static fd_casefile mk_cf(int seeds, int rows, int planted)
{
    fd_casefile cf;
    memset(&cf, 0, sizeof cf);
    snprintf(cf.path, sizeof cf.path, "test_bias");
    cf.rows_per_head = rows;
    fd_flash_cfg_default(&cf.flash);
    cf.flash.o_round_up = planted;
    fd_policy_default(&cf.policy);
    cf.bias_seeds = seeds;
    cf.bias_alpha = 1e-3;
    return cf;
}

static const fd_backend *be(const char *name)
{
    const fd_backend *b = fd_backend_find(name);
    cr_assert_not_null(b, "backend %s", name);
    return b;
}

static const fd_bias_result *bias_of(const fd_case_result *r, const char *name)
{
    for (int t = 0; t < r->nbe; t++)
        if (!strcmp(r->be[t].be->name, name)) return &r->be[t].bias;
    cr_assert_fail("no result of %s in case %s", name, r->c.id);
    return NULL;
}

Test(bias, t_critical_matches_tables)
{
    /* Student's t two-sided 5 %: df 1 12.706, df 15 2.131, df 1000 1.962; 0.1 %, df 15: 4.073 */
    cr_expect(fabs(fd_t_critical(1, 0.05) - 12.706) < 1e-3, "%.6f", fd_t_critical(1, 0.05));
    cr_expect(fabs(fd_t_critical(15, 0.05) - 2.131) < 1e-3, "%.6f", fd_t_critical(15, 0.05));
    cr_expect(fabs(fd_t_critical(1000, 0.05) - 1.962) < 1e-3, "%.6f", fd_t_critical(1000, 0.05));
    cr_expect(fabs(fd_t_critical(15, 0.001) - 4.073) < 1e-3, "%.6f", fd_t_critical(15, 0.001));
}

Test(bias, seeds_are_distinct_and_stable)
{
    cr_expect_eq(fd_bias_seed(11, 0), fd_bias_seed(11, 0));
    for (int s = 0; s < 64; s++) {
        cr_expect_neq(fd_bias_seed(11, s), 11u);
        for (int u = 0; u < s; u++) cr_expect_neq(fd_bias_seed(11, s), fd_bias_seed(11, u), "seeds %d and %d", s, u);
    }
}

/* The planted bias (output rounded toward +Inf) is found on normal inputs; cpu-standard
 * of the same case is quiet. */
Test(bias, planted_bias_is_found)
{
    const fd_dtype dts[2] = {FD_DT_BF16, FD_DT_FP16};
    for (int a = 0; a < 2; a++) {
        fd_casefile cf = mk_cf(16, 16, 1);
        fd_case c = tu_mk_case(1, 2, 2, 96, 96, 32, dts[a], FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 21);
        const fd_backend *bes[] = {be("cpu-flash"), be("cpu-standard")};
        fd_case_result r;
        char err[512];
        cr_assert_eq(fd_run_case(&cf, &c, bes, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
        cr_assert(r.bias_active);
        const fd_bias_result *f = bias_of(&r, "cpu-flash"), *s = bias_of(&r, "cpu-standard");
        cr_assert(f->measured && s->measured, "%s / %s", f->note, s->note);
        cr_expect(f->biased, "%s: planted bias not found: column t %g, row t %g, threshold %g", c.id, f->worst_col_z,
                  f->worst_row_z, f->threshold);
        cr_expect(f->mean_over_rms > 0.3, "%s: mean/rms %g", c.id, f->mean_over_rms);
        cr_expect(!s->biased, "%s: cpu-standard flagged: column t %g, row t %g, threshold %g", c.id, s->worst_col_z,
                  s->worst_row_z, s->threshold);
        cr_expect_eq(f->tests, s->tests);
        cr_expect_eq(f->seeds, 16);
        cr_log_info("planted %s: column t %.1f, row t %.1f, threshold %.2f, mean/rms %.3f\n", c.id, f->worst_col_z,
                    f->worst_row_z, f->threshold, f->mean_over_rms);
        fd_case_result_free(&r);
    }
}

/* Correct kernels over many independent cases: the false-alarm rate. Input seeds, dtypes,
 * masks (a fully masked row in a quarter of them) and families with V symmetric about 0
 * (normal, uniform, large_logit, outlier_rows), where the mean signed error is exactly 0
 * (round to nearest is odd in V), so every alarm is false. */
Test(bias, quiet_on_unbiased_rounding, .timeout = 600)
{
    const char *env = getenv("FD_BIAS_CASES");
    const int ncases = env ? atoi(env) : 100;
    static const fd_dist dists[4] = {FD_DIST_NORMAL, FD_DIST_UNIFORM, FD_DIST_LARGE_LOGIT, FD_DIST_OUTLIER_ROWS};
    static const fd_mask_kind masks[4] = {FD_MASK_NONE, FD_MASK_CAUSAL_TL, FD_MASK_CAUSAL_BR, FD_MASK_CAUSAL_BR};
    static const double alphas[2] = {1e-3, 0.05};
    int alarms[2][2] = {{0, 0}, {0, 0}}, case_alarms[2] = {0, 0}, tested = 0;
    for (int n = 0; n < ncases; n++) {
        fd_casefile cf = mk_cf(16, 8, 0);
        const int sq = masks[n % 4] == FD_MASK_CAUSAL_BR && n % 8 == 3 ? 48 : 40; /* sq > sk: empty rows */
        fd_case c = tu_mk_case(1, 2, 1, sq, 40, 16, n % 2 ? FD_DT_FP16 : FD_DT_BF16, masks[n % 4], 0.0,
                               dists[(n / 2) % 4], 1000u + (uint64_t)n);
        const fd_backend *bes[] = {be("cpu-flash"), be("cpu-standard")};
        fd_case_result r;
        char err[512];
        cr_assert_eq(fd_run_case(&cf, &c, bes, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
        int any[2] = {0, 0};
        for (int b = 0; b < 2; b++) {
            const fd_bias_result *z = &r.be[b].bias;
            cr_assert(z->measured, "%s %s: %s", c.id, r.be[b].be->name, z->note);
            const double w = fmax(fabs(z->worst_col_z), fabs(z->worst_row_z));
            for (int a = 0; a < 2; a++) {
                const int hit = w > fd_t_critical(z->seeds - 1, alphas[a] / z->tests);
                alarms[a][b] += hit;
                any[a] |= hit;
            }
            cr_expect_eq(z->biased, w > z->threshold);
        }
        case_alarms[0] += any[0];
        case_alarms[1] += any[1];
        tested++;
        fd_case_result_free(&r);
    }
    cr_log_info("false alarms over %d cases x 2 backends (16 seeds): alpha 1e-3: %d cases (cpu-flash %d, "
                "cpu-standard %d); alpha 0.05: %d cases (cpu-flash %d, cpu-standard %d)\n",
                tested, case_alarms[0], alarms[0][0], alarms[0][1], case_alarms[1], alarms[1][0], alarms[1][1]);
    fprintf(stderr, "bias false alarms: %d cases; alpha 1e-3: %d; alpha 0.05: %d\n", tested, case_alarms[0],
            case_alarms[1]);
    /* Binomial tails: at alpha 1e-3, two alarms in 100 cases has probability < 5e-3; at
     * 0.05, more than 12 has probability < 2e-3 (Bonferroni is conservative besides). */
    cr_expect(case_alarms[0] <= 1 + tested / 200, "%d false alarms at alpha 1e-3 over %d cases", case_alarms[0], tested);
    cr_expect(case_alarms[1] <= 12 * tested / 100 + 1, "%d false alarms at alpha 0.05 over %d cases", case_alarms[1],
              tested);
}

/* A case with fully masked rows (causal bottom-right, seqlen_q > seqlen_k): those rows are
 * not tested (no visible key: no error), the others are. */
Test(bias, empty_rows_are_not_tested)
{
    fd_casefile cf = mk_cf(16, 0, 0);
    fd_case c = tu_mk_case(1, 1, 1, 24, 16, 8, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, FD_DIST_NORMAL, 5);
    const fd_backend *bes[] = {be("cpu-flash"), be("cpu-standard")};
    fd_case_result r;
    char err[512];
    cr_assert_eq(fd_run_case(&cf, &c, bes, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.empty_rows, 8);
    for (int b = 0; b < 2; b++) {
        const fd_bias_result *z = &r.be[b].bias;
        cr_assert(z->measured, "%s", z->note);
        cr_expect_eq(z->tests, 2 * (8 + 16), "tests %d: 8 columns and 16 non-empty rows per backend", z->tests);
        cr_expect(z->worst_row >= 8, "worst row %d is an empty one", z->worst_row);
        cr_expect(!z->biased);
    }
    fd_case_result_free(&r);
}

/* Outputs given (an import) cannot be run on other seeds: not measured. */
Test(bias, given_outputs_are_not_measured)
{
    fd_casefile cf = mk_cf(16, 8, 0);
    fd_case c = tu_mk_case(1, 1, 1, 32, 32, 16, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 9);
    float *q, *k, *v;
    char err[512];
    cr_assert_eq(fd_inputs_make(&c, &q, &k, &v, err, sizeof err), 0, "%s", err);
    float *o = malloc(sizeof(float) * fd_q_numel(&c.prob)), *lse = malloc(sizeof(float) * fd_lse_numel(&c.prob));
    cr_assert_eq(fd_cpu_flash_forward(&c.prob, &cf.flash, q, k, v, NULL, 0, o, lse, err, sizeof err), 0, "%s", err);
    fd_given g;
    memset(&g, 0, sizeof g);
    g.nout = 1;
    g.out[0].be = be("cpu-flash");
    g.out[0].o = o;
    g.out[0].lse = lse;
    fd_case_result r;
    cr_assert_eq(fd_run_case_given(&cf, &c, NULL, 0, &g, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_assert(r.bias_active);
    cr_expect(!r.be[0].bias.measured);
    cr_expect(strstr(r.be[0].bias.note, "outputs given"), "%s", r.be[0].bias.note);
    fd_case_result_free(&r);
    free(q); free(k); free(v); free(o); free(lse);
}

/* The exact logit of query row i and key j (binary64 products of dtype values are exact;
 * identical key rows give identical sums). */
static double logit(const fd_problem *p, const float *q, const float *k, int i, int h, int j)
{
    double s = 0.0;
    for (int d = 0; d < p->head_dim; d++)
        s += (double)q[fd_q_index(p, 0, i, h, d)] * (double)k[fd_kv_index(p, 0, j, fd_kv_head(p, h), d)];
    return s;
}

static void make_twice(const fd_case *c, float **q, float **k, float **v)
{
    float *q2, *k2, *v2;
    char err[512];
    cr_assert_eq(fd_inputs_make(c, q, k, v, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fd_inputs_make(c, &q2, &k2, &v2, err, sizeof err), 0, "%s", err);
    cr_expect(!memcmp(*q, q2, sizeof(float) * fd_q_numel(&c->prob)), "%s: Q not deterministic", c->id);
    cr_expect(!memcmp(*k, k2, sizeof(float) * fd_kv_numel(&c->prob)), "%s: K not deterministic", c->id);
    cr_expect(!memcmp(*v, v2, sizeof(float) * fd_kv_numel(&c->prob)), "%s: V not deterministic", c->id);
    for (size_t x = 0; x < fd_q_numel(&c->prob); x++)
        cr_assert(fd_f32_bits(fd_round_to_dtype((*q)[x], c->prob.dtype)) == fd_f32_bits((*q)[x]), "%s: Q[%zu] %a not a dtype value", c->id, x, (double)(*q)[x]);
    free(q2); free(k2); free(v2);
}

Test(bias, families_are_deterministic_and_have_their_property)
{
    const fd_dtype dts[3] = {FD_DT_BF16, FD_DT_FP16, FD_DT_FP32};
    const int dims[3] = {16, 64, 128};
    for (int a = 0; a < 3; a++)
        for (int di = 0; di < 3; di++) {
            const int D = dims[di], S = 150;
            /* tied_max: every row's max is reached by >= 2 keys (the keys j % 37 < 2), strictly above the rest */
            fd_case c = tu_mk_case(1, 2, 1, S, S, D, dts[a], FD_MASK_NONE, 0.0, FD_DIST_TIED_MAX, 31 + (uint64_t)di);
            float *q, *k, *v;
            make_twice(&c, &q, &k, &v);
            for (int h = 0; h < 2; h++)
                for (int i = 0; i < S; i++) {
                    double mx = -INFINITY, rest = -INFINITY;
                    int nmax = 0;
                    for (int j = 0; j < S; j++) {
                        const double s = logit(&c.prob, q, k, i, h, j);
                        if (j % 37 >= 2) { rest = fmax(rest, s); continue; }
                        if (s > mx) { mx = s; nmax = 1; } else if (!(s < mx)) nmax++; /* equal */
                    }
                    cr_assert(nmax >= 2 && rest < mx, "%s row %d: %d keys at the max %g, others up to %g", c.id, i, nmax, mx, rest);
                }
            free(q); free(k); free(v);
            /* sink: key 0 has the strictly largest logit in every row */
            c = tu_mk_case(1, 2, 2, S, S, D, dts[a], FD_MASK_CAUSAL_TL, 0.0, FD_DIST_SINK, 41 + (uint64_t)di);
            make_twice(&c, &q, &k, &v);
            for (int h = 0; h < 2; h++)
                for (int i = 0; i < S; i++) {
                    const double s0 = logit(&c.prob, q, k, i, h, 0);
                    for (int j = 1; j < S; j++)
                        cr_assert(logit(&c.prob, q, k, i, h, j) < s0, "%s row %d: key %d's logit >= key 0's %g", c.id, i, j, s0);
                }
            free(q); free(k); free(v);
            /* large_offset: every raw logit carries the offset 32 * 32 */
            c = tu_mk_case(1, 1, 1, S, S, D, dts[a], FD_MASK_NONE, 0.0, FD_DIST_LARGE_OFFSET, 51 + (uint64_t)di);
            make_twice(&c, &q, &k, &v);
            for (int i = 0; i < S; i++)
                for (int j = 0; j < S; j++) {
                    const double s = logit(&c.prob, q, k, i, 0, j);
                    cr_assert(s > 1024.0 - 12.0 * D && s < 1024.0 + 12.0 * D, "%s: logit (%d, %d) %g", c.id, i, j, s);
                }
            double mean = 0.0;
            for (int i = 0; i < S; i++)
                for (int j = 0; j < S; j++) mean += logit(&c.prob, q, k, i, 0, j) / (double)(S * S);
            cr_expect(fabs(mean - 1024.0) < 4.0, "%s: mean logit %g", c.id, mean);
            free(q); free(k); free(v);
            /* low_rank: query and key rows are far more aligned than independent ones
             * (|cos| about 1/sqrt(d) for normal inputs) */
            c = tu_mk_case(1, 2, 1, S, S, D, dts[a], FD_MASK_NONE, 0.0, FD_DIST_LOW_RANK, 61 + (uint64_t)di);
            make_twice(&c, &q, &k, &v);
            double cs = 0.0;
            for (int i = 0; i < S; i += 3)
                for (int j = 0; j < S; j += 3) {
                    double qq = 0.0, kk = 0.0;
                    for (int d = 0; d < D; d++) {
                        const double qd = (double)q[fd_q_index(&c.prob, 0, i, 1, d)];
                        const double kd = (double)k[fd_kv_index(&c.prob, 0, j, 0, d)];
                        qq += qd * qd;
                        kk += kd * kd;
                    }
                    cs += fabs(logit(&c.prob, q, k, i, 1, j)) / sqrt(qq * kk);
                }
            cs /= 50.0 * 50.0;
            cr_expect(cs > 0.3, "%s: mean |cos(q, k)| %g", c.id, cs);
            free(q); free(k); free(v);
        }
    /* a different seed gives different inputs */
    fd_case c1 = tu_mk_case(1, 1, 1, 40, 40, 16, FD_DT_BF16, FD_MASK_NONE, 0.0, FD_DIST_LOW_RANK, 1);
    fd_case c2 = c1;
    c2.input_seed = 2;
    float *q1, *k1, *v1, *q2, *k2, *v2;
    char err[512];
    cr_assert_eq(fd_inputs_make(&c1, &q1, &k1, &v1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fd_inputs_make(&c2, &q2, &k2, &v2, err, sizeof err), 0, "%s", err);
    cr_expect(memcmp(q1, q2, sizeof(float) * fd_q_numel(&c1.prob)));
    free(q1); free(k1); free(v1); free(q2); free(k2); free(v2);
}

/* The case file's fields: bias_seeds (0 or >= 16), bias_alpha, flash.o_round, the new dists. */
Test(bias, case_file_fields)
{
    char dir[64], path[128], err[1024];
    tu_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/c.json", dir);
    fd_casefile cf;
    tu_write(path, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"bias_seeds\": 32, \"bias_alpha\": 0.01, "
                   "\"flash\": {\"o_round\": \"up\"}, \"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, "
                   "\"dist\": [\"tied_max\", \"sink\", \"large_offset\", \"low_rank\"]}]}");
    cr_assert_eq(fd_casefile_load(path, &cf, err, sizeof err), 0, "%s", err);
    cr_expect_eq(cf.bias_seeds, 32);
    cr_expect(fabs(cf.bias_alpha - 0.01) < 1e-15);
    cr_expect_eq(cf.flash.o_round_up, 1);
    cr_assert_eq(cf.ncases, 4);
    cr_expect(strstr(cf.cases[0].id, "tied_max"), "%s", cf.cases[0].id);
    cr_expect_eq(cf.cases[3].dist, FD_DIST_LOW_RANK);
    fd_casefile_free(&cf);
    tu_write(path, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"bias_seeds\": 8, "
                   "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8}]}");
    cr_expect_eq(fd_casefile_load(path, &cf, err, sizeof err), -1);
    cr_expect(strstr(err, "bias_seeds: expected 0 (off) or 16..4096"), "%s", err);
    tu_write(path, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"flash\": {\"o_round\": \"down\"}, "
                   "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8}]}");
    cr_expect_eq(fd_casefile_load(path, &cf, err, sizeof err), -1);
    cr_expect(strstr(err, "flash.o_round: expected \"nearest\" or \"up\""), "%s", err);
    tu_write(path, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"sweeps\": [{\"seqlen\": 16, "
                   "\"head_dim\": 8, \"dist\": \"given\"}]}");
    cr_expect_eq(fd_casefile_load(path, &cf, err, sizeof err), -1, "\"given\" is not a family a case file can ask for");
    unlink(path);
    rmdir(dir);
}
