/* Building a view: options -> source discovery -> metadata transforms ->
 * tensor recipes -> node tree. Only metadata is read here (config and
 * tokenizer files, zip directories, pickles, safetensors headers); no
 * tensor data. */
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/jsonout.h"
#include "formats/safetensors.h"
#include "formats/torchbin.h"
#include "fz_config.h"
#include "util/error.h"
#include "util/hindex.h"
#include "util/io.h"
#include "util/log.h"
#include "util/vec.h"
#include "view/internal.h"
#include "view/shards.h"
#include "view/tree.h"

#define FZ_MAX_META_FILE (512u << 20)

int fz_view_open_source_file(fz_view *v, const char *path, uint32_t *idx)
{
    for (uint32_t i = 0; i < v->nfiles; i++)
        if (strcmp(v->files[i].path, path) == 0) {
            *idx = i;
            return 0;
        }
    int rc = FZ_VEC_RESERVE(v->files, v->capfiles, (size_t)v->nfiles + 1);
    if (rc)
        return rc;
    fz_srcfile *s = &v->files[v->nfiles];
    memset(s, 0, sizeof *s);
    struct stat st;
    rc = fz_open_input(path, 0, &s->fd, &st);
    if (rc)
        return rc;
    if (!(s->path = strdup(path))) {
        close(s->fd);
        return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    s->size = (uint64_t)st.st_size;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    s->ctime_ns = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
    s->nlink = st.st_nlink;
    s->mode = st.st_mode & 0777;
    atomic_init(&s->changed, false);
    *idx = v->nfiles++;
    return 0;
}

static char *path_join(const char *a, const char *b)
{
    if (b[0] == '/' || strcmp(a, ".") == 0)
        return strdup(b);
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* Read SRC/<name> into a blob (data and path owned: blob_free); absent
 * files give an empty blob unless required. */
static int read_blob(const char *dir, const char *name, bool required, fz_blob *b)
{
    char *path = path_join(dir, name);
    char *data = NULL;
    size_t len = 0;
    memset(b, 0, sizeof *b);
    if (!path)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    int rc = fz_read_file(path, FZ_MAX_META_FILE, &data, &len);
    if (rc == FZ_ENOTFOUND && !required) {
        fz_error_clear();
        free(path);
        return 0;
    }
    if (rc) {
        free(path);
        return rc;
    }
    b->data = data;
    b->len = len;
    b->path = path;
    return 0;
}

static void blob_free(fz_blob *b)
{
    free((char *)b->data);
    free((char *)b->path);
}

int fz_view_opts_check(const fz_view_opts *o)
{
    if (o->device && strcmp(o->device, "cpu") != 0)
        return fz_error_set(FZ_EUSAGE,
                            "--device %s: fzfs computes on the CPU only; use --device "
                            "cpu",
                            o->device);
    if (o->dtype && strcmp(o->dtype, "bfloat16") && strcmp(o->dtype, "float16") &&
        strcmp(o->dtype, "float32")) {
        bool quantish =
            strstr(o->dtype, "int") || strstr(o->dtype, "fp8") || strstr(o->dtype, "float8");
        return fz_error_set(FZ_EUSAGE,
                            "--dtype must be one of bfloat16, float16, float32, got "
                            "'%s'%s",
                            o->dtype,
                            quantish ? " (integer and float8 weights come from --quantize, e.g. "
                                       "--quantize int8-weight-only)"
                                     : "");
    }
    if (o->quantize && !fz_qscheme_find(o->quantize))
        return fz_error_set(FZ_EUSAGE, "--quantize must be one of %s, got '%s'", fz_qscheme_names(),
                            o->quantize);
    if (o->quantize_ignore) {
        regex_t re;
        if (!o->quantize)
            return fz_error_set(FZ_EUSAGE, "--quantize-ignore needs --quantize");
        if (regcomp(&re, o->quantize_ignore, REG_EXTENDED | REG_NOSUB) != 0)
            return fz_error_set(FZ_EUSAGE,
                                "--quantize-ignore '%s' is not a valid regular "
                                "expression",
                                o->quantize_ignore);
        regfree(&re);
    }
    if (o->hub && o->keep_optimizer)
        return fz_error_set(FZ_EUSAGE,
                            "--hub writes no checkpoint, so it excludes "
                            "--keep-optimizer (materialize without --hub to keep optimizer state)");
    if (o->root_copy && o->keep_optimizer)
        return fz_error_set(FZ_EUSAGE, "--root-copy and --keep-optimizer are mutually exclusive "
                                       "(the optimizer state lives in the checkpoint directory)");
    return 0;
}

/* Resolve --generation-config PATH|NAME to a file (FORMATS.md §7). */
static int find_preset(const char *value, char **out)
{
    int rc = fz_check_input(value, 0, NULL);
    if (rc == 0)
        return (*out = strdup(value)) ? 0 : fz_error_set(FZ_ENOMEM, "out of memory");
    if (strchr(value, '/'))
        return rc == FZ_ENOTFOUND
                   ? fz_error_set(FZ_ENOTFOUND, "Generation config file not found: %s", value)
                   : rc;
    fz_error_clear();
    const char *home = getenv("HOME");
    const char *bundled = getenv("FZFS_EXAMPLES_DIR");
    const char *dirs[4];
    char d0[4096] = "", d1[4096] = "", d2[4096], d3[4096 + 64], exe[4096];
    int n = 0;
    if (home && *home) {
        snprintf(d0, sizeof d0, "%s/.config/fzfs/generation_config", home);
        snprintf(d1, sizeof d1, "%s/.config/forgather/generation_config", home);
        dirs[n++] = d0;
        dirs[n++] = d1;
    }
    /* The bundled presets: $FZFS_EXAMPLES_DIR, else the installed ones, else
     * (a binary run from a build directory of the checkout) <exe>/../examples.
     * No path of the build machine is compiled in. */
    snprintf(d2, sizeof d2, "%s/generation_config", bundled ? bundled : FZ_EXAMPLES_DIR);
    dirs[n++] = d2;
    ssize_t el = bundled ? -1 : readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el > 0 && (size_t)el < sizeof exe - 1) {
        exe[el] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(d3, sizeof d3, "%s/../examples/generation_config", exe);
            dirs[n++] = d3;
        }
    }
    size_t vl = strlen(value);
    bool has_ext = vl > 5 && strcmp(value + vl - 5, ".json") == 0;
    fz_buf looked = FZ_BUF_INIT;
    for (int i = 0; i < n; i++) {
        char p[8192];
        snprintf(p, sizeof p, "%s/%s%s", dirs[i], value, has_ext ? "" : ".json");
        if ((rc = fz_check_input(p, 0, NULL)) != FZ_ENOTFOUND) {
            fz_buf_free(&looked);
            if (rc)
                return rc; /* there, but a FIFO, a directory...: say so */
            return (*out = strdup(p)) ? 0 : fz_error_set(FZ_ENOMEM, "out of memory");
        }
        fz_error_clear();
        fz_buf_printf(&looked, "%s%s", i ? ", " : "", dirs[i]);
    }
    rc = fz_error_set(FZ_ENOTFOUND, "Generation config preset '%s' not found. Looked in: %s", value,
                      looked.data ? (char *)looked.data : "");
    fz_buf_free(&looked);
    return rc;
}

