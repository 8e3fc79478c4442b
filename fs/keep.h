/* Private to fs/: computed files kept whole, so later opens are read by the
 * kernel (FUSE passthrough) instead of through the daemon.
 *
 * A file with computed bytes (a cast or quantized shard, a .bin with new
 * zip headers) is answered read by read: from the LMDB cache when warm,
 * which is still a FUSE round trip and a copy per read. Once a mount has
 * answered as many bytes of such a file as it holds (a loader read it
 * through), a background thread writes the whole file into the cache
 * directory (fz_cache_file_store: to a temporary name, fsync'ed, renamed,
 * then described with its identity and block checksums), reading it through
 * the view - cache hits, and the chunks the cache's writer had to drop
 * computed again. Unless the mount is --compute-on-read, a computed shard
 * is rather computed whole at its first open, straight into such a file
 * (fz_keep_compute). A later open of that file, in this mount or a later
 * one with the same cache, finds it (fz_cache_file_open checks the sidecar
 * and the data file's identity) and registers it as the passthrough
 * backing, exactly as for a whole unchanged source file (fs/ops.c).
 *
 * The key of a kept file is fz_view_node_key: the file's every byte named
 * by where it comes from, source identities included, so a changed source,
 * option or fzfs format finds nothing. A file whose source changed while
 * mounted is never opened (fz_view_check_node runs first) and is revoked
 * as any other (fs/watch.h).
 *
 * Only with passthrough on and a cache that stores; only for files of at
 * least FZ_KEEP_MIN bytes; the thread runs at a lower priority, one file at
 * a time, and stops at unmount, leaving nothing half-written.
 *
 * Threading: fz_keep_eligible, fz_keep_served and fz_keep_open may be
 * called from any thread; a node's key is written once, under a lock,
 * before the node is said to have one. */
#ifndef FZ_FS_KEEP_H
#define FZ_FS_KEEP_H

#include <stdbool.h>
#include <stdint.h>

#include "fs/ops.h"

/* Files smaller than this are not kept (answered fast enough anyway). */
#define FZ_KEEP_MIN (8ull << 20)

/* Set up keeping for fs (after the view's cache is open and passthrough
 * decided by op_init's caller's options, before serving) and start its
 * thread. Returns NULL, logging at DEBUG why, when there is nothing to do:
 * no cache that stores, passthrough forced off, no eligible file, or no
 * thread/memory (never a reason to fail a mount). */
fz_fs_keep *fz_keep_start(fz_fs *fs);

/* Stop the thread (a file being read whole is abandoned: its temporary is
 * removed; files computed whole at open are committed first) and wait for
 * it: before the compute pool stops (keeping may use it). The pool's
 * threads may still call fz_keep_served. NULL accepted. */
void fz_keep_stop(fz_fs_keep *k);
/* Free k: after the pool stopped, before the view's cache is closed. NULL
 * accepted. */
void fz_keep_free(fz_fs_keep *k);

/* Whether node may be served from a kept file (eligible: computed, large
 * enough, keyed). Its key is made at the first call for it (a hash over
 * its segments: milliseconds for a large shard), not at mount. */
bool fz_keep_eligible(fz_fs_keep *k, uint32_t node);

/* len more bytes of node were answered: once they add up to its size, the
 * node is queued to be kept (once per mount). Atomics; cheap. */
void fz_keep_served(fz_fs_keep *k, uint32_t node, uint64_t len);

/* An O_RDONLY fd of node's kept file (the caller closes it), or -1 when
 * there is none (or it failed its checks: then it is removed). */
int fz_keep_open(fz_fs_keep *k, uint32_t node);

/* Whether an open of node should compute it whole now (fz_keep_compute):
 * it may be kept (fz_keep_eligible), the mount is not --compute-on-read,
 * and computing it so has not failed in this mount for a reason that would
 * recur (no room in the cache). */
bool fz_keep_eager(fz_fs_keep *k, uint32_t node);

/* Compute node whole into a new file in the cache, now, on the compute pool
 * (the calling thread takes part), storing nothing in LMDB (chunks it holds
 * are used), each byte computed once: a safetensors shard a 4 MiB block per
 * task; a .bin its record data first, as extents of the view
 * (fz_view_node_extents, which teach it every record's CRC), then its zip
 * headers from those CRCs. Returns an O_RDONLY fd of that file (the caller
 * closes it), all of whose bytes are written, or -1 (logged why) when it
 * was not computed so:
 * stored meanwhile (look again), being stored by another process, no room,
 * a source changed or failed, unmount. The file is committed for later
 * mounts (checksummed, fsync'ed, renamed, described) afterwards, by the
 * keeping thread. The caller makes sure no other open of node is served
 * through the daemon meanwhile (fs/ops.c). */
int fz_keep_compute(fz_fs_keep *k, uint32_t node);

/* Files this mount computed whole at their open (fz_keep_compute). */
uint64_t fz_keep_computed(const fz_fs_keep *k);

/* Files this mount kept, and opens answered from kept files (status). */
uint64_t fz_keep_stored(const fz_fs_keep *k);

#endif
