/* test_features.c: FlashAttention-2's sliding window, ALiBi and softcap, forward.
 * The visible interval against FA2's mask.h formula; the MPFR reference against closed
 * forms and binary64 attention; the CPU replay against the reference on
 * cases/features.json (FlashAttention's rule); every window/ALiBi/softcap hypothesis,
 * injected, named first; case-file and bundle field errors. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_attn64.h"
#include "fd_case.h"
#include "fd_cpu_attn.h"
#include "fd_explain.h"
#include "fd_test_explain.h"
#include "fd_import.h"
#include "fd_mods.h"
#include "fd_ref.h"
#include "fd_test_problem.h"
#include "fd_test_util.h"

/* FA2's mask.h (Mask::apply_mask, local and causal): visible when
 * col >= max(0, row + sk - sq - wl) and col < min(sk, row + 1 + sk - sq + wr), after
 * flash_api.cpp's normalisation: mha_fwd turns a side >= seqlen_k into -1 and causal
 * into wr = 0; set_params_fprop then makes a -1 side seqlen_k when the other is >= 0. */
static int fa2_visible(int causal, int wl, int wr, int i, int j, int sq, int sk)
{
    if (wl >= sk) wl = -1;
    if (wr >= sk) wr = -1;
    if (causal) wr = 0;
    if (wl < 0 && wr < 0) return 1;
    if (wl < 0) wl = sk;
    if (wr < 0) wr = sk;
    const int lo = i + sk - sq - wl > 0 ? i + sk - sq - wl : 0;
    const int hi = i + 1 + sk - sq + wr < sk ? i + 1 + sk - sq + wr : sk;
    return j >= lo && j < hi;
}

/* The interval is FA2's mask everywhere but where FA2 departs from its own docstring
 * ([i + sk - sq - left, i + sk - sq + right], -1 = infinite): with seqlen_q > seqlen_k and
 * no causal flag, a right side of -1 or >= seqlen_k is replaced (by seqlen_k, or by -1
 * and then seqlen_k or unbounded), which is not the same window for the top rows.
 * flashdrift keeps the documented window (docs/features.md). */
Test(features, visible_range_is_fa2_mask)
{
    static const int wins[][2] = {{-1, -1}, {0, 0}, {3, 0}, {-1, 2}, {5, -1}, {2, 7}, {0, -1}, {40, 40}};
    long n = 0, empty = 0, quirk = 0;
    for (int sq = 1; sq <= 23; sq += 3)
        for (int sk = 1; sk <= 29; sk += 4)
            for (int causal = 0; causal < 2; causal++)
                for (size_t w = 0; w < sizeof wins / sizeof wins[0]; w++)
                    for (int i = 0; i < sq; i++) {
                        fd_problem p = tu_make_problem(1, 1, 1, sq, sk, 8, FD_DT_FP16,
                                                       causal ? FD_MASK_CAUSAL_BR : FD_MASK_NONE, 0.0);
                        p.window = 1;
                        p.window_left = wins[w][0];
                        p.window_right = wins[w][1];
                        int lo, hi, cnt = 0;
                        const int nv = fd_mask_visible_range(&p, i, &lo, &hi);
                        const int fa2_quirk = !causal && sq > sk && (wins[w][1] < 0 || wins[w][1] >= sk);
                        for (int j = 0; j < sk; j++) {
                            const int want = fa2_visible(causal, wins[w][0], wins[w][1], i, j, sq, sk);
                            const int got = j >= lo && j <= hi;
                            if (got != want) {
                                cr_assert(fa2_quirk, "sq %d sk %d causal %d window (%d, %d) row %d key %d",
                                          sq, sk, causal, wins[w][0], wins[w][1], i, j);
                                quirk++;
                            }
                            cnt += got;
                        }
                        cr_assert_eq(nv, cnt);
                        empty += nv == 0;
                        n++;
                    }
    cr_assert(empty > 100 && empty < n / 2, "the sweep has rows with no visible key (%ld of %ld)", empty, n);
    cr_assert(quirk > 0, "the sweep reaches FA2's one-sided-window case");
}

static void fill(float *x, size_t n, uint64_t seed, fd_dtype t)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) x[i] = fd_round_to_dtype((float)(2.0 * tu_urand(&s) - 1.0), t);
}

