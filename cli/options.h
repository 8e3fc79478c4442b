/* Command-line parsing: one option table shared by every subcommand; each
 * subcommand names which options it takes. Usage errors are printed here
 * (with a hint to --help) and returned as FZ_EUSAGE. */
#ifndef FZ_CLI_OPTIONS_H
#define FZ_CLI_OPTIONS_H

#include <stdbool.h>

#include "view/view.h"

typedef enum { FZ_CMD_NONE, FZ_CMD_MATERIALIZE, FZ_CMD_PLAN } fz_cmd;

typedef struct {
    fz_cmd cmd;
    fz_view_opts view;
    const char *dest;
    bool dry_run;
    bool json;
    int workers;
    int progress; /* -1 auto (TTY), 0 off, 1 on */
} fz_cli;

/* fz_cli_parse returns 0 (run c->cmd), FZ_CLI_EXIT_OK (help/version printed),
 * or FZ_EUSAGE (message printed). */
#define FZ_CLI_EXIT_OK 1
int fz_cli_parse(fz_cli *c, int argc, char **argv);
void fz_cli_free(fz_cli *c);

#endif
