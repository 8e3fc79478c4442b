/* verify: the run (symlinks, config), the report and the gates. The weight
 * and tokenizer checks are in weights.c and tokens.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/jsonout.h"
#include "util/error.h"
#include "util/log.h"
#include "util/vec.h"
#include "verify/internal.h"

/* A JSON file larger than this is not a config or tokenizer we can check. */
#define FZ_VERIFY_JSON_MAX (512u << 20)
#define FZ_VERIFY_MAX_HOPS 40
#define FZ_VERIFY_MAX_DEPTH 32
#define FZ_VERIFY_MAX_ENTRIES 200000

/* ---- the report ---- */

void fz_vfail(fz_vctx *c, const char *file, const char *fmt, ...)
{
    fz_vreport *r = c->r;
    char *text = NULL, *f = NULL;
    va_list ap;
    if (c->err)
        return;
    va_start(ap, fmt);
    int k = vasprintf(&text, fmt, ap);
    va_end(ap);
    if (k < 0)
        text = NULL;
    else
        f = strdup(file);
    if (!text || !f || FZ_VEC_RESERVE(r->v, r->cap, r->n + 1)) {
        free(text);
        free(f);
        c->err = fz_error_set(FZ_ENOMEM, "out of memory");
        return;
    }
    r->v[r->n++] = (fz_vproblem){f, text};
}

void fz_vfail_error(fz_vctx *c, const char *file)
{
    const char *m = fz_error_msg();
    size_t l = strlen(file);
    if (l && strncmp(m, file, l) == 0 && m[l] == ':' && m[l + 1] == ' ')
        m += l + 2;
    fz_vfail(c, file, "%s", m);
}

void fz_vreport_free(fz_vreport *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->v[i].file);
        free(r->v[i].text);
    }
    free(r->v);
    memset(r, 0, sizeof *r);
}

void fz_vreport_print(const fz_vreport *r, FILE *f)
{
    for (size_t i = 0; i < r->n; i++)
        fprintf(f, "%s%s%s\n", r->v[i].file, r->v[i].file[0] ? ": " : "", r->v[i].text);
}

int fz_vreport_json(const fz_vreport *r, const char *dir, fz_buf *out)
{
    json_t *root = json_object(), *list = json_array();
    int rc = root && list ? 0 : fz_error_set(FZ_ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < r->n; i++)
        if (json_array_append_new(
                list, json_pack("{s:s,s:s}", "file", r->v[i].file, "problem", r->v[i].text)))
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
    if (rc == 0 && (json_object_set_new(root, "dir", json_string(dir)) ||
                    json_object_set_new(root, "ok", json_boolean(r->n == 0)) ||
                    json_object_set(root, "problems", list)))
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
    if (rc == 0) {
        fz_json_style style = {2, false, false, true};
        rc = fz_json_emit(root, &style, out);
    }
    json_decref(root);
    json_decref(list);
    return rc;
}

/* ---- paths ---- */

bool fz_vjson_uint(const json_t *v, int64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (int64_t)json_integer_value(v);
    return true;
}

bool fz_vends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Append component `comp` (len bytes) to the physical path in p. */
static bool path_push(char *p, size_t cap, const char *comp, size_t len)
{
    size_t l = strlen(p);
    if (l + len + 2 > cap)
        return false;
    if (l)
        p[l++] = '/';
    memcpy(p + l, comp, len);
    p[l + len] = 0;
    return true;
}