/* The reference equals binary64 attention (fd_attn64, the closed form of softmax with the
 * modifiers) to ~1e-12 on every row, empty rows included (O = 0, LSE = +Inf). */
Test(features, reference_is_the_closed_form)
{
    struct { int sq, sk, mask, win, wl, wr; float cap; int alibi; } cs[] = {
        {17, 40, FD_MASK_NONE, 1, 4, 2, 0.0f, 0},  {40, 17, FD_MASK_CAUSAL_BR, 1, 3, -1, 0.0f, 0},
        {24, 24, FD_MASK_NONE, 0, 0, 0, 0.0f, 1},  {9, 33, FD_MASK_CAUSAL_BR, 0, 0, 0, 0.0f, 1},
        {24, 24, FD_MASK_NONE, 0, 0, 0, 0.75f, 0}, {30, 12, FD_MASK_NONE, 1, -1, 0, 5.0f, 1},
        {12, 30, FD_MASK_CAUSAL_TL, 1, 6, 1, 2.5f, 1},
    };
    const int H = 3, D = 24;
    long empty = 0;
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        fd_problem p = tu_make_problem(1, H, H, cs[c].sq, cs[c].sk, D, FD_DT_BF16, (fd_mask_kind)cs[c].mask, 0.0);
        p.window = cs[c].win;
        p.window_left = cs[c].wl;
        p.window_right = cs[c].wr;
        p.softcap = cs[c].cap;
        p.alibi = cs[c].alibi;
        fd_alibi_default_slopes(H, p.alibi_slopes);
        float *q = malloc(sizeof(float) * fd_q_numel(&p)), *k = malloc(sizeof(float) * fd_kv_numel(&p)),
              *v = malloc(sizeof(float) * fd_kv_numel(&p));
        fill(q, fd_q_numel(&p), 11 + c, p.dtype);
        fill(k, fd_kv_numel(&p), 23 + c, p.dtype);
        fill(v, fd_kv_numel(&p), 37 + c, p.dtype);
        for (size_t x = 0; x < fd_q_numel(&p); x++) q[x] = fd_round_to_dtype(q[x] * 6.0f, p.dtype); /* logits of a few units */
        double *qd = fd_to_f64(q, fd_q_numel(&p)), *kd = fd_to_f64(k, fd_kv_numel(&p)), *vd = fd_to_f64(v, fd_kv_numel(&p));
        double *o64 = calloc(fd_q_numel(&p), sizeof(double));
        fd_attn_variant va;
        fd_attn_variant_default(&p, &va);
        char err[512];
        cr_assert_eq(fd_attn64(&p, &va, qd, kd, vd, NULL, p.seqlen_q, o64, err, sizeof err), 0, "%s", err);
        double o[64];
        for (int h = 0; h < H; h++)
            for (int i = 0; i < p.seqlen_q; i++) {
                fd_ref_row_info info;
                cr_assert_eq(fd_ref_row(&p, q, k, v, 0, h, i, NULL, o, &info, err, sizeof err), 0, "%s", err);
                cr_assert_eq(info.undecided, 0, "case %zu row %d decided", c, i);
                cr_assert_eq(info.nvisible, fd_problem_visible_count(&p, i));
                if (info.nvisible == 0) {
                    empty++;
                    cr_assert(isinf(info.lse) && info.lse > 0, "empty row: LSE +Inf");
                }
                for (int d = 0; d < D; d++) {
                    const double want = o64[fd_q_index(&p, 0, i, h, d)];
                    cr_assert(fabs(o[d] - want) <= 1e-12 * (1.0 + fabs(want)),
                              "case %zu h %d row %d d %d: reference %a, binary64 %a", c, h, i, d, o[d], want);
                }
            }
        free(q); free(k); free(v); free(qd); free(kd); free(vd); free(o64);
    }
    cr_assert(empty > 0, "some rows have no visible key");
}

/* Closed forms: q = 0 makes every q.k zero, so with ALiBi the weights are
 * exp(-slope |i + sk - sq - j|) exactly and with softcap they are uniform; the LSE is the
 * log of their sum. */
