/* test_files.c: inputs that are not regular files, outputs that cannot be written, and the
 * usage errors found before anything is created (issue 10, parts 4 and 5). Each test is the
 * regression test of one defect; the ones that could hang run under an alarm. */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_case.h"
#include "fd_test_util.h"

/* A command that blocked on a FIFO is killed after this long (SIGALRM: status 142). */
#define GUARD_S 20

/* One case, no mask, no dropout: quick to run. */
static const char *one_case =
    "{\"schema\": \"flashdrift-cases/1\", \"name\": \"one\", \"rows_per_head\": 4,\n"
    " \"sweeps\": [{\"seqlen\": 24, \"head_dim\": 16, \"seed\": 3}]}\n";

/* Two cases, each finished case is one journal line. */
static const char *two_cases =
    "{\"schema\": \"flashdrift-cases/1\", \"name\": \"two\", \"rows_per_head\": 4,\n"
    " \"sweeps\": [{\"seqlen\": 24, \"head_dim\": 16, \"seed\": [3, 4]}]}\n";

static void path_in(char *buf, size_t len, const char *dir, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
}

/* A fresh temp dir d with the case file NAME (text) and an empty out/ beside it
 * (d[64], cf[128], out[128], as every test here declares them). */
static void run_dirs(char *d, char *cf, char *out, const char *name, const char *text)
{
    tu_dir(d, 64);
    path_in(cf, 128, d, name);
    tu_write(cf, text);
    path_in(out, 128, d, "out");
    cr_assert_eq(mkdir(out, 0755), 0);
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static void make_fifo(const char *path)
{
    cr_assert_eq(mkfifo(path, 0644), 0, "mkfifo %s: %s", path, strerror(errno));
}

/* --- inputs that are not regular files ------------------------------------------------ */

/* Defect: `flashdrift run FIFO` blocked forever in open() (no writer). */
Test(files, fifo_case_file_is_refused_not_waited_on)
{
    char d[64], fifo[128];
    tu_dir(d, sizeof d);
    path_in(fifo, sizeof fifo, d, "cases.json");
    make_fifo(fifo);
    char out[128];
    path_in(out, sizeof out, d, "out");
    char *run[] = {FD_BINARY, "run", fifo, "--backend", "cpu", "--out", out, "--quiet", NULL};
    int rc = tu_run_limited(run, GUARD_S, 0);
    cr_assert_neq(rc, 128 + SIGALRM, "run on a FIFO case file hung (killed after %d s)", GUARD_S);
    cr_assert_eq(rc, 2, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "cases.json: is not a regular file"), "stderr: %s", g_err);
    char *list[] = {FD_BINARY, "list", fifo, NULL};
    rc = tu_run_limited(list, GUARD_S, 0);
    cr_assert_eq(rc, 2, "list: exit %d, stderr: %s", rc, g_err);
    cr_assert(!exists(out), "nothing is created for a bad case file");
}

/* Defect: a bundle whose q.npy is a FIFO blocked `check --tensors` forever. The same for a
 * FIFO meta.json, a FIFO .safetensors, a FIFO report (html) and a FIFO policy (gate). */
