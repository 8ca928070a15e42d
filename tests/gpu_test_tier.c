/* gpu_test_tier.c: the GPU reference tier (reference/fd_tier_gpu.cu) against the MPFR
 * reference and the CPU tier (label gpu; skips where no GPU is present).
 *
 * Every row of every case of cases/smoke.json, cases/features.json and cases/varlen.json, and an adversarial
 * problem (cancellation in P V, tied maxima, a huge logit): a row the GPU tier decides
 * must agree with MPFR's correctly rounded values to 1/1000 ulp of the output dtype (O)
 * and of binary32 (LSE), with the same dtype ulp; a row both tiers decide must agree
 * between them to 2/1000 ulp. Both GPU kernels (4 rows per warp, the default at head_dim
 * <= 128, and one row per warp, FD_TIER_GPU_ROWS=1) are checked.
 * The backward tier (reference/fd_tier_bwd_gpu.cu): every backward case of cases/backward.json
 * (the run's samples), every decided gradient value against MPFR (fd_test_tier_bwd.h's
 * property) and against the CPU backward tier where both decide (2/1000 ulp), with the warp
 * kernels (the default) and the thread kernels (FD_TIER_GPU_BWD_SIMPLE=1), which must give
 * the same bits; the backward stage with --reference auto uses the GPU tier. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_case.h"
#include "fd_inputs.h"
#include "fd_obtain.h"
#include "fd_ref.h"
#include "fd_test_problem.h"
#include "fd_test_tier_bwd.h"
#include "fd_test_util.h"
#include "fd_tier.h"
#include "fd_tier_cpu.h"

#define SKIP_WITHOUT_GPU()                                                   \
    do {                                                                     \
        if (!fd_tier_gpu_available()) cr_skip_test("no CUDA GPU present");  \
    } while (0)

typedef struct {
    long rows, rows_gpu, rows_cpu, values;
} gtally;

static void close_enough(double x, double r, int prec, int emin, const char *what, long t, int d, double tol)
{
    if (isinf(r) && isinf(x) && (r > 0) == (x > 0)) return;
    const double U = fd_tb_ulp_dtype(r, prec, emin);
    cr_assert(fd_eq(U, fd_tb_ulp_dtype(x, prec, emin)) && fabs(x - r) <= tol * U,
              "%s: task %ld value %d: %a vs %a (%g dtype ulp apart, allowed %g)", what, t, d, x, r, fabs(x - r) / U, tol);
}

static void check_rows(const fd_problem *p, const float *q, const float *k, const float *v, const int *rows, int nrows,
                       const char *what, gtally *tl)
{
    const int D = p->head_dim;
    const long ntask = (long)p->batch * p->heads * nrows;
    double *og = malloc(sizeof(double) * (size_t)ntask * (size_t)D), *lg = malloc(sizeof(double) * (size_t)ntask);
    double *oc = malloc(sizeof(double) * (size_t)ntask * (size_t)D), *lc = malloc(sizeof(double) * (size_t)ntask);
    unsigned char *okg = malloc((size_t)ntask), *okc = malloc((size_t)ntask);
    double *ro = malloc(sizeof(double) * (size_t)D);
    cr_assert(og && lg && oc && lc && okg && okc && ro);
    char err[512];
    long ndg = 0, ndc = 0;
    cr_assert_eq(fd_tier_gpu_rows(p, q, k, v, rows, nrows, og, lg, okg, &ndg, err, sizeof err), 0, "%s: %s", what, err);
    cr_assert_eq(fd_tier_cpu_rows(p, q, k, v, rows, nrows, 4, oc, lc, okc, &ndc, err, sizeof err), 0, "%s: %s", what, err);
    const int prec = fd_tb_prec((int)p->dtype), emin = fd_tb_emin((int)p->dtype);
    fd_ref_opts ro_opts;
    fd_ref_opts_default(&ro_opts);
    for (long t = 0; t < ntask; t++) {
        tl->rows++;
        tl->rows_gpu += okg[t];
        tl->rows_cpu += okc[t];
        if (!okg[t]) continue;
        const int r = (int)(t % nrows), h = (int)((t / nrows) % p->heads), b = (int)(t / nrows / p->heads);
        fd_ref_row_info info;
        cr_assert_eq(fd_ref_row(p, q, k, v, b, h, rows[r], &ro_opts, ro, &info, err, sizeof err), 0, "%s", err);
        if (info.undecided) continue;
        for (int d = 0; d < D; d++) {
            const size_t x = (size_t)t * (size_t)D + (size_t)d;
            close_enough(og[x], ro[d], prec, emin, what, t, d, 1e-3);
            if (okc[t]) close_enough(og[x], oc[x], prec, emin, what, t, d, 2e-3);
            tl->values++;
        }
        close_enough(lg[t], info.lse, 24, -126, what, t, D, 1e-3);
        if (okc[t]) close_enough(lg[t], lc[t], 24, -126, what, t, D, 2e-3);
    }
    free(og); free(lg); free(oc); free(lc); free(okg); free(okc); free(ro);
}

static void check_casefile(const char *rel, gtally *tl)
{
    fd_casefile cf;
    char err[512];
    cr_assert_eq(fd_casefile_load(tu_path(TU_SOURCE, rel), &cf, err, sizeof err), 0, "%s", err);
    for (int ci = 0; ci < cf.ncases; ci++) {
        const fd_case *c = &cf.cases[ci];
        float *q, *k, *v;
        cr_assert_eq(fd_inputs_make(c, &q, &k, &v, err, sizeof err), 0, "%s", err);
        int *rows = malloc(sizeof(int) * (size_t)c->prob.seqlen_q);
        for (int i = 0; i < c->prob.seqlen_q; i++) rows[i] = i;
        check_rows(&c->prob, q, k, v, rows, c->prob.seqlen_q, c->id, tl);
        free(rows); free(q); free(k); free(v);
    }
    fd_casefile_free(&cf);
}

Test(gpu_tier, smoke_and_features_agree_with_mpfr, .timeout = 900)
{
    SKIP_WITHOUT_GPU();
    gtally tl = {0};
    check_casefile("cases/smoke.json", &tl);
    check_casefile("cases/features.json", &tl);
    check_casefile("cases/varlen.json", &tl); /* each row sees its own sequence */
    printf("gpu tier: %ld rows, %ld decided whole on the GPU, %ld on the CPU; %ld O values compared with MPFR\n",
           tl.rows, tl.rows_gpu, tl.rows_cpu, tl.values);
    cr_assert_gt(tl.rows_gpu * 10, tl.rows * 8, "the GPU tier decided only %ld of %ld rows", tl.rows_gpu, tl.rows);
}

