/* fd_gate_out.c: the gate's JUnit XML and Markdown summary; see fd_gate.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_gate.h"
#include "fd_json.h"
#include "fd_out.h"

/* XML attribute/text escaping; characters XML 1.0 forbids become '?'. */
static void xml_esc(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        const unsigned char ch = (unsigned char)*s;
        switch (ch) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        case '\n': fputs("&#10;", f); break;
        case '\t': fputs("&#9;", f); break;
        case '\r': fputs("&#13;", f); break;
        default: fputc(ch < 0x20 ? '?' : ch, f);
        }
    }
}

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* A metric as the outputs show it: "-" when it was not measured (null, or NaN: the gate
 * never takes a NaN for a number it compared). */
static void num(char *buf, size_t len, double x)
{
    if (isnan(x)) snprintf(buf, len, "-");
    else snprintf(buf, len, "%.4g", x);
}

/* Items of case ci that concern backend be (its own and the case-level ones). */
static int items_for(const fd_gate_result *g, int ci, const char *be, fd_verdict level, char *buf, size_t len,
                     const char **first_metric)
{
    int n = 0;
    buf[0] = 0;
    for (int k = 0; k < g->nitems; k++) {
        const fd_gate_item *it = &g->items[k];
        if (it->case_idx != ci || it->level != level || (*it->backend && strcmp(it->backend, be))) continue;
        if (n++) strncat(buf, "; ", len - strlen(buf) - 1);
        else if (first_metric) *first_metric = it->metric;
        strncat(buf, it->text, len - strlen(buf) - 1);
    }
    return n;
}

