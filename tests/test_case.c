/* test_case.c: case files: expansion, stable ids, exclusions and every kind of bad input. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fd_case.h"
#include "fd_test_util.h"

static char g_path[256];

static const char *write_tmp(const char *text)
{
    snprintf(g_path, sizeof g_path, "/tmp/fd_case_XXXXXX");
    int fd = mkstemp(g_path);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    return g_path;
}

#define HEAD "{\"schema\": \"flashdrift-cases/1\", \"name\": \"t\", "

static void expect_error(const char *text, const char *needle)
{
    fd_casefile cf;
    char err[1024] = "";
    const char *p = write_tmp(text);
    int rc = fd_casefile_load(p, &cf, err, sizeof err);
    cr_assert(rc == -1, "expected an error containing \"%s\" for %s", needle, text);
    cr_assert(strstr(err, needle), "error \"%s\" should contain \"%s\"", err, needle);
    cr_assert(strstr(err, p), "error \"%s\" should name the file %s", err, p);
    unlink(p);
}

Test(cases, smoke_expands_with_exclusions)
{
    fd_casefile cf;
    char err[1024];
    cr_assert(fd_casefile_load(tu_path(TU_SOURCE, "cases/smoke.json"), &cf, err, sizeof err) == 0, "%s", err);
    /* sweep 1: 2*3*2*3*3*2 = 216, minus kv1&fp32 (36), kv1&d59 (54), plus their overlap (18);
     * sweep 2: 2 dtypes x 3 distributions */
    cr_assert_eq(cf.ncases, 216 - 36 - 54 + 18 + 6);
    for (int i = 0; i < cf.ncases; i++)
        for (int j = i + 1; j < cf.ncases; j++)
            cr_assert(strcmp(cf.cases[i].id, cf.cases[j].id), "duplicate id %s", cf.cases[i].id);
    fd_casefile_free(&cf);
}

Test(cases, ids_are_stable_and_readable)
{
    fd_casefile cf;
    char err[1024];
    const char *p = write_tmp(HEAD "\"sweeps\": [{\"batch\": 2, \"heads\": 4, \"kv_heads\": 2, "
                                   "\"seqlen\": [[113, 203]], \"head_dim\": 59, \"dtype\": \"bf16\", "
                                   "\"mask\": \"causal_br\", \"dropout\": 0.17, \"dist\": \"large_logit\", \"seed\": 7}]}");
    cr_assert(fd_casefile_load(p, &cf, err, sizeof err) == 0, "%s", err);
    cr_assert_eq(cf.ncases, 1);
    cr_assert_str_eq(cf.cases[0].id, "b2h4k2-q113k203-d59-bf16-causal_br-p0.17-large_logit-s7");
    cr_assert_eq(cf.cases[0].prob.seqlen_q, 113);
    cr_assert_eq(cf.cases[0].prob.seqlen_k, 203);
    cr_assert(fd_eqf(cf.cases[0].prob.softmax_scale, (float)(1.0 / sqrt(59.0))));
    fd_casefile_free(&cf);
    unlink(p);
}

Test(cases, cartesian_order_is_fixed)
{
    fd_casefile cf;
    char err[1024];
    const char *p = write_tmp(HEAD "\"sweeps\": [{\"seqlen\": [16, 32], \"head_dim\": [8, 16], "
                                   "\"dtype\": [\"fp16\", \"fp32\"]}], "
                                   "\"exclude\": [{\"seqlen_q\": 32, \"dtype\": \"fp32\"}]}");
    cr_assert(fd_casefile_load(p, &cf, err, sizeof err) == 0, "%s", err);
    cr_assert_eq(cf.ncases, 6);
    cr_assert_str_eq(cf.cases[0].id, "b1h1k1-q16k16-d8-fp16-none-p0-normal-s0");
    cr_assert_str_eq(cf.cases[1].id, "b1h1k1-q16k16-d8-fp32-none-p0-normal-s0");
    cr_assert_str_eq(cf.cases[5].id, "b1h1k1-q32k32-d16-fp16-none-p0-normal-s0");
    fd_casefile_free(&cf);
    unlink(p);
}

