/* The fzfs command: subcommands over one option table (cli/options.c).
 * Exit status: 0 success, 1 error, 2 usage error. */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cli/options.h"
#include "fs/mount.h"
#include "fz_config.h"
#include "materialize/materialize.h"
#include "util/error.h"
#include "util/log.h"
#include "verify/verify.h"
#include "view/view.h"

static int exit_code(int rc)
{
    return rc == 0 ? 0 : rc == FZ_EUSAGE ? 2 : 1;
}

static int fail(int rc)
{
    fz_log(FZ_LOG_ERROR, "%s", fz_error_msg());
    return exit_code(rc);
}

/* finalize's warning, once per command; never on machine-readable output. */
static void warn_chat_template(const fz_view *v)
{
    if (!fz_view_has_chat_template(v))
        fz_log(FZ_LOG_WARNING, "Tokenizer has no chat_template; consider providing one via -t "
                               "before chat fine-tuning");
}

static int cmd_plan(fz_cli *c)
{
    fz_view *v = NULL;
    int rc = fz_view_build(&v, &c->view);
    if (rc)
        return fail(rc);
    if (!c->json)
        warn_chat_template(v);
    if (c->json) {
        fz_buf b = FZ_BUF_INIT;
        rc = fz_view_plan_json(v, &b);
        if (rc == 0)
            fwrite(b.data, 1, b.len, stdout);
        fz_buf_free(&b);
    } else {
        rc = fz_view_plan_text(v, stdout);
    }
    fz_view_free(v);
    return rc ? fail(rc) : 0;
}

/* The cache materialize reads through: --cache-dir, or the default one if
 * it already exists (reusing hits must not create a cache nobody asked
 * for), or the default one created when --fill-cache asks to fill it. A
 * cache that cannot be opened is a warning: materialize computes instead. */
static void materialize_cache(const fz_cli *c, fz_view *v)
{
    struct stat st;
    if (c->no_cache)
        return;
    /* The default directory is used only when it exists already (or
     * --fill-cache asks for it); --cache-dir always. */
    char *dflt = c->cache_dir ? NULL : fz_cache_default_dir();
    const char *dir = c->cache_dir ? c->cache_dir : dflt;
    if (c->cache_dir || c->fill_cache || (dir && stat(dir, &st) == 0))
        if (fz_view_open_cache(v, dir, c->cache_size,
                               c->fill_cache ? FZ_VIEW_CACHE_FILL : FZ_VIEW_CACHE_REUSE) != 0)
            fz_warn("cache unavailable, computing without it: %s", fz_error_msg());
    free(dflt);
}

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
}

static int cmd_materialize(fz_cli *c)
{
    fz_view *v = NULL;
    int rc = fz_materialize_check_dest(c->dest); /* before minutes of work */
    if (rc)
        return fail(rc);
    rc = fz_view_build(&v, &c->view);
    if (rc)
        return fail(rc);
    warn_chat_template(v);
    if (c->dry_run) {
        printf("DRY RUN: nothing written. Would create: %s\n\n", c->dest);
        rc = fz_view_plan_text(v, stdout);
        fz_view_free(v);
        return rc ? fail(rc) : 0;
    }
    materialize_cache(c, v);
    fz_mat_opts mo = {.workers = c->workers,
                      .progress = c->progress < 0 ? isatty(2) != 0 : c->progress > 0,
                      .stop = &stop_signal};
    fz_info("Materializing %s -> %s", c->view.src, c->dest);
    /* SIGINT, SIGTERM and SIGHUP (a closed terminal) stop it cleanly:
     * nothing is left, and the exit status says which signal (128 + n). */
    struct sigaction sa, old[3];
    const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &sa, &old[i]);
    rc = fz_materialize(v, c->dest, &mo);
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &old[i], NULL);
    fz_view_free(v);
    if (rc == FZ_EINTR && stop_signal) {
        fz_log(FZ_LOG_ERROR, "%s", fz_error_msg());
        return 128 + (int)stop_signal;
    }
    if (rc)
        return fail(rc);
    fz_info("Done. Finalized model at: %s", c->dest);
    return 0;
}

static int cmd_mount(fz_cli *c)
{
    fz_view *v = NULL;
    int rc = fz_mount_check_dir(c->mnt);
    if (rc)
        return fail(rc);
    if ((rc = fz_view_build(&v, &c->view)))
        return fail(rc);
    warn_chat_template(v);
    fz_mount_opts mo = {.src = c->view.src,
                        .foreground = c->foreground,
                        .fuse_opts = c->fuse_opts,
                        .compute_threads = c->workers,
                        .log_file = c->log_file,
                        .view_args = c->view_args,
                        .no_passthrough = c->no_passthrough,
                        .compute_on_read = c->compute_on_read,
                        .use_cache = !c->no_cache,
                        .cache_dir = c->cache_dir,
                        .cache_size = c->cache_size};
    rc = fz_mount_serve(v, c->mnt, &mo);
    fz_view_free(v);
    return rc ? fail(rc) : 0;
}

static int cmd_umount(fz_cli *c)
{
    int rc = fz_umount(c->mnt, c->lazy);
    return rc ? fail(rc) : 0;
}

static int cmd_status(fz_cli *c)
{
    int rc = fz_status_print(stdout, c->json);
    return rc ? fail(rc) : 0;
}

