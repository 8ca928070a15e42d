/* test_cpu_flash.c: the CPU flash replay and standard attention against the MPFR
 * reference, and the replay's own invariants. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_case.h"
#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_exp2.h"
#include "fd_inputs.h"
#include "fd_ref.h"
#include "fd_test_problem.h"

/* Relative l2 error of o against the reference over all rows; also checks empty rows. */
static double rel_l2_vs_ref(const fd_problem *p, const float *q, const float *k, const float *v,
                            const float *o)
{
    fd_ref_opts ro;
    fd_ref_opts_default(&ro);
    double *ref = malloc(sizeof(double) * (size_t)p->head_dim);
    double se = 0, sr = 0;
    char err[256];
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int i = 0; i < p->seqlen_q; i++) {
                fd_ref_row_info info;
                cr_assert(fd_ref_row(p, q, k, v, b, h, i, &ro, ref, &info, err, sizeof err) == 0, "%s", err);
                for (int d = 0; d < p->head_dim; d++) {
                    double g = (double)o[fd_q_index(p, b, i, h, d)];
                    se += (g - ref[d]) * (g - ref[d]);
                    sr += ref[d] * ref[d];
                }
            }
    free(ref);
    return sqrt(se / sr);
}

/* Bound: output rounding (u = 2^-11 fp16, 2^-8 bf16, 2^-24 fp32) plus the rounding of P
 * to the dtype before PV (another u) plus fp32 accumulation; 3u covers it with margin
 * for these short rows, and an unscaled or mis-masked kernel is off by O(1). */
static double bound_for(fd_dtype t)
{
    return t == FD_DT_FP16 ? 3 * 0x1p-11 : t == FD_DT_BF16 ? 3 * 0x1p-8 : 0x1p-16;
}

static void check_case(fd_case c)
{
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[256];
    cr_assert(fd_inputs_make(&c, &q, &k, &v, err, sizeof err) == 0, "%s", err);
    float *o = malloc(sizeof(float) * fd_q_numel(p)), *lse = malloc(sizeof(float) * fd_lse_numel(p));
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cfg.bc = 32;
    cr_assert(fd_cpu_flash_forward(p, &cfg, q, k, v, NULL, 0, o, lse, err, sizeof err) == 0, "%s", err);
    double e = rel_l2_vs_ref(p, q, k, v, o);
    cr_assert(e <= bound_for(p->dtype), "case %s: cpu-flash rel l2 error %.3g above the bound %.3g",
              c.id, e, bound_for(p->dtype));
    free(q); free(k); free(v); free(o); free(lse);
}

Test(cpu_flash, within_bound_each_dtype_and_mask)
{
    const fd_dtype dts[] = {FD_DT_FP16, FD_DT_BF16, FD_DT_FP32};
    const fd_mask_kind ms[] = {FD_MASK_NONE, FD_MASK_CAUSAL_TL, FD_MASK_CAUSAL_BR};
    for (int a = 0; a < 3; a++)
        for (int m = 0; m < 3; m++) check_case(tu_mk_case(1, 2, 1, 37, 75, 24, dts[a], ms[m], 0.0, FD_DIST_NORMAL, 3));
}

Test(cpu_flash, within_bound_with_dropout_and_hard_inputs)
{
    check_case(tu_mk_case(2, 2, 2, 40, 40, 16, FD_DT_FP16, FD_MASK_NONE, 0.17, FD_DIST_NORMAL, 5));
    check_case(tu_mk_case(1, 2, 2, 40, 40, 16, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.1, FD_DIST_OUTLIER_ROWS, 6));
    check_case(tu_mk_case(1, 2, 2, 33, 65, 32, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_LARGE_LOGIT, 7));
}

Test(cpu_flash, empty_rows_are_zero_with_infinite_lse)
{
    fd_case c = tu_mk_case(1, 1, 1, 50, 20, 16, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.0, FD_DIST_NORMAL, 9);
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[256];
    cr_assert(fd_inputs_make(&c, &q, &k, &v, err, sizeof err) == 0);
    float o[50 * 16], lse[50], os[50 * 16], lses[50];
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cr_assert(fd_cpu_flash_forward(p, &cfg, q, k, v, NULL, 0, o, lse, err, sizeof err) == 0);
    cr_assert(fd_cpu_standard_forward(p, FD_ACC_SEQ, q, k, v, NULL, 0, os, lses, err, sizeof err) == 0);
    for (int i = 0; i < 30; i++) {
        cr_assert(isinf(lse[i]) && lse[i] > 0, "row %d has no visible key: LSE must be +Inf", i);
        for (int d = 0; d < 16; d++) {
            cr_assert(fd_eqf(o[i * 16 + d], 0.0f), "flash row %d: %a, want 0", i, (double)o[i * 16 + d]);
            cr_assert(isnan(os[i * 16 + d]), "standard (eager) gives NaN on an empty row %d", i);
        }
    }
    cr_assert(!isinf(lse[30]), "row 30 sees key 0");
    free(q); free(k); free(v);
}

