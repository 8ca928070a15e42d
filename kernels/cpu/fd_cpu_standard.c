/* fd_cpu_standard.c: standard (eager) attention in binary32 (see fd_cpu_attn.h).
 *
 * As PyTorch's eager path runs it for fp16/bf16: S = Q K^T from a GEMM with fp32
 * accumulation, scaled and masked in fp32, softmax in fp32 (max-subtracted expf,
 * sequential sum, division), P cast to the dtype, dropout on the cast P computed in
 * fp32 and cast again, O = P V with fp32 accumulation cast to the dtype. A row with no
 * visible key gives NaN, as softmax over all -inf does in eager frameworks.
 * Score modifiers as eager model code writes them (Gemma 2's softcap, an ALiBi bias
 * tensor added to the scores): s = (q.k) * scale; s = tanhf(s / softcap) * softcap;
 * s = s + (-slope * |i + sk - sq - j|) (the bias formed in fp32); then the mask.
 *
 * FP8 inputs: "standard" is what a user without an FP8 attention kernel runs: the
 * inputs dequantised to bfloat16 (x8.to(bfloat16) * x_descale, one binary32 product
 * rounded to bfloat16: torch's bf16 tensor times a float scalar) and eager bfloat16
 * attention on them (P cast to bf16, bf16 output) -- the baseline of FlashAttention's
 * relative rule for the FP8 kernel (docs/fp8.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_philox.h"

int fd_cpu_check_problem(const fd_problem *p, char *err, size_t errlen);

int fd_cpu_standard_forward(const fd_problem *p, fd_accum_model order, const float *q,
                            const float *k, const float *v, const int *rows, int nrows,
                            float *o, float *lse, char *err, size_t errlen)
{
    if (fd_cpu_check_problem(p, err, errlen)) return -1;
    if (fd_dtype_is_fp8(p->dtype)) { /* eager bf16 attention on the dequantised inputs */
        fd_problem pb;
        float *qb, *kb, *vb;
        if (fd_fp8_dequant_bf16(p, q, k, v, &pb, &qb, &kb, &vb)) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        const int rc = fd_cpu_standard_forward(&pb, order == FD_ACC_TC_FP8 ? FD_ACC_TC16 : order, qb, kb, vb, rows,
                                               nrows, o, lse, err, errlen);
        free(qb); free(kb); free(vb);
        return rc;
    }
    const int D = p->head_dim, sq = p->seqlen_q, sk = p->seqlen_k;
    const int dropout = p->dropout_p > 0.0;
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    const float rp = (float)(1.0 / (1.0 - p->dropout_p));
    const size_t kvstride = (size_t)p->kv_heads * (size_t)D;
    const int n_rows = rows ? nrows : sq;
    if (p->dtype == FD_DT_FP32) order = FD_ACC_SEQ; /* tensor-core model: fp16/bf16 only */
    /* Rows are independent: OpenMP over (batch, head, row), each thread with its own
     * score row; the arithmetic of a row is the same whatever thread runs it. */
    const long ntask = (long)p->batch * p->heads * n_rows;
    int oom = 0;
#pragma omp parallel reduction(| : oom)
    {
        float *s = malloc(sizeof(float) * (size_t)(sk > 0 ? sk : 1));
        if (!s) oom = 1;
#pragma omp for schedule(dynamic, 4)
        for (long t = 0; t < ntask; t++) {
            if (!s) continue;
            const int r = (int)(t % n_rows), h = (int)((t / n_rows) % p->heads), b = (int)(t / n_rows / p->heads);
            const int hk = fd_kv_head(p, h);
            {
                const int i = rows ? rows[r] : r;
                const float *qi = q + fd_q_index(p, b, i, h, 0);
                float *oi = o + fd_q_index(p, b, i, h, 0);
                float m = -INFINITY;
                int vlo, vhi;
                (void)fd_mask_visible_range_b(p, b, i, &vlo, &vhi);
                for (int j = 0; j < sk; j++) {
                    const float *kj = k + fd_kv_index(p, b, j, hk, 0);
                    float x = fd_dot_acc_dt(order, qi, 1, kj, 1, D, 0.0f, p->dtype) * p->softmax_scale;
                    if (p->softcap > 0.0f) x = tanhf(x / p->softcap) * p->softcap;
                    if (p->alibi) {
                        const int dd = fd_problem_alibi_dist(p, i, j); /* per sequence (varlen) */
                        x = x + -p->alibi_slopes[h] * (float)dd;
                    }
                    if (j < vlo || j > vhi) x = -INFINITY;
                    s[j] = x;
                    if (x > m) m = x;
                }
                float sum = 0.0f;
                for (int j = 0; j < sk; j++) {
                    s[j] = expf(s[j] - m); /* all -inf: NaN, as eager softmax gives */
                    sum += s[j];
                }
                for (int j = 0; j < sk; j++) {
                    float pj = fd_round_to_dtype(s[j] / sum, p->dtype);
                    if (dropout) {
                        int keep = fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j);
                        pj = fd_round_to_dtype(keep ? pj * rp : 0.0f, p->dtype);
                    }
                    s[j] = pj;
                }
                for (int d = 0; d < D; d++) {
                    const float *vd = v + fd_kv_index(p, b, 0, hk, d);
                    oi[d] = fd_round_to_dtype(fd_dot_acc_dt(order, s, 1, vd, kvstride, sk, 0.0f, p->dtype),
                                              p->dtype);
                }
                lse[fd_lse_index(p, b, h, i)] = m + logf(sum);
            }
        }
        free(s);
    }
    if (oom) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}
