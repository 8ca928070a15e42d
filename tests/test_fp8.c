/* test_fp8.c: the FP8 attention forward (issue 15 item 4, docs/fp8.md) on the CPU.
 *
 * The FP8 tensor-core block model (FD_ACC_TC_FP8): each parameter changes a crafted
 * result the way the model says, and the measured H200 models (FD_TC_FP8_MMA_SM90 = the
 * default, FD_TC_FP8_WGMMA_SM90) reproduce every stored hardware result
 * (tests/data/tensor-core-h200, or the folder FD_TC_FP8_DATA names, in the
 * tensor-core-h100 format with K words per line; the test says which parameters fit best
 * when they do not); FD_ACC_TC16 reproduces the H200's wgmma fp16/bf16. The per-tensor quantisation of the inputs. The MPFR reference of
 * an FP8 problem: bit-identical to the reference of the dequantised fp32 problem where
 * dequantising is exact, and within 1e-12 of binary64 attention otherwise. The replay:
 * FA3's FP8 formulas written out on one tile, bit for bit; bf16 outputs, P cast to e4m3
 * dominates its error budget. cases/fp8.json on the CPU, and gated.
 * Every FP8 hypothesis injected and named first. Case-file errors, exit 2. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_accum.h"
#include "fd_attn64.h"
#include "fd_case.h"
#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_explain.h"
#include "fd_inputs.h"
#include "fd_ref.h"
#include "fd_tc_data.h"
#include "fd_test_explain.h"
#include "fd_test_problem.h"
#include "fd_test_util.h"

/* ---- the FP8 block model ---- */

static float e4(float x) { return fd_round_fp8(x, FD_DT_E4M3, FD_FP8_SATFINITE); }

/* 32 terms: 31 small products 2^-17 (2^-9 x 2^-8, e4m3 subnormal times normal) and one big
 * product 2^10 (32 x 32) at index `big`. */
static void crafted(float *a, float *b, int big)
{
    for (int i = 0; i < 32; i++) {
        a[i] = 0x1p-9f;
        b[i] = 0x1p-8f;
    }
    a[big] = 32.0f;
    b[big] = 32.0f;
    for (int i = 0; i < 32; i++) cr_assert(fd_eqf(e4(a[i]), a[i]) && fd_eqf(e4(b[i]), b[i]), "e4m3 inputs");
}

Test(fp8, block_model_exact_when_nothing_is_shifted_out)
{
    /* 32 products of e4m3 values within 2^24 of each other: every model keeps them all */
    float a[32], b[32];
    double want = 0.0;
    for (int i = 0; i < 32; i++) {
        a[i] = e4((float)(1 + i % 7) * 0.25f);
        b[i] = e4((i & 1) ? -1.5f : 2.0f);
        want += (double)a[i] * (double)b[i];
    }
    const fd_tc_fp8_params d = fd_tc_fp8_default();
    const float got = fd_dot_tc_fp8(&d, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.5f);
    cr_assert(fd_eq((double)got, want + 0.5), "exact sum: got %a, want %a", (double)got, want + 0.5);
    cr_assert(d.block == 32 && d.frac_bits == 25 && d.out_bits == 24 && d.promote == 0 && d.hmma_pairs == 1,
              "the default is the measured sm_90 mma.sync model (two TC16 sub-blocks, c added RN)");
    const fd_tc_fp8_params w = fd_tc_fp8_wgmma();
    cr_assert(w.block == 32 && w.frac_bits == 13 && w.out_bits == 14 && w.promote == 0 && w.hmma_pairs == 0,
              "the measured wgmma model: one block, 13 alignment fraction bits, 14-bit result");
}

/* The parametric single block FMA (c aligned with the products), for the parameter tests. */
static fd_tc_fp8_params plain(void)
{
    fd_tc_fp8_params p = fd_tc_fp8_default();
    p.hmma_pairs = 0;
    return p;
}

Test(fp8, mma_sync_is_two_tc16_sub_blocks_by_k_pairs_then_c_rounded_to_nearest)
{
    /* 2^10 (32 x 32) and eight products 2^-16 (2^-8 x 2^-8). Small ones at k mod 4 in
     * {0, 1}: the first sub-block sums them exactly (2^-13), the second adds 2^10: 2^10 +
     * 2^-13 (24 bits). Small ones at k mod 4 in {2, 3} behind the 2^10 (unit 2^-15): each
     * truncated to 0. */
    float a[32], b[32];
    static const int lo[8] = {4, 5, 8, 9, 12, 13, 16, 17}, hi[8] = {2, 3, 6, 7, 10, 11, 14, 15};
    const fd_tc_fp8_params m = fd_tc_fp8_default(), w = fd_tc_fp8_wgmma(), one = plain();
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < 32; i++) a[i] = b[i] = 0.0f;
        a[pass ? 0 : 2] = b[pass ? 0 : 2] = 32.0f;
        for (int i = 0; i < 8; i++) a[pass ? hi[i] : lo[i]] = b[pass ? hi[i] : lo[i]] = 0x1p-8f;
        const float got = fd_tc_fp8_block(&m, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f);
        cr_assert(fd_eqf(got, pass ? 1024.0f : 1024.0f + 0x1p-13f), "pass %d: %a", pass, (double)got);
        cr_assert(fd_eqf(fd_tc_fp8_block(&one, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f), 1024.0f));
        cr_assert(fd_eqf(fd_tc_fp8_block(&w, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f), 1024.0f));
    }
    /* c = 256 joins by one RN add: 3 2^-17 (3 2^-9 x 2^-8, e4m3 subnormals) is 0.75 ulp:
     * 256 + 2^-15. Aligned with c (the plain block: unit 2^-17 then truncated to 24 bits;
     * wgmma: unit 2^-5) it is lost. */
    for (int i = 0; i < 32; i++) a[i] = b[i] = 0.0f;
    a[0] = 3.0f * 0x1p-9f;
    b[0] = 0x1p-8f;
    cr_assert(fd_eqf(fd_tc_fp8_block(&m, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 256.0f), 256.0f + 0x1p-15f));
    cr_assert(fd_eqf(fd_tc_fp8_block(&one, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 256.0f), 256.0f));
    cr_assert(fd_eqf(fd_tc_fp8_block(&w, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 256.0f), 256.0f));
}