Test(features, reference_alibi_and_softcap_closed_form)
{
    enum { H = 2, D = 8, sq = 5, sk = 11 };
    fd_problem p = tu_make_problem(1, H, H, sq, sk, D, FD_DT_FP32, FD_MASK_NONE, 0.0);
    p.alibi = 1;
    p.alibi_slopes[0] = 0.5f;
    p.alibi_slopes[1] = 0.125f;
    p.softcap = 3.0f;
    float q[sq * H * D], k[sk * H * D], v[sk * H * D];
    memset(q, 0, sizeof q);
    fill(k, (size_t)sk * H * D, 5, FD_DT_FP32);
    fill(v, (size_t)sk * H * D, 7, FD_DT_FP32);
    for (int h = 0; h < H; h++)
        for (int i = 0; i < sq; i++) {
            double o[D], num[D], den = 0.0;
            for (int d = 0; d < D; d++) num[d] = 0.0;
            for (int j = 0; j < sk; j++) {
                const double w = exp(-(double)p.alibi_slopes[h] * fabs((double)(i + sk - sq - j)));
                den += w;
                for (int d = 0; d < D; d++) num[d] += w * (double)v[fd_kv_index(&p, 0, j, h, d)];
            }
            fd_ref_row_info info;
            char err[256];
            cr_assert_eq(fd_ref_row(&p, q, k, v, 0, h, i, NULL, o, &info, err, sizeof err), 0, "%s", err);
            cr_assert(fabs(info.lse - log(den)) < 1e-14, "h %d row %d: LSE %a, closed form %a", h, i, info.lse, log(den));
            for (int d = 0; d < D; d++)
                cr_assert(fabs(o[d] - num[d] / den) < 1e-14, "h %d row %d d %d: %a vs %a", h, i, d, o[d], num[d] / den);
        }
}

/* The portable tanh: within 3 ulp of tanh on a grid of [0, 12], odd, and 1 beyond 9.5. */
Test(features, portable_tanh_accuracy)
{
    double worst = 0.0;
    for (float x = 0x1p-20f; x < 12.0f; x = x * 1.0001f + 1e-7f) {
        const double t = tanh((double)x);
        const float r = fd_tanh_portable(x);
        const float tr = (float)t;
        const double ulp = tr >= 1.0f ? 0x1p-24 : (double)(nextafterf(tr, 2.0f) - tr);
        const double e = fabs((double)r - t) / ulp;
        if (e > worst) worst = e;
        cr_assert(fd_eqf(fd_tanh_portable(-x), -r), "odd at %a", (double)x);
    }
    cr_assert(worst < 3.0, "max error %.3f ulp", worst);
    cr_assert(fd_eqf(fd_tanh_portable(20.0f), 1.0f) && fd_eqf(fd_tanh_portable(0.0f), 0.0f));
}

/* The replay against the reference with FlashAttention's rule, every case of the sweep
 * (and the eager baseline), through the command. */
Test(features, features_sweep_passes_on_the_cpu, .timeout = 120)
{
    char dir[512], out[700];
    tu_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/run", dir);
    char *a[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/features.json"), "--backend", "cpu-flash,cpu-standard",
                 "--out", out, "--jobs", "2", NULL};
    cr_assert_eq(tu_run(a), 0, "features.json on the CPU: %s\n%s", g_err, g_out);
    cr_assert(strstr(g_out, " 0 FAIL") != NULL, "%s", g_out);
}

static fd_casefile g_cf;

static void load(void)
{
    char err[1024];
    cr_assert(fd_casefile_load(tu_path(TU_SOURCE, "cases/features.json"), &g_cf, err, sizeof err) == 0, "%s", err);
}

Test(features, each_injected_feature_bug_is_named, .init = load, .timeout = 300)
{
    int nbugs = 0;
    for (const char *const *bug = fd_explain_bugs; *bug; bug++) {
        if (!fd_explain_bug_is_mod(*bug)) continue;
        if (!strncmp(*bug, "varlen_", 7) || !strncmp(*bug, "cu_seqlens_", 11)) continue; /* tests/test_varlen.c */
        if (!strncmp(*bug, "paged_", 6) || !strncmp(*bug, "splitkv_", 8)) continue; /* tests/test_paged.c */
        nbugs++;
        /* the first case of the sweep where the bug applies, fp16, the window's right edge
         * its own where that matters */
        const fd_case *c = NULL;
        for (int i = 0; i < g_cf.ncases && !c; i++)
            if (g_cf.cases[i].prob.dtype == FD_DT_FP16 && g_cf.cases[i].prob.dropout_p <= 0.0 &&
                !fd_explain_inject_noop(&g_cf.cases[i].prob, *bug))
                c = &g_cf.cases[i];
        cr_assert(c, "a case of features.json for %s", *bug);
        tu_expect_bug_named(&g_cf, c, "cpu-flash", *bug);
    }
    cr_assert_eq(nbugs, 12, "the window/ALiBi/softcap bugs");
}

