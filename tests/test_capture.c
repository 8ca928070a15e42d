/* test_capture.c: captured training steps (docs/capture-format.md) through `check` and
 * `compare`, on the committed tiny captures of scripts/examples/vit_loss_mismatch.py --tiny
 * (real PyTorch on the CPU: eager attention, SDPA, SDPA with the output-reshape bug, SDPA
 * with post-LN; tests/data/capture-tiny) and on copies with planted faults:
 * - check judges every call in order, names the first call beyond rounding, and reads how
 *   the model consumed each output (merged heads, or the reshape bug);
 * - compare tells rounding (eager vs SDPA) from a misused output (reshape bug), from a
 *   difference before attention (post-LN) and from a wrong attention call (a planted layout
 *   bug in one call's output), with the exit codes of its usage text;
 * - bad captures (a missing tensor, a shape that disagrees with the index, a bundle name
 *   that is a path, two runs of different models) exit 2 naming the file and the field, and
 *   write nothing. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fd_import.h"
#include "fd_test_util.h"

static char *cap(const char *scenario)
{
    static char buf[4][4096];
    static unsigned k;
    char rel[256];
    snprintf(rel, sizeof rel, "capture-tiny/%s", scenario);
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s", tu_path(TU_DATA, rel));
    return p;
}

static int fd(const char *a0, const char *a1, const char *a2, const char *a3, const char *a4, const char *a5)
{
    char *argv[] = {(char *)FD_BINARY, (char *)a0, (char *)a1, (char *)a2, (char *)a3, (char *)a4, (char *)a5, NULL};
    return tu_run_limited(argv, 300, 0);
}

/* A copy of a capture in a fresh temporary directory; returns its path. */
static char *copy_of(const char *scenario, char *dir, size_t len)
{
    char tmp[2048];
    tu_dir(tmp, sizeof tmp);
    snprintf(dir, len, "%s/%s", tmp, scenario);
    char *argv[] = {"/bin/cp", "-r", cap(scenario), dir, NULL};
    cr_assert_eq(tu_run(argv), 0, "cp -r: %s", g_err);
    return dir;
}

static json_t *load(const char *dir, const char *file)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    return tu_load_json(p);
}

Test(capture, check_judges_every_call_in_order)
{
    char out[2048];
    tu_dir(out, sizeof out);
    cr_assert_eq(fd("check", "--tensors", cap("eager"), "--out", out, "--quiet"), 0, "%s%s", g_out, g_err);
    json_t *r = load(out, "report.json");
    const json_t *c = json_object_get(r, "capture");
    cr_assert_not_null(c, "the report has a capture section");
    cr_expect_str_eq(json_string_value(json_object_get(c, "label")), "eager");
    cr_expect(json_is_null(json_object_get(c, "first_beyond_rounding")));
    const json_t *calls = json_object_get(c, "calls");
    cr_assert(json_array_size(calls) >= 2);
    size_t i;
    json_t *e;
    json_array_foreach(calls, i, e) {
        cr_expect_eq(json_integer_value(json_object_get(e, "index")), (json_int_t)i);
        cr_expect_str_eq(json_string_value(json_object_get(e, "verdict")), "PASS", "call %zu", i);
        /* eager outputs are supplied standard outputs: judged by the standard rule */
        cr_expect(json_number_value(json_object_get(e, "ratio")) > 0, "call %zu has a ratio", i);
        cr_expect(json_is_true(json_object_get(e, "gradients")), "call %zu: gradients judged", i);
        cr_expect_str_eq(json_string_value(json_object_get(e, "consumed")), "merged", "call %zu", i);
    }
    cr_expect(json_array_size(json_object_get(c, "layers")) >= 1);
    json_decref(r);
    char md[4200];
    snprintf(md, sizeof md, "%s/summary.md", out);
    FILE *f = fopen(md, "r");
    cr_assert_not_null(f);
    char buf[65536];
    buf[fread(buf, 1, sizeof buf - 1, f)] = 0;
    fclose(f);
    cr_expect(strstr(buf, "## Training step: ViTEncDec (eager)") != NULL);
}

