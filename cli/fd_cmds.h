/* fd_cmds.h: the subcommands of flashdrift. Each takes the arguments after its name
 * and returns the process exit code:
 * 0 pass, 1 gate failed (a case failed), 2 usage or input error, 3 internal or GPU error,
 * 130 interrupted (main turns it into 143 when the signal was SIGTERM: fd_signal.h).
 * Options are parsed with fd_getopt (fd_opt.h); the usage texts live in fd_usage.c. */
#ifndef FD_CMDS_H
#define FD_CMDS_H
#include <stddef.h>
#include <stdio.h>
#include <jansson.h>

enum {
    FD_EXIT_PASS = 0,
    FD_EXIT_GATE = 1,
    FD_EXIT_USAGE = 2,
    FD_EXIT_INTERNAL = 3,
    FD_EXIT_INTERRUPTED = 130
};

/* flashdrift's usage: every command's synopsis and one line each. */
void fd_usage(FILE *f);
/* One command's usage (synopsis, what it does, options, exit codes); -1 for an unknown name. */
int fd_cmd_usage(const char *cmd, FILE *f);
int fd_cmd_run(int argc, char **argv);
int fd_cmd_list(int argc, char **argv);
int fd_cmd_gate(int argc, char **argv);
int fd_cmd_diff(int argc, char **argv);
int fd_cmd_baseline(int argc, char **argv);
int fd_cmd_html(int argc, char **argv);
/* flashdrift explain: attribution of one case or of a report's failing cases; fd_cmd_explain.c. */
int fd_cmd_explain(int argc, char **argv);
/* flashdrift bench: GPU throughput table; fd_cmd_bench.c. */
int fd_cmd_bench(int argc, char **argv);
/* flashdrift bench --reference: the reference tiers' certified outputs per second;
 * fd_cmd_bench_ref.c (fd_cmd_bench hands over when --reference is given). */
int fd_bench_reference(int argc, char **argv);
/* flashdrift check --tensors PATH: imported tensors (fd_import.h); fd_cmd_check.c. */
int fd_cmd_check(int argc, char **argv);
/* check's work for one PATH (a bundle, a directory of bundles, or a captured step) with
 * the run options o (o->out: where report.json and summary.md go): returns check's exit
 * code and, when report is not NULL, the report (caller frees; NULL when none was made). */
struct fd_run_opts;
struct fd_capture;
/* check's validation of PATH before anything is written (fd_cmd_check.c): the bundles, or a
 * captured step (cap not NULL: loaded into *cap, its bundles checked against the index);
 * 0 with the paths, else the exit code, reported on stderr. */
int fd_check_list(const char *tensors, struct fd_capture *cap, char ***paths, int *np);
int fd_check_tensors(const char *tensors, int rows, const struct fd_run_opts *o, json_t **report);
/* flashdrift compare RUN_A RUN_B: two captures of one step; fd_cmd_compare.c. */
int fd_cmd_compare(int argc, char **argv);
/* Creates DIR (and parents) and checks it is a writable directory. */
int fd_mkdir_p(const char *path, char *err, size_t errlen);
#endif
