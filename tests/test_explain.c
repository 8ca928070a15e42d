/* test_explain.c: attribution on the CPU replay: the budget adds up, the all-exact replay
 * is the exact result, and every injectable bug is named by the hypothesis of its name
 * (one vocabulary; the names of 0.1.0 are aliases for one release). */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "fd_case.h"
#include "fd_explain.h"
#include "fd_test_util.h"

static fd_casefile g_cf;

static void load(void)
{
    char err[1024];
    cr_assert(fd_casefile_load(tu_path(TU_SOURCE, "cases/smoke.json"), &g_cf, err, sizeof err) == 0, "%s", err);
}

static const fd_case *find(const char *id)
{
    for (int i = 0; i < g_cf.ncases; i++)
        if (!strcmp(g_cf.cases[i].id, id)) return &g_cf.cases[i];
    cr_assert_fail("case %s not in smoke.json", id);
    return NULL;
}

#define DROP_CASE "b1h2k2-q113k203-d32-fp16-causal_br-p0.17-normal-s1"
#define BF_CASE "b1h2k2-q203k113-d59-bf16-causal_tl-p0-normal-s1"

Test(explain, budget_adds_up_and_all_exact_is_exact, .init = load)
{
    const char *ids[] = {DROP_CASE, BF_CASE};
    for (int t = 0; t < 2; t++) {
        fd_explain_opts o = {"cpu-flash", NULL, 2};
        fd_explanation ex;
        char err[1024];
        cr_assert(fd_explain_case(&g_cf, find(ids[t]), &o, &ex, err, sizeof err) == 0, "%s", err);
        cr_assert(!ex.gross, "%s: no bug injected: %s", ids[t], ex.summary);
        cr_assert(ex.replay_matches_kernel, "explaining cpu-flash: the replay is the kernel");
        cr_assert(ex.allexact_max_abs < 1e-12, "all stages exact must be the exact result: %g", ex.allexact_max_abs);
        double sum = ex.interaction_share;
        for (int i = 0; i < ex.nparts; i++) sum += ex.part[i].share;
        cr_assert(fabs(sum - 1.0) < 1e-6, "%s: shares add to %.9f", ids[t], sum);
        cr_assert(ex.pv_bound_violations == 0, "PV accumulation error within the classic bound");
        cr_assert(ex.nvar >= 8, "order variants measured");
        fd_explanation_free(&ex);
    }
}

/* The case each bug is played on: causal_bottom_right needs a causal_tl case with
 * seqlen_q != seqlen_k, every other bug shows on the causal_br dropout case. */
static const char *case_for(const char *bug)
{
    return !strcmp(bug, "causal_bottom_right") ? BF_CASE : DROP_CASE;
}

Test(explain, each_injected_bug_is_named_by_the_hypothesis_of_its_name, .init = load)
{
    int nbugs = 0;
    for (const char *const *bug = fd_explain_bugs; *bug; bug++) {
        if (fd_explain_bug_is_bwd(*bug)) continue; /* tests/test_backward.c */
        if (fd_explain_bug_is_mod(*bug)) continue; /* tests/test_features.c: cases with the feature */
        if (fd_explain_bug_is_fp8(*bug)) continue; /* tests/test_fp8.c: FP8 cases */
        nbugs++;
        fd_explain_opts o = {"cpu-flash", *bug, 2};
        fd_explanation ex;
        char err[1024];
        cr_assert(fd_explain_case(&g_cf, find(case_for(*bug)), &o, &ex, err, sizeof err) == 0, "%s", err);
        cr_assert(ex.gross, "bug %s must be far above the rounding budget: %s", *bug, ex.summary);
        cr_assert(ex.best >= 0 && !strcmp(ex.hypo[ex.best].name, *bug), "--inject %s: best hypothesis %s, want %s",
                  *bug, ex.best >= 0 ? ex.hypo[ex.best].name : "none", *bug);
        cr_assert(ex.hypo[ex.best].explains, "bug %s should be explained (%.3g left, limit %.3g)", *bug,
                  ex.hypo[ex.best].residual_max_abs, ex.hypo_limit);
        cr_assert_str_eq(ex.inject, *bug);
        int others = 0;
        for (int i = 0; i < ex.nhypo; i++) others += i != ex.best && ex.hypo[i].explains;
        cr_assert(others == 0, "bug %s: only one hypothesis may explain it", *bug);
        fd_explanation_free(&ex);
    }
    cr_assert_eq(nbugs, 9, "the injectable bugs (a new one needs a case here)");
}

