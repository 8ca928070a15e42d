/* fd_cpu_flash.c: the FlashAttention-2 forward replayed in binary32 (see fd_cpu_attn.h),
 * with every stage switchable to binary64 for attribution.
 *
 * Mirrors flash_fwd_kernel.h / softmax.h of FA2: K/V tiles are visited from the last
 * visible tile down to the first (FA2's n_block loop runs backwards), the first visited
 * tile initialises max and sum, later tiles rescale. Built with -ffp-contract=off:
 * every fused multiply-add the GPU performs is written as fmaf here, nothing else fuses.
 * Values flow as double; a stage that is not exact rounds to binary32 exactly where the
 * kernel does, so with no exact stage the result is the binary32 kernel bit for bit. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_exp2.h"
#include "fd_mods.h"
#include "fd_philox.h"

#define FD_LOG2E 1.4426950408889634073599246810018921

void fd_flash_cfg_default(fd_flash_cfg *cfg)
{
    cfg->br = 128;
    cfg->bc = 64;
    cfg->qk_order = FD_ACC_SEQ;
    cfg->pv_order = FD_ACC_SEQ;
    cfg->exp2_mode = FD_EXP2_LIBM;
    cfg->p_fp32 = 0;
    cfg->rowsum = FD_ROWSUM_FA2;
    cfg->splits = 4;
    cfg->sms = 132;
    cfg->o_round_up = 0;
    cfg->fp8_max_offset = FD_FP8_MAX_OFFSET;
}

/* x rounded to the dtype toward +Inf: the planted bias of fd_flash_cfg.o_round_up. */
static float round_up_dtype(double x, fd_dtype t)
{
    float r = (float)x;
    if ((double)r < x) r = nextafterf(r, INFINITY);
    const float n = fd_round_to_dtype(r, t);
    if (t == FD_DT_FP32 || !(n < r) || isnan(n) || isinf(n)) return n;
    if (t == FD_DT_BF16) { /* next bf16 up: one unit in the upper 16 bits, toward +Inf */
        const uint32_t u = fd_f32_bits(n);
        return fd_bits_f32(n >= 0.0f ? u + 0x10000u : u - 0x10000u);
    }
    const uint16_t h = fd_f32_to_f16_bits(n);
    return fd_f16_bits_to_f32((uint16_t)(n >= 0.0f ? h + 1u : h - 1u));
}

static float fexp2(fd_exp2_mode m, float x)
{
    return m == FD_EXP2_PORTABLE ? fd_exp2_portable(x) : exp2f(x);
}

/* FA2's host-side dropout parameters (flash_api.cpp): p_keep = 1.f - p in binary32,
 * rp_dropout = 1.f / p_keep. */
static float fd_rp_dropout(double p)
{
    float keep = 1.0f - (float)p;
    return 1.0f / keep;
}

int fd_cpu_check_problem(const fd_problem *p, char *err, size_t errlen)
{
    if (p->batch <= 0 || p->heads <= 0 || p->kv_heads <= 0 || p->seqlen_q <= 0 ||
        p->seqlen_k <= 0 || p->head_dim <= 0) {
        snprintf(err, errlen, "sizes must be positive");
        return -1;
    }
    if (p->heads % p->kv_heads != 0) {
        snprintf(err, errlen, "heads (%d) must be a multiple of kv_heads (%d)", p->heads,
                 p->kv_heads);
        return -1;
    }
    if (!(p->dropout_p >= 0.0 && p->dropout_p < 1.0)) {
        snprintf(err, errlen, "dropout p must be in [0, 1), got %g", p->dropout_p);
        return -1;
    }
    return fd_problem_check_mods(p, err, errlen);
}

