/* test_import.c: .npy and safetensors readers, bundles, `flashdrift check`.
 *
 * Strict npy header grammar (accepted forms, every rejected form), bad files (wrong
 * magic, truncated, big-endian, Fortran order, header claiming more data than the file
 * holds), safetensors checks, bundle round trips (every dtype, both layouts, both
 * formats, bit-exact), every bad bundle the issue lists (exit 2, message naming the
 * file), dropout-mask agreement with FA2's regeneration, and the CLI end to end. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fd_dtype.h"
#include "fd_import.h"
#include "fd_npy.h"
#include "fd_philox.h"
#include "fd_ref.h"
#include "fd_run_import.h"
#include "fd_safetensors.h"
#include "fd_test_util.h"

static char tmpdir[256];

static int hdr(const char *h, fd_atype *t, int *nd, int64_t *shape, char *err)
{
    int fortran = 0;
    return fd_npy_parse_header(h, strlen(h), t, &fortran, nd, shape, err, 512);
}

Test(npy_header, accepts_numpy_forms)
{
    static const char *ok[] = {
        "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }          \n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (7,)}\n",
        "{\"descr\": \"<u2\", \"fortran_order\": False, \"shape\": ()}\n",
        "{'shape': (1, 2, 3, 4), 'fortran_order': False, 'descr': '|u1'}\n",
        "{'descr':'|b1','fortran_order':False,'shape':(0, 5,),}\n",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        fd_atype t;
        int nd = -1;
        int64_t s[8];
        char err[512] = "";
        cr_expect_eq(hdr(ok[i], &t, &nd, s, err), 0, "header %zu rejected: %s", i, err);
    }
    fd_atype t;
    int nd;
    int64_t s[8];
    char err[512];
    cr_assert_eq(hdr(ok[0], &t, &nd, s, err), 0);
    cr_expect_eq(t, FD_AT_F16);
    cr_expect_eq(nd, 2);
    cr_expect_eq(s[0], 2);
    cr_expect_eq(s[1], 3);
}

Test(npy_header, rejects_everything_else)
{
    static const struct { const char *h, *msg; } bad[] = {
        {"{'descr': '>f2', 'fortran_order': False, 'shape': (2,)}\n", "big-endian"},
        {"{'descr': '<f2', 'fortran_order': True, 'shape': (2,)}\n", "Fortran"},
        {"{'descr': '<i2', 'fortran_order': False, 'shape': (2,)}\n", "unsupported dtype"}, /* <i4, <i8: cu_seqlens */
        {"{'descr': '<f2', 'fortran_order': False, 'shape': (2)}\n", "(n,)"},
        {"{'descr': '<f2', 'fortran_order': False, 'shape': (02,)}\n", "leading zeros"},
        {"{'descr': '<f2', 'fortran_order': False, 'shape': (-2,)}\n", "non-negative"},
        {"{'descr': '<f2', 'fortran_order': False}\n", "missing key 'shape'"},
        {"{'descr': '<f2', 'fortran_order': False, 'shape': (2,), 'x': 1}\n", "unexpected key"},
        {"{'descr': '<f2', 'descr': '<f2', 'fortran_order': False, 'shape': (2,)}\n", "repeated"},
        {"{'descr': '<f2', 'fortran_order': False, 'shape': (2,)}", "newline"},
        {"{'descr': '<f2', 'fortran_order': False, 'shape': (2,)} x\n", "newline"},
        {"{'descr': '<f2, 'fortran_order': False, 'shape': (2,)}\n", "expected"},
        {"{'descr': '<f2', 'fortran_order': false, 'shape': (2,)}\n", "True or False"},
        {"{'descr': '<f2', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1)}\n", "at most 8"},
        {"{'descr': '<f2', 'fortran_order': False, 'shape': (99999999999, 99999999999)}\n", "2^48"},
        {"{'descr': '<f2', 'fortran_order': False, 'shape': (2,)}\n\n", "newline"},
        {"", "'{'"},
        {"{'descr': 'a\\'b', 'fortran_order': False, 'shape': (2,)}\n", "escapes"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fd_atype t;
        int nd;
        int64_t s[8];
        char err[512] = "";
        cr_expect_eq(hdr(bad[i].h, &t, &nd, s, err), -1, "header %zu accepted: %s", i, bad[i].h);
        cr_expect(strstr(err, bad[i].msg) != NULL, "header %zu: message \"%s\" lacks \"%s\"", i, err, bad[i].msg);
    }
}

static size_t npy_image(uint8_t *buf, const char *dict, const void *data, size_t dlen)
{
    size_t hl = strlen(dict);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (uint8_t)hl;
    buf[9] = (uint8_t)(hl >> 8);
    memcpy(buf + 10, dict, hl);
    if (dlen) memcpy(buf + 10 + hl, data, dlen);
    return 10 + hl + dlen;
}