Test(fp8, wgmma_keeps_13_fraction_bits_and_a_14_bit_result)
{
    /* 2^10 and 2^-3 (2^-1 x 2^-2): 2^-3 = 2^(10 - 13) is kept, 2^-4 is not */
    float a[32], b[32];
    for (int i = 0; i < 32; i++) a[i] = b[i] = 0.0f;
    a[0] = b[0] = 32.0f;
    a[1] = 0.5f;
    b[1] = 0.25f;
    const fd_tc_fp8_params w = fd_tc_fp8_wgmma();
    cr_assert(fd_eqf(fd_tc_fp8_block(&w, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f), 1024.0f + 0.125f));
    b[1] = 0.125f;
    cr_assert(fd_eqf(fd_tc_fp8_block(&w, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f), 1024.0f));
    /* a carry: c = 1024 + 0.125 + 2^10 -> 2^11 + 2^-3 needs 15 bits, truncated to 14: 2048 */
    b[1] = 0.25f;
    cr_assert(fd_eqf(fd_tc_fp8_block(&w, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 1024.0f), 2048.0f));
}

Test(fp8, block_size_decides_what_is_truncated)
{
    float a[32], b[32];
    crafted(a, b, 31);
    fd_tc_fp8_params p = plain();
    /* one 32-term block: aligned to 2^10 with 25 fraction bits (unit 2^-15), every 2^-17 is
     * truncated away */
    const float one = fd_dot_tc_fp8(&p, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f);
    cr_assert(fd_eqf(one, 1024.0f), "block 32: %a", (double)one);
    /* two 16-term blocks: the first sums its 16 small products exactly (2^-13), the second
     * keeps that 2^-13 (a multiple of its unit 2^-15) and truncates its own 15 small ones */
    p.block = 16;
    const float two = fd_dot_tc_fp8(&p, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f);
    cr_assert(fd_eqf(two, 1024.0f + 0x1p-13f), "block 16: %a", (double)two);
    /* the big product first: both orders truncate every small term */
    crafted(a, b, 0);
    cr_assert(fd_eqf(fd_dot_tc_fp8(&p, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f), 1024.0f));
}

Test(fp8, alignment_bits_and_output_bits_and_promotion)
{
    float a[64], b[64];
    for (int i = 0; i < 64; i++) a[i] = b[i] = 0.0f;
    a[0] = 32.0f; b[0] = 32.0f;       /* 2^10 */
    a[1] = 0x1p-7f; b[1] = 0x1p-6f;   /* 2^-13: kept with 25 fraction bits at 2^10, not with 13 */
    fd_tc_fp8_params p = plain();
    cr_assert(fd_eqf(fd_tc_fp8_block(&p, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f), 1024.0f + 0x1p-13f));
    p.frac_bits = 13; /* DeepSeek-V3's "about 14 bits" */
    cr_assert(fd_eqf(fd_tc_fp8_block(&p, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f), 1024.0f));
    /* the result truncated to 22 bits: 2^10 + 2^-13 needs 24 */
    p = plain();
    p.out_bits = 22;
    cr_assert(fd_eqf(fd_tc_fp8_block(&p, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 32, 0.0f), 1024.0f));
    /* promotion every 32 terms: each 32-term partial starts at 0 and is added to the fp32
     * register with one rounding to nearest. Block 2 holds six products 2^-16: chained
     * behind the 2^10 of block 1 (unit 2^-15) each is truncated to 0; promoted, block 2 sums
     * them exactly (3 2^-15, 0.75 of an ulp of 2^10) and RN(2^10 + 3 2^-15) = 2^10 + 2^-13. */
    p = plain();
    a[1] = b[1] = 0.0f;
    for (int i = 40; i < 46; i++) a[i] = b[i] = 0x1p-8f;
    const float chained = fd_dot_tc_fp8(&p, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 64, 0.0f);
    p.promote = 32;
    const float promoted = fd_dot_tc_fp8(&p, a, 1, FD_DT_E4M3, b, 1, FD_DT_E4M3, 64, 0.0f);
    cr_assert(fd_eqf(chained, 1024.0f), "chained: %a", (double)chained);
    cr_assert(fd_eqf(promoted, 1024.0f + 0x1p-13f), "promoted: %a", (double)promoted);
}

