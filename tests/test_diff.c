/* test_diff.c: `flashdrift diff` on crafted pairs (moved metrics, new failures, fixed
 * cases, cases on one side, identical outputs, severity order, the settings that changed
 * between the runs in text, Markdown, JSON and HTML), `baseline update`
 * (atomic, refuses to overwrite without --force) and `html` (self-contained). */
#include <sys/stat.h>

#include "fd_diff.h"
#include "fd_diff_out.h"
#include "fd_test_util.h"

static void pair(json_t **old, json_t **nw)
{
    *old = tu_report();
    *nw = tu_report();
    tu_case(*old, "same", "fp16", tu_backend(1e-4, 1e-4, 3, "00000000000000aa"), NULL);
    tu_case(*nw, "same", "fp16", tu_backend(1e-4, 1e-4, 3, "00000000000000aa"), NULL);
    tu_case(*old, "worse", "fp16", tu_backend(1e-4, 1e-4, 3, "00000000000000b0"), NULL);
    tu_case(*nw, "worse", "fp16", tu_backend(2e-4, 1e-4, 5, "00000000000000b1"), NULL);
    tu_case(*old, "better", "fp16", tu_backend(2e-4, 1e-4, 3, "00000000000000c0"), NULL);
    tu_case(*nw, "better", "fp16", tu_backend(1e-4, 1e-4, 3, "00000000000000c1"), NULL);
    json_t *f = tu_case(*nw, "broke", "fp16", tu_backend(9e-3, 1e-4, 3, "00000000000000d1"), NULL);
    json_object_set_new(f, "verdict", json_string("FAIL"));
    tu_case(*old, "broke", "fp16", tu_backend(1e-4, 1e-4, 3, "00000000000000d0"), NULL);
    json_t *x = tu_case(*old, "fixed", "fp16", tu_backend(9e-3, 1e-4, 3, "00000000000000e0"), NULL);
    json_object_set_new(x, "verdict", json_string("FAIL"));
    tu_case(*nw, "fixed", "fp16", tu_backend(1e-4, 1e-4, 3, "00000000000000e1"), NULL);
    tu_case(*old, "dropped", "fp16", tu_backend(1e-4, 1e-4, 3, "00000000000000f0"), NULL);
    tu_case(*nw, "added", "fp16", tu_backend(1e-4, 1e-4, 3, "00000000000000f1"), NULL);
}

static const json_t *find(const json_t *d, const char *id, int *pos)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(d, "cases"), i, c)
        if (!strcmp(json_string_value(json_object_get(c, "id")), id)) {
            *pos = (int)i;
            return c;
        }
    cr_assert_fail("diff lacks case %s", id);
    return NULL;
}

Test(diff, classifies_and_sorts_by_severity)
{
    json_t *old, *nw;
    pair(&old, &nw);
    json_t *d = fd_diff_reports(old, "old.json", nw, "new.json");
    cr_assert(d);
    static const struct { const char *id, *status; } want[] = {
        {"same", "identical"}, {"worse", "worse"}, {"better", "better"}, {"broke", "new_failure"},
        {"fixed", "fixed"}, {"dropped", "only_old"}, {"added", "only_new"}};
    int pos[7];
    for (int i = 0; i < 7; i++) {
        const json_t *c = find(d, want[i].id, &pos[i]);
        cr_assert_str_eq(json_string_value(json_object_get(c, "status")), want[i].status, "case %s", want[i].id);
    }
    cr_assert(pos[3] < pos[1] && pos[1] < pos[5] && pos[5] < pos[6] && pos[6] < pos[4] && pos[4] < pos[2] && pos[2] < pos[0],
              "order: new_failure, worse, only_old, only_new, fixed, better, identical");
    int p;
    const json_t *w = json_object_get(json_object_get(json_object_get(find(d, "worse", &p), "backends"), "cpu-flash"), "metrics");
    cr_assert_float_eq(json_real_value(json_object_get(json_object_get(w, "max_abs"), "rel")), 1.0, 1e-12, "max_abs doubled: +100%%");
    cr_assert_float_eq(json_real_value(json_object_get(json_object_get(w, "p99_ulp"), "ulps")), 2.0, 1e-12, "p99 +2 ulps");
    cr_assert_null(json_object_get(w, "rel_l2"), "unchanged metrics are not listed");
    cr_assert(json_is_true(json_object_get(find(d, "same", &p), "identical")), "equal hashes: bitwise identical");
    cr_assert(fd_diff_has_regression(d));
    json_decref(d);
    json_decref(old);
    json_decref(nw);
}

