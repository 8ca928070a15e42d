/* fd_backend.c: the backend registry (CPU replay always, CUDA when built and a GPU is present). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_cpu_attn.h"
#include "fd_cpu_bwd.h"
#include "fd_run.h"

static int run_cpu_flash(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                         const float *v, const int *rows, int nrows, float *o, float *lse,
                         double *ms, char *err, size_t errlen)
{
    *ms = 0.0;
    return fd_cpu_flash_forward(&c->prob, &cf->flash, q, k, v, rows, nrows, o, lse, err, errlen);
}

static int run_cpu_standard(const fd_casefile *cf, const fd_case *c, const float *q,
                            const float *k, const float *v, const int *rows, int nrows, float *o,
                            float *lse, double *ms, char *err, size_t errlen)
{
    *ms = 0.0;
    return fd_cpu_standard_forward(&c->prob, cf->flash.qk_order, q, k, v, rows, nrows, o, lse,
                                   err, errlen);
}

static int bwd_cpu_flash(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                         const float *v, const float *o, const float *lse, const float *dout, float *dq,
                         float *dk, float *dv, double *ms, char *err, size_t errlen)
{
    *ms = 0.0;
    return fd_cpu_flash_backward(&c->prob, &cf->flash, &cf->bwd, q, k, v, o, lse, dout, dq, dk, dv, err,
                                 errlen);
}

static int bwd_cpu_standard(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                            const float *v, const float *o, const float *lse, const float *dout, float *dq,
                            float *dk, float *dv, double *ms, char *err, size_t errlen)
{
    (void)o; (void)lse; /* eager attention's autograd recomputes its forward */
    *ms = 0.0;
    return fd_cpu_standard_backward(&c->prob, cf->flash.qk_order, q, k, v, dout, dq, dk, dv, err, errlen);
}

static int run_cpu_splitkv(const fd_casefile *cf, const fd_case *c, const float *q,
                           const float *k, const float *v, const int *rows, int nrows, float *o,
                           float *lse, double *ms, char *err, size_t errlen)
{
    *ms = 0.0;
    return fd_cpu_splitkv_forward(&c->prob, &cf->flash, fd_splitkv_splits(&c->prob, cf->flash.splits, cf->flash.sms),
                                  q, k, v, rows, nrows, o, lse, err, errlen);
}

#ifdef FD_HAVE_CUDA
/* Backends without the window, softcap and ALiBi skip such cases (not a failure). */
static int supports_plain(const fd_case *c, char *why, size_t len)
{
    if (!fd_problem_has_mods(&c->prob)) return 1;
    snprintf(why, len, "no window, softcap, ALiBi, varlen or paged KV support (FlashAttention features: cpu-flash, cpu-standard, cuda-flash; paged: cuda-splitkv)");
    return 0;
}

/* cuda-flash: every feature but the paged KV cache (cuda-splitkv reads pages, as FA2's
 * mha_fwd_kvcache sends paged calls to its split-KV kernel). */
static int supports_cuda_flash(const fd_case *c, char *why, size_t len)
{
    if (fd_dtype_is_fp8(c->prob.dtype) && c->prob.head_dim != 64 && c->prob.head_dim != 128) {
        snprintf(why, len, "the FP8 kernel runs head_dim 64 and 128 (cpu-flash replays every head_dim)");
        return 0;
    }
    if (c->prob.page_size <= 0) return 1;
    snprintf(why, len, "no paged KV cache (FA2 runs paged calls on its split-KV kernel: cuda-splitkv)");
    return 0;
}
#endif

#ifdef FD_HAVE_CUDA
#include "fd_cuda.h"

#define FD_CUDA_REPEATS 5