static int cmd_cache(fz_cli *c)
{
    fz_cache *cache = NULL;
    char *dir = c->cache_dir ? strdup(c->cache_dir) : fz_cache_default_dir();
    int rc = 0;
    if (!dir)
        return fail(fz_error_set(FZ_ENOMEM, "out of memory"));
    if (!strcmp(c->cache_action, "clear")) {
        /* Removes the environment (damaged or not); refused while another
         * fzfs process has the cache open. */
        if (!(rc = fz_cache_reset(dir)))
            printf("cache: %s\ncleared\n", dir);
        goto done;
    }
    if (c->json && strcmp(c->cache_action, "stats")) {
        rc = fz_error_set(FZ_EUSAGE, "--json is for `fzfs cache stats` only");
        goto done;
    }
    /* stats and verify report damage; they never repair it. */
    if ((rc = fz_cache_open_flags(&cache, dir, c->cache_size, FZ_CACHE_NO_REPAIR)))
        goto done;
    if (!strcmp(c->cache_action, "stats")) {
        fz_cache_stats s;
        if ((rc = fz_cache_get_stats(cache, &s)))
            goto done;
        if (c->json) {
            json_t *o = json_pack(
                "{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "cache", dir, "entries",
                (json_int_t)s.entries, "bytes", (json_int_t)s.bytes, "map_size",
                (json_int_t)s.map_size, "used_bytes", (json_int_t)s.used_bytes, "hits",
                (json_int_t)s.hits, "misses", (json_int_t)s.misses, "fills", (json_int_t)s.fills,
                "corrupt", (json_int_t)s.corrupt, "evictions", (json_int_t)s.evictions, "files",
                (json_int_t)s.files, "file_bytes", (json_int_t)s.file_bytes);
            char *text = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
            json_decref(o);
            if (!text) {
                rc = fz_error_set(FZ_ENOMEM, "out of memory");
                goto done;
            }
            printf("%s\n", text);
            free(text);
            goto done;
        }
        printf("cache: %s\n", dir);
        printf("entries: %llu\nbytes: %llu\nmap_size: %llu\nused_bytes: %llu\n",
               (unsigned long long)s.entries, (unsigned long long)s.bytes,
               (unsigned long long)s.map_size, (unsigned long long)s.used_bytes);
        printf("hits: %llu\nmisses: %llu\nfills: %llu\ncorrupt: %llu\nevictions: %llu\n",
               (unsigned long long)s.hits, (unsigned long long)s.misses,
               (unsigned long long)s.fills, (unsigned long long)s.corrupt,
               (unsigned long long)s.evictions);
        printf("files: %llu\nfile_bytes: %llu\n", (unsigned long long)s.files,
               (unsigned long long)s.file_bytes);
    } else if (!strcmp(c->cache_action, "verify")) {
        uint64_t checked = 0, bad = 0;
        if ((rc = fz_cache_verify(cache, &checked, &bad)))
            goto done;
        printf("cache: %s\nchecked: %llu\nbad: %llu\n", dir, (unsigned long long)checked,
               (unsigned long long)bad);
    }
done:
    fz_cache_close(cache);
    free(dir);
    return rc ? fail(rc) : 0;
}

static int cmd_verify(fz_cli *c)
{
    fz_vfs fs;
    fz_vreport r = {0};
    fz_buf b = FZ_BUF_INIT;
    int rc = fz_vfs_open_dir(&fs, c->dir);
    if (rc)
        return fail(rc);
    if ((rc = fz_verify(&fs, NULL, &r)) == 0) {
        if (c->json && (rc = fz_vreport_json(&r, c->dir, &b)) == 0)
            fwrite(b.data, 1, b.len, stdout);
        else if (!c->json)
            fz_vreport_print(&r, stdout);
    }
    if (rc == 0)
        fz_info("%s: %zu problem%s", c->dir, r.n, r.n == 1 ? "" : "s");
    fz_vfs_close(&fs);
    fz_buf_free(&b);
    size_t n = r.n;
    fz_vreport_free(&r);
    return rc ? fail(rc) : n ? 1 : 0;
}

int main(int argc, char **argv)
{
    fz_cli c;
    int hargc;
    char **hargv;
    int helper = fz_cli_helper_argv(argc, argv, &hargc, &hargv);
    if (helper < 0)
        return exit_code(helper);
    int rc = fz_cli_parse(&c, hargc, hargv);
    if (rc == FZ_CLI_EXIT_OK || rc) {
        if (helper)
            fz_cli_helper_free(hargc, hargv);
        return rc == FZ_CLI_EXIT_OK ? 0 : exit_code(rc);
    }
    switch (c.cmd) {
    case FZ_CMD_PLAN:
        rc = cmd_plan(&c);
        break;
    case FZ_CMD_MATERIALIZE:
        rc = cmd_materialize(&c);
        break;
    case FZ_CMD_MOUNT:
        rc = cmd_mount(&c);
        break;
    case FZ_CMD_UMOUNT:
        rc = cmd_umount(&c);
        break;
    case FZ_CMD_CACHE:
        rc = cmd_cache(&c);
        break;
    case FZ_CMD_VERIFY:
        rc = cmd_verify(&c);
        break;
    case FZ_CMD_STATUS:
        rc = cmd_status(&c);
        break;
    default:
        rc = 2;
    }
    fz_cli_free(&c);
    if (helper)
        fz_cli_helper_free(hargc, hargv);
    return rc;
}