Test(npy_file, bad_files)
{
    uint8_t buf[512];
    const uint16_t d[4] = {0x3c00, 0x4000, 0x4200, 0x4400};
    fd_array a;
    char err[512];
    size_t n = npy_image(buf, "{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }\n", d, sizeof d);
    cr_assert_eq(fd_npy_parse(buf, n, &a, err, sizeof err), 0, "%s", err);
    cr_expect_eq(a.numel, 4);
    cr_expect(fd_eq((double)fd_array_get_f32(&a, 3), 4.0));
    fd_array_free(&a);
    /* the header claims more data than the file holds */
    cr_expect_eq(fd_npy_parse(buf, n - 2, &a, err, sizeof err), -1);
    cr_expect(strstr(err, "header claims 8 bytes") != NULL, "%s", err);
    /* trailing bytes */
    buf[n] = 0;
    cr_expect_eq(fd_npy_parse(buf, n + 1, &a, err, sizeof err), -1);
    cr_expect(strstr(err, "after the data") != NULL, "%s", err);
    /* truncated inside the header, inside the preamble */
    cr_expect_eq(fd_npy_parse(buf, 30, &a, err, sizeof err), -1);
    cr_expect(strstr(err, "truncated") != NULL, "%s", err);
    cr_expect_eq(fd_npy_parse(buf, 7, &a, err, sizeof err), -1);
    cr_expect(strstr(err, "truncated") != NULL, "%s", err);
    /* wrong magic */
    buf[1] = 'X';
    cr_expect_eq(fd_npy_parse(buf, n, &a, err, sizeof err), -1);
    cr_expect(strstr(err, "wrong magic") != NULL, "%s", err);
    cr_expect_eq(fd_npy_parse((const uint8_t *)"", 0, &a, err, sizeof err), -1);
    buf[1] = 'N';
    /* unknown version */
    buf[6] = 4;
    cr_expect_eq(fd_npy_parse(buf, n, &a, err, sizeof err), -1);
    cr_expect(strstr(err, "version 4.0") != NULL, "%s", err);
    /* version 2.0: 4-byte header length */
    uint8_t b2[512];
    const char *dict = "{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }\n";
    size_t hl = strlen(dict);
    memcpy(b2, "\x93NUMPY\x02\x00", 8);
    b2[8] = (uint8_t)hl; b2[9] = 0; b2[10] = 0; b2[11] = 0;
    memcpy(b2 + 12, dict, hl);
    memcpy(b2 + 12 + hl, d, sizeof d);
    cr_expect_eq(fd_npy_parse(b2, 12 + hl + sizeof d, &a, err, sizeof err), 0, "%s", err);
    fd_array_free(&a);
    /* a file reader error names the file */
    tu_dir(tmpdir, sizeof tmpdir);
    char p[512];
    snprintf(p, sizeof p, "%s/x.npy", tmpdir);
    FILE *f = fopen(p, "wb");
    fwrite(buf, 1, n - 2, f);
    fclose(f);
    buf[6] = 1;
    cr_expect_eq(fd_npy_read_file(p, &a, err, sizeof err), -1);
    cr_expect(strstr(err, p) != NULL, "%s", err);
}

Test(npy_file, round_trip_every_type)
{
    tu_dir(tmpdir, sizeof tmpdir);
    const fd_atype types[] = {FD_AT_F16, FD_AT_BF16, FD_AT_F32, FD_AT_F64, FD_AT_U8, FD_AT_BOOL};
    uint64_t s = 12345;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int64_t shape[3] = {3, 5, 7};
        fd_array a, b;
        char err[512], p[512];
        cr_assert_eq(fd_array_alloc(&a, types[ti], 3, shape, err, sizeof err), 0);
        uint8_t *d = a.data;
        for (size_t i = 0; i < a.numel * fd_atype_size(a.type); i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            d[i] = (uint8_t)(s >> 56);
            if (types[ti] == FD_AT_BOOL) d[i] &= 1;
        }
        snprintf(p, sizeof p, "%s/t%zu.npy", tmpdir, ti);
        cr_assert_eq(fd_npy_write_file(p, &a, err, sizeof err), 0, "%s", err);
        cr_assert_eq(fd_npy_read_file(p, &b, err, sizeof err), 0, "%s", err);
        cr_expect_eq(b.type, types[ti] == FD_AT_BF16 ? FD_AT_U16 : types[ti]);
        cr_expect_eq(b.ndim, 3);
        cr_expect_eq(b.numel, a.numel);
        cr_expect_eq(memcmp(a.data, b.data, a.numel * fd_atype_size(a.type)), 0, "type %s", fd_atype_name(types[ti]));
        struct stat st;
        stat(p, &st);
        cr_expect_eq(((size_t)st.st_size - a.numel * fd_atype_size(a.type)) % 64, 0, "data not 64-byte aligned");
        fd_array_free(&a);
        fd_array_free(&b);
    }
}

/* A numpy-written file, where numpy is installed (Debian's python3-numpy); skipped otherwise. */
Test(npy_file, numpy_written)
{
    if (system("python3 -c 'import numpy' >/dev/null 2>&1") != 0) cr_skip_test("numpy not installed");
    tu_dir(tmpdir, sizeof tmpdir);
    char cmd[1024], p[512], err[512];
    snprintf(p, sizeof p, "%s/np.npy", tmpdir);
    snprintf(cmd, sizeof cmd,
             "python3 -c \"import numpy as np; np.save('%s', (np.arange(24, dtype=np.float32).reshape(2,3,4) / 7)"
             ".astype(np.float16))\"", p);
    cr_assert_eq(system(cmd), 0);
    fd_array a;
    cr_assert_eq(fd_npy_read_file(p, &a, err, sizeof err), 0, "%s", err);
    cr_expect_eq(a.type, FD_AT_F16);
    cr_expect_eq(a.ndim, 3);
    for (size_t i = 0; i < 24; i++)
        cr_expect_eq(fd_f32_bits(fd_array_get_f32(&a, i)), fd_f32_bits(fd_round_to_dtype((float)i / 7.0f, FD_DT_FP16)),
                     "element %zu", i);
    fd_array_free(&a);
}

/* ---- safetensors ---- */