typedef struct {
    const fd_problem *p;
    const fd_flash_cfg *cfg;
    unsigned exact;
    fd_accum_model qk, pv;
    float scale_log2;
    double scale_log2_d;
    float scale_sm;      /* FA2's scale_softmax: softcap when capped, else softmax_scale */
    float cap_in;        /* FA2's params.softcap = softmax_scale / softcap (0: no cap) */
    int dropout;
    uint8_t thr;
    /* FP8 (issue 15 item 4): FlashAttention-3's scaling (see fd_cpu_attn.h) */
    int fp8;
    float max_off;       /* FA3's Max_offset: P = exp2(s scale - (m scale - 8)) in [0, 256] */
    float vds;           /* v_descale, folded into the final 1/l */
    float scale_lse;     /* softmax_scale_log2 (descales included) * ln 2, for the LSE */
    const float *q, *k, *v;
    double *s, *pt;
    float *ptf;
    float *pperm, *vperm; /* FP8: P and a V column of a tile in the kernel's k order */
    /* paged KV cache: the physical caches (the logical K, V scattered through the block
     * table, fd_paged_scatter) that K and V are read from, and a V tile gathered from
     * its pages for the PV products */
    float *kp, *vp, *vt;
    int own_pages; /* kp, vp allocated here (scattered from the logical K, V) */
} fd_flash_ctx;

/* Row j of K (or V) for batch entry b, kv head hk: through the block table when paged. */
static const float *kv_row(const fd_flash_ctx *x, const float *logical, const float *phys, int b, int j, int hk)
{
    const fd_problem *p = x->p;
    if (p->page_size > 0)
        return phys + ((size_t)fd_paged_row(p, b, j) * (size_t)p->kv_heads + (size_t)hk) * (size_t)p->head_dim;
    return logical + fd_kv_index(p, b, j, hk, 0);
}

/* One query row over key blocks [nb_lo, nb_hi) visited backwards, keys lo..hi visible.
 * Key block nb holds keys kb + nb bc .. (up to the sequence's end ke): kb = 0, ke =
 * seqlen_k, or a varlen sequence's keys (FA2's varlen kernel starts its tiles at the
 * sequence's first key). Leaves the unnormalised accumulator in acc, the row sum in
 * *l_out and the raw row max in *m_out. */
