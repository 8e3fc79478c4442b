/* The view: the finalized tree of a training run, as nodes whose bytes are
 * literal, spans of source files, or computed by tensor recipes. Built once
 * from SRC and the options (nothing but metadata is read), immutable
 * afterwards except for memo tables; both `fzfs mount` and `fzfs
 * materialize` read every byte through fz_view_read.
 *
 * Thread-safety: after fz_view_build returns, every function here may be
 * called from any number of threads. The CRC memo and the recipes' mean
 * memos each have their own lock; no lock is held while a chunk computes. */
#ifndef FZ_VIEW_VIEW_H
#define FZ_VIEW_VIEW_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cache/cache.h"
#include "util/buf.h"

/* Every view option: finalize's, same names and meaning (DESIGN.md). */
typedef struct {
    const char *src;
    const char *checkpoint; /* -c */
    const char *add_tokens; /* --add-tokens YAML */
    bool skip_default_tokens;
    const char *chat_template_path; /* -t */
    bool no_auto_stop_tokens;
    const char *stop_tokens;       /* --stop-tokens */
    const char *generation_config; /* carry (default) | none | PATH | NAME */
    bool keep_optimizer;
    bool root_copy;
    bool hub; /* --hub: Hub-ready (sets safetensors and root_copy; no
               * Forgather-only files such as .package_files_copied) */
    bool safetensors;
    const char *dtype;             /* bfloat16 | float16 | float32 | NULL */
    const char *device;            /* only "cpu" */
    const char *quantize;          /* compressed-tensors recipe (implies safetensors) */
    const char *quantize_ignore;   /* regex (POSIX ERE) of module names not to quantize */
    const char *embedding_tensors; /* "NAME[,NAME...]": override the embedding/head guess */
    uint64_t max_shard_size;       /* re-shard at this many bytes (0: mirror the source files) */
} fz_view_opts;

typedef struct fz_view fz_view;

typedef enum { FZ_NODE_DIR, FZ_NODE_FILE, FZ_NODE_SYMLINK } fz_node_kind;

struct fz_seg; /* a file's segments: private to view/ (view/internal.h) */

typedef struct {
    char *name; /* basename ("" for the root) */
    char *path; /* relative path from the root ("" for the root) */
    fz_node_kind kind;
    uint32_t parent;
    uint32_t *children; /* DIR: sorted by name */
    uint32_t nchildren;
    char *target;  /* SYMLINK: relative target */
    uint64_t size; /* FILE: exact size */
    /* Private to view/: where the bytes come from (segments, zip layout). */
    struct fz_seg *segs;
    uint32_t nsegs;
    uint32_t zip;
    uint32_t mode; /* permission bits in DEST: a copied file's are its source's, a
                    * generated file's and a directory's follow SRC's directory
                    * (owner rw kept); the mount shows them without write bits */
} fz_node;

/* Build the view of o->src. Errors (message names the file and problem):
 * FZ_ENOTFOUND (SRC, checkpoint, -t file, preset, optimizer_state.pt
 * missing), FZ_EUSAGE (bad option combination or value), FZ_EFORMAT /
 * FZ_EDENIED / FZ_ERANGE (malformed inputs), FZ_EINVAL, FZ_EIO, FZ_ENOMEM.
 * On success the caller owns *out (fz_view_free). */
int fz_view_build(fz_view **out, const fz_view_opts *o);

/* Check option values and combinations without touching the disk (the
 * checks fz_view_build starts with). FZ_EUSAGE with a message that says
 * what to use instead; 0 when the options are consistent. */
int fz_view_opts_check(const fz_view_opts *o);
void fz_view_free(fz_view *v);

/* Node table: index 0 is the root. Stable for the life of the view. */
uint32_t fz_view_node_count(const fz_view *v);
const fz_node *fz_view_node(const fz_view *v, uint32_t i);

/* Read file bytes [off, off+len) of node i into buf. The range must lie
 * within the file. Errors: FZ_EIO (a source read failed, or a source the
 * file is made from changed: fz_view_check_node), FZ_ENOMEM, FZ_EINVAL. */