Test(files, fifo_inputs_of_bundles_reports_and_policies_are_refused)
{
    char d[64], b[128], p[256], out[128];
    tu_dir(d, sizeof d);
    path_in(out, sizeof out, d, "out");

    path_in(b, sizeof b, d, "bundle");
    cr_assert_eq(mkdir(b, 0755), 0);
    path_in(p, sizeof p, b, "meta.json");
    tu_write(p, "{\"layout\": \"bshd\", \"mask\": \"none\"}\n");
    path_in(p, sizeof p, b, "q.npy");
    make_fifo(p);
    char *a1[] = {FD_BINARY, "check", "--tensors", b, "--out", out, "--quiet", NULL};
    int rc = tu_run_limited(a1, GUARD_S, 0);
    cr_assert_eq(rc, 2, "FIFO q.npy: exit %d (142: hung), stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "q.npy: is not a regular file"), "stderr: %s", g_err);

    path_in(b, sizeof b, d, "bundle2");
    cr_assert_eq(mkdir(b, 0755), 0);
    path_in(p, sizeof p, b, "meta.json");
    make_fifo(p);
    char *a2[] = {FD_BINARY, "check", "--tensors", b, "--out", out, "--quiet", NULL};
    rc = tu_run_limited(a2, GUARD_S, 0);
    cr_assert_eq(rc, 2, "FIFO meta.json: exit %d (142: hung), stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "meta.json: is not a regular file"), "stderr: %s", g_err);

    path_in(p, sizeof p, d, "x.safetensors");
    make_fifo(p);
    char *a3[] = {FD_BINARY, "check", "--tensors", p, "--out", out, "--quiet", NULL};
    rc = tu_run_limited(a3, GUARD_S, 0);
    cr_assert_eq(rc, 2, "FIFO .safetensors: exit %d (142: hung), stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "x.safetensors: is not a regular file"), "stderr: %s", g_err);

    path_in(p, sizeof p, d, "report.json");
    make_fifo(p);
    char html[128];
    path_in(html, sizeof html, d, "r.html");
    char *a4[] = {FD_BINARY, "html", p, "--out", html, NULL};
    rc = tu_run_limited(a4, GUARD_S, 0);
    cr_assert_eq(rc, 2, "FIFO report: exit %d (142: hung), stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "report.json: is not a regular file"), "stderr: %s", g_err);

    char rp[128], pol[128];
    path_in(rp, sizeof rp, d, "good.json");
    json_t *r = tu_report();
    tu_save(r, rp);
    json_decref(r);
    path_in(pol, sizeof pol, d, "policy.json");
    make_fifo(pol);
    char *a5[] = {FD_BINARY, "gate", rp, "--policy", pol, NULL};
    rc = tu_run_limited(a5, GUARD_S, 0);
    cr_assert_eq(rc, 2, "FIFO policy: exit %d (142: hung), stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "policy.json: is not a regular file"), "stderr: %s", g_err);
}

/* Defect: a directory given as a case file or as meta.json was "invalid JSON near end of file". */
Test(files, directory_as_case_file_or_meta_json_says_so)
{
    char d[64], p[256], out[128];
    tu_dir(d, sizeof d);
    path_in(out, sizeof out, d, "out");
    char *a1[] = {FD_BINARY, "run", d, "--backend", "cpu", "--out", out, "--quiet", NULL};
    int rc = tu_run(a1);
    cr_assert_eq(rc, 2, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, ": is a directory") && !strstr(g_err, "invalid JSON"), "stderr: %s", g_err);

    char err[1024];
    fd_casefile cf;
    cr_assert_neq(fd_casefile_load(d, &cf, err, sizeof err), 0);
    char want[128];
    snprintf(want, sizeof want, "%s: is a directory", d);
    cr_assert_str_eq(err, want);

    char b[128];
    path_in(b, sizeof b, d, "bundle");
    cr_assert_eq(mkdir(b, 0755), 0);
    path_in(p, sizeof p, b, "meta.json");
    cr_assert_eq(mkdir(p, 0755), 0);
    char *a2[] = {FD_BINARY, "check", "--tensors", b, "--out", out, "--quiet", NULL};
    rc = tu_run(a2);
    cr_assert_eq(rc, 2, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "meta.json: is a directory") && !strstr(g_err, "invalid JSON"), "stderr: %s", g_err);
}

/* --- outputs: atomically or not at all, and never beside an earlier run's ------------- */

/* A gnuplot stand-in that writes a 300 kB plot: report.html (base64, > 400 kB) is then the
 * only output larger than the file-size limit of the run below. */
static void big_plot_gnuplot(const char *dir, char *gp, size_t len)
{
    path_in(gp, len, dir, "fake-gnuplot");
    tu_write(gp, "#!/bin/sh\nulimit -f unlimited 2>/dev/null\n"
                 "head -c 300000 /dev/zero | tr '\\000' x > seq.svg\n");
    cr_assert_eq(chmod(gp, 0755), 0);
}

static void write_stale(const char *out, const char *name)
{
    char p[256];
    path_in(p, sizeof p, out, name);
    tu_write(p, "STALE: from an earlier run\n");
}

/* Defect: the disk filling up only for report.html exited 0 and left the previous run's
 * report.html beside the new report.json. */
Test(files, failed_report_html_write_fails_the_run_and_leaves_no_stale_file)
{
    char d[64], cf[128], out[128], gp[128], p[256];
    run_dirs(d, cf, out, "one.json", one_case);
    write_stale(out, "report.html");
    write_stale(out, "summary.md");
    big_plot_gnuplot(d, gp, sizeof gp);
    setenv("FD_GNUPLOT", gp, 1);
    char *a[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out, "--quiet", NULL};
    int rc = tu_run_limited(a, GUARD_S, 256 * 1024);
    cr_assert_eq(rc, 3, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "report.html") && strstr(g_err, "File too large"), "names the file and why: %s", g_err);
    path_in(p, sizeof p, out, "report.html");
    cr_assert(!exists(p), "the earlier run's report.html must not stay beside this run's report.json");
    path_in(p, sizeof p, out, "report.json");
    json_error_t je;
    json_t *r = json_load_file(p, 0, &je);
    cr_assert(r, "report.json of this run is written: %s", je.text);
    cr_assert(json_is_true(json_object_get(r, "complete")));
    json_decref(r);
    path_in(p, sizeof p, out, "summary.md");
    char *md = tu_slurp(p);
    cr_assert(md && !strstr(md, "STALE"), "summary.md is this run's");
    path_in(p, sizeof p, out, "cases.partial.jsonl");
    cr_assert(exists(p), "the journal is kept until every output is written");
    cr_assert(strstr(g_err, "--resume"), "says how to write the outputs again: %s", g_err);

    /* without the limit, --resume writes them from the journal */
    char *b[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out, "--quiet", "--resume", NULL};
    rc = tu_run_limited(b, GUARD_S, 0);
    cr_assert_eq(rc, 0, "exit %d, stderr: %s", rc, g_err);
    path_in(p, sizeof p, out, "report.html");
    cr_assert(exists(p), "report.html written");
    path_in(p, sizeof p, out, "cases.partial.jsonl");
    cr_assert(!exists(p), "journal removed once every output is written");
}

/* A report.json that cannot be written: no output of the earlier run survives beside the
 * journal, and the exit is 3 naming the file. */
Test(files, failed_report_json_write_removes_the_earlier_outputs)
{
    char d[64], cf[128], out[128], p[256];
    run_dirs(d, cf, out, "one.json", one_case);
    write_stale(out, "summary.md");
    write_stale(out, "report.html");
    /* rename(tmp, report.json) fails on a non-empty directory of that name */
    path_in(p, sizeof p, out, "report.json");
    cr_assert_eq(mkdir(p, 0755), 0);
    path_in(p, sizeof p, out, "report.json/keep");
    tu_write(p, "x");
    setenv("FD_GNUPLOT", "/nonexistent/gnuplot", 1);
    char *a[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out, "--quiet", NULL};
    int rc = tu_run_limited(a, GUARD_S, 0);
    cr_assert_eq(rc, 3, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "report.json"), "stderr: %s", g_err);
    path_in(p, sizeof p, out, "summary.md");
    cr_assert(!exists(p), "stale summary.md removed");
    path_in(p, sizeof p, out, "report.html");
    cr_assert(!exists(p), "stale report.html removed");
    path_in(p, sizeof p, out, "cases.partial.jsonl");
    cr_assert(exists(p), "journal kept");
}

/* No gnuplot: report.html cannot be rendered, which only warns, but the earlier run's
 * report.html (and an earlier interrupted run's report.partial.json) must go. */
Test(files, no_gnuplot_removes_the_earlier_report_html)
{
    char d[64], cf[128], out[128], p[256];
    run_dirs(d, cf, out, "one.json", one_case);
    write_stale(out, "report.html");
    write_stale(out, "report.partial.json");
    setenv("FD_GNUPLOT", "/nonexistent/gnuplot", 1);
    char *a[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out, NULL};
    int rc = tu_run_limited(a, GUARD_S, 0);
    cr_assert_eq(rc, 0, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "gnuplot not found") && strstr(g_err, "report.html not written"), "stderr: %s", g_err);
    path_in(p, sizeof p, out, "report.html");
    cr_assert(!exists(p), "the earlier run's report.html is removed");
    path_in(p, sizeof p, out, "report.partial.json");
    cr_assert(!exists(p), "the earlier run's report.partial.json is removed");
    path_in(p, sizeof p, out, "report.json");
    cr_assert(exists(p));
}

