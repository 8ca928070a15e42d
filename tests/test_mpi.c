/* test_mpi.c: `mpirun -np N flashdrift run|gate|check` (docs/mpi.md). Two and three ranks
 * (--oversubscribe, CPU backends) write the report of one process apart from the fields
 * that docs/mpi.md lists (created, machine, timings); only rank 0 prints the results and
 * the exit code is rank 0's; a rank killed mid-run (the test hook FD_TEST_DIE_AFTER_CASES)
 * leaves journals from which --resume, with or without mpirun, finishes with every case
 * once; a rank that cannot write its journal (not at all, or from its Nth case: the hook
 * FD_TEST_NOSPC_AFTER_CASES) stops the run with its message and the finished cases are
 * kept; `gate` and `check` under mpirun give one process's verdict and report. Skipped
 * where the build has no MPI or mpirun is missing. */
#include <sys/stat.h>

#include "fd_test_util.h"

#ifdef FD_MPIEXEC
static const char *const mpiexec = FD_MPIEXEC;
#else
static const char *const mpiexec = NULL;
#endif

/* Skips the test where MPI runs cannot happen; lets mpirun run as root (containers). */
static void need_mpi(void)
{
#ifndef FD_HAVE_MPI
    cr_skip_test("built without MPI (FD_MPI=OFF or MPI not found)");
#endif
#ifndef FD_TEST_HOOKS
    cr_skip_test("built without FD_TEST_HOOKS");
#endif
    if (!mpiexec || !*mpiexec || access(mpiexec, X_OK)) cr_skip_test("mpirun not found (apt-get install openmpi-bin)");
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    unsetenv("FD_TEST_DIE_AFTER_CASES");
    unsetenv("FD_TEST_NOSPC_AFTER_CASES");
    unsetenv("FD_TEST_RANK");
    /* mpirun that cannot start two processes here (a container without /dev/shm, say) is
     * the environment's problem, not flashdrift's */
    char *probe[] = {(char *)mpiexec, "--oversubscribe", "-np", "2", "true", NULL};
    if (tu_run_limited(probe, 60, 0) != 0) cr_skip_test("mpirun -np 2 true fails here: %.300s", g_err);
}

/* Runs `flashdrift CMD ARGS...` under mpirun -np np (np 0: a plain launch of the same
 * binary); args is NULL-terminated. Returns the exit status; output in g_out and g_err. */
static int run_np(int np, const char *const *args)
{
    char *argv[64], nps[16];
    int n = 0;
    snprintf(nps, sizeof nps, "%d", np);
    if (np > 0) {
        argv[n++] = (char *)mpiexec;
        argv[n++] = "--oversubscribe";
        argv[n++] = "-np";
        argv[n++] = nps;
    }
    argv[n++] = FD_BINARY;
    for (int i = 0; args[i]; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return tu_run_limited(argv, 120, 0);
}

/* Removes, in place, what may differ between two runs of one case file (docs/mpi.md):
 * "created" and "machine" at the top, and every timing ("seconds", "bias_seconds",
 * "seconds_tier", "seconds_mpfr", "ms", and "tflops", computed from "ms")
 * at any depth. */
static void strip_volatile(json_t *j, int top)
{
    if (json_is_object(j)) {
        if (top) {
            json_object_del(j, "created");
            json_object_del(j, "machine");
        }
        json_object_del(j, "seconds");
        json_object_del(j, "bias_seconds");
        json_object_del(j, "seconds_tier");
        json_object_del(j, "seconds_mpfr");
        json_object_del(j, "tflops"); /* from ms: a kernel's speed, not its result */
        json_object_del(j, "ms");
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) strip_volatile(v, 0);
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) strip_volatile(v, 0);
    }
}

/* The first case (by index) where two stripped reports differ, or -1 (the cases equal). */
static int first_difference(json_t *a, json_t *b)
{
    json_t *ca = json_object_get(a, "cases"), *cb = json_object_get(b, "cases");
    const size_t n = json_array_size(ca) > json_array_size(cb) ? json_array_size(ca) : json_array_size(cb);
    for (size_t i = 0; i < n; i++)
        if (!json_equal(json_array_get(ca, i), json_array_get(cb, i))) return (int)i;
    return -1;
}

/* Asserts that report path equals the reference report ref (a one-process run's) apart
 * from the volatile fields, and that it records ranks. */
