/* The chunk cache: computed bytes kept in an LMDB environment so that a
 * later read (same mount, a later mount, or materialize) does not compute
 * them again. DESIGN.md "Cache" is the design; this header is the contract.
 *
 * A value is one chunk (<= 4 MiB) plus a small header (length, the key
 * echoed, an XXH3-64 checksum of each 64 KiB block of the bytes); every
 * read checks the header and the blocks it serves, and a value that fails
 * is deleted and recomputed, never served. A value larger than a third of
 * the map is computed every time, not stored. Fills are single-flight within a process: two
 * threads wanting the same missing key compute it once. Writes are batched
 * by one writer thread, which a read never waits for: when the write queue
 * is full, the oldest queued values are dropped (not stored; computed again
 * when next read), unless the cache was opened with FZ_CACHE_KEEP_ALL or
 * the fetch asks FZ_CACHE_STORE_WAIT. MDB_NOTLS, MDB_NOSYNC
 * without MDB_WRITEMAP (a crash may lose recent entries, never corrupt one); fz_cache_close syncs.
 * Read transactions are reset after a lookup and renewed by the next one. The pages of the map
 * values are read from are let go every few dozen MiB, so the process's resident size does not grow
 * with the cache. Eviction is least-recently-used from 90% of the map down to 80%; MDB_MAP_FULL
 * evicts and retries once. Counters (hits, misses, fills, corrupt, evictions) persist in the
 * environment so `fzfs cache stats` can show what earlier mounts did.
 *
 * Thread-safety: every function may be called from any thread once the
 * cache is open; fz_cache_close must be the last call. */
#ifndef FZ_CACHE_CACHE_H
#define FZ_CACHE_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct fz_cache fz_cache;

/* 128-bit recipe identity (hash of the recipe's canonical text, the source
 * file identity and the fzfs format version) + chunk index. */
typedef struct {
    uint64_t hi, lo;
    uint64_t chunk;
} fz_cache_key;

/* Hash `len` bytes of canonical recipe text into the hi/lo of a key. */
void fz_cache_key_for(fz_cache_key *k, const void *text, uint64_t len, uint64_t chunk);

/* Open (creating if needed, with parents) the cache in `dir` with map size
 * `map_size` bytes (0 = the existing environment's size, 16 GiB for a new
 * one; the data file is sparse). Several processes
 * may open the same directory at once (LMDB locks it); one process must
 * not open it twice. On success the caller owns *out (fz_cache_close).
 * Errors: FZ_EIO (with the LMDB message or errno), FZ_EEXIST (already open
 * in this process), FZ_EINVAL (bad path), FZ_ENOMEM. */
int fz_cache_open(fz_cache **out, const char *dir, uint64_t map_size);
/* The same with flags. Damage (cache/damage.c): a data.mdb that is not a
 * whole LMDB environment is removed and recreated empty (with a warning)
 * when no other process has the cache open, else FZ_EIO naming `fzfs
 * cache clear`; with FZ_CACHE_NO_REPAIR (stats, verify) it is FZ_EIO and
 * nothing is touched. Damage found later (a file truncated while mapped,
 * corrupt pages) makes the handle compute without LMDB from then on
 * (warned once); fetch never fails because of it, stats/verify/clear
 * return FZ_EIO. */
#define FZ_CACHE_NO_REPAIR 1u
/* FZ_CACHE_KEEP_ALL: every value a fetch computes is stored; a fetch waits
 * for room in the write queue instead of dropping older values (a batch
 * writer such as materialize --fill-cache, never a mount). */
#define FZ_CACHE_KEEP_ALL 2u
int fz_cache_open_flags(fz_cache **out, const char *dir, uint64_t map_size, unsigned flags);
/* `fzfs cache clear`: remove the environment in dir (created if missing)
 * and the stored whole files (DIR/files/'s content) so the next open starts
 * empty; FZ_EIO, touching nothing, while another process has the cache open. */
int fz_cache_reset(const char *dir);
/* Flush pending writes, mdb_env_sync, close. NULL is accepted. */
void fz_cache_close(fz_cache *c);
/* Default directory: $XDG_CACHE_HOME/fzfs or ~/.cache/fzfs (caller frees;
 * NULL when out of memory or no home directory is known). Not created. */
char *fz_cache_default_dir(void);

/* Produce the chunk for `key` into out (len bytes): from the cache when a
 * verified value exists, else by calling fill(arg, out, len) once (other
 * threads asking for the same key wait for it) and, when `store`, keeping
 * the result. When this returns, out holds the bytes; the store itself
 * completes asynchronously (fz_cache_flush waits for it). A stored value
 * whose length differs from `len` counts as corrupt. c == NULL just calls
 * fill. fill must not fetch `key` itself (it may fetch other keys).
 * Errors: whatever fill returns; cache I/O problems are logged and fall
 * back to computing, never failing the read. */
