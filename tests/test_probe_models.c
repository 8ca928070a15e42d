/* test_probe_models.c: the candidate models of the tensor-core probes (tests/fd_probe.h),
 * on the CPU: the block-FMA candidate with 16 terms, F = 25 and truncation must reproduce
 * the published H100 mma.sync data bit for bit and agree with the library's FD_ACC_TC16
 * on the probe's crafted inputs (so a candidate's count on the GPU means what it says),
 * and the generators must give exact values of each format. */
#include <criterion/criterion.h>
#define PF_NO_CUDA 1
#include "fd_probe.h"
#include "fd_tc_data.h"

static void published(const char *dir, int fi)
{
    tc_data *d = tc_load(dir);
    const pf_model m = {16, 25, 0, 0, "b16-F25-rz"};
    int ok = 0, first = -1;
    for (int i = 0; i < d->n; i++) {
        const int same = fd_f32_bits(pf_dot(d->a[i], d->b[i], 16, d->c[i], pf_fmts[fi].emin, &m)) == d->d[i];
        ok += same;
        if (!same && first < 0) first = i;
    }
    cr_assert_eq(ok, d->n, "%s: the probe's b16-F25-rz candidate reproduces %d of %d (first miss: case %d)", dir, ok,
                 d->n, first);
    /* and the variants the published data rejects stay rejected */
    const pf_model rn = {16, 25, 1, 0, "b16-F25-rn"}, f24 = {16, 24, 0, 0, "b16-F24-rz"};
    int nrn = 0, n24 = 0;
    for (int i = 0; i < d->n; i++) {
        nrn += fd_f32_bits(pf_dot(d->a[i], d->b[i], 16, d->c[i], pf_fmts[fi].emin, &rn)) == d->d[i];
        n24 += fd_f32_bits(pf_dot(d->a[i], d->b[i], 16, d->c[i], pf_fmts[fi].emin, &f24)) == d->d[i];
    }
    cr_expect_lt(nrn, d->n);
    cr_expect_lt(n24, d->n);
    /* and it is fd_tc_data.h's independent implementation of the same model */
    for (int i = 0; i < d->n; i++)
        cr_assert(pf_same(pf_dot(d->a[i], d->b[i], 16, d->c[i], pf_fmts[fi].emin, &m),
                          indep_block(d->a[i], d->b[i], d->c[i], pf_fmts[fi].emin, 2, 0)), "%s case %d", dir, i);
}

Test(probe_models, published_fp16) { published("fp16", PF_FP16); }
Test(probe_models, published_bf16) { published("bf16", PF_BF16); }

Test(probe_models, candidate_equals_library_on_crafted_inputs)
{
    for (int fi = PF_FP16; fi <= PF_BF16; fi++) {
        pf_set s;
        cr_assert_eq(pf_set_alloc(&s, "wgmma", fi, 64, 2000, 0x51ed270bu), 0);
        const pf_model m = {16, 25, 0, 0, "b16-F25-rz"};
        const fd_dtype t = fi == PF_BF16 ? FD_DT_BF16 : FD_DT_FP16;
        for (int i = 0; i < s.n; i++) {
            const float *a = s.a + (size_t)i * 64, *b = s.b + (size_t)i * 64;
            const float x = pf_dot(a, b, 64, s.c[i], pf_fmts[fi].emin, &m);
            const float y = fd_dot_acc_dt(FD_ACC_TC16, a, 1, b, 1, 64, s.c[i], t);
            cr_assert(pf_same(x, y), "%s block %d (%s): candidate %a, FD_ACC_TC16 %a", pf_fmts[fi].name, i,
                      pf_cat_names[s.cat[i]], (double)x, (double)y);
        }
        pf_set_free(&s);
    }
}

/* Every generated input is a finite value of its format: in range, with at most prec
 * significant bits, and on the subnormal grid below the minimum exponent. */