static void expect_same_report(const char *ref, const char *path, int ranks)
{
    json_t *a = tu_load_json(ref), *b = tu_load_json(path);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(b, "machine"), "ranks")), ranks,
                 "%s: machine.ranks", path);
    json_t *ta = json_object_get(b, "created");
    cr_assert(json_is_string(ta), "%s: created", path);
    strip_volatile(a, 1);
    strip_volatile(b, 1);
    cr_assert_eq(json_array_size(json_object_get(b, "cases")), json_array_size(json_object_get(a, "cases")),
                 "%s: case count", path);
    const int d = first_difference(a, b);
    if (d >= 0) {
        char *x = json_dumps(json_array_get(json_object_get(a, "cases"), (size_t)d), JSON_COMPACT);
        char *y = json_dumps(json_array_get(json_object_get(b, "cases"), (size_t)d), JSON_COMPACT);
        cr_assert_fail("%s: case %d differs from the one-process run's:\n%.600s\n%.600s", path, d, x, y);
    }
    cr_assert(json_equal(a, b), "%s: the report differs outside its cases from the one-process run's", path);
    json_decref(a);
    json_decref(b);
}

/* One plain (one-process) run of cases/smoke.json into DIR/ref: the reference report;
 * returns its number of cases. */
static int reference_run(const char *dir, char *ref, size_t len)
{
    char out[160];
    snprintf(out, sizeof out, "%s/ref", dir);
    snprintf(ref, len, "%s/report.json", out);
    const char *a[] = {"run", tu_path(TU_SOURCE, "cases/smoke.json"), "--out", out, "--backend", "cpu",
                       "--jobs", "1", "--quiet", NULL};
    cr_assert_eq(run_np(0, a), 0, "one-process run: %s", g_err);
    json_t *r = tu_load_json(ref);
    const int n = (int)json_array_size(json_object_get(r, "cases"));
    cr_assert_gt(n, 100, "cases/smoke.json has %d cases", n);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(r, "machine"), "ranks")), 1);
    json_decref(r);
    return n;
}

/* Occurrences of needle in hay. */
static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *s = hay; (s = strstr(s, needle)); s += strlen(needle)) n++;
    return n;
}

Test(mpi, two_and_three_ranks_write_the_one_process_report, .timeout = 180)
{
    need_mpi();
    char dir[64], ref[160], out[160], rep[192];
    tu_dir(dir, sizeof dir);
    reference_run(dir, ref, sizeof ref);
    for (int np = 2; np <= 3; np++) {
        snprintf(out, sizeof out, "%s/np%d", dir, np);
        snprintf(rep, sizeof rep, "%s/report.json", out);
        const char *a[] = {"run", tu_path(TU_SOURCE, "cases/smoke.json"), "--out", out, "--backend", "cpu",
                           "--jobs", "1", NULL};
        cr_assert_eq(run_np(np, a), 0, "np %d: %s", np, g_err);
        cr_expect_eq(count(g_out, " cases: "), 1, "np %d: one results line (rank 0's), got:\n%s", np, g_out);
        cr_expect_eq(count(g_err, "backends: "), 1, "np %d: rank 0 alone names the backends:\n%s", np, g_err);
        expect_same_report(ref, rep, np);
        char jp[192];
        snprintf(jp, sizeof jp, "%s/cases.partial.rank1.jsonl", out);
        cr_expect(access(jp, F_OK) != 0, "np %d: rank 1's journal is removed after a complete run", np);
    }
}

/* mpirun -np 3 with rank `die` killing itself (SIGKILL) after 5 cases; then --resume with
 * resume_np ranks (0: without mpirun): every case once, the one-process results. */
static void die_then_resume(int die, int resume_np)
{
    need_mpi();
    char dir[64], ref[160], out[160], rep[192], jp[192], dies[8];
    tu_dir(dir, sizeof dir);
    const int ncases = reference_run(dir, ref, sizeof ref);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(rep, sizeof rep, "%s/report.json", out);
    snprintf(dies, sizeof dies, "%d", die);
    const char *a[] = {"run", tu_path(TU_SOURCE, "cases/smoke.json"), "--out", out, "--backend", "cpu",
                       "--jobs", "1", "--quiet", NULL};
    setenv("FD_TEST_DIE_AFTER_CASES", "5", 1);
    setenv("FD_TEST_RANK", dies, 1);
    const int rc = run_np(3, a);
    unsetenv("FD_TEST_DIE_AFTER_CASES");
    unsetenv("FD_TEST_RANK");
    cr_assert_neq(rc, 0, "a run with a killed rank must fail: %s", g_err);
    cr_assert(strstr(g_err, "FD_TEST_DIE_AFTER_CASES=5: killing myself"), "the hook did not fire: %s", g_err);
    cr_assert(access(rep, F_OK) != 0, "a run with a killed rank writes no report.json");
    /* the dead rank's journal holds its header and exactly the 5 cases it finished */
    if (die == 0) snprintf(jp, sizeof jp, "%s/cases.partial.jsonl", out);
    else snprintf(jp, sizeof jp, "%s/cases.partial.rank%d.jsonl", out, die);
    cr_assert_eq(tu_file_lines(jp), 6, "%s: header and 5 cases", jp);
    const char *b[] = {"run", tu_path(TU_SOURCE, "cases/smoke.json"), "--out", out, "--backend", "cpu",
                       "--jobs", "1", "--resume", "--quiet", NULL};
    cr_assert_eq(run_np(resume_np, b), 0, "resume with %d ranks: %s", resume_np, g_err);
    const char *k = strstr(g_err, "resuming: ");
    cr_assert(k, "no resume message: %s", g_err);
    const int kept = atoi(k + strlen("resuming: "));
    cr_expect(kept >= 5 && kept < ncases, "kept %d of %d cases: %s", kept, ncases, g_err);
    /* every case once, in case-file order, with the results of the one-process run */
    json_t *r = tu_load_json(rep);
    json_t *cs = json_object_get(r, "cases");
    cr_assert(json_is_true(json_object_get(r, "complete")));
    for (size_t i = 0; i < json_array_size(cs); i++)
        for (size_t j = i + 1; j < json_array_size(cs); j++)
            cr_assert_str_neq(json_string_value(json_object_get(json_array_get(cs, i), "id")),
                              json_string_value(json_object_get(json_array_get(cs, j), "id")), "case %zu twice", i);
    json_decref(r);
    expect_same_report(ref, rep, resume_np ? resume_np : 1);
    cr_expect(access(jp, F_OK) != 0, "%s is removed after the complete run", jp);
}

