/* Private to cache/: the cache handle shared by cache.c (open, fetch,
 * single flight), value.c (keys, value headers), store.c (the writer
 * thread, batching, eviction) and admin.c (stats, verify, clear). See
 * cache.h for the contract. */
#ifndef FZ_CACHE_CACHE_INT_H
#define FZ_CACHE_CACHE_INT_H

#include <limits.h>
#include <lmdb.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "cache/cache.h"

/* A stored value: a header, then the chunk bytes. The header is 48 fixed
 * bytes - magic u32, version u16, block shift u8, reserved u8, length
 * u64, XXH3-64 of the block table u64, the key echoed (hi, lo, chunk u64)
 * - then the block table: XXH3-64 of each 2^shift-byte block of the bytes
 * (the last block shorter). All little endian. Per-block checksums let a
 * read of a few blocks (a 128 KiB FUSE read of a 4 MiB chunk) verify just
 * what it serves; the echoed key makes a value under the wrong key fail. */
#define FZ_CACHE_MAGIC 0x31435a46u /* "FZC1" */
#define FZ_CACHE_VALUE_VERSION 1u
#define FZ_CACHE_HDR_FIXED 48u
#define FZ_CACHE_BLOCK_SHIFT 16u  /* 64 KiB blocks ... */
#define FZ_CACHE_MAX_BLOCKS 4096u /* ... grown for values over 256 MiB */
#define FZ_CACHE_KEYLEN 24u       /* hi, lo, chunk: big endian so a recipe's chunks sort together */

/* Bound on bytes queued for the writer: a value that would pass it is
 * dropped (not stored), never waited for. */
#define FZ_CACHE_QUEUE_MAX (48ull << 20)
/* A store that waits for room (FZ_CACHE_STORE_WAIT) stops waiting once the
 * writer has spent this long on one batch: it is stalled (another process
 * holds the environment's write lock, a disk that does not take writes),
 * and the store then pushes older values out as any other does. */
#define FZ_CACHE_STALL_SECS 5
/* Read transactions kept reset for reuse (mdb_txn_renew), at most. */
#define FZ_CACHE_RTXN_MAX 32u
/* Value buffers the writer keeps for the next fills instead of freeing
 * them, at most (only values of at least FZ_CACHE_SPARE_MIN bytes). */
#define FZ_CACHE_SPARE_MAX 4u
#define FZ_CACHE_SPARE_MIN (1ull << 20)
/* Bound on one write transaction's value bytes (keeps write txns short). */
#define FZ_CACHE_TXN_MAX (24ull << 20)
/* Bound on access-time updates remembered between writer batches. */
#define FZ_CACHE_TOUCH_MAX 4096u

typedef enum { FZ_OP_PUT, FZ_OP_DEL } fz_cache_opkind;

/* One queued write. PUT owns `val` (header + bytes, vlen bytes; from
 * fz_cache_value_alloc). */
typedef struct fz_cache_op {
    fz_cache_opkind kind;
    fz_cache_key key;
    uint8_t *val;
    uint64_t vlen;
    struct fz_cache_op *next;
} fz_cache_op;

/* One fill in progress (lives on the filling thread's stack). */
typedef struct fz_flight {
    fz_cache_key key;
    uint64_t len;
    const uint8_t *data; /* the filler's chunk; valid while state == DONE */
    int state;           /* FZ_FLIGHT_* */
    unsigned waiters;
    struct fz_flight *next;
} fz_flight;

enum { FZ_FLIGHT_FILLING, FZ_FLIGHT_DONE, FZ_FLIGHT_FAILED };

enum { FZ_CTR_HITS, FZ_CTR_MISSES, FZ_CTR_FILLS, FZ_CTR_CORRUPT, FZ_CTR_EVICTIONS, FZ_NCTR };

