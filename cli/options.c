#include "cli/options.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fz_config.h"
#include "util/error.h"
#include "util/log.h"

enum {
    O_CHECKPOINT = 'c',
    O_TEMPLATE = 't',
    O_HELP = 'h',
    O_ADD_TOKENS = 256,
    O_SKIP_DEFAULT,
    O_NO_AUTO_STOP,
    O_STOP_TOKENS,
    O_GENCONFIG,
    O_KEEP_OPT,
    O_ROOT_COPY,
    O_SAFETENSORS,
    O_DTYPE,
    O_DEVICE,
    O_QUANTIZE,
    O_EMBEDDING,
    O_QUANTIZE_IGNORE,
    O_MAX_SHARD,
    O_DRY_RUN,
    O_LOG_LEVEL,
    O_JSON,
    O_WORKERS,
    O_PROGRESS,
    O_NO_PROGRESS,
    O_VERSION,
    O_FOREGROUND = 'f',
    O_FUSE_OPTS = 'o',
    O_CACHE_DIR = 300,
    O_CACHE_SIZE,
    O_NO_CACHE,
    O_FILL_CACHE,
    O_LOG_FILE,
    O_HUB,
    O_LAZY,
    O_NO_PASSTHROUGH,
    O_COMPUTE_ON_READ,
};

