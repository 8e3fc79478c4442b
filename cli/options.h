/* Command-line parsing: one option table shared by every subcommand; each
 * subcommand names which options it takes. Usage errors are printed here
 * (with a hint to --help) and returned as FZ_EUSAGE. */
#ifndef FZ_CLI_OPTIONS_H
#define FZ_CLI_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "view/view.h"

typedef enum {
    FZ_CMD_NONE,
    FZ_CMD_MATERIALIZE,
    FZ_CMD_PLAN,
    FZ_CMD_MOUNT,
    FZ_CMD_UMOUNT,
    FZ_CMD_CACHE,
    FZ_CMD_VERIFY,
    FZ_CMD_STATUS,
} fz_cmd;

typedef struct {
    fz_cmd cmd;
    fz_view_opts view;
    const char *dest;         /* materialize: DEST */
    const char *mnt;          /* mount, umount: MNT */
    const char *cache_action; /* cache: stats | verify | clear */
    const char *dir;          /* verify: DIR */
    bool dry_run;
    bool json;
    int workers;
    int progress; /* -1 auto (TTY), 0 off, 1 on */
    /* mount */
    bool foreground;
    char *fuse_opts; /* every -o joined with commas (owned), or NULL */
    char *view_args; /* mount: the view options as given, space-joined (owned), or NULL */
    bool lazy;       /* umount --lazy */
    bool no_passthrough;
    bool compute_on_read;
    const char *log_file;
    /* cache (mount, materialize, cache) */
    const char *cache_dir;
    uint64_t cache_size; /* 0 = default */
    bool no_cache;
    bool fill_cache;
} fz_cli;

/* Parse a size with an optional K/M/G/T suffix (powers of 1024, an
 * optional trailing "B" or "iB"): "512M", "16G", "1048576". Returns 0 or
 * FZ_EUSAGE. */
int fz_cli_parse_size(const char *s, uint64_t *out);

/* Append `item` to the string *list (NULL when empty), after `sep` unless
 * *list is empty. 0, or FZ_ENOMEM with *list unchanged. */
int fz_cli_join(char **list, char sep, const char *item);

/* fz_cli_parse returns 0 (run c->cmd), FZ_CLI_EXIT_OK (help/version printed),
 * or FZ_EUSAGE (message printed). */
#define FZ_CLI_EXIT_OK 1
int fz_cli_parse(fz_cli *c, int argc, char **argv);

/* Whether `name` is a long option of `fzfs mount` (without the dashes);
 * *has_arg tells whether it takes a value. */
bool fz_cli_mount_option(const char *name, bool *has_arg);

/* The mount(8) helper form `fzfs SRC MNT [-o OPTS]...` (what mount.fuse3 runs
 * for `mount -t fuse.fzfs SRC MNT -o OPTS` and for an fstab line): when argv
 * has that form, *out is a new argument vector `fzfs mount SRC MNT ...` in
 * which each -o key naming a mount option becomes that option
 * (`dtype=bfloat16` -> `--dtype bfloat16`, `safetensors` -> `--safetensors`),
 * mount(8)'s generic options (rw, ro, dev, suid, exec, auto, _netdev, nofail,
 * x-*, ...) are dropped, and every other key is passed to FUSE with -o.
 * Returns 1 (converted: free with fz_cli_helper_free), 0 (not the helper
 * form: *out = argv), or FZ_EUSAGE (message printed). */
int fz_cli_helper_argv(int argc, char **argv, int *out_argc, char ***out);
void fz_cli_helper_free(int argc, char **argv);

/* Whether `name` is an fzfs command (materialize, plan, mount, ...). */
bool fz_cli_is_command(const char *name);
void fz_cli_free(fz_cli *c);

#endif