/* No bug: a feature case is rounding, and no feature hypothesis explains it. */
Test(features, clean_feature_case_is_rounding, .init = load)
{
    for (int i = 0; i < g_cf.ncases; i++) {
        const fd_case *c = &g_cf.cases[i];
        if (!(c->prob.window && c->prob.alibi && c->prob.softcap > 0.0f)) continue;
        fd_explain_opts o = {"cpu-flash", NULL, 2};
        fd_explanation ex;
        char err[1024];
        cr_assert_eq(fd_explain_case(&g_cf, c, &o, &ex, err, sizeof err), 0, "%s", err);
        cr_assert(!ex.gross, "%s: %s", c->id, ex.summary);
        cr_assert(ex.replay_matches_kernel);
        fd_explanation_free(&ex);
        return;
    }
    cr_assert_fail("no case with all three features");
}

static void expect_case_error(const char *sweep, const char *msg)
{
    char dir[512], path[700], text[2048], err[1024] = "";
    tu_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/c.json", dir);
    snprintf(text, sizeof text, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"sweeps\": [%s]}", sweep);
    tu_write(path, text);
    fd_casefile cf;
    cr_assert_eq(fd_casefile_load(path, &cf, err, sizeof err), -1, "%s loaded (expected: %s)", sweep, msg);
    cr_assert(strstr(err, msg) != NULL, "message \"%s\" lacks \"%s\"", err, msg);
}

Test(features, case_file_fields)
{
    expect_case_error("{\"seqlen\": 16, \"head_dim\": 8, \"window\": [-2, 0]}", "left size: -1 (unbounded) or an integer >= 0");
    expect_case_error("{\"seqlen\": 16, \"head_dim\": 8, \"window\": [[4, 0], [1]]}", "expected a window [left, right]");
    expect_case_error("{\"seqlen\": 16, \"head_dim\": 8, \"window\": [3, 1.5]}", "right size");
    expect_case_error("{\"seqlen\": 16, \"head_dim\": 8, \"softcap\": -1}", "softcap must be a finite number >= 0");
    expect_case_error("{\"seqlen\": 16, \"head_dim\": 8, \"heads\": 4, \"alibi\": [0.5, 0.25]}", "2 slopes given for 4 heads");
    expect_case_error("{\"seqlen\": 16, \"head_dim\": 8, \"alibi\": \"yes\"}", "expected true or false");

    char dir[512], path[700], err[1024];
    tu_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ok.json", dir);
    tu_write(path, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, "
                   "\"heads\": 2, \"window\": [null, [4, 0]], \"softcap\": [0, 20], \"alibi\": [0.5, 0.25]}]}");
    fd_casefile cf;
    cr_assert_eq(fd_casefile_load(path, &cf, err, sizeof err), 0, "%s", err);
    cr_assert_eq(cf.ncases, 4, "window x softcap");
    int nw = 0;
    for (int i = 0; i < cf.ncases; i++) {
        const fd_problem *p = &cf.cases[i].prob;
        cr_assert(p->alibi && fd_eqf(p->alibi_slopes[1], 0.25f));
        nw += p->window && p->window_left == 4 && p->window_right == 0;
        cr_assert(strstr(cf.cases[i].id, "-alibi") != NULL, "%s", cf.cases[i].id);
    }
    cr_assert_eq(nw, 2);
    fd_casefile_free(&cf);
    /* "alibi": true is the standard slopes 2^(-8 (h+1) / H) */
    tu_write(path, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, "
                   "\"heads\": 8, \"alibi\": true}]}");
    cr_assert_eq(fd_casefile_load(path, &cf, err, sizeof err), 0, "%s", err);
    for (int h = 0; h < 8; h++) cr_assert(fd_eqf(cf.cases[0].prob.alibi_slopes[h], ldexpf(1.0f, -(h + 1))));
    fd_casefile_free(&cf);
}

