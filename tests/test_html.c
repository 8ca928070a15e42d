/* test_html.c: reports are data (issue 10). Hostile names (backquotes, system(...),
 * newlines, ';', '|', $(...), markup) as backend names, dtypes, case ids and stage names in
 * report.json, explain.json and the resume journal never run anything through `html`,
 * `diff --html` or `run --resume`: a canary file stays absent, the gnuplot program holds
 * none of the text (it reaches gnuplot through the data files only) and the HTML escapes
 * it. And `html --baseline` / `diff --html` render a report with explanations (the
 * baseline plot's logscale once broke the stacked bars after it: exit 3, nothing written). */
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include "fd_report.h"
#include "fd_test_util.h"

#define NHOSTILE 6

/* Each would create the canary if gnuplot or a shell evaluated it; %s is the canary (twice
 * where two vectors are in one name). */
static const char *const hostile_fmt[NHOSTILE] = {
    "bq`touch %s`",
    "dq\" . system(\"touch %s\") . \"",
    "sq' . system('touch %s') . '",
    "nl\nsystem(\"touch %s\")\n!touch %s",
    "sh; touch %s | cat $(touch %s) @m",
    "<script>alert(1)</script>&amp;`touch %s`",
};

typedef struct {
    char dir[64], canary[160], wrapper[160], gp_copy[160];
    char name[NHOSTILE][400];
} hostile;

/* A temp dir with the canary path, the names, and an FD_GNUPLOT wrapper that keeps a copy
 * of the program and its data files (gp_copy*) before it runs the real gnuplot. */
static void hostile_init(hostile *h)
{
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) cr_skip_test("gnuplot not installed (gnuplot-nox)");
    tu_dir(h->dir, sizeof h->dir);
    snprintf(h->canary, sizeof h->canary, "%s/PWNED", h->dir);
    for (int k = 0; k < NHOSTILE; k++) snprintf(h->name[k], sizeof h->name[k], hostile_fmt[k], h->canary, h->canary);
    snprintf(h->wrapper, sizeof h->wrapper, "%s/gp.sh", h->dir);
    snprintf(h->gp_copy, sizeof h->gp_copy, "%s/gp_copy", h->dir);
    char sh[1024];
    snprintf(sh, sizeof sh,
             "#!/bin/sh\ncp plots.gp %s.gp\ncat *.dat > %s.dat 2>/dev/null\nexec gnuplot \"$@\"\n",
             h->gp_copy, h->gp_copy);
    tu_write(h->wrapper, sh);
    cr_assert_eq(chmod(h->wrapper, 0755), 0);
    setenv("FD_GNUPLOT", h->wrapper, 1);
}

static int exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Runs argv; the canary is checked before the exit status, so a failure says what ran. */
static int run_hostile(const hostile *h, char *const argv[])
{
    const int rc = tu_run(argv);
    cr_assert(!exists(h->canary), "a hostile name was executed by `flashdrift %s`: %s exists", argv[1], h->canary);
    return rc;
}

/* What every command must leave: no canary, a program without input text, the names in
 * the data files (else the test proved nothing), an HTML page with the names escaped. */
static void check_safe(const hostile *h, const char *html, int want_names_in_data)
{
    cr_assert(!exists(h->canary), "a hostile name was executed: %s exists", h->canary);
    char p[200];
    snprintf(p, sizeof p, "%s.gp", h->gp_copy);
    char *gp = tu_slurp(p);
    cr_assert(gp, "gnuplot never ran (no %s)", p);
    cr_assert(!strstr(gp, "touch") && !strstr(gp, "PWNED") && !strchr(gp, '`') && !strstr(gp, "$("),
              "input text in the gnuplot program:\n%s", gp);
    if (want_names_in_data) {
        snprintf(p, sizeof p, "%s.dat", h->gp_copy);
        char *dat = tu_slurp(p);
        cr_assert(dat && strstr(dat, "bq`touch "), "the hostile names never reached gnuplot (vacuous test)");
    }
    char *page = tu_slurp(html);
    cr_assert(page, "%s not written", html);
    cr_assert(strstr(page, "data:image/svg+xml;base64,"), "no plot in %s", html);
    cr_assert(!strstr(page, "<script>"), "markup from the input reached the HTML unescaped");
    cr_assert(strstr(page, "&lt;script&gt;alert(1)&lt;/script&gt;&amp;amp;"),
              "the markup name is not in the page, escaped");
}