Test(cpu_flash, row_subset_gives_the_same_bits)
{
    fd_case c = tu_mk_case(1, 2, 1, 70, 90, 24, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.1, FD_DIST_NORMAL, 10);
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[256];
    cr_assert(fd_inputs_make(&c, &q, &k, &v, err, sizeof err) == 0);
    size_t n = fd_q_numel(p);
    float *o1 = malloc(n * sizeof(float)), *o2 = malloc(n * sizeof(float));
    float l1[140], l2[140];
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    int rows[] = {0, 17, 63, 64, 69};
    cr_assert(fd_cpu_flash_forward(p, &cfg, q, k, v, NULL, 0, o1, l1, err, sizeof err) == 0);
    cr_assert(fd_cpu_flash_forward(p, &cfg, q, k, v, rows, 5, o2, l2, err, sizeof err) == 0);
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < 5; r++)
            for (int d = 0; d < 24; d++) {
                size_t x = fd_q_index(p, 0, rows[r], h, d);
                cr_assert(fd_f32_bits(o1[x]) == fd_f32_bits(o2[x]), "row %d d %d", rows[r], d);
            }
    free(o1); free(o2); free(q); free(k); free(v);
}

/* The CPU kernels spread rows over OpenMP threads: the bits must not depend on how many. */
Test(cpu_flash, thread_count_gives_the_same_bits)
{
    fd_case c = tu_mk_case(2, 3, 1, 97, 130, 32, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.1, FD_DIST_NORMAL, 14);
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[256];
    cr_assert(fd_inputs_make(&c, &q, &k, &v, err, sizeof err) == 0);
    const size_t n = fd_q_numel(p), nl = fd_lse_numel(p);
    float *o[2][2], *l[2][2];
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    const int threads[2] = {1, 3};
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(threads[t]);
        for (int kern = 0; kern < 2; kern++) {
            o[t][kern] = malloc(n * sizeof(float));
            l[t][kern] = malloc(nl * sizeof(float));
            const int rc = kern ? fd_cpu_standard_forward(p, FD_ACC_SEQ, q, k, v, NULL, 0, o[t][kern], l[t][kern],
                                                          err, sizeof err)
                                : fd_cpu_flash_forward(p, &cfg, q, k, v, NULL, 0, o[t][kern], l[t][kern], err,
                                                       sizeof err);
            cr_assert(rc == 0, "%s", err);
        }
    }
    omp_set_num_threads(omp_get_num_procs());
    for (int kern = 0; kern < 2; kern++) {
        cr_assert(memcmp(o[0][kern], o[1][kern], n * sizeof(float)) == 0, "%s: O differs with 1 and 3 threads",
                  kern ? "cpu-standard" : "cpu-flash");
        cr_assert(memcmp(l[0][kern], l[1][kern], nl * sizeof(float)) == 0, "%s: LSE differs",
                  kern ? "cpu-standard" : "cpu-flash");
        free(o[0][kern]); free(o[1][kern]); free(l[0][kern]); free(l[1][kern]);
    }
    free(q); free(k); free(v);
}

Test(cpu_flash, tile_size_changes_order_not_accuracy)
{
    /* Different bc visits keys in another order: results may differ in the last bits,
     * but both stay within the bound and a single tile equals bc >= seqlen_k. */
    fd_case c = tu_mk_case(1, 1, 1, 16, 200, 32, FD_DT_FP32, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 12);
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[256];
    cr_assert(fd_inputs_make(&c, &q, &k, &v, err, sizeof err) == 0);
    float o16[16 * 32], o256[16 * 32], o208[16 * 32], lse[16];
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cfg.bc = 16;
    cr_assert(fd_cpu_flash_forward(p, &cfg, q, k, v, NULL, 0, o16, lse, err, sizeof err) == 0);
    cfg.bc = 256;
    cr_assert(fd_cpu_flash_forward(p, &cfg, q, k, v, NULL, 0, o256, lse, err, sizeof err) == 0);
    cfg.bc = 208;
    cr_assert(fd_cpu_flash_forward(p, &cfg, q, k, v, NULL, 0, o208, lse, err, sizeof err) == 0);
    int differ = 0;
    for (int x = 0; x < 16 * 32; x++) {
        differ += fd_f32_bits(o16[x]) != fd_f32_bits(o256[x]);
        cr_assert(fd_f32_bits(o208[x]) == fd_f32_bits(o256[x]), "one tile either way: same bits");
    }
    cr_assert(differ > 0, "16-key tiles rescale 13 times: some fp32 output must change");
    cr_assert(rel_l2_vs_ref(p, q, k, v, o16) <= 0x1p-18);
    free(q); free(k); free(v);
}