Test(mpi, a_killed_rank_then_resume_under_mpirun_finishes_every_case_once, .timeout = 180)
{
    die_then_resume(2, 2);
}

Test(mpi, a_killed_rank_0_then_resume_without_mpirun_finishes_every_case_once, .timeout = 180)
{
    die_then_resume(0, 0);
}

Test(mpi, the_exit_code_is_rank_0s_on_every_rank, .timeout = 120)
{
    need_mpi();
    char dir[64], cf[128], out[128];
    tu_dir(dir, sizeof dir);
    snprintf(cf, sizeof cf, "%s/tight.json", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    /* flash within 1% of standard's error: every case fails, whichever rank judges it */
    tu_write(cf, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"tight\", \"rows_per_head\": 8,\n"
                 " \"policy\": {\"fa_ratio\": 0.01, \"atol\": 0},\n"
                 " \"sweeps\": [{\"heads\": 2, \"seqlen\": [64, 96], \"head_dim\": 16, \"dtype\": [\"fp16\", \"bf16\"], "
                 "\"seed\": 3}]}\n");
    const char *a[] = {"run", cf, "--out", out, "--backend", "cpu", "--jobs", "1", "--explain", "none", NULL};
    cr_assert_eq(run_np(2, a), 1, "a failing case: exit 1 from mpirun: %s", g_err);
    cr_expect(strstr(g_out, "4 cases: 0 PASS, 0 MARGINAL, 4 FAIL"), "%s", g_out);
    cr_expect_eq(count(g_err, "FAIL b1h2"), 4, "each failing case named once (rank 0 prints all):\n%s", g_err);
}

Test(mpi, a_rank_that_cannot_write_its_journal_stops_the_run_with_its_message, .timeout = 120)
{
    need_mpi();
    char dir[64], out[128], jp[192], rep[192];
    tu_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(jp, sizeof jp, "%s/cases.partial.rank1.jsonl", out);
    snprintf(rep, sizeof rep, "%s/report.json", out);
    cr_assert_eq(mkdir(out, 0755), 0);
    cr_assert_eq(mkdir(jp, 0755), 0); /* a directory where rank 1's journal goes */
    const char *a[] = {"run", tu_path(TU_SOURCE, "cases/smoke.json"), "--out", out, "--backend", "cpu",
                       "--jobs", "1", "--quiet", NULL};
    const int rc = run_np(2, a);
    cr_assert_eq(rc, 2, "exit 2 (journal not writable), got %d: %s", rc, g_err);
    cr_expect(strstr(g_err, "cases.partial.rank1.jsonl: cannot write") && strstr(g_err, "(rank 1; no case was run)"),
              "rank 1 names its journal: %s", g_err);
    cr_expect(access(rep, F_OK) != 0, "no report.json");
}

Test(mpi, a_rank_whose_disk_fills_mid_run_stops_it_and_keeps_every_finished_case, .timeout = 180)
{
    need_mpi();
    char dir[64], ref[160], out[160], rep[192], part[192];
    tu_dir(dir, sizeof dir);
    const int ncases = reference_run(dir, ref, sizeof ref);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(rep, sizeof rep, "%s/report.json", out);
    snprintf(part, sizeof part, "%s/report.partial.json", out);
    const char *a[] = {"run", tu_path(TU_SOURCE, "cases/smoke.json"), "--out", out, "--backend", "cpu",
                       "--jobs", "1", "--quiet", NULL};
    setenv("FD_TEST_NOSPC_AFTER_CASES", "4", 1);
    setenv("FD_TEST_RANK", "1", 1);
    const int rc = run_np(2, a);
    unsetenv("FD_TEST_NOSPC_AFTER_CASES");
    unsetenv("FD_TEST_RANK");
    cr_assert_eq(rc, 3, "exit 3 (internal: the journal), got %d: %s", rc, g_err);
    cr_expect(strstr(g_err, "rank 1: ") && strstr(g_err, "cannot write the journal: No space left on device"),
              "rank 1's message: %s", g_err);
    cr_assert(access(rep, F_OK) != 0, "a stopped run writes no report.json");
    /* rank 0 ran its whole share, rank 1 four cases (the 4th only in memory) */
    json_t *p = tu_load_json(part);
    const int have = (int)json_array_size(json_object_get(p, "cases"));
    cr_expect(json_is_false(json_object_get(p, "complete")));
    cr_expect(have >= ncases / 2 && have < ncases, "report.partial.json has %d of %d cases", have, ncases);
    json_decref(p);
    /* rank 0 keeps the 4th case in its journal: resume recomputes none of the finished */
    const char *b[] = {"run", tu_path(TU_SOURCE, "cases/smoke.json"), "--out", out, "--backend", "cpu",
                       "--jobs", "1", "--resume", "--quiet", NULL};
    cr_assert_eq(run_np(0, b), 0, "resume: %s", g_err);
    char want[64];
    snprintf(want, sizeof want, "resuming: %d finished cases kept", have);
    cr_expect(strstr(g_err, want), "expected \"%s\": %s", want, g_err);
    expect_same_report(ref, rep, 1);
}

Test(mpi, gate_and_check_under_mpirun_write_their_outputs_once_with_rank_0s_verdict, .timeout = 180)
{
    need_mpi();
    char dir[64], g1[128], g2[128], j2[160], m2[160], c1[128], c2[128], r1[160], r2[160];
    tu_dir(dir, sizeof dir);
    snprintf(g1, sizeof g1, "%s/g1", dir);
    snprintf(g2, sizeof g2, "%s/g2", dir);
    snprintf(j2, sizeof j2, "%s/junit.xml", dir);
    snprintf(m2, sizeof m2, "%s/gate.md", dir);
    /* gate: the same verdict and summary on stdout once, JUnit and Markdown written */
    const char *a[] = {"gate", tu_path(TU_SOURCE, "cases/smoke.json"), "--policy", tu_path(TU_SOURCE, "cases/policy-ci.json"),
                       "--no-baseline", "--out", g1, "--backend", "cpu", "--jobs", "1", "--filter", "fp16", NULL};
    cr_assert_eq(run_np(0, a), 0, "%s", g_err);
    char one[4096];
    snprintf(one, sizeof one, "%s", g_out);
    const char *b[] = {"gate", tu_path(TU_SOURCE, "cases/smoke.json"), "--policy", tu_path(TU_SOURCE, "cases/policy-ci.json"),
                       "--no-baseline", "--out", g2, "--backend", "cpu", "--jobs", "1", "--filter", "fp16",
                       "--junit", j2, "--markdown", m2, NULL};
    cr_assert_eq(run_np(2, b), 0, "%s", g_err);
    cr_expect_str_eq(g_out, one, "gate's stdout under mpirun -np 2 is one process's");
    cr_expect(access(j2, F_OK) == 0 && access(m2, F_OK) == 0, "JUnit and Markdown written");
    snprintf(r1, sizeof r1, "%s/report.json", g1);
    snprintf(r2, sizeof r2, "%s/report.json", g2);
    expect_same_report(r1, r2, 2);
    /* check: two bundles, one per rank */
    snprintf(c1, sizeof c1, "%s/c1", dir);
    snprintf(c2, sizeof c2, "%s/c2", dir);
    const char *c[] = {"check", "--tensors", tu_path(TU_DATA, "pytorch-h200-bwd"), "--out", c1, "--jobs", "1", "--quiet", NULL};
    cr_assert_eq(run_np(0, c), 0, "%s", g_err);
    const char *d[] = {"check", "--tensors", tu_path(TU_DATA, "pytorch-h200-bwd"), "--out", c2, "--jobs", "1", NULL};
    cr_assert_eq(run_np(2, d), 0, "%s", g_err);
    cr_expect_eq(count(g_out, " bundles: "), 1, "one results line: %s", g_out);
    snprintf(r1, sizeof r1, "%s/report.json", c1);
    snprintf(r2, sizeof r2, "%s/report.json", c2);
    expect_same_report(r1, r2, 2);
}
