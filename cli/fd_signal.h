/* fd_signal.h: SIGINT and SIGTERM during a run. fd_signals_catch installs a handler that
 * records the signal in fd_interrupted (fd_run.h: the engine stops at the next check; what
 * is finished stays in the journal and the partial report); fd_signal_exit turns a
 * command's FD_EXIT_INTERRUPTED into the shell's convention, 128 + the signal: 130 for
 * SIGINT, 143 for SIGTERM. */
#ifndef FD_SIGNAL_H
#define FD_SIGNAL_H

void fd_signals_catch(void);
/* rc unchanged unless it is FD_EXIT_INTERRUPTED and a signal was caught. */
int fd_signal_exit(int rc);
#endif