fz_vres fz_vresolve(fz_vctx *c, const char *path, char **phys, fz_vkind *kind, uint64_t *size)
{
    enum { CAP = 8192 };
    char *done = calloc(1, CAP), *rest = malloc(CAP), *tmp = malloc(CAP);
    fz_vres res = FZ_VR_MISSING;
    int hops = 0;
    *phys = NULL;
    *kind = FZ_VK_DIR;
    *size = 0;
    if (!done || !rest || !tmp || strlen(path) >= CAP) {
        if (!c->err && (!done || !rest || !tmp))
            c->err = fz_error_set(FZ_ENOMEM, "out of memory");
        goto out;
    }
    if (path[0] == '/') {
        res = FZ_VR_ESCAPES;
        goto out;
    }
    strcpy(rest, path);
    for (;;) {
        char *r = rest;
        while (*r == '/')
            r++;
        if (!*r) {
            res = FZ_VR_OK;
            break;
        }
        size_t len = strcspn(r, "/");
        char *next = r + len;
        if (*kind != FZ_VK_DIR)
            break; /* a component under a file */
        if (len == 1 && r[0] == '.') {
            memmove(rest, next, strlen(next) + 1);
            continue;
        }
        if (len == 2 && r[0] == '.' && r[1] == '.') {
            char *slash = strrchr(done, '/');
            if (!done[0]) {
                res = FZ_VR_ESCAPES;
                break;
            }
            if (slash)
                *slash = 0;
            else
                done[0] = 0;
            memmove(rest, next, strlen(next) + 1);
            continue;
        }
        size_t dl = strlen(done);
        if (!path_push(done, CAP, r, len))
            break;
        memmove(rest, next, strlen(next) + 1);
        if (c->fs->lstat(c->fs->ctx, done, kind, size) != 0 || *kind == FZ_VK_MISSING)
            break;
        if (*kind != FZ_VK_LINK)
            continue;
        char *target = NULL;
        if (++hops > FZ_VERIFY_MAX_HOPS) {
            res = FZ_VR_LOOP;
            break;
        }
        if (c->fs->readlink(c->fs->ctx, done, &target) != 0)
            break;
        done[dl] = 0; /* the link's directory */
        *kind = FZ_VK_DIR;
        if (target[0] == '/') {
            free(target);
            res = FZ_VR_ESCAPES;
            break;
        }
        int k = snprintf(tmp, CAP, "%s/%s", target, rest);
        free(target);
        if (k < 0 || k >= CAP)
            break;
        strcpy(rest, tmp);
    }
    if (res == FZ_VR_OK && !(*phys = strdup(done))) {
        c->err = c->err ? c->err : fz_error_set(FZ_ENOMEM, "out of memory");
        res = FZ_VR_MISSING;
    }
out:
    free(done);
    free(rest);
    free(tmp);
    return res;
}

