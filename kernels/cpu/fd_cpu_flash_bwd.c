/* fd_cpu_flash_bwd.c: FlashAttention-2's backward replayed in binary32 (fd_bwd.h's
 * contract, fd_cpu_bwd.h's interface), with every stage switchable to binary64 for
 * attribution (fd_cpu_flash_bwd_stages).
 *
 * Loop order. The contract states the kernel's schedule: key tiles n outside, query tiles
 * m inside from the last to the first. The replay runs query tiles m from the last to the
 * first outside and the key tiles they see inside; this visits, for every key tile n, the
 * same query tiles in the same (descending) order, so each key's dK/dV chain is the
 * contract's, and it lets the dQ partials of one query tile be added (in the dQ order)
 * as soon as they are all known, with memory for one query tile's partials only.
 *
 * Arithmetic. Built with -ffp-contract=off: every fused multiply-add of the contract is
 * written as fmaf, nothing else fuses. Values flow as double; a stage that is not exact
 * rounds to binary32 (and to the dtype) exactly where the kernel does, so with exact = 0
 * the results are fd_cpu_flash_backward's bit for bit. An exact stage feeding a stage
 * that is not passes its value rounded to binary32 (the TC16 model takes binary32 inputs
 * with exact products, as fd_cpu_flash.c does for its P with FD_STAGE_PROUND).
 * Exact dots (FD_BSTAGE_P, _DP, _D) are sums of the products (exact in binary64 for two
 * dtype values) accumulated in long double and rounded once to binary64; the binary64
 * accumulations (FD_BSTAGE_DQACC, _DKDV) are plain binary64 sums of binary64 products.
 *
 * fp32 inputs: the CUDA kernel supports fp16/bf16 only; for FD_DT_FP32 every product
 * that is an MMA for fp16/bf16 is an FD_ACC_SEQ fmaf chain in the same order instead
 * (the dK/dV and dQ chains included), and rounding to the dtype is the identity. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cpu_bwd.h"
#include "fd_dtype.h"
#include "fd_exp2.h"
#include "fd_mods.h"
#include "fd_philox.h"

#define FD_LOG2E 1.4426950408889634073599246810018921

int fd_cpu_check_problem(const fd_problem *p, char *err, size_t errlen);

static float fexp2(fd_exp2_mode m, float x)
{
    return m == FD_EXP2_PORTABLE ? fd_exp2_portable(x) : exp2f(x);
}

/* splitmix64 (Steele, Lea, Flood 2014): the dQ order of FD_DQ_ORDER_SHUFFLE. */
static uint64_t fd_splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Sum of exact products, long double accumulation, one rounding to binary64. */
static double xdot_ff(const float *a, const float *b, int n)
{
    long double s = 0.0L;
    for (int i = 0; i < n; i++) s += (long double)((double)a[i] * (double)b[i]);
    return (double)s;
}
static double xdot_fd(const float *a, const double *b, int n)
{
    long double s = 0.0L;
    for (int i = 0; i < n; i++) s += (long double)a[i] * (long double)b[i];
    return (double)s;
}

typedef struct {
    const fd_problem *p;
    const fd_flash_cfg *fcfg;
    const fd_bwd_cfg *bcfg;
    unsigned ex;
    fd_accum_model mm; /* TC16 for fp16/bf16, SEQ for fp32 */
    int br, bc, D, nm, nn;
    int dropout;
    int no_kv;                 /* dQ only: no dK/dV chains (fd_cpu_flash_backward_orders) */
    uint8_t thr;
    float scale_log2, lse_log2e, pk, rp, srp;
    double scale_d, pk_d, rp_d;
    float scale_sm, cap_in;    /* FA2's scale_softmax and params.softcap (fd_mods.h) */
    double scale_sm_d;
    const float *q, *k, *v, *o, *lse, *dout;
    const double *o_exact;
    /* per (b, h) */
    double *Dd;                /* D'_i, [sq] */
    double *acc_dk, *acc_dv;   /* [sk][D] */
    /* per query tile */
    float *QT, *dOT;           /* [D][br] (rows beyond s_q are 0) */
    double *part;              /* [nn][br][D] dQ partials */
    double *dqacc;             /* [br][D] */
    int *perm;                 /* [nn] */
    int *tiles;                /* [nn]: the key tiles visiting the current query tile */
    /* per (query tile, key tile) */
    float *KT;                 /* [D][bc] */
    double *PvT_d, *dSrT_d;    /* [bc][br] */
    float *PvT_f, *dSrT_f;     /* [bc][br] */
    double *dSr_d;             /* [br][bc] */
    float *dSr_f;              /* [br][bc] */
} fd_bwd_ctx;