/* An explanation with stage names s0, s1 (+ the interaction). */
static json_t *explanation(const char *id, const char *backend, const char *s0, const char *s1)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:b, s:{s:f, s:f}, s:f, s:f, s:[{s:s, s:f, s:f, s:f}, "
                     "{s:s, s:f, s:f, s:f}, {s:s, s:f, s:f}]}",
                     "case", id, "backend", backend, "inject", "", "summary", "rounding only", "gross", 0,
                     "kernel_error", "max_abs", 1e-3, "rel_l2", 1e-4, "rounding_budget", 1e-3, "limit", 2e-3,
                     "stages", "stage", s0, "max_abs", 1e-3, "rel_l2", 1e-4, "share", 0.6, "stage", s1, "max_abs",
                     1e-4, "rel_l2", 1e-5, "share", 0.45, "stage", "interaction", "rel_l2", 1e-6, "share", -0.05);
}

/* A report whose backend names, dtypes, case ids and stage names are hostile (scale moves
 * the errors, for a baseline that differs). */
static json_t *hostile_report(const hostile *h, double scale)
{
    json_t *r = tu_report();
    for (int k = 0; k < NHOSTILE; k++) {
        char id[500];
        snprintf(id, sizeof id, "case-%d-%s-end", k, h->name[k]);
        json_t *c = tu_case(r, id, h->name[(k + 1) % NHOSTILE],
                            tu_backend(1e-3 * scale, 1e-4 * scale * (k + 1), 2, "00000000000000a1"), NULL);
        json_t *bs = json_object_get(c, "backends");
        json_object_set(bs, h->name[k], json_object_get(bs, "cpu-flash"));
        json_object_set_new(bs, h->name[(k + 2) % NHOSTILE],
                            tu_backend(2e-3 * scale, 2e-4 * scale, 3, "00000000000000a2"));
        json_object_set_new(json_object_get(c, "shape"), "seqlen_k", json_integer(64 << k));
        json_object_set_new(c, "explain", explanation(id, h->name[k], h->name[(k + 3) % NHOSTILE], h->name[k]));
    }
    return r;
}

Test(html_hostile, report_names_never_run_through_html)
{
    hostile h;
    hostile_init(&h);
    char rp[200], hp[200];
    snprintf(rp, sizeof rp, "%s/report.json", h.dir);
    snprintf(hp, sizeof hp, "%s/report.html", h.dir);
    json_t *r = hostile_report(&h, 1.0);
    tu_save(r, rp);
    json_decref(r);
    char *a[] = {FD_BINARY, "html", rp, "--out", hp, NULL};
    cr_assert_eq(run_hostile(&h, a), 0, "%s", g_err);
    check_safe(&h, hp, 1);
    cr_assert(strstr(tu_slurp(hp), "Error budget of the explained cases"), "the stage names were not plotted");
    /* each name alone, as backend, dtype, id and stage (one bad name must not hide another) */
    for (int k = 0; k < NHOSTILE; k++) {
        r = tu_report();
        json_t *c = tu_case(r, h.name[k], h.name[k], tu_backend(1e-3, 1e-4, 2, "00000000000000a1"), NULL);
        json_t *bs = json_object_get(c, "backends");
        json_object_set(bs, h.name[k], json_object_get(bs, "cpu-flash"));
        json_object_set_new(c, "explain", explanation(h.name[k], h.name[k], h.name[k], "PV accumulation"));
        tu_save(r, rp);
        json_decref(r);
        cr_assert_eq(run_hostile(&h, a), 0, "name %d: %s", k, g_err);
    }
}

Test(html_hostile, baseline_and_diff_html_never_run)
{
    hostile h;
    hostile_init(&h);
    char good[200], evil[200], evil2[200], hp[200], dp[200];
    snprintf(good, sizeof good, "%s/good.json", h.dir);
    snprintf(evil, sizeof evil, "%s/evil.json", h.dir);
    snprintf(evil2, sizeof evil2, "%s/evil2.json", h.dir);
    snprintf(hp, sizeof hp, "%s/base.html", h.dir);
    snprintf(dp, sizeof dp, "%s/diff.html", h.dir);
    json_t *g = tu_report();
    tu_case(g, "case-0", "fp16", tu_backend(1e-3, 1e-4, 2, "00000000000000b1"),
            tu_backend(1e-3, 1e-4, 2, "00000000000000b2"));
    tu_save(g, good);
    json_decref(g);
    json_t *r = hostile_report(&h, 1.0);
    tu_save(r, evil);
    json_decref(r);
    r = hostile_report(&h, 1.5);
    tu_save(r, evil2);
    json_decref(r);
    char *d[] = {FD_BINARY, "diff", good, evil, "--html", dp, NULL};
    cr_assert_eq(run_hostile(&h, d), 0, "%s", g_err);
    check_safe(&h, dp, 1);
    /* hostile on both sides: the baseline plot has points, drawn before the stacked bars */
    char *b[] = {FD_BINARY, "html", evil2, "--baseline", evil, "--out", hp, NULL};
    cr_assert_eq(run_hostile(&h, b), 0, "%s", g_err);
    check_safe(&h, hp, 1);
    char *page = tu_slurp(hp);
    cr_assert(strstr(page, "Baseline vs current (rel l2)") && strstr(page, "Error budget of the explained cases"));
    char *d2[] = {FD_BINARY, "diff", evil, evil2, "--html", dp, NULL};
    cr_assert_eq(run_hostile(&h, d2), 0, "%s", g_err);
    check_safe(&h, dp, 1);
}