int fd_gate_junit(const fd_gate_result *g, const fd_gate_policy *p, const char *path, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    const json_t *r = g->report, *cases = json_object_get(r, "cases");
    const char *cfname = str(json_object_get(r, "case_file"), "name");
    const char *host = str(json_object_get(r, "machine"), "hostname");
    int tests = 0, failures = 0, skipped = 0;
    double total_time = 0;
    /* Counts first: the testsuites element carries them. */
    for (int t = 0; t < g->nbackends; t++)
        for (int ci = 0; ci < g->ncases; ci++) {
            const json_t *b = json_object_get(json_object_get(json_array_get(cases, (size_t)ci), "backends"), g->backends[t]);
            if (!b) continue;
            tests++;
            if (g->verdict[ci] == FD_FAIL) failures++;
            else if (g->verdict[ci] == FD_UNDECIDED) skipped++;
            const double ms = fd_json_number(json_object_get(b, "ms"));
            if (!isnan(ms)) total_time += ms / 1e3;
        }
    /* Missing baseline cases are testcases of their own suite: failures when the policy
     * fails on them, skipped when it ignores them. */
    tests += g->baseline_missing;
    failures += g->nmissing_fail;
    skipped += g->baseline_missing - g->nmissing_fail;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"flashdrift gate: ");
    xml_esc(f, cfname);
    if (g->partial) fprintf(f, " (partial report: interrupted run)");
    fprintf(f, "\" tests=\"%d\" failures=\"%d\" errors=\"0\" skipped=\"%d\" time=\"%.3f\">\n", tests, failures,
            skipped, total_time);
    for (int t = 0; t < g->nbackends; t++) {
        const char *be = g->backends[t];
        int nt = 0, nf = 0, ns = 0;
        double tt = 0;
        for (int ci = 0; ci < g->ncases; ci++) {
            const json_t *b = json_object_get(json_object_get(json_array_get(cases, (size_t)ci), "backends"), be);
            if (!b) continue;
            nt++;
            nf += g->verdict[ci] == FD_FAIL;
            ns += g->verdict[ci] == FD_UNDECIDED;
            const double ms = fd_json_number(json_object_get(b, "ms"));
            if (!isnan(ms)) tt += ms / 1e3;
        }
        fprintf(f, "  <testsuite name=\"");
        xml_esc(f, be);
        fprintf(f, "\" tests=\"%d\" failures=\"%d\" errors=\"0\" skipped=\"%d\" time=\"%.3f\" timestamp=\"", nt, nf, ns, tt);
        xml_esc(f, str(r, "created"));
        fprintf(f, "\" hostname=\"");
        xml_esc(f, host);
        fprintf(f, "\">\n    <properties>\n");
        const char *props[][2] = {{"case_file", str(json_object_get(r, "case_file"), "path")},
                                  {"git_commit", str(r, "git_commit")},
                                  {"flashdrift_version", str(r, "version")},
                                  {"policy", p->path},
                                  {"cpu", str(json_object_get(r, "machine"), "cpu")},
                                  {"report", g->partial ? "partial: an interrupted run, gated with --allow-partial"
                                                        : "complete"},
                                  {"baseline_rule", !p->base_on ? "none in the policy"
                                                    : g->baseline_skipped ? "not checked (--no-baseline)" : "checked"}};
        for (size_t k = 0; k < sizeof props / sizeof props[0]; k++) {
            fprintf(f, "      <property name=\"%s\" value=\"", props[k][0]);
            xml_esc(f, props[k][1]);
            fprintf(f, "\"/>\n");
        }
        fprintf(f, "    </properties>\n");
        for (int ci = 0; ci < g->ncases; ci++) {
            const json_t *c = json_array_get(cases, (size_t)ci);
            const json_t *b = json_object_get(json_object_get(c, "backends"), be);
            if (!b) continue;
            const double ms = fd_json_number(json_object_get(b, "ms"));
            fprintf(f, "    <testcase name=\"");
            xml_esc(f, str(c, "id"));
            fprintf(f, "\" classname=\"flashdrift.");
            xml_esc(f, cfname);
            fputc('.', f);
            xml_esc(f, be);
            fprintf(f, "\" time=\"%.4f\">\n", !isnan(ms) ? ms / 1e3 : 0.0);
            char msg[4096];
            const char *metric = "policy";
            if (g->verdict[ci] == FD_FAIL) {
                if (!items_for(g, ci, be, FD_FAIL, msg, sizeof msg, &metric)) {
                    /* the case failed on another backend or through fail_on_marginal */
                    if (!items_for(g, ci, be, FD_MARGINAL, msg, sizeof msg, &metric))
                        snprintf(msg, sizeof msg, "case failed on another backend (see its testsuite)");
                }
                fprintf(f, "      <failure type=\"");
                xml_esc(f, metric);
                fprintf(f, "\" message=\"");
                xml_esc(f, msg);
                fprintf(f, "\">");
                xml_esc(f, msg);
                fprintf(f, "</failure>\n");
            } else if (g->verdict[ci] == FD_UNDECIDED) {
                items_for(g, ci, be, FD_UNDECIDED, msg, sizeof msg, NULL);
                fprintf(f, "      <skipped message=\"");
                xml_esc(f, msg);
                fprintf(f, "\"/>\n");
            }
            /* The gate's verdict and items, then the numbers, for whoever opens the test case. */
            char out[6144];
            snprintf(out, sizeof out, "%s gate %s", be, fd_verdict_name(g->verdict[ci]));
            for (int lv = 0; lv < 4; lv++) {
                static const fd_verdict order[] = {FD_FAIL, FD_UNDECIDED, FD_MARGINAL, FD_PASS};
                if (order[lv] == FD_PASS || !items_for(g, ci, be, order[lv], msg, sizeof msg, NULL)) continue;
                snprintf(out + strlen(out), sizeof out - strlen(out), "\n%s: %s", fd_verdict_name(order[lv]), msg);
            }
            if (json_is_true(json_object_get(b, "ok"))) {
                char m[6][32];
                for (int k = 0; k < 6; k++) num(m[k], sizeof m[k], fd_json_number(json_object_get(b, fd_gate_metric_names[k])));
                snprintf(out + strlen(out), sizeof out - strlen(out),
                         "\nmax_abs %s, max_rel %s, rel_l2 %s, max_ulp %s, p99_ulp %s, lse_max_abs %s, output_hash %s",
                         m[0], m[1], m[2], m[3], m[4], m[5], str(b, "output_hash"));
            } else {
                snprintf(out + strlen(out), sizeof out - strlen(out), "\nerror: %s", str(b, "error"));
            }
            fprintf(f, "      <system-out>");
            xml_esc(f, out);
            fprintf(f, "</system-out>\n    </testcase>\n");
        }
        fprintf(f, "  </testsuite>\n");
    }
    if (g->baseline_missing) {
        fprintf(f, "  <testsuite name=\"baseline\" tests=\"%d\" failures=\"%d\" errors=\"0\" skipped=\"%d\" time=\"0\">\n",
                g->baseline_missing, g->nmissing_fail, g->baseline_missing - g->nmissing_fail);
        for (int k = 0; k < g->nitems; k++) {
            const fd_gate_item *it = &g->items[k];
            if (it->case_idx >= 0) continue;
            fprintf(f, "    <testcase name=\"");
            xml_esc(f, it->text);
            fprintf(f, "\" classname=\"flashdrift.baseline\" time=\"0\">");
            fprintf(f, it->level == FD_FAIL ? "<failure type=\"missing\" message=\"" : "<skipped message=\"");
            xml_esc(f, it->text);
            if (it->level != FD_FAIL) fprintf(f, " (the policy ignores missing cases)");
            fprintf(f, "\"/>");
            fprintf(f, "</testcase>\n");
        }
        fprintf(f, "  </testsuite>\n");
    }
    fprintf(f, "</testsuites>\n");
    fclose(f);
    int rc = fd_write_text_atomic(path, buf, len, err, errlen);
    free(buf);
    return rc;
}

