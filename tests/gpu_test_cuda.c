/* gpu_test_cuda.c: the CUDA backends (kernels/cuda/fd_cuda.h) against a binary64
 * computation done here, on small shapes. Every test that needs a GPU first checks
 * fd_cuda_device_count() and skips when it is 0 (CI builds with nvcc but has no GPU).
 * Criterion forks per test, so each test creates its own CUDA context.
 * Judged as FlashAttention's tests judge: flash's max error vs the binary64 result at
 * most 2x standard attention's (same precision) plus 1e-6; outputs poisoned with NaN
 * must come back fully written; the debug dropout mask must equal fd_fa2_keep bit for
 * bit; fd_exp2_portable must give the same bits on host and device; repeated runs must
 * be bitwise identical. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cpu_attn.h"
#include "fd_cpu_bwd.h"
#include "fd_cuda.h"
#include "fd_dtype.h"
#include "fd_exp2.h"
#include "fd_philox.h"
#include "fd_problem.h"
#include "fd_test_problem.h"

#define SKIP_WITHOUT_GPU()                                                     \
    do {                                                                       \
        if (fd_cuda_device_count() <= 0) cr_skip_test("no CUDA GPU present");  \
    } while (0)

typedef struct {
    fd_problem p;
    float *q, *k, *v;
    double *ro, *rl; /* binary64 reference O and LSE */
} tcase;

static uint64_t rng_state;
static double urand(void) { return tu_urand(&rng_state); }
static float nrand(fd_dtype dt) /* roughly normal, rounded to the dtype */
{
    double s = urand() + urand() + urand() + urand() - 2.0;
    return fd_round_to_dtype((float)(s * 1.7), dt);
}

static void reference(tcase *c)
{
    const fd_problem *p = &c->p;
    const int D = p->head_dim;
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    double *s = malloc(sizeof(double) * (size_t)p->seqlen_k);
    cr_assert_not_null(s);
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++) {
            const int hk = fd_kv_head(p, h);
            for (int i = 0; i < p->seqlen_q; i++) {
                const int nv = fd_mask_visible_count(p->mask, i, p->seqlen_q, p->seqlen_k);
                const size_t li = fd_lse_index(p, b, h, i);
                for (int d = 0; d < D; d++) c->ro[fd_q_index(p, b, i, h, d)] = 0.0;
                if (nv == 0) { c->rl[li] = INFINITY; continue; }
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j < nv; j++) {
                    double a = 0.0;
                    for (int d = 0; d < D; d++)
                        a += (double)c->q[fd_q_index(p, b, i, h, d)] * (double)c->k[fd_kv_index(p, b, j, hk, d)];
                    s[j] = a * (double)p->softmax_scale;
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j < nv; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
                c->rl[li] = mx + log(sum);
                for (int j = 0; j < nv; j++) {
                    double pj = s[j] / sum;
                    if (p->dropout_p > 0.0)
                        pj = fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j) ? pj / (1.0 - p->dropout_p) : 0.0;
                    for (int d = 0; d < D; d++)
                        c->ro[fd_q_index(p, b, i, h, d)] += pj * (double)c->v[fd_kv_index(p, b, j, hk, d)];
                }
            }
        }
    free(s);
}

static void make_case(tcase *c, int B, int H, int Hk, int sq, int sk, int d, fd_dtype dt,
                      fd_mask_kind mask, double pdrop, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    fd_problem *p = &c->p;
    p->batch = B; p->heads = H; p->kv_heads = Hk; p->seqlen_q = sq; p->seqlen_k = sk;
    p->head_dim = d; p->dtype = dt; p->mask = mask;
    p->softmax_scale = (float)(1.0 / sqrt((double)d));
    p->dropout_p = pdrop; p->seed = 0x5eed0000ull + seed; p->offset = 32u * seed;
    rng_state = 0x9E3779B97F4A7C15ull ^ seed;
    const size_t nq = fd_q_numel(p), nk = fd_kv_numel(p);
    c->q = malloc(sizeof(float) * nq); c->k = malloc(sizeof(float) * nk); c->v = malloc(sizeof(float) * nk);
    c->ro = malloc(sizeof(double) * nq); c->rl = malloc(sizeof(double) * fd_lse_numel(p));
    cr_assert(c->q && c->k && c->v && c->ro && c->rl);
    for (size_t x = 0; x < nq; x++) c->q[x] = nrand(dt);
    for (size_t x = 0; x < nk; x++) { c->k[x] = nrand(dt); c->v[x] = nrand(dt); }
    reference(c);
}

static void free_case(tcase *c)
{
    free(c->q); free(c->k); free(c->v); free(c->ro); free(c->rl);
}

/* How many of a[0..n) differ from b[0..n) bit for bit; *first (when not NULL) the first
 * such index, (size_t)-1 when none. */
static size_t bits_differ(const float *a, const float *b, size_t n, size_t *first)
{
    size_t d = 0;
    if (first) *first = (size_t)-1;
    for (size_t x = 0; x < n; x++)
        if (fd_f32_bits(a[x]) != fd_f32_bits(b[x]) && !d++ && first) *first = x;
    return d;
}

