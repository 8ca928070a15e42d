/* fd_cmd_run.c: `flashdrift run` and `flashdrift list`; see fd_cmds.h. */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_case.h"
#include "fd_cmds.h"
#include "fd_report.h"
#include "fd_run.h"

void fd_usage(FILE *f)
{
    fprintf(f,
            "usage: flashdrift run CASEFILE [--backend auto|cpu|cuda|NAME[,NAME...]] [--out DIR]\n"
            "                       [--jobs N] [--filter SUBSTRING] [--quiet]\n"
            "       flashdrift list CASEFILE\n"
            "       flashdrift --help | --version\n\n"
            "run   runs every case of CASEFILE through the backends and the MPFR reference and\n"
            "      writes DIR/report.json (canonical) and DIR/summary.md (default DIR: out).\n"
            "list  prints the expanded cases, one id per line.\n\n"
            "backends: cpu-flash, cpu-standard (the CPU replay; 'cpu' runs both);\n"
            "          'auto' picks the GPU backends when a GPU is present, else 'cpu'.\n"
            "exit: 0 all pass, 1 a case failed, 2 usage or input error, 3 internal error,\n"
            "      130 interrupted (finished cases are in DIR/report.partial.json).\n");
}

static void on_signal(int sig)
{
    (void)sig;
    fd_interrupted = 1;
}

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

