/* fd_run_inv.h: the batch-invariance stage of the one judging pipeline (harness-internal;
 * called by fd_run_case_given when the case file sets "batch_invariance": true).
 *
 * A kernel is batch invariant when a sequence gives bitwise the same output alone and
 * inside a batch of other sequences (FlashInfer tests this; serving stacks need it for
 * deterministic inference). The stage runs every kernel backend of the case on the whole
 * batch and then on each batch element alone (a problem of batch 1 holding that element's
 * Q, K and V; the first FD_INV_MAX_BATCH elements), and compares the checked rows bit for
 * bit: elements checked, elements that differ, the largest difference (absolute and in
 * ulps of the dtype at the batched value) and the first one. Not measured: outputs that
 * were given or computed as a baseline, a batch of one, and dropout (FA2's mask depends on
 * the batch index: alone, element b would draw element 0's random numbers). The policy's
 * require_batch_invariance makes a difference a FAIL; by default it is reported. */
#ifndef FD_RUN_INV_H
#define FD_RUN_INV_H
#include "fd_verdict.h"

#define FD_INV_MAX_BATCH 8

/* Fills res->be[*].inv. -1 with err only when the case cannot go on (out of memory,
 * interrupted). */
int fd_inv_stage(const fd_casefile *cf, const fd_case *c, const float *q, const float *k, const float *v,
                 fd_case_result *res, char *err, size_t errlen);
#endif
