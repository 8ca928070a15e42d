/* fd_run.h: running cases through backends and the reference, and judging them.
 *
 * fd_run_case: inputs -> sampled rows -> MPFR reference (OpenMP over rows) -> each
 * backend (outputs poisoned with NaN first, so unwritten values show) -> metrics ->
 * FlashAttention's relative rule (flash error <= k * standard's + atol, per backend
 * family) -> dropout keep-rate statistics -> verdict by the case file's policy. */
#ifndef FD_RUN_H
#define FD_RUN_H
#include <signal.h>
#include <stdint.h>
#include "fd_case.h"
#include "fd_metrics.h"

typedef enum { FD_PASS = 0, FD_MARGINAL = 1, FD_FAIL = 2, FD_UNDECIDED = 3 } fd_verdict;
typedef enum { FD_ROLE_FLASH = 0, FD_ROLE_STANDARD = 1 } fd_role;

#define FD_MAX_BACKENDS 6

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
} fd_backend;

/* Fills out with the backends named in spec ("auto", "cpu", "cuda", or a comma list of
 * names). Returns the count, or -1 with err filled (unknown name, no GPU for cuda). */
int fd_backends_select(const char *spec, const fd_backend **out, char *err, size_t errlen);
const fd_backend *fd_backend_find(const char *name);
/* 1 when the CUDA backends are built and a GPU is visible. */
int fd_gpu_present(void);
/* "name, sm_XY, driver N" of GPU 0; -1 when there is none. */
int fd_gpu_describe(char *buf, size_t len);

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

typedef struct fd_backend_result {
    const fd_backend *be;
    int ok;                 /* 0: the backend failed (or was skipped); error holds why */
    int skipped;            /* the backend does not apply to this case (error says why) */
    char error[256];
    fd_metrics m;
    double fa_ratio;        /* flash only: max abs error / standard's (same family); <0 n/a */
    double fa_limit;
    /* dropout mask agreement with the regenerated mask (backends with applied_mask) */
    long mask_checked, mask_mismatch;
    int mm_b, mm_h, mm_i, mm_j;  /* first mismatch */
    char mask_explained[160];    /* seed/offset that would explain a mismatching mask, if found */
} fd_backend_result;

typedef struct fd_case_result {
    fd_case c;
    int nrows;
    int *rows;
    int ref_undecided, ref_prec_max;
    long empty_rows;        /* checked rows with no visible key */
    double ref_seconds, seconds;
    int nbe;
    fd_backend_result be[FD_MAX_BACKENDS];
    fd_dropout_stats drop;
    /* a GPU flash kernel against its CPU replay, bit for bit, on the checked elements */
    int replay_checked;          /* both cuda-flash and cpu-flash ran */
    long replay_elems, replay_identical;
    int nmis;                    /* listed mismatches (at most FD_MAX_MISLIST) */
    struct { int b, h, i, d; float kernel, replay; } mis[16];
    fd_verdict verdict;
    char reasons[1024];
} fd_case_result;

extern volatile sig_atomic_t fd_interrupted;

const char *fd_verdict_name(fd_verdict v);
int fd_run_case(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe,
                int jobs, fd_case_result *res, char *err, size_t errlen);
void fd_case_result_free(fd_case_result *r);
/* Building blocks of a judged case, shared with the import backend. */
double fd_now_s(void);
void fd_add_reason(fd_case_result *r, const char *fmt, ...);
void fd_worsen(fd_verdict *v, fd_verdict w); /* FAIL > UNDECIDED > MARGINAL > PASS */
/* FlashAttention's rule: each flash backend against the first standard one (of its own
 * family when same_family). */
void fd_apply_fa_rule(const fd_policy *po, fd_case_result *res, int same_family);
/* Keep-rate statistics of the FA2 mask over the visible elements of the listed rows. */
void fd_dropout_stats_compute(const fd_problem *p, const int *rows, int nrows, const int *nvis,
                              fd_dropout_stats *s);
/* The MPFR reference for the listed rows of every (batch, head), OpenMP over rows:
 * ref_o [b][h][r][d], ref_lse [b][h][r]. */
int fd_reference_rows(const fd_problem *p, const float *q, const float *k, const float *v,
                      const int *rows, int nrows, int jobs, double *ref_o, double *ref_lse,
                      int *undecided, int *precmax, char *err, size_t errlen);
void fd_judge(const fd_policy *po, fd_case_result *r);
#endif