Test(capture, check_names_the_reshape_bug)
{
    char out[2048];
    tu_dir(out, sizeof out);
    cr_assert_eq(fd("check", "--tensors", cap("flash-reshape-bug"), "--out", out, NULL), 1, "%s%s", g_out, g_err);
    cr_expect(strstr(g_out, "first call beyond rounding: call 0") != NULL, "%s", g_out);
    cr_expect(strstr(g_out, "without the transpose") != NULL, "%s", g_out);
    json_t *r = load(out, "report.json");
    const json_t *c = json_object_get(r, "capture");
    const json_t *first = json_object_get(c, "first_beyond_rounding");
    cr_assert(json_is_object(first));
    cr_expect_eq(json_integer_value(json_object_get(first, "index")), 0);
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(c, "calls"), i, e) {
        cr_expect_str_eq(json_string_value(json_object_get(e, "consumed")), "heads_not_transposed", "call %zu", i);
        /* the attention output itself is within rounding: only its use fails */
        cr_expect(json_number_value(json_object_get(e, "ratio")) < 2.0, "call %zu", i);
    }
    json_decref(r);
}

Test(capture, compare_rounding_only)
{
    char out[2048];
    tu_dir(out, sizeof out);
    cr_assert_eq(fd("compare", cap("eager"), cap("sdpa"), "--out", out, "--quiet"), 0, "%s%s", g_out, g_err);
    cr_expect(strstr(g_out, "VERDICT: attention is exact up to rounding in both runs") != NULL, "%s", g_out);
    json_t *r = load(out, "compare.json");
    const json_t *c = json_object_get(r, "compare");
    cr_expect_eq(json_array_size(json_object_get(c, "events")), 0);
    const json_t *c0 = json_array_get(json_object_get(c, "calls"), 0);
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(c0, "inputs"), "class")), "identical");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(c, "calls"), i, e) {
        const char *cls = json_string_value(json_object_get(json_object_get(e, "inputs"), "class"));
        cr_expect(!strcmp(cls, "identical") || !strcmp(cls, "propagated"), "call %zu: %s", i, cls);
        /* the split is exact: total = from inputs + own */
        const json_t *l = json_object_get(e, "loss");
        const double t = json_number_value(json_object_get(l, "total")),
                     s = json_number_value(json_object_get(l, "from_inputs")) + json_number_value(json_object_get(l, "own"));
        cr_expect(fabs(t - s) <= 1e-9 * (fabs(t) + 1e-12), "call %zu: %g vs %g", i, t, s);
    }
    cr_expect(json_is_number(json_object_get(json_object_get(c, "loss"), "attention_own")));
    /* both runs captured their parameters' gradients: compared tensor by tensor */
    const json_t *pg = json_object_get(json_object_get(c, "loss"), "param_grads");
    cr_expect(json_integer_value(json_object_get(pg, "tensors")) > 0, "parameter gradients compared");
    cr_expect_eq(json_array_size(json_object_get(pg, "unmatched")), 0);
    json_decref(r);
    struct stat st;
    char p[4200];
    snprintf(p, sizeof p, "%s/a/report.json", out);
    cr_expect_eq(stat(p, &st), 0, "each run's check report is kept");
}

Test(capture, compare_misused_output)
{
    char out[2048];
    tu_dir(out, sizeof out);
    cr_assert_eq(fd("compare", cap("eager"), cap("flash-reshape-bug"), "--out", out, "--quiet"), 1, "%s%s", g_out, g_err);
    cr_expect(strstr(g_out, "right after call 0's output") != NULL, "%s", g_out);
    json_t *r = load(out, "compare.json");
    const json_t *c = json_object_get(r, "compare");
    const json_t *ev = json_array_get(json_object_get(c, "events"), 0);
    cr_expect_str_eq(json_string_value(json_object_get(ev, "kind")), "output_misused");
    cr_expect_eq(json_integer_value(json_object_get(ev, "call")), 0);
    /* a later call that reads the misused output has inputs that differ beyond propagation */
    int differs = 0;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(c, "calls"), i, e)
        differs += !strcmp(json_string_value(json_object_get(json_object_get(e, "inputs"), "class")), "differs");
    cr_expect(differs >= 1, "a later call's inputs differ");
    json_decref(r);
}