static void cuda_cfg(const fd_casefile *cf, fd_cuda_cfg *g)
{
    fd_cuda_cfg_default(g);
    g->br = cf->flash.br;
    g->bc = cf->flash.bc;
    g->exp2_mode = cf->flash.exp2_mode == FD_EXP2_PORTABLE ? 1 : 0;
    g->p_fp32 = cf->flash.p_fp32;
    g->splits = cf->flash.splits;
    g->repeats = FD_CUDA_REPEATS;
    g->fp8_max_offset = cf->flash.fp8_max_offset;
}

/* The GPU computes every row; the harness compares the checked ones. impl: the mma.sync
 * kernel (cuda-flash) or the Hopper kernel (cuda-flash-sm90: cuda-flash's numerics, so the
 * same replay; fd_cuda.h). */
static int run_cuda_flash_impl(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                               const float *v, float *o, float *lse, double *ms, int impl, char *err, size_t errlen)
{
    fd_cuda_cfg g;
    fd_cuda_timing t = {0, 0, 0};
    cuda_cfg(cf, &g);
    g.impl = impl;
    int rc = fd_cuda_flash_forward(&c->prob, &g, q, k, v, o, lse, NULL, &t, err, errlen);
    *ms = (double)t.ms_median;
    return rc;
}

static int run_cuda_flash(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                          const float *v, const int *rows, int nrows, float *o, float *lse,
                          double *ms, char *err, size_t errlen)
{
    (void)rows; (void)nrows;
    return run_cuda_flash_impl(cf, c, q, k, v, o, lse, ms, FD_CUDA_IMPL_MMA, err, errlen);
}

static int run_cuda_flash_sm90(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                               const float *v, const int *rows, int nrows, float *o, float *lse,
                               double *ms, char *err, size_t errlen)
{
    (void)rows; (void)nrows;
    return run_cuda_flash_impl(cf, c, q, k, v, o, lse, ms, FD_CUDA_IMPL_WGMMA, err, errlen);
}

/* Problems the Hopper kernel does not run are skipped with the reason; the case file's knobs
 * it lacks (fp32 P) fail the call with the reason. */
static int supports_cuda_flash_sm90(const fd_case *c, char *why, size_t len)
{
    if (!fd_cuda_sm90_supports(&c->prob, NULL, why, len)) return 0;
    char name[256] = "";
    if (fd_cuda_device_count() > 0 && (fd_cuda_device_name(name, sizeof name) || !strstr(name, "sm_90"))) {
        snprintf(why, len, "cuda-flash-sm90 needs an sm_90 GPU (wgmma), this is %s", name);
        return 0;
    }
    return 1;
}

static int run_cuda_standard(const fd_casefile *cf, const fd_case *c, const float *q,
                             const float *k, const float *v, const int *rows, int nrows, float *o,
                             float *lse, double *ms, char *err, size_t errlen)
{
    (void)cf; (void)rows; (void)nrows;
    fd_cuda_timing t = {0, 0, 0};
    int rc = fd_cuda_standard_forward(&c->prob, FD_CUDA_REPEATS, q, k, v, o, lse, &t, err, errlen);
    *ms = (double)t.ms_median;
    return rc;
}

static int run_cuda_splitkv(const fd_casefile *cf, const fd_case *c, const float *q,
                            const float *k, const float *v, const int *rows, int nrows, float *o,
                            float *lse, double *ms, char *err, size_t errlen)
{
    (void)rows; (void)nrows;
    fd_cuda_cfg g;
    fd_cuda_timing t = {0, 0, 0};
    cuda_cfg(cf, &g);
    g.splits = fd_splitkv_splits(&c->prob, cf->flash.splits, cf->flash.sms); /* the replay's choice too */
    int rc = fd_cuda_splitkv_forward(&c->prob, &g, q, k, v, o, lse, &t, err, errlen);
    *ms = (double)t.ms_median;
    return rc;
}

