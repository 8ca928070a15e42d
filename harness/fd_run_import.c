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

/* How the model consumed an output (used_NAME, [b][s][h * d]): with its heads merged after
 * the transpose from (b, h, s, d) (o's own [b][s][h][d] order: correct), or reshaped without
 * it (the flat (b, h, s, d) order read as (b, s, h * d): the layout bug), or neither. A FAIL
 * only when the wrong reading matches every element; "other" is reported, not judged. */
static json_t *used_json(const fd_problem *p, const fd_import_output *a, fd_case_result *res)
{
    const size_t H = (size_t)p->heads, S = (size_t)p->seqlen_q, D = (size_t)p->head_dim;
    const size_t per = S * H * D, n = (size_t)p->batch * per;
    long same_merged = 0, same_raw = 0;
    double max_abs = 0.0, se = 0.0, sr = 0.0;
    for (size_t x = 0; x < n; x++) {
        const size_t bb = x / per, f = x % per;
        const size_t hh = f / (S * D), ss = (f / D) % S, dd = f % D;
        const float u = a->used[x], m = a->o[x], r = a->o[((bb * S + ss) * H + hh) * D + dd];
        same_merged += fd_f32_bits(u) == fd_f32_bits(m);
        same_raw += fd_f32_bits(u) == fd_f32_bits(r);
        const double d = fabs((double)u - (double)m);
        if (d > max_abs || isnan(d)) max_abs = d;
        se += d * d;
        sr += (double)m * (double)m;
    }
    const char *layout = (size_t)same_merged == n ? "merged" : (size_t)same_raw == n ? "heads_not_transposed" : "other";
    if (!strcmp(layout, "heads_not_transposed")) {
        fd_worsen(&res->verdict, FD_FAIL);
        fd_add_reason(res, "%s: the model consumed the output with its heads merged without the transpose: "
                           "used_%s is the (b, h, s, d) output reshaped to (b, s, h x d) in all %zu elements",
                      a->name, a->name, n);
    } else if (!strcmp(layout, "other")) {
        fd_add_reason(res, "%s: used_%s matches no reading of the output (%ld of %zu elements as merged heads); "
                           "not judged", a->name, a->name, same_merged, n);
    }
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:o, s:o}", "output", a->name, "layout", layout, "elements",
                     (json_int_t)n, "identical_merged", (json_int_t)same_merged, "identical_unmerged",
                     (json_int_t)same_raw, "max_abs_vs_merged", fd_json_num(max_abs), "rel_l2_vs_merged",
                     fd_json_num(sr > 0.0 ? sqrt(se / sr) : sqrt(se)));
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
    /* the replay with FlashAttention-2's key tile for this bundle's head dim and dropout */
    fd_casefile cfb;
    fd_casefile_for_bundle(cf, &bd->prob, &cfb);
    if (fd_run_case_given(&cfb, &bc, bes, nbe, &g, jobs, repeat, res, e2, sizeof e2)) {
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
    json_object_set_new(x, "replay_key_tile", json_integer(cfb.flash.bc));
    if (bd->info) json_object_set(x, "info", bd->info);
    json_t *pairs = json_array();
    for (int a = 0; a < bd->nout; a++)
        for (int b = a + 1; b < bd->nout; b++)
            json_array_append_new(pairs, pair_json(&bd->prob, &bd->out[a], &bd->out[b]));
    json_object_set_new(x, "pairs", pairs);
    json_t *used = json_array();
    for (int t = 0; t < bd->nout; t++)
        if (bd->out[t].used) json_array_append_new(used, used_json(&bd->prob, &bd->out[t], res));
    if (json_array_size(used)) json_object_set_new(x, "used", used);
    else json_decref(used);
    res->extra = x;
    return 0;
}

int fd_run_case(const fd_casefile *cf, const fd_case *c, const fd_backend *const *bes, int nbe, int jobs,
                int repeat, fd_case_result *res, char *err, size_t errlen)
{
    if (c->bundle) return run_bundle_case(cf, c, bes, nbe, jobs, repeat, res, err, errlen);
    return fd_run_case_given(cf, c, bes, nbe, NULL, jobs, repeat, res, err, errlen);
}