Test(capture, compare_difference_before_attention)
{
    char out[2048];
    tu_dir(out, sizeof out);
    cr_assert_eq(fd("compare", cap("eager"), cap("flash-postln"), "--out", out, "--quiet"), 0, "%s%s", g_out, g_err);
    cr_expect(strstr(g_out, "before the first attention call") != NULL, "%s", g_out);
    json_t *r = load(out, "compare.json");
    const json_t *ev = json_array_get(json_object_get(json_object_get(r, "compare"), "events"), 0);
    cr_expect_str_eq(json_string_value(json_object_get(ev, "kind")), "inputs_differ");
    cr_expect_eq(json_integer_value(json_object_get(ev, "call")), 0);
    json_decref(r);
}

/* A copy of a capture whose call 1 output is stored with its (b, s, h, d) buffer read as
 * (b, h, s, d): a wrong call (the model consumed what it got: used_NAME is dropped). */
static char *plant_layout_bug(const char *scenario, char *dir, size_t len)
{
    char err[1024], p[2300];
    copy_of(scenario, dir, len);
    snprintf(p, sizeof p, "%s/call-0001", dir);
    fd_bundle b;
    cr_assert_eq(fd_bundle_load(p, &b, err, sizeof err), 0, "%s", err);
    const fd_problem *pr = &b.prob;
    const size_t n = fd_q_numel(pr);
    float *o = b.out[0].o, *t = malloc(sizeof(float) * n);
    const size_t B = (size_t)pr->batch, S = (size_t)pr->seqlen_q, H = (size_t)pr->heads, D = (size_t)pr->head_dim;
    for (size_t bb = 0; bb < B; bb++)
        for (size_t s = 0; s < S; s++)
            for (size_t h = 0; h < H; h++)
                for (size_t d = 0; d < D; d++) t[((bb * S + s) * H + h) * D + d] = o[((bb * H + h) * S + s) * D + d];
    memcpy(o, t, sizeof(float) * n);
    free(t);
    free(b.out[0].used);
    b.out[0].used = NULL;
    char *argv[] = {"/bin/rm", "-r", p, NULL};
    cr_assert_eq(tu_run(argv), 0);
    cr_assert_eq(fd_bundle_write(&b, p, 0, b.bhsd, err, sizeof err), 0, "%s", err);
    fd_bundle_free(&b);
    return dir;
}

Test(capture, compare_wrong_call)
{
    char dir[2048], out[2048];
    plant_layout_bug("sdpa", dir, sizeof dir);
    tu_dir(out, sizeof out);
    cr_assert_eq(fd("compare", cap("eager"), dir, "--out", out, "--quiet"), 1, "%s%s", g_out, g_err);
    cr_expect(strstr(g_out, "attention call 1") != NULL && strstr(g_out, "is wrong in run b") != NULL, "%s", g_out);
    tu_dir(out, sizeof out);
    cr_assert_eq(fd("check", "--tensors", dir, "--out", out, NULL), 1, "%s%s", g_out, g_err);
    cr_expect(strstr(g_out, "first call beyond rounding: call 1") != NULL, "%s", g_out);
}

/* A wrong eager call: judged by the standard rule, explained on its own output. */
Test(capture, wrong_eager_call_is_explained)
{
    char dir[2048], out[2048];
    plant_layout_bug("eager", dir, sizeof dir);
    tu_dir(out, sizeof out);
    cr_assert_eq(fd("check", "--tensors", dir, "--out", out, "--quiet"), 1, "%s%s", g_out, g_err);
    json_t *r = load(out, "report.json");
    const json_t *first = json_object_get(json_object_get(r, "capture"), "first_beyond_rounding");
    cr_assert(json_is_object(first));
    cr_expect_eq(json_integer_value(json_object_get(first, "index")), 1);
    const char *h = json_string_value(json_object_get(json_object_get(first, "explanation"), "hypothesis"));
    cr_expect(h && !strncmp(h, "layout_", 7), "a layout hypothesis names it: %s", h ? h : "(none)");
    json_decref(r);
}

