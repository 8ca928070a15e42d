/* test_cli_opts.c: the command-line conventions of every command (fd_opt.h): --help and -h
 * on stdout with exit 0, --opt=value, "--", one stderr line and exit 2 for a bad option;
 * SIGTERM exits 143 and keeps the journal; the progress lines off a terminal. */
#include <regex.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include "fd_test_util.h"

/* The commands flashdrift has; cross-checked against `flashdrift --help` below. */
static const char *const commands[] = {"run", "list", "gate", "diff", "baseline", "html", "explain", "bench", "check", "compare", NULL};

static const char *tiny =
    "{\"schema\": \"flashdrift-cases/1\", \"name\": \"tiny\", \"rows_per_head\": 8,\n"
    " \"sweeps\": [{\"heads\": 2, \"kv_heads\": 1, \"seqlen\": [[24, 40]], \"head_dim\": 16,\n"
    "   \"dtype\": [\"fp16\", \"bf16\"], \"mask\": [\"none\", \"causal_br\"], \"dropout\": [0, 0.17], \"seed\": 3}]}\n";

/* 32 cases of a few hundred ms each on one thread: still running when signalled. */
static const char *slow =
    "{\"schema\": \"flashdrift-cases/1\", \"name\": \"slow\", \"rows_per_head\": 32,\n"
    " \"sweeps\": [{\"heads\": 2, \"seqlen\": [512, 1024], \"head_dim\": 64,\n"
    "   \"dtype\": [\"fp16\", \"bf16\"], \"mask\": [\"none\", \"causal_br\"], \"dropout\": [0, 0.1], \"seed\": [1, 2]}]}\n";

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* The command words of the synopsis lines of `flashdrift --help` ("usage: flashdrift X",
 * "       flashdrift X"); returns how many distinct ones. */
static int help_commands(char words[][32], int max)
{
    char *argv[] = {FD_BINARY, "--help", NULL};
    cr_assert_eq(tu_run(argv), 0);
    int n = 0;
    for (char *line = g_out; line && *line;) {
        char *nl = strchr(line, '\n');
        char w[32];
        if ((sscanf(line, "usage: flashdrift %31s", w) == 1 || sscanf(line, " flashdrift %31s", w) == 1) &&
            w[0] != '-' && strcmp(w, "COMMAND")) {
            int seen = 0;
            for (int i = 0; i < n; i++) seen |= !strcmp(words[i], w);
            if (!seen && n < max) snprintf(words[n++], 32, "%s", w);
        }
        line = nl ? nl + 1 : NULL;
    }
    return n;
}

Test(cli_opts, the_command_list_is_the_one_help_prints)
{
    char words[32][32];
    const int n = help_commands(words, 32);
    int k = 0;
    for (; commands[k]; k++) {
        int found = 0;
        for (int i = 0; i < n; i++) found |= !strcmp(words[i], commands[k]);
        cr_assert(found, "flashdrift --help does not show \"%s\"", commands[k]);
    }
    cr_assert_eq(n, k, "flashdrift --help shows %d commands, this test knows %d", n, k);
}

Test(cli_opts, every_command_prints_its_usage_on_stdout_with_h_and_help)
{
    char words[32][32];
    const int n = help_commands(words, 32);
    cr_assert_geq(n, 9);
    const char *const flags[] = {"--help", "-h"};
    for (int i = 0; i < n; i++)
        for (int f = 0; f < 2; f++) {
            char *argv[] = {FD_BINARY, words[i], (char *)flags[f], NULL};
            int rc = tu_run(argv);
            cr_expect_eq(rc, 0, "%s %s: exit %d", words[i], flags[f], rc);
            cr_expect(strstr(g_out, "usage") != NULL, "%s %s: no usage on stdout: %s", words[i], flags[f], g_out);
            cr_expect(strstr(g_out, words[i]) != NULL, "%s %s: the usage does not name the command", words[i], flags[f]);
            cr_expect_str_empty(g_err, "%s %s: stderr not empty: %s", words[i], flags[f], g_err);
        }
    /* after a positional and other options too */
    char *a[] = {FD_BINARY, "run", "nonexistent.json", "--jobs", "2", "--help", NULL};
    cr_assert_eq(tu_run(a), 0, "%s", g_err);
    cr_assert(strstr(g_out, "usage: flashdrift run"));
}

Test(cli_opts, list_help_opens_no_file_and_dashdash_names_one)
{
    char dir[64];
    tu_dir(dir, sizeof dir);
    cr_assert_eq(chdir(dir), 0);
    char *a[] = {FD_BINARY, "list", "--help", NULL};
    cr_assert_eq(tu_run(a), 0, "list --help: %s", g_err);
    cr_assert(strstr(g_out, "usage: flashdrift list"), "%s", g_out);
    cr_assert_str_empty(g_err, "list --help tried something: %s", g_err);
    /* a case file called --help, reached after -- */
    tu_write("--help", tiny);
    char *b[] = {FD_BINARY, "list", "--", "--help", NULL};
    cr_assert_eq(tu_run(b), 0, "list -- --help: %s", g_err);
    cr_assert_eq(count_lines(g_out), 8, "8 case ids expected: %s", g_out);
    cr_assert(strstr(g_err, "8 cases"), "%s", g_err);
    /* and with -- a missing file is an input error naming it, not a usage page */
    unlink("--help");
    cr_assert_eq(tu_run(b), 2);
    cr_assert(strstr(g_err, "--help") && !strstr(g_out, "usage"), "%s", g_err);
}

