/* fd_cmd_run.c: `flashdrift run` and `flashdrift list` (fd_cmds.h), and the case-file run
 * loop they and `gate` share (fd_runfile.h). */
#define _XOPEN_SOURCE 700 /* realpath */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_case.h"
#include "fd_cmds.h"
#include "fd_explain.h"
#include "fd_file.h"
#include "fd_html.h"
#include "fd_json.h"
#include "fd_mpi.h"
#include "fd_opt.h"
#include "fd_out.h"
#include "fd_progress.h"
#include "fd_report.h"
#include "fd_run.h"
#include "fd_run_import.h"
#include "fd_runfile.h"
#include "fd_signal.h"
#include "fd_summary.h"

int fd_mkdir_p(const char *path, char *err, size_t errlen)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) {
                snprintf(err, errlen, "--out %s: cannot create %s: %s", path, buf, strerror(errno));
                return -1;
            }
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST) {
        snprintf(err, errlen, "--out %s: cannot create it: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (stat(buf, &st) || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "--out %s: not a directory", path);
        return -1;
    }
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.flashdrift-probe-XXXXXX", path);
    int fd = mkstemp(probe);
    if (fd < 0) {
        snprintf(err, errlen, "--out %s: not writable: %s", path, strerror(errno));
        return -1;
    }
    close(fd);
    unlink(probe);
    return 0;
}

int fd_cmd_list(int argc, char **argv)
{
    char err[1024];
    fd_casefile cf;
    const char *casefile = NULL;
    fd_getopt g;
    if (fd_getopt_init(&g, "list", argc, argv, NULL, NULL)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        if (c == FD_OPT_HELP) return FD_EXIT_PASS;
        if (c != FD_OPT_POSITIONAL) return FD_EXIT_USAGE;
        if (casefile) return fd_usage_error("list", "one case file expected, got also %s", g.arg);
        casefile = g.arg;
    }
    if (!casefile) return fd_usage_error("list", "a CASEFILE is required");
    if (fd_casefile_load(casefile, &cf, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    for (int i = 0; i < cf.ncases; i++) printf("%s\n", cf.cases[i].id);
    fprintf(stderr, "%d cases\n", cf.ncases);
    fd_casefile_free(&cf);
    return FD_EXIT_PASS;
}

/* --- the run loop --------------------------------------------------------------------- */

/* FNV-1a 64 over the expanded case ids: identifies the case list of a journal. */
static uint64_t ids_hash(const fd_casefile *cf)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < cf->ncases; i++)
        for (const char *s = cf->cases[i].id; ; s++) {
            h ^= (unsigned char)*s;
            h *= 0x100000001b3ull;
            if (!*s) break;
        }
    return h;
}

/* The journal's first line: what the cases below it were computed from. */
static json_t *journal_header(const fd_casefile *cf, const json_t *report, const fd_run_opts *o)
{
    char real[4096], hx[20];
    if (!realpath(cf->path, real)) snprintf(real, sizeof real, "%s", cf->path);
    snprintf(hx, sizeof hx, "%016llx", (unsigned long long)ids_hash(cf));
    return json_pack("{s:s, s:s, s:s, s:i, s:s, s:O, s:O, s:i, s:s, s:i}", "journal", "flashdrift-journal/1",
                     "case_file", real, "name", cf->name, "cases", cf->ncases, "case_ids_fnv", hx,
                     "flash_config", json_object_get(report, "flash_config"), "policy",
                     json_object_get(report, "policy"), "rows_per_head", cf->rows_per_head, "backends",
                     json_string_value(json_object_get(report, "backends")), "repeat", o->repeat);
}

/* Why a journal header does not match this run, or NULL. */
static const char *header_mismatch(const json_t *have, const json_t *want, char *buf, size_t len)
{
    static const char *const keys[] = {"journal", "case_file", "name", "cases", "case_ids_fnv", "rows_per_head",
                                       "flash_config", "policy", "backends", "repeat", NULL};
    for (int i = 0; keys[i]; i++) {
        const json_t *a = json_object_get(have, keys[i]), *b = json_object_get(want, keys[i]);
        if (a && json_equal((json_t *)a, (json_t *)b)) continue;
        char *sa = a ? json_dumps(a, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        char *sb = json_dumps(b, JSON_ENCODE_ANY | JSON_COMPACT);
        snprintf(buf, len, "%s is %s in the journal but %s now", keys[i], sa ? sa : "missing", sb ? sb : "?");
        free(sa);
        free(sb);
        return buf;
    }
    return NULL;
}

/* See fd_runfile.h. */
int fd_journal_read(const char *jpath, const fd_casefile *cf, const json_t *want, json_t **done,
                    int *found, char *err, size_t errlen)
{
    *found = 0;
    FILE *f = fd_fopen_input(jpath, err, errlen); /* a FIFO or a directory: an error, not a hang */
    if (!f) return errno == ENOENT ? 0 : -1;
    *found = 1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lineno = 0, rc = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        lineno++;
        const int complete_line = line[n - 1] == '\n';
        json_error_t je;
        json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, &je);
        if (!j) {
            if (!complete_line && lineno > 1) {
                /* a kill in the middle of a write: the last case is lost, not the journal */
                fprintf(stderr, "flashdrift: %s:%d: ignoring the truncated last line\n", jpath, lineno);
                break;
            }
            snprintf(err, errlen, "%s:%d: not a flashdrift journal line (%s); remove it to start over", jpath,
                     lineno, je.text);
            rc = -1;
            break;
        }
        if (lineno == 1) {
            char why[512];
            const char *m;
            if (!json_is_object(j) || !json_object_get(j, "journal")) {
                snprintf(err, errlen, "%s:1: no journal header (not written by this flashdrift, or by an older "
                         "one); remove it to start over", jpath);
                rc = -1;
            } else if ((m = header_mismatch(j, want, why, sizeof why))) {
                snprintf(err, errlen, "%s: belongs to another run, refusing to resume: %s "
                         "(use another --out or remove the journal)", jpath, m);
                rc = -1;
            }
            json_decref(j);
            if (rc) break;
            continue;
        }
        const char *id = json_string_value(json_object_get(j, "id"));
        int idx = -1;
        for (int i = 0; id && i < cf->ncases; i++)
            if (!strcmp(cf->cases[i].id, id)) idx = i;
        if (idx < 0 || !json_is_object(json_object_get(j, "backends")) ||
            !json_is_string(json_object_get(j, "verdict"))) {
            snprintf(err, errlen, "%s:%d: case %s is not a case of %s; refusing to resume", jpath, lineno,
                     id ? id : "(no id)", cf->path);
            json_decref(j);
            rc = -1;
            break;
        }
        json_decref(done[idx]);
        done[idx] = j;
    }
    free(line);
    fclose(f);
    return rc;
}

