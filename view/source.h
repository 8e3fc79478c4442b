/* Source discovery: which checkpoint of a training run the view is built
 * from, and which weight files it holds (FORMATS.md §1). Reads only
 * directory entries and manifests. Not thread-safe; used once per build. */
#ifndef FZ_VIEW_SOURCE_H
#define FZ_VIEW_SOURCE_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { FZ_W_ST_INDEX, FZ_W_BIN_INDEX, FZ_W_BIN, FZ_W_ST } fz_weights_kind;

typedef struct {
    char *root;             /* absolute SRC */
    char *ckpt;             /* absolute directory holding the weights */
    bool ckpt_is_root;      /* weights come from SRC itself */
    int64_t step;           /* N of checkpoint-N, or -1 */
    char *why;              /* one line: why this checkpoint was chosen */
    char *timestamp;        /* the checkpoint manifest's "timestamp", or NULL */
    char *pytorch_version;  /* the checkpoint manifest's "pytorch_version", or NULL */
    fz_weights_kind kind;
    char *index_name;       /* index file name, or NULL */
    char **files;           /* weight file names in ckpt, sorted, unique */
    uint32_t nfiles;
} fz_source;

/* Resolve SRC (and -c when non-NULL). Errors: FZ_ENOTFOUND (SRC or -c is not
 * a directory, no checkpoint with weights: the message names what was looked
 * at), FZ_EFORMAT (an index that does not parse or lists unsafe names). */
int fz_source_find(fz_source *s, const char *src, const char *ckpt_opt);
void fz_source_free(fz_source *s);

/* True if `dir` holds weights under one of the four standard names. */
bool fz_source_has_weights(const char *dir);

#endif
