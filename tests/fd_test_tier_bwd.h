/* fd_test_tier_bwd.h: the backward tier's property against MPFR, one definition for
 * test_tier_bwd.c (the CPU tier) and gpu_test_tier.c (the GPU tier): a decided gradient value
 * is within its own bound of MPFR's correctly rounded value (|x - r| <= dx + 2^-52 |r|) and
 * within 1/1000 ulp of the dtype of it, with the same dtype ulp. Header-only (static inline),
 * Criterion assertions. */
#ifndef FD_TEST_TIER_BWD_H
#define FD_TEST_TIER_BWD_H
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_inputs.h"
#include "fd_ref_bwd.h"
#include "fd_run_bwd.h"
#include "fd_tier_bwd.h"
#include "fd_tier_cpu.h"

typedef struct {
    long values, decided, equal_bits, groups, groups_mpfr_undecided, zeros;
    long vq, dq, vk, dk, vv, dv; /* per gradient */
} tu_btally;

/* MPFR for every group of p into [b][h][r][d] / [b][hk][t][d] (2 threads); und[g]: the
 * group's undecided count. */
static inline void tu_mpfr_bwd(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                     const int *qrows, int nq, const int *krows, int nk, double *mq, double *mk, double *mv, int *und)
{
    const int D = p->head_dim, G = p->heads / p->kv_heads;
    const long ng = (long)p->batch * p->kv_heads;
    int fail = 0;
    fd_ref_opts ro;
    fd_ref_opts_default(&ro);
#pragma omp parallel for schedule(dynamic, 1) num_threads(2) reduction(| : fail)
    for (long g = 0; g < ng; g++) {
        fd_ref_bwd_info info = {0, 0};
        char e2[256];
        fail |= fd_ref_bwd_group(p, q, k, v, dout, (int)(g / p->kv_heads), (int)(g % p->kv_heads), qrows, nq, krows,
                                 nk, &ro, mq + (size_t)g * (size_t)G * (size_t)nq * (size_t)D,
                                 mk + (size_t)g * (size_t)nk * (size_t)D, mv + (size_t)g * (size_t)nk * (size_t)D,
                                 NULL, &info, e2, sizeof e2) != 0;
        und[g] = info.undecided;
    }
    cr_assert_eq(fail, 0, "the MPFR backward reference failed");
}

/* One value: decided -> within its bound of MPFR and 1/1000 dtype ulp, same ulp. */
static inline void tu_bwd_agree(double x, double dx, double r, int prec, int emin, const char *what, const char *g, long t, int d)
{
    const double gap = fabs(x - r);
    cr_assert(gap <= dx + ldexp(fabs(r), -52),
              "%s: %s task %ld d %d: tier %a (bound %a) vs MPFR %a: off by %a, beyond its bound", what, g, t, d, x, dx,
              r, gap);
    const double U = fd_tb_ulp_dtype(r, prec, emin);
    cr_assert(fd_eq(U, fd_tb_ulp_dtype(x, prec, emin)) && gap <= U / 1000.0,
              "%s: %s task %ld d %d: tier %a vs MPFR %a: %g dtype ulp apart (decided means <= 1/1000)", what, g, t, d,
              x, r, gap / U);
}

/* The tier with bounds on the listed rows of p, MPFR on the same, the property on every
 * decided value of every group MPFR decided whole. */
typedef int (*tu_bwd_tier_fn)(const fd_problem *p, const float *q, const float *k, const float *v, const float *dout,
                               const int *qrows, int nq, const int *krows, int nk, fd_tier_bwd_out *out, char *err,
                               size_t errlen);

static inline int tu_bwd_tier_cpu(const fd_problem *p, const float *q, const float *k, const float *v,
                                  const float *dout, const int *qrows, int nq, const int *krows, int nk,
                                  fd_tier_bwd_out *out, char *err, size_t errlen)
{
    return fd_tier_bwd_cpu(p, q, k, v, dout, qrows, nq, krows, nk, 2, out, err, errlen);
}

/* Buffers for a tier's outputs with bounds (tu_bwd_out_free releases them). */
static inline fd_tier_bwd_out tu_bwd_out_alloc(size_t nqv, size_t nkv)
{
    fd_tier_bwd_out o;
    memset(&o, 0, sizeof o);
    o.dq = malloc(sizeof(double) * (nqv + 1));
    o.dk = malloc(sizeof(double) * (nkv + 1));
    o.dv = malloc(sizeof(double) * (nkv + 1));
    o.bdq = malloc(sizeof(double) * (nqv + 1));
    o.bdk = malloc(sizeof(double) * (nkv + 1));
    o.bdv = malloc(sizeof(double) * (nkv + 1));
    o.okq = malloc(nqv + 1);
    o.okk = malloc(nkv + 1);
    o.okv = malloc(nkv + 1);
    cr_assert(o.dq && o.dk && o.dv && o.bdq && o.bdk && o.bdv && o.okq && o.okk && o.okv);
    return o;
}