static float *poisoned(size_t n)
{
    float *x = malloc(sizeof(float) * n);
    cr_assert_not_null(x);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

/* Max |o - ref| over O; counts NaN (unwritten or broken) entries; checks LSE. */
static double o_error(const tcase *c, const float *o, const float *lse, size_t *nans, double *lse_err)
{
    const size_t nq = fd_q_numel(&c->p), nl = fd_lse_numel(&c->p);
    double e = 0.0, le = 0.0;
    size_t nn = 0;
    for (size_t x = 0; x < nq; x++) {
        if (isnan(o[x])) { nn++; continue; }
        double d = fabs((double)o[x] - c->ro[x]);
        if (d > e) e = d;
    }
    for (size_t x = 0; x < nl; x++) {
        if (isinf(c->rl[x])) {
            if (!(isinf(lse[x]) && lse[x] > 0.0f)) nn++;
            continue;
        }
        if (isnan(lse[x])) { nn++; continue; }
        double d = fabs((double)lse[x] - c->rl[x]);
        if (d > le) le = d;
    }
    *nans = nn;
    if (lse_err) *lse_err = le;
    return e;
}

typedef struct {
    int B, H, Hk, sq, sk, d;
    fd_dtype dt;
    fd_mask_kind mask;
    double p;
    int br, bc, exp2_mode, p_fp32, splits;
} spec;

static const spec specs[] = {
    {1, 2, 2, 128, 128, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, 128, 64, 0, 0, 1},
    {1, 2, 2, 128, 128, 64, FD_DT_BF16, FD_MASK_NONE, 0.0, 64, 64, 0, 0, 2},
    {2, 4, 2, 200, 333, 128, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.0, 128, 64, 0, 0, 3},
    {1, 4, 1, 113, 203, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, 64, 64, 1, 0, 2},
    {1, 2, 2, 300, 100, 32, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.0, 64, 64, 0, 0, 2},
    {1, 2, 1, 77, 1023, 96, FD_DT_FP16, FD_MASK_NONE, 0.0, 128, 64, 1, 0, 4},
    {1, 2, 2, 129, 257, 256, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 128, 64, 0, 0, 2},
    {1, 1, 1, 65, 65, 72, FD_DT_FP16, FD_MASK_NONE, 0.0, 64, 64, 0, 0, 1},
    {1, 2, 2, 100, 100, 40, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.0, 128, 64, 0, 1, 1},
    {2, 2, 2, 256, 256, 64, FD_DT_FP16, FD_MASK_NONE, 0.17, 128, 64, 0, 0, 2},
    {1, 4, 2, 97, 250, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.3, 64, 64, 1, 0, 3},
    {1, 2, 2, 128, 128, 128, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.1, 128, 64, 1, 1, 1},
};

static void cfg_of(const spec *s, fd_cuda_cfg *cfg)
{
    fd_cuda_cfg_default(cfg);
    cfg->br = s->br; cfg->bc = s->bc; cfg->exp2_mode = s->exp2_mode;
    cfg->p_fp32 = s->p_fp32; cfg->splits = s->splits;
}

/* Runs flash, split-KV and standard on every spec; checks the 2x rule and writes. */
Test(gpu_cuda, backends_vs_binary64_2x_rule)
{
    SKIP_WITHOUT_GPU();
    for (size_t si = 0; si < sizeof specs / sizeof specs[0]; si++) {
        const spec *s = &specs[si];
        tcase c;
        make_case(&c, s->B, s->H, s->Hk, s->sq, s->sk, s->d, s->dt, s->mask, s->p, 100 + si);
        const size_t nq = fd_q_numel(&c.p), nl = fd_lse_numel(&c.p);
        float *of = poisoned(nq), *lf = poisoned(nl), *os = poisoned(nq), *ls = poisoned(nl);
        float *ok = poisoned(nq), *lk = poisoned(nl);
        fd_cuda_cfg cfg;
        cfg_of(s, &cfg);
        char err[512] = "";
        cr_assert_eq(fd_cuda_flash_forward(&c.p, &cfg, c.q, c.k, c.v, of, lf, NULL, NULL, err, sizeof err), 0,
                     "case %zu flash: %s", si, err);
        cr_assert_eq(fd_cuda_standard_forward(&c.p, 0, c.q, c.k, c.v, os, ls, NULL, err, sizeof err), 0,
                     "case %zu standard: %s", si, err);
        cr_assert_eq(fd_cuda_splitkv_forward(&c.p, &cfg, c.q, c.k, c.v, ok, lk, NULL, err, sizeof err), 0,
                     "case %zu split-KV: %s", si, err);
        size_t nf, ns, nk;
        double lef, les, lek;
        const double ef = o_error(&c, of, lf, &nf, &lef), es = o_error(&c, os, ls, &ns, &les),
                     ek = o_error(&c, ok, lk, &nk, &lek);
        cr_log_info("case %zu (%s d%d %dx%d mask %d p %.2f): max err flash %.3e split %.3e standard %.3e",
                    si, fd_dtype_name(s->dt), s->d, s->sq, s->sk, (int)s->mask, s->p, ef, ek, es);
        cr_expect_eq(nf + ns + nk, 0, "case %zu: %zu/%zu/%zu NaN or unwritten entries (flash/standard/split)",
                     si, nf, ns, nk);
        cr_expect(ef <= 2.0 * es + 1e-6, "case %zu: flash max error %.3e > 2 x standard %.3e", si, ef, es);
        cr_expect(ek <= 2.0 * es + 1e-6, "case %zu: split-KV max error %.3e > 2 x standard %.3e", si, ek, es);
        cr_expect(es < (s->dt == FD_DT_BF16 ? 3e-2 : 4e-3), "case %zu: standard error %.3e too large", si, es);
        cr_expect(lef < 1e-4 && lek < 1e-4, "case %zu: LSE error flash %.3e split %.3e", si, lef, lek);
        free(of); free(lf); free(os); free(ls); free(ok); free(lk);
        free_case(&c);
    }
}

Test(gpu_cuda, fp32_path_vs_binary64)
{
    SKIP_WITHOUT_GPU();
    tcase c;
    make_case(&c, 1, 2, 1, 100, 150, 64, FD_DT_FP32, FD_MASK_CAUSAL_TL, 0.2, 7);
    const size_t nq = fd_q_numel(&c.p), nl = fd_lse_numel(&c.p);
    float *o = poisoned(nq), *l = poisoned(nl);
    char err[512] = "";
    cr_assert_eq(fd_cuda_flash_forward(&c.p, NULL, c.q, c.k, c.v, o, l, NULL, NULL, err, sizeof err), 0, "%s", err);
    size_t nn;
    double le, e = o_error(&c, o, l, &nn, &le);
    cr_expect_eq(nn, 0, "%zu unwritten entries", nn);
    cr_expect(e < 1e-5, "fp32 path (%s) max error %.3e", fd_cuda_fp32_path(), e);
    free(o); free(l);
    free_case(&c);
}

Test(gpu_cuda, dmask_equals_fa2_keep)
{
    SKIP_WITHOUT_GPU();
    const fd_dtype dts[2] = {FD_DT_FP16, FD_DT_BF16};
    for (int t = 0; t < 2; t++) {
        tcase c;
        /* causal bottom-right with sq > sk: fully masked rows and tiles still carry bits */
        make_case(&c, 2, 3, 3, 150, 97, 64, dts[t], FD_MASK_CAUSAL_BR, t ? 0.5 : 0.17, 40u + (unsigned)t);
        const size_t nq = fd_q_numel(&c.p), nl = fd_lse_numel(&c.p);
        const size_t nm = (size_t)c.p.batch * (size_t)c.p.heads * (size_t)c.p.seqlen_q * (size_t)c.p.seqlen_k;
        float *o = poisoned(nq), *l = poisoned(nl);
        uint8_t *dm = malloc(nm);
        cr_assert_not_null(dm);
        memset(dm, 7, nm);
        fd_cuda_cfg cfg;
        fd_cuda_cfg_default(&cfg);
        cfg.br = t ? 64 : 128;
        char err[512] = "";
        cr_assert_eq(fd_cuda_flash_forward(&c.p, &cfg, c.q, c.k, c.v, o, l, dm, NULL, err, sizeof err), 0, "%s", err);
        const uint8_t thr = fd_fa2_threshold(c.p.dropout_p);
        size_t bad = 0, kept = 0;
        for (int b = 0; b < c.p.batch; b++)
            for (int h = 0; h < c.p.heads; h++)
                for (int i = 0; i < c.p.seqlen_q; i++)
                    for (int j = 0; j < c.p.seqlen_k; j++) {
                        size_t x = (((size_t)b * (size_t)c.p.heads + (size_t)h) * (size_t)c.p.seqlen_q + (size_t)i) *
                                       (size_t)c.p.seqlen_k + (size_t)j;
                        int want = fd_fa2_keep(c.p.seed, c.p.offset, thr, c.p.heads, b, h, i, j);
                        if (dm[x] != want) {
                            if (bad < 3)
                                cr_log_error("b %d h %d row %d col %d: kernel %d, fd_fa2_keep %d", b, h, i, j, dm[x], want);
                            bad++;
                        }
                        kept += dm[x] == 1;
                    }
        cr_expect_eq(bad, 0, "%zu of %zu mask entries differ from fd_fa2_keep (p %.2f)", bad, nm, c.p.dropout_p);
        const double frac = 1.0 - (double)kept / (double)nm;
        cr_expect(fabs(frac - c.p.dropout_p) < 0.02, "drop fraction %.4f for p %.2f", frac, c.p.dropout_p);
        free(o); free(l); free(dm);
        free_case(&c);
    }
}

Test(gpu_cuda, exp2_portable_bit_identical_host_device)
{
    SKIP_WITHOUT_GPU();
    const size_t n = (size_t)1 << 22;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    cr_assert(x && y);
    rng_state = 12345u;
    for (size_t i = 0; i < n; i++) {
        if (i < 1000000) x[i] = -150.0f + 150.0f * (float)i / 1000000.0f; /* even sweep */
        else x[i] = (float)(-160.0 + 170.0 * urand());
    }
    x[0] = -INFINITY; x[1] = 0.0f; x[2] = -149.5f; x[3] = -126.0f; x[4] = NAN; x[5] = 200.0f;
    char err[512] = "";
    cr_assert_eq(fd_cuda_exp2_portable_batch(x, y, n, err, sizeof err), 0, "%s", err);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float h = fd_exp2_portable(x[i]);
        if (memcmp(&h, &y[i], sizeof h) != 0) {
            if (bad < 3) cr_log_error("x = %a: host %a, device %a", (double)x[i], (double)h, (double)y[i]);
            bad++;
        }
    }
    cr_expect_eq(bad, 0, "fd_exp2_portable differs between host and device on %zu of %zu inputs", bad, n);
    free(x); free(y);
}

