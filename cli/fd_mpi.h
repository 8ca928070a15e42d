/* fd_mpi.h: the ranks of an MPI launch (mpirun, srun), for the run loop (docs/mpi.md).
 *
 * Built with MPI (FD_HAVE_MPI, CMake option FD_MPI) and started by an MPI launcher (one of
 * OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_RANK, PMI_SIZE in the environment), fd_mpi_init calls
 * MPI_Init and, where the CUDA backends are built and GPUs are visible, selects the GPU
 * local_rank % device_count. Otherwise (no MPI in the build, a plain launch, or FD_MPI=0 in
 * the environment) every function below behaves as one process: rank 0 of 1, collectives
 * copy. The rank and size are set once by fd_mpi_init (main) and only read afterwards.
 *
 * Collectives must be entered by every rank in the same order; the run loop
 * (fd_cmd_run.c) is their only caller besides main's fd_mpi_finish. */
#ifndef FD_MPI_H
#define FD_MPI_H
#include <stddef.h>

/* Called first by main. 0; -1 with err when MPI_Init failed; -2 with err when a binary
 * built without MPI was started as one of several ranks (each would run every case). */
int fd_mpi_init(int *argc, char ***argv, char *err, size_t errlen);
/* Called last by main with this rank's exit code: returns rank 0's (the same on every
 * rank, so that mpirun returns it) and finalizes MPI. */
int fd_mpi_finish(int rc);
int fd_mpi_rank(void);
int fd_mpi_size(void);
/* The rank among the ranks of this host (MPI_Comm_split_type SHARED), 0 without MPI. */
int fd_mpi_local_rank(void);
/* Returns when every rank has called it, sleeping while it waits (a barrier that does not
 * take a core from the ranks still computing). */
void fd_mpi_wait_all(void);
/* The largest v over all ranks. */
int fd_mpi_max(int v);
/* Rank 0's n bytes at buf to every rank (buf has n bytes on every rank). 0 or -1. */
int fd_mpi_bcast(void *buf, size_t n);
/* Gathers every rank's text (len bytes) on rank 0: *all[r] (rank 0: size NUL-terminated
 * strings, caller frees each and the array; other ranks: *all = NULL). 0 or -1 with err. */
int fd_mpi_gather_text(const char *text, size_t len, char ***all, char *err, size_t errlen);

#endif