Test(probe_models, generated_values_are_exact)
{
    for (int fi = 0; fi < 4; fi++) {
        const pf_fmt *f = &pf_fmts[fi];
        const double maxv = fi == PF_E4M3 ? 448.0 : ldexp(2.0 - ldexp(1.0, 1 - f->prec), f->emax);
        for (int k = 16; k <= 512; k *= 2) {
            pf_set s;
            cr_assert_eq(pf_set_alloc(&s, "wgmma", fi, k, 400, 0x9d2c5680u), 0);
            for (size_t i = 0; i < (size_t)s.n * (size_t)k; i++)
                for (int w = 0; w < 2; w++) {
                    const double x = fabs((double)(w ? s.b[i] : s.a[i]));
                    cr_assert(isfinite(x) && x <= maxv, "%s: %a out of range", f->name, x);
                    if (fpclassify(x) == FP_ZERO) continue;
                    const int e = pf_expo(x, f->emin);
                    const double m = ldexp(x, f->prec - 1 - e);
                    cr_assert(fd_f32_bits((float)(m - floor(m))) == 0, "%s: %a is not a value of the format", f->name, x);
                }
            pf_set_free(&s);
        }
    }
}

/* The probe's table on the stored H200 FP8 sets (tests/data/tensor-core-h200): the
 * library's measured model of each instruction reproduces every block, and pf_judge says
 * so on the set's line (what models.txt prints on the next device run). */
static int read_words(const char *path, float *x, size_t cap, int hex)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char w[64];
    int n = 0;
    while ((size_t)n < cap && fscanf(f, "%63s", w) == 1)
        x[n++] = fd_bits_f32((uint32_t)strtoul(w, NULL, hex ? 16 : 2));
    fclose(f);
    return n;
}

static void judge_stored(const char *instr, const char *fmt, int fi)
{
    enum { N = 4000, K = 32 };
    pf_set s;
    memset(&s, 0, sizeof s);
    s.instr = instr; s.fi = fi; s.k = K; s.ik = 32; s.n = N;
    s.a = calloc((size_t)N * K, sizeof(float)); s.b = calloc((size_t)N * K, sizeof(float));
    s.c = calloc(N, sizeof(float)); s.d = calloc(N, sizeof(float)); s.cat = calloc(N, 1);
    cr_assert(s.a && s.b && s.c && s.d && s.cat);
    char rel[256];
    snprintf(rel, sizeof rel, "tensor-core-h200/mma-%s-k32/a_H200_%s.txt", fmt, fmt);
    cr_assert_eq(read_words(tu_path(TU_DATA, rel), s.a, (size_t)N * K, 1), N * K, "%s", rel);
    snprintf(rel, sizeof rel, "tensor-core-h200/mma-%s-k32/b_H200_%s.txt", fmt, fmt);
    cr_assert_eq(read_words(tu_path(TU_DATA, rel), s.b, (size_t)N * K, 1), N * K, "%s", rel);
    snprintf(rel, sizeof rel, "tensor-core-h200/mma-%s-k32/c_H200_fp32.txt", fmt);
    cr_assert_eq(read_words(tu_path(TU_DATA, rel), s.c, N, 0), N, "%s", rel);
    snprintf(rel, sizeof rel, "tensor-core-h200/%s-%s-k32/d_H200_fp32.txt", instr, fmt);
    cr_assert_eq(read_words(tu_path(TU_DATA, rel), s.d, N, 0), N, "%s", rel);
    for (int i = 0; i < N; i++) s.cat[i] = (unsigned char)(i % PF_NCAT);
    FILE *f = tmpfile();
    cr_assert(f);
    int best;
    char bname[64];
    pf_judge(&s, f, &best, bname, sizeof bname);
    rewind(f);
    char line[512] = "";
    cr_assert(fgets(line, sizeof line, f));
    fclose(f);
    char want[96];
    snprintf(want, sizeof want, "%s %d\n", instr[0] == 'w' ? "FD_TC_FP8_WGMMA_SM90" : "FD_TC_FP8_MMA_SM90", N);
    cr_assert(strstr(line, want), "%s-%s-k32: %s", instr, fmt, line);
    pf_set_free(&s);
}
Test(probe_models, h200_mma_e4m3_measured_model, .timeout = 300) { judge_stored("mma", "e4m3", PF_E4M3); }
Test(probe_models, h200_wgmma_e5m2_measured_model, .timeout = 300) { judge_stored("wgmma", "e5m2", PF_E5M2); }