/* The split-KV combine's portable exp and log: the same bits on host and device over their
 * whole range (and beyond it: the special cases). */
Test(gpu_cuda, portable_exp_and_log_bit_identical_host_device)
{
    SKIP_WITHOUT_GPU();
    const size_t n = (size_t)1 << 22;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
    cr_assert(x && y && z);
    rng_state = 54321u;
    for (size_t i = 0; i < n; i++) {
        if (i < 2000000) x[i] = -110.0f + 200.0f * (float)i / 2000000.0f; /* exp's range and past it */
        else x[i] = ldexpf((float)(0.5 + urand()), (int)(urand() * 280.0) - 150); /* log's */
    }
    x[0] = -INFINITY; x[1] = 0.0f; x[2] = NAN; x[3] = INFINITY; x[4] = -1.0f; x[5] = 0x1p-149f;
    char err[512] = "";
    cr_assert_eq(fd_cuda_expf_portable_batch(x, y, n, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fd_cuda_logf_portable_batch(x, z, n, err, sizeof err), 0, "%s", err);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float he = fd_expf_portable(x[i]), hl = fd_logf_portable(x[i]);
        if (memcmp(&he, &y[i], 4) != 0 || memcmp(&hl, &z[i], 4) != 0) {
            if (bad < 3) cr_log_error("x = %a: exp host %a device %a, log host %a device %a", (double)x[i],
                                      (double)he, (double)y[i], (double)hl, (double)z[i]);
            bad++;
        }
    }
    cr_expect_eq(bad, 0, "fd_expf/logf_portable differ between host and device on %zu of %zu inputs", bad, n);
    free(x); free(y); free(z);
}

Test(gpu_cuda, flash_bitwise_deterministic)
{
    SKIP_WITHOUT_GPU();
    tcase c;
    make_case(&c, 2, 4, 2, 257, 300, 128, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.1, 77);
    const size_t nq = fd_q_numel(&c.p), nl = fd_lse_numel(&c.p);
    float *o0 = poisoned(nq), *l0 = poisoned(nl), *o = poisoned(nq), *l = poisoned(nl);
    fd_cuda_cfg cfg;
    fd_cuda_cfg_default(&cfg);
    char err[512] = "";
    cr_assert_eq(fd_cuda_flash_forward(&c.p, &cfg, c.q, c.k, c.v, o0, l0, NULL, NULL, err, sizeof err), 0, "%s", err);
    for (int r = 0; r < 25; r++) {
        for (size_t x = 0; x < nq; x++) o[x] = NAN;
        cr_assert_eq(fd_cuda_flash_forward(&c.p, &cfg, c.q, c.k, c.v, o, l, NULL, NULL, err, sizeof err), 0, "%s", err);
        cr_assert(memcmp(o, o0, sizeof(float) * nq) == 0 && memcmp(l, l0, sizeof(float) * nl) == 0,
                  "run %d differs bitwise from run 0", r + 1);
    }
    /* and the timed path (repeats) leaves the same bits */
    cfg.repeats = 20;
    fd_cuda_timing t;
    cr_assert_eq(fd_cuda_flash_forward(&c.p, &cfg, c.q, c.k, c.v, o, l, NULL, &t, err, sizeof err), 0, "%s", err);
    cr_expect(memcmp(o, o0, sizeof(float) * nq) == 0, "timed run differs bitwise");
    cr_expect(t.repeats == 20 && t.ms_median > 0.0f && t.ms_min <= t.ms_median, "timing %f %f %d",
              (double)t.ms_median, (double)t.ms_min, t.repeats);
    free(o0); free(l0); free(o); free(l);
    free_case(&c);
}

/* The fast path (no dropout, no modifiers, hardware exp2: the kernel bench times) against the
 * general kernel (FD_FLASH_GEN=1) on the same problem: O and LSE bit for bit. The general
 * kernel's arithmetic is the CPU replay's (sweep cases/replay.json, portable exp2); this
 * ties the timed kernel to it. Head dims 64 and 128 take 32 rows a warp on the fast path,
 * the others 16; partial tiles, GQA, both causal alignments and rows without a key. */
Test(gpu_cuda, fast_path_bit_identical_to_general)
{
    SKIP_WITHOUT_GPU();
    static const struct {
        int B, H, Hk, sq, sk, d, br, bc; fd_dtype dt; fd_mask_kind mask;
    } fs[] = {
        {2, 4, 2, 640, 640, 128, 128, 64, FD_DT_FP16, FD_MASK_NONE},
        {1, 4, 4, 333, 517, 128, 128, 64, FD_DT_BF16, FD_MASK_CAUSAL_TL},
        {1, 4, 1, 517, 333, 64, 128, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR},
        {2, 2, 2, 1000, 1000, 64, 128, 64, FD_DT_BF16, FD_MASK_NONE},
        {1, 2, 2, 300, 100, 128, 64, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR}, /* rows without a key */
        {1, 2, 2, 200, 300, 64, 64, 64, FD_DT_BF16, FD_MASK_CAUSAL_TL},
        {1, 2, 2, 129, 257, 32, 128, 64, FD_DT_FP16, FD_MASK_NONE},
        {1, 2, 1, 77, 1023, 96, 128, 64, FD_DT_BF16, FD_MASK_CAUSAL_BR},
        {1, 2, 2, 129, 200, 256, 64, 64, FD_DT_FP16, FD_MASK_CAUSAL_TL},
        /* key tile 128 (FA2's at head dim 64) */
        {2, 4, 2, 640, 700, 64, 128, 128, FD_DT_FP16, FD_MASK_NONE},
        {1, 4, 4, 517, 333, 64, 128, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR},
        {1, 2, 2, 300, 1000, 40, 128, 128, FD_DT_FP16, FD_MASK_CAUSAL_TL},
    };
    for (size_t t = 0; t < sizeof fs / sizeof fs[0]; t++) {
        tcase c;
        make_case(&c, fs[t].B, fs[t].H, fs[t].Hk, fs[t].sq, fs[t].sk, fs[t].d, fs[t].dt, fs[t].mask, 0.0, 90 + t);
        const size_t nq = fd_q_numel(&c.p), nl = fd_lse_numel(&c.p);
        float *o = poisoned(nq), *l = poisoned(nl), *go = poisoned(nq), *gl = poisoned(nl);
        fd_cuda_cfg cfg;
        fd_cuda_cfg_default(&cfg);
        cfg.br = fs[t].br; cfg.bc = fs[t].bc;
        char err[512] = "";
        unsetenv("FD_FLASH_GEN");
        cr_assert_eq(fd_cuda_flash_forward(&c.p, &cfg, c.q, c.k, c.v, o, l, NULL, NULL, err, sizeof err), 0, "%zu: %s", t, err);
        setenv("FD_FLASH_GEN", "1", 1);
        cr_assert_eq(fd_cuda_flash_forward(&c.p, &cfg, c.q, c.k, c.v, go, gl, NULL, NULL, err, sizeof err), 0, "%zu: %s", t, err);
        unsetenv("FD_FLASH_GEN");
        size_t first, nan = 0;
        for (size_t x = 0; x < nq; x++) nan += o[x] != o[x];
        const size_t diff = bits_differ(o, go, nq, &first), ldiff = bits_differ(l, gl, nl, NULL);
        cr_expect_eq(nan, 0, "spec %zu: %zu O values left unwritten (NaN)", t, nan);
        cr_expect_eq(diff, 0, "spec %zu (d %d, %dx%d): %zu of %zu O values differ from the general kernel's; first at %zu: "
                     "fast %a, general %a", t, fs[t].d, fs[t].br, fs[t].bc, diff, nq, first, first < nq ? (double)o[first] : 0.0,
                     first < nq ? (double)go[first] : 0.0);
        cr_expect_eq(ldiff, 0, "spec %zu: %zu of %zu LSE values differ from the general kernel's", t, ldiff, nl);
        free(o); free(l); free(go); free(gl);
        free_case(&c);
    }
}

