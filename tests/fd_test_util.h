/* fd_test_util.h: helpers shared by the tests: where test data lives (tu_path), running
 * flashdrift (tu_run, tu_spawn), temporary directories and files (tu_dir, tu_write,
 * tu_slurp, tu_load_json, tu_save), .npy tensors (tu_npy_fill) and crafted reports
 * (tu_report, tu_case, tu_backend). Header-only, static functions: each test binary
 * includes it once. */
#ifndef FD_TEST_UTIL_H
#define FD_TEST_UTIL_H
#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fd_dtype.h"
#include "fd_npy.h"

static char g_err[16384], g_out[65536];

/* The roots a test reads files from: the source tree (cases/, scripts/) and tests/data. */
typedef enum { TU_SOURCE, TU_DATA } tu_root;

/* ROOT/rel. The root is $FD_SOURCE_DIR or $FD_TEST_DATA when set, so that a test binary
 * built in one checkout runs in another (the GPU machine), else the path compiled in.
 * Returns one of 8 rotating buffers: enough for the paths of one argv. */
static inline char *tu_path(tu_root root, const char *rel)
{
    static char buf[8][4096];
    static unsigned k;
    const char *dir = getenv(root == TU_DATA ? "FD_TEST_DATA" : "FD_SOURCE_DIR");
    if (!dir || !*dir) dir = root == TU_DATA ? FD_TEST_DATA : FD_SOURCE_DIR;
    char *p = buf[k++ % 8];
    snprintf(p, sizeof buf[0], "%s/%s", dir, rel);
    return p;
}

/* tu_spawn with guards for tests of hangs and full disks: seconds > 0 kills the command
 * with SIGALRM after that long (alarm() survives exec), so that a regression fails the
 * test instead of hanging it; fsize > 0 limits every file the command writes to fsize
 * bytes (RLIMIT_FSIZE, with SIGXFSZ ignored: a write past it fails with EFBIG, as on a
 * full disk; a child may raise the soft limit again). */
static inline pid_t tu_spawn_limited(char *const argv[], const char *out_file, const char *err_file,
                                     unsigned seconds, long fsize)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        int fe = open(err_file ? err_file : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fe, 2);
        int fo = open(out_file ? out_file : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fo, 1);
        if (fsize > 0) {
            struct rlimit rl;
            getrlimit(RLIMIT_FSIZE, &rl);
            rl.rlim_cur = (rlim_t)fsize;
            signal(SIGXFSZ, SIG_IGN);
            if (setrlimit(RLIMIT_FSIZE, &rl)) _exit(126);
        }
        if (seconds) alarm(seconds);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Starts argv (NULL-terminated) with stdout and stderr written to the files named (NULL:
 * /dev/null) and returns its pid, for a test that signals or kills it. */
static inline pid_t tu_spawn(char *const argv[], const char *out_file, const char *err_file)
{
    return tu_spawn_limited(argv, out_file, err_file, 0, 0);
}

/* Runs argv (NULL-terminated) under tu_spawn_limited's guards, capturing stdout in g_out
 * and stderr in g_err; returns the exit status (128 + the signal when killed). */
static inline int tu_run_limited(char *const argv[], unsigned seconds, long fsize)
{
    char ef[64], of[64];
    snprintf(ef, sizeof ef, "/tmp/fd_tu_err.%d.txt", (int)getpid());
    snprintf(of, sizeof of, "/tmp/fd_tu_out.%d.txt", (int)getpid());
    pid_t pid = tu_spawn_limited(argv, of, ef, seconds, fsize);
    int st;
    waitpid(pid, &st, 0);
    FILE *f = fopen(ef, "r");
    size_t n = f ? fread(g_err, 1, sizeof g_err - 1, f) : 0;
    g_err[n] = 0;
    if (f) fclose(f);
    f = fopen(of, "r");
    n = f ? fread(g_out, 1, sizeof g_out - 1, f) : 0;
    g_out[n] = 0;
    if (f) fclose(f);
    unlink(ef);
    unlink(of);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Runs argv (NULL-terminated), capturing stdout in g_out and stderr in g_err; returns the
 * exit status (128 + the signal when killed). */
static inline int tu_run(char *const argv[])
{
    return tu_run_limited(argv, 0, 0);
}

static inline void tu_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static inline void tu_dir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/fd_tu_XXXXXX");
    cr_assert(mkdtemp(dir));
}

#ifdef FD_BINARY
/* A case file of the one sweep given (JSON text), run through the CLI: exit 2, and one line
 * on stderr naming the file and containing msg. */
static inline void tu_expect_case_error(const char *sweep, const char *msg)
{
    char dir[512], path[700], text[2048];
    tu_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/c.json", dir);
    snprintf(text, sizeof text, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"sweeps\": [%s]}", sweep);
    tu_write(path, text);
    char *a[] = {FD_BINARY, "run", path, "--backend", "cpu-flash", "--out", dir, NULL};
    cr_assert_eq(tu_run(a), 2, "%s: exit 2 (stderr %s)", sweep, g_err);
    cr_assert(strstr(g_err, path) && strstr(g_err, msg), "stderr \"%s\" lacks the file or \"%s\"", g_err, msg);
    cr_assert(strchr(g_err, '\n') == g_err + strlen(g_err) - 1, "one line: %s", g_err);
}
#endif

