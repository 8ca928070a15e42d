/* fd_verdict.h: what every stage of the judging pipeline shares (harness/fd_run.c, the
 * forward stage and its driver; fd_run_bwd.c, fd_run_bias.c, fd_run_inv.c, the backward,
 * bias and batch-invariance stages): the verdicts and the results a case accumulates, the
 * backend interface, given outputs, and the verdict vocabulary defined in fd_verdict.c
 * (names, the order in which verdicts worsen, reasons, the clock, the interrupt flag).
 * The stages depend on it and on fd_obtain.h, never on fd_run.c. */
#ifndef FD_VERDICT_H
#define FD_VERDICT_H
#include <signal.h>
#include <stdint.h>
#include "fd_case.h"
#include "fd_metrics.h"

/* UNJUDGED: no rule could be applied (no flash output, or no baseline for it); gates as a failure. */
typedef enum { FD_PASS = 0, FD_MARGINAL = 1, FD_FAIL = 2, FD_UNDECIDED = 3, FD_UNJUDGED = 4 } fd_verdict;
#define FD_NVERDICTS 5
typedef enum { FD_ROLE_FLASH = 0, FD_ROLE_STANDARD = 1 } fd_role;
/* Where a backend's outputs came from: a kernel run, given (imported, or the output that
 * explain attributes), or computed by the harness as a baseline. */
typedef enum { FD_ORIGIN_KERNEL = 0, FD_ORIGIN_GIVEN = 1, FD_ORIGIN_COMPUTED = 2 } fd_origin;

#define FD_MAX_BACKENDS 8

typedef struct fd_backend {
    const char *name;   /* "cpu-flash", "cuda-standard", ... */
    const char *family; /* "cpu" or "cuda": flash is compared with standard of its family */
    fd_role role;
    /* Computes o and lse for the listed rows (the GPU may compute all); kept_mask, when
     * not NULL, receives the applied dropout mask ([b][h][r][j], 1 kept) for the rows. */
    int (*run)(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
               const float *v, const int *rows, int nrows, float *o, float *lse,
               double *ms, char *err, size_t errlen);
    /* Optional (NULL: the backend applies fd_philox.h's mask by construction): the dropout
     * mask the kernel really applied, for the listed rows: mask[((b*H + h)*nrows + r)*Sk + j],
     * 1 kept, 0 dropped. */
    int (*applied_mask)(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                        const float *v, const int *rows, int nrows, uint8_t *mask, char *err,
                        size_t errlen);
    /* Optional (NULL: every case): 0 when the backend does not apply to the case (why in
     * `why`); such a backend is reported as skipped, not failed. */
    int (*supports)(const fd_case *c, char *why, size_t len);
    /* Optional (NULL: the backend has no backward pass; its gradients are not measured):
     * the backward pass from the backend's own forward outputs o and lse (every row) and
     * the output gradient dout; dq like q, dk and dv like k. Returns 0, -1 with err (the
     * backward failed: the backend fails the case), or 1 with err saying why the backward
     * does not apply to this case (its gradients are not measured). */
    int (*run_bwd)(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                   const float *v, const float *o, const float *lse, const float *dout, float *dq,
                   float *dk, float *dv, double *ms, char *err, size_t errlen);
} fd_backend;

/* The gradients of a backward case: dQ (query rows), dK and dV (key rows). */
#define FD_NGRAD 3
extern const char *const fd_grad_names[FD_NGRAD]; /* "dq", "dk", "dv" */

typedef struct fd_grad_result {
    int measured;              /* the backend's gradients were computed or given */
    char note[160];            /* why not measured, or why the backward failed */
    fd_metrics m[FD_NGRAD];    /* against the exact gradients (dk/dv: per kv head, key rows) */
    double fa_ratio[FD_NGRAD]; /* flash only: max abs error / its baseline's; < 0 n/a */
    int baseline;              /* flash: the standard result its gradients were compared with, or -1
                                * (the output's baseline when it has gradients, else a computed one) */
    double fa_limit[FD_NGRAD];
    double ms, tflops;         /* backward time; GPU: 2.5 x the forward's flops / median time */
    /* --repeat: runs, distinct hashes per gradient, elements that differed from the first
     * run and the largest difference in ulps of the dtype (at the reference value) */
    int repeat_runs, repeat_failed, repeat_distinct[FD_NGRAD];
    long spread_elems[FD_NGRAD];
    double spread_ulp[FD_NGRAD];
    /* GPU flash: its gradients against the CPU replay run on the kernel's own forward
     * outputs, bit for bit, on the checked elements */
    int replay_checked;
    long replay_elems[FD_NGRAD], replay_identical[FD_NGRAD];
} fd_grad_result;