static size_t st_image(uint8_t *buf, const char *json, size_t dlen)
{
    size_t hl = strlen(json);
    for (int k = 0; k < 8; k++) buf[k] = (uint8_t)((uint64_t)hl >> (8 * k));
    memcpy(buf + 8, json, hl);
    memset(buf + 8 + hl, 0, dlen);
    return 8 + hl + dlen;
}

Test(safetensors, good_and_bad)
{
    uint8_t buf[1024];
    fd_st_file f;
    char err[512];
    size_t n = st_image(buf, "{\"__metadata__\":{\"layout\":\"bshd\"},\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],"
                             "\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[8,10]}}", 10);
    cr_assert_eq(fd_st_parse(buf, n, &f, err, sizeof err), 0, "%s", err);
    cr_expect_eq(f.n, 2);
    cr_expect_not_null(f.meta);
    cr_expect_not_null(fd_st_find(&f, "b"));
    cr_expect_eq(fd_st_find(&f, "b")->type, FD_AT_BF16);
    fd_st_free(&f);
    static const struct { const char *json; size_t dlen; const char *msg; } bad[] = {
        {"{\"a\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2, "unsupported dtype I16"}, /* I32, I64: cu_seqlens */
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,4]}}", 4, "needs 6"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 2, "past the data"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 6, "after the last tensor"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[2,6]}}", 6, "gap"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F16\",\"shape\":[2],"
         "\"data_offsets\":[2,6]}}", 6, "overlaps"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F16\",\"shape\":[2],"
         "\"data_offsets\":[0,4]}}", 4, "invalid JSON"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[-2],\"data_offsets\":[0,4]}}", 4, "non-negative"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[2]}}", 4, "expected {"},
        {"{\"__metadata__\":{\"x\":1}}", 0, "must be a string"},
        {"[1,2]", 0, "not a safetensors file"},
        {"{\"a\":", 0, "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n = st_image(buf, bad[i].json, bad[i].dlen);
        err[0] = 0;
        cr_expect_eq(fd_st_parse(buf, n, &f, err, sizeof err), -1, "case %zu accepted", i);
        cr_expect(strstr(err, bad[i].msg) != NULL, "case %zu: \"%s\" lacks \"%s\"", i, err, bad[i].msg);
    }
    /* header size larger than the file, absurd header size, too short */
    n = st_image(buf, "{}", 0);
    buf[0] = 200;
    cr_expect_eq(fd_st_parse(buf, n, &f, err, sizeof err), -1);
    cr_expect(strstr(err, "truncated") != NULL, "%s", err);
    buf[7] = 0x7f;
    cr_expect_eq(fd_st_parse(buf, n, &f, err, sizeof err), -1);
    cr_expect(strstr(err, "100 MB") != NULL, "%s", err);
    cr_expect_eq(fd_st_parse(buf, 5, &f, err, sizeof err), -1);
    cr_expect(strstr(err, "truncated") != NULL, "%s", err);
}

/* ---- bundles ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-53;
}

/* Values spread over exponents, with subnormals, zeros of both signs and extremes. */
static float spread(fd_dtype t, size_t i)
{
    if (i % 97 == 5) return -0.0f;
    if (i % 89 == 7) return t == FD_DT_FP16 ? 0x1p-24f : t == FD_DT_BF16 ? 0x1p-133f : 0x1p-149f;
    if (i % 83 == 3) return t == FD_DT_FP16 ? -65504.0f : -0x1.fep127f;
    double x = (urand() * 2.0 - 1.0) * ldexp(1.0, (int)(urand() * 12.0) - 6);
    return fd_round_to_dtype((float)x, t);
}

static void make_bundle(fd_bundle *b, fd_dtype t, int B, int H, int Hk, int Sq, int Sk, int D, int nout)
{
    memset(b, 0, sizeof *b);
    fd_problem *p = &b->prob;
    p->batch = B; p->heads = H; p->kv_heads = Hk; p->seqlen_q = Sq; p->seqlen_k = Sk; p->head_dim = D;
    p->dtype = t;
    p->mask = FD_MASK_CAUSAL_BR;
    p->softmax_scale = (float)(1.0 / sqrt((double)D));
    p->dropout_p = 0.17;
    p->seed = 0xfedcba9876543210ull;
    p->offset = 12345678901ull;
    b->q = malloc(sizeof(float) * fd_q_numel(p));
    b->k = malloc(sizeof(float) * fd_kv_numel(p));
    b->v = malloc(sizeof(float) * fd_kv_numel(p));
    for (size_t i = 0; i < fd_q_numel(p); i++) b->q[i] = spread(t, i);
    for (size_t i = 0; i < fd_kv_numel(p); i++) b->k[i] = spread(t, i + 1);
    for (size_t i = 0; i < fd_kv_numel(p); i++) b->v[i] = spread(t, i + 2);
    b->nout = nout;
    for (int o = 0; o < nout; o++) {
        fd_import_output *io = &b->out[o];
        snprintf(io->name, sizeof io->name, o == 0 ? "flash" : o == 1 ? "math" : "other%d", o);
        io->be.name = io->name;
        io->be.family = "import";
        io->be.role = o == 1 ? FD_ROLE_STANDARD : FD_ROLE_FLASH;
        io->o = malloc(sizeof(float) * fd_q_numel(p));
        for (size_t i = 0; i < fd_q_numel(p); i++) io->o[i] = spread(t, i + 3 + (size_t)o);
        io->o[0] = NAN; /* outputs may hold NaN */
        io->lse = malloc(sizeof(float) * fd_lse_numel(p));
        for (size_t i = 0; i < fd_lse_numel(p); i++) io->lse[i] = (float)urand();
        io->lse[1] = INFINITY;
        io->keep = malloc((size_t)B * (size_t)H * (size_t)Sq * (size_t)Sk);
        for (size_t i = 0; i < (size_t)B * (size_t)H * (size_t)Sq * (size_t)Sk; i++) io->keep[i] = urand() < 0.8;
    }
}

