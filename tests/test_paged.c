/* test_paged.c: the paged KV cache (FlashAttention's flash_attn_with_kvcache with
 * block_table and cache_seqlens), forward. The per-entry visible interval against a brute
 * force; the MPFR reference of a paged problem against the reference of each entry alone
 * (its logical K/V cut at cache_seqlens, unpaged), bit for bit; the CPU replay reading a
 * physical cache through a shuffled table against the identity table and against each
 * entry alone, bit for bit, and a wrong table that must differ; FA2's num_splits heuristic
 * against values computed from its source (flash_api.cpp) by an independent script;
 * cases/paged.json on the CPU; every paged hypothesis injected and named first; case-file
 * and bundle errors (one line, exit 2); a bundle with the right output passes check, one
 * with a wrong kernel's output fails check and explain. */
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
#include "fd_ref.h"
#include "fd_test_problem.h"
#include "fd_test_util.h"

static void fill(float *x, size_t n, uint64_t seed, fd_dtype t, float amp)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) x[i] = fd_round_to_dtype((float)((double)amp * (2.0 * tu_urand(&s) - 1.0)), t);
}

/* A paged problem: B entries of the given cache lengths, pages of ps tokens, np pages per
 * entry, the table `table` (B x np entries, owned by the caller). */
static fd_problem paged(int B, const int *cs, int ps, int np, const int *table, int H, int Hk, int sq, int D,
                        fd_dtype t, fd_mask_kind m)
{
    fd_problem p = tu_make_problem(B, H, Hk, sq, np * ps, D, t, m, 0.0);
    p.page_size = ps;
    p.num_pages = B * np;
    for (int b = 0; b < B; b++) p.cache_seqlens[b] = cs[b];
    p.block_table = table;
    char err[256];
    cr_assert_eq(fd_problem_check_paged(&p, err, sizeof err), 0, "%s", err);
    return p;
}

/* A permutation of 0..n-1 from seed (shuffled), or the identity (seed 0). */
static void table_make(int *t, int n, uint64_t seed)
{
    for (int x = 0; x < n; x++) t[x] = x;
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 7;
    for (int x = n - 1; x > 0 && seed; x--) {
        const int y = (int)(tu_urand(&s) * (double)(x + 1));
        const int z = t[x]; t[x] = t[y]; t[y] = z;
    }
}

/* Entry b of paged problem p alone: batch 1, seqlen_k = cache_seqlens[b], unpaged; its
 * Q, K, V copied out of the logical tensors. */
static fd_problem alone(const fd_problem *p, int b, const float *q, const float *k, const float *v, float **qs,
                        float **ks, float **vs)
{
    fd_problem a = *p;
    a.page_size = 0;
    a.num_pages = 0;
    a.block_table = NULL;
    memset(a.cache_seqlens, 0, sizeof a.cache_seqlens);
    a.batch = 1;
    a.seqlen_k = p->cache_seqlens[b];
    const size_t nq = fd_q_numel(&a), nk = fd_kv_numel(&a);
    *qs = malloc(sizeof(float) * nq);
    *ks = malloc(sizeof(float) * nk);
    *vs = malloc(sizeof(float) * nk);
    cr_assert(*qs && *ks && *vs);
    memcpy(*qs, q + fd_q_index(p, b, 0, 0, 0), sizeof(float) * nq);
    memcpy(*ks, k + fd_kv_index(p, b, 0, 0, 0), sizeof(float) * nk); /* keys 0 .. cache_seqlens[b] - 1 */
    memcpy(*vs, v + fd_kv_index(p, b, 0, 0, 0), sizeof(float) * nk);
    return a;
}

typedef struct { int B, cs[4], ps, np, H, Hk, sq, D, mask, win, wl, wr; float cap; } shape;
static const shape g_shapes[] = {
    {3, {37, 100, 64}, 16, 7, 2, 1, 4, 32, FD_MASK_CAUSAL_BR, 0, 0, 0, 0.0f},
    {2, {5, 90}, 32, 3, 4, 2, 1, 64, FD_MASK_NONE, 0, 0, 0, 0.0f},
    {4, {16, 17, 48, 33}, 16, 3, 2, 2, 16, 16, FD_MASK_CAUSAL_BR, 1, 9, 0, 0.0f},
    {2, {70, 130}, 64, 3, 2, 1, 3, 32, FD_MASK_NONE, 0, 0, 0, 20.0f},
};
#define NSHAPES ((int)(sizeof g_shapes / sizeof g_shapes[0]))

static fd_problem shape_problem(const shape *sh, const int *table, fd_dtype t)
{
    fd_problem p = paged(sh->B, sh->cs, sh->ps, sh->np, table, sh->H, sh->Hk, sh->sq, sh->D, t, (fd_mask_kind)sh->mask);
    p.window = sh->win;
    p.window_left = sh->win ? sh->wl : -1;
    p.window_right = sh->win ? sh->wr : -1;
    p.softcap = sh->cap;
    return p;
}

