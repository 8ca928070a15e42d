/* gpu_test_mma.c: the tensor-core block-FMA model (FD_ACC_TC16) against this GPU's own
 * mma.sync m16n8k16, on the published H100 data and on crafted inputs that separate the
 * candidate models (alignment bits, normalised products, round-to-nearest, sequential
 * fmaf) and probe what the data does not cover (zeros, cancellation, subnormal inputs and
 * results, the -133 alignment floor). Skips where there is no GPU. Prints the counts. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_accum.h"
#include "fd_cuda.h"
#include "fd_tc_data.h"

static void need_gpu(void)
{
    if (fd_cuda_device_count() == 0) cr_skip_test("no CUDA GPU");
}

static uint64_t st = 0x243f6a8885a308d3u;
static uint64_t rnd(void)
{
    uint64_t z = (st += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}
/* A value of the dtype with exponent in [emin, emax] (some zeros and subnormals). */
static float rvalue(fd_dtype t, int emin, int emax)
{
    uint64_t r = rnd();
    if (r % 23 == 0) return 0.0f;
    double m = 1.0 + (double)((r >> 8) & 0xffff) / 65536.0;
    int e = emin + (int)((r >> 32) % (uint64_t)(emax - emin + 1));
    double x = ldexp((r >> 5) & 1 ? -m : m, e);
    return fd_round_to_dtype((float)x, t);
}

typedef struct { int n; float *a, *b, *c, *d; } blocks;

static blocks alloc_blocks(int n)
{
    blocks B = {n, calloc((size_t)n * 16, sizeof(float)), calloc((size_t)n * 16, sizeof(float)),
                calloc((size_t)n, sizeof(float)), calloc((size_t)n, sizeof(float))};
    cr_assert(B.a && B.b && B.c && B.d);
    return B;
}

static void run_hw(blocks *B, fd_dtype t)
{
    char err[512];
    cr_assert(fd_cuda_mma_blocks(B->a, B->b, B->c, B->d, B->n, t, err, sizeof err) == 0, "%s", err);
}

static int same(float x, float y) { return fd_f32_bits(x) == fd_f32_bits(y); }

/* Counts how many blocks each model reproduces; the library model must get all. */
static void judge(const char *what, blocks *B, fd_dtype t)
{
    const int emin = fd_dtype_emin(t);
    int lib = 0, x1 = 0, x3 = 0, norm = 0, seq = 0, rn = 0, first = -1;
    for (int i = 0; i < B->n; i++) {
        const float *a = B->a + 16 * i, *b = B->b + 16 * i;
        const float c = B->c[i], d = B->d[i];
        if (same(fd_tc16_block_dt(a, b, c, t), d)) lib++;
        else if (first < 0) first = i;
        x1 += same(indep_block(a, b, c, emin, 1, 0), d);
        x3 += same(indep_block(a, b, c, emin, 3, 0), d);
        norm += same(indep_block(a, b, c, emin, 2, 1), d);
        seq += same(fd_dot_acc(FD_ACC_SEQ, a, 1, b, 1, 16, c), d);
        double s = (double)c; /* one rounding of a binary64 sum: a fused dot-product model */
        for (int k = 0; k < 16; k++) s += (double)a[k] * (double)b[k];
        rn += same((float)s, d);
    }
    fprintf(stderr, "tensor-core model, %s %s: %d blocks; reproduced by: model %d, 1 extra bit %d, "
                    "3 extra bits %d, normalised products %d, sequential fmaf %d, one rounding %d\n",
            fd_dtype_name(t), what, B->n, lib, x1, x3, norm, seq, rn);
    if (first >= 0)
        cr_assert_fail("%s %s block %d: hardware %a, model %a", fd_dtype_name(t), what, first,
                       (double)B->d[first],
                       (double)fd_tc16_block_dt(B->a + 16 * first, B->b + 16 * first, B->c[first], t));
}

static void published_data(const char *dir, fd_dtype t)
{
    need_gpu();
    tc_data *d = tc_load(dir);
    blocks B = alloc_blocks(d->n);
    for (int i = 0; i < d->n; i++) {
        memcpy(B.a + 16 * i, d->a[i], sizeof d->a[i]);
        memcpy(B.b + 16 * i, d->b[i], sizeof d->b[i]);
        B.c[i] = d->c[i];
    }
    run_hw(&B, t);
    int agree = 0;
    for (int i = 0; i < d->n; i++) agree += fd_f32_bits(B.d[i]) == d->d[i];
    fprintf(stderr, "this GPU reproduces %d of the %d published H100 %s results\n", agree, d->n, dir);
    judge("published inputs", &B, t);
    cr_assert_eq(agree, d->n, "this GPU's mma.sync differs from the published H100 data");
}

Test(mma_gpu, published_fp16) { published_data("fp16", FD_DT_FP16); }
Test(mma_gpu, published_bf16) { published_data("bf16", FD_DT_BF16); }

static void crafted(fd_dtype t)
{
    need_gpu();
    const int n = 60000;
    blocks B = alloc_blocks(n);
    const int lo = t == FD_DT_FP16 ? -14 : -40, hi = t == FD_DT_FP16 ? 7 : 40;
    for (int i = 0; i < n; i++) {
        float *a = B.a + 16 * i, *b = B.b + 16 * i;
        const int kind = i % 6;
        for (int k = 0; k < 16; k++) {
            /* 0: wide exponent spread; 1: narrow (long carries); 2: cancellation against c;
             * 3: subnormal-range inputs; 4: results near the binary32 underflow; 5: zeros */
            int e0 = kind == 1 ? -2 : kind == 3 ? (t == FD_DT_FP16 ? -24 : -133) : lo;
            int e1 = kind == 1 ? 2 : kind == 3 ? (t == FD_DT_FP16 ? -12 : -120) : hi;
            if (kind == 4) { e0 = t == FD_DT_FP16 ? -24 : -75; e1 = t == FD_DT_FP16 ? -14 : -60; }
            a[k] = rvalue(t, e0, e1);
            b[k] = rvalue(t, e0, e1);
            if (kind == 5 && (rnd() & 1)) a[k] = 0.0f;
        }
        float c = (float)ldexp((double)(int64_t)(rnd() % 2000001) - 1e6, (int)(rnd() % 40) - 30);
        if (kind == 2) { /* c cancels the products' sum up to the last bits */
            double s = 0.0;
            for (int k = 0; k < 16; k++) s += (double)a[k] * (double)b[k];
            c = (float)-s;
        }
        if (kind == 4 || kind == 3) c = (rnd() & 1) ? 0.0f : (float)ldexp(1.0, -140);
        if (kind == 5) c = 0.0f;
        B.c[i] = c;
    }
    run_hw(&B, t);
    judge("crafted inputs", &B, t);
}

Test(mma_gpu, crafted_fp16) { crafted(FD_DT_FP16); }
Test(mma_gpu, crafted_bf16) { crafted(FD_DT_BF16); }