struct fz_cache {
    char *dir;
    int lock_fd; /* fzfs.lock, flock()ed shared while open */
    /* Set once damage was seen (damage.c): no LMDB call is made again. */
    _Atomic bool broken;
    bool opening; /* fz_cache_open is deciding: damage is not warned */
    MDB_env *env;
    MDB_dbi dbi_data;  /* key -> header + bytes */
    MDB_dbi dbi_atime; /* key -> u64 access sequence (LRU side table) */
    MDB_dbi dbi_meta;  /* name -> u64 (persistent counters, "seq") */
    uint64_t map_size;
    unsigned psize;
    dev_t dir_dev;
    ino_t dir_ino;
    /* Held shared by every transaction, exclusively to adopt a map size
     * another process grew (MDB_MAP_RESIZED needs no live txn here). */
    pthread_rwlock_t txn_lock;

    /* Single flight: fills in progress, under fl_lock; fl_cond signals
     * both "a fill finished" and "a waiter finished copying". */
    pthread_mutex_t fl_lock;
    pthread_cond_t fl_cond;
    fz_flight *flights;

    /* Read transactions reset after use, for the next lookup to renew
     * (any thread: MDB_NOTLS), under rt_lock. */
    pthread_mutex_t rt_lock;
    MDB_txn *rtxn[FZ_CACHE_RTXN_MAX];
    unsigned nrtxn;

    /* Writer queue, under q_lock. `batch` is the list the writer is
     * committing (still searchable by fetch until committed). */
    pthread_mutex_t q_lock;
    pthread_cond_t q_work, q_idle, q_room; /* q_room: a batch committed */
    bool keep_all;                         /* FZ_CACHE_KEEP_ALL: wait, never drop */
    struct timespec batch_started;         /* CLOCK_REALTIME: the writer's current batch */
    fz_cache_op *head, *tail, *batch;
    uint64_t q_bytes;    /* value bytes in head..tail and batch */
    uint64_t head_bytes; /* of which in head..tail */
    /* Committed values' buffers kept for reuse (fz_cache_value_alloc). */
    uint8_t *spare[FZ_CACHE_SPARE_MAX];
    uint64_t spare_len[FZ_CACHE_SPARE_MAX];
    unsigned nspare;
    fz_cache_key *touched;
    unsigned ntouched;
    uint64_t flush_req, flush_done;
    bool stop;
    bool writer_running;
    pthread_t writer;

    /* Counter deltas not yet persisted in the meta DB. */
    _Atomic uint64_t delta[FZ_NCTR];
    /* This handle's counts already moved from delta to the meta DB
     * (fz_cache_handle_stats: persisted + delta). */
    _Atomic uint64_t persisted[FZ_NCTR];
    /* Values this handle did not store because the queue was full. */
    _Atomic uint64_t dropped;
    /* What went through the map since it was last let go (fz_cache_trim). */
    pthread_mutex_t trim_lock;
    uintptr_t page; /* the page size */
    uintptr_t trim_lo, trim_hi;
    uint64_t trim_bytes;
};

static inline bool fz_cache_key_eq(const fz_cache_key *a, const fz_cache_key *b)
{
    return a->hi == b->hi && a->lo == b->lo && a->chunk == b->chunk;
}

static inline uint64_t fz_cache_get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* damage.c: see the block comment there. */
/* 0 when dir/data.mdb is absent, empty or whole by its meta pages; 1 with
 * a reason in why when it is damaged. */
int fz_cache_check_file(const char *dir, char *why, size_t whylen);
/* 1 (why says what) when a walk over every database of the open
 * environment finds damage; run inside a guard. */
int fz_cache_walk_check(fz_cache *c, char *why, size_t whylen);
/* Open dir/fzfs.lock: the fd, or a negative FZ_E* code. */
int fz_cache_lock_open(const char *dir);
/* flock(fd, how), retried on EINTR: 0 or -errno. */
int fz_cache_lock(int fd, int how);
/* Remove dir's data.mdb and lock.mdb (caller holds the lock exclusively). */
int fz_cache_remove_env(const char *dir);
/* mkdir -p (cache.c). */
int fz_cache_make_dirs(const char *dir);

