/* fd_test_explain.h: the assertion every "injected bug is named" test makes.
 * Header-only, static: each test binary includes it once. */
#ifndef FD_TEST_EXPLAIN_H
#define FD_TEST_EXPLAIN_H
#include <criterion/criterion.h>
#include <string.h>

#include "fd_explain.h"

/* bug, injected (--inject) on case c of cf and explained on backend be: far above the
 * rounding budget, named first, and explaining the error. */
static void tu_expect_bug_named(const fd_casefile *cf, const fd_case *c, const char *be, const char *bug)
{
    fd_explain_opts o = {be, bug, 2};
    fd_explanation ex;
    char err[1024];
    cr_assert_eq(fd_explain_case(cf, c, &o, &ex, err, sizeof err), 0, "%s: %s", bug, err);
    cr_assert(ex.gross, "%s on %s: far above the rounding budget: %s", bug, c->id, ex.summary);
    cr_assert(ex.best >= 0 && !strcmp(ex.hypo[ex.best].name, bug), "--inject %s on %s: best %s", bug, c->id,
              ex.best >= 0 ? ex.hypo[ex.best].name : "none");
    cr_assert(ex.hypo[ex.best].explains, "%s: explained (%.3g left, limit %.3g)", bug,
              ex.hypo[ex.best].residual_max_abs, ex.hypo_limit);
    fd_explanation_free(&ex);
}
#endif
