/* test_gate.c: policy files (strict parsing) and the gate (each rule passes and fails
 * where it should) on crafted reports; JUnit XML validated against tests/data/junit.xsd
 * with xmllint; malformed inputs to gate and diff exit 2 naming the file; what the gate
 * refuses to pass unchecked (partial reports, unknown backends, a baseline rule without
 * a baseline, unmeasured metrics, no case selected, unusable output paths); the totals
 * of the summary line, gate.md and the JUnit agree. */
#include <math.h>
#include <sys/stat.h>

#include "fd_dtype.h"
#include "fd_gate.h"
#include "fd_import.h"
#include "fd_ref.h"
#include "fd_report_read.h"
#include "fd_test_util.h"

static const char *policy_all =
    "{\"schema\": \"flashdrift-policy/1\", \"backends\": \"flash\",\n"
    " \"limits\": {\"fp16\": {\"max_abs\": 4e-3, \"p99_ulp\": 64}, \"default\": {\"rel_l2\": 1e-2}},\n"
    " \"fa_rule\": {\"fa_ratio\": 2, \"atol\": 1e-5}, \"marginal\": 0.8,\n"
    " \"dropout\": {\"keep_sigma\": 5},\n"
    " \"baseline\": {\"metrics\": [\"max_abs\", \"p99_ulp\"], \"factor\": 1.25, \"ulps\": 2}}\n";

static void parse_policy(const char *text, fd_gate_policy *p, int expect_ok, char *err, size_t errlen)
{
    json_error_t je;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    cr_assert(j, "test policy is not JSON: %s", je.text);
    int rc = fd_gate_policy_parse("pol.json", j, p, err, errlen);
    json_decref(j);
    if (expect_ok) cr_assert_eq(rc, 0, "policy should parse: %s", err);
    else cr_assert_eq(rc, -1, "policy should be refused: %s", text);
}

Test(policy, parses_every_field)
{
    fd_gate_policy p;
    char err[1024] = "";
    parse_policy(policy_all, &p, 1, err, sizeof err);
    cr_assert_float_eq(p.limit[0][FD_GM_MAX_ABS], 4e-3, 1e-18);
    cr_assert_float_eq(p.limit[3][FD_GM_REL_L2], 1e-2, 1e-18);
    cr_assert(p.limit[1][FD_GM_MAX_ABS] < 0, "bf16 max_abs unset");
    cr_assert_float_eq(p.fa_ratio, 2.0, 0);
    cr_assert(p.base_on && p.base_metric[0][FD_GM_MAX_ABS] && p.base_metric[0][FD_GM_P99_ULP] && !p.base_metric[0][FD_GM_REL_L2]);
    fd_gate_policy q;
    parse_policy("{\"schema\": \"flashdrift-policy/1\"}", &q, 1, err, sizeof err);
    cr_assert(q.limit[0][FD_GM_MAX_ABS] < 0 && q.fa_ratio <= 0 && !q.base_on, "an empty policy gates nothing but errors");
    char e2[1024];
    cr_assert_eq(fd_gate_policy_load(tu_path(TU_SOURCE, "cases/policy-ci.json"), &q, e2, sizeof e2), 0, "%s", e2);
    cr_assert_eq(fd_gate_policy_load(tu_path(TU_SOURCE, "cases/policy-strict.json"), &q, e2, sizeof e2), 0, "%s", e2);
}

Test(policy, errors_name_file_path_and_expectation)
{
    static const struct { const char *text, *path, *what; } bad[] = {
        {"{\"schema\": \"flashdrift-policy/1\", \"limit\": {}}", "(top)", "unknown field \"limit\""},
        {"{\"schema\": \"flashdrift-policy/2\"}", "schema", "flashdrift-policy/1"},
        {"{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp8\": {}}}", "limits", "unknown field \"fp8\""},
        {"{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"max_abs\": -1}}}", "limits.fp16.max_abs", ">= 0"},
        {"{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"maxabs\": 1}}}", "limits.fp16", "unknown field \"maxabs\""},
        {"{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"bf16\": {\"rel_l2\": \"small\"}}}", "limits.bf16.rel_l2", "expected a number"},
        {"{\"schema\": \"flashdrift-policy/1\", \"marginal\": 1.5}", "marginal", "(0, 1]"},
        {"{\"schema\": \"flashdrift-policy/1\", \"fa_rule\": {\"atol\": 1}}", "fa_rule.fa_ratio", "required"},
        {"{\"schema\": \"flashdrift-policy/1\", \"dropout\": {\"keep_sigma\": 0}}", "dropout.keep_sigma", "positive"},
        {"{\"schema\": \"flashdrift-policy/1\", \"dropout\": {\"keep_sigma\": 3, \"against\": \"1-p\"}}", "dropout.against", "nominal"},
        {"{\"schema\": \"flashdrift-policy/1\", \"baseline\": {\"metrics\": [\"max_err\"], \"factor\": 1.1}}", "baseline.metrics[0]", "max_abs"},
        {"{\"schema\": \"flashdrift-policy/1\", \"baseline\": {\"metrics\": [\"max_abs\"], \"factor\": 0.5}}", "baseline.factor", ">= 1"},
        {"{\"schema\": \"flashdrift-policy/1\", \"baseline\": {\"metrics\": [\"max_abs\"], \"ulps\": 1}}", "baseline", "factor"},
        {"{\"schema\": \"flashdrift-policy/1\", \"backends\": [\"cpu-flash\", 3]}", "backends[1]", "backend name"},
        {"{\"schema\": \"flashdrift-policy/1\", \"fail_on_marginal\": 1}", "fail_on_marginal", "true or false"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fd_gate_policy p;
        char err[1024] = "";
        parse_policy(bad[i].text, &p, 0, err, sizeof err);
        char want[256];
        snprintf(want, sizeof want, "pol.json: %s: ", bad[i].path);
        cr_assert(strstr(err, want), "case %zu: message should name file and path \"%s\": %s", i, want, err);
        cr_assert(strstr(err, bad[i].what), "case %zu: message should say \"%s\": %s", i, bad[i].what, err);
    }
}

/* Verdict of the case with this id after evaluation. */
static fd_verdict verdict_of(const fd_gate_result *g, const char *id)
{
    const json_t *cases = json_object_get(g->report, "cases");
    for (int i = 0; i < g->ncases; i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(cases, (size_t)i), "id")), id)) return g->verdict[i];
    cr_assert_fail("no case %s", id);
    return FD_PASS;
}