static void flash_row(fd_flash_ctx *x, int b, int h, int i, int kb, int ke, int nb_lo, int nb_hi,
                      int lo, int hi, double *acc, double *l_out, double *m_out)
{
    const fd_problem *p = x->p;
    const int D = p->head_dim, bc = x->cfg->bc;
    const int hk = fd_kv_head(p, h);
    const unsigned ex = x->exact;
    const int xqk = !!(ex & FD_STAGE_QK), xsm = !!(ex & FD_STAGE_SOFTMAX);
    const int xpr = !!(ex & FD_STAGE_PROUND), xpv = !!(ex & FD_STAGE_PV);
    const int fa2sum = x->cfg->rowsum == FD_ROWSUM_FA2;
    const size_t kvstride = (size_t)p->kv_heads * (size_t)D;
    const float *qi = x->q + fd_q_index(p, b, i, h, 0);
    double m = -INFINITY, l = 0.0, lp[4] = {0.0, 0.0, 0.0, 0.0};
    /* ALiBi: FA2 divides the slope by scale_softmax in binary32 (flash_fwd_kernel.h) */
    const float slope_raw = p->alibi ? p->alibi_slopes[h] / x->scale_sm : 0.0f;
    const double slope_d = p->alibi ? (double)p->alibi_slopes[h] / (double)x->scale_sm : 0.0;
    for (int d = 0; d < D; d++) acc[d] = 0.0;
    for (int nb = nb_hi - 1; nb >= nb_lo; nb--) {
        const int j0 = kb + nb * bc;
        double tmax = -INFINITY;
        for (int c = 0; c < bc; c++) {
            const int j = j0 + c;
            double sv = -INFINITY; /* masked or beyond seqlen_k */
            if (j >= lo && j <= hi) {
                const float *kj = kv_row(x, x->k, x->kp, b, j, hk);
                const int dist = fd_problem_alibi_dist(p, i, j);
                if (xqk) {
                    sv = 0.0; /* exact products; a binary64 sum is exact to ~d 2^-53 */
                    for (int d = 0; d < D; d++) sv += (double)qi[d] * (double)kj[d];
                    /* the modifiers in binary64 too: part of the score stage */
                    if (p->softcap > 0.0f) sv = tanh(sv * ((double)p->softmax_scale / (double)p->softcap));
                    sv -= slope_d * (double)dist;
                } else {
                    const float r = fd_dot_acc_dt(x->qk, qi, 1, kj, 1, D, 0.0f, p->dtype);
                    sv = (double)fd_mods_score(r, x->cap_in, slope_raw, dist);
                }
            }
            x->s[c] = sv;
            if (sv > tmax) tmax = sv;
        }
        const double m_prev = m;
        if (tmax > m) m = tmax;
        const int m_inf = isinf(m) && m < 0;
        if (nb != nb_hi - 1) {
            /* softmax_rescale_o: Check_inf maps a -inf max to 0 */
            double sc;
            if (xsm)
                sc = exp2((m_prev - (m_inf ? 0.0 : m)) * x->scale_log2_d);
            else
                sc = (double)fexp2(x->cfg->exp2_mode,
                                   ((float)m_prev - (m_inf ? 0.0f : (float)m)) * x->scale_log2);
            if (xsm) {
                l *= sc;
                for (int t = 0; t < 4; t++) lp[t] *= sc;
            } else {
                l = (double)((float)l * (float)sc);
                for (int t = 0; t < 4; t++) lp[t] = (double)((float)lp[t] * (float)sc);
            }
            for (int d = 0; d < D; d++)
                acc[d] = xpv ? acc[d] * sc : (double)((float)acc[d] * (float)sc);
        }
        double msd = m_inf ? 0.0 : m * x->scale_log2_d;
        float msf = m_inf ? 0.0f : (float)m * x->scale_log2;
        if (x->fp8 && !m_inf) { /* FA3: max * scale - Max_offset, one FFMA */
            msd -= (double)x->max_off;
            msf = fmaf((float)m, x->scale_log2, -x->max_off);
        }
        for (int c = 0; c < bc; c++) {
            const double sv = x->s[c];
            double e;
            if (isinf(sv) && sv < 0) e = 0.0;
            else if (xsm) e = exp2(sv * x->scale_log2_d - msd);
            /* exp2f(s * scale_log2 - max_scaled): nvcc emits one FFMA */
            else e = (double)fexp2(x->cfg->exp2_mode, fmaf((float)sv, x->scale_log2, -msf));
            /* row sum from the fp32 P, before rounding and dropout */
            double *acc_l = fa2sum ? &lp[(c & 7) >> 1] : &l;
            *acc_l = xsm ? *acc_l + e : (double)((float)*acc_l + (float)e);
            /* P to the dtype; FP8: to e4m3 with the saturating cast (cutlass / cvt.rn.satfinite) */
            double pv = (x->cfg->p_fp32 || xpr) ? e
                        : x->fp8 ? (double)fd_round_fp8((float)e, FD_DT_E4M3, FD_FP8_SATFINITE)
                                 : (double)fd_round_to_dtype((float)e, p->dtype);
            if (x->dropout && j0 + c >= lo && j0 + c <= hi &&
                !fd_fa2_keep(p->seed, p->offset, x->thr, p->heads, b, h, i, j0 + c))
                pv = 0.0;
            x->pt[c] = pv;
            x->ptf[c] = (float)pv;
        }
        const int nk = (j0 + bc <= ke) ? bc : ke - j0; /* keys present in memory */
        size_t vstride = kvstride;
        if (p->page_size > 0) { /* the tile's V rows from their pages, [c][d] (the same values) */
            for (int c = 0; c < nk; c++)
                memcpy(x->vt + (size_t)c * (size_t)D, kv_row(x, x->v, x->vp, b, j0 + c, hk), sizeof(float) * (size_t)D);
            vstride = (size_t)D;
        }
        for (int d = 0; d < D; d++) {
            const float *vd = p->page_size > 0 ? x->vt + d : x->v + fd_kv_index(p, b, j0, hk, d);
            if (xpv) {
                double a = acc[d];
                for (int c = 0; c < nk; c++) a += x->pt[c] * (double)vd[(size_t)c * vstride];
                acc[d] = a;
            } else if (x->fp8 && x->pv != FD_ACC_SEQ) {
                /* the FP8 mma: P (e4m3; binary32 when P is not rounded) times V (the dtype), the
                 * keys of each 32-key chunk in the kernel's k order (fd_fp8_pv_key; keys past
                 * nk are the kernel's zero padding) */
                const fd_tc_fp8_params prm = FD_TC_FP8_DEFAULT;
                const int np = (nk + 31) / 32 * 32;
                for (int c = 0; c < np; c++) {
                    const int key = (c & ~31) + fd_fp8_pv_key(c & 31);
                    x->pperm[c] = key < nk ? x->ptf[key] : 0.0f;
                    x->vperm[c] = key < nk ? vd[(size_t)key * vstride] : 0.0f;
                }
                acc[d] = (double)fd_dot_tc_fp8(&prm, x->pperm, 1, (x->cfg->p_fp32 || xpr) ? FD_DT_FP32 : FD_DT_E4M3,
                                               x->vperm, 1, p->dtype, np, (float)acc[d]);
            } else {
                acc[d] = (double)fd_dot_acc_dt(x->pv, x->ptf, 1, vd, vstride, nk, (float)acc[d],
                                               p->dtype);
            }
        }
    }
    if (fa2sum) /* quad_allreduce: x += shfl_xor(x, 2); x += shfl_xor(x, 1) */
        l = xsm ? (lp[0] + lp[2]) + (lp[1] + lp[3])
                : (double)(((float)lp[0] + (float)lp[2]) + ((float)lp[1] + (float)lp[3]));
    *l_out = l;
    *m_out = m;
}