/* The option table: every subcommand's options, with the help text. */
static const struct {
    struct option opt;
    const char *arg, *help;
    unsigned cmds; /* bit per fz_cmd */
} table[] = {
#define V ((1u << FZ_CMD_MATERIALIZE) | (1u << FZ_CMD_PLAN) | (1u << FZ_CMD_MOUNT))
#define M (1u << FZ_CMD_MATERIALIZE)
#define P (1u << FZ_CMD_PLAN)
#define MT (1u << FZ_CMD_MOUNT)
#define C (1u << FZ_CMD_CACHE)
#define VF (1u << FZ_CMD_VERIFY)
#define ST (1u << FZ_CMD_STATUS)
#define U (1u << FZ_CMD_UMOUNT)
#define ALL (V | U | C | VF | ST)
    {{"checkpoint", required_argument, 0, O_CHECKPOINT},
     "PATH",
     "source checkpoint directory (default: the latest under SRC/checkpoints/)",
     V},
    {{"add-tokens", required_argument, 0, O_ADD_TOKENS},
     "YAML",
     "tokens to add (add-tokens YAML)",
     V},
    {{"skip-default-tokens", no_argument, 0, O_SKIP_DEFAULT},
     NULL,
     "don't add a [PAD] token when the tokenizer has none",
     V},
    {{"chat-template-path", required_argument, 0, O_TEMPLATE},
     "FILE",
     "Jinja2 chat template for the tokenizer",
     V},
    {{"no-auto-stop-tokens", no_argument, 0, O_NO_AUTO_STOP},
     NULL,
     "don't add end-of-turn tokens to generation_config's eos_token_id",
     V},
    {{"stop-tokens", required_argument, 0, O_STOP_TOKENS},
     "\"T1,T2\"",
     "extra stop-token strings for generation_config",
     V},
    {{"generation-config", required_argument, 0, O_GENCONFIG},
     "carry|none|PATH|NAME",
     "generation_config.json: carry the source's (default), none, or a preset",
     V},
    {{"keep-optimizer", no_argument, 0, O_KEEP_OPT},
     NULL,
     "carry optimizer_state.pt (a Trainer's optimizer.pt) into the checkpoint",
     V},
    {{"root-copy", no_argument, 0, O_ROOT_COPY},
     NULL,
     "weights at the root, no checkpoints/ (excludes --keep-optimizer)",
     V},
    {{"hub", no_argument, 0, O_HUB},
     NULL,
     "Hub-ready release: safetensors, weights at the root, no checkpoints/ or Forgather-only files",
     V},
    {{"safetensors", no_argument, 0, O_SAFETENSORS},
     NULL,
     "write safetensors (default: PyTorch .bin)",
     V},
    {{"dtype", required_argument, 0, O_DTYPE},
     "bfloat16|float16|float32",
     "cast floating-point weights (bit-exact with torch)",
     V},
    {{"device", required_argument, 0, O_DEVICE}, "cpu", "accepted for compatibility; only cpu", V},
    {{"quantize", required_argument, 0, O_QUANTIZE},
     "RECIPE",
     "compressed-tensors quantization (implies --safetensors): int4-weight-only, "
     "int8-weight-only, int8-dynamic-act-int8-weight, int8-dynamic-act-int4-weight, "
     "float8-dynamic-act-float8-weight",
     V},
    {{"quantize-ignore", required_argument, 0, O_QUANTIZE_IGNORE},
     "REGEX",
     "modules (names without .weight) matching this extended regex stay unquantized",
     V},
    {{"max-shard-size", required_argument, 0, O_MAX_SHARD},
     "SIZE",
     "re-shard weights at SIZE bytes (K/M/G suffixes) as finalize does; default: mirror the "
     "source files",
     V},
    {{"embedding-tensors", required_argument, 0, O_EMBEDDING},
     "EMB[,HEAD]",
     "input embedding (then output head; its bias is found) to resize, overriding the search",
     V},
    {{"dry-run", no_argument, 0, O_DRY_RUN}, NULL, "report what would be done; write nothing", M},
    {{"json", no_argument, 0, O_JSON},
     NULL,
     "print as JSON (plan: the plan, verify: the problems, status: the mounts, cache stats)",
     P | VF | ST | C},
    {{"lazy", no_argument, 0, O_LAZY},
     NULL,
     "detach now even if files are open; the daemon exits after the last close",
     U},
    {{"workers", required_argument, 0, O_WORKERS},
     "N",
     "cores to compute on (default: all; a mount runs two threads per core)",
     M | MT},
    {{"foreground", no_argument, 0, O_FOREGROUND},
     NULL,
     "stay in the foreground (default: return once mounted)",
     MT},
    {{"options", required_argument, 0, O_FUSE_OPTS},
     "OPTS",
     "extra FUSE mount options, comma-separated (e.g. allow_other)",
     MT},
    {{"log-file", required_argument, 0, O_LOG_FILE},
     "FILE",
     "where the mount daemon logs (default: $XDG_STATE_HOME/fzfs/mnt-<escaped MNT>.log)",
     MT},
    {{"cache-dir", required_argument, 0, O_CACHE_DIR},
     "DIR",
     "chunk cache directory (default: $XDG_CACHE_HOME/fzfs)",
     M | MT | C},
    {{"cache-size", required_argument, 0, O_CACHE_SIZE},
     "SIZE",
     "chunk cache size, K/M/G/T suffixes (default: 16G)",
     M | MT},
    {{"no-cache", no_argument, 0, O_NO_CACHE}, NULL, "compute every chunk; use no cache", M | MT},
    {{"no-passthrough", no_argument, 0, O_NO_PASSTHROUGH},
     NULL,
     "serve every read through the daemon, never by FUSE passthrough (also "
     "FZFS_NO_PASSTHROUGH=1)",
     MT},
    {{"compute-on-read", no_argument, 0, O_COMPUTE_ON_READ},
     NULL,
     "compute a cast or quantized weight file as it is read, not whole at its first open "
     "(also FZFS_COMPUTE_ON_READ=1)",
     MT},
    {{"fill-cache", no_argument, 0, O_FILL_CACHE},
     NULL,
     "keep computed chunks in the cache (default: only reuse them)",
     M},
    {{"progress", no_argument, 0, O_PROGRESS}, NULL, "always draw a progress line", M},
    {{"no-progress", no_argument, 0, O_NO_PROGRESS}, NULL, "never draw a progress line", M},
    {{"log-level", required_argument, 0, O_LOG_LEVEL},
     "LEVEL",
     "DEBUG, INFO (default), WARNING, ERROR or CRITICAL",
     ALL},
    {{"help", no_argument, 0, O_HELP}, NULL, "show this help", ALL},
#undef V
#undef M
#undef P
#undef MT
#undef C
#undef VF
#undef ST
#undef U
#undef ALL
};
#define NOPT (sizeof table / sizeof table[0])

static const struct {
    const char *name;
    fz_cmd cmd;
    const char *usage, *summary;
} commands[] = {
    {"materialize", FZ_CMD_MATERIALIZE, "SRC DEST [options]",
     "write the finalized view of SRC into DEST (atomically)"},
    {"plan", FZ_CMD_PLAN, "SRC [options] [--json]",
     "report what the finalized view of SRC would contain, and why"},
    {"mount", FZ_CMD_MOUNT, "SRC MNT [options]",
     "show the finalized view of SRC under MNT (FUSE), computing bytes on first read"},
    {"umount", FZ_CMD_UMOUNT, "MNT [--lazy]", "unmount an fzfs mount"},
    {"status", FZ_CMD_STATUS, "[--json]",
     "list this machine's fzfs mounts: source, options, daemon, log, cache counters, stale "
     "sources"},
    {"cache", FZ_CMD_CACHE, "stats|verify|clear [--cache-dir DIR] [--json]",
     "show, check or empty the cache of computed chunks"},
    {"verify", FZ_CMD_VERIFY, "DIR [--json]",
     "check a HuggingFace model directory for problems that break loading; one line per "
     "problem, exit 1 if any"},
};
#define NCMD (sizeof commands / sizeof commands[0])