/* FA2's tile at head dim 64 without dropout, 128 x 128 (cuda-flash's br 128, bc 128; what
 * `flashdrift bench` times as cuda-flash-bc128): with the portable exp2 the CPU replay with
 * bc = 128 reproduces O and LSE bit for bit (the key tile sets which keys are summed before
 * each rescale; the replay models it). Head dims 33..64, both causal alignments, GQA,
 * partial tiles, rows without a visible key, split-KV. */
Test(gpu_cuda, key_tile_128_replay_bit_identical)
{
    SKIP_WITHOUT_GPU();
    static const struct {
        int B, H, Hk, sq, sk, d, splits; fd_dtype dt; fd_mask_kind mask;
    } fs[] = {
        {2, 4, 2, 640, 700, 64, 1, FD_DT_FP16, FD_MASK_NONE},
        {1, 4, 4, 517, 333, 64, 1, FD_DT_BF16, FD_MASK_CAUSAL_BR}, /* rows without a key */
        {1, 2, 2, 300, 1000, 40, 1, FD_DT_FP16, FD_MASK_CAUSAL_TL},
        {1, 3, 1, 129, 129, 59, 1, FD_DT_BF16, FD_MASK_NONE},
        {1, 2, 2, 200, 900, 64, 3, FD_DT_FP16, FD_MASK_CAUSAL_BR},   /* split-KV */
    };
    for (size_t t = 0; t < sizeof fs / sizeof fs[0]; t++) {
        tcase c;
        make_case(&c, fs[t].B, fs[t].H, fs[t].Hk, fs[t].sq, fs[t].sk, fs[t].d, fs[t].dt, fs[t].mask, 0.0, 110 + t);
        const fd_problem *p = &c.p;
        const size_t nq = fd_q_numel(p), nl = fd_lse_numel(p);
        float *o = poisoned(nq), *lse = poisoned(nl), *ro = poisoned(nq), *rl = poisoned(nl);
        fd_cuda_cfg g;
        fd_cuda_cfg_default(&g);
        g.br = 128; g.bc = 128; g.exp2_mode = 1; g.splits = fs[t].splits;
        fd_flash_cfg r;
        fd_flash_cfg_default(&r);
        r.br = 128; r.bc = 128; r.qk_order = FD_ACC_TC16; r.pv_order = FD_ACC_TC16;
        r.exp2_mode = FD_EXP2_PORTABLE; r.rowsum = FD_ROWSUM_FA2;
        char err[512] = "";
        if (fs[t].splits > 1) {
            cr_assert_eq(fd_cuda_splitkv_forward(p, &g, c.q, c.k, c.v, o, lse, NULL, err, sizeof err), 0, "%zu: %s", t, err);
            cr_assert_eq(fd_cpu_splitkv_forward(p, &r, fs[t].splits, c.q, c.k, c.v, NULL, 0, ro, rl, err, sizeof err), 0, "%zu: %s",
                         t, err);
        } else {
            cr_assert_eq(fd_cuda_flash_forward(p, &g, c.q, c.k, c.v, o, lse, NULL, NULL, err, sizeof err), 0, "%zu: %s", t, err);
            cr_assert_eq(fd_cpu_flash_forward(p, &r, c.q, c.k, c.v, NULL, 0, ro, rl, err, sizeof err), 0, "%zu: %s", t, err);
        }
        size_t first;
        const size_t diff = bits_differ(o, ro, nq, &first), ldiff = bits_differ(lse, rl, nl, NULL);
        cr_expect_eq(diff, 0, "spec %zu (d %d): %zu of %zu O values differ from the replay with bc 128; first at %zu: gpu %a, "
                     "replay %a", t, fs[t].d, diff, nq, first, first < nq ? (double)o[first] : 0.0,
                     first < nq ? (double)ro[first] : 0.0);
        cr_expect_eq(ldiff, 0, "spec %zu: %zu of %zu LSE values differ from the replay with bc 128", t, ldiff, nl);
        free(o); free(lse); free(ro); free(rl);
        free_case(&c);
    }
}

/* Relative l2 distance of a from b (b != 0). */
static double rel_l2_f(const float *a, const float *b, size_t n)
{
    double se = 0.0, sr = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double e = (double)a[i] - (double)b[i];
        se += e * e;
        sr += (double)b[i] * (double)b[i];
    }
    return sr > 0.0 ? sqrt(se / sr) : sqrt(se);
}

/* cuda-standard backward against fd_cpu_standard_backward (the same arithmetic; cuBLAS
 * orders its fp32 sums its own way and the softmax sums by a tree, so a few values round
 * the other way by an ulp of the dtype, and such a flip in P or dS moves the gradients
 * downstream by about that much). Bound on the relative l2 distance: 2u (u = 2^-11
 * fp16, 2^-8 bf16; fp32: 2^-16 for the cancellation in dP - D); a wrong GEMM transpose,
 * scale, mask, dropout or GQA sum is off by O(1). Every output written (NaN-poisoned),
 * rows with no visible key give dQ = 0, and the timing covers the repeats. */
Test(gpu_cuda, standard_backward_vs_cpu)
{
    SKIP_WITHOUT_GPU();
    static const struct { int B, H, Hk, sq, sk, d; fd_dtype dt; fd_mask_kind mask; double p; } bs[] = {
        {2, 4, 2, 70, 50, 64, FD_DT_FP16, FD_MASK_NONE, 0.0},
        {1, 4, 2, 70, 50, 64, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0},
        {1, 4, 2, 90, 40, 32, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.2},
        {1, 4, 4, 33, 130, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.2},
        {2, 4, 1, 64, 64, 64, FD_DT_BF16, FD_MASK_NONE, 0.2},
        {1, 2, 2, 48, 80, 64, FD_DT_FP32, FD_MASK_CAUSAL_TL, 0.0},
    };
    for (size_t si = 0; si < sizeof bs / sizeof bs[0]; si++) {
        tcase c;
        make_case(&c, bs[si].B, bs[si].H, bs[si].Hk, bs[si].sq, bs[si].sk, bs[si].d, bs[si].dt, bs[si].mask,
                  bs[si].p, 300 + si);
        const fd_problem *p = &c.p;
        const size_t nq = fd_q_numel(p), nk = fd_kv_numel(p);
        float *dout = malloc(sizeof(float) * nq);
        cr_assert_not_null(dout);
        for (size_t i = 0; i < nq; i++) dout[i] = nrand(p->dtype);
        float *cq = poisoned(nq), *ck = poisoned(nk), *cv = poisoned(nk);
        float *gq = poisoned(nq), *gk = poisoned(nk), *gv = poisoned(nk);
        char err[512] = "";
        cr_assert_eq(fd_cpu_standard_backward(p, FD_ACC_SEQ, c.q, c.k, c.v, dout, cq, ck, cv, err, sizeof err), 0,
                     "case %zu cpu: %s", si, err);
        fd_cuda_timing tm;
        cr_assert_eq(fd_cuda_standard_backward(p, 2, c.q, c.k, c.v, dout, gq, gk, gv, &tm, err, sizeof err), 0,
                     "case %zu cuda: %s", si, err);
        size_t nan = 0;
        for (size_t i = 0; i < nq; i++) nan += isnan(gq[i]) ? 1u : 0u;
        for (size_t i = 0; i < nk; i++) nan += (isnan(gk[i]) ? 1u : 0u) + (isnan(gv[i]) ? 1u : 0u);
        cr_expect_eq(nan, 0, "case %zu: %zu NaN or unwritten gradient entries", si, nan);
        const double u = p->dtype == FD_DT_FP16 ? 0x1p-11 : p->dtype == FD_DT_BF16 ? 0x1p-8 : 0x1p-17;
        const double eq = rel_l2_f(gq, cq, nq), ek = rel_l2_f(gk, ck, nk), ev = rel_l2_f(gv, cv, nk);
        cr_log_info("case %zu (%s d%d %dx%d mask %d p %.2f): rel l2 vs cpu dQ %.3e dK %.3e dV %.3e (u %.3e), %.3f ms",
                    si, fd_dtype_name(p->dtype), p->head_dim, p->seqlen_q, p->seqlen_k, (int)p->mask, p->dropout_p,
                    eq, ek, ev, u, (double)tm.ms_median);
        cr_expect(eq <= 2 * u && ek <= 2 * u && ev <= 2 * u,
                  "case %zu: cuda-standard backward vs cpu rel l2 dQ %.3e dK %.3e dV %.3e above 2u = %.3e", si, eq, ek,
                  ev, 2 * u);
        for (int b = 0; b < p->batch; b++)
            for (int h = 0; h < p->heads; h++)
                for (int i = 0; i < p->seqlen_q; i++)
                    if (fd_mask_visible_count(p->mask, i, p->seqlen_q, p->seqlen_k) == 0)
                        for (int d = 0; d < p->head_dim; d++)
                            cr_expect(fd_eqf(gq[fd_q_index(p, b, i, h, d)], 0.0f),
                                      "case %zu: row %d has no visible key, dQ must be 0", si, i);
        cr_expect(tm.repeats == 2 && tm.ms_min > 0.0f && tm.ms_min <= tm.ms_median, "case %zu: timing %d %g %g", si,
                  tm.repeats, (double)tm.ms_min, (double)tm.ms_median);
        free(dout); free(cq); free(ck); free(cv); free(gq); free(gk); free(gv);
        free_case(&c);
    }
}