/* gnuplot present but failing: this run has no report.html, so the run fails (exit 3)
 * naming it, and the earlier run's report.html goes. */
Test(files, failing_gnuplot_fails_the_run_and_removes_the_earlier_report_html)
{
    char d[64], cf[128], out[128], p[256];
    run_dirs(d, cf, out, "one.json", one_case);
    write_stale(out, "report.html");
    setenv("FD_GNUPLOT", "/bin/false", 1);
    char *a[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out, "--quiet", NULL};
    int rc = tu_run_limited(a, GUARD_S, 0);
    cr_assert_eq(rc, 3, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "report.html not written: gnuplot failed"), "stderr: %s", g_err);
    path_in(p, sizeof p, out, "report.html");
    cr_assert(!exists(p), "the earlier run's report.html is removed");
    path_in(p, sizeof p, out, "report.json");
    cr_assert(exists(p), "this run's report.json is written");
}

/* Defect: write errors on the journal were ignored. A journal that cannot take a line
 * (/dev/full) stops the run with exit 3; the finished case is in report.partial.json. */
Test(files, journal_write_failure_stops_the_run)
{
    char d[64], cf[128], out[128], p[256];
    run_dirs(d, cf, out, "two.json", two_cases);
    path_in(p, sizeof p, out, "cases.partial.jsonl");
    cr_assert_eq(symlink("/dev/full", p), 0);
    char *a[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out, "--quiet", NULL};
    int rc = tu_run_limited(a, GUARD_S, 0);
    cr_assert_eq(rc, 3, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "cases.partial.jsonl: cannot write the journal: No space left on device"),
              "stderr: %s", g_err);
    cr_assert(strstr(g_err, "stopping after 1 of 2 cases"), "stops at once: %s", g_err);
    path_in(p, sizeof p, out, "report.json");
    cr_assert(!exists(p), "no complete report from a run that failed");
    path_in(p, sizeof p, out, "report.partial.json");
    json_error_t je;
    json_t *r = json_load_file(p, 0, &je);
    cr_assert(r, "the finished case is kept in report.partial.json: %s", je.text);
    cr_assert_eq(json_array_size(json_object_get(r, "cases")), 1);
    json_decref(r);
}

