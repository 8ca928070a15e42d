/* fd_cuda_flash_bwd.cu: host side of the FlashAttention-2 style backward
 * (fd_cuda_flash_backward) and its small kernels: D' and lse * log2(e) per row (contract
 * steps 1-2), the dQ finish (step 4: the per-key-tile partials added in ascending tile
 * order in deterministic mode, or the atomicAdd accumulator, times srp, rounded), and the
 * GQA sum of dK/dV (step 5). The main kernel is fd_cuda_flash_bwd_kernel.cuh. Contract:
 * kernels/common/fd_bwd.h; design: docs/cuda.md ("Backward kernel"). */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "fd_cuda.h"
#include "fd_cuda_util.h"
#include "fd_bwd.h"
#include "fd_cuda_flash_bwd_kernel.cuh"

namespace fd_flash {

static constexpr float kLog2e = (float)1.4426950408889634073599246810018921; /* (float)M_LOG2E */

/* Step 1-2: one thread per (b, h, i). dout/o: dtype [B][Sq][H][dp]; lse: [B][H][Sq]. */
template <typename T>
__global__ void bwd_pre_kernel(const T *dout, const T *o, const float *lse, float *lse2, float *dpre,
                               int B, int H, int sq, int d, int dp, int dropout, float pk)
{
    const size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (size_t)B * H * sq) return;
    const int i = (int)(x % sq), h = (int)((x / sq) % H), b = (int)(x / ((size_t)sq * H));
    const size_t base = (((size_t)b * sq + i) * H + h) * dp;
    float acc = 0.0f;
    for (int c = 0; c < d; c++) acc = __fmaf_rn(DT<T>::to(dout[base + c]), DT<T>::to(o[base + c]), acc);
    if (dropout) acc = __fmul_rn(acc, pk);
    dpre[x] = acc;
    lse2[x] = __fmul_rn(lse[x], kLog2e);
}

/* Step 4: dQ = round(acc * srp). One thread per (b, i, h, c) of [B][Sq][H][dp]. */
template <typename T>
__global__ void bwd_dq_kernel(const BwdParams P, int bc, T *dq)
{
    const size_t n = (size_t)P.B * P.sq * P.H * P.dp;
    const size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    const int c = (int)(x % P.dp);
    const int i = (int)((x / ((size_t)P.dp * P.H)) % P.sq);
    if (c >= P.d) { dq[x] = DT<T>::from(0.0f); return; }
    float acc;
    if (P.deterministic) {
        const int m = i / BwdTraits<64, 64>::BR;
        acc = 0.0f;
        for (int nb = 0; nb < P.ntn; nb++) {
            /* the key tiles visiting query tile m (an interval of tiles, ascending), by the
             * rule the main kernel and the replay use: only their buffers were written */
            int q0, q1;
            fd_bwd_qtiles(P.mask, P.win, P.wl, P.wr, P.sq, P.sk, BwdTraits<64, 64>::BR, bc, nb, &q0, &q1);
            if (q0 > m) break; /* q0 rises with nb */
            if (m < q1) acc = __fadd_rn(acc, P.dq_acc[(size_t)nb * n + x]);
        }
    } else {
        acc = P.dq_acc[x];
    }
    dq[x] = DT<T>::from(__fmul_rn(acc, P.srp));
}

/* Step 5: g = 0.0f; g += dX_h over the group's heads ascending; rounded once. One thread
 * per (b, j, hk, c) of [B][Sk][Hk][dp]. */
template <typename T>
__global__ void bwd_gqa_kernel(const BwdParams P, T *dk, T *dv)
{
    const size_t n = (size_t)P.B * P.sk * P.Hk * P.dp;
    const size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    const int c = (int)(x % P.dp);
    const int hk = (int)((x / P.dp) % P.Hk);
    const size_t bj = x / ((size_t)P.dp * P.Hk); /* b * sk + j */
    float gk = 0.0f, gv = 0.0f;
    if (c < P.d)
        for (int hh = hk * P.h_per_kv; hh < (hk + 1) * P.h_per_kv; hh++) {
            const size_t y = (bj * P.H + hh) * P.dp + c;
            gk = __fadd_rn(gk, P.dk_h[y]);
            gv = __fadd_rn(gv, P.dv_h[y]);
        }
    dk[x] = DT<T>::from(gk);
    dv[x] = DT<T>::from(gv);
}