static int has_item(const fd_gate_result *g, const char *metric, fd_verdict level)
{
    for (int k = 0; k < g->nitems; k++)
        if (!strcmp(g->items[k].metric, metric) && g->items[k].level == level) return 1;
    return 0;
}

Test(gate, each_rule_passes_and_fails_where_it_should)
{
    fd_gate_policy p;
    char err[1024] = "";
    parse_policy(policy_all, &p, 1, err, sizeof err);
    json_t *r = tu_report(), *base = tu_report();
    /* within every limit */
    tu_case(r, "ok", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), tu_backend(1e-4, 1e-4, 3, "0000000000000002"));
    /* per-dtype max_abs limit 4e-3: 5e-3 fails, 3.5e-3 is above 0.8 of it (MARGINAL) */
    tu_case(r, "abs_fail", "fp16", tu_backend(5e-3, 1e-4, 3, "0000000000000003"), tu_backend(4e-3, 1e-4, 3, "0000000000000004"));
    tu_case(r, "abs_marginal", "fp16", tu_backend(3.5e-3, 1e-4, 3, "0000000000000005"), tu_backend(3e-3, 1e-4, 3, "0000000000000006"));
    /* the "default" rel_l2 limit applies to bf16 (no bf16 entry) */
    tu_case(r, "default_fail", "bf16", tu_backend(1e-3, 2e-2, 3, "0000000000000007"), tu_backend(1e-3, 1e-3, 3, "0000000000000008"));
    /* FlashAttention's rule: 1e-3 > 2 x 1e-4 + 1e-5 */
    tu_case(r, "fa_fail", "fp16", tu_backend(1e-3, 1e-4, 3, "0000000000000009"), tu_backend(1e-4, 1e-4, 3, "000000000000000a"));
    /* NaN outputs and a failed backend */
    json_t *nanb = tu_backend(1e-4, 1e-4, 3, "000000000000000b");
    json_object_set_new(nanb, "nan", json_integer(3));
    tu_case(r, "nan_fail", "fp16", nanb, NULL);
    tu_case(r, "error_fail", "fp16", json_pack("{s:b, s:s}", "ok", 0, "error", "launch failed"), NULL);
    /* determinism: outputs differ between repeats */
    json_t *rep = tu_backend(1e-4, 1e-4, 3, "000000000000000c");
    json_object_set_new(rep, "repeat", json_pack("{s:i, s:b, s:[s, s], s:i}", "runs", 3, "identical", 0, "hashes",
                                                 "000000000000000c", "000000000000000d", "failed_runs", 0));
    tu_case(r, "repeat_fail", "fp16", rep, NULL);
    /* dropout keep rate: z = 7 against the threshold fails, z = 1 passes */
    json_t *c = tu_case(r, "keep_fail", "fp16", tu_backend(1e-4, 1e-4, 3, "000000000000000e"), NULL);
    json_object_set_new(c, "dropout_stats", json_pack("{s:i, s:i, s:f, s:f, s:f, s:f, s:f}", "kept", 100, "total", 1000,
                        "keep_rate", 0.9, "keep_nominal", 0.83, "keep_threshold", 0.828125, "z_threshold", 7.0, "z_nominal", 6.0));
    c = tu_case(r, "keep_ok", "fp16", tu_backend(1e-4, 1e-4, 3, "000000000000000f"), NULL);
    json_object_set_new(c, "dropout_stats", json_pack("{s:i, s:i, s:f, s:f, s:f, s:f, s:f}", "kept", 100, "total", 1000,
                        "keep_rate", 0.83, "keep_nominal", 0.83, "keep_threshold", 0.828125, "z_threshold", 1.0, "z_nominal", 0.0));
    /* baseline: max_abs x1.5 fails (factor 1.25); p99_ulp +1.5 ulp passes (ulps 2), +3 fails */
    tu_case(r, "base_abs_fail", "fp16", tu_backend(3e-4, 1e-4, 3, "0000000000000010"), tu_backend(2e-4, 1e-4, 3, "0000000000000011"));
    tu_case(base, "base_abs_fail", "fp16", tu_backend(2e-4, 1e-4, 3, "0000000000000010"), tu_backend(2e-4, 1e-4, 3, "0000000000000011"));
    tu_case(r, "base_ulp_ok", "fp16", tu_backend(1e-4, 1e-4, 4.5, "0000000000000012"), tu_backend(1e-4, 1e-4, 3, "0000000000000013"));
    tu_case(base, "base_ulp_ok", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000012"), tu_backend(1e-4, 1e-4, 3, "0000000000000013"));
    tu_case(r, "base_ulp_fail", "fp16", tu_backend(1e-4, 1e-4, 6, "0000000000000014"), tu_backend(1e-4, 1e-4, 3, "0000000000000015"));
    tu_case(base, "base_ulp_fail", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000014"), tu_backend(1e-4, 1e-4, 3, "0000000000000015"));
    tu_case(base, "gone", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000016"), NULL);
    char e2[1024];
    cr_assert_eq(fd_report_validate("r.json", r, e2, sizeof e2), 0, "crafted report invalid: %s", e2);
    cr_assert_eq(fd_report_validate("b.json", base, e2, sizeof e2), 0, "crafted baseline invalid: %s", e2);
    fd_gate_result g;
    cr_assert_eq(fd_gate_eval(&p, r, base, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(verdict_of(&g, "ok"), FD_PASS);
    cr_assert_eq(verdict_of(&g, "abs_fail"), FD_FAIL);
    cr_assert_eq(verdict_of(&g, "abs_marginal"), FD_MARGINAL);
    cr_assert_eq(verdict_of(&g, "default_fail"), FD_FAIL);
    cr_assert_eq(verdict_of(&g, "fa_fail"), FD_FAIL);
    cr_assert_eq(verdict_of(&g, "nan_fail"), FD_FAIL);
    cr_assert_eq(verdict_of(&g, "error_fail"), FD_FAIL);
    cr_assert_eq(verdict_of(&g, "repeat_fail"), FD_FAIL);
    cr_assert_eq(verdict_of(&g, "keep_fail"), FD_FAIL);
    cr_assert_eq(verdict_of(&g, "keep_ok"), FD_PASS);
    cr_assert_eq(verdict_of(&g, "base_abs_fail"), FD_FAIL);
    cr_assert_eq(verdict_of(&g, "base_ulp_ok"), FD_PASS);
    cr_assert_eq(verdict_of(&g, "base_ulp_fail"), FD_FAIL);
    cr_assert(has_item(&g, "fa_rule", FD_FAIL) && has_item(&g, "nonfinite", FD_FAIL) && has_item(&g, "determinism", FD_FAIL) &&
              has_item(&g, "keep_rate", FD_FAIL) && has_item(&g, "rel_l2", FD_FAIL) && has_item(&g, "max_abs", FD_MARGINAL));
    cr_assert_eq(g.baseline_missing, 1, "the baseline's case \"gone\" is missing");
    cr_assert(g.failed);
    /* a failing item names the metric, the value and the limit */
    int found = 0;
    for (int k = 0; k < g.nitems; k++)
        if (!strcmp(g.items[k].metric, "max_abs") && g.items[k].level == FD_FAIL && g.items[k].case_idx == 1) {
            cr_assert(strstr(g.items[k].text, "max_abs 0.005 > 0.004"), "%s", g.items[k].text);
            found = 1;
        }
    cr_assert(found);
    fd_gate_result_free(&g);
    /* The same report against the strictest sensible policy without limits passes. */
    parse_policy("{\"schema\": \"flashdrift-policy/1\"}", &p, 1, err, sizeof err);
    json_t *okr = tu_report();
    tu_case(okr, "ok", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), NULL);
    cr_assert_eq(fd_gate_eval(&p, okr, NULL, &g, err, sizeof err), 0);
    cr_assert(!g.failed && g.npass == 1);
    fd_gate_result_free(&g);
    json_decref(okr);
    json_decref(r);
    json_decref(base);
}

Test(gate, cli_exit_codes_lines_junit_and_markdown)
{
    char dir[64], rp[128], pp[128], jp[128], mp[128], cmd[512];
    tu_dir(dir, sizeof dir);
    snprintf(rp, sizeof rp, "%s/report.json", dir);
    snprintf(pp, sizeof pp, "%s/policy.json", dir);
    snprintf(jp, sizeof jp, "%s/junit.xml", dir);
    snprintf(mp, sizeof mp, "%s/gate.md", dir);
    json_t *r = tu_report();
    tu_case(r, "good-<&\"'>-case", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), tu_backend(1e-4, 1e-4, 3, "0000000000000002"));
    tu_case(r, "bad-case", "fp16", tu_backend(5e-3, 1e-4, 3, "0000000000000003"), tu_backend(4e-3, 1e-4, 3, "0000000000000004"));
    tu_save(r, rp);
    tu_write(pp, "{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"max_abs\": 4e-3}}}");
    char *a[] = {FD_BINARY, "gate", rp, "--policy", pp, "--junit", jp, "--markdown", mp, NULL};
    cr_assert_eq(tu_run(a), 1, "a failing case fails the gate: %s%s", g_out, g_err);
    cr_assert(strstr(g_err, "FAIL bad-case: cpu-flash max_abs 0.005 > 0.004 (fp16 limit)"),
              "one line naming metric, value, limit, on stderr as in run and check: %s", g_err);
    cr_assert(!strstr(g_err, "FAIL good") && !strstr(g_out, "FAIL bad"), "%s%s", g_out, g_err);
    snprintf(cmd, sizeof cmd, "xmllint --noout --schema %s %s 2>&1", tu_path(TU_DATA, "junit.xsd"), jp);
    cr_assert_eq(system(cmd), 0, "junit.xml must validate against tests/data/junit.xsd (xmllint from libxml2-utils)");
    char *x = tu_slurp(jp);
    cr_assert(strstr(x, "name=\"good-&lt;&amp;&quot;&apos;&gt;-case\""), "ids are XML-escaped");
    cr_assert(strstr(x, "<failure type=\"max_abs\" message=\"cpu-flash max_abs 0.005 &gt; 0.004"), "%s", x);
    cr_assert(strstr(x, "<testsuite name=\"cpu-flash\" tests=\"2\" failures=\"1\""), "one testsuite per gated backend");
    char *md = tu_slurp(mp);
    cr_assert(strstr(md, "FAIL") && strstr(md, "| `bad-case` | FAIL | cpu-flash | max_abs | 0.005 | 0.004 |"), "%s", md);
    /* a passing policy exits 0 */
    tu_write(pp, "{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"max_abs\": 1e-2}}}");
    cr_assert_eq(tu_run(a), 0, "%s%s", g_out, g_err);
    cr_assert(strstr(g_out, "gate PASS"), "%s", g_out);
    /* a policy error is a usage error naming the file and path */
    tu_write(pp, "{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"max_abs\": \"x\"}}}");
    cr_assert_eq(tu_run(a), 2);
    cr_assert(strstr(g_err, pp) && strstr(g_err, "limits.fp16.max_abs"), "%s", g_err);
    json_decref(r);
}

/* Corrupt, foreign, newer and truncated reports: exit 2, the message names the file. */
Test(gate, malformed_reports_are_input_errors)
{
    char dir[64], good[128], pp[128], bad[128];
    tu_dir(dir, sizeof dir);
    snprintf(good, sizeof good, "%s/good.json", dir);
    snprintf(pp, sizeof pp, "%s/policy.json", dir);
    snprintf(bad, sizeof bad, "%s/bad.json", dir);
    json_t *r = tu_report();
    tu_case(r, "c1", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), NULL);
    tu_save(r, good);
    tu_write(pp, "{\"schema\": \"flashdrift-policy/1\"}");
    char *full = json_dumps(r, JSON_INDENT(1));
    char trunc[4096];
    snprintf(trunc, sizeof trunc, "%.*s", (int)(strlen(full) / 2), full);
    json_t *v2 = json_deep_copy(r);
    json_object_set_new(v2, "schema_version", json_integer(2));
    char *v2s = json_dumps(v2, 0);
    json_t *badmetric = json_deep_copy(r);
    json_object_set_new(json_object_get(json_object_get(json_array_get(json_object_get(badmetric, "cases"), 0), "backends"), "cpu-flash"),
                        "max_abs", json_string("big"));
    char *bms = json_dumps(badmetric, 0);
    static const char *what[] = {"invalid JSON", "not a flashdrift report", "version 2 is not supported",
                                 "truncated file?", "cases[0].backends.cpu-flash.max_abs", "expected an object"};
    const char *texts[] = {"{\"schema_version\": 1, \"cases\": [}", "{\"name\": \"someone else's JSON\"}", v2s, trunc, bms, "[1, 2]"};
    for (int i = 0; i < 6; i++) {
        tu_write(bad, texts[i]);
        char *a[] = {FD_BINARY, "gate", bad, "--policy", pp, NULL};
        cr_assert_eq(tu_run(a), 2, "input %d: exit 2 expected: %s", i, g_err);
        cr_assert(strstr(g_err, bad), "input %d: message names the file: %s", i, g_err);
        cr_assert(strstr(g_err, what[i]), "input %d: message says \"%s\": %s", i, what[i], g_err);
        char *d1[] = {FD_BINARY, "diff", good, bad, NULL};
        cr_assert_eq(tu_run(d1), 2, "diff input %d: exit 2 expected: %s", i, g_err);
        cr_assert(strstr(g_err, bad) && strstr(g_err, what[i]), "diff input %d: %s", i, g_err);
        char *d2[] = {FD_BINARY, "diff", bad, good, NULL};
        cr_assert_eq(tu_run(d2), 2);
    }
    /* a missing file */
    char *m[] = {FD_BINARY, "diff", good, "/nonexistent/report.json", NULL};
    cr_assert_eq(tu_run(m), 2);
    cr_assert(strstr(g_err, "/nonexistent/report.json"), "%s", g_err);
    free(full);
    free(v2s);
    free(bms);
    json_decref(v2);
    json_decref(badmetric);
    json_decref(r);
}

/* ---- nothing passes unchecked (issue 10 part 3, issue 9 items 3 and 6) ---- */

/* dir/NAME */
static const char *in(const char *dir, const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static const char *limits_policy = "{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"max_abs\": 4e-3}}}";

/* A report of an interrupted run (complete: false) is refused; --allow-partial gates it and says so. */
Test(gate, partial_report_refused_unless_allowed)
{
    char dir[64];
    tu_dir(dir, sizeof dir);
    json_t *r = tu_report();
    tu_case(r, "c1", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), tu_backend(1e-4, 1e-4, 3, "0000000000000002"));
    json_object_set_new(r, "complete", json_false());
    tu_save(r, in(dir, "report.partial.json"));
    tu_write(in(dir, "p.json"), limits_policy);
    char rp[256], pp[256], jp[256], mp[256];
    snprintf(rp, sizeof rp, "%s", in(dir, "report.partial.json"));
    snprintf(pp, sizeof pp, "%s", in(dir, "p.json"));
    snprintf(jp, sizeof jp, "%s", in(dir, "junit.xml"));
    snprintf(mp, sizeof mp, "%s", in(dir, "gate.md"));
    char *a[] = {FD_BINARY, "gate", rp, "--policy", pp, "--junit", jp, "--markdown", mp, NULL};
    cr_assert_eq(tu_run(a), 2, "a partial report is an input error, not a pass: %s%s", g_out, g_err);
    cr_assert(strstr(g_err, rp) && strstr(g_err, "partial report") && strstr(g_err, "--allow-partial"), "%s", g_err);
    cr_assert_eq(strchr(g_err, '\n'), g_err + strlen(g_err) - 1, "one line: %s", g_err);
    cr_assert(access(jp, F_OK) != 0 && access(mp, F_OK) != 0, "nothing written");
    char *b[] = {FD_BINARY, "gate", rp, "--policy", pp, "--junit", jp, "--markdown", mp, "--allow-partial", NULL};
    cr_assert_eq(tu_run(b), 0, "%s%s", g_out, g_err);
    cr_assert(strstr(g_out, "gate PASS") && strstr(g_out, "partial report"), "the summary line says so: %s", g_out);
    cr_assert(strstr(tu_slurp(jp), "partial report: interrupted run"), "the JUnit says so");
    cr_assert(strstr(tu_slurp(mp), "Partial report"), "gate.md says so");
    json_decref(r);
}

/* A policy naming a backend the report lacks (a typo) is an error naming it. */
Test(gate, unknown_backend_in_policy)
{
    char dir[64], rp[256], pp[256];
    tu_dir(dir, sizeof dir);
    snprintf(rp, sizeof rp, "%s", in(dir, "report.json"));
    snprintf(pp, sizeof pp, "%s", in(dir, "p.json"));
    json_t *r = tu_report();
    tu_case(r, "c1", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), tu_backend(1e-4, 1e-4, 3, "0000000000000002"));
    tu_save(r, rp);
    tu_write(pp, "{\"schema\": \"flashdrift-policy/1\", \"backends\": [\"cpu-flash\", \"cpu-flsh\"],"
                 " \"limits\": {\"fp16\": {\"max_abs\": 4e-3}}}");
    char *a[] = {FD_BINARY, "gate", rp, "--policy", pp, NULL};
    cr_assert_eq(tu_run(a), 2, "%s%s", g_out, g_err);
    cr_assert(strstr(g_err, "policy names backend cpu-flsh, which is not in the report (has: cpu-flash, cpu-standard)"),
              "%s", g_err);
    cr_assert_eq(strchr(g_err, '\n'), g_err + strlen(g_err) - 1, "one line: %s", g_err);
    char *b[] = {FD_BINARY, "gate", rp, "--policy", pp, "--allow-missing-backend", NULL};
    cr_assert_eq(tu_run(b), 0, "the flag gates the backends that are there: %s%s", g_out, g_err);
    /* every name there: no flag needed */
    tu_write(pp, "{\"schema\": \"flashdrift-policy/1\", \"backends\": [\"cpu-standard\"]}");
    cr_assert_eq(tu_run(a), 0, "%s%s", g_out, g_err);
    json_decref(r);
}