/* The disk fills up in the middle of the journal: the lines written before stay, each one
 * whole but perhaps the last, and the run fails with exit 3. */
Test(files, journal_lines_written_before_a_full_disk_stay)
{
    char d[64], cf[128], out[128], p[256];
    tu_dir(d, sizeof d);
    path_in(cf, sizeof cf, d, "two.json");
    tu_write(cf, two_cases);
    path_in(out, sizeof out, d, "out");
    /* the sizes of the journal's lines, from a run whose report.json cannot be written (a
     * directory of that name): its journal is kept */
    cr_assert_eq(mkdir(out, 0755), 0);
    path_in(p, sizeof p, out, "report.json");
    cr_assert_eq(mkdir(p, 0755), 0);
    path_in(p, sizeof p, out, "report.json/keep");
    tu_write(p, "x");
    char *a[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out, "--quiet", NULL};
    cr_assert_eq(tu_run(a), 3, "%s", g_err);
    path_in(p, sizeof p, out, "cases.partial.jsonl");
    FILE *f = fopen(p, "r");
    cr_assert(f);
    long len[3] = {0, 0, 0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    for (int i = 0; i < 3; i++) {
        n = getline(&line, &cap, f);
        cr_assert(n > 0, "journal line %d", i + 1);
        len[i] = (long)n;
    }
    fclose(f);
    /* room for the header and the first case's line, not the second's */
    const long limit = len[0] + len[1] + len[2] / 2;
    char out2[128];
    path_in(out2, sizeof out2, d, "out2");
    char *b[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out2, "--quiet", NULL};
    int rc = tu_run_limited(b, GUARD_S, limit);
    cr_assert_eq(rc, 3, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "cases.partial.jsonl: cannot write the journal"), "stderr: %s", g_err);
    path_in(p, sizeof p, out2, "cases.partial.jsonl");
    f = fopen(p, "r");
    cr_assert(f, "the journal stays");
    int whole = 0;
    while (getline(&line, &cap, f) > 0)
        if (line[strlen(line) - 1] == '\n') {
            json_t *j = json_loads(line, 0, NULL);
            cr_assert(j, "a whole journal line is JSON");
            json_decref(j);
            whole++;
        }
    free(line);
    fclose(f);
    cr_assert_eq(whole, 2, "header and first case kept (%d whole lines)", whole);
}

