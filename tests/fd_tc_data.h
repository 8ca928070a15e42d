/* fd_tc_data.h: the H100 tensor-core data set (tests/data/tensor-core-h100) and an
 * independent double-arithmetic implementation of the block-FMA model with its variants,
 * shared by test_accum.c (CPU) and gpu_test_mma.c (the same model against the GPU's own
 * mma.sync), and the readers of the data sets' files (test_fp8.c reads the H200 sets with
 * them). Header-only, static inline functions: include once per test binary. */
#ifndef FD_TC_DATA_H
#define FD_TC_DATA_H
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_dtype.h"
#include "fd_tc_round.h"
#include "fd_test_util.h"

#define NCASES 5000

typedef struct {
    float a[NCASES][16], b[NCASES][16], c[NCASES];
    uint32_t d[NCASES];
    int n;
} tc_data;

/* Rows of hex words, one row a line (binary32 encodings of exact fp16 / bf16 / FP8 values),
 * into x: rows of kmax floats, at most nmax rows. *k is the words per line: 0 on entry
 * takes it from the first line; reading stops at a line of another length (blank lines
 * are skipped, words past kmax ignored). Returns the rows read, or -1 when path cannot be
 * opened. Serves the H100 set (16 words) and the H200 sets (K words, test_fp8.c). */
static inline int tc_read_hex_rows(const char *path, float *x, int nmax, int kmax, int *k)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    const size_t len = (size_t)kmax * 12 + 64; /* "3f7aa000 " and a margin */
    char *line = malloc(len);
    if (!line) {
        fclose(f);
        return -1;
    }
    int n = 0;
    while (n < nmax && fgets(line, (int)len, f)) {
        int kk = 0;
        for (char *t = strtok(line, " \t\n"); t && kk < kmax; t = strtok(NULL, " \t\n"))
            x[(size_t)n * (size_t)kmax + (size_t)kk++] = fd_bits_f32((uint32_t)strtoul(t, NULL, 16));
        if (kk == 0) continue;
        if (*k == 0) *k = kk;
        if (kk != *k) break;
        n++;
    }
    free(line);
    fclose(f);
    return n;
}

/* Words of 32 binary digits (binary32 encodings), at most nmax; stops at a word of another
 * length. Returns the words read, or -1 when path cannot be opened. */
static inline int tc_read_bit_rows(const char *path, uint32_t *x, int nmax)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char s[64];
    int i = 0;
    for (; i < nmax && fscanf(f, "%63s", s) == 1; i++) {
        if (strlen(s) != 32) break;
        x[i] = (uint32_t)strtoul(s, NULL, 2);
    }
    fclose(f);
    return i;
}

/* Loads fp16/ or bf16/; fails the test when a file is missing or short. */
static inline tc_data *tc_load(const char *dt)
{
    static tc_data d;
    char rel[128];
    const char *p;
    uint32_t cb[NCASES];
    snprintf(rel, sizeof rel, "tensor-core-h100/%s/a_H100_%s.txt", dt, dt);
    p = tu_path(TU_DATA, rel);
    int k = 16;
    cr_assert_eq(tc_read_hex_rows(p, &d.a[0][0], NCASES, 16, &k), NCASES, "reading %s", p);
    snprintf(rel, sizeof rel, "tensor-core-h100/%s/b_H100_%s.txt", dt, dt);
    p = tu_path(TU_DATA, rel);
    cr_assert_eq(tc_read_hex_rows(p, &d.b[0][0], NCASES, 16, &k), NCASES, "reading %s", p);
    snprintf(rel, sizeof rel, "tensor-core-h100/%s/c_H100_fp32.txt", dt);
    p = tu_path(TU_DATA, rel);
    cr_assert_eq(tc_read_bit_rows(p, cb, NCASES), NCASES, "reading %s", p);
    snprintf(rel, sizeof rel, "tensor-core-h100/%s/d_H100_fp32.txt", dt);
    p = tu_path(TU_DATA, rel);
    cr_assert_eq(tc_read_bit_rows(p, d.d, NCASES), NCASES, "reading %s", p);
    for (int i = 0; i < NCASES; i++) d.c[i] = fd_bits_f32(cb[i]);
    d.n = NCASES;
    return &d;
}

static inline void print_case(const char *what, const tc_data *d, int i, uint32_t got)
{
    fprintf(stderr, "%s: case %d (line %d)\n  a =", what, i, i + 1);
    for (int k = 0; k < 16; k++) fprintf(stderr, " %08x", (unsigned)fd_f32_bits(d->a[i][k]));
    fprintf(stderr, "\n  b =");
    for (int k = 0; k < 16; k++) fprintf(stderr, " %08x", (unsigned)fd_f32_bits(d->b[i][k]));
    fprintf(stderr, "\n  c = %08x (%a)\n  expected %08x (%a)\n  got      %08x (%a)\n",
            (unsigned)fd_f32_bits(d->c[i]), (double)d->c[i], (unsigned)d->d[i],
            (double)fd_bits_f32(d->d[i]), (unsigned)got, (double)fd_bits_f32(got));
}

/* ---------------------------------------------------------------------------------------
 * Independent model: the same block FMA written with doubles. Products of fp16/bf16
 * values are exact in double (at most 22 bits); a term scaled to units of the alignment
 * grid is below 2^28 and trunc() of it is exact; the sum of 17 such integers is exact.
 * extra: alignment bits beyond 23; normalise: products in [1, 2) (exponent + 1 when the
 * significand is in [2, 4)). The H100 is extra = 2, normalise = 0. Finite inputs only. */
static inline int expo(double x, int emin) /* floor(log2|x|), not below emin; x != 0 */
{
    int e;
    (void)frexp(x, &e);
    return e - 1 < emin ? emin : e - 1;
}

static inline float indep_block(const float *a, const float *b, float c, int emin, int extra,
                         int normalise)
{
    double p[16];
    int pe[16], np = 0;
    for (int i = 0; i < 16; i++) {
        if (fpclassify(a[i]) == FP_ZERO || fpclassify(b[i]) == FP_ZERO)
            continue; /* zero products take no part */
        double x = (double)a[i], y = (double)b[i];
        p[np] = x * y;
        pe[np] = expo(x, emin) + expo(y, emin);
        if (normalise && fabs(p[np]) >= ldexp(2.0, pe[np])) pe[np] += 1;
        np++;
    }
    int cz = fpclassify(c) == FP_ZERO;
    if (np == 0 && cz) return 0.0f;
    int E = -133;
    for (int i = 0; i < np; i++)
        if (pe[i] > E) E = pe[i];
    if (!cz && expo((double)c, -126) > E) E = expo((double)c, -126);
    int q = E - 23 - extra; /* exponent of one unit of the aligned sum */
    double s = 0.0;
    for (int i = 0; i < np; i++) s += trunc(ldexp(p[i], -q));
    if (!cz) s += trunc(ldexp((double)c, -q));
    return tc_round24(ldexp(s, q), 0);
}

#endif