Test(gpu_tier, one_row_per_warp_kernel_agrees_with_mpfr, .timeout = 900)
{
    SKIP_WITHOUT_GPU();
    /* the default kernel takes 4 rows per warp at head_dim <= 128; this asks for the other */
    setenv("FD_TIER_GPU_ROWS", "1", 1);
    gtally tl = {0};
    check_casefile("cases/features.json", &tl);
    printf("gpu tier, one row per warp: %ld rows, %ld decided whole on the GPU\n", tl.rows, tl.rows_gpu);
    cr_assert_gt(tl.rows_gpu * 10, tl.rows * 8);
}

Test(gpu_tier, adversarial_rows)
{
    SKIP_WITHOUT_GPU();
    gtally tl = {0};
    for (int t = 0; t < 3; t++) {
        fd_problem p = tu_make_problem(1, 2, 1, 48, 96, 32, (fd_dtype)t, FD_MASK_CAUSAL_BR, 0.2);
        float *q = calloc(fd_q_numel(&p), sizeof(float)), *k = calloc(fd_kv_numel(&p), sizeof(float));
        float *v = calloc(fd_kv_numel(&p), sizeof(float));
        uint64_t st = 0xadd5eedull;
        for (size_t x = 0; x < fd_q_numel(&p); x++) q[x] = (float)(0.25 * (double)(int)(8 * tu_urand(&st)) - 1.0);
        for (int j = 0; j < 96; j++)
            for (int d = 0; d < 32; d++) {
                const size_t x = (size_t)j * 32 + (size_t)d;
                k[x] = (float)(j % 5 == 0 ? 0.5 : (j == 7 ? 40.0 : 0.125 * (double)((j * 7 + d) % 9) - 0.5));
                v[x] = (float)((j & 1) ? -1.0 - d / 8.0 : 1.0 + d / 8.0); /* pairs that cancel */
                if (d == 3) v[x] = (float)(0.5 * tu_urand(&st));
            }
        int rows[48];
        for (int i = 0; i < 48; i++) rows[i] = i;
        check_rows(&p, q, k, v, rows, 48, "adversarial", &tl);
        free(q); free(k); free(v);
    }
    printf("gpu tier, adversarial: %ld rows, %ld decided on the GPU, %ld on the CPU\n", tl.rows, tl.rows_gpu, tl.rows_cpu);
}

