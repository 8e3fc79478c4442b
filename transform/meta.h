/* Metadata transforms: from the bytes of SRC's config, tokenizer and
 * generation files plus the view options, produce the bytes of DEST's
 * config.json, tokenizer.json, tokenizer_config.json,
 * special_tokens_map.json, chat_template.jinja and generation_config.json,
 * and the token plan the tensor recipes need (rows to add and how to
 * initialise them). Pure: no I/O (the view reads the files and resolves
 * paths), no wall-clock, deterministic. Thread-safe (no shared state).
 *
 * Semantics: FORMATS.md §5-§7, DESIGN.md "Decisions", and
 * reference/forgather-finalize.md §3-§5 where FORMATS/DESIGN are silent. */
#ifndef FZ_TRANSFORM_META_H
#define FZ_TRANSFORM_META_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "transform/rows.h"
#include "util/buf.h"

/* A file's bytes as read by the view; data == NULL means "absent". `path`
 * names it in messages (e.g. "SRC/tokenizer.json"). */
typedef struct {
    const char *data;
    size_t len;
    const char *path;
} fz_blob;

typedef enum { FZ_GEN_CARRY, FZ_GEN_NONE, FZ_GEN_PRESET } fz_gen_mode;

typedef struct {
    /* SRC root files */
    fz_blob config;             /* required */
    fz_blob tokenizer;          /* tokenizer.json, required */
    fz_blob tokenizer_config;   /* optional */
    fz_blob special_tokens_map; /* optional */
    fz_blob chat_template_file; /* SRC/chat_template.jinja, optional */
    fz_blob generation_config;  /* SRC/generation_config.json, optional */
    /* options */
    fz_blob add_tokens_yaml;  /* --add-tokens file, optional */
    bool skip_default_tokens; /* --skip-default-tokens */
    fz_blob chat_template;    /* -t file, optional (wins over the source's) */
    fz_gen_mode gen_mode;
    fz_blob preset; /* inference preset JSON when gen_mode == FZ_GEN_PRESET */
    bool no_auto_stop_tokens;
    const char *stop_tokens; /* --stop-tokens "A,B", NULL/"" = none */
    /* facts decided by the view from the weights and options */
    const char *dtype;                 /* --dtype torch name ("bfloat16"), NULL = unchanged */
    int tie_word_embeddings;           /* 0/1: written explicitly into config.json */
    uint64_t embed_rows;               /* rows of the input embedding in the weights, 0 = unknown */
    const json_t *quantization_config; /* borrowed; added to config.json when non-NULL */
} fz_meta_in;

typedef struct {
    /* Output files. A buffer with has_* false is not written. */
    fz_buf config_json;
    fz_buf tokenizer_json;
    bool tokenizer_json_unchanged; /* byte-identical to SRC: the view may span it */
    fz_buf tokenizer_config_json;
    fz_buf special_tokens_map_json;
    bool has_chat_template;
    fz_buf chat_template_jinja;
    bool has_generation_config;
    fz_buf generation_config_json;

    /* Token plan */
    uint64_t old_vocab;    /* len(tokenizer) as the source files give it */
    uint64_t new_vocab;    /* len(tokenizer) after */
    uint64_t n_added;      /* genuinely new vocabulary entries (role tokens the source
                              names but its vocabulary lacks, then the YAML's) */
    uint64_t n_role_added; /* of which role tokens missing from the source vocabulary */
    bool resize;           /* the embedding/head rows change: n_added > 0, or the
                              tokenizer outgrew in->embed_rows */
    uint64_t rows;         /* embedding/head rows after: new_vocab, or in->embed_rows
                              when the embedding is padded (never shrunk) */
    fz_row_init *inits;    /* explicit per-row inits; rows >= in->embed_rows not listed
                              get FZ_INIT_MEAN. Sorted by row, unique. Empty unless
                              resize. May name existing token rows (< old_vocab): a role
                              reassigned to an existing token with init zero/copy.
                              FZ_INIT_MEAN only for a new token inside the padding rows
                              (id < in->embed_rows). copy_from is always < old_vocab and
                              reads the row's value from before any init of this plan. */
    size_t n_inits;
    int64_t *stop_ids; /* generation_config eos list, in order (may be empty) */
    size_t n_stop_ids;
    char **added_tokens; /* new token strings with their ids, for plan output
                            (genuinely new ones only, in id order) */
    uint64_t *added_ids;
    size_t n_added_tokens;
} fz_meta_out;

/* Build everything. Errors (message names the file and problem): FZ_EFORMAT
 * (malformed JSON/YAML), FZ_EINVAL (unknown YAML key, bad init, unknown stop
 * token, a generation config transformers would refuse to save),
 * FZ_ENOTFOUND (a required input missing), FZ_ENOMEM. Warnings (no chat
 * template, dropped preset keys) go to fz_log. On error *out is empty. */
int fz_meta_build(const fz_meta_in *in, fz_meta_out *out);
void fz_meta_out_free(fz_meta_out *out);

#endif