/* A FIFO in place of the journal: a run (which writes it) and a --resume (which reads it
 * first) refuse it at once instead of waiting for a reader or a writer. */
Test(files, fifo_journal_is_refused_not_waited_on)
{
    char d[64], cf[128], out[128], p[256];
    run_dirs(d, cf, out, "one.json", one_case);
    path_in(p, sizeof p, out, "cases.partial.jsonl");
    make_fifo(p);
    char *a[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out, "--quiet", NULL};
    int rc = tu_run_limited(a, GUARD_S, 0);
    cr_assert_eq(rc, 2, "run: exit %d (142: hung), stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "cases.partial.jsonl: cannot write"), "stderr: %s", g_err);
    char *b[] = {FD_BINARY, "run", cf, "--backend", "cpu", "--out", out, "--quiet", "--resume", NULL};
    rc = tu_run_limited(b, GUARD_S, 0);
    cr_assert_eq(rc, 2, "--resume: exit %d (142: hung), stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "cases.partial.jsonl: is not a regular file"), "stderr: %s", g_err);
}

/* explain --out: an explain.json that cannot be written is exit 3, and the explain.md of
 * an earlier explanation does not stay beside it. */
Test(files, failed_explain_json_write_removes_the_earlier_explain_md)
{
    char d[64], cf[128], out[128], p[256];
    tu_dir(d, sizeof d);
    path_in(cf, sizeof cf, d, "one.json");
    tu_write(cf, one_case);
    path_in(out, sizeof out, d, "explained");
    cr_assert_eq(mkdir(out, 0755), 0);
    write_stale(out, "explain.md");
    path_in(p, sizeof p, out, "explain.json");
    cr_assert_eq(mkdir(p, 0755), 0);
    path_in(p, sizeof p, out, "explain.json/keep");
    tu_write(p, "x");
    char *a[] = {FD_BINARY, "explain", cf, "--case", "b1h1k1-q24k24-d16-fp16-none-p0-normal-s3", "--out", out,
                 "--jobs", "1", NULL};
    int rc = tu_run_limited(a, GUARD_S, 0);
    cr_assert_eq(rc, 3, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "explain.json"), "names the file: %s", g_err);
    path_in(p, sizeof p, out, "explain.md");
    cr_assert(!exists(p), "the earlier explain.md is removed");
}

/* --- usage errors found before anything is created ------------------------------------ */

/* Defect: `html --out EXISTING_DIR` exited 3 (a failed rename) instead of 2. */
Test(files, html_out_directory_is_a_usage_error)
{
    char d[64], rp[128];
    tu_dir(d, sizeof d);
    path_in(rp, sizeof rp, d, "report.json");
    json_t *r = tu_report();
    tu_save(r, rp);
    json_decref(r);
    char *a[] = {FD_BINARY, "html", rp, "--out", d, NULL};
    int rc = tu_run(a);
    cr_assert_eq(rc, 2, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "is a directory"), "stderr: %s", g_err);
}

