/* fd_probe.h: inputs and candidate models for the tensor-core probes (kernels/cuda/
 * fd_cuda_wgmma.cu): wgmma m64n8k16 fp16/bf16, mma.sync m16n8k32 and wgmma m64n8k32 FP8
 * (e4m3, e5m2), fp32 accumulation. Shared by tests/gpu_probe_dump.c (the dump tool, libc
 * and cudart only) and tests/gpu_test_wgmma.c (the Criterion report). Header-only,
 * static functions: include once per binary. No Criterion here.
 *
 * The FP8 helpers are local to the probe (pf_ prefix); the library's FP8 conversions will
 * live in kernels/common/fd_dtype.h. Candidate models are written with doubles (products of
 * these formats are exact; aligned terms are integers below 2^40; sums exact). */
#ifndef FD_PROBE_H
#define FD_PROBE_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_accum.h"
#ifndef PF_NO_CUDA
#include "fd_cuda.h"
#endif
#include "fd_dtype.h"
#include "fd_tc_round.h"

/* ---- input formats ------------------------------------------------------------------ */
enum { PF_FP16 = 0, PF_BF16 = 1, PF_E4M3 = 2, PF_E5M2 = 3 };
typedef struct {
    const char *name;
    int prec, emin, emax; /* significand bits, minimum normal and maximum exponents */
    int lo, hi;           /* exponent range of the "wide" random inputs */
} pf_fmt;
static const pf_fmt pf_fmts[4] = {
    {"fp16", 11, -14, 15, -24, 15},
    {"bf16", 8, -126, 127, -40, 40},
    {"e4m3", 4, -6, 8, -9, 8},
    {"e5m2", 3, -14, 15, -16, 15},
};