json_t *fz_vload_json(fz_vctx *c, const char *name)
{
    char *phys = NULL, *text = NULL;
    fz_vkind kind;
    uint64_t size;
    json_t *j = NULL;
    if (fz_vresolve(c, name, &phys, &kind, &size) != FZ_VR_OK || kind != FZ_VK_FILE)
        goto done;
    if (size > FZ_VERIFY_JSON_MAX) {
        fz_vfail(c, name, "%llu bytes: too large to be checked (limit %u MiB)",
                 (unsigned long long)size, FZ_VERIFY_JSON_MAX >> 20);
        goto done;
    }
    if (!(text = malloc((size_t)size + 1))) {
        c->err = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    if (c->fs->read(c->fs->ctx, phys, 0, size, text) != 0) {
        fz_vfail_error(c, name);
        goto done;
    }
    text[size] = 0;
    if (!(j = fz_json_parse(text, (size_t)size, name)))
        fz_vfail_error(c, name);
    else if (!json_is_object(j)) {
        fz_vfail(c, name, "not a JSON object");
        json_decref(j);
        j = NULL;
    }
done:
    free(phys);
    free(text);
    return j;
}

/* ---- symlinks and odd entries, everywhere under the root ---- */

static void walk(fz_vctx *c, const char *dir, int depth, size_t *entries)
{
    char **names = NULL;
    size_t n = 0;
    if (c->fs->list(c->fs->ctx, dir, &names, &n) != 0) {
        fz_vfail_error(c, dir);
        return;
    }
    for (size_t i = 0; i < n && !c->err; i++) {
        char *p = NULL;
        if (++*entries > FZ_VERIFY_MAX_ENTRIES) {
            if (*entries == FZ_VERIFY_MAX_ENTRIES + 1)
                fz_vfail(c, "", "more than %d entries: symlinks past them were not checked",
                         FZ_VERIFY_MAX_ENTRIES);
            break;
        }
        if (asprintf(&p, "%s%s%s", dir, dir[0] ? "/" : "", names[i]) < 0) {
            c->err = fz_error_set(FZ_ENOMEM, "out of memory");
            break;
        }
        fz_vkind kind, rk;
        uint64_t size;
        char *phys = NULL, *target = NULL;
        if (c->fs->lstat(c->fs->ctx, p, &kind, &size) != 0) {
            fz_vfail_error(c, p);
        } else if (kind == FZ_VK_DIR) {
            if (depth < FZ_VERIFY_MAX_DEPTH)
                walk(c, p, depth + 1, entries);
        } else if (kind == FZ_VK_OTHER) {
            fz_vfail(c, p, "not a regular file, directory or symlink");
        } else if (kind == FZ_VK_LINK) {
            if (c->fs->readlink(c->fs->ctx, p, &target) != 0) {
                fz_vfail_error(c, p);
            } else {
                switch (fz_vresolve(c, p, &phys, &rk, &size)) {
                case FZ_VR_OK:
                    break;
                case FZ_VR_MISSING:
                    fz_vfail(c, p, "dangling symlink: its target '%s' does not exist", target);
                    break;
                case FZ_VR_ESCAPES:
                    fz_vfail(c, p,
                             "symlink to '%s' points outside the directory (copy the "
                             "file in, or link inside the directory)",
                             target);
                    break;
                case FZ_VR_LOOP:
                    fz_vfail(c, p, "symlink loop through '%s'", target);
                    break;
                }
            }
        }
        free(target);
        free(phys);
        free(p);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* ---- the run ---- */

static const char *const hidden_keys[] = {"hidden_size", "n_embd",     "d_model", "dim",
                                          "embed_dim",   "hidden_dim", NULL};

int fz_verify(const fz_vfs *fs, const fz_verify_opts *o, fz_vreport *out)
{
    static const fz_verify_opts none = {0};
    fz_vctx c = {.fs = fs,
                 .o = o ? o : &none,
                 .r = out,
                 .vocab = -1,
                 .hidden = -1,
                 .rows = -1,
                 .tok_len = -1};
    fz_vkind kind;
    uint64_t size;
    size_t entries = 0;
    int rc = fs->lstat(fs->ctx, "", &kind, &size);
    if (rc)
        return rc;
    if (kind != FZ_VK_DIR)
        return fz_error_set(FZ_ENOTFOUND, "not a directory");
    if ((rc = fs->list(fs->ctx, "", &c.root, &c.nroot)))
        return rc;
    walk(&c, "", 0, &entries);
    c.config = fz_vload_json(&c, "config.json");
    if (!c.config && !c.err) {
        char *phys = NULL;
        if (fz_vresolve(&c, "config.json", &phys, &kind, &size) == FZ_VR_MISSING)
            fz_vfail(&c, "config.json", "missing: a model directory needs one");
        free(phys);
    }
    if (c.config) {
        /* Multimodal configs keep the language model's sizes in text_config. */
        const json_t *cfgs[2] = {c.config, json_object_get(c.config, "text_config")};
        for (int k = 0; k < 2; k++) {
            if (c.vocab < 0 && !fz_vjson_uint(json_object_get(cfgs[k], "vocab_size"), &c.vocab))
                c.vocab = -1;
            for (int i = 0; hidden_keys[i] && c.hidden < 0; i++)
                if (!fz_vjson_uint(json_object_get(cfgs[k], hidden_keys[i]), &c.hidden))
                    c.hidden = -1;
        }
        const json_t *vs = json_object_get(c.config, "vocab_size");
        if (vs && !json_is_null(vs) && c.vocab < 0)
            fz_vfail(&c, "config.json", "vocab_size is not a non-negative integer");
    }
    if (!c.err)
        fz_vload_tokenizer(&c);
    if (!c.err)
        fz_vcheck_weights(&c);
    if (!c.err)
        fz_vcheck_tokens(&c);
    json_decref(c.config);
    json_decref(c.tokenizer);
    json_decref(c.tok_other);
    for (size_t i = 0; i < c.nroot; i++)
        free(c.root[i]);
    free(c.root);
    return c.err;
}

/* ---- the gates ---- */

static int gate(const fz_vfs *fs, fz_view *v, const char *what, const char *nothing)
{
    fz_vreport r = {0};
    fz_verify_opts o = {0};
    fz_view_role_names(v, &o.embedding, &o.head, &o.head_bias);
    int rc = fz_verify(fs, &o, &r);
    if (rc) {
        rc = fz_error_prefix(rc, "%s: cannot verify the finalized model", what);
    } else if (r.n) {
        for (size_t i = 0; i < r.n; i++)
            fz_log(FZ_LOG_ERROR, "verify: %s%s%s", r.v[i].file, r.v[i].file[0] ? ": " : "",
                   r.v[i].text);
        rc = fz_error_set(FZ_EFORMAT,
                          "%s: the finalized model fails verification (%zu "
                          "problem%s above); nothing was %s. Fix the source's files the problems "
                          "name, or report it if the source is fine",
                          what, r.n, r.n == 1 ? "" : "s", nothing);
    }
    fz_vreport_free(&r);
    return rc;
}

int fz_verify_gate_dir(const char *dir, fz_view *v, const char *what)
{
    fz_vfs fs;
    int rc = fz_vfs_open_dir(&fs, dir);
    if (rc)
        return rc;
    rc = gate(&fs, v, what, "written");
    fz_vfs_close(&fs);
    return rc;
}

int fz_verify_gate_view(fz_view *v, const char *what)
{
    fz_vfs fs;
    int rc = fz_vfs_open_view(&fs, v);
    if (rc)
        return rc;
    rc = gate(&fs, v, what, "mounted");
    fz_vfs_close(&fs);
    return rc;
}
