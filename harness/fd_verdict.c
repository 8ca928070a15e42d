/* fd_verdict.c: the verdict vocabulary every stage of the judging pipeline shares (the
 * forward stage fd_run.c, the backward stage fd_run_bwd.c): verdict names, the ordering in
 * which verdicts worsen, reasons, the clock and the interrupt flag. It depends on nothing
 * but fd_run.h's types, so the stages depend on it and not on each other. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fd_obtain.h"
#include "fd_verdict.h"

volatile sig_atomic_t fd_interrupted = 0;

const char *fd_verdict_name(fd_verdict v)
{
    switch (v) {
    case FD_PASS: return "PASS";
    case FD_MARGINAL: return "MARGINAL";
    case FD_FAIL: return "FAIL";
    case FD_UNDECIDED: return "UNDECIDED";
    case FD_UNJUDGED: return "UNJUDGED";
    }
    return "?";
}

double fd_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void fd_add_reason(fd_case_result *r, const char *fmt, ...)
{
    size_t n = strlen(r->reasons);
    if (n + 4 >= sizeof r->reasons) return;
    if (n) { strcat(r->reasons, "; "); n += 2; }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reasons + n, sizeof r->reasons - n, fmt, ap);
    va_end(ap);
}

void fd_worsen(fd_verdict *v, fd_verdict w)
{
    /* FAIL > UNJUDGED > UNDECIDED > MARGINAL > PASS */
    static const int rank[] = {0, 1, 4, 2, 3};
    if (rank[w] > rank[*v]) *v = w;
}