template <typename T>
static int bwd_small(int which, const BwdParams &P, int bc, const void *dout, const void *o,
                     const float *lse, void *dq, void *dk, void *dv, cudaStream_t st, char *err,
                     size_t errlen, float pk)
{
    const unsigned nt = 256;
    if (which == 0) {
        const size_t n = (size_t)P.B * P.H * P.sq;
        bwd_pre_kernel<T><<<(unsigned)((n + nt - 1) / nt), nt, 0, st>>>(
            static_cast<const T *>(dout), static_cast<const T *>(o), lse, const_cast<float *>(P.lse2),
            const_cast<float *>(P.dpre), P.B, P.H, P.sq, P.d, P.dp, P.dropout, pk);
    } else if (which == 1) {
        const size_t n = (size_t)P.B * P.sq * P.H * P.dp;
        bwd_dq_kernel<T><<<(unsigned)((n + nt - 1) / nt), nt, 0, st>>>(P, bc, static_cast<T *>(dq));
    } else {
        const size_t n = (size_t)P.B * P.sk * P.Hk * P.dp;
        bwd_gqa_kernel<T><<<(unsigned)((n + nt - 1) / nt), nt, 0, st>>>(P, static_cast<T *>(dk),
                                                                         static_cast<T *>(dv));
    }
    FD_LAUNCH_CHECK();
    return 0;
}

} // namespace fd_flash

using namespace fd_flash;