/* Rejections happen before any launch and need no GPU. */
Test(gpu_cuda, unsupported_configs_rejected_clearly)
{
    fd_problem p;
    memset(&p, 0, sizeof p);
    p.batch = 1; p.heads = 2; p.kv_heads = 2; p.seqlen_q = 8; p.seqlen_k = 8; p.head_dim = 300;
    p.dtype = FD_DT_FP16; p.softmax_scale = 0.1f;
    float buf[8 * 2 * 300], o[8 * 2 * 300], l[16];
    for (size_t i = 0; i < sizeof buf / sizeof buf[0]; i++) buf[i] = 0.25f;
    char err[512] = "";
    cr_expect_eq(fd_cuda_flash_forward(&p, NULL, buf, buf, buf, o, l, NULL, NULL, err, sizeof err), -1);
    cr_expect(strstr(err, "head_dim 300 unsupported") != NULL, "message: %s", err);
    p.head_dim = 64; p.kv_heads = 3;
    cr_expect_eq(fd_cuda_standard_forward(&p, 0, buf, buf, buf, o, l, NULL, err, sizeof err), -1);
    cr_expect(strstr(err, "multiple of kv_heads") != NULL, "message: %s", err);
    p.kv_heads = 2;
    fd_cuda_cfg cfg;
    fd_cuda_cfg_default(&cfg);
    cfg.br = 96;
    cr_expect_eq(fd_cuda_flash_forward(&p, &cfg, buf, buf, buf, o, l, NULL, NULL, err, sizeof err), -1);
    cr_expect(strstr(err, "tile 96x64 unsupported") != NULL, "message: %s", err);
    fd_cuda_cfg_default(&cfg);
    cfg.splits = 0;
    cr_expect_eq(fd_cuda_splitkv_forward(&p, &cfg, buf, buf, buf, o, l, NULL, err, sizeof err), -1);
    cr_expect(strstr(err, "splits 0") != NULL, "message: %s", err);
    /* the Hopper kernel declines what it does not run, before any device work */
    fd_cuda_cfg_default(&cfg);
    cfg.impl = FD_CUDA_IMPL_WGMMA;
    p.dropout_p = 0.1;
    cr_expect_eq(fd_cuda_flash_forward(&p, &cfg, buf, buf, buf, o, l, NULL, NULL, err, sizeof err), -1);
    cr_expect(strstr(err, "cuda-flash-sm90") && strstr(err, "no dropout"), "message: %s", err);
    p.dropout_p = 0.0; p.softcap = 30.0f;
    cr_expect_eq(fd_cuda_flash_forward(&p, &cfg, buf, buf, buf, o, l, NULL, NULL, err, sizeof err), -1);
    cr_expect(strstr(err, "softcap") != NULL, "message: %s", err);
    char why[160];
    p.softcap = 0.0f; p.dtype = FD_DT_FP32;
    cr_expect_eq(fd_cuda_sm90_supports(&p, NULL, why, sizeof why), 0);
    cr_expect(strstr(why, "fp16 and bf16 only") != NULL, "why: %s", why);
    p.dtype = FD_DT_BF16;
    cr_expect_eq(fd_cuda_sm90_supports(&p, NULL, why, sizeof why), 1);
}

/* The Hopper kernel (cuda-flash-sm90, wgmma; issue 15 items 2 and 3): with the portable
 * exp2 it is the CPU replay bit for bit (tensor-core block order, FA2's row sum: no new
 * model), O and LSE on every row, rows without a visible key included, for key tiles 64
 * (two and three warpgroups, and S one tile ahead: FD_SM90_PIPE=deep) and 128 (the replay
 * with bc = 128); with the hardware exp2 and
 * key tile 64 it is cuda-flash's mma.sync kernel bit for bit. Skips without an sm_90 GPU. When O
 * differs, the run is repeated with V's descriptor fields swapped (FD_SM90_VDESC=swap) and
 * the message says whether that reading matches. */