/* One journal line, flushed to the kernel so that a kill loses at most the line being
 * written; -1 with errno when it could not be written (a full disk: ENOSPC). */
static int write_line(FILE *f, const json_t *j)
{
    char *line = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!line) {
        errno = ENOMEM;
        return -1;
    }
    const size_t n = strlen(line);
    line[n] = '\n'; /* json_dumps's terminator becomes the line's end */
    const int bad = fwrite(line, 1, n + 1, f) != n + 1 || fflush(f) != 0;
    free(line);
    return bad ? -1 : 0;
}

/* The first flash output that ran on a judged case (a kernel in --backend order, or a
 * given output in report order), else the first given standard output, or NULL. */
static const char *explain_backend(const fd_backend *const *bes, int nbe, const json_t *cj)
{
    const json_t *bj = json_object_get(cj, "backends");
    for (int t = 0; t < nbe; t++)
        if (bes[t]->role == FD_ROLE_FLASH && json_is_true(json_object_get(json_object_get(bj, bes[t]->name), "ok")))
            return bes[t]->name;
    const char *name;
    const json_t *b;
    json_object_foreach((json_t *)bj, name, b) {
        const char *role = json_string_value(json_object_get(b, "role"));
        const char *origin = json_string_value(json_object_get(b, "origin"));
        if (json_is_true(json_object_get(b, "ok")) && role && !strcmp(role, "flash") && origin &&
            !strcmp(origin, "given"))
            return name;
    }
    /* else a supplied standard output (imported eager attention, judged by the standard rule) */
    json_object_foreach((json_t *)bj, name, b) {
        const char *origin = json_string_value(json_object_get(b, "origin"));
        if (json_is_true(json_object_get(b, "ok")) && origin && !strcmp(origin, "given")) return name;
    }
    return NULL;
}

/* Whether --explain asks for this judged case and it has no explanation yet. */
static int wants_explain(const fd_run_opts *o, const json_t *cj)
{
    if (o->explain == FD_EXPLAIN_NONE || json_object_get(cj, "explain") || json_object_get(cj, "explain_error"))
        return 0;
    const char *v = json_string_value(json_object_get(cj, "verdict"));
    return o->explain == FD_EXPLAIN_ALL || (v && (!strcmp(v, "FAIL") || !strcmp(v, "UNJUDGED")));
}

/* Explains a judged case into cj: "explain" (fd_explain_json), or "explain_error" when the
 * explanation failed; the case itself is never lost. Interrupted: nothing is attached (a
 * resumed run explains the case then). Returns 1 when cj changed. */
static int explain_into(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe,
                        const fd_run_opts *o, json_t *cj)
{
    if (!wants_explain(o, cj)) return 0;
    const char *be = explain_backend(bes, nbe, cj);
    if (!be) {
        json_object_set_new(cj, "explain_error", json_string("no flash backend ran on this case"));
        return 1;
    }
    fd_explain_opts eo = {be, NULL, o->jobs};
    fd_explanation *ex = malloc(sizeof *ex);
    char err[1024];
    int rc = ex ? fd_explain_case(cf, c, &eo, ex, err, sizeof err) : -1;
    if (!ex) snprintf(err, sizeof err, "out of memory");
    if (rc == 0) {
        json_t *ej = fd_explain_json(ex);
        fd_explanation_free(ex);
        free(ex);
        if (ej) {
            json_object_set_new(cj, "explain", ej);
            return 1;
        }
        snprintf(err, sizeof err, "cannot encode the explanation as JSON");
    } else {
        free(ex);
        if (fd_interrupted) return 0;
    }
    if (!o->quiet) fprintf(stderr, "flashdrift: warning: explain %s: %s\n", c->id, err);
    json_object_set_new(cj, "explain_error", json_string(err));
    return 1;
}

/* One stderr line: the backends that run, and why when --backend auto chose them (a
 * computed baseline, when one is needed, is named in each case's report). */
static void say_backends(const char *spec, const char *names)
{
    fprintf(stderr, "backends: ");
    if (!*names) fputs("none, the outputs are given (imported tensors)", stderr);
    for (const char *s = names; *s; s++) {
        if (*s == ',') fputs(", ", stderr);
        else fputc(*s, stderr);
    }
    if (!strcmp(spec, "auto")) {
#ifdef FD_HAVE_CUDA
        const char *why = fd_gpu_present() ? "GPU present" : "no GPU, CPU replay";
#else
        const char *why = "built without CUDA, CPU replay";
#endif
        fprintf(stderr, " (auto: %s)", why);
    }
    fputc('\n', stderr);
}

