/* fd_common.c: names of the shared enums; checks of the score modifiers. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include "fd_dtype.h"
#include "fd_problem.h"

const char *fd_dtype_name(fd_dtype t)
{
    switch (t) {
    case FD_DT_FP16: return "fp16";
    case FD_DT_BF16: return "bf16";
    case FD_DT_FP32: return "fp32";
    case FD_DT_E4M3: return "e4m3";
    case FD_DT_E5M2: return "e5m2";
    }
    return "?";
}

const char *fd_mask_name(fd_mask_kind m)
{
    switch (m) {
    case FD_MASK_NONE: return "none";
    case FD_MASK_CAUSAL_TL: return "causal_tl";
    case FD_MASK_CAUSAL_BR: return "causal_br";
    }
    return "?";
}

/* ---- Variable-length batches (issue 13 item 4) ---- */
int fd_cu_seqlens_check(const int *cu, int n, int total, char *err, size_t errlen)
{
    if (cu[0] != 0) {
        snprintf(err, errlen, "must start at 0, got %d", cu[0]);
        return -1;
    }
    for (int s = 0; s < n; s++)
        if (cu[s + 1] < cu[s]) {
            snprintf(err, errlen, "must not decrease: entry %d is %d, entry %d is %d", s, cu[s], s + 1, cu[s + 1]);
            return -1;
        }
    if (cu[n] != total) {
        snprintf(err, errlen, "must end at the packed length %d, got %d", total, cu[n]);
        return -1;
    }
    return 0;
}

int fd_problem_check_varlen(const fd_problem *p, char *err, size_t errlen)
{
    char e[200];
    if (p->varlen < 0 || p->varlen > FD_VARLEN_MAX_SEQS) {
        snprintf(err, errlen, "varlen: %d sequences, expected 1..%d", p->varlen, FD_VARLEN_MAX_SEQS);
        return -1;
    }
    if (p->batch != 1) {
        snprintf(err, errlen, "varlen: the packed problem has batch 1, got %d", p->batch);
        return -1;
    }
    if (fd_cu_seqlens_check(p->cu_seqlens_q, p->varlen, p->seqlen_q, e, sizeof e)) {
        snprintf(err, errlen, "cu_seqlens_q %s", e);
        return -1;
    }
    if (fd_cu_seqlens_check(p->cu_seqlens_k, p->varlen, p->seqlen_k, e, sizeof e)) {
        snprintf(err, errlen, "cu_seqlens_k %s", e);
        return -1;
    }
    if (p->dropout_p > 0.0) {
        snprintf(err, errlen, "varlen with dropout is not supported (FA2 draws a varlen call's dropout per sequence)");
        return -1;
    }
    return 0;
}
/* ---- end variable-length batches ---- */

/* ---- FP8 (issue 15 item 4) ---- */
int fd_problem_check_fp8(const fd_problem *p, char *err, size_t errlen)
{
    const float ds[3] = {p->q_descale, p->k_descale, p->v_descale};
    static const char *const nm[3] = {"q_descale", "k_descale", "v_descale"};
    for (int t = 0; t < 3; t++) {
        if (!fd_dtype_is_fp8(p->dtype) && !(fd_eqf(ds[t], 0.0f) || fd_eqf(ds[t], 1.0f))) {
            snprintf(err, errlen, "%s %g: descale factors apply to FP8 dtypes (e4m3, e5m2) only, got dtype %s",
                     nm[t], (double)ds[t], fd_dtype_name(p->dtype));
            return -1;
        }
        if (!(ds[t] >= 0.0f) || isinf(ds[t])) {
            snprintf(err, errlen, "%s %g: expected a finite number > 0 (0: 1)", nm[t], (double)ds[t]);
            return -1;
        }
    }
    if (fd_dtype_is_fp8(p->dtype) &&
        (p->dropout_p > 0.0 || p->window || p->softcap > 0.0f || p->alibi || p->varlen || p->page_size > 0)) {
        snprintf(err, errlen, "dtype %s: dropout, window, softcap, alibi, varlen and paged KV are not modelled "
                 "for FP8 (expected plain attention, causal or not)", fd_dtype_name(p->dtype));
        return -1;
    }
    return 0;
}

int fd_fp8_dequant_bf16(const fd_problem *p, const float *q, const float *k, const float *v, fd_problem *pb,
                        float **qb, float **kb, float **vb)
{
    const size_t nq = fd_q_numel(p), nkv = fd_kv_numel(p);
    *pb = *p;
    pb->dtype = FD_DT_BF16;
    pb->q_descale = pb->k_descale = pb->v_descale = 0.0f;
    *qb = malloc(sizeof(float) * (nq ? nq : 1));
    *kb = malloc(sizeof(float) * (nkv ? nkv : 1));
    *vb = malloc(sizeof(float) * (nkv ? nkv : 1));
    if (!*qb || !*kb || !*vb) {
        free(*qb); free(*kb); free(*vb);
        *qb = *kb = *vb = NULL;
        return -1;
    }
    const float dq = fd_descale(p->q_descale), dk = fd_descale(p->k_descale), dv = fd_descale(p->v_descale);
    for (size_t e = 0; e < nq; e++) (*qb)[e] = fd_round_to_dtype(q[e] * dq, FD_DT_BF16);
    for (size_t e = 0; e < nkv; e++) (*kb)[e] = fd_round_to_dtype(k[e] * dk, FD_DT_BF16);
    for (size_t e = 0; e < nkv; e++) (*vb)[e] = fd_round_to_dtype(v[e] * dv, FD_DT_BF16);
    return 0;
}
/* ---- end FP8 ---- */

