/* transform/tokenizer.c: the tokenizer files fz_meta_build writes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "meta_fixture.h"
#include "util/error.h"
#include "util/log.h"

static void test_chatml_files(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    f.in.add_tokens_yaml = fx_text("eos_token: \"<|im_end|>\"\nspecial_tokens: [\"<|im_start|>\"]\n"
                                   "regular_tokens: [\"caf\xc3\xa9word\"]\n",
                                   "a.yaml");
    f.in.chat_template = fx_text("{{ messages }}", "t.jinja");
    assert_int_equal(fz_meta_build(&f.in, &o), 0);

    /* tokenizer.json: tokenizers style (raw UTF-8, no trailing newline), all 7 fields */
    const char *tj = fx_str(&o.tokenizer_json);
    assert_non_null(strstr(
        tj, "    {\n      \"id\": 300,\n      \"content\": \"<|im_end|>\",\n      \"single_word\": "
            "false,\n"
            "      \"lstrip\": false,\n      \"rstrip\": false,\n      \"normalized\": false,\n"
            "      \"special\": true\n    },"));
    assert_non_null(strstr(
        tj, "\"id\": 302,\n      \"content\": \"caf\xc3\xa9word\",\n      \"single_word\": false,\n"
            "      \"lstrip\": false,\n      \"rstrip\": false,\n      \"normalized\": true,\n"
            "      \"special\": false"));
    assert_int_not_equal(tj[strlen(tj) - 1], '\n');
    /* everything else as in the source: the source minus its added_tokens tail is a prefix-free
     * match */
    assert_memory_equal(o.tokenizer_json.data, f.in.tokenizer.data, 20);

    json_t *tc = fx_json(&o.tokenizer_config_json);
    assert_string_equal(json_string_value(json_object_get(tc, "eos_token")), "<|im_end|>");
    assert_string_equal(json_string_value(json_object_get(tc, "pad_token")), "<|PAD|>");
    json_t *ast = json_object_get(tc, "additional_special_tokens");
    assert_int_equal(json_array_size(ast), 1);
    assert_string_equal(json_string_value(json_array_get(ast, 0)), "<|im_start|>");
    json_t *dec = json_object_get(tc, "added_tokens_decoder");
    assert_int_equal(json_object_size(dec), 7);
    assert_true(json_is_true(json_object_get(json_object_get(dec, "302"), "normalized")));
    assert_string_equal(json_string_value(json_object_get(tc, "chat_template")), "{{ messages }}");
    json_decref(tc);
    const char *tcs = fx_str(&o.tokenizer_config_json);
    assert_int_equal(tcs[strlen(tcs) - 1], '\n');
    assert_non_null(strstr(tcs, "caf\xc3\xa9word")); /* ensure_ascii=False */

    json_t *stm = fx_json(&o.special_tokens_map_json);
    assert_string_equal(json_string_value(json_object_get(stm, "eos_token")), "<|im_end|>");
    assert_string_equal(json_string_value(json_object_get(stm, "bos_token")), "<|BOS|>");
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(stm, "additional_special_tokens"), 0)),
        "<|im_start|>");
    json_decref(stm);

    assert_true(o.has_chat_template);
    assert_string_equal(fx_str(&o.chat_template_jinja), "{{ messages }}");
    fz_meta_out_free(&o);
    fx_free(&f);
}

