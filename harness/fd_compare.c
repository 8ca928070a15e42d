/* fd_compare.c: see fd_compare.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_attn64.h"
#include "fd_compare.h"
#include "fd_cpu_attn.h"
#include "fd_dtype.h"
#include "fd_import.h"
#include "fd_out.h"
#include "fd_safetensors.h"
#include <sys/stat.h>

void fd_compare_opts_default(fd_compare_opts *o)
{
    o->gain = 16.0;
    o->floor_ulps = 4.0;
}

int fd_compare_same_model(const fd_capture *a, const fd_capture *b, char *err, size_t errlen)
{
    if (strcmp(a->model, b->model)) {
        snprintf(err, errlen, "two runs of different models: %s is a %s, %s a %s", a->path, a->model, b->path, b->model);
        return -1;
    }
    if (a->ncalls != b->ncalls) {
        snprintf(err, errlen, "two runs of different models or steps: %s has %d attention calls, %s has %d", a->path,
                 a->ncalls, b->path, b->ncalls);
        return -1;
    }
    for (int i = 0; i < a->ncalls; i++) {
        const fd_capture_call *x = &a->calls[i], *y = &b->calls[i];
        if (strcmp(x->module, y->module)) {
            snprintf(err, errlen, "two runs of different models: call %d is made by module '%s' in %s but '%s' in %s",
                     i, x->module, a->path, y->module, b->path);
            return -1;
        }
        if (!x->bundle[0] || !y->bundle[0]) continue;
        if (memcmp(x->q_shape, y->q_shape, sizeof x->q_shape) || memcmp(x->k_shape, y->k_shape, sizeof x->k_shape) ||
            x->dtype != y->dtype) {
            snprintf(err, errlen, "two runs of different models: call %d (%s) has q %lldx%lldx%lldx%lld %s in %s but "
                     "%lldx%lldx%lldx%lld %s in %s", i, x->module, (long long)x->q_shape[0], (long long)x->q_shape[1],
                     (long long)x->q_shape[2], (long long)x->q_shape[3], fd_dtype_name(x->dtype), a->path,
                     (long long)y->q_shape[0], (long long)y->q_shape[1], (long long)y->q_shape[2],
                     (long long)y->q_shape[3], fd_dtype_name(y->dtype), b->path);
            return -1;
        }
    }
    return 0;
}

typedef struct {
    double max_abs, se, sr;
    long identical, n;
} dstat;

static void dstat_add(dstat *s, double a, double b, int same_bits)
{
    const double d = fabs(a - b);
    if (d > s->max_abs || isnan(d)) s->max_abs = d;
    s->se += d * d;
    s->sr += b * b;
    s->identical += same_bits;
    s->n++;
}

static double dstat_rel(const dstat *s)
{
    return s->sr > 0.0 ? sqrt(s->se / s->sr) : sqrt(s->se);
}

static json_t *dstat_json(const dstat *s)
{
    return json_pack("{s:o, s:o, s:I, s:I}", "max_abs", fd_json_num(s->max_abs), "rel_l2", fd_json_num(dstat_rel(s)),
                     "identical", (json_int_t)s->identical, "elements", (json_int_t)s->n);
}

static const fd_import_output *output_named(const fd_bundle *b, const char *name)
{
    for (int t = 0; t < b->nout; t++)
        if (!strcmp(b->out[t].name, name)) return &b->out[t];
    return NULL;
}

static double unit_roundoff(fd_dtype t)
{
    return t == FD_DT_FP16 ? ldexp(1.0, -11) : t == FD_DT_BF16 ? ldexp(1.0, -8) : ldexp(1.0, -24);
}

/* Exact (binary64) attention of a bundle's inputs on every row: [b][s][h][d]. */
static double *exact_out(const fd_bundle *b, const int *rows, char *err, size_t errlen)
{
    const fd_problem *p = &b->prob;
    const size_t nq = fd_q_numel(p), nk = (size_t)p->batch * (size_t)p->seqlen_k * (size_t)p->kv_heads * (size_t)p->head_dim;
    double *q = fd_to_f64(b->q, nq), *k = fd_to_f64(b->k, nk), *v = fd_to_f64(b->v, nk);
    double *o = malloc(sizeof(double) * nq);
    fd_attn_variant va;
    fd_attn_variant_default(p, &va);
    int rc = -1;
    if (q && k && v && o) rc = fd_attn64(p, &va, q, k, v, rows, p->seqlen_q, o, err, errlen);
    else snprintf(err, errlen, "out of memory");
    free(q); free(k); free(v);
    if (rc) {
        free(o);
        return NULL;
    }
    return o;
}