static void bundle_dir(const char *dir, const char *meta)
{
    /* q, k, v (1, 3, 2, 2) / (1, 4, 2, 2) bshd fp32, one output */
    const int64_t qs[4] = {1, 3, 2, 2}, ks[4] = {1, 4, 2, 2};
    char p[800];
    tu_npy_fill(dir, "q", FD_AT_F32, 4, qs, 0.5f);
    tu_npy_fill(dir, "k", FD_AT_F32, 4, ks, 0.25f);
    tu_npy_fill(dir, "v", FD_AT_F32, 4, ks, 1.0f);
    tu_npy_fill(dir, "out_flash", FD_AT_F32, 4, qs, 1.0f);
    snprintf(p, sizeof p, "%s/meta.json", dir);
    tu_write(p, meta);
}

static void expect_bundle_error(const char *meta, int slopes_tensor, int64_t nslopes, const char *msg)
{
    char dir[512], err[1024] = "";
    tu_dir(dir, sizeof dir);
    bundle_dir(dir, meta);
    if (slopes_tensor) tu_npy_fill(dir, "alibi_slopes", FD_AT_F32, 1, &nslopes, 0.5f);
    fd_bundle b;
    cr_assert_eq(fd_bundle_load(dir, &b, err, sizeof err), -1, "%s loaded (expected: %s)", meta, msg);
    cr_assert(strstr(err, msg) != NULL, "message \"%s\" lacks \"%s\"", err, msg);
}

Test(features, bundle_fields)
{
    const char *base = "{\"layout\": \"bshd\", \"mask\": \"none\", \"roles\": {\"flash\": \"flash\"}";
    char meta[512];
    snprintf(meta, sizeof meta, "%s, \"window\": [2, -3]}", base);
    expect_bundle_error(meta, 0, 0, "right size -3");
    snprintf(meta, sizeof meta, "%s, \"window\": 2}", base);
    expect_bundle_error(meta, 0, 0, "expected [left, right]");
    snprintf(meta, sizeof meta, "%s, \"softcap\": -5}", base);
    expect_bundle_error(meta, 0, 0, "softcap: expected a finite number >= 0");
    snprintf(meta, sizeof meta, "%s, \"alibi_slopes\": [0.5]}", base);
    expect_bundle_error(meta, 0, 0, "expected a list of 2 numbers");
    snprintf(meta, sizeof meta, "%s}", base);
    expect_bundle_error(meta, 1, 3, "expected (2,) float32");
    snprintf(meta, sizeof meta, "%s, \"alibi_slopes\": [0.5, 0.25]}", base);
    expect_bundle_error(meta, 1, 2, "given both as a tensor and in the meta");

    char dir[512], err[1024];
    tu_dir(dir, sizeof dir);
    snprintf(meta, sizeof meta, "%s, \"window\": [1, 0], \"softcap\": 20}", base);
    bundle_dir(dir, meta);
    const int64_t two = 2;
    tu_npy_fill(dir, "alibi_slopes", FD_AT_F32, 1, &two, 0.5f);
    fd_bundle b;
    cr_assert_eq(fd_bundle_load(dir, &b, err, sizeof err), 0, "%s", err);
    cr_assert(b.prob.window && b.prob.window_left == 1 && b.prob.window_right == 0);
    cr_assert(fd_eqf(b.prob.softcap, 20.0f) && b.prob.alibi && fd_eqf(b.prob.alibi_slopes[1], 0.5f));
    /* written back, the fields survive */
    char dir2[700];
    snprintf(dir2, sizeof dir2, "%s/copy", dir);
    cr_assert_eq(fd_bundle_write(&b, dir2, 0, 0, err, sizeof err), 0, "%s", err);
    fd_bundle c;
    cr_assert_eq(fd_bundle_load(dir2, &c, err, sizeof err), 0, "%s", err);
    cr_assert(c.prob.window && c.prob.window_left == 1 && fd_eqf(c.prob.softcap, 20.0f) && c.prob.alibi &&
              fd_eqf(c.prob.alibi_slopes[0], 0.5f));
    fd_bundle_free(&b);
    fd_bundle_free(&c);
}
