/* fd_common.c: names of the shared enums; checks of the score modifiers. */
#include <math.h>
#include <stdio.h>
#include "fd_problem.h"

const char *fd_dtype_name(fd_dtype t)
{
    switch (t) {
    case FD_DT_FP16: return "fp16";
    case FD_DT_BF16: return "bf16";
    case FD_DT_FP32: return "fp32";
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

int fd_problem_check_mods(const fd_problem *p, char *err, size_t errlen)
{
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