/* The bias stage (fd_run_bias.h): the signed error of one backend over the case's bias
 * seeds, tested per output column and per checked row. */
typedef struct fd_bias_result {
    int measured;              /* 0: not measured (note says why) */
    char note[128];
    int seeds, tests;          /* input seeds; t-tests over all measured backends of the case */
    double alpha, threshold;   /* family-wise false-alarm rate; |t| above threshold is biased */
    double worst_col_z, worst_row_z; /* the largest |t| (signed) per column and per row */
    int worst_col, worst_row;  /* head-dim index and query row of those, -1 if none */
    double mean_over_rms;      /* mean signed error / rms error over every element and seed */
    double mean_err, rms_err;
    long elements;             /* errors pooled over all seeds */
    int biased;
} fd_bias_result;

typedef struct fd_dropout_stats {
    int active;
    int threshold;          /* floor((1 - p) * 255) */
    long kept, total;       /* over visible elements of the checked rows */
    double keep_rate;
    double keep_nominal;    /* 1 - p */
    double keep_threshold;  /* (threshold + 1) / 256, what the byte test really keeps */
    double z_threshold, z_nominal;
    double scale_bias;      /* keep_threshold / (1 - p) - 1: relative bias of E[output] */
} fd_dropout_stats;

/* The batch-invariance stage (fd_run_inv.h): the checked rows of each batch element
 * run alone against the same rows of the batched run, bit for bit. */
typedef struct fd_inv_result {
    int measured;
    char note[160];            /* why not measured, or why the stage failed */
    int batches;               /* batch elements run alone */
    long checked, differ;
    double max_abs, max_ulp;
    int first_b, first_i, first_h, first_d;
    float first_batched, first_alone;
} fd_inv_result;

typedef struct fd_backend_result {
    const fd_backend *be;
    fd_origin origin;
    int ok;                 /* 0: the backend failed (or was skipped); error holds why */
    int skipped;            /* the backend does not apply to this case (error says why) */
    char error[256];
    fd_metrics m;
    double fa_ratio;        /* flash only: max abs error / its baseline's; <0 n/a */
    double fa_limit;
    int baseline;           /* flash only: index of the standard result it was compared with, or -1 */
    /* --repeat: runs, distinct output hashes (the first few), runs that failed */
    int repeat_runs, repeat_distinct, repeat_failed;
    uint64_t repeat_hash[8];
    /* dropout mask agreement with the regenerated mask (backends with applied_mask) */
    long mask_checked, mask_mismatch;
    int mm_b, mm_h, mm_i, mm_j;  /* first mismatch */
    char mask_explained[160];    /* seed/offset that would explain a mismatching mask, if found */
    fd_grad_result g;            /* backward cases */
    fd_bias_result bias;         /* the bias stage (case files with bias_seeds) */
    fd_inv_result inv;           /* the batch-invariance stage (case files with batch_invariance) */
} fd_backend_result;

/* A standard output someone else supplied (imported eager attention): judged by the
 * policy's standard rule against the computed standard, not used unjudged. */
static inline int fd_supplied_standard(const fd_backend_result *b)
{
    return b->origin == FD_ORIGIN_GIVEN && b->be->role == FD_ROLE_STANDARD;
}

/* What the reference stage did for a case: the tier that ran first ("gpu", "cpu" or
 * "mpfr"), the values it decided, and the rows (= MPFR calls) sent to MPFR. */
typedef struct fd_ref_stats {
    fd_reftier tier;         /* the tier used: FD_REFTIER_GPU, _CPU or _MPFR (never AUTO) */
    int all_rows;            /* 1: every query row checked (the budget allowed it) */
    double estimate_s;       /* the estimated reference time that chose the rows */
    long values;             /* values computed (rows x (head_dim + 1)) */
    long values_tier;        /* values decided by the binary64 tier (in rows taken from it) */
    long values_mpfr;        /* values from MPFR (rows with an undecided value) */
    long rows_tier;          /* rows taken whole from the tier: MPFR calls avoided */
    long rows_mpfr;          /* MPFR calls made */
    double seconds_tier, seconds_mpfr;
} fd_ref_stats;