Test(html_hostile, explain_json_names_never_run)
{
    hostile h;
    hostile_init(&h);
    char ep[200], hp[200];
    snprintf(ep, sizeof ep, "%s/explain.json", h.dir);
    snprintf(hp, sizeof hp, "%s/explain.html", h.dir);
    json_t *arr = json_array();
    for (int k = 0; k < NHOSTILE; k++) {
        char id[500];
        snprintf(id, sizeof id, "x-%s-%d", h.name[k], k);
        json_array_append_new(arr, explanation(id, h.name[k], h.name[k], h.name[(k + 1) % NHOSTILE]));
    }
    json_t *doc = json_pack("{s:i, s:s, s:o}", "schema_version", FD_REPORT_SCHEMA_VERSION, "case_file", h.name[5],
                            "explain", arr);
    tu_save(doc, ep);
    json_decref(doc);
    char *a[] = {FD_BINARY, "html", ep, "--out", hp, NULL};
    cr_assert_eq(run_hostile(&h, a), 0, "%s", g_err);
    check_safe(&h, hp, 1);
}

/* --- run --resume over a tampered journal ------------------------------------------- */

static const char *cases12 =
    "{\"schema\": \"flashdrift-cases/1\", \"name\": \"hostile12\", \"rows_per_head\": 8,\n"
    " \"sweeps\": [{\"heads\": 2, \"seqlen\": [[40, 72], 64, 96], \"head_dim\": 16,\n"
    "   \"dtype\": [\"fp16\", \"bf16\"], \"mask\": [\"none\", \"causal_br\"], \"dropout\": [0], \"seed\": 5}]}\n";

Test(html_hostile, resume_journal_names_never_run, .timeout = 120)
{
    hostile h;
    hostile_init(&h);
    char cf[200], out[200], jp[260], hp[260];
    snprintf(cf, sizeof cf, "%s/c.json", h.dir);
    snprintf(out, sizeof out, "%s/out", h.dir);
    snprintf(jp, sizeof jp, "%s/cases.partial.jsonl", out);
    snprintf(hp, sizeof hp, "%s/report.html", out);
    tu_write(cf, cases12);
    /* a real journal: a run killed after its first finished cases */
    char *a[] = {FD_BINARY, "run", cf, "--out", out, "--backend", "cpu", "--jobs", "1", "--quiet", NULL};
    const int st = tu_signal_after_lines(tu_spawn(a, NULL, NULL), jp, 3, 20000, SIGKILL);
    cr_assert(WIFSIGNALED(st), "the run must still be running when killed (it finished too fast)");
    /* tamper: hostile backend names, dtype and stage names in every finished case */
    FILE *f = fopen(jp, "r");
    cr_assert(f);
    char *line = NULL, *text = NULL;
    size_t cap = 0, tlen = 0;
    FILE *t = open_memstream(&text, &tlen);
    int lineno = 0, tampered = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j) break; /* a line cut by the kill */
        if (lineno++ && json_object_get(j, "id")) {
            json_t *bs = json_object_get(j, "backends"), *nb = json_object();
            const char *key;
            json_t *b;
            int k = 0;
            json_object_foreach(bs, key, b) json_object_set(nb, h.name[k++ % NHOSTILE], b);
            json_object_set_new(j, "backends", nb);
            json_object_set_new(j, "dtype", json_string(h.name[5]));
            const char *id = json_string_value(json_object_get(j, "id"));
            json_object_set_new(j, "explain", explanation(id, h.name[4], h.name[2], h.name[3]));
            tampered++;
        }
        char *s = json_dumps(j, JSON_COMPACT);
        fprintf(t, "%s\n", s);
        free(s);
        json_decref(j);
    }
    free(line);
    fclose(f);
    fclose(t);
    cr_assert(tampered >= 2, "only %d finished cases in the journal", tampered);
    tu_write(jp, text);
    free(text);
    char *b[] = {FD_BINARY, "run", cf, "--out", out, "--backend", "cpu", "--jobs", "2", "--resume", NULL};
    const int rc = run_hostile(&h, b);
    if (rc == 2) { /* refusing a tampered journal is fine, when it says so */
        cr_assert(strstr(g_err, "cases.partial.jsonl"), "%s", g_err);
        return;
    }
    cr_assert(rc == 0 || rc == 1, "exit %d: %s", rc, g_err);
    cr_assert(!strstr(g_err, "warning"), "report.html not rendered: %s", g_err);
    check_safe(&h, hp, 1);
}