bool fz_cli_mount_option(const char *name, bool *has_arg)
{
    for (size_t i = 0; i < NOPT; i++)
        if ((table[i].cmds & (1u << FZ_CMD_MOUNT)) && !strcmp(table[i].opt.name, name) &&
            table[i].opt.val != O_HELP && table[i].opt.val != O_FUSE_OPTS) {
            *has_arg = table[i].opt.has_arg == required_argument;
            return true;
        }
    return false;
}

bool fz_cli_is_command(const char *name)
{
    for (size_t i = 0; i < NCMD; i++)
        if (!strcmp(name, commands[i].name))
            return true;
    return false;
}

static void main_help(FILE *f)
{
    fprintf(f, "usage: fzfs <command> [options]\n\n"
               "Turn a training output directory into a release-ready HuggingFace model\n"
               "directory, as `forgather finalize` does.\n\ncommands:\n");
    for (size_t i = 0; i < NCMD; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nRun `fzfs <command> --help` for its options. `fzfs --version` prints the "
               "version.\n"
               "As a mount(8) helper, `fzfs SRC MNT -o dtype=bfloat16,safetensors` is\n"
               "`fzfs mount SRC MNT --dtype bfloat16 --safetensors` (see `man fzfs`).\n");
}

static void cmd_help(FILE *f, size_t ci)
{
    fprintf(f, "usage: fzfs %s %s\n\n%s.\n\noptions:\n", commands[ci].name, commands[ci].usage,
            commands[ci].summary);
    for (size_t i = 0; i < NOPT; i++) {
        if (!(table[i].cmds & (1u << commands[ci].cmd)))
            continue;
        char lhs[96];
        int short_opt = table[i].opt.val < 256 ? table[i].opt.val : 0;
        snprintf(lhs, sizeof lhs, "%s%c%s--%s%s%s", short_opt ? "-" : "    ",
                 short_opt ? short_opt : ' ', short_opt ? ", " : "", table[i].opt.name,
                 table[i].arg ? " " : "", table[i].arg ? table[i].arg : "");
        if (short_opt == 0)
            memmove(lhs + 4, lhs + 5, strlen(lhs + 5) + 1);
        fprintf(f, "  %-44s %s\n", lhs, table[i].help);
    }
}