/* The same through the command: `explain --inject NAME` puts hypothesis NAME first. */
Test(explain, cli_inject_name_is_the_hypothesis_name)
{
    for (const char *const *bug = fd_explain_bugs; *bug; bug++) {
        if (fd_explain_bug_is_bwd(*bug) || fd_explain_bug_is_mod(*bug) || fd_explain_bug_is_fp8(*bug)) continue;
        char *a[] = {FD_BINARY, "explain", tu_path(TU_SOURCE, "cases/smoke.json"), "--case", (char *)case_for(*bug),
                     "--inject", (char *)*bug, "--jobs", "2", NULL};
        cr_assert_eq(tu_run(a), 1, "--inject %s: a bug, exit 1: %s", *bug, g_err);
        char want[128];
        snprintf(want, sizeof want, "\n  -> %s ", *bug);
        cr_assert(strstr(g_out, want), "--inject %s: hypothesis %s first:\n%s", *bug, *bug, g_out);
        snprintf(want, sizeof want, "hypothesis %s (", *bug);
        cr_assert(strstr(g_out, want), "--inject %s: the verdict names it:\n%s", *bug, g_out);
    }
}

/* The names of 0.1.0 still run, as the bug they name now, with a note on stderr. */
Test(explain, old_inject_names_are_aliases_for_one_release, .init = load)
{
    static const struct { const char *old, *id, *now; } alias[] = {
        {"layout_bhsd", DROP_CASE, "layout_bhsd_as_bshd"},
        {"dropout_seed", DROP_CASE, "dropout_seed_plus_one"},
        {"causal_swap", DROP_CASE, "causal_top_left"},
        {"causal_swap", BF_CASE, "causal_bottom_right"},
    };
    for (size_t t = 0; t < sizeof alias / sizeof alias[0]; t++) {
        fd_explain_opts o = {"cpu-flash", alias[t].old, 2};
        fd_explanation ex;
        char err[1024];
        cr_assert(fd_explain_case(&g_cf, find(alias[t].id), &o, &ex, err, sizeof err) == 0, "%s", err);
        cr_assert_str_eq(ex.inject, alias[t].now, "%s on %s is recorded as %s", alias[t].old, alias[t].id, alias[t].now);
        cr_assert(ex.best >= 0 && !strcmp(ex.hypo[ex.best].name, alias[t].now), "%s: best hypothesis %s, want %s",
                  alias[t].old, ex.best >= 0 ? ex.hypo[ex.best].name : "none", alias[t].now);
        fd_explanation_free(&ex);
    }
    char *a[] = {FD_BINARY, "explain", tu_path(TU_SOURCE, "cases/smoke.json"), "--case", DROP_CASE, "--inject",
                 "layout_bhsd", "--jobs", "2", NULL};
    cr_assert_eq(tu_run(a), 1, "%s", g_err);
    cr_assert(strstr(g_err, "note: --inject layout_bhsd is now layout_bhsd_as_bshd"), "%s", g_err);
    char *b[] = {FD_BINARY, "explain", tu_path(TU_SOURCE, "cases/smoke.json"), "--case", DROP_CASE, "--inject",
                 "layout_bshd", "--jobs", "2", NULL};
    cr_assert_eq(tu_run(b), 2, "an unknown bug is a usage error");
    cr_assert(strstr(g_err, "unknown bug \"layout_bshd\"") && strstr(g_err, "layout_bhsd_as_bshd"), "%s", g_err);
}

#include <stdlib.h>
#include <unistd.h>

#include "fd_cpu_attn.h"
#include "fd_import.h"
#include "fd_inputs.h"

/* A bundle as a user would dump it: the inputs and a kernel output whose layout was
 * scrambled ((b,s,h,d) read as (b,h,s,d)); explain on the loaded tensors names the bug. */