Test(gpu_cuda, sm90_replay_bit_identical)
{
    SKIP_WITHOUT_GPU();
    char name[256] = "";
    if (fd_cuda_device_name(name, sizeof name) || !strstr(name, "sm_90")) cr_skip_test("not an sm_90 GPU: %s", name);
    static const struct {
        int B, H, Hk, sq, sk, d; fd_dtype dt; fd_mask_kind mask;
    } fs[] = {
        {2, 4, 2, 640, 640, 128, FD_DT_FP16, FD_MASK_NONE},
        {1, 2, 2, 333, 517, 64, FD_DT_BF16, FD_MASK_CAUSAL_TL},
        {1, 4, 1, 517, 333, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR},
        {1, 2, 2, 64, 64, 64, FD_DT_FP16, FD_MASK_NONE},
        {2, 2, 2, 200, 900, 128, FD_DT_FP16, FD_MASK_CAUSAL_BR},
        {1, 2, 2, 1, 300, 128, FD_DT_FP16, FD_MASK_NONE},
        {1, 2, 2, 300, 100, 96, FD_DT_BF16, FD_MASK_CAUSAL_BR}, /* rows without a key; d 96 -> 128 */
        {1, 3, 3, 257, 129, 40, FD_DT_FP16, FD_MASK_CAUSAL_TL}, /* d 40 -> 64 */
        {1, 4, 2, 300, 333, 256, FD_DT_BF16, FD_MASK_CAUSAL_TL}, /* d 256: one warpgroup */
        {2, 2, 2, 129, 200, 200, FD_DT_FP16, FD_MASK_NONE},      /* d 200 -> 256 */
    };
    for (size_t t = 0; t < sizeof fs / sizeof fs[0]; t++) {
        tcase c;
        make_case(&c, fs[t].B, fs[t].H, fs[t].Hk, fs[t].sq, fs[t].sk, fs[t].d, fs[t].dt, fs[t].mask, 0.0, 70 + t);
        const fd_problem *p = &c.p;
        const size_t nq = fd_q_numel(p), nl = fd_lse_numel(p);
        float *o = poisoned(nq), *lse = poisoned(nl), *ro = poisoned(nq), *rl = poisoned(nl);
        fd_cuda_cfg g;
        char err[512];
        /* the shapes: key tile 64 with two and three warpgroups, key tile 128 */
        /* TMA: the ping-pong between warpgroups (the default) and each at its own pace (free) */
        static const struct { int bc; const char *wg, *pipe, *ld, *sched; } vs[] = {
            {64, "2", "", "cpasync", ""}, {64, "3", "", "cpasync", ""}, {128, "2", "", "cpasync", ""},
            {64, "2", "deep", "cpasync", ""}, {64, "2", "", "tma", "pingpong"}, {64, "3", "", "tma", "pingpong"},
            {128, "2", "", "tma", "pingpong"}, {64, "2", "deep", "tma", "pingpong"}, {64, "3", "", "tma", "free"},
            {128, "2", "", "tma", "free"}};
        for (size_t u = 0; u < sizeof vs / sizeof vs[0]; u++) {
            /* head dims above 128: key tile 64, one warpgroup whatever FD_SM90_WG says, no deep */
            if (fs[t].d > 128 && (vs[u].bc != 64 || *vs[u].pipe)) continue;
            fd_cuda_cfg_default(&g);
            g.impl = FD_CUDA_IMPL_WGMMA; g.exp2_mode = 1; g.bc = vs[u].bc;
            fd_flash_cfg r;
            fd_flash_cfg_default(&r);
            r.br = 128; r.bc = vs[u].bc; r.qk_order = FD_ACC_TC16; r.pv_order = FD_ACC_TC16;
            r.exp2_mode = FD_EXP2_PORTABLE; r.rowsum = FD_ROWSUM_FA2;
            setenv("FD_SM90_WG", vs[u].wg, 1); /* "2" or "3": every shape explicitly */
            setenv("FD_SM90_PIPE", vs[u].pipe, 1);
            setenv("FD_SM90_LOAD", vs[u].ld, 1); /* cp.async or TMA with a producer warpgroup */
            setenv("FD_SM90_SCHED", vs[u].sched, 1);
            cr_assert_eq(fd_cuda_flash_forward(p, &g, c.q, c.k, c.v, o, lse, NULL, NULL, err, sizeof err), 0, "%zu: %s", t, err);
            cr_assert_eq(fd_cpu_flash_forward(p, &r, c.q, c.k, c.v, NULL, 0, ro, rl, err, sizeof err), 0, "%zu: %s", t, err);
            size_t first;
            const size_t diff = bits_differ(o, ro, nq, &first), ldiff = bits_differ(lse, rl, nl, NULL);
            long sdiff = -1; /* -1: the swapped run failed */
            if (diff) { /* the other reading of V's descriptor, for the message */
                setenv("FD_SM90_VDESC", "swap", 1);
                float *o2 = poisoned(nq), *l2 = poisoned(nl);
                if (!fd_cuda_flash_forward(p, &g, c.q, c.k, c.v, o2, l2, NULL, NULL, err, sizeof err))
                    sdiff = (long)bits_differ(o2, ro, nq, NULL);
                unsetenv("FD_SM90_VDESC");
                free(o2); free(l2);
            }
            unsetenv("FD_SM90_WG");
            unsetenv("FD_SM90_PIPE");
            unsetenv("FD_SM90_LOAD");
            unsetenv("FD_SM90_SCHED");
            cr_expect_eq(diff, 0, "spec %zu, bc %d, %s warpgroups %s %s %s: %zu of %zu O elements differ from the replay; first at "
                         "%zu: gpu %a, replay %a (with V's LBO/SBO swapped: %ld differ; -1: that run failed)", t, vs[u].bc, vs[u].wg, vs[u].pipe, vs[u].ld, vs[u].sched, diff, nq,
                         first, first < nq ? (double)o[first] : 0.0, first < nq ? (double)ro[first] : 0.0, sdiff);
            cr_expect_eq(ldiff, 0, "spec %zu, bc %d, %s warpgroups %s: %zu of %zu LSE values differ from the replay", t,
                         vs[u].bc, vs[u].wg, vs[u].ld, ldiff, nl);
        }
        g.bc = 64;
        /* hardware exp2: the mma.sync kernel's bits */
        g.exp2_mode = 0;
        cr_assert_eq(fd_cuda_flash_forward(p, &g, c.q, c.k, c.v, o, lse, NULL, NULL, err, sizeof err), 0, "%zu: %s", t, err);
        g.impl = FD_CUDA_IMPL_MMA;
        cr_assert_eq(fd_cuda_flash_forward(p, &g, c.q, c.k, c.v, ro, rl, NULL, NULL, err, sizeof err), 0, "%zu: %s", t, err);
        const size_t diff = bits_differ(o, ro, nq, NULL), ldiff = bits_differ(lse, rl, nl, NULL);
        cr_expect_eq(diff + ldiff, 0, "spec %zu, hardware exp2: %zu O and %zu LSE values differ from cuda-flash's", t, diff, ldiff);
        free(o); free(lse); free(ro); free(rl);
        free_case(&c);
    }
}

/* Window, ALiBi and softcap (fd_mods.h): cuda-flash with the portable exp2 is the CPU
 * replay (tensor-core block order for QK^T and PV, FA2's row sum) bit for bit in O, every
 * row (empty rows included: O = 0, LSE = +Inf); the LSE within CUDA logf's ulp. */
Test(gpu_cuda, features_replay_bit_identical)
{
    SKIP_WITHOUT_GPU();
    static const struct {
        int H, Hk, sq, sk, d; fd_dtype dt; fd_mask_kind mask; int win, wl, wr; float cap; int alibi; double p; int br;
    } fs[] = {
        {2, 2, 200, 333, 64, FD_DT_FP16, FD_MASK_NONE, 1, 40, 7, 0.0f, 0, 0.0, 128},
        {2, 1, 333, 200, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 1, 65, 0, 0.0f, 0, 0.0, 64},
        {2, 2, 150, 150, 64, FD_DT_FP16, FD_MASK_NONE, 1, -1, 3, 0.0f, 0, 0.0, 128},
        {4, 2, 113, 203, 128, FD_DT_FP16, FD_MASK_NONE, 0, 0, 0, 0.0f, 1, 0.0, 128},
        {4, 4, 203, 113, 64, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0, 0, 0, 0.0f, 1, 0.0, 64},
        {2, 2, 128, 256, 128, FD_DT_BF16, FD_MASK_NONE, 0, 0, 0, 30.0f, 0, 0.0, 128},
        {2, 2, 256, 256, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0, 0, 0, 5.0f, 0, 0.0, 128},
        {4, 2, 190, 300, 128, FD_DT_FP16, FD_MASK_CAUSAL_BR, 1, 50, 0, 20.0f, 1, 0.1, 128},
        {4, 4, 300, 190, 64, FD_DT_BF16, FD_MASK_NONE, 1, 30, 30, 50.0f, 1, 0.0, 64},
    };
    for (size_t t = 0; t < sizeof fs / sizeof fs[0]; t++) {
        tcase c;
        make_case(&c, 1, fs[t].H, fs[t].Hk, fs[t].sq, fs[t].sk, fs[t].d, fs[t].dt, fs[t].mask, fs[t].p, 40 + t);
        fd_problem *p = &c.p;
        p->window = fs[t].win; p->window_left = fs[t].wl; p->window_right = fs[t].wr;
        p->softcap = fs[t].cap; p->alibi = fs[t].alibi;
        fd_alibi_default_slopes(p->heads, p->alibi_slopes);
        const size_t nq = fd_q_numel(p), nl = fd_lse_numel(p);
        float *o = poisoned(nq), *lse = poisoned(nl), *ro = poisoned(nq), *rl = poisoned(nl);
        fd_cuda_cfg g;
        fd_cuda_cfg_default(&g);
        g.br = fs[t].br; g.bc = 64; g.exp2_mode = 1;
        fd_flash_cfg r;
        fd_flash_cfg_default(&r);
        r.br = fs[t].br; r.bc = 64; r.qk_order = FD_ACC_TC16; r.pv_order = FD_ACC_TC16;
        r.exp2_mode = FD_EXP2_PORTABLE; r.rowsum = FD_ROWSUM_FA2;
        char err[512];
        cr_assert_eq(fd_cuda_flash_forward(p, &g, c.q, c.k, c.v, o, lse, NULL, NULL, err, sizeof err), 0, "%zu: %s", t, err);
        cr_assert_eq(fd_cpu_flash_forward(p, &r, c.q, c.k, c.v, NULL, 0, ro, rl, err, sizeof err), 0, "%zu: %s", t, err);
        size_t diff = 0, first = (size_t)-1, ldiff = 0, empty = 0;
        for (size_t x = 0; x < nq; x++)
            if (fd_f32_bits(o[x]) != fd_f32_bits(ro[x])) { if (!diff++) first = x; }
        /* LSE: CUDA's logf is within 1 ulp of glibc's, so the LSE may differ by an ulp;
         * +Inf (empty rows) must agree exactly */
        for (size_t x = 0; x < nl; x++) {
            ldiff += fd_f32_bits(lse[x]) != fd_f32_bits(rl[x]); /* fd_logf_portable on both sides */
            empty += isinf(rl[x]);
        }
        cr_expect_eq(diff, 0, "spec %zu: %zu of %zu O elements differ from the replay; first at %zu: gpu %a, replay %a",
                     t, diff, nq, first, first < nq ? (double)o[first] : 0.0, first < nq ? (double)ro[first] : 0.0);
        cr_expect_eq(ldiff, 0, "spec %zu: %zu of %zu LSE values differ from the replay", t, ldiff, nl);
        (void)empty;
        free(o); free(lse); free(ro); free(rl);
        free_case(&c);
    }
}

