/* Source discovery: which layout SRC is, which checkpoint the view is built
 * from, which weight files it holds, and where config and tokenizer come
 * from (FORMATS.md §1, docs/layouts.md). Reads directory entries,
 * checkpoint manifests and Trainer's trainer_state.json; never opens any
 * other Trainer state (training_args.bin is a pickle and stays unread).
 * Not thread-safe; used once per build. */
#ifndef FZ_VIEW_SOURCE_H
#define FZ_VIEW_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_t;

typedef enum { FZ_W_ST_INDEX, FZ_W_BIN_INDEX, FZ_W_BIN, FZ_W_ST } fz_weights_kind;

/* What SRC was recognised as. */
typedef enum {
    FZ_LAYOUT_FORGATHER,     /* SRC/checkpoints/checkpoint-N (+ manifests) */
    FZ_LAYOUT_TRAINER,       /* HF Trainer output_dir: SRC/checkpoint-N, no model at the root */
    FZ_LAYOUT_TRAINER_FINAL, /* the same with a saved model at the root (save_model()) */
    FZ_LAYOUT_CHECKPOINT,    /* SRC is itself a checkpoint-N directory holding weights */
    FZ_LAYOUT_MODEL,         /* a flat HF model directory */
    FZ_LAYOUT_EXPLICIT,      /* the checkpoint was given with -c */
} fz_layout;

/* A checkpoint directory that was looked at and not chosen. */
typedef struct {
    char *name; /* entry name, e.g. "checkpoint-4" */
    char *why;  /* e.g. "global_step 4 < 6", "no weights" */
} fz_skipped;

typedef struct {
    char *root;        /* absolute SRC */
    char *ckpt;        /* absolute directory holding the weights */
    bool ckpt_is_root; /* weights come from SRC itself */
    int64_t step;      /* N of checkpoint-N, or -1 */
    fz_layout layout;
    char *why;           /* one line: why this checkpoint was chosen */
    fz_skipped *skipped; /* checkpoints not chosen, in step order */
    uint32_t nskipped;
    size_t capskipped;
    char *config_dir;      /* config.json, generation_config.json, *.py: SRC root when it
                            * has config.json, else the checkpoint when it has one */
    char *tokenizer_dir;   /* tokenizer files: SRC root when it has tokenizer.json, else the
                            * checkpoint when it has one */
    char *optimizer;       /* optimizer_state.pt (Forgather) or optimizer.pt (Trainer) in
                            * ckpt, absolute; NULL when neither is a regular file */
    char *timestamp;       /* the checkpoint manifest's "timestamp", or NULL */
    char *pytorch_version; /* the checkpoint manifest's "pytorch_version", or NULL */
    fz_weights_kind kind;
    char *index_name;             /* index file name, or NULL */
    struct json_t *param_sharing; /* the index's metadata.param_sharing (an array), or NULL */
    char **files;                 /* weight file names in ckpt, sorted, unique */
    uint32_t nfiles;
} fz_source;

/* Resolve SRC (and -c when non-NULL). Errors: FZ_ENOTFOUND (SRC or -c is not
 * a directory, no checkpoint with weights: the message names what was looked
 * at), FZ_EFORMAT (an index that does not parse or lists unsafe names, a
 * trainer_state.json without a usable global_step), FZ_ERANGE (an oversized
 * index or trainer_state.json). */
int fz_source_find(fz_source *s, const char *src, const char *ckpt_opt);
void fz_source_free(fz_source *s);

/* True if `dir` holds weights under one of the four standard names. */
bool fz_source_has_weights(const char *dir);

/* "forgather", "hf-trainer", "hf-trainer+final-model", "checkpoint-dir",
 * "hf-model", "explicit" / a one-line description of the layout. */
const char *fz_layout_name(fz_layout l);
const char *fz_layout_desc(fz_layout l);

#endif