Test(cpu_flash, rejects_bad_problems)
{
    fd_case c = tu_mk_case(1, 3, 2, 8, 8, 8, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 1);
    float x[3 * 8 * 8] = {0}, o[3 * 8 * 8], l[24];
    char err[256] = "";
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cr_assert(fd_cpu_flash_forward(&c.prob, &cfg, x, x, x, NULL, 0, o, l, err, sizeof err) == -1);
    cr_assert(strstr(err, "multiple of kv_heads"), "%s", err);
    c.prob.heads = 2;
    c.prob.dropout_p = 1.0;
    cr_assert(fd_cpu_flash_forward(&c.prob, &cfg, x, x, x, NULL, 0, o, l, err, sizeof err) == -1);
    cr_assert(strstr(err, "dropout"), "%s", err);
}

/* The split-KV combine's portable exp and log (fd_exp2.h): error against binary64 exp and
 * log over a dense sweep of their whole used range, and the special cases. The bound
 * asserted (2 ulp) is what the methods guarantee with margin; the measured maximum is
 * printed (docs/features.md quotes it). */
static double ulp_err(float got, double want)
{
    const float w = (float)want;
    const double u = fd_f32_bits(w) << 1 == 0 ? 0x1p-149 : fabs((double)nextafterf(fabsf(w), INFINITY) - fabs((double)w));
    return fabs((double)got - want) / u;
}

Test(cpu_flash, portable_exp_and_log_are_accurate)
{
    double eworst = 0.0, lworst = 0.0;
    long ecr = 0, lcr = 0, n = 0;
    for (long i = 0; i <= 4000000; i++, n++) {
        const float x = (float)(-104.0 + 192.8 * (double)i / 4000000.0); /* [-104, 88.8] */
        const float e = fd_expf_portable(x);
        const double ee = ulp_err(e, exp((double)x));
        if (ee > eworst) eworst = ee;
        ecr += fd_f32_bits(e) == fd_f32_bits((float)exp((double)x));
        /* log over 2^-149 .. 2^128 spread by exponent and significand */
        const float y = ldexpf(1.0f + (float)(i % 8388608) / 8388608.0f, (int)(i % 277) - 149);
        const float l = fd_logf_portable(y);
        const double le = ulp_err(l, log((double)y));
        if (le > lworst) lworst = le;
        lcr += fd_f32_bits(l) == fd_f32_bits((float)log((double)y));
    }
    printf("fd_expf_portable: max %.3f ulp, %.2f%% correctly rounded; fd_logf_portable: max %.3f ulp, "
           "%.2f%% correctly rounded (%ld arguments each)\n",
           eworst, 100.0 * (double)ecr / (double)n, lworst, 100.0 * (double)lcr / (double)n, n);
    cr_expect(eworst <= 2.0, "fd_expf_portable errs by %.3f ulp", eworst);
    cr_expect(lworst <= 2.0, "fd_logf_portable errs by %.3f ulp", lworst);
    cr_expect_eq(fd_f32_bits(fd_expf_portable(0.0f)), fd_f32_bits(1.0f));
    cr_expect_eq(fd_f32_bits(fd_expf_portable(-INFINITY)), 0u);
    cr_expect(isinf(fd_expf_portable(89.0f)) && isnan(fd_expf_portable(NAN)));
    cr_expect_eq(fd_f32_bits(fd_logf_portable(1.0f)), 0u);
    cr_expect(isinf(fd_logf_portable(0.0f)) && fd_logf_portable(0.0f) < 0.0f);
    cr_expect(isnan(fd_logf_portable(-1.0f)) && isinf(fd_logf_portable(INFINITY)));
    cr_expect_eq(fd_f32_bits(fd_logf_portable(0x1p-149f)), fd_f32_bits((float)log(0x1p-149)));
}
