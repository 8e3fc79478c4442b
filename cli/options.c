#include "cli/options.h"

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
    O_DRY_RUN,
    O_LOG_LEVEL,
    O_JSON,
    O_WORKERS,
    O_PROGRESS,
    O_NO_PROGRESS,
    O_VERSION,
};

/* The option table: every subcommand's options, with the help text. */
static const struct {
    struct option opt;
    const char *arg, *help;
    unsigned cmds; /* bit per fz_cmd */
} table[] = {
#define V ((1u << FZ_CMD_MATERIALIZE) | (1u << FZ_CMD_PLAN))
#define M (1u << FZ_CMD_MATERIALIZE)
#define P (1u << FZ_CMD_PLAN)
    {{"checkpoint", required_argument, 0, O_CHECKPOINT}, "PATH",
     "source checkpoint directory (default: the latest under SRC/checkpoints/)", V},
    {{"add-tokens", required_argument, 0, O_ADD_TOKENS}, "YAML", "tokens to add (add-tokens YAML)",
     V},
    {{"skip-default-tokens", no_argument, 0, O_SKIP_DEFAULT}, NULL,
     "don't add a [PAD] token when the tokenizer has none", V},
    {{"chat-template-path", required_argument, 0, O_TEMPLATE}, "FILE",
     "Jinja2 chat template for the tokenizer", V},
    {{"no-auto-stop-tokens", no_argument, 0, O_NO_AUTO_STOP}, NULL,
     "don't add end-of-turn tokens to generation_config's eos_token_id", V},
    {{"stop-tokens", required_argument, 0, O_STOP_TOKENS}, "\"T1,T2\"",
     "extra stop-token strings for generation_config", V},
    {{"generation-config", required_argument, 0, O_GENCONFIG}, "carry|none|PATH|NAME",
     "generation_config.json: carry the source's (default), none, or a preset", V},
    {{"keep-optimizer", no_argument, 0, O_KEEP_OPT}, NULL,
     "carry optimizer_state.pt into the checkpoint", V},
    {{"root-copy", no_argument, 0, O_ROOT_COPY}, NULL,
     "weights at the root, no checkpoints/ (excludes --keep-optimizer)", V},
    {{"safetensors", no_argument, 0, O_SAFETENSORS}, NULL,
     "write safetensors (default: PyTorch .bin)", V},
    {{"dtype", required_argument, 0, O_DTYPE}, "bfloat16|float16|float32",
     "cast floating-point weights (bit-exact with torch)", V},
    {{"device", required_argument, 0, O_DEVICE}, "cpu", "accepted for compatibility; only cpu", V},
    {{"quantize", required_argument, 0, O_QUANTIZE}, "RECIPE", "quantize (not yet supported)", V},
    {{"embedding-tensors", required_argument, 0, O_EMBEDDING}, "NAME[,NAME]",
     "input embedding (then output head) to resize, overriding the guess", V},
    {{"dry-run", no_argument, 0, O_DRY_RUN}, NULL, "report what would be done; write nothing", M},
    {{"json", no_argument, 0, O_JSON}, NULL, "print the plan as JSON", P},
    {{"workers", required_argument, 0, O_WORKERS}, "N", "worker threads (default: one per core)",
     M},
    {{"progress", no_argument, 0, O_PROGRESS}, NULL, "always draw a progress line", M},
    {{"no-progress", no_argument, 0, O_NO_PROGRESS}, NULL, "never draw a progress line", M},
    {{"log-level", required_argument, 0, O_LOG_LEVEL}, "LEVEL",
     "DEBUG, INFO (default), WARNING, ERROR or CRITICAL", V},
    {{"help", no_argument, 0, O_HELP}, NULL, "show this help", V},
#undef V
#undef M
#undef P
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
};
#define NCMD (sizeof commands / sizeof commands[0])