/* The accumulation-order spread: the flash replay against standard attention on the
 * same inputs, every element. */
static int order_spread(const fd_bundle *b, const int *rows, dstat *s, char *err, size_t errlen)
{
    const fd_problem *p = &b->prob;
    const size_t nq = fd_q_numel(p);
    float *of = malloc(sizeof(float) * nq), *os = malloc(sizeof(float) * nq);
    float *lf = malloc(sizeof(float) * fd_lse_numel(p)), *ls = malloc(sizeof(float) * fd_lse_numel(p));
    fd_flash_cfg cfg;
    fd_import_flash_cfg(p, &cfg); /* as check replays imported outputs */
    int rc = -1;
    if (!of || !os || !lf || !ls) snprintf(err, errlen, "out of memory");
    else if (!fd_cpu_flash_forward(p, &cfg, b->q, b->k, b->v, rows, p->seqlen_q, of, lf, err, errlen) &&
             !fd_cpu_standard_forward(p, FD_ACC_TC16, b->q, b->k, b->v, rows, p->seqlen_q, os, ls, err, errlen)) {
        memset(s, 0, sizeof *s);
        for (size_t x = 0; x < nq; x++) dstat_add(s, of[x], os[x], fd_f32_bits(of[x]) == fd_f32_bits(os[x]));
        rc = 0;
    }
    free(of); free(os); free(lf); free(ls);
    return rc;
}

/* The call's judgement in one run: verdict, consumed layout, and what explains a failure. */
static json_t *judged(const json_t *report, const fd_capture_call *k, int *bad, int *misused)
{
    const json_t *c = fd_capture_case(report, k->bundle);
    *bad = *misused = 0;
    if (!c) return json_pack("{s:s}", "verdict", "NOT_MEASURED");
    const char *v = json_string_value(json_object_get(c, "verdict"));
    json_t *j = json_pack("{s:s, s:O}", "verdict", v ? v : "?", "reasons", json_object_get(c, "reasons"));
    const json_t *be = json_object_get(json_object_get(c, "backends"), k->output);
    if (be) json_object_set(j, "err_max_abs", json_object_get(be, "max_abs"));
    const char *lay = fd_capture_consumed(c);
    if (lay) json_object_set_new(j, "consumed", json_string(lay));
    *misused = lay && !strcmp(lay, "heads_not_transposed");
    *bad = v && (!strcmp(v, "FAIL") || !strcmp(v, "UNJUDGED")) && !*misused;
    const json_t *h = fd_capture_hypothesis(c);
    if (h)
        json_object_set_new(j, "hypothesis", json_pack("{s:O, s:O}", "name", json_object_get(h, "name"), "what",
                                                       json_object_get(h, "what")));
    return j;
}

static char *where_before(const fd_capture *a, int i, char *buf, size_t len)
{
    if (i == 0) snprintf(buf, len, "before the first attention call (call 0, %s)", a->calls[0].module);
    else snprintf(buf, len, "between call %d (%s) and call %d (%s)", i - 1, a->calls[i - 1].module, i, a->calls[i].module);
    return buf;
}

static int by_rel_desc(const void *x, const void *y)
{
    const double a = json_number_value(json_object_get(*(json_t *const *)x, "rel_l2"));
    const double b = json_number_value(json_object_get(*(json_t *const *)y, "rel_l2"));
    return (a < b) - (a > b);
}

/* The parameters' gradients of the two runs (RUN/params.safetensors in both), tensor by
 * tensor: null when either run has none; an object with why when they cannot be read. */