Test(diff, cli_outputs_and_exit_codes)
{
    char dir[64], op[128], np[128], mp[128], jp[128];
    tu_dir(dir, sizeof dir);
    snprintf(op, sizeof op, "%s/old.json", dir);
    snprintf(np, sizeof np, "%s/new.json", dir);
    snprintf(mp, sizeof mp, "%s/diff.md", dir);
    snprintf(jp, sizeof jp, "%s/diff.json", dir);
    json_t *old, *nw;
    pair(&old, &nw);
    tu_save(old, op);
    tu_save(nw, np);
    char *a[] = {FD_BINARY, "diff", op, np, "--markdown", mp, "--json", jp, NULL};
    cr_assert_eq(tu_run(a), 0, "diff reports, exit 0 without --fail-on-regression: %s", g_err);
    cr_assert(strstr(g_out, "new_failure broke [PASS -> FAIL]"), "%s", g_out);
    cr_assert(strstr(g_out, "max_abs 0.0001 -> 0.0002 (+100.0%)"), "%s", g_out);
    cr_assert(strstr(g_out, "p99_ulp 3 -> 5 (+66.7%, +2 ulp)"), "%s", g_out);
    cr_assert(strstr(tu_slurp(mp), "| new_failure | `broke` | PASS → FAIL | cpu-flash |"), "%s", tu_slurp(mp));
    json_error_t je;
    json_t *dj = json_load_file(jp, 0, &je);
    cr_assert(dj, "%s", je.text);
    cr_assert_str_eq(json_string_value(json_object_get(dj, "schema")), "flashdrift-diff/1");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(dj, "summary"), "identical")), 1);
    json_decref(dj);
    char *b[] = {FD_BINARY, "diff", op, np, "--fail-on-regression", NULL};
    cr_assert_eq(tu_run(b), 1);
    char *c[] = {FD_BINARY, "diff", op, op, "--fail-on-regression", NULL};
    cr_assert_eq(tu_run(c), 0, "a report against itself: no regression");
    cr_assert(strstr(g_out, "6 identical"), "%s", g_out);
    json_decref(old);
    json_decref(nw);
}

/* Two runs of the same cases with other settings: the kernel's tiles and order, a policy
 * limit, the GPU, the host, the commit and the version. The host name carries markup. */
static void settings_pair(json_t **old, json_t **nw)
{
    pair(old, nw);
    json_object_set_new(*old, "flash_config", json_pack("{s:i, s:i, s:s, s:s, s:s, s:b, s:s, s:i}", "br", 64, "bc",
                                                        64, "qk_order", "seq", "pv_order", "seq", "exp2", "libm",
                                                        "p_fp32", 1, "rowsum", "fa2", "splits", 1));
    json_t *fc = json_deep_copy(json_object_get(*old, "flash_config"));
    json_object_set_new(fc, "br", json_integer(128));
    json_object_set_new(fc, "qk_order", json_string("tc16"));
    json_object_set_new(*nw, "flash_config", fc);
    json_object_set_new(*old, "policy", json_pack("{s:f, s:{s:f}}", "fa_ratio", 2.0, "max_ulp", "fp16", 0.0));
    json_object_set_new(*nw, "policy", json_pack("{s:f, s:{s:f}}", "fa_ratio", 2.0, "max_ulp", "fp16", 4.0));
    json_t *m = json_object_get(*nw, "machine");
    json_object_set_new(m, "gpu", json_string("NVIDIA H200"));
    json_object_set_new(m, "hostname", json_string("gpu<b>\"box"));
    json_object_set_new(*nw, "git_commit", json_string("def"));
    json_object_set_new(*nw, "version", json_string("0.2.0"));
}

static const json_t *change(const json_t *d, const char *what)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(d, "changes"), i, c)
        if (!strcmp(json_string_value(json_object_get(c, "what")), what)) return c;
    return NULL;
}

