/* fd_mpi.c: see fd_mpi.h. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fd_mpi.h"
#include "fd_run.h"

#ifdef FD_HAVE_MPI
#include <mpi.h>
#endif

/* Set once by fd_mpi_init, read-only afterwards (the MPI library's own state mirrored). */
static struct {
    int on, rank, size, local_rank;
} g_mpi = {0, 0, 1, 0};

/* Whether an MPI launcher started this process: a plain launch of a binary built with MPI
 * must not call MPI_Init (Open MPI's singleton start forks an orted, slow or failing in
 * containers). */
static int launched_by_mpi(void)
{
    const char *off = getenv("FD_MPI");
    if (off && !strcmp(off, "0")) return 0;
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", NULL};
    for (int i = 0; vars[i]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

int fd_mpi_init(int *argc, char ***argv, char *err, size_t errlen)
{
#ifdef FD_HAVE_MPI
    if (!launched_by_mpi()) return 0;
    if (MPI_Init(argc, argv) != MPI_SUCCESS) {
        snprintf(err, errlen, "MPI_Init failed");
        return -1;
    }
    g_mpi.on = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_mpi.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_mpi.size);
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_rank(node, &g_mpi.local_rank);
        MPI_Comm_free(&node);
    }
    /* one GPU per rank: ranks of a host take its GPUs in turn (two ranks share one GPU
     * when a host has more ranks than GPUs) */
    fd_gpu_select(g_mpi.local_rank);
#else
    (void)argc; (void)argv;
    /* N copies of a one-process flashdrift would each run every case into the same --out */
    const char *n = getenv("OMPI_COMM_WORLD_SIZE");
    if (!n) n = getenv("PMI_SIZE");
    if (launched_by_mpi() && n && atoi(n) > 1) {
        snprintf(err, errlen, "started as one of %s MPI ranks, but built without MPI (FD_MPI=OFF or no "
                 "libopenmpi-dev at build time): run it without mpirun, or rebuild (docs/mpi.md)", n);
        return -2;
    }
#endif
    return 0;
}

void fd_mpi_wait_all(void)
{
#ifdef FD_HAVE_MPI
    if (!g_mpi.on) return;
    /* Open MPI's blocking collectives poll a core at 100% while they wait: on a shared
     * host that core is taken from the ranks still computing (measured: 2 ranks on 2
     * cores took 1.5x the CPU time of one process). Poll a nonblocking barrier instead,
     * sleeping 2 ms between tests. */
    MPI_Request req;
    if (MPI_Ibarrier(MPI_COMM_WORLD, &req) != MPI_SUCCESS) return;
    for (int done = 0;;) {
        if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || done) break;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
#endif
}

int fd_mpi_finish(int rc)
{
#ifdef FD_HAVE_MPI
    if (g_mpi.on) {
        fd_mpi_wait_all(); /* rank 0 may still be writing the reports */
        MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
        MPI_Finalize();
        g_mpi.on = 0;
    }
#endif
    return rc;
}

int fd_mpi_rank(void) { return g_mpi.rank; }
int fd_mpi_size(void) { return g_mpi.size; }
int fd_mpi_local_rank(void) { return g_mpi.local_rank; }

int fd_mpi_max(int v)
{
#ifdef FD_HAVE_MPI
    if (g_mpi.on) {
        int m = v;
        MPI_Allreduce(&v, &m, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        return m;
    }
#endif
    return v;
}

int fd_mpi_bcast(void *buf, size_t n)
{
#ifdef FD_HAVE_MPI
    if (g_mpi.on) {
        for (size_t off = 0; off < n;) { /* MPI counts are int */
            const int chunk = n - off > (size_t)INT_MAX ? INT_MAX : (int)(n - off);
            if (MPI_Bcast((char *)buf + off, chunk, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) return -1;
            off += (size_t)chunk;
        }
    }
#else
    (void)buf; (void)n;
#endif
    return 0;
}

int fd_mpi_gather_text(const char *text, size_t len, char ***all, char *err, size_t errlen)
{
    *all = NULL;
    const int size = g_mpi.size, rank = g_mpi.rank;
    char **out = rank == 0 ? calloc((size_t)size, sizeof *out) : NULL;
    int bad = rank == 0 && !out;
    if (!g_mpi.on) {
        if (!bad && (out[0] = malloc(len + 1))) {
            memcpy(out[0], text, len);
            out[0][len] = 0;
            *all = out;
            return 0;
        }
        free(out);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
#ifdef FD_HAVE_MPI
    fd_mpi_wait_all(); /* the ranks that finish first wait without spinning */
    /* lengths first, then each rank's bytes to rank 0 in int-sized chunks */
    long long mine = (long long)len, *lens = rank == 0 ? calloc((size_t)size, sizeof *lens) : NULL;
    bad |= rank == 0 && !lens;
    MPI_Gather(&mine, 1, MPI_LONG_LONG, lens, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        for (int r = 0; r < size && !bad; r++) bad |= !(out[r] = malloc((size_t)lens[r] + 1));
        if (bad) { /* the other ranks are sending: they cannot be told to stop */
            fprintf(stderr, "flashdrift: rank 0: out of memory gathering the ranks' cases\n");
            MPI_Abort(MPI_COMM_WORLD, 3);
        }
        for (int r = 0; r < size; r++) {
            if (r == 0) memcpy(out[0], text, len);
            else
                for (long long off = 0; off < lens[r];) {
                    const int chunk = lens[r] - off > INT_MAX ? INT_MAX : (int)(lens[r] - off);
                    MPI_Recv(out[r] + off, chunk, MPI_BYTE, r, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    off += chunk;
                }
            out[r][lens[r]] = 0;
        }
    } else {
        for (size_t off = 0; off < len;) {
            const int chunk = len - off > (size_t)INT_MAX ? INT_MAX : (int)(len - off);
            MPI_Send(text + off, chunk, MPI_BYTE, 0, 7, MPI_COMM_WORLD);
            off += (size_t)chunk;
        }
    }
    free(lens);
    *all = out;
    return 0;
#else
    return -1;
#endif
}