/* --- ranks (fd_mpi.h, docs/mpi.md) ------------------------------------------------------ */

/* The journal of one rank in out: rank 0's is cases.partial.jsonl, a one-process run's. */
static void journal_path(char *buf, size_t len, const char *out, int rank)
{
    if (rank == 0) snprintf(buf, len, "%s/cases.partial.jsonl", out);
    else snprintf(buf, len, "%s/cases.partial.rank%d.jsonl", out, rank);
}

/* The other ranks' journals in dir (cases.partial.rankN.jsonl), whatever the number of
 * ranks that wrote them, sorted; returns the count (names: caller frees; out of memory:
 * the names read so far). */
static int rank_journals(const char *dir, char ***names)
{
    *names = NULL;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        static const char pre[] = "cases.partial.rank", suf[] = ".jsonl";
        const char *s = e->d_name;
        if (strncmp(s, pre, sizeof pre - 1)) continue;
        s += sizeof pre - 1;
        size_t digits = strspn(s, "0123456789");
        if (!digits || strcmp(s + digits, suf)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            char **t = realloc(*names, (size_t)cap * sizeof *t);
            if (!t) break;
            *names = t;
        }
        if (!((*names)[n] = strdup(e->d_name))) break;
        n++;
    }
    closedir(d);
    for (int i = 1; i < n; i++) /* insertion sort: a handful of names */
        for (int j = i; j > 0 && strcmp((*names)[j - 1], (*names)[j]) > 0; j--) {
            char *t = (*names)[j];
            (*names)[j] = (*names)[j - 1];
            (*names)[j - 1] = t;
        }
    return n;
}

/* Removes the other ranks' journals in dir (done: their cases are in rank 0's). */
static void remove_rank_journals(const char *dir)
{
    char **names, path[4400];
    const int n = rank_journals(dir, &names);
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
        free(names[i]);
    }
    free(names);
}

/* Which rank runs each case: -1 not run (--filter), 0 for the cases a journal kept (rank 0
 * reports, and explains them when --explain asks for it), else the longest-processing-
 * time-first assignment of the pending cases by fd_progress_cost (the ETA's estimate): the
 * costliest case goes to the rank with the least work so far, the lowest rank on a tie.
 * The same on every rank (a function of the case file, the filter and the journal). */