Test(diff, names_what_changed_between_the_runs)
{
    json_t *old, *nw;
    settings_pair(&old, &nw);
    json_t *d = fd_diff_reports(old, "old.json", nw, "new.json");
    cr_assert(d);
    const json_t *br = change(d, "flash_config.br");
    cr_assert(br, "flash_config.br moved 64 -> 128");
    cr_assert_eq(json_integer_value(json_object_get(br, "old")), 64);
    cr_assert_eq(json_integer_value(json_object_get(br, "new")), 128);
    cr_assert_str_eq(json_string_value(json_object_get(change(d, "flash_config.qk_order"), "new")), "tc16");
    cr_assert_null(change(d, "flash_config.bc"), "unchanged knobs are not listed");
    cr_assert(change(d, "policy.max_ulp.fp16"), "a nested policy limit is named exactly");
    cr_assert_null(change(d, "policy.fa_ratio"));
    const json_t *g = change(d, "machine.gpu");
    cr_assert(g && json_is_null(json_object_get(g, "old")), "CPU run (gpu null) -> H200");
    cr_assert_str_eq(json_string_value(json_object_get(g, "new")), "NVIDIA H200");
    cr_assert(change(d, "machine.hostname") && change(d, "git_commit") && change(d, "version"));
    cr_assert_null(change(d, "case_file.name"), "same case file");
    cr_assert_eq(json_array_size(json_object_get(d, "changes")), 7, "br, qk_order, max_ulp.fp16, version, commit, host, gpu");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(d, "old"), "path")), "old.json");
    json_decref(d);
    d = fd_diff_reports(old, "a.json", old, "b.json");
    cr_assert_eq(json_array_size(json_object_get(d, "changes")), 0, "a report against itself: no setting changed");
    json_decref(d);
    /* a key one report lacks (an older report without flash_config) is shown as absent */
    json_object_del(old, "flash_config");
    d = fd_diff_reports(old, "old.json", nw, "new.json");
    char buf[64];
    fd_diff_value_str(change(d, "flash_config.splits"), "old", buf, sizeof buf);
    cr_assert_str_eq(buf, "absent");
    fd_diff_value_str(change(d, "flash_config.splits"), "new", buf, sizeof buf);
    cr_assert_str_eq(buf, "1");
    json_decref(d);
    json_decref(old);
    json_decref(nw);
}

/* A stand-in gnuplot that keeps a copy of the program it was given, then runs gnuplot. */
static const char *gp_spy = "#!/bin/sh\ncp plots.gp \"$FD_GP_COPY\"\nexec gnuplot \"$@\"\n";

Test(diff, text_markdown_json_and_html_name_both_reports_and_the_changed_settings)
{
    char dir[64], op[128], np[128], mp[128], jp[128], hp[128], spy[128], gpc[128];
    tu_dir(dir, sizeof dir);
    snprintf(op, sizeof op, "%s/old.json", dir);
    snprintf(np, sizeof np, "%s/new.json", dir);
    snprintf(mp, sizeof mp, "%s/diff.md", dir);
    snprintf(jp, sizeof jp, "%s/diff.json", dir);
    snprintf(hp, sizeof hp, "%s/diff.html", dir);
    json_t *old, *nw;
    settings_pair(&old, &nw);
    tu_save(old, op);
    tu_save(nw, np);
    char *a[] = {FD_BINARY, "diff", op, np, "--markdown", mp, "--json", jp, NULL};
    cr_assert_eq(tu_run(a), 0, "%s", g_err);
    char want[256];
    snprintf(want, sizeof want, "old: %s: flashdrift 0.1.0 (abc), host ci, GPU none", op);
    cr_assert(strstr(g_out, want), "the OLD report is named: %s", g_out);
    snprintf(want, sizeof want, "new: %s: flashdrift 0.2.0 (def), host gpu<b>\"box, GPU NVIDIA H200", np);
    cr_assert(strstr(g_out, want), "%s", g_out);
    cr_assert(strstr(g_out, "    flash_config.br: 64 -> 128\n"), "%s", g_out);
    cr_assert(strstr(g_out, "    flash_config.qk_order: seq -> tc16\n"), "%s", g_out);
    cr_assert(strstr(g_out, "    machine.gpu: null -> NVIDIA H200\n"), "%s", g_out);
    cr_assert(strstr(g_out, "    policy.max_ulp.fp16: 0 -> 4\n"), "%s", g_out);
    const char *md = tu_slurp(mp);
    snprintf(want, sizeof want, "| old | `%s` | 0.1.0 | abc | ci | none |", op);
    cr_assert(strstr(md, want), "%s", md);
    cr_assert(strstr(md, "| `flash_config.br` | 64 | 128 |"), "%s", md);
    cr_assert(strstr(md, "| `machine.gpu` | null | NVIDIA H200 |"), "%s", md);
    json_error_t je;
    json_t *dj = json_load_file(jp, 0, &je);
    cr_assert(dj, "%s", je.text);
    cr_assert_eq(json_integer_value(json_object_get(change(dj, "flash_config.br"), "new")), 128, "--json has the changes");
    json_decref(dj);
    char *same[] = {FD_BINARY, "diff", op, op, "--markdown", mp, NULL};
    cr_assert_eq(tu_run(same), 0, "%s", g_err);
    cr_assert(strstr(g_out, "same flash_config, policy, case file, backends, version, commit, machine and GPU in both runs"),
              "%s", g_out);
    cr_assert(strstr(tu_slurp(mp), "Same flash_config, policy,"), "%s", tu_slurp(mp));
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) cr_skip_test("gnuplot not installed: the HTML part is skipped");
    snprintf(spy, sizeof spy, "%s/gnuplot-spy", dir);
    snprintf(gpc, sizeof gpc, "%s/plots.gp.copy", dir);
    tu_write(spy, gp_spy);
    cr_assert_eq(chmod(spy, 0755), 0);
    setenv("FD_GNUPLOT", spy, 1);
    setenv("FD_GP_COPY", gpc, 1);
    char *h[] = {FD_BINARY, "diff", op, np, "--html", hp, NULL};
    cr_assert_eq(tu_run(h), 0, "%s", g_err);
    const char *html = tu_slurp(hp);
    cr_assert(html, "diff --html wrote %s", hp);
    snprintf(want, sizeof want, "<tr><td>old</td><td>%s</td><td>0.1.0</td><td>abc</td><td>ci</td><td>none</td>", op);
    cr_assert(strstr(html, want), "the OLD report is named in the HTML");
    cr_assert(strstr(html, "<tr><td>flash_config.br</td><td>64</td><td>128</td></tr>"), "the changed knob in the HTML");
    cr_assert(strstr(html, "<td>gpu&lt;b&gt;&quot;box</td>") && !strstr(html, "gpu<b>"), "file text is escaped in the HTML");
    const char *gp = tu_slurp(gpc);
    cr_assert(gp && strstr(gp, "set terminal"), "the spy saw the gnuplot program");
    cr_assert(!strstr(gp, "gpu<b>") && !strstr(gp, "tc16") && !strstr(gp, "old.json"),
              "nothing of the run settings reaches the gnuplot program");
    json_decref(old);
    json_decref(nw);
}

