/* Internal interfaces of the metadata transforms (meta.c and its parts):
 * the in-memory tokenizer model (tokenizer.c), the add-tokens YAML and
 * algorithm (addtokens.c), config.json (config.c) and generation_config.json
 * (genconfig.c). Not thread-safe per object; no shared state. */
#ifndef FZ_TRANSFORM_META_INT_H
#define FZ_TRANSFORM_META_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "transform/meta.h"

/* Role indices, in the fixed order new named tokens get their ids. */
enum { FZ_ROLE_BOS, FZ_ROLE_EOS, FZ_ROLE_PAD, FZ_ROLE_UNK, FZ_ROLE_N };
extern const char *const fz_role_keys[FZ_ROLE_N]; /* "bos_token", ... */

/* An entry appended to tokenizer.json's added_tokens. */
typedef struct {
    char *content;
    int64_t id;
    bool special; /* special: normalized false, special true; else the reverse */
    bool is_new;  /* a new vocabulary entry (false: an existing model-vocab id
                     promoted to an added special token) */
} fz_tok_entry;

/* The tokenizer as transformers' fast tokenizer sees it. */
typedef struct {
    json_t *tokenizer;      /* parsed tokenizer.json (owned) */
    json_t *tok_config;     /* parsed tokenizer_config.json, NULL if absent */
    json_t *stm;            /* parsed special_tokens_map.json, NULL if absent */
    json_t *vocab;          /* content -> integer id: model vocab and added tokens */
    json_t *added;          /* content -> true for tokens in the added vocabulary */
    uint64_t len;           /* len(tokenizer): |model vocab ∪ added tokens| */
    uint64_t next_id;       /* id the tokenizers library gives the next new token */
    char *roles[FZ_ROLE_N]; /* current role strings (NULL = unset) */
    bool role_changed[FZ_ROLE_N];
    json_t *extra; /* additional special tokens list (array of strings) */
    bool extra_changed;
    fz_tok_entry *entries; /* appended to the added vocabulary, in order */
    size_t n_entries, cap_entries;
    uint64_t n_new; /* entries with is_new */
} fz_tok;

/* tokenizer.c ---------------------------------------------------------- */

/* Load tokenizer.json (+ tokenizer_config.json, special_tokens_map.json).
 * FZ_ENOTFOUND when tokenizer.json is absent, FZ_EFORMAT when malformed. */
int fz_tok_load(fz_tok *t, const fz_blob *tokenizer, const fz_blob *tok_config, const fz_blob *stm);
void fz_tok_free(fz_tok *t);
/* Id of a token string (model vocab or added), -1 if absent. */
int64_t fz_tok_id(const fz_tok *t, const char *s);
/* tokenizer.<role>_id: the role's string converted to an id (unknown -> the
 * unk id), -1 when the role is unset or nothing matches. */
int64_t fz_tok_role_id(const fz_tok *t, int role);
/* Add `s` to the added vocabulary as transformers' add_tokens /
 * add_special_tokens does. *id receives its id. A new string gets next_id;
 * a model-vocab string added as special becomes an added entry with its
 * existing id; a string already in the added vocabulary is left alone. */
int fz_tok_add(fz_tok *t, const char *s, bool special, int64_t *id);
/* Is s in the additional special tokens list? */
bool fz_tok_in_extra(const fz_tok *t, const char *s);

/* Emit the tokenizer files into out (tokenizer.json, tokenizer_config.json,
 * special_tokens_map.json). `tmpl`, when non-NULL, becomes the inline
 * chat_template (NULL: the source's key, if any, is kept as it was). */
int fz_tok_emit(const fz_tok *t, const fz_blob *src_tokenizer, const json_t *tmpl,
                fz_meta_out *out);

/* addtokens.c ---------------------------------------------------------- */

typedef struct {
    bool present;
    char *token;
    fz_init_kind init;
    uint64_t copy_from;
    bool if_missing;
} fz_role_spec;

typedef struct {
    fz_role_spec roles[FZ_ROLE_N];
    char **special;
    size_t n_special;
    char **regular;
    size_t n_regular;
} fz_addtok_spec;

/* Parse an add-tokens YAML document. FZ_EFORMAT (bad YAML), FZ_EINVAL
 * (unknown key, wrong type, bad init), all naming `path` and the key. */
int fz_addtok_parse(const char *text, size_t len, const char *path, fz_addtok_spec *spec);
/* The built-in default: pad_token {token "[PAD]", init zero, if_missing true}. */
int fz_addtok_default(fz_addtok_spec *spec);
void fz_addtok_spec_free(fz_addtok_spec *spec);

/* Run finalize's add_tokens_to_tokenizer on t (reference §3.2, roles in the
 * fixed order bos, eos, pad, unk). *inits (caller frees) gets token_inits. */
int fz_addtok_apply(fz_tok *t, const fz_addtok_spec *spec, fz_row_init **inits, size_t *n_inits);

/* config.c ------------------------------------------------------------- */

/* Patch config.json as FORMATS.md §5 says and emit it; when the embedding
 * rows change (`resized`), vocab_size = rows and the bos/pad ids are synced. */
int fz_config_build(const fz_meta_in *in, const fz_tok *t, bool resized, uint64_t rows,
                    fz_buf *out);
/* config.json's eos_token_id (first element if a list); -1 if absent/null. */
int fz_config_source_eos(const fz_blob *config, int64_t *eos);

/* genconfig.c ---------------------------------------------------------- */

/* Build generation_config.json (FORMATS.md §7) and the stop-id list.
 * `yaml_names`: the YAML's token names in finalize's order (for the auto
 * stop tokens). Sets out->has_generation_config, generation_config_json,
 * stop_ids. */
int fz_genconfig_build(const fz_meta_in *in, const fz_tok *t, int64_t source_eos,
                       char *const *yaml_names, size_t n_yaml_names, fz_meta_out *out);
/* Translate an inference preset (reference §5.3). Dropped keys are logged. */
int fz_genconfig_translate(const json_t *preset, const char *path, json_t **out);
/* Would transformers' GenerationConfig.save_pretrained refuse it? 0 or
 * FZ_EINVAL with the reason, naming `path`. */
int fz_genconfig_validate(const json_t *cfg, const char *path);

#endif
