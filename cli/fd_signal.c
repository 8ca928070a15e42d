/* fd_signal.c: see fd_signal.h. */
#include "fd_signal.h"

#include <signal.h>
#include <string.h>

#include "fd_cmds.h"
#include "fd_run.h"

static void on_signal(int sig)
{
    fd_interrupted = sig; /* nonzero: the engine only tests it */
}

void fd_signals_catch(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int fd_signal_exit(int rc)
{
    if (rc != FD_EXIT_INTERRUPTED || !fd_interrupted) return rc;
    return 128 + (int)fd_interrupted;
}
