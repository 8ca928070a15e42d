/* fd_bwd.h: the attention backward pass: its configuration and the numerics contract
 * shared by the CPU replay (kernels/cpu/fd_cpu_bwd.h) and the CUDA kernel (fd_cuda.h),
 * compiled for host and device alike.
 *
 * Mathematics (P = softmax(scale S) undropped, Z the FA2 keep mask, r = 1/(1-p)):
 *   O  = (P o Z r) V,   dV = (P o Z r)^T dO,   dP = (dO V^T) o Z r,
 *   D_i = sum_j P_ij dP_ij = sum_d dO_id O_id,  dS = P o (dP - D),
 *   dQ = scale dS K,    dK = scale dS^T Q      (GQA: dK, dV summed over the group's heads).
 *
 * Kernel arithmetic (FlashAttention-2's backward; the replay reproduces it bit for bit in
 * deterministic mode). Inputs: q, k, v, dO in the dtype; O the backend's own forward
 * output (dtype), lse its forward LSE (binary32, natural log, +Inf for rows with no key).
 * With pk = (float)(1 - p), rp = 1.0f / pk, srp = rp * scale (binary32 operations; p = 0
 * gives pk = rp = 1, srp = scale):
 *  1. D'_i = (fmaf chain over d = 0..D-1 of dO_id * O_id from 0), then D'_i *= pk when p > 0
 *     (FA2's dot_do_o: D is taken from the *stored, rounded* O).
 *  2. lse2_i = lse_i * (float)M_LOG2E.
 *  3. Key tiles n of bc keys; for each, the query tiles m of br rows that see at least one
 *     key of tile n, visited from the last to the first (FA2's m_block loop). For row i
 *     of tile m and key j of tile n:
 *       S_ij  = fd_dot_acc_dt(FD_ACC_TC16, q_i, k_j, D, 0)        (16-term blocks over d)
 *       P_ij  = visible(i, j) && lse_i finite ? exp2(fmaf(S_ij, scale_log2, -lse2_i)) : 0
 *               (exp2: cfg exp2_mode, as the forward; scale_log2 = scale * (float)M_LOG2E)
 *       dP_ij = fd_dot_acc_dt(FD_ACC_TC16, dO_i, v_j, D, 0)
 *       dS_ij = P_ij * (kept ? dP_ij - D'_i : -D'_i)              (binary32, no fma)
 *       Pv_ij = round_dtype(kept ? P_ij : 0),  dSr_ij = round_dtype(dS_ij)
 *     dV_j += sum_i Pv_ij dO_i and dK_j += sum_i dSr_ij q_i: per key j and column d, the
 *     rows of tile m in ascending order, 16-row TC16 blocks (a short block padded with
 *     zeros) chained onto the running binary32 accumulator (from 0 at the first tile).
 *     dQ partial of (m, n): part_id = TC16 chain over the keys of tile n in ascending
 *     order (16 at a time, padded) of dSr_ij k_jd, from 0.
 *  4. dQ_id = round_dtype(acc * srp), acc = 0.0f + part(n1) + part(n2) + ... over the key
 *     tiles that visited tile m, added in binary32 in the dQ order: ascending n in
 *     deterministic mode (each key tile writes its partial to its own buffer; a second
 *     pass adds them in order); in atomic mode the kernel adds them with atomicAdd as
 *     blocks finish, and the replay adds them in the order cfg names (ascending,
 *     descending, or a permutation drawn from order_seed per query tile).
 *  5. Per query head h: dK_h = acc_dk * srp, dV_h = acc_dv * rp (binary32); the kv head's
 *     gradient is g = 0.0f; g += dX_h for the group's heads in ascending order; rounded
 *     to the dtype once. Rows with no visible key give dQ = 0; keys no row sees give 0.
 *
 * Precisions (where the text above leaves a choice; each is FA2's flash_bwd_kernel.h /
 * flash_api.cpp reading, and the CPU replay, kernels/cpu/fd_cpu_flash_bwd.c, does this):
 *  - Constants: pk = 1.0f - (float)p (FA2's p_dropout = 1.f - p_dropout, p a float; the
 *    forward's keep), rp = 1.0f / pk, srp = rp * scale, binary32. scale_log2 is FA2's
 *    scale_softmax_log2, the float of the double product: (float)((double)scale *
 *    M_LOG2E), the same float the forward replay uses; not the binary32 product of
 *    scale and (float)M_LOG2E. lse2_i = lse_i * (float)M_LOG2E is a binary32 product.
 *  - P_ij = 0, without computing S_ij, when (i, j) is not visible or lse_i is not finite
 *    (+Inf: a row with no key; NaN). Otherwise exp2f (FD_EXP2_LIBM) or fd_exp2_portable
 *    (FD_EXP2_PORTABLE) of the one fmaf, as cfg->exp2_mode says.
 *  - kept = p == 0 || fd_fa2_keep(seed, offset, fd_fa2_threshold(p), heads, b, h, i, j),
 *    h the query head: the forward's mask for the same element.
 *  - dP_ij and dS_ij are computed for every existing (i < s_q, j < s_k) pair of a visited
 *    tile pair, visible or not (the MMA computes them all): a masked pair has P = 0 and
 *    dS = P * (...) = +-0 (NaN only if dP - D' is not finite). The subtraction dP - D'
 *    and the product are separate binary32 operations (no fma). Rows beyond s_q and keys
 *    beyond s_k do not exist: they are the zero padding of the TC16 blocks.
 *  - Query tile m visits key tile n iff some row of m sees some key of n; the masks are
 *    prefixes, so m visits n = 0 .. ceil(nv / bc) - 1, nv the visible key count of m's
 *    last row (FA2's m_block_min / n_block_max). A pair that is not visited adds nothing
 *    (no dQ partial, no dK/dV step).
 *  - The dK/dV accumulators chain the unscaled products (dSr q, Pv dO) over the query
 *    tiles m in descending order; the dQ partial and the chain are fd_dot_acc_dt with
 *    FD_ACC_TC16 and the dtype (16 terms per block from the tile's first row / key).
 *  - dQ order, FD_DQ_ORDER_SHUFFLE: query tile t = (b * heads + h) * ceil(s_q / br) + m
 *    has perm = (0, 1, ..., cnt - 1) over its cnt visited key tiles, shuffled by
 *    Fisher-Yates from the end: for a = cnt - 1 down to 1, j = splitmix64(&s) % (a + 1),
 *    swap perm[a] and perm[j], with s = order_seed + 0x9E3779B97F4A7C15 * t and
 *    splitmix64 the standard one (s += 0x9E3779B97F4A7C15; z = s; z = (z ^ z >> 30) *
 *    0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB; return z ^ z >> 31).
 *    The partials are added as acc = ((0.0f + part(perm[0])) + part(perm[1])) + ...
 *    FD_DQ_DETERMINISTIC ignores dq_order (ascending).
 *  - Bugs: DQ_NOSCALE dQ = round(acc * rp); DK_NOSCALE dK_h = acc_dk * rp; NO_GQA_SUM
 *    g = 0.0f + dX_h0, h0 = hk * (heads / kv_heads) the group's first query head;
 *    SWAP_DKDV writes the final (rounded) dK into dv and dV into dk. They combine.
 *  - Tiles: br and bc positive multiples of 16; (0, 0) is fd_bwd_tile_default.
 *  - fp32 inputs (CPU replay only; the CUDA kernel takes fp16/bf16): every TC16 product
 *    is an FD_ACC_SEQ fmaf chain in the same order and from the same accumulator, and
 *    rounding to the dtype is the identity.
 *
 * Score modifiers (window, ALiBi, softcap; fd_mods.h gives the forward's arithmetic). With
 * a softcap c the scales fold as in the forward: scale_sm = c, cap_in = scale / c (binary32
 * division), otherwise scale_sm = scale, cap_in = 0; scale_log2 = (float)((double)scale_sm *
 * M_LOG2E) and srp = rp * scale_sm. Step 3 becomes, for each pair of a visited tile pair:
 *       S_ij  as above;  t_ij = fd_tanh_portable(S_ij * cap_in) when capped (else S_ij),
 *       dth_ij = fmaf(-t, t, 1.0f) * cap_in (FA2's calculate_dtanh, before bias and mask),
 *       r_ij = fmaf(-slope_h / scale_sm, (float)|i + sk - sq - j|, t_ij) with ALiBi
 *              (the slope division in binary32, as the forward), else t_ij,
 *       P_ij  = visible(i, j) && lse_i finite ? exp2(fmaf(r_ij, scale_log2, -lse2_i)) : 0,
 *       visible: j in fd_vis_range(i) (the window and the causal mask),
 *       dS_ij = (P_ij * (kept ? dP_ij - D'_i : -D'_i)) * dth_ij when capped (two binary32
 *              products), before the rounding to the dtype.
 *     Key tile n visits the query tiles fd_bwd_qtiles gives (FA2's m_block_min from the
 *     window's right edge, m_block_max from its left edge), from the last to the first;
 *     a query tile's dQ partials are those of the key tiles visiting it, ascending (an
 *     interval of tiles); deterministic mode adds exactly those buffers, ascending.
 *     FD_BWD_BUG_NO_DTANH drops the factor dth.
 *
 * Bugs (fd_bwd_cfg.bugs) are deliberate departures used by `explain` and the tests to
 * model what a broken kernel computes; 0 in every kernel under test. */
