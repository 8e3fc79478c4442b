/* The mount(8) helper form. `mount -t fuse.fzfs SRC MNT -o OPTS` (and an
 * /etc/fstab line of type fuse.fzfs) makes mount.fuse3 run `fzfs SRC MNT -o
 * OPTS`, where OPTS also carries mount(8)'s own generic options (it adds
 * `rw` or `ro`, `dev`, `suid`). This file turns that into `fzfs mount SRC MNT`
 * with each view/mount option spelled as an -o key: `dtype=bfloat16` is
 * `--dtype bfloat16`, `safetensors` is `--safetensors`, `cache_dir=/x` (an
 * underscore for a dash is accepted too) is `--cache-dir /x`. Generic mount
 * options are dropped (the mount is always read-only, nodev and nosuid), and
 * whatever remains (allow_other, max_read=...) goes to FUSE. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/options.h"
#include "util/error.h"
#include "util/vec.h"

/* mount(8)'s generic options and fstab-only keys that mean nothing to a
 * read-only FUSE view; prefixes end with '*'. */
static const char *const generic[] = {"rw",          "ro",
                                      "dev",         "nodev",
                                      "suid",        "nosuid",
                                      "exec",        "noexec",
                                      "auto",        "noauto",
                                      "user",        "nouser",
                                      "users",       "owner",
                                      "group",       "_netdev",
                                      "nofail",      "defaults",
                                      "sync",        "async",
                                      "atime",       "noatime",
                                      "relatime",    "norelatime",
                                      "strictatime", "nostrictatime",
                                      "lazytime",    "nolazytime",
                                      "diratime",    "nodiratime",
                                      "silent",      "loud",
                                      "x-*",         "comment=*",
                                      "mand",        "nomand",
                                      NULL};

static bool is_generic(const char *item)
{
    for (size_t i = 0; generic[i]; i++) {
        size_t n = strlen(generic[i]);
        if (generic[i][n - 1] == '*' ? strncmp(item, generic[i], n - 1) == 0
                                     : strcmp(item, generic[i]) == 0)
            return true;
    }
    return false;
}

static int helper_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "fzfs (mount helper): ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nUsage: fzfs SRC MNT -o KEY[=VALUE],... (keys: the long options of "
                    "`fzfs mount --help`)\n");
    return FZ_EUSAGE;
}

typedef struct {
    char **v;
    size_t n, cap;
} argvec;

static int push(argvec *a, const char *s, size_t len)
{
    if (FZ_VEC_RESERVE(a->v, a->cap, a->n + 2))
        return FZ_ENOMEM;
    char *d = strndup(s, len);
    if (!d)
        return FZ_ENOMEM;
    a->v[a->n++] = d;
    a->v[a->n] = NULL;
    return 0;
}

/* One -o item: a mount option, a generic option (dropped), or a FUSE option
 * (appended to *fuse, comma-separated). */
static int convert_item(argvec *a, char *item, char **fuse)
{
    if (!*item || is_generic(item))
        return 0;
    char *eq = strchr(item, '=');
    size_t klen = eq ? (size_t)(eq - item) : strlen(item);
    char key[64];
    if (klen < sizeof key) {
        memcpy(key, item, klen);
        key[klen] = 0;
        for (char *p = key; *p; p++)
            if (*p == '_')
                *p = '-';
        bool has_arg;
        if (fz_cli_mount_option(key, &has_arg)) {
            if (has_arg && !eq)
                return helper_usage("-o %s needs a value (KEY=VALUE)", key);
            if (!has_arg && eq)
                return helper_usage("-o %s takes no value", key);
            char flag[80];
            snprintf(flag, sizeof flag, "--%s", key);
            int rc = push(a, flag, strlen(flag));
            if (rc == 0 && eq)
                rc = push(a, eq + 1, strlen(eq + 1));
            return rc;
        }
    }
    return fz_cli_join(fuse, ',', item);
}

int fz_cli_helper_argv(int argc, char **argv, int *out_argc, char ***out)
{
    *out_argc = argc;
    *out = argv;
    /* SRC must look like a path (contain a '/' or exist), so that a mistyped
     * command stays "unknown command" instead of becoming a mount. */
    if (argc < 3 || argv[1][0] == '-' || fz_cli_is_command(argv[1]) || argv[2][0] == '-' ||
        (!strchr(argv[1], '/') && access(argv[1], F_OK) != 0))
        return 0;
    argvec a = {0};
    char *fuse = NULL;
    int rc = 0;
    if ((rc = push(&a, argv[0], strlen(argv[0]))) || (rc = push(&a, "mount", 5)) ||
        (rc = push(&a, argv[1], strlen(argv[1]))) || (rc = push(&a, argv[2], strlen(argv[2]))))
        goto done;
    for (int i = 3; i < argc && rc == 0; i++) {
        const char *opts = NULL;
        if (!strcmp(argv[i], "-o")) {
            if (i + 1 >= argc) {
                rc = helper_usage("%s needs a value", "-o");
                goto done;
            }
            opts = argv[++i];
        } else if (!strncmp(argv[i], "-o", 2)) {
            opts = argv[i] + 2;
        } else if (!strcmp(argv[i], "-n") || !strcmp(argv[i], "-s") || !strcmp(argv[i], "-v")) {
            continue; /* mount(8)'s no-mtab / sloppy / verbose flags */
        } else {
            rc = push(&a, argv[i], strlen(argv[i])); /* e.g. -f */
            continue;
        }
        char *copy = strdup(opts), *save = NULL;
        if (!copy) {
            rc = FZ_ENOMEM;
            goto done;
        }
        for (char *t = strtok_r(copy, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save))
            rc = convert_item(&a, t, &fuse);
        free(copy);
    }
    if (rc == 0 && fuse && (rc = push(&a, "-o", 2)) == 0)
        rc = push(&a, fuse, strlen(fuse));
done:
    free(fuse);
    if (rc == FZ_ENOMEM)
        rc = helper_usage("%s", "out of memory");
    if (rc) {
        fz_cli_helper_free((int)a.n, a.v);
        return rc;
    }
    *out_argc = (int)a.n;
    *out = a.v;
    return 1;
}

void fz_cli_helper_free(int argc, char **argv)
{
    if (!argv)
        return;
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    free(argv);
}