/* --- a report with explanations and a baseline (issue 10, part 2) -------------------- */

Test(html_baseline, report_with_explanations_renders_both_plots)
{
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) cr_skip_test("gnuplot not installed (gnuplot-nox)");
    char dir[64], rp[160], bp[160], hp[160], dp[160];
    tu_dir(dir, sizeof dir);
    snprintf(rp, sizeof rp, "%s/report.json", dir);
    snprintf(bp, sizeof bp, "%s/baseline.json", dir);
    snprintf(hp, sizeof hp, "%s/report.html", dir);
    snprintf(dp, sizeof dp, "%s/diff.html", dir);
    for (int side = 0; side < 2; side++) {
        json_t *r = tu_report();
        for (int k = 0; k < 3; k++) {
            char id[64];
            snprintf(id, sizeof id, "b1h1-q64-k%d-d32-fp16-none-p0-normal-s5", 64 << k);
            const double s = side ? 1.3 : 1.0;
            json_t *c = tu_case(r, id, "fp16", tu_backend(1e-3 * s, 1e-4 * s * (k + 1), 2, "00000000000000c1"),
                                tu_backend(1e-3, 1e-4, 2, "00000000000000c2"));
            json_object_set_new(c, "explain", explanation(id, "cpu-flash", "QK^T accumulation", "PV accumulation"));
        }
        tu_save(r, side ? rp : bp);
        json_decref(r);
    }
    char *a[] = {FD_BINARY, "html", rp, "--baseline", bp, "--out", hp, NULL};
    cr_assert_eq(tu_run(a), 0, "html --baseline on a report with explanations: %s", g_err);
    char *d[] = {FD_BINARY, "diff", bp, rp, "--html", dp, NULL};
    cr_assert_eq(tu_run(d), 0, "diff --html on reports with explanations: %s", g_err);
    const char *pages[] = {hp, dp};
    for (int k = 0; k < 2; k++) {
        char *page = tu_slurp(pages[k]);
        cr_assert(page, "%s not written", pages[k]);
        cr_assert(strstr(page, "<img alt=\"Baseline vs current (rel l2)\""), "%s: no baseline plot", pages[k]);
        cr_assert(strstr(page, "<img alt=\"Error budget of the explained cases"), "%s: no error-budget plot", pages[k]);
        cr_assert(strstr(page, "<h2>Against the baseline</h2>"), "%s: no diff table", pages[k]);
        /* the cut common part of the ids is named under the plot */
        cr_assert(strstr(page, "explained cases: b1h1-q64-*-d32-fp16-none-p0-normal-s5"), "%s: caption", pages[k]);
    }
}

/* Numbers of a crafted report: a negative p99 ulp indexed the histogram's bins out of
 * bounds (SIGSEGV), and huge shares or a huge dropout p reached the program as "inf" or
 * overflowed gnuplot's stack (gnuplot failed, exit 3, nothing written). */
Test(html_numbers, crafted_values_render)
{
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) cr_skip_test("gnuplot not installed (gnuplot-nox)");
    char dir[64], rp[160], hp[160];
    tu_dir(dir, sizeof dir);
    snprintf(rp, sizeof rp, "%s/report.json", dir);
    snprintf(hp, sizeof hp, "%s/report.html", dir);
    json_t *r = tu_report();
    for (int k = 0; k < 3; k++) {
        char id[64];
        snprintf(id, sizeof id, "case-%d", k);
        json_t *c = tu_case(r, id, "fp16", tu_backend(1e-3, 1e-4, k ? -1e9 : -1e300, "00000000000000d1"), NULL);
        json_t *ex = explanation(id, "cpu-flash", "QK^T accumulation", "PV accumulation");
        json_t *st;
        size_t j;
        json_array_foreach(json_object_get(ex, "stages"), j, st) json_object_set_new(st, "share", json_real(1e308));
        json_object_set_new(c, "explain", ex);
        json_object_set_new(c, "dropout", json_real(1e308));
        json_object_set_new(c, "dropout_stats", json_pack("{s:f, s:f, s:f, s:f, s:f, s:i, s:i}", "keep_rate", 1e308,
                                                          "keep_nominal", 0.5, "keep_threshold", 0.5, "z_threshold",
                                                          0.0, "z_nominal", 0.0, "kept", 10, "total", 20));
    }
    tu_save(r, rp);
    json_decref(r);
    char *a[] = {FD_BINARY, "html", rp, "--out", hp, NULL};
    const int rc = tu_run(a);
    cr_assert_eq(rc, 0, "exit %d (139: SIGSEGV): %s", rc, g_err);
    char *page = tu_slurp(hp);
    cr_assert(page && strstr(page, "<img alt=\"Histogram of the p99 ulp error") &&
              strstr(page, "<img alt=\"Error budget of the explained cases"), "plots missing");
}

