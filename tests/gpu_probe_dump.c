/* gpu_probe_dump: runs crafted and random dot products through the tensor-core probes
 * (kernels/cuda/fd_cuda_wgmma.cu: wgmma fp16/bf16, mma.sync and wgmma FP8) and writes
 * the inputs and the hardware's results in the format of tests/data/tensor-core-h100
 * (NUMERICS.md "data/tensor-core-h100 format"), one folder per instruction, format and K:
 *   OUTDIR/<instr>-<fmt>-k<K>/a_H200_<fmt>.txt   n lines of K hex words (binary32 encodings)
 *                            b_H200_<fmt>.txt   the same for b
 *                            c_H200_fp32.txt    n accumulators as 32-character bit strings
 *                            d_H200_fp32.txt    n hardware results d = a.b + c, bit strings
 *                            kind_H200.txt      the generator's category of each line
 * (the published set has K = 16; here a line holds the K terms of one dot product, the
 * hardware chaining K / instruction-K instructions in K order through one accumulator).
 * Also OUTDIR/selfcheck.txt (descriptor layout and fragment checks with exact integer
 * sums), OUTDIR/models.txt (how many blocks each candidate model reproduces, per set) and,
 * when the published H100 inputs are found (FD_TEST_DATA or tests/data), the folders
 * wgmma-fp16-k16-h100in and wgmma-bf16-k16-h100in: those inputs through wgmma, with a
 * count of results identical to the H100's mma.sync.
 *
 *   gpu_probe_dump OUTDIR [--quick]
 * Exit status: 0 done; 1 a CUDA or file error; 2 usage; 3 no CUDA GPU; 4 a self-check
 * failed (the data is still written; read it with care). Needs libc and cudart only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fd_probe.h"

static int mkdir_p(const char *p)
{
    if (mkdir(p, 0755) == 0 || errno == EEXIST) return 0;
    fprintf(stderr, "gpu_probe_dump: cannot create %s: %s\n", p, strerror(errno));
    return -1;
}

static void bits32(FILE *f, float x)
{
    uint32_t u = fd_f32_bits(x);
    char s[33];
    for (int i = 0; i < 32; i++) s[i] = (char)('0' + ((u >> (31 - i)) & 1));
    s[32] = 0;
    fprintf(f, "%s\n", s);
}

static int write_set(const char *outdir, const char *name, const pf_set *s)
{
    char dir[1024], p[1200];
    snprintf(dir, sizeof dir, "%s/%s", outdir, name);
    if (mkdir_p(dir)) return -1;
    const char *fmt = pf_fmts[s->fi].name;
    for (int which = 0; which < 5; which++) {
        static const char *const pat[5] = {"a_H200_%s.txt", "b_H200_%s.txt", "c_H200_fp32.txt", "d_H200_fp32.txt", "kind_H200.txt"};
        char fn[64];
        snprintf(fn, sizeof fn, pat[which], fmt);
        snprintf(p, sizeof p, "%s/%s", dir, fn);
        /* the wgmma set of a format and K has the mma.sync set's inputs (same generator and
         * seed): a hard link instead of a second copy (tar stores it once) */
        if (which != 3 && s->cat && strcmp(s->instr, "wgmma") == 0) {
            char twin[1200];
            snprintf(twin, sizeof twin, "%s/mma-%s-k%d/%s", outdir, fmt, s->k, fn);
            if (access(twin, R_OK) == 0 && link(twin, p) == 0) continue;
        }
        FILE *f = fopen(p, "w");
        if (!f) { fprintf(stderr, "gpu_probe_dump: cannot write %s: %s\n", p, strerror(errno)); return -1; }
        for (int i = 0; i < s->n; i++) {
            if (which < 2) {
                const float *x = (which == 0 ? s->a : s->b) + (size_t)i * (size_t)s->k;
                for (int q = 0; q < s->k; q++) fprintf(f, "%08x ", (unsigned)fd_f32_bits(x[q]));
                fprintf(f, "\n");
            } else if (which == 2) bits32(f, s->c[i]);
            else if (which == 3) bits32(f, s->d[i]);
            else fprintf(f, "%s\n", s->cat ? pf_cat_names[s->cat[i]] : "h100-published");
        }
        if (fclose(f)) { fprintf(stderr, "gpu_probe_dump: writing %s failed\n", p); return -1; }
    }
    return 0;
}