/* The backward part of a case result. */
typedef struct fd_bwd_result {
    int active;
    fd_dq_mode dq_mode;          /* the flash kernels' dQ mode */
    int nkrows;
    int *krows;                  /* checked key rows (every kv head) */
    /* exact gradients: dq [b][h][r][d] (the checked query rows), dk, dv [b][hk][r][d] */
    double *ref_dq, *ref_dk, *ref_dv;
    int ref_undecided, ref_prec_max;
    double ref_seconds;
    fd_ref_stats ref;            /* which reference tier decided which gradient values */
    /* the replay's order model: dQ of the first flash kernel replayed with its partials
     * added in descending and a shuffled order, against ascending: elements that
     * differ and the largest difference in ulps of the dtype */
    int order_checked;
    long order_elems, order_differ;
    double order_max_ulp;
} fd_bwd_result;

typedef struct fd_case_result {
    fd_case c;
    int nrows;
    int *rows;
    int ref_undecided, ref_prec_max;
    fd_ref_stats ref;       /* which reference tier decided what (fd_obtain.h) */
    long empty_rows;        /* checked rows with no visible key */
    int splitkv_splits;     /* the split count of the split-KV backends (flash.splits or FA2's heuristic) */
    double ref_seconds, seconds;
    int nbe;
    fd_backend_result be[FD_MAX_BACKENDS];
    fd_dropout_stats drop;
    /* the rounding budget, recorded when the baseline was computed: max abs errors of the
     * computed standard attention and of the CPU replay of the flash algorithm (NaN: not
     * computed) */
    double budget_standard, budget_replay;
    /* the reference on the checked rows, kept for the stages after judging (explain):
     * ref_o [b][h][r][d], ref_lse [b][h][r] */
    double *ref_o, *ref_lse;
    /* given inputs only (imports): what has no place above (the bundle, its outputs
     * against each other); owned, attached to the report's case as "import" */
    void *extra;
    /* what the given backends point into (an imported bundle), released with the result */
    void *owned;
    void (*owned_free)(void *);
    /* a GPU flash kernel against its CPU replay, bit for bit, on the checked elements */
    int replay_checked;          /* both the kernel and its replay ran */
    const char *replay_kernel, *replay_name; /* the pair compared (static strings): cuda-flash (or,
                                  * when it did not run, cuda-flash-sm90) and cpu-flash;
                                  * cuda-splitkv and cpu-splitkv for a paged case */
    long replay_elems, replay_identical;
    int nmis;                    /* listed mismatches (at most FD_MAX_MISLIST) */
    struct { int b, h, i, d; float kernel, replay; } mis[16];
    fd_bwd_result bwd;
    int bias_active;             /* the bias stage ran (bias_seeds > 0) */
    int inv_active;              /* the batch-invariance stage ran */
    double bias_seconds;
    fd_verdict verdict;
    char reasons[1024];
} fd_case_result;

/* Outputs handed to the pipeline instead of computed: the given inputs (exact dtype values
 * in fd_problem's layouts; NULL: generated from the case's seeds) and outputs, each a
 * backend whose outputs were given (be->run is not called; lse and keep may be NULL:
 * not measured). */
typedef struct fd_given {
    const float *q, *k, *v;
    const float *dout;       /* backward cases: the output gradient [b][s_q][h][d]; NULL: drawn */
    int nout;
    struct {
        const fd_backend *be;
        const float *o;      /* [b][s_q][h][d] */
        const float *lse;    /* [b][h][s_q] or NULL */
        const uint8_t *keep; /* [b][h][s_q][s_k], 1 kept, or NULL */
        const float *dq, *dk, *dv; /* gradients for dout (like q, k, v), or NULL: not given */
    } out[FD_MAX_BACKENDS];
} fd_given;

extern volatile sig_atomic_t fd_interrupted;

const char *fd_verdict_name(fd_verdict v);
double fd_now_s(void);
void fd_add_reason(fd_case_result *r, const char *fmt, ...);
void fd_worsen(fd_verdict *v, fd_verdict w); /* FAIL > UNJUDGED > UNDECIDED > MARGINAL > PASS */
#endif