/* Defect: `explain --case UNKNOWN --out D` exited 2 but created D. */
Test(files, explain_unknown_case_creates_nothing)
{
    char d[64], cf[128], out[128];
    tu_dir(d, sizeof d);
    path_in(cf, sizeof cf, d, "one.json");
    tu_write(cf, one_case);
    path_in(out, sizeof out, d, "explained");
    char *a[] = {FD_BINARY, "explain", cf, "--case", "no-such-case", "--out", out, NULL};
    int rc = tu_run(a);
    cr_assert_eq(rc, 2, "exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "no case with id \"no-such-case\""), "stderr: %s", g_err);
    cr_assert(!exists(out), "--out DIR must not be created for a usage error");
    char *b[] = {FD_BINARY, "explain", cf, "--case", "b1h1k1-q24k24-d16-fp16-none-p0-normal-s3", "--backend",
                 "cpu-flsh", "--out", out, NULL};
    rc = tu_run(b);
    cr_assert_eq(rc, 2, "unknown backend: exit %d, stderr: %s", rc, g_err);
    cr_assert(!exists(out), "--out DIR must not be created for an unknown backend");
}

/* Defect: an --inject that changes nothing (a mask bug on an unmasked case, a dropout bug
 * at p = 0) silently explained the unchanged kernel. It is a usage error (exit 2) that
 * says why, and nothing is created. */