/* A policy whose description and backend names are hostile, gating a hostile report with
 * JUnit and Markdown: nothing runs, whatever the gate decides. */
Test(html_hostile, policy_names_never_run_through_gate)
{
    hostile h;
    hostile_init(&h);
    char rp[200], pp[200], jp[200], mp[200];
    snprintf(rp, sizeof rp, "%s/report.json", h.dir);
    snprintf(pp, sizeof pp, "%s/policy.json", h.dir);
    snprintf(jp, sizeof jp, "%s/junit.xml", h.dir);
    snprintf(mp, sizeof mp, "%s/gate.md", h.dir);
    json_t *r = hostile_report(&h, 1.0);
    tu_save(r, rp);
    json_decref(r);
    /* a hostile description under the default backends: the gate runs and writes both files */
    json_t *p0 = json_pack("{s:s, s:s, s:s, s:{s:{s:f}}}", "schema", "flashdrift-policy/1", "description", h.name[5],
                           "backends", "all", "limits", "default", "max_abs", 1.5e-3);
    tu_save(p0, pp);
    json_decref(p0);
    char *a0[] = {FD_BINARY, "gate", rp, "--policy", pp, "--junit", jp, "--markdown", mp, NULL};
    const int rc0 = run_hostile(&h, a0);
    cr_assert(rc0 == 1, "the 2e-3 backends break the 1.5e-3 limit: exit %d: %s", rc0, g_err);
    char *j0 = tu_slurp(jp);
    cr_assert(j0 && strstr(j0, "bq`touch ") && !strstr(j0, "<script>"), "hostile names in the JUnit, escaped");
    char *m0 = tu_slurp(mp);
    cr_assert(m0, "Markdown written");
    cr_assert(!strstr(m0, "<script>") && strstr(m0, "&lt;script&gt;"), "markup from the input in gate.md: %s", m0);
    for (const char *line = m0; (line = strstr(line, "\n| `case-")); line++) {
        const char *end = strchr(line + 1, '\n');
        int bars = 0;
        for (const char *c = line + 1; c < end; c++) bars += *c == '|' && c[-1] != '\\';
        cr_assert_eq(bars, 8, "a hostile name broke a gate.md table row: %.*s", (int)(end - line), line);
    }
    for (int k = 0; k < NHOSTILE; k++) {
        char names[900];
        snprintf(names, sizeof names, "%s,cpu-flash", h.name[k]);
        json_t *po = json_pack("{s:s, s:s, s:s, s:{s:{s:f}}, s:{s:f, s:f}}", "schema", "flashdrift-policy/1",
                               "description", h.name[(k + 1) % NHOSTILE], "backends", names, "limits", "default",
                               "max_abs", 1e-2, "fa_rule", "fa_ratio", 2.0, "atol", 1e-5);
        tu_save(po, pp);
        json_decref(po);
        char *a[] = {FD_BINARY, "gate", rp, "--policy", pp, "--junit", jp, "--markdown", mp, NULL};
        const int rc = run_hostile(&h, a);
        cr_assert(rc == 0 || rc == 1 || rc == 2, "gate exit %d: %s", rc, g_err);
        char *b[] = {FD_BINARY, "gate", rp, "--policy", pp, "--allow-missing-backend", "--junit", jp, "--markdown", mp,
                     NULL};
        const int rc2 = run_hostile(&h, b);
        /* a name the policy reader refuses is a one-line input error naming the field */
        cr_assert(rc2 == 0 || rc2 == 1 || (rc2 == 2 && strstr(g_err, "backends: expected")),
                  "gate --allow-missing-backend exit %d: %s", rc2, g_err);
        char *x = tu_slurp(jp);
        cr_assert(!x || !strstr(x, "<script>"), "markup from the input reached the JUnit unescaped");
    }
}