typedef struct {
    const char *name;
    uint32_t file;
} name_at;

typedef struct {
    const name_at *all;
    const char *name;
} name_ctx;

static bool same_name(const void *ctx, uint32_t k)
{
    const name_ctx *c = ctx;
    return strcmp(c->all[k].name, c->name) == 0;
}

/* A tensor stored in two weight files would make one copy unreachable
 * through the index (and count twice in total_size): refused, naming both
 * files. (Each reader already refuses a name twice in one file.) Names are
 * found through a hash index: linear in the tensor count. */
static int check_unique_names(fz_view *v)
{
    size_t n = 0;
    uint32_t k = 0;
    int rc = 0;
    fz_hindex seen = {0};
    for (uint32_t f = 0; f < v->src.nfiles; f++)
        n += v->tensors[f].n;
    if (v->src.nfiles < 2 || n < 2)
        return 0;
    name_at *all = n < UINT32_MAX ? malloc(n * sizeof *all) : NULL;
    if (!all || fz_hindex_init(&seen, n)) {
        free(all);
        return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    for (uint32_t f = 0; f < v->src.nfiles && rc == 0; f++)
        for (size_t i = 0; i < v->tensors[f].n && rc == 0; i++, k++) {
            const char *name = v->tensors[f].v[i].name;
            uint64_t h = fz_hindex_hash(name, strlen(name));
            name_ctx c = {all, name};
            uint32_t first = fz_hindex_find(&seen, h, same_name, &c);
            all[k] = (name_at){name, f};
            if (first != UINT32_MAX)
                rc = fz_error_set(FZ_EFORMAT,
                                  "tensor '%s' is stored twice, in %s and in %s: a "
                                  "checkpoint holds each tensor once; remove it from one of the "
                                  "shards (and fix %s)",
                                  name, v->files[all[first].file].path, v->files[f].path,
                                  v->src.index_name ? v->src.index_name : "the index");
            else
                rc = fz_hindex_put(&seen, h, k);
        }
    fz_hindex_free(&seen);
    free(all);
    return rc;
}

static int read_weights(fz_view *v)
{
    v->tensors = calloc(v->src.nfiles, sizeof *v->tensors);
    if (!v->tensors)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < v->src.nfiles; i++) {
        char *path = path_join(v->src.ckpt, v->src.files[i]);
        uint32_t idx;
        if (!path)
            return fz_error_set(FZ_ENOMEM, "out of memory");
        int rc = fz_view_open_source_file(v, path, &idx);
        free(path);
        if (rc)
            return rc;
        /* Weight files are opened first, so file index == weight file index. */
        fz_srcfile *f = &v->files[idx];
        size_t nl = strlen(f->path);
        fz_st_info info = {false};
        if (nl > 12 && strcmp(f->path + nl - 12, ".safetensors") == 0)
            rc = fz_st_read_info(f->fd, f->path, f->size, &v->tensors[i], &info);
        else
            rc = fz_torchbin_read_stem(f->fd, f->path, &v->tensors[i], &f->zip_stem);
        f->st_format_pt = info.format_pt;
        if (rc)
            return rc;
    }
    return check_unique_names(v);
}

