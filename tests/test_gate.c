/* test_gate.c: policy files (strict parsing) and the gate (each rule passes and fails
 * where it should) on crafted reports; JUnit XML validated against tests/data/junit.xsd
 * with xmllint; malformed inputs to gate and diff exit 2 naming the file. */
#include <math.h>

#include "fd_gate.h"
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
    cr_assert(p.base_on && p.base_metric[FD_GM_MAX_ABS] && p.base_metric[FD_GM_P99_ULP] && !p.base_metric[FD_GM_REL_L2]);
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
    cr_assert(strstr(g_out, "FAIL bad-case: cpu-flash max_abs 0.005 > 0.004 (fp16 limit)"), "one line naming metric, value, limit: %s", g_out);
    cr_assert(!strstr(g_out, "FAIL good"), "%s", g_out);
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
