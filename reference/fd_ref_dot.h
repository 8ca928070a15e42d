/* fd_ref_dot.h: what the forward reference shares with the backward reference: the exact
 * dot product and the error message helper (internal to reference/; it needs mpfr.h,
 * which fd_ref.h does not). */
#ifndef FD_REF_DOT_H
#define FD_REF_DOT_H
#include <stddef.h>
#include <mpfr.h>

/* err = the formatted message (nothing when err is NULL or errlen 0). */
void fd_ref_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* s = RN(scale * sum_d a_d b_d) at s's precision, a, b, scale finite binary32,
 * 0 < D <= 65536; returns MPFR's ternary value (0: exact). The sum is formed exactly in
 * a fixed-point accumulator and rounded once; it has at most ~600 significant bits
 * (products are multiples of 2^-298 below 2^256, times a 24-bit scale), so at 704 bits
 * or more the result is always exact. */
int fd_ref_dot_exact(mpfr_ptr s, const float *a, const float *b, int D, float scale);
#endif