Test(fp8, e5m2_and_mixed_formats_place_subnormals_at_their_own_exponent)
{
    /* e5m2 subnormal 2^-16 times 1 beside 2^-2: exact (within 25 bits of 2^-2) */
    float a[2] = {0x1p-16f, 0.25f}, b[2] = {1.0f, 1.0f};
    const fd_tc_fp8_params p = fd_tc_fp8_default();
    cr_assert(fd_eqf(fd_tc_fp8_block(&p, a, 1, FD_DT_E5M2, b, 1, FD_DT_E5M2, 2, 0.0f), 0.25f + 0x1p-16f));
    /* P (e4m3) times V (e5m2), the PV product of an e5m2 case */
    float pa[2] = {0x1p-9f, 1.0f}, vb[2] = {0x1p-16f, 3.0f};
    cr_assert(fd_eqf(fd_tc_fp8_block(&p, pa, 1, FD_DT_E4M3, vb, 1, FD_DT_E5M2, 2, 0.0f), 3.0f));
    cr_assert(fd_eqf(fd_tc_fp8_block(&p, pa, 1, FD_DT_E4M3, vb, 1, FD_DT_E5M2, 1, 0.0f), 0x1p-25f));
}

/* ---- stored hardware results (tests/data/tensor-core-h200, measured on the H200) ---- */

#define HW_MAX 4000
#define HW_K 512

typedef struct {
    float a[HW_MAX][HW_K], b[HW_MAX][HW_K], c[HW_MAX];
    uint32_t d[HW_MAX];
    int n, k;
} hw_data;

/* The file of dir whose name starts with prefix and contains `with` (NULL: any). */
static int find_file(const char *dir, const char *prefix, const char *with, char *out, size_t len)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    int found = -1;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix)) && strstr(e->d_name, ".txt") &&
            (!with || strstr(e->d_name, with))) {
            snprintf(out, len, "%s/%s", dir, e->d_name);
            found = 0;
            break;
        }
    closedir(d);
    return found;
}

/* Loads a set: inputs (a_*, b_*, c_*fp32) from `in` (the mma.sync folder: the wgmma sets
 * share its inputs), results (d_*fp32) from `out`. Returns 0, or -1 when `out` is absent. */
static int hw_load(hw_data *h, const char *in, const char *out)
{
    char pa[1400], pb[1400], pc[1400], pd[1400];
    DIR *probe = opendir(out);
    if (!probe) return -1;
    closedir(probe);
    cr_assert(!find_file(in, "a_", NULL, pa, sizeof pa) && !find_file(in, "b_", NULL, pb, sizeof pb) &&
                  !find_file(in, "c_", "fp32", pc, sizeof pc) && !find_file(out, "d_", "fp32", pd, sizeof pd),
              "%s / %s: a_*.txt, b_*.txt, c_*fp32.txt and d_*fp32.txt", in, out);
    static uint32_t cb[HW_MAX];
    int kb = 0;
    h->k = 0;
    h->n = tc_read_hex_rows(pa, &h->a[0][0], HW_MAX, HW_K, &h->k); /* K from the first line */
    cr_assert(h->n > 0 && tc_read_hex_rows(pb, &h->b[0][0], HW_MAX, HW_K, &kb) == h->n && kb == h->k,
              "%s: a and b rows", in);
    cr_assert(tc_read_bit_rows(pc, cb, HW_MAX) == h->n && tc_read_bit_rows(pd, h->d, HW_MAX) == h->n,
              "%s / %s: c and d rows", in, out);
    for (int i = 0; i < h->n; i++) h->c[i] = fd_bits_f32(cb[i]);
    return 0;
}

static int hw_matches(const hw_data *h, const fd_tc_fp8_params *p, fd_dtype t, int *first_bad)
{
    int ok = 0;
    *first_bad = -1;
    for (int i = 0; i < h->n; i++) {
        const float got = fd_dot_tc_fp8(p, h->a[i], 1, t, h->b[i], 1, t, h->k, h->c[i]);
        if (fd_f32_bits(got) == h->d[i]) ok++;
        else if (*first_bad < 0) *first_bad = i;
    }
    return ok;
}

/* The stored sets (tests/data/tensor-core-h200, or the folder FD_TC_FP8_DATA names under
 * tests/data, same layout: <instr>-<fmt>-k<K>/; a wgmma folder without a_*.txt takes the
 * inputs of the mma folder of the same format and K). Every block must be reproduced bit
 * for bit by the library model of its instruction: FD_TC_FP8_MMA_SM90 (= the default) for
 * mma.sync, FD_TC_FP8_WGMMA_SM90 for wgmma. On a miss the test searches the parametric
 * family and says which parameters fit best. */