typedef int (*fz_cache_fill_fn)(void *arg, uint8_t *out, uint64_t len);
/* What a fetch does with a chunk it computed (its `store`; true and false
 * are FZ_CACHE_STORE and FZ_CACHE_NO_STORE): keep nothing; queue it for
 * the writer, dropping older queued values when the queue is full (a
 * fetch never waits for the writer); or FZ_CACHE_STORE_WAIT: wait for
 * room in the queue instead (unless the writer has spent 5 s on one batch:
 * stalled, not slow), for work that will read the chunk again and whose
 * reader waits for all of it anyway (a zip's record CRCs). */
enum { FZ_CACHE_NO_STORE = 0, FZ_CACHE_STORE = 1, FZ_CACHE_STORE_WAIT = 2 };
int fz_cache_fetch(fz_cache *c, const fz_cache_key *key, uint64_t len, uint8_t *out,
                   fz_cache_fill_fn fill, void *arg, int store);

/* The same for bytes [off, off+n) of the len-byte chunk only: a hit copies
 * just those bytes out of the (fully verified) value; a miss fills the
 * whole chunk into a temporary buffer. Errors: FZ_EINVAL (range outside
 * the chunk), FZ_ENOMEM, or whatever fill returns. */
int fz_cache_fetch_range(fz_cache *c, const fz_cache_key *key, uint64_t len, uint64_t off,
                         uint64_t n, uint8_t *out, fz_cache_fill_fn fill, void *arg, int store);

/* Only what is stored: bytes [off, off+n) of the len-byte chunk for key
 * copied to out when the cache holds it (its write queue, or a sound LMDB
 * value), counted as a hit: 1; else 0, counted as a miss, and the caller
 * computes what it needs of the chunk itself and stores nothing (bytes it
 * keeps elsewhere: a file computed whole, fs/keep.h). NULL c: 0. */
int fz_cache_peek_range(fz_cache *c, const fz_cache_key *key, uint64_t len, uint64_t off,
                        uint64_t n, uint8_t *out);

/* Compute the chunk for `key` ahead of its reader: unless it is stored,
 * queued or being filled already, fill it (as fz_cache_fetch would, the
 * fill single-flight with readers wanting it meanwhile) and queue it to be
 * stored; a later fetch of the key is then served from the queue or LMDB.
 * Does nothing without a cache (c NULL or broken) or when the write queue
 * has no room for it (the bytes would be dropped). Returns 1 when it
 * filled the chunk, 0 when there was nothing to do, or what fill returned
 * (nothing was kept; a reader computes it again and reports). */
int fz_cache_prefetch(fz_cache *c, const fz_cache_key *key, uint64_t len, fz_cache_fill_fn fill,
                      void *arg);

typedef struct {
    uint64_t entries, bytes, map_size, used_bytes;
    uint64_t hits, misses, fills, corrupt, evictions;
    uint64_t dropped;           /* fz_cache_handle_stats only: values not stored (queue full) */
    uint64_t files, file_bytes; /* fz_cache_get_stats only: stored whole files, their bytes */
} fz_cache_stats;

/* Wait until every value queued by earlier fetches of this process is
 * committed (or dropped, e.g. when it cannot fit the map). Returns 0. */
int fz_cache_flush(fz_cache *c);

/* Flushes, then reports: entries and bytes (payload bytes of all values),
 * map_size, used_bytes (pages of live data), files and file_bytes (stored
 * whole files, below: how many and their sizes), and the counters summed over
 * every process that used the environment since the last clear: hits
 * (served without a fill: LMDB, the write queue or another thread's
 * fill), misses (not in LMDB), fills (fill calls), corrupt (values that
 * failed verification), evictions (values deleted to make room).
 * Errors: FZ_EIO. */
int fz_cache_get_stats(fz_cache *c, fz_cache_stats *out);
/* This handle's own counters since it was opened (hits, misses, fills,
 * corrupt, evictions; the other fields 0): atomics only, no flush, no
 * transaction - cheap enough to poll. NULL gives zeros. */
void fz_cache_handle_stats(fz_cache *c, fz_cache_stats *out);
/* Check every value's header and checksum, and every stored whole file
 * (its sidecar, its identity, each block's checksum: all its bytes are
 * read); delete bad ones (values counted as corrupt; a file's sidecar goes
 * first); *checked = values and files read, *bad = how many were deleted.
 * Leftovers of dead assemblers (temporaries nobody holds, data files
 * without a sidecar) are removed, not counted. Errors: FZ_EIO, FZ_ENOMEM. */
int fz_cache_verify(fz_cache *c, uint64_t *checked, uint64_t *bad);
/* Delete every entry (counters reset) and every stored whole file (all of
 * DIR/files/ but the temporaries of stores running now). Errors: FZ_EIO. */
int fz_cache_clear(fz_cache *c);

