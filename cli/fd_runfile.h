/* fd_runfile.h: running a whole case file (the loop behind `run` and `gate`).
 *
 * fd_run_casefile runs every case (those matching filter) through the backends and the
 * reference, journals each finished case to DIR/cases.partial.jsonl (a header line
 * naming the case file, then one case per line), and returns the report tree (complete
 * or partial). With resume it first reads the journal and keeps its cases instead of
 * recomputing them, refusing a journal written for another case file, other backends
 * or other knobs. With repeat > 1 each case's kernels run repeat - 1 more times in the
 * judging pipeline (fd_run_case) and any output whose hash differs from the first run
 * makes the case FAIL ("repeat" in each backend's report object). With explain (default: FAIL
 * cases) each judged case is explained (fd_explain_case on the first flash backend that
 * ran) and carries fd_explain_json's object as "explain", or "explain_error" when the
 * explanation failed; cases kept by resume that lack one are explained then.
 *
 * Under an MPI launch (fd_mpi.h, docs/mpi.md) the same loop runs on every rank: each runs
 * the cases assigned to it (by estimated cost, the same assignment on every rank) and
 * journals them to its own file (rank r > 0: DIR/cases.partial.rankR.jsonl); rank 0 reads
 * every journal on resume, gathers the finished cases and returns the report; the other
 * ranks return no report (their outcome's status is their own; main exits with rank 0's). */
#ifndef FD_RUNFILE_H
#define FD_RUNFILE_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "fd_case.h"
#include "fd_opt.h"
#include "fd_run.h"

/* Which cases `--explain` attributes (docs/attribution.md). */
typedef enum { FD_EXPLAIN_NONE = 0, FD_EXPLAIN_FAIL = 1, FD_EXPLAIN_ALL = 2 } fd_explain_mode;

typedef struct fd_run_opts {
    const char *out;     /* directory of the journal (created by the caller) */
    const char *backend; /* "auto", "cpu", or names */
    const char *filter;  /* substring of case ids, or NULL */
    int jobs;
    int quiet;           /* no progress and no backends line */
    int repeat;          /* >= 1: runs per case for the determinism check */
    int resume;          /* continue from out/cases.partial.jsonl */
    fd_explain_mode explain; /* default FD_EXPLAIN_FAIL */
    const char *reference;   /* --reference: auto, cpu, gpu, mpfr; NULL: the case file's */
    double reference_budget; /* --reference-budget seconds; < 0: the case file's */
} fd_run_opts;

typedef struct fd_run_outcome {
    int status;          /* FD_EXIT_PASS (complete), FD_EXIT_USAGE, FD_EXIT_INTERNAL, FD_EXIT_INTERRUPTED */
    int nrun, total, nfail, nresumed;
} fd_run_outcome;

/* Returns 0 when the run completed (*report complete), -1 otherwise with out->status and
 * err set; *report is then NULL (bad input) or the partial report. */
int fd_run_casefile(const fd_casefile *cf, const fd_run_opts *o, json_t **report,
                    fd_run_outcome *out, char *err, size_t errlen);
/* Writes report.json, summary.md and report.html (skipped with a warning when gnuplot
 * is missing) into dir; removes the journal. 0 or -1 with err. */
int fd_run_write_outputs(const json_t *report, const char *dir, int quiet, char *err, size_t errlen);

/* Reads a journal (jpath, e.g. DIR/cases.partial.jsonl) into done[] (cf->ncases slots, by
 * case index; a later line of a case replaces an earlier one). want is the header this run
 * would write; a journal whose header differs is refused. 0 ok (or no journal: *found = 0),
 * -1 with err when it belongs to another run or is damaged before its last line. Exposed
 * for fuzz/fuzz_journal.c. */
int fd_journal_read(const char *jpath, const fd_casefile *cf, const json_t *want, json_t **done,
                    int *found, char *err, size_t errlen);

void fd_run_opts_default(fd_run_opts *o);
/* The run options (--out --backend --filter --jobs --repeat --quiet --resume --explain) as
 * getopt_long entries, ended by a zero entry: a command passes them to fd_getopt_init (fd_opt.h)
 * beside its own table, and hands the vals that come back to fd_run_option. */
enum {
    FD_OPT_RUN_OUT = FD_OPT_RUN, FD_OPT_RUN_BACKEND, FD_OPT_RUN_FILTER, FD_OPT_RUN_JOBS,
    FD_OPT_RUN_REPEAT, FD_OPT_RUN_QUIET, FD_OPT_RUN_RESUME, FD_OPT_RUN_EXPLAIN, FD_OPT_RUN_REFERENCE,
    FD_OPT_RUN_REFERENCE_BUDGET
};
extern const struct option fd_run_longopts[];
/* Applies run option opt (a val of fd_run_longopts) with its value arg: 0 done, 1 not a run
 * option, -1 a bad value (one line printed, naming cmd: --jobs and --repeat ranges, --explain). */
int fd_run_option(const char *cmd, int opt, const char *arg, fd_run_opts *o);
/* Loads CASEFILE, runs it, writes the outputs into o->out; returns the exit code (0, 1 a
 * case failed its case-file policy, 2, 3, 130) and the complete report in *report. */
int fd_run_and_write(const char *casefile, const fd_run_opts *o, json_t **report);
/* The same for a case file already loaded (check: a case file of bundles). */
int fd_run_and_write_cf(const fd_casefile *cf, const fd_run_opts *o, json_t **report);

#endif