static void main_help(FILE *f)
{
    fprintf(f, "usage: fzfs <command> [options]\n\n"
               "Turn a training output directory into a release-ready HuggingFace model\n"
               "directory, as `forgather finalize` does.\n\ncommands:\n");
    for (size_t i = 0; i < NCMD; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nRun `fzfs <command> --help` for its options. `fzfs --version` prints the "
               "version.\n");
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
        printf("fzfs %s\n", FZ_VERSION);
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
    size_t k = 0;
    for (size_t i = 0; i < NOPT; i++)
        if (table[i].cmds & (1u << c->cmd))
            longopts[k++] = table[i].opt;
    memset(&longopts[k], 0, sizeof longopts[k]);

    optind = 1;
    opterr = 0;
    int o;
    char **av = argv + 1;
    int ac = argc - 1;
    while ((o = getopt_long(ac, av, ":c:t:h", longopts, NULL)) != -1) {
        switch (o) {
        case O_CHECKPOINT: c->view.checkpoint = optarg; break;
        case O_ADD_TOKENS: c->view.add_tokens = optarg; break;
        case O_SKIP_DEFAULT: c->view.skip_default_tokens = true; break;
        case O_TEMPLATE: c->view.chat_template_path = optarg; break;
        case O_NO_AUTO_STOP: c->view.no_auto_stop_tokens = true; break;
        case O_STOP_TOKENS: c->view.stop_tokens = optarg; break;
        case O_GENCONFIG: c->view.generation_config = optarg; break;
        case O_KEEP_OPT: c->view.keep_optimizer = true; break;
        case O_ROOT_COPY: c->view.root_copy = true; break;
        case O_SAFETENSORS: c->view.safetensors = true; break;
        case O_DTYPE: c->view.dtype = optarg; break;
        case O_DEVICE: c->view.device = optarg; break;
        case O_QUANTIZE: c->view.quantize = optarg; break;
        case O_EMBEDDING: c->view.embedding_tensors = optarg; break;
        case O_DRY_RUN: c->dry_run = true; break;
        case O_JSON: c->json = true; break;
        case O_PROGRESS: c->progress = 1; break;
        case O_NO_PROGRESS: c->progress = 0; break;
        case O_WORKERS: {
            char *end;
            long w = strtol(optarg, &end, 10);
            if (*end || w < 1 || w > 1024)
                return usage_error(cmd, "--workers must be an integer in 1..1024, got '%s'", optarg);
            c->workers = (int)w;
            break;
        }
        case O_LOG_LEVEL: {
            fz_log_level lvl;
            if (fz_log_parse_level(optarg, &lvl) != 0)
                return usage_error(cmd, "%s", fz_error_msg());
            fz_log_set_level(lvl);
            break;
        }
        case O_HELP: cmd_help(stdout, ci); return FZ_CLI_EXIT_OK;
        case ':': return usage_error(cmd, "option '%s' needs a value", av[optind - 1]);
        default: return usage_error(cmd, "unknown option '%s'", av[optind - 1]);
        }
    }
    int npos = ac - optind;
    int want = c->cmd == FZ_CMD_MATERIALIZE ? 2 : 1;
    if (npos != want)
        return usage_error(cmd, want == 2 ? "expects SRC and DEST (%s)" : "expects SRC (%s)",
                           npos < want ? "missing" : "too many arguments");
    c->view.src = av[optind];
    if (want == 2)
        c->dest = av[optind + 1];
    if (c->view.dtype && strcmp(c->view.dtype, "bfloat16") && strcmp(c->view.dtype, "float16") &&
        strcmp(c->view.dtype, "float32"))
        return usage_error(cmd, "--dtype must be one of bfloat16, float16, float32, got '%s'",
                           c->view.dtype);
    if (c->view.device && strcmp(c->view.device, "cpu"))
        return usage_error(cmd, "--device %s: fzfs computes on the CPU only (use cpu)",
                           c->view.device);
    return 0;
}

void fz_cli_free(fz_cli *c)
{
    memset(c, 0, sizeof *c);
}
