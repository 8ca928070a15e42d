/* fd_common.c: names of the shared enums. */
#include "fd_problem.h"

const char *fd_dtype_name(fd_dtype t)
{
    switch (t) {
    case FD_DT_FP16: return "fp16";
    case FD_DT_BF16: return "bf16";
    case FD_DT_FP32: return "fp32";
    }
    return "?";
}

const char *fd_mask_name(fd_mask_kind m)
{
    switch (m) {
    case FD_MASK_NONE: return "none";
    case FD_MASK_CAUSAL_TL: return "causal_tl";
    case FD_MASK_CAUSAL_BR: return "causal_br";
    }
    return "?";
}
