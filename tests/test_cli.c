/* test_cli.c: the flashdrift command as a user meets it: exit codes, reports, bad input
 * that overwrites nothing, an interrupted run that keeps its finished cases. */
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include "fd_test_util.h"

static const char *tiny =
    "{\"schema\": \"flashdrift-cases/1\", \"name\": \"tiny\", \"rows_per_head\": 8,\n"
    " \"sweeps\": [{\"heads\": 2, \"kv_heads\": 1, \"seqlen\": [[24, 40]], \"head_dim\": 16,\n"
    "   \"dtype\": [\"fp16\", \"bf16\"], \"mask\": [\"none\", \"causal_br\"], \"dropout\": [0, 0.17], \"seed\": 3}]}\n";

Test(cli, help_version_and_usage_errors)
{
    char *a1[] = {FD_BINARY, "--help", NULL};
    cr_assert_eq(tu_run(a1), 0);
    char *a2[] = {FD_BINARY, "--version", NULL};
    cr_assert_eq(tu_run(a2), 0);
    char *a3[] = {FD_BINARY, "frobnicate", NULL};
    cr_assert_eq(tu_run(a3), 2);
    cr_assert(strstr(g_err, "unknown command"), "%s", g_err);
    char *a4[] = {FD_BINARY, "run", NULL};
    cr_assert_eq(tu_run(a4), 2);
    char *a5[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/smoke.json"), "--jobs", "0", NULL};
    cr_assert_eq(tu_run(a5), 2);
    cr_assert(strstr(g_err, "--jobs"), "%s", g_err);
    char *a6[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/smoke.json"), "--backend", "tpu", NULL};
    cr_assert_eq(tu_run(a6), 2);
    cr_assert(strstr(g_err, "unknown backend \"tpu\""), "%s", g_err);
    char *a7[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/smoke.json"), "--explain", "bogus", NULL};
    cr_assert_eq(tu_run(a7), 2);
    cr_assert(strstr(g_err, "--explain expects fail, all or none"), "%s", g_err);
    char *a8[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/smoke.json"), "--explain", NULL};
    cr_assert_eq(tu_run(a8), 2, "--explain needs a value");
}

Test(cli, run_writes_a_complete_report)
{
    char dir[64], cf[128], out[128], rp[160];
    tu_dir(dir, sizeof dir);
    snprintf(cf, sizeof cf, "%s/tiny.json", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    tu_write(cf, tiny);
    char *a[] = {FD_BINARY, "run", cf, "--out", out, "--backend", "cpu", "--jobs", "2", NULL};
    int rc = tu_run(a);
    cr_assert_eq(rc, 0, "tiny sweep should pass, got exit %d: %s", rc, g_err);
    snprintf(rp, sizeof rp, "%s/report.json", out);
    json_error_t je;
    json_t *r = json_load_file(rp, 0, &je);
    cr_assert(r, "report.json unreadable: %s", je.text);
    cr_assert_eq(json_integer_value(json_object_get(r, "schema_version")), 1);
    cr_assert(json_is_true(json_object_get(r, "complete")));
    json_t *cases = json_object_get(r, "cases");
    cr_assert_eq(json_array_size(cases), 8);
    json_t *c0 = json_array_get(cases, 0);
    cr_assert(json_object_get(json_object_get(c0, "backends"), "cpu-flash"));
    cr_assert(json_object_get(json_object_get(c0, "backends"), "cpu-standard"));
    json_t *rows = json_object_get(c0, "rows_checked");
    size_t nr = json_array_size(rows);
    /* 24 query rows: far under the default reference budget, so every row is checked */
    cr_assert_eq(nr, 24, "24 query rows, every one checked under the budget: got %zu", nr);
    json_t *ref = json_object_get(c0, "reference");
    cr_assert_str_eq(json_string_value(json_object_get(ref, "rows")), "all");
    const char *tier = json_string_value(json_object_get(ref, "tier"));
    cr_assert(tier && (!strcmp(tier, "cpu") || !strcmp(tier, "gpu")), "auto: a binary64 tier, got %s", tier);
    cr_assert_eq(json_integer_value(json_object_get(ref, "mpfr_calls")) +
                     json_integer_value(json_object_get(ref, "mpfr_calls_avoided")),
                 json_integer_value(json_object_get(json_object_get(c0, "shape"), "batch")) *
                     json_integer_value(json_object_get(json_object_get(c0, "shape"), "heads")) * 24);
    cr_assert_eq(json_integer_value(json_array_get(rows, 0)), 0, "first row always checked");
    cr_assert_eq(json_integer_value(json_array_get(rows, nr - 1)), 23, "last row always checked");
    json_t *c1 = json_array_get(cases, 1); /* p = 0.17 */
    cr_assert(json_object_get(c1, "dropout_stats"), "dropout cases carry keep-rate statistics");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(c1, "dropout_stats"), "threshold")), 211);
    json_decref(r);
    snprintf(rp, sizeof rp, "%s/summary.md", out);
    char *md = tu_slurp(rp);
    cr_assert(md && strstr(md, "| case | verdict |"), "summary.md has the table");
}

Test(cli, reference_options_choose_tier_and_rows)
{
    char dir[64], cf[128], out[128], rp[160];
    tu_dir(dir, sizeof dir);
    snprintf(cf, sizeof cf, "%s/tiny.json", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    tu_write(cf, tiny);
    char *a[] = {FD_BINARY, "run", cf, "--out", out, "--backend", "cpu", "--jobs", "2", "--reference", "mpfr",
                 "--reference-budget", "0", "--quiet", NULL};
    int rc = tu_run(a);
    cr_assert_eq(rc, 0, "exit %d: %s", rc, g_err);
    snprintf(rp, sizeof rp, "%s/report.json", out);
    json_error_t je;
    json_t *r = json_load_file(rp, 0, &je);
    cr_assert(r, "report.json unreadable: %s", je.text);
    json_t *c0 = json_array_get(json_object_get(r, "cases"), 0);
    const size_t nr = json_array_size(json_object_get(c0, "rows_checked"));
    cr_assert(nr >= 2 && nr <= 8, "budget 0: 24 query rows, 8 sampled per head: got %zu", nr);
    json_t *ref = json_object_get(c0, "reference");
    cr_assert_str_eq(json_string_value(json_object_get(ref, "rows")), "sampled");
    cr_assert_str_eq(json_string_value(json_object_get(ref, "tier")), "mpfr");
    cr_assert_eq(json_integer_value(json_object_get(ref, "mpfr_calls_avoided")), 0);
    json_decref(r);
    char *b1[] = {FD_BINARY, "run", cf, "--out", out, "--reference", "exact", NULL};
    cr_assert_eq(tu_run(b1), 2);
    cr_assert(strstr(g_err, "--reference expects auto, cpu, gpu or mpfr"), "%s", g_err);
    char *b2[] = {FD_BINARY, "run", cf, "--out", out, "--reference-budget", "-1", NULL};
    cr_assert_eq(tu_run(b2), 2);
    cr_assert(strstr(g_err, "--reference-budget"), "%s", g_err);
}

Test(cli, bad_input_overwrites_nothing)
{
    char dir[64], cf[128], out[128], rp[160];
    tu_dir(dir, sizeof dir);
    snprintf(cf, sizeof cf, "%s/bad.json", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    mkdir(out, 0755);
    snprintf(rp, sizeof rp, "%s/report.json", out);
    tu_write(rp, "SENTINEL");
    tu_write(cf, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"b\", \"sweeps\": [{\"seqlen\": 8, \"head_dim\": 8, \"dtype\": \"fp8\"}]}");
    char *a[] = {FD_BINARY, "run", cf, "--out", out, NULL};
    cr_assert_eq(tu_run(a), 2);
    cr_assert(strstr(g_err, cf) && strstr(g_err, "sweeps[0].dtype"), "message names file and field: %s", g_err);
    cr_assert_str_eq(tu_slurp(rp), "SENTINEL");
    /* an output path that is a file */
    char *b[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/smoke.json"), "--out", rp, NULL};
    cr_assert_eq(tu_run(b), 2);
    cr_assert(strstr(g_err, "--out"), "%s", g_err);
    cr_assert_str_eq(tu_slurp(rp), "SENTINEL");
}

Test(cli, interrupt_keeps_finished_cases_and_the_old_report)
{
    char dir[64], out[128], rp[160], jp[160], pp[160];
    tu_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out", dir);
    mkdir(out, 0755);
    snprintf(rp, sizeof rp, "%s/report.json", out);
    snprintf(jp, sizeof jp, "%s/cases.partial.jsonl", out);
    snprintf(pp, sizeof pp, "%s/report.partial.json", out);
    tu_write(rp, "OLD REPORT");
    char *a[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/default.json"), "--out", out, "--backend", "cpu", "--jobs", "1", NULL};
    char ef[64];
    snprintf(ef, sizeof ef, "/tmp/fd_cli_int.%d.txt", (int)getpid());
    pid_t pid = tu_spawn(a, NULL, ef);
    /* wait for the first finished case in the journal, then interrupt */
    struct stat st;
    for (int t = 0; t < 1200; t++) {
        if (stat(jp, &st) == 0 && st.st_size > 0) break;
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
    cr_assert(stat(jp, &st) == 0 && st.st_size > 0, "no case finished within 120 s");
    kill(pid, SIGINT);
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 130, "interrupted run exits 130");
    cr_assert_str_eq(tu_slurp(rp), "OLD REPORT", "the previous report is left intact");
    json_error_t je;
    json_t *r = json_load_file(pp, 0, &je);
    cr_assert(r, "report.partial.json: %s", je.text);
    cr_assert(json_is_false(json_object_get(r, "complete")));
    cr_assert_geq(json_array_size(json_object_get(r, "cases")), 1);
    json_decref(r);
}
