/* fd_cmd_explain.c: `flashdrift explain`.
 *
 * flashdrift explain CASEFILE --case ID [--backend B] [--inject BUG] [--out DIR] [--jobs N]
 * flashdrift explain REPORT [--out DIR] [--jobs N]   (every FAIL case of a report)
 * flashdrift explain --tensors BUNDLE [--output NAME] [--rows-per-head N] [--out DIR]
 *   (each flash output of an imported bundle, or the one named; docs/import.md)
 * Prints the explanation; with --out writes DIR/explain.json and DIR/explain.md. */
#include <jansson.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fd_capture.h"
#include "fd_cmds.h"
#include "fd_explain.h"
#include "fd_explain_report.h"
#include "fd_import.h"
#include "fd_json.h"
#include "fd_opt.h"
#include "fd_out.h"
#include "fd_report.h"

/* Prints an explanation's JSON, adds it to the Markdown and to arr (taking j). */
static void emit_json(json_t *j, json_t *arr, FILE *md)
{
    fd_explain_text(j, stdout);
    printf("\n");
    if (md) {
        fprintf(md, "## %s\n\n```\n", json_string_value(json_object_get(j, "case")));
        fd_explain_text(j, md);
        fprintf(md, "```\n\n");
    }
    if (arr) json_array_append_new(arr, j);
    else json_decref(j);
}

/* Prints an explanation, adds it to the JSON and Markdown, frees it; returns rc worsened
 * by its outcome: the judging pipeline's verdict (FAIL or UNJUDGED: 1, as run and check
 * exit), or a gross error the attribution found. */
static int explain_emit(fd_explanation *ex, json_t *arr, FILE *md, int rc)
{
    json_t *j = fd_explain_json(ex);
    const int bad = ex->verdict == FD_FAIL || ex->verdict == FD_UNJUDGED || ex->gross;
    fd_explanation_free(ex);
    if (!j) {
        fprintf(stderr, "flashdrift: out of memory encoding the explanation\n");
        return FD_EXIT_INTERNAL;
    }
    emit_json(j, arr, md);
    return bad && rc == FD_EXIT_PASS ? FD_EXIT_GATE : rc;
}

static int explain_one(const fd_casefile *cf, const char *id, const fd_explain_opts *o,
                       json_t *arr, FILE *md)
{
    char err[1024];
    for (int i = 0; i < cf->ncases; i++) {
        if (strcmp(cf->cases[i].id, id)) continue;
        fd_explanation ex;
        const int erc = fd_explain_case(cf, &cf->cases[i], o, &ex, err, sizeof err);
        if (erc) {
            fprintf(stderr, "flashdrift: %s\n", err);
            return erc == FD_EX_EUSAGE ? FD_EXIT_USAGE : FD_EXIT_INTERNAL;
        }
        return explain_emit(&ex, arr, md, FD_EXIT_PASS);
    }
    fprintf(stderr, "flashdrift: %s: no case with id \"%s\" (flashdrift list shows them)\n", cf->path, id);
    return FD_EXIT_USAGE;
}

/* Usage errors of explaining ids of cf, printed: an unknown id, an unknown backend, an
 * --inject that would change nothing on a case (fd_explain_inject_noop). */
static int check_ids(const fd_casefile *cf, const json_t *ids, const fd_explain_opts *o, int imported)
{
    /* a bundle's --backend names one of its outputs, checked when it is loaded */
    if (!imported && o->backend && !fd_backend_find(o->backend)) {
        fprintf(stderr, "flashdrift: --backend: unknown backend \"%s\"\n", o->backend);
        return -1;
    }
    size_t k;
    const json_t *idv;
    json_array_foreach(ids, k, idv) {
        const char *id = json_string_value(idv);
        const fd_case *c = NULL;
        for (int i = 0; i < cf->ncases && !c; i++)
            if (!strcmp(cf->cases[i].id, id)) c = &cf->cases[i];
        if (!c) {
            fprintf(stderr, "flashdrift: %s: no case with id \"%s\" (flashdrift list shows them)\n", cf->path, id);
            return -1;
        }
        const char *noop = fd_explain_inject_noop(&c->prob, o->inject);
        if (noop) {
            fprintf(stderr, "flashdrift: --inject %s changes nothing on case %s: %s\n", o->inject, id, noop);
            return -1;
        }
    }
    return 0;
}

/* DIR/explain.json and DIR/explain.md, each atomically; takes arr. When one cannot be
 * written it and the one after it are removed (exit 3), so that an earlier explanation is
 * never left beside this one. */
