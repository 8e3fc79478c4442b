/* Private to fs/: the FUSE low-level operations over a view, and the compute
 * pool that answers reads needing computed bytes. fs/mount.c owns the
 * session; this file owns what each request does.
 *
 * Threading: the ops run on libfuse worker threads, any number at once. The
 * view is immutable (fz_view_read is thread-safe); the only mutable state is
 * the pool's job queues, behind pool.lock, which is never held while a chunk
 * is computed or a reply is sent, and atomics (counters, progress, the
 * sequential-read state that drives prefetching). */
#ifndef FZ_FS_OPS_H
#define FZ_FS_OPS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#include "view/view.h"

typedef struct fz_fs_job fz_fs_job;
typedef struct fz_fs_keep fz_fs_keep; /* fs/keep.h */

/* A fixed set of threads taking jobs off two FIFOs: reads to answer
 * first, then chunks to compute ahead of sequential readers (at most
 * `workers` of those at once, at most FZ_FS_AHEAD_QUEUED queued). There
 * are twice `workers` threads, so reads waiting for a chunk another thread
 * computes never leave the cores idle. */
typedef struct {
    pthread_mutex_t lock; /* guards everything but threads */
    pthread_cond_t cond;
    fz_fs_job *head, *tail;   /* reads */
    fz_fs_job *ahead, *atail; /* prefetches */
    unsigned nahead, running_ahead;
    bool stop;
    int workers;
    pthread_t *threads;
    int nthreads;
} fz_fs_pool;

/* Sequential reading of one computed file (fs/ops.c compute_ahead): runs
 * of bytes read in order (file offsets [start, end)), how far past each
 * prefetches were queued, and when it was last extended (0: unused). Under
 * fz_fs.ahead_lock. */
#define FZ_FS_RUNS 8
typedef struct {
    uint64_t start, end, ahead, used;
} fz_fs_run;
typedef struct {
    fz_fs_run runs[FZ_FS_RUNS];
} fz_fs_ahead;

/* Progress of the computed reads of one file (the daemon log's "computing
 * NAME ... 42%" lines): bytes answered by the compute pool, when the first
 * one started and when a line was last logged (CLOCK_MONOTONIC ms; 0 =
 * never), and the cache's counters then. Atomics only: the pool threads update them without a lock.
 */
typedef struct {
    _Atomic uint64_t done;
    _Atomic int64_t start_ms, logged_ms;
    atomic_bool finished;
    /* The cache's fills and hits when the first line was logged (the done
     * line says how many chunks were computed meanwhile). */
    _Atomic uint64_t fills0, hits0;
} fz_fs_progress;

/* FUSE passthrough of one node (a whole unchanged source file, or a
 * computed file kept whole in the cache: fs/keep.h): the backing id
 * registered with the kernel (0: none) and the opens using it. The kernel
 * wants every concurrent open of an inode on one backing, and refuses a
 * passthrough open while the inode has opens through the page cache, so
 * the id lives as long as some open does, and a kept file is only used
 * while no open of the node goes through the daemon (`ncached`: such opens
 * of a node that could be kept). fs/ops.c, under pt_lock. */
typedef struct {
    int32_t id;
    uint32_t nopen;
    uint32_t ncached;
    bool computing; /* an open is computing the node whole (fz_keep_compute) */
} fz_fs_backing;

typedef struct {
    fz_view *v;
    uint32_t nnodes;
    /* FUSE passthrough (op_init, op_open, op_release): whether opens of
     * whole files are handed to the kernel; pt_why says why not (set once,
     * before passthrough turns off). backing is per node, under pt_lock. */
    bool no_passthrough; /* forced off (--no-passthrough, FZFS_NO_PASSTHROUGH=1) */
    atomic_bool passthrough;
    char pt_why[256];
    pthread_mutex_t pt_lock;
    pthread_cond_t pt_cond; /* a node's computing ended */
    fz_fs_backing *backing;
    bool compute_on_read;        /* computed files are computed as read, never whole at open */
    double progress_s;           /* seconds between a file's progress lines in the log */
    _Atomic uint64_t pt_opens;   /* opens answered with passthrough (status) */
    _Atomic uint64_t kept_opens; /* of which from a computed file kept whole */
    fz_fs_keep *keep;            /* fs/keep.h, or NULL */
    /* Counters for `fzfs status` (relaxed atomics, one add per read; chunks
     * computed ahead of their reads). */
    _Atomic uint64_t bytes_served, reads, computed_ahead;
    fz_fs_progress *progress; /* per node, or NULL (no progress lines) */
    fz_fs_ahead *ahead;       /* per node, or NULL (no prefetch); under ahead_lock */
    uint64_t ahead_tick;      /* under ahead_lock */
    pthread_mutex_t ahead_lock;
    struct timespec mtime; /* every node's mtime/ctime: SRC's, stable across remounts */
    uid_t uid;
    gid_t gid;
    fz_fs_pool pool;
    const char *mnt;         /* for log lines */
    struct fuse_session *se; /* for cache invalidation notices; set before serving */
} fz_fs;

extern const struct fuse_lowlevel_ops fz_fs_ops;

/* pthread_create with every signal blocked in the new thread: signals
 * belong to the session loop's thread (fuse_set_signal_handlers). Returns
 * pthread_create's result (fs/mount.c). */
int fz_fs_thread_start(pthread_t *t, void *(*fn)(void *), void *arg);

/* Start the compute pool for `workers` (>= 1) cores, with all signals
 * blocked in its threads. Errors: FZ_EIO (no thread could start),
 * FZ_ENOMEM. */
int fz_fs_pool_start(fz_fs *fs, int workers);
/* Let the pool finish queued jobs, then join its threads. Call after the
 * session loop returned and before the session is destroyed. */
void fz_fs_pool_stop(fz_fs *fs);
/* Let the view run its tasks (a central directory's CRCs) on the pool
 * (fz_view_set_runner); after fz_fs_pool_start, before serving. */
void fz_fs_use_pool_for_tasks(fz_fs *fs);
/* That runner (a fz_view_runner_fn; ctx is the fz_fs): the n tasks run on
 * the calling thread and at most one helper per other core of the pool,
 * queued as reads are (a reader waits for them); returns when all have. */
void fz_fs_run_tasks(void *ctx, size_t n, fz_view_task_fn task, void *arg);

#endif
