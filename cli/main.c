/* The fzfs command: subcommands over one option table (cli/options.c).
 * Exit status: 0 success, 1 error, 2 usage error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/options.h"
#include "fz_config.h"
#include "materialize/materialize.h"
#include "util/error.h"
#include "util/log.h"
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

static int cmd_plan(fz_cli *c)
{
    fz_view *v = NULL;
    int rc = fz_view_build(&v, &c->view);
    if (rc)
        return fail(rc);
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

static int cmd_materialize(fz_cli *c)
{
    struct stat st;
    fz_view *v = NULL;
    if (lstat(c->dest, &st) == 0)
        return fail(fz_error_set(FZ_EEXIST, "Destination already exists: %s", c->dest));
    int rc = fz_view_build(&v, &c->view);
    if (rc)
        return fail(rc);
    if (c->dry_run) {
        printf("DRY RUN: nothing written. Would create: %s\n\n", c->dest);
        rc = fz_view_plan_text(v, stdout);
        fz_view_free(v);
        return rc ? fail(rc) : 0;
    }
    fz_mat_opts mo = {.workers = c->workers,
                      .progress = c->progress < 0 ? isatty(2) != 0 : c->progress > 0};
    fz_info("Materializing %s -> %s", c->view.src, c->dest);
    rc = fz_materialize(v, c->dest, &mo);
    fz_view_free(v);
    if (rc)
        return fail(rc);
    fz_info("Done. Finalized model at: %s", c->dest);
    return 0;
}

int main(int argc, char **argv)
{
    fz_cli c;
    int rc = fz_cli_parse(&c, argc, argv);
    if (rc == FZ_CLI_EXIT_OK)
        return 0;
    if (rc)
        return exit_code(rc);
    switch (c.cmd) {
    case FZ_CMD_PLAN:
        rc = cmd_plan(&c);
        break;
    case FZ_CMD_MATERIALIZE:
        rc = cmd_materialize(&c);
        break;
    default:
        rc = 2;
    }
    fz_cli_free(&c);
    return rc;
}
