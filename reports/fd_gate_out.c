/* fd_gate_out.c: the gate's summary line, FAIL lines, JUnit XML and Markdown, rendered
 * from the gate model; see fd_gate_out.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_gate_out.h"
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

/* The metrics a JUnit testcase's output lists, in this order. */
static const char *const metrics[6] = {"max_abs", "max_rel", "rel_l2", "max_ulp", "p99_ulp", "lse_max_abs"};

/* A metric as the outputs show it: "-" when it was not measured (null, or NaN: the gate
 * never takes a NaN for a number it compared). */
static void num(char *buf, size_t len, double x)
{
    if (isnan(x)) snprintf(buf, len, "-");
    else snprintf(buf, len, "%.4g", x);
}

static int flag(const json_t *o, const char *k) { return json_is_true(json_object_get(o, k)); }

static int count(const json_t *o, const char *k) { return (int)json_integer_value(json_object_get(o, k)); }

/* The gate's verdict of case ci ("PASS", "MARGINAL", "FAIL", "UNDECIDED"). */
static const char *verdict(const json_t *gate, size_t ci)
{
    return str(json_array_get(json_object_get(gate, "cases"), ci), "verdict");
}

/* Items of a case (the model's) that concern backend be (its own and the case-level ones). */
static int items_for(const json_t *gc, const char *be, const char *level, char *buf, size_t len,
                     const char **first_metric)
{
    int n = 0;
    size_t k;
    const json_t *it;
    buf[0] = 0;
    json_array_foreach(json_object_get(gc, "items"), k, it) {
        if (strcmp(str(it, "level"), level) || (*str(it, "backend") && strcmp(str(it, "backend"), be))) continue;
        if (n++) strncat(buf, "; ", len - strlen(buf) - 1);
        else if (first_metric) *first_metric = str(it, "metric");
        strncat(buf, str(it, "text"), len - strlen(buf) - 1);
    }
    return n;
}

void fd_gate_totals(const json_t *gate, char *buf, size_t len)
{
    const json_t *t = json_object_get(gate, "totals");
    const int missing = count(t, "baseline_missing"), missing_fail = count(t, "baseline_missing_fail");
    int n = snprintf(buf, len, "%d cases: %d PASS, %d MARGINAL, %d FAIL, %d UNDECIDED", count(t, "cases") + missing_fail,
                     count(t, "pass"), count(t, "marginal"), count(t, "fail") + missing_fail, count(t, "undecided"));
    if (n < 0 || (size_t)n >= len) return;
    if (missing_fail)
        snprintf(buf + n, len - (size_t)n, " (%d of the FAILs: baseline cases missing from the report)", missing_fail);
    else if (missing)
        snprintf(buf + n, len - (size_t)n, " (%d baseline cases missing from the report, ignored)", missing);
}

void fd_gate_summary(const json_t *gate, FILE *f)
{
    char totals[256];
    const json_t *base = json_object_get(gate, "baseline");
    fd_gate_totals(gate, totals, sizeof totals);
    fprintf(f, "gate %s: %s (policy %s%s%s%s%s)\n", flag(gate, "failed") ? "FAIL" : "PASS", totals,
            str(json_object_get(gate, "policy"), "path"), json_is_object(base) ? ", baseline " : "", str(base, "path"),
            flag(gate, "baseline_skipped") ? ", baseline rule not checked: --no-baseline" : "",
            flag(gate, "partial") ? ", partial report: --allow-partial" : "");
}

void fd_gate_print(const json_t *gate, FILE *f)
{
    size_t ci, k;
    const json_t *gc, *it;
    json_array_foreach(json_object_get(gate, "cases"), ci, gc) {
        if (!strcmp(str(gc, "verdict"), "PASS")) continue;
        fprintf(f, "%s %s:", str(gc, "verdict"), str(gc, "id"));
        int first = 1, has_fail = 0;
        json_array_foreach(json_object_get(gc, "items"), k, it) has_fail |= !strcmp(str(it, "level"), "FAIL");
        json_array_foreach(json_object_get(gc, "items"), k, it) {
            /* A failing case lists only what failed; the rest is noise on that line. */
            if (has_fail && strcmp(str(it, "level"), "FAIL")) continue;
            fprintf(f, "%s %s", first ? "" : ";", str(it, "text"));
            first = 0;
        }
        fputc('\n', f);
    }
    json_array_foreach(json_object_get(gate, "missing"), k, it)
        fprintf(f, "%s %s\n", !strcmp(str(it, "level"), "FAIL") ? "FAIL" : "NOTE", str(it, "text"));
}