static int same_bits(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fd_f32_bits(a[i]) != fd_f32_bits(b[i])) return 0;
    return 1;
}

Test(bundle, round_trip_every_dtype_layout_format)
{
    tu_dir(tmpdir, sizeof tmpdir);
    for (int t = 0; t < 3; t++)
        for (int bhsd = 0; bhsd < 2; bhsd++)
            for (int st = 0; st < 2; st++) {
                fd_bundle w, r;
                make_bundle(&w, (fd_dtype)t, 2, 4, 2, 5, 7, 3, 2);
                char p[512], err[1024];
                snprintf(p, sizeof p, "%s/b_%d_%d%s", tmpdir, t, bhsd, st ? ".safetensors" : "");
                cr_assert_eq(fd_bundle_write(&w, p, st, bhsd, err, sizeof err), 0, "%s", err);
                cr_assert_eq(fd_bundle_load(p, &r, err, sizeof err), 0, "%s", err);
                const fd_problem *a = &w.prob, *c = &r.prob;
                cr_expect(a->batch == c->batch && a->heads == c->heads && a->kv_heads == c->kv_heads &&
                          a->seqlen_q == c->seqlen_q && a->seqlen_k == c->seqlen_k && a->head_dim == c->head_dim,
                          "shape differs (dtype %d bhsd %d st %d)", t, bhsd, st);
                cr_expect_eq(c->dtype, a->dtype);
                cr_expect_eq(c->mask, a->mask);
                cr_expect_eq(fd_f32_bits(c->softmax_scale), fd_f32_bits(a->softmax_scale));
                cr_expect(fd_eq(c->dropout_p, a->dropout_p));
                cr_expect_eq(c->seed, a->seed);
                cr_expect_eq(c->offset, a->offset);
                cr_expect_eq(r.bhsd, bhsd);
                cr_expect(same_bits(w.q, r.q, fd_q_numel(a)), "q differs (dtype %d bhsd %d st %d)", t, bhsd, st);
                cr_expect(same_bits(w.k, r.k, fd_kv_numel(a)), "k differs");
                cr_expect(same_bits(w.v, r.v, fd_kv_numel(a)), "v differs");
                cr_assert_eq(r.nout, 2);
                for (int o = 0; o < 2; o++) {
                    cr_expect_str_eq(r.out[o].name, w.out[o].name);
                    cr_expect_eq(r.out[o].be.role, w.out[o].be.role);
                    cr_expect(same_bits(w.out[o].o, r.out[o].o, fd_q_numel(a)), "out %d differs", o);
                    cr_expect(same_bits(w.out[o].lse, r.out[o].lse, fd_lse_numel(a)), "lse %d differs", o);
                    cr_expect_eq(memcmp(w.out[o].keep, r.out[o].keep, (size_t)2 * 4 * 5 * 7), 0, "mask %d differs", o);
                }
                fd_bundle_free(&w);
                fd_bundle_free(&r);
            }
}

/* Writes a small valid npy bundle into dir and returns 0. */
static void good_dir(const char *dir, fd_dtype t)
{
    fd_bundle w;
    char err[1024];
    make_bundle(&w, t, 1, 2, 1, 3, 4, 2, 2);
    cr_assert_eq(fd_bundle_write(&w, dir, 0, 0, err, sizeof err), 0, "%s", err);
    fd_bundle_free(&w);
}

static void expect_load_error(const char *path, const char *msg)
{
    fd_bundle b;
    char err[1024] = "";
    cr_expect_eq(fd_bundle_load(path, &b, err, sizeof err), -1, "%s loaded (expected: %s)", path, msg);
    cr_expect(strstr(err, msg) != NULL, "message \"%s\" lacks \"%s\"", err, msg);
}