Test(files, inject_that_changes_nothing_is_a_usage_error)
{
    char d[64], cf[128], out[128];
    tu_dir(d, sizeof d);
    path_in(cf, sizeof cf, d, "one.json");
    tu_write(cf, one_case);
    path_in(out, sizeof out, d, "explained");
    static const struct { const char *bug, *why; } t[] = {
        {"mask_missing", "it has no causal mask"},
        {"dropout_seed_plus_one", "it has no dropout (p = 0)"},
        {"dropout_scale_missing", "it has no dropout (p = 0)"},
        {"dropout_seed", "it has no dropout (p = 0)"}, /* the 0.1.0 name of dropout_seed_plus_one */
        {"layout_bhsd_as_bshd", "with one head or one query row, BHSD and BSHD are the same layout"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        char *a[] = {FD_BINARY, "explain", cf, "--case", "b1h1k1-q24k24-d16-fp16-none-p0-normal-s3", "--inject",
                     (char *)t[i].bug, "--out", out, "--jobs", "1", NULL};
        int rc = tu_run(a);
        cr_assert_eq(rc, 2, "%s: exit %d, stderr: %s", t[i].bug, rc, g_err);
        char want[256];
        snprintf(want, sizeof want, "--inject %s changes nothing on case b1h1k1-q24k24-d16-fp16-none-p0-normal-s3: %s",
                 t[i].bug, t[i].why);
        cr_assert(strstr(g_err, want), "%s: stderr: %s", t[i].bug, g_err);
        cr_assert(!exists(out));
    }
    /* a square causal_br case: top-left is the same mask */
    char sq[128];
    path_in(sq, sizeof sq, d, "square.json");
    tu_write(sq, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"sq\", \"rows_per_head\": 4,\n"
                 " \"sweeps\": [{\"seqlen\": 24, \"head_dim\": 16, \"mask\": \"causal_br\", \"seed\": 3}]}\n");
    char *c[] = {FD_BINARY, "explain", sq, "--case", "b1h1k1-q24k24-d16-fp16-causal_br-p0-normal-s3", "--inject",
                 "causal_top_left", "--out", out, "--jobs", "1", NULL};
    int rc = tu_run(c);
    cr_assert_eq(rc, 2, "causal_top_left on a square causal_br case: exit %d, stderr: %s", rc, g_err);
    cr_assert(strstr(g_err, "changes nothing on case b1h1k1-q24k24-d16-fp16-causal_br-p0-normal-s3: its causal mask "
                            "is already top-left (seqlen_q = seqlen_k: both alignments are one mask)"), "stderr: %s", g_err);
    cr_assert(!exists(out));
    /* a bug that does change this case is still explained */
    char *b[] = {FD_BINARY, "explain", cf, "--case", "b1h1k1-q24k24-d16-fp16-none-p0-normal-s3", "--inject",
                 "scale_missing", "--jobs", "1", NULL};
    rc = tu_run(b);
    cr_assert_eq(rc, 1, "scale_missing is a gross error: exit %d, stderr: %s", rc, g_err);
}

/* --- duplicate case ids -------------------------------------------------------------- */

/* Duplicates are still dropped (first kept, expansion order unchanged) now that they are
 * found by sorting the ids instead of comparing every pair. */
Test(files, duplicate_cases_across_sweeps_are_kept_once_in_order)
{
    char d[64], p[128], err[1024];
    tu_dir(d, sizeof d);
    path_in(p, sizeof p, d, "dups.json");
    tu_write(p, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"dups\",\n"
                " \"sweeps\": [{\"seqlen\": [32, 16], \"head_dim\": 16, \"seed\": [2, 1]},\n"
                "              {\"seqlen\": [64, 16], \"head_dim\": 16, \"seed\": [1, 5, 1]}]}\n");
    fd_casefile cf;
    cr_assert_eq(fd_casefile_load(p, &cf, err, sizeof err), 0, "%s", err);
    static const char *const want[] = {
        "b1h1k1-q32k32-d16-fp16-none-p0-normal-s2", "b1h1k1-q32k32-d16-fp16-none-p0-normal-s1",
        "b1h1k1-q16k16-d16-fp16-none-p0-normal-s2", "b1h1k1-q16k16-d16-fp16-none-p0-normal-s1",
        "b1h1k1-q64k64-d16-fp16-none-p0-normal-s1", "b1h1k1-q64k64-d16-fp16-none-p0-normal-s5",
        "b1h1k1-q16k16-d16-fp16-none-p0-normal-s5"};
    cr_assert_eq(cf.ncases, 7, "7 distinct cases, got %d", cf.ncases);
    for (int i = 0; i < 7; i++) cr_assert_str_eq(cf.cases[i].id, want[i], "case %d", i);
    fd_casefile_free(&cf);
}

/* 100,001 distinct cases (and 125,000 more duplicates, which force a dedupe in the middle
 * of the expansion) is still "more than 100000 cases"; 100,000 is fine and quick. */
Test(files, case_limit_counts_distinct_cases, .timeout = 60)
{
    char d[64], p[128], err[1024];
    tu_dir(d, sizeof d);
    path_in(p, sizeof p, d, "big.json");
    /* 10^5 distinct cases, then a sweep repeating half of them, twice */
    const char *ten = "[1,2,3,4,5,6,7,8,9,10]";
    char text[4096], s1[1024], s2[1024];
    snprintf(s1, sizeof s1, "{\"batch\": %s, \"heads\": %s, \"seqlen\": [16,32,48,64,80,96,112,128,144,160], "
             "\"head_dim\": [8,16,24,32,40,48,56,64,72,80], \"seed\": %s}", ten, ten, ten);
    snprintf(s2, sizeof s2, "{\"batch\": [1,2,3,4,5], \"heads\": %s, \"seqlen\": [16,32,48,64,80,96,112,128,144,160], "
             "\"head_dim\": [8,16,24,32,40,48,56,64,72,80], \"seed\": %s}", ten, ten);
    snprintf(text, sizeof text, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"big\", \"sweeps\": [%s, %s, %s]}",
             s1, s2, s2);
    tu_write(p, text);
    fd_casefile cf;
    cr_assert_eq(fd_casefile_load(p, &cf, err, sizeof err), 0, "%s", err);
    cr_assert_eq(cf.ncases, 100000);
    fd_casefile_free(&cf);
    /* one more distinct case */
    snprintf(text, sizeof text, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"big\", \"sweeps\": [%s, %s, %s, "
             "{\"seqlen\": 16, \"head_dim\": 9}]}", s1, s2, s2);
    tu_write(p, text);
    cr_assert_neq(fd_casefile_load(p, &cf, err, sizeof err), 0);
    cr_assert(strstr(err, "more than 100000 cases after expansion"), "%s", err);
}
