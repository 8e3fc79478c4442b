/* cli/options.c and cli/helper.c: the option table per command, operands,
 * usage errors (FZ_EUSAGE), sizes, and the mount(8) helper form. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cli/options.h"
#include "util/error.h"

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void test_materialize_options(void **state)
{
    (void)state;
    char *argv[] = {"fzfs",     "materialize",   "SRC", "DEST",         "--dtype",
                    "bfloat16", "--safetensors", "-c",  "CK",           "--max-shard-size",
                    "2M",       "--workers",     "3",   "--add-tokens", "y"};
    fz_cli c;
    assert_int_equal(fz_cli_parse(&c, ARGC(argv), argv), 0);
    assert_int_equal(c.cmd, FZ_CMD_MATERIALIZE);
    assert_string_equal(c.view.src, "SRC");
    assert_string_equal(c.dest, "DEST");
    assert_string_equal(c.view.dtype, "bfloat16");
    assert_true(c.view.safetensors);
    assert_string_equal(c.view.checkpoint, "CK");
    assert_int_equal(c.view.max_shard_size, 2u << 20);
    assert_int_equal(c.workers, 3);
    assert_string_equal(c.view.add_tokens, "y");
    assert_string_equal(c.view.generation_config, "carry");
    fz_cli_free(&c);
}

static void test_hub_sets_its_layout(void **state)
{
    (void)state;
    char *argv[] = {"fzfs", "plan", "SRC", "--hub"};
    fz_cli c;
    assert_int_equal(fz_cli_parse(&c, ARGC(argv), argv), 0);
    assert_true(c.view.hub && c.view.safetensors && c.view.root_copy);
    fz_cli_free(&c);
}

static void test_fuse_options_accumulate(void **state)
{
    (void)state;
    char *argv[] = {"fzfs", "mount", "S", "M", "-o", "allow_other", "-o", "max_read=4096"};
    fz_cli c;
    assert_int_equal(fz_cli_parse(&c, ARGC(argv), argv), 0);
    assert_string_equal(c.fuse_opts, "allow_other,max_read=4096");
    assert_string_equal(c.mnt, "M");
    fz_cli_free(&c);
}

static int parse_rc(int argc, char **argv)
{
    fz_cli c;
    int rc = fz_cli_parse(&c, argc, argv);
    fz_cli_free(&c);
    return rc;
}

static void test_usage_errors(void **state)
{
    (void)state;
    char *unknown_cmd[] = {"fzfs", "materialise", "a", "b"};
    char *missing[] = {"fzfs", "materialize", "SRC"};
    char *extra[] = {"fzfs", "plan", "SRC", "X"};
    char *bad_opt[] = {"fzfs", "plan", "SRC", "--nope"};
    char *needs_value[] = {"fzfs", "plan", "SRC", "--dtype"};
    char *not_for_plan[] = {"fzfs", "plan", "SRC", "-f"};
    char *dtype[] = {"fzfs", "plan", "SRC", "--dtype", "int8"};
    char *quant[] = {"fzfs", "plan", "SRC", "--quantize", "int3"};
    char *device[] = {"fzfs", "plan", "SRC", "--device", "cuda"};
    char *combo[] = {"fzfs", "materialize", "S", "D", "--root-copy", "--keep-optimizer"};
    char *hubopt[] = {"fzfs", "materialize", "S", "D", "--hub", "--keep-optimizer"};
    char *cache[] = {"fzfs", "cache", "wipe"};
    char *cachesz[] = {"fzfs", "mount", "S", "M", "--cache-size", "10K"};
    char *workers[] = {"fzfs", "materialize", "S", "D", "--workers", "0"};
    char *fill[] = {"fzfs", "materialize", "S", "D", "--no-cache", "--fill-cache"};
    char *ignore[] = {"fzfs", "plan", "S", "--quantize-ignore", "x"};
    assert_int_equal(parse_rc(ARGC(unknown_cmd), unknown_cmd), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(missing), missing), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(extra), extra), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(bad_opt), bad_opt), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(needs_value), needs_value), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(not_for_plan), not_for_plan), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(dtype), dtype), FZ_EUSAGE);
    assert_non_null(strstr(fz_error_msg(), "--quantize int8-weight-only"));
    assert_int_equal(parse_rc(ARGC(quant), quant), FZ_EUSAGE);
    assert_non_null(strstr(fz_error_msg(), "int4-weight-only"));
    assert_int_equal(parse_rc(ARGC(device), device), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(combo), combo), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(hubopt), hubopt), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(cache), cache), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(cachesz), cachesz), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(workers), workers), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(fill), fill), FZ_EUSAGE);
    assert_int_equal(parse_rc(ARGC(ignore), ignore), FZ_EUSAGE);
}

static void test_help_and_version(void **state)
{
    (void)state;
    char *help[] = {"fzfs", "mount", "--help"};
    char *version[] = {"fzfs", "--version"};
    assert_int_equal(parse_rc(ARGC(help), help), FZ_CLI_EXIT_OK);
    assert_int_equal(parse_rc(ARGC(version), version), FZ_CLI_EXIT_OK);
}

static void test_sizes(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(fz_cli_parse_size("512M", &v), 0);
    assert_int_equal(v, 512ull << 20);
    assert_int_equal(fz_cli_parse_size("16G", &v), 0);
    assert_int_equal(v, 16ull << 30);
    assert_int_equal(fz_cli_parse_size("1KiB", &v), 0);
    assert_int_equal(v, 1024);
    assert_int_equal(fz_cli_parse_size("1048576", &v), 0);
    assert_int_equal(v, 1048576);
    assert_int_equal(fz_cli_parse_size("2tb", &v), 0);
    assert_int_equal(v, 2ull << 40);
    const char *bad[] = {"", "-1", "1.5G", "G", "12Q", "99999999999T", "18446744073709551616"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(fz_cli_parse_size(bad[i], &v), FZ_EUSAGE);
}

/* Run the helper conversion and join the result with spaces. */
static int helper(char **argv, int argc, char *out, size_t n)
{
    int hc;
    char **hv;
    int rc = fz_cli_helper_argv(argc, argv, &hc, &hv);
    out[0] = 0;
    if (rc == 1) {
        for (int i = 0; i < hc; i++) {
            strncat(out, hv[i], n - strlen(out) - 1);
            if (i + 1 < hc)
                strncat(out, " ", n - strlen(out) - 1);
        }
        assert_null(hv[hc]);
        fz_cli_helper_free(hc, hv);
    }
    return rc;
}

