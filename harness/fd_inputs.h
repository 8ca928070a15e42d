/* fd_inputs.h: seeded input generation and query-row sampling.
 *
 * fd_inputs_make draws Q, K, V for a case from Philox4x32-10 keyed by the case's input
 * seed (counter = element index, tensor id), maps them to the case's distribution in
 * binary64 and rounds each value once to the dtype (round to nearest even), so every
 * backend and the reference see the same bits. Deterministic across runs and machines
 * that share a libm (the normal draws use log, sqrt and cos). The structured families
 * (tied_max, sink, large_offset, low_rank) reshape the binary64 draws first (fd_case.h,
 * docs/case-files.md) and round once after.
 *
 * fd_sample_rows picks the query rows checked against the reference: all rows when
 * seqlen_q <= max_rows (or max_rows == 0); otherwise the first and last rows, the rows
 * where the causal edge falls (first row with a visible key and the one before it,
 * first row that sees every key), rows on both sides of 64- and 128-row tile
 * boundaries, then evenly spaced rows up to max_rows. Sorted, unique. */
#ifndef FD_INPUTS_H
#define FD_INPUTS_H
#include <stddef.h>
#include "fd_case.h"

int fd_inputs_make(const fd_case *c, float **q, float **k, float **v, char *err, size_t errlen);
/* The same draws before rounding to the dtype (binary64), for the input-rounding part of
 * the error budget. */
int fd_inputs_make_unrounded(const fd_case *c, double **q, double **k, double **v, char *err,
                             size_t errlen);
/* The output gradient dO of a backward case (layout and dtype of Q): tensor id 3, N(0, 1),
 * or U(-1, 1) for the uniform distribution (like V). */
int fd_inputs_make_dout(const fd_case *c, float **dout, char *err, size_t errlen);
/* FP8 dtypes: the per-tensor descale factors of the case's inputs (amax / FP8 max in
 * binary32, or 1 with fp8_unit_descale); 0, 0, 0 for other dtypes. The case expansion
 * stores them in the problem (fd_case.c). */
int fd_inputs_fp8_descales(const fd_case *c, float *qd, float *kd, float *vd, char *err, size_t errlen);
/* rows must hold max(max_rows, 16) + 16 ints (or seqlen_q when max_rows == 0); returns the count. */
int fd_sample_rows(const fd_problem *p, int max_rows, int *rows);
#endif