/* A minimal valid report: cases are added with tu_case. */
static inline json_t *tu_report(void)
{
    return json_pack("{s:i, s:s, s:s, s:s, s:s, s:{s:s, s:s, s:n}, s:{s:s, s:s}, s:s, s:[], s:b}",
                     "schema_version", 1, "tool", "flashdrift", "version", "0.1.0", "git_commit", "abc",
                     "created", "2025-01-01T00:00:00Z", "machine", "hostname", "ci", "cpu", "x", "gpu",
                     "case_file", "name", "crafted", "path", "crafted.json", "backends", "cpu-flash,cpu-standard",
                     "cases", "complete", 1);
}

static inline json_t *tu_backend(double max_abs, double rel_l2, double p99_ulp, const char *hash)
{
    return json_pack("{s:b, s:f, s:f, s:f, s:f, s:f, s:f, s:i, s:i, s:i, s:s, s:f}", "ok", 1, "max_abs", max_abs,
                     "max_rel", max_abs * 10, "rel_l2", rel_l2, "max_ulp", p99_ulp * 4, "p99_ulp", p99_ulp,
                     "lse_max_abs", 1e-7, "elements", 100, "nan", 0, "inf", 0, "output_hash", hash, "ms", 1.0);
}

/* Adds a case with a flash and a standard backend; returns the case (borrowed). */
static inline json_t *tu_case(json_t *report, const char *id, const char *dtype, json_t *flash, json_t *standard)
{
    json_t *c = json_pack("{s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i}, s:s, s:s, s:f, s:s, s:{s:i}, s:{}, s:s, s:s}",
                          "id", id, "shape", "batch", 1, "heads", 1, "kv_heads", 1, "seqlen_q", 64, "seqlen_k", 64,
                          "head_dim", 32, "dtype", dtype, "mask", "none", "dropout", 0.0, "dist", "normal",
                          "reference", "undecided", 0, "backends", "verdict", "PASS", "reasons", "");
    json_object_set_new(json_object_get(c, "backends"), "cpu-flash", flash);
    if (standard) json_object_set_new(json_object_get(c, "backends"), "cpu-standard", standard);
    json_array_append_new(json_object_get(report, "cases"), c);
    return c;
}

static inline void tu_save(const json_t *j, const char *path)
{
    cr_assert_eq(json_dump_file(j, path, JSON_INDENT(1)), 0, "cannot write %s", path);
}

/* A JSON file that must parse. */
static inline json_t *tu_load_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    cr_assert(j, "%s: %s", path, je.text);
    return j;
}

/* DIR/NAME.npy of type t (f32, f16 or u8) and the given shape, every element `fill`: bundle
 * tensors for the import tests. */
static inline void tu_npy_fill(const char *dir, const char *name, fd_atype t, int nd, const int64_t *shape, float fill)
{
    fd_array a;
    char err[512], p[1024];
    cr_assert_eq(fd_array_alloc(&a, t, nd, shape, err, sizeof err), 0);
    for (size_t i = 0; i < a.numel; i++) {
        if (t == FD_AT_F32) memcpy((char *)a.data + 4 * i, &fill, 4);
        else if (t == FD_AT_F16) { uint16_t h = fd_f32_to_f16_bits(fill); memcpy((char *)a.data + 2 * i, &h, 2); }
        else if (t == FD_AT_U8) ((uint8_t *)a.data)[i] = (uint8_t)fill;
    }
    snprintf(p, sizeof p, "%s/%s.npy", dir, name);
    cr_assert_eq(fd_npy_write_file(p, &a, err, sizeof err), 0, "%s", err);
    fd_array_free(&a);
}

/* Lines (newlines) in the file at path; 0 when it cannot be read. */
static inline int tu_file_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = 0, ch;
    while ((ch = fgetc(f)) != EOF) n += ch == '\n';
    fclose(f);
    return n;
}

/* Waits (polling every millisecond, at most timeout_ms) until the file at path has at
 * least `lines` lines (a journal's header and finished cases), then sends sig to pid and
 * reaps it; returns its wait status. */
static inline int tu_signal_after_lines(pid_t pid, const char *path, int lines, int timeout_ms, int sig)
{
    for (int t = 0; t < timeout_ms && tu_file_lines(path) < lines; t++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    kill(pid, sig);
    int st;
    waitpid(pid, &st, 0);
    return st;
}

static inline char *tu_slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* x rounded to nearest (even) in dtype t straight from binary64 (fp16 with its subnormal
 * step 2^-24, bf16 at its 8 bits; no overflow handling: for moderate test values). */
static inline float tu_rnd_dtype(double x, fd_dtype t)
{
    if (t == FD_DT_FP32) return (float)x;
    const int p = t == FD_DT_FP16 ? 11 : 8;
    int e;
    (void)frexp(x, &e);
    if (t == FD_DT_FP16 && e < -13) e = -13;
    const double sc = ldexp(1.0, p - e);
    return (float)(nearbyint(x * sc) / sc);
}

#endif
