/* fd_opt.h: getopt_long with the conventions every flashdrift command follows.
 *
 * -h and --help print the command's usage (fd_cmd_usage) on stdout; options and positional
 * arguments may come in any order; "--" ends the options (what follows is positional);
 * --opt=value and --opt value both work; an unknown option, a missing value or a value
 * given to a flag is one line on stderr:
 *   flashdrift CMD: unrecognized option '--frob' (flashdrift CMD --help)
 * Use:
 *   fd_getopt g;
 *   if (fd_getopt_init(&g, "gate", argc, argv, fd_run_longopts, gate_longopts)) return FD_EXIT_USAGE;
 *   for (int c; (c = fd_getopt_next(&g)) != FD_OPT_END;)
 *       switch (c) { case FD_OPT_HELP: return FD_EXIT_PASS; case FD_OPT_ERROR: return FD_EXIT_USAGE;
 *                    case FD_OPT_POSITIONAL: ...g.arg...; default: ...c, g.arg... }
 * argv is what follows the command's name (as main passes it) and is not reordered.
 * getopt's global state is reset by fd_getopt_init: one parse at a time. */
#ifndef FD_OPT_H
#define FD_OPT_H
#include <getopt.h>

enum {
    FD_OPT_END = -1,
    FD_OPT_POSITIONAL = 1, /* g.arg is the argument */
    FD_OPT_HELP = 'h',     /* usage printed on stdout: exit 0 */
    FD_OPT_ERROR = '?',    /* one line printed on stderr: exit 2 */
    FD_OPT_RUN = 0x100,    /* vals of the shared run options (fd_runfile.h) */
    FD_OPT_CMD = 0x200     /* first val free for a command's own options */
};

#define FD_GETOPT_MAXARGS 1024
#define FD_GETOPT_MAXOPTS 64

typedef struct fd_getopt {
    const char *cmd; /* "run", "baseline update", ...: names the command in messages */
    const char *arg; /* the current option's value (NULL for a flag), or the positional */
    int argc, rest, ended;
    char *argv[FD_GETOPT_MAXARGS + 2];
    struct option lo[FD_GETOPT_MAXOPTS + 2];
} fd_getopt;

/* Prepares a parse of argv[0..argc) with the options of tables a and b (each ended by a
 * zero entry; either may be NULL) plus --help. 0, or -1 after printing why (too many). */
int fd_getopt_init(fd_getopt *g, const char *cmd, int argc, char **argv, const struct option *a,
                   const struct option *b);
/* The next option's val, FD_OPT_POSITIONAL, FD_OPT_HELP, FD_OPT_ERROR or FD_OPT_END. */
int fd_getopt_next(fd_getopt *g);
/* Prints "flashdrift CMD: MESSAGE (flashdrift CMD --help)" on stderr; returns FD_EXIT_USAGE (2). */
int fd_usage_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
#endif