int fz_view_read(fz_view *v, uint32_t node, uint64_t off, uint64_t len, void *buf);

/* As fz_view_read, but what is computed is not stored in the cache (what
 * it holds is used; zip record CRCs too), and a computed tensor's range
 * that does not start or end a cached chunk is computed alone, not with its
 * whole chunk: for bytes the caller keeps itself (fs/keep.h). */
int fz_view_read_uncached(fz_view *v, uint32_t node, uint64_t off, uint64_t len, void *buf);

/* Whether the source files node i is made from are still what the view was
 * built from: the held-open file's device, inode, size and mtime (fstat,
 * about a microsecond each; no caching, so a check is always current). 0,
 * or FZ_EIO naming the node and the changed source. A change is sticky: the
 * node (and every node made from that source) fails from then on, even if
 * the file is restored. With fz_view_log_changes, the first check that sees
 * a source changed logs it (once per source, at ERROR, naming the source
 * and the file being served, or without one the files made from that
 * source; a mount's log says which source changed, materialize just
 * fails). Nodes made only of literal bytes have no sources and always
 * pass. fz_view_read checks before and after reading. */
int fz_view_check_node(fz_view *v, uint32_t node);
/* The same over every source file of the view (materialize, before it
 * publishes DEST). */
int fz_view_check_sources(fz_view *v);
/* Log each source change once (call before serving from several threads). */
void fz_view_log_changes(fz_view *v);
/* The view's source files: how many, the path of source i, and whether it
 * changed (when `check`, fstat it now as fz_view_check_node does - a change
 * found is sticky and logged; else the sticky flag only). */
uint32_t fz_view_source_count(const fz_view *v);
const char *fz_view_source_path(const fz_view *v, uint32_t i);
bool fz_view_source_changed(fz_view *v, uint32_t i, bool check);
/* Whether source i's path (or `path`, the same file named from another
 * directory, NULL for the view's own) no longer names the file the view
 * holds open: removed, or replaced by another file (rename over it). The
 * view keeps serving the file it opened, which is consistent, so this is
 * news for `fzfs status`, not an error. One stat(2). */
bool fz_view_source_replaced(const fz_view *v, uint32_t i, const char *path);
/* Whether node i is made from a source already seen changed (no syscall:
 * the sticky flags only). */
bool fz_view_node_stale(const fz_view *v, uint32_t node);

/* A piece of a file that needs no computation: literal bytes in memory, or
 * a span of a held-open source file. */
typedef struct {
    const uint8_t *mem; /* non-NULL: these bytes */
    int fd;             /* else: source file descriptor (borrowed), at off */
    uint64_t off;
    uint64_t len;
} fz_piece;

/* Resolve file bytes [off, off+len) of node i into at most `max` pieces, in
 * order, when every byte is literal or a source span (then *n is the count
 * and the result true); false when some byte must be computed (tensor
 * recipe, zip header), more than `max` pieces would be needed, or a source
 * of the node changed (fz_view_check_node, done here first): then read with
 * fz_view_read, which reports the error. The same segment table
 * fz_view_read uses, so the FUSE layer can splice spans without a second
 * idea of where bytes live. A span piece is only valid while its source is
 * unchanged: a caller that hands it on (splice) checks the node again
 * afterwards, since the source may have changed under the transfer. */
bool fz_view_direct(fz_view *v, uint32_t node, uint64_t off, uint64_t len, fz_piece *pieces,
                    size_t max, size_t *n);

/* Whether node i is exactly the whole of one source file, unchanged by the
 * view (a copied *.py, optimizer_state.pt, a weight shard passed through
 * whole: fz_view_shard_is_whole), so that a reader may read that file
 * instead: *fd is the held-open source (borrowed, valid for the view's
 * life; read it with pread only, never move its offset), *path its path
 * (for messages; may be NULL). No syscall: it does not check the source;
 * call fz_view_check_node before handing the fd on (the mount registers it
 * for FUSE passthrough). */
bool fz_view_backing(const fz_view *v, uint32_t node, int *fd, const char **path);

/* Whether node i has computed bytes: a computed tensor, or zip headers
 * made from record CRCs (what the mount's compute pool answers). */
