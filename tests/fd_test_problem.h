/* fd_test_problem.h: the problems and cases the kernel and reference tests build, one
 * definition for every test file (header-only, static inline). */
#ifndef FD_TEST_PROBLEM_H
#define FD_TEST_PROBLEM_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fd_case.h"

/* A case of B batches, H query heads over Hk kv heads, sq x sk, head dim D, with the
 * dropout seed and the input seed both `seed` (offset 0) and its id filled. */
static inline fd_case tu_mk_case(int B, int H, int Hk, int sq, int sk, int D, fd_dtype dt, fd_mask_kind mask,
                                 double p, fd_dist dist, uint64_t seed)
{
    fd_case c;
    memset(&c, 0, sizeof c);
    fd_problem *pr = &c.prob;
    pr->batch = B; pr->heads = H; pr->kv_heads = Hk; pr->seqlen_q = sq; pr->seqlen_k = sk;
    pr->head_dim = D; pr->dtype = dt; pr->mask = mask; pr->dropout_p = p;
    pr->softmax_scale = (float)(1.0 / sqrt((double)D));
    pr->seed = seed; pr->offset = 0;
    c.dist = dist;
    c.input_seed = seed;
    fd_case_make_id(&c, c.id, sizeof c.id);
    return c;
}

/* xorshift64*: the next uniform in [0, 1) of *state (the GPU tests' inputs). */
static inline double tu_urand(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (double)((*state * 2685821657736338717ull) >> 11) * 0x1.0p-53;
}

/* A problem for the reference tests: scale 1/sqrt(d) in binary32, a fixed dropout seed
 * and a non-zero Philox offset. */
static inline fd_problem tu_make_problem(int batch, int heads, int kv_heads, int sq, int sk, int d, fd_dtype t,
                                         fd_mask_kind mask, double dropout)
{
    fd_problem p;
    memset(&p, 0, sizeof p);
    p.batch = batch;
    p.heads = heads;
    p.kv_heads = kv_heads;
    p.seqlen_q = sq;
    p.seqlen_k = sk;
    p.head_dim = d;
    p.dtype = t;
    p.mask = mask;
    p.softmax_scale = (float)(1.0 / sqrt((double)d));
    p.dropout_p = dropout;
    p.seed = 0x1234abcd5678ull;
    p.offset = 96;
    return p;
}
#endif