Test(fp8, model_reproduces_stored_hardware_results, .timeout = 900)
{
    const char *folder = getenv("FD_TC_FP8_DATA");
    char rel[256];
    snprintf(rel, sizeof rel, "%s", folder && *folder ? folder : "tensor-core-h200");
    char root[1024];
    snprintf(root, sizeof root, "%s", tu_path(TU_DATA, rel));
    DIR *probe = opendir(root);
    cr_assert(probe, "no stored FP8 tensor-core results in %s", root);
    closedir(probe);
    static hw_data h;
    static const struct { const char *fmt; fd_dtype t; } fmt[] = {{"e4m3", FD_DT_E4M3}, {"e5m2", FD_DT_E5M2}};
    static const int ks[] = {32, 64, 128, 256, 512};
    int sets = 0, blocks = 0;
    for (int w = 0; w < 2; w++)
        for (int f = 0; f < 2; f++)
            for (int ki = 0; ki < 5; ki++) {
                char in[1200], out[1200], tmp[1400];
                snprintf(out, sizeof out, "%s/%s-%s-k%d", root, w ? "wgmma" : "mma", fmt[f].fmt, ks[ki]);
                snprintf(in, sizeof in, "%s", out);
                if (find_file(out, "a_", NULL, tmp, sizeof tmp))
                    snprintf(in, sizeof in, "%s/mma-%s-k%d", root, fmt[f].fmt, ks[ki]);
                if (hw_load(&h, in, out)) continue;
                for (int i = 0; i < h.n; i++)
                    for (int k = 0; k < h.k; k++)
                        cr_assert(fd_eqf(fd_round_fp8(h.a[i][k], fmt[f].t, FD_FP8_SATFINITE), h.a[i][k]) &&
                                      fd_eqf(fd_round_fp8(h.b[i][k], fmt[f].t, FD_FP8_SATFINITE), h.b[i][k]),
                                  "%s row %d term %d: not %s values", in, i, k, fmt[f].fmt);
                const fd_tc_fp8_params d = w ? fd_tc_fp8_wgmma() : fd_tc_fp8_default();
                int bad;
                const int ok = hw_matches(&h, &d, fmt[f].t, &bad);
                if (ok != h.n) { /* say which parameters would fit */
                    fd_tc_fp8_params best = d, q;
                    int bestok = ok, qbad;
                    static const int outs[] = {24, 23, 22, 20, 16, 15, 14, 13};
                    for (int hp = 0; hp < 2; hp++)
                        for (int fb = 10; fb <= 27; fb++)
                            for (int oi = 0; oi < 8; oi++) {
                                q = (fd_tc_fp8_params){32, fb, outs[oi], 0, hp};
                                const int m = hw_matches(&h, &q, fmt[f].t, &qbad);
                                if (m > bestok) { bestok = m; best = q; }
                            }
                    cr_assert_fail("%s (%d results, K = %d): the library model {frac_bits %d, out_bits %d, "
                                   "hmma_pairs %d} reproduces %d (first miss: row %d, c %a, hardware %a); best "
                                   "fit {frac_bits %d, out_bits %d, hmma_pairs %d} reproduces %d: update "
                                   "FD_TC_FP8_MMA_SM90 / FD_TC_FP8_WGMMA_SM90 (fd_accum.h) and docs/tensor-cores.md",
                                   out, h.n, h.k, d.frac_bits, d.out_bits, d.hmma_pairs, ok, bad, (double)h.c[bad],
                                   (double)fd_bits_f32(h.d[bad]), best.frac_bits, best.out_bits, best.hmma_pairs,
                                   bestok);
                }
                sets++;
                blocks += h.n;
            }
    cr_log_info("%s: %d sets, %d blocks, every one reproduced", root, sets, blocks);
    cr_assert(sets > 0, "%s holds no <mma|wgmma>-<e4m3|e5m2>-k<K>/ set", root);
    if (!(folder && *folder)) /* the stored sets: both instructions, both formats, chains */
        cr_assert(sets >= 8, "%s: %d sets (%d blocks), expected the 8 stored ones", root, sets, blocks);
}

/* The fp16 / bf16 wgmma (m64n8k16 chained to K = 64) on the H200 is FD_ACC_TC16, block
 * for block (stored: the first 400 blocks of each set of the probe). */
static void wgmma16(const char *dir, fd_dtype t)
{
    static hw_data h;
    char path[1200];
    snprintf(path, sizeof path, "%s", tu_path(TU_DATA, dir));
    cr_assert(!hw_load(&h, path, path), "%s missing", path);
    cr_assert_eq(h.k, 64);
    int ok = 0, bad = -1;
    for (int i = 0; i < h.n; i++) {
        const float got = fd_dot_acc_dt(FD_ACC_TC16, h.a[i], 1, h.b[i], 1, h.k, h.c[i], t);
        if (fd_f32_bits(got) == h.d[i]) ok++;
        else if (bad < 0) bad = i;
    }
    cr_assert_eq(ok, h.n, "%s: FD_ACC_TC16 reproduces %d of %d (first miss: row %d)", dir, ok, h.n, bad);
}
Test(fp8, tc16_reproduces_h200_wgmma_fp16_k64) { wgmma16("tensor-core-h200/wgmma-fp16-k64", FD_DT_FP16); }
Test(fp8, tc16_reproduces_h200_wgmma_bf16_k64) { wgmma16("tensor-core-h200/wgmma-bf16-k64", FD_DT_BF16); }

/* ---- inputs, reference, replay ---- */

static fd_casefile g_cf;
static void load(void)
{
    char err[1024];
    cr_assert(fd_casefile_load(tu_path(TU_SOURCE, "cases/fp8.json"), &g_cf, err, sizeof err) == 0, "%s", err);
}
static void unload(void) { fd_casefile_free(&g_cf); }

static const fd_case *find(const char *id)
{
    for (int i = 0; i < g_cf.ncases; i++)
        if (!strcmp(g_cf.cases[i].id, id)) return &g_cf.cases[i];
    cr_assert_fail("no case %s in cases/fp8.json", id);
    return NULL;
}

