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

static void path_in(char *buf, size_t len, const char *dir, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
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