Test(baseline, update_is_explicit_and_never_silent)
{
    char dir[64], rp[128], bd[128], bp[160];
    tu_dir(dir, sizeof dir);
    snprintf(rp, sizeof rp, "%s/report.json", dir);
    snprintf(bd, sizeof bd, "%s/baselines", dir);
    snprintf(bp, sizeof bp, "%s/baselines/ci-cpu.json", dir);
    json_t *r = tu_report();
    tu_case(r, "c1", "fp16", tu_backend(1e-4, 1e-4, 3, "0000000000000001"), NULL);
    tu_save(r, rp);
    char *a[] = {FD_BINARY, "baseline", "update", rp, "--name", "ci-cpu", "--dir", bd, NULL};
    cr_assert_eq(tu_run(a), 0, "%s", g_err);
    json_error_t je;
    json_t *b = json_load_file(bp, 0, &je);
    cr_assert(b, "%s", je.text);
    const json_t *meta = json_object_get(b, "baseline");
    cr_assert_str_eq(json_string_value(json_object_get(meta, "name")), "ci-cpu");
    cr_assert_str_eq(json_string_value(json_object_get(meta, "git_commit")), "abc");
    cr_assert_str_eq(json_string_value(json_object_get(meta, "hostname")), "ci");
    json_decref(b);
    tu_write(bp, "{\"sentinel\": 1}");
    cr_assert_eq(tu_run(a), 2, "refuses to overwrite");
    cr_assert(strstr(g_err, "--force"), "%s", g_err);
    cr_assert_str_eq(tu_slurp(bp), "{\"sentinel\": 1}");
    char *f[] = {FD_BINARY, "baseline", "update", rp, "--name", "ci-cpu", "--dir", bd, "--force", NULL};
    cr_assert_eq(tu_run(f), 0, "%s", g_err);
    cr_assert(strstr(tu_slurp(bp), "\"schema_version\""));
    char *n[] = {FD_BINARY, "baseline", "update", rp, "--name", "../evil", "--dir", bd, NULL};
    cr_assert_eq(tu_run(n), 2);
    json_object_set_new(r, "complete", json_false());
    tu_save(r, rp);
    char *p[] = {FD_BINARY, "baseline", "update", rp, "--name", "partial", "--dir", bd, NULL};
    cr_assert_eq(tu_run(p), 2, "an incomplete run is no baseline");
    json_decref(r);
}