Test(cases, bad_inputs_name_file_path_and_expectation)
{
    expect_error("{\"schema\": \"flashdrift-cases/1\",\n \"name\": \"t\",\n \"sweeps\": [}", ":3:");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, \"dtyp\": \"fp16\"}]}", "unknown field \"dtyp\"");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, \"dtype\": \"fp8\"}]}", "sweeps[0].dtype: expected \"fp16\"");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": [8, 300]}]}", "sweeps[0].head_dim[1]: head_dim 300 unsupported");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, \"dropout\": 1.0}]}", "dropout p must be in [0, 1)");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, \"dropout\": -0.1}]}", "dropout p must be in [0, 1)");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, \"batch\": 0}]}", "sweeps[0].batch: expected an integer in [1,");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": -5, \"head_dim\": 8}]}", "sweeps[0].seqlen: expected an integer in [1,");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, \"batch\": 99999999999}]}", "expected an integer in [1,");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 1048576, \"head_dim\": 256, \"batch\": 1024, \"heads\": 64}]}", "too large");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, \"heads\": 3, \"kv_heads\": 2}]}", "multiple of kv_heads");
    expect_error(HEAD "\"sweeps\": [{\"head_dim\": 8}]}", "missing required field \"seqlen\"");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16}]}", "missing required field \"head_dim\"");
    expect_error("{\"schema\": \"other/2\", \"name\": \"t\", \"sweeps\": []}", "schema: expected \"flashdrift-cases/1\"");
    expect_error(HEAD "\"sweeps\": []}", "sweeps: expected a non-empty list");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8}], \"flash\": {\"bc\": 40}}", "flash.bc: expected a multiple of 16");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8}], \"policy\": {\"fa_ratio\": \"2\"}}", "policy.fa_ratio: expected a number");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8}], \"exclude\": [{\"dtype\": \"fp16\"}]}", "no case left");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": 16, \"head_dim\": 8, \"mask\": \"causal\"}]}", "sweeps[0].mask: expected \"none\", \"causal_tl\" or \"causal_br\", got causal");
    expect_error(HEAD "\"sweeps\": [{\"seqlen\": [[16, 8, 4]], \"head_dim\": 8}]}", "sweeps[0].seqlen[0]: expected a sequence length or a pair");
    expect_error("[1, 2]", "expected an object");
}

Test(cases, missing_file_is_an_error)
{
    fd_casefile cf;
    char err[1024];
    cr_assert(fd_casefile_load("/nonexistent/x.json", &cf, err, sizeof err) == -1);
    cr_assert(strstr(err, "/nonexistent/x.json"), "%s", err);
}

/* Regression (found writing the case-file fuzz target, issue 10): a sweep whose lists repeat
 * one value 64 times was expanded into 64^5 = 2^30 combinations (an id and a dedupe for
 * each) before anything was refused, and loading ran for minutes; it is now refused before
 * expansion, naming the sweep. */
Test(cases, regression_repeated_list_values_refused_before_expansion)
{
    char text[4096];
    int n = snprintf(text, sizeof text, HEAD "\"sweeps\": [{\"seqlen\": 8, \"head_dim\": 8");
    static const char *const fields[] = {"batch", "heads", "kv_heads", "dtype", "dropout"};
    static const char *const value[] = {"1", "1", "1", "\"fp16\"", "0"};
    for (int f = 0; f < 5; f++) {
        n += snprintf(text + n, sizeof text - (size_t)n, ", \"%s\": [", fields[f]);
        for (int i = 0; i < 64; i++) n += snprintf(text + n, sizeof text - (size_t)n, "%s%s", i ? "," : "", value[f]);
        n += snprintf(text + n, sizeof text - (size_t)n, "]");
    }
    snprintf(text + n, sizeof text - (size_t)n, "}]}");
    expect_error(text, "sweeps[0]: 1073741824 combinations (at most 100000 per sweep");
}