static int build_meta(fz_view *v, json_t **config_out)
{
    int rc = 0;
    const fz_view_opts *o = &v->opts;
    const char *cdir = v->src.config_dir, *tdir = v->src.tokenizer_dir;
    fz_meta_in in;
    memset(&in, 0, sizeof in);
    char *preset_path = NULL;
    if ((rc = read_blob(cdir, "config.json", true, &in.config)) ||
        (rc = read_blob(tdir, "tokenizer.json", true, &in.tokenizer)) ||
        (rc = read_blob(tdir, "tokenizer_config.json", false, &in.tokenizer_config)) ||
        (rc = read_blob(tdir, "special_tokens_map.json", false, &in.special_tokens_map)) ||
        (rc = read_blob(tdir, "chat_template.jinja", false, &in.chat_template_file)))
        goto done;
    const char *gen = o->generation_config ? o->generation_config : "carry";
    if (strcmp(gen, "carry") == 0) {
        in.gen_mode = FZ_GEN_CARRY;
        if ((rc = read_blob(cdir, "generation_config.json", false, &in.generation_config)))
            goto done;
    } else if (strcmp(gen, "none") == 0) {
        in.gen_mode = FZ_GEN_NONE;
    } else {
        in.gen_mode = FZ_GEN_PRESET;
        if ((rc = find_preset(gen, &preset_path)) ||
            (rc = read_blob(".", preset_path, true, &in.preset)))
            goto done;
    }
    if (o->chat_template_path) {
        rc = read_blob(".", o->chat_template_path, true, &in.chat_template);
        if (rc == FZ_ENOTFOUND)
            rc = fz_error_set(FZ_ENOTFOUND, "Chat template not found: %s", o->chat_template_path);
        if (rc)
            goto done;
    }
    if (o->add_tokens) {
        rc = read_blob(".", o->add_tokens, true, &in.add_tokens_yaml);
        if (rc == FZ_ENOTFOUND)
            rc = fz_error_set(FZ_ENOTFOUND, "Add-tokens file not found: %s", o->add_tokens);
        if (rc)
            goto done;
    }
    in.skip_default_tokens = o->skip_default_tokens;
    in.no_auto_stop_tokens = o->no_auto_stop_tokens;
    in.stop_tokens = o->stop_tokens;
    in.dtype = o->dtype;

    json_t *config = fz_json_parse(in.config.data, in.config.len, in.config.path);
    if (!config) {
        rc = FZ_EFORMAT;
        goto done;
    }
    if (!json_is_object(config)) {
        json_decref(config);
        rc = fz_error_set(FZ_EFORMAT, "%s: not a JSON object", in.config.path);
        goto done;
    }
    rc = fz_view_find_roles(v, config, &in.tie_word_embeddings, &in.embed_rows);
    if (rc == 0 && v->quant && (rc = fz_view_quant_config(v)) == 0)
        in.quantization_config = v->quant_config;
    if (rc == 0)
        rc = fz_meta_build(&in, &v->meta);
    if (rc == 0)
        rc = fz_view_check_roles(v);
    if (rc)
        json_decref(config);
    else
        *config_out = config;
done:;
    fz_blob *read[] = {&in.config,
                       &in.tokenizer,
                       &in.tokenizer_config,
                       &in.special_tokens_map,
                       &in.chat_template_file,
                       &in.generation_config,
                       &in.preset,
                       &in.chat_template,
                       &in.add_tokens_yaml};
    for (size_t i = 0; i < sizeof read / sizeof read[0]; i++)
        blob_free(read[i]);
    free(preset_path);
    return rc;
}

