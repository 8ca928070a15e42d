/* test_backward.c: the backward stage of the one judging pipeline, end to end on the CPU.
 *
 * Right and wrong on each path: the CI backward cases pass on the replay and the standard
 * backward; a kernel with a backward bug fails and `explain` names the bug (every
 * backward hypothesis injected once); a dK that changes between runs fails --repeat, an
 * atomic dQ that does not stay bitwise passes unless the policy requires determinism;
 * gate applies gradient limits and FlashAttention's rule per gradient from report.json;
 * case-file and policy errors name the field. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cpu_bwd.h"
#include "fd_dtype.h"
#include "fd_explain.h"
#include "fd_gate.h"
#include "fd_import.h"
#include "fd_inputs.h"
#include "fd_report.h"
#include "fd_metrics.h"
#include "fd_run.h"
#include "fd_run_bwd.h"
#include "fd_run_import.h"
#include "fd_test_util.h"

#define BR_CASE "b1h2k1-q96k160-d32-fp16-causal_br-p0-normal-s21-bwd"   /* GQA, causal_br, sq < sk */
#define TL_CASE "b1h2k1-q96k160-d32-fp16-causal_tl-p0-normal-s21-bwd"
#define EMPTY_CASE "b1h2k2-q160k96-d32-fp16-causal_br-p0-normal-s21-bwd" /* 64 rows see no key */
#define DROP_CASE "b1h2k2-q96k96-d64-bf16-none-p0.17-normal-s22-bwd"
#define CAP_CASE "b1h2k2-q64k64-d64-fp16-none-p0-normal-s34-cap5-bwd"
#define WIN_CASE "b1h2k2-q96k160-d32-fp16-none-p0-normal-s31-w16_8-bwd"   /* both sides bounded */
#define ALIBI_CASE "b1h4k2-q96k96-d64-bf16-none-p0-normal-s33-alibi-bwd"

static fd_casefile g_cf;

static void load(void)
{
    char err[1024];
    cr_assert_eq(fd_casefile_load(tu_path(TU_SOURCE, "cases/backward.json"), &g_cf, err, sizeof err), 0, "%s", err);
}
static void unload(void) { fd_casefile_free(&g_cf); }

static const fd_case *find(const char *id)
{
    for (int i = 0; i < g_cf.ncases; i++)
        if (!strcmp(g_cf.cases[i].id, id)) return &g_cf.cases[i];
    cr_assert_fail("case %s not in cases/backward.json", id);
    return NULL;
}

static const fd_backend *be(const char *name)
{
    const fd_backend *b = fd_backend_find(name);
    cr_assert_not_null(b, "backend %s", name);
    return b;
}

TestSuite(backward, .init = load, .fini = unload);

