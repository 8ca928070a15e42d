/* fd_cpu_flash.c: the FlashAttention-2 forward replayed in binary32 (see fd_cpu_attn.h).
 *
 * Mirrors flash_fwd_kernel.h / softmax.h of FA2: K/V tiles are visited from the last
 * visible tile down to the first (FA2's n_block loop runs backwards), the first visited
 * tile initialises max and sum, later tiles rescale. Built with -ffp-contract=off:
 * every fused multiply-add the GPU performs is written as fmaf here, nothing else fuses. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_exp2.h"
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
}

static float fd_exp2_mode_eval(fd_exp2_mode m, float x)
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
    return 0;
}

int fd_cpu_flash_forward(const fd_problem *p, const fd_flash_cfg *cfg, const float *q,
                         const float *k, const float *v, const int *rows, int nrows, float *o,
                         float *lse, char *err, size_t errlen)
{
    if (fd_cpu_check_problem(p, err, errlen)) return -1;
    if (cfg->bc <= 0 || cfg->br <= 0 || (cfg->bc % 16) != 0) {
        snprintf(err, errlen, "tile sizes must be positive and bc a multiple of 16 (br %d, bc %d)",
                 cfg->br, cfg->bc);
        return -1;
    }
    const int D = p->head_dim, sq = p->seqlen_q, sk = p->seqlen_k, bc = cfg->bc;
    const float scale_log2 = (float)((double)p->softmax_scale * FD_LOG2E);
    const int dropout = p->dropout_p > 0.0;
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    const float rp = dropout ? fd_rp_dropout(p->dropout_p) : 1.0f;
    const size_t kvstride = (size_t)p->kv_heads * (size_t)D;
    const int n_rows = rows ? nrows : sq;
    /* The tensor-core model applies to fp16/bf16 inputs; fp32 accumulates sequentially. */
    const fd_accum_model qk = p->dtype == FD_DT_FP32 ? FD_ACC_SEQ : cfg->qk_order;
    const fd_accum_model pv = (p->dtype == FD_DT_FP32 || cfg->p_fp32) ? FD_ACC_SEQ : cfg->pv_order;

    float *s = malloc(sizeof(float) * (size_t)bc);
    float *pt = malloc(sizeof(float) * (size_t)bc);
    float *acc = malloc(sizeof(float) * (size_t)D);
    if (!s || !pt || !acc) {
        free(s); free(pt); free(acc);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++) {
            const int hk = fd_kv_head(p, h);
            /* Q tiles of br rows: with per-row independence the tile only groups rows;
             * it is kept so the visiting order matches the kernel's. */
            for (int r = 0; r < n_rows; r++) {
                const int i = rows ? rows[r] : r;
                const float *qi = q + fd_q_index(p, b, i, h, 0);
                float *oi = o + fd_q_index(p, b, i, h, 0);
                const int nv = fd_mask_visible_count(p->mask, i, sq, sk);
                if (nv == 0) {
                    for (int d = 0; d < D; d++) oi[d] = 0.0f;
                    lse[fd_lse_index(p, b, h, i)] = INFINITY;
                    continue;
                }
                const int nblocks = (nv + bc - 1) / bc;
                float m = -INFINITY, l = 0.0f;
                for (int d = 0; d < D; d++) acc[d] = 0.0f;
                for (int nb = nblocks - 1; nb >= 0; nb--) {
                    const int j0 = nb * bc;
                    float tmax = -INFINITY;
                    for (int c = 0; c < bc; c++) {
                        const int j = j0 + c;
                        if (j < nv) {
                            const float *kj = k + fd_kv_index(p, b, j, hk, 0);
                            s[c] = fd_dot_acc_dt(qk, qi, 1, kj, 1, D, 0.0f, p->dtype);
                        } else {
                            s[c] = -INFINITY; /* masked or beyond seqlen_k */
                        }
                        if (s[c] > tmax) tmax = s[c];
                    }
                    const float m_prev = m;
                    if (tmax > m) m = tmax;
                    if (nb != nblocks - 1) {
                        /* softmax_rescale_o: Check_inf maps a -inf max to 0 */
                        const float m_cur = fd_eqf(m, -INFINITY) ? 0.0f : m;
                        const float sc = fd_exp2_mode_eval(cfg->exp2_mode, (m_prev - m_cur) * scale_log2);
                        l *= sc;
                        for (int d = 0; d < D; d++) acc[d] *= sc;
                    }
                    const float max_scaled = fd_eqf(m, -INFINITY) ? 0.0f : m * scale_log2;
                    for (int c = 0; c < bc; c++) {
                        /* exp2f(s * scale_log2 - max_scaled): nvcc emits one FFMA */
                        const float e = fd_eqf(s[c], -INFINITY)
                                            ? 0.0f
                                            : fd_exp2_mode_eval(cfg->exp2_mode,
                                                                fmaf(s[c], scale_log2, -max_scaled));
                        l += e; /* row sum from the fp32 P, before rounding and dropout */
                        float pv = cfg->p_fp32 ? e : fd_round_to_dtype(e, p->dtype);
                        if (dropout && j0 + c < nv &&
                            !fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j0 + c))
                            pv = 0.0f;
                        pt[c] = pv;
                    }
                    const int nk = (j0 + bc <= sk) ? bc : sk - j0; /* keys present in memory */
                    for (int d = 0; d < D; d++) {
                        const float *vd = v + fd_kv_index(p, b, j0, hk, d);
                        acc[d] = fd_dot_acc_dt(pv, pt, 1, vd, kvstride, nk, acc[d], p->dtype);
                    }
                }
                /* normalize_softmax_lse: one reciprocal, dropout scale folded in */
                const float inv = (fd_eqf(l, 0.0f) || isnan(l)) ? 1.0f : 1.0f / l;
                const float fscale = dropout ? inv * rp : inv;
                for (int d = 0; d < D; d++) oi[d] = fd_round_to_dtype(acc[d] * fscale, p->dtype);
                lse[fd_lse_index(p, b, h, i)] =
                    (fd_eqf(l, 0.0f) || isnan(l)) ? (float)INFINITY : fmaf(m, p->softmax_scale, logf(l));
            }
        }
    free(s); free(pt); free(acc);
    return 0;
}
