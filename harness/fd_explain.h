/* fd_explain.h: attribution of a kernel's error on one case, behind `flashdrift explain`.
 *
 * For the checked rows of a case: the MPFR reference; the output of the backend being
 * explained (optionally with a named bug injected, for demonstrations and tests); the
 * CPU replay's error budget by stage; the spread of the output over accumulation orders;
 * conditioning of each output against the classic summation bound; dropout findings;
 * and, when the error is far above the rounding budget, named bug hypotheses ranked by
 * how much error each leaves when the output is compared with that bug's prediction.
 *
 * Stage parts (each a vector over the checked elements, kept in memory):
 *   final   = O(replay) - O(replay, final normalisation and output rounding exact)
 *   s       = O(final exact) - O(final exact and stage s exact), for s in
 *             QK^T accumulation, softmax, P rounding, PV accumulation, dropout scale
 *   interaction = (O(replay) - O(all exact)) - sum of the parts
 * share(s) = <part_s, e> / <e, e> with e = O(replay) - reference: the shares and the
 * interaction's share add up to 1 (up to the ~1e-16 of the all-exact replay). */
#ifndef FD_EXPLAIN_H
#define FD_EXPLAIN_H
#include <jansson.h>
#include "fd_case.h"
#include "fd_run.h"

#define FD_EX_MAX_STAGES 8
#define FD_EX_MAX_VARIANTS 24
#define FD_EX_MAX_HYPO 40

typedef struct fd_explain_opts {
    const char *backend; /* backend explained (default cpu-flash) */
    const char *inject;  /* NULL, or a bug injected into the backend's output (fd_explain_bugs) */
    int jobs;
} fd_explain_opts;

typedef struct fd_ex_part {
    char name[40];
    double max_abs, l2, share;
    double *diff; /* [checked elements]: the part itself */
} fd_ex_part;

typedef struct fd_ex_variant {
    char name[40];
    double max_abs_vs_base, l2_vs_base; /* change of the output against the replay's order */
    double err_max_abs;                 /* that order's own error against the reference */
    int identical;                      /* bitwise identical to the replay */
} fd_ex_variant;

typedef struct fd_ex_hypo {
    char name[40];
    char what[160];
    double residual_max_abs; /* max |kernel - prediction| */
    double residual_ratio;   /* gradients: the largest residual over its gradient's hypothesis limit */
    int explains;
} fd_ex_hypo;

/* Gradients (backward cases): the same questions per gradient dq, dk, dv. */
#define FD_EX_MAX_GPARTS 10
typedef struct fd_ex_grad {
    int active;
    long nchecked[FD_NGRAD];
    double k_err[FD_NGRAD];       /* the kernel's max abs error against the exact gradient */
    double r_err[FD_NGRAD];       /* the replay's */
    double std_err[FD_NGRAD];     /* standard attention's (cpu-standard's autograd) */
    double budget[FD_NGRAD];      /* max(replay, standard) */
    double limit[FD_NGRAD];       /* grad_fa_ratio x budget + atol: above it the error is gross */
    double hypo_limit[FD_NGRAD];  /* residual under which a hypothesis explains a gradient */
    double allexact[FD_NGRAD];    /* the all-binary64 replay's error */
    int nparts;
    struct {
        char name[48];
        double max_abs[FD_NGRAD], share[FD_NGRAD];
    } part[FD_EX_MAX_GPARTS];
    int order_checked;            /* the pipeline's dQ order model */
    long order_differ, order_elems;
    double order_max_ulp;
    int replay_checked;           /* a GPU kernel against the replay (pipeline) */
    long replay_identical[FD_NGRAD], replay_elems[FD_NGRAD];
    fd_ex_hypo hypo[FD_EX_MAX_HYPO];
    int nhypo, best, gross;
    char summary[512];
} fd_ex_grad;

typedef struct fd_explanation {
    char case_id[160], backend[64], inject[40];
    /* the judging pipeline's verdict on the explained output (fd_run_case), and why */
    fd_verdict verdict;
    char reasons[1024];
    fd_dtype dtype;
    long nchecked;
    double ref_max_abs;
    /* the kernel's output */
    double k_err_max_abs, k_err_l2; /* against the reference (l2 relative to ||ref||) */
    double budget, limit;           /* rounding budget (max abs) and the gross-error limit */
    double hypo_limit;              /* residual under which a hypothesis explains the output */
    int gross;
    /* the replay's budget */
    double r_err_max_abs, r_err_l2, allexact_max_abs;
    int replay_matches_kernel;      /* bitwise, on the checked elements */
    int replay_bc;                  /* the replay's key tile */
    long replay_mismatches;
    fd_ex_part part[FD_EX_MAX_STAGES];
    int nparts;
    double interaction_l2, interaction_share;
    double input_rounding_max_abs, input_rounding_l2;
    /* accumulation order */
    fd_ex_variant var[FD_EX_MAX_VARIANTS];
    int nvar;
    double order_spread_max_abs;
    double std_err_max_abs, flash_std_diff_max_abs, flash_std_diff_l2, flash_std_corr;
    double flash_err_l2_abs, std_err_l2_abs;
    /* conditioning */
    double kappa_max, kappa_median, pv_bound_worst_ratio;
    long pv_bound_violations;
    /* dropout */
    fd_dropout_stats drop;
    double drop_bias_max_abs;
    /* hypotheses */
    fd_ex_hypo hypo[FD_EX_MAX_HYPO];
    int nhypo, best;
    char summary[512];
    fd_ex_grad grad;  /* backward cases */
} fd_explanation;