/* Variable-length batches (issue 13 item 4): cuda-flash on a packed batch (a CTA per
 * (q tile, head, sequence), tiles from each sequence's start, early exit past its end) is
 * the CPU replay bit for bit in O on every row (empty sequences, rows without a visible key
 * and one-token sequences included), the LSE within an ulp; the fp32 path agrees with the
 * replay to 1e-5; split-KV refuses varlen. */
Test(gpu_cuda, varlen_replay_bit_identical)
{
    SKIP_WITHOUT_GPU();
    static const struct {
        int n, lq[6], lk[6], H, Hk, d; fd_dtype dt; fd_mask_kind mask; int win, wl, wr; float cap; int alibi, br;
    } vs[] = {
        {6, {37, 130, 1, 64, 0, 90}, {37, 130, 1, 64, 0, 90}, 2, 2, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0, 0, 0, 0.0f, 0, 128},
        {4, {20, 77, 5, 150}, {60, 40, 5, 200}, 4, 2, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0, 0, 0, 0.0f, 0, 64},
        {4, {20, 77, 5, 150}, {60, 40, 5, 200}, 4, 2, 32, FD_DT_FP16, FD_MASK_NONE, 0, 0, 0, 0.0f, 0, 128},
        {3, {100, 70, 33}, {130, 70, 16}, 2, 2, 64, FD_DT_BF16, FD_MASK_NONE, 1, 33, 7, 0.0f, 0, 128},
        {3, {50, 129, 3}, {50, 129, 3}, 4, 4, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0, 0, 0, 30.0f, 1, 64},
        {3, {16, 65, 2}, {80, 65, 3}, 2, 1, 96, FD_DT_FP16, FD_MASK_CAUSAL_TL, 1, 20, -1, 0.0f, 1, 128},
        {3, {40, 3, 70}, {12, 50, 70}, 2, 2, 64, FD_DT_FP32, FD_MASK_CAUSAL_BR, 0, 0, 0, 0.0f, 1, 128},
    };
    for (size_t t = 0; t < sizeof vs / sizeof vs[0]; t++) {
        int tq = 0, tk = 0;
        for (int s = 0; s < vs[t].n; s++) { tq += vs[t].lq[s]; tk += vs[t].lk[s]; }
        tcase c;
        make_case(&c, 1, vs[t].H, vs[t].Hk, tq, tk, vs[t].d, vs[t].dt, vs[t].mask, 0.0, 70 + t);
        fd_problem *p = &c.p;
        p->varlen = vs[t].n;
        for (int s = 0; s < vs[t].n; s++) {
            p->cu_seqlens_q[s + 1] = p->cu_seqlens_q[s] + vs[t].lq[s];
            p->cu_seqlens_k[s + 1] = p->cu_seqlens_k[s] + vs[t].lk[s];
        }
        p->window = vs[t].win; p->window_left = vs[t].wl; p->window_right = vs[t].wr;
        p->softcap = vs[t].cap; p->alibi = vs[t].alibi;
        fd_alibi_default_slopes(p->heads, p->alibi_slopes);
        const size_t nq = fd_q_numel(p), nl = fd_lse_numel(p);
        float *o = poisoned(nq), *lse = poisoned(nl), *ro = poisoned(nq), *rl = poisoned(nl);
        const int fp32 = p->dtype == FD_DT_FP32;
        fd_cuda_cfg g;
        fd_cuda_cfg_default(&g);
        g.br = vs[t].br; g.bc = 64; g.exp2_mode = 1;
        fd_flash_cfg r;
        fd_flash_cfg_default(&r);
        r.br = vs[t].br; r.bc = fp32 ? 32 : 64;
        r.qk_order = r.pv_order = fp32 ? FD_ACC_SEQ : FD_ACC_TC16;
        r.exp2_mode = FD_EXP2_PORTABLE; r.rowsum = fp32 ? FD_ROWSUM_SEQ : FD_ROWSUM_FA2;
        char err[512];
        cr_assert_eq(fd_cuda_flash_forward(p, &g, c.q, c.k, c.v, o, lse, NULL, NULL, err, sizeof err), 0, "%zu: %s", t, err);
        cr_assert_eq(fd_cpu_flash_forward(p, &r, c.q, c.k, c.v, NULL, 0, ro, rl, err, sizeof err), 0, "%zu: %s", t, err);
        size_t diff = 0, first = (size_t)-1, ldiff = 0;
        double maxd = 0.0;
        for (size_t x = 0; x < nq; x++) {
            if (fd_f32_bits(o[x]) != fd_f32_bits(ro[x]) && !diff++) first = x;
            const double e = fabs((double)o[x] - (double)ro[x]);
            maxd = e > maxd || isnan(e) ? e : maxd;
        }
        for (size_t x = 0; x < nl; x++) {
            ldiff += fd_f32_bits(lse[x]) != fd_f32_bits(rl[x]); /* fd_logf_portable on both sides */
        }
        if (fp32)
            cr_expect(maxd <= 1e-5, "spec %zu (fp32): max |gpu - replay| %g", t, maxd);
        else
            cr_expect_eq(diff, 0, "spec %zu: %zu of %zu O elements differ from the replay; first at %zu: gpu %a, replay %a",
                         t, diff, nq, first, first < nq ? (double)o[first] : 0.0, first < nq ? (double)ro[first] : 0.0);
        if (!fp32) cr_expect_eq(ldiff, 0, "spec %zu: %zu of %zu LSE values differ from the replay", t, ldiff, nl);
        if (t == 0) {
            g.splits = 2;
            cr_expect_eq(fd_cuda_splitkv_forward(p, &g, c.q, c.k, c.v, o, lse, NULL, err, sizeof err), -1);
            cr_expect(strstr(err, "varlen") != NULL, "%s", err);
        }
        free(o); free(lse); free(ro); free(rl);
        free_case(&c);
    }
}

