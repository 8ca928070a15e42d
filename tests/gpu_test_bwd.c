/* gpu_test_bwd.c: cuda-flash's backward (fd_cuda_flash_backward) against the CPU replay
 * of fd_bwd.h's contract (fd_cpu_flash_backward). Every test that needs a GPU first
 * checks fd_cuda_device_count() and skips when it is 0 (CI builds with nvcc but has no
 * GPU). O and LSE are the CUDA forward's own outputs (portable exp2, so the replay's
 * exp2 is the kernel's bit for bit), fed to both sides.
 *  - deterministic mode: dQ, dK, dV bit-identical to the replay (fp16, bf16; no mask,
 *    causal top-left and bottom-right incl. s_q > s_k; GQA/MQA; dropout; head dims 32,
 *    40, 64, 72, 128, 256; both tiles), every element written (outputs poisoned);
 *  - atomic mode: dK/dV bitwise equal to deterministic mode, dQ within a few ulps of it;
 *    the spread over repeated runs is reported (logged), not asserted;
 *  - both main-kernel variants (FD_BWD_VARIANT old / new) bit-identical to the replay and
 *    to each other (hardware exp2 too), their times logged;
 *  - FD_BWD_VARIANT=bulk against new: atomic dK/dV and every deterministic output bitwise
 *    equal, atomic dQ within the atomic mode's bound of the deterministic dQ, its time logged;
 *  - rejections: fp32, unsupported tiles, bugs != 0, an unknown FD_BWD_VARIANT. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_bwd.h"
#include "fd_cpu_bwd.h"
#include "fd_cuda.h"
#include "fd_dtype.h"
#include "fd_problem.h"
#include "fd_test_problem.h"

#define SKIP_WITHOUT_GPU()                                                     \
    do {                                                                       \
        if (fd_cuda_device_count() <= 0) cr_skip_test("no CUDA GPU present");  \
    } while (0)

static uint64_t rng_state;
static double urand(void) { return tu_urand(&rng_state); }
static float nrand(fd_dtype dt, double sc) /* roughly normal, rounded to the dtype */
{
    double s = urand() + urand() + urand() + urand() - 2.0;
    return fd_round_to_dtype((float)(s * sc), dt);
}

typedef struct {
    int B, H, Hk, sq, sk, d;
    fd_dtype dt;
    fd_mask_kind mask;
    double p;
    int bc; /* 0: default tile */
} spec;

typedef struct {
    fd_problem p;
    float *q, *k, *v, *o, *lse, *dout;
} bcase;

/* Score modifiers of a case (all zero: plain attention). */
typedef struct {
    int window, wl, wr;
    float cap;
    int alibi;
} mods;

static void make_case_m(bcase *c, const spec *s, uint64_t seed, const mods *m)
{
    memset(c, 0, sizeof *c);
    fd_problem *p = &c->p;
    p->batch = s->B; p->heads = s->H; p->kv_heads = s->Hk; p->seqlen_q = s->sq; p->seqlen_k = s->sk;
    p->head_dim = s->d; p->dtype = s->dt; p->mask = s->mask;
    if (m) {
        p->window = m->window; p->window_left = m->wl; p->window_right = m->wr;
        p->softcap = m->cap;
        p->alibi = m->alibi;
        if (m->alibi) fd_alibi_default_slopes(p->heads, p->alibi_slopes);
    }
    p->softmax_scale = (float)(1.0 / sqrt((double)s->d));
    p->dropout_p = s->p; p->seed = 0xbadc0de0ull + seed; p->offset = 64u * seed;
    rng_state = 0x9E3779B97F4A7C15ull ^ (seed * 0x100000001b3ull);
    const size_t nq = fd_q_numel(p), nk = fd_kv_numel(p), nl = fd_lse_numel(p);
    c->q = malloc(sizeof(float) * nq); c->k = malloc(sizeof(float) * nk); c->v = malloc(sizeof(float) * nk);
    c->o = malloc(sizeof(float) * nq); c->lse = malloc(sizeof(float) * nl); c->dout = malloc(sizeof(float) * nq);
    cr_assert(c->q && c->k && c->v && c->o && c->lse && c->dout);
    for (size_t x = 0; x < nq; x++) { c->q[x] = nrand(s->dt, 1.7); c->dout[x] = nrand(s->dt, 1.0); }
    for (size_t x = 0; x < nk; x++) { c->k[x] = nrand(s->dt, 1.7); c->v[x] = nrand(s->dt, 1.7); }
    fd_cuda_cfg cfg;
    fd_cuda_cfg_default(&cfg);
    cfg.exp2_mode = 1;
    char err[512] = "";
    cr_assert_eq(fd_cuda_flash_forward(p, &cfg, c->q, c->k, c->v, c->o, c->lse, NULL, NULL, err, sizeof err), 0,
                 "forward: %s", err);
}

