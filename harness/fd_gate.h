/* fd_gate.h: CI precision gate: tolerance policies and their evaluation on a report.
 *
 * A policy file (JSON, schema "flashdrift-policy/1", docs/gate.md) holds per-dtype
 * metric limits, FlashAttention's relative rule, a MARGINAL band, dropout keep-rate
 * bounds and a baseline rule. fd_gate_eval applies it to every case and gated backend
 * of a validated report (fd_report_read.h), optionally against a baseline report, and
 * collects one item per broken rule with the value and the limit. A case FAILs when
 * any gated backend breaks a limit, has NaN/Inf outputs, failed to run, gave outputs
 * that differ between repeats (--repeat), could not be judged (none of the rules that
 * apply to it could be measured, or the run said UNJUDGED), or when its dropout keep
 * rate is off. A metric that was not measured (null) is never compared with a limit.
 * fd_gate_model turns the outcome into the JSON tree every output is rendered from. */
#ifndef FD_GATE_H
#define FD_GATE_H
#include <jansson.h>
#include <stddef.h>

#include "fd_run.h"

enum { FD_GM_MAX_ABS, FD_GM_MAX_REL, FD_GM_REL_L2, FD_GM_MAX_ULP, FD_GM_P99_ULP, FD_GM_LSE_MAX_ABS, FD_GM_N };

typedef struct fd_gate_policy {
    char path[1024];
    char description[512];
    double limit[4][FD_GM_N];   /* [fp16, bf16, fp32, default][metric]; < 0: off */
    int apply_all;              /* 1: gate every backend; 0: flash backends only */
    char backends[256];         /* comma list of backend names to gate ("" = by apply_all) */
    double fa_ratio, fa_atol;   /* fa_ratio <= 0: rule off */
    double marginal;            /* band in (0, 1]: value above marginal x limit is MARGINAL */
    int fail_on_marginal, fail_on_undecided;
    double keep_sigma;          /* <= 0: off */
    int keep_nominal;           /* z against 1 - p instead of the byte threshold's probability */
    int base_on;                /* a baseline rule is present */
    int base_metric[4][FD_GM_N]; /* metrics the baseline rule covers: [0] the output's,
                                  * [1..3] dq, dk, dv's ("dq.max_abs", ...) */
    double base_factor;         /* current <= factor x baseline (+ base_abs); < 0: not set */
    double base_abs;
    double base_ulps;           /* ulp metrics: current <= baseline + ulps; < 0: not set */
    int base_missing_fails;     /* a baseline case absent from the report fails the gate */
    /* "gradients" (backward cases): limits per dtype and gradient ([dtype][dq, dk, dv][metric],
     * < 0 off; lse_max_abs never applies), FlashAttention's rule per gradient (<= 0 off), and
     * determinism of every gradient over --repeat */
    double grad_limit[4][3][FD_GM_N];
    double grad_fa_ratio[3], grad_atol;
    int require_deterministic;
    int fail_on_bias;           /* a flash output the bias stage found biased fails (default: reported only) */
} fd_gate_policy;

typedef struct fd_gate_item {
    int case_idx;               /* index in the report's cases, -1 for a baseline-only case */
    char backend[48];           /* "" for case-level rules (dropout, reference) */
    char metric[32];
    double value, limit;
    fd_verdict level;           /* FD_MARGINAL, FD_FAIL or FD_UNDECIDED */
    char text[320];             /* "cpu-flash max_abs 3.1e-03 > 2e-03 (fp16 limit)" */
} fd_gate_item;

typedef struct fd_gate_result {
    const json_t *report;
    int ncases;
    fd_verdict *verdict;        /* per case, after the policy (and fail_on_*) */
    int nbackends;
    char backends[8][48];       /* gated backends seen, in first-seen order */
    fd_gate_item *items;
    int nitems, cap;
    int npass, nmarginal, nfail, nundecided;
    int baseline_missing;       /* baseline cases not in the report */
    int baseline_new;           /* report cases not in the baseline */
    int nmissing_fail;          /* missing baseline cases that fail (missing_cases "fail") */
    int failed;                 /* the gate's outcome: 1 when any case (or a missing baseline case) fails */
    /* Set by the caller, carried into the model (fd_gate_model): */
    int partial;                /* the report is of an interrupted run (--allow-partial) */
    int baseline_skipped;       /* the policy's baseline rule was not checked (--no-baseline) */
} fd_gate_result;

extern const char *const fd_gate_metric_names[FD_GM_N];

/* 0 ok, -1 with err "FILE: PATH: expected ...". */
int fd_gate_policy_load(const char *path, fd_gate_policy *p, char *err, size_t errlen);
int fd_gate_policy_parse(const char *file, const json_t *root, fd_gate_policy *p, char *err, size_t errlen);
/* report (and baseline, may be NULL) must be validated; 0 ok, -1 out of memory. */
int fd_gate_eval(const fd_gate_policy *p, const json_t *report, const json_t *baseline,
                 fd_gate_result *g, char *err, size_t errlen);
void fd_gate_result_free(fd_gate_result *g);
/* 0, or -1 with err naming the first backend the policy lists that is in no case of the
 * report: "policy names backend X, which is not in the report (has: A, B)". */
int fd_gate_check_backends(const fd_gate_policy *p, const json_t *report, char *err, size_t errlen);
/* Is backend name gated by the policy (be: its report object)? */
int fd_gate_backend_gated(const fd_gate_policy *p, const char *name, const json_t *be);
/* The gate's outcome as a JSON tree, the model reports/fd_gate_out.h renders (summary
 * line, FAIL lines, JUnit, Markdown); g's partial and baseline_skipped set. baseline_path:
 * the baseline report's file, or NULL. NULL when out of memory.
 *   report              the gated report (a reference to g->report)
 *   failed, partial, baseline_skipped
 *   policy              {path, description, baseline_rule, missing_cases_fail}
 *   baseline            {path}, or null
 *   totals              {cases, pass, marginal, fail, undecided (the report's cases, by
 *                        the gate's verdict), baseline_missing, baseline_missing_fail,
 *                        baseline_new}
 *   backends            the gated backends, in first-seen order
 *   cases               per case of the report, in its order: {id, verdict, items}
 *   missing             the baseline cases missing from the report, as items
 * An item: {backend ("" for a case-level rule), metric, value, limit (report numbers),
 * level (FAIL, MARGINAL or UNDECIDED), text}. */
json_t *fd_gate_model(const fd_gate_result *g, const fd_gate_policy *p, const char *baseline_path);
#endif
