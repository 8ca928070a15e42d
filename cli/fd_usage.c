/* fd_usage.c: the usage texts of flashdrift and of each command (fd_cmds.h), beside main:
 * `flashdrift --help` prints every synopsis and a line per command, `flashdrift CMD --help`
 * (fd_opt.h) that command's synopsis, what it does and its options. */
#include <stdio.h>
#include <string.h>

#include "fd_cmds.h"

/* The run options shared by run and gate (fd_runfile.h: fd_run_longopts). */
#define RUN_OPTIONS                                                                                     \
    "  --backend B        auto (default), cpu, cuda, or names: NAME[,NAME...]\n"                        \
    "  --out DIR          where the report, summary and journal go (default out)\n"                     \
    "  --jobs N           threads, 1..1024 (default: the online CPUs)\n"                                \
    "  --filter S         only the cases whose id contains S\n"                                         \
    "  --repeat N         run each case's backends N times (1..64); outputs that are not bitwise\n"     \
    "                     identical fail the case; backward cases: dK, dV (and a deterministic\n"      \
    "                     dQ) likewise, an atomic dQ's spread is measured (fails only under\n"        \
    "                     the policy's require_deterministic)\n"                                      \
    "  --resume           continue an interrupted run from DIR/cases.partial.jsonl\n"                   \
    "  --explain MODE     attribute the error of the FAIL cases (fail, default), of every case\n"       \
    "                     (all) or of none (none), as `explain` does\n"                                 \
    "  --quiet            no progress, backends line or totals line\n"                             \
    "  --reference T      auto (default: the binary64 tier on the GPU when present, else on\n"     \
    "                     the CPU, MPFR for the rows it leaves undecided), cpu, gpu, or mpfr\n"     \
    "                     (MPFR for every row: correctly rounded binary64); the backward's\n"      \
    "                     gradients likewise (MPFR per (batch, kv head) group left undecided)\n"  \
    "  --reference-budget S  check every query row when the estimated reference time of a\n"      \
    "                     case is at most S seconds (default 2), else the case file's sample;\n"   \
    "                     0: always the sample\n"

#define PROGRESS                                                                                        \
    "Progress goes to stderr: on a terminal a bar with elapsed time and an ETA weighted by\n"           \
    "case cost; elsewhere (CI logs) a line \"k/n cases, elapsed 1m23s, ETA 2m10s\" when a case\n"       \
    "finishes, at most one every 10 s, and always the last. The run's FAIL lines and\n"              \
    "diagnostics go to stderr too; results (the totals, gate's verdict lines) to stdout.\n"      \
    "Under mpirun or srun (a build with MPI) the cases are spread over the ranks, --jobs is\n"     \
    "per rank, rank 0 writes the outputs and every rank exits with its code (docs/mpi.md).\n"

#define EXIT_RUN                                                                                        \
    "exit: 0 all pass, 1 a case failed, 2 usage or input error, 3 internal error, 130 interrupted\n"   \
    "      (SIGINT), 143 terminated (SIGTERM); finished cases stay in DIR/report.partial.json.\n"

