/* test_pipeline.c: the one judging pipeline (harness/fd_run.h), case by case.
 *
 * Nothing passes unjudged: a flash kernel alone is compared with a computed standard
 * baseline (and its rounding budget is recorded); standard kernels alone are UNJUDGED;
 * a supplied standard output is judged by the standard rule against the computed one;
 * a flash output no rule can judge is UNJUDGED; an LSE that was not given is not
 * measured and never judged, even under an LSE limit; --repeat fails a kernel whose
 * outputs change between runs. Each verdict path gets a right and a wrong input. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_inputs.h"
#include "fd_metrics.h"
#include "fd_run.h"
#include "fd_run_import.h"

static fd_casefile g_cf;
static fd_case g_case;

static void setup(void)
{
    memset(&g_cf, 0, sizeof g_cf);
    snprintf(g_cf.path, sizeof g_cf.path, "test_pipeline");
    g_cf.rows_per_head = 8;
    fd_flash_cfg_default(&g_cf.flash);
    fd_policy_default(&g_cf.policy);
    memset(&g_case, 0, sizeof g_case);
    snprintf(g_case.id, sizeof g_case.id, "pipeline-b1h2-q40k56-d32-fp16");
    fd_problem *p = &g_case.prob;
    p->batch = 1; p->heads = 2; p->kv_heads = 2; p->seqlen_q = 40; p->seqlen_k = 56; p->head_dim = 32;
    p->dtype = FD_DT_FP16;
    p->mask = FD_MASK_CAUSAL_BR;
    p->softmax_scale = (float)(1.0 / sqrt(32.0));
    g_case.dist = FD_DIST_NORMAL;
    g_case.input_seed = 7;
}

TestSuite(pipeline, .init = setup);

static const fd_backend *be(const char *name)
{
    const fd_backend *b = fd_backend_find(name);
    cr_assert_not_null(b, "backend %s", name);
    return b;
}

Test(pipeline, flash_alone_gets_a_computed_baseline)
{
    const fd_backend *bes[] = {be("cpu-flash")};
    fd_case_result r;
    char err[512];
    cr_assert_eq(fd_run_case(&g_cf, &g_case, bes, 1, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_PASS, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_assert_eq(r.nbe, 2, "the computed standard is added as a second result");
    cr_expect_str_eq(r.be[1].be->name, "cpu-standard");
    cr_expect_eq(r.be[1].origin, FD_ORIGIN_COMPUTED);
    cr_expect_eq(r.be[0].baseline, 1);
    cr_expect(r.be[0].fa_ratio >= 0 && r.be[0].fa_limit > 0, "FlashAttention's rule applied");
    cr_expect(!isnan(r.budget_standard) && !isnan(r.budget_replay), "the rounding budget is recorded");
    cr_expect(fabs(r.budget_replay - r.be[0].m.max_abs) <= 0.0, "the replay is cpu-flash itself here");
    fd_case_result_free(&r);
    /* with a standard kernel of the family beside it, none is computed */
    const fd_backend *both[] = {be("cpu-flash"), be("cpu-standard")};
    cr_assert_eq(fd_run_case(&g_cf, &g_case, both, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.nbe, 2);
    cr_expect_eq(r.be[1].origin, FD_ORIGIN_KERNEL);
    cr_expect(isnan(r.budget_standard), "no budget without a computed baseline");
    fd_case_result_free(&r);
}