int fd_gate_junit(const json_t *gate, const char *path, char *err, size_t errlen)
{
    fd_doc doc;
    if (fd_doc_open(&doc, path, err, errlen)) return -1;
    FILE *f = doc.f;
    const json_t *r = json_object_get(gate, "report"), *cases = json_object_get(r, "cases");
    const json_t *pol = json_object_get(gate, "policy"), *tot = json_object_get(gate, "totals");
    const json_t *gbes = json_object_get(gate, "backends"), *gb;
    const size_t ncases = json_array_size(cases);
    const int partial = flag(gate, "partial"), nmissing = count(tot, "baseline_missing");
    const int nmissing_fail = count(tot, "baseline_missing_fail");
    const char *cfname = str(json_object_get(r, "case_file"), "name");
    const char *host = str(json_object_get(r, "machine"), "hostname");
    int tests = 0, failures = 0, skipped = 0;
    double total_time = 0;
    size_t t;
    /* Counts first: the testsuites element carries them. */
    json_array_foreach(gbes, t, gb)
        for (size_t ci = 0; ci < ncases; ci++) {
            const json_t *b = json_object_get(json_object_get(json_array_get(cases, ci), "backends"), json_string_value(gb));
            if (!b) continue;
            tests++;
            if (!strcmp(verdict(gate, ci), "FAIL")) failures++;
            else if (!strcmp(verdict(gate, ci), "UNDECIDED")) skipped++;
            const double ms = fd_json_number(json_object_get(b, "ms"));
            if (!isnan(ms)) total_time += ms / 1e3;
        }
    /* Missing baseline cases are testcases of their own suite: failures when the policy
     * fails on them, skipped when it ignores them. */
    tests += nmissing;
    failures += nmissing_fail;
    skipped += nmissing - nmissing_fail;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"flashdrift gate: ");
    xml_esc(f, cfname);
    if (partial) fprintf(f, " (partial report: interrupted run)");
    fprintf(f, "\" tests=\"%d\" failures=\"%d\" errors=\"0\" skipped=\"%d\" time=\"%.3f\">\n", tests, failures,
            skipped, total_time);
    json_array_foreach(gbes, t, gb) {
        const char *be = json_string_value(gb);
        int nt = 0, nf = 0, ns = 0;
        double tt = 0;
        for (size_t ci = 0; ci < ncases; ci++) {
            const json_t *b = json_object_get(json_object_get(json_array_get(cases, ci), "backends"), be);
            if (!b) continue;
            nt++;
            nf += !strcmp(verdict(gate, ci), "FAIL");
            ns += !strcmp(verdict(gate, ci), "UNDECIDED");
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
                                  {"policy", str(pol, "path")},
                                  {"cpu", str(json_object_get(r, "machine"), "cpu")},
                                  {"report", partial ? "partial: an interrupted run, gated with --allow-partial"
                                                     : "complete"},
                                  {"baseline_rule", !flag(pol, "baseline_rule") ? "none in the policy"
                                                    : flag(gate, "baseline_skipped") ? "not checked (--no-baseline)"
                                                                                     : "checked"}};
        for (size_t k = 0; k < sizeof props / sizeof props[0]; k++) {
            fprintf(f, "      <property name=\"%s\" value=\"", props[k][0]);
            xml_esc(f, props[k][1]);
            fprintf(f, "\"/>\n");
        }
        fprintf(f, "    </properties>\n");
        for (size_t ci = 0; ci < ncases; ci++) {
            const json_t *c = json_array_get(cases, ci), *gc = json_array_get(json_object_get(gate, "cases"), ci);
            const json_t *b = json_object_get(json_object_get(c, "backends"), be);
            const char *v = str(gc, "verdict");
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
            if (!strcmp(v, "FAIL")) {
                if (!items_for(gc, be, "FAIL", msg, sizeof msg, &metric)) {
                    /* the case failed on another backend or through fail_on_marginal */
                    if (!items_for(gc, be, "MARGINAL", msg, sizeof msg, &metric))
                        snprintf(msg, sizeof msg, "case failed on another backend (see its testsuite)");
                }
                fprintf(f, "      <failure type=\"");
                xml_esc(f, metric);
                fprintf(f, "\" message=\"");
                xml_esc(f, msg);
                fprintf(f, "\">");
                xml_esc(f, msg);
                fprintf(f, "</failure>\n");
            } else if (!strcmp(v, "UNDECIDED")) {
                items_for(gc, be, "UNDECIDED", msg, sizeof msg, NULL);
                fprintf(f, "      <skipped message=\"");
                xml_esc(f, msg);
                fprintf(f, "\"/>\n");
            }
            /* The gate's verdict and items, then the numbers, for whoever opens the test case. */
            char out[6144];
            snprintf(out, sizeof out, "%s gate %s", be, v);
            static const char *const order[] = {"FAIL", "UNDECIDED", "MARGINAL"};
            for (int lv = 0; lv < 3; lv++) {
                if (!items_for(gc, be, order[lv], msg, sizeof msg, NULL)) continue;
                snprintf(out + strlen(out), sizeof out - strlen(out), "\n%s: %s", order[lv], msg);
            }
            if (json_is_true(json_object_get(b, "ok"))) {
                char m[6][32];
                for (int k = 0; k < 6; k++) num(m[k], sizeof m[k], fd_json_number(json_object_get(b, metrics[k])));
                snprintf(out + strlen(out), sizeof out - strlen(out),
                         "\nmax_abs %s, max_rel %s, rel_l2 %s, max_ulp %s, p99_ulp %s, lse_max_abs %s, output_hash %s",
                         m[0], m[1], m[2], m[3], m[4], m[5], str(b, "output_hash"));
            } else {
                snprintf(out + strlen(out), sizeof out - strlen(out), "\nerror: %s", str(b, "error"));
            }
            const json_t *z = json_object_get(b, "bias");
            if (json_is_true(json_object_get(z, "measured"))) {
                char m[3][32];
                num(m[0], sizeof m[0], fd_json_number(json_object_get(z, "worst_column_z")));
                num(m[1], sizeof m[1], fd_json_number(json_object_get(z, "worst_row_z")));
                num(m[2], sizeof m[2], fd_json_number(json_object_get(z, "threshold")));
                snprintf(out + strlen(out), sizeof out - strlen(out),
                         "\nbias %s over %lld seeds: worst column t %s, worst row t %s, threshold %s", str(z, "verdict"),
                         (long long)json_integer_value(json_object_get(z, "seeds")), m[0], m[1], m[2]);
            } else if (json_is_object(z)) {
                snprintf(out + strlen(out), sizeof out - strlen(out), "\nbias not measured: %s", str(z, "note"));
            }
            fprintf(f, "      <system-out>");
            xml_esc(f, out);
            fprintf(f, "</system-out>\n    </testcase>\n");
        }
        fprintf(f, "  </testsuite>\n");
    }
    if (nmissing) {
        fprintf(f, "  <testsuite name=\"baseline\" tests=\"%d\" failures=\"%d\" errors=\"0\" skipped=\"%d\" time=\"0\">\n",
                nmissing, nmissing_fail, nmissing - nmissing_fail);
        size_t k;
        const json_t *it;
        json_array_foreach(json_object_get(gate, "missing"), k, it) {
            const int fails = !strcmp(str(it, "level"), "FAIL");
            fprintf(f, "    <testcase name=\"");
            xml_esc(f, str(it, "text"));
            fprintf(f, "\" classname=\"flashdrift.baseline\" time=\"0\">");
            fprintf(f, fails ? "<failure type=\"missing\" message=\"" : "<skipped message=\"");
            xml_esc(f, str(it, "text"));
            if (!fails) fprintf(f, " (the policy ignores missing cases)");
            fprintf(f, "\"/>");
            fprintf(f, "</testcase>\n");
        }
        fprintf(f, "  </testsuite>\n");
    }
    fprintf(f, "</testsuites>\n");
    return fd_doc_commit(&doc, err, errlen);
}

