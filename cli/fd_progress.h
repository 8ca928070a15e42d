/* fd_progress.h: the progress of a run, on stderr.
 *
 * On a terminal: one line redrawn in place, as wide as the terminal (TIOCGWINSZ, else 80):
 *   [=========>          ] 12/40 cases, elapsed 1m02s, ETA 3m10s  b1h2...-s3
 * Elsewhere (CI logs): a line when a case finishes, at most one every 10 s, and always the
 * last one:
 *   12/40 cases, elapsed 1m02s, ETA 3m10s
 * The ETA weighs cases by their cost (fd_progress_cost: the reference's work grows with
 * batch * heads * rows checked * seqlen_k * head_dim): elapsed * cost left / cost done,
 * counting only the cases computed in this process (resumed ones cost nothing).
 * Call fd_progress_clear before printing another line on stderr (a FAIL line), so that it
 * does not land in the bar; fd_progress_end leaves a clean line, interrupted or not. */
#ifndef FD_PROGRESS_H
#define FD_PROGRESS_H
#include "fd_case.h"

typedef struct fd_progress {
    int mode;            /* 0 off, 1 lines, 2 bar */
    int total, done;
    double cost_left;    /* of the cases still to compute */
    double cost_done;    /* of the cases computed so far */
    double t0, last;     /* start; last line printed (lines mode) */
    int drawn;           /* bar on screen */
    char id[160];        /* the case running (bar) */
} fd_progress;

/* Estimated work of case c under cf's row sampling (arbitrary units, > 0). */
double fd_progress_cost(const fd_casefile *cf, const fd_case *c);
/* enabled: 0 prints nothing (--quiet); the mode follows isatty(2). cost: of the cases to compute. */
void fd_progress_begin(fd_progress *p, int enabled, int total, double cost);
/* A case starts (the bar shows its id). */
void fd_progress_start(fd_progress *p, const char *id);
/* A case is done: computed at this cost, or kept by --resume (cost 0, not counted as work). */
void fd_progress_done(fd_progress *p, double cost, int computed);
/* Erases the bar (nothing off a terminal). */
void fd_progress_clear(fd_progress *p);
/* The last line: off a terminal the final count; on one the bar is replaced by it. */
void fd_progress_end(fd_progress *p);
/* "1h02m03s", "4m05s", "7s" */
void fd_format_duration(double s, char *buf, size_t len);
#endif
