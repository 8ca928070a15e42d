/* fd_explain_report.c: an explanation as plain text (a person reads it in a minute),
 * as a JSON section (report.json's "explain") and as Markdown. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fd_explain.h"
#include "fd_out.h"

void fd_explain_text(const fd_explanation *ex, FILE *f)
{
    fprintf(f, "case %s\nbackend %s%s%s, %ld output elements checked against the MPFR reference\n\n",
            ex->case_id, ex->backend, ex->inject[0] ? ", injected bug: " : "", ex->inject, ex->nchecked);
    fprintf(f, "JUDGED: %s%s%s\n", fd_verdict_name(ex->verdict), ex->reasons[0] ? ": " : "", ex->reasons);
    fprintf(f, "VERDICT: %s\n\n", ex->summary);
    if (ex->replay_matches_kernel)
        fprintf(f, "Error budget of the flash algorithm (CPU replay, bitwise equal to the kernel's output here),\n"
                   "each stage made exact alone:\n");
    else
        fprintf(f, "Error budget of the flash algorithm (CPU replay; it reproduces %ld of the kernel's %ld outputs\n"
                   "bit for bit), each stage made exact alone:\n", ex->nchecked - ex->replay_mismatches, ex->nchecked);
    fprintf(f, "  %-42s %11s %11s %8s\n", "stage", "max abs", "rel l2", "share");
    for (int i = 0; i < ex->nparts; i++)
        fprintf(f, "  %-42s %11.3g %11.3g %7.1f%%\n", ex->part[i].name, ex->part[i].max_abs,
                ex->part[i].l2, 100.0 * ex->part[i].share);
    fprintf(f, "  %-42s %11s %11.3g %7.1f%%\n", "interaction (not additive)", "", ex->interaction_l2,
            100.0 * ex->interaction_share);
    fprintf(f, "  %-42s %11.3g %11.3g %7s\n", "total (replay vs exact)", ex->r_err_max_abs, ex->r_err_l2, "100%");
    if (isnan(ex->input_rounding_max_abs))
        fprintf(f, "  (input rounding: unknown, the given inputs arrive already rounded to %s)\n\n", fd_dtype_name(ex->dtype));
    else
        fprintf(f, "  (rounding the inputs to %s moves the exact output itself by up to %.3g, rel l2 %.3g;\n"
                   "   it is the same for every kernel fed these inputs and not counted above)\n\n",
                fd_dtype_name(ex->dtype), ex->input_rounding_max_abs, ex->input_rounding_l2);
    fprintf(f, "Accumulation order (same inputs; change of the output against the replay's order):\n");
    for (int i = 0; i < ex->nvar; i++)
        fprintf(f, "  %-24s %s max abs %.3g (its error vs exact %.3g)\n", ex->var[i].name,
                ex->var[i].identical ? "identical    " : "changes by   ", ex->var[i].max_abs_vs_base,
                ex->var[i].err_max_abs);
    fprintf(f, "  flash vs standard attention: differ by up to %.3g; flash's error %.3g, standard's %.3g,\n"
               "  error correlation %.2f: %s\n\n",
            ex->flash_std_diff_max_abs, ex->r_err_max_abs, ex->std_err_max_abs, ex->flash_std_corr,
            fabs(ex->flash_std_corr) < 0.5
                ? "independent rounding in two accumulation orders; the difference is expected and bounded by the sum of the two errors"
                : "the two errors are correlated (shared input rounding or the same order)");
    fprintf(f, "Conditioning: kappa = sum|p v| / |sum p v| per output, median %.3g, max %.3g;\n"
               "  PV accumulation error vs the classic bound gamma_n sum|p v|: worst at %.2f of the bound, %ld above it\n\n",
            ex->kappa_median, ex->kappa_max, ex->pv_bound_worst_ratio, ex->pv_bound_violations);
    if (ex->drop.active)
        fprintf(f, "Dropout: kept %ld of %ld (%.5f); the byte threshold %d keeps with probability %.6f, not 1-p = %.6f\n"
                   "  (z = %.2f against the threshold's, %.2f against 1-p); kept values are scaled by 1/(1-p), so\n"
                   "  E[output] is off by %+.4f%% (up to %.3g absolute here). Mask: regenerated from (seed, offset) by\n"
                   "  kernels/common/fd_philox.h, the scheme every backend here applies.\n\n",
                ex->drop.kept, ex->drop.total, ex->drop.keep_rate, ex->drop.threshold, ex->drop.keep_threshold,
                ex->drop.keep_nominal, ex->drop.z_threshold, ex->drop.z_nominal, 100.0 * ex->drop.scale_bias,
                ex->drop_bias_max_abs);
    if (ex->gross) {
        fprintf(f, "Bug hypotheses (max abs error left when the output is compared with each bug's prediction;\n"
                   "  explains = within %.3g, the rounding limit or two ulps of the output's dtype):\n", ex->hypo_limit);
        for (int i = 0; i < ex->nhypo; i++)
            fprintf(f, "  %s %-26s %11.3g  %s\n", i == ex->best ? "->" : "  ", ex->hypo[i].name,
                    ex->hypo[i].residual_max_abs, ex->hypo[i].explains ? "EXPLAINS" : "");
    } else {
        fprintf(f, "Bug hypotheses: not needed, the error is within the rounding budget.\n");
    }
}

json_t *fd_explain_json(const fd_explanation *ex)
{
    json_t *parts = json_array(), *vars = json_array(), *hyps = json_array();
    for (int i = 0; i < ex->nparts; i++)
        json_array_append_new(parts, json_pack("{s:s, s:o, s:o, s:o}", "stage", ex->part[i].name,
                                               "max_abs", fd_json_num(ex->part[i].max_abs), "rel_l2",
                                               fd_json_num(ex->part[i].l2), "share", fd_json_num(ex->part[i].share)));
    json_array_append_new(parts, json_pack("{s:s, s:o, s:o}", "stage", "interaction", "rel_l2",
                                           fd_json_num(ex->interaction_l2), "share", fd_json_num(ex->interaction_share)));
    for (int i = 0; i < ex->nvar; i++)
        json_array_append_new(vars, json_pack("{s:s, s:o, s:o, s:o, s:b}", "order", ex->var[i].name,
                                              "max_abs_vs_kernel_order", fd_json_num(ex->var[i].max_abs_vs_base),
                                              "rel_l2_vs_kernel_order", fd_json_num(ex->var[i].l2_vs_base),
                                              "err_max_abs", fd_json_num(ex->var[i].err_max_abs),
                                              "identical", ex->var[i].identical));
    for (int i = 0; i < ex->nhypo; i++)
        json_array_append_new(hyps, json_pack("{s:s, s:s, s:o, s:b, s:b}", "name", ex->hypo[i].name,
                                              "what", ex->hypo[i].what, "residual_max_abs",
                                              fd_json_num(ex->hypo[i].residual_max_abs), "explains",
                                              ex->hypo[i].explains, "best", i == ex->best));
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:I, s:s, s:b, s:{s:o, s:o}, s:o, s:o, s:{s:o, s:o, s:o, s:b, s:I}, "
        "s:o, s:{s:o, s:o}, s:o, s:{s:o, s:o, s:o, s:o, s:o}, s:{s:o, s:o, s:o, s:I}, s:o}",
        "case", ex->case_id, "backend", ex->backend, "inject", ex->inject, "checked", (json_int_t)ex->nchecked,
        "summary", ex->summary, "gross", ex->gross, "kernel_error", "max_abs", fd_json_num(ex->k_err_max_abs),
        "rel_l2", fd_json_num(ex->k_err_l2), "rounding_budget", fd_json_num(ex->budget), "limit",
        fd_json_num(ex->limit), "replay", "err_max_abs", fd_json_num(ex->r_err_max_abs), "err_rel_l2",
        fd_json_num(ex->r_err_l2), "all_exact_err_max_abs", fd_json_num(ex->allexact_max_abs),
        "bitwise_equal_to_kernel", ex->replay_matches_kernel, "mismatches", (json_int_t)ex->replay_mismatches,
        "stages", parts, "input_rounding", "max_abs", fd_json_num(ex->input_rounding_max_abs), "rel_l2",
        fd_json_num(ex->input_rounding_l2), "orders", vars, "flash_vs_standard", "diff_max_abs",
        fd_json_num(ex->flash_std_diff_max_abs), "diff_l2", fd_json_num(ex->flash_std_diff_l2),
        "flash_err_l2", fd_json_num(ex->flash_err_l2_abs), "standard_err_l2", fd_json_num(ex->std_err_l2_abs),
        "error_correlation", fd_json_num(ex->flash_std_corr), "conditioning", "kappa_median",
        fd_json_num(ex->kappa_median), "kappa_max", fd_json_num(ex->kappa_max), "pv_bound_worst_ratio",
        fd_json_num(ex->pv_bound_worst_ratio), "pv_bound_violations", (json_int_t)ex->pv_bound_violations,
        "hypotheses", hyps);
    json_object_set_new(j, "verdict", json_string(fd_verdict_name(ex->verdict)));
    json_object_set_new(j, "reasons", json_string(ex->reasons));
    if (ex->drop.active)
        json_object_set_new(j, "dropout", json_pack("{s:o, s:o, s:o, s:o}", "keep_rate", fd_json_num(ex->drop.keep_rate),
                                                    "keep_threshold", fd_json_num(ex->drop.keep_threshold),
                                                    "scale_bias", fd_json_num(ex->drop.scale_bias),
                                                    "bias_max_abs", fd_json_num(ex->drop_bias_max_abs)));
    return j;
}
