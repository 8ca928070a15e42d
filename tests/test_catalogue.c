/* test_catalogue.c: `check` and `explain` agree on a catalogue of imported bundles.
 *
 * Built here, written as bundles, judged by the flashdrift binary: for fp16 and bf16,
 * each named bug (softmax scale missing or doubled, output layout permuted both ways,
 * causal mask missing / added / top-left where bottom-right was declared / off by one,
 * softmax over the wrong axis, dropout mask with another seed or offset, dropout scale
 * missing), each with its flash output alone and with a correct standard output beside
 * it, plus correct outputs. The buggy outputs are made by the CPU flash replay on the
 * buggy problem (or, where no kernel has the bug's knob, by the binary64 attention
 * rounded to the dtype). `check` must FAIL exactly the bugs (and PASS the correct
 * outputs), `explain --tensors` must name each bug's hypothesis, and the exit codes of
 * the two commands must agree bundle by bundle. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fd_attn64.h"
#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_import.h"
#include "fd_test_util.h"

typedef enum { BASE_PLAIN, BASE_CAUSAL, BASE_DROPOUT } base_kind;

typedef struct {
    const char *name;       /* bundle name; the hypothesis explain must name ("" = correct) */
    base_kind base;
} entry;

static const entry catalogue[] = {
    {"correct", BASE_PLAIN},
    {"correct", BASE_CAUSAL},
    {"correct", BASE_DROPOUT},
    {"scale_missing", BASE_PLAIN},
    {"scale_doubled", BASE_PLAIN},
    {"layout_bhsd_as_bshd", BASE_PLAIN},
    {"layout_bshd_as_bhsd", BASE_PLAIN},
    {"causal_added", BASE_PLAIN},
    {"softmax_wrong_axis", BASE_PLAIN},
    {"mask_missing", BASE_CAUSAL},
    {"causal_top_left", BASE_CAUSAL},
    {"causal_off_by_one_plus", BASE_CAUSAL},
    {"causal_off_by_one_minus", BASE_CAUSAL},
    {"dropout_seed_plus_one", BASE_DROPOUT},
    {"dropout_offset_plus_one", BASE_DROPOUT},
    {"dropout_scale_missing", BASE_DROPOUT},
};
#define NCAT (sizeof catalogue / sizeof catalogue[0])

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double normal(void)
{
    /* xorshift64* and Box-Muller: inputs only need to be reproducible */
    double u[2];
    for (int t = 0; t < 2; t++) {
        g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
        u[t] = ((double)((g_rng * 2685821657736338717ull) >> 11) + 0.5) * 0x1p-53;
    }
    return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

static void base_problem(fd_problem *p, base_kind k, fd_dtype t)
{
    memset(p, 0, sizeof *p);
    p->batch = 1; p->heads = 2; p->kv_heads = 2; p->seqlen_q = 37; p->seqlen_k = 53; p->head_dim = 32;
    p->dtype = t;
    p->softmax_scale = (float)(1.0 / sqrt(32.0));
    p->mask = k == BASE_CAUSAL ? FD_MASK_CAUSAL_BR : FD_MASK_NONE;
    if (k == BASE_DROPOUT) {
        p->dropout_p = 0.17;
        p->seed = 20261202;
        p->offset = 4096;
    }
}

/* The binary64 attention of a variant, rounded to the dtype: a "kernel" with the bug. */
static void attn64_out(const fd_problem *p, const fd_attn_variant *va, const float *q, const float *k,
                       const float *v, float *o)
{
    char err[256];
    double *qd = fd_to_f64(q, fd_q_numel(p)), *kd = fd_to_f64(k, fd_kv_numel(p)), *vd = fd_to_f64(v, fd_kv_numel(p));
    double *od = malloc(sizeof(double) * fd_q_numel(p));
    cr_assert(qd && kd && vd && od);
    cr_assert_eq(fd_attn64(p, va, qd, kd, vd, NULL, p->seqlen_q, od, err, sizeof err), 0, "%s", err);
    for (size_t i = 0; i < fd_q_numel(p); i++) o[i] = fd_round_to_dtype((float)od[i], p->dtype);
    free(qd); free(kd); free(vd); free(od);
}

/* The flash output of the (possibly buggy) kernel for bug `name` on declared problem p. */
static void flash_out(const fd_problem *p, const char *name, const float *q, const float *k, const float *v,
                      float *o)
{
    char err[256];
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cfg.qk_order = cfg.pv_order = FD_ACC_TC16;
    fd_problem bp = *p;
    float *lse = malloc(sizeof(float) * fd_lse_numel(p));
    cr_assert(lse);
    fd_attn_variant va;
    fd_attn_variant_default(p, &va);
    int perm = -1, post_scale = 0;
    if (!strcmp(name, "scale_missing")) bp.softmax_scale = 1.0f;
    else if (!strcmp(name, "scale_doubled")) bp.softmax_scale = p->softmax_scale * p->softmax_scale;
    else if (!strcmp(name, "layout_bhsd_as_bshd")) perm = 0;
    else if (!strcmp(name, "layout_bshd_as_bhsd")) perm = 1;
    else if (!strcmp(name, "causal_added")) bp.mask = FD_MASK_CAUSAL_TL;
    else if (!strcmp(name, "mask_missing")) bp.mask = FD_MASK_NONE;
    else if (!strcmp(name, "causal_top_left")) bp.mask = FD_MASK_CAUSAL_TL;
    else if (!strcmp(name, "dropout_seed_plus_one")) bp.seed += 1;
    else if (!strcmp(name, "dropout_offset_plus_one")) bp.offset += 1;
    else if (!strcmp(name, "dropout_scale_missing")) post_scale = 1;
    else if (!strcmp(name, "softmax_wrong_axis")) va.wrong_axis = 1;
    else if (!strcmp(name, "causal_off_by_one_plus")) va.causal_shift = 1;
    else if (!strcmp(name, "causal_off_by_one_minus")) va.causal_shift = -1;
    else cr_assert(!strcmp(name, "correct"), "unknown catalogue entry %s", name);
    if (va.wrong_axis || va.causal_shift) {
        attn64_out(p, &va, q, k, v, o);
    } else {
        float *full = malloc(sizeof(float) * fd_q_numel(p));
        cr_assert(full);
        cr_assert_eq(fd_cpu_flash_forward(&bp, &cfg, q, k, v, NULL, p->seqlen_q, full, lse, err, sizeof err), 0,
                     "%s", err);
        const size_t D = (size_t)p->head_dim, S = (size_t)p->seqlen_q, H = (size_t)p->heads;
        for (size_t f = 0; f < fd_q_numel(p); f++) {
            size_t src = f;
            const size_t d = f % D;
            if (perm == 0) { /* (b, s, h, d) data permuted as if (b, h, s, d) */
                const size_t s = (f / D) % S, h = (f / (D * S)) % H, b = f / (D * S * H);
                src = fd_q_index(p, (int)b, (int)s, (int)h, (int)d);
            } else if (perm == 1) {
                const size_t h = (f / D) % H, s = (f / (D * H)) % S, b = f / (D * H * S);
                src = ((b * H + h) * S + s) * D + d;
            }
            o[f] = full[src];
            if (post_scale) o[f] = fd_round_to_dtype(o[f] * (float)(1.0 - p->dropout_p), p->dtype);
        }
        free(full);
    }
    free(lse);
}

static char g_dir[64];

/* Writes bundle NAME-DTYPE-alone and NAME-DTYPE-beside (with a correct standard output). */
static void write_pair(const entry *e, fd_dtype t, int idx)
{
    fd_bundle b;
    memset(&b, 0, sizeof b);
    base_problem(&b.prob, e->base, t);
    fd_problem *p = &b.prob;
    b.q = malloc(sizeof(float) * fd_q_numel(p));
    b.k = malloc(sizeof(float) * fd_kv_numel(p));
    b.v = malloc(sizeof(float) * fd_kv_numel(p));
    cr_assert(b.q && b.k && b.v);
    for (size_t i = 0; i < fd_q_numel(p); i++) b.q[i] = fd_round_to_dtype((float)normal(), t);
    for (size_t i = 0; i < fd_kv_numel(p); i++) b.k[i] = fd_round_to_dtype((float)normal(), t);
    for (size_t i = 0; i < fd_kv_numel(p); i++) b.v[i] = fd_round_to_dtype((float)normal(), t);
    for (int o = 0; o < 2; o++) {
        fd_import_output *io = &b.out[o];
        snprintf(io->name, sizeof io->name, o == 0 ? "flash" : "eager");
        io->be.name = io->name;
        io->be.family = "import";
        io->be.role = o == 0 ? FD_ROLE_FLASH : FD_ROLE_STANDARD;
        io->o = malloc(sizeof(float) * fd_q_numel(p));
        cr_assert(io->o);
    }
    flash_out(p, e->name, b.q, b.k, b.v, b.out[0].o);
    float *lse = malloc(sizeof(float) * fd_lse_numel(p));
    char err[512], path[256];
    cr_assert_eq(fd_cpu_standard_forward(p, FD_ACC_TC16, b.q, b.k, b.v, NULL, p->seqlen_q, b.out[1].o, lse, err,
                                         sizeof err), 0, "%s", err);
    free(lse);
    for (int beside = 0; beside < 2; beside++) {
        b.nout = beside ? 2 : 1;
        snprintf(path, sizeof path, "%s/%02d-%s-%s-%s%s", g_dir, idx, e->name, fd_dtype_name(t),
                 beside ? "beside" : "alone", idx % 2 ? ".safetensors" : "");
        cr_assert_eq(fd_bundle_write(&b, path, idx % 2, 0, err, sizeof err), 0, "%s", err);
    }
    b.nout = 2;
    fd_bundle_free(&b);
}

static int run_fd(const char *a, const char *b, const char *c, const char *d, const char *e, const char *f)
{
    char *argv[] = {FD_BINARY, (char *)a, (char *)b, (char *)c, (char *)d, (char *)e, (char *)f, NULL};
    return tu_run(argv);
}

Test(catalogue, check_and_explain_agree, .timeout = 900)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/fd_catalogue_XXXXXX");
    cr_assert(mkdtemp(g_dir));
    const fd_dtype dts[] = {FD_DT_FP16, FD_DT_BF16};
    int idx = 0;
    for (int t = 0; t < 2; t++)
        for (size_t e = 0; e < NCAT; e++) write_pair(&catalogue[e], dts[t], idx++);

    /* check, once over the whole catalogue */
    char out[128], bundles[128];
    snprintf(out, sizeof out, "%s.check", g_dir);
    snprintf(bundles, sizeof bundles, "%s", g_dir);
    int rc = run_fd("check", "--tensors", bundles, "--out", out, "--quiet");
    cr_expect_eq(rc, 1, "check exits 1 when a bundle fails; got %d: %s", rc, g_err);
    char rp[200];
    snprintf(rp, sizeof rp, "%s/report.json", out);
    json_error_t je;
    json_t *rep = json_load_file(rp, 0, &je);
    cr_assert_not_null(rep, "%s: %s", rp, je.text);
    cr_assert_eq(json_array_size(json_object_get(rep, "cases")), 4 * NCAT);
    size_t i;
    json_t *c;
    int nbug = 0, ncorrect = 0;
    json_array_foreach(json_object_get(rep, "cases"), i, c) {
        const char *id = json_string_value(json_object_get(c, "id"));
        const char *v = json_string_value(json_object_get(c, "verdict"));
        const int correct = strstr(id, "-correct-") != NULL;
        const int alone = strstr(id, "-alone") != NULL;
        if (correct) {
            ncorrect++;
            cr_expect(!strcmp(v, "PASS") || !strcmp(v, "MARGINAL"), "%s: correct output judged %s: %s", id, v,
                      json_string_value(json_object_get(c, "reasons")));
        } else {
            nbug++;
            cr_expect_str_eq(v, "FAIL", "%s: buggy output judged %s: %s", id, v,
                             json_string_value(json_object_get(c, "reasons")));
        }
        /* the baseline's origin is recorded: computed when no standard output was given */
        const char *origin = json_string_value(json_object_get(json_object_get(c, "baseline"), "origin"));
        cr_expect_str_eq(origin ? origin : "(none)", alone ? "computed" : "supplied", "%s", id);
        /* no LSE was given: not measured, null, not judged */
        cr_expect(json_is_null(json_object_get(json_object_get(json_object_get(c, "backends"), "flash"), "lse_max_abs")),
                  "%s: lse_max_abs should be null", id);
    }
    cr_expect_eq(nbug, 4 * ((int)NCAT - 3));
    cr_expect_eq(ncorrect, 4 * 3);

    /* explain, bundle by bundle: names the bug; its exit code is check's */
    json_array_foreach(json_object_get(rep, "cases"), i, c) {
        const char *id = json_string_value(json_object_get(c, "id"));
        const char *v = json_string_value(json_object_get(c, "verdict"));
        char bp[300], eo[300];
        snprintf(bp, sizeof bp, "%s/%s.safetensors", g_dir, id);
        struct stat st;
        if (stat(bp, &st)) snprintf(bp, sizeof bp, "%s/%s", g_dir, id);
        snprintf(eo, sizeof eo, "%s.explain-%zu", g_dir, i);
        int erc = run_fd("explain", "--tensors", bp, "--out", eo, NULL);
        char cp[340];
        snprintf(cp, sizeof cp, "--tensors=%s", bp);
        char co[340];
        snprintf(co, sizeof co, "--out=%s.one", eo);
        int crc = run_fd("check", cp, co, "--quiet", "--jobs", "2");
        const int fail = !strcmp(v, "FAIL");
        cr_expect_eq(crc, fail ? 1 : 0, "%s: check alone exits %d (verdict %s): %s", id, crc, v, g_err);
        cr_expect_eq(erc, crc, "%s: explain exits %d, check %d", id, erc, crc);
        /* gate, with each shipped policy, on check's report: the same answer */
        char rj[360];
        snprintf(rj, sizeof rj, "%s.one/report.json", eo);
        const char *const policies[] = {"cases/policy-ci.json", "cases/policy-strict.json"};
        for (int pi = 0; pi < 2; pi++) {
            int grc = run_fd("gate", rj, "--policy", tu_path(TU_SOURCE, policies[pi]), "--no-baseline", NULL);
            cr_expect_eq(grc, crc, "%s: gate with %s exits %d, check %d: %s%s", id, policies[pi], grc, crc, g_out,
                         g_err);
        }
        char ep[340];
        snprintf(ep, sizeof ep, "%s/explain.json", eo);
        json_t *ej = json_load_file(ep, 0, &je);
        cr_assert_not_null(ej, "%s: %s", ep, je.text);
        json_t *x = json_array_get(json_object_get(ej, "explain"), 0);
        cr_expect_str_eq(json_string_value(json_object_get(x, "verdict")), v, "%s: explain judged otherwise", id);
        if (!strstr(id, "-correct-")) {
            const char *want = strchr(id, '-') + 1;
            const char *best = NULL;
            size_t k;
            json_t *h;
            json_array_foreach(json_object_get(x, "hypotheses"), k, h)
                if (json_is_true(json_object_get(h, "best"))) best = json_string_value(json_object_get(h, "name"));
            cr_expect(best && !strncmp(want, best, strlen(best)) && want[strlen(best)] == '-',
                      "%s: explain names %s: %s", id, best ? best : "no hypothesis",
                      json_string_value(json_object_get(x, "summary")));
        }
        json_decref(ej);
    }
    json_decref(rep);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s.*", g_dir, g_dir);
    cr_expect_eq(system(cmd), 0);
}