static const struct {
    const char *name;
    const char *synopsis; /* lines; a line starting with a space continues the one above */
    const char *summary;  /* one line for `flashdrift --help` */
    const char *details;  /* what `flashdrift CMD --help` adds */
} usages[] = {
    {"run",
     "flashdrift run CASEFILE [--backend auto|cpu|cuda|NAME[,NAME...]] [--out DIR]\n"
     "                      [--jobs N] [--filter SUBSTRING] [--repeat N] [--resume] [--quiet]\n"
     "                      [--explain fail|all|none]\n",
     "runs every case of CASEFILE through the backends and the MPFR reference",
     "Writes DIR/report.json (canonical), DIR/summary.md and DIR/report.html (default DIR:\n"
     "out); each finished case is journaled to DIR/cases.partial.jsonl as it finishes.\n\n"
     "options:\n" RUN_OPTIONS "\n" PROGRESS EXIT_RUN},
    {"gate",
     "flashdrift gate CASEFILE|REPORT --policy FILE [--baseline FILE] [--junit FILE]\n"
     "                      [--markdown FILE] [--out DIR] [--backend B] [--jobs N] [--repeat N]\n"
     "                      [--filter SUBSTRING] [--resume] [--quiet] [--explain fail|all|none]\n"
     "                      [--no-baseline] [--allow-partial] [--allow-missing-backend]\n",
     "applies a tolerance policy (docs/gate.md) to a report or to a run of CASEFILE",
     "Prints one line per failing case; writes JUnit XML and Markdown when asked. The run\n"
     "options need a CASEFILE (a report is gated as it is).\n\n"
     "options:\n"
     "  --policy FILE      the tolerance policy (required; docs/gate.md)\n"
     "  --baseline FILE    a stored report the policy's \"baseline\" rule compares with\n"
     "  --junit FILE       JUnit XML of the verdicts\n"
     "  --markdown FILE    Markdown summary (for a CI job summary)\n"
     "  --no-baseline      gate without the policy's baseline rule (said in every output)\n"
     "  --allow-partial    gate the finished cases of a partial report (said in every output)\n"
     "  --allow-missing-backend  a backend the policy names may be absent from the report\n" RUN_OPTIONS "\n" PROGRESS
     "exit: 0 the policy passes, 1 it fails, 2 usage or input error, 3 internal error,\n"
     "      130 interrupted (SIGINT), 143 terminated (SIGTERM).\n"},
    {"diff",
     "flashdrift diff OLD NEW [--markdown FILE] [--json FILE] [--html FILE] [--fail-on-regression]\n",
     "compares two reports case by case",
     "Metrics that moved, new failures, fixed cases, cases on one side only, bitwise-identical\n"
     "outputs; printed on stdout.\n\n"
     "options:\n"
     "  --markdown FILE    the comparison as Markdown\n"
     "  --json FILE        the comparison as JSON\n"
     "  --html FILE        NEW rendered as HTML with OLD as its baseline\n"
     "  --fail-on-regression  exit 1 when a case regressed\n\n"
     "exit: 0, 1 a regression with --fail-on-regression, 2 usage or input error, 3 internal.\n"},
    {"baseline",
     "flashdrift baseline update REPORT --name NAME [--force] [--dir DIR]\n",
     "stores a complete report as a named baseline",
     "Writes DIR/NAME.json (default DIR: reports/baselines) with where and when it came from.\n\n"
     "options:\n"
     "  --name NAME        the baseline's name: letters, digits, '.', '_', '-' (required)\n"
     "  --dir DIR          where baselines live (default reports/baselines)\n"
     "  --force            overwrite an existing baseline of that name\n\n"
     "exit: 0 stored, 2 usage or input error (or it exists without --force), 3 internal error.\n"},
    {"html",
     "flashdrift html REPORT|EXPLAIN_JSON [--baseline FILE] [--out FILE]\n",
     "renders a report or an explain.json as one self-contained HTML page",
     "gnuplot draws the plots; without --out the page goes beside the input (X.json -> X.html).\n\n"
     "options:\n"
     "  --baseline FILE    compare with this report\n"
     "  --out FILE         where the page goes\n\n"
     "exit: 0 written, 2 usage or input error, 3 internal error.\n"},
    {"explain",
     "flashdrift explain CASEFILE --case ID [--backend B] [--inject BUG] [--out DIR] [--jobs N]\n"
     "flashdrift explain REPORT [--recompute] [--out DIR] [--jobs N]\n"
     "flashdrift explain --tensors BUNDLE [--output NAME] [--rows-per-head N] [--out DIR]\n",
     "why an output differs from the exact result (docs/attribution.md)",
     "Error budget by stage, accumulation orders, conditioning and bug hypotheses, for one\n"
     "case, for every FAIL or UNJUDGED case of a report, or for the outputs of an imported\n"
     "bundle. A report's cases that `run --explain` already explained are printed as stored\n"
     "(no case file, no GPU needed); --recompute explains them again.\n\n"
     "options:\n"
     "  --case ID          the case of CASEFILE to explain (flashdrift list shows the ids)\n"
     "  --backend B        the backend explained (default cpu-flash)\n"
     "  --inject BUG       play a known bug into the output (docs/attribution.md lists them)\n"
     "  --tensors BUNDLE   explain imported outputs (docs/import.md)\n"
     "  --output NAME      only this output of the bundle\n"
     "  --rows-per-head N  query rows checked per (batch, head), 0 = all (default 32)\n"
     "  --jobs N           threads, 1..1024 (default: the online CPUs)\n"
     "  --out DIR          also write DIR/explain.json and DIR/explain.md\n"
     "  --recompute        REPORT: explain again what the report holds explained\n\n"
     "The output is first judged by the pipeline run and check use (JUDGED line), then\n"
     "attributed.\n\n"
     "exit: 0 the output passes, 1 it fails or is UNJUDGED (as run/check would exit) or a gross\n"
     "error was found, 2 usage or input error, 3 internal.\n"},
    {"check",
     "flashdrift check --tensors PATH [--out DIR] [--jobs N] [--rows-per-head N] [--filter S]\n"
     "                        [--resume] [--repeat N] [--explain fail|all|none] [--quiet]\n",
     "judges tensors dumped by another kernel with the run's pipeline (docs/import.md)",
     "Judges tensors dumped by another kernel (a directory with meta.json and .npy files, a\n"
     ".safetensors file, a directory of such bundles, or a captured training step: a directory\n"
     "with capture.json, judged call by call, docs/loss-mismatch.md) with the same pipeline and run loop\n"
     "as `run`: the MPFR reference on the bundle's exact inputs, every supplied output against\n"
     "it; each flash output against a supplied standard output or, when none is supplied,\n"
     "against standard attention of the same dtype computed from the same inputs\n"
     "(FlashAttention's rule); supplied dropout masks against FA2's regeneration. A metric\n"
     "that was not supplied (no LSE, no mask) is not measured and never judged. Writes\n"
     "DIR/report.json, DIR/summary.md and DIR/report.html (default DIR: out/check).\n\n"
     "options:\n"
     "  --tensors PATH     the bundle(s) (required)\n"
     "  --out DIR          where the report goes (default out/check)\n"
     "  --jobs N           threads, 1..1024\n"
     "  --rows-per-head N  query rows checked per (batch, head), 0 = all (default 32)\n"
     "  --filter S         only bundles whose name contains S\n"
     "  --resume           continue an interrupted check from DIR/cases.partial.jsonl\n"
     "  --repeat N         accepted as for run; given outputs are fixed, nothing is re-run\n"
     "  --explain WHICH    fail (default), all or none: attribute the judged outputs\n"
     "  --quiet            no progress\n\n"
     "exit: 0 all pass, 1 a bundle failed or could not be judged (UNJUDGED), 2 usage or input\n"
     "error (nothing written), 3 internal error, 130/143 interrupted (SIGINT/SIGTERM).\n"},
    {"compare",
     "flashdrift compare RUN_A RUN_B [--out DIR] [--jobs N] [--rows-per-head N] [--gain G]\n"
     "                        [--floor-ulps U] [--quiet]\n",
     "two captures of one training step, call by call (docs/loss-mismatch.md)",
     "RUN_A and RUN_B are captures of the same step of the same model (scripts/\n"
     "flashdrift_capture.py, docs/capture-format.md) with two attention implementations. Each\n"
     "run is first judged as `check --tensors RUN` judges it (DIR/a, DIR/b). Then, per call:\n"
     "how far the call's inputs differ (identical; propagated: within G x the largest relative\n"
     "difference of any earlier call's inputs or outputs + U units of roundoff; or differing:\n"
     "the difference arose outside attention, before the call), how far the outputs differ,\n"
     "split exactly into the part the exact attention of the two inputs makes and the calls'\n"
     "own errors, beside the accumulation-order spread, and the call's first-order share of\n"
     "the loss difference <dO, O_a - O_b>. The verdict names the earliest event: a call judged\n"
     "wrong, an output consumed in the wrong layout, inputs differing beyond propagation.\n"
     "Writes DIR/compare.json and DIR/compare.md (default DIR: out/compare); the verdict line\n"
     "and the table go to stdout.\n\n"
     "options:\n"
     "  --out DIR          where the reports go (default out/compare)\n"
     "  --jobs N           threads, 1..1024\n"
     "  --rows-per-head N  query rows checked against the MPFR reference per (batch, head),\n"
     "                     0 = all (default 32)\n"
     "  --gain G           the propagation threshold's gain (default 16)\n"
     "  --floor-ulps U     its floor, in units of roundoff of the dtype (default 4)\n"
     "  --quiet            no progress\n\n"
     "exit: 0 attention is exact up to rounding in both runs (whatever else differs), 1 a call\n"
     "is wrong or its output misused in either run, 2 usage or input error (a missing tensor, a\n"
     "mismatched shape, two runs of different models; nothing written), 3 internal error.\n"},
    {"bench",
     "flashdrift bench [--csv FILE] [--repeats N] [--max-n N] [--backward] [--only LIST]\n"
     "                 [--n LIST] [--d LIST] [--dtype LIST] [--causal LIST]\n"
     "flashdrift bench --reference [--jobs N] [--full] [--markdown FILE]\n"
     "flashdrift bench --reference --cases FILE [--tier T] [--reference-budget S] [--jobs N]\n",
     "throughput of cuda-flash, cuda-flash-sm90 and cuda-standard (docs/benchmarks.md)",
     "Needs a CUDA build and a GPU.\n\n"
     "options:\n"
     "  --csv FILE         also write the table as CSV\n"
     "  --repeats N        timed repeats per shape (default 10)\n"
     "  --max-n N          largest sequence length (default 16384)\n"
     "  --backward         also the backward pass: cuda-flash-bwd (atomic dQ), cuda-flash-bwd-det\n"
     "                     (deterministic dQ; skipped where its buffers do not fit) and\n"
     "                     cuda-standard-bwd, counted as 2.5x the forward's FLOPs\n"
     "  --only LIST        time only these (comma-separated): cuda-flash, cuda-flash-bc128\n"
     "                     (key tile 128, FA2's at head dims 33..64; timed there only),\n"
     "                     cuda-flash-sm90 (the Hopper kernel, key tile 64; skipped on other\n"
     "                     GPUs),\n"
     "                     cuda-flash-sm90-bc128 (key tile 128), cuda-standard, and the\n"
     "                     backward's three\n"
     "  --n LIST           sequence lengths (default 1024,4096,16384; an explicit --max-n\n"
     "                     still caps them)\n"
     "  --d LIST           head dims (default 64,128)\n"
     "  --dtype LIST       fp16, bf16 or fp16,bf16 (default both)\n"
     "  --causal LIST      0, 1 or 0,1 (default both); B = 4 and H = 16 always\n\n"
     "--reference: certified outputs per second of the reference tiers side by side (MPFR on\n"
     "one and N threads, the binary64 tier on the CPU and, where present, the GPU), as Markdown\n"
     "table rows; runs without a GPU. --full adds every element of B4 H16 N4096 d128 fp16,\n"
     "causal and not (GPU tier, slow on the CPU); --jobs N threads (default: the online CPUs).\n"
     "--cases FILE: the reference stage alone over FILE's cases, rows as a run picks them:\n"
     "values decided by the tier, MPFR calls made and avoided.\n\n"
     "SIGINT/SIGTERM stop it after the kernel running; the CSV keeps the rows measured.\n\n"
     "exit: 0, 2 no GPU or usage error, 3 a kernel failed, 130 interrupted (SIGINT), 143 (SIGTERM).\n"},
    {"list",
     "flashdrift list CASEFILE\n",
     "prints the expanded cases of CASEFILE, one id per line",
     "The ids go to stdout, the count to stderr.\n\n"
     "exit: 0, 2 the case file is invalid.\n"},
};

