/* fd_summary.c: summary.md rendered from report.json (a table a person reads in a CI log). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_out.h"
#include "fd_summary.h"

static const char *s_of(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void num(FILE *f, const json_t *j)
{
    if (json_is_number(j)) fprintf(f, "%.3g", json_number_value(j));
    else if (json_is_string(j)) fprintf(f, "%s", json_string_value(j));
    else fprintf(f, "-");
}

int fd_render_summary_md(const json_t *report, const char *path, char *err, size_t errlen)
{
    fd_doc doc;
    if (fd_doc_open(&doc, path, err, errlen)) return -1;
    FILE *f = doc.f;
    const json_t *cf = json_object_get(report, "case_file");
    const json_t *tot = json_object_get(report, "totals");
    const json_t *mach = json_object_get(report, "machine");
    char m1[1024], m2[1024], m3[1024], m4[4096];
    fprintf(f, "# flashdrift: %s\n\n", fd_md(s_of(cf, "name"), m1, sizeof m1));
    fprintf(f, "%s%s\n\n", json_is_true(json_object_get(report, "complete")) ? "" : "**INCOMPLETE RUN** · ",
            fd_md(s_of(cf, "path"), m4, sizeof m4));
    fprintf(f, "flashdrift %s (", fd_md(s_of(report, "version"), m1, sizeof m1));
    fprintf(f, "%s) · %s · ", fd_md(s_of(report, "git_commit"), m1, sizeof m1), fd_md(s_of(report, "created"), m2, sizeof m2));
    fprintf(f, "%s · backends %s\n\n", fd_md(s_of(mach, "cpu"), m1, sizeof m1), fd_md(s_of(report, "backends"), m4, sizeof m4));
    fprintf(f, "**%lld cases: %lld PASS, %lld MARGINAL, %lld FAIL, %lld UNDECIDED, %lld UNJUDGED**\n\n",
            json_integer_value(json_object_get(tot, "cases")),
            json_integer_value(json_object_get(tot, "pass")),
            json_integer_value(json_object_get(tot, "marginal")),
            json_integer_value(json_object_get(tot, "fail")),
            json_integer_value(json_object_get(tot, "undecided")),
            json_integer_value(json_object_get(tot, "unjudged")));
    fprintf(f, "A `-` is a metric that was not measured (no LSE or mask supplied): it is never judged. "
               "A backend marked *(computed)* is standard attention flashdrift computed as the baseline "
               "of FlashAttention's rule because none was supplied.\n\n");
    fprintf(f, "| case | verdict | backend | max abs | rel l2 | max ulp | p99 ulp | LSE err | flash/std | keep rate (expected) |\n");
    fprintf(f, "|---|---|---|---|---|---|---|---|---|---|\n");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const char *key;
        json_t *b;
        int first = 1;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            fprintf(f, "| %s | %s | %s%s | ", first ? fd_md(s_of(c, "id"), m1, sizeof m1) : "",
                    first ? fd_md(s_of(c, "verdict"), m2, sizeof m2) : "", fd_md(key, m3, sizeof m3),
                    !strcmp(s_of(b, "origin"), "computed") ? " *(computed)*" : "");
            if (!json_is_true(json_object_get(b, "ok"))) {
                fprintf(f, "error: %s | | | | | | |\n", fd_md(s_of(b, "error"), m4, sizeof m4));
                first = 0;
                continue;
            }
            num(f, json_object_get(b, "max_abs")); fprintf(f, " | ");
            num(f, json_object_get(b, "rel_l2")); fprintf(f, " | ");
            num(f, json_object_get(b, "max_ulp")); fprintf(f, " | ");
            num(f, json_object_get(b, "p99_ulp")); fprintf(f, " | ");
            num(f, json_object_get(b, "lse_max_abs")); fprintf(f, " | ");
            num(f, json_object_get(b, "fa_ratio")); fprintf(f, " | ");
            const json_t *d = json_object_get(c, "dropout_stats");
            if (first && d) {
                num(f, json_object_get(d, "keep_rate"));
                fprintf(f, " (");
                num(f, json_object_get(d, "keep_threshold"));
                fprintf(f, ")");
            }
            fprintf(f, " |\n");
            first = 0;
        }
    }
    /* Backward cases: one row per backend and gradient */
    int ngrad = 0;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const json_t *bw = json_object_get(c, "backward");
        if (!json_is_object(bw)) continue;
        if (!ngrad++)
            fprintf(f, "\n## Gradients\n\nBackward cases: dQ on the checked query rows, dK and dV on the checked "
                       "key rows, against the exact gradients. *flash/std* is FlashAttention's rule per gradient; "
                       "*spread* is the run-to-run difference over `--repeat` (elements, max ulps); *replay* "
                       "the share of a GPU kernel's values bit-identical to the CPU replay.\n\n"
                       "| case | backend | grad | max abs | rel l2 | max ulp | flash/std | spread | replay |\n"
                       "|---|---|---|---|---|---|---|---|---|\n");
        const char *key;
        json_t *b;
        int first = 1;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            const json_t *g = json_object_get(b, "grad");
            if (!json_is_object(g)) continue;
            if (!json_is_true(json_object_get(g, "measured"))) {
                fprintf(f, "| %s | %s | - | not measured: %s | | | | | |\n", first ? fd_md(s_of(c, "id"), m1, sizeof m1) : "",
                        fd_md(key, m3, sizeof m3), fd_md(s_of(g, "note"), m4, sizeof m4));
                first = 0;
                continue;
            }
            static const char *const gn[3] = {"dq", "dk", "dv"};
            for (int t = 0; t < 3; t++) {
                const json_t *e = json_object_get(g, gn[t]);
                fprintf(f, "| %s | %s | %s | ", first ? fd_md(s_of(c, "id"), m1, sizeof m1) : "",
                        fd_md(key, m3, sizeof m3), gn[t]);
                first = 0;
                num(f, json_object_get(e, "max_abs")); fprintf(f, " | ");
                num(f, json_object_get(e, "rel_l2")); fprintf(f, " | ");
                num(f, json_object_get(e, "max_ulp")); fprintf(f, " | ");
                num(f, json_object_get(e, "fa_ratio")); fprintf(f, " | ");
                const json_t *rp = json_object_get(e, "repeat");
                if (json_is_object(rp)) {
                    fprintf(f, "%lld, ", json_integer_value(json_object_get(rp, "elements_differing")));
                    num(f, json_object_get(rp, "max_ulp_spread"));
                } else {
                    fprintf(f, "-");
                }
                fprintf(f, " | ");
                const json_t *rl = json_object_get(e, "replay");
                if (json_is_object(rl)) fprintf(f, "%.4f", json_number_value(json_object_get(rl, "match_rate")));
                else fprintf(f, "-");
                fprintf(f, " |\n");
            }
        }
    }
    /* The bias stage (bias_seeds): biased outputs first, then the unbiased ones */
    int nbias = 0;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const char *key;
        json_t *b;
        json_object_foreach(json_object_get(c, "backends"), key, b) nbias += json_is_object(json_object_get(b, "bias"));
    }
    if (nbias) {
        fprintf(f, "\n## Systematic bias\n\nThe mean signed error (O - exact) per output column and per checked row "
                   "over the case's bias seeds, each a t-test of the per-seed means against 0 with a Bonferroni "
                   "threshold for a family-wise false-alarm rate *alpha* per case. *col t (c)*: the largest |t| over "
                   "columns and its column; *row t (r)*: the same over rows; *mean/rms*: mean signed error over the "
                   "rms error.\n");
        static const char *const heads[3] = {"Biased", "Unbiased", "Not measured"};
        for (int part = 0; part < 3; part++) {
            int n = 0;
            json_array_foreach(json_object_get(report, "cases"), i, c) {
                const char *key;
                json_t *b;
                json_object_foreach(json_object_get(c, "backends"), key, b) {
                    const json_t *z = json_object_get(b, "bias");
                    if (!json_is_object(z)) continue;
                    const int meas = json_is_true(json_object_get(z, "measured"));
                    const int biased = meas && !strcmp(s_of(z, "verdict"), "biased");
                    if ((part == 0 && !biased) || (part == 1 && (!meas || biased)) || (part == 2 && meas)) continue;
                    if (!n++) {
                        fprintf(f, "\n### %s\n\n", heads[part]);
                        if (part < 2)
                            fprintf(f, "| case | backend | seeds | col t (c) | row t (r) | threshold | mean/rms |\n"
                                       "|---|---|---|---|---|---|---|\n");
                    }
                    if (part == 2) {
                        fprintf(f, "- `%s` %s: %s\n", fd_md(s_of(c, "id"), m1, sizeof m1), fd_md(key, m3, sizeof m3),
                                fd_md(s_of(z, "note"), m4, sizeof m4));
                        continue;
                    }
                    fprintf(f, "| %s | %s | %lld | ", fd_md(s_of(c, "id"), m1, sizeof m1), fd_md(key, m3, sizeof m3),
                            json_integer_value(json_object_get(z, "seeds")));
                    num(f, json_object_get(z, "worst_column_z"));
                    fprintf(f, " (%lld) | ", json_integer_value(json_object_get(z, "worst_column")));
                    num(f, json_object_get(z, "worst_row_z"));
                    fprintf(f, " (%lld) | ", json_integer_value(json_object_get(z, "worst_row")));
                    num(f, json_object_get(z, "threshold"));
                    fprintf(f, " | ");
                    num(f, json_object_get(z, "mean_over_rms"));
                    fprintf(f, " |\n");
                }
            }
        }
    }
    /* The batch-invariance stage: per case and kernel, elements alone vs in the batch */
    int ninv = 0;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const char *key;
        json_t *b;
        json_object_foreach(json_object_get(c, "backends"), key, b) {
            const json_t *z = json_object_get(b, "batch_invariance");
            if (!json_is_object(z)) continue;
            if (!ninv++)
                fprintf(f, "\n## Batch invariance\n\nEach batch element run alone against the same rows of the "
                           "batched run, bit for bit.\n\n| case | backend | batches | checked | differ | max abs | max ulp |\n"
                           "|---|---|---|---|---|---|---|\n");
            fprintf(f, "| %s | %s | ", fd_md(s_of(c, "id"), m1, sizeof m1), fd_md(key, m3, sizeof m3));
            if (!json_is_true(json_object_get(z, "measured"))) {
                fprintf(f, "not measured: %s | | | | |\n", fd_md(s_of(z, "note"), m4, sizeof m4));
                continue;
            }
            fprintf(f, "%lld | %lld | %lld | ", json_integer_value(json_object_get(z, "batches")),
                    json_integer_value(json_object_get(z, "checked")), json_integer_value(json_object_get(z, "differ")));
            num(f, json_object_get(z, "max_abs"));
            fprintf(f, " | ");
            num(f, json_object_get(z, "max_ulp"));
            fprintf(f, " |\n");
        }
    }
    int nreason = 0;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const char *r = s_of(c, "reasons");
        if (*r) {
            if (!nreason++) fprintf(f, "\n## Why\n\n");
            fprintf(f, "- `%s` %s: %s\n", fd_md(s_of(c, "id"), m1, sizeof m1), fd_md(s_of(c, "verdict"), m2, sizeof m2),
                    fd_md(r, m4, sizeof m4));
        }
    }
    /* Explanations (--explain): the one-line verdict and the stage budget per explained case */
    int nex = 0;
    json_array_foreach(json_object_get(report, "cases"), i, c) {
        const json_t *ex = json_object_get(c, "explain");
        const char *xe = json_string_value(json_object_get(c, "explain_error"));
        if (!json_is_object(ex) && !xe) continue;
        if (!nex++) fprintf(f, "\n## Explanations\n\nWhere each explained case's error comes from "
                               "(`flashdrift explain`, docs/attribution.md): shares are projections on the "
                               "total error and add up to 100%% with the interaction.\n");
        fprintf(f, "\n### `%s` %s\n\n", fd_md(s_of(c, "id"), m1, sizeof m1), fd_md(s_of(c, "verdict"), m2, sizeof m2));
        if (!json_is_object(ex)) {
            fprintf(f, "explanation failed: %s\n", fd_md(xe, m4, sizeof m4));
            continue;
        }
        fprintf(f, "%s%s", fd_md(s_of(ex, "backend"), m1, sizeof m1), *s_of(ex, "inject") ? ", injected " : "");
        fprintf(f, "%s: %s\n\n", fd_md(s_of(ex, "inject"), m1, sizeof m1), fd_md(s_of(ex, "summary"), m4, sizeof m4));
        fprintf(f, "| stage | max abs | share |\n|---|---|---|\n");
        size_t k;
        json_t *st;
        json_array_foreach(json_object_get(ex, "stages"), k, st) {
            fprintf(f, "| %s | ", fd_md(s_of(st, "stage"), m1, sizeof m1));
            num(f, json_object_get(st, "max_abs"));
            const json_t *sh = json_object_get(st, "share");
            if (json_is_number(sh)) fprintf(f, " | %.1f%% |\n", 100.0 * json_number_value(sh));
            else {
                fprintf(f, " | ");
                num(f, sh);
                fprintf(f, " |\n");
            }
        }
    }
    return fd_doc_commit(&doc, err, errlen);
}