static inline void tu_bwd_out_free(fd_tier_bwd_out *o)
{
    free(o->dq); free(o->dk); free(o->dv); free(o->bdq); free(o->bdk); free(o->bdv);
    free(o->okq); free(o->okk); free(o->okv);
}

/* The tier (fn) with bounds on the listed rows of p, MPFR on the same, the property on
 * every decided value of every group MPFR decided whole; *keep (may be NULL) receives the
 * tier's outputs (the caller frees them with tu_bwd_out_free). */
static inline void tu_check_bwd(tu_bwd_tier_fn fn, const fd_problem *p, const float *q, const float *k, const float *v,
                                const float *dout, const int *qrows, int nq, const int *krows, int nk, const char *what,
                                tu_btally *tl, fd_tier_bwd_out *keep)
{
    const int D = p->head_dim, G = p->heads / p->kv_heads;
    const long ng = (long)p->batch * p->kv_heads;
    const size_t nqv = (size_t)ng * (size_t)G * (size_t)nq * (size_t)D, nkv = (size_t)ng * (size_t)nk * (size_t)D;
    fd_tier_bwd_out o = tu_bwd_out_alloc(nqv, nkv);
    double *mq = malloc(sizeof(double) * (nqv + 1)), *mk = malloc(sizeof(double) * (nkv + 1)),
           *mv = malloc(sizeof(double) * (nkv + 1));
    int *und = malloc(sizeof(int) * (size_t)ng);
    cr_assert(mq && mk && mv && und);
    char err[256];
    cr_assert_eq(fn(p, q, k, v, dout, qrows, nq, krows, nk, &o, err, sizeof err), 0, "%s: %s", what, err);
    tu_mpfr_bwd(p, q, k, v, dout, qrows, nq, krows, nk, mq, mk, mv, und);
    const int prec = fd_tb_prec((int)p->dtype), emin = fd_tb_emin((int)p->dtype);
    long cnt = 0;
    for (long g = 0; g < ng; g++) {
        tl->groups++;
        if (und[g]) tl->groups_mpfr_undecided++;
        for (int which = 0; which < 3; which++) {
            const size_t per = which == 0 ? (size_t)G * (size_t)nq * (size_t)D : (size_t)nk * (size_t)D;
            const double *x = which == 0 ? o.dq : which == 1 ? o.dk : o.dv;
            const double *bx = which == 0 ? o.bdq : which == 1 ? o.bdk : o.bdv;
            const unsigned char *ok = which == 0 ? o.okq : which == 1 ? o.okk : o.okv;
            const double *m = which == 0 ? mq : which == 1 ? mk : mv;
            long *vals = which == 0 ? &tl->vq : which == 1 ? &tl->vk : &tl->vv;
            long *decs = which == 0 ? &tl->dq : which == 1 ? &tl->dk : &tl->dv;
            for (size_t e = (size_t)g * per; e < (size_t)(g + 1) * per; e++) {
                tl->values++;
                (*vals)++;
                cnt += ok[e];
                if (!ok[e]) continue;
                tl->decided++;
                (*decs)++;
                if (fd_eq(x[e], 0.0)) tl->zeros++;
                if (und[g]) continue; /* MPFR's values of that group are estimates */
                uint64_t ux, ur;
                memcpy(&ux, &x[e], 8);
                memcpy(&ur, &m[e], 8);
                tl->equal_bits += ux == ur;
                tu_bwd_agree(x[e], bx[e], m[e], prec, emin, what, which == 0 ? "dQ" : which == 1 ? "dK" : "dV",
                      (long)(e / (size_t)D), (int)(e % (size_t)D));
            }
        }
    }
    cr_assert_eq(cnt, o.ndecided, "%s: the tier counted %ld decided values, its flags say %ld", what, o.ndecided, cnt);
    if (keep) *keep = o;
    else tu_bwd_out_free(&o);
    free(mq); free(mk); free(mv); free(und);
}

static inline void tu_bwd_report(const char *what, const tu_btally *tl)
{
    printf("%s: %ld gradient values, %ld decided by the tier (%.1f%%: dQ %.1f%%, dK %.1f%%, dV %.1f%%), %ld of them "
           "exact zeros, %ld equal to MPFR's bits; %ld groups, %ld left undecided by MPFR\n",
           what, tl->values, tl->decided, 100.0 * (double)tl->decided / (double)(tl->values ? tl->values : 1),
           100.0 * (double)tl->dq / (double)(tl->vq ? tl->vq : 1), 100.0 * (double)tl->dk / (double)(tl->vk ? tl->vk : 1),
           100.0 * (double)tl->dv / (double)(tl->vv ? tl->vv : 1), tl->zeros, tl->equal_bits, tl->groups,
           tl->groups_mpfr_undecided);
    fflush(stdout);
}


#endif