extern "C" int fd_cuda_flash_backward(const fd_problem *p, const fd_cuda_cfg *cfg_in,
                                      const struct fd_bwd_cfg *bcfg_in, const float *q,
                                      const float *k, const float *v, const float *o,
                                      const float *lse, const float *dout, float *dq, float *dk,
                                      float *dv, fd_cuda_timing *tm, char *err, size_t errlen)
{
    if (tm) { tm->ms_median = tm->ms_min = 0.0f; tm->repeats = 0; }
    if (fd_cu_check_problem(p, err, errlen)) return -1;
    if (!q || !k || !v || !o || !lse || !dout || !dq || !dk || !dv) FD_FAIL("null tensor argument");
    if (p->dtype == FD_DT_FP32)
        FD_FAIL("cuda-flash backward: fp32 inputs unsupported (the backward runs on fp16/bf16 "
                "tensor cores only)");
    fd_cuda_cfg cfg;
    fd_cuda_cfg_default(&cfg);
    if (cfg_in) cfg = *cfg_in;
    fd_bwd_cfg bc;
    fd_bwd_cfg_default(&bc);
    if (bcfg_in) bc = *bcfg_in;
    if (bc.br == 0 && bc.bc == 0) fd_bwd_tile_default(p->head_dim, &bc.br, &bc.bc);
    const int dp = fd_cu_padded_dim(p->head_dim);
    if (bc.br != 64 || !((bc.bc == 64 && dp <= 128) || (bc.bc == 128 && (dp == 96 || dp == 128)) ||
                         (bc.bc == 32 && dp >= 64)))
        FD_FAIL("cuda-flash backward: tile (%d, %d) unsupported for head_dim %d: supported (br, bc) = "
                "(64, 64) for head_dim <= 128, (64, 128) for head_dim 65..128, (64, 32) for head_dim 33..256",
                bc.br, bc.bc, p->head_dim);
    if (bc.dq_mode != FD_DQ_ATOMIC && bc.dq_mode != FD_DQ_DETERMINISTIC)
        FD_FAIL("cuda-flash backward: dq_mode %d unknown", (int)bc.dq_mode);
    if (bc.bugs != 0) FD_FAIL("cuda-flash backward: bugs 0x%x are a replay-only model", bc.bugs);
    if (cfg.exp2_mode != 0 && cfg.exp2_mode != 1) FD_FAIL("exp2_mode %d unsupported (0 hw, 1 portable)", cfg.exp2_mode);
    if (cfg.p_fp32) FD_FAIL("cuda-flash backward: p_fp32 unsupported (P is rounded to the dtype per fd_bwd.h)");
    if (cfg.repeats < 0 || cfg.repeats > 100000) FD_FAIL("repeats %d out of range", cfg.repeats);
    /* FD_BWD_VARIANT (docs/cuda.md, "Backward pipelining"): "bulk" (or unset; the default
     * since 2026-12-03: 239 against 215 TFLOP/s at N = 4096, d = 128, fp16, one run) runs the bc = 128
     * kernel with its fast elementwise step and the atomic mode's dQ partials of whole tiles
     * added by the TMA unit's bulk reductions; "new" the same kernel with the lanes' 16-byte
     * atomics; "old" the kernel as measured before the fast step. The same bits of every dQ
     * partial, dK and dV (gpu_test_bwd checks old and new against the replay and bulk against
     * new); the deterministic mode and the other tiles (bc 32, 64) run new's code in bulk. */
    int variant = FD_BWD_BULK;
    if (const char *ev = getenv("FD_BWD_VARIANT")) {
        if (strcmp(ev, "old") == 0) variant = FD_BWD_OLD;
        else if (strcmp(ev, "new") == 0) variant = FD_BWD_NEW;
        else if (strcmp(ev, "bulk") == 0 || ev[0] == '\0') variant = FD_BWD_BULK;
        else FD_FAIL("FD_BWD_VARIANT=%s unknown: \"old\", \"new\" or \"bulk\"", ev);
    }
    if (fd_cuda_device_count() <= 0) FD_FAIL("no CUDA device");

    const int B = p->batch, H = p->heads, Hk = p->kv_heads, sq = p->seqlen_q, sk = p->seqlen_k, d = p->head_dim;
    const int ntn = (sk + bc.bc - 1) / bc.bc;
    if ((long)B * H > 65535) FD_FAIL("batch * heads = %ld exceeds the grid limit 65535", (long)B * H);
    const bool det = bc.dq_mode == FD_DQ_DETERMINISTIC;
    const size_t nqf = (size_t)B * sq * H * dp, nkf = (size_t)B * sk * H * dp, nl = (size_t)B * H * sq;

    fd_dbuf gq, gk, gv, go, gdo, gl, gl2, gdp, gacc, gdkh, gdvh, gdq, gdk, gdv;
    if (fd_cu_upload(gq, q, B, sq, H, d, dp, p->dtype, "Q", err, errlen)) return -1;
    if (fd_cu_upload(gk, k, B, sk, Hk, d, dp, p->dtype, "K", err, errlen)) return -1;
    if (fd_cu_upload(gv, v, B, sk, Hk, d, dp, p->dtype, "V", err, errlen)) return -1;
    if (fd_cu_upload(go, o, B, sq, H, d, dp, p->dtype, "O", err, errlen)) return -1;
    if (fd_cu_upload(gdo, dout, B, sq, H, d, dp, p->dtype, "dO", err, errlen)) return -1;
    if (fd_dalloc(gl, nl * 4, "LSE", err, errlen)) return -1;
    FD_CU(cudaMemcpy(gl.p, lse, nl * 4, cudaMemcpyHostToDevice));
    if (fd_dalloc_guarded(gl2, nl * 4, "LSE * log2(e)", err, errlen)) return -1;
    if (fd_dalloc_guarded(gdp, nl * 4, "D'", err, errlen)) return -1;
    if (fd_dalloc_guarded(gacc, (det ? (size_t)ntn : 1) * nqf * 4,
                  det ? "dQ per-key-tile partials" : "dQ accumulator", err, errlen)) return -1;
    /* GQA only: dK / dV per query head in binary32 for bwd_gqa_kernel; with one query head a
     * key head the main kernel writes dK / dV itself (store_dkdv) and these stay unallocated
     * (null in BwdParams; fd_dguard_check passes an unallocated buffer) */
    const bool gqa = H != Hk;
    if (gqa && fd_dalloc_guarded(gdkh, nkf * 4, "dK per query head", err, errlen)) return -1;
    if (gqa && fd_dalloc_guarded(gdvh, nkf * 4, "dV per query head", err, errlen)) return -1;
    if (fd_dalloc_guarded(gdq, nqf * 2, "dQ", err, errlen)) return -1;
    if (fd_dalloc_guarded(gdk, (size_t)B * sk * Hk * dp * 2, "dK", err, errlen)) return -1;
    if (fd_dalloc_guarded(gdv, (size_t)B * sk * Hk * dp * 2, "dV", err, errlen)) return -1;
    /* Poison: anything the kernels fail to write reads back as NaN. */
    FD_CU(cudaMemset(gdq.p, 0xff, gdq.bytes));
    FD_CU(cudaMemset(gdk.p, 0xff, gdk.bytes));
    FD_CU(cudaMemset(gdv.p, 0xff, gdv.bytes));
    if (gqa) {
        FD_CU(cudaMemset(gdkh.p, 0xff, gdkh.bytes));
        FD_CU(cudaMemset(gdvh.p, 0xff, gdvh.bytes));
    }

    /* FA2's params (flash_api.cpp), as the forward and the replay take them: p_dropout =
     * 1.f - p in binary32, rp = 1.f / p_dropout, scale_softmax_log2 = scale * M_LOG2E as a
     * double product stored as float, scale_softmax_rp_dropout = rp * scale (binary32). */
    const float pk = p->dropout_p > 0.0 ? 1.0f - (float)p->dropout_p : 1.0f;
    const float rp = p->dropout_p > 0.0 ? 1.0f / pk : 1.0f;
    BwdParams P;
    memset(&P, 0, sizeof P);
    P.q = gq.p; P.k = gk.p; P.v = gv.p; P.dout = gdo.p;
    P.lse2 = gl2.as<float>(); P.dpre = gdp.as<float>();
    P.dq_acc = gacc.as<float>(); P.dk_h = gdkh.as<float>(); P.dv_h = gdvh.as<float>();
    /* one query head a key head: the main kernel writes dK, dV in the dtype (store_dkdv), the
     * bits bwd_gqa_kernel would give; with GQA it sums dk_h / dv_h over the group */
    if (!gqa) { P.dk_out = gdk.p; P.dv_out = gdv.p; }
    P.B = B; P.H = H; P.Hk = Hk; P.sq = sq; P.sk = sk; P.d = d; P.dp = dp; P.h_per_kv = H / Hk;
    P.mask = (int)p->mask;
    /* FA2's folded scales (fd_mods.h, fd_bwd.h): scale_softmax is the softcap when there is
     * one, and scale_softmax_log2 and scale_softmax_rp_dropout are built from it */
    const float scale_sm = p->softcap > 0.0f ? p->softcap : p->softmax_scale;
    P.scale_log2 = (float)((double)scale_sm * 1.4426950408889634073599246810018921);
    P.rp = rp;
    P.srp = rp * scale_sm;
    P.mods = p->window || p->softcap > 0.0f || p->alibi;
    P.win = p->window ? 1 : 0; P.wl = p->window_left; P.wr = p->window_right;
    P.cap_in = p->softcap > 0.0f ? p->softmax_scale / p->softcap : 0.0f;
    fd_dbuf dsl;
    if (p->alibi) {
        if (fd_alibi_slopes_upload(p, scale_sm, dsl, err, errlen)) return -1;
        P.slope_raw = dsl.as<float>();
    }
    P.dropout = p->dropout_p > 0.0;
    P.thr = fd_fa2_threshold(p->dropout_p);
    P.seed = p->seed; P.offset = p->offset;
    P.exp2_mode = cfg.exp2_mode;
    P.deterministic = det;
    P.ntn = ntn;

    const bool f16 = p->dtype == FD_DT_FP16;
    auto small = [&](int which, cudaStream_t st) -> int {
        return f16 ? bwd_small<__half>(which, P, bc.bc, gdo.p, go.p, gl.as<float>(), gdq.p, gdk.p, gdv.p, st, err, errlen, pk)
                   : bwd_small<__nv_bfloat16>(which, P, bc.bc, gdo.p, go.p, gl.as<float>(), gdq.p, gdk.p, gdv.p, st, err, errlen, pk);
    };
    auto launch = [&]() -> int {
        if (small(0, 0)) return -1;
        if (!det) FD_CU(cudaMemsetAsync(gacc.p, 0, gacc.bytes, 0));
        int rc = f16 ? bwd_launch_f16(P, bc.bc, variant, 0, err, errlen)
                     : bwd_launch_bf16(P, bc.bc, variant, 0, err, errlen);
        if (rc) return rc;
        if (small(1, 0)) return -1;
        if (!P.dk_out && small(2, 0)) return -1;
        return 0;
    };
    if (launch()) return -1;
    FD_CU(cudaDeviceSynchronize());
    if (fd_time_repeats(cfg.repeats, launch, tm, err, errlen)) return -1;
    FD_CU(cudaDeviceSynchronize());
    if (fd_dguard_check(gl2, "LSE * log2(e)", err, errlen) || fd_dguard_check(gdp, "D'", err, errlen) ||
        fd_dguard_check(gacc, det ? "the dQ per-key-tile partials" : "the dQ accumulator", err, errlen) ||
        fd_dguard_check(gdkh, "dK per query head", err, errlen) || fd_dguard_check(gdvh, "dV per query head", err, errlen) ||
        fd_dguard_check(gdq, "dQ", err, errlen) || fd_dguard_check(gdk, "dK", err, errlen) ||
        fd_dguard_check(gdv, "dV", err, errlen))
        return -1;
    if (fd_cu_download_o(dq, gdq, B, sq, H, d, dp, p->dtype, err, errlen)) return -1;
    if (fd_cu_download_o(dk, gdk, B, sk, Hk, d, dp, p->dtype, err, errlen)) return -1;
    if (fd_cu_download_o(dv, gdv, B, sk, Hk, d, dp, p->dtype, err, errlen)) return -1;
    return 0;
}