static void make_case(bcase *c, const spec *s, uint64_t seed) { make_case_m(c, s, seed, NULL); }

static void free_case(bcase *c)
{
    free(c->q); free(c->k); free(c->v); free(c->o); free(c->lse); free(c->dout);
}

static float *poisoned(size_t n)
{
    float *x = malloc(sizeof(float) * n);
    cr_assert_not_null(x);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

static uint32_t fbits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* Distance in units in the last place of the dtype (sign-magnitude -> ordered ints). */
static long ulp_dist(float a, float b, fd_dtype dt)
{
    long ia, ib;
    if (dt == FD_DT_FP16) { ia = fd_f32_to_f16_bits(a); ib = fd_f32_to_f16_bits(b); }
    else { ia = fd_f32_to_bf16_bits(a); ib = fd_f32_to_bf16_bits(b); }
    if (ia & 0x8000) ia = -(ia & 0x7fff);
    if (ib & 0x8000) ib = -(ib & 0x7fff);
    return labs(ia - ib);
}

/* cuda-flash's backward on c; exp2: 1 the portable exp2 (the replay's bits), 0 the hardware's. */
static int run_gpu_exp(const bcase *c, fd_dq_mode mode, int bc, int repeats, int exp2, float *dq, float *dk,
                       float *dv, fd_cuda_timing *tm)
{
    fd_cuda_cfg cfg;
    fd_cuda_cfg_default(&cfg);
    cfg.exp2_mode = exp2;
    cfg.repeats = repeats;
    fd_bwd_cfg b;
    fd_bwd_cfg_default(&b);
    b.dq_mode = mode;
    if (bc) { b.br = 64; b.bc = bc; }
    char err[512] = "";
    int rc = fd_cuda_flash_backward(&c->p, &cfg, &b, c->q, c->k, c->v, c->o, c->lse, c->dout, dq, dk, dv,
                                    tm, err, sizeof err);
    cr_assert_eq(rc, 0, "cuda backward: %s", err);
    return rc;
}

static int run_gpu(const bcase *c, fd_dq_mode mode, int bc, int repeats, float *dq, float *dk, float *dv,
                   fd_cuda_timing *tm)
{
    return run_gpu_exp(c, mode, bc, repeats, 1, dq, dk, dv, tm);
}

/* Counts bitwise mismatches (NaN anywhere counts). */
static size_t mismatches(const float *a, const float *b, size_t n, size_t *first)
{
    size_t bad = 0;
    *first = (size_t)-1;
    for (size_t x = 0; x < n; x++)
        if (fbits(a[x]) != fbits(b[x]) || isnan(a[x])) {
            if (!bad) *first = x;
            bad++;
        }
    return bad;
}

static const spec det_specs[] = {
    {1, 2, 2, 128, 128, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, 0},
    {1, 4, 2, 200, 333, 64, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 0},
    {1, 2, 1, 300, 100, 128, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.0, 0},
    {1, 2, 1, 300, 100, 64, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 0},
    {1, 2, 2, 129, 257, 256, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 0},
    {1, 2, 2, 100, 100, 40, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.0, 0},
    {1, 1, 1, 65, 65, 72, FD_DT_FP16, FD_MASK_NONE, 0.0, 0},
    {2, 2, 2, 256, 256, 64, FD_DT_FP16, FD_MASK_NONE, 0.17, 0},
    {1, 4, 2, 97, 250, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.3, 0},
    {1, 2, 1, 150, 150, 256, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.1, 0},
    {1, 2, 2, 77, 1023, 32, FD_DT_BF16, FD_MASK_NONE, 0.0, 0},
    {1, 4, 1, 190, 130, 64, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.2, 32},
    {1, 2, 2, 160, 160, 128, FD_DT_BF16, FD_MASK_NONE, 0.0, 32},
    {1, 3, 3, 64, 64, 96, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 0},
    {3, 8, 1, 33, 47, 128, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.0, 0},
    {1, 2, 2, 1, 300, 64, FD_DT_BF16, FD_MASK_NONE, 0.25, 0},
    {2, 2, 1, 257, 64, 256, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, 0},
    {1, 1, 1, 500, 17, 32, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.5, 0},
    {1, 2, 2, 64, 1, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, 0},
    {1, 2, 2, 70, 70, 8, FD_DT_FP16, FD_MASK_NONE, 0.0, 0},
    {1, 4, 2, 130, 190, 200, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.15, 0},
    {2, 4, 4, 333, 333, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, 0},
    /* the 8-warp bc = 128 kernel on whole tiles (with dropout) and d = 96, and the 4-warp
     * (64, 64) kernel at d = 128 */
    {1, 2, 2, 256, 384, 128, FD_DT_FP16, FD_MASK_NONE, 0.1, 128},
    {1, 2, 2, 128, 256, 96, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, 128},
    {1, 2, 1, 200, 300, 128, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.0, 64},
};

/* The score modifiers (window, ALiBi, softcap, together, with dropout, GQA, unequal
 * lengths, rows and key tiles outside every window) on both kernels: the 4-warp (bc 64,
 * 32) and the 8-warp bc = 128 one (its softcap factors in shared memory). */
typedef struct {
    spec s;
    mods m;
} mspec;
static const mspec mod_specs[] = {
    {{1, 2, 2, 200, 333, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, 0}, {1, 40, 16, 0.0f, 0}},
    {{1, 4, 2, 300, 150, 64, FD_DT_BF16, FD_MASK_NONE, 0.0, 0}, {1, 8, 0, 0.0f, 0}},      /* rows with no key */
    {{1, 2, 1, 190, 400, 32, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.2, 0}, {1, 64, -1, 0.0f, 0}},
    {{1, 2, 2, 150, 150, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, 0}, {1, -1, 70, 0.0f, 0}},
    {{1, 4, 2, 160, 160, 64, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, 0}, {0, 0, 0, 0.0f, 1}},
    {{1, 2, 2, 100, 230, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, 0}, {0, 0, 0, 5.0f, 0}},
    {{1, 2, 2, 256, 256, 64, FD_DT_BF16, FD_MASK_NONE, 0.15, 0}, {1, 48, 0, 20.0f, 1}},
    {{1, 2, 2, 130, 200, 128, FD_DT_FP16, FD_MASK_NONE, 0.0, 32}, {1, 30, 30, 30.0f, 1}},
    /* the 8-warp kernel */
    {{1, 2, 2, 256, 384, 128, FD_DT_FP16, FD_MASK_NONE, 0.1, 128}, {1, 100, 20, 30.0f, 1}},
    {{1, 2, 1, 160, 288, 128, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.0, 128}, {0, 0, 0, 30.0f, 0}},
    {{1, 2, 2, 200, 500, 96, FD_DT_BF16, FD_MASK_NONE, 0.0, 128}, {1, 64, 64, 0.0f, 0}},
    {{1, 4, 2, 128, 256, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, 128}, {0, 0, 0, 0.0f, 1}},
};

static size_t bitwise_vs_replay(const spec *s, const mods *m, uint64_t seed, const char *what);

Test(gpu_bwd, mods_deterministic_bitwise_vs_replay, .timeout = 600)
{
    SKIP_WITHOUT_GPU();
    size_t total = 0;
    for (size_t si = 0; si < sizeof mod_specs / sizeof mod_specs[0]; si++)
        total += bitwise_vs_replay(&mod_specs[si].s, &mod_specs[si].m, 3000 + si, "mods");
    cr_log_info("bwd mods deterministic: %zu elements compared bitwise", total);
}

Test(gpu_bwd, deterministic_bitwise_vs_replay, .timeout = 600)
{
    SKIP_WITHOUT_GPU();
    size_t total = 0;
    /* FD_BWD_QUICK=1 (e.g. under compute-sanitizer): every third case only. */
    const int quick = getenv("FD_BWD_QUICK") != NULL;
    for (size_t si = 0; si < sizeof det_specs / sizeof det_specs[0]; si++) {
        if (quick && si % 3 != 0) continue;
        total += bitwise_vs_replay(&det_specs[si], NULL, 1000 + si, "bwd");
    }
    cr_log_info("bwd deterministic: %zu elements compared bitwise", total);
}

/* One case, deterministic mode: cuda-flash's dQ, dK, dV against the replay bit for bit;
 * returns the number of elements compared. */
static size_t bitwise_vs_replay(const spec *s, const mods *m, uint64_t seed, const char *what)
{
    size_t total = 0;
    const size_t si = (size_t)seed;
    {
        bcase c;
        make_case_m(&c, s, seed, m);
        const size_t nq = fd_q_numel(&c.p), nk = fd_kv_numel(&c.p);
        float *gq = poisoned(nq), *gk = poisoned(nk), *gv = poisoned(nk);
        float *rq = poisoned(nq), *rk = poisoned(nk), *rv = poisoned(nk);
        run_gpu(&c, FD_DQ_DETERMINISTIC, s->bc, 0, gq, gk, gv, NULL);
        fd_flash_cfg fc;
        fd_flash_cfg_default(&fc);
        fc.exp2_mode = FD_EXP2_PORTABLE;
        fd_bwd_cfg b;
        fd_bwd_cfg_default(&b);
        b.dq_mode = FD_DQ_DETERMINISTIC;
        if (s->bc) { b.br = 64; b.bc = s->bc; }
        char err[512] = "";
        cr_assert_eq(fd_cpu_flash_backward(&c.p, &fc, &b, c.q, c.k, c.v, c.o, c.lse, c.dout, rq, rk, rv,
                                           err, sizeof err), 0, "replay: %s", err);
        size_t fq, fk, fv;
        const size_t bq = mismatches(gq, rq, nq, &fq), bk = mismatches(gk, rk, nk, &fk),
                     bv = mismatches(gv, rv, nk, &fv);
        total += 2 * nk + nq;
        long uq = 0, uk = 0, uv = 0;
        for (size_t x = 0; x < nq; x++) { long u = ulp_dist(gq[x], rq[x], s->dt); if (u > uq) uq = u; }
        for (size_t x = 0; x < nk; x++) {
            long u = ulp_dist(gk[x], rk[x], s->dt); if (u > uk) uk = u;
            u = ulp_dist(gv[x], rv[x], s->dt); if (u > uv) uv = u;
        }
        char mtxt[128] = "";
        fd_problem_describe_mods(&c.p, mtxt, sizeof mtxt);
        cr_log_info("%s case %zu (%s d%d %dx%d H%d/%d mask %d p %.2f bc %d %s): %zu elements, mismatches dQ %zu dK %zu dV %zu (max ulp %ld %ld %ld)",
                    what, si, fd_dtype_name(s->dt), s->d, s->sq, s->sk, s->H, s->Hk, (int)s->mask, s->p, s->bc,
                    mtxt, nq + 2 * nk, bq, bk, bv, uq, uk, uv);
        cr_expect_eq(bq, 0, "case %zu: dQ %zu mismatches, first at %zu: gpu %a replay %a", si, bq, fq,
                     bq ? (double)gq[fq] : 0.0, bq ? (double)rq[fq] : 0.0);
        cr_expect_eq(bk, 0, "case %zu: dK %zu mismatches, first at %zu: gpu %a replay %a", si, bk, fk,
                     bk ? (double)gk[fk] : 0.0, bk ? (double)rk[fk] : 0.0);
        cr_expect_eq(bv, 0, "case %zu: dV %zu mismatches, first at %zu: gpu %a replay %a", si, bv, fv,
                     bv ? (double)gv[fv] : 0.0, bv ? (double)rv[fv] : 0.0);
        free(gq); free(gk); free(gv); free(rq); free(rk); free(rv);
        free_case(&c);
    }
    return total;
}

/* FD_BWD_VARIANT: the old main kernel and the new one (the bc = 128 kernel's fast
 * elementwise step on tiles whose every element is visible and kept) against the replay
 * bit for bit, each; then the two variants against each other with the hardware exp2
 * (deterministic: every output; atomic: dK, dV) and their times logged. The cases put
 * every tile on the fast step (whole tiles, no mask), some of them (causal: the tiles
 * below the diagonal; partial tiles; head_dim 120 padded to 128) or none (dropout). */
static const spec variant_specs[] = {
    {1, 2, 2, 256, 512, 128, FD_DT_FP16, FD_MASK_NONE, 0.0, 128},
    {1, 2, 1, 512, 512, 128, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 128},
    {2, 2, 2, 320, 256, 96, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.0, 128},
    {1, 4, 2, 256, 640, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, 128},
    {1, 2, 2, 200, 300, 128, FD_DT_BF16, FD_MASK_NONE, 0.0, 0},
    {1, 2, 2, 256, 256, 120, FD_DT_FP16, FD_MASK_NONE, 0.0, 0},
    {1, 2, 2, 256, 256, 128, FD_DT_FP16, FD_MASK_NONE, 0.1, 128},
};

static void set_variant(const char *v)
{
    cr_assert_eq(setenv("FD_BWD_VARIANT", v, 1), 0);
}

static void run_gpu_hw(const bcase *c, fd_dq_mode mode, int bc, int repeats, float *dq, float *dk, float *dv,
                       fd_cuda_timing *tm)
{
    (void)run_gpu_exp(c, mode, bc, repeats, 0, dq, dk, dv, tm);
}

/* The atomic-mode time of two main-kernel variants (names[0], names[1]) on each spec,
 * logged only (the bench measures speed); case seeds seed0, seed0 + 1, ... */
static void log_variant_times(const spec *sp, size_t n, const char *const names[2], int seed0)
{
    for (size_t si = 0; si < n; si++) {
        const spec *s = &sp[si];
        bcase c;
        make_case(&c, s, (uint64_t)seed0 + si);
        const size_t nq = fd_q_numel(&c.p), nk = fd_kv_numel(&c.p);
        float *dq = poisoned(nq), *dk = poisoned(nk), *dv = poisoned(nk);
        double fl = 10.0 * s->B * s->H * (double)s->sq * s->sk * s->d;
        if (s->mask != FD_MASK_NONE) fl *= 0.5;
        for (int v = 0; v < 2; v++) {
            fd_cuda_timing ta;
            set_variant(names[v]);
            run_gpu_hw(&c, FD_DQ_ATOMIC, 0, 5, dq, dk, dv, &ta);
            cr_log_info("bwd variant %s timing %s d%d B%d H%d %dx%d mask %d: atomic %.3f ms (%.1f TFLOP/s)",
                        names[v], fd_dtype_name(s->dt), s->d, s->B, s->H, s->sq, s->sk, (int)s->mask,
                        (double)ta.ms_median, fl / (double)ta.ms_median * 1e-9);
        }
        free(dq); free(dk); free(dv);
        free_case(&c);
    }
}

Test(gpu_bwd, variants_old_new_bitwise_vs_replay, .timeout = 600)
{
    SKIP_WITHOUT_GPU();
    static const char *const names[2] = {"old", "new"};
    size_t total = 0;
    for (size_t si = 0; si < sizeof variant_specs / sizeof variant_specs[0]; si++) {
        const spec *s = &variant_specs[si];
        char what[32];
        for (int v = 0; v < 2; v++) {
            set_variant(names[v]);
            snprintf(what, sizeof what, "variant %s", names[v]);
            total += bitwise_vs_replay(s, NULL, 5000 + si, what);
        }
        /* old against new, hardware exp2 (not the replay's function; the variants' own) */
        bcase c;
        make_case(&c, s, 5000 + si);
        const size_t nq = fd_q_numel(&c.p), nk = fd_kv_numel(&c.p);
        float *x[2][3];
        for (int v = 0; v < 2; v++) {
            x[v][0] = poisoned(nq); x[v][1] = poisoned(nk); x[v][2] = poisoned(nk);
            set_variant(names[v]);
            run_gpu_hw(&c, FD_DQ_DETERMINISTIC, s->bc, 0, x[v][0], x[v][1], x[v][2], NULL);
        }
        size_t f;
        const size_t bq = mismatches(x[1][0], x[0][0], nq, &f), bk = mismatches(x[1][1], x[0][1], nk, &f),
                     bv = mismatches(x[1][2], x[0][2], nk, &f);
        cr_expect_eq(bq + bk + bv, 0, "variant case %zu, hardware exp2, deterministic: new differs from old "
                     "(dQ %zu, dK %zu, dV %zu)", si, bq, bk, bv);
        for (int v = 0; v < 2; v++) {
            set_variant(names[v]);
            run_gpu_hw(&c, FD_DQ_ATOMIC, s->bc, 0, x[v][0], x[v][1], x[v][2], NULL);
        }
        cr_expect_eq(mismatches(x[1][1], x[0][1], nk, &f) + mismatches(x[1][2], x[0][2], nk, &f), 0,
                     "variant case %zu, hardware exp2, atomic: new dK/dV differ from old", si);
        for (int v = 0; v < 2; v++) { free(x[v][0]); free(x[v][1]); free(x[v][2]); }
        free_case(&c);
    }
    cr_log_info("bwd variants old/new: %zu elements compared bitwise with the replay", total);
    /* speed, logged only: B2 H16 2048 x 2048 d128, the default tile (bc = 128) */
    static const spec tsp[] = {
        {2, 16, 16, 2048, 2048, 128, FD_DT_FP16, FD_MASK_NONE, 0.0, 0},
        {2, 16, 16, 2048, 2048, 128, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 0},
    };
    log_variant_times(tsp, sizeof tsp / sizeof tsp[0], names, 6000);
    unsetenv("FD_BWD_VARIANT");
}

/* FD_BWD_VARIANT=bulk (the bc = 128 kernel's atomic-mode dQ partials of whole tiles added by
 * the TMA unit's bulk reductions from shared memory) against new, hardware exp2, bc = 128:
 *  - atomic mode: dK/dV bitwise equal (they do not depend on dQ); dQ written everywhere
 *    (poisoned) and, as for any atomic run (atomic_vs_deterministic_and_spread), within
 *    4 ulp of the deterministic dQ, for bulk and for new; the bulk-vs-new spread logged;
 *  - deterministic mode (bulk runs new's code there): every output bitwise equal.
 * Cases: whole tiles only (1024: every tile takes the bulk path; causal and not; fp16,
 * bf16; d 96), dropout, GQA, and partial tiles (1000 x 1000: the last query tile and the
 * last key tile keep the 16-byte atomics, mixed with other CTAs' bulk reductions on the
 * same rows). */
Test(gpu_bwd, variant_bulk_vs_new_atomic, .timeout = 600)
{
    SKIP_WITHOUT_GPU();
    static const spec sp[] = {
        {2, 4, 4, 1024, 1024, 128, FD_DT_FP16, FD_MASK_NONE, 0.0, 128},
        {2, 4, 4, 1024, 1024, 128, FD_DT_FP16, FD_MASK_CAUSAL_TL, 0.0, 128},
        {2, 4, 2, 1024, 1024, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.0, 128},
        {1, 4, 4, 512, 1024, 96, FD_DT_FP16, FD_MASK_NONE, 0.0, 128},
        {1, 2, 2, 512, 512, 128, FD_DT_BF16, FD_MASK_NONE, 0.1, 128},
        {1, 2, 1, 1000, 1000, 128, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 128},
    };
    static const char *const names[2] = {"new", "bulk"};
    /* FD_BWD_QUICK=1 (under compute-sanitizer): whole tiles causal and not, and the partial
     * tiles; no timing */
    const int quick = getenv("FD_BWD_QUICK") != NULL;
    for (size_t si = 0; si < sizeof sp / sizeof sp[0]; si++) {
        if (quick && si != 0 && si != 1 && si != 5) continue;
        const spec *s = &sp[si];
        bcase c;
        make_case(&c, s, 8000 + si);
        const size_t nq = fd_q_numel(&c.p), nk = fd_kv_numel(&c.p);
        float *dq[2], *dk[2], *dv[2], *aq[2], *ak[2], *av[2];
        for (int v = 0; v < 2; v++) {
            dq[v] = poisoned(nq); dk[v] = poisoned(nk); dv[v] = poisoned(nk);
            aq[v] = poisoned(nq); ak[v] = poisoned(nk); av[v] = poisoned(nk);
            set_variant(names[v]);
            run_gpu_hw(&c, FD_DQ_DETERMINISTIC, s->bc, 0, dq[v], dk[v], dv[v], NULL);
            run_gpu_hw(&c, FD_DQ_ATOMIC, s->bc, 0, aq[v], ak[v], av[v], NULL);
        }
        size_t f;
        const size_t bq = mismatches(dq[1], dq[0], nq, &f), bk = mismatches(dk[1], dk[0], nk, &f),
                     bv = mismatches(dv[1], dv[0], nk, &f);
        cr_expect_eq(bq + bk + bv, 0, "bulk case %zu, deterministic: bulk differs from new (dQ %zu, dK %zu, dV %zu)",
                     si, bq, bk, bv);
        const size_t ck = mismatches(ak[1], ak[0], nk, &f), cv = mismatches(av[1], av[0], nk, &f);
        cr_expect_eq(ck + cv, 0, "bulk case %zu, atomic: dK (%zu) / dV (%zu) differ from new", si, ck, cv);
        long maxu[2] = {0, 0}, spread = 0;
        size_t nspread = 0;
        for (size_t x = 0; x < nq; x++) {
            for (int v = 0; v < 2; v++) {
                cr_assert(!isnan(aq[v][x]), "bulk case %zu: variant %s atomic dQ NaN at %zu", si, names[v], x);
                const long u = ulp_dist(aq[v][x], dq[0][x], s->dt);
                if (u > maxu[v]) maxu[v] = u;
            }
            const long w = ulp_dist(aq[1][x], aq[0][x], s->dt);
            if (w) nspread++;
            if (w > spread) spread = w;
        }
        cr_log_info("bwd bulk case %zu (%s d%d %dx%d mask %d p %.2f): atomic dQ max %ld ulp (new) / %ld ulp (bulk) from "
                    "deterministic; bulk vs new %zu of %zu entries differ, max %ld ulp",
                    si, fd_dtype_name(s->dt), s->d, s->sq, s->sk, (int)s->mask, s->p, maxu[0], maxu[1], nspread, nq,
                    spread);
        cr_expect_leq(maxu[1], 4, "bulk case %zu: bulk atomic dQ %ld ulp from deterministic", si, maxu[1]);
        cr_expect_leq(maxu[0], 4, "bulk case %zu: new atomic dQ %ld ulp from deterministic", si, maxu[0]);
        for (int v = 0; v < 2; v++) { free(dq[v]); free(dk[v]); free(dv[v]); free(aq[v]); free(ak[v]); free(av[v]); }
        free_case(&c);
    }
    /* speed, logged only (the bench measures it): B2 H16 2048 d128 bf16 causal */
    static const spec tsp[] = {{2, 16, 16, 2048, 2048, 128, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 0}};
    if (!quick) log_variant_times(tsp, 1, names, 8100);
    unsetenv("FD_BWD_VARIANT");
}

Test(gpu_bwd, atomic_vs_deterministic_and_spread, .timeout = 600)
{
    SKIP_WITHOUT_GPU();
    static const spec sp[] = {
        {1, 4, 2, 1024, 1024, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, 0},
        {1, 2, 2, 700, 900, 128, FD_DT_BF16, FD_MASK_CAUSAL_BR, 0.1, 0},
    };
    for (size_t si = 0; si < sizeof sp / sizeof sp[0]; si++) {
        const spec *s = &sp[si];
        bcase c;
        make_case(&c, s, 2000 + si);
        const size_t nq = fd_q_numel(&c.p), nk = fd_kv_numel(&c.p);
        float *dq = poisoned(nq), *dk = poisoned(nk), *dv = poisoned(nk);
        run_gpu(&c, FD_DQ_DETERMINISTIC, 0, 0, dq, dk, dv, NULL);
        enum { R = 6 };
        float *aq[R];
        long maxu = 0, spread = 0;
        size_t ndiff = 0, nspread = 0;
        for (int r = 0; r < R; r++) {
            float *ak = poisoned(nk), *av = poisoned(nk);
            aq[r] = poisoned(nq);
            run_gpu(&c, FD_DQ_ATOMIC, 0, 0, aq[r], ak, av, NULL);
            size_t f;
            cr_expect_eq(mismatches(ak, dk, nk, &f), 0, "case %zu run %d: atomic dK differs from deterministic", si, r);
            cr_expect_eq(mismatches(av, dv, nk, &f), 0, "case %zu run %d: atomic dV differs from deterministic", si, r);
            for (size_t x = 0; x < nq; x++) {
                cr_assert(!isnan(aq[r][x]), "case %zu: atomic dQ NaN at %zu", si, x);
                long u = ulp_dist(aq[r][x], dq[x], s->dt);
                if (u) ndiff++;
                if (u > maxu) maxu = u;
                if (r > 0) {
                    long w = ulp_dist(aq[r][x], aq[0][x], s->dt);
                    if (w) nspread++;
                    if (w > spread) spread = w;
                }
            }
            free(ak); free(av);
        }
        cr_log_info("bwd atomic case %zu (%s d%d %dx%d): vs deterministic %zu of %zu dQ entries differ, max %ld ulp; "
                    "over %d repeats %zu entries differ from run 0, max %ld ulp",
                    si, fd_dtype_name(s->dt), s->d, s->sq, s->sk, ndiff, nq * R, maxu, R, nspread, spread);
        cr_expect_leq(maxu, 4, "case %zu: atomic dQ %ld ulp from deterministic", si, maxu);
        for (int r = 0; r < R; r++) free(aq[r]);
        free(dq); free(dk); free(dv);
        free_case(&c);
    }
}

Test(gpu_bwd, timing_reported, .timeout = 600)
{
    SKIP_WITHOUT_GPU();
    static const spec sp[] = {
        {2, 16, 16, 2048, 2048, 128, FD_DT_FP16, FD_MASK_NONE, 0.0, 0},
        {2, 16, 16, 2048, 2048, 128, FD_DT_BF16, FD_MASK_CAUSAL_TL, 0.0, 0},
        {2, 16, 16, 2048, 2048, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, 0},
        {2, 8, 8, 2048, 2048, 256, FD_DT_BF16, FD_MASK_NONE, 0.0, 0},
    };
    for (size_t si = 0; si < sizeof sp / sizeof sp[0]; si++) {
        const spec *s = &sp[si];
        bcase c;
        make_case(&c, s, 3000 + si);
        const size_t nq = fd_q_numel(&c.p), nk = fd_kv_numel(&c.p);
        float *dq = poisoned(nq), *dk = poisoned(nk), *dv = poisoned(nk);
        fd_cuda_timing ta, td;
        run_gpu(&c, FD_DQ_ATOMIC, 0, 5, dq, dk, dv, &ta);
        run_gpu(&c, FD_DQ_DETERMINISTIC, 0, 5, dq, dk, dv, &td);
        double fl = 10.0 * s->B * s->H * (double)s->sq * s->sk * s->d; /* 5 matmuls (FA2's 2.5 x fwd) */
        if (s->mask != FD_MASK_NONE) fl *= 0.5;
        cr_log_info("bwd timing %s d%d B%d H%d %dx%d mask %d: atomic %.3f ms (%.1f TFLOP/s), deterministic %.3f ms "
                    "(%.1f TFLOP/s) (median of 5, incl. D' prepass, dQ finish, GQA sum)",
                    fd_dtype_name(s->dt), s->d, s->B, s->H, s->sq, s->sk, (int)s->mask, (double)ta.ms_median,
                    fl / (double)ta.ms_median * 1e-9, (double)td.ms_median, fl / (double)td.ms_median * 1e-9);
        cr_expect_eq(ta.repeats, 5);
        free(dq); free(dk); free(dv);
        free_case(&c);
    }
}

/* Deterministic mode twice: bitwise identical. Hardware exp2 (mode 0) against the replay
 * with glibc's exp2f: not the same function, so only the match fraction is logged. */
Test(gpu_bwd, deterministic_repeat_and_hw_exp2, .timeout = 600)
{
    SKIP_WITHOUT_GPU();
    const spec s = {2, 4, 2, 300, 280, 128, FD_DT_FP16, FD_MASK_CAUSAL_BR, 0.1, 0};
    bcase c;
    make_case(&c, &s, 4242);
    const size_t nq = fd_q_numel(&c.p), nk = fd_kv_numel(&c.p);
    float *q1 = poisoned(nq), *k1 = poisoned(nk), *v1 = poisoned(nk);
    float *q2 = poisoned(nq), *k2 = poisoned(nk), *v2 = poisoned(nk);
    run_gpu(&c, FD_DQ_DETERMINISTIC, 0, 0, q1, k1, v1, NULL);
    run_gpu(&c, FD_DQ_DETERMINISTIC, 0, 3, q2, k2, v2, NULL);
    size_t f;
    cr_expect_eq(mismatches(q1, q2, nq, &f) + mismatches(k1, k2, nk, &f) + mismatches(v1, v2, nk, &f), 0,
                 "deterministic mode not repeatable");
    /* hardware exp2 */
    fd_cuda_cfg cfg;
    fd_cuda_cfg_default(&cfg);
    fd_bwd_cfg b;
    fd_bwd_cfg_default(&b);
    b.dq_mode = FD_DQ_DETERMINISTIC;
    char err[512] = "";
    cr_assert_eq(fd_cuda_flash_backward(&c.p, &cfg, &b, c.q, c.k, c.v, c.o, c.lse, c.dout, q1, k1, v1, NULL,
                                        err, sizeof err), 0, "%s", err);
    fd_flash_cfg fc;
    fd_flash_cfg_default(&fc);
    fc.exp2_mode = FD_EXP2_LIBM;
    cr_assert_eq(fd_cpu_flash_backward(&c.p, &fc, &b, c.q, c.k, c.v, c.o, c.lse, c.dout, q2, k2, v2, err,
                                       sizeof err), 0, "%s", err);
    const size_t bad = mismatches(q1, q2, nq, &f) + mismatches(k1, k2, nk, &f) + mismatches(v1, v2, nk, &f);
    long mu = 0;
    for (size_t x = 0; x < nq; x++) { long u = ulp_dist(q1[x], q2[x], s.dt); if (u > mu) mu = u; }
    for (size_t x = 0; x < nk; x++) {
        long u = ulp_dist(k1[x], k2[x], s.dt); if (u > mu) mu = u;
        u = ulp_dist(v1[x], v2[x], s.dt); if (u > mu) mu = u;
    }
    cr_log_info("bwd hardware exp2 vs replay with glibc exp2f: %zu of %zu outputs differ (max %ld ulp); "
                "not asserted", bad, nq + 2 * nk, mu);
    free(q1); free(k1); free(v1); free(q2); free(k2); free(v2);
    free_case(&c);
}

Test(gpu_bwd, rejections)
{
    SKIP_WITHOUT_GPU();
    spec s = {1, 1, 1, 64, 64, 64, FD_DT_FP16, FD_MASK_NONE, 0.0, 0};
    bcase c;
    make_case(&c, &s, 7);
    float *dq = poisoned(64 * 64), *dk = poisoned(64 * 64), *dv = poisoned(64 * 64);
    fd_bwd_cfg b;
    fd_bwd_cfg_default(&b);
    char err[512] = "";
    b.br = 128; b.bc = 64;
    cr_expect_eq(fd_cuda_flash_backward(&c.p, NULL, &b, c.q, c.k, c.v, c.o, c.lse, c.dout, dq, dk, dv, NULL,
                                        err, sizeof err), -1);
    cr_expect(strstr(err, "tile") != NULL, "%s", err);
    fd_bwd_cfg_default(&b);
    b.bugs = FD_BWD_BUG_SWAP_DKDV;
    cr_expect_eq(fd_cuda_flash_backward(&c.p, NULL, &b, c.q, c.k, c.v, c.o, c.lse, c.dout, dq, dk, dv, NULL,
                                        err, sizeof err), -1);
    cr_assert_eq(setenv("FD_BWD_VARIANT", "fastest", 1), 0);
    cr_expect_eq(fd_cuda_flash_backward(&c.p, NULL, NULL, c.q, c.k, c.v, c.o, c.lse, c.dout, dq, dk, dv, NULL,
                                        err, sizeof err), -1);
    cr_expect(strstr(err, "FD_BWD_VARIANT") != NULL, "%s", err);
    cr_expect(strstr(err, "bulk") != NULL, "%s", err);
    unsetenv("FD_BWD_VARIANT");
    fd_problem p32 = c.p;
    p32.dtype = FD_DT_FP32;
    cr_expect_eq(fd_cuda_flash_backward(&p32, NULL, NULL, c.q, c.k, c.v, c.o, c.lse, c.dout, dq, dk, dv, NULL,
                                        err, sizeof err), -1);
    cr_expect(strstr(err, "fp32") != NULL, "%s", err);
    free(dq); free(dk); free(dv);
    free_case(&c);
}
