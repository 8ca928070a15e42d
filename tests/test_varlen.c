/* test_varlen.c: variable-length batches (FlashAttention's flash_attn_varlen_func), forward.
 * The per-sequence visible interval against each sequence alone; the MPFR reference on a
 * packed batch against the reference on each sequence alone (bit for bit: both are
 * correctly rounded) and binary64 attention; the CPU replay (cpu-flash, cpu-splitkv) on a
 * packed batch against the replay on each sequence alone, bit for bit (the tiles restart at
 * each sequence's start, as FA2's varlen kernel's do); cases/varlen.json on the CPU; every
 * varlen hypothesis injected and named first; cu_seqlens and case-file errors, exit 2. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_attn64.h"
#include "fd_case.h"
#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_explain.h"
#include "fd_test_explain.h"
#include "fd_import.h"
#include "fd_inputs.h"
#include "fd_npy.h"
#include "fd_mods.h"
#include "fd_ref.h"
#include "fd_test_problem.h"
#include "fd_test_util.h"

static void fill(float *x, size_t n, uint64_t seed, fd_dtype t, float amp)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) x[i] = fd_round_to_dtype((float)((double)amp * (2.0 * tu_urand(&s) - 1.0)), t);
}

/* A packed problem of n sequences with the given lengths (batch 1, the totals). */
static fd_problem packed(int n, const int *lq, const int *lk, int H, int Hk, int D, fd_dtype t, fd_mask_kind m)
{
    int sq = 0, sk = 0;
    for (int s = 0; s < n; s++) { sq += lq[s]; sk += lk[s]; }
    fd_problem p = tu_make_problem(1, H, Hk, sq, sk, D, t, m, 0.0);
    p.varlen = n;
    for (int s = 0; s < n; s++) {
        p.cu_seqlens_q[s + 1] = p.cu_seqlens_q[s] + lq[s];
        p.cu_seqlens_k[s + 1] = p.cu_seqlens_k[s] + lk[s];
    }
    return p;
}

/* Sequence s of packed problem p alone: a plain problem and its Q, K, V copied out. */
static fd_problem alone(const fd_problem *p, int s, const float *q, const float *k, const float *v, float **qs,
                        float **ks, float **vs)
{
    fd_problem a = *p;
    a.varlen = 0;
    memset(a.cu_seqlens_q, 0, sizeof a.cu_seqlens_q);
    memset(a.cu_seqlens_k, 0, sizeof a.cu_seqlens_k);
    a.seqlen_q = p->cu_seqlens_q[s + 1] - p->cu_seqlens_q[s];
    a.seqlen_k = p->cu_seqlens_k[s + 1] - p->cu_seqlens_k[s];
    const size_t rq = (size_t)p->heads * (size_t)p->head_dim, rk = (size_t)p->kv_heads * (size_t)p->head_dim;
    *qs = malloc(sizeof(float) * (rq * (size_t)a.seqlen_q + 1));
    *ks = malloc(sizeof(float) * (rk * (size_t)a.seqlen_k + 1));
    *vs = malloc(sizeof(float) * (rk * (size_t)a.seqlen_k + 1));
    cr_assert(*qs && *ks && *vs);
    memcpy(*qs, q + rq * (size_t)p->cu_seqlens_q[s], sizeof(float) * rq * (size_t)a.seqlen_q);
    memcpy(*ks, k + rk * (size_t)p->cu_seqlens_k[s], sizeof(float) * rk * (size_t)a.seqlen_k);
    memcpy(*vs, v + rk * (size_t)p->cu_seqlens_k[s], sizeof(float) * rk * (size_t)a.seqlen_k);
    return a;
}

/* The shapes: tiles crossed and not, an empty sequence, one-token ones, seqlen_q > seqlen_k
 * (rows without a visible key under causal) and the reverse, windows and ALiBi. */
typedef struct { int n, lq[6], lk[6], mask, win, wl, wr, alibi; float cap; } shape;
static const shape g_shapes[] = {
    {4, {37, 70, 1, 20}, {37, 70, 1, 20}, FD_MASK_CAUSAL_BR, 0, 0, 0, 0, 0.0f},
    {3, {20, 0, 45}, {60, 5, 12}, FD_MASK_CAUSAL_BR, 0, 0, 0, 1, 0.0f},
    {3, {30, 9, 70}, {12, 40, 70}, FD_MASK_NONE, 1, 8, 3, 0, 5.0f},
    {3, {16, 65, 2}, {80, 65, 3}, FD_MASK_CAUSAL_TL, 1, 20, -1, 1, 0.0f},
};
#define NSHAPES ((int)(sizeof g_shapes / sizeof g_shapes[0]))

static fd_problem shape_problem(const shape *sh, int H, int D, fd_dtype t)
{
    fd_problem p = packed(sh->n, sh->lq, sh->lk, H, H, D, t, (fd_mask_kind)sh->mask);
    p.window = sh->win;
    p.window_left = sh->wl;
    p.window_right = sh->wr;
    p.alibi = sh->alibi;
    p.softcap = sh->cap;
    fd_alibi_default_slopes(H, p.alibi_slopes);
    return p;
}