static const char *const backends_text =
    "backends: cpu-flash, cpu-standard, cpu-splitkv (the CPU replay; 'cpu' runs the first\n"
    "          two); cuda-flash, cuda-flash-sm90 (the Hopper kernel), cuda-standard,\n"
    "          cuda-splitkv where built with CUDA ('cuda' runs them all, cuda-flash-sm90 on an\n"
    "          sm_90 GPU only); 'auto' picks 'cuda' when a GPU is present, else 'cpu'.\n";

static void print_synopsis(FILE *f, const char *s, int *first)
{
    while (*s) {
        const size_t n = strcspn(s, "\n");
        fprintf(f, "%s%.*s\n", *s == ' ' ? "" : (*first ? "usage: " : "       "), (int)n, s);
        if (*s != ' ') *first = 0;
        s += n + (s[n] == '\n');
    }
}

void fd_usage(FILE *f)
{
    int first = 1;
    for (size_t i = 0; i < sizeof usages / sizeof usages[0]; i++) print_synopsis(f, usages[i].synopsis, &first);
    fprintf(f, "       flashdrift --help | --version\n       flashdrift COMMAND --help\n\n");
    for (size_t i = 0; i < sizeof usages / sizeof usages[0]; i++)
        fprintf(f, "%-9s %s\n", usages[i].name, usages[i].summary);
    fprintf(f, "\n%s"
               "options: --opt VALUE or --opt=VALUE; options and arguments in any order; '--' ends\n"
               "         the options. Progress, a run's FAIL lines and diagnostics go to stderr;\n"
               "         results (totals, gate's verdict lines, diff, explain) to stdout.\n"
               "exit: 0 all pass, 1 a case failed (gate: the policy failed; diff: a regression with\n"
               "      --fail-on-regression), 2 usage or input error, 3 internal error,\n"
               "      130 interrupted (SIGINT), 143 terminated (SIGTERM); finished cases are in\n"
               "      DIR/report.partial.json.\n",
            backends_text);
}

int fd_cmd_usage(const char *cmd, FILE *f)
{
    for (size_t i = 0; i < sizeof usages / sizeof usages[0]; i++) {
        if (strcmp(usages[i].name, cmd)) continue;
        int first = 1;
        print_synopsis(f, usages[i].synopsis, &first);
        fprintf(f, "\n%s: %s.\n%s", cmd, usages[i].summary, usages[i].details);
        if (!strcmp(cmd, "run") || !strcmp(cmd, "gate")) fprintf(f, "\n%s", backends_text);
        return 0;
    }
    return -1;
}