Test(bundle, bad_bundles)
{
    tu_dir(tmpdir, sizeof tmpdir);
    char d[600], p[1200];
    int n = 0;
#define FRESH(t) do { snprintf(d, sizeof d, "%s/d%d", tmpdir, n++); good_dir(d, t); } while (0)
    const int64_t q_shape[4] = {1, 3, 2, 2}, k_bad[4] = {1, 4, 1, 3}, o_bad[4] = {1, 3, 2, 3};
    FRESH(FD_DT_FP16);
    snprintf(p, sizeof p, "%s/k.npy", d);
    unlink(p);
    expect_load_error(d, "k.npy: missing required tensor");
    FRESH(FD_DT_FP16);
    snprintf(p, sizeof p, "%s/meta.json", d);
    unlink(p);
    expect_load_error(d, "meta.json: missing");
    FRESH(FD_DT_FP16);
    snprintf(p, sizeof p, "%s/meta.json", d);
    tu_write(p, "{\"mask\": \"none\"}");
    expect_load_error(d, "never guessed");
    FRESH(FD_DT_FP16);
    tu_write(p, "{\"layout\": \"bshd\", \"mask\": \"none\", \"dropout_p\": 0.1}");
    snprintf(p, sizeof p, "%s/meta.json", d);
    tu_write(p, "{\"layout\": \"bshd\", \"mask\": \"none\", \"dropout_p\": 0.1}");
    expect_load_error(d, "needs seed and offset");
    FRESH(FD_DT_FP16);
    snprintf(p, sizeof p, "%s/meta.json", d);
    tu_write(p, "{\"layout\": \"bshd\", \"mask\": \"none\", \"layot\": 1}");
    expect_load_error(d, "unknown key \"layot\"");
    FRESH(FD_DT_FP16);
    tu_npy_fill(d, "k", FD_AT_F16, 4, k_bad, 1.0f);
    expect_load_error(d, "v.npy: shape (1, 4, 1, 2) disagrees with k's (1, 4, 1, 3)");
    FRESH(FD_DT_FP16);
    tu_npy_fill(d, "out_flash", FD_AT_F16, 4, o_bad, 1.0f);
    expect_load_error(d, "out_flash.npy: shape (1, 3, 2, 3) disagrees with q's (1, 3, 2, 2)");
    FRESH(FD_DT_FP16);
    tu_npy_fill(d, "q", FD_AT_F32, 4, q_shape, 1.0f);
    expect_load_error(d, "disagrees with q's fp32");
    FRESH(FD_DT_FP16);
    tu_npy_fill(d, "q", FD_AT_F16, 4, q_shape, NAN);
    expect_load_error(d, "q.npy: 12 NaN and 0 Inf input values");
    FRESH(FD_DT_FP16);
    tu_npy_fill(d, "v", FD_AT_F16, 4, (const int64_t[]){1, 4, 1, 2}, INFINITY);
    expect_load_error(d, "v.npy: 0 NaN and 8 Inf");
    FRESH(FD_DT_FP16);
    tu_npy_fill(d, "Q", FD_AT_F16, 4, q_shape, 1.0f);
    expect_load_error(d, "Q.npy: unexpected tensor file");
    FRESH(FD_DT_FP16);
    tu_npy_fill(d, "lse_flash", FD_AT_F32, 3, (const int64_t[]){1, 3, 2}, 0.0f);
    expect_load_error(d, "lse_flash.npy: shape (1, 3, 2), expected (1, 2, 3)");
    FRESH(FD_DT_FP16);
    tu_npy_fill(d, "dmask_flash", FD_AT_U8, 4, (const int64_t[]){1, 2, 3, 4}, 2.0f);
    expect_load_error(d, "dropout mask value 2");
    FRESH(FD_DT_FP16);
    tu_npy_fill(d, "lse_nobody", FD_AT_F32, 3, (const int64_t[]){1, 2, 3}, 0.0f);
    expect_load_error(d, "belongs to no output");
    /* bf16 as '<u2' needs the meta to say so */
    FRESH(FD_DT_BF16);
    snprintf(p, sizeof p, "%s/meta.json", d);
    tu_write(p, "{\"layout\": \"bshd\", \"mask\": \"none\"}");
    expect_load_error(d, "must say \"dtype\": \"bf16\"");
    FRESH(FD_DT_FP16);
    snprintf(p, sizeof p, "%s/meta.json", d);
    tu_write(p, "{\"layout\": \"bshd\", \"mask\": \"none\", \"dtype\": \"bf16\"}");
    expect_load_error(d, "disagrees with the tensors' fp16");
    /* unsupported dtype, big-endian, Fortran order, truncated, wrong magic: file named */
    FRESH(FD_DT_FP16);
    snprintf(p, sizeof p, "%s/q.npy", d);
    uint8_t img[512];
    size_t n2 = npy_image(img, "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3, 2, 2), }\n", NULL, 0);
    memset(img + n2, 0, 96);
    FILE *f = fopen(p, "wb"); fwrite(img, 1, n2 + 96, f); fclose(f);
    expect_load_error(d, "q.npy: unsupported dtype fp64");
    n2 = npy_image(img, "{'descr': '>f2', 'fortran_order': False, 'shape': (1, 3, 2, 2), }\n", NULL, 0);
    f = fopen(p, "wb"); fwrite(img, 1, n2 + 24, f); fclose(f);
    expect_load_error(d, "q.npy: npy header: big-endian");
    n2 = npy_image(img, "{'descr': '<f2', 'fortran_order': True, 'shape': (1, 3, 2, 2), }\n", NULL, 0);
    f = fopen(p, "wb"); fwrite(img, 1, n2 + 24, f); fclose(f);
    expect_load_error(d, "q.npy: npy header: Fortran-order");
    n2 = npy_image(img, "{'descr': '<f2', 'fortran_order': False, 'shape': (1, 3, 2, 2), }\n", NULL, 0);
    f = fopen(p, "wb"); fwrite(img, 1, n2 + 20, f); fclose(f);
    expect_load_error(d, "q.npy: header claims 24 bytes of data");
    img[0] = 'P';
    f = fopen(p, "wb"); fwrite(img, 1, n2 + 24, f); fclose(f);
    expect_load_error(d, "q.npy: not a .npy file (wrong magic");
    /* safetensors: no metadata, truncated */
    snprintf(p, sizeof p, "%s/x.safetensors", tmpdir);
    n2 = st_image(img, "{\"q\":{\"dtype\":\"F16\",\"shape\":[1,1,1,1],\"data_offsets\":[0,2]}}", 2);
    f = fopen(p, "wb"); fwrite(img, 1, n2, f); fclose(f);
    expect_load_error(p, "no __metadata__");
    f = fopen(p, "wb"); fwrite(img, 1, n2 - 1, f); fclose(f);
    expect_load_error(p, "x.safetensors: tensor \"q\": data_offsets end 2 is past the data");
#undef FRESH
}