/* ---- whole files (cache/files.c) ----
 * A computed view file can be kept whole, as an ordinary file under
 * DIR/files/, so that a mount may hand it to the kernel (FUSE passthrough)
 * instead of answering each read. key names the file's bytes (hi and lo; chunk
 * is ignored): the data file is DIR/files/<32 hex> (hi then lo, %016x each).
 * A store writes it to <32 hex>.tmp (flock()ed exclusively while it is being
 * assembled), fsyncs it and renames it; then a small sidecar,
 * <32 hex>.meta, describes it: a format version, the key, the size, the data
 * file's dev/ino/size/mtime_ns/ctime_ns after the rename, an XXH3-64 of each
 * 4 MiB block and a checksum of the sidecar itself; the sidecar too is
 * written to a temporary (<32 hex>.meta.tmp), fsync'ed and renamed. Whatever
 * is read back from disk is checked before it is believed. The directory is
 * mode 0700 and the files 0600 (the cache may hold a private model). Stored
 * files do not depend on LMDB: they work with a damaged (broken) cache. */
#define FZ_CACHE_FILE_BLOCK (4ull << 20)

/* Open the stored file for key, which must be `size` bytes: 0 and *fd
 * (O_RDONLY|O_CLOEXEC; the caller closes it) when the sidecar is sound, names
 * this key and size, and the data file is the one it records (fstat: a regular
 * file with that dev, ino, size, mtime and ctime); the sidecar's mtime is then
 * set to now (the least-recently-used order of eviction). FZ_ENOTFOUND when
 * there is none, or one of another size (kept). A file that fails a check is
 * removed (sidecar first), with one WARNING naming it, and is FZ_ENOTFOUND too.
 * Cheap: a few syscalls and the sidecar's bytes (8 per 4 MiB), no data read.
 * NULL c: FZ_ENOTFOUND. Thread-safe, also beside a store of the same key. */
int fz_cache_file_open(fz_cache *c, const fz_cache_key *key, uint64_t size, int *fd);

/* Fill buf with the file's bytes [off, off+len) (len <= FZ_CACHE_FILE_BLOCK):
 * 0 or a negative FZ_E* code (with its message set). */
typedef int (*fz_cache_file_read_fn)(void *arg, uint64_t off, uint64_t len, uint8_t *buf);

/* Storing a file piece by piece, in any order, from any threads: begin
 * claims the key (the temporary, locked and sized to `size` bytes, its room
 * made: the budget below), put writes bytes, commit checks in what was
 * written and keeps it. Returns of begin: 0 and *out; FZ_EEXIST when the key
 * is stored already (nothing to do); FZ_EBUSY, FZ_ENOSPC, FZ_EIO, FZ_ENOMEM
 * as fz_cache_file_store's. Every writer is ended by exactly one commit or
 * abort. */
typedef struct fz_cache_file_writer fz_cache_file_writer;
int fz_cache_file_begin(fz_cache *c, const fz_cache_key *key, uint64_t size,
                        fz_cache_file_writer **out);
/* Write [off, off+len) of the file: 0, FZ_ENOSPC, FZ_EIO (naming the path)
 * or FZ_EINVAL (outside the file). Thread-safe for disjoint ranges. A put of
 * exactly one whole FZ_CACHE_FILE_BLOCK-aligned block checksums it from buf;
 * other blocks are read back by commit. */
int fz_cache_file_put(fz_cache_file_writer *w, uint64_t off, const void *buf, uint64_t len);
/* A new O_RDONLY|O_CLOEXEC descriptor of the file being written (the caller
 * closes it; it stays valid whatever becomes of the writer), or FZ_EIO: for
 * reading the bytes before they are committed. */
int fz_cache_file_reopen(const fz_cache_file_writer *w);
/* Checksum what put did not, fsync, rename into place and write the
 * sidecar; ends w. 0, or (nothing kept, no temporary left) FZ_ECANCELED
 * (*cancel, may be NULL, was true between blocks), FZ_ENOSPC, FZ_EIO,
 * FZ_ENOMEM. Every byte of the file must have been put. */
int fz_cache_file_commit(fz_cache_file_writer *w, const _Atomic bool *cancel);
/* End w with nothing kept and no temporary left. NULL accepted. */
void fz_cache_file_abort(fz_cache_file_writer *w);

/* Assemble and keep the file for key (size bytes), calling read() for each
 * FZ_CACHE_FILE_BLOCK piece in order. Returns 0 when it is stored (or already
 * was), or, each time with nothing kept and no temporary left:
 * FZ_EBUSY - another thread or process is assembling the same key now;
 * FZ_ENOSPC - it would not fit: the files' budget is the cache's map size
 *   (least-recently-used files are removed to make room, only when that is
 *   enough); a file larger than half the budget is never stored; and at least
 *   1 GiB or 5% of the filesystem, whichever is larger, must stay free (also
 *   a write failing with ENOSPC or EDQUOT);
 * FZ_ECANCELED - *cancel (may be NULL) was true before a piece;
 * what read() returned;
 * FZ_EIO - a write, fsync or rename failed (the message names the path);
 * FZ_ENOMEM.
 * A temporary left by a dead process (its flock free) is replaced. Blocks
 * the calling thread for the whole assembly (a background thread's job).
 * Thread-safe; NULL c: FZ_ENOTFOUND. */
int fz_cache_file_store(fz_cache *c, const fz_cache_key *key, uint64_t size,
                        fz_cache_file_read_fn read, void *arg, const _Atomic bool *cancel);

#endif