/* Ordered distance, in units in the last place of dtype t, between two values of t. */
static long dtype_ulps(float a, float b, fd_dtype t)
{
    const int bf = t == FD_DT_BF16;
    long ia = bf ? fd_f32_to_bf16_bits(a) : fd_f32_to_f16_bits(a);
    long ib = bf ? fd_f32_to_bf16_bits(b) : fd_f32_to_f16_bits(b);
    ia = (ia & 0x8000) ? -(ia & 0x7fff) : ia;
    ib = (ib & 0x8000) ? -(ib & 0x7fff) : ib;
    return ia > ib ? ia - ib : ib - ia;
}

/* Paged KV cache (issue 13 item 5): cuda-splitkv reading a shuffled block table on the
 * device (pages of 16 and 256 tokens, entries of various cache_seqlens, seqlen_q 1..16,
 * GQA, causal bottom-right to cache_seqlens and not, FA2's heuristic split count and a
 * fixed one) against cpu-splitkv: O within one ulp of the dtype, on at most 0.1% of the
 * elements not bit-identical, the LSE within two binary32 ulps; cuda-flash refuses paged
 * problems (FA2 sends them to its split kernel). Not bit for bit: the split-KV path (paged
 * or not) takes each split's LSE with logf and the combine's weights with expf and logf,
 * CUDA's (up to 1 and 2 ulps off, CUDA C Programming Guide, "Mathematical functions")
 * against glibc's on the CPU; on the H200 (2026-12-03) 4 of 33,856 O elements here, 1 ulp
 * each (docs/features.md, "Paged KV cache"). */
Test(gpu_cuda, paged_replay_bit_identical)
{
    SKIP_WITHOUT_GPU();
    static const struct {
        int B, cs[4], ps, np, H, Hk, sq, d; fd_dtype dt; fd_mask_kind mask; int splits;
    } vs[] = {
        {4, {1000, 37, 513, 2048}, 16, 128, 4, 1, 1, 128, FD_DT_FP16, FD_MASK_NONE, 0},
        {4, {1000, 37, 513, 2048}, 256, 8, 4, 1, 4, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0},
        {2, {300, 17, 0, 0}, 16, 19, 4, 4, 16, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0},
        {2, {40, 20, 0, 0}, 16, 3, 2, 2, 2, 32, FD_DT_BF16, FD_MASK_CAUSAL_BR, 3},
        {1, {1500, 0, 0, 0}, 256, 6, 32, 8, 1, 128, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0},
        {3, {129, 64, 200, 0}, 32, 7, 2, 1, 5, 96, FD_DT_FP16, FD_MASK_NONE, 5},
        {2, {700, 65, 0, 0}, 16, 44, 2, 2, 8, 256, FD_DT_BF16, FD_MASK_CAUSAL_BR, 2},
    };
    for (size_t t = 0; t < sizeof vs / sizeof vs[0]; t++) {
        tcase c;
        make_case(&c, vs[t].B, vs[t].H, vs[t].Hk, vs[t].sq, vs[t].np * vs[t].ps, vs[t].d, vs[t].dt, vs[t].mask, 0.0, 90 + t);
        fd_problem *p = &c.p;
        const int nt = vs[t].B * vs[t].np;
        int *table = malloc(sizeof(int) * (size_t)nt);
        cr_assert_not_null(table);
        for (int x = 0; x < nt; x++) table[x] = x;
        for (int x = nt - 1; x > 0; x--) { /* shuffled */
            const int y = (int)(urand() * (double)(x + 1));
            const int z = table[x]; table[x] = table[y]; table[y] = z;
        }
        p->page_size = vs[t].ps;
        p->num_pages = nt;
        p->block_table = table;
        for (int b = 0; b < vs[t].B; b++) p->cache_seqlens[b] = vs[t].cs[b];
        const int splits = fd_splitkv_splits(p, vs[t].splits, 132);
        const size_t nq = fd_q_numel(p), nl = fd_lse_numel(p);
        float *o = poisoned(nq), *lse = poisoned(nl), *ro = poisoned(nq), *rl = poisoned(nl);
        fd_cuda_cfg g;
        fd_cuda_cfg_default(&g);
        g.br = 64; g.bc = 64; g.exp2_mode = 1; g.splits = splits;
        fd_flash_cfg r;
        fd_flash_cfg_default(&r);
        r.br = 64; r.bc = 64;
        r.qk_order = r.pv_order = FD_ACC_TC16;
        r.exp2_mode = FD_EXP2_PORTABLE; r.rowsum = FD_ROWSUM_FA2;
        char err[512];
        cr_assert_eq(fd_cuda_splitkv_forward(p, &g, c.q, c.k, c.v, o, lse, NULL, err, sizeof err), 0, "%zu: %s", t, err);
        cr_assert_eq(fd_cpu_splitkv_forward(p, &r, splits, c.q, c.k, c.v, NULL, 0, ro, rl, err, sizeof err), 0, "%zu: %s", t, err);
        size_t diff = 0, first = (size_t)-1, ldiff = 0, nan = 0;
        long maxu = 0;
        for (size_t x = 0; x < nq; x++) {
            if (isnan(o[x]) || isnan(ro[x])) {
                nan += isnan(o[x]) != isnan(ro[x]);
                continue;
            }
            if (fd_f32_bits(o[x]) == fd_f32_bits(ro[x])) continue;
            if (!diff++) first = x;
            const long u = dtype_ulps(o[x], ro[x], vs[t].dt);
            if (u > maxu) maxu = u;
        }
        for (size_t x = 0; x < nl; x++)
            ldiff += fd_f32_bits(lse[x]) != fd_f32_bits(rl[x]);
        cr_expect_eq(nan, 0, "spec %zu: %zu O elements NaN on one side only", t, nan);
        cr_expect(diff == 0,
                  "spec %zu (%d splits): %zu of %zu O elements differ from the replay, up to %ld ulps; first at %zu: "
                  "gpu %a, replay %a", t, splits, diff, nq, maxu, first, first < nq ? (double)o[first] : 0.0,
                  first < nq ? (double)ro[first] : 0.0);
        cr_expect_eq(ldiff, 0, "spec %zu: %zu of %zu LSE values differ from the replay", t, ldiff, nl);
        printf("paged spec %zu: %d splits, %zu O elements, %zu differ (at most %ld ulp)\n", t, splits, nq, diff, maxu);
        if (t == 0) {
            cr_expect_eq(fd_cuda_flash_forward(p, &g, c.q, c.k, c.v, o, lse, NULL, NULL, err, sizeof err), -1);
            cr_expect(strstr(err, "split-KV") != NULL, "%s", err);
        }
        free(o); free(lse); free(ro); free(rl); free(table);
        free_case(&c);
    }
}

/* Out-of-bounds guards (issue 13 item 7): writes outside a guarded buffer are reported
 * with their side and distance; writes inside it are not. */
Test(gpu_cuda, guards_report_out_of_bounds_writes)
{
    SKIP_WITHOUT_GPU();
    char err[512];
    cr_expect_eq(fd_cuda_guard_selftest(0, 1024, err, sizeof err), 0, "in bounds: %s", err);
    cr_expect_eq(fd_cuda_guard_selftest(0, 1026, err, sizeof err), -1);
    cr_expect(strstr(err, "past the end of the self-test buffer (4096 bytes): 8 guard bytes changed, the first at byte +0") != NULL,
              "%s", err);
    cr_expect_eq(fd_cuda_guard_selftest(1030, 1031, err, sizeof err), -1);
    cr_expect(strstr(err, "the first at byte +24") != NULL, "%s", err);
    cr_expect_eq(fd_cuda_guard_selftest(-3, 10, err, sizeof err), -1);
    cr_expect(strstr(err, "before the start of the self-test buffer: 12 guard bytes changed, the nearest at byte -1 ") != NULL,
              "%s", err);
}