int fd_problem_check_mods(const fd_problem *p, char *err, size_t errlen)
{
    if (fd_problem_check_fp8(p, err, errlen)) return -1;
    if (p->window && (p->window_left < -1 || p->window_right < -1)) {
        snprintf(err, errlen, "window (%d, %d): each side must be >= 0, or -1 for unbounded",
                 p->window_left, p->window_right);
        return -1;
    }
    if (!(p->softcap >= 0.0f) || isinf(p->softcap)) {
        snprintf(err, errlen, "softcap %g: must be finite and >= 0 (0: none)", (double)p->softcap);
        return -1;
    }
    if (p->varlen && fd_problem_check_varlen(p, err, errlen)) return -1;
    if (p->page_size && fd_problem_check_paged(p, err, errlen)) return -1;
    if (p->alibi) {
        if (p->heads > FD_ALIBI_MAX_HEADS) {
            snprintf(err, errlen, "ALiBi with %d heads: at most %d supported", p->heads, FD_ALIBI_MAX_HEADS);
            return -1;
        }
        for (int h = 0; h < p->heads; h++)
            if (!isfinite(p->alibi_slopes[h])) {
                snprintf(err, errlen, "ALiBi slope of head %d is not finite (%g)", h, (double)p->alibi_slopes[h]);
                return -1;
            }
    }
    return 0;
}

void fd_alibi_default_slopes(int heads, float *slopes)
{
    /* 2^(-8 (h + 1) / H), the geometric sequence of the ALiBi paper (Press et al.) for
     * H a power of two, and what FlashAttention's tests use (get_alibi_slopes). */
    for (int h = 0; h < heads && h < FD_ALIBI_MAX_HEADS; h++)
        slopes[h] = (float)exp2(-8.0 * (double)(h + 1) / (double)heads);
}

int fd_problem_describe_mods(const fd_problem *p, char *buf, size_t len)
{
    int n = 0;
    buf[0] = 0;
    if (p->window)
        n += snprintf(buf + n, len - (size_t)n, "%swindow (%d, %d)", n ? ", " : "", p->window_left, p->window_right);
    if (p->softcap > 0.0f && (size_t)n < len)
        n += snprintf(buf + n, len - (size_t)n, "%ssoftcap %g", n ? ", " : "", (double)p->softcap);
    if (p->alibi && (size_t)n < len)
        n += snprintf(buf + n, len - (size_t)n, "%salibi", n ? ", " : "");
    if (p->varlen && (size_t)n < len)
        n += snprintf(buf + n, len - (size_t)n, "%svarlen (%d sequences)", n ? ", " : "", p->varlen);
    return n;
}

/* ---- Paged KV cache (issue 13 item 5) ---- */
int fd_problem_check_paged(const fd_problem *p, char *err, size_t errlen)
{
    if (p->page_size <= 0) {
        snprintf(err, errlen, "paged KV cache: page_size must be positive, got %d", p->page_size);
        return -1;
    }
    if (p->batch < 1 || p->batch > FD_PAGED_MAX_BATCH) {
        snprintf(err, errlen, "paged KV cache: batch %d, expected 1..%d", p->batch, FD_PAGED_MAX_BATCH);
        return -1;
    }
    if (p->varlen || p->dropout_p > 0.0 || p->alibi) {
        snprintf(err, errlen, "paged KV cache with %s is not supported", p->varlen ? "varlen" : p->alibi ? "ALiBi" : "dropout");
        return -1;
    }
    if (p->mask != FD_MASK_NONE && p->mask != FD_MASK_CAUSAL_BR) {
        snprintf(err, errlen, "paged KV cache: mask %s unsupported (none or causal_br: FA2 aligns to cache_seqlens)",
                 fd_mask_name(p->mask));
        return -1;
    }
    const int np = fd_paged_pages(p);
    if (p->seqlen_k <= 0 || (double)np * p->batch > (double)FD_PAGED_MAX_ENTRIES || p->num_pages < 1 ||
        p->num_pages > FD_PAGED_MAX_ENTRIES) {
        snprintf(err, errlen, "paged KV cache: %d pages per entry x %d entries, %d physical pages (at most %d each)", np,
                 p->batch, p->num_pages, FD_PAGED_MAX_ENTRIES);
        return -1;
    }
    for (int b = 0; b < p->batch; b++)
        if (p->cache_seqlens[b] < p->seqlen_q || p->cache_seqlens[b] > p->seqlen_k) {
            snprintf(err, errlen, "cache_seqlens[%d] = %d, expected %d..%d (seqlen_q .. pages x page_size)", b,
                     p->cache_seqlens[b], p->seqlen_q, p->seqlen_k);
            return -1;
        }
    if (!p->block_table) {
        snprintf(err, errlen, "paged KV cache without a block table");
        return -1;
    }
    for (int b = 0; b < p->batch; b++)
        for (int t = 0; t < np; t++) {
            const int e = p->block_table[(size_t)b * (size_t)np + (size_t)t];
            if (e < 0 || e >= p->num_pages) {
                snprintf(err, errlen, "block_table[%d][%d] = %d, expected a page in 0..%d", b, t, e, p->num_pages - 1);
                return -1;
            }
        }
    return 0;
}