/* check, and gate on check's report with the shipped CI policy, agree on every capture */
Test(capture, gate_agrees_with_check)
{
    static const char *const runs[] = {"eager", "sdpa", "flash-reshape-bug", "flash-postln"};
    char dir[2048];
    for (int i = 0; i < 5; i++) {
        const char *run = i < 4 ? cap(runs[i]) : plant_layout_bug("eager", dir, sizeof dir);
        char out[2048], rep[2200];
        tu_dir(out, sizeof out);
        const int crc = fd("check", "--tensors", run, "--out", out, "--quiet");
        snprintf(rep, sizeof rep, "%s/report.json", out);
        char pol[2048];
        snprintf(pol, sizeof pol, "%s", tu_path(TU_SOURCE, "cases/policy-ci.json"));
        const int grc = fd("gate", rep, "--policy", pol, "--no-baseline", NULL);
        cr_expect(crc == 0 || crc == 1, "%s: check exit %d", run, crc);
        cr_expect_eq(grc, crc, "%s: gate exit %d, check exit %d: %s", run, grc, crc, g_err);
    }
}

static void expect_usage_error(const char *what, const char *run_a, const char *run_b, const char *needle)
{
    char out[2048], sub[2100];
    tu_dir(out, sizeof out);
    snprintf(sub, sizeof sub, "%s/x", out);
    const int rc = run_b ? fd("compare", run_a, run_b, "--out", sub, "--quiet")
                         : fd("check", "--tensors", run_a, "--out", sub, "--quiet");
    cr_expect_eq(rc, 2, "%s: exit %d: %s", what, rc, g_err);
    cr_expect(strstr(g_err, needle) != NULL, "%s: stderr names the problem (%s): %s", what, needle, g_err);
    struct stat st;
    cr_expect(stat(sub, &st) != 0, "%s: nothing written", what);
}

Test(capture, bad_captures_exit_2)
{
    char d1[2048], d2[2048], d3[2048], d4[2048], p[2300];
    /* a missing tensor */
    copy_of("sdpa", d1, sizeof d1);
    snprintf(p, sizeof p, "%s/call-0001/k.npy", d1);
    cr_assert_eq(unlink(p), 0);
    expect_usage_error("missing tensor", d1, NULL, "call-0001");
    expect_usage_error("missing tensor (compare)", cap("eager"), d1, "call-0001");
    /* a shape that disagrees with the index */
    copy_of("sdpa", d2, sizeof d2);
    json_t *ix = load(d2, "capture.json");
    json_t *q = json_object_get(json_array_get(json_object_get(ix, "calls"), 0), "q_shape");
    json_array_set_new(q, 0, json_integer(json_integer_value(json_array_get(q, 0)) + 1));
    snprintf(p, sizeof p, "%s/capture.json", d2);
    tu_save(ix, p);
    json_decref(ix);
    expect_usage_error("mismatched shape", d2, NULL, "calls[0].q_shape");
    /* a bundle name that is a path */
    copy_of("sdpa", d3, sizeof d3);
    ix = load(d3, "capture.json");
    json_object_set_new(json_array_get(json_object_get(ix, "calls"), 0), "bundle", json_string("../../etc"));
    snprintf(p, sizeof p, "%s/capture.json", d3);
    tu_save(ix, p);
    json_decref(ix);
    expect_usage_error("bundle name", d3, NULL, "calls[0].bundle: expected call-");
    /* two runs of different models */
    copy_of("sdpa", d4, sizeof d4);
    ix = load(d4, "capture.json");
    json_object_set_new(ix, "model", json_string("SomethingElse"));
    snprintf(p, sizeof p, "%s/capture.json", d4);
    tu_save(ix, p);
    json_decref(ix);
    expect_usage_error("different models", cap("eager"), d4, "two runs of different models");
    /* not a capture */
    expect_usage_error("not a capture", cap("eager"), tu_path(TU_DATA, "pytorch-h200-bwd"), "not a captured step");
}