/* Every LMDB call runs inside a guard: fz_cache_guarded(c, fn, arg) runs
 * fn(c, arg) so that a SIGBUS, a SIGSEGV or an LMDB
 * assertion inside it returns FZ_CACHE_FAULT from fz_cache_guarded, after
 * aborting fn's live transaction (fz_cache_txn_begin/end record it),
 * releasing txn_lock and marking c broken. */
#define FZ_CACHE_FAULT INT_MIN
int fz_cache_guarded(fz_cache *c, int (*fn)(fz_cache *c, void *arg), void *arg);
/* Install the SIGBUS/SIGSEGV handler the guards need (fz_cache_open does). */
void fz_cache_guard_install(void);
typedef struct fz_cache_guard {
    sigjmp_buf jb;
    struct fz_cache_guard *prev;
    fz_cache *c;
    MDB_txn *txn; /* the live transaction (fz_cache_txn_begin/end keep it) */
    bool locked;  /* txn_lock held shared */
    int fault;    /* the signal, or -1 for an assertion */
    char what[200];
} fz_cache_guard;
void fz_cache_guard_push(fz_cache_guard *g, fz_cache *c);
void fz_cache_guard_pop(fz_cache_guard *g);
void fz_cache_guard_recover(fz_cache_guard *g);
/* Record the innermost guard's live transaction and lock state. */
void fz_cache_guard_note(MDB_txn *txn, bool locked);
/* mdb_env_set_assert callback: back to the guard instead of abort(). */
void fz_cache_on_assert(MDB_env *env, const char *msg);
/* Mark c broken (warn once, naming `fzfs cache clear`). */
void fz_cache_set_damaged(fz_cache *c, const char *what);
/* When mrc says the environment is damaged: mark c broken, return true. */
bool fz_cache_lmdb_damage(fz_cache *c, int mrc);

/* value.c: keys */
void fz_cache_key_encode(const fz_cache_key *k, uint8_t out[FZ_CACHE_KEYLEN]);
void fz_cache_key_decode(const uint8_t in[FZ_CACHE_KEYLEN], fz_cache_key *k);

/* cache.c */
/* Begin a txn holding txn_lock shared; adopts a grown map on MDB_MAP_RESIZED.
 * Returns an LMDB code; on success end it with fz_cache_txn_end. */
int fz_cache_txn_begin(fz_cache *c, unsigned flags, MDB_txn **txn);
/* Commit (commit=true) or abort, and release txn_lock. Returns an LMDB code. */
int fz_cache_txn_end(fz_cache *c, MDB_txn *txn, bool commit);
/* Release txn_lock after a transaction ended by hand (mdb_txn_reset). */
void fz_cache_txn_release(fz_cache *c);
/* Note a value [p, p+len) read through the map; every
 * FZ_CACHE_TRIM_EVERY bytes, let go of the pages of the map between the
 * lowest and the highest address noted (MADV_DONTNEED: the pages stay in
 * the page cache, dirty ones are still written back, an access maps them
 * again). So the process's resident size does not grow with the bytes
 * read through the map, for one call per FZ_CACHE_TRIM_EVERY bytes.
 * Call it with txn_lock held: the map does not move meanwhile, and a move
 * (MDB_MAP_RESIZED, under the lock held exclusively) forgets the range.
 * Values under FZ_CACHE_TRIM_MIN bytes share their pages with the tree and
 * are not noted. */
#define FZ_CACHE_TRIM_EVERY (32ull << 20)
#define FZ_CACHE_TRIM_MIN (64u << 10)
void fz_cache_trim(fz_cache *c, const void *p, uint64_t len);
/* Bytes of pages holding live data (all DBs), measured inside txn. */
uint64_t fz_cache_used_bytes(fz_cache *c, MDB_txn *txn);

/* Counter names in the meta DB, indexed by FZ_CTR_*. */
extern const char *const fz_cache_ctr_names[FZ_NCTR];
/* A u64 from the meta DB (0 when absent). */
uint64_t fz_cache_meta_get(fz_cache *c, MDB_txn *txn, const char *name);