#ifndef FD_BWD_H
#define FD_BWD_H
#include <stdint.h>
#include "fd_hd.h"
#include "fd_problem.h"

typedef enum { FD_DQ_ATOMIC = 0, FD_DQ_DETERMINISTIC = 1 } fd_dq_mode;
/* Order in which the replay adds the per-key-tile dQ partials (step 4). */
typedef enum { FD_DQ_ORDER_ASC = 0, FD_DQ_ORDER_DESC = 1, FD_DQ_ORDER_SHUFFLE = 2 } fd_dq_order;

#define FD_BWD_BUG_DQ_NOSCALE 0x01u  /* dQ without the softmax scale (acc * rp) */
#define FD_BWD_BUG_DK_NOSCALE 0x02u  /* dK without the softmax scale */
#define FD_BWD_BUG_NO_GQA_SUM 0x04u  /* dK/dV of a kv head = its first query head's only */
#define FD_BWD_BUG_SWAP_DKDV 0x08u   /* dK and dV written to each other's tensor */
#define FD_BWD_BUG_NO_DTANH 0x10u    /* softcap: dS not multiplied by (1 - t^2) params.softcap */

typedef struct fd_bwd_cfg {
    int br, bc;           /* query rows / keys per tile; 0, 0: fd_bwd_tile_default */
    fd_dq_mode dq_mode;   /* atomic (default) or deterministic */
    fd_dq_order dq_order; /* replay of atomic mode: the order of the partials */
    uint64_t order_seed;  /* FD_DQ_ORDER_SHUFFLE: the permutations' seed */
    unsigned bugs;        /* FD_BWD_BUG_* (0 for kernels under test) */
} fd_bwd_cfg;