Test(paged, visible_range_is_the_entrys_keys)
{
    int table[64];
    long pairs = 0;
    for (int c = 0; c < NSHAPES; c++) {
        const shape *sh = &g_shapes[c];
        table_make(table, sh->B * sh->np, 3);
        const fd_problem p = shape_problem(sh, table, FD_DT_FP16);
        for (int b = 0; b < p.batch; b++)
            for (int i = 0; i < p.seqlen_q; i++) {
                int lo, hi, n = 0;
                const int nv = fd_mask_visible_range_b(&p, b, i, &lo, &hi);
                for (int j = 0; j < p.seqlen_k; j++) {
                    const long diag = (long)i + p.cache_seqlens[b] - p.seqlen_q; /* bottom-right to the cache */
                    int vis = j < p.cache_seqlens[b];
                    if (p.mask == FD_MASK_CAUSAL_BR && j > diag) vis = 0;
                    if (p.window && p.window_left >= 0 && j < diag - p.window_left) vis = 0;
                    if (p.window && p.window_right >= 0 && j > diag + p.window_right) vis = 0;
                    cr_assert_eq(vis, j >= lo && j <= hi, "shape %d entry %d row %d key %d", c, b, i, j);
                    n += vis;
                    pairs++;
                }
                cr_assert_eq(n, nv);
                cr_assert(n > 0, "cache_seqlens >= seqlen_q: every row sees a key");
            }
    }
    cr_assert(pairs > 3000, "%ld pairs", pairs);
}

/* The MPFR reference of a paged problem is the reference of each entry alone (its keys
 * below cache_seqlens, no pages), bit for bit (both correctly rounded), and binary64
 * attention to 1e-12; the stale keys beyond cache_seqlens hold large values that would
 * show if attended. */
Test(paged, reference_is_each_entry_alone, .timeout = 120)
{
    int table[64];
    long rows = 0;
    for (int c = 0; c < NSHAPES; c++) {
        const shape *sh = &g_shapes[c];
        table_make(table, sh->B * sh->np, 5 + (uint64_t)c);
        const fd_problem p = shape_problem(sh, table, FD_DT_BF16);
        float *q = malloc(sizeof(float) * fd_q_numel(&p)), *k = malloc(sizeof(float) * fd_kv_numel(&p)),
              *v = malloc(sizeof(float) * fd_kv_numel(&p));
        fill(q, fd_q_numel(&p), 3 + (uint64_t)c, p.dtype, 3.0f);
        fill(k, fd_kv_numel(&p), 5 + (uint64_t)c, p.dtype, 1.0f);
        fill(v, fd_kv_numel(&p), 7 + (uint64_t)c, p.dtype, 1.0f);
        for (int b = 0; b < p.batch; b++) /* stale tokens: loud */
            for (int j = p.cache_seqlens[b]; j < p.seqlen_k; j++)
                for (int x = 0; x < p.kv_heads * p.head_dim; x++) {
                    k[fd_kv_index(&p, b, j, 0, 0) + (size_t)x] = 8.0f;
                    v[fd_kv_index(&p, b, j, 0, 0) + (size_t)x] = 100.0f;
                }
        double *qd = fd_to_f64(q, fd_q_numel(&p)), *kd = fd_to_f64(k, fd_kv_numel(&p)), *vd = fd_to_f64(v, fd_kv_numel(&p));
        double *o64 = calloc(fd_q_numel(&p), sizeof(double));
        fd_attn_variant va;
        fd_attn_variant_default(&p, &va);
        char err[512];
        cr_assert_eq(fd_attn64(&p, &va, qd, kd, vd, NULL, p.seqlen_q, o64, err, sizeof err), 0, "%s", err);
        for (int b = 0; b < p.batch; b++) {
            float *qs, *ks, *vs;
            const fd_problem a = alone(&p, b, q, k, v, &qs, &ks, &vs);
            for (int h = 0; h < p.heads; h++)
                for (int i = 0; i < p.seqlen_q; i++) {
                    double o[256], oa[256];
                    fd_ref_row_info in, ia;
                    cr_assert_eq(fd_ref_row(&p, q, k, v, b, h, i, NULL, o, &in, err, sizeof err), 0, "%s", err);
                    cr_assert_eq(fd_ref_row(&a, qs, ks, vs, 0, h, i, NULL, oa, &ia, err, sizeof err), 0, "%s", err);
                    cr_assert(in.undecided == 0 && ia.undecided == 0);
                    cr_assert_eq(in.nvisible, ia.nvisible, "shape %d entry %d row %d", c, b, i);
                    cr_assert(fd_eq(in.lse, ia.lse), "shape %d entry %d row %d: LSE %a, alone %a", c, b, i, in.lse, ia.lse);
                    for (int d = 0; d < p.head_dim; d++) {
                        cr_assert(fd_eq(o[d], oa[d]), "shape %d entry %d h %d row %d d %d: paged %a, alone %a", c, b, h, i,
                                  d, o[d], oa[d]);
                        const double w = o64[fd_q_index(&p, b, i, h, d)];
                        cr_assert(fabs(o[d] - w) <= 1e-12 * (1.0 + fabs(w)), "binary64 %a vs reference %a", w, o[d]);
                        cr_assert(fabs(o[d]) < 2.0, "a stale value (100) attended: %a", o[d]);
                    }
                    rows++;
                }
            free(qs); free(ks); free(vs);
        }
        free(q); free(k); free(v); free(qd); free(kd); free(vd); free(o64);
    }
    cr_assert(rows > 100, "%ld rows compared", rows);
}