/* store.c */
int fz_cache_writer_start(fz_cache *c);
/* Stop the writer after it drained the queue and persisted counters. */
void fz_cache_writer_stop(fz_cache *c);
/* A buffer for a value of len payload bytes: fz_cache_header_len(len) +
 * len bytes, the payload at + fz_cache_header_len(len); a spare one the
 * writer kept when one of that size is, else malloc'ed. NULL when out of
 * memory. Give it to fz_cache_queue_put_value or fz_cache_value_free. */
uint8_t *fz_cache_value_alloc(fz_cache *c, uint64_t len);
void fz_cache_value_free(fz_cache *c, uint8_t *val, uint64_t len);
/* Queue a PUT of val (from fz_cache_value_alloc, header written by
 * fz_cache_header): takes it. Unless `wait` (or FZ_CACHE_KEEP_ALL), never
 * waits: the oldest values not yet taken by the writer are dropped
 * (counted) until it fits FZ_CACHE_QUEUE_MAX beside the batch being
 * committed (which holds at most FZ_CACHE_TXN_MAX); if it still does not
 * fit, it is dropped itself, as is one too large for the map, one after a
 * stop or with a broken cache. With `wait`, first waits until it fits
 * without pushing another value out (fz_cache_queue_wait_room). */
void fz_cache_queue_put_value(fz_cache *c, const fz_cache_key *key, uint8_t *val, uint64_t len,
                              bool wait);
/* The same from bytes that stay the caller's (copied). */
void fz_cache_queue_put(fz_cache *c, const fz_cache_key *key, const uint8_t *bytes, uint64_t len,
                        bool wait);
/* Wait until a value of len bytes fits the queue without pushing another
 * out (the writer committed enough), the writer stops, or (unless
 * FZ_CACHE_KEEP_ALL) it stalls (FZ_CACHE_STALL_SECS on one batch). Holds
 * no lock but q_lock, released while waiting: callers must hold none of
 * theirs. */
void fz_cache_queue_wait_room(fz_cache *c, uint64_t len);
/* Whether a value of len bytes fits the queue now without pushing any
 * other value out (for work that is only worth doing if it is kept). */
bool fz_cache_queue_room(fz_cache *c, uint64_t len);
void fz_cache_queue_del(fz_cache *c, const fz_cache_key *key);
/* Remember an access for the LRU table (dropped when the table is full). */
void fz_cache_queue_touch(fz_cache *c, const fz_cache_key *key);
/* If a PUT for key of len bytes is queued or being committed, copy its
 * bytes [off, off+n) into out (nothing when n is 0) and return true. */
bool fz_cache_queue_lookup(fz_cache *c, const fz_cache_key *key, uint64_t len, uint64_t off,
                           uint64_t n, uint8_t *out);
/* value.c: value headers */
/* Header bytes (fixed part + block table) of a value of len bytes. */
uint64_t fz_cache_header_len(uint64_t len);
/* Write the header for (key, bytes) into hdr[fz_cache_header_len(len)]. */
void fz_cache_header(uint8_t *hdr, const fz_cache_key *key, const uint8_t *bytes, uint64_t len);
/* Check a value's header against key (magic, version, sizes, key echo,
 * the block table's checksum); on success *len is the payload length and
 * *payload points at it inside val. Does not read the payload. */
bool fz_cache_value_parse(const uint8_t *val, uint64_t vlen, const fz_cache_key *key, uint64_t *len,
                          const uint8_t **payload);
/* Check the blocks of a parsed value that overlap [off, off+n). */
bool fz_cache_value_check(const uint8_t *val, uint64_t off, uint64_t n);

