/* main.c: the flashdrift command line: dispatches to the commands in fd_cmds.h (their usage
 * texts: fd_usage.c; their option parsing: fd_opt.h). */
#include <stdio.h>
#include <string.h>

#include "fd_cmds.h"
#include "fd_signal.h"

#ifndef FD_VERSION
#define FD_VERSION "0.0.0"
#endif

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
} fd_commands[] = {
    {"run", fd_cmd_run},
    {"list", fd_cmd_list},
    {"gate", fd_cmd_gate},
    {"diff", fd_cmd_diff},
    {"baseline", fd_cmd_baseline},
    {"html", fd_cmd_html},
    {"explain", fd_cmd_explain},
    {"bench", fd_cmd_bench},
    {"check", fd_cmd_check},
    {"compare", fd_cmd_compare},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fd_usage(stderr);
        return FD_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        if (argc > 2 && !strcmp(argv[1], "help") && !fd_cmd_usage(argv[2], stdout)) return FD_EXIT_PASS;
        fd_usage(stdout);
        return FD_EXIT_PASS;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("flashdrift %s\n", FD_VERSION);
        return FD_EXIT_PASS;
    }
    for (size_t i = 0; i < sizeof fd_commands / sizeof fd_commands[0]; i++)
        if (!strcmp(argv[1], fd_commands[i].name)) return fd_signal_exit(fd_commands[i].fn(argc - 2, argv + 2));
    fprintf(stderr, "flashdrift: unknown command \"%s\" (flashdrift --help lists them)\n", argv[1]);
    return FD_EXIT_USAGE;
}