/* A policy with a baseline rule needs --baseline, or --no-baseline said out loud. */
Test(gate, baseline_rule_without_baseline)
{
    char dir[64], rp[256], pp[256], jp[256], mp[256];
    tu_dir(dir, sizeof dir);
    snprintf(rp, sizeof rp, "%s", in(dir, "report.json"));
    snprintf(pp, sizeof pp, "%s", in(dir, "p.json"));
    snprintf(jp, sizeof jp, "%s", in(dir, "junit.xml"));
    snprintf(mp, sizeof mp, "%s", in(dir, "gate.md"));
    json_t *r = tu_report();
    tu_case(r, "c1", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), tu_backend(1e-4, 1e-4, 3, "0000000000000002"));
    tu_save(r, rp);
    tu_write(pp, policy_all);
    char *a[] = {FD_BINARY, "gate", rp, "--policy", pp, "--junit", jp, "--markdown", mp, NULL};
    cr_assert_eq(tu_run(a), 2, "the baseline rule is not skipped silently: %s%s", g_out, g_err);
    cr_assert(strstr(g_err, "baseline rule") && strstr(g_err, "--no-baseline"), "%s", g_err);
    cr_assert(access(jp, F_OK) != 0, "nothing written");
    char *b[] = {FD_BINARY, "gate", rp, "--policy", pp, "--junit", jp, "--markdown", mp, "--no-baseline", NULL};
    cr_assert_eq(tu_run(b), 0, "%s%s", g_out, g_err);
    cr_assert(strstr(g_out, "baseline rule not checked"), "%s", g_out);
    cr_assert(strstr(tu_slurp(jp), "<property name=\"baseline_rule\" value=\"not checked (--no-baseline)\"/>"), "JUnit says so");
    cr_assert(strstr(tu_slurp(mp), "Baseline rule not checked"), "gate.md says so");
    char *c[] = {FD_BINARY, "gate", rp, "--policy", pp, "--baseline", rp, "--no-baseline", NULL};
    cr_assert_eq(tu_run(c), 2, "%s", g_err);
    /* with the baseline: checked */
    char *d[] = {FD_BINARY, "gate", rp, "--policy", pp, "--baseline", rp, "--junit", jp, NULL};
    cr_assert_eq(tu_run(d), 0, "%s%s", g_out, g_err);
    cr_assert(strstr(tu_slurp(jp), "<property name=\"baseline_rule\" value=\"checked\"/>"));
    json_decref(r);
}

