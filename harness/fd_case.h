/* fd_case.h: case files (JSON) and their expansion into concrete cases.
 *
 * A case file declares one or more sweeps (each a matrix of lists), exclusions, the
 * flash kernel's knobs, the number of query rows checked per (batch, head) and the
 * tolerance policy; docs/case-files.md is the format's reference. Expansion is the
 * cartesian product of each sweep's lists, in a fixed order, minus excluded cases and
 * duplicates; each case gets a stable, readable id built from its parameters alone.
 * Every error names the file, the JSON path (and line for syntax errors) and what was
 * expected. */
#ifndef FD_CASE_H
#define FD_CASE_H
#include <stddef.h>
#include <stdint.h>
#include "fd_bwd.h"
#include "fd_cpu_attn.h"
#include "fd_problem.h"

typedef enum {
    FD_DIST_NORMAL = 0,      /* q, k, v ~ N(0, 1) */
    FD_DIST_UNIFORM = 1,     /* U(-1, 1) */
    FD_DIST_LARGE_LOGIT = 2, /* q, k ~ N(0, 16): logits of order 16 * sqrt(d) / sqrt(d) */
    FD_DIST_OUTLIER_ROWS = 3, /* N(0, 1) with every 17th row of Q and K scaled by 24 */
    FD_DIST_GIVEN = 4,       /* imported: the inputs are given (a bundle), not generated */
    /* families that provoke systematic rounding bias (issue 12; docs/case-files.md): */
    FD_DIST_TIED_MAX = 5,    /* keys j % 37 < 2 are one row (B, 0, ..): every row's max logit tied */
    FD_DIST_SINK = 6,        /* key 0 is (B, 0, ..) and Q's column 0 is 1: key 0 dominates every row */
    FD_DIST_LARGE_OFFSET = 7, /* Q's and K's column 0 are 32: a common offset 1024 in every raw logit */
    FD_DIST_LOW_RANK = 8     /* Q and K from one rank-4 basis per kv head, K with 0.1 noise */
} fd_dist;
#define FD_NDISTS 9

typedef struct fd_policy {
    double fa_ratio;        /* flash max abs error <= fa_ratio * standard's + atol */
    double atol;
    double max_ulp[3];      /* per dtype (fp16, bf16, fp32): max ulp error of the flash output; <= 0 off */
    double max_lse_abs;     /* max abs LSE error; <= 0 off */
    double marginal;        /* a metric above marginal * limit makes PASS MARGINAL */
    double keep_sigma;      /* |z| of the keep rate against the byte threshold's probability */
    double grad_fa_ratio[3];    /* dq, dk, dv: flash gradient max abs error <= ratio * standard's + atol */
    int require_batch_invariance; /* a kernel whose batch elements alone differ from the batch FAILs */
    double standard_ratio;      /* a supplied standard output (and its gradients): max abs error <=
                                 * standard_ratio * the computed standard's + atol */
    int require_deterministic;  /* backward cases: gradients must be bitwise identical over --repeat */
} fd_policy;

typedef struct fd_case {
    char id[160];
    fd_problem prob;
    fd_dist dist;
    uint64_t input_seed;
    int backward;           /* 1: the backward pass too (dO drawn from the case's seeds, or given) */
    int fp8_unit_descale;   /* FP8 dtypes: 1 quantises with descale 1 ("fp8_descale": "one"),
                             * 0 with amax / FP8 max per tensor (fd_inputs.h) */
    const char *bundle;     /* imported tensors: the bundle holding inputs and outputs (owned
                             * by the case file), or NULL: inputs from the seeds */
} fd_case;

/* Which reference computes the checked rows (docs/reference.md): the binary64 tier with
 * rigorous bounds on the GPU (gpu) or the CPU (cpu), MPFR for the rows it leaves undecided;
 * auto = gpu when built and a GPU is present, else cpu; mpfr = MPFR for every row. */
typedef enum { FD_REFTIER_AUTO = 0, FD_REFTIER_MPFR = 1, FD_REFTIER_CPU = 2, FD_REFTIER_GPU = 3 } fd_reftier;
#define FD_REFERENCE_BUDGET_DEFAULT 2.0 /* seconds of estimated reference time per case */

typedef struct fd_casefile {
    char path[1024];
    char name[128];
    char description[512];
    int rows_per_head;      /* query rows checked against the reference per (batch, head); 0: all */
    fd_reftier reference;   /* "reference": auto (default), mpfr, cpu, gpu; --reference */
    double reference_budget; /* "reference_budget" seconds (default 2): every row when the estimated
                              * reference time is under it, else rows_per_head sampled; 0: always sampled */
    int bias_seeds;         /* the bias stage: input seeds per case (0 off, else >= 16; fd_run_bias.h) */
    double bias_alpha;      /* its family-wise false-alarm rate per case (default 1e-3) */
    int batch_invariance;   /* the batch-invariance stage (fd_run_inv.h) */
    fd_flash_cfg flash;
    fd_bwd_cfg bwd;         /* the flash backward's knobs: dQ mode and (replay) order */
    fd_policy policy;
    fd_case *cases;
    int ncases;
    char **bundles;         /* fd_casefile_bundles: the paths the cases point into */
    int **tables;           /* paged KV cache: the block tables the cases point into */
    int ntables;
} fd_casefile;

const char *fd_dist_name(fd_dist d);
const char *fd_reftier_name(fd_reftier t);
/* "auto", "mpfr", "cpu", "gpu" -> 0 and *t; -1 otherwise. */
int fd_reftier_parse(const char *s, fd_reftier *t);
void fd_policy_default(fd_policy *p);
/* Loads and expands; 0 ok, -1 with err ("FILE: PATH: expected ..."). */
int fd_casefile_load(const char *path, fd_casefile *cf, char *err, size_t errlen);
void fd_casefile_free(fd_casefile *cf);
/* The id of a case from its parameters. */
void fd_case_make_id(const fd_case *c, char *buf, size_t len);
#endif