Test(fp8, inputs_are_quantised_per_tensor_with_amax_descales, .init = load, .fini = unload)
{
    int n8 = 0;
    for (int ci = 0; ci < g_cf.ncases; ci++) {
        const fd_case *c = &g_cf.cases[ci];
        const fd_problem *p = &c->prob;
        if (!fd_dtype_is_fp8(p->dtype)) continue;
        n8++;
        float *q, *k, *v;
        double *qu, *ku, *vu;
        char err[512];
        cr_assert(fd_inputs_make(c, &q, &k, &v, err, sizeof err) == 0, "%s", err);
        cr_assert(fd_inputs_make_unrounded(c, &qu, &ku, &vu, err, sizeof err) == 0, "%s", err);
        const float *x[3] = {q, k, v};
        const double *xu[3] = {qu, ku, vu};
        const float ds[3] = {p->q_descale, p->k_descale, p->v_descale};
        const size_t n[3] = {fd_q_numel(p), fd_kv_numel(p), fd_kv_numel(p)};
        for (int t = 0; t < 3; t++) {
            float amax8 = 0.0f;
            for (size_t e = 0; e < n[t]; e++) {
                cr_assert(fd_eqf(fd_round_fp8(x[t][e], p->dtype, FD_FP8_NOSAT), x[t][e]), "%s: %a is not %s", c->id,
                          (double)x[t][e], fd_dtype_name(p->dtype));
                /* the value is the one rounding of the value before the cast */
                cr_assert(fd_eqf(fd_round_fp8((float)xu[t][e], p->dtype, FD_FP8_SATFINITE), x[t][e]));
                amax8 = fmaxf(amax8, fabsf(x[t][e]));
            }
            if (c->fp8_unit_descale) {
                cr_assert(fd_eqf(ds[t], 1.0f), "%s: fp8_descale one", c->id);
            } else {
                cr_assert(fd_eqf(amax8, fd_fp8_max(p->dtype)), "%s tensor %d: the amax maps to the FP8 max, got %a",
                          c->id, t, (double)amax8);
                cr_assert(ds[t] > 0.0f && !fd_eqf(ds[t], 1.0f), "%s: descale %a", c->id, (double)ds[t]);
            }
        }
        free(q); free(k); free(v); free(qu); free(ku); free(vu);
    }
    cr_assert(n8 >= 30, "FP8 cases in cases/fp8.json: %d", n8);
}

static void fill_e4m3(float *x, size_t n, uint64_t seed, float amp)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 7;
    for (size_t e = 0; e < n; e++) x[e] = e4((float)((2.0 * tu_urand(&s) - 1.0) * (double)amp));
}

Test(fp8, reference_equals_the_dequantised_fp32_problem_bit_for_bit)
{
    /* power-of-two descales: the dequantised values are exact binary32 numbers, so the
     * FP8 problem's reference (sigma = scale q_descale k_descale, th = 1 / v_descale) must
     * be the same correctly rounded result as the fp32 problem's; then a descale with 24
     * significant bits against binary64 attention */
    fd_problem p = tu_make_problem(1, 2, 1, 9, 37, 32, FD_DT_E4M3, FD_MASK_CAUSAL_BR, 0.0);
    const size_t nq = fd_q_numel(&p), nkv = fd_kv_numel(&p);
    float *q = malloc(sizeof(float) * nq), *k = malloc(sizeof(float) * nkv), *v = malloc(sizeof(float) * nkv);
    float *q2 = malloc(sizeof(float) * nq), *k2 = malloc(sizeof(float) * nkv), *v2 = malloc(sizeof(float) * nkv);
    cr_assert(q && k && v && q2 && k2 && v2);
    fill_e4m3(q, nq, 1, 448.0f);
    fill_e4m3(k, nkv, 2, 448.0f);
    fill_e4m3(v, nkv, 3, 448.0f);
    p.q_descale = 0x1p-7f;
    p.k_descale = 0x1p-8f;
    p.v_descale = 0x1p-6f;
    fd_problem p32 = p;
    p32.dtype = FD_DT_FP32;
    p32.q_descale = p32.k_descale = p32.v_descale = 0.0f;
    for (size_t e = 0; e < nq; e++) q2[e] = q[e] * p.q_descale;
    for (size_t e = 0; e < nkv; e++) { k2[e] = k[e] * p.k_descale; v2[e] = v[e] * p.v_descale; }
    double o1[32], o2[32];
    char err[512];
    int nchk = 0;
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 9; i++) {
            fd_ref_row_info a, b;
            cr_assert(fd_ref_row(&p, q, k, v, 0, h, i, NULL, o1, &a, err, sizeof err) == 0, "%s", err);
            cr_assert(fd_ref_row(&p32, q2, k2, v2, 0, h, i, NULL, o2, &b, err, sizeof err) == 0, "%s", err);
            cr_assert(a.undecided == 0 && b.undecided == 0);
            cr_assert(fd_eq(a.lse, b.lse), "row %d lse %a vs %a", i, a.lse, b.lse);
            for (int d = 0; d < 32; d++, nchk++)
                cr_assert(fd_eq(o1[d], o2[d]), "h %d row %d d %d: FP8 %a, fp32 %a", h, i, d, o1[d], o2[d]);
        }
    cr_assert(nchk == 2 * 9 * 32);
    /* descales of 24 bits (amax / 448 style): against binary64 attention of x8 x_descale */
    p.q_descale = 3.1f / 448.0f;
    p.k_descale = 2.7f / 448.0f;
    p.v_descale = 1.9f / 448.0f;
    fd_attn_variant va;
    fd_attn_variant_default(&p, &va);
    cr_assert(fabs(va.scale - (double)p.softmax_scale * (double)p.q_descale * (double)p.k_descale) < 1e-20);
    double *qd = fd_to_f64(q, nq), *kd = fd_to_f64(k, nkv), *vd = fd_to_f64(v, nkv);
    double *o64 = malloc(sizeof(double) * nq);
    int rows[9];
    for (int i = 0; i < 9; i++) rows[i] = i;
    cr_assert(fd_attn64(&p, &va, qd, kd, vd, rows, 9, o64, err, sizeof err) == 0, "%s", err);
    double mx = 0.0;
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 9; i++) {
            cr_assert(fd_ref_row(&p, q, k, v, 0, h, i, NULL, o1, NULL, err, sizeof err) == 0, "%s", err);
            for (int d = 0; d < 32; d++) {
                const double r = o64[fd_q_index(&p, 0, i, h, d)];
                mx = fmax(mx, fabs(r));
                cr_assert(fabs(o1[d] - r) <= 1e-12 * (fabs(r) + 1e-3), "h %d row %d d %d: MPFR %a, binary64 %a", h, i, d,
                          o1[d], r);
            }
        }
    cr_assert(mx > 0.1, "outputs of size: %g", mx);
    free(qd); free(kd); free(vd); free(o64);
    free(q); free(k); free(v); free(q2); free(k2); free(v2);
}