/* Names of the bugs --inject accepts (NULL-terminated). Each is the name of the bug
 * hypothesis that names it: `--inject causal_top_left` on a causal_br case with
 * seqlen_q != seqlen_k is explained by hypothesis causal_top_left (a test holds this). */
extern const char *const fd_explain_bugs[];
/* 1 when bug is one of the backward bugs (names starting bwd_; a case with "backward"). */
int fd_explain_bug_is_bwd(const char *bug);
/* 1 for the forward bugs of the window, ALiBi and softcap (they need a case with the
 * feature: fd_explain_inject_noop says why one does not apply). */
int fd_explain_bug_is_mod(const char *bug);
/* Is bug one of the FP8 hypotheses (fp8_*: descales missing or twice, P unscaled or
 * saturating; cases of dtype e4m3 / e5m2 only)? */
int fd_explain_bug_is_fp8(const char *bug);
/* The name a bug had in 0.1.0 (layout_bhsd, causal_swap, dropout_seed) -> its name now,
 * on a case with mask `mask` (causal_swap named the other alignment); NULL for any other
 * name. The old names are accepted until the next release (docs/attribution.md). */
const char *fd_explain_bug_renamed(const char *name, fd_mask_kind mask);
/* Why injecting bug (a name of fd_explain_bugs, or an old one) into a case of problem p
 * would leave the kernel's output unchanged (a mask bug on an unmasked case, a dropout bug
 * at p = 0, ...), or NULL when it changes it. fd_explain_run refuses such an injection:
 * explaining an unchanged kernel as if it had the bug would mislead. */
const char *fd_explain_inject_noop(const fd_problem *p, const char *bug);

/* fd_explain_case and fd_explain_run return 0, FD_EX_EUSAGE when the request is at fault
 * (an unknown backend or output, an --inject that changes nothing, a bad bundle), or -1
 * (out of memory, a kernel or the reference failed, interrupted). */
#define FD_EX_EUSAGE (-2)

/* Explains backend o->backend on case c (an imported case, c->bundle: the bundle's output
 * named o->backend, NULL: its first flash output, judged beside its standard outputs). */
int fd_explain_case(const fd_casefile *cf, const fd_case *c, const fd_explain_opts *o,
                    fd_explanation *ex, char *err, size_t errlen);

/* What to explain: a generated case (c: inputs from its seeds, the output from the
 * backend in opts), or given tensors (c NULL: q, k, v exact dtype values in fd_problem's
 * layouts and the output to explain, e.g. from an imported bundle). */
typedef struct fd_explain_src {
    const char *id;
    const fd_problem *p;
    const fd_case *c;
    const float *q, *k, *v;
    const float *kernel_o;   /* [b][s][h][d] */
    const float *kernel_lse; /* [b][h][s] or NULL */
    const char *kernel_name; /* e.g. the bundle's output name */
    const fd_given *beside;  /* supplied standard outputs judged beside it (or NULL) */
    const float *dout;       /* backward: the output gradient (NULL: none, or drawn for a case) */
    const float *kernel_dq, *kernel_dk, *kernel_dv; /* given gradients, or NULL */
    int standard;            /* the output is a supplied standard one (eager attention): judged by
                              * the standard rule, as check judges it; 0: a flash output */
} fd_explain_src;

/* The output is first judged by the one pipeline (fd_run_case: the same verdict as run
 * and check give it, in ex->verdict and ex->reasons), then attributed. */

int fd_explain_run(const fd_casefile *cf, const fd_explain_src *src, const fd_explain_opts *o,
                   fd_explanation *ex, char *err, size_t errlen);
void fd_explanation_free(fd_explanation *ex);
/* The explanation as JSON (docs/attribution.md), or NULL out of memory: report.json's
 * "explain", explain.json's entries, and what reports/fd_explain_report.h renders. */
json_t *fd_explain_json(const fd_explanation *ex);
#endif