Test(pipeline, standard_alone_is_unjudged)
{
    const fd_backend *bes[] = {be("cpu-standard")};
    fd_case_result r;
    char err[512];
    cr_assert_eq(fd_run_case(&g_cf, &g_case, bes, 1, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_UNJUDGED, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect(strstr(r.reasons, "no flash output to judge") != NULL, "%s", r.reasons);
    fd_case_result_free(&r);
}

/* A flash output given by the caller: the cpu-flash replay's, optionally scaled wrong. */
static float *replay_output(double factor, float **lse)
{
    const fd_problem *p = &g_case.prob;
    float *q, *k, *v, *o = malloc(sizeof(float) * fd_q_numel(p));
    *lse = malloc(sizeof(float) * fd_lse_numel(p));
    char err[256];
    cr_assert_eq(fd_inputs_make(&g_case, &q, &k, &v, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fd_cpu_flash_forward(p, &g_cf.flash, q, k, v, NULL, p->seqlen_q, o, *lse, err, sizeof err), 0, "%s",
                 err);
    for (size_t i = 0; i < fd_q_numel(p); i++) o[i] = fd_round_to_dtype((float)(factor * (double)o[i]), p->dtype);
    free(q); free(k); free(v);
    return o;
}

Test(pipeline, given_output_without_lse_is_not_judged_on_lse)
{
    fd_backend flash = {"given-flash", "import", FD_ROLE_FLASH, NULL, NULL, NULL, NULL};
    float *lse, *o = replay_output(1.0, &lse);
    fd_given g;
    memset(&g, 0, sizeof g);
    g.nout = 1;
    g.out[0].be = &flash;
    g.out[0].o = o;
    g_cf.policy.max_lse_abs = 1e-30; /* any measured LSE error would break it */
    fd_case_result r;
    char err[512];
    cr_assert_eq(fd_run_case_given(&g_cf, &g_case, NULL, 0, &g, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_PASS, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect(!r.be[0].m.lse_measured && isnan(r.be[0].m.lse_max_abs), "no LSE given: not measured");
    cr_expect_eq(r.be[1].origin, FD_ORIGIN_COMPUTED, "the baseline of a lone given output is computed");
    fd_case_result_free(&r);
    /* the same output with its LSE: measured, and the absurd limit breaks */
    g.out[0].lse = lse;
    cr_assert_eq(fd_run_case_given(&g_cf, &g_case, NULL, 0, &g, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect(r.be[0].m.lse_measured);
    cr_expect_eq(r.verdict, FD_FAIL, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect(strstr(r.reasons, "LSE error") != NULL, "%s", r.reasons);
    fd_case_result_free(&r);
    /* a wrong output alone (scale of the values off by 3%): FAIL against the computed baseline */
    g.out[0].lse = NULL;
    g_cf.policy.max_lse_abs = 0.0;
    free(o);
    o = replay_output(1.03, &lse);
    g.out[0].o = o;
    cr_assert_eq(fd_run_case_given(&g_cf, &g_case, NULL, 0, &g, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_FAIL, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect(strstr(r.reasons, "computed cpu-standard") != NULL, "the reason names the baseline: %s", r.reasons);
    fd_case_result_free(&r);
    free(o);
    free(lse);
}

Test(pipeline, flash_with_no_rule_is_unjudged)
{
    /* with a supplied standard output: FlashAttention's rule judges, PASS */
    fd_backend flash = {"given-flash", "import", FD_ROLE_FLASH, NULL, NULL, NULL, NULL};
    fd_backend std = {"given-eager", "import", FD_ROLE_STANDARD, NULL, NULL, NULL, NULL};
    float *lse, *o = replay_output(1.0, &lse);
    fd_given g;
    memset(&g, 0, sizeof g);
    g.nout = 2;
    g.out[0].be = &flash;
    g.out[0].o = o;
    g.out[1].be = &std;
    g.out[1].o = o;
    fd_case_result r;
    char err[512];
    cr_assert_eq(fd_run_case_given(&g_cf, &g_case, NULL, 0, &g, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_PASS, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect_eq(r.nbe, 3, "a supplied standard is judged against a computed one");
    cr_expect_eq(r.be[0].baseline, 1, "flash against the supplied standard");
    cr_expect_eq(r.be[1].baseline, 2, "the supplied standard against the computed one");
    cr_expect_eq(r.be[2].origin, FD_ORIGIN_COMPUTED);
    fd_case_result_free(&r);
    /* a policy with no rule for the output (the engine's callers may switch FlashAttention's
     * rule off; no ulp limit): the same correct output is UNJUDGED, never PASS */
    fd_casefile nf = g_cf;
    nf.policy.fa_ratio = 0.0;
    cr_assert_eq(fd_run_case_given(&nf, &g_case, NULL, 0, &g, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_UNJUDGED, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect(strstr(r.reasons, "given-flash: no rule could be applied") != NULL, "%s", r.reasons);
    fd_case_result_free(&r);
    /* an ulp limit is a rule: judged again */
    nf.policy.max_ulp[FD_DT_FP16] = 1e6;
    cr_assert_eq(fd_run_case_given(&nf, &g_case, NULL, 0, &g, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_PASS, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    fd_case_result_free(&r);
    free(o);
    free(lse);
}

Test(pipeline, supplied_standard_gets_the_standard_rule)
{
    /* someone else's eager attention alone: judged against the computed standard */
    fd_backend std = {"given-eager", "import", FD_ROLE_STANDARD, NULL, NULL, NULL, NULL};
    float *lse, *o = replay_output(1.0, &lse);
    fd_given g;
    memset(&g, 0, sizeof g);
    g.nout = 1;
    g.out[0].be = &std;
    g.out[0].o = o;
    fd_case_result r;
    char err[512];
    cr_assert_eq(fd_run_case_given(&g_cf, &g_case, NULL, 0, &g, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_PASS, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_assert_eq(r.nbe, 2);
    cr_expect_eq(r.be[1].origin, FD_ORIGIN_COMPUTED);
    cr_expect_eq(r.be[0].baseline, 1);
    cr_expect(r.be[0].fa_limit > 0 && r.be[0].fa_ratio >= 0);
    fd_case_result_free(&r);
    /* a standard output with a bug (scale missing on the output: 1.5x) fails */
    float *lse2, *bad = replay_output(1.5, &lse2);
    g.out[0].o = bad;
    cr_assert_eq(fd_run_case_given(&g_cf, &g_case, NULL, 0, &g, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_FAIL, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect(strstr(r.reasons, "given-eager (standard): max_abs") != NULL, "%s", r.reasons);
    fd_case_result_free(&r);
    free(o); free(lse); free(bad); free(lse2);
}

/* A kernel whose output changes from run to run (a race, atomics in a varying order). */
static int g_calls;
static int run_wobbly(const fd_casefile *cf, const fd_case *c, const float *q, const float *k, const float *v,
                      const int *rows, int nrows, float *o, float *lse, double *ms, char *err, size_t errlen)
{
    *ms = 0.0;
    int rc = fd_cpu_flash_forward(&c->prob, &cf->flash, q, k, v, rows, nrows, o, lse, err, errlen);
    const size_t i = fd_q_index(&c->prob, 0, rows[0], 0, 0);
    o[i] = fd_bits_f32(fd_f32_bits(o[i]) + (uint32_t)(g_calls++ % 3));
    return rc;
}

Test(pipeline, repeat_fails_a_kernel_that_wobbles)
{
    fd_backend wob = {"wobbly-flash", "cpu", FD_ROLE_FLASH, run_wobbly, NULL, NULL, NULL};
    const fd_backend *bes[] = {&wob, be("cpu-standard")};
    fd_case_result r;
    char err[512];
    g_calls = 0;
    cr_assert_eq(fd_run_case(&g_cf, &g_case, bes, 2, 2, 3, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_FAIL, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect_eq(r.be[0].repeat_runs, 3);
    cr_expect_eq(r.be[0].repeat_distinct, 3, "three runs, three hashes");
    cr_expect(strstr(r.reasons, "wobbly-flash: outputs not bitwise identical: 3 distinct hashes over 3 runs") != NULL,
              "%s", r.reasons);
    cr_expect_eq(r.be[1].repeat_distinct, 1, "cpu-standard is deterministic");
    fd_case_result_free(&r);
    /* the deterministic replay repeated: PASS */
    const fd_backend *det[] = {be("cpu-flash"), be("cpu-standard")};
    cr_assert_eq(fd_run_case(&g_cf, &g_case, det, 2, 2, 3, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_PASS, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect_eq(r.be[0].repeat_distinct, 1);
    fd_case_result_free(&r);
}

/* A kernel whose output depends on the batch it runs in: one ulp (of the dtype) more in batch element 1
 * when it runs beside others (as a GEMM heuristic that picks by batch count can do). */
static int run_batchy(const fd_casefile *cf, const fd_case *c, const float *q, const float *k, const float *v,
                      const int *rows, int nrows, float *o, float *lse, double *ms, char *err, size_t errlen)
{
    *ms = 0.0;
    int rc = fd_cpu_flash_forward(&c->prob, &cf->flash, q, k, v, rows, nrows, o, lse, err, errlen);
    if (c->prob.batch > 1) {
        const size_t i = fd_q_index(&c->prob, 1, rows[0], 1, 3);
        o[i] = (float)((double)o[i] + fd_ulp_in_dtype(fabs((double)o[i]), c->prob.dtype)); /* one ulp up */
    }
    return rc;
}

Test(pipeline, batch_invariance_stage)
{
    fd_case c3 = g_case;
    c3.prob.batch = 3;
    g_cf.batch_invariance = 1;
    fd_case_result r;
    char err[512];
    /* the replay is batch invariant */
    const fd_backend *det[] = {be("cpu-flash"), be("cpu-standard")};
    cr_assert_eq(fd_run_case(&g_cf, &c3, det, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_PASS, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect(r.inv_active && r.be[0].inv.measured && r.be[0].inv.batches == 3, "%s", r.be[0].inv.note);
    cr_expect(r.be[0].inv.checked > 0 && r.be[0].inv.differ == 0);
    cr_expect(r.be[1].inv.measured && r.be[1].inv.differ == 0);
    fd_case_result_free(&r);
    /* a kernel that is not: reported (one element, 1 ulp, where it was planted) */
    fd_backend bat = {"batchy-flash", "cpu", FD_ROLE_FLASH, run_batchy, NULL, NULL, NULL};
    const fd_backend *bes[] = {&bat, be("cpu-standard")};
    cr_assert_eq(fd_run_case(&g_cf, &c3, bes, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.be[0].inv.differ, 1);
    cr_expect_eq(r.be[0].inv.first_b, 1);
    cr_expect_eq(r.be[0].inv.first_h, 1);
    cr_expect_eq(r.be[0].inv.first_d, 3);
    cr_expect(fabs(r.be[0].inv.max_ulp - 1.0) < 0.51, "%g ulp", r.be[0].inv.max_ulp);
    cr_expect_eq(r.verdict, FD_PASS, "reported, not failed, by default: %s", r.reasons);
    cr_expect(strstr(r.reasons, "batchy-flash: not batch invariant: 1 of") != NULL, "%s", r.reasons);
    fd_case_result_free(&r);
    /* the policy can require it */
    g_cf.policy.require_batch_invariance = 1;
    cr_assert_eq(fd_run_case(&g_cf, &c3, bes, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_FAIL, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    fd_case_result_free(&r);
    /* dropout: not measured (FA2's mask depends on the batch index) */
    c3.prob.dropout_p = 0.1;
    c3.prob.seed = 5;
    cr_assert_eq(fd_run_case(&g_cf, &c3, det, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect(!r.be[0].inv.measured && strstr(r.be[0].inv.note, "dropout"), "%s", r.be[0].inv.note);
    fd_case_result_free(&r);
    g_cf.batch_invariance = 0;
    g_cf.policy.require_batch_invariance = 0;
}
