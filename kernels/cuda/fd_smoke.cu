/* fd_smoke.cu: self-contained device check of the CUDA backends (no MPFR, no Criterion),
 * small enough for compute-sanitizer. Each case: random inputs rounded to the dtype,
 * flash, split-KV and standard against a binary64 reference computed here; the flash
 * error must be at most 2x the standard's (+1e-6); the debug dropout mask must equal
 * fd_fa2_keep; poisoned outputs must be fully written; two flash runs must be bitwise
 * equal. Also fd_exp2_portable host vs device over many inputs. Prints one line per
 * check; exit 0 when all pass. Usage: fd_cuda_smoke [quick] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <random>
#include "fd_cuda.h"
#include "fd_dtype.h"
#include "fd_philox.h"
#include "fd_exp2.h"

static int g_fail = 0;
#define CHECK(cond, ...) do { if (!(cond)) { g_fail++; printf("FAIL "); printf(__VA_ARGS__); printf("\n"); } } while (0)

static void ref_forward(const fd_problem *p, const std::vector<float> &q, const std::vector<float> &k,
                        const std::vector<float> &v, std::vector<double> &o, std::vector<double> &lse)
{
    const int D = p->head_dim;
    o.assign(q.size(), 0.0);
    lse.assign((size_t)p->batch * p->heads * p->seqlen_q, 0.0);
    uint8_t thr = fd_fa2_threshold(p->dropout_p);
    std::vector<double> s(p->seqlen_k);
    for (int b = 0; b < p->batch; b++)
        for (int h = 0; h < p->heads; h++) {
            int hk = fd_kv_head(p, h);
            for (int i = 0; i < p->seqlen_q; i++) {
                int nv = fd_mask_visible_count(p->mask, i, p->seqlen_q, p->seqlen_k);
                size_t li = fd_lse_index(p, b, h, i);
                if (nv == 0) { lse[li] = INFINITY; continue; }
                double mx = -INFINITY;
                for (int j = 0; j < nv; j++) {
                    double a = 0;
                    for (int d = 0; d < D; d++) a += (double)q[fd_q_index(p, b, i, h, d)] * k[fd_kv_index(p, b, j, hk, d)];
                    s[j] = a * (double)p->softmax_scale;
                    if (s[j] > mx) mx = s[j];
                }
                double sum = 0;
                for (int j = 0; j < nv; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
                lse[li] = mx + log(sum);
                for (int j = 0; j < nv; j++) {
                    double pj = s[j] / sum;
                    if (p->dropout_p > 0) pj = fd_fa2_keep(p->seed, p->offset, thr, p->heads, b, h, i, j) ? pj / (1.0 - p->dropout_p) : 0.0;
                    for (int d = 0; d < D; d++) o[fd_q_index(p, b, i, h, d)] += pj * v[fd_kv_index(p, b, j, hk, d)];
                }
            }
        }
}

static double max_err(const std::vector<float> &o, const std::vector<double> &r, size_t *nan_count)
{
    double e = 0; size_t nn = 0;
    for (size_t x = 0; x < o.size(); x++) {
        if (o[x] != o[x]) { nn++; continue; }
        double d = fabs((double)o[x] - r[x]);
        if (d > e) e = d;
    }
    if (nan_count) *nan_count = nn;
    return e;
}

struct Case { const char *name; int B, H, Hk, sq, sk, d; fd_dtype dt; fd_mask_kind mask; double p; int br, bc, exp2_mode, p_fp32, splits; };

static void run_case(const Case &c, unsigned seed)
{
    fd_problem p;
    memset(&p, 0, sizeof p);
    p.batch = c.B; p.heads = c.H; p.kv_heads = c.Hk; p.seqlen_q = c.sq; p.seqlen_k = c.sk; p.head_dim = c.d;
    p.dtype = c.dt; p.mask = c.mask; p.softmax_scale = (float)(1.0 / sqrt((double)c.d));
    p.dropout_p = c.p; p.seed = 0x1234abcd5678ull + seed; p.offset = 64 * seed;
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> q(fd_q_numel(&p)), k(fd_kv_numel(&p)), v(fd_kv_numel(&p));
    for (auto &x : q) x = fd_round_to_dtype(nd(rng), c.dt);
    for (auto &x : k) x = fd_round_to_dtype(nd(rng), c.dt);
    for (auto &x : v) x = fd_round_to_dtype(nd(rng), c.dt);
    std::vector<double> ro, rl;
    ref_forward(&p, q, k, v, ro, rl);
    const float qnan = NAN;
    std::vector<float> of(q.size(), qnan), lf(rl.size(), qnan), of2(q.size(), qnan), lf2(rl.size(), qnan);
    std::vector<float> os(q.size(), qnan), ls(rl.size(), qnan), ok(q.size(), qnan), lk(rl.size(), qnan);
    std::vector<uint8_t> dm;
    const bool want_dm = c.p > 0 && c.dt != FD_DT_FP32 && (size_t)c.B * c.H * c.sq * c.sk <= (1u << 24);
    if (want_dm) dm.assign((size_t)c.B * c.H * c.sq * c.sk, 7);
    fd_cuda_cfg cfg; fd_cuda_cfg_default(&cfg);
    cfg.br = c.br; cfg.bc = c.bc; cfg.exp2_mode = c.exp2_mode; cfg.p_fp32 = c.p_fp32; cfg.splits = c.splits;
    char err[512] = "";
    int rc = fd_cuda_flash_forward(&p, &cfg, q.data(), k.data(), v.data(), of.data(), lf.data(), want_dm ? dm.data() : nullptr, nullptr, err, sizeof err);
    CHECK(rc == 0, "%s: flash: %s", c.name, err);
    if (rc) return;
    rc = fd_cuda_flash_forward(&p, &cfg, q.data(), k.data(), v.data(), of2.data(), lf2.data(), nullptr, nullptr, err, sizeof err);
    CHECK(rc == 0, "%s: flash run 2: %s", c.name, err);
    rc = fd_cuda_standard_forward(&p, 0, q.data(), k.data(), v.data(), os.data(), ls.data(), nullptr, err, sizeof err);
    CHECK(rc == 0, "%s: standard: %s", c.name, err);
    double ek = -1; size_t nk = 0;
    if (c.dt != FD_DT_FP32) {
        rc = fd_cuda_splitkv_forward(&p, &cfg, q.data(), k.data(), v.data(), ok.data(), lk.data(), nullptr, err, sizeof err);
        CHECK(rc == 0, "%s: splitkv: %s", c.name, err);
        ek = max_err(ok, ro, &nk);
    }
    size_t nf = 0, ns = 0;
    double ef = max_err(of, ro, &nf), es = max_err(os, ro, &ns);
    double else_ = 0; int lse_bad = 0;
    for (size_t x = 0; x < rl.size(); x++) {
        if (isinf(rl[x])) { if (!(isinf(lf[x]) && lf[x] > 0)) lse_bad++; continue; }
        double d = fabs((double)lf[x] - rl[x]);
        if (!(d <= 1e30)) lse_bad++; else if (d > else_) else_ = d;
    }
    bool same = memcmp(of.data(), of2.data(), of.size() * 4) == 0 && memcmp(lf.data(), lf2.data(), lf.size() * 4) == 0;
    long dm_bad = 0;
    if (want_dm) {
        uint8_t thr = fd_fa2_threshold(p.dropout_p);
        for (int b = 0; b < c.B; b++) for (int h = 0; h < c.H; h++) for (int i = 0; i < c.sq; i++) for (int j = 0; j < c.sk; j++) {
            size_t x = (((size_t)b * c.H + h) * c.sq + i) * c.sk + j;
            if (dm[x] != (uint8_t)fd_fa2_keep(p.seed, p.offset, thr, c.H, b, h, i, j)) dm_bad++;
        }
    }
    printf("%-34s flash %.3e  split %.3e  std %.3e  lse %.2e  nan %zu/%zu/%zu  det %d  dmask_bad %ld\n",
           c.name, ef, ek, es, else_, nf, nk, ns, same, dm_bad);
    CHECK(nf == 0 && ns == 0 && nk == 0, "%s: NaN/unwritten outputs", c.name);
    CHECK(lse_bad == 0 && else_ < 1e-3, "%s: LSE off (%d bad, max err %g)", c.name, lse_bad, else_);
    CHECK(ef <= 2.0 * es + 1e-6, "%s: flash error %g > 2 x standard %g", c.name, ef, es);
    if (ek >= 0) CHECK(ek <= 2.0 * es + 1e-6 || ek <= 2.0 * ef + 1e-6, "%s: split error %g vs std %g", c.name, ek, es);
    CHECK(same, "%s: flash not bitwise deterministic", c.name);
    CHECK(dm_bad == 0, "%s: dmask differs from fd_fa2_keep at %ld entries", c.name, dm_bad);
}

static void exp2_identity(size_t n)
{
    std::vector<float> x(n), y(n), y2(n);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-160.0f, 5.0f);
    for (size_t i = 0; i < n; i++) x[i] = i < 4096 ? -150.0f + 0.0375f * (float)i : u(rng);
    x[0] = -INFINITY; x[1] = 0.0f; x[2] = -149.5f; x[3] = -126.0f;
    char err[512];
    int rc = fd_cuda_exp2_portable_batch(x.data(), y.data(), n, err, sizeof err);
    CHECK(rc == 0, "exp2 batch: %s", err);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float h = fd_exp2_portable(x[i]);
        if (memcmp(&h, &y[i], 4)) { if (bad < 3) printf("  exp2 x=%a host %a dev %a\n", x[i], h, y[i]); bad++; }
    }
    rc = fd_cuda_exp2_hw_batch(x.data(), y2.data(), n, err, sizeof err);
    size_t hwdiff = 0;
    for (size_t i = 0; i < n; i++) if (memcmp(&y[i], &y2[i], 4)) hwdiff++;
    printf("exp2 portable host==device: %zu / %zu differ; portable vs hw exp2f differ on %zu\n", bad, n, hwdiff);
    CHECK(bad == 0, "fd_exp2_portable differs host vs device on %zu inputs", bad);
}

int main(int argc, char **argv)
{
    const bool quick = argc > 1 && !strcmp(argv[1], "quick");
    char name[256];
    if (fd_cuda_device_count() <= 0) { printf("no CUDA device: skipped\n"); return 0; }
    fd_cuda_device_name(name, sizeof name);
    printf("device: %s\nfp32 path: %s\n", name, fd_cuda_fp32_path());
    exp2_identity(quick ? (1u << 16) : (1u << 24));
    const fd_dtype F = FD_DT_FP16, Bf = FD_DT_BF16;
    const fd_mask_kind N0 = FD_MASK_NONE, TL = FD_MASK_CAUSAL_TL, BR = FD_MASK_CAUSAL_BR;
    std::vector<Case> cs = {
        {"fp16 d64 none 128x128", 1, 2, 2, 128, 128, 64, F, N0, 0, 128, 64, 0, 0, 1},
        {"bf16 d64 none 128x128", 1, 2, 2, 128, 128, 64, Bf, N0, 0, 128, 64, 0, 0, 1},
        {"fp16 d128 tl 200x333 gqa", 2, 4, 2, 200, 333, 128, F, TL, 0, 128, 64, 0, 0, 3},
        {"bf16 d128 br 113x203 mqa", 1, 4, 1, 113, 203, 128, Bf, BR, 0, 64, 64, 0, 0, 2},
        {"fp16 d32 br 300x100 (empty rows)", 1, 2, 2, 300, 100, 32, F, BR, 0, 64, 64, 0, 0, 2},
        {"fp16 d96 none 77x1023", 1, 2, 1, 77, 1023, 96, F, N0, 0, 128, 64, 1, 0, 4},
        {"bf16 d256 tl 129x257", 1, 2, 2, 129, 257, 256, Bf, TL, 0, 128, 64, 0, 0, 2},
        {"fp16 d72->96 none 65x65", 1, 1, 1, 65, 65, 72, F, N0, 0, 64, 64, 0, 0, 1},
        {"fp16 d40->64 tl 100x100 p_fp32", 1, 2, 2, 100, 100, 40, F, TL, 0, 128, 64, 0, 1, 1},
        {"fp16 d64 none 256x256 drop0.17", 2, 2, 2, 256, 256, 64, F, N0, 0.17, 128, 64, 0, 0, 2},
        {"bf16 d128 br 97x250 drop0.3 gqa", 1, 4, 2, 97, 250, 128, Bf, BR, 0.3, 64, 64, 1, 0, 3},
        {"fp16 d128 tl 128x128 drop0.1 pfp32", 1, 2, 2, 128, 128, 128, F, TL, 0.1, 128, 64, 1, 1, 1},
        {"fp32 d64 tl 100x150 drop0.2", 1, 2, 1, 100, 150, 64, FD_DT_FP32, TL, 0.2, 128, 64, 0, 0, 1},
        {"fp32 d128 none 64x64", 1, 2, 2, 64, 64, 128, FD_DT_FP32, N0, 0, 128, 64, 1, 0, 1},
    };
    unsigned seed = 1;
    for (auto &c : cs) {
        if (quick && seed > 6) break;
        run_case(c, seed++);
    }
    /* A rejected config must say why, before any launch. */
    {
        fd_problem p; memset(&p, 0, sizeof p);
        p.batch = 1; p.heads = 1; p.kv_heads = 1; p.seqlen_q = 8; p.seqlen_k = 8; p.head_dim = 300; p.dtype = F;
        std::vector<float> z(8 * 300, 0.5f), o(8 * 300), l(8);
        char err[512] = "";
        int rc = fd_cuda_flash_forward(&p, nullptr, z.data(), z.data(), z.data(), o.data(), l.data(), nullptr, nullptr, err, sizeof err);
        printf("head_dim 300 -> rc %d: %s\n", rc, err);
        CHECK(rc == -1 && strstr(err, "head_dim 300"), "head_dim 300 not rejected clearly");
    }
    printf("%s: %d failure(s)\n", g_fail ? "FAILED" : "ALL PASSED", g_fail);
    return g_fail ? 1 : 0;
}