static int write_explain(const char *out, const char *source, json_t *arr, const char *md,
                         size_t mdlen, int rc)
{
    char path[4200], err[1024];
    json_t *root = json_pack("{s:i, s:s, s:s, s:o}", "schema_version", FD_REPORT_SCHEMA_VERSION,
                             "tool", "flashdrift", "case_file", source, "explain", arr);
    snprintf(path, sizeof path, "%s/explain.json", out);
    int bad = fd_write_json_atomic(path, root, err, sizeof err);
    if (bad) unlink(path);
    snprintf(path, sizeof path, "%s/explain.md", out);
    if (!bad && fd_write_text_atomic(path, md ? md : "", md ? mdlen : 0, err, sizeof err)) bad = 1;
    if (bad) {
        unlink(path);
        fprintf(stderr, "flashdrift: %s\n", err);
        rc = FD_EXIT_INTERNAL;
    }
    json_decref(root);
    return rc;
}

/* Explains the flash outputs of imported bundles (or the one named), each judged beside
 * the bundle's standard outputs with check's case file (fd_casefile_bundles). */
static int explain_tensors(const char *path, const char *only, int rows_per_head,
                           const fd_explain_opts *o, json_t *arr, FILE *md)
{
    char err[1024];
    char **paths = NULL;
    int np = 0;
    if (fd_capture_is(path)) { /* a captured step: its bundles in call order, validated */
        fd_capture cap;
        const int lrc = fd_check_list(path, &cap, &paths, &np);
        if (lrc != FD_EXIT_PASS) return lrc;
        fd_capture_free(&cap);
    } else if (fd_bundle_list(path, &paths, &np, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return FD_EXIT_USAGE;
    }
    fd_casefile cf;
    fd_casefile_bundles(&cf, path, paths, np, rows_per_head);
    int rc = cf.ncases == np ? FD_EXIT_PASS : FD_EXIT_INTERNAL, done = 0;
    for (int c = 0; c < cf.ncases && rc != FD_EXIT_USAGE && rc != FD_EXIT_INTERNAL; c++) {
        fd_bundle b;
        if (fd_bundle_load(cf.cases[c].bundle, &b, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            rc = FD_EXIT_USAGE;
            break;
        }
        for (int i = 0; i < b.nout; i++) {
            const fd_import_output *io = &b.out[i];
            if (only ? strcmp(io->name, only) : io->be.role != FD_ROLE_FLASH) continue;
            done++;
            fd_explain_opts eo = *o;
            eo.backend = io->name;
            fd_explanation ex;
            const int erc = fd_explain_case(&cf, &cf.cases[c], &eo, &ex, err, sizeof err);
            if (erc) {
                fprintf(stderr, "flashdrift: %s: %s\n", cf.cases[c].bundle, err);
                rc = erc == FD_EX_EUSAGE ? FD_EXIT_USAGE : FD_EXIT_INTERNAL;
                break;
            }
            rc = explain_emit(&ex, arr, md, rc);
        }
        fd_bundle_free(&b);
    }
    if (!done && rc == FD_EXIT_PASS) {
        fprintf(stderr, "flashdrift: %s: %s\n", path,
                only ? "no output with that name (--output)" : "no flash output to explain (name one with --output)");
        rc = FD_EXIT_USAGE;
    }
    fd_casefile_free(&cf);
    return rc;
}

int fd_cmd_explain(int argc, char **argv)
{
    const char *file = NULL, *id = NULL, *out = NULL, *tensors = NULL, *only = NULL;
    int rows_per_head = 32;
    /* backend NULL: cpu-flash for generated cases, the first flash output of a bundle */
    fd_explain_opts o = {NULL, NULL, (int)sysconf(_SC_NPROCESSORS_ONLN)};
    enum { OPT_CASE = FD_OPT_CMD, OPT_BACKEND, OPT_INJECT, OPT_OUT, OPT_JOBS, OPT_TENSORS, OPT_OUTPUT, OPT_ROWS,
           OPT_RECOMPUTE };
    int recompute = 0;
    static const struct option lo[] = {{"case", required_argument, NULL, OPT_CASE},
                                       {"backend", required_argument, NULL, OPT_BACKEND},
                                       {"inject", required_argument, NULL, OPT_INJECT},
                                       {"out", required_argument, NULL, OPT_OUT},
                                       {"jobs", required_argument, NULL, OPT_JOBS},
                                       {"tensors", required_argument, NULL, OPT_TENSORS},
                                       {"output", required_argument, NULL, OPT_OUTPUT},
                                       {"rows-per-head", required_argument, NULL, OPT_ROWS},
                                       {"recompute", no_argument, NULL, OPT_RECOMPUTE},
                                       {NULL, 0, NULL, 0}};
    fd_getopt g;
    if (fd_getopt_init(&g, "explain", argc, argv, lo, NULL)) return FD_EXIT_USAGE;
    for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;) {
        char *end = NULL;
        long v = 0;
        switch (c) {
        case FD_OPT_HELP: return FD_EXIT_PASS;
        case OPT_CASE: id = g.arg; break;
        case OPT_BACKEND: o.backend = g.arg; break;
        case OPT_INJECT: o.inject = g.arg; break;
        case OPT_OUT: out = g.arg; break;
        case OPT_TENSORS: tensors = g.arg; break;
        case OPT_OUTPUT: only = g.arg; break;
        case OPT_RECOMPUTE: recompute = 1; break;
        case OPT_ROWS:
            v = strtol(g.arg, &end, 10);
            if (!*g.arg || *end || v < 0 || v > (1L << 20))
                return fd_usage_error("explain", "--rows-per-head expects an integer >= 0 (0: every row), got '%s'", g.arg);
            rows_per_head = (int)v;
            break;
        case OPT_JOBS:
            v = strtol(g.arg, &end, 10);
            if (!*g.arg || *end || v < 1 || v > 1024)
                return fd_usage_error("explain", "--jobs expects an integer in [1, 1024], got '%s'", g.arg);
            o.jobs = (int)v;
#ifdef _OPENMP
            omp_set_num_threads(o.jobs); /* the CPU kernels' OpenMP rows */
#endif
            break;
        case FD_OPT_POSITIONAL:
            if (file) return fd_usage_error("explain", "one case file or report expected, got also %s", g.arg);
            file = g.arg;
            break;
        default: return FD_EXIT_USAGE;
        }
    }
    if (!file && !tensors) return fd_usage_error("explain", "a CASEFILE (with --case ID), a REPORT or --tensors BUNDLE is required");
    if (tensors) {
        char err[1024];
        if (file || o.inject) {
            fprintf(stderr, "flashdrift: explain --tensors takes no case file and no --inject\n");
            return FD_EXIT_USAGE;
        }
        if (out && fd_mkdir_p(out, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            return FD_EXIT_USAGE;
        }
        json_t *arr = json_array();
        char *mdbuf = NULL;
        size_t mdlen = 0;
        FILE *md = out ? open_memstream(&mdbuf, &mdlen) : NULL;
        int rc = explain_tensors(tensors, only, rows_per_head, &o, arr, md);
        if (md) fclose(md);
        if (out && (rc == FD_EXIT_PASS || rc == FD_EXIT_GATE))
            rc = write_explain(out, tensors, arr, mdbuf, mdlen, rc);
        else
            json_decref(arr);
        free(mdbuf);
        return rc;
    }
    if (o.inject) {
        int ok = 0;
        for (const char *const *b = fd_explain_bugs; *b; b++) ok |= !strcmp(*b, o.inject);
        const char *br = fd_explain_bug_renamed(o.inject, FD_MASK_CAUSAL_BR);
        const char *tl = fd_explain_bug_renamed(o.inject, FD_MASK_CAUSAL_TL);
        if (br) {
            ok = 1;
            if (strcmp(br, tl))
                fprintf(stderr, "flashdrift: note: --inject %s is now %s (causal_br cases) or %s (causal_tl cases); "
                                "the old name goes in the next release\n", o.inject, br, tl);
            else
                fprintf(stderr, "flashdrift: note: --inject %s is now %s; the old name goes in the next release\n",
                        o.inject, br);
        }
        if (!ok) {
            fprintf(stderr, "flashdrift: --inject: unknown bug \"%s\" (expected one of:", o.inject);
            for (const char *const *b = fd_explain_bugs; *b; b++) fprintf(stderr, " %s", *b);
            fprintf(stderr, ")\n");
            return FD_EXIT_USAGE;
        }
    }
    char err[1024];
    /* a report: explain its failing cases, from the case file it names */
    json_t *ids = json_array();
    /* explanations the report already holds (run --explain): printed as they were made,
     * where the run ran (a GPU report's, on a machine without one), unless --recompute */
    json_t *stored = json_array();
    char cfname[256] = "";
    int imported = 0; /* a check report: its case file is the bundles it judged */
    char cfpath[1024];
    snprintf(cfpath, sizeof cfpath, "%s", file);
    json_t *rep = id ? NULL : fd_jload(file, err, sizeof err);
    if (!id) {
        json_t *cases = rep ? json_object_get(rep, "cases") : NULL;
        const char *cp = rep ? json_string_value(json_object_get(json_object_get(rep, "case_file"), "path")) : NULL;
        if (!rep || !json_is_integer(json_object_get(rep, "schema_version")) || !json_is_array(cases) || !cp) {
            if (rep)
                fprintf(stderr, "flashdrift: %s: not a flashdrift report (expected schema_version, case_file.path "
                                "and cases); give a case file with --case ID\n", file);
            else
                fprintf(stderr, "flashdrift: %s (give a report, or a case file with --case ID)\n", err);
            json_decref(rep);
            json_decref(ids);
            json_decref(stored);
            return FD_EXIT_USAGE;
        }
        snprintf(cfpath, sizeof cfpath, "%s", cp);
        const char *nm = json_string_value(json_object_get(json_object_get(rep, "case_file"), "name"));
        snprintf(cfname, sizeof cfname, "%s", nm ? nm : "");
        const char *bk = json_string_value(json_object_get(rep, "backends"));
        imported = bk && !strcmp(bk, "import");
        json_t *rph = json_object_get(json_object_get(rep, "case_file"), "rows_per_head");
        if (json_is_integer(rph) && json_integer_value(rph) >= 0 && json_integer_value(rph) <= (1 << 20))
            rows_per_head = (int)json_integer_value(rph);
        size_t i;
        json_t *c;
        json_array_foreach(cases, i, c) {
            const char *v = json_string_value(json_object_get(c, "verdict"));
            if (!v || (strcmp(v, "FAIL") && strcmp(v, "UNJUDGED"))) continue;
            json_t *ej = json_object_get(c, "explain");
            if (!recompute && json_is_object(ej) && json_is_string(json_object_get(ej, "case"))) json_array_append(stored, ej);
            else json_array_append(ids, json_object_get(c, "id"));
        }
        json_decref(rep);
        if (json_array_size(ids) == 0 && json_array_size(stored) == 0) {
            printf("%s: no failing case to explain\n", file);
            json_decref(ids);
            json_decref(stored);
            return FD_EXIT_PASS;
        }
    } else {
        json_array_append_new(ids, json_string(id));
    }
    fd_casefile cf;
    memset(&cf, 0, sizeof cf);
    snprintf(cf.name, sizeof cf.name, "%s", cfname);
    if (json_array_size(ids) == 0) {
        /* only stored explanations: no case file is needed */
    } else if (imported) {
        char **paths = NULL;
        int np = 0;
        if (fd_bundle_list(cfpath, &paths, &np, err, sizeof err)) {
            fprintf(stderr, "flashdrift: %s\n", err);
            json_decref(ids);
            json_decref(stored);
            return FD_EXIT_USAGE;
        }
        fd_casefile_bundles(&cf, cfpath, paths, np, rows_per_head);
    } else if (fd_casefile_load(cfpath, &cf, err, sizeof err)) {
        fprintf(stderr, "flashdrift: %s\n", err);
        json_decref(ids);
        json_decref(stored);
        return FD_EXIT_USAGE;
    }
    /* every usage error is found before --out DIR is created */
    const int bad = json_array_size(ids) ? check_ids(&cf, ids, &o, imported) : 0;
    if (bad || (out && fd_mkdir_p(out, err, sizeof err))) {
        if (!bad) fprintf(stderr, "flashdrift: %s\n", err);
        fd_casefile_free(&cf);
        json_decref(ids);
        json_decref(stored);
        return FD_EXIT_USAGE;
    }
    json_t *arr = json_array();
    char *mdbuf = NULL;
    size_t mdlen = 0;
    FILE *md = out ? open_memstream(&mdbuf, &mdlen) : NULL;
    if (md) fprintf(md, "# flashdrift explain: %s\n\n", cf.name);
    int rc = FD_EXIT_PASS;
    size_t i;
    json_t *idv;
    json_array_foreach(stored, i, idv) {
        emit_json(json_incref(idv), arr, md);
        rc = FD_EXIT_GATE; /* a FAIL or UNJUDGED case of the report */
    }
    json_decref(stored);
    json_array_foreach(ids, i, idv) {
        int r = explain_one(&cf, json_string_value(idv), &o, arr, md);
        if (r > rc) rc = r;
        if (r == FD_EXIT_USAGE || r == FD_EXIT_INTERNAL) break;
    }
    if (md) fclose(md);
    if (out && rc != FD_EXIT_USAGE && rc != FD_EXIT_INTERNAL)
        rc = write_explain(out, cfpath, arr, mdbuf, mdlen, rc);
    else
        json_decref(arr);
    free(mdbuf);
    json_decref(ids);
    fd_casefile_free(&cf);
    return rc;
}