static int bwd_cuda_flash(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                          const float *v, const float *o, const float *lse, const float *dout, float *dq,
                          float *dk, float *dv, double *ms, char *err, size_t errlen)
{
    if (c->prob.dtype == FD_DT_FP32) {
        snprintf(err, errlen, "cuda-flash's backward runs fp16 and bf16 on tensor cores, not fp32");
        return 1;
    }
    fd_cuda_cfg g;
    fd_cuda_timing t = {0, 0, 0};
    cuda_cfg(cf, &g);
    int rc = fd_cuda_flash_backward(&c->prob, &g, &cf->bwd, q, k, v, o, lse, dout, dq, dk, dv, &t, err, errlen);
    *ms = (double)t.ms_median;
    return rc;
}

static int bwd_cuda_standard(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                             const float *v, const float *o, const float *lse, const float *dout, float *dq,
                             float *dk, float *dv, double *ms, char *err, size_t errlen)
{
    (void)cf; (void)o; (void)lse;
    fd_cuda_timing t = {0, 0, 0};
    int rc = fd_cuda_standard_backward(&c->prob, FD_CUDA_REPEATS, q, k, v, dout, dq, dk, dv, &t, err, errlen);
    *ms = (double)t.ms_median;
    return rc;
}

static int supports_cuda_splitkv(const fd_case *c, char *why, size_t len)
{
    fd_problem plain = c->prob; /* the paged KV cache is split-KV's; the other features not yet */
    plain.page_size = 0;
    if (fd_problem_has_mods(&plain)) {
        snprintf(why, len, "no window, softcap, ALiBi or varlen support in split-KV (cpu-flash, cpu-standard, cuda-flash)");
        return 0;
    }
    if (fd_dtype_is_fp8(c->prob.dtype)) {
        snprintf(why, len, "no FP8 split-KV kernel (cpu-splitkv replays FP8 split-KV)");
        return 0;
    }
    if (c->prob.dtype != FD_DT_FP32) return 1;
    snprintf(why, len, "split-KV runs fp16 and bf16 only (fp32 inputs go through cuda-flash's fp32 path)");
    return 0;
}

/* The mask cuda-flash applied, from its sign-encoded debug output (one more untimed run). */
static int mask_cuda_flash(const fd_casefile *cf, const fd_case *c, const float *q, const float *k,
                           const float *v, const int *rows, int nrows, uint8_t *mask, char *err,
                           size_t errlen)
{
    const fd_problem *p = &c->prob;
    const size_t full = (size_t)p->batch * (size_t)p->heads * (size_t)p->seqlen_q * (size_t)p->seqlen_k;
    if (full > ((size_t)1 << 31)) {
        snprintf(err, errlen, "debug mask of %zu bytes too large to check", full);
        return -1;
    }
    uint8_t *dm = malloc(full);
    float *o = malloc(sizeof(float) * fd_q_numel(p)), *lse = malloc(sizeof(float) * fd_lse_numel(p));
    if (!dm || !o || !lse) {
        free(dm); free(o); free(lse);
        snprintf(err, errlen, "out of memory for the debug mask");
        return -1;
    }
    fd_cuda_cfg g;
    cuda_cfg(cf, &g);
    g.repeats = 0;
    int rc = fd_cuda_flash_forward(p, &g, q, k, v, o, lse, dm, NULL, err, errlen);
    for (int b = 0; !rc && b < p->batch; b++)
        for (int h = 0; h < p->heads; h++)
            for (int r = 0; r < nrows; r++)
                memcpy(mask + (((size_t)b * (size_t)p->heads + (size_t)h) * (size_t)nrows + (size_t)r) * (size_t)p->seqlen_k,
                       dm + (((size_t)b * (size_t)p->heads + (size_t)h) * (size_t)p->seqlen_q + (size_t)rows[r]) * (size_t)p->seqlen_k,
                       (size_t)p->seqlen_k);
    free(dm); free(o); free(lse);
    return rc;
}
#endif

