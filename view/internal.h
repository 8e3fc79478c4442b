/* Private to view/: the view's tables. See view.h for the contract. */
#ifndef FZ_VIEW_INTERNAL_H
#define FZ_VIEW_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "cache/cache.h"
#include "formats/tensor.h"
#include "formats/zip.h"
#include "transform/meta.h"
#include "transform/recipe.h"
#include "view/source.h"
#include "view/view.h"

typedef enum {
    FZ_SEG_LITERAL,  /* bytes generated at build time */
    FZ_SEG_SPAN,     /* bytes of a source file */
    FZ_SEG_COMPUTED, /* bytes of a tensor recipe */
    FZ_SEG_DEFERRED, /* zip header / central directory: needs record CRCs */
} fz_seg_kind;

typedef struct fz_seg {
    fz_seg_kind kind;
    uint64_t off; /* offset in the file */
    uint64_t len;
    int32_t zrec; /* zip record whose data this segment is, or -1 */
    union {
        const uint8_t *lit; /* LITERAL: owned by the view */
        struct {
            int fd;
            uint64_t off;
            uint32_t src;
        } span;          /* SPAN: src = source file index */
        uint32_t recipe; /* COMPUTED: index of the recipe */
        struct {
            uint32_t zip;
            int32_t rec;
        } def; /* DEFERRED: rec -1 = central directory */
    } u;
} fz_seg;

/* A source file held open for the life of the view: its identity when the
 * view was built (view/read.c checks it where bytes are served), its
 * permission bits, and whether it has been seen changed (sticky). */
typedef struct {
    char *path;
    int fd;
    uint64_t size;
    dev_t dev;
    ino_t ino;
    int64_t mtime_ns;
    int64_t ctime_ns; /* no user can set it: a rewrite that puts the old
                       * mtime back (cp -p, rsync -t, touch -d) still moves it */
    nlink_t nlink;    /* a link added or removed moves the ctime too */
    mode_t mode;
    bool st_format_pt; /* a safetensors weight file loads as PyTorch weights
                        * (fz_st_info, from the one parse of its header) */
    char *zip_stem;    /* a .bin weight file: the directory all its records are
                        * under (fz_torchbin_read_stem), else NULL */
    atomic_bool changed;
} fz_srcfile;

/* A torch zip being served: its layout and the memo of record CRCs. */
typedef struct {
    fz_zipw_layout L;
    uint32_t node;
    uint32_t *crc;
    bool *crc_known;
    /* What fz_view_read_extent learns (view/extents.c), per record: the
     * CRC-32 and length of each extent of its data, and how many are in. */
    struct fz_crcacc *acc;
} fz_zipview;

typedef struct fz_crcacc {
    uint32_t npieces;
    atomic_uint ndone;
    uint32_t *crc;
    uint64_t *len;
} fz_crcacc;

/* One tensor of the output, for the plan and the index. */
typedef struct {
    char *name;       /* output name */
    uint32_t recipe;  /* recipe index */
    uint32_t shard;   /* output shard index */
    bool alias;       /* shares the record/data of an earlier entry of the same shard */
    const char *role; /* "embedding", "head", "head bias" or NULL */
    bool quantized;   /* part of a quantized Linear */
} fz_outtensor;

struct fz_view {
    fz_view_opts opts;
    const fz_qscheme *quant; /* --quantize, or NULL */
    json_t *quant_config;    /* quantization_config block for config.json */
    fz_source src;
    fz_meta_out meta;
    bool tied; /* embedding and head are one matrix */
    char *embed_name, *head_name, *head_bias_name;
    bool roles_certain;    /* the search (or --embedding-tensors) accounts for every vocab tensor */
    char *roles_doubt;     /* why not, and the candidate tensors (for the refusal) */
    uint32_t embed_recipe; /* recipe of the embedding, UINT32_MAX if none */
    char *dest_ckpt_dir;   /* "checkpoints/checkpoint-N" */

    fz_srcfile *files;
    uint32_t nfiles;
    size_t capfiles;
    fz_tensor_list *tensors; /* per weight file (files[0..src.nfiles-1]) */

    fz_recipe *recipes;
    uint32_t nrecipes;
    fz_outtensor *outs;
    uint32_t nouts;
    char **shard_names;
    uint32_t nshards;

    fz_node *nodes;
    uint32_t nnodes;
    size_t capnodes;

    fz_zipview *zips;
    uint32_t nzips;
    size_t capzips;
    pthread_mutex_t crc_lock;
    /* fz_view_set_runner: how the CRCs of a central directory are computed
     * at once (NULL: one after another). */
    fz_view_runner_fn runner;
    void *runner_ctx;

    /* Source files each node is made from (view/read.c): node i's are
     * deps[dep_start[i] .. dep_start[i+1]); recipe_file[r] is recipe r's
     * source file (UINT32_MAX: none), set as the recipe is made
     * (fz_view_new_recipe). All three arrays are kept in lits. */
    uint32_t *dep_start, *deps, *recipe_file;
    /* Permission bits of generated directories and files (from SRC's). */
    mode_t dir_mode, file_mode;
    bool log_changes; /* fz_view_log_changes */