/* The published H100 inputs (16 terms) through wgmma k16; -1 when the files are absent. */
static int h100_inputs(const char *outdir, int fi, FILE *log, char *err, size_t errlen)
{
    const char *root = getenv("FD_TEST_DATA");
    if (!root || !*root) root = "tests/data";
    const char *fmt = pf_fmts[fi].name;
    enum { N = 5000 };
    pf_set s = {"wgmma", fi, 16, 16, N, calloc(N * 16, 4), calloc(N * 16, 4), calloc(N, 4), calloc(N, 4), NULL};
    uint32_t *ref = calloc(N, 4);
    int rc = -1;
    char p[1024];
    FILE *fa, *fb, *fc, *fdd;
    snprintf(p, sizeof p, "%s/tensor-core-h100/%s/a_H100_%s.txt", root, fmt, fmt); fa = fopen(p, "r");
    snprintf(p, sizeof p, "%s/tensor-core-h100/%s/b_H100_%s.txt", root, fmt, fmt); fb = fopen(p, "r");
    snprintf(p, sizeof p, "%s/tensor-core-h100/%s/c_H100_fp32.txt", root, fmt); fc = fopen(p, "r");
    snprintf(p, sizeof p, "%s/tensor-core-h100/%s/d_H100_fp32.txt", root, fmt); fdd = fopen(p, "r");
    if (!fa || !fb || !fc || !fdd || !s.a || !s.b || !s.c || !s.d || !ref) {
        fprintf(log, "published H100 %s inputs not found under %s: skipped\n", fmt, root);
        goto out;
    }
    for (int i = 0; i < N; i++) {
        char bs[64];
        for (int q = 0; q < 16; q++) {
            unsigned long u;
            if (fscanf(fa, "%lx", &u) != 1) goto bad;
            s.a[i * 16 + q] = fd_bits_f32((uint32_t)u);
            if (fscanf(fb, "%lx", &u) != 1) goto bad;
            s.b[i * 16 + q] = fd_bits_f32((uint32_t)u);
        }
        if (fscanf(fc, "%63s", bs) != 1 || strlen(bs) != 32) goto bad;
        s.c[i] = fd_bits_f32((uint32_t)strtoul(bs, NULL, 2));
        if (fscanf(fdd, "%63s", bs) != 1 || strlen(bs) != 32) goto bad;
        ref[i] = (uint32_t)strtoul(bs, NULL, 2);
    }
    if (pf_run(&s, err, errlen)) { rc = -2; goto out; }
    {
        int same = 0, lib = 0;
        for (int i = 0; i < N; i++) {
            same += fd_f32_bits(s.d[i]) == ref[i];
            lib += pf_same(fd_tc16_block_dt(s.a + i * 16, s.b + i * 16, s.c[i], fi == PF_BF16 ? FD_DT_BF16 : FD_DT_FP16), s.d[i]);
        }
        char name[64];
        snprintf(name, sizeof name, "wgmma-%s-k16-h100in", fmt);
        fprintf(log, "%s: wgmma gives the H100 mma.sync result in %d of %d published blocks; FD_ACC_TC16 reproduces %d\n",
                name, same, N, lib);
        printf("%s: wgmma == H100 mma.sync in %d/%d, FD_ACC_TC16 %d/%d\n", name, same, N, lib, N);
        rc = write_set(outdir, name, &s) ? -2 : 0;
    }
    goto out;
bad:
    fprintf(log, "published H100 %s inputs unreadable: skipped\n", fmt);
out:
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    if (fc) fclose(fc);
    if (fdd) fclose(fdd);
    free(s.a); free(s.b); free(s.c); free(s.d); free(ref);
    return rc;
}

