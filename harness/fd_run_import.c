/* fd_run_import.c: see fd_run_import.h. A case of imported tensors: loads the bundle, hands
 * its inputs and outputs to fd_run_case_given as given ones, and adds what only a bundle
 * has (where it came from, its outputs against each other). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fd_dtype.h"
#include "fd_import.h"
#include "fd_inputs.h"
#include "fd_out.h"
#include "fd_philox.h"
#include "fd_ref.h"
#include "fd_run_import.h"


/* Two outputs against each other over every element. */
static json_t *pair_json(const fd_problem *p, const fd_import_output *a, const fd_import_output *c)
{
    const size_t n = fd_q_numel(p);
    double max_abs = 0.0, max_ulp = 0.0, se = 0.0, sr = 0.0;
    long identical = 0, nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        const float x = a->o[i], y = c->o[i];
        if (fd_f32_bits(x) == fd_f32_bits(y)) identical++;
        if (!isfinite(x) || !isfinite(y)) {
            nonfinite++;
            continue;
        }
        const double d = fabs((double)x - (double)y);
        if (d > max_abs) max_abs = d;
        const double m = fabs((double)x) > fabs((double)y) ? fabs((double)x) : fabs((double)y);
        const double u = d / fd_ulp_in_dtype(m, p->dtype);
        if (u > max_ulp) max_ulp = u;
        se += d * d;
        sr += (double)y * (double)y;
    }
    return json_pack("{s:s, s:s, s:o, s:o, s:o, s:I, s:I, s:I}", "a", a->name, "b", c->name, "max_abs",
                     fd_json_num(max_abs), "rel_l2", fd_json_num(sr > 0.0 ? sqrt(se / sr) : sqrt(se)),
                     "max_ulp", fd_json_num(max_ulp), "identical", (json_int_t)identical, "elements",
                     (json_int_t)n, "nonfinite", (json_int_t)nonfinite);
}

static void bundle_release(void *p)
{
    fd_bundle_free(p);
    free(p);
}

static int run_bundle_case(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe,
                           int jobs, int repeat, fd_case_result *res, char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    /* on the heap: the given backends' results point into it, so it lives as long as the
     * result (fd_case_result_free releases it) */
    fd_bundle *bd = malloc(sizeof *bd);
    if (!bd) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (fd_bundle_load(c->bundle, bd, err, errlen)) {
        free(bd);
        return -1;
    }
    fd_case bc = *c;
    bc.prob = bd->prob;
    bc.dist = FD_DIST_GIVEN;
    bc.input_seed = 0;
    bc.backward = bd->dout != NULL; /* a bundle with "do" asks for its gradients to be judged */
    fd_given g;
    fd_bundle_given(bd, -1, 0, &g);
    char e2[1024];
    if (fd_run_case_given(cf, &bc, bes, nbe, &g, jobs, repeat, res, e2, sizeof e2)) {
        snprintf(err, errlen, "bundle %s: %s", bd->path, e2);
        bundle_release(bd);
        return -1;
    }
    res->owned = bd;
    res->owned_free = bundle_release;
    json_t *x = json_object();
    json_t *outs = json_array();
    for (int t = 0; t < bd->nout; t++)
        json_array_append_new(outs, json_pack("{s:s, s:s, s:b, s:b, s:b}", "name", bd->out[t].name, "role",
                                              bd->out[t].be.role == FD_ROLE_FLASH ? "flash" : "standard",
                                              "lse", bd->out[t].lse != NULL, "dropout_mask",
                                              bd->out[t].keep != NULL, "gradients", bd->out[t].dq != NULL));
    json_object_set_new(x, "bundle", json_string(bd->path));
    json_object_set_new(x, "format", json_string(bd->safetensors ? "safetensors" : "npy"));
    json_object_set_new(x, "layout", json_string(bd->bhsd ? "bhsd" : "bshd"));
    json_object_set_new(x, "outputs", outs);
    if (bd->info) json_object_set(x, "info", bd->info);
    json_t *pairs = json_array();
    for (int a = 0; a < bd->nout; a++)
        for (int b = a + 1; b < bd->nout; b++)
            json_array_append_new(pairs, pair_json(&bd->prob, &bd->out[a], &bd->out[b]));
    json_object_set_new(x, "pairs", pairs);
    res->extra = x;
    return 0;
}

int fd_run_case(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe, int jobs,
                int repeat, fd_case_result *res, char *err, size_t errlen)
{
    if (c->bundle) return run_bundle_case(cf, c, bes, nbe, jobs, repeat, res, err, errlen);
    return fd_run_case_given(cf, c, bes, nbe, NULL, jobs, repeat, res, err, errlen);
}
