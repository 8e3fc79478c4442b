/* Pid files of mount daemons, keyed by the mount's device number (which
 * `fzfs umount` reads from /proc/self/mountinfo without touching a maybe
 * dead mount): /run/fzfs/MAJ:MIN.pid as root, else under $XDG_RUNTIME_DIR.
 * Each holds "pid start-time" so a recycled pid is never mistaken for the
 * daemon. No shared state; safe from any thread. */
#ifndef FZ_FS_PIDFILE_H
#define FZ_FS_PIDFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The pid file path of mount maj:min into out[n] (creating its directory
 * when mkdirs). 0, or -1 if it does not fit or cannot be created. */
int fz_pidfile_path(char *out, size_t n, unsigned maj, unsigned min, bool mkdirs);
/* The status file of mount maj:min (next to its pid file, ".json"): the
 * daemon's view of itself for `fzfs status`. Same contract. */
int fz_statusfile_path(char *out, size_t n, unsigned maj, unsigned min, bool mkdirs);
/* Start time of a process (clock ticks since boot), 0 if gone or a zombie. */
unsigned long long fz_proc_start(pid_t pid);
/* Record the calling process as the daemon of mount `dev` (best effort). */
void fz_pidfile_write(dev_t dev);
/* The live daemon of mount maj:min, else 0; its pid file path in path[n]. */
pid_t fz_pidfile_daemon(unsigned maj, unsigned min, char *path, size_t n);

#endif
