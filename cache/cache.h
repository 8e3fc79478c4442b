/* The chunk cache: computed bytes kept in an LMDB environment so that a
 * later read (same mount, a later mount, or materialize) does not compute
 * them again. DESIGN.md "Cache" is the design; this header is the contract.
 *
 * A value is one chunk (<= 4 MiB) plus a small header (length, checksum of
 * the bytes, the key echoed); a value that fails verification is deleted and
 * recomputed, never served. Fills are single-flight within a process: two
 * threads wanting the same missing key compute it once. Writes are batched
 * by one writer thread; MDB_NOTLS, MDB_NOSYNC without MDB_WRITEMAP (a crash
 * may lose recent entries, never corrupt one); fz_cache_close syncs.
 * Eviction is least-recently-used from 90% of the map down to 80%;
 * MDB_MAP_FULL evicts and retries once. Counters (hits, misses, fills,
 * corrupt, evictions) persist in the environment so `fzfs cache stats`
 * can show what earlier mounts did.
 *
 * Thread-safety: every function may be called from any thread once the
 * cache is open; fz_cache_close must be the last call. */
#ifndef FZ_CACHE_CACHE_H
#define FZ_CACHE_CACHE_H

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

/* Open (creating if needed) the cache in `dir` with map size `map_size`
 * bytes (0 = 16 GiB). Errors: FZ_EIO (with the LMDB message), FZ_ENOMEM. */
int fz_cache_open(fz_cache **out, const char *dir, uint64_t map_size);
/* Flush pending writes, mdb_env_sync, close. NULL is accepted. */
void fz_cache_close(fz_cache *c);
/* Default directory: $XDG_CACHE_HOME/fzfs or ~/.cache/fzfs (caller frees). */
char *fz_cache_default_dir(void);

/* Produce the chunk for `key` into out (len bytes): from the cache when a
 * verified value exists, else by calling fill(arg, out, len) once (other
 * threads asking for the same key wait for it) and, when `store`, keeping
 * the result. Errors: whatever fill returns; cache I/O problems are logged
 * and fall back to computing, never failing the read. */
typedef int (*fz_cache_fill_fn)(void *arg, uint8_t *out, uint64_t len);
int fz_cache_fetch(fz_cache *c, const fz_cache_key *key, uint64_t len, uint8_t *out,
                   fz_cache_fill_fn fill, void *arg, bool store);

typedef struct {
    uint64_t entries, bytes, map_size, used_bytes;
    uint64_t hits, misses, fills, corrupt, evictions;
} fz_cache_stats;

int fz_cache_get_stats(fz_cache *c, fz_cache_stats *out);
/* Check every value's checksum; delete bad ones; *bad = how many. */
int fz_cache_verify(fz_cache *c, uint64_t *checked, uint64_t *bad);
/* Delete every entry (counters reset). */
int fz_cache_clear(fz_cache *c);

#endif