Test(gpu_tier, pipeline_uses_the_gpu_tier)
{
    SKIP_WITHOUT_GPU();
    fd_case c = tu_mk_case(2, 4, 2, 130, 150, 64, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.1, FD_DIST_NORMAL, 5);
    const fd_problem *p = &c.prob;
    float *q, *k, *v;
    char err[512];
    cr_assert_eq(fd_inputs_make(&c, &q, &k, &v, err, sizeof err), 0, "%s", err);
    int rows[130];
    for (int i = 0; i < 130; i++) rows[i] = i;
    const long ntask = (long)p->batch * p->heads * 130;
    double *o = malloc(sizeof(double) * (size_t)ntask * 64), *l = malloc(sizeof(double) * (size_t)ntask);
    int und = 0, pm = 0;
    fd_ref_stats st;
    cr_assert_eq(fd_reference_rows_tiered(p, q, k, v, rows, 130, 4, FD_REFTIER_AUTO, o, l, &und, &pm, &st, err, sizeof err),
                 0, "%s", err);
    cr_assert_eq(st.tier, FD_REFTIER_GPU, "auto picks the GPU tier where a GPU is present");
    cr_assert_eq(st.rows_tier + st.rows_mpfr, ntask);
    cr_assert_gt(st.rows_tier, 0);
    free(o); free(l); free(q); free(k); free(v);
}

/* ---- the backward tier ---- */
static int bwd_tier_gpu(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                        const int *qrows, int nq, const int *krows, int nk, fd_tier_bwd_out *out, char *err,
                        size_t errlen)
{
    return fd_tier_bwd_gpu(p, q, k, v, dout, qrows, nq, krows, nk, out, err, errlen);
}

static void backward_casefile_check(void)
{
    fd_casefile cf;
    char err[512];
    cr_assert_eq(fd_casefile_load(tu_path(TU_SOURCE, "cases/backward.json"), &cf, err, sizeof err), 0, "%s", err);
    tu_btally tl = {0};
    long both = 0;
    for (int ci = 0; ci < cf.ncases; ci++) {
        const fd_case *c = &cf.cases[ci];
        const fd_problem *p = &c->prob;
        if (!c->backward) continue;
        float *q, *k, *v, *dout;
        cr_assert_eq(fd_inputs_make(c, &q, &k, &v, err, sizeof err), 0, "%s", err);
        cr_assert_eq(fd_inputs_make_dout(c, &dout, err, sizeof err), 0, "%s", err);
        int *qr = malloc(sizeof(int) * (size_t)(p->seqlen_q + 64)), *kr = malloc(sizeof(int) * (size_t)(p->seqlen_k + 64));
        cr_assert(qr && kr);
        const int nq = fd_sample_rows(p, cf.rows_per_head, qr), nk = fd_bwd_sample_key_rows(p, cf.rows_per_head, kr);
        fd_tier_bwd_out g, h;
        tu_check_bwd(bwd_tier_gpu, p, q, k, v, dout, qr, nq, kr, nk, c->id, &tl, &g);
        const size_t nqv = (size_t)p->batch * (size_t)p->heads * (size_t)nq * (size_t)p->head_dim;
        const size_t nkv = (size_t)p->batch * (size_t)p->kv_heads * (size_t)nk * (size_t)p->head_dim;
        h = tu_bwd_out_alloc(nqv, nkv);
        cr_assert_eq(fd_tier_bwd_cpu(p, q, k, v, dout, qr, nq, kr, nk, 4, &h, err, sizeof err), 0, "%s", err);
        const int prec = fd_tb_prec((int)p->dtype), emin = fd_tb_emin((int)p->dtype);
        for (int w = 0; w < 3; w++) {
            const double *xg = w == 0 ? g.dq : w == 1 ? g.dk : g.dv, *xc = w == 0 ? h.dq : w == 1 ? h.dk : h.dv;
            const unsigned char *og = w == 0 ? g.okq : w == 1 ? g.okk : g.okv, *oc = w == 0 ? h.okq : w == 1 ? h.okk : h.okv;
            for (size_t e = 0; e < (w ? nkv : nqv); e++)
                if (og[e] && oc[e]) {
                    both++;
                    close_enough(xg[e], xc[e], prec, emin, c->id, (long)e, w, 2e-3);
                }
        }
        tu_bwd_out_free(&g);
        tu_bwd_out_free(&h);
        free(qr); free(kr); free(q); free(k); free(v); free(dout);
    }
    fd_casefile_free(&cf);
    tu_bwd_report("gpu backward tier, backward.json", &tl);
    printf("gpu backward tier: %ld values decided by both tiers agree to 2/1000 ulp\n", both);
    cr_assert_gt(tl.decided * 10, tl.values * 7, "the GPU backward tier decided only %ld of %ld values", tl.decided,
                 tl.values);
}