static void ctx_free(fd_bwd_ctx *x)
{
    free(x->Dd); free(x->acc_dk); free(x->acc_dv); free(x->QT); free(x->dOT);
    free(x->part); free(x->dqacc); free(x->perm); free(x->tiles); free(x->KT); free(x->PvT_d);
    free(x->dSrT_d); free(x->PvT_f); free(x->dSrT_f); free(x->dSr_d); free(x->dSr_f);
}

static int ctx_init(fd_bwd_ctx *x, const fd_problem *p, const fd_flash_cfg *fcfg,
                    const fd_bwd_cfg *bcfg, unsigned exact, const float *q, const float *k,
                    const float *v, const float *o, const float *lse, const float *dout,
                    const void *dq, const void *dk, const void *dv, char *err, size_t errlen)
{
    memset(x, 0, sizeof *x);
    if (!p || !fcfg || !bcfg || !q || !k || !v || !o || !lse || !dout || !dq || !dk || !dv) {
        snprintf(err, errlen, "backward: a NULL argument");
        return -1;
    }
    if (fd_cpu_check_problem(p, err, errlen)) return -1;
    if (p->page_size > 0) {
        snprintf(err, errlen, "the backward of a paged KV cache is not supported (forward only)");
        return -1;
    }
    if (p->dtype != FD_DT_FP16 && p->dtype != FD_DT_BF16 && p->dtype != FD_DT_FP32) {
        snprintf(err, errlen, "backward: unknown dtype %d", (int)p->dtype);
        return -1;
    }
    if (bcfg->dq_mode != FD_DQ_ATOMIC && bcfg->dq_mode != FD_DQ_DETERMINISTIC) {
        snprintf(err, errlen, "backward: unknown dQ mode %d", (int)bcfg->dq_mode);
        return -1;
    }
    if (bcfg->dq_order != FD_DQ_ORDER_ASC && bcfg->dq_order != FD_DQ_ORDER_DESC &&
        bcfg->dq_order != FD_DQ_ORDER_SHUFFLE) {
        snprintf(err, errlen, "backward: unknown dQ order %d", (int)bcfg->dq_order);
        return -1;
    }
    int br = bcfg->br, bc = bcfg->bc;
    if (br == 0 && bc == 0) fd_bwd_tile_default(p->head_dim, &br, &bc);
    if (br <= 0 || bc <= 0 || br % 16 != 0 || bc % 16 != 0) {
        snprintf(err, errlen, "backward: tile sizes must be positive multiples of 16 (br %d, bc %d)",
                 br, bc);
        return -1;
    }
    x->p = p; x->fcfg = fcfg; x->bcfg = bcfg; x->ex = exact;
    x->mm = p->dtype == FD_DT_FP32 ? FD_ACC_SEQ : FD_ACC_TC16;
    x->br = br; x->bc = bc; x->D = p->head_dim;
    x->nm = (p->seqlen_q + br - 1) / br;
    x->nn = (p->seqlen_k + bc - 1) / bc;
    x->dropout = p->dropout_p > 0.0;
    x->thr = fd_fa2_threshold(p->dropout_p);
    /* FA2's params (flash_api.cpp): scale_softmax_log2 = softmax_scale * M_LOG2E (a double
     * product stored as float), p_dropout = 1.f - p, rp_dropout = 1.f / p_dropout,
     * scale_softmax_rp_dropout = rp_dropout * scale_softmax (binary32). */
    /* With a softcap c FA2 folds the scales (fd_mods.h): scale_softmax = c, params.softcap
     * = softmax_scale / c; the backward's scale_softmax_log2 and scale_softmax_rp_dropout
     * are built from that scale_softmax. */
    x->scale_sm = p->softcap > 0.0f ? p->softcap : p->softmax_scale;
    x->cap_in = p->softcap > 0.0f ? p->softmax_scale / p->softcap : 0.0f;
    x->scale_sm_d = (double)x->scale_sm;
    x->scale_log2 = (float)((double)x->scale_sm * FD_LOG2E);
    x->lse_log2e = (float)FD_LOG2E;
    x->pk = x->dropout ? 1.0f - (float)p->dropout_p : 1.0f;
    x->rp = x->dropout ? 1.0f / x->pk : 1.0f;
    x->srp = x->dropout ? x->rp * x->scale_sm : x->scale_sm;
    x->scale_d = (double)x->scale_sm;
    x->pk_d = x->dropout ? 1.0 - p->dropout_p : 1.0;
    x->rp_d = x->dropout ? 1.0 / (1.0 - p->dropout_p) : 1.0;
    x->q = q; x->k = k; x->v = v; x->o = o; x->lse = lse; x->dout = dout;
    const size_t D = (size_t)x->D, sBR = (size_t)br, sBC = (size_t)bc;
    const size_t skD = (size_t)p->seqlen_k * D;
    x->Dd = malloc(sizeof(double) * (size_t)p->seqlen_q);
    x->acc_dk = malloc(sizeof(double) * skD);
    x->acc_dv = malloc(sizeof(double) * skD);
    x->QT = calloc(D * sBR, sizeof(float));
    x->dOT = calloc(D * sBR, sizeof(float));
    x->part = malloc(sizeof(double) * (size_t)x->nn * sBR * D);
    x->dqacc = malloc(sizeof(double) * sBR * D);
    x->perm = malloc(sizeof(int) * (size_t)x->nn);
    x->tiles = malloc(sizeof(int) * (size_t)x->nn);
    x->KT = calloc(D * sBC, sizeof(float));
    x->PvT_d = calloc(sBC * sBR, sizeof(double));
    x->dSrT_d = calloc(sBC * sBR, sizeof(double));
    x->PvT_f = calloc(sBC * sBR, sizeof(float));
    x->dSrT_f = calloc(sBC * sBR, sizeof(float));
    x->dSr_d = calloc(sBR * sBC, sizeof(double));
    x->dSr_f = calloc(sBR * sBC, sizeof(float));
    if (!x->Dd || !x->acc_dk || !x->acc_dv || !x->QT || !x->dOT || !x->part || !x->dqacc ||
        !x->perm || !x->tiles || !x->KT || !x->PvT_d || !x->dSrT_d || !x->PvT_f || !x->dSrT_f || !x->dSr_d ||
        !x->dSr_f) {
        ctx_free(x);
        memset(x, 0, sizeof *x);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* Step 1: D'_i for every row of (b, h). */
static void compute_D(fd_bwd_ctx *x, int b, int h)
{
    const fd_problem *p = x->p;
    const int D = x->D;
    const int xd = !!(x->ex & FD_BSTAGE_D);
    for (int i = 0; i < p->seqlen_q; i++) {
        const size_t ix = fd_q_index(p, b, i, h, 0);
        const float *doi = x->dout + ix;
        if (xd) {
            double s = x->o_exact ? xdot_fd(doi, x->o_exact + ix, D) : xdot_ff(doi, x->o + ix, D);
            x->Dd[i] = x->dropout ? s * x->pk_d : s;
        } else {
            const float *oi = x->o + ix;
            float s = 0.0f;
            for (int d = 0; d < D; d++) s = fmaf(doi[d], oi[d], s);
            if (x->dropout) s *= x->pk;
            x->Dd[i] = (double)s;
        }
    }
}

/* Step 3 for query tile m of (b, h) against key tile n: P, dS, the dK/dV chains of the
 * tile's keys, and the dQ partial into x->part[n]. */
static void tile_pair(fd_bwd_ctx *x, int b, int h, int m, int n, int slot)
{
    const fd_problem *p = x->p;
    const unsigned ex = x->ex;
    const int xp = !!(ex & FD_BSTAGE_P), xpr = !!(ex & FD_BSTAGE_PROUND);
    const int xdp = !!(ex & FD_BSTAGE_DP), xds = !!(ex & FD_BSTAGE_DSROUND);
    const int xdq = !!(ex & FD_BSTAGE_DQACC), xkv = !!(ex & FD_BSTAGE_DKDV);
    const int D = x->D, br = x->br, bc = x->bc, sq = p->seqlen_q, sk = p->seqlen_k;
    const int hk = fd_kv_head(p, h);
    const int i0 = m * br, j0 = n * bc;
    const int mr = i0 + br <= sq ? br : sq - i0;
    const int nc = j0 + bc <= sk ? bc : sk - j0;
    const fd_dtype dt = p->dtype;
    const int nodtanh = !!(x->bcfg->bugs & FD_BWD_BUG_NO_DTANH);
    /* ALiBi: FA2 divides the slope by scale_softmax in binary32, as the forward */
    const float slope_raw = p->alibi ? p->alibi_slopes[h] / x->scale_sm : 0.0f;
    const double slope_d = p->alibi ? (double)p->alibi_slopes[h] / x->scale_sm_d : 0.0;
    const double capin_d = p->softcap > 0.0f ? (double)p->softmax_scale / (double)p->softcap : 0.0;

    /* K^T of the tile for the dQ partials */
    for (int c = 0; c < nc; c++) {
        const float *kj = x->k + fd_kv_index(p, b, j0 + c, hk, 0);
        for (int d = 0; d < D; d++) x->KT[(size_t)d * (size_t)bc + (size_t)c] = kj[d];
    }

    for (int r = 0; r < mr; r++) {
        const int i = i0 + r;
        const float *qi = x->q + fd_q_index(p, b, i, h, 0);
        const float *doi = x->dout + fd_q_index(p, b, i, h, 0);
        const float lsef = x->lse[fd_lse_index(p, b, h, i)];
        const int lse_ok = isfinite(lsef);
        const float lse2 = lsef * x->lse_log2e;
        const double Dd = x->Dd[i];
        int vlo, vhi;
        (void)fd_mask_visible_range(p, i, &vlo, &vhi);
        for (int c = 0; c < nc; c++) {
            const int j = j0 + c;
            const float *kj = x->k + fd_kv_index(p, b, j, hk, 0);
            const float *vj = x->v + fd_kv_index(p, b, j, hk, 0);
            const int dist = fd_alibi_dist(i, j, sq, sk);
            double P = 0.0, dth = 1.0; /* dth: the softcap's derivative factor */
            if (xp) {
                /* the modifiers in binary64 too: part of the P stage */
                double s = xdot_ff(qi, kj, D);
                if (x->cap_in > 0.0f) {
                    const double t = tanh(s * capin_d);
                    dth = (1.0 - t * t) * capin_d;
                    s = t;
                }
                if (lse_ok && j >= vlo && j <= vhi)
                    P = exp((s - slope_d * (double)dist) * x->scale_d - (double)lsef);
            } else {
                float s = fd_dot_acc_dt(x->mm, qi, 1, kj, 1, D, 0.0f, dt);
                if (x->cap_in > 0.0f) {
                    /* FA2's calculate_dtanh: (1 - t^2) params.softcap on the capped score,
                     * before the bias and the mask; 1 - t t one fmaf (nvcc contracts it) */
                    const float t = fd_tanh_portable(s * x->cap_in);
                    dth = (double)(fmaf(-t, t, 1.0f) * x->cap_in);
                    s = t;
                }
                if (lse_ok && j >= vlo && j <= vhi) {
                    if (p->alibi) s = fmaf(-slope_raw, (float)dist, s);
                    P = (double)fexp2(x->fcfg->exp2_mode, fmaf(s, x->scale_log2, -lse2));
                }
            }
            if (nodtanh) dth = 1.0;
            const double dP = xdp ? xdot_ff(doi, vj, D)
                                  : (double)fd_dot_acc_dt(x->mm, doi, 1, vj, 1, D, 0.0f, dt);
            const int kept = !x->dropout || fd_fa2_keep(p->seed, p->offset, x->thr, p->heads, b, h, i, j);
            double dS, Pv;
            if (xds) {
                dS = P * (kept ? dP - Dd : -Dd) * dth;
            } else {
                const float Pf = (float)P, dPf = (float)dP, Df = (float)Dd;
                float dSf = Pf * (kept ? dPf - Df : -Df);
                if (x->cap_in > 0.0f && !nodtanh) dSf *= (float)dth;
                dS = (double)fd_round_to_dtype(dSf, dt);
            }
            if (xpr) Pv = kept ? P : 0.0;
            else Pv = (double)fd_round_to_dtype(kept ? (float)P : 0.0f, dt);
            const size_t tix = (size_t)c * (size_t)br + (size_t)r;
            const size_t rix = (size_t)r * (size_t)bc + (size_t)c;
            x->PvT_d[tix] = Pv;
            x->PvT_f[tix] = (float)Pv;
            x->dSrT_d[tix] = dS;
            x->dSrT_f[tix] = (float)dS;
            x->dSr_d[rix] = dS;
            x->dSr_f[rix] = (float)dS;
        }
    }

    /* dV_j += sum_r Pv_rj dO_r, dK_j += sum_r dSr_rj q_r: rows ascending, 16-row blocks
     * chained onto the running accumulator. */
    for (int c = 0; c < nc && !x->no_kv; c++) {
        const size_t co = (size_t)c * (size_t)br;
        double *av = x->acc_dv + (size_t)(j0 + c) * (size_t)D;
        double *ak = x->acc_dk + (size_t)(j0 + c) * (size_t)D;
        for (int d = 0; d < D; d++) {
            const size_t dofs = (size_t)d * (size_t)br;
            if (xkv) {
                double sv = av[d], sk2 = ak[d];
                for (int r = 0; r < mr; r++) {
                    sv += x->PvT_d[co + (size_t)r] * (double)x->dOT[dofs + (size_t)r];
                    sk2 += x->dSrT_d[co + (size_t)r] * (double)x->QT[dofs + (size_t)r];
                }
                av[d] = sv;
                ak[d] = sk2;
            } else {
                av[d] = (double)fd_dot_acc_dt(x->mm, x->PvT_f + co, 1, x->dOT + dofs, 1, mr,
                                              (float)av[d], dt);
                ak[d] = (double)fd_dot_acc_dt(x->mm, x->dSrT_f + co, 1, x->QT + dofs, 1, mr,
                                              (float)ak[d], dt);
            }
        }
    }

    /* dQ partial of (m, n): keys ascending, 16 at a time, from 0. */
    double *part = x->part + (size_t)slot * (size_t)br * (size_t)D;
    for (int r = 0; r < mr; r++) {
        const size_t ro = (size_t)r * (size_t)bc;
        for (int d = 0; d < D; d++) {
            const size_t dofs = (size_t)d * (size_t)bc;
            double a;
            if (xdq) {
                a = 0.0;
                for (int c = 0; c < nc; c++) a += x->dSr_d[ro + (size_t)c] * (double)x->KT[dofs + (size_t)c];
            } else {
                a = (double)fd_dot_acc_dt(x->mm, x->dSr_f + ro, 1, x->KT + dofs, 1, nc, 0.0f, dt);
            }
            part[(size_t)r * (size_t)D + (size_t)d] = a;
        }
    }
}

/* The order in which query tile m of (b, h) adds its nt partials (step 4) under c's dQ
 * mode, order and seed. */
static void dq_order(fd_bwd_ctx *x, const fd_bwd_cfg *c, int b, int h, int m, int nt)
{
    for (int t = 0; t < nt; t++) x->perm[t] = t;
    if (c->dq_mode == FD_DQ_DETERMINISTIC || c->dq_order == FD_DQ_ORDER_ASC) return;
    if (c->dq_order == FD_DQ_ORDER_DESC) {
        for (int t = 0; t < nt; t++) x->perm[t] = nt - 1 - t;
        return;
    }
    /* SHUFFLE: Fisher-Yates from the end, on the splitmix64 stream started at
     * order_seed + 0x9E3779B97F4A7C15 * tile, tile = (b * heads + h) * n_qtiles + m. */
    uint64_t tile = ((uint64_t)b * (uint64_t)x->p->heads + (uint64_t)h) * (uint64_t)x->nm + (uint64_t)m;
    uint64_t s = c->order_seed + 0x9E3779B97F4A7C15ull * tile;
    for (int a = nt - 1; a > 0; a--) {
        int j = (int)(fd_splitmix64(&s) % (uint64_t)(a + 1));
        int t = x->perm[a];
        x->perm[a] = x->perm[j];
        x->perm[j] = t;
    }
}

/* Step 4 for query tile m of (b, h): its nt partials added in c's dQ order, scaled
 * (sq_f / sq_d) and rounded into dq. */
static void dq_add(fd_bwd_ctx *x, const fd_bwd_cfg *c, int b, int h, int m, int mr, int nt, float sq_f,
                   double sq_d, double *dq)
{
    const fd_problem *p = x->p;
    const int xdq = !!(x->ex & FD_BSTAGE_DQACC), xout = !!(x->ex & FD_BSTAGE_OUT);
    const int D = x->D, br = x->br, i0 = m * br;
    dq_order(x, c, b, h, m, nt);
    for (int r = 0; r < mr; r++)
        for (int d = 0; d < D; d++) {
            double a;
            if (xdq) {
                a = 0.0;
                for (int t = 0; t < nt; t++)
                    a += x->part[((size_t)x->perm[t] * (size_t)br + (size_t)r) * (size_t)D + (size_t)d];
            } else {
                float af = 0.0f;
                for (int t = 0; t < nt; t++)
                    af += (float)x->part[((size_t)x->perm[t] * (size_t)br + (size_t)r) * (size_t)D + (size_t)d];
                a = (double)af;
            }
            dq[fd_q_index(p, b, i0 + r, h, d)] =
                xout ? a * sq_d : (double)fd_round_to_dtype((float)a * sq_f, p->dtype);
        }
}

/* The replay into dq, dk, dv (x->no_kv: dq only, dk and dv untouched), and its dQ in the
 * norder further orders of orders[] into dq_orders[]: the partials do not depend on the
 * order, so they are computed once and added once per order. */
static int bwd_run(fd_bwd_ctx *x, double *dq, double *dk, double *dv, int norder, const fd_bwd_cfg *orders,
                   double *const *dq_orders)
{
    const fd_problem *p = x->p;
    const unsigned ex = x->ex, bugs = x->bcfg->bugs;
    const int xkv = !!(ex & FD_BSTAGE_DKDV);
    const int xout = !!(ex & FD_BSTAGE_OUT);
    const int D = x->D, br = x->br, bc = x->bc, sq = p->seqlen_q, sk = p->seqlen_k;
    const int group = p->heads / p->kv_heads;
    const fd_dtype dt = p->dtype;
    const size_t kvn = fd_kv_numel(p);
    double *gk = calloc(kvn, sizeof(double)), *gv = calloc(kvn, sizeof(double));
    if (!gk || !gv) {
        free(gk); free(gv);
        return -1;
    }
    /* final scales (step 4, 5) */
    const float sq_f = (bugs & FD_BWD_BUG_DQ_NOSCALE) ? x->rp : x->srp;
    const float sk_f = (bugs & FD_BWD_BUG_DK_NOSCALE) ? x->rp : x->srp;
    const float sv_f = x->rp;
    const double sq_d = (bugs & FD_BWD_BUG_DQ_NOSCALE) ? x->rp_d : x->scale_d * x->rp_d;
    const double sk_d = (bugs & FD_BWD_BUG_DK_NOSCALE) ? x->rp_d : x->scale_d * x->rp_d;
    const double sv_d = x->rp_d;

    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++) {
            const int hk = fd_kv_head(p, h);
            compute_D(x, b, h);
            for (size_t t = 0; t < (size_t)sk * (size_t)D; t++) x->acc_dk[t] = x->acc_dv[t] = 0.0;
            for (int m = x->nm - 1; m >= 0; m--) {
                const int i0 = m * br, mr = i0 + br <= sq ? br : sq - i0;
                /* the key tiles that visit this query tile (fd_bwd_qtiles, as the kernel),
                 * ascending: an interval of tiles */
                int nt = 0;
                for (int n = 0; n < x->nn; n++) {
                    int q0, q1;
                    fd_bwd_qtiles((int)p->mask, p->window, p->window_left, p->window_right, sq, sk,
                                  br, bc, n, &q0, &q1);
                    if (m >= q0 && m < q1) x->tiles[nt++] = n;
                }
                if (nt > 0) {
                    for (int r = 0; r < mr; r++) {
                        const float *qi = x->q + fd_q_index(p, b, i0 + r, h, 0);
                        const float *doi = x->dout + fd_q_index(p, b, i0 + r, h, 0);
                        for (int d = 0; d < D; d++) {
                            x->QT[(size_t)d * (size_t)br + (size_t)r] = qi[d];
                            x->dOT[(size_t)d * (size_t)br + (size_t)r] = doi[d];
                        }
                    }
                    for (int t = 0; t < nt; t++) tile_pair(x, b, h, m, x->tiles[t], t);
                }
                if (dq) dq_add(x, x->bcfg, b, h, m, mr, nt, sq_f, sq_d, dq);
                for (int t = 0; t < norder; t++) dq_add(x, &orders[t], b, h, m, mr, nt, sq_f, sq_d, dq_orders[t]);
            }
            /* step 5: per-head scales, the group's sum in ascending head order */
            if (x->no_kv || ((bugs & FD_BWD_BUG_NO_GQA_SUM) && h % group != 0)) continue;
            for (int j = 0; j < sk; j++)
                for (int d = 0; d < D; d++) {
                    const size_t a = (size_t)j * (size_t)D + (size_t)d;
                    const size_t g = fd_kv_index(p, b, j, hk, d);
                    const double xk = xout ? x->acc_dk[a] * sk_d : (double)((float)x->acc_dk[a] * sk_f);
                    const double xv = xout ? x->acc_dv[a] * sv_d : (double)((float)x->acc_dv[a] * sv_f);
                    if (xkv) {
                        gk[g] += xk;
                        gv[g] += xv;
                    } else {
                        gk[g] = (double)((float)gk[g] + (float)xk);
                        gv[g] = (double)((float)gv[g] + (float)xv);
                    }
                }
        }
    double *ok = (bugs & FD_BWD_BUG_SWAP_DKDV) ? dv : dk;
    double *ov = (bugs & FD_BWD_BUG_SWAP_DKDV) ? dk : dv;
    for (size_t t = 0; t < kvn && !x->no_kv; t++) {
        ok[t] = xout ? gk[t] : (double)fd_round_to_dtype((float)gk[t], dt);
        ov[t] = xout ? gv[t] : (double)fd_round_to_dtype((float)gv[t], dt);
    }
    free(gk); free(gv);
    return 0;
}

int fd_cpu_flash_bwd_stages(const fd_problem *p, const fd_flash_cfg *fcfg, const fd_bwd_cfg *bcfg,
                            unsigned exact, const float *q, const float *k, const float *v,
                            const float *o, const float *lse, const float *dout,
                            const double *o_exact, double *dq, double *dk, double *dv, char *err,
                            size_t errlen)
{
    fd_bwd_ctx x;
    if (ctx_init(&x, p, fcfg, bcfg, exact, q, k, v, o, lse, dout, dq, dk, dv, err, errlen)) return -1;
    x.o_exact = o_exact;
    int rc = bwd_run(&x, dq, dk, dv, 0, NULL, NULL);
    if (rc) snprintf(err, errlen, "out of memory");
    ctx_free(&x);
    return rc;
}

int fd_cpu_flash_backward_orders(const fd_problem *p, const fd_flash_cfg *fcfg, const fd_bwd_cfg *bcfg,
                                 const float *q, const float *k, const float *v, const float *o,
                                 const float *lse, const float *dout, float *dq, float *dk, float *dv,
                                 int norder, const fd_bwd_cfg *orders, float *const *dq_orders, char *err,
                                 size_t errlen)
{
    fd_bwd_ctx x;
    if (norder < 0 || (norder > 0 && (!orders || !dq_orders)) || (!dk != !dv) || (!dq && !dk && !norder)) {
        snprintf(err, errlen, "backward: bad output arguments (dq %s, dk %s, dv %s, %d dQ orders)",
                 dq ? "given" : "NULL", dk ? "given" : "NULL", dv ? "given" : "NULL", norder);
        return -1;
    }
    for (int t = 0; t < norder; t++)
        if (!dq_orders[t] || (orders[t].dq_mode != FD_DQ_ATOMIC && orders[t].dq_mode != FD_DQ_DETERMINISTIC) ||
            (orders[t].dq_order != FD_DQ_ORDER_ASC && orders[t].dq_order != FD_DQ_ORDER_DESC &&
             orders[t].dq_order != FD_DQ_ORDER_SHUFFLE)) {
            snprintf(err, errlen, "backward: dQ order %d: no output or an unknown mode / order", t);
            return -1;
        }
    /* ctx_init checks its tensors for NULL: the outputs left out are not written */
    const float *any = dq ? dq : dk ? dk : dq_orders[0];
    if (ctx_init(&x, p, fcfg, bcfg, 0u, q, k, v, o, lse, dout, any, any, any, err, errlen)) return -1;
    x.no_kv = !dk;
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p), nkd = dk ? nkv : 1;
    double *dqd = dq ? malloc(sizeof(double) * nq) : NULL;
    double *dkd = malloc(sizeof(double) * nkd), *dvd = malloc(sizeof(double) * nkd);
    double **dqo = calloc((size_t)(norder > 0 ? norder : 1), sizeof(double *));
    int rc = -1, ok = dkd && dvd && dqo && (dqd || !dq);
    for (int t = 0; ok && t < norder; t++) ok = (dqo[t] = malloc(sizeof(double) * nq)) != NULL;
    if (ok) rc = bwd_run(&x, dqd, dkd, dvd, norder, orders, dqo);
    if (rc) {
        snprintf(err, errlen, "out of memory");
    } else {
        for (size_t t = 0; dq && t < nq; t++) dq[t] = (float)dqd[t];
        for (size_t t = 0; dk && t < nkv; t++) {
            dk[t] = (float)dkd[t];
            dv[t] = (float)dvd[t];
        }
        for (int u = 0; u < norder; u++)
            for (size_t t = 0; t < nq; t++) dq_orders[u][t] = (float)dqo[u][t];
    }
    for (int t = 0; dqo && t < norder; t++) free(dqo[t]);
    free(dqo); free(dqd); free(dkd); free(dvd);
    ctx_free(&x);
    return rc;
}

int fd_cpu_flash_backward(const fd_problem *p, const fd_flash_cfg *fcfg, const fd_bwd_cfg *bcfg,
                          const float *q, const float *k, const float *v, const float *o,
                          const float *lse, const float *dout, float *dq, float *dk, float *dv,
                          char *err, size_t errlen)
{
    if (!dq || !dk || !dv) {
        snprintf(err, errlen, "backward: a NULL argument");
        return -1;
    }
    return fd_cpu_flash_backward_orders(p, fcfg, bcfg, q, k, v, o, lse, dout, dq, dk, dv, 0, NULL, NULL, err,
                                        errlen);
}
