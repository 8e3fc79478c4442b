#include "view/source.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "formats/jsonout.h"
#include "formats/jsontok.h"
#include "util/buf.h"
#include "util/error.h"
#include "util/hindex.h"
#include "util/io.h"
#include "util/log.h"
#include "util/vec.h"

static const char *const weight_names[] = {"model.safetensors.index.json",
                                           "pytorch_model.bin.index.json", "pytorch_model.bin",
                                           "model.safetensors"};

static char *join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* Whether dir/name is there. Not only regular files: a FIFO or directory in
 * place of a weight file is refused by name when it is opened, rather than
 * taken for a missing file. */
static bool is_file(const char *dir, const char *name)
{
    char *p = join(dir, name);
    struct stat st;
    bool ok = p && stat(p, &st) == 0;
    free(p);
    return ok;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

bool fz_source_has_weights(const char *dir)
{
    for (size_t i = 0; i < 4; i++)
        if (is_file(dir, weight_names[i]))
            return true;
    return false;
}

/* A checkpoint whose weights are still split across ranks: DeepSpeed ZeRO
 * (global_stepN/ with *_model_states.pt or zero_pp_rank_* files) or an FSDP
 * sharded state dict (pytorch_model_fsdp_N/ or *.distcp files, written by
 * torch.distributed.checkpoint). fzfs reads consolidated weights only; the
 * hint says how to make them. Returns "" when dir holds neither, else `out`
 * (n bytes) holding the hint. Only names are looked at, nothing is opened. */
static const char *sharded_hint(const char *dir, char *out, size_t n)
{
    DIR *d = opendir(dir);
    const char *kind = NULL;
    char sub[256] = "";
    if (!d)
        return "";
    struct dirent *e;
    while (!kind && (e = readdir(d))) {
        if (has_suffix(e->d_name, ".distcp")) {
            kind = "fsdp";
        } else if (strncmp(e->d_name, "pytorch_model_fsdp_", 19) == 0 ||
                   strncmp(e->d_name, "global_step", 11) == 0) {
            char *p = join(dir, e->d_name);
            DIR *s2 = p && is_dir(p) ? opendir(p) : NULL;
            struct dirent *f;
            while (s2 && !kind && (f = readdir(s2))) {
                if (has_suffix(f->d_name, ".distcp"))
                    kind = "fsdp";
                else if (has_suffix(f->d_name, "_model_states.pt") ||
                         strncmp(f->d_name, "zero_pp_rank_", 13) == 0)
                    kind = "deepspeed";
            }
            if (s2)
                closedir(s2);
            free(p);
            if (kind)
                snprintf(sub, sizeof sub, "%s", e->d_name);
        }
    }
    closedir(d);
    if (!kind)
        return "";
    if (strcmp(kind, "deepspeed") == 0)
        snprintf(out, n,
                 "; %s/%s is a DeepSpeed ZeRO checkpoint, its weights split across ranks: "
                 "consolidate them first (python %s/zero_to_fp32.py %s %s --safe_serialization, "
                 "the script DeepSpeed saves beside it), or train with "
                 "stage3_gather_16bit_weights_on_model_save: true",
                 dir, sub, dir, dir, dir);
    else
        snprintf(out, n,
                 "; %s%s%s holds an FSDP sharded state dict (.distcp files): merge it first "
                 "(accelerate merge-weights %s%s%s %s), or save with the FULL_STATE_DICT "
                 "state_dict_type",
                 dir, *sub ? "/" : "", sub, dir, *sub ? "/" : "", sub, dir);
    return out;
}

/* N of "checkpoint-N" (digits only), else -1. */
static int64_t parse_step(const char *base)
{
    if (strncmp(base, "checkpoint-", 11) != 0 || !base[11])
        return -1;
    int64_t v = 0;
    for (const char *p = base + 11; *p; p++) {
        if (*p < '0' || *p > '9' || v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

/* Manifest fields used for ordering and carried into DEST's manifest. */
static void read_manifest(const char *dir, char **timestamp, char **torch_version)
{
    char *path = join(dir, "checkpoint_manifest.json"), *text = NULL;
    size_t len;
    *timestamp = *torch_version = NULL;
    if (!path || fz_read_file(path, 16u << 20, &text, &len) != 0) {
        fz_error_clear();
        free(path);
        return;
    }
    json_t *j = fz_json_parse(text, len, path);
    if (!j) {
        fz_warn("%s", fz_error_msg());
        fz_error_clear();
    } else if (json_is_object(j)) {
        const char *t = json_string_value(json_object_get(j, "timestamp"));
        const char *v = json_string_value(json_object_get(j, "pytorch_version"));
        if (t)
            *timestamp = strdup(t);
        if (v)
            *torch_version = strdup(v);
    }
    json_decref(j);
    free(text);
    free(path);
}

/* Seconds since the epoch of an ISO-8601 time as Python's
 * fromisoformat().timestamp() reads it: naive = local time
 * ("2026-01-24T10:30:45.123456"), or with "Z" / "+HH:MM" / "-HH:MM" (the
 * form fzfs writes for a source without a manifest). */
static bool parse_iso(const char *s, double *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int n = 0;
    if (sscanf(s, "%4d-%2d-%2d%*1[T ]%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) < 6 ||
        n == 0)
        return false;
    const char *p = s + n;
    double frac = 0;
    if (*p == '.') {
        double scale = 0.1;
        for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
            frac += (*p - '0') * scale;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t;
    int oh = 0, om = 0;
    if (*p == 'Z' || *p == '+' || *p == '-') {
        if (*p != 'Z' && sscanf(p + 1, "%2d:%2d", &oh, &om) != 2 &&
            sscanf(p + 1, "%2d%2d", &oh, &om) != 2)
            return false;
        if (oh > 23 || om > 59 || oh < 0 || om < 0)
            return false;
        t = timegm(&tm);
        if (t == (time_t)-1)
            return false;
        t -= (*p == '-' ? -1 : 1) * (time_t)(oh * 3600 + om * 60);
    } else {
        tm.tm_isdst = -1;
        t = mktime(&tm);
        if (t == (time_t)-1)
            return false;
    }
    *out = (double)t + frac;
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A shard name from an index (n bytes) must be a plain file name in the checkpoint. */
static bool safe_name(const char *n, size_t len)
{
    return len && !(len == 1 && n[0] == '.') && !(len == 2 && n[0] == '.' && n[1] == '.') &&
           !memchr(n, '/', len);
}

typedef struct {
    char *const *files;
    const char *name;
    size_t len;
} name_ctx;

static bool same_name(const void *ctx, uint32_t k)
{
    const name_ctx *c = ctx;
    return strncmp(c->files[k], c->name, c->len) == 0 && c->files[k][c->len] == '\0';
}

/* The weight_map of the index (the flat-token reader: an index lists every
 * tensor, 100k of them in a MoE checkpoint): the distinct shard names into
 * s->files, and metadata.param_sharing (the only other part fzfs uses) into
 * s->param_sharing. */
static int read_index(fz_source *s, const fz_jdoc *d, const char *path)
{
    uint32_t meta = fz_jtok_get(d, 0, "metadata");
    uint32_t ps = meta == UINT32_MAX ? UINT32_MAX : fz_jtok_get(d, meta, "param_sharing");
    if (ps != UINT32_MAX && d->t[ps].type == FZ_JT_ARRAY &&
        !(s->param_sharing = fz_jtok_to_json(d, ps)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    uint32_t wm = fz_jtok_get(d, 0, "weight_map");
    if (wm == UINT32_MAX || d->t[wm].type != FZ_JT_OBJECT || d->t[wm].n == 0)
        return fz_error_set(FZ_EFORMAT, "%s: no \"weight_map\" object", path);
    if (!(s->files = calloc(d->t[wm].n, sizeof *s->files)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    /* the distinct file names, found through a hash index (100k tensors
     * over many shards: no scan of the names so far per tensor) */
    fz_hindex seen;
    if (fz_hindex_init(&seen, d->t[wm].n))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    int rc = 0;
    uint32_t last = UINT32_MAX; /* the previous entry's value: most often the same file */
    for (uint32_t m = 0, k = wm + 1; m < d->t[wm].n && rc == 0; m++, k = d->t[k + 1].next) {
        uint32_t v = k + 1;
        const char *f = fz_jtok_str(d, v);
        size_t n = d->t[v].len;
        if (d->t[v].type != FZ_JT_STRING || !safe_name(f, n)) {
            rc = fz_error_set(FZ_EFORMAT, "%s: weight_map[\"%.*s\"] is not a file name", path,
                              (int)d->t[k].len, fz_jtok_str(d, k));
            break;
        }
        if (last != UINT32_MAX && d->t[last].len == n && !memcmp(fz_jtok_str(d, last), f, n))
            continue;
        last = v;
        name_ctx nc = {s->files, f, n};
        uint64_t h = fz_hindex_hash(f, n);
        if (fz_hindex_find(&seen, h, same_name, &nc) != UINT32_MAX)
            continue;
        if (!(s->files[s->nfiles] = strndup(f, n)) || fz_hindex_put(&seen, h, s->nfiles))
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
        else
            s->nfiles++;
    }
    fz_hindex_free(&seen);
    return rc;
}

static int list_weight_files(fz_source *s)
{
    int rc = 0;
    char *path = NULL, *text = NULL;
    fz_jdoc d = {0};
    size_t len;
    for (size_t i = 0; i < 4; i++)
        if (is_file(s->ckpt, weight_names[i])) {
            s->kind = (fz_weights_kind)i;
            break;
        }
    if (s->kind == FZ_W_BIN || s->kind == FZ_W_ST) {
        s->files = calloc(1, sizeof *s->files);
        if (!s->files || !(s->files[0] = strdup(weight_names[s->kind])))
            return fz_error_set(FZ_ENOMEM, "out of memory");
        s->nfiles = 1;
        return 0;
    }
    s->index_name = strdup(weight_names[s->kind]);
    path = join(s->ckpt, s->index_name);
    if (!s->index_name || !path)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    rc = fz_read_file(path, 256u << 20, &text, &len);
    if (rc)
        goto done;
    size_t err_at;
    const char *why;
    rc = fz_jtok_parse(&d, text, len, FZ_JTOK_BIGINT, &err_at, &why);
    if (rc == FZ_EFORMAT)
        rc = fz_jtok_error(text, err_at, why, path);
    if (rc || (rc = read_index(s, &d, path)))
        goto done;
    qsort(s->files, s->nfiles, sizeof *s->files, cmp_str);
    for (uint32_t k = 0; k < s->nfiles && rc == 0; k++) {
        char *shard = join(s->ckpt, s->files[k]);
        rc = shard ? fz_check_input(shard, 0, NULL) : fz_error_set(FZ_ENOMEM, "out of memory");
        free(shard);
        if (rc == FZ_ENOTFOUND)
            rc = fz_error_set(FZ_ENOTFOUND, "%s: lists shard '%s', which does not exist", path,
                              s->files[k]);
        else if (rc && rc != FZ_ENOMEM)
            rc = fz_error_prefix(rc, "%s lists shard '%s'", path, s->files[k]);
    }
done:
    fz_jtok_free(&d);
    free(text);
    free(path);
    return rc;
}

/* One checkpoint-* entry of a directory. */
typedef struct {
    char *name, *path;
    int64_t step;     /* N of checkpoint-N, -1 when not digits */
    bool dir, valid;  /* a directory / a directory holding weights */
    double t;         /* Forgather order: manifest timestamp, else directory mtime */
    bool t_manifest;  /* t came from the manifest */
    char *ts, *tv;    /* manifest timestamp and pytorch_version */
    int64_t gstep;    /* Trainer order: global_step from trainer_state.json, else N */
    bool gstep_state; /* gstep came from trainer_state.json */
} fz_cand;

static void cands_free(fz_cand *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(c[i].name);
        free(c[i].path);
        free(c[i].ts);
        free(c[i].tv);
    }
    free(c);
}

static int cmp_cand(const void *a, const void *b)
{
    const fz_cand *x = a, *y = b;
    if (x->step != y->step)
        return x->step < y->step ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Every "checkpoint-*" entry of `dir`, sorted by step then name. */
static int scan_checkpoints(const char *dir, fz_cand **out, size_t *n)
{
    int rc = 0;
    size_t cap = 0;
    fz_cand *c = NULL;
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return fz_error_set(FZ_EIO, "%s: cannot read directory: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "checkpoint-", 11) != 0)
            continue;
        if ((rc = FZ_VEC_RESERVE(c, cap, *n + 1)))
            break;
        fz_cand *k = &c[*n];
        memset(k, 0, sizeof *k);
        (*n)++;
        if (!(k->name = strdup(e->d_name)) || !(k->path = join(dir, e->d_name))) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            break;
        }
        k->step = parse_step(k->name);
        k->dir = is_dir(k->path);
        k->valid = k->dir && fz_source_has_weights(k->path);
    }
    closedir(d);
    if (rc) {
        cands_free(c, *n);
        *n = 0;
        return rc;
    }
    if (*n)
        qsort(c, *n, sizeof *c, cmp_cand);
    *out = c;
    return 0;
}

static int add_skipped(fz_source *s, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int add_skipped(fz_source *s, const char *name, const char *fmt, ...)
{
    int rc = FZ_VEC_RESERVE(s->skipped, s->capskipped, (size_t)s->nskipped + 1);
    if (rc)
        return rc;
    fz_skipped *k = &s->skipped[s->nskipped];
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    k->name = strdup(name);
    k->why = strdup(why);
    if (!k->name || !k->why) {
        free(k->name);
        free(k->why);
        return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    s->nskipped++;
    return 0;
}

/* The reason an entry that is not a checkpoint with weights was passed over. */
static int skip_invalid(fz_source *s, const fz_cand *k)
{
    char hint[1536];
    const char *h = k->dir ? sharded_hint(k->path, hint, sizeof hint) : "";
    if (*h) /* a checkpoint the user may well want, in a form fzfs cannot read */
        fz_log(FZ_LOG_WARNING, "%s skipped: no consolidated weights%s", k->path, h);
    return add_skipped(s, k->name, "%s%s",
                       !k->dir ? "not a directory"
                               : "no weights (no model.safetensors[.index.json] "
                                 "or pytorch_model.bin[.index.json])",
                       h);
}

/* Forgather: SRC/checkpoints/checkpoint-*, the newest by manifest timestamp
 * (else directory mtime), ties broken by step (FORMATS.md §1). */
static int pick_forgather(fz_source *s, const char *cdir)
{
    fz_cand *c;
    size_t n, best = SIZE_MAX;
    unsigned valid = 0;
    int rc = scan_checkpoints(cdir, &c, &n);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        fz_cand *k = &c[i];
        if (!k->valid)
            continue;
        valid++;
        read_manifest(k->path, &k->ts, &k->tv);
        k->t_manifest = k->ts && parse_iso(k->ts, &k->t);
        if (!k->t_manifest) {
            struct stat st;
            k->t =
                stat(k->path, &st) == 0 ? (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9 : 0;
        }
        const fz_cand *b = best == SIZE_MAX ? NULL : &c[best];
        if (!b || k->t > b->t ||
            (k->t == b->t &&
             (k->step > b->step || (k->step == b->step && strcmp(k->path, b->path) > 0))))
            best = i;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (i == best)
            continue;
        if (!c[i].valid)
            rc = skip_invalid(s, &c[i]);
        else if (c[i].t_manifest)
            rc = add_skipped(s, c[i].name, "older (manifest timestamp %s)", c[i].ts);
        else
            rc = add_skipped(s, c[i].name, "older (no manifest timestamp: directory mtime)");
    }
    if (rc == 0 && best != SIZE_MAX) {
        fz_cand *b = &c[best];
        s->ckpt = b->path;
        s->step = b->step;
        s->timestamp = b->ts;
        s->pytorch_version = b->tv;
        b->path = b->ts = b->tv = NULL;
        fz_buf why = FZ_BUF_INIT;
        fz_buf_printf(&why,
                      "newest of %u valid checkpoint(s) in %s (by manifest timestamp, "
                      "falling back to directory mtime; ties broken by step)",
                      valid, cdir);
        s->why = (char *)fz_buf_steal(&why, NULL);
    }
    cands_free(c, n);
    if (rc || best != SIZE_MAX)
        return rc;
    if (fz_source_has_weights(s->root)) {
        fz_warn("%s: no valid checkpoint (%zu checkpoint-* entries looked at); using the weights "
                "at the source root",
                cdir, n);
        s->ckpt = strdup(s->root);
        s->ckpt_is_root = true;
        s->why = strdup("checkpoints/ holds no checkpoint with weights; the source root does");
        return 0;
    }
    return fz_error_set(FZ_ENOTFOUND,
                        "%s: no valid checkpoint: looked at %zu checkpoint-* entries (none holds "
                        "model.safetensors[.index.json] or pytorch_model.bin[.index.json]) and the "
                        "source root has no weights either",
                        cdir, n);
}

/* global_step of a Trainer checkpoint's trainer_state.json into k->gstep;
 * N when the file does not exist. A file that exists but is not understood
 * is an error: choosing by a guess could publish the wrong checkpoint. */
static int read_global_step(fz_cand *k)
{
    char *path = join(k->path, "trainer_state.json"), *text = NULL;
    size_t len;
    json_t *j = NULL;
    k->gstep = k->step;
    k->gstep_state = false;
    if (!path)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    int rc = fz_read_file(path, 256u << 20, &text, &len);
    if (rc == FZ_ENOTFOUND) {
        fz_error_clear();
        rc = 0;
        goto done;
    }
    if (rc)
        goto done;
    if (!(j = fz_json_parse(text, len, path))) {
        char *msg = strdup(fz_error_msg());
        rc = fz_error_set(FZ_EFORMAT,
                          "%s; fix or remove this checkpoint, or choose another "
                          "with -c",
                          msg ? msg : path);
        free(msg);
        goto done;
    }
    json_t *g = json_is_object(j) ? json_object_get(j, "global_step") : NULL;
    if (!json_is_integer(g) || json_integer_value(g) < 0) {
        rc = fz_error_set(FZ_EFORMAT,
                          "%s: no non-negative integer \"global_step\"; fix or remove "
                          "this checkpoint, or choose another with -c",
                          path);
        goto done;
    }
    k->gstep = (int64_t)json_integer_value(g);
    k->gstep_state = true;
done:
    json_decref(j);
    free(text);
    free(path);
    return rc;
}

/* HF Trainer output_dir: SRC/checkpoint-N. With weights at the root
 * (trainer.save_model()) the root wins and every checkpoint is skipped;
 * otherwise the highest global_step (trainer_state.json, else N), ties
 * broken by N, never by mtime. `c` holds the root's checkpoint-* entries. */
static int pick_trainer(fz_source *s, fz_cand *c, size_t n)
{
    int rc = 0;
    size_t best = SIZE_MAX;
    unsigned valid = 0;
    if (fz_source_has_weights(s->root)) {
        s->layout = FZ_LAYOUT_TRAINER_FINAL;
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = c[i].valid ? add_skipped(s, c[i].name, "the model saved at the source root wins")
                            : skip_invalid(s, &c[i]);
        if (rc)
            return rc;
        s->ckpt = strdup(s->root);
        s->ckpt_is_root = true;
        s->why = strdup("a model saved at the source root (trainer.save_model()) next to "
                        "checkpoint-N directories: the root model is the final one");
        return 0;
    }
    s->layout = FZ_LAYOUT_TRAINER;
    for (size_t i = 0; i < n; i++) {
        fz_cand *k = &c[i];
        if (!k->valid || k->step < 0)
            continue;
        valid++;
        if ((rc = read_global_step(k)))
            return rc;
        const fz_cand *b = best == SIZE_MAX ? NULL : &c[best];
        if (!b || k->gstep > b->gstep || (k->gstep == b->gstep && k->step > b->step))
            best = i;
    }
    if (best == SIZE_MAX) {
        char hint[1536] = "";
        for (size_t i = n; i-- > 0 && !hint[0];) /* the highest step first */
            if (c[i].dir)
                sharded_hint(c[i].path, hint, sizeof hint);
        return fz_error_set(FZ_ENOTFOUND,
                            "%s: %zu checkpoint-* entries and none is a checkpoint-<number> "
                            "directory holding model.safetensors[.index.json] or "
                            "pytorch_model.bin[.index.json]; the source root has no weights "
                            "either%s. Point SRC or -c at a directory that holds weights",
                            s->root, n, hint);
    }
    const fz_cand *b = &c[best];
    for (size_t i = 0; i < n && rc == 0; i++) {
        const fz_cand *k = &c[i];
        if (i == best)
            continue;
        if (!k->valid)
            rc = skip_invalid(s, k);
        else if (k->step < 0)
            rc = add_skipped(s, k->name, "not named checkpoint-<number>");
        else if (k->gstep_state)
            rc = add_skipped(s, k->name, "lower global_step %lld", (long long)k->gstep);
        else
            rc = add_skipped(s, k->name, "lower step %lld (no trainer_state.json)",
                             (long long)k->gstep);
    }
    if (rc)
        return rc;
    s->ckpt = strdup(b->path);
    s->step = b->step;
    fz_buf why = FZ_BUF_INIT;
    fz_buf_printf(&why,
                  "highest %s (%lld) of %u checkpoint-N director%s with weights (by "
                  "trainer_state.json global_step, else N; never by mtime)",
                  b->gstep_state ? "global_step" : "step", (long long)b->gstep, valid,
                  valid == 1 ? "y" : "ies");
    s->why = (char *)fz_buf_steal(&why, NULL);
    return 0;
}

/* SRC without checkpoints/: a Trainer output_dir, a checkpoint-N directory
 * itself, or a flat model directory. */
static int pick_no_checkpoints_dir(fz_source *s)
{
    fz_cand *c;
    size_t n;
    int rc = scan_checkpoints(s->root, &c, &n);
    if (rc)
        return rc;
    if (n) {
        rc = pick_trainer(s, c, n);
        cands_free(c, n);
        return rc;
    }
    free(c);
    if (!fz_source_has_weights(s->root)) {
        char hint[1536];
        return fz_error_set(FZ_ENOTFOUND,
                            "%s: not a training output fzfs recognises. It looks for: a Forgather "
                            "run (checkpoints/checkpoint-N/ with weights), a Hugging Face Trainer "
                            "output_dir (checkpoint-N/ directories, or a model saved at the "
                            "root), a checkpoint-N directory itself, or a model directory "
                            "(model.safetensors, pytorch_model.bin, or their .index.json) -- "
                            "none is here%s. Point SRC at one, or name the checkpoint with -c PATH",
                            s->root, sharded_hint(s->root, hint, sizeof hint));
    }
    const char *base = strrchr(s->root, '/');
    s->step = parse_step(base ? base + 1 : s->root);
    s->ckpt = strdup(s->root);
    s->ckpt_is_root = true;
    if (s->step >= 0) {
        s->layout = FZ_LAYOUT_CHECKPOINT;
        read_manifest(s->root, &s->timestamp, &s->pytorch_version); /* as -c does */
        fz_buf why = FZ_BUF_INIT;
        fz_buf_printf(&why,
                      "the source is a checkpoint-N directory holding weights (step %lld "
                      "kept)",
                      (long long)s->step);
        s->why = (char *)fz_buf_steal(&why, NULL);
    } else {
        s->layout = FZ_LAYOUT_MODEL;
        s->why = strdup("no checkpoints/ directory: weights from the source root");
    }
    return 0;
}

/* `dir` of the pair (root, ckpt) that holds `name`: the root when it does,
 * else the checkpoint when it does, else the root (whose missing file then
 * gives the error). */
static char *meta_dir(const fz_source *s, const char *name)
{
    const char *d = !is_file(s->root, name) && is_file(s->ckpt, name) ? s->ckpt : s->root;
    return strdup(d);
}

static int find_optimizer(fz_source *s)
{
    static const char *const names[] = {"optimizer_state.pt", "optimizer.pt"};
    for (size_t i = 0; i < 2; i++)
        if (is_file(s->ckpt, names[i]))
            return (s->optimizer = join(s->ckpt, names[i]))
                       ? 0
                       : fz_error_set(FZ_ENOMEM, "out of memory");
    return 0;
}

int fz_source_find(fz_source *s, const char *src, const char *ckpt_opt)
{
    int rc = 0;
    char rp[PATH_MAX];
    memset(s, 0, sizeof *s);
    s->step = -1;
    struct stat sst;
    if (stat(src, &sst) != 0)
        return fz_error_set(FZ_ENOTFOUND, "Source directory does not exist: %s", src);
    if (!S_ISDIR(sst.st_mode))
        return fz_error_set(FZ_ENOTFOUND,
                            "%s is a file, not a directory: SRC is the training "
                            "output directory (the one holding checkpoints/ or config.json)%s",
                            src,
                            has_suffix(src, ".json") || has_suffix(src, ".bin") ||
                                    has_suffix(src, ".safetensors")
                                ? "; give the directory that contains this file"
                                : "");
    if (!realpath(src, rp))
        return fz_error_set(FZ_EIO, "%s: %s", src, strerror(errno));
    if (!(s->root = strdup(rp)))
        return fz_error_set(FZ_ENOMEM, "out of memory");
    if (ckpt_opt) {
        if (!is_dir(ckpt_opt) || !realpath(ckpt_opt, rp)) {
            rc = fz_error_set(FZ_ENOTFOUND, "Checkpoint path does not exist: %s", ckpt_opt);
            goto done;
        }
        if (!fz_source_has_weights(rp)) {
            char hint[1536];
            rc = fz_error_set(FZ_ENOTFOUND,
                              "%s: checkpoint holds no weights (none of "
                              "model.safetensors[.index.json], pytorch_model.bin[.index.json])%s",
                              rp, sharded_hint(rp, hint, sizeof hint));
            goto done;
        }
        s->layout = FZ_LAYOUT_EXPLICIT;
        s->ckpt = strdup(rp);
        s->ckpt_is_root = strcmp(rp, s->root) == 0;
        const char *base = strrchr(rp, '/');
        s->step = parse_step(base ? base + 1 : rp);
        s->why = strdup("given with -c/--checkpoint");
        read_manifest(s->ckpt, &s->timestamp, &s->pytorch_version);
    } else {
        char *cdir = join(s->root, "checkpoints");
        struct stat st;
        if (!cdir) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        if (lstat(cdir, &st) != 0) {
            rc = pick_no_checkpoints_dir(s);
        } else {
            s->layout = FZ_LAYOUT_FORGATHER;
            rc = pick_forgather(s, cdir);
        }
        free(cdir);
        if (rc)
            goto done;
    }
    if (!s->ckpt || !s->why) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    if (!(s->config_dir = meta_dir(s, "config.json")) ||
        !(s->tokenizer_dir = meta_dir(s, "tokenizer.json"))) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = find_optimizer(s)))
        goto done;
    rc = list_weight_files(s);
done:
    if (rc)
        fz_source_free(s);
    return rc;
}

const char *fz_layout_name(fz_layout l)
{
    switch (l) {
    case FZ_LAYOUT_FORGATHER:
        return "forgather";
    case FZ_LAYOUT_TRAINER:
        return "hf-trainer";
    case FZ_LAYOUT_TRAINER_FINAL:
        return "hf-trainer+final-model";
    case FZ_LAYOUT_CHECKPOINT:
        return "checkpoint-dir";
    case FZ_LAYOUT_MODEL:
        return "hf-model";
    case FZ_LAYOUT_EXPLICIT:
        return "explicit";
    }
    return "?";
}

const char *fz_layout_desc(fz_layout l)
{
    switch (l) {
    case FZ_LAYOUT_FORGATHER:
        return "Forgather training output (checkpoints/checkpoint-N)";
    case FZ_LAYOUT_TRAINER:
        return "Hugging Face Trainer output_dir (checkpoint-N directories at the root)";
    case FZ_LAYOUT_TRAINER_FINAL:
        return "Hugging Face Trainer output_dir with a final model saved at the root";
    case FZ_LAYOUT_CHECKPOINT:
        return "a single checkpoint-N directory";
    case FZ_LAYOUT_MODEL:
        return "a flat Hugging Face model directory";
    case FZ_LAYOUT_EXPLICIT:
        return "checkpoint chosen with -c";
    }
    return "?";
}

void fz_source_free(fz_source *s)
{
    free(s->root);
    free(s->ckpt);
    free(s->why);
    for (uint32_t i = 0; i < s->nskipped; i++) {
        free(s->skipped[i].name);
        free(s->skipped[i].why);
    }
    free(s->skipped);
    free(s->config_dir);
    free(s->tokenizer_dir);
    free(s->optimizer);
    free(s->timestamp);
    free(s->pytorch_version);
    free(s->index_name);
    json_decref(s->param_sharing);
    for (uint32_t i = 0; i < s->nfiles; i++)
        free(s->files[i]);
    free(s->files);
    memset(s, 0, sizeof *s);
}