static void test_mount_helper_form(void **state)
{
    (void)state;
    char out[1024];
    char *a[] = {"fzfs", "/data/run", "/mnt/x", "-o",
                 "rw,dtype=bfloat16,safetensors,cache_dir=/c,_netdev,x-systemd.automount,"
                 "allow_other,noauto,dev,suid,nofail"};
    assert_int_equal(helper(a, ARGC(a), out, sizeof out), 1);
    assert_string_equal(out, "fzfs mount /data/run /mnt/x --dtype bfloat16 --safetensors "
                             "--cache-dir /c -o allow_other");
    char *b[] = {"fzfs", "/data/run", "/mnt/x", "-oro", "-o", "add-tokens=/y.yaml,checkpoint=/c"};
    assert_int_equal(helper(b, ARGC(b), out, sizeof out), 1);
    assert_string_equal(out, "fzfs mount /data/run /mnt/x --add-tokens /y.yaml --checkpoint /c");
    char *c[] = {"fzfs", "./run", "/mnt/x"};
    assert_int_equal(helper(c, ARGC(c), out, sizeof out), 1);
    assert_string_equal(out, "fzfs mount ./run /mnt/x");

    /* not the helper form: commands, options, words that are no path */
    char *d[] = {"fzfs", "mount", "S", "M"};
    char *e[] = {"fzfs", "--help", "x"};
    char *f[] = {"fzfs", "materialise", "a", "b"};
    char *g[] = {"fzfs", "/x"};
    assert_int_equal(helper(d, ARGC(d), out, sizeof out), 0);
    assert_int_equal(helper(e, ARGC(e), out, sizeof out), 0);
    assert_int_equal(helper(f, ARGC(f), out, sizeof out), 0);
    assert_int_equal(helper(g, ARGC(g), out, sizeof out), 0);

    /* errors */
    char *h[] = {"fzfs", "/s", "/m", "-o", "dtype"};
    char *i[] = {"fzfs", "/s", "/m", "-o", "safetensors=1"};
    char *j[] = {"fzfs", "/s", "/m", "-o"};
    assert_int_equal(helper(h, ARGC(h), out, sizeof out), FZ_EUSAGE);
    assert_int_equal(helper(i, ARGC(i), out, sizeof out), FZ_EUSAGE);
    assert_int_equal(helper(j, ARGC(j), out, sizeof out), FZ_EUSAGE);
}

static void test_converted_helper_parses(void **state)
{
    (void)state;
    char *a[] = {"fzfs", "/data/run", "/mnt/x", "-o", "dtype=float16,no_cache,workers=2"};
    int hc;
    char **hv;
    assert_int_equal(fz_cli_helper_argv(ARGC(a), a, &hc, &hv), 1);
    fz_cli c;
    assert_int_equal(fz_cli_parse(&c, hc, hv), 0);
    assert_int_equal(c.cmd, FZ_CMD_MOUNT);
    assert_string_equal(c.view.dtype, "float16");
    assert_true(c.no_cache);
    assert_int_equal(c.workers, 2);
    fz_cli_free(&c);
    fz_cli_helper_free(hc, hv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_materialize_options),
        cmocka_unit_test(test_hub_sets_its_layout),
        cmocka_unit_test(test_fuse_options_accumulate),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_mount_helper_form),
        cmocka_unit_test(test_converted_helper_parses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