static void ctx_free(fd_flash_ctx *x);

/* kc, vc: the physical caches of a paged problem as given (NULL: scattered from k, v). */
static int ctx_init(fd_flash_ctx *x, const fd_problem *p, const fd_flash_cfg *cfg, unsigned exact,
                    const float *q, const float *k, const float *v, const float *kc, const float *vc, char *err,
                    size_t errlen)
{
    memset(x, 0, sizeof *x);
    if (fd_cpu_check_problem(p, err, errlen)) return -1;
    if (cfg->bc <= 0 || cfg->br <= 0 || (cfg->bc % 16) != 0) {
        snprintf(err, errlen, "tile sizes must be positive and bc a multiple of 16 (br %d, bc %d)",
                 cfg->br, cfg->bc);
        return -1;
    }
    x->p = p;
    x->cfg = cfg;
    x->exact = exact;
    /* The tensor-core model applies to fp16/bf16 inputs; fp32 accumulates sequentially. */
    x->qk = p->dtype == FD_DT_FP32 ? FD_ACC_SEQ : cfg->qk_order;
    x->pv = (p->dtype == FD_DT_FP32 || cfg->p_fp32) ? FD_ACC_SEQ : cfg->pv_order;
    /* FA2: params.scale_softmax_log2 = scale_softmax * M_LOG2E (double product, stored as
     * float), scale_softmax the softcap when there is one (fd_mods.h) */
    x->scale_sm = p->softcap > 0.0f ? p->softcap : p->softmax_scale;
    x->cap_in = p->softcap > 0.0f ? p->softmax_scale / p->softcap : 0.0f;
    x->scale_log2_d = (double)x->scale_sm * FD_LOG2E;
    x->scale_log2 = (float)x->scale_log2_d;
    x->fp8 = fd_dtype_is_fp8(p->dtype);
    if (x->fp8) {
        /* FA3 (flash_fwd_kernel_sm90.h): softmax_scale_log2 *= q_descale * k_descale, in
         * binary32, the descale product first */
        const float qd = fd_descale(p->q_descale), kd = fd_descale(p->k_descale);
        x->scale_log2 = fd_fp8_scale_log2(p);
        x->scale_log2_d = (double)p->softmax_scale * (double)qd * (double)kd * FD_LOG2E;
        x->max_off = (float)cfg->fp8_max_offset;
        x->vds = fd_descale(p->v_descale);
        x->scale_lse = x->scale_log2 * (float)0.69314718055994530942; /* softmax_scale_log2 * float(M_LN2) */
    }
    x->dropout = p->dropout_p > 0.0;
    x->thr = fd_fa2_threshold(p->dropout_p);
    x->q = q; x->k = k; x->v = v;
    x->s = malloc(sizeof(double) * (size_t)cfg->bc);
    x->pt = malloc(sizeof(double) * (size_t)cfg->bc);
    x->ptf = malloc(sizeof(float) * (size_t)cfg->bc);
    x->pperm = malloc(sizeof(float) * (size_t)(cfg->bc + 32));
    x->vperm = malloc(sizeof(float) * (size_t)(cfg->bc + 32));
    int oom = !x->s || !x->pt || !x->ptf || !x->pperm || !x->vperm;
    if (!oom && p->page_size > 0) {
        x->own_pages = !(kc && vc);
        x->kp = x->own_pages ? malloc(sizeof(float) * fd_paged_numel(p)) : (float *)(uintptr_t)kc;
        x->vp = x->own_pages ? malloc(sizeof(float) * fd_paged_numel(p)) : (float *)(uintptr_t)vc;
        x->vt = malloc(sizeof(float) * (size_t)cfg->bc * (size_t)p->head_dim);
        oom = !x->kp || !x->vp || !x->vt || (x->own_pages && (!k || !v));
        if (!oom && x->own_pages) {
            fd_paged_scatter(p, k, x->kp);
            fd_paged_scatter(p, v, x->vp);
        }
    }
    if (oom) {
        ctx_free(x);
        snprintf(err, errlen, "out of memory (or no K/V)");
        return -1;
    }
    return 0;
}

