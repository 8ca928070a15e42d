/* fd_backend.c: the backend registry (CPU replay always, CUDA when built and a GPU is present). */
#include <stdio.h>
#include <string.h>

#include "fd_cpu_attn.h"
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

static const fd_backend fd_backends[] = {
    {"cpu-flash", "cpu", FD_ROLE_FLASH, run_cpu_flash},
    {"cpu-standard", "cpu", FD_ROLE_STANDARD, run_cpu_standard},
};
#define FD_NBACKENDS ((int)(sizeof fd_backends / sizeof fd_backends[0]))

const fd_backend *fd_backend_find(const char *name)
{
    for (int i = 0; i < FD_NBACKENDS; i++)
        if (!strcmp(fd_backends[i].name, name)) return &fd_backends[i];
    return NULL;
}

static int gpu_present(void)
{
    return 0;
}

int fd_backends_select(const char *spec, const fd_backend **out, char *err, size_t errlen)
{
    int n = 0;
    if (!strcmp(spec, "auto")) spec = gpu_present() ? "cuda" : "cpu";
    if (!strcmp(spec, "cpu")) spec = "cpu-flash,cpu-standard";
    if (!strcmp(spec, "cuda")) {
        if (!gpu_present()) {
            snprintf(err, errlen, "--backend cuda: no CUDA GPU is available (built without CUDA or no device)");
            return -1;
        }
        spec = "cuda-flash,cuda-standard,cuda-splitkv";
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