bool fz_view_node_computed(const fz_view *v, uint32_t node);
/* A key naming node i's bytes, for keeping the whole file (the cache's
 * whole files, cache.h): a hash of the cache format, the file's size and
 * where every byte comes from - a literal piece's hash, a span's source
 * identity (dev, inode, size, mtime, ctime) and range, a computed piece's
 * recipe key and range, a zip's record layout for its headers - so any
 * change to a source, an option or fzfs's format gives another key. 0 and
 * *key; -1 when some byte cannot be described (a recipe the cache does not
 * keep), when node is not a file, or before a cache was set
 * (fz_view_set_cache / fz_view_open_cache). No syscall. */
int fz_view_node_key(const fz_view *v, uint32_t node, fz_cache_key *key);

/* Writing a whole view out (materialize): every file as extents of at most
 * `max_len` bytes, covering each file exactly once: first every extent that
 * is not `late`, file by file in order, then the late ones (zip headers whose
 * CRC-32 covers records: read them after every other extent). */
typedef struct {
    uint32_t node;
    uint64_t off, len;
    bool late;
    int32_t zip, rec; /* private to view/ */
    uint32_t piece;   /* private to view/ */
} fz_extent;

/* Errors: FZ_ENOMEM. The caller frees *out; the view keeps what it needs
 * to learn from fz_view_read_extent until it is freed.
 *
 * Concurrency: what the view learns from reading extents is kept per zip
 * (.bin file), and making an extent list starts it afresh for every zip it
 * covers: so at most one extent list per zip may be in use at a time, and
 * none may be made while extents of the same zip are being read (their
 * CRCs would be lost, and the late extents computed from the records
 * again). fz_view_extents covers every zip: one per view at a time, and
 * no fz_view_node_extents beside it. */
int fz_view_extents(fz_view *v, uint64_t max_len, fz_extent **out, size_t *n);

/* The extents of file `node` alone (a mount computing it whole, fs/keep.h):
 * as fz_view_extents lists them for it, late ones last, except that each
 * also lies within one max_len-aligned block of the file (so a block that
 * one segment covers is one extent). Covers the node's zip only (see the
 * concurrency rule above: the mount computes a node at most once at a
 * time, fs/ops.c). Errors: FZ_ENOMEM, FZ_EINVAL (not a file, max_len 0). */
int fz_view_node_extents(fz_view *v, uint32_t node, uint64_t max_len, fz_extent **out, size_t *n);

/* Read extent e (e->len bytes into buf) as fz_view_read does; the view also
 * keeps what the bytes teach it (the CRC-32 of each zip record once all its
 * extents are read), so late extents need no second pass over the records.
 * Thread-safe; errors as fz_view_read. */
int fz_view_read_extent(fz_view *v, const fz_extent *e, void *buf);
/* The same as fz_view_read_uncached reads: nothing computed is stored in
 * the cache, the CRCs learnt neither. */
int fz_view_read_extent_uncached(fz_view *v, const fz_extent *e, void *buf);

/* Serve computed chunks (and zip record CRCs and mean reductions) through
 * the LMDB cache in `dir` (NULL: the default, $XDG_CACHE_HOME/fzfs), of map
 * size `size` (0: default), opened here and owned by the view (closed by
 * fz_view_close_cache or fz_view_free). `mode` says what newly computed
 * values become: REUSE, not kept (only hits are used); STORE, kept as far
 * as the cache's writer keeps up, never waited for (a mount); FILL, every
 * one kept, a reader waiting for the writer when it lags (materialize
 * --fill-cache). Call before the first fz_view_read, in the process that
 * reads (an LMDB environment must not cross fork()). Errors (the view then
 * computes without a cache): those of fz_cache_open, FZ_ENOMEM. */
enum { FZ_VIEW_CACHE_REUSE, FZ_VIEW_CACHE_STORE, FZ_VIEW_CACHE_FILL };
int fz_view_open_cache(fz_view *v, const char *dir, uint64_t size, int mode);
/* Flush and close the cache the view opened (no-op without one). Not
 * concurrent with fz_view_read. */
