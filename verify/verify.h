/* verify: a release lint for a HuggingFace model directory. It reads
 * metadata only (JSON files, safetensors headers, torch zip directories and
 * their pickles through the restricted machine of formats/), never a tensor
 * byte, and reports every problem it finds as (file, sentence):
 *
 *  - config vocab_size vs the embedding, head and head-bias rows, and vs the
 *    tokenizer's length; bos/eos/pad/unk ids and tokens (config.json,
 *    tokenizer_config.json, special_tokens_map.json, generation_config.json)
 *    inside the vocabulary and the embedding rows;
 *  - each *.index.json vs the files and tensors present (missing file,
 *    tensor not in its file, tensor not in the index, unreferenced shard,
 *    total_size);
 *  - safetensors and torch .bin headers well formed;
 *  - tie_word_embeddings vs what is stored; quantization_config vs the
 *    stored tensors (compressed-tensors names);
 *  - symlinks that dangle, loop or point outside the directory.
 *
 * The checks see the directory through fz_vfs, so the same code runs on a
 * real directory (`fzfs verify`, materialize's temporary directory) and on a
 * built view (mount). Thread-safety: none needed; no shared state. */
#ifndef FZ_VERIFY_VERIFY_H
#define FZ_VERIFY_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"
#include "view/view.h"

typedef enum { FZ_VK_MISSING, FZ_VK_DIR, FZ_VK_FILE, FZ_VK_LINK, FZ_VK_OTHER } fz_vkind;

/* A directory tree seen through five operations. Paths are relative to the
 * root ("" is the root), components separated by '/', and never cross a
 * symlink: the checks resolve symlinks themselves (so a link that points
 * outside the root is reported, not followed). Each returns 0 or a negative
 * FZ_E* code with the detail set. */
typedef struct {
    void *ctx;
    /* What `path` is (a final symlink not followed); FZ_VK_MISSING if absent. */
    int (*lstat)(void *ctx, const char *path, fz_vkind *kind, uint64_t *size);
    /* The names in directory `path`, sorted; the caller frees each and the array. */
    int (*list)(void *ctx, const char *path, char ***names, size_t *n);
    /* The target of symlink `path` (caller frees). */
    int (*readlink)(void *ctx, const char *path, char **target);
    /* Bytes [off, off+len) of regular file `path`. */
    int (*read)(void *ctx, const char *path, uint64_t off, uint64_t len, void *buf);
    /* A read-only descriptor of regular file `path` for the container readers
     * (they read headers only); fstat gives the file's size. Over a view the
     * descriptor holds the header bytes and zeros where tensor data is.
     * The caller closes it. */
    int (*open_fd)(void *ctx, const char *path, int *fd);
} fz_vfs;

/* A real directory (opened now; fz_vfs_close releases it). FZ_ENOTFOUND if
 * `dir` is not a directory. */
int fz_vfs_open_dir(fz_vfs *fs, const char *dir);
/* A built view (borrowed: must outlive the accessor). */
int fz_vfs_open_view(fz_vfs *fs, fz_view *v);
void fz_vfs_close(fz_vfs *fs);

typedef struct {
    char *file; /* relative path, "" for the directory itself */
    char *text; /* one sentence: the problem and, where useful, what to do */
} fz_vproblem;

typedef struct {
    fz_vproblem *v;
    size_t n, cap;
} fz_vreport;

typedef struct {
    /* Vocabulary-row tensors the caller already knows (the view's roles), or
     * NULL; the checks also find them by name and shape. */
    const char *embedding, *head, *head_bias;
} fz_verify_opts;

/* Run every check on `fs`; problems are appended to *out (free it with
 * fz_vreport_free even on error). Returns 0 when the checks ran (whatever
 * they found), FZ_ENOMEM, or FZ_ENOTFOUND when the root is not a directory. */
int fz_verify(const fz_vfs *fs, const fz_verify_opts *o, fz_vreport *out);
void fz_vreport_free(fz_vreport *r);

/* One line per problem ("FILE: text", or "text" for the directory). */
void fz_vreport_print(const fz_vreport *r, FILE *f);
/* {"dir": dir, "ok": bool, "problems": [{"file", "problem"}]} with a trailing newline. */
int fz_vreport_json(const fz_vreport *r, const char *dir, fz_buf *out);

/* The gates: verify what is about to be published and refuse it when a
 * check fails. Problems are logged (ERROR, one line each) and the returned
 * FZ_EFORMAT error names `what` (DEST or the mount point) and says nothing
 * was published. */
int fz_verify_gate_dir(const char *dir, fz_view *v, const char *what);
int fz_verify_gate_view(fz_view *v, const char *what);

#endif