/* The option strings a view keeps a copy of: one list, for copying and
 * for freeing. */
static const size_t opt_strings[] = {offsetof(fz_view_opts, src),
                                     offsetof(fz_view_opts, checkpoint),
                                     offsetof(fz_view_opts, add_tokens),
                                     offsetof(fz_view_opts, chat_template_path),
                                     offsetof(fz_view_opts, stop_tokens),
                                     offsetof(fz_view_opts, generation_config),
                                     offsetof(fz_view_opts, dtype),
                                     offsetof(fz_view_opts, device),
                                     offsetof(fz_view_opts, quantize),
                                     offsetof(fz_view_opts, embedding_tensors),
                                     offsetof(fz_view_opts, quantize_ignore)};
#define N_OPT_STRINGS (sizeof opt_strings / sizeof opt_strings[0])

static const char **opt_string(fz_view_opts *o, size_t i)
{
    return (const char **)((char *)o + opt_strings[i]);
}

/* v->opts = *o with copies of its strings. Every string is first NULL, so
 * a failure half way leaves v->opts owning only copies (fz_view_free frees
 * them), never the caller's strings. */
static int dup_opts(fz_view *v, const fz_view_opts *o)
{
    fz_view_opts theirs = *o;
    v->opts = *o;
    for (size_t i = 0; i < N_OPT_STRINGS; i++)
        *opt_string(&v->opts, i) = NULL;
    for (size_t i = 0; i < N_OPT_STRINGS; i++) {
        const char *s = *opt_string(&theirs, i);
        if (s && !(*opt_string(&v->opts, i) = strdup(s)))
            return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    return 0;
}

int fz_view_build(fz_view **out, const fz_view_opts *o)
{
    int rc;
    json_t *config = NULL;
    fz_view *v = calloc(1, sizeof *v);
    if (!v)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    pthread_mutex_init(&v->crc_lock, NULL);
    v->embed_recipe = UINT32_MAX;
    if ((rc = dup_opts(v, o)) || (rc = fz_view_opts_check(&v->opts)))
        goto done;
    if (v->opts.quantize) {
        v->quant = fz_qscheme_find(v->opts.quantize);
        if (!v->opts.safetensors)
            fz_info("--quantize %s writes compressed-tensors safetensors (--safetensors implied)",
                    v->opts.quantize);
        v->opts.safetensors = true;
    }
    if ((rc = fz_source_find(&v->src, o->src, o->checkpoint)))
        goto done;
    if (o->keep_optimizer && !v->src.optimizer) {
        rc = fz_error_set(FZ_ENOTFOUND,
                          "--keep-optimizer: neither optimizer_state.pt nor "
                          "optimizer.pt in %s; drop --keep-optimizer",
                          v->src.ckpt);
        goto done;
    }
    if ((rc = read_weights(v)) || (rc = build_meta(v, &config)) || (rc = fz_view_build_recipes(v)))
        goto done;
    fz_view_merge_tied_head(v);
    if (!(rc = fz_view_assign_shards(v)) && !(rc = fz_view_build_tree(v)))
        rc = fz_view_index_sources(v);
done:
    json_decref(config);
    if (rc) {
        fz_view_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

void fz_view_free(fz_view *v)
{
    if (!v)
        return;
    fz_view_close_cache(v);
    for (uint32_t i = 0; i < v->nnodes; i++) {
        fz_node *n = &v->nodes[i];
        free(n->name);
        free(n->path);
        free(n->children);
        free(n->target);
        free(n->segs);
    }
    free(v->nodes);
    for (uint32_t i = 0; i < v->nlits; i++)
        free(v->lits[i]);
    free(v->lits);
    for (uint32_t i = 0; i < v->nzips; i++) {
        fz_view_extents_free(v, i); /* first: it walks L's records */
        fz_zipw_free(&v->zips[i].L);
        free(v->zips[i].crc);
        free(v->zips[i].crc_known);
    }
    free(v->zips);
    for (uint32_t i = 0; i < v->nrecipes; i++)
        fz_recipe_free(&v->recipes[i]);
    free(v->recipes);
    for (uint32_t i = 0; i < v->nouts; i++)
        free(v->outs[i].name);
    free(v->outs);
    for (uint32_t i = 0; v->shard_names && i < v->nshards; i++) /* NULL: failed before */
        free(v->shard_names[i]);
    free(v->shard_names);
    if (v->tensors)
        for (uint32_t f = 0; f < v->src.nfiles; f++)
            fz_tensor_list_free(&v->tensors[f]);
    free(v->tensors);
    for (uint32_t i = 0; i < v->nfiles; i++) {
        close(v->files[i].fd);
        free(v->files[i].path);
        free(v->files[i].zip_stem);
    }
    free(v->files);
    fz_meta_out_free(&v->meta);
    fz_source_free(&v->src);
    free(v->embed_name);
    free(v->head_name);
    free(v->head_bias_name);
    free(v->roles_doubt);
    free(v->dest_ckpt_dir);
    json_decref(v->quant_config);
    for (size_t i = 0; i < N_OPT_STRINGS; i++)
        free((char *)*opt_string(&v->opts, i));
    pthread_mutex_destroy(&v->crc_lock);
    free(v);
}

uint32_t fz_view_node_count(const fz_view *v)
{
    return v->nnodes;
}

const fz_node *fz_view_node(const fz_view *v, uint32_t i)
{
    return i < v->nnodes ? &v->nodes[i] : NULL;
}

bool fz_view_has_chat_template(const fz_view *v)
{
    return v->meta.has_chat_template;
}

uint64_t fz_view_total_bytes(const fz_view *v)
{
    uint64_t t = 0;
    for (uint32_t i = 0; i < v->nnodes; i++)
        if (v->nodes[i].kind == FZ_NODE_FILE)
            t += v->nodes[i].size;
    return t;
}