Test(backward, ci_cases_pass_on_the_replay_and_standard)
{
    const char *ids[] = {BR_CASE, EMPTY_CASE, DROP_CASE};
    const fd_backend *bes[] = {be("cpu-flash"), be("cpu-standard")};
    for (int t = 0; t < 3; t++) {
        fd_case_result r;
        char err[512];
        cr_assert_eq(fd_run_case(&g_cf, find(ids[t]), bes, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
        cr_expect(r.verdict == FD_PASS || r.verdict == FD_MARGINAL, "%s: %s: %s", ids[t], fd_verdict_name(r.verdict),
                  r.reasons);
        cr_assert(r.bwd.active && r.bwd.nkrows > 0);
        cr_expect_eq(r.bwd.ref_undecided, 0);
        for (int g = 0; g < FD_NGRAD; g++) {
            cr_assert(r.be[0].g.measured && r.be[1].g.measured);
            cr_expect(r.be[0].g.fa_ratio[g] >= 0 && r.be[0].g.fa_ratio[g] <= 2.0, "%s %s ratio %g", ids[t],
                      fd_grad_names[g], r.be[0].g.fa_ratio[g]);
            cr_expect(r.be[0].g.m[g].max_abs > 0 && r.be[0].g.m[g].max_abs < 0.05, "%s %s: %g", ids[t],
                      fd_grad_names[g], r.be[0].g.m[g].max_abs);
            cr_expect_eq(r.be[0].g.m[g].nan_count, 0);
        }
        fd_case_result_free(&r);
    }
}

/* The backward's reference stage honours the case file's reference tier: the CPU binary64
 * tier gives the exact gradients to 1/1000 ulp of the dtype of MPFR's (GQA causal, rows with
 * no key, softcap), its counts add up, and the report's backward.reference says so. */
Test(backward, reference_tiers_give_mpfrs_gradients)
{
    const char *ids[] = {BR_CASE, EMPTY_CASE, CAP_CASE};
    const fd_backend *bes[] = {be("cpu-flash")};
    for (int t = 0; t < 3; t++) {
        fd_case_result r[2];
        char err[512];
        const fd_reftier saved = g_cf.reference;
        for (int w = 0; w < 2; w++) {
            g_cf.reference = w ? FD_REFTIER_CPU : FD_REFTIER_MPFR;
            cr_assert_eq(fd_run_case(&g_cf, find(ids[t]), bes, 1, 2, 1, &r[w], err, sizeof err), 0, "%s", err);
        }
        g_cf.reference = saved;
        const fd_ref_stats *sm = &r[0].bwd.ref, *st = &r[1].bwd.ref;
        cr_assert_eq(sm->tier, FD_REFTIER_MPFR);
        cr_assert_eq(st->tier, FD_REFTIER_CPU);
        cr_assert_eq(sm->values_mpfr, sm->values);
        cr_assert_eq(st->values, sm->values);
        cr_assert_eq(st->values_tier + st->values_mpfr, st->values);
        cr_assert_gt(st->values_tier, st->values / 2, "%s: the tier decided %ld of %ld", ids[t], st->values_tier,
                     st->values);
        const fd_dtype dt = find(ids[t])->prob.dtype;
        for (int g = 0; g < FD_NGRAD; g++) {
            const double *a = g == 0 ? r[0].bwd.ref_dq : g == 1 ? r[0].bwd.ref_dk : r[0].bwd.ref_dv;
            const double *b = g == 0 ? r[1].bwd.ref_dq : g == 1 ? r[1].bwd.ref_dk : r[1].bwd.ref_dv;
            const size_t n = fd_bwd_count(&r[0], g);
            for (size_t x = 0; x < n; x++)
                cr_assert(fabs(a[x] - b[x]) <= fd_ulp_in_dtype(a[x], dt) / 1000.0,
                          "%s %s element %zu: MPFR %a, tiered %a", ids[t], fd_grad_names[g], x, a[x], b[x]);
        }
        json_t *j = fd_report_case_json(&r[1]);
        json_t *rf = json_object_get(json_object_get(j, "backward"), "reference");
        cr_assert_str_eq(json_string_value(json_object_get(rf, "tier")), "cpu");
        cr_assert_eq(json_integer_value(json_object_get(rf, "values_tier")), st->values_tier);
        cr_assert_eq(json_integer_value(json_object_get(rf, "mpfr_calls")), st->rows_mpfr);
        json_decref(j);
        fd_case_result_free(&r[0]);
        fd_case_result_free(&r[1]);
    }
}

/* Rows that see no key have dQ = 0 in the exact gradient and in the replay. */
Test(backward, rows_without_keys_have_zero_dq)
{
    const fd_case *c = find(EMPTY_CASE);
    const fd_backend *bes[] = {be("cpu-flash")};
    fd_case_result r;
    char err[512];
    cr_assert_eq(fd_run_case(&g_cf, c, bes, 1, 2, 1, &r, err, sizeof err), 0, "%s", err);
    int empty = 0;
    for (int i = 0; i < r.nrows; i++) {
        if (fd_mask_visible_count(c->prob.mask, r.rows[i], c->prob.seqlen_q, c->prob.seqlen_k)) continue;
        empty++;
        for (int d = 0; d < c->prob.head_dim; d++)
            cr_assert(fd_eq(r.bwd.ref_dq[(size_t)i * (size_t)c->prob.head_dim + (size_t)d], 0.0));
    }
    cr_assert(empty > 0, "the sample holds rows with no key");
    fd_case_result_free(&r);
}

/* A backward kernel with a bug: dK and dV written to each other's tensor. */
static int bwd_swapped(const fd_casefile *cf, const fd_case *c, const float *q, const float *k, const float *v,
                       const float *o, const float *lse, const float *dout, float *dq, float *dk, float *dv,
                       double *ms, char *err, size_t errlen)
{
    *ms = 0.0;
    return fd_cpu_flash_backward(&c->prob, &cf->flash, &cf->bwd, q, k, v, o, lse, dout, dq, dv, dk, err, errlen);
}

/* A backward kernel whose gradient g changes by one ulp on every other call. */
static int g_calls, g_wobble;
static int bwd_wobbly(const fd_casefile *cf, const fd_case *c, const float *q, const float *k, const float *v,
                      const float *o, const float *lse, const float *dout, float *dq, float *dk, float *dv,
                      double *ms, char *err, size_t errlen)
{
    *ms = 0.0;
    int rc = fd_cpu_flash_backward(&c->prob, &cf->flash, &cf->bwd, q, k, v, o, lse, dout, dq, dk, dv, err, errlen);
    float *x = g_wobble == 0 ? dq : dk;
    const size_t n = g_wobble == 0 ? fd_q_numel(&c->prob) : fd_kv_numel(&c->prob);
    if (g_calls++ % 2)
        for (size_t i = 0; i < n; i++) x[i] = fd_bits_f32(fd_f32_bits(x[i]) ^ 1u);
    return rc;
}

static int run_cpu_flash_fwd(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                             const float *v, const int *rows, int nrows, float *o, float *lse, double *ms,
                             char *err, size_t errlen)
{
    *ms = 0.0;
    return fd_cpu_flash_forward(&c->prob, &cf->flash, q, k, v, rows, nrows, o, lse, err, errlen);
}

Test(backward, a_wrong_backward_fails)
{
    fd_backend bad = {"swapped-flash", "cpu", FD_ROLE_FLASH, run_cpu_flash_fwd, NULL, NULL, bwd_swapped};
    const fd_backend *bes[] = {&bad, be("cpu-standard")};
    fd_case_result r;
    char err[512];
    cr_assert_eq(fd_run_case(&g_cf, find(BR_CASE), bes, 2, 2, 1, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_FAIL, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect(strstr(r.reasons, "swapped-flash: dk max_abs") && strstr(r.reasons, "swapped-flash: dv max_abs"), "%s",
              r.reasons);
    cr_expect(r.be[0].m.max_abs < 0.01, "the forward itself is right");
    fd_case_result_free(&r);
}

Test(backward, repeat_judges_determinism_per_gradient)
{
    fd_backend wob = {"wobbly-flash", "cpu", FD_ROLE_FLASH, run_cpu_flash_fwd, NULL, NULL, bwd_wobbly};
    const fd_backend *bes[] = {&wob, be("cpu-standard")};
    fd_casefile cf = g_cf;
    cf.bwd.dq_mode = FD_DQ_ATOMIC;
    fd_case_result r;
    char err[512];
    /* dK is never atomic: a dK that changes fails */
    g_calls = 0;
    g_wobble = 1;
    cr_assert_eq(fd_run_case(&cf, find(BR_CASE), bes, 2, 2, 3, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_FAIL, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect_eq(r.be[0].g.repeat_distinct[1], 2);
    cr_expect(r.be[0].g.spread_elems[1] > 0 && r.be[0].g.spread_ulp[1] > 0);
    cr_expect(strstr(r.reasons, "wobbly-flash: dk not bitwise identical over 3 runs") != NULL, "%s", r.reasons);
    fd_case_result_free(&r);
    /* an atomic dQ may differ between runs: reported, not failed */
    g_calls = 0;
    g_wobble = 0;
    cr_assert_eq(fd_run_case(&cf, find(BR_CASE), bes, 2, 2, 3, &r, err, sizeof err), 0, "%s", err);
    cr_expect(r.verdict == FD_PASS || r.verdict == FD_MARGINAL, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect_eq(r.be[0].g.repeat_distinct[0], 2);
    fd_case_result_free(&r);
    /* ... unless the policy requires determinism */
    cf.policy.require_deterministic = 1;
    g_calls = 0;
    cr_assert_eq(fd_run_case(&cf, find(BR_CASE), bes, 2, 2, 3, &r, err, sizeof err), 0, "%s", err);
    cr_expect_eq(r.verdict, FD_FAIL, "%s: %s", fd_verdict_name(r.verdict), r.reasons);
    cr_expect(strstr(r.reasons, "the policy requires determinism") != NULL, "%s", r.reasons);
    fd_case_result_free(&r);
}

/* The case each backward bug shows on. */
static const char *case_for(const char *bug)
{
    if (!strcmp(bug, "bwd_causal_bottom_right")) return TL_CASE;
    if (!strncmp(bug, "bwd_dropout", 11)) return DROP_CASE;
    if (!strcmp(bug, "bwd_softcap_derivative_missing")) return CAP_CASE;
    if (!strncmp(bug, "bwd_window", 10)) return WIN_CASE;
    if (!strcmp(bug, "bwd_alibi_missing")) return ALIBI_CASE;
    return BR_CASE;
}

Test(backward, each_injected_backward_bug_is_named)
{
    int nbugs = 0;
    for (const char *const *bug = fd_explain_bugs; *bug; bug++) {
        if (!fd_explain_bug_is_bwd(*bug)) continue;
        nbugs++;
        fd_explain_opts o = {"cpu-flash", *bug, 2};
        fd_explanation ex;
        char err[1024];
        cr_assert_eq(fd_explain_case(&g_cf, find(case_for(*bug)), &o, &ex, err, sizeof err), 0, "%s: %s", *bug, err);
        cr_expect_eq(ex.verdict, FD_FAIL, "--inject %s: the pipeline fails it: %s", *bug, ex.reasons);
        cr_assert(ex.grad.active && ex.grad.gross, "%s: gradients far above the budget: %s", *bug, ex.grad.summary);
        cr_assert(!ex.gross, "%s: the forward is untouched", *bug);
        const fd_ex_grad *g = &ex.grad;
        cr_assert(g->best >= 0 && !strcmp(g->hypo[g->best].name, *bug), "--inject %s: best %s", *bug,
                  g->best >= 0 ? g->hypo[g->best].name : "none");
        cr_expect(g->hypo[g->best].explains, "%s: %.3g x the limit left", *bug, g->hypo[g->best].residual_ratio);
        int others = 0;
        for (int i = 0; i < g->nhypo; i++) others += i != g->best && g->hypo[i].explains;
        cr_expect_eq(others, 0, "%s: only one hypothesis explains it", *bug);
        cr_expect(strstr(ex.summary, *bug) != NULL, "the summary names %s: %s", *bug, ex.summary);
        fd_explanation_free(&ex);
    }
    cr_assert_eq(nbugs, 17, "the backward bugs (a new one needs a case here)");
}

/* Without a bug: the stage budget adds up and every gradient is within its budget. */
Test(backward, explain_budget_without_bug)
{
    fd_explain_opts o = {"cpu-flash", NULL, 2};
    fd_explanation ex;
    char err[1024];
    cr_assert_eq(fd_explain_case(&g_cf, find(DROP_CASE), &o, &ex, err, sizeof err), 0, "%s", err);
    cr_assert(ex.grad.active && !ex.grad.gross, "%s", ex.grad.summary);
    for (int t = 0; t < FD_NGRAD; t++) {
        /* all stages exact is still fed the forward's binary32 LSE: ~1e-7 relative left */
        cr_expect(ex.grad.allexact[t] < 1e-3 * ex.grad.r_err[t], "%s: all stages exact %g vs replay %g",
                  fd_grad_names[t], ex.grad.allexact[t], ex.grad.r_err[t]);
        cr_expect(ex.grad.k_err[t] <= ex.grad.limit[t]);
    }
    cr_expect(ex.grad.nparts >= 7);
    fd_explanation_free(&ex);
}

Test(backward, explain_refuses_a_backward_bug_on_a_forward_case)
{
    char *a[] = {FD_BINARY, "explain", tu_path(TU_SOURCE, "cases/smoke.json"), "--case",
                 "b1h2k2-q64k64-d32-fp16-none-p0-normal-s1", "--inject", "bwd_dq_scale_missing", NULL};
    cr_assert_eq(tu_run(a), 2, "%s", g_err);
    cr_expect(strstr(g_err, "has no backward pass") != NULL, "%s", g_err);
}

/* text written to DIR/name in a fresh temporary directory (paths kept in a small ring) */
static const char *tmpfile_with(const char *name, const char *text)
{
    static char paths[8][512];
    static int next;
    char dir[256];
    tu_dir(dir, sizeof dir);
    char *p = paths[next++ % 8];
    snprintf(p, 512, "%s/%s", dir, name);
    tu_write(p, text);
    return p;
}

static int load_err(const char *json, char *err, size_t len)
{
    const char *path = tmpfile_with("bwd_case.json", json);
    fd_casefile cf;
    int rc = fd_casefile_load(path, &cf, err, len);
    if (!rc) fd_casefile_free(&cf);
    return rc;
}

Test(backward, case_file_errors_name_the_field)
{
    char err[1024];
    const char *head = "{\"schema\": \"flashdrift-cases/1\", \"name\": \"x\", ";
    char buf[2048];
    snprintf(buf, sizeof buf, "%s\"sweeps\": [{\"seqlen\": 64, \"head_dim\": 32, \"backward\": \"yes\"}]}", head);
    cr_assert_eq(load_err(buf, err, sizeof err), -1);
    cr_expect(strstr(err, "sweeps[0].backward") && strstr(err, "expected true or false"), "%s", err);
    snprintf(buf, sizeof buf, "%s\"flash\": {\"dq_mode\": \"racy\"}, \"sweeps\": [{\"seqlen\": 64, \"head_dim\": 32}]}", head);
    cr_assert_eq(load_err(buf, err, sizeof err), -1);
    cr_expect(strstr(err, "flash.dq_mode") && strstr(err, "deterministic"), "%s", err);
    snprintf(buf, sizeof buf, "%s\"policy\": {\"grad_fa_ratio\": {\"dq\": -1}}, \"sweeps\": [{\"seqlen\": 64, \"head_dim\": 32}]}", head);
    cr_assert_eq(load_err(buf, err, sizeof err), -1);
    cr_expect(strstr(err, "policy.grad_fa_ratio") != NULL, "%s", err);
    snprintf(buf, sizeof buf, "%s\"sweeps\": [{\"seqlen\": 64, \"head_dim\": 32, \"backward\": [false, true]}]}", head);
    fd_casefile cf;
    cr_assert_eq(fd_casefile_load(tmpfile_with("bwd_ok.json", buf), &cf, err, sizeof err), 0, "%s", err);
    cr_expect_eq(cf.ncases, 2);
    cr_expect(!cf.cases[0].backward && cf.cases[1].backward);
    cr_expect(strstr(cf.cases[1].id, "-bwd") != NULL, "%s", cf.cases[1].id);
    fd_casefile_free(&cf);
}

/* gate reads the gradients from report.json: limits per gradient and the FA rule. */
Test(backward, gate_applies_gradient_rules)
{
    char out[256];
    tu_dir(out, sizeof out);
    char *run[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/backward.json"), "--backend", "cpu", "--filter",
                   "q96k160-d32-fp16-causal_br", "--out", out, "--jobs", "2", "--quiet", NULL};
    const int rr = tu_run(run);
    cr_assert(rr == 0, "run: %d %s", rr, g_err);
    char rep[600];
    snprintf(rep, sizeof rep, "%s/report.json", out);
    /* FA rule per gradient: the replay passes */
    const char *ok = tmpfile_with("pol_ok.json", "{\"schema\": \"flashdrift-policy/1\", \"gradients\": {\"fa_ratio\": 2.0, \"atol\": 1e-5}}");
    char *g1[] = {FD_BINARY, "gate", rep, "--policy", (char *)ok, "--no-baseline", NULL};
    cr_expect_eq(tu_run(g1), 0, "%s%s", g_out, g_err);
    /* a dq limit far below the replay's error fails, naming the gradient */
    const char *tight = tmpfile_with("pol_tight.json", "{\"schema\": \"flashdrift-policy/1\", \"gradients\": "
                                                  "{\"limits\": {\"fp16\": {\"dq\": {\"max_abs\": 1e-7}}}}}");
    char *g2[] = {FD_BINARY, "gate", rep, "--policy", (char *)tight, "--no-baseline", NULL};
    cr_expect_eq(tu_run(g2), 1, "%s%s", g_out, g_err);
    cr_expect(strstr(g_out, "dq.max_abs") || strstr(g_err, "dq.max_abs"), "%s%s", g_out, g_err);
    /* an LSE limit has no meaning for a gradient */
    const char *bad = tmpfile_with("pol_bad.json", "{\"schema\": \"flashdrift-policy/1\", \"gradients\": "
                                              "{\"limits\": {\"fp16\": {\"dk\": {\"lse_max_abs\": 1}}}}}");
    char *g3[] = {FD_BINARY, "gate", rep, "--policy", (char *)bad, "--no-baseline", NULL};
    cr_expect_eq(tu_run(g3), 2, "%s%s", g_out, g_err);
    cr_expect(strstr(g_err, "gradients.limits.fp16.dk") != NULL, "%s", g_err);
}

/* Imported gradients: a bundle with do and dq/dk/dv per output is judged by check and
 * explained by explain --tensors; a gradient tensor missing is bad input (exit 2). */
static void write_grad_bundle_of(const char *case_id, unsigned bugs, const char *path, int swap, int drop_dk,
                                 int eager_grads)
{
    const fd_case *c = find(case_id);
    fd_bwd_cfg bc = g_cf.bwd;
    bc.bugs = bugs;
    const fd_problem *p = &c->prob;
    fd_bundle b;
    memset(&b, 0, sizeof b);
    b.prob = *p;
    char err[512];
    cr_assert_eq(fd_inputs_make(c, &b.q, &b.k, &b.v, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fd_inputs_make_dout(c, &b.dout, err, sizeof err), 0, "%s", err);
    float *lse = malloc(sizeof(float) * fd_lse_numel(p));
    cr_assert(lse);
    for (int t = 0; t < 2; t++) {
        fd_import_output *io = &b.out[t];
        snprintf(io->name, sizeof io->name, t == 0 ? "flash" : "eager");
        io->be.name = io->name;
        io->be.family = "import";
        io->be.role = t == 0 ? FD_ROLE_FLASH : FD_ROLE_STANDARD;
        io->o = malloc(sizeof(float) * fd_q_numel(p));
        io->dq = malloc(sizeof(float) * fd_q_numel(p));
        io->dk = malloc(sizeof(float) * fd_kv_numel(p));
        io->dv = malloc(sizeof(float) * fd_kv_numel(p));
        cr_assert(io->o && io->dq && io->dk && io->dv);
        if (t == 0) {
            cr_assert_eq(fd_cpu_flash_forward(p, &g_cf.flash, b.q, b.k, b.v, NULL, 0, io->o, lse, err, sizeof err), 0);
            cr_assert_eq(fd_cpu_flash_backward(p, &g_cf.flash, &bc, b.q, b.k, b.v, io->o, lse, b.dout, io->dq,
                                               swap ? io->dv : io->dk, swap ? io->dk : io->dv, err, sizeof err), 0, "%s", err);
        } else {
            cr_assert_eq(fd_cpu_standard_forward(p, FD_ACC_TC16, b.q, b.k, b.v, NULL, p->seqlen_q, io->o, lse, err,
                                                 sizeof err), 0, "%s", err);
            cr_assert_eq(fd_cpu_standard_backward(p, FD_ACC_TC16, b.q, b.k, b.v, b.dout, io->dq, io->dk, io->dv, err,
                                                  sizeof err), 0, "%s", err);
        }
    }
    b.nout = 2;
    if (!eager_grads)
        for (int t = 0; t < 3; t++) {
            float **g = t == 0 ? &b.out[1].dq : t == 1 ? &b.out[1].dk : &b.out[1].dv;
            free(*g);
            *g = NULL;
        }
    if (drop_dk) {
        free(b.out[0].dk);
        b.out[0].dk = NULL;
    }
    free(lse);
    cr_assert_eq(fd_bundle_write(&b, path, 0, 0, err, sizeof err), 0, "%s", err);
    fd_bundle_free(&b);
}

static void write_grad_bundle(const char *path, int swap, int drop_dk, int eager_grads)
{
    write_grad_bundle_of(BR_CASE, 0u, path, swap, drop_dk, eager_grads);
}

/* Imported gradients of a window + softcap + ALiBi call (the bundle carries the
 * modifiers): the replay's pass, the same without the softcap's derivative fail and
 * explain --tensors names the bug. */
#define MODS_CASE "b1h2k2-q128k128-d64-bf16-none-p0-normal-s35-w48_0-cap20-alibi-bwd"
Test(backward, imported_gradients_with_modifiers_are_judged)
{
    char dir[256], good[320], bad[320];
    tu_dir(dir, sizeof dir);
    snprintf(good, sizeof good, "%s/good", dir);
    snprintf(bad, sizeof bad, "%s/nodtanh", dir);
    write_grad_bundle_of(MODS_CASE, 0u, good, 0, 0, 1);
    write_grad_bundle_of(MODS_CASE, FD_BWD_BUG_NO_DTANH, bad, 0, 0, 1);
    char *c1[] = {FD_BINARY, "check", "--tensors", good, "--out", dir, "--jobs", "2", "--quiet", NULL};
    cr_expect_eq(tu_run(c1), 0, "correct gradients pass: %s%s", g_out, g_err);
    char *c2[] = {FD_BINARY, "check", "--tensors", bad, "--out", dir, "--jobs", "2", "--quiet", NULL};
    cr_expect_eq(tu_run(c2), 1, "gradients without the softcap's derivative fail: %s%s", g_out, g_err);
    char *e2[] = {FD_BINARY, "explain", "--tensors", bad, "--out", dir, NULL};
    cr_expect_eq(tu_run(e2), 1, "%s", g_err);
    cr_expect(strstr(g_out, "-> bwd_softcap_derivative_missing") != NULL, "explain --tensors names the bug:\n%s", g_out);
}

Test(backward, imported_gradients_are_judged_and_explained)
{
    char dir[256], good[320], bad[320], half[320];
    tu_dir(dir, sizeof dir);
    snprintf(good, sizeof good, "%s/good", dir);
    snprintf(bad, sizeof bad, "%s/swapped", dir);
    snprintf(half, sizeof half, "%s/half", dir);
    write_grad_bundle(good, 0, 0, 1);
    write_grad_bundle(bad, 1, 0, 1);
    char *c1[] = {FD_BINARY, "check", "--tensors", good, "--out", dir, "--jobs", "2", "--quiet", NULL};
    cr_expect_eq(tu_run(c1), 0, "correct gradients pass: %s%s", g_out, g_err);
    char rep[400];
    snprintf(rep, sizeof rep, "%s/report.json", dir);
    json_error_t je;
    json_t *r = json_load_file(rep, 0, &je);
    cr_assert_not_null(r);
    const json_t *g = json_object_get(json_object_get(json_object_get(json_array_get(json_object_get(r, "cases"), 0),
                                                                       "backends"), "flash"), "grad");
    cr_expect(json_is_true(json_object_get(g, "measured")), "the flash gradients were measured");
    cr_expect(json_is_number(json_object_get(json_object_get(g, "dq"), "fa_ratio")), "judged against eager's");
    json_decref(r);
    char *c2[] = {FD_BINARY, "check", "--tensors", bad, "--out", dir, "--jobs", "2", "--quiet", NULL};
    cr_expect_eq(tu_run(c2), 1, "swapped dK/dV fail: %s%s", g_out, g_err);
    char *e2[] = {FD_BINARY, "explain", "--tensors", bad, "--out", dir, NULL};
    cr_expect_eq(tu_run(e2), 1, "%s", g_err);
    cr_expect(strstr(g_out, "-> bwd_dk_dv_swapped") != NULL, "explain --tensors names the bug:\n%s", g_out);
    write_grad_bundle(half, 0, 1, 1);
    char *c3[] = {FD_BINARY, "check", "--tensors", half, "--out", dir, "--jobs", "2", "--quiet", NULL};
    cr_expect_eq(tu_run(c3), 2, "dq and dv without dk: bad input: %s", g_err);
    cr_expect(strstr(g_err, "dk_flash") != NULL, "the message names the missing tensor: %s", g_err);
}

/* Flash gradients beside a standard output without gradients: judged against standard
 * gradients computed here (origin "computed"), never left unjudged; gate agrees. */
Test(backward, flash_gradients_beside_a_standard_without_them_get_a_computed_baseline)
{
    char dir[256], path[320], rep[400];
    tu_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/eager_no_grads", dir);
    write_grad_bundle(path, 0, 0, 0);
    char *c1[] = {FD_BINARY, "check", "--tensors", path, "--out", dir, "--jobs", "2", "--quiet", NULL};
    cr_expect_eq(tu_run(c1), 0, "%s%s", g_out, g_err);
    snprintf(rep, sizeof rep, "%s/report.json", dir);
    json_error_t je;
    json_t *r = json_load_file(rep, 0, &je);
    cr_assert_not_null(r);
    const json_t *bes = json_object_get(json_array_get(json_object_get(r, "cases"), 0), "backends");
    const json_t *dq = json_object_get(json_object_get(json_object_get(bes, "flash"), "grad"), "dq");
    cr_expect_str_eq(json_string_value(json_object_get(dq, "fa_baseline")), "cpu-standard");
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(bes, "cpu-standard"), "origin")), "computed");
    cr_expect(json_is_false(json_object_get(json_object_get(json_object_get(bes, "eager"), "grad"), "measured")));
    json_decref(r);
    const char *pol = tmpfile_with("pol.json", "{\"schema\": \"flashdrift-policy/1\", \"gradients\": {\"fa_ratio\": 3}}");
    char *g1[] = {FD_BINARY, "gate", rep, "--policy", (char *)pol, "--no-baseline", NULL};
    cr_expect_eq(tu_run(g1), 0, "gate judges against the same computed baseline: %s%s", g_out, g_err);
}

/* diff: a gradient that grew between two runs is a regression, named dq.max_abs. */
Test(backward, diff_reports_gradient_moves)
{
    char out[256], oldp[320], newp[320];
    tu_dir(out, sizeof out);
    char *run[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/backward.json"), "--backend", "cpu", "--filter",
                   "q96k160-d32-fp16-causal_br", "--out", out, "--jobs", "2", "--quiet", NULL};
    cr_assert_eq(tu_run(run), 0, "%s", g_err);
    snprintf(oldp, sizeof oldp, "%s/report.json", out);
    snprintf(newp, sizeof newp, "%s/new.json", out);
    json_error_t je;
    json_t *r = json_load_file(oldp, 0, &je);
    cr_assert_not_null(r);
    json_t *dq = json_object_get(json_object_get(json_object_get(json_object_get(
                     json_array_get(json_object_get(r, "cases"), 0), "backends"), "cpu-flash"), "grad"), "dq");
    cr_assert_not_null(dq);
    json_object_set_new(dq, "max_abs", json_real(2.0 * json_number_value(json_object_get(dq, "max_abs"))));
    json_object_set_new(dq, "hash", json_string("0000000000000000"));
    cr_assert_eq(json_dump_file(r, newp, 0), 0);
    json_decref(r);
    char *d1[] = {FD_BINARY, "diff", oldp, newp, "--fail-on-regression", NULL};
    cr_expect_eq(tu_run(d1), 1, "%s%s", g_out, g_err);
    cr_expect(strstr(g_out, "dq.max_abs") != NULL, "%s", g_out);
    char *d2[] = {FD_BINARY, "diff", oldp, oldp, "--fail-on-regression", NULL};
    cr_expect_eq(tu_run(d2), 0, "%s%s", g_out, g_err);
    /* gate's baseline rule over a gradient's metric */
    const char *pol = tmpfile_with("pol_base.json", "{\"schema\": \"flashdrift-policy/1\", \"baseline\": "
                                                  "{\"metrics\": [\"max_abs\", \"dq.max_abs\"], \"factor\": 1.25}}");
    char *g1[] = {FD_BINARY, "gate", newp, "--policy", (char *)pol, "--baseline", oldp, NULL};
    cr_expect_eq(tu_run(g1), 1, "dq doubled against the baseline: %s%s", g_out, g_err);
    cr_expect(strstr(g_out, "dq.max_abs") || strstr(g_err, "dq.max_abs"), "%s%s", g_out, g_err);
    char *g2[] = {FD_BINARY, "gate", oldp, "--policy", (char *)pol, "--baseline", oldp, NULL};
    cr_expect_eq(tu_run(g2), 0, "%s%s", g_out, g_err);
    const char *bad = tmpfile_with("pol_base_bad.json", "{\"schema\": \"flashdrift-policy/1\", \"baseline\": "
                                                        "{\"metrics\": [\"dq.lse_max_abs\"], \"factor\": 1.25}}");
    char *g3[] = {FD_BINARY, "gate", oldp, "--policy", (char *)bad, "--baseline", oldp, NULL};
    cr_expect_eq(tu_run(g3), 2, "%s", g_err);
    cr_expect(strstr(g_err, "baseline.metrics[0]") != NULL, "%s", g_err);
}

/* The replay of an imported FA2 output takes FlashAttention-2's key tile for the bundle's
 * head dim and dropout (fd_fa2_fwd_key_tile): on the H200 bundles (PyTorch 2.11's flash
 * SDPA) it is then bitwise equal to FA2's output at d 64 without dropout (tile 128; with
 * the old fixed tile 64 it reproduced 11575 of 14464), and with dropout p 0.1 (tile 64) it
 * reproduces 14438 of 14464 (tile 128 would give 13289). */
Test(backward, pytorch_h200_fa2_key_tile)
{
    fd_problem p;
    memset(&p, 0, sizeof p);
    p.dtype = FD_DT_FP16;
    static const struct { int d; double drop; int bc; } t[] = {
        {8, 0.0, 128}, {32, 0.1, 128}, {40, 0.0, 128}, {64, 0.0, 128}, {64, 0.1, 64}, {72, 0.0, 64}, {96, 0.2, 64},
        {128, 0.0, 64}, {128, 0.1, 32}, {100, 0.1, 32}, {160, 0.0, 64}, {256, 0.1, 64}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        p.head_dim = t[i].d;
        p.dropout_p = t[i].drop;
        p.page_size = 0;
        cr_expect_eq(fd_fa2_fwd_key_tile(&p), t[i].bc, "d %d p %g", t[i].d, t[i].drop);
    }
    p.dtype = FD_DT_FP32;
    cr_expect_eq(fd_fa2_fwd_key_tile(&p), 0, "fp32: no FA2 kernel");
    p.dtype = FD_DT_BF16;
    p.page_size = 256;
    cr_expect_eq(fd_fa2_fwd_key_tile(&p), 0, "paged: FA2's split-KV kernel");
    char dir[300];
    snprintf(dir, sizeof dir, "%s/b1_h2_s113_d64_bf16_full_p0", tu_path(TU_DATA, "pytorch-h200-bwd"));
    char *e1[] = {FD_BINARY, "explain", "--tensors", dir, "--output", "flash", NULL};
    cr_expect_eq(tu_run(e1), 0, "%s", g_err);
    cr_expect(strstr(g_out, "(CPU replay, key tile 128, bitwise equal to the kernel's") != NULL, "%s", g_out);
    snprintf(dir, sizeof dir, "%s/b1_h2_s113_d64_fp16_causal_p0.1", tu_path(TU_DATA, "pytorch-h200-bwd"));
    char *e2[] = {FD_BINARY, "explain", "--tensors", dir, "--output", "flash", NULL};
    cr_expect_eq(tu_run(e2), 0, "%s", g_err);
    cr_expect(strstr(g_out, "(CPU replay, key tile 64; it reproduces 14438 of the kernel's") != NULL, "%s", g_out);
}

/* Real PyTorch gradients (H200, tests/data/pytorch-h200-bwd): judged PASS; the flash
 * output's dK and dV exchanged fails, and explain names the swap. */
Test(backward, pytorch_h200_gradients)
{
    char *c1[] = {FD_BINARY, "check", "--tensors", tu_path(TU_DATA, "pytorch-h200-bwd"), "--out", NULL, "--jobs", "2",
                  "--quiet", NULL};
    char out[256], bad[320], cmd[1200];
    tu_dir(out, sizeof out);
    c1[5] = out;
    cr_expect_eq(tu_run(c1), 0, "the PyTorch gradients pass: %s%s", g_out, g_err);
    snprintf(bad, sizeof bad, "%s/swapped", out);
    snprintf(cmd, sizeof cmd, "cp -r '%s/b1_h2_s113_d64_bf16_full_p0' '%s' && mv '%s/dk_flash.npy' '%s/t.npy' && "
                              "mv '%s/dv_flash.npy' '%s/dk_flash.npy' && mv '%s/t.npy' '%s/dv_flash.npy'",
             tu_path(TU_DATA, "pytorch-h200-bwd"), bad, bad, bad, bad, bad, bad, bad);
    cr_assert_eq(system(cmd), 0);
    char *c2[] = {FD_BINARY, "check", "--tensors", bad, "--out", out, "--jobs", "2", "--quiet", NULL};
    cr_expect_eq(tu_run(c2), 1, "%s%s", g_out, g_err);
    char *e2[] = {FD_BINARY, "explain", "--tensors", bad, "--output", "flash", NULL};
    cr_expect_eq(tu_run(e2), 1, "%s", g_err);
    cr_expect(strstr(g_out, "-> bwd_dk_dv_swapped") != NULL, "%s", g_out);
}