/* splitmix64 */
static uint64_t pf_state = 0x243f6a8885a308d3u;
static inline uint64_t pf_rnd(void)
{
    uint64_t z = (pf_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}
static inline int pf_uni(int lo, int hi) { return hi <= lo ? lo : lo + (int)(pf_rnd() % (uint64_t)(hi - lo + 1)); }

/* An exact value of format f: sign s (0/1, -1 random), exponent e, random fraction; below
 * the minimum exponent it is truncated to the subnormal grid (may become 0); above the
 * maximum it is clamped; e4m3's S.1111.111 (NaN) is avoided. */
static inline float pf_value(int fi, int e, int s)
{
    const pf_fmt *f = &pf_fmts[fi];
    if (s < 0) s = (int)(pf_rnd() & 1);
    if (e > f->emax) e = f->emax;
    int fb = f->prec - 1;
    int frac = (int)(pf_rnd() % (uint64_t)(1u << fb));
    if (fi == PF_E4M3 && e == 8 && frac == 7) frac = 6;
    double x = ldexp(1.0 + (double)frac / (double)(1 << fb), e);
    if (e < f->emin) {
        double qu = ldexp(1.0, f->emin - fb);
        x = floor(x / qu) * qu;
    }
    return (float)(s ? -x : x);
}
static inline float pf_rvalue(int fi, int elo, int ehi)
{
    if (pf_rnd() % 23 == 0) return 0.0f;
    return pf_value(fi, pf_uni(elo, ehi), -1);
}
/* a * b with product exponent near pe (a's exponent chosen so both lie in range). */
static inline void pf_term(int fi, int pe, int sign, float *a, float *b)
{
    const pf_fmt *f = &pf_fmts[fi];
    int lo = f->emin - (f->prec - 1), hi = f->emax;
    int alo = pe - hi > lo ? pe - hi : lo, ahi = pe - lo < hi ? pe - lo : hi;
    if (fi == PF_BF16) { if (alo < -60) alo = -60; if (ahi > 60) ahi = 60; }
    int ea = alo <= ahi ? pf_uni(alo, ahi) : (pe < 0 ? lo : hi);
    *a = pf_value(fi, ea, sign < 0 ? -1 : sign);
    *b = pf_value(fi, pe - ea, 0);
}

/* ---- categories of crafted blocks ---------------------------------------------------- */
#define PF_NCAT 10
static const char *const pf_cat_names[PF_NCAT] = {
    "wide",   /* random, the format's whole exponent range, zeros, subnormals */
    "narrow", /* exponents in [-2, 2]: long carries */
    "cancel", /* c = -(sum of the products) rounded to fp32: cancellation */
    "align",  /* one large product, the rest 8..34 binades below, random signs */
    "sign",   /* as align, the small products all of one sign: truncation vs rounding */
    "block",  /* +X and -X at two random positions, small terms 10..30 binades below */
    "cbig",   /* c large, every product 5..30 binades below c */
    "tiny",   /* products near the bottom of the format (subnormals), c 0 or 2^-140 */
    "chain",  /* large products in the first instruction only, later ones 8..30 below */
    "carry",  /* positive products in [1, 4) 2^e, c positive alike: normalisation */
};

/* Fills k terms of a, b and c for category cat; ik = the instruction's K. */
static inline void pf_gen(int fi, int k, int ik, int cat, float *a, float *b, float *c)
{
    const pf_fmt *f = &pf_fmts[fi];
    const int big = fi == PF_BF16 ? pf_uni(-10, 20) : fi == PF_E4M3 ? pf_uni(8, 16) : pf_uni(10, 26);
    *c = 0.0f;
    switch (cat) {
    case 0:
    case 1:
    case 2: {
        int lo = cat == 1 ? -2 : f->lo, hi = cat == 1 ? 2 : f->hi;
        for (int i = 0; i < k; i++) { a[i] = pf_rvalue(fi, lo, hi); b[i] = pf_rvalue(fi, lo, hi); }
        if (cat == 2) {
            double s = 0.0;
            for (int i = 0; i < k; i++) s += (double)a[i] * (double)b[i];
            *c = (float)-s;
        } else {
            *c = (float)ldexp((double)(int64_t)(pf_rnd() % 2000001) - 1e6, pf_uni(-30, 9) - (cat == 1 ? 20 : 0));
            if (pf_rnd() % 5 == 0) *c = 0.0f;
        }
        break;
    }
    case 3:
    case 4:
    case 8: {
        const int sg = (int)(pf_rnd() & 1);
        const int nbig = cat == 8 ? ik : 1;
        const int p0 = cat == 8 ? 0 : pf_uni(0, k - 1);
        for (int i = 0; i < k; i++) {
            const int isbig = cat == 8 ? i < nbig : i == p0;
            if (isbig) pf_term(fi, big, -1, &a[i], &b[i]);
            else pf_term(fi, big - pf_uni(8, cat == 8 ? 30 : 34), cat == 4 ? sg : -1, &a[i], &b[i]);
        }
        if (pf_rnd() % 3 == 0) *c = (float)ldexp((double)(pf_rnd() % 1024) + 1.0, big - 40);
        break;
    }
    case 5: {
        int i0 = pf_uni(0, k - 1), j0 = pf_uni(0, k - 2);
        if (j0 >= i0) j0++;
        for (int i = 0; i < k; i++) pf_term(fi, big - pf_uni(10, 30), -1, &a[i], &b[i]);
        pf_term(fi, big, 0, &a[i0], &b[i0]);
        a[j0] = -a[i0];
        b[j0] = b[i0];
        break;
    }
    case 6: {
        const int sg = pf_rnd() % 3 == 0 ? (int)(pf_rnd() & 1) : -1;
        const int ce = big + pf_uni(5, 30);
        *c = (float)ldexp(1.0 + (double)(pf_rnd() & 0x7fffff) / 8388608.0, ce) * ((pf_rnd() & 1) ? -1.0f : 1.0f);
        for (int i = 0; i < k; i++) pf_term(fi, ce - pf_uni(5, 30), sg, &a[i], &b[i]);
        break;
    }
    case 7: {
        int lo = f->emin - (f->prec - 1), hi = f->emin + 2;
        if (fi == PF_BF16) { lo = -75; hi = -60; }
        for (int i = 0; i < k; i++) { a[i] = pf_rvalue(fi, lo, hi); b[i] = pf_rvalue(fi, lo, hi); }
        *c = (pf_rnd() & 1) ? 0.0f : (float)ldexp(1.0, -140);
        break;
    }
    default: {
        const int e = pf_uni(-3, 3);
        for (int i = 0; i < k; i++) {
            a[i] = pf_value(fi, e, 0);
            b[i] = pf_value(fi, pf_uni(-1, 1), 0);
        }
        *c = (float)ldexp(1.0 + (double)(pf_rnd() & 0x7fffff) / 8388608.0, 2 * e + pf_uni(0, 6));
        break;
    }
    }
}

/* ---- candidate models ------------------------------------------------------------------
 * A block FMA of nb terms: exact products with unnormalised significands at e_a + e_b
 * (inputs below the format's minimum exponent at that exponent), c at its binary32
 * exponent; E = the largest (not below -133); every term truncated (toward zero) to a
 * multiple of 2^(E - F) (F = 25: FD_ACC_TC16); the sum normalised and rounded to 24 bits,
 * toward zero (rn = 0) or to nearest even (rn = 1). cmode = 1: the products alone are
 * aligned and truncated to F fraction bits of their largest exponent, then added to c
 * with one rounding of the exact sum (c outside the block's alignment); cmode = 2: the
 * alignment exponent includes c's, the products are truncated to it, c enters whole, one
 * final rounding (only the products lose bits). Longer k chains
 * blocks of nb in K order through c. */
typedef struct {
    int nb, F, rn, cmode;
    char name[48];
} pf_model;

static inline int pf_expo(double x, int emin) /* floor(log2|x|), not below emin; x != 0 */
{
    int e;
    (void)frexp(x, &e);
    return e - 1 < emin ? emin : e - 1;
}

static inline float pf_block(const float *a, const float *b, int n, float c, int emin_in, const pf_model *m)
{
    double p[64];
    int pe[64], np = 0;
    for (int i = 0; i < n && np < 64; i++) {
        if (fpclassify(a[i]) == FP_ZERO || fpclassify(b[i]) == FP_ZERO) continue;
        p[np] = (double)a[i] * (double)b[i];
        pe[np] = pf_expo(a[i], emin_in) + pf_expo(b[i], emin_in);
        np++;
    }
    const int cz = fpclassify(c) == FP_ZERO;
    if (np == 0 && cz) return 0.0f;
    int E = -133;
    for (int i = 0; i < np; i++)
        if (pe[i] > E) E = pe[i];
    if (m->cmode == 0 && !cz && pf_expo(c, -126) > E) E = pf_expo(c, -126);
    const int q = E - m->F;
    double s = 0.0;
    for (int i = 0; i < np; i++) s += trunc(ldexp(p[i], -q));
    if (m->cmode == 0) {
        if (!cz) s += trunc(ldexp((double)c, -q));
        return tc_round24(ldexp(s, q), m->rn);
    }
    if (m->cmode == 2) { /* c takes part in E but enters untruncated; one final rounding */
        if (!cz && pf_expo(c, -126) > E) {
            E = pf_expo(c, -126);
            const int q2 = E - m->F;
            s = 0.0;
            for (int i = 0; i < np; i++) s += trunc(ldexp(p[i], -q2));
            return tc_round24((double)((long double)c + (long double)ldexp(s, q2)), m->rn);
        }
        return tc_round24((double)((long double)c + (long double)ldexp(s, q)), m->rn);
    }
    /* cmode 1: c + S with one rounding; S = s 2^q is exact, c + S needs care: both are
     * multiples of 2^min(q, ulp(c)); the spread may exceed 53 bits, so round via long
     * double when it does not fit (a rare case, good enough for a candidate). */
    long double t = (long double)c + (long double)ldexp(s, q);
    return tc_round24((double)t, m->rn);
}

static inline float pf_dot(const float *a, const float *b, int k, float c, int emin_in, const pf_model *m)
{
    for (int i = 0; i < k; i += m->nb) c = pf_block(a + i, b + i, k - i < m->nb ? k - i : m->nb, c, emin_in, m);
    return c;
}

/* The candidates for an instruction of K = ik: nb in {ik/4, ik/2, ik} (at least 4), F from
 * 23 to 27 (16-bit inputs) or 10 to 27 (FP8), RZ/RN, cmode 0 and 2 (and 1 for FP8). */
static inline int pf_models(int fi, int ik, pf_model *out, int cap)
{
    int n = 0;
    const int fp8 = fi >= PF_E4M3;
    for (int nb = ik / 4 < 4 ? 4 : ik / 4; nb <= ik; nb *= 2)
        for (int F = fp8 ? 10 : 23; F <= 27; F++)
            for (int rn = 0; rn < 2; rn++)
                for (int cm = 0; cm <= 2; cm++) {
                    if (cm == 1 && !fp8) continue;
                    if (n >= cap) return n;
                    pf_model *m = &out[n++];
                    m->nb = nb; m->F = F; m->rn = rn; m->cmode = cm;
                    snprintf(m->name, sizeof m->name, "b%d-F%d-%s%s", nb, F, rn ? "rn" : "rz",
                             cm == 1 ? "-csep" : cm == 2 ? "-cwhole" : "");
                }
    return n;
}

/* ---- one measured set ----------------------------------------------------------------- */
typedef struct {
    const char *instr; /* "wgmma" or "mma" */
    int fi, k, ik, n;
    float *a, *b, *c, *d;
    unsigned char *cat;
} pf_set;

static inline void pf_set_name(const pf_set *s, char *buf, size_t len)
{
    snprintf(buf, len, "%s-%s-k%d", s->instr, pf_fmts[s->fi].name, s->k);
}

static inline int pf_set_alloc(pf_set *s, const char *instr, int fi, int k, int n, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->instr = instr; s->fi = fi; s->k = k; s->n = n;
    s->ik = fi >= PF_E4M3 ? 32 : 16;
    s->a = calloc((size_t)n * (size_t)k, sizeof(float));
    s->b = calloc((size_t)n * (size_t)k, sizeof(float));
    s->c = calloc((size_t)n, sizeof(float));
    s->d = calloc((size_t)n, sizeof(float));
    s->cat = calloc((size_t)n, 1);
    if (!s->a || !s->b || !s->c || !s->d || !s->cat) return -1;
    /* the same inputs for mma and wgmma of one format and k: their results compare directly */
    pf_state = seed ^ ((uint64_t)fi << 40) ^ ((uint64_t)k << 20);
    for (int i = 0; i < n; i++) {
        s->cat[i] = (unsigned char)(i % PF_NCAT);
        pf_gen(fi, k, s->ik, s->cat[i], s->a + (size_t)(i * k), s->b + (size_t)(i * k), &s->c[i]);
    }
    return 0;
}

static inline void pf_set_free(pf_set *s)
{
    free(s->a); free(s->b); free(s->c); free(s->d); free(s->cat);
    memset(s, 0, sizeof *s);
}

static inline int pf_same(float x, float y) { return fd_f32_bits(x) == fd_f32_bits(y); }
static inline int pf_emin_in(int fi) { return pf_fmts[fi].emin; }

/* Counts per candidate; writes the table to f (and the best few to the caller). Returns
 * the library model's count (FD_ACC_TC16: 16-term blocks, F = 25, RZ; for FP8 the inputs
 * are passed as fp16 values, which every e4m3/e5m2 value is, subnormals at -14: exact for
 * e5m2, for e4m3 its subnormals sit at -6 and would differ only in tiny-input blocks). */
typedef struct { int count; int idx; } pf_score;
static inline int pf_cmp_score(const void *x, const void *y)
{
    const pf_score *p = x, *q = y;
    return q->count != p->count ? q->count - p->count : p->idx - q->idx;
}

static inline int pf_judge(const pf_set *s, FILE *f, int *best_count, char *best_name, size_t best_len)
{
    enum { CAP = 512 };
    static pf_model ms[CAP];
    static pf_score sc[CAP];
    static int percat[CAP][PF_NCAT];
    const int nm = pf_models(s->fi, s->ik, ms, CAP);
    int catn[PF_NCAT] = {0};
    memset(percat, 0, sizeof percat);
    for (int j = 0; j < nm; j++) { sc[j].count = 0; sc[j].idx = j; }
    int lib = 0, seq = 0, one = 0, lib8 = 0;
    const int emin = pf_emin_in(s->fi);
    /* FP8 sets: the library's measured model of the set's instruction (fd_accum.h) */
    const int fp8 = s->fi >= PF_E4M3;
    const fd_dtype t8 = s->fi == PF_E5M2 ? FD_DT_E5M2 : FD_DT_E4M3;
    const fd_tc_fp8_params m8 = s->instr[0] == 'w' ? fd_tc_fp8_wgmma() : fd_tc_fp8_default();
    for (int i = 0; i < s->n; i++) {
        const float *a = s->a + (size_t)i * (size_t)s->k, *b = s->b + (size_t)i * (size_t)s->k;
        const float c = s->c[i], d = s->d[i];
        catn[s->cat[i]]++;
        const fd_dtype t = s->fi == PF_BF16 ? FD_DT_BF16 : FD_DT_FP16;
        lib += pf_same(fd_dot_acc_dt(FD_ACC_TC16, a, 1, b, 1, s->k, c, t), d);
        seq += pf_same(fd_dot_acc(FD_ACC_SEQ, a, 1, b, 1, s->k, c), d);
        long double x = c;
        for (int q = 0; q < s->k; q++) x += (long double)a[q] * (long double)b[q];
        one += pf_same((float)x, d);
        if (fp8) lib8 += pf_same(fd_dot_tc_fp8(&m8, a, 1, t8, b, 1, t8, s->k, c), d);
        for (int j = 0; j < nm; j++)
            if (pf_same(pf_dot(a, b, s->k, c, emin, &ms[j]), d)) { sc[j].count++; percat[j][s->cat[i]]++; }
    }
    qsort(sc, (size_t)nm, sizeof sc[0], pf_cmp_score);
    char nmbuf[64];
    pf_set_name(s, nmbuf, sizeof nmbuf);
    fprintf(f, "%s: %d blocks; FD_ACC_TC16 %d, sequential fmaf %d, one rounding %d", nmbuf, s->n, lib, seq, one);
    if (fp8) fprintf(f, ", %s %d", s->instr[0] == 'w' ? "FD_TC_FP8_WGMMA_SM90" : "FD_TC_FP8_MMA_SM90", lib8);
    fprintf(f, "\n");
    fprintf(f, "  best candidates (per category:");
    for (int c = 0; c < PF_NCAT; c++) if (catn[c]) fprintf(f, " %s/%d", pf_cat_names[c], catn[c]);
    fprintf(f, ")\n");
    for (int r = 0; r < nm && r < 12; r++) {
        const int j = sc[r].idx;
        fprintf(f, "  %-18s %6d ", ms[j].name, sc[r].count);
        for (int c = 0; c < PF_NCAT; c++) if (catn[c]) fprintf(f, " %d", percat[j][c]);
        fprintf(f, "\n");
    }
    if (best_count) *best_count = nm ? sc[0].count : 0;
    if (best_name && best_len) snprintf(best_name, best_len, "%s", nm ? ms[sc[0].idx].name : "-");
    return lib;
}

/* Layout self-check inputs: small integers with random signs (products +-1, 2 or 4, c in
 * 0..15), exact in every format; partial sums stay far below 2^10, so even an accumulator
 * keeping only 10 fraction bits sums them exactly, while any term read from the wrong
 * place (or a zero read instead of it) changes the result. */
static char pf_selfcheck_note[256];
static inline void pf_selfcheck_inputs(float *a, float *b, float *c, int n, int k)
{
    pf_state = 0x5eed5eedu;
    for (int i = 0; i < n * k; i++) {
        a[i] = (float)(int)(1 + pf_rnd() % 2) * ((pf_rnd() & 1) ? -1.0f : 1.0f);
        b[i] = (float)(int)(1 + pf_rnd() % 2);
    }
    for (int i = 0; i < n; i++) c[i] = (float)(int)(pf_rnd() % 16);
}
static inline int pf_selfcheck_ok(const float *a, const float *b, const float *c, const float *d, int n, int k)
{
    pf_selfcheck_note[0] = 0;
    for (int i = 0; i < n; i++) {
        double s = c[i];
        for (int q = 0; q < k; q++) s += (double)a[(size_t)(i * k + q)] * (double)b[(size_t)(i * k + q)];
        if (!pf_same(d[i], (float)s)) { /* s: a small integer, exact */
            snprintf(pf_selfcheck_note, sizeof pf_selfcheck_note, "block %d: exact %.17g, hardware %.9g (%a)", i, s,
                     (double)d[i], (double)d[i]);
            return 0;
        }
    }
    return 1;
}

#ifndef PF_NO_CUDA /* CPU-only users (test_probe_models.c) define PF_NO_CUDA */
/* ---- running the hardware -------------------------------------------------------------- */
static inline int pf_run(pf_set *s, char *err, size_t len)
{
    if (s->fi < PF_E4M3 && s->instr[0] == 'm')
        return fd_cuda_mma16_chain_blocks(s->a, s->b, s->c, s->d, s->n, s->k,
                                          s->fi == PF_BF16 ? FD_DT_BF16 : FD_DT_FP16, err, len);
    if (s->fi < PF_E4M3)
        return fd_cuda_wgmma_blocks(s->a, s->b, s->c, s->d, s->n, s->k,
                                    s->fi == PF_BF16 ? FD_DT_BF16 : FD_DT_FP16, err, len);
    if (s->instr[0] == 'm') return fd_cuda_mma_fp8_blocks(s->a, s->b, s->c, s->d, s->n, s->k, s->fi == PF_E5M2, err, len);
    return fd_cuda_wgmma_fp8_blocks(s->a, s->b, s->c, s->d, s->n, s->k, s->fi == PF_E5M2, err, len);
}

/* Runs the integer self-check through one probe; 1 exact, 0 wrong, -1 CUDA error (err). */
static inline int pf_selfcheck(const char *instr, int fi, int k, char *err, size_t len)
{
    enum { N = 64 };
    static float a[N * 512], b[N * 512], c[N], d[N];
    pf_set s = {instr, fi, k, fi >= PF_E4M3 ? 32 : 16, N, a, b, c, d, NULL};
    pf_selfcheck_inputs(a, b, c, N, k);
    if (pf_run(&s, err, len)) return -1;
    return pf_selfcheck_ok(a, b, c, d, N, k);
}

/* Picks the descriptor reading (fd_cuda_probe_set_layout) under which wgmma fp16 k64,
 * bf16 k64 and e4m3 k128 give exact integer sums; logs to f. Returns the layout, -1 when
 * neither works (layout 0 left set), -2 on a CUDA error (err). */
static inline int pf_pick_layout(FILE *f, char *err, size_t len)
{
    for (int L = 0; L < 2; L++) {
        fd_cuda_probe_set_layout(L);
        int ok = 1;
        const int fis[3] = {PF_FP16, PF_BF16, PF_E4M3}, ks[3] = {64, 64, 128};
        for (int j = 0; j < 3; j++) {
            int r = pf_selfcheck("wgmma", fis[j], ks[j], err, len);
            if (r < 0) return -2;
            if (f) fprintf(f, "self-check layout %d wgmma %s k%d: %s %s\n", L, pf_fmts[fis[j]].name, ks[j], r ? "exact" : "WRONG",
                           pf_selfcheck_note);
            ok &= r;
        }
        if (ok) return L;
    }
    fd_cuda_probe_set_layout(0);
    return -1;
}
#endif /* PF_NO_CUDA */
#endif