Test(cli_opts, opt_equals_value_and_the_casefile_in_any_place)
{
    char dir[64], cf[128], out[128], rp[160], oa[160], ob[160];
    tu_dir(dir, sizeof dir);
    snprintf(cf, sizeof cf, "%s/tiny.json", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(oa, sizeof oa, "--out=%s", out);
    tu_write(cf, tiny);
    /* 4 of the 8 cases are bf16 */
    char *a[] = {FD_BINARY, "run", "--backend=cpu-flash,cpu-standard", "--filter=bf16", oa, "--jobs=2", "--explain=none", cf, NULL};
    int rc = tu_run(a);
    cr_assert_eq(rc, 0, "exit %d: %s", rc, g_err);
    snprintf(rp, sizeof rp, "%s/report.json", out);
    json_error_t je;
    json_t *r = json_load_file(rp, 0, &je);
    cr_assert(r, "%s: %s", rp, je.text);
    cr_assert_str_eq(json_string_value(json_object_get(r, "backends")), "cpu-flash,cpu-standard");
    cr_assert_eq(json_array_size(json_object_get(r, "cases")), 4, "--filter=bf16 selects 4 cases");
    cr_assert_eq(json_integer_value(json_object_get(r, "jobs")), 2, "--jobs=2 recorded");
    json_decref(r);
    /* the same values as separate words, case file first */
    snprintf(ob, sizeof ob, "%s/out2", dir);
    char *b[] = {FD_BINARY, "run", cf, "--filter", "fp16", "--out", ob, "--backend", "cpu", "--quiet", NULL};
    cr_assert_eq(tu_run(b), 0, "%s", g_err);
    cr_assert_str_empty(g_err, "--quiet: %s", g_err);
    /* a value out of range keeps its message; --jobs= (empty) too */
    char *c[] = {FD_BINARY, "run", cf, "--jobs=0", NULL};
    cr_assert_eq(tu_run(c), 2);
    cr_assert(strstr(g_err, "--jobs expects an integer in [1, 1024]"), "%s", g_err);
    char *d[] = {FD_BINARY, "run", cf, "--repeat=", NULL};
    cr_assert_eq(tu_run(d), 2);
    cr_assert(strstr(g_err, "--repeat expects an integer in [1, 64]"), "%s", g_err);
}

/* Each command with a bad option: one stderr line
 * naming the command and its --help, exit 2, nothing on stdout. */
Test(cli_opts, a_bad_option_is_one_line_and_exit_2)
{
    for (int i = 0; commands[i]; i++) {
        char *a[] = {FD_BINARY, (char *)commands[i], "--frob", NULL};
        int rc = tu_run(a);
        char want[128];
        snprintf(want, sizeof want, "flashdrift %s: unrecognized option '--frob' (flashdrift %s --help)\n", commands[i],
                 commands[i]);
        cr_expect_eq(rc, 2, "%s --frob: exit %d", commands[i], rc);
        cr_expect_str_eq(g_err, want, "%s --frob", commands[i]);
        cr_expect_str_empty(g_out, "%s --frob: stdout: %s", commands[i], g_out);
    }
    struct { const char *argv[6]; const char *msg; } bad[] = {
        {{"run", "x.json", "--backend", NULL}, "option '--backend' needs a value"},
        {{"gate", "x.json", "--policy", NULL}, "option '--policy' needs a value"},
        {{"run", "x.json", "--quiet=yes", NULL}, "option '--quiet' takes no value"},
        {{"run", "x.json", "--re", NULL}, "ambiguous option '--re'"},
        {{"run", "x.json", "-x", NULL}, "unrecognized option '-x'"},
        {{"diff", "a.json", "--fail-on-regression=1", NULL}, "option '--fail-on-regression' takes no value"},
        {{"explain", "--tensors", NULL}, "option '--tensors' needs a value"},
        {{"run", "a.json", "b.json", NULL}, "one case file expected, got also b.json"},
        {{"run", NULL}, "a CASEFILE is required"},
        {{"bench", "--only", "cuda-flash,cuda-flash-sm9", NULL}, "--only: unknown kernel 'cuda-flash-sm9'"},
        {{"bench", "--n", "4096,x", NULL}, "--n expects at most 8 comma-separated integers in [1, 1048576], got '4096,x'"},
        {{"bench", "--d", "0", NULL}, "--d expects at most 8 comma-separated integers in [1, 256]"},
        {{"bench", "--causal", "2", NULL}, "--causal expects at most 2 comma-separated integers in [0, 1]"},
        {{"bench", "--dtype", "fp32", NULL}, "--dtype expects fp16, bf16 or fp16,bf16, got 'fp32'"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        char *argv[8] = {FD_BINARY};
        for (int j = 0; bad[k].argv[j]; j++) argv[j + 1] = (char *)bad[k].argv[j];
        int rc = tu_run(argv);
        cr_expect_eq(rc, 2, "%s ...: exit %d", bad[k].argv[0], rc);
        cr_expect(strstr(g_err, bad[k].msg) != NULL, "expected \"%s\", got: %s", bad[k].msg, g_err);
        cr_expect_eq(count_lines(g_err), 1, "one line expected: %s", g_err);
    }
}

Test(cli_opts, sigterm_exits_143_and_keeps_the_journal, .timeout = 300)
{
    char dir[64], cf[128], out[128], jp[160], pp[160], ef[160];
    tu_dir(dir, sizeof dir);
    snprintf(cf, sizeof cf, "%s/slow.json", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(jp, sizeof jp, "%s/cases.partial.jsonl", out);
    snprintf(pp, sizeof pp, "%s/report.partial.json", out);
    snprintf(ef, sizeof ef, "%s/stderr.txt", dir);
    tu_write(cf, slow);
    char *argv[] = {FD_BINARY, "run", cf, "--out", out, "--backend", "cpu", "--jobs", "1", NULL};
    /* the header and one finished case */
    const int st = tu_signal_after_lines(tu_spawn(argv, NULL, ef), jp, 2, 120000, SIGTERM);
    cr_assert_geq(tu_file_lines(jp), 2, "no case finished within 120 s");
    cr_assert(WIFEXITED(st), "the run must catch SIGTERM, not die of it");
    cr_assert_eq(WEXITSTATUS(st), 143, "SIGTERM: exit %d", WEXITSTATUS(st));
    const int kept = tu_file_lines(jp) - 1;
    cr_assert(kept >= 1 && kept < 32, "the journal keeps the finished cases: %d", kept);
    json_error_t je;
    json_t *r = json_load_file(pp, 0, &je);
    cr_assert(r, "report.partial.json: %s", je.text);
    cr_assert(json_is_false(json_object_get(r, "complete")));
    cr_assert_eq((int)json_array_size(json_object_get(r, "cases")), kept);
    json_decref(r);
    const char *err = tu_slurp(ef);
    cr_assert(err && strstr(err, "interrupted after"), "%s", err ? err : "");
    /* the last progress line ends with a newline before the message (a clean line) */
    cr_assert(strstr(err, "cases, elapsed ") && strstr(err, "\nflashdrift: interrupted after"), "%s", err);
}

Test(cli_opts, progress_off_a_terminal_is_lines_of_the_documented_form)
{
    char dir[64], cf[128], out[128];
    tu_dir(dir, sizeof dir);
    snprintf(cf, sizeof cf, "%s/tiny.json", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    tu_write(cf, tiny);
    char *a[] = {FD_BINARY, "run", cf, "--out", out, "--backend", "auto", "--jobs", "2", NULL};
    cr_assert_eq(tu_run(a), 0, "%s", g_err);
    /* stdout: the result line only; stderr: the backends line, then progress lines */
    cr_assert_eq(count_lines(g_out), 1, "%s", g_out);
    cr_assert(strstr(g_out, "8 cases: 8 PASS"), "%s", g_out);
    regex_t prog, back;
    cr_assert_eq(regcomp(&prog, "^([0-9]+)/8 cases, elapsed ([0-9]+h)?([0-9]+m)?[0-9]+s, ETA (-|([0-9]+h)?([0-9]+m)?[0-9]+s)$",
                         REG_EXTENDED), 0);
    cr_assert_eq(regcomp(&back, "^backends: [a-z-]+(, [a-z-]+)*( \\(auto: [^)]+\\))?$", REG_EXTENDED), 0);
    int nprog = 0, nback = 0;
    char last[256] = "";
    for (char *line = strtok(g_err, "\n"); line; line = strtok(NULL, "\n")) {
        cr_assert(!strchr(line, '\r'), "no carriage returns off a terminal: %s", line);
        if (!regexec(&prog, line, 0, NULL, 0)) {
            nprog++;
            snprintf(last, sizeof last, "%s", line);
        } else if (!regexec(&back, line, 0, NULL, 0)) {
            nback++;
            cr_assert(strstr(line, "(auto: "), "--backend auto says why: %s", line);
#ifndef FD_HAVE_CUDA
            cr_assert(strstr(line, "cpu-flash, cpu-standard") && strstr(line, "CPU replay"), "%s", line);
#endif
        } else {
            cr_assert_fail("unexpected stderr line: %s", line);
        }
    }
    regfree(&prog);
    regfree(&back);
    cr_assert_eq(nback, 1);
    /* a short run: under 10 s, so only the last line */
    cr_assert_eq(nprog, 1, "one progress line expected in a run under 10 s, got %d", nprog);
    cr_assert(!strncmp(last, "8/8 cases, elapsed ", 19) && strstr(last, ", ETA 0s"), "%s", last);
}