void fd_paged_scatter(const fd_problem *p, const float *logical, float *phys)
{
    const size_t row = (size_t)p->kv_heads * (size_t)p->head_dim;
    const size_t n = fd_paged_numel(p);
    for (size_t x = 0; x < n; x++) phys[x] = NAN;
    for (int b = 0; b < p->batch; b++)
        for (int j = 0; j < p->seqlen_k; j++)
            memcpy(phys + (size_t)fd_paged_row(p, b, j) * row, logical + fd_kv_index(p, b, j, 0, 0),
                   sizeof(float) * row);
}

void fd_paged_gather(const fd_problem *p, const float *phys, float *logical)
{
    const size_t row = (size_t)p->kv_heads * (size_t)p->head_dim;
    for (int b = 0; b < p->batch; b++)
        for (int j = 0; j < p->seqlen_k; j++)
            memcpy(logical + fd_kv_index(p, b, j, 0, 0), phys + (size_t)fd_paged_row(p, b, j) * row,
                   sizeof(float) * row);
}

/* FlashAttention-2's num_splits_heuristic (csrc/flash_attn/flash_api.cpp, read 2026-12-03 at
 * Dao-AILab/flash-attention 0251105; re-implemented): with B = batch x heads x m_blocks
 * CTAs and S "SMs" (2 x the SM count: 128-thread CTAs), one split when B >= 0.8 S (float);
 * else for each eligible n in 1..min(128, S, n_blocks) (n = 1, or ceil(n_blocks / n) !=
 * ceil(n_blocks / (n - 1))) the wave efficiency e(n) = w / ceil(w), w = B n / S (float),
 * and the smallest eligible n with e(n) >= 0.85 max e (a double comparison). Its inputs as
 * mha_fwd_kvcache / set_params_splitkv give them: block_n = 256, 128, 64 for head dims
 * <= 64, <= 128, larger; n_blocks = ceil(seqlen_k / block_n) with seqlen_k the capacity
 * (pages x page_size); m_blocks = ceil(seqlen_q / 64); and seqlen_q 1 with GQA (no window,
 * d % 8 == 0, no ALiBi) swapped to seqlen_q = heads / kv_heads, heads = kv_heads. */
int fd_splitkv_heuristic(const fd_problem *p, int num_sms)
{
    int sq = p->seqlen_q, H = p->heads;
    const int d8 = (p->head_dim + 7) / 8 * 8;
    const int unbounded = !p->window || (p->window_left < 0 && p->window_right < 0);
    if (sq == 1 && H > p->kv_heads && unbounded && p->head_dim % 8 == 0 && !p->alibi) {
        sq = H / p->kv_heads;
        H = p->kv_heads;
    }
    const int block_n = d8 <= 64 ? 256 : d8 <= 128 ? 128 : 64;
    const int n_blocks = (p->seqlen_k + block_n - 1) / block_n;
    const int m_blocks = (sq + 63) / 64;
    const long bhm = (long)p->batch * H * m_blocks;
    const int S = 2 * (num_sms > 0 ? num_sms : 132);
    if ((float)bhm >= 0.8f * (float)S) return 1;
    int mx = 128;
    if (S < mx) mx = S;
    if (n_blocks < mx) mx = n_blocks;
    float eff[129], best = 0.0f;
    for (int n = 1; n <= mx; n++) {
        const int ok = n == 1 || (n_blocks + n - 1) / n != (n_blocks + n - 2) / (n - 1);
        eff[n] = 0.0f;
        if (!ok) continue;
        const float w = (float)(bhm * n) / (float)S;
        eff[n] = w / ceilf(w);
        if (eff[n] > best) best = eff[n];
    }
    for (int n = 1; n <= mx; n++) {
        const int ok = n == 1 || (n_blocks + n - 1) / n != (n_blocks + n - 2) / (n - 1);
        if (ok && (double)eff[n] >= 0.85 * (double)best) return n;
    }
    return 1;
}

int fd_splitkv_splits(const fd_problem *p, int cfg_splits, int num_sms)
{
    return cfg_splits > 0 ? cfg_splits : fd_splitkv_heuristic(p, num_sms);
}
/* ---- end paged KV cache ---- */