/* Blocks per set: fewer for long K, so the packed data stays below 16 MB. The same n
 * for mma.sync and wgmma of one K: their inputs are identical. */
static int set_blocks(int k, int quick)
{
    if (quick) return 500;
    return k <= 32 ? 4000 : k <= 64 ? 2000 : k <= 128 ? 1000 : 600;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: gpu_probe_dump OUTDIR [--quick]\n");
        return 2;
    }
    const char *outdir = argv[1];
    const int quick = argc > 2 && strcmp(argv[2], "--quick") == 0;
    char dev[256], err[1024];
    if (fd_cuda_probe_device(dev, sizeof dev) <= 0) {
        fprintf(stderr, "gpu_probe_dump: no CUDA GPU (nothing measured)\n");
        return 3;
    }
    if (mkdir_p(outdir)) return 1;
    char p[1200];
    snprintf(p, sizeof p, "%s/selfcheck.txt", outdir);
    FILE *sc = fopen(p, "w");
    snprintf(p, sizeof p, "%s/models.txt", outdir);
    FILE *mf = fopen(p, "w");
    if (!sc || !mf) { fprintf(stderr, "gpu_probe_dump: cannot write into %s\n", outdir); return 1; }
    time_t now = time(NULL);
    char ts[64];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    fprintf(sc, "device: %s; %s\n", dev, ts);
    fprintf(mf, "device: %s; %s\n", dev, ts);
    printf("gpu_probe_dump: %s\n", dev);

    int status = 0;
    const int L = pf_pick_layout(sc, err, sizeof err);
    if (L == -2) { fprintf(stderr, "gpu_probe_dump: %s\n", err); return 1; }
    if (L < 0) { fprintf(sc, "WGMMA LAYOUT SELF-CHECK FAILED under both readings: wgmma data below is suspect\n"); status = 4; }
    else fprintf(sc, "wgmma descriptor reading used: %d (%s)\n", L, L == 0 ? "LBO = K-direction core-matrix offset, as CUTLASS" : "LBO and SBO swapped");
    for (int e5 = 0; e5 < 2; e5++) {
        int r = pf_selfcheck("mma", e5 ? PF_E5M2 : PF_E4M3, 128, err, sizeof err);
        if (r < 0) { fprintf(stderr, "gpu_probe_dump: %s\n", err); return 1; }
        fprintf(sc, "self-check mma.sync %s k128: %s %s\n", e5 ? "e5m2" : "e4m3", r ? "exact" : "WRONG", pf_selfcheck_note);
        int r2 = pf_selfcheck("wgmma", e5 ? PF_E5M2 : PF_E4M3, 512, err, sizeof err);
        if (r2 < 0) { fprintf(stderr, "gpu_probe_dump: %s\n", err); return 1; }
        fprintf(sc, "self-check wgmma %s k512: %s %s\n", e5 ? "e5m2" : "e4m3", r2 ? "exact" : "WRONG", pf_selfcheck_note);
        if (!r || !r2) status = 4;
    }
    fflush(sc);

    struct { const char *instr; int fi, k; } sets[] = {
        {"mma", PF_FP16, 16},   {"mma", PF_FP16, 64},   {"mma", PF_BF16, 16},   {"mma", PF_BF16, 64},
        {"wgmma", PF_FP16, 16}, {"wgmma", PF_FP16, 32}, {"wgmma", PF_FP16, 64}, {"wgmma", PF_FP16, 256},
        {"wgmma", PF_BF16, 16}, {"wgmma", PF_BF16, 32}, {"wgmma", PF_BF16, 64}, {"wgmma", PF_BF16, 256},
        {"mma", PF_E4M3, 32},   {"mma", PF_E4M3, 64},   {"mma", PF_E4M3, 128},
        {"mma", PF_E5M2, 32},   {"mma", PF_E5M2, 64},   {"mma", PF_E5M2, 128},
        {"wgmma", PF_E4M3, 32}, {"wgmma", PF_E4M3, 64}, {"wgmma", PF_E4M3, 128}, {"wgmma", PF_E4M3, 256}, {"wgmma", PF_E4M3, 512},
        {"wgmma", PF_E5M2, 32}, {"wgmma", PF_E5M2, 64}, {"wgmma", PF_E5M2, 128}, {"wgmma", PF_E5M2, 256}, {"wgmma", PF_E5M2, 512},
    };
    const int nsets = (int)(sizeof sets / sizeof sets[0]);
    printf("%-20s %6s %8s %8s  %s\n", "set", "blocks", "TC16", "best", "best model");
    for (int j = 0; j < nsets; j++) {
        pf_set s;
        const int n = set_blocks(sets[j].k, quick);
        if (pf_set_alloc(&s, sets[j].instr, sets[j].fi, sets[j].k, n, 0x9d2c5680u)) { fprintf(stderr, "gpu_probe_dump: out of memory\n"); return 1; }
        char name[64];
        pf_set_name(&s, name, sizeof name);
        if (pf_run(&s, err, sizeof err)) {
            fprintf(stderr, "gpu_probe_dump: %s: %s\n", name, err);
            fprintf(mf, "%s: FAILED: %s\n", name, err);
            pf_set_free(&s);
            status = status ? status : 1;
            continue;
        }
        if (write_set(outdir, name, &s)) return 1;
        int best = 0;
        char bname[64];
        const int lib = pf_judge(&s, mf, &best, bname, sizeof bname);
        fflush(mf);
        printf("%-20s %6d %8d %8d  %s\n", name, s.n, lib, best, bname);
        fflush(stdout);
        pf_set_free(&s);
    }
    /* mma.sync against wgmma on the same inputs */
    for (int fi = PF_FP16; fi <= PF_E5M2; fi++)
        for (int k = fi < PF_E4M3 ? 16 : 32; k <= (fi < PF_E4M3 ? 64 : 128); k *= 2) {
            pf_set m, w;
            const int n = set_blocks(k, quick);
            if (pf_set_alloc(&m, "mma", fi, k, n, 0x9d2c5680u) || pf_set_alloc(&w, "wgmma", fi, k, n, 0x9d2c5680u)) return 1;
            if (pf_run(&m, err, sizeof err) || pf_run(&w, err, sizeof err)) { fprintf(stderr, "gpu_probe_dump: %s\n", err); return 1; }
            int same = 0, first = -1;
            for (int i = 0; i < n; i++) {
                const int e = pf_same(m.d[i], w.d[i]);
                same += e;
                if (!e && first < 0) first = i;
            }
            fprintf(mf, "mma.sync vs wgmma %s k%d: identical results in %d of %d blocks", pf_fmts[fi].name, k, same, n);
            if (first >= 0)
                fprintf(mf, " (first difference: line %d, %s, mma.sync %a, wgmma %a)", first + 1, pf_cat_names[m.cat[first]],
                        (double)m.d[first], (double)w.d[first]);
            fprintf(mf, "\n");
            printf("mma.sync vs wgmma %s k%d: identical %d/%d\n", pf_fmts[fi].name, k, same, n);
            pf_set_free(&m); pf_set_free(&w);
        }
    for (int fi = PF_FP16; fi <= PF_BF16; fi++) {
        int r = h100_inputs(outdir, fi, mf, err, sizeof err);
        if (r == -2) { fprintf(stderr, "gpu_probe_dump: %s\n", err); status = status ? status : 1; }
    }
    fclose(mf);
    fclose(sc);
    snprintf(p, sizeof p, "%s/selfcheck.txt", outdir);
    if (status == 4) fprintf(stderr, "gpu_probe_dump: a self-check failed: see %s\n", p);
    return status;
}