static json_t *param_grads(const fd_capture *a, const fd_capture *b)
{
    char pa[1200], pb[1200], err[1024];
    struct stat st;
    snprintf(pa, sizeof pa, "%s/params.safetensors", a->path);
    snprintf(pb, sizeof pb, "%s/params.safetensors", b->path);
    if (stat(pa, &st) || stat(pb, &st)) return json_null();
    fd_st_file fa, fb;
    memset(&fa, 0, sizeof fa);
    memset(&fb, 0, sizeof fb);
    if (fd_st_read_file(pa, &fa, err, sizeof err) || fd_st_read_file(pb, &fb, err, sizeof err)) {
        fd_st_free(&fa);
        return json_pack("{s:s}", "not_measured", err);
    }
    json_t *list = json_array(), *unmatched = json_array();
    dstat all = {0};
    for (int i = 0; i < fa.n; i++) {
        const fd_array *x = &fa.t[i].a, *y = fd_st_find(&fb, fa.t[i].name);
        const int ok_t = x->type == FD_AT_F32 || x->type == FD_AT_F16 || x->type == FD_AT_BF16;
        if (!y || y->numel != x->numel || y->type != x->type || !ok_t) {
            json_array_append_new(unmatched, json_string(fa.t[i].name));
            continue;
        }
        dstat d = {0};
        for (size_t e = 0; e < x->numel; e++) {
            const float u = fd_array_get_f32(x, e), w = fd_array_get_f32(y, e);
            dstat_add(&d, u, w, fd_f32_bits(u) == fd_f32_bits(w));
            dstat_add(&all, u, w, 0);
        }
        json_t *j = dstat_json(&d);
        json_object_set_new(j, "name", json_string(fa.t[i].name));
        json_array_append_new(list, j);
    }
    for (int i = 0; i < fb.n; i++)
        if (!fd_st_find(&fa, fb.t[i].name)) json_array_append_new(unmatched, json_string(fb.t[i].name));
    fd_st_free(&fa);
    fd_st_free(&fb);
    const size_t n = json_array_size(list);
    json_t **v = malloc(sizeof(json_t *) * (n ? n : 1));
    for (size_t i = 0; v && i < n; i++) v[i] = json_incref(json_array_get(list, i));
    if (v) qsort(v, n, sizeof *v, by_rel_desc);
    json_t *sorted = json_array();
    for (size_t i = 0; v && i < n; i++) json_array_append_new(sorted, v[i]);
    free(v);
    json_decref(list);
    return json_pack("{s:I, s:o, s:o, s:o}", "tensors", (json_int_t)n, "rel_l2_all", fd_json_num(dstat_rel(&all)),
                     "by_rel_l2", sorted, "unmatched", unmatched);
}