static void ctx_free(fd_flash_ctx *x)
{
    free(x->s); free(x->pt); free(x->ptf); free(x->vt); free(x->pperm); free(x->vperm);
    if (x->own_pages) {
        free(x->kp);
        free(x->vp);
    }
    x->s = x->pt = NULL;
    x->ptf = x->kp = x->vp = x->vt = x->pperm = x->vperm = NULL;
}

static int flash_stages(const fd_problem *p, const fd_flash_cfg *cfg, unsigned exact, const float *q, const float *k,
                        const float *v, const float *kc, const float *vc, const int *rows, int nrows, double *o,
                        double *lse, char *err, size_t errlen)
{
    if (fd_cpu_check_problem(p, err, errlen)) return -1; /* before the scatter below */
    const int D = p->head_dim, sq = p->seqlen_q, bc = cfg->bc;
    const int xfin = !!(exact & FD_STAGE_FINAL), xds = !!(exact & FD_STAGE_DROPSCALE);
    const int xsm = !!(exact & FD_STAGE_SOFTMAX);
    const int dropout = p->dropout_p > 0.0;
    const float rp = dropout ? fd_rp_dropout(p->dropout_p) : 1.0f;
    const double rp_d = dropout ? 1.0 / (1.0 - p->dropout_p) : 1.0;
    const int n_rows = rows ? nrows : sq;
    const long ntask = (long)p->batch * p->heads * n_rows;
    int failed = 0;
    /* a paged problem without its physical cache: scattered once here, shared read-only */
    float *kown = NULL, *vown = NULL;
    if (p->page_size > 0 && !(kc && vc)) {
        kown = k ? malloc(sizeof(float) * fd_paged_numel(p)) : NULL;
        vown = v ? malloc(sizeof(float) * fd_paged_numel(p)) : NULL;
        if (!kown || !vown) {
            free(kown);
            free(vown);
            snprintf(err, errlen, "out of memory (or no K/V)");
            return -1;
        }
        fd_paged_scatter(p, k, kown);
        fd_paged_scatter(p, v, vown);
        kc = kown;
        vc = vown;
    }
    /* Rows are independent (a row's tiles, in FA2's order, are the row's alone): OpenMP
     * over (batch, head, row), each thread with its own context and accumulator, so the
     * bits of a row do not depend on the thread that computes it. */
#pragma omp parallel reduction(| : failed)
    {
        fd_flash_ctx x;
        double *acc = NULL;
        char e2[256];
        int ok = !ctx_init(&x, p, cfg, exact, q, k, v, kc, vc, e2, sizeof e2);
        if (ok && !(acc = malloc(sizeof(double) * (size_t)D))) {
            ctx_free(&x);
            snprintf(e2, sizeof e2, "out of memory");
            ok = 0;
        }
        if (!ok) {
            failed = 1;
#pragma omp critical(fd_cpu_flash_err)
            snprintf(err, errlen, "%s", e2);
        }
#pragma omp for schedule(dynamic, 4)
        for (long t = 0; t < ntask; t++) {
            if (!ok) continue;
            const int r = (int)(t % n_rows), h = (int)((t / n_rows) % p->heads), b = (int)(t / n_rows / p->heads);
            const int i = rows ? rows[r] : r;
            double *oi = o + fd_q_index(p, b, i, h, 0);
            int lo, hi;
            const int nv = fd_mask_visible_range_b(p, b, i, &lo, &hi);
            if (nv == 0) {
                for (int d = 0; d < D; d++) oi[d] = 0.0;
                lse[fd_lse_index(p, b, h, i)] = INFINITY;
                continue;
            }
            double l, m;
            const fd_seq_span sp = fd_problem_seq_span(p, i);
            /* keys present: the sequence's (varlen), the entry's cache_seqlens (paged) */
            const int ke = p->page_size > 0 ? p->cache_seqlens[b] : sp.k0 + sp.sk;
            flash_row(&x, b, h, i, sp.k0, ke, (lo - sp.k0) / bc, (hi - sp.k0) / bc + 1, lo, hi, acc, &l, &m);
            const int empty = fd_eq(l, 0.0) || isnan(l);
            /* normalize_softmax_lse: one reciprocal, the dropout scale folded in */
            const fd_dtype odt = fd_out_dtype(p->dtype);
            if (xfin) {
                const double sc = (empty ? 1.0 : 1.0 / l) * (xds ? rp_d : (double)rp) * (x.fp8 ? (double)x.vds : 1.0);
                for (int d = 0; d < D; d++) oi[d] = acc[d] * sc;
            } else {
                const float inv = empty ? 1.0f : 1.0f / (float)l;
                /* FA3 FP8: finalize(v_descale) gives inv_sum * v_descale */
                const float sc = x.fp8 ? inv * x.vds : xds ? (float)((double)inv * rp_d) : inv * rp;
                for (int d = 0; d < D; d++)
                    oi[d] = cfg->o_round_up ? (double)round_up_dtype((double)(float)acc[d] * (double)sc, odt)
                                            : (double)fd_round_to_dtype((float)acc[d] * sc, odt);
            }
            double lv;
            if (empty) lv = (double)INFINITY;
            else if (x.fp8) /* FA3: row_max * (softmax_scale_log2 * ln 2) + log(sum / 2^Max_offset) */
                lv = (xsm || xfin) ? (m * x.scale_log2_d - (double)x.max_off) * 0.69314718055994530942 + log(l)
                                   : (double)fmaf((float)m, x.scale_lse, fd_logf_portable((float)l * ldexpf(1.0f, -cfg->fp8_max_offset)));
            else
                lv = (xsm || xfin) ? m * (double)x.scale_sm + log(l) : (double)fmaf((float)m, x.scale_sm, fd_logf_portable((float)l));
            lse[fd_lse_index(p, b, h, i)] = lv;
        }
        if (ok) {
            free(acc);
            ctx_free(&x);
        }
    }
    free(kown);
    free(vown);
    return failed ? -1 : 0;
}