static int usage_error(const char *cmd, const char *fmt, const char *arg)
{
    fprintf(stderr, "fzfs%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'fzfs %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
    return FZ_EUSAGE;
}

/* getopt's tables for one command, from the option table: its long options
 * and its short-option string (so -f is only known to mount). */
static void getopt_tables(fz_cmd cmd, struct option *longopts, char *shortopts)
{
    size_t k = 0, sl = 0;
    shortopts[sl++] = ':';
    for (size_t i = 0; i < NOPT; i++) {
        if (!(table[i].cmds & (1u << cmd)))
            continue;
        longopts[k++] = table[i].opt;
        if (table[i].opt.val < 256) {
            shortopts[sl++] = (char)table[i].opt.val;
            if (table[i].opt.has_arg == required_argument)
                shortopts[sl++] = ':';
        }
    }
    memset(&longopts[k], 0, sizeof longopts[k]);
    shortopts[sl] = 0;
}

int fz_cli_join(char **list, char sep, const char *item)
{
    size_t old = *list ? strlen(*list) : 0, n = strlen(item);
    char *s = realloc(*list, old + n + 2);
    if (!s)
        return FZ_ENOMEM;
    if (old)
        s[old++] = sep;
    memcpy(s + old, item, n + 1);
    *list = s;
    return 0;
}

/* Remember a view option of `fzfs mount` as given ("--dtype bfloat16"),
 * for `fzfs status`. */
static int note_view_arg(fz_cli *c, const char *cmd, int o, const char *arg)
{
    const unsigned view_cmds = 1u << FZ_CMD_PLAN; /* every view option is a plan option */
    for (size_t i = 0; i < NOPT; i++) {
        if (table[i].opt.val != o || !(table[i].cmds & view_cmds))
            continue;
        char flag[80];
        snprintf(flag, sizeof flag, "--%s", table[i].opt.name);
        if (fz_cli_join(&c->view_args, ' ', flag) || (arg && fz_cli_join(&c->view_args, ' ', arg)))
            return usage_error(cmd, "out of memory (%s)", table[i].opt.name);
        return 0;
    }
    return 0;
}

/* Apply one option `o` (value `arg`) of command `ci` to *c. Returns 0,
 * FZ_CLI_EXIT_OK (help printed) or FZ_EUSAGE (message printed). */
static int apply_option(fz_cli *c, size_t ci, int o, char *arg)
{
    const char *cmd = commands[ci].name;
    fz_view_opts *v = &c->view;
    switch (o) {
    case O_CHECKPOINT:
        v->checkpoint = arg;
        break;
    case O_ADD_TOKENS:
        v->add_tokens = arg;
        break;
    case O_SKIP_DEFAULT:
        v->skip_default_tokens = true;
        break;
    case O_TEMPLATE:
        v->chat_template_path = arg;
        break;
    case O_NO_AUTO_STOP:
        v->no_auto_stop_tokens = true;
        break;
    case O_STOP_TOKENS:
        v->stop_tokens = arg;
        break;
    case O_GENCONFIG:
        v->generation_config = arg;
        break;
    case O_KEEP_OPT:
        v->keep_optimizer = true;
        break;
    case O_ROOT_COPY:
        v->root_copy = true;
        break;
    case O_SAFETENSORS:
        v->safetensors = true;
        break;
    case O_HUB:
        v->hub = v->safetensors = v->root_copy = true;
        break;
    case O_DTYPE:
        v->dtype = arg;
        break;
    case O_DEVICE:
        v->device = arg;
        break;
    case O_QUANTIZE:
        v->quantize = arg;
        break;
    case O_EMBEDDING:
        v->embedding_tensors = arg;
        break;
    case O_QUANTIZE_IGNORE:
        v->quantize_ignore = arg;
        break;
    case O_MAX_SHARD:
        if (fz_cli_parse_size(arg, &v->max_shard_size) != 0 || v->max_shard_size == 0)
            return usage_error(cmd, "--max-shard-size must be a size such as 2G or 500M, got '%s'",
                               arg);
        break;
    case O_DRY_RUN:
        c->dry_run = true;
        break;
    case O_JSON:
        c->json = true;
        break;
    case O_LAZY:
        c->lazy = true;
        break;
    case O_PROGRESS:
        c->progress = 1;
        break;
    case O_NO_PROGRESS:
        c->progress = 0;
        break;
    case O_FOREGROUND:
        c->foreground = true;
        break;
    case O_LOG_FILE:
        c->log_file = arg;
        break;
    case O_CACHE_DIR:
        c->cache_dir = arg;
        break;
    case O_NO_CACHE:
        c->no_cache = true;
        break;
    case O_NO_PASSTHROUGH:
        c->no_passthrough = true;
        break;
    case O_COMPUTE_ON_READ:
        c->compute_on_read = true;
        break;
    case O_FILL_CACHE:
        c->fill_cache = true;
        break;
    case O_CACHE_SIZE:
        if (fz_cli_parse_size(arg, &c->cache_size) != 0 || c->cache_size < (1u << 20))
            return usage_error(cmd,
                               "--cache-size must be a size of at least 1M (e.g. 512M, 16G), "
                               "got '%s'",
                               arg);
        break;
    case O_FUSE_OPTS:
        return fz_cli_join(&c->fuse_opts, ',', arg) ? usage_error(cmd, "out of memory (%s)", arg)
                                                    : 0;
    case O_WORKERS: {
        char *end;
        long w = strtol(arg, &end, 10);
        if (*end || w < 1 || w > 1024)
            return usage_error(cmd, "--workers must be an integer in 1..1024, got '%s'", arg);
        c->workers = (int)w;
        break;
    }
    case O_LOG_LEVEL: {
        fz_log_level lvl;
        if (fz_log_parse_level(arg, &lvl) != 0)
            return usage_error(cmd, "%s", fz_error_msg());
        fz_log_set_level(lvl);
        break;
    }
    case O_HELP:
        cmd_help(stdout, ci);
        return FZ_CLI_EXIT_OK;
    default:
        return usage_error(cmd, "%s", "internal error: unhandled option");
    }
    return 0;
}

/* The command's operands (SRC, DEST, MNT, cache action). */
static int take_operands(fz_cli *c, const char *cmd, int n, char **pos)
{
    int want = c->cmd == FZ_CMD_MATERIALIZE || c->cmd == FZ_CMD_MOUNT ? 2
               : c->cmd == FZ_CMD_STATUS                              ? 0
                                                                      : 1;
    static const char *const expects[] = {
        [FZ_CMD_MATERIALIZE] = "expects SRC and DEST (%s)",
        [FZ_CMD_PLAN] = "expects SRC (%s)",
        [FZ_CMD_MOUNT] = "expects SRC and MNT (%s)",
        [FZ_CMD_UMOUNT] = "expects MNT (%s)",
        [FZ_CMD_CACHE] = "expects one of stats, verify, clear (%s)",
        [FZ_CMD_VERIFY] = "expects DIR (%s)",
        [FZ_CMD_STATUS] = "takes no operands (%s)",
    };
    if (n != want)
        return usage_error(cmd, expects[c->cmd], n < want ? "missing" : "too many arguments");
    switch (c->cmd) {
    case FZ_CMD_MATERIALIZE:
        c->view.src = pos[0];
        c->dest = pos[1];
        break;
    case FZ_CMD_MOUNT:
        c->view.src = pos[0];
        c->mnt = pos[1];
        break;
    case FZ_CMD_UMOUNT:
        c->mnt = pos[0];
        break;
    case FZ_CMD_CACHE:
        c->cache_action = pos[0];
        break;
    case FZ_CMD_VERIFY:
        c->dir = pos[0];
        break;
    case FZ_CMD_STATUS:
        break;
    default:
        c->view.src = pos[0];
        break;
    }
    if (c->cmd == FZ_CMD_CACHE && strcmp(c->cache_action, "stats") &&
        strcmp(c->cache_action, "verify") && strcmp(c->cache_action, "clear"))
        return usage_error(cmd, "expects one of stats, verify, clear, got '%s'", c->cache_action);
    return 0;
}

int fz_cli_parse(fz_cli *c, int argc, char **argv)
{
    memset(c, 0, sizeof *c);
    c->progress = -1;
    c->view.generation_config = "carry";
    c->view.device = "cpu";
    if (argc < 2) {
        main_help(stderr);
        return FZ_EUSAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        main_help(stdout);
        return FZ_CLI_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("fzfs %s (libfuse %s)\n", FZ_VERSION, FZ_LIBFUSE_VERSION);
        return FZ_CLI_EXIT_OK;
    }
    size_t ci = NCMD;
    for (size_t i = 0; i < NCMD; i++)
        if (!strcmp(argv[1], commands[i].name))
            ci = i;
    if (ci == NCMD)
        return usage_error(NULL, "unknown command '%s'", argv[1]);
    const char *cmd = commands[ci].name;
    c->cmd = commands[ci].cmd;

    struct option longopts[NOPT + 1];
    char shortopts[2 * NOPT + 2];
    getopt_tables(c->cmd, longopts, shortopts);
    optind = 1;
    opterr = 0;
    char **av = argv + 1;
    int ac = argc - 1, o, rc;
    while ((o = getopt_long(ac, av, shortopts, longopts, NULL)) != -1) {
        if (o == ':')
            return usage_error(cmd, "option '%s' needs a value", av[optind - 1]);
        if (o == '?')
            return usage_error(cmd, "unknown option '%s'", av[optind - 1]);
        if ((rc = apply_option(c, ci, o, optarg)))
            return rc;
        if (c->cmd == FZ_CMD_MOUNT && (rc = note_view_arg(c, cmd, o, optarg)))
            return rc;
    }
    if ((rc = take_operands(c, cmd, ac - optind, av + optind)))
        return rc;
    if (c->fill_cache && c->no_cache)
        return usage_error(cmd, "%s", "--fill-cache and --no-cache exclude each other");
    /* View option values and combinations: the view's own rules (the ones
     * fz_view_build applies), reported here with the --help hint. */
    if (fz_view_opts_check(&c->view) != 0)
        return usage_error(cmd, "%s", fz_error_msg());
    return 0;
}

void fz_cli_free(fz_cli *c)
{
    free(c->fuse_opts);
    free(c->view_args);
    memset(c, 0, sizeof *c);
}

int fz_cli_parse_size(const char *s, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-')
        return FZ_EUSAGE;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    if (end == s || errno)
        return FZ_EUSAGE;
    unsigned shift = 0;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    case 't':
    case 'T':
        shift = 40;
        end++;
        break;
    default:
        break;
    }
    if (shift && *end == 'i')
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || (shift && n > (UINT64_MAX >> shift)))
        return FZ_EUSAGE;
    *out = (uint64_t)n << shift;
    return 0;
}
