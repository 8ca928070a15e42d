/* test_explain.c: attribution on the CPU replay: the budget adds up, the all-exact replay
 * is the exact result, and every injectable bug is named by the hypothesis it is. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "fd_case.h"
#include "fd_explain.h"

static fd_casefile g_cf;

static void load(void)
{
    char err[1024];
    cr_assert(fd_casefile_load(FD_SOURCE_DIR "/cases/smoke.json", &g_cf, err, sizeof err) == 0, "%s", err);
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

Test(explain, each_injected_bug_is_named, .init = load)
{
    static const struct { const char *bug, *hypo; } cases[] = {
        {"layout_bhsd", "layout_bhsd_as_bshd"},
        {"scale_missing", "scale_missing"},
        {"scale_doubled", "scale_doubled"},
        {"causal_swap", "causal_top_left"},
        {"mask_missing", "mask_missing"},
        {"dropout_seed", "dropout_seed_plus_one"},
        {"dropout_scale_missing", "dropout_scale_missing"},
        {"softmax_wrong_axis", "softmax_wrong_axis"},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        fd_explain_opts o = {"cpu-flash", cases[t].bug, 2};
        fd_explanation ex;
        char err[1024];
        cr_assert(fd_explain_case(&g_cf, find(DROP_CASE), &o, &ex, err, sizeof err) == 0, "%s", err);
        cr_assert(ex.gross, "bug %s must be far above the rounding budget: %s", cases[t].bug, ex.summary);
        cr_assert(ex.best >= 0 && !strcmp(ex.hypo[ex.best].name, cases[t].hypo),
                  "bug %s: best hypothesis %s, want %s", cases[t].bug,
                  ex.best >= 0 ? ex.hypo[ex.best].name : "none", cases[t].hypo);
        cr_assert(ex.hypo[ex.best].explains, "bug %s: %s should explain it (%.3g left, limit %.3g)",
                  cases[t].bug, cases[t].hypo, ex.hypo[ex.best].residual_max_abs, ex.hypo_limit);
        int others = 0;
        for (int i = 0; i < ex.nhypo; i++) others += i != ex.best && ex.hypo[i].explains;
        cr_assert(others == 0, "bug %s: only one hypothesis may explain it", cases[t].bug);
        fd_explanation_free(&ex);
    }
}