FD_HD void fd_bwd_cfg_default(fd_bwd_cfg *c)
{
    c->br = 0;
    c->bc = 0;
    c->dq_mode = FD_DQ_ATOMIC;
    c->dq_order = FD_DQ_ORDER_ASC;
    c->order_seed = 0;
    c->bugs = 0;
}

/* FD_BWD_BC128 (default 1): head dims 65..128 take key tiles of 128 (the CUDA kernel's
 * 8-warp variant); 0 keeps (64, 64) there (the 4-warp kernel). Host and device code must
 * be built with the same value. */
#ifndef FD_BWD_BC128
#define FD_BWD_BC128 1

#endif

/* The tile the CUDA backward kernel uses for head dim d (the replay uses the same):
 * (64, 64) for d <= 64, (64, 128) for 64 < d <= 128 (FD_BWD_BC128), (64, 32) above. */
FD_HD void fd_bwd_tile_default(int d, int *br, int *bc)
{
    *br = 64;
    *bc = d > 128 ? 32 : (FD_BWD_BC128 && d > 64) ? 128 : 64;
}

/* Query rows [*r0, *r1] (empty when *r1 < *r0) that may see a key of [n0, n1]
 * (fd_vis_range's masks and window; the visible interval's ends rise with the row):
 * r0 = the first row whose right edge reaches n0, r1 = the last row whose left edge is
 * at most n1. Every row that sees a key of [n0, n1] is in it; a row in it sees one unless
 * its own interval is empty (possible only with the top-left causal mask and a window).
 * Without a window it is FA2's m_block_min and the whole rest of the query rows. The CUDA
 * kernel and the replay both visit exactly the query tiles r0 / br .. r1 / br. */
FD_HD void fd_bwd_row_range(int mask, int window, int wl, int wr, int sq, int sk, int n0, int n1,
                            int *r0, int *r1)
{
    const long diag = (long)sk - sq;
    long a = 0, z = (long)sq - 1;
    if (mask == FD_MASK_CAUSAL_TL && (long)n0 > a) a = n0;
    if (mask == FD_MASK_CAUSAL_BR && (long)n0 - diag > a) a = (long)n0 - diag;
    if (window && wr >= 0 && (long)n0 - diag - wr > a) a = (long)n0 - diag - wr;
    if (window && wl >= 0 && (long)n1 - diag + wl < z) z = (long)n1 - diag + wl;
    if (z < a || n1 < n0) {
        *r0 = 0;
        *r1 = -1;
        return;
    }
    *r0 = (int)a;
    *r1 = (int)z;
}

/* Query tiles [*m0, *m1) of br rows that key tile n (bc keys) visits. */
FD_HD void fd_bwd_qtiles(int mask, int window, int wl, int wr, int sq, int sk, int br, int bc,
                         int n, int *m0, int *m1)
{
    const int n0 = n * bc, n1 = (n0 + bc < sk ? n0 + bc : sk) - 1;
    int r0, r1;
    fd_bwd_row_range(mask, window, wl, wr, sq, sk, n0, n1, &r0, &r1);
    if (r1 < r0) {
        *m0 = *m1 = 0;
        return;
    }
    *m0 = r0 / br;
    *m1 = r1 / br + 1;
}
#endif
