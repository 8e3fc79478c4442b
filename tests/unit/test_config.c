/* transform/config.c: config.json patching (FORMATS.md §5). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "meta_fixture.h"
#include "util/error.h"
#include "util/log.h"

static void test_patch_grow(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_nopad");
    f.in.dtype = "bfloat16";
    f.in.tie_word_embeddings = 0;
    json_t *q = json_pack("{ss}", "quant_method", "compressed-tensors");
    f.in.quantization_config = q;
    assert_int_equal(fz_meta_build(&f.in, &o), 0); /* default [PAD] added */
    const char *s = fx_str(&o.config_json);
    /* untouched fields keep their JSON types; sorted keys, indent 2, ASCII, newline */
    assert_non_null(strstr(s, "\"factor\": 8.0,"));
    assert_non_null(strstr(s, "\"rms_norm_eps\": 1e-05,"));
    assert_non_null(strstr(s, "\"rope_theta\": 10000.0,"));
    assert_non_null(strstr(s, "\"name\": \"caf\\u00e9 \\ud83d\\ude00\""));
    assert_non_null(strstr(s, "\"vocab_size\": 301\n}\n"));
    assert_non_null(strstr(s, "\"pad_token_id\": 300,"));
    assert_non_null(strstr(s, "\"eos_token_id\": 1,"));
    assert_non_null(strstr(s, "\"tie_word_embeddings\": false,"));
    assert_non_null(strstr(s, "\"dtype\": \"bfloat16\","));
    assert_non_null(strstr(s, "\"torch_dtype\": \"bfloat16\","));
    assert_non_null(strstr(
        s, "\"quantization_config\": {\n    \"quant_method\": \"compressed-tensors\"\n  },"));
    assert_true(strstr(s, "\"architectures\"") < strstr(s, "\"bos_token_id\""));
    json_decref(q);
    fz_meta_out_free(&o);
    fx_free(&f);
}

static void test_eos_kept(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    f.in.add_tokens_yaml =
        fx_text("eos_token: \"<|im_end|>\"\nbos_token: \"<|im_start|>\"\n", "a.yaml");
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    json_t *c = fx_json(&o.config_json);
    assert_int_equal(json_integer_value(json_object_get(c, "eos_token_id")),
                     2); /* DESIGN: unchanged */
    assert_int_equal(json_integer_value(json_object_get(c, "bos_token_id")), 300);
    assert_int_equal(json_integer_value(json_object_get(c, "vocab_size")), 302);
    assert_true(json_is_true(json_object_get(c, "tie_word_embeddings")));
    assert_null(json_object_get(c, "dtype"));
    json_decref(c);
    fz_meta_out_free(&o);
    fx_free(&f);
}

static void test_nothing_added(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    /* pointer moves but nothing is new: no sync, vocab_size unchanged */
    f.in.add_tokens_yaml = fx_text("bos_token: \"<|UNK|>\"\n", "a.yaml");
    f.in.config = fx_text(
        "{\"vocab_size\": 300, \"bos_token_id\": 0, \"x\": 8.0, \"tie_word_embeddings\": true}",
        "config.json");
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    assert_string_equal(fx_str(&o.config_json),
                        "{\n  \"bos_token_id\": 0,\n  \"tie_word_embeddings\": true,\n"
                        "  \"vocab_size\": 300,\n  \"x\": 8.0\n}\n");
    fz_meta_out_free(&o);
    f.in.config = fx_text("[1]", "SRC/config.json");
    assert_int_equal(fz_meta_build(&f.in, &o), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "SRC/config.json"));
    f.in.config = (fz_blob){NULL, 0, "SRC/config.json"};
    assert_int_equal(fz_meta_build(&f.in, &o), FZ_ENOTFOUND);
    fx_free(&f);
}

int main(void)
{
    fz_log_set_level(FZ_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_patch_grow),
        cmocka_unit_test(test_eos_kept),
        cmocka_unit_test(test_nothing_added),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
