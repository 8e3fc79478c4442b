#include "view/source.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "formats/jsonout.h"
#include "util/buf.h"
#include "util/error.h"
#include "util/io.h"
#include "util/log.h"

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

static bool is_file(const char *dir, const char *name)
{
    char *p = join(dir, name);
    struct stat st;
    bool ok = p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    return ok;
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

/* Seconds since the epoch of a naive ISO-8601 local time
 * ("2026-01-24T10:30:45.123456"), as Python's fromisoformat().timestamp(). */
static bool parse_iso(const char *s, double *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int n = 0;
    if (sscanf(s, "%4d-%2d-%2d%*1[T ]%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) < 6)
        return false;
    double frac = 0;
    if (s[n] == '.') {
        double scale = 0.1;
        for (const char *p = s + n + 1; *p >= '0' && *p <= '9'; p++, scale /= 10)
            frac += (*p - '0') * scale;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    tm.tm_isdst = -1;
    time_t t = mktime(&tm);
    if (t == (time_t)-1)
        return false;
    *out = (double)t + frac;
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A shard name from an index must be a plain file name in the checkpoint. */
static bool safe_name(const char *n)
{
    return n[0] && strcmp(n, ".") && strcmp(n, "..") && !strchr(n, '/');
}

static int list_weight_files(fz_source *s)
{
    int rc = 0;
    char *path = NULL, *text = NULL;
    json_t *j = NULL;
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
    j = fz_json_parse(text, len, path);
    if (!j) {
        rc = FZ_EFORMAT;
        goto done;
    }
    json_t *wm = json_object_get(j, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        rc = fz_error_set(FZ_EFORMAT, "%s: no \"weight_map\" object", path);
        goto done;
    }
    s->files = calloc(json_object_size(wm), sizeof *s->files);
    if (!s->files) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val)
    {
        const char *f = json_string_value(val);
        if (!f || !safe_name(f)) {
            rc = fz_error_set(FZ_EFORMAT, "%s: weight_map[\"%s\"] is not a file name", path, key);
            goto done;
        }
        bool seen = false;
        for (uint32_t k = 0; k < s->nfiles && !seen; k++)
            seen = strcmp(s->files[k], f) == 0;
        if (!seen) {
            if (!(s->files[s->nfiles] = strdup(f))) {
                rc = fz_error_set(FZ_ENOMEM, "out of memory");
                goto done;
            }
            s->nfiles++;
        }
    }
    qsort(s->files, s->nfiles, sizeof *s->files, cmp_str);
    for (uint32_t k = 0; k < s->nfiles; k++)
        if (!is_file(s->ckpt, s->files[k])) {
            rc = fz_error_set(FZ_ENOTFOUND, "%s: lists shard '%s', which does not exist", path,
                              s->files[k]);
            goto done;
        }
done:
    json_decref(j);
    free(text);
    free(path);
    return rc;
}

static int pick_latest(fz_source *s, const char *cdir)
{
    int rc = 0;
    DIR *d = opendir(cdir);
    if (!d)
        return fz_error_set(FZ_EIO, "%s: cannot read directory: %s", cdir, strerror(errno));
    char *best = NULL, *best_ts = NULL, *best_tv = NULL;
    double best_t = 0;
    int64_t best_step = -1;
    unsigned seen = 0, valid = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "checkpoint-", 11) != 0)
            continue;
        seen++;
        char *p = join(cdir, e->d_name);
        if (!p) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            break;
        }
        if (!is_dir(p) || !fz_source_has_weights(p)) {
            free(p);
            continue;
        }
        valid++;
        char *ts, *tv;
        double t;
        read_manifest(p, &ts, &tv);
        if (!ts || !parse_iso(ts, &t)) {
            struct stat st;
            t = stat(p, &st) == 0 ? (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9 : 0;
        }
        int64_t step = parse_step(e->d_name);
        if (!best || t > best_t || (t == best_t && (step > best_step ||
                                                    (step == best_step && strcmp(p, best) > 0)))) {
            free(best);
            free(best_ts);
            free(best_tv);
            best = p;
            best_ts = ts;
            best_tv = tv;
            best_t = t;
            best_step = step;
        } else {
            free(p);
            free(ts);
            free(tv);
        }
    }
    closedir(d);
    if (rc == 0 && best) {
        s->ckpt = best;
        s->step = best_step;
        s->timestamp = best_ts;
        s->pytorch_version = best_tv;
        fz_buf why = FZ_BUF_INIT;
        fz_buf_printf(&why, "newest of %u valid checkpoint(s) in %s (by manifest timestamp, "
                      "falling back to directory mtime; ties broken by step)", valid, cdir);
        s->why = (char *)fz_buf_steal(&why, NULL);
        return 0;
    }
    free(best);
    free(best_ts);
    free(best_tv);
    if (rc)
        return rc;
    if (fz_source_has_weights(s->root)) {
        fz_warn("%s: no valid checkpoint (%u checkpoint-* entries looked at); using the weights "
                "at the source root", cdir, seen);
        s->ckpt = strdup(s->root);
        s->ckpt_is_root = true;
        s->why = strdup("checkpoints/ holds no checkpoint with weights; the source root does");
        return 0;
    }
    return fz_error_set(FZ_ENOTFOUND,
                        "%s: no valid checkpoint: looked at %u checkpoint-* entries (none holds "
                        "model.safetensors[.index.json] or pytorch_model.bin[.index.json]) and the "
                        "source root has no weights either", cdir, seen);
}

int fz_source_find(fz_source *s, const char *src, const char *ckpt_opt)
{
    int rc = 0;
    char rp[PATH_MAX];
    memset(s, 0, sizeof *s);
    s->step = -1;
    if (!is_dir(src))
        return fz_error_set(FZ_ENOTFOUND, "Source directory does not exist: %s", src);
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
            rc = fz_error_set(FZ_ENOTFOUND, "%s: checkpoint holds no weights (none of "
                              "model.safetensors[.index.json], pytorch_model.bin[.index.json])",
                              rp);
            goto done;
        }
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
            free(cdir);
            if (!fz_source_has_weights(s->root)) {
                rc = fz_error_set(FZ_ENOTFOUND, "%s: no checkpoints/ directory and no weights at "
                                  "the source root", s->root);
                goto done;
            }
            s->ckpt = strdup(s->root);
            s->ckpt_is_root = true;
            s->why = strdup("no checkpoints/ directory: weights from the source root");
        } else {
            rc = pick_latest(s, cdir);
            free(cdir);
            if (rc)
                goto done;
        }
    }
    if (!s->ckpt || !s->why) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    rc = list_weight_files(s);
done:
    if (rc)
        fz_source_free(s);
    return rc;
}

void fz_source_free(fz_source *s)
{
    free(s->root);
    free(s->ckpt);
    free(s->why);
    free(s->timestamp);
    free(s->pytorch_version);
    free(s->index_name);
    for (uint32_t i = 0; i < s->nfiles; i++)
        free(s->files[i]);
    free(s->files);
    memset(s, 0, sizeof *s);
}