/* Gives b an output gradient and, for each of its outputs, dq/dk/dv; deterministic as given. */
static void add_grads(fd_bundle *b, int deterministic)
{
    const fd_problem *p = &b->prob;
    const fd_dtype t = p->dtype;
    b->dout = malloc(sizeof(float) * fd_q_numel(p));
    for (size_t i = 0; i < fd_q_numel(p); i++) b->dout[i] = spread(t, i + 11);
    for (int o = 0; o < b->nout; o++) {
        fd_import_output *io = &b->out[o];
        io->dq = malloc(sizeof(float) * fd_q_numel(p));
        io->dk = malloc(sizeof(float) * fd_kv_numel(p));
        io->dv = malloc(sizeof(float) * fd_kv_numel(p));
        for (size_t i = 0; i < fd_q_numel(p); i++) io->dq[i] = spread(t, i + 20 + (size_t)o);
        for (size_t i = 0; i < fd_kv_numel(p); i++) io->dk[i] = spread(t, i + 30 + (size_t)o);
        for (size_t i = 0; i < fd_kv_numel(p); i++) io->dv[i] = spread(t, i + 40 + (size_t)o);
        io->dq[1] = NAN; /* gradients are outputs: they may hold NaN */
    }
    b->has_deterministic = 1;
    b->deterministic = deterministic;
}

