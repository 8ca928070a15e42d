/* fd_cmd_bench_ref.c: `flashdrift bench --reference`: certified outputs per second of the
 * reference tiers, side by side in one run (docs/benchmarks.md, "Reference").
 *
 * flashdrift bench --reference [--jobs N] [--full] [--markdown FILE]
 * Shape S = B 1, H 4, N 2048, d 128, fp16, no mask, N(0, 1) inputs:
 *   mpfr-1       fd_reference_rows (MPFR), one thread, 8 rows of one head;
 *   mpfr-N       the same on N threads, 4 N rows spread over the heads;
 *   tier-cpu-1   fd_reference_rows_tiered, CPU tier, one thread, every row of one head;
 *   tier-cpu-N   the same on N threads, every row of every head;
 *   tier-gpu     the GPU tier (when built and a GPU is present), every row of every head.
 * Then the backward (fd_reference_bwd_tiered), H 2 over 1 kv head, N 512, d 128, fp16, every
 * query and key row: MPFR and the CPU tier on one group with one thread and on `jobs` groups
 * (B = jobs) with N threads, the GPU tier on the latter; outputs = dQ, dK, dV values.
 * The tiered lines include their MPFR fallback. An output is one value (O or LSE) returned
 * decided: the MPFR lines count every value (correctly rounded), the tiered ones too (each
 * decided by the tier, or by MPFR for the rows it sent there).
 * --full (GPU only, or forced with --full on the CPU: slow): every element of
 * B 4, H 16, N 4096, d 128 fp16, without mask and causal (top-left): wall time of the
 * tiered reference (GPU tier + MPFR for the undecided rows, N threads).
 * --cases FILE: instead, the reference stage alone over a case file's cases, rows as the
 * run would choose them (--reference-budget, default 2 s) and the tier of --reference
 * (default auto): values, decided by the tier, MPFR calls made and avoided, seconds; and the
 * backward reference of its backward cases (the rows a run checks) likewise.
 * Markdown rows go to stdout and, with --markdown FILE, to FILE. */
#include <math.h>
#include <stdarg.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cmds.h"
#include "fd_case.h"
#include "fd_inputs.h"
#include "fd_obtain.h"
#include "fd_opt.h"
#include "fd_run.h"
#include "fd_run_bwd.h"
#include "fd_runfile.h"
#include "fd_tier_cpu.h"

typedef struct {
    FILE *md;
} bench_out;