int fd_cpu_flash_stages(const fd_problem *p, const fd_flash_cfg *cfg, unsigned exact,
                        const float *q, const float *k, const float *v, const int *rows,
                        int nrows, double *o, double *lse, char *err, size_t errlen)
{
    return flash_stages(p, cfg, exact, q, k, v, NULL, NULL, rows, nrows, o, lse, err, errlen);
}

static int flash_forward(const fd_problem *p, const fd_flash_cfg *cfg, const float *q, const float *k, const float *v,
                         const float *kc, const float *vc, const int *rows, int nrows, float *o, float *lse, char *err,
                         size_t errlen)
{
    double *od = malloc(sizeof(double) * fd_q_numel(p));
    double *ld = malloc(sizeof(double) * fd_lse_numel(p));
    if (!od || !ld) {
        free(od); free(ld);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = flash_stages(p, cfg, 0u, q, k, v, kc, vc, rows, nrows, od, ld, err, errlen);
    if (!rc) {
        const int n_rows = rows ? nrows : p->seqlen_q;
        for (int b = 0; b < p->batch; b++)
            for (int h = 0; h < p->heads; h++)
                for (int r = 0; r < n_rows; r++) {
                    const int i = rows ? rows[r] : r;
                    for (int d = 0; d < p->head_dim; d++) {
                        size_t ix = fd_q_index(p, b, i, h, d);
                        o[ix] = (float)od[ix];
                    }
                    lse[fd_lse_index(p, b, h, i)] = (float)ld[fd_lse_index(p, b, h, i)];
                }
    }
    free(od); free(ld);
    return rc;
}

int fd_cpu_flash_forward(const fd_problem *p, const fd_flash_cfg *cfg, const float *q,
                         const float *k, const float *v, const int *rows, int nrows, float *o,
                         float *lse, char *err, size_t errlen)
{
    return flash_forward(p, cfg, q, k, v, NULL, NULL, rows, nrows, o, lse, err, errlen);
}

int fd_cpu_flash_forward_paged(const fd_problem *p, const fd_flash_cfg *cfg, const float *q, const float *kc,
                               const float *vc, const int *rows, int nrows, float *o, float *lse, char *err,
                               size_t errlen)
{
    if (p->page_size <= 0 || !kc || !vc) {
        snprintf(err, errlen, "fd_cpu_flash_forward_paged: not a paged problem, or no cache");
        return -1;
    }
    return flash_forward(p, cfg, q, NULL, NULL, kc, vc, rows, nrows, o, lse, err, errlen);
}

static int splitkv_forward(const fd_problem *p, const fd_flash_cfg *cfg, int splits, const float *q, const float *k,
                           const float *v, const float *kc, const float *vc, const int *rows, int nrows, float *o,
                           float *lse, char *err, size_t errlen)
{
    if (splits < 1 || splits > 128) {
        snprintf(err, errlen, "split count must be in [1, 128], got %d", splits);
        return -1;
    }
    fd_flash_ctx x;
    if (ctx_init(&x, p, cfg, 0u, q, k, v, kc, vc, err, errlen)) return -1;
    const int D = p->head_dim, sq = p->seqlen_q, bc = cfg->bc;
    const float rp = x.dropout ? fd_rp_dropout(p->dropout_p) : 1.0f;
    const int n_rows = rows ? nrows : sq;
    double *acc = malloc(sizeof(double) * (size_t)D);
    float *oacc = malloc(sizeof(float) * (size_t)D * (size_t)splits);
    float *lacc = malloc(sizeof(float) * (size_t)splits);
    if (!acc || !oacc || !lacc) {
        free(acc); free(oacc); free(lacc);
        ctx_free(&x);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int r = 0; r < n_rows; r++) {
                const int i = rows ? rows[r] : r;
                float *oi = o + fd_q_index(p, b, i, h, 0);
                int lo, hi;
                const int nv = fd_mask_visible_range_b(p, b, i, &lo, &hi);
                if (nv == 0) {
                    for (int d = 0; d < D; d++) oi[d] = 0.0f;
                    lse[fd_lse_index(p, b, h, i)] = INFINITY;
                    continue;
                }
                const fd_seq_span sq_ = fd_problem_seq_span(p, i);
                const int kb = sq_.k0, klo = (lo - kb) / bc; /* tiles from the sequence's first key */
                const int nblocks = (hi - kb) / bc + 1;
                const int paged = p->page_size > 0;
                const int ke = paged ? p->cache_seqlens[b] : kb + sq_.sk;
                /* FA2's n_blocks_per_split (flash_fwd_kernel.h, and cuda-splitkv's rule): every
                 * row splits its sequence's ceil(seqlen_k / bc) tiles alike (paged: the
                 * entry's ceil(cache_seqlens[b] / bc)), whatever the mask leaves it; a split
                 * past the row's last visible tile adds LSE -inf, O 0 to the combine, which
                 * changes no bit, so it is left out here (paged: kept, as before). Until
                 * 2026-12-03 a causal row split its own visible tiles, which is not FA2's
                 * chunking (gpu_test_cuda's key_tile_128_replay_bit_identical found it). */
                const int per = (((paged ? ke : ke - kb) + bc - 1) / bc + splits - 1) / splits;
                int ns = 0;
                for (int sp = 0; sp < splits; sp++) {
                    const int slo = sp * per, shi = slo + per < nblocks ? slo + per : nblocks;
                    if (slo >= shi && !paged) break;
                    double l, m;
                    if (shi <= klo || slo >= shi) { /* no visible key in this split: weight 0 */
                        for (int d = 0; d < D; d++) oacc[(size_t)ns * (size_t)D + (size_t)d] = 0.0f;
                        lacc[ns++] = -INFINITY;
                        continue;
                    }
                    flash_row(&x, b, h, i, kb, ke, slo > klo ? slo : klo, shi, lo, hi, acc, &l, &m);
                    /* each split writes O_i = acc / l (fp32, dropout scale folded in) and LSE_i */
                    const float inv = 1.0f / (float)l, sc = x.fp8 ? inv * x.vds : inv * rp;
                    for (int d = 0; d < D; d++) oacc[(size_t)ns * (size_t)D + (size_t)d] = (float)acc[d] * sc;
                    lacc[ns] = x.fp8 ? fmaf((float)m, x.scale_lse, fd_logf_portable((float)l * ldexpf(1.0f, -cfg->fp8_max_offset)))
                                     : fmaf((float)m, x.scale_sm, fd_logf_portable((float)l));
                    ns++;
                }
                /* combine_attn_seqk_parallel: LSE-weighted sum in fp32 */
                float lmax = -INFINITY;
                for (int t = 0; t < ns; t++) lmax = lacc[t] > lmax ? lacc[t] : lmax;
                float sum = 0.0f;
                for (int t = 0; t < ns; t++) sum += fd_expf_portable(lacc[t] - lmax);
                const float lse_all = fd_logf_portable(sum) + lmax;
                for (int d = 0; d < D; d++) {
                    float a = 0.0f;
                    for (int t = 0; t < ns; t++)
                        a = fmaf(fd_expf_portable(lacc[t] - lse_all), oacc[(size_t)t * (size_t)D + (size_t)d], a);
                    oi[d] = fd_round_to_dtype(a, fd_out_dtype(p->dtype));
                }
                lse[fd_lse_index(p, b, h, i)] = lse_all;
            }
    free(acc); free(oacc); free(lacc);
    ctx_free(&x);
    return 0;
}

int fd_cpu_splitkv_forward(const fd_problem *p, const fd_flash_cfg *cfg, int splits,
                           const float *q, const float *k, const float *v, const int *rows,
                           int nrows, float *o, float *lse, char *err, size_t errlen)
{
    return splitkv_forward(p, cfg, splits, q, k, v, NULL, NULL, rows, nrows, o, lse, err, errlen);
}

int fd_cpu_splitkv_forward_paged(const fd_problem *p, const fd_flash_cfg *cfg, int splits, const float *q,
                                 const float *kc, const float *vc, const int *rows, int nrows, float *o, float *lse,
                                 char *err, size_t errlen)
{
    if (p->page_size <= 0 || !kc || !vc) {
        snprintf(err, errlen, "fd_cpu_splitkv_forward_paged: not a paged problem, or no cache");
        return -1;
    }
    return splitkv_forward(p, cfg, splits, q, NULL, NULL, kc, vc, rows, nrows, o, lse, err, errlen);
}