/* Markdown table cells must not contain '|' or newlines. */
static void md_cell(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '|') fputs("\\|", f);
        else if (*s == '\n') fputc(' ', f);
        else fputc(*s, f);
    }
}

int fd_gate_markdown(const fd_gate_result *g, const fd_gate_policy *p, const char *baseline_path,
                     const char *path, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    const json_t *r = g->report, *cases = json_object_get(r, "cases");
    fprintf(f, "## flashdrift gate: %s %s\n\n", g->failed ? "❌ FAIL" : "✅ PASS",
            str(json_object_get(r, "case_file"), "name"));
    char totals[256];
    fd_gate_totals(g, totals, sizeof totals);
    if (g->partial)
        fprintf(f, "> **Partial report**: an interrupted run (%d cases), gated with `--allow-partial`; the cases "
                   "that did not run are not judged.\n\n", g->ncases);
    if (p->base_on && g->baseline_skipped)
        fprintf(f, "> **Baseline rule not checked** (`--no-baseline`): no case was compared with a baseline.\n\n");
    fprintf(f, "**%s** · backends gated: ", totals);
    for (int t = 0; t < g->nbackends; t++) fprintf(f, "%s`%s`", t ? ", " : "", g->backends[t]);
    fprintf(f, "%s\n\n", g->nbackends ? "" : "none");
    fprintf(f, "policy `%s`", p->path);
    if (baseline_path) fprintf(f, " · baseline `%s`", baseline_path);
    fprintf(f, " · flashdrift %s (%s) · %s\n\n", str(r, "version"), str(r, "git_commit"), str(r, "created"));
    int shown = 0, total = 0;
    for (int k = 0; k < g->nitems; k++) total += g->items[k].case_idx >= 0;
    if (total) {
        fprintf(f, "| case | verdict | backend | rule | value | limit | detail |\n|---|---|---|---|---|---|---|\n");
        /* failures first, then the rest */
        for (int pass = 0; pass < 2; pass++)
            for (int k = 0; k < g->nitems && shown < 60; k++) {
                const fd_gate_item *it = &g->items[k];
                if (it->case_idx < 0 || (pass == 0) != (it->level == FD_FAIL)) continue;
                char v[32], l[32];
                num(v, sizeof v, it->value);
                num(l, sizeof l, it->limit);
                fprintf(f, "| `%s` | %s | %s | %s | %s | %s | ",
                        str(json_array_get(cases, (size_t)it->case_idx), "id"), fd_verdict_name(it->level),
                        *it->backend ? it->backend : "(case)", it->metric, v, l);
                md_cell(f, it->text);
                fprintf(f, " |\n");
                shown++;
            }
        if (shown < total) fprintf(f, "\n… and %d more (see the JUnit report or report.json)\n", total - shown);
    } else {
        fprintf(f, "Every case is within the policy.\n");
    }
    if (g->baseline_missing)
        fprintf(f, "\n%d baseline case(s) are not in this report%s.\n", g->baseline_missing,
                p->base_missing_fails ? " (the policy fails on that)" : "");
    if (g->baseline_new) fprintf(f, "\n%d case(s) have no baseline yet.\n", g->baseline_new);
    fclose(f);
    int rc = fd_write_text_atomic(path, buf, len, err, errlen);
    free(buf);
    return rc;
}