Test(varlen, visible_range_is_each_sequence_alone)
{
    long outside = 0, empty = 0;
    for (int c = 0; c < NSHAPES; c++) {
        const fd_problem p = shape_problem(&g_shapes[c], 2, 8, FD_DT_FP16);
        char err[256];
        cr_assert_eq(fd_problem_check_mods(&p, err, sizeof err), 0, "%s", err);
        for (int s = 0; s < p.varlen; s++) {
            const int q0 = p.cu_seqlens_q[s], k0 = p.cu_seqlens_k[s];
            const int sq = p.cu_seqlens_q[s + 1] - q0, sk = p.cu_seqlens_k[s + 1] - k0;
            for (int i = 0; i < sq; i++) {
                int lo, hi, alo, ahi;
                const int n = fd_mask_visible_range(&p, q0 + i, &lo, &hi);
                const int an = fd_vis_range((int)p.mask, p.window, p.window_left, p.window_right, i, sq, sk, &alo, &ahi);
                cr_assert_eq(n, an, "shape %d seq %d row %d: %d visible, alone %d", c, s, i, n, an);
                empty += n == 0;
                if (n) cr_assert(lo == k0 + alo && hi == k0 + ahi, "shape %d seq %d row %d: [%d, %d], alone [%d, %d] + %d",
                                 c, s, i, lo, hi, alo, ahi, k0);
                for (int j = 0; j < p.seqlen_k; j++)
                    if (j < k0 || j >= k0 + sk) {
                        outside++;
                        cr_assert(!fd_problem_visible(&p, q0 + i, j), "shape %d: row %d sees key %d of another sequence", c,
                                  q0 + i, j);
                    }
                for (int j = 0; j < sk; j++)
                    cr_assert_eq(fd_problem_alibi_dist(&p, q0 + i, k0 + j), fd_alibi_dist(i, j, sq, sk));
            }
        }
    }
    cr_assert(outside > 1000 && empty > 0, "the shapes exercise other sequences' keys (%ld) and empty rows (%ld)", outside,
              empty);
}

