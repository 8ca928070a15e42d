/* fd_opt.c: getopt_long for the commands; see fd_opt.h. */
#include "fd_opt.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fd_cmds.h"

int fd_usage_error(const char *cmd, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* the help hint names the command word ("baseline", not "baseline update") */
    const size_t n = strcspn(cmd, " ");
    fprintf(stderr, "flashdrift %s: %s (flashdrift %.*s --help)\n", cmd, msg, (int)n, cmd);
    return FD_EXIT_USAGE;
}

int fd_getopt_init(fd_getopt *g, const char *cmd, int argc, char **argv, const struct option *a,
                   const struct option *b)
{
    memset(g, 0, sizeof *g);
    g->cmd = cmd;
    if (argc > FD_GETOPT_MAXARGS) {
        fd_usage_error(cmd, "too many arguments (%d; at most %d)", argc, FD_GETOPT_MAXARGS);
        return -1;
    }
    /* getopt_long wants the program name in argv[0] */
    g->argv[0] = (char *)cmd;
    for (int i = 0; i < argc; i++) g->argv[i + 1] = argv[i];
    g->argc = argc + 1;
    int n = 0;
    const struct option *tables[2] = {a, b};
    for (int t = 0; t < 2; t++)
        for (const struct option *o = tables[t]; o && o->name; o++) {
            if (n == FD_GETOPT_MAXOPTS) {
                fprintf(stderr, "flashdrift %s: internal error: more than %d options\n", cmd, FD_GETOPT_MAXOPTS);
                return -1;
            }
            g->lo[n++] = *o;
        }
    g->lo[n++] = (struct option){"help", no_argument, NULL, FD_OPT_HELP};
    g->lo[n] = (struct option){NULL, 0, NULL, 0};
    /* GNU getopt: optind = 0 reinitialises it (main may have parsed before) */
    optind = 0;
    opterr = 0;
    return 0;
}

/* The long options whose names start with the n characters of s (for "ambiguous"). */
static int prefix_matches(const fd_getopt *g, const char *s, size_t n, char *names, size_t len)
{
    int k = 0;
    names[0] = 0;
    for (const struct option *o = g->lo; o->name; o++)
        if (!strncmp(o->name, s, n)) {
            size_t u = strlen(names);
            snprintf(names + u, len - u, "%s--%s", k++ ? ", " : "", o->name);
        }
    return k;
}

static int report_error(fd_getopt *g, int c)
{
    const char *el = optind > 0 && optind <= g->argc ? g->argv[optind - 1] : "?";
    if (c == ':') return fd_usage_error(g->cmd, "option '%s' needs a value", el), FD_OPT_ERROR;
    if (optopt > 0 && optopt < 0x100 && strncmp(el, "--", 2))
        return fd_usage_error(g->cmd, "unrecognized option '-%c'", optopt), FD_OPT_ERROR;
    if (strncmp(el, "--", 2)) return fd_usage_error(g->cmd, "unrecognized option '%s'", el), FD_OPT_ERROR;
    const size_t n = strcspn(el + 2, "=");
    if (optopt != 0) /* a known flag given a value */
        return fd_usage_error(g->cmd, "option '%.*s' takes no value", (int)n + 2, el), FD_OPT_ERROR;
    char names[512];
    if (prefix_matches(g, el + 2, n, names, sizeof names) > 1)
        return fd_usage_error(g->cmd, "ambiguous option '%.*s' (%s)", (int)n + 2, el, names), FD_OPT_ERROR;
    return fd_usage_error(g->cmd, "unrecognized option '%s'", el), FD_OPT_ERROR;
}

int fd_getopt_next(fd_getopt *g)
{
    if (g->ended) {
        if (g->rest >= g->argc) return FD_OPT_END;
        g->arg = g->argv[g->rest++];
        return FD_OPT_POSITIONAL;
    }
    /* "-": positionals come back in order as 1 (options may follow them, and nothing is
     * permuted, POSIXLY_CORRECT or not); ":": a missing value is ':' */
    const int c = getopt_long(g->argc, g->argv, "-:h", g->lo, NULL);
    g->arg = optarg;
    switch (c) {
    case -1: /* the end, or "--": the rest is positional */
        g->ended = 1;
        g->rest = optind;
        return fd_getopt_next(g);
    case FD_OPT_HELP: {
        const size_t n = strcspn(g->cmd, " ");
        char word[64];
        snprintf(word, sizeof word, "%.*s", (int)n, g->cmd);
        fd_cmd_usage(word, stdout);
        return FD_OPT_HELP;
    }
    case ':':
    case '?':
        return report_error(g, c);
    default:
        return c;
    }
}
