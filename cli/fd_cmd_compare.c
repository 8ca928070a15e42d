/* fd_cmd_compare.c: `flashdrift compare RUN_A RUN_B`: two captures of one training step
 * (docs/capture-format.md), each judged by check's pipeline (DIR/a, DIR/b), then compared
 * call by call by fd_compare_runs (harness/fd_compare.h). Both captures are validated (and
 * found to be of the same model) before anything is written. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_capture.h"
#include "fd_cmds.h"
#include "fd_compare.h"
#include "fd_opt.h"
#include "fd_out.h"
#include "fd_runfile.h"

static const char *jstr(const json_t *j, const char *k)
{
    const char *s = json_string_value(json_object_get(j, k));
    return s ? s : "";
}

static double jnum(const json_t *j, const char *a, const char *b)
{
    const json_t *x = json_object_get(j, a);
    return fd_json_number(b ? json_object_get(x, b) : x);
}

/* The table, in Markdown (compare.md) and, shorter, on stdout. */
static void write_md(FILE *f, const json_t *cmp, int md)
{
    const json_t *A = json_object_get(cmp, "a"), *B = json_object_get(cmp, "b"), *L = json_object_get(cmp, "loss");
    if (md) {
        fprintf(f, "# flashdrift compare\n\n| run | label | model | loss |\n| --- | --- | --- | --- |\n");
        for (int w = 0; w < 2; w++) {
            const json_t *R = w ? B : A;
            fprintf(f, "| %s | ", w ? "b" : "a");
            fd_md_text(f, jstr(R, "label"));
            fprintf(f, " | ");
            fd_md_text(f, jstr(R, "model"));
            fprintf(f, " | %.9g |\n", jnum(L, w ? "b" : "a", NULL));
        }
        fprintf(f, "\n**Verdict:** ");
        fd_md_text(f, jstr(cmp, "verdict"));
        fprintf(f, "\n\n");
        size_t i;
        json_t *ev;
        if (json_array_size(json_object_get(cmp, "events"))) fprintf(f, "Events, in the order they happen:\n\n");
        json_array_foreach(json_object_get(cmp, "events"), i, ev) {
            fprintf(f, "- ");
            fd_md_text(f, jstr(ev, "text"));
            fprintf(f, "\n");
        }
        fprintf(f, "\nLoss difference a - b: %.6g; the attention calls' own errors account for %.6g of it "
                   "(first order, %lld calls with gradients).\n\n",
                jnum(L, "difference", NULL), jnum(L, "attention_own", NULL),
                json_integer_value(json_object_get(L, "calls_with_gradients")));
        const json_t *pg = json_object_get(L, "param_grads");
        if (json_is_object(pg) && json_object_get(pg, "by_rel_l2")) {
            fprintf(f, "Parameter gradients (params.safetensors of both runs): %lld tensors, rel l2 of the difference "
                       "over all %.3g; the largest:\n\n| parameter | rel l2 | max abs | identical |\n| --- | --- | --- | --- |\n",
                    json_integer_value(json_object_get(pg, "tensors")), jnum(pg, "rel_l2_all", NULL));
            size_t k;
            json_t *t;
            json_array_foreach(json_object_get(pg, "by_rel_l2"), k, t) {
                if (k == 10) break;
                fprintf(f, "| ");
                fd_md_text(f, jstr(t, "name"));
                fprintf(f, " | %.3g | %.3g | %lld / %lld |\n", jnum(t, "rel_l2", NULL), jnum(t, "max_abs", NULL),
                        json_integer_value(json_object_get(t, "identical")),
                        json_integer_value(json_object_get(t, "elements")));
            }
            fprintf(f, "\n");
        }
        fprintf(f, "| call | module | verdict a | verdict b | inputs | input rel l2 | threshold | output diff max abs "
                   "| from inputs | own errors | order spread | own / spread | loss share (own) |\n"
                   "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    }
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(cmp, "calls"), i, e) {
        const json_t *in = json_object_get(e, "inputs"), *out = json_object_get(e, "outputs");
        if (!md) {
            if (!in) {
                printf("call %2lld  not measured: %s\n", json_integer_value(json_object_get(e, "index")),
                       jstr(e, "not_measured"));
                continue;
            }
            printf("call %2lld  %-8s %-8s inputs %-10s (rel %.2g)  outputs differ %.3g: inputs %.3g, own %.3g "
                   "(order spread %.3g)\n",
                   json_integer_value(json_object_get(e, "index")), jstr(json_object_get(e, "a"), "verdict"),
                   jstr(json_object_get(e, "b"), "verdict"), jstr(in, "class"), jnum(in, "rel_l2", NULL),
                   jnum(out, "difference", "max_abs"), jnum(out, "from_inputs", "max_abs"),
                   jnum(out, "own_errors", "max_abs"), jnum(out, "order_spread", "max_abs"));
            continue;
        }
        fprintf(f, "| %lld | ", json_integer_value(json_object_get(e, "index")));
        fd_md_text(f, jstr(e, "module"));
        if (!in) {
            fprintf(f, " | not measured: ");
            fd_md_text(f, jstr(e, "not_measured"));
            fprintf(f, " | | | | | | | | | | |\n");
            continue;
        }
        fprintf(f, " | %s | %s | %s | %.3g | %.3g | %.3g | %.3g | %.3g | %.3g | %.3g | ",
                jstr(json_object_get(e, "a"), "verdict"), jstr(json_object_get(e, "b"), "verdict"), jstr(in, "class"),
                jnum(in, "rel_l2", NULL), jnum(in, "threshold", NULL), jnum(out, "difference", "max_abs"),
                jnum(out, "from_inputs", "max_abs"), jnum(out, "own_errors", "max_abs"),
                jnum(out, "order_spread", "max_abs"), jnum(out, "own_vs_order_spread", NULL));
        const json_t *lo = json_object_get(e, "loss");
        if (json_object_get(lo, "own")) fprintf(f, "%.3g |\n", jnum(lo, "own", NULL));
        else fprintf(f, "- |\n");
    }
}

static int load_run(const char *path, fd_capture *c)
{
    char err[2048];
    if (!fd_capture_is(path)) {
        fprintf(stderr, "flashdrift: %s: not a captured step (expected a directory with capture.json, "
                        "docs/capture-format.md)\n", path);
        return -1;
    }
    if (fd_capture_load(path, c, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return -1;
    }
    return 0;
}

int fd_cmd_compare(int argc, char **argv)
{
    const char *run[2] = {NULL, NULL};
    int rows = 32, nrun = 0;
    fd_run_opts o;
    fd_run_opts_default(&o);
    o.out = "out/compare";
    o.backend = "import";
    fd_compare_opts co;
    fd_compare_opts_default(&co);
    enum { OPT_ROWS = FD_OPT_CMD, OPT_GAIN, OPT_FLOOR };
    static const struct option lo[] = {{"rows-per-head", required_argument, NULL, OPT_ROWS},
                                       {"gain", required_argument, NULL, OPT_GAIN},
                                       {"floor-ulps", required_argument, NULL, OPT_FLOOR},
                                       {NULL, 0, NULL, 0}};
    fd_getopt g;
    if (fd_getopt_init(&g, "compare", argc, argv, fd_run_longopts, lo)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        char *end = NULL;
        long v;
        double d;
        switch (c) {
        case FD_OPT_HELP: return FD_EXIT_PASS;
        case FD_OPT_ERROR: return FD_EXIT_USAGE;
        case FD_OPT_POSITIONAL:
            if (nrun == 2) return fd_usage_error("compare", "two runs expected, got also '%s'", g.arg);
            run[nrun++] = g.arg;
            break;
        case OPT_ROWS:
            v = strtol(g.arg, &end, 10);
            if (!*g.arg || *end || v < 0 || v > (1L << 20))
                return fd_usage_error("compare", "--rows-per-head expects an integer >= 0 (0: every row), got '%s'", g.arg);
            rows = (int)v;
            break;
        case OPT_GAIN:
        case OPT_FLOOR:
            d = strtod(g.arg, &end);
            if (!*g.arg || *end || !(d >= 0) || !isfinite(d))
                return fd_usage_error("compare", "--%s expects a number >= 0, got '%s'",
                                      c == OPT_GAIN ? "gain" : "floor-ulps", g.arg);
            if (c == OPT_GAIN) co.gain = d;
            else co.floor_ulps = d;
            break;
        case FD_OPT_RUN_BACKEND:
        case FD_OPT_RUN_FILTER:
        case FD_OPT_RUN_RESUME:
        case FD_OPT_RUN_REPEAT:
            return fd_usage_error("compare", "--backend, --filter, --resume and --repeat do not apply to compare");
        default:
            if (fd_run_option("compare", c, g.arg, &o)) return FD_EXIT_USAGE;
        }
    }
    if (nrun != 2) return fd_usage_error("compare", "two captured runs RUN_A RUN_B are required");
    fd_capture a, b;
    if (load_run(run[0], &a)) return FD_EXIT_USAGE;
    if (load_run(run[1], &b)) {
        fd_capture_free(&a);
        return FD_EXIT_USAGE;
    }
    char err[2048];
    int rc = FD_EXIT_PASS;
    if (fd_compare_same_model(&a, &b, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_USAGE;
        goto out;
    }
    /* every bundle of both runs validated before anything is written */
    for (int w = 0; w < 2 && rc == FD_EXIT_PASS; w++) {
        fd_capture tmp;
        char **paths = NULL;
        int np = 0;
        rc = fd_check_list(run[w], &tmp, &paths, &np);
        if (rc != FD_EXIT_PASS) break;
        for (int i = 0; i < np; i++) free(paths[i]);
        free(paths);
        fd_capture_free(&tmp);
    }
    if (rc != FD_EXIT_PASS) goto out;
    /* each run judged as check judges it */
    json_t *rep[2] = {NULL, NULL};
    char dir[2][4200];
    for (int w = 0; w < 2 && rc == FD_EXIT_PASS; w++) {
        snprintf(dir[w], sizeof dir[w], "%s/%s", o.out, w ? "b" : "a");
        fd_run_opts ow = o;
        ow.out = dir[w];
        ow.quiet = 1;
        const int crc = fd_check_tensors(run[w], rows, &ow, &rep[w]);
        if (crc != FD_EXIT_PASS && crc != FD_EXIT_GATE) rc = crc;
        else if (!rep[w]) rc = FD_EXIT_INTERNAL;
    }
    if (rc == FD_EXIT_PASS) {
        int wrong = 0;
        json_t *cmp = fd_compare_runs(&a, &b, rep[0], rep[1], &co, &wrong, err, sizeof err);
        if (!cmp) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = FD_EXIT_INTERNAL;
        } else {
            char path[4300];
            snprintf(path, sizeof path, "%s/compare.json", o.out);
            json_t *root = json_pack("{s:i, s:s, s:O}", "schema_version", 1, "tool", "flashdrift", "compare", cmp);
            fd_doc doc;
            if (fd_write_json_atomic(path, root, err, sizeof err)) {
                fprintf(stderr, "flashdrift: %s\n", err);
                rc = FD_EXIT_INTERNAL;
            } else {
                snprintf(path, sizeof path, "%s/compare.md", o.out);
                if (fd_doc_open(&doc, path, err, sizeof err)) {
                    fprintf(stderr, "flashdrift: %s\n", err);
                    rc = FD_EXIT_INTERNAL;
                } else {
                    write_md(doc.f, cmp, 1);
                    if (fd_doc_commit(&doc, err, sizeof err)) {
                        fprintf(stderr, "flashdrift: %s\n", err);
                        rc = FD_EXIT_INTERNAL;
                    }
                }
            }
            json_decref(root);
            if (rc == FD_EXIT_PASS) {
                if (!o.quiet) write_md(stdout, cmp, 0);
                printf("VERDICT: %s\n", jstr(cmp, "verdict"));
                printf("loss a - b = %.6g; attention's own errors: %.6g (first order) -> %s/compare.md\n",
                       jnum(json_object_get(cmp, "loss"), "difference", NULL),
                       jnum(json_object_get(cmp, "loss"), "attention_own", NULL), o.out);
                rc = wrong ? FD_EXIT_GATE : FD_EXIT_PASS;
            }
            json_decref(cmp);
        }
    }
    json_decref(rep[0]);
    json_decref(rep[1]);
out:
    fd_capture_free(&a);
    fd_capture_free(&b);
    return rc;
}