static void emit(bench_out *bo, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void emit(bench_out *bo, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
    if (bo->md) {
        va_start(ap, fmt);
        vfprintf(bo->md, fmt, ap);
        va_end(ap);
        fflush(bo->md);
    }
}

static fd_case mk_case(int B, int H, int N, int D, fd_mask_kind mask)
{
    fd_case c;
    memset(&c, 0, sizeof c);
    fd_problem *p = &c.prob;
    p->batch = B;
    p->heads = H;
    p->kv_heads = H;
    p->seqlen_q = N;
    p->seqlen_k = N;
    p->head_dim = D;
    p->dtype = FD_DT_FP16;
    p->mask = mask;
    p->softmax_scale = (float)(1.0 / sqrt((double)D));
    c.dist = FD_DIST_NORMAL;
    c.input_seed = 1;
    fd_case_make_id(&c, c.id, sizeof c.id);
    return c;
}

/* One line: tier t on `nrows` rows (rows[]) of problem p, `jobs` threads. */
static int measure(bench_out *bo, const char *name, const fd_problem *p, const float *q, const float *k,
                   const float *v, const int *rows, int nrows, int jobs, fd_reftier t)
{
    const long ntask = (long)p->batch * p->heads * nrows;
    const int D = p->head_dim;
    double *o = malloc(sizeof(double) * (size_t)ntask * (size_t)D), *l = malloc(sizeof(double) * (size_t)ntask);
    if (!o || !l) {
        free(o);
        free(l);
        fprintf(stderr, "flashdrift: bench: out of memory\n");
        return -1;
    }
    char err[512];
    int und = 0, pm = 0;
    fd_ref_stats st;
    memset(&st, 0, sizeof st);
    const double t0 = fd_now_s();
    int rc = t == FD_REFTIER_MPFR
                 ? fd_reference_rows(p, q, k, v, rows, nrows, jobs, o, l, &und, &pm, err, sizeof err)
                 : fd_reference_rows_tiered(p, q, k, v, rows, nrows, jobs, t, o, l, &und, &pm, &st, err, sizeof err);
    const double dt = fd_now_s() - t0;
    free(o);
    free(l);
    if (rc) {
        fprintf(stderr, "flashdrift: bench: %s: %s\n", name, err);
        return -1;
    }
    const long values = ntask * (D + 1);
    if (t == FD_REFTIER_MPFR) {
        emit(bo, "| %s | %d | %ld | %.3f | %.3g | all MPFR | %ld | - |\n", name, jobs, values, dt,
             (double)values / dt, ntask);
    } else {
        emit(bo, "| %s | %d | %ld | %.3f | %.3g | %.4f%% | %ld | %ld |\n", name, jobs, values, dt,
             (double)values / dt, 100.0 * (double)st.values_tier / (double)values, st.rows_mpfr, st.rows_tier);
    }
    return 0;
}

/* One backward line: the backward reference (fd_reference_bwd_tiered) of every query row and
 * every key row of case c through tier t on `jobs` threads; outputs = dQ, dK, dV values. */
static int measure_bwd(bench_out *bo, const char *name, const fd_case *c, int jobs, fd_reftier t)
{
    const fd_problem *p = &c->prob;
    const size_t nqv = fd_q_numel(p), nkv = fd_kv_numel(p);
    float *q = NULL, *k = NULL, *v = NULL, *dout = NULL;
    double *dq = malloc(sizeof(double) * nqv), *dk = malloc(sizeof(double) * nkv), *dv = malloc(sizeof(double) * nkv);
    int *qr = malloc(sizeof(int) * (size_t)p->seqlen_q), *kr = malloc(sizeof(int) * (size_t)p->seqlen_k);
    char err[512] = "out of memory";
    int und = 0, pm = 0, rc = -1;
    fd_ref_stats st;
    memset(&st, 0, sizeof st);
    if (dq && dk && dv && qr && kr && !fd_inputs_make(c, &q, &k, &v, err, sizeof err) &&
        !fd_inputs_make_dout(c, &dout, err, sizeof err)) {
        for (int i = 0; i < p->seqlen_q; i++) qr[i] = i;
        for (int j = 0; j < p->seqlen_k; j++) kr[j] = j;
        const double t0 = fd_now_s();
        rc = fd_reference_bwd_tiered(p, q, k, v, dout, qr, p->seqlen_q, kr, p->seqlen_k, jobs, t, dq, dk, dv, &und,
                                     &pm, &st, err, sizeof err);
        const double dt = fd_now_s() - t0;
        if (!rc)
            emit(bo, "| %s | B %d, %d groups | %d | %ld | %.3f | %.3g | %.4f%% | %ld | %ld |\n", name, p->batch,
                 p->batch * p->kv_heads, jobs, st.values, dt, (double)st.values / dt,
                 100.0 * (double)st.values_tier / (double)st.values, st.rows_mpfr, st.rows_tier);
    }
    if (rc) fprintf(stderr, "flashdrift: bench: %s: %s\n", name, err);
    free(q); free(k); free(v); free(dout); free(dq); free(dk); free(dv); free(qr); free(kr);
    return rc;
}

/* The backward lines (docs/benchmarks.md, "Reference"): B x (H 2 over 1 kv head), N 512,
 * d 128, fp16, no mask; one group for the one-thread lines, `jobs` groups (B = jobs) for the
 * others (MPFR runs one group per thread). */
static int bench_backward(bench_out *bo, int jobs, int gpu)
{
    int rc = 0;
    emit(bo, "\nBackward: H 2 over 1 kv head (GQA), N 512, d 128, fp16, no mask, N(0,1) inputs and dO; every query "
             "and key row; outputs = dQ, dK and dV values.\n\n");
    emit(bo, "| reference | problem | threads | outputs | seconds | outputs/s | decided by the binary64 tier | MPFR calls "
             "(groups) | MPFR calls avoided |\n|---|---|---|---|---|---|---|---|---|\n");
    for (int big = 0; big < 2; big++) {
        const int B = big ? jobs : 1, th = big ? jobs : 1;
        if (big && jobs == 1) break;
        fd_case c = mk_case(B, 2, 512, 128, FD_MASK_NONE);
        c.prob.kv_heads = 1;
        c.backward = 1;
        fd_case_make_id(&c, c.id, sizeof c.id);
        rc |= measure_bwd(bo, "backward mpfr", &c, th, FD_REFTIER_MPFR);
        rc |= measure_bwd(bo, "backward tiered cpu", &c, th, FD_REFTIER_CPU);
    }
    if (gpu) {
        fd_case c = mk_case(jobs, 2, 512, 128, FD_MASK_NONE);
        c.prob.kv_heads = 1;
        c.backward = 1;
        fd_case_make_id(&c, c.id, sizeof c.id);
        rc |= measure_bwd(bo, "backward tiered gpu", &c, jobs, FD_REFTIER_GPU);
        setenv("FD_TIER_GPU_BWD_SIMPLE", "1", 1); /* the thread kernels, for comparison */
        rc |= measure_bwd(bo, "backward tiered gpu, thread kernels", &c, jobs, FD_REFTIER_GPU);
        unsetenv("FD_TIER_GPU_BWD_SIMPLE");
    } else {
        emit(bo, "| backward tiered gpu | - | - | - | - | - | no GPU in this run | - | - |\n");
    }
    return rc;
}

/* The backward reference stage's totals over a case file's backward cases. */
typedef struct {
    int cases;
    fd_reftier tier;
    long values, vtier, calls, avoided;
    double ttier, tmpfr, tmax;
} bwd_sum;

/* The backward reference of a backward case on the rows a run checks (the forward's query
 * rows, fd_bwd_sample_key_rows's key rows), added to *bw. */
static int bench_case_bwd(const fd_case *c, const fd_casefile *cf, const float *q, const float *k, const float *v,
                          const int *rows, int nrows, int jobs, fd_reftier tier, bwd_sum *bw, char *err, size_t errlen)
{
    const fd_problem *p = &c->prob;
    const size_t D = (size_t)p->head_dim;
    float *dout = NULL;
    int *kr = malloc(sizeof(int) * (size_t)(p->seqlen_k + 64));
    const int nk = kr ? fd_bwd_sample_key_rows(p, cf->rows_per_head, kr) : 0;
    double *dq = malloc(sizeof(double) * ((size_t)p->batch * (size_t)p->heads * (size_t)nrows * D + 1));
    double *dk = malloc(sizeof(double) * ((size_t)p->batch * (size_t)p->kv_heads * (size_t)nk * D + 1));
    double *dv = malloc(sizeof(double) * ((size_t)p->batch * (size_t)p->kv_heads * (size_t)nk * D + 1));
    int und = 0, pm = 0, rc = -1;
    fd_ref_stats st;
    if (!kr || !dq || !dk || !dv) snprintf(err, errlen, "out of memory");
    else if (!fd_inputs_make_dout(c, &dout, err, errlen))
        rc = fd_reference_bwd_tiered(p, q, k, v, dout, rows, nrows, kr, nk, jobs, tier, dq, dk, dv, &und, &pm, &st,
                                     err, errlen);
    if (!rc) {
        bw->cases++;
        bw->tier = st.tier;
        bw->values += st.values;
        bw->vtier += st.values_tier;
        bw->calls += st.rows_mpfr;
        bw->avoided += st.rows_tier;
        bw->ttier += st.seconds_tier;
        bw->tmpfr += st.seconds_mpfr;
        if (st.seconds_tier + st.seconds_mpfr > bw->tmax) bw->tmax = st.seconds_tier + st.seconds_mpfr;
    }
    free(dout); free(kr); free(dq); free(dk); free(dv);
    return rc;
}

/* The reference stage over every case of a case file (see the header). */
static int bench_cases(bench_out *bo, const char *path, int jobs, fd_reftier tier, double budget)
{
    fd_casefile cf;
    char err[1024];
    if (fd_casefile_load(path, &cf, err, sizeof err)) {
        fprintf(stderr, "flashdrift: bench: %s\n", err);
        return FD_EXIT_USAGE;
    }
    cf.reference = tier;
    if (budget >= 0.0) cf.reference_budget = budget;
    long values = 0, vtier = 0, calls = 0, avoided = 0, allc = 0, rows_total = 0;
    double ttier = 0.0, tmpfr = 0.0;
    bwd_sum bw;
    memset(&bw, 0, sizeof bw);
    bw.tier = fd_reftier_resolve(tier);
    const double t0 = fd_now_s();
    int rc = FD_EXIT_PASS;
    fd_reftier used = fd_reftier_resolve(tier);
    for (int ci = 0; ci < cf.ncases && rc == FD_EXIT_PASS; ci++) {
        const fd_case *c = &cf.cases[ci];
        const fd_problem *p = &c->prob;
        float *q = NULL, *k = NULL, *v = NULL;
        const int rph = fd_reference_rows_per_head(&cf, p, jobs, NULL);
        int *rows = malloc(sizeof(int) * (size_t)(p->seqlen_q + 64));
        const int nrows = rows ? fd_sample_rows(p, rph, rows) : 0;
        const long ntask = (long)p->batch * p->heads * nrows;
        double *o = malloc(sizeof(double) * (size_t)(ntask > 0 ? ntask : 1) * (size_t)p->head_dim);
        double *l = malloc(sizeof(double) * (size_t)(ntask > 0 ? ntask : 1));
        int und = 0, pm = 0;
        fd_ref_stats st;
        if (!rows || !o || !l || fd_inputs_make(c, &q, &k, &v, err, sizeof err) ||
            fd_reference_rows_tiered(p, q, k, v, rows, nrows, jobs, tier, o, l, &und, &pm, &st, err, sizeof err)) {
            fprintf(stderr, "flashdrift: bench: case %s: %s\n", c->id, rows && o && l ? err : "out of memory");
            rc = FD_EXIT_INTERNAL;
        } else {
            values += st.values;
            vtier += st.values_tier;
            calls += st.rows_mpfr;
            avoided += st.rows_tier;
            ttier += st.seconds_tier;
            tmpfr += st.seconds_mpfr;
            allc += nrows == p->seqlen_q;
            rows_total += ntask;
            used = st.tier;
            if (c->backward && bench_case_bwd(c, &cf, q, k, v, rows, nrows, jobs, tier, &bw, err, sizeof err)) {
                fprintf(stderr, "flashdrift: bench: case %s (backward): %s\n", c->id, err);
                rc = FD_EXIT_INTERNAL;
            }
        }
        free(rows); free(o); free(l); free(q); free(k); free(v);
    }
    const double dt = fd_now_s() - t0;
    emit(bo, "| case file | reference | threads | cases (every row) | rows | values | decided by the binary64 tier | "
             "MPFR calls | MPFR calls avoided | seconds (tier + MPFR) |\n|---|---|---|---|---|---|---|---|---|---|\n");
    emit(bo, "| %s | %s | %d | %d (%ld) | %ld | %ld | %.4f%% | %ld | %ld | %.1f (%.1f + %.1f) |\n", cf.name,
         fd_reftier_name(used), jobs, cf.ncases, allc, rows_total, values,
         values ? 100.0 * (double)vtier / (double)values : 0.0, calls, avoided, dt, ttier, tmpfr);
    if (bw.cases > 0) {
        emit(bo, "\n| case file | backward reference | threads | backward cases | values (dQ, dK, dV) | decided by the "
                 "binary64 tier | MPFR calls (groups) | MPFR calls avoided | seconds (tier + MPFR) | slowest case |\n"
                 "|---|---|---|---|---|---|---|---|---|---|\n");
        emit(bo, "| %s | %s | %d | %d | %ld | %.4f%% | %ld | %ld | %.2f (%.2f + %.2f) | %.2f |\n", cf.name,
             fd_reftier_name(bw.tier), jobs, bw.cases, bw.values,
             bw.values ? 100.0 * (double)bw.vtier / (double)bw.values : 0.0, bw.calls, bw.avoided,
             bw.ttier + bw.tmpfr, bw.ttier, bw.tmpfr, bw.tmax);
    }
    fd_casefile_free(&cf);
    return rc;
}

int fd_bench_reference(int argc, char **argv)
{
    int jobs = 1, full = 0;
    const char *md = NULL;
    const char *cases = NULL;
    fd_reftier tier = FD_REFTIER_AUTO;
    double budget = -1.0;
    enum { OPT_REF = FD_OPT_CMD, OPT_JOBS, OPT_FULL, OPT_MD, OPT_CASES, OPT_TIER, OPT_BUDGET };
    static const struct option lo[] = {{"reference", no_argument, NULL, OPT_REF},
                                       {"cases", required_argument, NULL, OPT_CASES},
                                       {"tier", required_argument, NULL, OPT_TIER},
                                       {"reference-budget", required_argument, NULL, OPT_BUDGET},
                                       {"jobs", required_argument, NULL, OPT_JOBS},
                                       {"full", no_argument, NULL, OPT_FULL},
                                       {"markdown", required_argument, NULL, OPT_MD},
                                       {NULL, 0, NULL, 0}};
    fd_run_opts dflt;
    fd_run_opts_default(&dflt);
    jobs = dflt.jobs;
    fd_getopt g;
    if (fd_getopt_init(&g, "bench", argc, argv, lo, NULL)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        if (c == FD_OPT_HELP) return FD_EXIT_PASS;
        if (c == FD_OPT_ERROR) return FD_EXIT_USAGE;
        if (c == FD_OPT_POSITIONAL) return fd_usage_error("bench", "unexpected argument %s", g.arg);
        if (c == OPT_FULL) full = 1;
        else if (c == OPT_MD) md = g.arg;
        else if (c == OPT_CASES) cases = g.arg;
        else if (c == OPT_TIER) {
            if (fd_reftier_parse(g.arg, &tier)) return fd_usage_error("bench", "--tier expects auto, cpu, gpu or mpfr, got '%s'", g.arg);
        } else if (c == OPT_BUDGET) {
            char *end;
            budget = strtod(g.arg, &end);
            if (!*g.arg || *end || !(budget >= 0.0 && budget <= 1e6))
                return fd_usage_error("bench", "--reference-budget expects seconds in [0, 1e6], got '%s'", g.arg);
        }
        else if (c == OPT_JOBS) {
            char *end;
            long x = strtol(g.arg, &end, 10);
            if (!*g.arg || *end || x < 1 || x > 1024) return fd_usage_error("bench", "--jobs expects 1..1024, got '%s'", g.arg);
            jobs = (int)x;
#ifdef _OPENMP
            omp_set_num_threads(jobs); /* the CPU kernels' OpenMP rows */
#endif
        }
    }
    bench_out bo = {NULL};
    if (md && !(bo.md = fopen(md, "w"))) {
        fprintf(stderr, "flashdrift: bench: cannot write %s\n", md);
        return FD_EXIT_USAGE;
    }
    if (cases) {
        const int r = bench_cases(&bo, cases, jobs, tier, budget);
        if (bo.md) fclose(bo.md);
        return r;
    }
    const int gpu = fd_tier_gpu_available();
    int rc = FD_EXIT_PASS;
    char err[512];
    fd_case c = mk_case(1, 4, 2048, 128, FD_MASK_NONE);
    float *q = NULL, *k = NULL, *v = NULL;
    int *rows = malloc(sizeof(int) * 4096);
    if (!rows || fd_inputs_make(&c, &q, &k, &v, err, sizeof err)) {
        fprintf(stderr, "flashdrift: bench: %s\n", rows ? err : "out of memory");
        free(rows);
        if (bo.md) fclose(bo.md);
        return FD_EXIT_INTERNAL;
    }
    emit(&bo, "Shape B 1, H 4, N 2048, d 128, fp16, no mask, N(0,1) inputs; outputs = O values and LSEs.\n\n");
    emit(&bo, "| reference | threads | outputs | seconds | outputs/s | decided by the binary64 tier | MPFR calls | MPFR calls avoided |\n");
    emit(&bo, "|---|---|---|---|---|---|---|---|\n");
    /* MPFR, one thread: 2 rows of each of the 4 heads */
    for (int r = 0; r < 2; r++) rows[r] = r * 1000 + 17;
    if (measure(&bo, "mpfr", &c.prob, q, k, v, rows, 2, 1, FD_REFTIER_MPFR)) rc = FD_EXIT_INTERNAL;
    const int nr = 2 * jobs;
    for (int r = 0; r < nr; r++) rows[r] = (int)(((long)r * 2048) / nr);
    if (jobs > 1 && measure(&bo, "mpfr", &c.prob, q, k, v, rows, nr, jobs, FD_REFTIER_MPFR)) rc = FD_EXIT_INTERNAL;
    for (int r = 0; r < 2048; r++) rows[r] = r;
    if (measure(&bo, "tiered cpu", &c.prob, q, k, v, rows, 512, 1, FD_REFTIER_CPU)) rc = FD_EXIT_INTERNAL;
    if (jobs > 1 && measure(&bo, "tiered cpu", &c.prob, q, k, v, rows, 2048, jobs, FD_REFTIER_CPU)) rc = FD_EXIT_INTERNAL;
    if (gpu && measure(&bo, "tiered gpu", &c.prob, q, k, v, rows, 2048, jobs, FD_REFTIER_GPU)) rc = FD_EXIT_INTERNAL;
    if (gpu) { /* the kernel with one row per warp, for comparison (reference/fd_tier_gpu.cu) */
        setenv("FD_TIER_GPU_ROWS", "1", 1);
        if (measure(&bo, "tiered gpu, 1 row/warp", &c.prob, q, k, v, rows, 2048, jobs, FD_REFTIER_GPU)) rc = FD_EXIT_INTERNAL;
        unsetenv("FD_TIER_GPU_ROWS");
    }
    if (!gpu) emit(&bo, "| tiered gpu | - | - | - | - | no GPU in this run | - | - |\n");
    if (bench_backward(&bo, jobs, gpu)) rc = FD_EXIT_INTERNAL;
    free(q);
    free(k);
    free(v);
    if (full) {
        emit(&bo, "\nEvery element of B 4, H 16, N 4096, d 128, fp16 (%s tier, then MPFR on %d threads for the rows it "
                  "leaves undecided):\n\n", gpu ? "GPU" : "CPU", jobs);
        emit(&bo, "| mask | outputs | seconds | outputs/s | decided by the binary64 tier | MPFR calls | MPFR calls avoided |\n");
        emit(&bo, "|---|---|---|---|---|---|---|\n");
        for (int m = 0; m < 2 && rc == FD_EXIT_PASS; m++) {
            fd_case big = mk_case(4, 16, 4096, 128, m ? FD_MASK_CAUSAL_TL : FD_MASK_NONE);
            if (fd_inputs_make(&big, &q, &k, &v, err, sizeof err)) {
                fprintf(stderr, "flashdrift: bench: %s\n", err);
                rc = FD_EXIT_INTERNAL;
                break;
            }
            int *all = malloc(sizeof(int) * 4096);
            for (int r = 0; all && r < 4096; r++) all[r] = r;
            const long ntask = 4L * 16 * 4096;
            double *o = malloc(sizeof(double) * (size_t)ntask * 128), *l = malloc(sizeof(double) * (size_t)ntask);
            int und = 0, pm = 0;
            fd_ref_stats st;
            const double t0 = fd_now_s();
            if (!all || !o || !l ||
                fd_reference_rows_tiered(&big.prob, q, k, v, all, 4096, jobs, gpu ? FD_REFTIER_GPU : FD_REFTIER_CPU, o,
                                         l, &und, &pm, &st, err, sizeof err)) {
                fprintf(stderr, "flashdrift: bench: full %s: %s\n", m ? "causal" : "no mask", all && o && l ? err : "out of memory");
                rc = FD_EXIT_INTERNAL;
            } else {
                const double dt = fd_now_s() - t0;
                emit(&bo, "| %s | %ld | %.2f (tier %.2f, MPFR %.2f) | %.3g | %.4f%% | %ld | %ld |\n",
                     m ? "causal (top-left)" : "none", st.values, dt, st.seconds_tier, st.seconds_mpfr,
                     (double)st.values / dt, 100.0 * (double)st.values_tier / (double)st.values, st.rows_mpfr,
                     st.rows_tier);
            }
            free(all);
            free(o);
            free(l);
            free(q);
            free(k);
            free(v);
        }
    }
    free(rows);
    if (bo.md) fclose(bo.md);
    return rc;
}