static json_t *case_in(json_t *r, int i) { return json_array_get(json_object_get(r, "cases"), (size_t)i); }
static json_t *be_in(json_t *r, int i, const char *name)
{
    return json_object_get(json_object_get(case_in(r, i), "backends"), name);
}

/* Absent is not failed, and not passed either: a null (or legacy "nan" on finite outputs)
 * metric is never compared with a limit; a backend none of whose rules were measured fails. */
Test(gate, unmeasured_metrics_are_not_compared_and_not_a_pass)
{
    fd_gate_policy p;
    char err[1024] = "", e2[1024];
    parse_policy("{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"max_abs\": 4e-3, \"lse_max_abs\": 5e-4}}}",
                 &p, 1, err, sizeof err);
    json_t *r = tu_report();
    /* 0: lse null, max_abs measured and fine: PASS, nothing said about the LSE */
    tu_case(r, "lse_null", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), NULL);
    json_object_set_new(be_in(r, 0, "cpu-flash"), "lse_max_abs", json_null());
    /* 1: legacy "nan" (no LSE supplied) on finite outputs: the same */
    tu_case(r, "lse_nan_legacy", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000002"), NULL);
    json_object_set_new(be_in(r, 1, "cpu-flash"), "lse_max_abs", json_string("nan"));
    /* 2: every gated metric null: not judged, FAIL */
    tu_case(r, "all_null", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000003"), NULL);
    json_object_set_new(be_in(r, 2, "cpu-flash"), "lse_max_abs", json_null());
    json_object_set_new(be_in(r, 2, "cpu-flash"), "max_abs", json_null());
    /* 3: a run that could apply no rule (UNJUDGED) fails the gate with its reason */
    tu_case(r, "unjudged", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000004"), NULL);
    json_object_set_new(case_in(r, 3), "verdict", json_string("UNJUDGED"));
    json_object_set_new(case_in(r, 3), "reasons", json_string("no standard output and no reference"));
    /* 4: a measured metric still fails */
    tu_case(r, "lse_bad", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000005"), NULL);
    json_object_set_new(be_in(r, 4, "cpu-flash"), "lse_max_abs", json_real(1e-3));
    cr_assert_eq(fd_report_validate("r.json", r, e2, sizeof e2), 0, "null metrics and UNJUDGED are valid: %s", e2);
    fd_gate_result g;
    cr_assert_eq(fd_gate_eval(&p, r, NULL, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(verdict_of(&g, "lse_null"), FD_PASS);
    cr_assert_eq(verdict_of(&g, "lse_nan_legacy"), FD_PASS);
    cr_assert_eq(verdict_of(&g, "all_null"), FD_FAIL, "no measured rule is not a pass");
    cr_assert_eq(verdict_of(&g, "unjudged"), FD_FAIL);
    cr_assert_eq(verdict_of(&g, "lse_bad"), FD_FAIL);
    for (int k = 0; k < g.nitems; k++) {
        const fd_gate_item *it = &g.items[k];
        cr_assert(!(it->case_idx < 2), "nothing said about an unmeasured metric: %s", it->text);
        if (it->case_idx == 2)
            cr_assert(!strcmp(it->metric, "unjudged") && strstr(it->text, "not measured: max_abs, lse_max_abs"), "%s", it->text);
        if (it->case_idx == 3) cr_assert(strstr(it->text, "no standard output and no reference"), "%s", it->text);
    }
    fd_gate_result_free(&g);
    /* "nan" on a backend with NaN outputs is not "not measured": the case fails */
    json_t *n = tu_report();
    tu_case(n, "nan_out", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000006"), NULL);
    json_object_set_new(be_in(n, 0, "cpu-flash"), "max_abs", json_string("nan"));
    json_object_set_new(be_in(n, 0, "cpu-flash"), "nan", json_integer(2));
    cr_assert_eq(fd_gate_eval(&p, n, NULL, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(verdict_of(&g, "nan_out"), FD_FAIL);
    fd_gate_result_free(&g);
    /* the outputs show "-" for an unmeasured metric, never "nan" */
    char dir[64], rp[256], pp[256], jp[256], mp[256];
    tu_dir(dir, sizeof dir);
    snprintf(rp, sizeof rp, "%s", in(dir, "report.json"));
    snprintf(pp, sizeof pp, "%s", in(dir, "p.json"));
    snprintf(jp, sizeof jp, "%s", in(dir, "junit.xml"));
    snprintf(mp, sizeof mp, "%s", in(dir, "gate.md"));
    tu_save(r, rp);
    tu_write(pp, "{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"max_abs\": 4e-3, \"lse_max_abs\": 5e-4}}}");
    char *a[] = {FD_BINARY, "gate", rp, "--policy", pp, "--junit", jp, "--markdown", mp, NULL};
    cr_assert_eq(tu_run(a), 1, "%s%s", g_out, g_err);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "xmllint --noout --schema %s %s 2>&1", tu_path(TU_DATA, "junit.xsd"), jp);
    cr_assert_eq(system(cmd), 0, "junit.xml must validate");
    const char *x = tu_slurp(jp);
    cr_assert(strstr(x, "lse_max_abs -, output_hash 0000000000000001") && !strstr(x, " nan"), "%s", x);
    const char *md = tu_slurp(mp);
    cr_assert(strstr(md, "| `all_null` | FAIL | cpu-flash | unjudged | - | - |") && !strstr(md, " nan "), "%s", md);
    json_decref(r);
    json_decref(n);
}

/* Roles come from the report ("role"), else from names, never from the backend registry. */
Test(gate, roles_from_the_report)
{
    cr_assert(fd_report_backend_is_flash("mine", json_pack("{s:s}", "role", "flash")));
    cr_assert(!fd_report_backend_is_flash("cpu-flash", json_pack("{s:s}", "role", "standard")));
    json_t *none = json_object();
    cr_assert(fd_report_backend_is_flash("cpu-splitkv", none), "a built-in flash kernel without flash in its name");
    cr_assert(fd_report_backend_is_flash("sdpa", none), "an imported output is flash unless named like a standard one");
    cr_assert(!fd_report_backend_is_flash("cpu-standard", none) && !fd_report_backend_is_flash("math", none) &&
              !fd_report_backend_is_flash("torch_eager", none));
    json_decref(none);
    json_t *r = tu_report();
    tu_case(r, "c", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), NULL);
    json_object_set_new(be_in(r, 0, "cpu-flash"), "role", json_string("kernel"));
    char e2[1024];
    cr_assert_eq(fd_report_validate("r.json", r, e2, sizeof e2), -1);
    cr_assert(strstr(e2, "cases[0].backends.cpu-flash.role"), "%s", e2);
    json_decref(r);
}

/* A check report (imported outputs, backends "import") is gated with the shipped CI policy:
 * imported flash outputs are flash backends, a missing LSE is not judged, and
 * FlashAttention's rule compares with the case's baseline (a standard output the harness
 * computed when none was supplied). */
Test(gate, import_report_with_the_default_policy)
{
    char dir[64], rp[256];
    tu_dir(dir, sizeof dir);
    snprintf(rp, sizeof rp, "%s", in(dir, "report.json"));
    char *a[] = {FD_BINARY, "gate", rp, "--policy", tu_path(TU_SOURCE, "cases/policy-ci.json"), "--no-baseline", NULL};
    for (int style = 0; style < 2; style++) {
        for (int wrong = 0; wrong < 2; wrong++) {
            json_t *r = tu_report();
            json_object_set_new(r, "backends", json_string("import"));
            json_t *c = json_pack("{s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i}, s:s, s:s, s:f, s:{s:i}, s:{}, s:s, s:s}",
                                  "id", "bundle", "shape", "batch", 1, "heads", 2, "kv_heads", 2, "seqlen_q", 64,
                                  "seqlen_k", 64, "head_dim", 32, "dtype", "fp16", "mask", "none", "dropout", 0.0,
                                  "reference", "undecided", 0, "backends", "verdict", wrong ? "FAIL" : "PASS", "reasons", "");
            json_array_append_new(json_object_get(r, "cases"), c);
            /* correct: fp16 rounding; wrong: softmax scale missing (max abs error 3.5) */
            json_t *o = tu_backend(wrong ? 3.5 : 2e-4, wrong ? 0.9 : 3e-4, wrong ? 5e4 : 2, "00000000000000a1");
            json_t *bes = json_object_get(c, "backends");
            if (style == 0) { /* before "role": the name, LSE "nan", one output */
                json_object_set_new(o, "lse_max_abs", json_string("nan"));
                json_object_set_new(bes, "sdpa", o);
            } else { /* roles, null LSE, the computed standard as FlashAttention's baseline */
                json_object_set_new(o, "lse_max_abs", json_null());
                json_object_set_new(o, "role", json_string("flash"));
                json_object_set_new(bes, "flash_sdpa", o);
                json_t *s = tu_backend(2e-4, 3e-4, 2, "00000000000000a2");
                json_object_set_new(s, "role", json_string("standard"));
                json_object_set_new(bes, "cpu-standard", s);
                json_object_set_new(c, "baseline", json_pack("{s:s, s:s}", "backend", "cpu-standard", "origin", "computed"));
            }
            tu_save(r, rp);
            const int rc = tu_run(a);
            cr_assert_eq(rc, wrong ? 1 : 0, "style %d, %s output: exit %d: %s%s", style, wrong ? "wrong" : "correct", rc,
                         g_out, g_err);
            cr_assert(!strstr(g_err, "lse_max_abs"), "a missing LSE is not judged: %s", g_err);
            if (wrong) cr_assert(strstr(g_err, "max_abs 3.5 > 0.004 (fp16 limit)"), "%s", g_err);
            if (wrong && style == 1) cr_assert(strstr(g_err, "FlashAttention rule"), "%s", g_err);
            json_decref(r);
        }
    }
}

/* The summary line, gate.md and the JUnit count the same failures, missing baseline cases
 * included; a failing testcase carries the gate's verdict, not the run's. */
Test(gate, totals_agree_across_outputs)
{
    char dir[64], rp[256], bp[256], pp[256], jp[256], mp[256];
    tu_dir(dir, sizeof dir);
    snprintf(rp, sizeof rp, "%s", in(dir, "report.json"));
    snprintf(bp, sizeof bp, "%s", in(dir, "base.json"));
    snprintf(pp, sizeof pp, "%s", in(dir, "p.json"));
    snprintf(jp, sizeof jp, "%s", in(dir, "junit.xml"));
    snprintf(mp, sizeof mp, "%s", in(dir, "gate.md"));
    json_t *r = tu_report(), *base = tu_report();
    tu_case(r, "pass", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), NULL);
    tu_case(r, "marginal", "fp16", tu_backend(3.5e-3, 1e-4, 3, "0000000000000002"), NULL);
    tu_case(r, "fail", "fp16", tu_backend(5e-3, 1e-4, 3, "0000000000000003"), NULL); /* the run said PASS */
    tu_case(base, "pass", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), NULL);
    tu_case(base, "gone1", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000004"), NULL);
    tu_case(base, "gone2", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000005"), NULL);
    tu_save(r, rp);
    tu_save(base, bp);
    tu_write(pp, "{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"max_abs\": 4e-3}}, \"marginal\": 0.8,"
                 " \"baseline\": {\"metrics\": [\"max_abs\"], \"factor\": 100, \"missing_cases\": \"fail\"}}");
    char *a[] = {FD_BINARY, "gate", rp, "--policy", pp, "--baseline", bp, "--junit", jp, "--markdown", mp, NULL};
    cr_assert_eq(tu_run(a), 1, "%s%s", g_out, g_err);
    const char *want = "5 cases: 1 PASS, 1 MARGINAL, 3 FAIL, 0 UNDECIDED";
    cr_assert(strstr(g_out, want), "summary line: %s", g_out);
    cr_assert(strstr(tu_slurp(mp), want), "gate.md: %s", tu_slurp(mp));
    const char *x = tu_slurp(jp);
    cr_assert(strstr(x, "<testsuites name=\"flashdrift gate: crafted\" tests=\"5\" failures=\"3\" errors=\"0\" skipped=\"0\""),
              "JUnit totals (one gated backend): %s", x);
    const char *fc = strstr(x, "<testcase name=\"fail\"");
    cr_assert(fc);
    const char *so = strstr(fc, "<system-out>");
    cr_assert(so && !strncmp(so, "<system-out>cpu-flash gate FAIL&#10;FAIL: cpu-flash max_abs 0.005 &gt; 0.004", 76),
              "the gate's verdict and items: %.200s", so);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "xmllint --noout --schema %s %s 2>&1", tu_path(TU_DATA, "junit.xsd"), jp);
    cr_assert_eq(system(cmd), 0, "junit.xml must validate");
    /* missing cases ignored: not counted as failures anywhere, skipped in the JUnit */
    tu_write(pp, "{\"schema\": \"flashdrift-policy/1\", \"limits\": {\"fp16\": {\"max_abs\": 4e-3}}, \"marginal\": 0.8,"
                 " \"baseline\": {\"metrics\": [\"max_abs\"], \"factor\": 100, \"missing_cases\": \"ignore\"}}");
    cr_assert_eq(tu_run(a), 1);
    want = "3 cases: 1 PASS, 1 MARGINAL, 1 FAIL, 0 UNDECIDED";
    cr_assert(strstr(g_out, want) && strstr(tu_slurp(mp), want), "%s", g_out);
    cr_assert(strstr(tu_slurp(jp), "tests=\"5\" failures=\"1\" errors=\"0\" skipped=\"2\""), "%s", tu_slurp(jp));
    json_decref(r);
    json_decref(base);
}

/* A filter that selects no case is an error in gate and run, not a PASS. */
Test(gate, no_case_matches_is_an_error)
{
    char dir[64], out[256], pp[256];
    tu_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s", in(dir, "out"));
    snprintf(pp, sizeof pp, "%s", in(dir, "p.json"));
    tu_write(pp, limits_policy);
    char *a[] = {FD_BINARY, "gate", tu_path(TU_SOURCE, "cases/smoke.json"), "--policy", pp, "--backend", "cpu", "--out", out,
                 "--filter", "no-such-case", "--quiet", NULL};
    cr_assert_eq(tu_run(a), 2, "%s%s", g_out, g_err);
    cr_assert(strstr(g_err, "no case matches --filter no-such-case"), "%s", g_err);
    cr_assert(!strstr(g_out, "PASS"), "%s", g_out);
    char *b[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/smoke.json"), "--backend", "cpu", "--out", out,
                 "--filter", "no-such-case", "--quiet", NULL};
    cr_assert_eq(tu_run(b), 2, "%s%s", g_out, g_err);
    cr_assert(strstr(g_err, "no case matches"), "%s", g_err);
    cr_assert(access(in(out, "report.json"), F_OK) != 0, "no report for nothing");
    /* a report without cases */
    json_t *r = tu_report();
    tu_save(r, in(dir, "empty.json"));
    char *c[] = {FD_BINARY, "gate", (char *)in(dir, "empty.json"), "--policy", pp, NULL};
    cr_assert_eq(tu_run(c), 2, "%s%s", g_out, g_err);
    cr_assert(strstr(g_err, "no case matches"), "%s", g_err);
    json_decref(r);
}

/* --junit / --markdown paths that cannot be written are refused before the run starts. */
Test(gate, output_paths_checked_before_work)
{
    char dir[64], out[256], pp[256], file[256], jp[256], rp[256];
    tu_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s", in(dir, "out"));
    snprintf(pp, sizeof pp, "%s", in(dir, "p.json"));
    snprintf(file, sizeof file, "%s", in(dir, "a-file"));
    snprintf(jp, sizeof jp, "%s/sub/junit.xml", file); /* under a regular file: cannot exist */
    tu_write(pp, limits_policy);
    tu_write(file, "x");
    char *a[] = {FD_BINARY, "gate", tu_path(TU_SOURCE, "cases/smoke.json"), "--policy", pp, "--backend", "cpu", "--out", out,
                 "--junit", jp, "--quiet", NULL};
    cr_assert_eq(tu_run(a), 2, "%s%s", g_out, g_err);
    cr_assert(strstr(g_err, "--junit") && strstr(g_err, jp), "%s", g_err);
    cr_assert(access(out, F_OK) != 0, "refused before any work: %s exists", out);
    char *b[] = {FD_BINARY, "gate", tu_path(TU_SOURCE, "cases/smoke.json"), "--policy", pp, "--backend", "cpu", "--out", out,
                 "--markdown", dir, "--quiet", NULL};
    cr_assert_eq(tu_run(b), 2, "a directory as --markdown: %s%s", g_out, g_err);
    cr_assert(strstr(g_err, "is a directory"), "%s", g_err);
    cr_assert(access(out, F_OK) != 0);
    /* a missing folder is made */
    json_t *r = tu_report();
    tu_case(r, "c1", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), NULL);
    snprintf(rp, sizeof rp, "%s", in(dir, "report.json"));
    tu_save(r, rp);
    snprintf(jp, sizeof jp, "%s/new/deeper/junit.xml", dir);
    char *c[] = {FD_BINARY, "gate", rp, "--policy", pp, "--junit", jp, NULL};
    cr_assert_eq(tu_run(c), 0, "%s%s", g_out, g_err);
    cr_assert_eq(access(jp, F_OK), 0);
    json_decref(r);
}

/* After a successful --resume no report.partial.json of the interrupted run is left. */
Test(gate, resume_leaves_no_stale_partial_report)
{
    char dir[64], out[256];
    tu_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s", in(dir, "out"));
    cr_assert_eq(mkdir(out, 0755), 0);
    tu_write(in(out, "report.partial.json"), "{\"stale\": true}");
    char *a[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/smoke.json"), "--backend", "cpu", "--out", out, "--filter",
                 "b1h2k1-q64k64-d32-fp16-none-p0-normal-s1", "--resume", "--quiet", NULL};
    cr_assert_eq(tu_run(a), 0, "%s%s", g_out, g_err);
    cr_assert_eq(access(in(out, "report.json"), F_OK), 0);
    cr_assert(access(in(out, "report.partial.json"), F_OK) != 0, "stale report.partial.json left beside report.json");
}

/* End to end: `check` on a bundle with one output and no LSE (as PyTorch SDPA dumps it),
 * then `gate` with the shipped CI policy: the correctly rounded output passes, the one
 * computed without the softmax scale fails on its numbers, never on the missing LSE. */
Test(gate, check_bundle_then_gate_with_policy_ci)
{
    char dir[64];
    tu_dir(dir, sizeof dir);
    for (int wrong = 0; wrong < 2; wrong++) {
        fd_bundle b;
        memset(&b, 0, sizeof b);
        fd_problem *p = &b.prob;
        p->batch = 1; p->heads = 2; p->kv_heads = 2; p->seqlen_q = 16; p->seqlen_k = 24; p->head_dim = 8;
        p->dtype = FD_DT_FP16;
        p->mask = FD_MASK_NONE;
        p->softmax_scale = (float)(1.0 / sqrt(8.0));
        b.q = malloc(sizeof(float) * fd_q_numel(p));
        b.k = malloc(sizeof(float) * fd_kv_numel(p));
        b.v = malloc(sizeof(float) * fd_kv_numel(p));
        uint64_t x = 0x9e3779b97f4a7c15ull;
        float *const in3[3] = {b.q, b.k, b.v};
        const size_t n3[3] = {fd_q_numel(p), fd_kv_numel(p), fd_kv_numel(p)};
        for (int t = 0; t < 3; t++)
            for (size_t i = 0; i < n3[t]; i++) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                in3[t][i] = fd_round_to_dtype((float)((double)(x >> 11) * 0x1p-53 * 4.0 - 2.0), FD_DT_FP16);
            }
        b.nout = 1;
        fd_import_output *io = &b.out[0];
        snprintf(io->name, sizeof io->name, "sdpa");
        io->be.name = io->name;
        io->be.family = "import";
        io->be.role = FD_ROLE_FLASH;
        io->o = malloc(sizeof(float) * fd_q_numel(p));
        fd_problem made = *p;
        if (wrong) made.softmax_scale = 1.0f; /* the scale-missing bug */
        for (int h = 0; h < p->heads; h++)
            for (int i = 0; i < p->seqlen_q; i++) {
                double ro[8];
                char err[256];
                cr_assert_eq(fd_ref_row(&made, b.q, b.k, b.v, 0, h, i, NULL, ro, NULL, err, sizeof err), 0, "%s", err);
                for (int d = 0; d < 8; d++) io->o[fd_q_index(p, 0, i, h, d)] = fd_round_to_dtype((float)ro[d], FD_DT_FP16);
            }
        char bp[256], out[256], rp[300], err[1024];
        snprintf(bp, sizeof bp, "%s/bundle%d", dir, wrong);
        snprintf(out, sizeof out, "%s/out%d", dir, wrong);
        snprintf(rp, sizeof rp, "%s/report.json", out);
        cr_assert_eq(fd_bundle_write(&b, bp, 0, 0, err, sizeof err), 0, "%s", err);
        fd_bundle_free(&b);
        char *c[] = {FD_BINARY, "check", "--tensors", bp, "--out", out, "--quiet", NULL};
        tu_run(c);
        cr_assert_eq(access(rp, F_OK), 0, "check wrote no report: %s", g_err);
        char *g[] = {FD_BINARY, "gate", rp, "--policy", tu_path(TU_SOURCE, "cases/policy-ci.json"), "--no-baseline", NULL};
        const int rc = tu_run(g);
        cr_assert_eq(rc, wrong, "%s output: gate exit %d: %s%s", wrong ? "scale-missing" : "correct", rc, g_out, g_err);
        cr_assert(!strstr(g_err, "lse_max_abs"), "a missing LSE is not judged: %s", g_err);
        if (wrong) cr_assert(strstr(g_err, "FAIL bundle1: sdpa max_abs"), "%s", g_err);
    }
}

/* Duplicate case ids are found by sorting (a report may hold 100,000 cases): the first case
 * repeating an earlier id is named, with the earlier one. */
Test(report_read, duplicate_ids_named)
{
    json_t *r = tu_report();
    const char *ids[] = {"c", "a", "b", "d", "a", "b"};
    for (int i = 0; i < 6; i++) tu_case(r, ids[i], "fp16", tu_backend(1e-3, 1e-4, 2, "00000000000000a1"), NULL);
    char err[512];
    cr_assert_eq(fd_report_validate("r.json", r, err, sizeof err), -1);
    cr_expect(strstr(err, "cases[4]: duplicate case id \"a\" (also cases[1])") != NULL, "%s", err);
    json_array_remove(json_object_get(r, "cases"), 4);
    cr_assert_eq(fd_report_validate("r.json", r, err, sizeof err), -1);
    cr_expect(strstr(err, "cases[4]: duplicate case id \"b\" (also cases[2])") != NULL, "%s", err);
    json_array_remove(json_object_get(r, "cases"), 4);
    cr_expect_eq(fd_report_validate("r.json", r, err, sizeof err), 0, "%s", err);
    json_decref(r);
}