Test(gpu_tier, backward_agrees_with_mpfr_and_the_cpu_tier, .timeout = 1800)
{
    SKIP_WITHOUT_GPU();
    backward_casefile_check(); /* the warp kernels (the default) */
}

Test(gpu_tier, backward_thread_kernels_agree_with_mpfr_and_the_cpu_tier, .timeout = 1800)
{
    SKIP_WITHOUT_GPU();
    setenv("FD_TIER_GPU_BWD_SIMPLE", "1", 1); /* the thread-per-task kernels */
    backward_casefile_check();
}

/* Both GPU forms add every term in the CPU tier's order with the same device libm, so their
 * outputs must be the same bits: flags everywhere, values and bounds where decided (a warp
 * kernel that broadcast a key's scalars out of order, or from the wrong lane, fails this even
 * where the result stays within its bound). */
Test(gpu_tier, backward_warp_and_thread_kernels_same_bits, .timeout = 900)
{
    SKIP_WITHOUT_GPU();
    fd_casefile cf;
    char err[512];
    cr_assert_eq(fd_casefile_load(tu_path(TU_SOURCE, "cases/backward.json"), &cf, err, sizeof err), 0, "%s", err);
    long same = 0;
    for (int ci = 0; ci < cf.ncases; ci++) {
        const fd_case *c = &cf.cases[ci];
        const fd_problem *p = &c->prob;
        if (!c->backward) continue;
        float *q, *k, *v, *dout;
        cr_assert_eq(fd_inputs_make(c, &q, &k, &v, err, sizeof err), 0, "%s", err);
        cr_assert_eq(fd_inputs_make_dout(c, &dout, err, sizeof err), 0, "%s", err);
        int *qr = malloc(sizeof(int) * (size_t)(p->seqlen_q + 64)), *kr = malloc(sizeof(int) * (size_t)(p->seqlen_k + 64));
        cr_assert(qr && kr);
        const int nq = fd_sample_rows(p, cf.rows_per_head, qr), nk = fd_bwd_sample_key_rows(p, cf.rows_per_head, kr);
        const size_t nqv = (size_t)p->batch * (size_t)p->heads * (size_t)nq * (size_t)p->head_dim;
        const size_t nkv = (size_t)p->batch * (size_t)p->kv_heads * (size_t)nk * (size_t)p->head_dim;
        fd_tier_bwd_out a = tu_bwd_out_alloc(nqv, nkv), t = tu_bwd_out_alloc(nqv, nkv);
        unsetenv("FD_TIER_GPU_BWD_SIMPLE");
        cr_assert_eq(fd_tier_bwd_gpu(p, q, k, v, dout, qr, nq, kr, nk, &a, err, sizeof err), 0, "%s", err);
        setenv("FD_TIER_GPU_BWD_SIMPLE", "1", 1);
        cr_assert_eq(fd_tier_bwd_gpu(p, q, k, v, dout, qr, nq, kr, nk, &t, err, sizeof err), 0, "%s", err);
        unsetenv("FD_TIER_GPU_BWD_SIMPLE");
        cr_assert_eq(a.ndecided, t.ndecided, "%s: warp kernels decided %ld values, thread kernels %ld", c->id,
                     a.ndecided, t.ndecided);
        for (int w = 0; w < 3; w++) {
            const double *xa = w == 0 ? a.dq : w == 1 ? a.dk : a.dv, *xt = w == 0 ? t.dq : w == 1 ? t.dk : t.dv;
            const double *ba = w == 0 ? a.bdq : w == 1 ? a.bdk : a.bdv, *bt = w == 0 ? t.bdq : w == 1 ? t.bdk : t.bdv;
            const unsigned char *oa = w == 0 ? a.okq : w == 1 ? a.okk : a.okv, *ot = w == 0 ? t.okq : w == 1 ? t.okk : t.okv;
            for (size_t e = 0; e < (w ? nkv : nqv); e++) {
                cr_assert_eq(oa[e], ot[e], "%s: gradient %d element %zu decided by one GPU form only", c->id, w, e);
                if (!oa[e]) continue;
                cr_assert(!memcmp(&xa[e], &xt[e], 8) && !memcmp(&ba[e], &bt[e], 8),
                          "%s: gradient %d element %zu: warp %a (bound %a), thread %a (bound %a)", c->id, w, e, xa[e],
                          ba[e], xt[e], bt[e]);
                same++;
            }
        }
        tu_bwd_out_free(&a);
        tu_bwd_out_free(&t);
        free(qr); free(kr); free(q); free(k); free(v); free(dout);
    }
    fd_casefile_free(&cf);
    printf("gpu backward tier: %ld decided values, the same bits from the warp and the thread kernels\n", same);
    cr_assert_gt(same, 0);
}