Test(fp8, replay_writes_bf16_and_p_cast_to_e4m3_dominates_the_budget, .init = load, .fini = unload, .timeout = 120)
{
    const fd_case *c = find("b1h2k2-q128k128-d64-e4m3-causal_br-p0-normal-s41");
    const fd_problem *p = &c->prob;
    float *q, *k, *v;
    char err[512];
    cr_assert(fd_inputs_make(c, &q, &k, &v, err, sizeof err) == 0, "%s", err);
    float *o = malloc(sizeof(float) * fd_q_numel(p)), *o2 = malloc(sizeof(float) * fd_q_numel(p));
    float *l = malloc(sizeof(float) * fd_lse_numel(p));
    cr_assert(fd_cpu_flash_forward(p, &g_cf.flash, q, k, v, NULL, 0, o, l, err, sizeof err) == 0, "%s", err);
    int nonbf8 = 0;
    for (size_t e = 0; e < fd_q_numel(p); e++) {
        cr_assert(fd_eqf(fd_round_to_dtype(o[e], FD_DT_BF16), o[e]), "output %zu = %a is not bf16", e, (double)o[e]);
        nonbf8 += !fd_eqf(fd_round_fp8(o[e], FD_DT_E4M3, FD_FP8_SATFINITE), o[e]);
    }
    cr_assert(nonbf8 > 1000, "bf16 outputs, not e4m3 ones: %d", nonbf8);
    /* P kept in binary32: a different (more accurate) result */
    fd_flash_cfg cf = g_cf.flash;
    cf.p_fp32 = 1;
    cr_assert(fd_cpu_flash_forward(p, &cf, q, k, v, NULL, 0, o2, l, err, sizeof err) == 0, "%s", err);
    int diff = 0;
    for (size_t e = 0; e < fd_q_numel(p); e++) diff += !fd_eqf(o[e], o2[e]);
    cr_assert(diff > (int)fd_q_numel(p) / 2, "P's cast changes most outputs: %d", diff);
    free(o); free(o2); free(l); free(q); free(k); free(v);

    fd_explain_opts eo = {"cpu-flash", NULL, 2};
    fd_explanation ex;
    cr_assert(fd_explain_case(&g_cf, c, &eo, &ex, err, sizeof err) == 0, "%s", err);
    cr_assert(!ex.gross, "a clean FP8 kernel is rounding: %s", ex.summary);
    cr_assert(ex.replay_matches_kernel);
    int pr = -1;
    for (int t = 0; t < ex.nparts; t++)
        if (!strcmp(ex.part[t].name, "rounding of P to e4m3 (FP8)")) pr = t;
    cr_assert(pr >= 0, "the P stage under its FP8 name");
    for (int t = 0; t < ex.nparts; t++)
        cr_assert(t == pr || ex.part[t].max_abs < ex.part[pr].max_abs, "%s (%g) above P's cast (%g)", ex.part[t].name,
                  ex.part[t].max_abs, ex.part[pr].max_abs);
    cr_assert(ex.part[pr].share > 0.5, "P's cast carries most of the error: share %g", ex.part[pr].share);
    cr_assert(ex.input_rounding_max_abs > 0.0, "quantising Q, K, V moves the exact output (input rounding)");
    fd_explanation_free(&ex);
}

/* FlashAttention-3's FP8 forward written out plainly for one K/V tile (no rescaling, no
 * quad sums), from the formulas of hopper/softmax.h, against the replay with one 64-key
 * tile, sequential sums and libm's exp2: the replay's FP8 scaling, P cast, v_descale and
 * LSE, element by element. */