void fz_view_close_cache(fz_view *v);
/* The cache the view opened, for `fzfs status`: its directory (NULL
 * without one; valid until it is closed) and this process's hits, misses
 * and fills of it, and values it did not store because the write queue was
 * full (atomics only; cheap to poll from any thread). */
const char *fz_view_cache_dir(const fz_view *v);
/* The cache the view reads through (opened by it or set), or NULL. */
struct fz_cache *fz_view_cache(const fz_view *v);
void fz_view_cache_counters(const fz_view *v, uint64_t *hits, uint64_t *misses, uint64_t *fills,
                            uint64_t *dropped);

/* Output bytes per cached chunk of a computed tensor (chunks start at the
 * tensor's first byte; the last one is shorter). */
#define FZ_VIEW_CHUNK (4ull << 20)

/* Whether fz_view_prefetch can do anything: a cache that stores. */
bool fz_view_can_prefetch(const fz_view *v);
/* Compute the cached chunks overlapping file bytes [off, off+len) of node
 * (computed tensors only; the range is clipped to the file) ahead of the
 * reads that will want them: each is filled unless it is stored, queued or
 * being filled already, and handed to the cache's write queue, where those
 * reads find it; a read arriving meanwhile waits for the fill instead of
 * computing it again (fz_cache_prefetch). Nothing is done for a node whose
 * source changed, nor without room in the write queue. The bytes are
 * checked against their source as a read's are. Returns how many chunks
 * it filled, or the first error of a fill (negative; nothing was kept for
 * that chunk: the read computes it and reports). */
int fz_view_prefetch(fz_view *v, uint32_t node, uint64_t off, uint64_t len);

/* A way to run tasks at once: run(ctx, n, task, arg) calls task(arg, i)
 * for every i in [0, n), from any threads, and returns when every call has
 * returned. With one (fz_view_set_runner: the mount's compute pool), a
 * .bin's central directory - which needs the CRC-32 of every record, so
 * every byte of the shard - computes its records across cores; without
 * one, one after another. Set it before the first read. */
typedef void (*fz_view_task_fn)(void *arg, size_t i);
typedef void (*fz_view_runner_fn)(void *ctx, size_t n, fz_view_task_fn task, void *arg);
void fz_view_set_runner(fz_view *v, fz_view_runner_fn run, void *ctx);

struct fz_cache;
/* Serve computed chunks (and zip record CRCs and mean reductions) through
 * cache `c` (borrowed, may be NULL to disable); newly computed values are
 * kept only when `store`. Call before the first fz_view_read. */
void fz_view_set_cache(fz_view *v, struct fz_cache *c, bool store);

/* For metadata checks (verify/), never for serving: hand every byte range
 * of file `node` that is metadata to emit(ctx, off, bytes, len) — generated
 * bytes (config, headers, pickles) and zip headers made from the record CRCs
 * known so far (0 for the others); for a weight file passed through whole
 * (fz_view_backing), every source byte that is not tensor data, read from
 * the source — without reading or computing any tensor byte, so a
 * container's structure is readable at no cost. Returns 0, the first
 * non-zero emit result, or FZ_ENOMEM / FZ_EINVAL / FZ_EIO (a source read). */
int fz_view_read_metadata(fz_view *v, uint32_t node,
                          int (*emit)(void *ctx, uint64_t off, const uint8_t *p, uint64_t len),
                          void *ctx);
/* The source tensor names the view gave the input embedding, output head
 * and head bias roles (each NULL when none); valid for the view's life. */
void fz_view_role_names(const fz_view *v, const char **embedding, const char **head,
                        const char **head_bias);

/* Human-readable plan (what the view contains and why) / JSON plan. */
int fz_view_plan_text(const fz_view *v, FILE *f);
int fz_view_plan_json(const fz_view *v, fz_buf *out);

/* Whether the released tokenizer has a chat template (from the source or -t);
 * the commands warn when it has none, as finalize does. */
bool fz_view_has_chat_template(const fz_view *v);

/* Total bytes of all files (for progress). */
uint64_t fz_view_total_bytes(const fz_view *v);

#endif