static const fd_backend fd_backends[] = {
    {"cpu-flash", "cpu", FD_ROLE_FLASH, run_cpu_flash, NULL, NULL, bwd_cpu_flash},
    {"cpu-standard", "cpu", FD_ROLE_STANDARD, run_cpu_standard, NULL, NULL, bwd_cpu_standard},
    {"cpu-splitkv", "cpu", FD_ROLE_FLASH, run_cpu_splitkv, NULL, NULL, NULL},
#ifdef FD_HAVE_CUDA
    {"cuda-flash", "cuda", FD_ROLE_FLASH, run_cuda_flash, mask_cuda_flash, supports_cuda_flash, bwd_cuda_flash},
    {"cuda-flash-sm90", "cuda", FD_ROLE_FLASH, run_cuda_flash_sm90, NULL, supports_cuda_flash_sm90, NULL},
    {"cuda-standard", "cuda", FD_ROLE_STANDARD, run_cuda_standard, NULL, supports_plain, bwd_cuda_standard},
    {"cuda-splitkv", "cuda", FD_ROLE_FLASH, run_cuda_splitkv, NULL, supports_cuda_splitkv, NULL},
#endif
};
#define FD_NBACKENDS ((int)(sizeof fd_backends / sizeof fd_backends[0]))

const fd_backend *fd_backend_find(const char *name)
{
    for (int i = 0; i < FD_NBACKENDS; i++)
        if (!strcmp(fd_backends[i].name, name)) return &fd_backends[i];
    return NULL;
}

int fd_gpu_describe(char *buf, size_t len)
{
#ifdef FD_HAVE_CUDA
    if (fd_cuda_device_count() > 0) return fd_cuda_device_name(buf, len);
#endif
    (void)buf; (void)len;
    return -1;
}

int fd_gpu_select(int ordinal)
{
#ifdef FD_HAVE_CUDA
    return fd_cuda_select_device(ordinal);
#else
    (void)ordinal;
    return -1;
#endif
}

int fd_gpu_present(void)
{
#ifdef FD_HAVE_CUDA
    return fd_cuda_device_count() > 0;
#else
    return 0;
#endif
}

int fd_backends_select(const char *spec, const fd_backend **out, char *err, size_t errlen)
{
    int n = 0;
    /* cases of imported tensors: their outputs are given, no kernel runs */
    if (!strcmp(spec, "import")) return 0;
    if (!strcmp(spec, "auto")) spec = fd_gpu_present() ? "cuda" : "cpu";
    if (!strcmp(spec, "cpu")) spec = "cpu-flash,cpu-standard";
    if (!strcmp(spec, "cuda")) {
        if (!fd_gpu_present()) {
            snprintf(err, errlen, "--backend cuda: no CUDA GPU is available (built without CUDA or no device)");
            return -1;
        }
        spec = "cuda-flash,cuda-standard,cuda-splitkv";
#ifdef FD_HAVE_CUDA
        /* an sm_90 GPU also runs the Hopper kernel (the replay checks it as it checks cuda-flash) */
        char name[256] = "";
        if (!fd_cuda_device_name(name, sizeof name) && strstr(name, "sm_90"))
            spec = "cuda-flash,cuda-flash-sm90,cuda-standard,cuda-splitkv";
#endif
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        const fd_backend *b = fd_backend_find(tok);
        if (!b) {
            char names[256] = "";
            for (int i = 0; i < FD_NBACKENDS; i++) {
                strncat(names, fd_backends[i].name, sizeof names - strlen(names) - 1);
                strncat(names, ", ", sizeof names - strlen(names) - 1);
            }
            snprintf(err, errlen, "--backend: unknown backend \"%s\" (expected auto, cpu, cuda or a list of: %sor their families)", tok, names);
            return -1;
        }
        for (int i = 0; i < n; i++)
            if (out[i] == b) b = NULL;
        if (!b) continue;
        if (n == FD_MAX_BACKENDS) {
            snprintf(err, errlen, "--backend: at most %d backends", FD_MAX_BACKENDS);
            return -1;
        }
        out[n++] = b;
    }
    if (!n) {
        snprintf(err, errlen, "--backend: empty list");
        return -1;
    }
    return n;
}