Test(fp8, replay_is_fa3s_fp8_formulas_on_one_tile)
{
    fd_problem p = tu_make_problem(1, 1, 1, 5, 64, 64, FD_DT_E4M3, FD_MASK_NONE, 0.0);
    p.offset = 0;
    const size_t nq = fd_q_numel(&p), nkv = fd_kv_numel(&p);
    float *q = malloc(sizeof(float) * nq), *k = malloc(sizeof(float) * nkv), *v = malloc(sizeof(float) * nkv);
    float *o = malloc(sizeof(float) * nq), *l = malloc(sizeof(float) * fd_lse_numel(&p));
    cr_assert(q && k && v && o && l);
    fill_e4m3(q, nq, 11, 448.0f);
    fill_e4m3(k, nkv, 12, 448.0f);
    fill_e4m3(v, nkv, 13, 448.0f);
    p.q_descale = 2.9f / 448.0f;
    p.k_descale = 3.3f / 448.0f;
    p.v_descale = 1.7f / 448.0f;
    fd_flash_cfg cfg;
    fd_flash_cfg_default(&cfg);
    cfg.bc = 64;
    cfg.rowsum = FD_ROWSUM_SEQ;
    char err[512];
    cr_assert(fd_cpu_flash_forward(&p, &cfg, q, k, v, NULL, 0, o, l, err, sizeof err) == 0, "%s", err);
    const float sl2 = (float)((double)p.softmax_scale * 1.4426950408889634073599246810018921) * (p.q_descale * p.k_descale);
    int n8 = 0;
    for (int i = 0; i < 5; i++) {
        float sv[64], pe[64], m = -INFINITY, sum = 0.0f;
        for (int j = 0; j < 64; j++) {
            float a = 0.0f;
            for (int d = 0; d < 64; d++) a = fmaf(q[fd_q_index(&p, 0, i, 0, d)], k[fd_kv_index(&p, 0, j, 0, d)], a);
            sv[j] = a;
            m = fmaxf(m, a);
        }
        const float max_scaled = fmaf(m, sl2, -8.0f); /* max * scale - Max_offset */
        for (int j = 0; j < 64; j++) {
            pe[j] = exp2f(fmaf(sv[j], sl2, -max_scaled)); /* in [0, 256] */
            sum += pe[j];
            n8 += pe[j] > 1.0f;
            pe[j] = fd_round_fp8(pe[j], FD_DT_E4M3, FD_FP8_SATFINITE);
        }
        const float fs = (1.0f / sum) * p.v_descale; /* finalize(v_descale) */
        for (int d = 0; d < 64; d++) {
            float a = 0.0f;
            for (int j = 0; j < 64; j++) a = fmaf(pe[j], v[fd_kv_index(&p, 0, j, 0, d)], a);
            const float want = fd_round_to_dtype(a * fs, FD_DT_BF16);
            const float got = o[fd_q_index(&p, 0, i, 0, d)];
            cr_assert(fd_f32_bits(got) == fd_f32_bits(want), "row %d d %d: replay %a, FA3's formulas %a", i, d, (double)got,
                      (double)want);
        }
        const float lse = fmaf(m, sl2 * (float)0.69314718055994530942, logf(sum * 0x1p-8f));
        cr_assert(fd_f32_bits(l[fd_lse_index(&p, 0, 0, i)]) == fd_f32_bits(lse), "row %d LSE: replay %a, want %a", i,
                  (double)l[fd_lse_index(&p, 0, 0, i)], (double)lse);
    }
    cr_assert(n8 > 5, "P above 1 (the 2^8 range in use): %d", n8);
    free(q); free(k); free(v); free(o); free(l);
}

Test(fp8, fp8_sweep_passes_on_the_cpu, .timeout = 300)
{
    char dir[512], out[700];
    tu_dir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/run", dir);
    char *a[] = {FD_BINARY, "run", tu_path(TU_SOURCE, "cases/fp8.json"), "--backend", "cpu-flash,cpu-standard,cpu-splitkv",
                 "--out", out, "--jobs", "2", NULL};
    cr_assert_eq(tu_run(a), 0, "fp8.json on the CPU: %s\n%s", g_err, g_out);
    cr_assert(strstr(g_out, "39 cases: ") && strstr(g_out, " 0 FAIL, 0 UNDECIDED"), "%s", g_out);
    char rp[800];
    snprintf(rp, sizeof rp, "%s/report.json", out);
    json_t *r = tu_load_json(rp);
    json_t *c0 = json_array_get(json_object_get(r, "cases"), 0);
    json_t *f8 = json_object_get(c0, "fp8");
    cr_assert(f8 && json_real_value(json_object_get(f8, "q_descale")) > 0.0, "report.json records the descales");
    cr_assert_str_eq(json_string_value(json_object_get(f8, "out_dtype")), "bf16");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(c0, "reference"), "tier")), "mpfr");
    /* the gate: the FP8 policy passes the run; a flash output 10x worse on one case fails it */
    char *g[] = {FD_BINARY, "gate", rp, "--policy", tu_path(TU_SOURCE, "cases/policy-fp8.json"), NULL};
    cr_assert_eq(tu_run(g), 0, "gate with cases/policy-fp8.json: %s\n%s", g_err, g_out);
    json_t *fb = json_object_get(json_object_get(c0, "backends"), "cpu-flash");
    json_object_set_new(fb, "max_abs", json_real(10.0 * json_real_value(json_object_get(fb, "max_abs"))));
    char bad[800];
    snprintf(bad, sizeof bad, "%s/bad.json", out);
    tu_save(r, bad);
    char *g2[] = {FD_BINARY, "gate", bad, "--policy", tu_path(TU_SOURCE, "cases/policy-fp8.json"), NULL};
    cr_assert_eq(tu_run(g2), 1, "a 10x worse FP8 output fails the gate: %s\n%s", g_err, g_out);
    const char *said = strstr(g_out, "bf16 (FP8 output) limit") ? g_out : g_err;
    cr_assert(strstr(said, json_string_value(json_object_get(c0, "id"))) && strstr(said, "bf16 (FP8 output) limit"),
              "the failing case and the limit it broke: %s\n%s", g_out, g_err);
    json_decref(r);
}