json_t *fd_compare_runs(const fd_capture *a, const fd_capture *b, const json_t *rep_a, const json_t *rep_b,
                        const fd_compare_opts *o, int *wrong, char *err, size_t errlen)
{
    *wrong = 0;
    json_t *calls = json_array(), *events = json_array();
    double level = 0.0, sum_own = 0.0, sum_prop = 0.0, sum_total = 0.0;
    int loss_calls = 0;
    for (int i = 0; i < a->ncalls; i++) {
        const fd_capture_call *ka = &a->calls[i], *kb = &b->calls[i];
        json_t *e = json_pack("{s:i, s:s}", "index", i, "module", ka->module);
        json_array_append_new(calls, e);
        if (!ka->bundle[0] || !kb->bundle[0]) {
            json_object_set_new(e, "not_measured", json_string(!ka->bundle[0] ? ka->not_captured : kb->not_captured));
            continue;
        }
        int bad_a, bad_b, mis_a, mis_b;
        json_object_set_new(e, "a", judged(rep_a, ka, &bad_a, &mis_a));
        json_object_set_new(e, "b", judged(rep_b, kb, &bad_b, &mis_b));
        fd_bundle ba, bb;
        if (fd_bundle_load(ka->path, &ba, err, errlen)) goto fail;
        if (fd_bundle_load(kb->path, &bb, err, errlen)) {
            fd_bundle_free(&ba);
            goto fail;
        }
        const fd_problem *p = &ba.prob;
        const fd_import_output *oa = output_named(&ba, ka->output), *ob = output_named(&bb, kb->output);
        const size_t nq = fd_q_numel(p);
        const size_t nk = (size_t)p->batch * (size_t)p->seqlen_k * (size_t)p->kv_heads * (size_t)p->head_dim;
        int *rows = malloc(sizeof(int) * (size_t)p->seqlen_q);
        double *ea = NULL, *eb = NULL;
        int rc = -1;
        if (!rows || !oa || !ob) {
            snprintf(err, errlen, "%s: out of memory, or no output %s", ka->path, ka->output);
            goto call_out;
        }
        for (int r = 0; r < p->seqlen_q; r++) rows[r] = r;
        /* the inputs */
        dstat din = {0}, dq = {0}, dk = {0}, dv = {0};
        for (size_t x = 0; x < nq; x++) {
            dstat_add(&dq, ba.q[x], bb.q[x], fd_f32_bits(ba.q[x]) == fd_f32_bits(bb.q[x]));
            dstat_add(&din, ba.q[x], bb.q[x], fd_f32_bits(ba.q[x]) == fd_f32_bits(bb.q[x]));
        }
        for (size_t x = 0; x < nk; x++) {
            dstat_add(&dk, ba.k[x], bb.k[x], fd_f32_bits(ba.k[x]) == fd_f32_bits(bb.k[x]));
            dstat_add(&dv, ba.v[x], bb.v[x], fd_f32_bits(ba.v[x]) == fd_f32_bits(bb.v[x]));
            dstat_add(&din, ba.k[x], bb.k[x], fd_f32_bits(ba.k[x]) == fd_f32_bits(bb.k[x]));
            dstat_add(&din, ba.v[x], bb.v[x], fd_f32_bits(ba.v[x]) == fd_f32_bits(bb.v[x]));
        }
        const double rel_in = dstat_rel(&din);
        const double thr = o->gain * level + o->floor_ulps * unit_roundoff(p->dtype);
        const char *cls = din.identical == din.n ? "identical" : rel_in <= thr ? "propagated" : "differs";
        json_object_set_new(e, "inputs", json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:o}", "class", cls, "rel_l2",
                                                   fd_json_num(rel_in), "threshold", fd_json_num(thr), "q",
                                                   dstat_json(&dq), "k", dstat_json(&dk), "v", dstat_json(&dv),
                                                   "identical_fraction",
                                                   fd_json_num((double)din.identical / (double)din.n)));
        /* the outputs: their difference, split exactly into the exact attention's (inputs)
         * and the calls' own errors */
        if (!(ea = exact_out(&ba, rows, err, errlen)) || !(eb = exact_out(&bb, rows, err, errlen))) goto call_out;
        dstat dout = {0}, dprop = {0}, down = {0}, erra = {0}, errb = {0}, spread;
        double l_total = 0.0, l_prop = 0.0, l_own = 0.0;
        const int have_do = ba.dout && bb.dout;
        for (size_t x = 0; x < nq; x++) {
            const double xa = oa->o[x], xb = ob->o[x];
            dstat_add(&dout, xa, xb, fd_f32_bits(oa->o[x]) == fd_f32_bits(ob->o[x]));
            dstat_add(&dprop, ea[x], eb[x], 0);
            dstat_add(&down, xa - ea[x], xb - eb[x], 0);
            dstat_add(&erra, xa, ea[x], 0);
            dstat_add(&errb, xb, eb[x], 0);
            if (have_do) {
                const double g = 0.5 * ((double)ba.dout[x] + (double)bb.dout[x]);
                l_total += g * (xa - xb);
                l_prop += g * (ea[x] - eb[x]);
                l_own += g * ((xa - ea[x]) - (xb - eb[x]));
            }
        }
        /* rel l2 of the parts against the output's own size */
        dprop.sr = down.sr = dout.sr;
        if (order_spread(&ba, rows, &spread, err, errlen)) goto call_out;
        const double rel_out = dstat_rel(&dout);
        json_object_set_new(e, "outputs", json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "difference",
                                                    dstat_json(&dout), "from_inputs", dstat_json(&dprop), "own_errors",
                                                    dstat_json(&down), "order_spread", dstat_json(&spread),
                                                    "own_vs_order_spread",
                                                    fd_json_num(spread.max_abs > 0 ? down.max_abs / spread.max_abs
                                                                                   : (down.max_abs > 0 ? (double)INFINITY : 0.0)),
                                                    "err_a_max_abs", fd_json_num(erra.max_abs), "err_b_max_abs",
                                                    fd_json_num(errb.max_abs)));
        if (have_do) {
            json_object_set_new(e, "loss", json_pack("{s:o, s:o, s:o}", "total", fd_json_num(l_total), "from_inputs",
                                                     fd_json_num(l_prop), "own", fd_json_num(l_own)));
            sum_total += l_total;
            sum_prop += l_prop;
            sum_own += l_own;
            loss_calls++;
        } else {
            json_object_set_new(e, "loss", json_pack("{s:s}", "not_measured", "no output gradient do in both runs"));
        }
        /* events, in the order they happen */
        char wb[600], msg[1200];
        if (!strcmp(cls, "differs")) {
            snprintf(msg, sizeof msg, "the inputs of call %d (%s) differ by rel l2 %.3g, beyond the %.3g that "
                     "propagated rounding explains: the difference arises outside attention, %s",
                     i, ka->module, rel_in, thr, where_before(a, i, wb, sizeof wb));
            json_array_append_new(events, json_pack("{s:i, s:s, s:s}", "call", i, "kind", "inputs_differ", "text", msg));
        }
        for (int w = 0; w < 2; w++) {
            const int bad = w ? bad_b : bad_a, mis = w ? mis_b : mis_a;
            const fd_capture *run = w ? b : a;
            const json_t *jj = json_object_get(e, w ? "b" : "a");
            if (mis) {
                snprintf(msg, sizeof msg, "call %d (%s) is exact, but run %s (%s) consumed its output with the heads "
                         "merged without the transpose ((b, h, s, d) reshaped to (b, s, h x d)): the difference "
                         "arises right after call %d's output, before the next call's input",
                         i, ka->module, w ? "b" : "a", run->label, i);
                json_array_append_new(events, json_pack("{s:i, s:s, s:s, s:s}", "call", i, "kind", "output_misused",
                                                        "run", w ? "b" : "a", "text", msg));
                *wrong = 1;
            } else if (bad) {
                const json_t *h = json_object_get(jj, "hypothesis");
                snprintf(msg, sizeof msg, "attention call %d (%s) is wrong in run %s (%s): %s%s%s", i, ka->module,
                         w ? "b" : "a", run->label,
                         h ? json_string_value(json_object_get(h, "name")) : json_string_value(json_object_get(jj, "reasons")),
                         h ? ": " : "", h ? json_string_value(json_object_get(h, "what")) : "");
                json_array_append_new(events, json_pack("{s:i, s:s, s:s, s:s}", "call", i, "kind", "call_wrong", "run",
                                                        w ? "b" : "a", "text", msg));
                *wrong = 1;
            }
        }
        if (rel_in > level) level = rel_in;
        if (rel_out > level) level = rel_out;
        rc = 0;
    call_out:
        free(rows); free(ea); free(eb);
        fd_bundle_free(&ba);
        fd_bundle_free(&bb);
        if (rc) goto fail;
    }
    const double dl = a->loss - b->loss;
    char head[1600];
    if (json_array_size(events)) {
        snprintf(head, sizeof head, "%s", json_string_value(json_object_get(json_array_get(events, 0), "text")));
    } else if (loss_calls) {
        snprintf(head, sizeof head, "attention is exact up to rounding in both runs and every difference in the calls' "
                 "inputs is propagated rounding: the loss difference %.3g is rounding; the calls' own rounding accounts "
                 "for %.3g of it to first order, the rest is the rounding of the model's other operations on inputs that "
                 "differ by propagated rounding", dl, sum_own);
    } else {
        snprintf(head, sizeof head, "attention is exact up to rounding in both runs and every difference in the calls' "
                 "inputs is propagated rounding");
    }
    json_t *loss = json_pack("{s:o, s:o, s:o, s:i, s:o, s:o, s:o}", "a", fd_json_num(a->loss), "b", fd_json_num(b->loss),
                             "difference", fd_json_num(dl), "calls_with_gradients", loss_calls,
                             "attention_own", fd_json_num(sum_own), "from_inputs_sum", fd_json_num(sum_prop),
                             "total_sum", fd_json_num(sum_total));
    json_object_set_new(loss, "attention_own_fraction", fd_json_num(fabs(dl) > 0.0 && loss_calls ? sum_own / dl : (double)NAN));
    json_object_set_new(loss, "param_grads", param_grads(a, b));
    return json_pack("{s:{s:s, s:s, s:s}, s:{s:s, s:s, s:s}, s:s, s:{s:o, s:o}, s:s, s:b, s:o, s:o, s:o}", "a", "run",
                     a->path, "label", a->label, "model", a->model, "b", "run", b->path, "label", b->label, "model",
                     b->model, "format", "flashdrift-compare-1", "threshold", "gain", fd_json_num(o->gain),
                     "floor_ulps", fd_json_num(o->floor_ulps), "verdict", head, "attention_wrong", *wrong, "events",
                     events, "loss", loss, "calls", calls);
fail:
    json_decref(calls);
    json_decref(events);
    return NULL;
}
