/* fd_explain_report.c: see fd_explain_report.h. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fd_explain_report.h"
#include "fd_out.h"

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static double num(const json_t *o, const char *k) { return fd_json_number(json_object_get(o, k)); }

static long count(const json_t *o, const char *k) { return (long)json_integer_value(json_object_get(o, k)); }

void fd_explain_text(const json_t *ex, FILE *f)
{
    const json_t *replay = json_object_get(ex, "replay"), *inr = json_object_get(ex, "input_rounding");
    const json_t *fs = json_object_get(ex, "flash_vs_standard"), *cond = json_object_get(ex, "conditioning");
    const json_t *drop = json_object_get(ex, "dropout"), *interaction = NULL;
    const long nchecked = count(ex, "checked");
    const char *inject = str(ex, "inject"), *reasons = str(ex, "reasons");
    size_t i;
    const json_t *e;
    fprintf(f, "case %s\nbackend %s%s%s, %ld output elements checked against the MPFR reference\n\n",
            str(ex, "case"), str(ex, "backend"), *inject ? ", injected bug: " : "", inject, nchecked);
    fprintf(f, "JUDGED: %s%s%s\n", str(ex, "verdict"), *reasons ? ": " : "", reasons);
    fprintf(f, "VERDICT: %s\n\n", str(ex, "summary"));
    /* the replay's key tile (explanations written before it was recorded have none) */
    char tile[40] = "";
    if (json_object_get(replay, "key_tile")) snprintf(tile, sizeof tile, ", key tile %ld", count(replay, "key_tile"));
    if (json_is_true(json_object_get(replay, "bitwise_equal_to_kernel")))
        fprintf(f, "Error budget of the flash algorithm (CPU replay%s, bitwise equal to the kernel's\n"
                   "output here), each stage made exact alone:\n", tile);
    else
        fprintf(f, "Error budget of the flash algorithm (CPU replay%s; it reproduces %ld of the kernel's\n"
                   "%ld outputs bit for bit), each stage made exact alone:\n", tile, nchecked - count(replay, "mismatches"),
                nchecked);
    fprintf(f, "  %-42s %11s %11s %8s\n", "stage", "max abs", "rel l2", "share");
    /* the stages, then {stage: "interaction"} without a max abs (it is not a stage's part) */
    json_array_foreach(json_object_get(ex, "stages"), i, e) {
        if (!json_object_get(e, "max_abs")) {
            interaction = e;
            continue;
        }
        fprintf(f, "  %-42s %11.3g %11.3g %7.1f%%\n", str(e, "stage"), num(e, "max_abs"), num(e, "rel_l2"),
                100.0 * num(e, "share"));
    }
    fprintf(f, "  %-42s %11s %11.3g %7.1f%%\n", "interaction (not additive)", "", num(interaction, "rel_l2"),
            100.0 * num(interaction, "share"));
    fprintf(f, "  %-42s %11.3g %11.3g %7s\n", "total (replay vs exact)", num(replay, "err_max_abs"),
            num(replay, "err_rel_l2"), "100%");
    if (isnan(num(inr, "max_abs")))
        fprintf(f, "  (input rounding: unknown, the given inputs arrive already rounded to %s)\n\n", str(ex, "dtype"));
    else
        fprintf(f, "  (rounding the inputs to %s moves the exact output itself by up to %.3g, rel l2 %.3g;\n"
                   "   it is the same for every kernel fed these inputs and not counted above)\n\n",
                str(ex, "dtype"), num(inr, "max_abs"), num(inr, "rel_l2"));
    fprintf(f, "Accumulation order (same inputs; change of the output against the replay's order):\n");
    json_array_foreach(json_object_get(ex, "orders"), i, e)
        fprintf(f, "  %-24s %s max abs %.3g (its error vs exact %.3g)\n", str(e, "order"),
                json_is_true(json_object_get(e, "identical")) ? "identical    " : "changes by   ",
                num(e, "max_abs_vs_kernel_order"), num(e, "err_max_abs"));
    const double corr = num(fs, "error_correlation");
    fprintf(f, "  flash vs standard attention: differ by up to %.3g; flash's error %.3g, standard's %.3g,\n"
               "  error correlation %.2f: %s\n\n",
            num(fs, "diff_max_abs"), num(replay, "err_max_abs"), num(fs, "standard_err_max_abs"), corr,
            fabs(corr) < 0.5
                ? "independent rounding in two accumulation orders; the difference is expected and bounded by the sum of the two errors"
                : "the two errors are correlated (shared input rounding or the same order)");
    fprintf(f, "Conditioning: kappa = sum|p v| / |sum p v| per output, median %.3g, max %.3g;\n"
               "  PV accumulation error vs the classic bound gamma_n sum|p v|: worst at %.2f of the bound, %ld above it\n\n",
            num(cond, "kappa_median"), num(cond, "kappa_max"), num(cond, "pv_bound_worst_ratio"),
            count(cond, "pv_bound_violations"));
    if (drop)
        fprintf(f, "Dropout: kept %ld of %ld (%.5f); the byte threshold %d keeps with probability %.6f, not 1-p = %.6f\n"
                   "  (z = %.2f against the threshold's, %.2f against 1-p); kept values are scaled by 1/(1-p), so\n"
                   "  E[output] is off by %+.4f%% (up to %.3g absolute here). Mask: regenerated from (seed, offset) by\n"
                   "  kernels/common/fd_philox.h, the scheme every backend here applies.\n\n",
                count(drop, "kept"), count(drop, "total"), num(drop, "keep_rate"), (int)count(drop, "threshold"),
                num(drop, "keep_threshold"), num(drop, "keep_nominal"), num(drop, "z_threshold"),
                num(drop, "z_nominal"), 100.0 * num(drop, "scale_bias"), num(drop, "bias_max_abs"));
    if (json_is_true(json_object_get(ex, "gross"))) {
        fprintf(f, "Bug hypotheses (max abs error left when the output is compared with each bug's prediction;\n"
                   "  explains = within %.3g, the rounding limit or two ulps of the output's dtype):\n",
                num(ex, "hypothesis_limit"));
        json_array_foreach(json_object_get(ex, "hypotheses"), i, e)
            fprintf(f, "  %s %-26s %11.3g  %s\n", json_is_true(json_object_get(e, "best")) ? "->" : "  ",
                    str(e, "name"), num(e, "residual_max_abs"),
                    json_is_true(json_object_get(e, "explains")) ? "EXPLAINS" : "");
    } else {
        fprintf(f, "Bug hypotheses: not needed, the error is within the rounding budget.\n");
    }
    const json_t *gr = json_object_get(ex, "gradients");
    if (!json_is_object(gr)) return;
    static const char *const gn[3] = {"dq", "dk", "dv"};
    fprintf(f, "\nGradients (%s)\n", str(gr, "summary"));
    fprintf(f, "  %-6s %9s %11s %11s %11s %11s\n", "grad", "checked", "kernel err", "replay err", "standard err", "limit");
    for (int t = 0; t < 3; t++) {
        const json_t *x = json_object_get(gr, gn[t]);
        fprintf(f, "  %-6s %9ld %11.3g %11.3g %11.3g %11.3g", gn[t], count(x, "checked"), num(x, "kernel_err_max_abs"),
                num(x, "replay_err_max_abs"), num(x, "standard_err_max_abs"), num(x, "limit"));
        const json_t *ri = json_object_get(x, "replay_identical");
        if (ri) fprintf(f, "  (replay bit-identical: %ld of %ld)", count(ri, "identical"), count(ri, "elements"));
        fprintf(f, "\n");
    }
    fprintf(f, "Error budget of the flash backward (CPU replay), each stage made exact alone (max abs; share):\n");
    fprintf(f, "  %-40s %19s %19s %19s\n", "stage", "dq", "dk", "dv");
    json_array_foreach(json_object_get(gr, "stages"), i, e) {
        fprintf(f, "  %-40s", str(e, "stage"));
        for (int t = 0; t < 3; t++) {
            const json_t *x = json_object_get(e, gn[t]);
            fprintf(f, " %10.3g %6.1f%%", num(x, "max_abs"), 100.0 * num(x, "share"));
        }
        fprintf(f, "\n");
    }
    const json_t *dqo = json_object_get(gr, "dq_order");
    if (dqo)
        fprintf(f, "dQ accumulation order (the replay's partials added descending and shuffled, against ascending):\n"
                   "  %ld of %ld elements change, by up to %.3g ulps: the run-to-run spread atomicAdd can produce\n",
                count(dqo, "differing"), count(dqo, "elements"), num(dqo, "max_ulp"));
    if (json_is_true(json_object_get(gr, "gross"))) {
        fprintf(f, "Gradient bug hypotheses (largest error left over the hypothesis limit; explains = at most 1):\n");
        json_array_foreach(json_object_get(gr, "hypotheses"), i, e)
            fprintf(f, "  %s %-26s %11.3g  %s\n", json_is_true(json_object_get(e, "best")) ? "->" : "  ",
                    str(e, "name"), num(e, "residual_over_limit"),
                    json_is_true(json_object_get(e, "explains")) ? "EXPLAINS" : "");
    } else {
        fprintf(f, "Gradient bug hypotheses: not needed, every gradient is within its rounding budget.\n");
    }
}