Test(gpu_tier, backward_stage_uses_the_gpu_tier, .timeout = 300)
{
    SKIP_WITHOUT_GPU();
    fd_case c = tu_mk_case(2, 4, 2, 130, 150, 64, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.1, FD_DIST_NORMAL, 5);
    c.backward = 1;
    const fd_problem *p = &c.prob;
    float *q, *k, *v, *dout;
    char err[512];
    cr_assert_eq(fd_inputs_make(&c, &q, &k, &v, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fd_inputs_make_dout(&c, &dout, err, sizeof err), 0, "%s", err);
    int qr[130], kr[150];
    for (int i = 0; i < 130; i++) qr[i] = i;
    for (int j = 0; j < 150; j++) kr[j] = j;
    const size_t nqv = 2 * 4 * 130 * 64, nkv = 2 * 2 * 150 * 64;
    double *tq = malloc(sizeof(double) * nqv), *tk = malloc(sizeof(double) * nkv), *tv = malloc(sizeof(double) * nkv);
    double *cq = malloc(sizeof(double) * nqv), *ck = malloc(sizeof(double) * nkv), *cv = malloc(sizeof(double) * nkv);
    cr_assert(tq && tk && tv && cq && ck && cv);
    int und = 0, pm = 0;
    fd_ref_stats st, sc;
    cr_assert_eq(fd_reference_bwd_tiered(p, q, k, v, dout, qr, 130, kr, 150, 4, FD_REFTIER_AUTO, tq, tk, tv, &und, &pm,
                                         &st, err, sizeof err), 0, "%s", err);
    cr_assert_eq(st.tier, FD_REFTIER_GPU, "auto picks the GPU tier for the backward where a GPU is present");
    cr_assert_eq(st.values_tier + st.values_mpfr, st.values);
    cr_assert_gt(st.values_tier, 0);
    cr_assert_eq(fd_reference_bwd_tiered(p, q, k, v, dout, qr, 130, kr, 150, 4, FD_REFTIER_CPU, cq, ck, cv, &und, &pm,
                                         &sc, err, sizeof err), 0, "%s", err);
    for (int w = 0; w < 3; w++) {
        const double *a = w == 0 ? tq : w == 1 ? tk : tv, *b = w == 0 ? cq : w == 1 ? ck : cv;
        for (size_t e = 0; e < (w ? nkv : nqv); e++) close_enough(a[e], b[e], 8, -126, "stage gpu vs cpu", (long)e, w, 2e-3);
    }
    printf("backward stage on the GPU: %ld values, %ld from the tier in %.3f s, %ld from MPFR in %ld calls (%.3f s); "
           "CPU tier %.3f s\n", st.values, st.values_tier, st.seconds_tier, st.values_mpfr, st.rows_mpfr, st.seconds_mpfr,
           sc.seconds_tier);
    free(tq); free(tk); free(tv); free(cq); free(ck); free(cv);
    free(q); free(k); free(v); free(dout);
}
