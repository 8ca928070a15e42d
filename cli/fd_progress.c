/* fd_progress.c: see fd_progress.h. */
#include "fd_progress.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* Off a terminal, at most one line per this many seconds (the last one always). */
#define FD_PROGRESS_LINE_S 10.0

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int term_width(void)
{
    struct winsize w;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col >= 20) return w.ws_col;
    return 80;
}

double fd_progress_cost(const fd_casefile *cf, const fd_case *c)
{
    const fd_problem *p = &c->prob;
    const int rows = (cf->rows_per_head <= 0 || p->seqlen_q <= cf->rows_per_head) ? p->seqlen_q : cf->rows_per_head;
    const double w = (double)p->batch * p->heads * rows * p->seqlen_k * p->head_dim;
    return w > 0 ? w : 1.0;
}

void fd_format_duration(double s, char *buf, size_t len)
{
    long t = s > 0 ? lround(s) : 0;
    if (t >= 3600) snprintf(buf, len, "%ldh%02ldm%02lds", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60) snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, len, "%lds", t);
}

/* "k/n cases, elapsed X, ETA Y" */
static void status_text(const fd_progress *p, char *buf, size_t len)
{
    const double el = now_s() - p->t0;
    char e[32], eta[32];
    fd_format_duration(el, e, sizeof e);
    if (p->done >= p->total) snprintf(eta, sizeof eta, "0s");
    else if (p->cost_done > 0) fd_format_duration(el * p->cost_left / p->cost_done, eta, sizeof eta);
    else snprintf(eta, sizeof eta, "-");
    snprintf(buf, len, "%d/%d cases, elapsed %s, ETA %s", p->done, p->total, e, eta);
}

static void draw_bar(fd_progress *p)
{
    int cols = term_width() - 1; /* the last column would wrap on some terminals */
    if (cols > 1000) cols = 1000;
    char text[160], line[1024];
    status_text(p, text, sizeof text);
    const int tl = (int)strlen(text);
    int bw = cols / 3 > 50 ? 50 : cols / 3;
    if (bw < 10 || cols < tl + bw + 3) bw = 0; /* too narrow: the counts only */
    int n = 0;
    if (bw) {
        const int fill = p->total ? (int)((long)p->done * bw / p->total) : bw;
        line[n++] = '[';
        for (int i = 0; i < bw; i++) line[n++] = i < fill ? '=' : (i == fill ? '>' : ' ');
        line[n++] = ']';
        line[n++] = ' ';
    }
    n += snprintf(line + n, sizeof line - (size_t)n, "%.*s", cols - n > 0 ? cols - n : 0, text);
    const int room = cols - n - 2;
    if (p->id[0] && room >= 8) n += snprintf(line + n, sizeof line - (size_t)n, "  %.*s", room, p->id);
    /* padded to the width: erases what a longer previous line left */
    fprintf(stderr, "\r%s%*s", line, cols - n > 0 ? cols - n : 0, "");
    fflush(stderr);
    p->drawn = 1;
}

void fd_progress_begin(fd_progress *p, int enabled, int total, double cost)
{
    memset(p, 0, sizeof *p);
    p->mode = !enabled ? 0 : isatty(STDERR_FILENO) ? 2 : 1;
    p->total = total;
    p->cost_left = cost;
    p->t0 = p->last = now_s();
}

void fd_progress_start(fd_progress *p, const char *id)
{
    if (p->mode != 2) return;
    snprintf(p->id, sizeof p->id, "%s", id);
    draw_bar(p);
}

void fd_progress_done(fd_progress *p, double cost, int computed)
{
    p->done++;
    if (computed) {
        p->cost_done += cost;
        p->cost_left -= cost;
        if (p->cost_left < 0) p->cost_left = 0;
    }
    if (p->mode == 2) {
        p->id[0] = 0;
        draw_bar(p);
    } else if (p->mode == 1 && p->done < p->total && now_s() - p->last >= FD_PROGRESS_LINE_S) {
        char text[160];
        status_text(p, text, sizeof text);
        fprintf(stderr, "%s\n", text);
        fflush(stderr);
        p->last = now_s();
    }
}

void fd_progress_clear(fd_progress *p)
{
    if (p->mode != 2 || !p->drawn) return;
    fprintf(stderr, "\r%*s\r", term_width() - 1, "");
    fflush(stderr);
    p->drawn = 0;
}

void fd_progress_end(fd_progress *p)
{
    if (!p->mode) return;
    char text[160];
    status_text(p, text, sizeof text);
    fd_progress_clear(p);
    fprintf(stderr, "%s\n", text);
    fflush(stderr);
    p->mode = 0;
}
