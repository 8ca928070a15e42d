/* fd_ref_bwd.h: the exact reference for the attention backward pass.
 *
 * For one (batch b, kv head hk) group it computes, from the exact input values and the
 * exact dO (no value of any kernel is used: O, LSE and D are the exact ones),
 *   P_ij  = exp(s_ij - LSE_i) on visible (i, j), s_ij = scale * q_i . k_j
 *   dP_ij = (dO_i . v_j) * keep_ij / (1 - p)       keep: FA2's mask from (seed, offset)
 *   D_i   = sum_j P_ij dP_ij   (= dO_i . O_i)
 *   dS_ij = P_ij (dP_ij - D_i)
 *   dQ_i  = scale sum_j dS_ij k_j               for the listed query rows, each query
 *                                                head h of the group
 *   dK_j  = scale sum_h sum_i dS^h_ij q^h_i     for the listed key rows, summed over the
 *   dV_j  = sum_h sum_i P^h_ij keep_ij/(1-p) dO^h_i   group's query heads (GQA)
 * each correctly rounded to binary64, or counted undecided (its best estimate returned),
 * with a rigorous error bound (docs/reference.md): precision is raised until every value
 * is decided or prec_max is reached. Rows with no visible key give dQ = 0; keys no row
 * sees give dK = dV = 0.
 *
 * Layouts: dq [h_in_group][nq][d] for the group's heads (h = hk * group + h_in_group),
 * dk, dv [nk][d], dsum (optional) [h_in_group][nq] = D_i of the listed query rows.
 * qrows/krows: the query rows and key rows to return (all are used for the sums).
 * Thread-safe as fd_ref_row (one call per thread). */
#ifndef FD_REF_BWD_H
#define FD_REF_BWD_H
#include <stddef.h>
#include "fd_ref.h"

typedef struct fd_ref_bwd_info {
    int undecided;  /* values (dq, dk, dv, dsum) not decided at prec_max */
    int prec_used;  /* the highest precision used */
} fd_ref_bwd_info;

int fd_ref_bwd_group(const fd_problem *p, const float *q, const float *k, const float *v,
                     const float *dout, int b, int hk, const int *qrows, int nq,
                     const int *krows, int nk, const fd_ref_opts *opt, double *dq, double *dk,
                     double *dv, double *dsum, fd_ref_bwd_info *info, char *err, size_t errlen);
#endif