Test(varlen, cu_seqlens_checks)
{
    char err[256];
    const int ok[4] = {0, 3, 3, 9}, late[4] = {1, 3, 4, 9}, down[4] = {0, 5, 3, 9}, shortv[4] = {0, 3, 4, 8};
    cr_assert_eq(fd_cu_seqlens_check(ok, 3, 9, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fd_cu_seqlens_check(late, 3, 9, err, sizeof err), -1);
    cr_assert(strstr(err, "must start at 0, got 1"), "%s", err);
    cr_assert_eq(fd_cu_seqlens_check(down, 3, 9, err, sizeof err), -1);
    cr_assert(strstr(err, "must not decrease: entry 1 is 5, entry 2 is 3"), "%s", err);
    cr_assert_eq(fd_cu_seqlens_check(shortv, 3, 9, err, sizeof err), -1);
    cr_assert(strstr(err, "must end at the packed length 9, got 8"), "%s", err);
    const int lq[2] = {3, 4}, lk[2] = {5, 6};
    fd_problem p = packed(2, lq, lk, 1, 1, 8, FD_DT_FP16, FD_MASK_NONE);
    cr_assert_eq(fd_problem_check_mods(&p, err, sizeof err), 0, "%s", err);
    p.cu_seqlens_k[2] = 10;
    cr_assert_eq(fd_problem_check_mods(&p, err, sizeof err), -1);
    cr_assert(strstr(err, "cu_seqlens_k must end at the packed length 11, got 10"), "%s", err);
    p.cu_seqlens_k[2] = 11;
    p.dropout_p = 0.1;
    cr_assert_eq(fd_problem_check_mods(&p, err, sizeof err), -1);
    cr_assert(strstr(err, "dropout"), "%s", err);
}

/* The reference on a packed batch is the reference on each sequence alone (both correctly
 * rounded: equal bits), and binary64 attention agrees. */
Test(varlen, reference_is_each_sequence_alone, .timeout = 120)
{
    const int H = 2, D = 16;
    long rows = 0;
    for (int c = 0; c < NSHAPES; c++) {
        const fd_problem p = shape_problem(&g_shapes[c], H, D, FD_DT_BF16);
        float *q = malloc(sizeof(float) * fd_q_numel(&p)), *k = malloc(sizeof(float) * fd_kv_numel(&p)),
              *v = malloc(sizeof(float) * fd_kv_numel(&p));
        fill(q, fd_q_numel(&p), 3 + (uint64_t)c, p.dtype, 3.0f);
        fill(k, fd_kv_numel(&p), 5 + (uint64_t)c, p.dtype, 1.0f);
        fill(v, fd_kv_numel(&p), 7 + (uint64_t)c, p.dtype, 1.0f);
        double *qd = fd_to_f64(q, fd_q_numel(&p)), *kd = fd_to_f64(k, fd_kv_numel(&p)), *vd = fd_to_f64(v, fd_kv_numel(&p));
        double *o64 = calloc(fd_q_numel(&p), sizeof(double));
        fd_attn_variant va;
        fd_attn_variant_default(&p, &va);
        char err[512];
        cr_assert_eq(fd_attn64(&p, &va, qd, kd, vd, NULL, p.seqlen_q, o64, err, sizeof err), 0, "%s", err);
        for (int s = 0; s < p.varlen; s++) {
            float *qs, *ks, *vs;
            const fd_problem a = alone(&p, s, q, k, v, &qs, &ks, &vs);
            for (int h = 0; h < H && a.seqlen_q > 0 && a.seqlen_k > 0; h++)
                for (int i = 0; i < a.seqlen_q; i++) {
                    double o[D], oa[D];
                    fd_ref_row_info in, ia;
                    const int pi = p.cu_seqlens_q[s] + i;
                    cr_assert_eq(fd_ref_row(&p, q, k, v, 0, h, pi, NULL, o, &in, err, sizeof err), 0, "%s", err);
                    cr_assert_eq(fd_ref_row(&a, qs, ks, vs, 0, h, i, NULL, oa, &ia, err, sizeof err), 0, "%s", err);
                    cr_assert(in.undecided == 0 && ia.undecided == 0);
                    cr_assert_eq(in.nvisible, ia.nvisible, "shape %d seq %d row %d", c, s, i);
                    cr_assert(fd_eq(in.lse, ia.lse), "shape %d seq %d row %d: LSE %a, alone %a", c, s, i, in.lse, ia.lse);
                    for (int d = 0; d < D; d++) {
                        cr_assert(fd_eq(o[d], oa[d]), "shape %d seq %d h %d row %d d %d: packed %a, alone %a", c, s, h, i, d,
                                  o[d], oa[d]);
                        const double w = o64[fd_q_index(&p, 0, pi, h, d)];
                        cr_assert(fabs(o[d] - w) <= 1e-12 * (1.0 + fabs(w)), "binary64 %a vs reference %a", w, o[d]);
                    }
                    rows++;
                }
            free(qs); free(ks); free(vs);
        }
        free(q); free(k); free(v); free(qd); free(kd); free(vd); free(o64);
    }
    cr_assert(rows > 300, "%ld rows compared", rows);
}

/* The replay of a packed batch is the replay of each sequence alone, bit for bit: its key
 * tiles start at each sequence's first key (FA2's varlen kernel), so nothing of the
 * neighbours' positions shows. Both the tensor-core orders and the sequential ones, and the
 * split-KV form. */
Test(varlen, replay_is_each_sequence_alone, .timeout = 120)
{
    const int H = 2, D = 64;
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cfg.qk_order = cfg.pv_order = FD_ACC_TC16;
    cfg.exp2_mode = FD_EXP2_PORTABLE;
    cfg.bc = 16; /* several key tiles per sequence */
    long elems = 0;
    for (int c = 0; c < NSHAPES; c++)
        for (int split = 0; split < 2; split++) {
            const fd_problem p = shape_problem(&g_shapes[c], H, D, c % 2 ? FD_DT_BF16 : FD_DT_FP16);
            float *q = malloc(sizeof(float) * fd_q_numel(&p)), *k = malloc(sizeof(float) * fd_kv_numel(&p)),
                  *v = malloc(sizeof(float) * fd_kv_numel(&p)), *o = malloc(sizeof(float) * fd_q_numel(&p)),
                  *l = malloc(sizeof(float) * fd_lse_numel(&p));
            fill(q, fd_q_numel(&p), 13 + (uint64_t)c, p.dtype, 2.0f);
            fill(k, fd_kv_numel(&p), 17 + (uint64_t)c, p.dtype, 1.0f);
            fill(v, fd_kv_numel(&p), 19 + (uint64_t)c, p.dtype, 1.0f);
            char err[512];
            const int rc = split ? fd_cpu_splitkv_forward(&p, &cfg, 3, q, k, v, NULL, 0, o, l, err, sizeof err)
                                 : fd_cpu_flash_forward(&p, &cfg, q, k, v, NULL, 0, o, l, err, sizeof err);
            cr_assert_eq(rc, 0, "%s", err);
            for (int s = 0; s < p.varlen; s++) {
                float *qs, *ks, *vs;
                const fd_problem a = alone(&p, s, q, k, v, &qs, &ks, &vs);
                if (a.seqlen_q == 0 || a.seqlen_k == 0) { /* nothing alone to compare; rows: O = 0, LSE = +Inf */
                    for (int i = 0; i < a.seqlen_q; i++)
                        for (int h = 0; h < H; h++)
                            cr_assert(isinf(l[fd_lse_index(&p, 0, h, p.cu_seqlens_q[s] + i)]));
                    free(qs); free(ks); free(vs);
                    continue;
                }
                float *oa = malloc(sizeof(float) * fd_q_numel(&a)), *la = malloc(sizeof(float) * fd_lse_numel(&a));
                const int ra = split ? fd_cpu_splitkv_forward(&a, &cfg, 3, qs, ks, vs, NULL, 0, oa, la, err, sizeof err)
                                     : fd_cpu_flash_forward(&a, &cfg, qs, ks, vs, NULL, 0, oa, la, err, sizeof err);
                cr_assert_eq(ra, 0, "%s", err);
                for (int h = 0; h < H; h++)
                    for (int i = 0; i < a.seqlen_q; i++) {
                        const int pi = p.cu_seqlens_q[s] + i;
                        const float lp = l[fd_lse_index(&p, 0, h, pi)], lz = la[fd_lse_index(&a, 0, h, i)];
                        cr_assert(fd_f32_bits(lp) == fd_f32_bits(lz), "shape %d split %d seq %d row %d: LSE %a vs alone %a", c,
                                  split, s, i, (double)lp, (double)lz);
                        for (int d = 0; d < D; d++, elems++) {
                            const float x = o[fd_q_index(&p, 0, pi, h, d)], y = oa[fd_q_index(&a, 0, i, h, d)];
                            cr_assert(fd_f32_bits(x) == fd_f32_bits(y), "shape %d split %d seq %d h %d row %d d %d: %a vs alone %a",
                                      c, split, s, h, i, d, (double)x, (double)y);
                        }
                    }
                free(oa); free(la); free(qs); free(ks); free(vs);
            }
            free(q); free(k); free(v); free(o); free(l);
        }
    cr_assert(elems > 50000, "%ld elements compared", elems);
}

Test(varlen, varlen_sweep_passes_on_the_cpu, .timeout = 120)
{
    char dir[512], out[700];
    tu_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/run", dir);
    char *a[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/varlen.json"), "--backend", "cpu-flash,cpu-standard,cpu-splitkv",
                 "--out", out, "--jobs", "2", NULL};
    cr_assert_eq(tu_run(a), 0, "varlen.json on the CPU: %s\n%s", g_err, g_out);
    cr_assert(strstr(g_out, "28 cases: 28 PASS"), "%s", g_out);
}

static fd_casefile g_cf;

static void load(void)
{
    char err[1024];
    cr_assert(fd_casefile_load(tu_path(TU_SOURCE, "cases/varlen.json"), &g_cf, err, sizeof err) == 0, "%s", err);
}

static void unload(void) { fd_casefile_free(&g_cf); }

static int is_varlen_bug(const char *b) { return !strncmp(b, "varlen_", 7) || !strncmp(b, "cu_seqlens_", 11); }

Test(varlen, each_injected_varlen_bug_is_named, .init = load, .fini = unload, .timeout = 300)
{
    int nbugs = 0;
    for (const char *const *bug = fd_explain_bugs; *bug; bug++) {
        if (!is_varlen_bug(*bug)) continue;
        nbugs++;
        cr_assert(fd_explain_bug_is_mod(*bug), "%s is a forward (score) hypothesis", *bug);
        const fd_case *c = NULL;
        for (int i = 0; i < g_cf.ncases && !c; i++)
            if (g_cf.cases[i].prob.dtype == FD_DT_FP16 && !fd_explain_inject_noop(&g_cf.cases[i].prob, *bug))
                c = &g_cf.cases[i];
        cr_assert(c, "a case of varlen.json for %s", *bug);
        tu_expect_bug_named(&g_cf, c, "cpu-flash", *bug);
    }
    cr_assert_eq(nbugs, 4, "the varlen bugs");
}

/* No bug: a varlen case is rounding and no hypothesis explains it; the pad hypothesis is
 * refused where the causal mask hides the pads (self-attention, equal lengths per sequence). */
Test(varlen, clean_varlen_case_is_rounding, .init = load, .fini = unload, .timeout = 120)
{
    const fd_case *c = &g_cf.cases[0];
    cr_assert(c->prob.varlen == 6);
    fd_explain_opts o = {"cpu-flash", NULL, 2};
    fd_explanation ex;
    char err[1024];
    cr_assert_eq(fd_explain_case(&g_cf, c, &o, &ex, err, sizeof err), 0, "%s", err);
    cr_assert(!ex.gross, "%s: %s", c->id, ex.summary);
    cr_assert(ex.replay_matches_kernel);
    fd_explanation_free(&ex);
    const fd_case *cz = &g_cf.cases[1];
    cr_assert(cz->prob.mask == FD_MASK_CAUSAL_BR && cz->prob.varlen == 6);
    const char *why = fd_explain_inject_noop(&cz->prob, "varlen_pad_attended");
    cr_assert(why && strstr(why, "causal mask hides the pads"), "%s", why ? why : "(offered)");
    cr_assert(fd_explain_inject_noop(&c->prob, "varlen_pad_attended") == NULL, "non-causal: the pads are attended");
    fd_case plain = tu_mk_case(1, 1, 1, 16, 16, 8, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 1);
    cr_assert(fd_explain_inject_noop(&plain.prob, "varlen_leak") != NULL, "not offered without varlen");
}

Test(varlen, case_file_fields)
{
    tu_expect_case_error("{\"seqlens_q\": [3, 4], \"seqlen\": 7, \"head_dim\": 8}", "no \"seqlen\" or \"batch\" with it");
    tu_expect_case_error("{\"seqlens_q\": [3, 4], \"seqlens_k\": [3], \"head_dim\": 8}", "sweeps[0].seqlens_k: 1 key lengths for 2");
    tu_expect_case_error("{\"seqlens_q\": [3, -4], \"head_dim\": 8}", "sweeps[0].seqlens_q[1]");
    tu_expect_case_error("{\"seqlens_q\": [0, 0], \"head_dim\": 8}", "at least one token");
    tu_expect_case_error("{\"seqlens_k\": [3], \"head_dim\": 8}", "\"seqlens_k\" needs \"seqlens_q\"");
    tu_expect_case_error("{\"seqlens_q\": [3, 4], \"head_dim\": 8, \"dropout\": 0.1}", "with dropout is not supported");
    tu_expect_case_error("{\"seqlens_q\": [3, 4], \"head_dim\": 8, \"backward\": true}", "backward with varlen (seqlens_q) is not supported yet");

    char dir[512], path[700], err[1024];
    tu_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ok.json", dir);
    tu_write(path, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"sweeps\": [{\"seqlens_q\": [3, 0, 5], "
                   "\"seqlens_k\": [4, 2, 1], \"head_dim\": 8, \"mask\": [\"none\", \"causal_br\"]}]}");
    fd_casefile cf;
    cr_assert_eq(fd_casefile_load(path, &cf, err, sizeof err), 0, "%s", err);
    cr_assert_eq(cf.ncases, 2);
    const fd_problem *p = &cf.cases[0].prob;
    cr_assert(p->varlen == 3 && p->batch == 1 && p->seqlen_q == 8 && p->seqlen_k == 7);
    cr_assert(p->cu_seqlens_q[1] == 3 && p->cu_seqlens_q[2] == 3 && p->cu_seqlens_q[3] == 8);
    cr_assert(p->cu_seqlens_k[1] == 4 && p->cu_seqlens_k[2] == 6 && p->cu_seqlens_k[3] == 7);
    cr_assert(strstr(cf.cases[0].id, "-vl3_") != NULL, "%s", cf.cases[0].id);
    cr_assert(strcmp(cf.cases[0].id, cf.cases[1].id) != 0);
    fd_casefile_free(&cf);
}

/* Bundles (docs/import.md): packed q, k, v given with batch 1, cu_seqlens_q as an int32
 * tensor and cu_seqlens_k as a meta list. */
static void npy_f32(const char *dir, const char *name, const int64_t *shape, const float *x)
{
    fd_array a;
    char err[512], p[1024];
    cr_assert_eq(fd_array_alloc(&a, FD_AT_F32, 4, shape, err, sizeof err), 0, "%s", err);
    memcpy(a.data, x, a.numel * 4);
    snprintf(p, sizeof p, "%s/%s.npy", dir, name);
    cr_assert_eq(fd_npy_write_file(p, &a, err, sizeof err), 0, "%s", err);
    fd_array_free(&a);
}

static void npy_i32(const char *dir, const char *name, int n, const int *x)
{
    fd_array a;
    char err[512], p[1024];
    const int64_t shape[1] = {n};
    cr_assert_eq(fd_array_alloc(&a, FD_AT_I32, 1, shape, err, sizeof err), 0, "%s", err);
    memcpy(a.data, x, (size_t)n * 4);
    snprintf(p, sizeof p, "%s/%s.npy", dir, name);
    cr_assert_eq(fd_npy_write_file(p, &a, err, sizeof err), 0, "%s", err);
    fd_array_free(&a);
}

/* A bundle of the packed problem p (fp32) whose flash output is cpu-flash's on `as` (p
 * itself, or p read as one sequence: the leak); meta_extra is appended to the meta. */
static void varlen_bundle(const char *dir, const fd_problem *p, const fd_problem *as, const char *cu_k_meta)
{
    float *q = malloc(sizeof(float) * fd_q_numel(p)), *k = malloc(sizeof(float) * fd_kv_numel(p)),
          *v = malloc(sizeof(float) * fd_kv_numel(p)), *o = malloc(sizeof(float) * fd_q_numel(p)),
          *l = malloc(sizeof(float) * fd_lse_numel(p));
    fill(q, fd_q_numel(p), 41, FD_DT_FP32, 2.0f);
    fill(k, fd_kv_numel(p), 43, FD_DT_FP32, 1.0f);
    fill(v, fd_kv_numel(p), 47, FD_DT_FP32, 1.0f);
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    char err[512], path[1024], meta[1024];
    cr_assert_eq(fd_cpu_flash_forward(as, &cfg, q, k, v, NULL, 0, o, l, err, sizeof err), 0, "%s", err);
    const int64_t qs[4] = {1, p->seqlen_q, p->heads, p->head_dim}, ks[4] = {1, p->seqlen_k, p->kv_heads, p->head_dim};
    npy_f32(dir, "q", qs, q);
    npy_f32(dir, "k", ks, k);
    npy_f32(dir, "v", ks, v);
    npy_f32(dir, "out_flash", qs, o);
    npy_i32(dir, "cu_seqlens_q", p->varlen + 1, p->cu_seqlens_q);
    snprintf(meta, sizeof meta, "{\"layout\": \"bshd\", \"mask\": \"%s\", \"roles\": {\"flash\": \"flash\"}, \"cu_seqlens_k\": %s}",
             p->mask == FD_MASK_CAUSAL_BR ? "causal_br" : "none", cu_k_meta);
    snprintf(path, sizeof path, "%s/meta.json", dir);
    tu_write(path, meta);
    free(q); free(k); free(v); free(o); free(l);
}

Test(varlen, bundle_fields_and_check, .timeout = 120)
{
    const int lq[3] = {20, 45, 7}, lk[3] = {30, 45, 2};
    const fd_problem p = packed(3, lq, lk, 2, 1, 16, FD_DT_FP32, FD_MASK_CAUSAL_BR);
    char dir[512], err[1024];
    tu_dir(dir, sizeof dir);
    varlen_bundle(dir, &p, &p, "[0, 30, 75, 77]");
    fd_bundle b;
    cr_assert_eq(fd_bundle_load(dir, &b, err, sizeof err), 0, "%s", err);
    cr_assert(b.prob.varlen == 3 && b.prob.seqlen_q == 72 && b.prob.seqlen_k == 77 && b.prob.batch == 1);
    cr_assert(b.prob.cu_seqlens_q[2] == 65 && b.prob.cu_seqlens_k[2] == 75);
    fd_bundle_free(&b);
    char *a[] = {FD_BINARY, "check", "--tensors", dir, "--rows-per-head", "0", NULL};
    cr_assert_eq(tu_run(a), 0, "the right varlen output passes: %s\n%s", g_err, g_out);
    /* the same inputs, the output of the packed batch attended as one causal sequence */
    fd_problem leak = p;
    leak.varlen = 0;
    char dir2[512];
    tu_dir(dir2, sizeof dir2);
    varlen_bundle(dir2, &p, &leak, "[0, 30, 75, 77]");
    char *a2[] = {FD_BINARY, "check", "--tensors", dir2, "--rows-per-head", "0", NULL};
    cr_assert_eq(tu_run(a2), 1, "the leaking output fails: %s\n%s", g_err, g_out);
    char *a3[] = {FD_BINARY, "explain", "--tensors", dir2, "--rows-per-head", "0", NULL};
    cr_assert_eq(tu_run(a3), 1, "explain: a gross error (%s)", g_err);
    cr_assert(strstr(g_out, "hypothesis varlen_leak") != NULL, "explain names the leak: %s", g_out);
    /* gate: the check reports of both, under the CI policy */
    char out1[700], out2[700], rep[800];
    snprintf(out1, sizeof out1, "%s/chk", dir);
    snprintf(out2, sizeof out2, "%s/chk", dir2);
    char *c1[] = {FD_BINARY, "check", "--tensors", dir, "--out", out1, NULL};
    char *c2[] = {FD_BINARY, "check", "--tensors", dir2, "--out", out2, NULL};
    cr_assert_eq(tu_run(c1), 0, "%s", g_err);
    cr_assert_eq(tu_run(c2), 1, "%s", g_err);
    snprintf(rep, sizeof rep, "%s/report.json", out1);
    char *g1[] = {FD_BINARY, "gate", rep, "--policy", tu_path(TU_SOURCE, "cases/policy-ci.json"), "--no-baseline", NULL};
    cr_assert_eq(tu_run(g1), 0, "gate passes the right varlen output: %s\n%s", g_err, g_out);
    snprintf(rep, sizeof rep, "%s/report.json", out2);
    char *g2[] = {FD_BINARY, "gate", rep, "--policy", tu_path(TU_SOURCE, "cases/policy-ci.json"), "--no-baseline", NULL};
    cr_assert_eq(tu_run(g2), 1, "gate fails the leaking one: %s\n%s", g_err, g_out);

    /* bad offsets: one line naming the file and the field, exit 2 */
    static const struct { const char *cu_k, *msg; } bad[] = {
        {"[1, 30, 75, 77]", "cu_seqlens_k: must start at 0, got 1"},
        {"[0, 30, 20, 77]", "cu_seqlens_k: must not decrease: entry 1 is 30, entry 2 is 20"},
        {"[0, 30, 75, 76]", "cu_seqlens_k: must end at the packed length 77, got 76"},
        {"[0, 30, 77]", "cu_seqlens_k: 3 offsets where cu_seqlens_q has 4"},
        {"[0, 30.5, 75, 77]", "cu_seqlens_k: element 1: expected an integer"},
    };
    for (size_t t = 0; t < sizeof bad / sizeof bad[0]; t++) {
        char d3[512];
        tu_dir(d3, sizeof d3);
        varlen_bundle(d3, &p, &p, bad[t].cu_k);
        char *a4[] = {FD_BINARY, "check", "--tensors", d3, NULL};
        cr_assert_eq(tu_run(a4), 2, "%s: exit 2 (%s)", bad[t].cu_k, g_err);
        cr_assert(strstr(g_err, "meta.json") && strstr(g_err, bad[t].msg), "%s: stderr \"%s\" lacks the file or \"%s\"",
                  bad[t].cu_k, g_err, bad[t].msg);
        cr_assert(strchr(g_err, '\n') == g_err + strlen(g_err) - 1, "one line: %s", g_err);
    }
    /* cu_seqlens_q of the wrong type */
    char d5[512], pth[700];
    tu_dir(d5, sizeof d5);
    varlen_bundle(d5, &p, &p, "[0, 30, 75, 77]");
    const int64_t cs[1] = {4};
    tu_npy_fill(d5, "cu_seqlens_q", FD_AT_F32, 1, cs, 1.0f);
    cr_assert_eq(fd_bundle_load(d5, &b, err, sizeof err), -1);
    cr_assert(strstr(err, "cu_seqlens of type fp32 (expected int32 or int64)"), "%s", err);
    snprintf(pth, sizeof pth, "%s/cu_seqlens_q.npy", d5);
    cr_assert_eq(remove(pth), 0);
    cr_assert_eq(fd_bundle_load(d5, &b, err, sizeof err), -1);
    cr_assert(strstr(err, "cu_seqlens_q: missing"), "%s", err);
}

/* Padding (issue 13: "padding tokens attended vs dropped"): on the valid tokens of the
 * non-causal cases of cases/varlen.json, eager attention over the batch padded to the
 * longest sequence (zero K, V pads) differs from varlen by: nothing when its additive mask
 * is applied (-1e4, HF's old constant, or -FLT_MAX: exp underflows to 0 exactly), by O(1)
 * when the mask is lost. Measured in binary64 and printed (docs/features.md quotes it). */
Test(varlen, padding_difference_on_valid_tokens, .init = load, .fini = unload, .timeout = 120)
{
    int measured = 0;
    for (int ci = 0; ci < g_cf.ncases; ci++) {
        const fd_case *c = &g_cf.cases[ci];
        const fd_problem *p = &c->prob;
        if (p->mask != FD_MASK_NONE || p->window || p->dtype != FD_DT_FP16) continue;
        float *q, *k, *v;
        char err[512];
        cr_assert_eq(fd_inputs_make(c, &q, &k, &v, err, sizeof err), 0, "%s", err);
        double *qd = fd_to_f64(q, fd_q_numel(p)), *kd = fd_to_f64(k, fd_kv_numel(p)), *vd = fd_to_f64(v, fd_kv_numel(p));
        double *o[4];
        const double bias[4] = {0.0, 0.0, -1e4, -3.4028234663852886e38};
        for (int t = 0; t < 4; t++) {
            fd_attn_variant va;
            fd_attn_variant_default(p, &va);
            va.varlen_pad = t > 0;
            va.varlen_pad_bias = bias[t];
            o[t] = calloc(fd_q_numel(p), sizeof(double));
            cr_assert_eq(fd_attn64(p, &va, qd, kd, vd, NULL, p->seqlen_q, o[t], err, sizeof err), 0, "%s", err);
        }
        double d[4] = {0, 0, 0, 0};
        for (int t = 1; t < 4; t++) d[t] = fd_max_abs_diff(o[0], o[t], fd_q_numel(p));
        printf("padding %s: valid tokens max |padded eager - varlen|: mask lost %.4g, additive -1e4 %.4g, -FLT_MAX %.4g\n",
               c->id, d[1], d[2], d[3]);
        cr_assert(d[1] > 0.01, "%s: the lost mask shows (%g)", c->id, d[1]);
        cr_assert(fd_eq(d[2], 0.0) && fd_eq(d[3], 0.0), "%s: the applied mask changes nothing (%g, %g)", c->id, d[2], d[3]);
        for (int t = 0; t < 4; t++) free(o[t]);
        free(q); free(k); free(v); free(qd); free(kd); free(vd);
        measured++;
    }
    cr_assert(measured >= 2, "%d non-causal fp16 varlen cases", measured);
}

/* Random packed batches (seed printed; FD_VARLEN_SEED overrides it, as MPFR's
 * GMP_CHECK_RANDOMIZE): 2..8 sequences of 0..150 queries and keys, every mask, a window or
 * not, ALiBi or not, GQA, both dtypes: the replay of the packed batch is each sequence's
 * alone, bit for bit. */
Test(varlen, random_batches_replay_is_each_sequence_alone, .timeout = 120)
{
    uint64_t seed = 20261203;
    const char *env = getenv("FD_VARLEN_SEED");
    if (env) seed = strtoull(env, NULL, 0);
    printf("random_batches: seed %llu\n", (unsigned long long)seed);
    uint64_t st = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull; /* xorshift: never 0 for these seeds */
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cfg.qk_order = cfg.pv_order = FD_ACC_TC16;
    cfg.exp2_mode = FD_EXP2_PORTABLE;
    long rows = 0, empty = 0;
    for (int t = 0; t < 12; t++) {
        shape sh;
        memset(&sh, 0, sizeof sh);
        sh.n = 2 + (int)(tu_urand(&st) * 5);
        for (int s = 0; s < sh.n; s++) {
            sh.lq[s] = (int)(tu_urand(&st) * 151);
            sh.lk[s] = tu_urand(&st) < 0.5 ? sh.lq[s] : (int)(tu_urand(&st) * 151);
        }
        sh.lq[0] += 1; /* at least one token */
        sh.lk[0] += 1;
        sh.mask = (int)(tu_urand(&st) * 3);
        sh.win = tu_urand(&st) < 0.4;
        sh.wl = sh.win ? (int)(tu_urand(&st) * 40) - 1 : 0;
        sh.wr = sh.win ? (int)(tu_urand(&st) * 20) - 1 : 0;
        sh.alibi = tu_urand(&st) < 0.4;
        const fd_dtype dt = t % 2 ? FD_DT_BF16 : FD_DT_FP16;
        cfg.bc = t % 3 ? 64 : 32;
        fd_problem p = shape_problem(&sh, 4, 64, dt);
        p.kv_heads = t % 2 ? 2 : 4;
        float *q = malloc(sizeof(float) * fd_q_numel(&p)), *k = malloc(sizeof(float) * fd_kv_numel(&p)),
              *v = malloc(sizeof(float) * fd_kv_numel(&p)), *o = malloc(sizeof(float) * fd_q_numel(&p)),
              *l = malloc(sizeof(float) * fd_lse_numel(&p));
        fill(q, fd_q_numel(&p), seed + 100 + (uint64_t)t, dt, 2.0f);
        fill(k, fd_kv_numel(&p), seed + 200 + (uint64_t)t, dt, 1.0f);
        fill(v, fd_kv_numel(&p), seed + 300 + (uint64_t)t, dt, 1.0f);
        char err[512];
        cr_assert_eq(fd_cpu_flash_forward(&p, &cfg, q, k, v, NULL, 0, o, l, err, sizeof err), 0, "seed %llu: %s",
                     (unsigned long long)seed, err);
        for (int s = 0; s < p.varlen; s++) {
            float *qs, *ks, *vs;
            const fd_problem a = alone(&p, s, q, k, v, &qs, &ks, &vs);
            if (a.seqlen_q > 0 && a.seqlen_k > 0) {
                float *oa = malloc(sizeof(float) * fd_q_numel(&a)), *la = malloc(sizeof(float) * fd_lse_numel(&a));
                cr_assert_eq(fd_cpu_flash_forward(&a, &cfg, qs, ks, vs, NULL, 0, oa, la, err, sizeof err), 0, "%s", err);
                for (int h = 0; h < p.heads; h++)
                    for (int i = 0; i < a.seqlen_q; i++, rows++) {
                        const int pi = p.cu_seqlens_q[s] + i;
                        empty += isinf(la[fd_lse_index(&a, 0, h, i)]);
                        cr_assert(fd_f32_bits(l[fd_lse_index(&p, 0, h, pi)]) == fd_f32_bits(la[fd_lse_index(&a, 0, h, i)]),
                                  "seed %llu batch %d seq %d h %d row %d: LSE", (unsigned long long)seed, t, s, h, i);
                        for (int d = 0; d < p.head_dim; d++)
                            cr_assert(fd_f32_bits(o[fd_q_index(&p, 0, pi, h, d)]) == fd_f32_bits(oa[fd_q_index(&a, 0, i, h, d)]),
                                      "seed %llu batch %d seq %d h %d row %d d %d", (unsigned long long)seed, t, s, h, i, d);
                    }
                free(oa); free(la);
            }
            free(qs); free(ks); free(vs);
        }
        free(q); free(k); free(v); free(o); free(l);
    }
    cr_assert(rows > 2000, "seed %llu: %ld rows compared (too few)", (unsigned long long)seed, rows);
    printf("random_batches: %ld rows, %ld without a visible key\n", rows, empty);
}