static void test_template_precedence(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    /* SRC/chat_template.jinja wins over the inline key; -t wins over both */
    const char *tc = "{\"chat_template\": \"inline\", \"eos_token\": \"<|EOS|>\"}";
    fx_load(&f, "tok_pad");
    f.in.tokenizer_config = fx_text(tc, "tokenizer_config.json");
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    assert_string_equal(fx_str(&o.chat_template_jinja), "inline");
    fz_meta_out_free(&o);
    f.in.chat_template_file = fx_text("file", "chat_template.jinja");
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    assert_string_equal(fx_str(&o.chat_template_jinja), "file");
    assert_non_null(strstr(fx_str(&o.tokenizer_config_json), "\"chat_template\": \"file\""));
    fz_meta_out_free(&o);
    f.in.chat_template = fx_text("option", "t.jinja");
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    assert_string_equal(fx_str(&o.chat_template_jinja), "option");
    fz_meta_out_free(&o);
    /* list form: the "default" entry */
    f.in.chat_template = (fz_blob){0};
    f.in.chat_template_file = (fz_blob){0};
    f.in.tokenizer_config =
        fx_text("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, "
                "{\"name\": \"default\", \"template\": \"D\"}]}",
                "tokenizer_config.json");
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    assert_string_equal(fx_str(&o.chat_template_jinja), "D");
    fz_meta_out_free(&o);
    /* none */
    fx_free(&f);
    fx_load(&f, "tok_pad");
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    assert_false(o.has_chat_template);
    assert_null(strstr(fx_str(&o.tokenizer_config_json), "chat_template"));
    fz_meta_out_free(&o);
    /* invalid UTF-8 template */
    f.in.chat_template = (fz_blob){"\xff\xfe", 2, "bad.jinja"};
    assert_int_equal(fz_meta_build(&f.in, &o), FZ_EINVAL);
    assert_non_null(strstr(fz_error_msg(), "bad.jinja"));
    fx_free(&f);
}

/* added_tokens whose ids disagree with the ones the library gives on load
 * (list order), and a repeated content: written as tokenizers 0.23 writes
 * them after add_tokens(["z"]): x 2, y 3, z 4, once each (x with the flags
 * of its last entry), sorted by id.
 * Keeping the file's ids (x 5, y 3) sorted y, z, x made z load as 3, not the
 * row 4 the plan initialised (found by tests/fuzz/fuzz_tokenizer). */
static void test_added_ids_as_loaded(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_nopad");
    f.in.tokenizer =
        fx_text("{\"added_tokens\": [{\"id\": 5, \"content\": \"x\", \"special\": true}, "
                "{\"id\": 3, \"content\": \"y\", \"special\": true}, "
                "{\"id\": 9, \"content\": \"x\", \"special\": false}], "
                "\"model\": {\"type\": \"WordLevel\", \"vocab\": {\"a\": 0, \"b\": 1}}}",
                "tokenizer.json");
    f.in.tokenizer_config = (fz_blob){0};
    f.in.add_tokens_yaml = fx_text("regular_tokens: [z]\n", "a.yaml");
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    assert_int_equal(o.n_added, 1);
    assert_int_equal(o.added_ids[0], 4);
    json_t *tj = fx_json(&o.tokenizer_json), *list = json_object_get(tj, "added_tokens");
    assert_int_equal(json_array_size(list), 3);
    const char *want[] = {"x", "y", "z"};
    for (size_t i = 0; i < 3; i++) {
        json_t *e = json_array_get(list, i);
        assert_string_equal(json_string_value(json_object_get(e, "content")), want[i]);
        assert_int_equal(json_integer_value(json_object_get(e, "id")), 2 + i);
    }
    assert_true(
        json_is_false(json_object_get(json_array_get(list, 0), "special"))); /* the last x */
    assert_true(json_is_true(json_object_get(json_array_get(list, 1), "special")));
    json_decref(tj);
    fz_meta_out_free(&o);
    /* ids are u32 in the tokenizers library */
    f.in.tokenizer = fx_text("{\"model\": {\"vocab\": {\"a\": 9223372036854775807}}, "
                             "\"added_tokens\": [{\"content\": \"a\"}]}",
                             "SRC/tokenizer.json");
    assert_int_equal(fz_meta_build(&f.in, &o), FZ_EFORMAT);
    assert_non_null(
        strstr(fz_error_msg(), "SRC/tokenizer.json: model.vocab[\"a\"] is not a token id"));
    fx_free(&f);
}

