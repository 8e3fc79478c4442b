/* transform/genconfig.c: carry / none / preset, stop-token merge, and the
 * configs transformers would refuse to save. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "meta_fixture.h"
#include "util/error.h"
#include "util/log.h"

static const char *gen(fixture *f, fz_meta_out *o)
{
    int rc = fz_meta_build(&f->in, o);
    if (rc)
        fprintf(stderr, "%s\n", fz_error_msg());
    assert_int_equal(rc, 0);
    return fx_str(&o->generation_config_json);
}

static void test_carry(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    f.in.add_tokens_yaml = fx_file(&f, "../../../examples/add_tokens", "chatml.yaml");
    /* carried: key order kept, eos list merged (original first), no newline */
    assert_string_equal(
        gen(&f, &o),
        "{\n  \"bos_token_id\": 0,\n  \"eos_token_id\": [\n    2,\n    5,\n    300\n  ],\n"
        "  \"pad_token_id\": 1,\n  \"temperature\": 0.7,\n  \"do_sample\": true,\n"
        "  \"transformers_version\": \"4.57.1\"\n}");
    fz_meta_out_free(&o);
    /* --no-auto-stop-tokens + --stop-tokens */
    f.in.no_auto_stop_tokens = true;
    f.in.stop_tokens = " <|im_start|> ,, <|PAD|>";
    gen(&f, &o);
    assert_int_equal(o.n_stop_ids, 4);
    assert_int_equal(o.stop_ids[2], 301);
    assert_int_equal(o.stop_ids[3], 1);
    fz_meta_out_free(&o);
    f.in.stop_tokens = "<|nope|>";
    assert_int_equal(fz_meta_build(&f.in, &o), FZ_EINVAL);
    assert_non_null(strstr(fz_error_msg(), "'<|nope|>'"));
    fx_free(&f);
}

static void test_minimal_and_none(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_nopad");
    assert_string_equal(
        gen(&f, &o),
        "{\n  \"bos_token_id\": 0,\n  \"pad_token_id\": 300,\n  \"eos_token_id\": 1\n}");
    assert_true(o.has_generation_config);
    fz_meta_out_free(&o);
    f.in.add_tokens_yaml = fx_text("eos_token: \"<|eot|>\"\n", "a.yaml");
    assert_string_equal(
        gen(&f, &o), "{\n  \"bos_token_id\": 0,\n  \"eos_token_id\": [\n    1,\n    300\n  ]\n}");
    fz_meta_out_free(&o);
    f.in.gen_mode = FZ_GEN_NONE;
    gen(&f, &o);
    assert_false(o.has_generation_config);
    assert_int_equal(o.n_stop_ids, 2);
    fz_meta_out_free(&o);
    fx_free(&f);
}

static void test_presets(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    f.in.gen_mode = FZ_GEN_PRESET;
    f.in.add_tokens_yaml = fx_file(&f, "../../../examples/add_tokens", "chatml.yaml");
    f.in.preset = fx_file(&f, "../../../examples/generation_config", "precise.json");
    assert_string_equal(
        gen(&f, &o),
        "{\n  \"temperature\": 0.3,\n  \"top_p\": 0.8,\n  \"repetition_penalty\": 1.05,\n"
        "  \"do_sample\": true,\n  \"bos_token_id\": 0,\n  \"pad_token_id\": 1,\n"
        "  \"eos_token_id\": [\n    2,\n    300\n  ]\n}");
    fz_meta_out_free(&o);
    f.in.preset = fx_text(
        "{\"seed\": 1, \"max_tokens\": 256.7, \"num_beams\": 4, \"max_new_tokens\": 9}", "p.json");
    assert_string_equal(
        gen(&f, &o),
        "{\n  \"max_new_tokens\": 9,\n  \"num_beams\": 4,\n  \"do_sample\": false,\n"
        "  \"bos_token_id\": 0,\n  \"pad_token_id\": 1,\n  \"eos_token_id\": [\n    2,\n"
        "    300\n  ]\n}");
    fz_meta_out_free(&o);
    const char *names[] = {"greedy.json", "balanced.json", "creative.json", "beam_search.json"};
    for (int i = 0; i < 4; i++) {
        f.in.preset = fx_file(&f, "../../../examples/generation_config", names[i]);
        gen(&f, &o);
        fz_meta_out_free(&o);
    }
    fx_free(&f);
}

static void refused(const char *preset, const char *needle)
{
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    f.in.gen_mode = FZ_GEN_PRESET;
    f.in.preset = fx_text(preset, "p.json");
    assert_int_equal(fz_meta_build(&f.in, &o), FZ_EINVAL);
    if (!strstr(fz_error_msg(), needle))
        fprintf(stderr, "message: %s\n", fz_error_msg());
    assert_non_null(strstr(fz_error_msg(), needle));
    assert_non_null(strstr(fz_error_msg(), "p.json"));
    fx_free(&f);
}

static void test_refusals(void **state)
{
    (void)state;
    refused("{\"temperature\": 0.5, \"do_sample\": false}", "`temperature` is 0.5");
    refused("{\"top_k\": 4, \"do_sample\": false}", "`top_k` is 4");
    refused("{\"min_p\": 0.1, \"do_sample\": false}", "`min_p`");
    /* the bundled contrastive preset (finalize's) is refused by transformers 5.x too */
    refused("{\"penalty_alpha\": 0.6, \"top_k\": 4, \"do_sample\": false}", "`top_k` is 4");
    refused("{\"max_tokens\": 0}", "`max_new_tokens` must be greater than 0");
    refused("{\"early_stopping\": \"sometimes\", \"num_beams\": 2}",
            "`early_stopping` must be a boolean");
    refused("{\"early_stopping\": true}", "`num_beams` is 1 but `early_stopping`");
    refused("{\"length_penalty\": 0.5, \"num_beams\": 1}", "`length_penalty`");
    /* the carried file is checked too */
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    f.in.generation_config = fx_text("{\"top_p\": 0.5}", "SRC/generation_config.json");
    assert_int_equal(fz_meta_build(&f.in, &o), FZ_EINVAL);
    assert_non_null(strstr(fz_error_msg(), "SRC/generation_config.json"));
    fx_free(&f);
}

int main(void)
{
    fz_log_set_level(FZ_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_carry),
        cmocka_unit_test(test_minimal_and_none),
        cmocka_unit_test(test_presets),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
