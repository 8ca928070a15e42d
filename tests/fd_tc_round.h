/* fd_tc_round.h: the last step of the tests' tensor-core models written with doubles: an
 * exact binary64 value to binary32, truncated (round toward zero, 24 significant bits, the
 * subnormal grid 2^-149 below 2^-126, Inf above binary32's exponents as the library's model
 * gives) or to nearest even. Shared by fd_tc_data.h (the independent H100 model, Criterion
 * tests) and fd_probe.h (the probes' candidate models; libc only), so it includes nothing
 * but math.h. Header-only, static inline. */
#ifndef FD_TC_ROUND_H
#define FD_TC_ROUND_H
#include <math.h>

static inline float tc_round24(double v, int rn) /* v exact in double; rn: to nearest even */
{
    if (fpclassify(v) == FP_ZERO) return 0.0f; /* an exact zero sum is +0 */
    if (rn) return (float)v; /* C's conversion: to nearest even, subnormals and overflow included */
    int e;
    double f = frexp(fabs(v), &e), r; /* |v| = f 2^e, f in [0.5, 1) */
    if (e - 1 >= -126) {
        if (e - 1 > 127) return v > 0.0 ? INFINITY : -INFINITY;
        r = ldexp(trunc(ldexp(f, 24)), e - 24);
    } else {
        r = ldexp(trunc(ldexp(fabs(v), 149)), -149);
    }
    return (float)(v < 0.0 ? -r : r);
}
#endif
