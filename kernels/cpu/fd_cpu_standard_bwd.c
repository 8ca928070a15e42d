/* fd_cpu_standard_bwd.c: eager attention's autograd in binary32 (see fd_cpu_bwd.h).
 *
 * The forward is recomputed exactly as fd_cpu_standard_forward computes it: S_ij =
 * fd_dot_acc_dt(order, q_i, k_j) * scale, masked to -inf, max-subtracted expf, sequential
 * sum, P_ij = round_dtype(e_ij / sum) (the softmax output autograd saves), and the
 * dropped Pd_ij = round_dtype(keep ? P_ij * rp : 0) with FA2's keep mask and threshold,
 * rp = (float)(1 / (1 - p)) as the forward takes it. Then, per (batch, query head):
 *   dV_h  = round_dtype(Pd^T dO)        fd_dot_acc_dt(order) over the query rows i
 *   dPd   = round_dtype(dO V^T)         fd_dot_acc_dt(order) over d
 *   dP_ij = keep ? round_dtype(dPd_ij * rp) : 0   dropout's backward, in the dtype as
 *                                       PyTorch's eager dropout returns it
 *   D_i   = sum_j P_ij * dP_ij          binary32, j ascending, multiply then add
 *   dS_ij = round_dtype((P_ij * (dP_ij - D_i)) * scale)
 *   dQ    = round_dtype(dS K)           fd_dot_acc_dt(order) over the keys j
 *   dK_h  = round_dtype(dS^T Q)         fd_dot_acc_dt(order) over the query rows i
 * and per kv head dK = round_dtype(0.0f + dK_h0 + dK_h1 + ...) (likewise dV) over the
 * group's query heads in ascending order (the sum backward of the expanded K/V).
 *
 * Rows with no visible key: P = 0 there (PyTorch's _safe_softmax, the reference's and the
 * CUDA forward's convention), so their dQ is 0 and they add nothing to dK/dV. The forward
 * gives NaN for such a row, which would make every dK/dV of the head NaN; a gradient
 * judged against the reference must not. fp32 problems take FD_ACC_SEQ as the forward.
 *
 * Score modifiers, as fd_cpu_standard_forward writes them (s0 = (q.k) * scale; t =
 * tanhf(s0 / c); s1 = t * c; s2 = s1 + (-slope * dist); the window's mask): the bias has
 * no gradient to pass but dS, and autograd walks the softcap's ops back in fp32:
 *   dS_ij = round_dtype((((((P_ij * (dP_ij - D_i)) * c) * (1 - t_ij * t_ij)) / c) * scale)
 * (mul's backward by c, tanh_backward's grad * (1 - y * y), div's backward by c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cpu_bwd.h"
#include "fd_dtype.h"
#include "fd_philox.h"

int fd_cpu_check_problem(const fd_problem *p, char *err, size_t errlen);

int fd_cpu_standard_backward(const fd_problem *p, fd_accum_model order, const float *q,
                             const float *k, const float *v, const float *dout, float *dq,
                             float *dk, float *dv, char *err, size_t errlen)
{
    if (fd_cpu_check_problem(p, err, errlen)) return -1;
    if (p->page_size > 0) {
        snprintf(err, errlen, "the backward of a paged KV cache is not supported (forward only)");
        return -1;
    }
    if (!q || !k || !v || !dout || !dq || !dk || !dv) {
        snprintf(err, errlen, "standard backward: null tensor argument");
        return -1;
    }
    const int D = p->head_dim, sq = p->seqlen_q, sk = p->seqlen_k;
    const fd_dtype dt = p->dtype;
    const int dropout = p->dropout_p > 0.0;
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    const float rp = (float)(1.0 / (1.0 - p->dropout_p));
    const float scale = p->softmax_scale;
    const int group = p->heads / p->kv_heads;
    const size_t qstride = (size_t)p->heads * (size_t)D;
    const size_t kvstride = (size_t)p->kv_heads * (size_t)D;
    if (dt == FD_DT_FP32) order = FD_ACC_SEQ; /* tensor-core model: fp16/bf16 only */

    const size_t nss = (size_t)sq * (size_t)sk;
    float *P = malloc(sizeof(float) * nss);   /* softmax output, cast to the dtype */
    float *Pd = malloc(sizeof(float) * nss);  /* dropped P (cast), then dP */
    float *dS = malloc(sizeof(float) * nss);  /* dPd, then dS (cast) */
    float *s = malloc(sizeof(float) * (size_t)sk);
    const int capped = p->softcap > 0.0f;
    float *T = capped ? malloc(sizeof(float) * nss) : NULL; /* tanh outputs autograd saves */
    uint8_t *keep = dropout ? malloc(nss) : NULL;
    float *gk = malloc(sizeof(float) * (size_t)sk * (size_t)D); /* fp32 group sums */
    float *gv = malloc(sizeof(float) * (size_t)sk * (size_t)D);
    if (!P || !Pd || !dS || !s || (dropout && !keep) || !gk || !gv || (capped && !T)) {
        free(P); free(Pd); free(dS); free(s); free(keep); free(gk); free(gv); free(T);
        snprintf(err, errlen, "standard backward: out of memory (S is %d x %d)", sq, sk);
        return -1;
    }

    for (int b = 0; b < p->batch; b++)
        for (int hk = 0; hk < p->kv_heads; hk++) {
            memset(gk, 0, sizeof(float) * (size_t)sk * (size_t)D);
            memset(gv, 0, sizeof(float) * (size_t)sk * (size_t)D);
            for (int g = 0; g < group; g++) {
                const int h = hk * group + g;
                /* The forward: P (cast) and Pd (dropped, cast). */
                for (int i = 0; i < sq; i++) {
                    const float *qi = q + fd_q_index(p, b, i, h, 0);
                    float *Pi = P + (size_t)i * (size_t)sk, *Pdi = Pd + (size_t)i * (size_t)sk;
                    int vlo, vhi;
                    const int nv = fd_mask_visible_range(p, i, &vlo, &vhi);
                    if (nv == 0) { /* no visible key: P = 0 (see the top) */
                        for (int j = 0; j < sk; j++) Pi[j] = Pdi[j] = 0.0f;
                        if (capped)
                            for (int j = 0; j < sk; j++) T[(size_t)i * (size_t)sk + (size_t)j] = 0.0f;
                        if (dropout)
                            for (int j = 0; j < sk; j++) keep[(size_t)i * (size_t)sk + (size_t)j] = 0;
                        continue;
                    }
                    float m = -INFINITY;
                    for (int j = 0; j < sk; j++) {
                        const float *kj = k + fd_kv_index(p, b, j, hk, 0);
                        float x = fd_dot_acc_dt(order, qi, 1, kj, 1, D, 0.0f, dt) * scale;
                        if (capped) {
                            const float t = tanhf(x / p->softcap);
                            T[(size_t)i * (size_t)sk + (size_t)j] = t;
                            x = t * p->softcap;
                        }
                        if (p->alibi) {
                            const long dd = (long)i + sk - sq - j;
                            x = x + -p->alibi_slopes[h] * (float)(dd < 0 ? -dd : dd);
                        }
                        if (j < vlo || j > vhi) x = -INFINITY;
                        s[j] = x;
                        if (x > m) m = x;
                    }
                    float sum = 0.0f;
                    for (int j = 0; j < sk; j++) {
                        s[j] = expf(s[j] - m);
                        sum += s[j];
                    }
                    for (int j = 0; j < sk; j++) {
                        float pj = fd_round_to_dtype(s[j] / sum, dt);
                        Pi[j] = pj;
                        if (dropout) {
                            int kp = fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j);
                            keep[(size_t)i * (size_t)sk + (size_t)j] = (uint8_t)kp;
                            pj = fd_round_to_dtype(kp ? pj * rp : 0.0f, dt);
                        }
                        Pdi[j] = pj;
                    }
                }
                /* dV_h = Pd^T dO, rounded, added to the group's fp32 sum. */
                for (int j = 0; j < sk; j++)
                    for (int d = 0; d < D; d++) {
                        const float *dod = dout + fd_q_index(p, b, 0, h, d);
                        float x = fd_dot_acc_dt(order, Pd + j, (size_t)sk, dod, qstride, sq, 0.0f, dt);
                        gv[(size_t)j * (size_t)D + (size_t)d] += fd_round_to_dtype(x, dt);
                    }
                /* dPd = dO V^T (rounded), dP, D, dS (cast). Pd's buffer now holds dP. */
                for (int i = 0; i < sq; i++) {
                    const float *doi = dout + fd_q_index(p, b, i, h, 0);
                    float *Pi = P + (size_t)i * (size_t)sk, *dPi = Pd + (size_t)i * (size_t)sk;
                    float *dSi = dS + (size_t)i * (size_t)sk;
                    for (int j = 0; j < sk; j++) {
                        const float *vj = v + fd_kv_index(p, b, j, hk, 0);
                        float x = fd_round_to_dtype(fd_dot_acc_dt(order, doi, 1, vj, 1, D, 0.0f, dt), dt);
                        if (dropout) x = keep[(size_t)i * (size_t)sk + (size_t)j] ? fd_round_to_dtype(x * rp, dt) : 0.0f;
                        dPi[j] = x;
                    }
                    float di = 0.0f;
                    for (int j = 0; j < sk; j++) di += Pi[j] * dPi[j];
                    if (capped) {
                        const float *Ti = T + (size_t)i * (size_t)sk;
                        for (int j = 0; j < sk; j++) {
                            const float g = (Pi[j] * (dPi[j] - di)) * p->softcap;
                            dSi[j] = fd_round_to_dtype(((g * (1.0f - Ti[j] * Ti[j])) / p->softcap) * scale, dt);
                        }
                    } else {
                        for (int j = 0; j < sk; j++) dSi[j] = fd_round_to_dtype((Pi[j] * (dPi[j] - di)) * scale, dt);
                    }
                }
                /* dQ = dS K. */
                for (int i = 0; i < sq; i++)
                    for (int d = 0; d < D; d++) {
                        const float *kd = k + fd_kv_index(p, b, 0, hk, d);
                        float x = fd_dot_acc_dt(order, dS + (size_t)i * (size_t)sk, 1, kd, kvstride, sk, 0.0f, dt);
                        dq[fd_q_index(p, b, i, h, d)] = fd_round_to_dtype(x, dt);
                    }
                /* dK_h = dS^T Q, rounded, added to the group's fp32 sum. */
                for (int j = 0; j < sk; j++)
                    for (int d = 0; d < D; d++) {
                        const float *qd = q + fd_q_index(p, b, 0, h, d);
                        float x = fd_dot_acc_dt(order, dS + j, (size_t)sk, qd, qstride, sq, 0.0f, dt);
                        gk[(size_t)j * (size_t)D + (size_t)d] += fd_round_to_dtype(x, dt);
                    }
            }
            for (int j = 0; j < sk; j++)
                for (int d = 0; d < D; d++) {
                    dk[fd_kv_index(p, b, j, hk, d)] = fd_round_to_dtype(gk[(size_t)j * (size_t)D + (size_t)d], dt);
                    dv[fd_kv_index(p, b, j, hk, d)] = fd_round_to_dtype(gv[(size_t)j * (size_t)D + (size_t)d], dt);
                }
        }
    free(P); free(Pd); free(dS); free(s); free(keep); free(gk); free(gv); free(T);
    return 0;
}