/* One replay of p through the physical caches built from logical K/V with p's table. */
static void replay(const fd_problem *p, const fd_flash_cfg *cfg, int splits, const float *q, const float *k,
                   const float *v, float *o, float *l)
{
    float *kc = malloc(sizeof(float) * fd_paged_numel(p)), *vc = malloc(sizeof(float) * fd_paged_numel(p));
    cr_assert(kc && vc);
    fd_paged_scatter(p, k, kc);
    fd_paged_scatter(p, v, vc);
    char err[512];
    const int rc = splits ? fd_cpu_splitkv_forward_paged(p, cfg, splits, q, kc, vc, NULL, 0, o, l, err, sizeof err)
                          : fd_cpu_flash_forward_paged(p, cfg, q, kc, vc, NULL, 0, o, l, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    free(kc); free(vc);
}

static long same_bits(const fd_problem *p, const float *o1, const float *l1, const float *o2, const float *l2,
                      const char *what, int c)
{
    for (size_t x = 0; x < fd_lse_numel(p); x++)
        cr_assert(fd_f32_bits(l1[x]) == fd_f32_bits(l2[x]), "%s, shape %d: LSE %zu %a vs %a", what, c, x, (double)l1[x],
                  (double)l2[x]);
    for (size_t x = 0; x < fd_q_numel(p); x++)
        cr_assert(fd_f32_bits(o1[x]) == fd_f32_bits(o2[x]), "%s, shape %d: O %zu %a vs %a", what, c, x, (double)o1[x],
                  (double)o2[x]);
    return (long)fd_q_numel(p);
}

/* The replay reads K and V through the block table: a physical cache filled through a
 * shuffled table and read through it gives the identity table's result bit for bit, and
 * cpu-flash gives each entry alone's; the same cache read through another table differs.
 * cpu-splitkv with the heuristic's split count (flash.splits 0) and with 3. */
Test(paged, replay_reads_through_the_table, .timeout = 120)
{
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cfg.qk_order = cfg.pv_order = FD_ACC_TC16;
    cfg.exp2_mode = FD_EXP2_PORTABLE;
    cfg.bc = 16; /* several key tiles per page and per entry */
    int tsh[64], tid[64], twr[64];
    long elems = 0;
    for (int c = 0; c < NSHAPES; c++)
        for (int mode = 0; mode < 3; mode++) { /* cpu-flash, cpu-splitkv heuristic, cpu-splitkv 3 */
            const shape *sh = &g_shapes[c];
            const int nt = sh->B * sh->np;
            table_make(tsh, nt, 11 + (uint64_t)c);
            table_make(tid, nt, 0);
            const fd_problem ps = shape_problem(sh, tsh, c % 2 ? FD_DT_BF16 : FD_DT_FP16);
            fd_problem pi = ps;
            pi.block_table = tid;
            const int splits = mode == 0 ? 0 : mode == 1 ? fd_splitkv_splits(&ps, 0, 132) : 3;
            float *q = malloc(sizeof(float) * fd_q_numel(&ps)), *k = malloc(sizeof(float) * fd_kv_numel(&ps)),
                  *v = malloc(sizeof(float) * fd_kv_numel(&ps));
            float *o1 = malloc(sizeof(float) * fd_q_numel(&ps)), *l1 = malloc(sizeof(float) * fd_lse_numel(&ps));
            float *o2 = malloc(sizeof(float) * fd_q_numel(&ps)), *l2 = malloc(sizeof(float) * fd_lse_numel(&ps));
            fill(q, fd_q_numel(&ps), 13 + (uint64_t)c, ps.dtype, 2.0f);
            fill(k, fd_kv_numel(&ps), 17 + (uint64_t)c, ps.dtype, 1.0f);
            fill(v, fd_kv_numel(&ps), 19 + (uint64_t)c, ps.dtype, 1.0f);
            replay(&ps, &cfg, splits, q, k, v, o1, l1);
            replay(&pi, &cfg, splits, q, k, v, o2, l2);
            elems += same_bits(&ps, o1, l1, o2, l2, "shuffled vs identity table", c);
            /* the logical entry point (the backends') is the same computation */
            char err[512];
            const int rc = splits ? fd_cpu_splitkv_forward(&ps, &cfg, splits, q, k, v, NULL, 0, o2, l2, err, sizeof err)
                                  : fd_cpu_flash_forward(&ps, &cfg, q, k, v, NULL, 0, o2, l2, err, sizeof err);
            cr_assert_eq(rc, 0, "%s", err);
            same_bits(&ps, o1, l1, o2, l2, "physical vs logical entry point", c);
            if (mode == 0) /* cpu-flash: each entry alone, unpaged, its keys cut at cache_seqlens */
                for (int b = 0; b < ps.batch; b++) {
                    float *qs, *ks, *vs;
                    const fd_problem a = alone(&ps, b, q, k, v, &qs, &ks, &vs);
                    float *oa = malloc(sizeof(float) * fd_q_numel(&a)), *la = malloc(sizeof(float) * fd_lse_numel(&a));
                    cr_assert_eq(fd_cpu_flash_forward(&a, &cfg, qs, ks, vs, NULL, 0, oa, la, err, sizeof err), 0, "%s", err);
                    for (int h = 0; h < ps.heads; h++)
                        for (int i = 0; i < ps.seqlen_q; i++) {
                            cr_assert(fd_f32_bits(l1[fd_lse_index(&ps, b, h, i)]) == fd_f32_bits(la[fd_lse_index(&a, 0, h, i)]));
                            for (int d = 0; d < ps.head_dim; d++)
                                cr_assert(fd_f32_bits(o1[fd_q_index(&ps, b, i, h, d)]) == fd_f32_bits(oa[fd_q_index(&a, 0, i, h, d)]),
                                          "shape %d entry %d h %d row %d d %d: paged %a, alone %a", c, b, h, i, d,
                                          (double)o1[fd_q_index(&ps, b, i, h, d)], (double)oa[fd_q_index(&a, 0, i, h, d)]);
                        }
                    free(oa); free(la); free(qs); free(ks); free(vs);
                }
            /* the shuffled cache read through another table: different keys, a different output */
            for (int x = 0; x < nt; x++) twr[x] = tsh[(x + 1) % nt];
            float *kc = malloc(sizeof(float) * fd_paged_numel(&ps)), *vc = malloc(sizeof(float) * fd_paged_numel(&ps));
            fd_paged_scatter(&ps, k, kc);
            fd_paged_scatter(&ps, v, vc);
            fd_problem pw = ps;
            pw.block_table = twr;
            const int rw = splits ? fd_cpu_splitkv_forward_paged(&pw, &cfg, splits, q, kc, vc, NULL, 0, o2, l2, err, sizeof err)
                                  : fd_cpu_flash_forward_paged(&pw, &cfg, q, kc, vc, NULL, 0, o2, l2, err, sizeof err);
            cr_assert_eq(rw, 0, "%s", err);
            long differ = 0;
            for (size_t x = 0; x < fd_q_numel(&ps); x++) differ += fd_f32_bits(o1[x]) != fd_f32_bits(o2[x]);
            cr_assert(differ > (long)fd_q_numel(&ps) / 4, "shape %d mode %d: a wrong table changed only %ld outputs", c, mode,
                      differ);
            free(kc); free(vc);
            free(q); free(k); free(v); free(o1); free(l1); free(o2); free(l2);
        }
    cr_assert(elems > 8000, "%ld elements compared", elems);
}

/* FA2's num_splits heuristic (flash_api.cpp num_splits_heuristic and set_params_splitkv,
 * read 2026-12-03), computed for these shapes by an independent Python transcription
 * (binary32 where FA2 computes in float): (batch, heads, kv_heads, seqlen_q, seqlen_k,
 * head_dim, SMs) -> splits. The first is FA2's own comment's example (48 CTAs, 108 "SMs":
 * 2 splits); seqlen_q 1 with GQA takes the swapped inputs (heads / kv_heads rows). */
Test(paged, num_splits_heuristic_is_fa2s)
{
    static const int kat[][8] = {
        {1, 48, 48, 64, 4096, 128, 54, 2},  {4, 4, 1, 1, 2048, 128, 132, 16}, {4, 4, 1, 4, 2048, 128, 132, 16},
        {2, 4, 4, 16, 304, 64, 132, 2},     {2, 2, 2, 2, 48, 32, 132, 1},     {1, 32, 8, 1, 1536, 128, 132, 12},
        {8, 32, 8, 1, 8192, 128, 132, 4},   {64, 32, 32, 1, 4096, 128, 132, 1}, {1, 8, 8, 200, 32768, 256, 132, 7},
    };
    for (size_t t = 0; t < sizeof kat / sizeof kat[0]; t++) {
        const int *a = kat[t];
        fd_problem p = tu_make_problem(a[0], a[1], a[2], a[3], a[4], a[5], FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.0);
        cr_assert_eq(fd_splitkv_heuristic(&p, a[6]), a[7], "case %zu: %d splits, FA2 %d", t, fd_splitkv_heuristic(&p, a[6]),
                     a[7]);
        cr_assert_eq(fd_splitkv_splits(&p, 5, a[6]), 5, "flash.splits 5 is 5");
        cr_assert_eq(fd_splitkv_splits(&p, 0, a[6]), a[7], "flash.splits 0 is the heuristic");
    }
    /* a window turns the swap off (FA2's seqlenq_ngroups_swapped): 4 x 1 x 1 rows, not 4 x 1 x 4 */
    fd_problem p = tu_make_problem(4, 4, 1, 1, 2048, 128, FD_DT_FP16, FD_MASK_NONE, 0.0);
    p.window = 1;
    p.window_left = 100;
    p.window_right = 0;
    cr_assert_eq(fd_splitkv_heuristic(&p, 132), 16);
}

Test(paged, paged_sweep_passes_on_the_cpu, .timeout = 120)
{
    char dir[512], out[700], rep[800];
    tu_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/run", dir);
    char *a[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/paged.json"), "--backend", "cpu-flash,cpu-splitkv,cpu-standard",
                 "--out", out, "--jobs", "2", NULL};
    cr_assert_eq(tu_run(a), 0, "paged.json on the CPU: %s\n%s", g_err, g_out);
    cr_assert(strstr(g_out, "21 cases: 21 PASS"), "%s", g_out);
    /* the report records the cache and the split count chosen */
    snprintf(rep, sizeof rep, "%s/report.json", out);
    json_t *r = tu_load_json(rep);
    json_t *cs = json_object_get(r, "cases");
    int seen = 0;
    for (size_t i = 0; i < json_array_size(cs); i++) {
        json_t *pg = json_object_get(json_array_get(cs, i), "paged");
        cr_assert(json_is_object(pg), "case %zu: a paged object", i);
        const char *id = json_string_value(json_object_get(json_array_get(cs, i), "id"));
        if (strstr(id, "b1h32k8-q1k1536-d128-fp16")) {
            cr_assert_eq(json_integer_value(json_object_get(pg, "splits")), 12, "FA2's heuristic on 132 SMs");
            cr_assert_eq(json_integer_value(json_object_get(pg, "page_size")), 256);
            cr_assert_eq(json_integer_value(json_array_get(json_object_get(pg, "cache_seqlens"), 0)), 1500);
            seen++;
        }
    }
    cr_assert_eq(seen, 1);
    json_decref(r);
}

static fd_casefile g_cf;

static void load(void)
{
    char err[1024];
    cr_assert(fd_casefile_load(tu_path(TU_SOURCE, "cases/paged.json"), &g_cf, err, sizeof err) == 0, "%s", err);
}

static void unload(void) { fd_casefile_free(&g_cf); }

static int is_paged_bug(const char *b) { return !strncmp(b, "paged_", 6) || !strncmp(b, "splitkv_", 8); }

/* Each paged bug, injected on the small causal case of cases/paged.json (two entries of
 * 300 and 17 tokens, pages of 16 in the identity table: so paged_table_ignored on the
 * shuffled d 128 one), is named first and explains it; a clean case is rounding. */
Test(paged, each_injected_paged_bug_is_named, .init = load, .fini = unload, .timeout = 120)
{
    int nbugs = 0;
    for (const char *const *bug = fd_explain_bugs; *bug; bug++) {
        if (!is_paged_bug(*bug)) continue;
        nbugs++;
        cr_assert(fd_explain_bug_is_mod(*bug), "%s is a forward (score) hypothesis", *bug);
        const fd_case *c = NULL;
        for (int i = 0; i < g_cf.ncases && !c; i++)
            if (g_cf.cases[i].prob.dtype == FD_DT_FP16 && g_cf.cases[i].prob.mask == FD_MASK_CAUSAL_BR &&
                g_cf.cases[i].prob.head_dim == (strcmp(*bug, "paged_table_ignored") ? 64 : 128) &&
                !fd_explain_inject_noop(&g_cf.cases[i].prob, *bug))
                c = &g_cf.cases[i];
        cr_assert(c, "a case of paged.json for %s", *bug);
        tu_expect_bug_named(&g_cf, c, "cpu-splitkv", *bug);
    }
    cr_assert_eq(nbugs, 4, "the paged bugs");
    /* not offered where they change nothing */
    fd_case plain = tu_mk_case(1, 1, 1, 16, 16, 8, FD_DT_FP16, FD_MASK_NONE, 0.0, FD_DIST_NORMAL, 1);
    cr_assert(fd_explain_inject_noop(&plain.prob, "paged_wrong_page") != NULL, "not offered without a paged cache");
    const fd_case *ident = NULL;
    for (int i = 0; i < g_cf.ncases && !ident; i++)
        if (g_cf.cases[i].prob.head_dim == 64) ident = &g_cf.cases[i];
    cr_assert(ident);
    const char *why = fd_explain_inject_noop(&ident->prob, "paged_table_ignored");
    cr_assert(why && strstr(why, "identity"), "%s", why ? why : "(offered on an identity table)");
}

Test(paged, clean_paged_case_is_rounding, .init = load, .fini = unload, .timeout = 120)
{
    const fd_case *c = NULL;
    for (int i = 0; i < g_cf.ncases && !c; i++)
        if (g_cf.cases[i].prob.head_dim == 64 && g_cf.cases[i].prob.mask == FD_MASK_CAUSAL_BR) c = &g_cf.cases[i];
    cr_assert(c);
    fd_explain_opts o = {"cpu-splitkv", NULL, 2};
    fd_explanation ex;
    char err[1024];
    cr_assert_eq(fd_explain_case(&g_cf, c, &o, &ex, err, sizeof err), 0, "%s", err);
    cr_assert(!ex.gross, "%s: %s", c->id, ex.summary);
    fd_explanation_free(&ex);
}

Test(paged, case_file_fields)
{
    tu_expect_case_error("{\"cache_seqlens\": [30, 20], \"page_size\": 0, \"head_dim\": 8}", "sweeps[0].page_size: expected an integer in [1,");
    tu_expect_case_error("{\"cache_seqlens\": [30, 20], \"head_dim\": 8}", "\"cache_seqlens\" needs \"page_size\"");
    tu_expect_case_error("{\"cache_seqlens\": [30, -2], \"page_size\": 16, \"head_dim\": 8}", "sweeps[0].cache_seqlens[1]");
    tu_expect_case_error("{\"cache_seqlens\": [30, 20], \"page_size\": 16, \"pages_per_entry\": 1, \"head_dim\": 8}",
                      "cache_seqlens[0] = 30, expected 1..16");
    tu_expect_case_error("{\"cache_seqlens\": [30, 2], \"page_size\": 16, \"seqlen_q\": 4, \"head_dim\": 8}",
                      "cache_seqlens[1] = 2, expected 4..32");
    tu_expect_case_error("{\"cache_seqlens\": [30, 20], \"page_size\": 16, \"num_pages\": 5, \"block_table\": [[0, 5], [1, 2]], \"head_dim\": 8}",
                      "sweeps[0].block_table[0][1]: expected a page in 0..4 (num_pages 5)");
    tu_expect_case_error("{\"cache_seqlens\": [30, 20], \"page_size\": 16, \"block_table\": [[0, 1], [1, 2]], \"head_dim\": 8}",
                      "sweeps[0].block_table[1][0]: page 1 appears twice");
    tu_expect_case_error("{\"cache_seqlens\": [30, 20], \"page_size\": 16, \"block_table\": [[0, 1, 2], [3]], \"head_dim\": 8}",
                      "sweeps[0].block_table[1]: expected 3 pages");
    tu_expect_case_error("{\"cache_seqlens\": [30, 20], \"page_size\": 16, \"block_table\": \"random\", \"head_dim\": 8}",
                      "sweeps[0].block_table: expected \"shuffled\", \"identity\" or a list");
    tu_expect_case_error("{\"cache_seqlens\": [30, 20], \"page_size\": 16, \"num_pages\": 3, \"head_dim\": 8}",
                      "num_pages 3 is fewer than the block table's 4 entries");
    tu_expect_case_error("{\"page_size\": 16, \"seqlen\": 8, \"head_dim\": 8}", "\"page_size\" belongs to a paged KV cache");
    tu_expect_case_error("{\"cache_seqlens\": [30], \"batch\": 2, \"page_size\": 16, \"head_dim\": 8}", "no \"seqlen\", \"batch\"");
    tu_expect_case_error("{\"cache_seqlens\": [30], \"page_size\": 16, \"head_dim\": 8, \"backward\": true}",
                      "backward with a paged KV cache (cache_seqlens) is not supported");
    tu_expect_case_error("{\"cache_seqlens\": [30], \"page_size\": 16, \"head_dim\": 8, \"dropout\": 0.1}", "paged KV cache with dropout");
    tu_expect_case_error("{\"cache_seqlens\": [30], \"page_size\": 16, \"head_dim\": 8, \"mask\": \"causal_tl\"}", "mask causal_tl unsupported");

    char dir[512], path[700], err[1024];
    tu_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ok.json", dir);
    tu_write(path, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", \"flash\": {\"splits\": 0}, \"sweeps\": [{\"cache_seqlens\": [30, 20], "
                   "\"page_size\": [16, 8], \"seqlen_q\": [1, 3], \"head_dim\": 8, \"num_pages\": 9, \"block_table\": \"shuffled\"}]}");
    fd_casefile cf;
    cr_assert_eq(fd_casefile_load(path, &cf, err, sizeof err), 0, "%s", err);
    cr_assert_eq(cf.ncases, 4);
    cr_assert_eq(cf.flash.splits, 0);
    for (int i = 0; i < cf.ncases; i++) {
        const fd_problem *p = &cf.cases[i].prob;
        cr_assert(p->batch == 2 && p->cache_seqlens[0] == 30 && p->cache_seqlens[1] == 20 && p->num_pages == 9);
        cr_assert(strstr(cf.cases[i].id, "-pg") != NULL, "%s", cf.cases[i].id);
        const int np = fd_paged_pages(p);
        cr_assert_eq(p->seqlen_k, np * p->page_size);
        cr_assert_eq(np, p->page_size == 16 ? 2 : 4);
        int seen[9] = {0}, ident = 1;
        for (int t = 0; t < 2 * np; t++) {
            cr_assert(p->block_table[t] >= 0 && p->block_table[t] < 9);
            cr_assert_eq(seen[p->block_table[t]]++, 0, "distinct pages");
            ident &= p->block_table[t] == t;
        }
        cr_assert(!ident || p->page_size == 16, "a shuffled table of 8 pages is not the identity");
    }
    fd_casefile_free(&cf);
}

/* Bundles (docs/import.md): q as usual, k and v the physical cache (num_pages, page_size,
 * kv_heads, d), block_table (batch, pages) int32, cache_seqlens int32 or a meta list. */
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

static void npy_int(const char *dir, const char *name, fd_atype t, int nd, const int64_t *shape, const int *x)
{
    fd_array a;
    char err[512], p[1024];
    cr_assert_eq(fd_array_alloc(&a, t, nd, shape, err, sizeof err), 0, "%s", err);
    for (size_t i = 0; i < a.numel; i++) {
        if (t == FD_AT_I32) ((int32_t *)a.data)[i] = x[i];
        else ((int64_t *)a.data)[i] = x[i];
    }
    snprintf(p, sizeof p, "%s/%s.npy", dir, name);
    cr_assert_eq(fd_npy_write_file(p, &a, err, sizeof err), 0, "%s", err);
    fd_array_free(&a);
}

/* A bundle of paged problem p (fp32) whose flash output is cpu-splitkv's on `as` (p, or a
 * wrong reading of it); table_override, if not NULL, is written instead of p's table;
 * meta_extra appended to the meta ("" or ", \"KEY\": ..."). cache_seqlens as a tensor. */
static void paged_bundle(const char *dir, const fd_problem *p, const fd_problem *as, const int *table_override,
                         const char *meta_extra)
{
    float *q = malloc(sizeof(float) * fd_q_numel(p)), *k = malloc(sizeof(float) * fd_kv_numel(p)),
          *v = malloc(sizeof(float) * fd_kv_numel(p)), *o = malloc(sizeof(float) * fd_q_numel(p)),
          *l = malloc(sizeof(float) * fd_lse_numel(p));
    float *kc = malloc(sizeof(float) * fd_paged_numel(p)), *vc = malloc(sizeof(float) * fd_paged_numel(p));
    fill(q, fd_q_numel(p), 41, FD_DT_FP32, 2.0f);
    fill(k, fd_kv_numel(p), 43, FD_DT_FP32, 1.0f);
    fill(v, fd_kv_numel(p), 47, FD_DT_FP32, 1.0f);
    fd_paged_scatter(p, k, kc);
    fd_paged_scatter(p, v, vc);
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    char err[512], path[1024], meta[1024];
    cr_assert_eq(fd_cpu_splitkv_forward(as, &cfg, 2, q, k, v, NULL, 0, o, l, err, sizeof err), 0, "%s", err);
    const int64_t qs[4] = {p->batch, p->seqlen_q, p->heads, p->head_dim};
    const int64_t ks[4] = {p->num_pages, p->page_size, p->kv_heads, p->head_dim};
    const int64_t ts[2] = {p->batch, fd_paged_pages(p)}, cs[1] = {p->batch};
    npy_f32(dir, "q", qs, q);
    npy_f32(dir, "k", ks, kc);
    npy_f32(dir, "v", ks, vc);
    npy_f32(dir, "out_flash", qs, o);
    npy_int(dir, "block_table", FD_AT_I64, 2, ts, table_override ? table_override : p->block_table);
    npy_int(dir, "cache_seqlens", FD_AT_I32, 1, cs, p->cache_seqlens);
    snprintf(meta, sizeof meta, "{\"layout\": \"bshd\", \"mask\": \"%s\", \"roles\": {\"flash\": \"flash\"}%s}",
             p->mask == FD_MASK_CAUSAL_BR ? "causal_br" : "none", meta_extra);
    snprintf(path, sizeof path, "%s/meta.json", dir);
    tu_write(path, meta);
    free(q); free(k); free(v); free(o); free(l); free(kc); free(vc);
}

Test(paged, bundle_fields_check_and_explain, .timeout = 120)
{
    int table[8];
    table_make(table, 8, 9);
    const int cs[2] = {50, 21};
    const fd_problem p = paged(2, cs, 16, 4, table, 2, 1, 3, 16, FD_DT_FP32, FD_MASK_CAUSAL_BR);
    char dir[512], err[1024];
    tu_dir(dir, sizeof dir);
    paged_bundle(dir, &p, &p, NULL, ", \"page_size\": 16");
    fd_bundle b;
    cr_assert_eq(fd_bundle_load(dir, &b, err, sizeof err), 0, "%s", err);
    cr_assert(b.prob.page_size == 16 && b.prob.num_pages == 8 && b.prob.seqlen_k == 64 && b.prob.batch == 2);
    cr_assert(b.prob.cache_seqlens[0] == 50 && b.prob.cache_seqlens[1] == 21);
    for (int t = 0; t < 8; t++) cr_assert_eq(b.prob.block_table[t], table[t]);
    fd_bundle_free(&b);
    char *a[] = {FD_BINARY, "check", "--tensors", dir, "--rows-per-head", "0", NULL};
    cr_assert_eq(tu_run(a), 0, "the right paged output passes: %s\n%s", g_err, g_out);
    /* a wrong kernel: the keys past cache_seqlens attended */
    fd_problem stale = p;
    stale.cache_seqlens[0] = stale.cache_seqlens[1] = p.seqlen_k;
    char dir2[512];
    tu_dir(dir2, sizeof dir2);
    paged_bundle(dir2, &p, &stale, NULL, "");
    char *a2[] = {FD_BINARY, "check", "--tensors", dir2, "--rows-per-head", "0", NULL};
    cr_assert_eq(tu_run(a2), 1, "the stale output fails: %s\n%s", g_err, g_out);
    char *a3[] = {FD_BINARY, "explain", "--tensors", dir2, "--rows-per-head", "0", NULL};
    cr_assert_eq(tu_run(a3), 1, "explain: a gross error (%s)", g_err);
    cr_assert(strstr(g_out, "hypothesis paged_stale_tokens") != NULL, "explain names the stale tokens: %s", g_out);

    /* bad fields: one line naming the file and the field, exit 2 */
    int past[8];
    memcpy(past, table, sizeof past);
    past[5] = 8;
    static const char *const extra[] = {", \"page_size\": 32", ", \"cache_seqlens\": [50, 21]"};
    static const char *const msg[] = {"page_size: expected k's page dimension 16", "cache_seqlens: given both as a tensor and in the meta"};
    for (int t = 0; t < 3; t++) {
        char d3[512];
        tu_dir(d3, sizeof d3);
        paged_bundle(d3, &p, &p, t == 2 ? past : NULL, t < 2 ? extra[t] : "");
        char *a4[] = {FD_BINARY, "check", "--tensors", d3, NULL};
        const char *want = t < 2 ? msg[t] : "block_table: block_table[1][1] = 8, expected a page in 0..7";
        cr_assert_eq(tu_run(a4), 2, "%s: exit 2 (%s)", want, g_err);
        cr_assert(strstr(g_err, "meta.json") && strstr(g_err, want), "stderr \"%s\" lacks the file or \"%s\"", g_err, want);
        cr_assert(strchr(g_err, '\n') == g_err + strlen(g_err) - 1, "one line: %s", g_err);
    }
    /* cache_seqlens past the capacity; missing; of the wrong type */
    char d5[512], pth[700];
    tu_dir(d5, sizeof d5);
    paged_bundle(d5, &p, &p, NULL, "");
    const int big[2] = {50, 65};
    const int64_t c2[1] = {2};
    npy_int(d5, "cache_seqlens", FD_AT_I32, 1, c2, big);
    cr_assert_eq(fd_bundle_load(d5, &b, err, sizeof err), -1);
    cr_assert(strstr(err, "cache_seqlens: element 1 is 65, expected 3..64"), "%s", err);
    tu_npy_fill(d5, "cache_seqlens", FD_AT_F32, 1, c2, 1.0f);
    cr_assert_eq(fd_bundle_load(d5, &b, err, sizeof err), -1);
    cr_assert(strstr(err, "cache_seqlens of type fp32 (expected int32 or int64)"), "%s", err);
    snprintf(pth, sizeof pth, "%s/cache_seqlens.npy", d5);
    cr_assert_eq(remove(pth), 0);
    cr_assert_eq(fd_bundle_load(d5, &b, err, sizeof err), -1);
    cr_assert(strstr(err, "cache_seqlens: missing"), "%s", err);
}

/* Random paged problems (1..5 entries, pages of 1..64 tokens, caches from seqlen_q to the
 * capacity, GQA, both masks, windows, 1..6 splits; seed printed, FD_PAGED_SEED overrides):
 * cpu-flash through a shuffled table is each entry alone bit for bit, cpu-splitkv through
 * it is the identity table's. */
Test(paged, random_problems_replay_through_the_table, .timeout = 120)
{
    const char *env = getenv("FD_PAGED_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : 20261203u, st = seed * 0x9e3779b97f4a7c15ull + 3;
    printf("test_paged random_problems_replay_through_the_table: seed %llu (FD_PAGED_SEED overrides)\n",
           (unsigned long long)seed);
    static const int pss[] = {1, 3, 16, 64};
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cfg.qk_order = cfg.pv_order = FD_ACC_TC16;
    cfg.exp2_mode = FD_EXP2_PORTABLE;
    cfg.bc = 16;
    int multi_page_tiles = 0, causal = 0;
    for (int it = 0; it < 40; it++) {
        const int B = 1 + (int)(tu_urand(&st) * 5), ps = pss[(int)(tu_urand(&st) * 4)];
        const int sq = 1 + (int)(tu_urand(&st) * 8), Hk = 1 + (int)(tu_urand(&st) * 2), H = Hk * (1 + (int)(tu_urand(&st) * 2));
        const int np = (sq + ps - 1) / ps + (int)(tu_urand(&st) * (double)(96 / ps + 1));
        const int D = 8 << (int)(tu_urand(&st) * 3);
        int cs[5];
        for (int b = 0; b < B; b++) cs[b] = sq + (int)(tu_urand(&st) * (double)(np * ps - sq + 1));
        const int nt = B * np;
        int *tsh = malloc(sizeof(int) * (size_t)nt), *tid = malloc(sizeof(int) * (size_t)nt);
        table_make(tsh, nt, seed + (uint64_t)it + 1);
        table_make(tid, nt, 0);
        fd_problem ps_ = paged(B, cs, ps, np, tsh, H, Hk, sq, D, it % 2 ? FD_DT_BF16 : FD_DT_FP16,
                               tu_urand(&st) < 0.5 ? FD_MASK_NONE : FD_MASK_CAUSAL_BR);
        if (tu_urand(&st) < 0.25) {
            ps_.window = 1;
            ps_.window_left = (int)(tu_urand(&st) * 40);
            ps_.window_right = ps_.mask == FD_MASK_NONE ? (int)(tu_urand(&st) * 5) : 0;
        }
        causal += ps_.mask == FD_MASK_CAUSAL_BR;
        multi_page_tiles += ps < cfg.bc;
        fd_problem pi = ps_;
        pi.block_table = tid;
        const int splits = 1 + (int)(tu_urand(&st) * 6);
        float *q = malloc(sizeof(float) * fd_q_numel(&ps_)), *k = malloc(sizeof(float) * fd_kv_numel(&ps_)),
              *v = malloc(sizeof(float) * fd_kv_numel(&ps_));
        float *o1 = malloc(sizeof(float) * fd_q_numel(&ps_)), *l1 = malloc(sizeof(float) * fd_lse_numel(&ps_));
        float *o2 = malloc(sizeof(float) * fd_q_numel(&ps_)), *l2 = malloc(sizeof(float) * fd_lse_numel(&ps_));
        fill(q, fd_q_numel(&ps_), seed + 100 + (uint64_t)it, ps_.dtype, 2.0f);
        fill(k, fd_kv_numel(&ps_), seed + 200 + (uint64_t)it, ps_.dtype, 1.0f);
        fill(v, fd_kv_numel(&ps_), seed + 300 + (uint64_t)it, ps_.dtype, 1.0f);
        replay(&ps_, &cfg, splits, q, k, v, o1, l1);
        replay(&pi, &cfg, splits, q, k, v, o2, l2);
        same_bits(&ps_, o1, l1, o2, l2, "random: cpu-splitkv shuffled vs identity", it);
        replay(&ps_, &cfg, 0, q, k, v, o1, l1);
        char err[512];
        for (int b = 0; b < B; b++) {
            float *qs, *ks, *vs;
            const fd_problem a = alone(&ps_, b, q, k, v, &qs, &ks, &vs);
            float *oa = malloc(sizeof(float) * fd_q_numel(&a)), *la = malloc(sizeof(float) * fd_lse_numel(&a));
            cr_assert_eq(fd_cpu_flash_forward(&a, &cfg, qs, ks, vs, NULL, 0, oa, la, err, sizeof err), 0, "%s", err);
            for (int h = 0; h < H; h++)
                for (int i = 0; i < sq; i++)
                    for (int d = 0; d < D; d++)
                        cr_assert(fd_f32_bits(o1[fd_q_index(&ps_, b, i, h, d)]) == fd_f32_bits(oa[fd_q_index(&a, 0, i, h, d)]),
                                  "seed %llu problem %d (B %d page %d pages %d cache %d): entry %d h %d row %d d %d: %a vs alone %a",
                                  (unsigned long long)seed, it, B, ps, np, cs[b], b, h, i, d,
                                  (double)o1[fd_q_index(&ps_, b, i, h, d)], (double)oa[fd_q_index(&a, 0, i, h, d)]);
            free(oa); free(la); free(qs); free(ks); free(vs);
        }
        free(q); free(k); free(v); free(o1); free(l1); free(o2); free(l2); free(tsh); free(tid);
    }
    cr_assert(causal >= 8 && multi_page_tiles >= 10, "too few interesting problems: %d causal, %d with pages smaller than a tile",
              causal, multi_page_tiles);
}