static void progress(int done, int total, const char *id)
{
    const int w = 30;
    int fill = total ? done * w / total : w;
    fprintf(stderr, "\r[");
    for (int i = 0; i < w; i++) fputc(i < fill ? '=' : ' ', stderr);
    fprintf(stderr, "] %d/%d %-60.60s", done, total, id);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

int fd_cmd_list(int argc, char **argv)
{
    char err[1024];
    fd_casefile cf;
    if (argc < 1) {
        fd_usage(stderr);
        return FD_EXIT_USAGE;
    }
    if (fd_casefile_load(argv[0], &cf, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    for (int i = 0; i < cf.ncases; i++) printf("%s\n", cf.cases[i].id);
    fprintf(stderr, "%d cases\n", cf.ncases);
    fd_casefile_free(&cf);
    return FD_EXIT_PASS;
}

int fd_cmd_run(int argc, char **argv)
{
    const char *casefile = NULL, *out = "out", *backend = "auto", *filter = NULL;
    int jobs = (int)sysconf(_SC_NPROCESSORS_ONLN), quiet = 0;
    char err[1024];
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL;
        if (!strcmp(a, "--out")) dst = &out;
        else if (!strcmp(a, "--backend")) dst = &backend;
        else if (!strcmp(a, "--filter")) dst = &filter;
        if (dst) {
            if (i + 1 >= argc) {
                fprintf(stderr, "flashdrift: %s needs a value\n", a);
                return FD_EXIT_USAGE;
            }
            *dst = argv[++i];
        } else if (!strcmp(a, "--jobs")) {
            char *end;
            long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
            if (i + 1 >= argc || *end || v < 1 || v > 1024) {
                fprintf(stderr, "flashdrift: --jobs expects an integer in [1, 1024]\n");
                return FD_EXIT_USAGE;
            }
            jobs = (int)v;
            i++;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "flashdrift: unknown option %s\n", a);
            fd_usage(stderr);
            return FD_EXIT_USAGE;
        } else if (!casefile) {
            casefile = a;
        } else {
            fprintf(stderr, "flashdrift: one case file expected, got also %s\n", a);
            return FD_EXIT_USAGE;
        }
    }
    if (!casefile) {
        fd_usage(stderr);
        return FD_EXIT_USAGE;
    }
    fd_casefile cf;
    if (fd_casefile_load(casefile, &cf, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    const fd_backend *bes[FD_MAX_BACKENDS];
    int nbe = fd_backends_select(backend, bes, err, sizeof err);
    if (nbe < 0 || fd_mkdir_p(out, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        fd_casefile_free(&cf);
        return FD_EXIT_USAGE;
    }
    char names[256] = "";
    for (int i = 0; i < nbe; i++) {
        if (i) strncat(names, ",", sizeof names - strlen(names) - 1);
        strncat(names, bes[i]->name, sizeof names - strlen(names) - 1);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    char path[4200], jpath[4200];
    snprintf(jpath, sizeof jpath, "%s/cases.partial.jsonl", out);
    FILE *journal = fopen(jpath, "w");
    if (!journal) {
        fprintf(stderr, "flashdrift: %s: cannot write: %s\n", jpath, strerror(errno));
        fd_casefile_free(&cf);
        return FD_EXIT_USAGE;
    }
    json_t *report = fd_report_new(&cf, names, jobs);
    const int bar = !quiet && isatty(2);
    int nfail = 0, nrun = 0, rc = FD_EXIT_PASS;
    int total = 0;
    for (int i = 0; i < cf.ncases; i++) total += !filter || strstr(cf.cases[i].id, filter);
    for (int i = 0; i < cf.ncases && !fd_interrupted; i++) {
        const fd_case *c = &cf.cases[i];
        if (filter && !strstr(c->id, filter)) continue;
        if (bar) progress(nrun, total, c->id);
        fd_case_result res;
        if (fd_run_case(&cf, c, bes, nbe, jobs, &res, err, sizeof err)) {
            if (fd_interrupted) break;
            fprintf(stderr, "%sflashdrift: %s\n", bar ? "\n" : "", err);
            rc = FD_EXIT_INTERNAL;
            break;
        }
        json_t *cj = fd_report_case_json(&res);
        char *line = json_dumps(cj, JSON_COMPACT | JSON_REAL_PRECISION(17));
        if (line) {
            fprintf(journal, "%s\n", line);
            fflush(journal);
            free(line);
        }
        fd_report_add_case(report, cj);
        if (res.verdict == FD_FAIL) {
            nfail++;
            fprintf(stderr, "%sFAIL %s: %s\n", bar ? "\n" : "", c->id, res.reasons);
        }
        fd_case_result_free(&res);
        nrun++;
    }
    if (bar) progress(nrun, total, "");
    fclose(journal);
    int complete = !fd_interrupted && rc == FD_EXIT_PASS;
    fd_report_finish(report, complete);
    if (!complete) {
        /* Keep what finished; leave a previous complete report.json untouched. */
        snprintf(path, sizeof path, "%s/report.partial.json", out);
        if (fd_write_json_atomic(path, report, err, sizeof err))
            fprintf(stderr, "flashdrift: %s\n", err);
        else
            fprintf(stderr, "flashdrift: %s after %d of %d cases; finished cases in %s\n",
                    fd_interrupted ? "interrupted" : "stopped", nrun, total, path);
        json_decref(report);
        fd_casefile_free(&cf);
        return fd_interrupted ? FD_EXIT_INTERRUPTED : rc;
    }
    snprintf(path, sizeof path, "%s/report.json", out);
    if (fd_write_json_atomic(path, report, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_INTERNAL;
    } else {
        char md[4200];
        snprintf(md, sizeof md, "%s/summary.md", out);
        if (fd_render_summary_md(report, md, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = FD_EXIT_INTERNAL;
        }
        unlink(jpath);
        json_t *t = json_object_get(report, "totals");
        if (!quiet)
            printf("%d cases: %lld PASS, %lld MARGINAL, %lld FAIL, %lld UNDECIDED -> %s\n", nrun,
                   json_integer_value(json_object_get(t, "pass")),
                   json_integer_value(json_object_get(t, "marginal")),
                   json_integer_value(json_object_get(t, "fail")),
                   json_integer_value(json_object_get(t, "undecided")), path);
        if (rc == FD_EXIT_PASS && nfail) rc = FD_EXIT_GATE;
    }
    json_decref(report);
    fd_casefile_free(&cf);
    return rc;
}