static int assign_cases(const fd_casefile *cf, const fd_run_opts *o, const char *kept, int nranks, int *owner)
{
    int *order = malloc((size_t)cf->ncases * sizeof *order);
    double *cost = malloc((size_t)cf->ncases * sizeof *cost), *load = calloc((size_t)nranks, sizeof *load);
    if (!order || !cost || !load) {
        free(order);
        free(cost);
        free(load);
        return -1;
    }
    int n = 0;
    for (int i = 0; i < cf->ncases; i++) {
        owner[i] = -1;
        if (o->filter && !strstr(cf->cases[i].id, o->filter)) continue;
        owner[i] = 0;
        if (kept[i]) continue;
        cost[i] = fd_progress_cost(cf, &cf->cases[i]);
        int j = n++; /* insertion by cost, descending; stable for equal costs */
        while (j > 0 && cost[order[j - 1]] < cost[i]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    for (int k = 0; k < n; k++) {
        int r = 0;
        for (int q = 1; q < nranks; q++)
            if (load[q] < load[r]) r = q;
        owner[order[k]] = r;
        load[r] += cost[order[k]];
    }
    free(order);
    free(cost);
    free(load);
    return 0;
}

/* One rank's share for rank 0: "STATUS\tMESSAGE\n" then one "INDEX JSON\n" per case it
 * ran. NULL when out of memory. */
static char *share_text(int status, const char *msg, json_t *const *got, const int *owner, int rank, int ncases,
                        size_t *len)
{
    size_t cap = 256 + strlen(msg), n = 0;
    char *t = malloc(cap);
    if (!t) return NULL;
    n = (size_t)snprintf(t, cap, "%d\t", status);
    for (const char *s = msg; *s; s++) t[n++] = *s == '\n' ? ' ' : *s;
    t[n++] = '\n';
    for (int i = 0; i < ncases; i++) {
        if (owner[i] != rank || !got[i]) continue;
        char *line = json_dumps(got[i], JSON_COMPACT | JSON_REAL_PRECISION(17));
        const size_t ln = line ? strlen(line) : 0;
        if (line && n + ln + 32 > cap) {
            cap = 2 * (n + ln + 32);
            char *u = realloc(t, cap);
            if (!u) {
                free(line);
                line = NULL;
            } else t = u;
        }
        if (!line) {
            free(t);
            return NULL;
        }
        n += (size_t)snprintf(t + n, cap - n, "%d ", i);
        memcpy(t + n, line, ln);
        n += ln;
        t[n++] = '\n';
        free(line);
    }
    *len = n;
    return t;
}

/* Rank 0: reads rank r's share into got[] (cases) and *status/msg; -1 when it is damaged. */
static int read_share(const char *t, int r, const fd_casefile *cf, const int *owner, json_t **got, int *status,
                      char *msg, size_t msglen)
{
    char *end;
    *status = (int)strtol(t, &end, 10);
    if (*end != '\t') return -1;
    const char *nl = strchr(end, '\n');
    if (!nl) return -1;
    snprintf(msg, msglen, "%.*s", (int)(nl - end - 1), end + 1);
    for (const char *s = nl + 1; *s;) {
        const long i = strtol(s, &end, 10);
        if (*end != ' ' || i < 0 || i >= cf->ncases || owner[i] != r) return -1;
        nl = strchr(end, '\n');
        if (!nl) return -1;
        json_t *j = json_loadb(end + 1, (size_t)(nl - end - 1), JSON_REJECT_DUPLICATES, NULL);
        if (!j) return -1;
        json_decref(got[i]);
        got[i] = j;
        s = nl + 1;
    }
    return 0;
}

/* One stderr line for a case that failed or could not be judged. */
static void say_failed(const char *id, const json_t *cj)
{
    const char *v = json_string_value(json_object_get(cj, "verdict"));
    const char *why_not = json_string_value(json_object_get(cj, "reasons"));
    fprintf(stderr, "%s %s: %s\n", v, id, why_not ? why_not : "(no reasons)");
    const char *why = json_string_value(json_object_get(json_object_get(cj, "explain"), "summary"));
    if (why) fprintf(stderr, "    explain: %s\n", why);
}

static int is_failed(const json_t *cj)
{
    const char *v = json_string_value(json_object_get(cj, "verdict"));
    return v && (!strcmp(v, "FAIL") || !strcmp(v, "UNJUDGED"));
}

/* Rank 0, on stderr: the cases each rank ran this time (kept cases left out) and the sum
 * of their "seconds": the busiest rank sets the wall time. */
static void say_ranks(json_t *const *got, json_t *const *kept, const int *owner, int ncases, int nranks)
{
    fprintf(stderr, "ranks: %d; cases run and busy seconds per rank:", nranks);
    for (int r = 0; r < nranks && r < 64; r++) {
        int n = 0;
        double sec = 0.0;
        for (int i = 0; i < ncases; i++)
            if (owner[i] == r && got[i] && !kept[i]) {
                const json_t *t = json_object_get(got[i], "seconds");
                if (!json_is_number(t)) continue;
                n++;
                sec += json_number_value(t);
            }
        fprintf(stderr, " %d:%d/%.1fs", r, n, sec);
    }
    if (nranks > 64) fprintf(stderr, " ...");
    fputc('\n', stderr);
}

#ifdef FD_TEST_HOOKS
/* The test hooks of tests/test_mpi.c (CMake option FD_TEST_HOOKS): rank FD_TEST_RANK (default
 * the last) behaves as if, after it computed N cases, it was killed (FD_TEST_DIE_AFTER_CASES=N:
 * SIGKILL, no handler runs) or its disk was full (FD_TEST_NOSPC_AFTER_CASES=N: the Nth case's
 * journal line fails with ENOSPC). */
static int test_hook(const char *var, int computed, int rank, int nranks)
{
    const char *n = getenv(var), *r = getenv("FD_TEST_RANK");
    return n && atoi(n) == computed && (r ? atoi(r) : nranks - 1) == rank;
}
#endif

int fd_run_casefile(const fd_casefile *cf, const fd_run_opts *o, json_t **report_out,
                    fd_run_outcome *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    *report_out = NULL;
    /* --reference and --reference-budget override the case file's (a shallow copy) */
    fd_casefile cfo = *cf;
    if (o->reference) (void)fd_reftier_parse(o->reference, &cfo.reference);
    if (o->reference_budget >= 0.0) cfo.reference_budget = o->reference_budget;
    cf = &cfo;
    err[0] = 0;
    const int rank = fd_mpi_rank(), nranks = fd_mpi_size(), quiet = o->quiet || rank != 0;
    int nmatch = 0;
    for (int i = 0; i < cf->ncases; i++) nmatch += !o->filter || strstr(cf->cases[i].id, o->filter);
    if (!nmatch) { /* running nothing is not a pass */
        snprintf(err, errlen, "%s: no case matches%s%s (%d cases in the file)", cf->path, o->filter ? " --filter " : "",
                 o->filter ? o->filter : "", cf->ncases);
        out->status = FD_EXIT_USAGE;
        return -1;
    }
    const fd_backend *bes[FD_MAX_BACKENDS];
    int nbe = fd_backends_select(o->backend, bes, err, errlen);
    if (nbe < 0) {
        out->status = FD_EXIT_USAGE;
        return -1;
    }
    if (o->repeat < 1 || o->repeat > 64) {
        snprintf(err, errlen, "--repeat expects an integer in [1, 64]");
        out->status = FD_EXIT_USAGE;
        return -1;
    }
    char names[256] = "";
    for (int i = 0; i < nbe; i++) {
        if (i) strncat(names, ",", sizeof names - strlen(names) - 1);
        strncat(names, bes[i]->name, sizeof names - strlen(names) - 1);
    }
    json_t *report = fd_report_new(cf, nbe ? names : o->backend, o->jobs);
    /* the one field of the machine section a one-process run lacks (docs/mpi.md) */
    json_object_set_new(json_object_get(report, "machine"), "ranks", json_integer(nranks));
    json_t *header = journal_header(cf, report, o);
    json_t **done = calloc((size_t)cf->ncases, sizeof *done), **got = calloc((size_t)cf->ncases, sizeof *got);
    int *owner = malloc((size_t)cf->ncases * sizeof *owner);
    char *kept = calloc((size_t)cf->ncases + 1, 1); /* + 1: the status travels in front of the flags */
    char jpath[4200];
    journal_path(jpath, sizeof jpath, o->out, rank);
    FILE *journal = NULL;
    int header_written = 0;
    if (!done || !got || !owner || !kept) {
        snprintf(err, errlen, "out of memory");
        out->status = FD_EXIT_INTERNAL;
        goto fail;
    }
    /* Rank 0 reads the journals (its own and the other ranks', of any earlier number of
     * ranks), merges them into its own and tells every rank which cases are kept. */
    int st = FD_EXIT_PASS;
    if (rank == 0 && o->resume) {
        int found = 0, f = 0;
        st = fd_journal_read(jpath, cf, header, done, &found, err, errlen) ? FD_EXIT_USAGE : FD_EXIT_PASS;
        char **rj = NULL;
        const int nrj = st ? 0 : rank_journals(o->out, &rj);
        for (int k = 0; k < nrj; k++) {
            char p[4400];
            snprintf(p, sizeof p, "%s/%s", o->out, rj[k]);
            if (!st && fd_journal_read(p, cf, header, done, &f, err, errlen)) st = FD_EXIT_USAGE;
            found |= f;
            free(rj[k]);
        }
        free(rj);
        int nkept = 0;
        for (int i = 0; i < cf->ncases; i++) nkept += done[i] != NULL;
        if (!st && !found) fprintf(stderr, "flashdrift: nothing to resume in %s; starting from the first case\n", o->out);
        else if (!st && !nrj) fprintf(stderr, "flashdrift: resuming: %d finished cases kept from %s\n", nkept, jpath);
        else if (!st)
            fprintf(stderr, "flashdrift: resuming: %d finished cases kept from %s and %d other ranks' journals\n",
                    nkept, jpath, nrj);
        /* Rewrite rank 0's journal with what is kept (drops a truncated tail), atomically;
         * then the other ranks' journals are redundant. */
        char tmp[4300];
        snprintf(tmp, sizeof tmp, "%s.tmp", jpath);
        FILE *t = st ? NULL : fopen(tmp, "w");
        int bad = !st && !t;
        if (t) {
            bad |= write_line(t, header);
            for (int i = 0; i < cf->ncases; i++)
                if (done[i]) bad |= write_line(t, done[i]);
            bad |= fsync(fileno(t)) != 0;
            bad |= fclose(t) != 0;
            bad |= rename(tmp, jpath) != 0;
        }
        if (bad) {
            snprintf(err, errlen, "%s: cannot rewrite the journal: %s (the journal is unchanged)", jpath,
                     strerror(errno));
            unlink(tmp);
            st = FD_EXIT_INTERNAL;
        }
        if (!st) remove_rank_journals(o->out);
        header_written = 1;
    } else if (rank == 0) {
        remove_rank_journals(o->out); /* an earlier run's, of more ranks: not this run's */
    }
    if (nranks > 1) {
        kept[0] = (char)(st == FD_EXIT_PASS ? 0 : st == FD_EXIT_USAGE ? 1 : 2);
        for (int i = 0; i < cf->ncases; i++) kept[i + 1] = done[i] != NULL;
        if (fd_mpi_bcast(kept, (size_t)cf->ncases + 1)) {
            snprintf(err, errlen, "MPI_Bcast failed");
            out->status = FD_EXIT_INTERNAL;
            goto fail;
        }
        st = kept[0] == 0 ? FD_EXIT_PASS : kept[0] == 1 ? FD_EXIT_USAGE : FD_EXIT_INTERNAL;
        memmove(kept, kept + 1, (size_t)cf->ncases);
    } else {
        for (int i = 0; i < cf->ncases; i++) kept[i] = done[i] != NULL;
    }
    if (st) { /* rank 0 said why */
        out->status = st;
        goto fail;
    }
    if (assign_cases(cf, o, kept, nranks, owner)) {
        snprintf(err, errlen, "out of memory");
        out->status = FD_EXIT_INTERNAL;
        goto fail;
    }
    journal = fd_fopen_output(jpath, rank == 0 && o->resume, err, errlen);
    st = fd_mpi_max(journal ? FD_EXIT_PASS : FD_EXIT_USAGE);
    if (st) {
        if (journal) fclose(journal);
        if (!journal && nranks > 1) {
            size_t n = strlen(err);
            snprintf(err + n, errlen - n, " (rank %d; no case was run)", rank);
        }
        out->status = st;
        goto fail;
    }
    fd_signals_catch();
    if (!quiet) say_backends(o->backend, names);

    out->status = FD_EXIT_PASS;
    double cost = 0.0;
    int mine = 0;
    for (int i = 0; i < cf->ncases; i++)
        if (owner[i] >= 0) {
            out->total++;
            if (owner[i] != rank) continue;
            mine++;
            if (!done[i]) cost += fd_progress_cost(cf, &cf->cases[i]);
        }
    fd_progress pg;
    fd_progress_begin(&pg, !quiet, mine, cost); /* rank 0's share under mpirun */
    int jbad = 0, jerrno = 0, computed = 0; /* a journal line could not be written: stop, keeping what is finished */
    for (int i = 0; i < cf->ncases && !fd_interrupted && !jbad; i++) {
        const fd_case *c = &cf->cases[i];
        if (owner[i] != rank) continue;
        json_t *cj;
        if (done[i]) {
            cj = json_incref(done[i]);
            out->nresumed++;
            /* kept without the explanation this run asks for: explain it now, journal it again
             * (a later line of the same case replaces the earlier one) */
            if (wants_explain(o, cj)) fd_progress_clear(&pg); /* its warning must not land in the bar */
            if (explain_into(cf, c, bes, nbe, o, cj) && write_line(journal, cj)) {
                jbad = 1;
                jerrno = errno;
            }
            if (is_failed(cj)) {
                fd_progress_clear(&pg);
                say_failed(c->id, cj);
            }
        } else {
            fd_progress_start(&pg, c->id);
            fd_case_result res;
            if (fd_run_case(cf, c, bes, nbe, o->jobs, o->repeat, &res, err, errlen)) {
                if (fd_interrupted) break;
                out->status = FD_EXIT_INTERNAL;
                break;
            }
            cj = fd_report_case_json(&res);
            if (wants_explain(o, cj)) fd_progress_clear(&pg);
            explain_into(cf, c, bes, nbe, o, cj);
            computed++;
            int nospc = 0;
#ifdef FD_TEST_HOOKS
            nospc = test_hook("FD_TEST_NOSPC_AFTER_CASES", computed, rank, nranks);
#endif
            if (nospc || (!header_written && write_line(journal, header)) || write_line(journal, cj)) {
                jbad = 1;
                jerrno = nospc ? ENOSPC : errno;
            }
            header_written = 1;
            if (is_failed(cj) && rank == 0) { /* rank 0 prints the other ranks' after the merge */
                fd_progress_clear(&pg);
                say_failed(c->id, cj);
            }
            fd_case_result_free(&res);
#ifdef FD_TEST_HOOKS
            if (test_hook("FD_TEST_DIE_AFTER_CASES", computed, rank, nranks)) {
                fprintf(stderr, "flashdrift: rank %d: FD_TEST_DIE_AFTER_CASES=%d: killing myself\n", rank, computed);
                raise(SIGKILL);
            }
#endif
        }
        got[i] = cj;
        out->nrun++;
        fd_progress_done(&pg, done[i] ? 0.0 : fd_progress_cost(cf, c), !done[i]);
        if (jbad) {
            /* the case is in the report (and report.partial.json); lines already in the
             * journal stay there for --resume */
            fd_progress_clear(&pg);
            snprintf(err, errlen, "%s: cannot write the journal: %s; stopping after %d of %d cases", jpath,
                     strerror(jerrno), out->nrun, mine);
            out->status = FD_EXIT_INTERNAL;
        }
    }
    (void)computed; /* read by the test hooks alone */
    fd_progress_end(&pg);
    /* the journal is the run's only copy until the reports are written: it must be on disk */
    const int jsync = fsync(fileno(journal)) != 0 && errno != EINVAL; /* EINVAL: cannot sync this file */
    const int jerr = errno;
    const int jclose = fclose(journal) != 0;
    if ((jsync || jclose) && !jbad && out->status == FD_EXIT_PASS) {
        snprintf(err, errlen, "%s: cannot write the journal: %s", jpath, strerror(jsync ? jerr : errno));
        out->status = FD_EXIT_INTERNAL;
    }
    if (fd_interrupted) out->status = FD_EXIT_INTERRUPTED;
    if (nranks > 1) {
        /* Rank 0 merges: every rank's finished cases (whatever its status), and the worst
         * status with the first failing rank's message. The other ranks stay quiet. */
        size_t len = 0;
        char *text = share_text(out->status, err, got, owner, rank, cf->ncases, &len), **all = NULL;
        if (!text) { /* cannot tell rank 0 anything but the status */
            text = malloc(16);
            if (!text) abort();
            len = (size_t)snprintf(text, 16, "%d\t\n", FD_EXIT_INTERNAL);
        }
        char gerr[256];
        if (fd_mpi_gather_text(text, len, &all, gerr, sizeof gerr)) {
            free(text);
            snprintf(err, errlen, "%s", gerr);
            out->status = FD_EXIT_INTERNAL;
            goto fail;
        }
        free(text);
        if (rank != 0) {
            err[0] = 0; /* rank 0 reports it */
            goto fail;
        }
        int worst = out->status, nmerged = 0;
        if (out->status != FD_EXIT_PASS && out->status != FD_EXIT_INTERRUPTED && err[0]) {
            char m[1024];
            snprintf(m, sizeof m, "%s", err);
            snprintf(err, errlen, "rank 0: %s", m);
        }
        for (int r = 1; r < nranks; r++) {
            int rs;
            char m[1024];
            if (read_share(all[r], r, cf, owner, got, &rs, m, sizeof m)) {
                rs = FD_EXIT_INTERNAL;
                snprintf(m, sizeof m, "its cases could not be read back");
            }
            if (rs > worst || (rs == worst && rs != FD_EXIT_PASS && !err[0])) {
                if (rs != FD_EXIT_INTERRUPTED) snprintf(err, errlen, "rank %d: %s", r, m);
                worst = rs;
            }
        }
        for (int r = 0; r < nranks; r++) free(all[r]);
        free(all);
        out->status = worst;
        out->nrun = 0;
        for (int i = 0; i < cf->ncases; i++) {
            if (!got[i]) continue;
            out->nrun++;
            if (owner[i] == 0) continue;
            nmerged++;
            if (is_failed(got[i])) say_failed(cf->cases[i].id, got[i]);
        }
        if (!o->quiet) say_ranks(got, done, owner, cf->ncases, nranks);
        if (out->status != FD_EXIT_PASS && nmerged) {
            /* keep every finished case in rank 0's journal too: a rank that could not write
             * its own loses nothing, and --resume reads one file less */
            char jerrs[1024];
            FILE *j = fd_fopen_output(jpath, 1, jerrs, sizeof jerrs);
            int bad = !j;
            if (j) {
                if (!header_written) bad |= write_line(j, header);
                for (int i = 0; i < cf->ncases; i++)
                    if (got[i] && owner[i] != 0) bad |= write_line(j, got[i]);
                bad |= fsync(fileno(j)) != 0 && errno != EINVAL;
                bad |= fclose(j) != 0;
            }
            if (bad) fprintf(stderr, "flashdrift: warning: %s: cannot keep the other ranks' cases in it: %s\n", jpath,
                             j ? strerror(errno) : jerrs);
        }
    }
    out->nfail = 0;
    for (int i = 0; i < cf->ncases; i++)
        if (got[i]) {
            out->nfail += is_failed(got[i]);
            fd_report_add_case(report, got[i]); /* case-file order, whichever rank ran it */
            got[i] = NULL;
        }
    fd_report_finish(report, out->status == FD_EXIT_PASS);
    for (int i = 0; i < cf->ncases; i++) json_decref(done[i]);
    free(done);
    free(got);
    free(owner);
    free(kept);
    json_decref(header);
    *report_out = report;
    if (out->status == FD_EXIT_PASS) return 0;
    if (out->status == FD_EXIT_INTERRUPTED) snprintf(err, errlen, "interrupted");
    return -1;
fail:
    if (done)
        for (int i = 0; i < cf->ncases; i++) json_decref(done[i]);
    if (got)
        for (int i = 0; i < cf->ncases; i++) json_decref(got[i]);
    free(done);
    free(got);
    free(owner);
    free(kept);
    json_decref(header);
    json_decref(report);
    return -1;
}

/* The outputs of a finished run, in the order they are written. */
static const char *const run_outputs[] = {"report.json", "summary.md", "report.html", NULL};

int fd_run_write_outputs(const json_t *report, const char *dir, int quiet, char *err, size_t errlen)
{
    /* Each file is replaced atomically (fd_write_text_atomic). When one cannot be written,
     * it and the outputs after it are removed, so that no file of an earlier run is left
     * beside this run's: the folder holds this run's outputs or none, and the journal is
     * kept, so that `run --resume` writes them again without recomputing a case. */
    char path[4200];
    int failed = -1;
    snprintf(path, sizeof path, "%s/report.json", dir);
    if (fd_write_json_atomic(path, report, err, errlen)) failed = 0;
    snprintf(path, sizeof path, "%s/summary.md", dir);
    if (failed < 0 && fd_render_summary_md(report, path, err, errlen)) failed = 1;
    snprintf(path, sizeof path, "%s/report.html", dir);
    if (failed < 0) {
        /* gnuplot missing is the one failure that is only a warning (the HTML report is a
         * convenience, and gnuplot an optional package); a stale report.html is removed all
         * the same */
        char herr[1024];
        int h = fd_render_html(report, NULL, NULL, path, herr, sizeof herr);
        if (h > 0) {
            if (!quiet) fprintf(stderr, "flashdrift: warning: %s; report.html not written\n", herr);
            if (unlink(path) != 0 && errno != ENOENT) {
                snprintf(err, errlen, "%s: cannot remove the earlier run's file: %s", path, strerror(errno));
                return -1;
            }
        } else if (h < 0) {
            /* a full disk, or gnuplot failing: either way this run has no report.html */
            snprintf(err, errlen, "report.html not written: %s", herr);
            failed = 2;
        }
    }
    if (failed >= 0) {
        for (int i = failed; run_outputs[i]; i++) {
            snprintf(path, sizeof path, "%s/%s", dir, run_outputs[i]);
            unlink(path);
        }
        size_t n = strlen(err);
        snprintf(err + n, errlen - n, " (finished cases kept in %s/cases.partial.jsonl: run --resume to write "
                 "the reports again)", dir);
        return -1;
    }
    /* the run is complete: the journal and a partial report of an earlier, interrupted run
     * would only be mistaken for this one's */
    snprintf(path, sizeof path, "%s/cases.partial.jsonl", dir);
    unlink(path);
    remove_rank_journals(dir);
    snprintf(path, sizeof path, "%s/report.partial.json", dir);
    unlink(path);
    return 0;
}

/* Keeps a partial report beside a previous complete one; prints what happened. */
static void write_partial(const json_t *report, const char *out, const fd_run_outcome *oc)
{
    char path[4200], err[1024];
    snprintf(path, sizeof path, "%s/report.partial.json", out);
    if (fd_write_json_atomic(path, report, err, sizeof err))
        fprintf(stderr, "flashdrift: %s\n", err);
    else
        fprintf(stderr, "flashdrift: %s after %d of %d cases; finished cases in %s\n",
                oc->status == FD_EXIT_INTERRUPTED ? "interrupted" : "stopped", oc->nrun, oc->total, path);
}

const struct option fd_run_longopts[] = {
    {"out", required_argument, NULL, FD_OPT_RUN_OUT},
    {"backend", required_argument, NULL, FD_OPT_RUN_BACKEND},
    {"filter", required_argument, NULL, FD_OPT_RUN_FILTER},
    {"jobs", required_argument, NULL, FD_OPT_RUN_JOBS},
    {"repeat", required_argument, NULL, FD_OPT_RUN_REPEAT},
    {"quiet", no_argument, NULL, FD_OPT_RUN_QUIET},
    {"resume", no_argument, NULL, FD_OPT_RUN_RESUME},
    {"explain", required_argument, NULL, FD_OPT_RUN_EXPLAIN},
    {"reference", required_argument, NULL, FD_OPT_RUN_REFERENCE},
    {"reference-budget", required_argument, NULL, FD_OPT_RUN_REFERENCE_BUDGET},
    {NULL, 0, NULL, 0},
};

int fd_run_option(const char *cmd, int opt, const char *arg, fd_run_opts *o)
{
    switch (opt) {
    case FD_OPT_RUN_OUT: o->out = arg; return 0;
    case FD_OPT_RUN_BACKEND: o->backend = arg; return 0;
    case FD_OPT_RUN_FILTER: o->filter = arg; return 0;
    case FD_OPT_RUN_QUIET: o->quiet = 1; return 0;
    case FD_OPT_RUN_RESUME: o->resume = 1; return 0;
    case FD_OPT_RUN_JOBS:
    case FD_OPT_RUN_REPEAT: {
        const int jobs = opt == FD_OPT_RUN_JOBS;
        const long hi = jobs ? 1024 : 64;
        char *end = NULL;
        long v = strtol(arg, &end, 10);
        if (!*arg || *end || v < 1 || v > hi) {
            fd_usage_error(cmd, "--%s expects an integer in [1, %ld], got '%s'", jobs ? "jobs" : "repeat", hi, arg);
            return -1;
        }
        if (jobs) {
            o->jobs = (int)v;
#ifdef _OPENMP
            omp_set_num_threads(o->jobs); /* the CPU kernels' OpenMP rows, as the reference's */
#endif
        }
        else o->repeat = (int)v;
        return 0;
    }
    case FD_OPT_RUN_REFERENCE: {
        fd_reftier t;
        if (fd_reftier_parse(arg, &t)) {
            fd_usage_error(cmd, "--reference expects auto, cpu, gpu or mpfr, got '%s'", arg);
            return -1;
        }
        o->reference = arg;
        return 0;
    }
    case FD_OPT_RUN_REFERENCE_BUDGET: {
        char *end = NULL;
        const double v = strtod(arg, &end);
        if (!*arg || *end || !(v >= 0.0 && v <= 1e6)) {
            fd_usage_error(cmd, "--reference-budget expects seconds in [0, 1e6], got '%s'", arg);
            return -1;
        }
        o->reference_budget = v;
        return 0;
    }
    case FD_OPT_RUN_EXPLAIN:
        if (!strcmp(arg, "fail")) o->explain = FD_EXPLAIN_FAIL;
        else if (!strcmp(arg, "all")) o->explain = FD_EXPLAIN_ALL;
        else if (!strcmp(arg, "none")) o->explain = FD_EXPLAIN_NONE;
        else {
            fd_usage_error(cmd, "--explain expects fail, all or none, got '%s'", arg);
            return -1;
        }
        return 0;
    default:
        return 1;
    }
}

void fd_run_opts_default(fd_run_opts *o)
{
    memset(o, 0, sizeof *o);
    o->out = "out";
    o->backend = "auto";
    o->jobs = (int)sysconf(_SC_NPROCESSORS_ONLN);
    o->repeat = 1;
    o->explain = FD_EXPLAIN_FAIL;
    o->reference = NULL;
    o->reference_budget = -1.0;
}

/* Runs a loaded case file and writes the outputs; returns an exit code as
 * fd_run_and_write. */
int fd_run_and_write_cf(const fd_casefile *cf, const fd_run_opts *o, json_t **report_out)
{
    char err[1024];
    *report_out = NULL;
    const fd_backend *probe[FD_MAX_BACKENDS];
    const int bad = fd_backends_select(o->backend, probe, err, sizeof err) < 0 || fd_mkdir_p(o->out, err, sizeof err);
    if (bad) fprintf(stderr, "flashdrift: %s\n", err);
    if (fd_mpi_max(bad)) return FD_EXIT_USAGE; /* every rank stops when one cannot start */
    json_t *report = NULL;
    fd_run_outcome oc;
    if (fd_run_casefile(cf, o, &report, &oc, err, sizeof err)) {
        if (oc.status != FD_EXIT_INTERRUPTED && err[0]) fprintf(stderr, "flashdrift: %s\n", err);
        if (report) write_partial(report, o->out, &oc);
        json_decref(report);
        return oc.status;
    }
    if (!report) return oc.status; /* a rank other than 0: rank 0 writes the outputs */
    if (fd_run_write_outputs(report, o->out, o->quiet, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        json_decref(report);
        return FD_EXIT_INTERNAL;
    }
    *report_out = report;
    return oc.nfail ? FD_EXIT_GATE : FD_EXIT_PASS;
}

/* Runs a case file for run and gate: loads it, runs it, writes the outputs. Returns an
 * exit code; *report gets the complete report (caller frees) when it returns PASS/GATE. */
int fd_run_and_write(const char *casefile, const fd_run_opts *o, json_t **report_out)
{
    char err[1024];
    fd_casefile cf;
    *report_out = NULL;
    if (fd_casefile_load(casefile, &cf, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    int rc = fd_run_and_write_cf(&cf, o, report_out);
    fd_casefile_free(&cf);
    return rc;
}

int fd_cmd_run(int argc, char **argv)
{
    const char *casefile = NULL;
    fd_run_opts o;
    fd_run_opts_default(&o);
    fd_getopt g;
    if (fd_getopt_init(&g, "run", argc, argv, fd_run_longopts, NULL)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        if (c == FD_OPT_HELP) return FD_EXIT_PASS;
        if (c == FD_OPT_ERROR) return FD_EXIT_USAGE;
        if (c == FD_OPT_POSITIONAL) {
            if (casefile) return fd_usage_error("run", "one case file expected, got also %s", g.arg);
            casefile = g.arg;
        } else if (fd_run_option("run", c, g.arg, &o)) {
            return FD_EXIT_USAGE;
        }
    }
    if (!casefile) return fd_usage_error("run", "a CASEFILE is required");
    json_t *report = NULL;
    int rc = fd_run_and_write(casefile, &o, &report);
    if (report && !o.quiet) {
        json_t *t = json_object_get(report, "totals");
        printf("%lld cases: %lld PASS, %lld MARGINAL, %lld FAIL, %lld UNDECIDED -> %s/report.json\n",
               json_integer_value(json_object_get(t, "cases")), json_integer_value(json_object_get(t, "pass")),
               json_integer_value(json_object_get(t, "marginal")), json_integer_value(json_object_get(t, "fail")),
               json_integer_value(json_object_get(t, "undecided")), o.out);
    }
    json_decref(report);
    return rc;
}