Test(explain, given_tensors_from_a_bundle, .init = load)
{
    const fd_case *c = find("b1h2k2-q113k203-d32-fp16-causal_br-p0-normal-s1");
    const fd_problem *p = &c->prob;
    char err[1024];
    fd_bundle w;
    memset(&w, 0, sizeof w);
    w.prob = *p;
    cr_assert(fd_inputs_make(c, &w.q, &w.k, &w.v, err, sizeof err) == 0, "%s", err);
    const size_t n = fd_q_numel(p);
    float *o = malloc(n * sizeof(float)), *lse = malloc(fd_lse_numel(p) * sizeof(float));
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cr_assert(fd_cpu_flash_forward(p, &cfg, w.q, w.k, w.v, NULL, 0, o, lse, err, sizeof err) == 0, "%s", err);
    w.nout = 1;
    fd_import_output *io = &w.out[0];
    snprintf(io->name, sizeof io->name, "flash");
    io->be.name = io->name;
    io->be.family = "import";
    io->be.role = FD_ROLE_FLASH;
    io->o = malloc(n * sizeof(float));
    const size_t D = (size_t)p->head_dim, S = (size_t)p->seqlen_q, H = (size_t)p->heads;
    for (size_t f = 0; f < n; f++) { /* buffer holds (b,h,s,d) data, read as (b,s,h,d) */
        size_t d = f % D, s = (f / D) % S, h = (f / (D * S)) % H, b = f / (D * S * H);
        io->o[f] = o[fd_q_index(p, (int)b, (int)s, (int)h, (int)d)];
    }
    char path[64];
    tu_dir(path, sizeof path);
    char file[128];
    snprintf(file, sizeof file, "%s/scrambled.safetensors", path);
    cr_assert(fd_bundle_write(&w, file, 1, 0, err, sizeof err) == 0, "%s", err);
    fd_bundle r;
    cr_assert(fd_bundle_load(file, &r, err, sizeof err) == 0, "%s", err);
    fd_explain_src src = {"scrambled", &r.prob, NULL, r.q, r.k, r.v, r.out[0].o, NULL, r.out[0].name, NULL, NULL, NULL, NULL, NULL, 0};
    fd_explain_opts opt = {NULL, NULL, 2};
    fd_explanation ex;
    cr_assert(fd_explain_run(&g_cf, &src, &opt, &ex, err, sizeof err) == 0, "%s", err);
    cr_assert(ex.gross, "%s", ex.summary);
    cr_assert(ex.best >= 0 && !strcmp(ex.hypo[ex.best].name, "layout_bhsd_as_bshd") && ex.hypo[ex.best].explains,
              "best hypothesis %s", ex.best >= 0 ? ex.hypo[ex.best].name : "none");
    cr_assert(isnan(ex.input_rounding_max_abs), "given tensors arrive rounded: no input-rounding part");
    fd_explanation_free(&ex);
    /* the unscrambled output is rounding only, and the replay reproduces it bit for bit */
    src.kernel_o = o;
    cr_assert(fd_explain_run(&g_cf, &src, &opt, &ex, err, sizeof err) == 0, "%s", err);
    cr_assert(!ex.gross && ex.replay_matches_kernel, "%s", ex.summary);
    fd_explanation_free(&ex);
    fd_bundle_free(&r);
    free(o); free(lse); free(io->o); free(w.q); free(w.k); free(w.v);
    unlink(file);
    rmdir(path);
}

/* explain REPORT prints the explanations a run stored (run --explain) as they were made,
 * without the case file (a GPU run's report read where there is no GPU); --recompute makes
 * them again from the case file. */
Test(explain, report_prints_stored_explanations)
{
    char d[64], out[128], rp[160], tp[160], eo[160];
    tu_dir(d, sizeof d);
    snprintf(out, sizeof out, "%s/run", d);
    char *a[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/smoke.json"), "--backend", "cpu", "--out", out,
                 "--filter", "b1h2k1-q64k64-d32-fp16-none-p0-normal", "--explain", "all", "--quiet", NULL};
    cr_assert_eq(tu_run(a), 0, "%s", g_err);
    snprintf(rp, sizeof rp, "%s/report.json", out);
    json_t *r = tu_load_json(rp);
    cr_assert_not_null(r);
    json_t *c = json_array_get(json_object_get(r, "cases"), 0);
    cr_assert(json_is_object(json_object_get(c, "explain")), "run --explain all stores the explanation");
    json_object_set_new(c, "verdict", json_string("FAIL"));
    json_object_set_new(json_object_get(r, "case_file"), "path", json_string("/nonexistent/smoke.json"));
    snprintf(tp, sizeof tp, "%s/tampered.json", d);
    tu_save(r, tp);
    json_decref(r);
    snprintf(eo, sizeof eo, "%s/e", d);
    char *b[] = {FD_BINARY, "explain", tp, "--out", eo, NULL};
    cr_expect_eq(tu_run(b), 1, "a FAIL case explained: exit 1; %s", g_err);
    cr_expect(strstr(g_out, "JUDGED: PASS") && strstr(g_out, "Error budget"), "the stored explanation printed: %s", g_out);
    char ep[200];
    snprintf(ep, sizeof ep, "%s/explain.json", eo);
    json_t *e = tu_load_json(ep);
    cr_expect(e && json_array_size(json_object_get(e, "explain")) == 1, "explain.json holds it");
    json_decref(e);
    char *x[] = {FD_BINARY, "explain", tp, "--recompute", NULL};
    cr_expect_eq(tu_run(x), 2, "--recompute needs the case file");
    cr_expect(strstr(g_err, "/nonexistent/smoke.json") != NULL, "%s", g_err);
}