/* ---- the FP8 hypotheses ---- */

Test(fp8, each_injected_fp8_bug_is_named, .init = load, .fini = unload, .timeout = 600)
{
    const fd_case *normal = find("b1h2k2-q128k128-d64-e4m3-causal_br-p0-normal-s41");
    const fd_case *sink = find("b1h2k2-q128k128-d64-e4m3-none-p0-sink-s41");
    const fd_case *e5 = find("b1h2k1-q160k160-d64-e5m2-causal_br-p0-normal-s42");
    int nbugs = 0;
    for (const char *const *bug = fd_explain_bugs; *bug; bug++) {
        if (!fd_explain_bug_is_fp8(*bug)) continue;
        if (!strcmp(*bug, "fp8_p_unscaled")) continue; /* below: an accuracy loss, named under a strict policy */
        nbugs++;
        /* the P bug shows where one key dominates (its P = 2^9 saturates to 448) */
        tu_expect_bug_named(&g_cf, !strcmp(*bug, "fp8_p_saturated") ? sink : normal, "cpu-flash", *bug);
        if (strncmp(*bug, "fp8_p_", 6)) tu_expect_bug_named(&g_cf, e5, "cpu-flash", *bug);
    }
    cr_assert_eq(nbugs, 5, "the FP8 bugs");
    /* not FP8 or descale 1: the injection changes nothing and says why */
    cr_assert(fd_explain_inject_noop(&find("b1h1k1-q64k64-d64-e4m3-none-p0-normal-s43-ds1")->prob, "fp8_v_descale_twice"));
    fd_problem p16 = normal->prob;
    p16.dtype = FD_DT_FP16;
    cr_assert(strstr(fd_explain_inject_noop(&p16, "fp8_p_saturated"), "not an FP8 case"));
    cr_assert(!fd_explain_inject_noop(&normal->prob, "fp8_qk_descale_missing"));
}

Test(fp8, p_unscaled_is_named_under_a_strict_policy, .timeout = 300)
{
    /* Without FlashAttention-3's 2^8, P below 2^-6 lands in e4m3's subnormals: an attention
     * sink over 4096 keys puts every other key there. The loss is small (the gate's fa_ratio
     * 8 of cases/fp8.json lets it pass); at fa_ratio 1 it is flagged and named. */
    char dir[512], path[700];
    tu_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/strict.json", dir);
    tu_write(path, "{\"schema\": \"flashdrift-cases/1\", \"name\": \"strict\", \"rows_per_head\": 8,"
                   " \"flash\": {\"br\": 128, \"bc\": 64, \"qk_order\": \"tc16\", \"pv_order\": \"tc16\", \"exp2\": \"portable\"},"
                   " \"policy\": {\"fa_ratio\": 1.0, \"atol\": 1e-5},"
                   " \"sweeps\": [{\"heads\": 1, \"seqlen\": [[16, 4096]], \"head_dim\": 64, \"dtype\": \"e4m3\","
                   " \"dist\": \"sink\", \"seed\": 44}]}");
    fd_casefile cf;
    char err[1024];
    cr_assert(fd_casefile_load(path, &cf, err, sizeof err) == 0, "%s", err);
    cr_assert_eq(cf.ncases, 1);
    tu_expect_bug_named(&cf, &cf.cases[0], "cpu-flash", "fp8_p_unscaled");
    fd_explain_opts o = {"cpu-flash", NULL, 2};
    fd_explanation ex;
    cr_assert(fd_explain_case(&cf, &cf.cases[0], &o, &ex, err, sizeof err) == 0, "%s", err);
    cr_assert(!ex.gross, "the correct kernel is not flagged: %s", ex.summary);
    fd_explanation_free(&ex);
    fd_casefile_free(&cf);
}

/* ---- case files ---- */

Test(fp8, case_file_errors)
{
    tu_expect_case_error("{\"seqlen\": 16, \"head_dim\": 16, \"dtype\": \"e3m4\"}", "\"e4m3\" or \"e5m2\"");
    tu_expect_case_error("{\"seqlen\": 16, \"head_dim\": 16, \"dtype\": \"e4m3\", \"dropout\": 0.1}", "not modelled for FP8");
    tu_expect_case_error("{\"seqlen\": 16, \"head_dim\": 16, \"dtype\": \"e5m2\", \"softcap\": 30}", "not modelled for FP8");
    tu_expect_case_error("{\"seqlen\": 16, \"head_dim\": 16, \"dtype\": \"e4m3\", \"backward\": true}", "the FP8 path is forward only");
    tu_expect_case_error("{\"seqlen\": 16, \"head_dim\": 16, \"dtype\": \"fp16\", \"fp8_descale\": \"amax\"}", "applies to FP8 dtypes");
    tu_expect_case_error("{\"seqlen\": 16, \"head_dim\": 16, \"dtype\": \"e4m3\", \"fp8_descale\": \"max\"}", "expected \"amax\"");
}