/* files.c: stored whole files (its block comment: the lock, what is trusted). */
#define FZ_FILES_HEX 32u  /* a key's name: hi, lo in hex */
#define FZ_FILES_NAME 48u /* room for "<hex>.meta.tmp" */
/* At most 2^23 blocks (32 TiB): a sidecar is at most 64 MiB. */
#define FZ_FILES_MAX_BLOCKS (1ull << 23)
enum { FZ_FILES_DATA, FZ_FILES_META, FZ_FILES_TMP, FZ_FILES_META_TMP, FZ_FILES_OTHER };
/* A parsed sound sidecar (fz_files_side_load). */
typedef struct {
    int fd;           /* the sidecar, open; -1 */
    struct stat st;   /* its fstat */
    uint8_t *buf;     /* its bytes */
    fz_cache_key key; /* chunk 0 */
    uint64_t size, dev, ino, dsize, nb;
    int64_t mtime_ns, ctime_ns;
    const uint8_t *table; /* nb XXH3-64s, little endian, inside buf */
} fz_files_side;
void fz_files_hex(const fz_cache_key *key, char hex[FZ_FILES_HEX + 1]);
/* What a name in files/ is (FZ_FILES_*); hex gets its key part. */
int fz_files_kind(const char *name, char hex[FZ_FILES_HEX + 1]);
uint64_t fz_files_blocks(uint64_t size);
/* Open DIR/files (made, mode 0700, when create): the fd, or FZ_ENOTFOUND
 * (absent), FZ_EIO, FZ_EINVAL. */
int fz_files_dir(const char *dir, bool create);
/* Open files/name (created 0600 when create), flock it LOCK_EX|LOCK_NB and
 * check that the name still names it: 0 and *fd (the caller closes it,
 * which unlocks), FZ_ENOTFOUND (absent, !create), FZ_EBUSY (held),
 * FZ_EFORMAT (a link or not a regular file), FZ_EIO. */
int fz_files_lock(int dfd, const char *name, bool create, int *fd);
/* Bytes of a sidecar for nb blocks. */
size_t fz_files_side_len(uint64_t nb);
/* Write the sidecar for (key, size, the data file's fstat st, table) into
 * b[fz_files_side_len(fz_files_blocks(size))]. */
void fz_files_side_build(uint8_t *b, const fz_cache_key *key, uint64_t size, const struct stat *st,
                         const uint8_t *table);
/* Read and check <hex>.meta: 0 (sound; free with fz_files_side_free, also
 * after an error), FZ_ENOTFOUND (absent), FZ_EFORMAT (why says what is
 * wrong), FZ_ENOMEM. */
int fz_files_side_load(int dfd, const char *hex, fz_files_side *s, char *why, size_t whylen);
void fz_files_side_free(fz_files_side *s);
/* Open <hex> and check it is the file s records: 0 and *fd (blocking),
 * or FZ_EFORMAT with why (*fd, when not -1, is still the caller's to close). */
int fz_files_data_open(int dfd, const char *hex, const fz_files_side *s, int *fd, char *why,
                       size_t whylen);
/* Remove a stored file: under the data file's lock (false, nothing done,
 * when a store holds it), the sidecar when it is still the inode side (any
 * sidecar when any_side; with neither, only when there is no sidecar: an
 * orphan), then the data file. True when it is gone. */
bool fz_files_remove(int dfd, const char *hex, const struct stat *side, bool any_side);
/* fz_cache_file_open on an open files/ (dir names the cache in messages). */
int fz_files_open_in(int dfd, const char *dir, const fz_cache_key *key, uint64_t size, int *fd);
/* Call fn for each name in DIR/files (a snapshot taken first); stops at
 * the first nonzero return, which it returns. 0 when there is no files/. */
typedef int (*fz_files_visit_fn)(void *arg, int dfd, const char *name, int kind, const char *hex);
int fz_files_for_each(const char *dir, fz_files_visit_fn fn, void *arg);
/* The files' part of stats, verify, clear and reset (cache.h). */
int fz_cache_files_stats(const char *dir, uint64_t *n, uint64_t *bytes);
int fz_cache_files_verify(const char *dir, uint64_t *checked, uint64_t *bad);
int fz_cache_files_clear(const char *dir);

#endif