static void test_unigram_and_missing(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_nopad");
    /* a Unigram tokenizer with no added tokens and no tokenizer_config */
    f.in.tokenizer = fx_text(
        "{\"version\": \"1.0\", \"added_tokens\": [], \"model\": {\"type\": \"Unigram\", "
        "\"unk_id\": 0, \"vocab\": [[\"<unk>\", 0.0], [\"a\", -1e-07], [\"b\", -0.00001]]}}",
        "tokenizer.json");
    f.in.tokenizer_config = (fz_blob){0};
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    assert_int_equal(o.old_vocab, 3);
    assert_int_equal(o.n_added, 1);
    assert_int_equal(o.added_ids[0], 3);
    const char *tj = fx_str(&o.tokenizer_json);
    assert_non_null(strstr(tj, "-1e-7"));
    assert_non_null(strstr(tj, "-0.00001"));
    json_t *tc = fx_json(&o.tokenizer_config_json);
    assert_string_equal(json_string_value(json_object_get(tc, "pad_token")), "[PAD]");
    assert_string_equal(json_string_value(json_object_get(tc, "tokenizer_class")),
                        "PreTrainedTokenizerFast");
    json_decref(tc);
    fz_meta_out_free(&o);
    f.in.tokenizer = (fz_blob){0};
    f.in.tokenizer.path = "SRC/tokenizer.json";
    assert_int_equal(fz_meta_build(&f.in, &o), FZ_ENOTFOUND);
    assert_non_null(strstr(fz_error_msg(), "SRC/tokenizer.json"));
    f.in.tokenizer = fx_text("{\"model\": ", "SRC/tokenizer.json");
    assert_int_equal(fz_meta_build(&f.in, &o), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "SRC/tokenizer.json: invalid JSON at line 1"));
    fx_free(&f);
}

/* Special tokens named by tokenizer_config.json but in no vocabulary are
 * registered on load as transformers' fast tokenizer does: bos, eos, unk,
 * sep, pad, cls, mask, then the additional ones, each new string taking the
 * next id (the ids below are what AutoTokenizer gives for these files). */
static void test_special_missing_added_on_load(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_nopad");
    f.in.tokenizer = fx_text("{\"added_tokens\": [], \"model\": {\"type\": \"WordLevel\", "
                             "\"unk_token\": \"<u>\", \"vocab\": {\"a\": 0, \"b\": 1}}}",
                             "tokenizer.json");
    f.in.tokenizer_config = fx_text("{\"bos_token\": \"a\", \"eos_token\": \"<e>\", \"unk_token\": "
                                    "\"<u>\", \"mask_token\": \"<m>\", \"pad_token\": \"<p>\", "
                                    "\"additional_special_tokens\": [\"<x>\", \"a\"]}",
                                    "tokenizer_config.json");
    f.in.skip_default_tokens = true;
    assert_int_equal(fz_meta_build(&f.in, &o), 0);
    assert_int_equal(o.old_vocab, 2);
    assert_int_equal(o.n_role_added, 5);
    assert_int_equal(o.new_vocab, 7);
    assert_true(o.resize);
    const char *want[] = {"<e>", "<u>", "<p>", "<m>", "<x>"};
    json_t *tj = fx_json(&o.tokenizer_json), *list = json_object_get(tj, "added_tokens");
    json_t *tc = fx_json(&o.tokenizer_config_json);
    json_t *dec = json_object_get(tc, "added_tokens_decoder");
    assert_int_equal(json_array_size(list), 5);
    for (size_t i = 0; i < 5; i++) {
        char key[8];
        assert_string_equal(o.added_tokens[i], want[i]);
        assert_int_equal(o.added_ids[i], 2 + i);
        json_t *e = json_array_get(list, i);
        assert_string_equal(json_string_value(json_object_get(e, "content")), want[i]);
        assert_int_equal(json_integer_value(json_object_get(e, "id")), 2 + i);
        assert_true(json_is_true(json_object_get(e, "special")));
        assert_true(json_is_false(json_object_get(e, "normalized")));
        snprintf(key, sizeof key, "%zu", 2 + i);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(dec, key), "content")), want[i]);
    }
    assert_string_equal(json_string_value(json_object_get(tc, "eos_token")), "<e>");
    json_decref(tj);
    json_decref(tc);
    fz_meta_out_free(&o);
    fx_free(&f);
}

int main(void)
{
    fz_log_set_level(FZ_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chatml_files),
        cmocka_unit_test(test_template_precedence),
        cmocka_unit_test(test_unigram_and_missing),
        cmocka_unit_test(test_added_ids_as_loaded),
        cmocka_unit_test(test_special_missing_added_on_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