Test(bundle, round_trip_with_gradients)
{
    tu_dir(tmpdir, sizeof tmpdir);
    for (int t = 0; t < 3; t++)
        for (int bhsd = 0; bhsd < 2; bhsd++)
            for (int st = 0; st < 2; st++) {
                fd_bundle w, r;
                make_bundle(&w, (fd_dtype)t, 2, 4, 2, 5, 7, 3, 2);
                add_grads(&w, (t + st) % 2);
                char p[512], err[1024];
                snprintf(p, sizeof p, "%s/g_%d_%d%s", tmpdir, t, bhsd, st ? ".safetensors" : "");
                cr_assert_eq(fd_bundle_write(&w, p, st, bhsd, err, sizeof err), 0, "%s", err);
                cr_assert_eq(fd_bundle_load(p, &r, err, sizeof err), 0, "%s", err);
                const fd_problem *a = &w.prob;
                cr_assert_not_null(r.dout, "do not loaded (dtype %d bhsd %d st %d)", t, bhsd, st);
                cr_expect(same_bits(w.dout, r.dout, fd_q_numel(a)), "do differs (dtype %d bhsd %d st %d)", t, bhsd, st);
                cr_expect_eq(r.has_deterministic, 1);
                cr_expect_eq(r.deterministic, (t + st) % 2, "deterministic not kept (st %d)", st);
                cr_assert_eq(r.nout, 2);
                for (int o = 0; o < 2; o++) {
                    cr_assert(r.out[o].dq && r.out[o].dk && r.out[o].dv, "gradients of %s not loaded", r.out[o].name);
                    cr_expect(same_bits(w.out[o].dq, r.out[o].dq, fd_q_numel(a)), "dq %d differs (dtype %d bhsd %d st %d)",
                              o, t, bhsd, st);
                    cr_expect(same_bits(w.out[o].dk, r.out[o].dk, fd_kv_numel(a)), "dk %d differs", o);
                    cr_expect(same_bits(w.out[o].dv, r.out[o].dv, fd_kv_numel(a)), "dv %d differs", o);
                }
                fd_given g;
                fd_bundle_given(&r, 0, 0, &g);
                cr_expect(g.dout == r.dout && g.nout == 1 && g.out[0].dq == r.out[1].dq && g.out[0].dk == r.out[1].dk &&
                              g.out[0].dv == r.out[1].dv,
                          "fd_bundle_given does not pass the gradients through");
                fd_bundle_free(&w);
                fd_bundle_free(&r);
            }
    /* a bundle without gradients has none, and no deterministic flag */
    fd_bundle w, r;
    make_bundle(&w, FD_DT_FP16, 1, 2, 1, 3, 4, 2, 1);
    char p[512], err[1024];
    snprintf(p, sizeof p, "%s/nograd", tmpdir);
    cr_assert_eq(fd_bundle_write(&w, p, 0, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fd_bundle_load(p, &r, err, sizeof err), 0, "%s", err);
    cr_expect(!r.dout && !r.out[0].dq && !r.out[0].dk && !r.out[0].dv && !r.has_deterministic);
    fd_given g;
    fd_bundle_given(&r, -1, 0, &g);
    cr_expect(!g.dout && !g.out[0].dq);
    fd_bundle_free(&w);
    fd_bundle_free(&r);
}

/* A valid npy bundle with gradients (q (1, 3, 2, 2), k and v (1, 4, 1, 2), fp16). */
static void good_grad_dir(const char *dir, int safetensors)
{
    fd_bundle w;
    char err[1024];
    make_bundle(&w, FD_DT_FP16, 1, 2, 1, 3, 4, 2, 2);
    add_grads(&w, 1);
    cr_assert_eq(fd_bundle_write(&w, dir, safetensors, 0, err, sizeof err), 0, "%s", err);
    fd_bundle_free(&w);
}

Test(bundle, bad_gradients)
{
    tu_dir(tmpdir, sizeof tmpdir);
    char d[600], p[1200];
    int n = 0;
#define FRESH() do { snprintf(d, sizeof d, "%s/g%d", tmpdir, n++); good_grad_dir(d, 0); } while (0)
    const int64_t q_shape[4] = {1, 3, 2, 2}, q_bad[4] = {1, 3, 2, 3};
    FRESH();
    {
        fd_bundle r;
        char err[1024];
        cr_assert_eq(fd_bundle_load(d, &r, err, sizeof err), 0, "the good bundle: %s", err);
        fd_bundle_free(&r);
    }
    /* a gradient without do */
    FRESH();
    snprintf(p, sizeof p, "%s/do.npy", d);
    unlink(p);
    expect_load_error(d, "dk_flash.npy: a gradient needs the output gradient it was computed for: expected tensor do");
    /* do of the wrong shape, of the wrong dtype, not finite */
    FRESH();
    tu_npy_fill(d, "do", FD_AT_F16, 4, q_bad, 1.0f);
    expect_load_error(d, "do.npy: output gradient of shape (1, 3, 2, 3), expected q's (1, 3, 2, 2)");
    FRESH();
    tu_npy_fill(d, "do", FD_AT_F32, 4, q_shape, 1.0f);
    expect_load_error(d, "do.npy: output gradient of dtype fp32, expected q's fp16");
    FRESH();
    tu_npy_fill(d, "do", FD_AT_F16, 4, q_shape, NAN);
    expect_load_error(d, "do.npy: 12 NaN and 0 Inf input values");
    /* only some of dq/dk/dv */
    FRESH();
    snprintf(p, sizeof p, "%s/dv_math.npy", d);
    unlink(p);
    expect_load_error(d, "dq_math.npy: no dv_math beside it (expected dq_math, dk_math and dv_math together, or none)");
    FRESH();
    snprintf(p, sizeof p, "%s/dq_flash.npy", d);
    unlink(p);
    expect_load_error(d, "dk_flash.npy: no dq_flash beside it");
    /* a gradient with no out_NAME */
    FRESH();
    tu_npy_fill(d, "dq_nobody", FD_AT_F16, 4, q_shape, 0.0f);
    expect_load_error(d, "dq_nobody.npy: gradient of no output (no tensor out_nobody)");
    /* gradients of the wrong shape or dtype */
    FRESH();
    tu_npy_fill(d, "dk_flash", FD_AT_F16, 4, q_shape, 0.0f);
    expect_load_error(d, "dk_flash.npy: shape (1, 3, 2, 2), expected k's (1, 4, 1, 2)");
    FRESH();
    tu_npy_fill(d, "dq_flash", FD_AT_F32, 4, q_shape, 0.0f);
    expect_load_error(d, "dq_flash.npy: dtype fp32, expected the bundle's fp16");
    /* an unknown gradient-like name */
    FRESH();
    tu_npy_fill(d, "dx_flash", FD_AT_F16, 4, q_shape, 0.0f);
    expect_load_error(d, "dx_flash.npy: unexpected tensor file");
    /* deterministic must be a boolean */
    FRESH();
    snprintf(p, sizeof p, "%s/meta.json", d);
    tu_write(p, "{\"layout\": \"bshd\", \"mask\": \"none\", \"deterministic\": \"yes\"}");
    expect_load_error(d, "meta.json: deterministic: expected true or false");
    /* safetensors: the file and the tensor named */
    fd_bundle w;
    char err[1024];
    make_bundle(&w, FD_DT_BF16, 1, 2, 1, 3, 4, 2, 2);
    add_grads(&w, 0);
    free(w.dout);
    w.dout = NULL;
    snprintf(p, sizeof p, "%s/nodo.safetensors", tmpdir);
    cr_assert_eq(fd_bundle_write(&w, p, 1, 1, err, sizeof err), 0, "%s", err);
    expect_load_error(p, "nodo.safetensors: tensor dk_flash: a gradient needs the output gradient");
    fd_bundle_free(&w);
#undef FRESH
}

/* A bundle whose flash output is the reference rounded to the dtype and whose mask is
 * FA2's: PASS; with one mask bit flipped: FAIL naming the disagreement. */
Test(bundle, exact_output_passes_and_mask_agreement)
{
    fd_bundle b;
    make_bundle(&b, FD_DT_FP16, 1, 2, 1, 9, 11, 4, 2);
    fd_problem *p = &b.prob;
    p->mask = FD_MASK_CAUSAL_TL;
    for (size_t i = 0; i < fd_q_numel(p); i++) b.q[i] = fd_round_to_dtype((float)(urand() - 0.5), FD_DT_FP16);
    for (size_t i = 0; i < fd_kv_numel(p); i++) b.k[i] = fd_round_to_dtype((float)(urand() - 0.5), FD_DT_FP16);
    for (size_t i = 0; i < fd_kv_numel(p); i++) b.v[i] = fd_round_to_dtype((float)(urand() - 0.5), FD_DT_FP16);
    const uint8_t thr = fd_fa2_threshold(p->dropout_p);
    for (int o = 0; o < 2; o++) {
        for (int bb = 0; bb < p->batch; bb++)
            for (int h = 0; h < p->heads; h++)
                for (int i = 0; i < p->seqlen_q; i++) {
                    double ro[4];
                    fd_ref_row_info info;
                    char err[256];
                    cr_assert_eq(fd_ref_row(p, b.q, b.k, b.v, bb, h, i, NULL, ro, &info, err, sizeof err), 0, "%s", err);
                    for (int d = 0; d < 4; d++)
                        b.out[o].o[fd_q_index(p, bb, i, h, d)] = fd_round_to_dtype((float)ro[d], FD_DT_FP16);
                    b.out[o].lse[fd_lse_index(p, bb, h, i)] = (float)info.lse;
                    for (int j = 0; j < p->seqlen_k; j++)
                        b.out[o].keep[(((size_t)bb * 2 + (size_t)h) * 9 + (size_t)i) * 11 + (size_t)j] =
                            (uint8_t)fd_fa2_keep(p->seed, p->offset, thr, p->heads, bb, h, i, j);
                }
    }
    /* through the one pipeline, as check runs it: the bundle on disk, a case pointing at it */
    char dir[] = "/tmp/fd_bundle_mask_XXXXXX";
    cr_assert(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/masked", dir);
    char err[1024];
    cr_assert_eq(fd_bundle_write(&b, path, 0, 0, err, sizeof err), 0, "%s", err);
    char **paths = malloc(sizeof(char *));
    paths[0] = strdup(path);
    fd_casefile cf;
    fd_casefile_bundles(&cf, path, paths, 1, 0);
    fd_case_result res;
    cr_assert_eq(fd_run_case(&cf, &cf.cases[0], NULL, 0, 2, 1, &res, err, sizeof err), 0, "%s", err);
    cr_expect_eq(res.verdict, FD_PASS, "verdict %s: %s", fd_verdict_name(res.verdict), res.reasons);
    cr_expect(res.be[0].m.max_ulp <= 0.5, "max ulp %g", res.be[0].m.max_ulp);
    cr_expect(res.be[0].mask_checked > 0 && res.be[0].mask_mismatch == 0, "mask %ld of %ld differ",
              res.be[0].mask_mismatch, res.be[0].mask_checked);
    json_t *pr = json_array_get(json_object_get((json_t *)res.extra, "pairs"), 0);
    cr_expect_eq(json_integer_value(json_object_get(pr, "identical")), (json_int_t)fd_q_numel(p));
    fd_case_result_free(&res);
    /* flip one visible mask element: the reference no longer models the kernel */
    b.out[0].keep[(size_t)(1 * 9 + 4) * 11 + 2] ^= 1;
    cr_assert_eq(fd_bundle_write(&b, path, 0, 0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(fd_run_case(&cf, &cf.cases[0], NULL, 0, 2, 1, &res, err, sizeof err), 0, "%s", err);
    cr_expect_eq(res.verdict, FD_FAIL, "verdict %s: %s", fd_verdict_name(res.verdict), res.reasons);
    cr_expect(strstr(res.reasons, "flash: dropout mask differs") != NULL, "%s", res.reasons);
    cr_expect(strstr(res.reasons, "in 1 of") != NULL && strstr(res.reasons, "first at b0 h1 row 4 key 2") != NULL,
              "%s", res.reasons);
    fd_case_result_free(&res);
    fd_casefile_free(&cf);
    fd_bundle_free(&b);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

/* ---- the command ---- */

/* flashdrift check ARGS (split at spaces); stderr in errbuf. */
static int run_cli(const char *args, char *errbuf, size_t len)
{
    char buf[2048], *argv[64];
    int n = 0;
    argv[n++] = FD_BINARY;
    argv[n++] = "check";
    snprintf(buf, sizeof buf, "%s", args);
    for (char *t = strtok(buf, " "); t && n < 63; t = strtok(NULL, " ")) argv[n++] = t;
    argv[n] = NULL;
    const int rc = tu_run(argv);
    snprintf(errbuf, len, "%s", g_err);
    return rc;
}

Test(cli, check_exit_codes_and_report)
{
    tu_dir(tmpdir, sizeof tmpdir);
    char d[600], args[2048], e[4096], p[1200];
    snprintf(d, sizeof d, "%s/good", tmpdir);
    good_dir(d, FD_DT_FP16);
    /* random outputs: far from the reference, the flash one FAILs (exit 1), report written */
    snprintf(args, sizeof args, "--tensors %s --out %s/out --jobs 2", d, tmpdir);
    cr_expect_eq(run_cli(args, e, sizeof e), 1, "stderr: %s", e);
    cr_expect(strstr(e, "FAIL good") != NULL, "%s", e);
    snprintf(p, sizeof p, "%s/out/report.json", tmpdir);
    json_error_t je;
    json_t *r = json_load_file(p, 0, &je);
    cr_assert_not_null(r, "%s: %s", p, je.text);
    json_t *c = json_array_get(json_object_get(r, "cases"), 0);
    cr_expect_str_eq(json_string_value(json_object_get(c, "id")), "good");
    cr_expect_not_null(json_object_get(json_object_get(c, "backends"), "flash"));
    cr_expect_not_null(json_object_get(json_object_get(c, "import"), "pairs"));
    json_decref(r);
    snprintf(p, sizeof p, "%s/out/summary.md", tmpdir);
    struct stat st;
    cr_expect_eq(stat(p, &st), 0);
    /* bad input: exit 2, the file named, nothing written */
    snprintf(p, sizeof p, "%s/v.npy", d);
    unlink(p);
    snprintf(args, sizeof args, "--tensors %s --out %s/out2", d, tmpdir);
    cr_expect_eq(run_cli(args, e, sizeof e), 2, "stderr: %s", e);
    cr_expect(strstr(e, "v.npy: missing required tensor") != NULL, "%s", e);
    snprintf(p, sizeof p, "%s/out2", tmpdir);
    cr_expect_neq(stat(p, &st), 0, "output directory created on bad input");
    cr_expect_eq(run_cli("--tensors /nonexistent/bundle", e, sizeof e), 2, "%s", e);
    cr_expect(strstr(e, "/nonexistent/bundle") != NULL, "%s", e);
    cr_expect_eq(run_cli("--rows-per-head x --tensors y", e, sizeof e), 2);
    cr_expect_eq(run_cli("", e, sizeof e), 2);
}
