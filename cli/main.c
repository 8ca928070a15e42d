/* main.c: the flashdrift command line: dispatches to the commands in fd_cmds.h (their usage
 * texts: fd_usage.c; their option parsing: fd_opt.h). */
#include <stdio.h>
#include <string.h>

#include "fd_cmds.h"
#include "fd_mpi.h"
#include "fd_signal.h"

#ifndef FD_VERSION
#define FD_VERSION "0.0.0"
#endif

/* ranks: 1 when the command spreads its cases over MPI ranks (the run loop); the other
 * commands run on rank 0 alone under mpirun (docs/mpi.md). */
static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    int ranks;
} fd_commands[] = {
    {"run", fd_cmd_run, 1},
    {"list", fd_cmd_list, 0},
    {"gate", fd_cmd_gate, 1},
    {"diff", fd_cmd_diff, 0},
    {"baseline", fd_cmd_baseline, 0},
    {"html", fd_cmd_html, 0},
    {"explain", fd_cmd_explain, 0},
    {"bench", fd_cmd_bench, 0},
    {"check", fd_cmd_check, 1},
    {"compare", fd_cmd_compare, 0},
};

/* Runs a command on every rank (or rank 0 alone) and returns rank 0's exit code on all. */
static int run_command(size_t i, int argc, char **argv)
{
    char err[256];
    const int init = fd_mpi_init(&argc, &argv, err, sizeof err);
    if (init) {
        fprintf(stderr, "flashdrift: %s\n", err);
        return init == -2 ? FD_EXIT_USAGE : FD_EXIT_INTERNAL;
    }
    int rc = FD_EXIT_PASS;
    if (fd_commands[i].ranks || fd_mpi_rank() == 0) rc = fd_commands[i].fn(argc - 2, argv + 2);
    return fd_mpi_finish(rc);
}

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
        if (!strcmp(argv[1], fd_commands[i].name)) return fd_signal_exit(run_command(i, argc, argv));
    fprintf(stderr, "flashdrift: unknown command \"%s\" (flashdrift --help lists them)\n", argv[1]);
    return FD_EXIT_USAGE;
}
