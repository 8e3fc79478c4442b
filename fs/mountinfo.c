/* /proc/self/mountinfo, parsed once for `fzfs status`, `fzfs umount` and
 * the mount-point checks of `fzfs mount`. */
#include "fs/mountinfo.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/pidfile.h"
#include "util/error.h"
#include "util/vec.h"

/* Undo mountinfo's octal escapes (\040 for a space...) in place. */
static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r;) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = 0;
}

/* The next space-separated field of *p (NUL-terminated in place), or NULL. */
static char *field(char **p)
{
    char *s = *p;
    while (*s == ' ')
        s++;
    if (!*s)
        return NULL;
    char *e = s + strcspn(s, " \n");
    if (*e)
        *e++ = 0;
    *p = e;
    return s;
}

/* One line: "ID PARENT MAJ:MIN ROOT MNT MNTOPTS [OPTIONAL...] - TYPE SOURCE SUPEROPTS". */
static int parse_line(char *line, fz_mountent *e)
{
    char *p = line, *f[6], *sep = strstr(line, " - ");
    if (!sep)
        return 1;
    *sep = 0;
    for (int i = 0; i < 6; i++)
        if (!(f[i] = field(&p)))
            return 1;
    char *q = sep + 3, *type = field(&q), *src = field(&q), *sopts = field(&q);
    if (!type || !src || sscanf(f[2], "%u:%u", &e->maj, &e->min) != 2)
        return 1;
    unescape(f[4]);
    unescape(src);
    size_t ol = strlen(f[5]) + (sopts ? strlen(sopts) + 1 : 0) + 1;
    e->mnt = strdup(f[4]);
    e->fstype = strdup(type);
    e->source = strdup(src);
    e->options = malloc(ol);
    if (!e->mnt || !e->fstype || !e->source || !e->options)
        return -1;
    snprintf(e->options, ol, "%s%s%s", f[5], sopts ? "," : "", sopts ? sopts : "");
    return 0;
}

int fz_mounts_read(fz_mountent **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f)
        return fz_error_set(FZ_EIO, "/proc/self/mountinfo: cannot read it; is /proc mounted?");
    char *line = NULL;
    size_t cap = 0, cnt = 0, room = 0;
    fz_mountent *m = NULL;
    int rc = 0;
    while (getline(&line, &cap, f) > 0) {
        if ((rc = FZ_VEC_RESERVE(m, room, cnt + 1)))
            break;
        memset(&m[cnt], 0, sizeof m[cnt]);
        int pr = parse_line(line, &m[cnt]);
        if (pr < 0) {
            cnt++;
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            break;
        }
        if (pr == 0)
            cnt++; /* a skipped line (pr 1) allocated nothing */
    }
    free(line);
    fclose(f);
    if (rc) {
        fz_mounts_free(m, cnt);
        return rc;
    }
    *out = m;
    *n = cnt;
    return 0;
}

void fz_mounts_free(fz_mountent *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(m[i].mnt);
        free(m[i].fstype);
        free(m[i].source);
        free(m[i].options);
    }
    free(m);
}

const fz_mountent *fz_mounts_at(const fz_mountent *m, size_t n, const char *path)
{
    const fz_mountent *top = NULL;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(m[i].mnt, path))
            top = &m[i];
    return top;
}

bool fz_mount_is_fzfs(const fz_mountent *e)
{
    if (!strcmp(e->fstype, "fuse.fzfs"))
        return true;
    if (strcmp(e->fstype, "fuse") && strncmp(e->fstype, "fuse.", 5))
        return false;
    char pidpath[PATH_MAX] = "";
    return fz_pidfile_daemon(e->maj, e->min, pidpath, sizeof pidpath) > 0 ||
           (pidpath[0] && access(pidpath, F_OK) == 0);
}