/* Markdown table cells must not contain '|' or newlines. */
int fd_gate_markdown(const json_t *gate, const char *path, char *err, size_t errlen)
{
    fd_doc doc;
    if (fd_doc_open(&doc, path, err, errlen)) return -1;
    FILE *f = doc.f;
    const json_t *r = json_object_get(gate, "report"), *gcases = json_object_get(gate, "cases");
    const json_t *pol = json_object_get(gate, "policy"), *tot = json_object_get(gate, "totals");
    const json_t *gbes = json_object_get(gate, "backends"), *base = json_object_get(gate, "baseline");
    fprintf(f, "## flashdrift gate: %s ", flag(gate, "failed") ? "❌ FAIL" : "✅ PASS");
    fd_md_text(f, str(json_object_get(r, "case_file"), "name"));
    fprintf(f, "\n\n");
    char totals[256];
    fd_gate_totals(gate, totals, sizeof totals);
    if (flag(gate, "partial"))
        fprintf(f, "> **Partial report**: an interrupted run (%d cases), gated with `--allow-partial`; the cases "
                   "that did not run are not judged.\n\n", count(tot, "cases"));
    if (flag(pol, "baseline_rule") && flag(gate, "baseline_skipped"))
        fprintf(f, "> **Baseline rule not checked** (`--no-baseline`): no case was compared with a baseline.\n\n");
    fprintf(f, "**%s** · backends gated: ", totals);
    size_t t, ci, k;
    const json_t *e, *gc, *it;
    json_array_foreach(gbes, t, e) {
        fprintf(f, "%s`", t ? ", " : "");
        fd_md_text(f, json_string_value(e));
        fputc('`', f);
    }
    fprintf(f, "%s\n\n", json_array_size(gbes) ? "" : "none");
    fprintf(f, "policy `");
    fd_md_text(f, str(pol, "path"));
    fputc('`', f);
    if (json_is_object(base)) {
        fprintf(f, " · baseline `");
        fd_md_text(f, str(base, "path"));
        fputc('`', f);
    }
    fprintf(f, " · flashdrift ");
    fd_md_text(f, str(r, "version"));
    fprintf(f, " (");
    fd_md_text(f, str(r, "git_commit"));
    fprintf(f, ") · ");
    fd_md_text(f, str(r, "created"));
    fprintf(f, "\n\n");
    int shown = 0, total = 0;
    json_array_foreach(gcases, ci, gc) total += (int)json_array_size(json_object_get(gc, "items"));
    if (total) {
        fprintf(f, "| case | verdict | backend | rule | value | limit | detail |\n|---|---|---|---|---|---|---|\n");
        /* failures first, then the rest */
        for (int pass = 0; pass < 2; pass++)
            json_array_foreach(gcases, ci, gc) json_array_foreach(json_object_get(gc, "items"), k, it) {
                if (shown >= 60 || (pass == 0) != !strcmp(str(it, "level"), "FAIL")) continue;
                char v[32], l[32];
                num(v, sizeof v, fd_json_number(json_object_get(it, "value")));
                num(l, sizeof l, fd_json_number(json_object_get(it, "limit")));
                fprintf(f, "| `");
                fd_md_text(f, str(gc, "id"));
                fprintf(f, "` | %s | ", str(it, "level"));
                fd_md_text(f, *str(it, "backend") ? str(it, "backend") : "(case)");
                fprintf(f, " | ");
                fd_md_text(f, str(it, "metric"));
                fprintf(f, " | %s | %s | ", v, l);
                fd_md_text(f, str(it, "text"));
                fprintf(f, " |\n");
                shown++;
            }
        if (shown < total) fprintf(f, "\n… and %d more (see the JUnit report or report.json)\n", total - shown);
    } else {
        fprintf(f, "Every case is within the policy.\n");
    }
    if (count(tot, "baseline_missing"))
        fprintf(f, "\n%d baseline case(s) are not in this report%s.\n", count(tot, "baseline_missing"),
                flag(pol, "missing_cases_fail") ? " (the policy fails on that)" : "");
    if (count(tot, "baseline_new")) fprintf(f, "\n%d case(s) have no baseline yet.\n", count(tot, "baseline_new"));
    return fd_doc_commit(&doc, err, errlen);
}