    uint8_t **lits; /* literal buffers owned by the view */
    uint32_t nlits;
    size_t caplits;

    /* The chunk cache (view/read.c, fz_view_set_cache): borrowed, NULL =
     * compute directly. recipe_keys[i] is recipe i's identity (hi/lo; chunk
     * = UINT64_MAX when not cacheable); the array is kept in lits. */
    struct fz_cache *cache;
    bool cache_store;
    struct fz_cache *owned_cache; /* opened by fz_view_open_cache, closed with the view */
    char *owned_cache_dir;        /* its directory */
    fz_cache_key *recipe_keys;
};

/* view/read.c: index which source files every node and recipe reads
 * (after the tree is built, before any read). */
int fz_view_index_sources(fz_view *v);

/* view/read.c: record the CRC-32 of zip record `rec` of layout `zip`,
 * computed by a caller that read the record's bytes (view/extents.c);
 * store: also keep it in the cache when the view stores there. */
void fz_view_note_crc(fz_view *v, uint32_t zip, int32_t rec, uint32_t crc, bool store);
/* view/extents.c: free what fz_view_extents (or fz_view_node_extents)
 * allocated for zip zi. */
void fz_view_extents_free(fz_view *v, uint32_t zi);

/* view/build.c helpers used by the other view files. */
int fz_view_open_source_file(fz_view *v, const char *path, uint32_t *idx);

/* view/tensors.c: find the embedding, head, head bias and tying (sets
 * v->embed_name, head_name, head_bias_name, tied, roles_certain; *tie_out =
 * the value for config.json's tie_word_embeddings, *embed_rows the
 * embedding's rows or 0); build one recipe per output tensor
 * (after the token plan is known); make a tied head kept as a separate copy
 * share the embedding's recipe. */
int fz_view_find_roles(fz_view *v, const json_t *config, int *tie_out, uint64_t *embed_rows);
/* After the token plan: refuse (FZ_EINVAL, listing the candidates and
 * naming --embedding-tensors) a vocabulary change on an uncertain guess. */
int fz_view_check_roles(const fz_view *v);
/* "embedding", "head", "head bias" or NULL for a source tensor name. */
const char *fz_view_role_of(const fz_view *v, const char *name);
int fz_view_build_recipes(fz_view *v);
/* The next recipe slot, made from source file f (UINT32_MAX: none), which
 * recipe_file records: no recipe's source is looked up by its fd. */
fz_recipe *fz_view_new_recipe(fz_view *v, uint32_t f);
void fz_view_merge_tied_head(fz_view *v);
/* Decide the output shards: the source files one to one, or with
 * --max-shard-size finalize's rule (add a tensor, close the shard once it
 * exceeds the limit). Sets every out's shard and alias, and v->nshards.
 * 0 or FZ_ENOMEM. */
int fz_view_assign_shards(fz_view *v);

/* view/shards.c: whether out tensor i is written in safetensors output. */
bool fz_view_st_emits(const fz_view *v, uint32_t i);

/* view/whole.c: whether shard s (the out tensors outs[0..n), to be named
 * `name`) is source weight file s unchanged, so that the file's own bytes
 * are the shard: shards mirror the source files (no --max-shard-size), the
 * format is kept, every tensor is the source's in place and in order (same
 * name, dtype, shape; no cast, resize or quantization, no tied head moved
 * or dropped), a .bin's records are whole source storages under "<stem>/"
 * (stem: `name` without .bin), a safetensors header has no __metadata__
 * or says format "pt" in it (both known from reading the file: zip_stem,
 * st_format_pt). Reads nothing. */
bool fz_view_shard_is_whole(const fz_view *v, uint32_t s, const uint32_t *outs, uint32_t n,
                            const char *name);
/* Add file `name` under `dir`: all of source file s, one span. */
int fz_view_add_whole(fz_view *v, uint32_t dir, uint32_t s, const char *name);
/* Whether node is exactly one whole source file (*file its index). */
bool fz_view_whole_source(const fz_view *v, uint32_t node, uint32_t *file);
/* For fz_view_read_metadata: every byte of weight file f that is not tensor
 * data (container headers, pickle, central directory), read from the file. */
int fz_view_whole_metadata(fz_view *v, uint32_t f,
                           int (*emit)(void *ctx, uint64_t off, const uint8_t *p, uint64_t len),
                           void *ctx);

/* view/quant.c: whether source tensor t of file f is quantized; append its
 * quantized parts (recipes and out tensors) for shard f. */
bool fz_view_quantizable(const fz_view *v, const fz_tensor *t, const char *role);
int fz_view_add_quantized(fz_view *v, uint32_t f, const fz_tensor *t, fz_dtype val_dtype);
/* The quantization_config block (with the ignore list) for config.json. */
int fz_view_quant_config(fz_view *v);

#endif
