/* transform/addtokens.c through fz_meta_build: finalize's add-tokens
 * semantics (reference/forgather-finalize.md §3.2) on real tokenizers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "meta_fixture.h"
#include "util/error.h"
#include "util/log.h"

static void build(fixture *f, const char *yaml, fz_meta_out *out)
{
    if (yaml)
        f->in.add_tokens_yaml = fx_text(yaml, "add.yaml");
    int rc = fz_meta_build(&f->in, out);
    if (rc)
        fprintf(stderr, "fz_meta_build: %s\n", fz_error_msg());
    assert_int_equal(rc, 0);
}

static void assert_added(const fz_meta_out *o, size_t i, const char *tok, uint64_t id)
{
    assert_true(i < o->n_added_tokens);
    assert_string_equal(o->added_tokens[i], tok);
    assert_int_equal(o->added_ids[i], id);
}

static void test_chatml(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    f.in.add_tokens_yaml = fx_file(&f, "../../../examples/add_tokens", "chatml.yaml");
    build(&f, NULL, &o);
    /* eos <|EOS|> -> new <|im_end|> (copy of row 2), <|im_start|> mean, pad kept */
    assert_int_equal(o.old_vocab, 300);
    assert_int_equal(o.n_added, 2);
    assert_int_equal(o.new_vocab, 302);
    assert_added(&o, 0, "<|im_end|>", 300);
    assert_added(&o, 1, "<|im_start|>", 301);
    assert_int_equal(o.n_inits, 1);
    assert_int_equal(o.inits[0].row, 300);
    assert_int_equal(o.inits[0].kind, FZ_INIT_COPY);
    assert_int_equal(o.inits[0].copy_from, 2);
    /* carried eos list [2, 5] first, then the new EOS */
    assert_int_equal(o.n_stop_ids, 3);
    assert_int_equal(o.stop_ids[0], 2);
    assert_int_equal(o.stop_ids[1], 5);
    assert_int_equal(o.stop_ids[2], 300);
    assert_false(o.tokenizer_json_unchanged);
    fz_meta_out_free(&o);
    fx_free(&f);
}

static void test_default_pad(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_nopad");
    build(&f, NULL, &o);
    assert_int_equal(o.n_added, 1);
    assert_added(&o, 0, "[PAD]", 300);
    assert_int_equal(o.n_inits, 1);
    assert_int_equal(o.inits[0].row, 300);
    assert_int_equal(o.inits[0].kind, FZ_INIT_ZERO);
    fz_meta_out_free(&o);
    fx_free(&f);

    /* the tokenizer has a pad: nothing new, tokenizer.json byte-identical */
    fx_load(&f, "tok_pad");
    build(&f, NULL, &o);
    assert_int_equal(o.n_added, 0);
    assert_int_equal(o.new_vocab, o.old_vocab);
    assert_int_equal(o.n_inits, 0);
    assert_true(o.tokenizer_json_unchanged);
    assert_int_equal(o.tokenizer_json.len, f.in.tokenizer.len);
    assert_memory_equal(o.tokenizer_json.data, f.in.tokenizer.data, f.in.tokenizer.len);
    fz_meta_out_free(&o);
    fx_free(&f);

    /* --skip-default-tokens */
    fx_load(&f, "tok_nopad");
    f.in.skip_default_tokens = true;
    build(&f, NULL, &o);
    assert_int_equal(o.n_added, 0);
    fz_meta_out_free(&o);
    fx_free(&f);
}

static void test_if_missing_false_reassigns(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    build(&f, "pad_token: {token: \"<|pad|>\", init: zero}\n", &o);
    /* reassigned to a new string: the YAML init is ignored, the row copies the old pad */
    assert_int_equal(o.n_added, 1);
    assert_added(&o, 0, "<|pad|>", 300);
    assert_int_equal(o.n_inits, 1);
    assert_int_equal(o.inits[0].kind, FZ_INIT_COPY);
    assert_int_equal(o.inits[0].copy_from, 1);
    fz_meta_out_free(&o);
    fx_free(&f);
}

static void test_reassign_existing(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    /* pad -> <|UNK|> (existing id 3): the init applies to row 3, but only
     * when the vocabulary grows (here by one regular token) */
    build(&f, "pad_token: {token: \"<|UNK|>\", init: zero}\nregular_tokens: [brandnewword]\n", &o);
    assert_int_equal(o.n_added, 1);
    assert_added(&o, 0, "brandnewword", 300);
    assert_int_equal(o.n_inits, 1);
    assert_int_equal(o.inits[0].row, 3);
    assert_int_equal(o.inits[0].kind, FZ_INIT_ZERO);
    fz_meta_out_free(&o);
    fx_free(&f);

    fx_load(&f, "tok_pad");
    build(&f, "pad_token: {token: \"<|UNK|>\", init: zero}\n", &o);
    assert_int_equal(o.n_added, 0);
    assert_int_equal(o.n_inits, 0); /* no resize: inits are not applied */
    assert_non_null(strstr(fx_str(&o.tokenizer_config_json), "\"pad_token\": \"<|UNK|>\""));
    fz_meta_out_free(&o);
    fx_free(&f);
}

static void test_lists_and_order(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_nopad");
    /* roles take ids in the fixed order bos, eos, pad, unk whatever the file
     * order, then special_tokens, then regular_tokens; existing strings and
     * duplicates consume no id */
    build(&f,
          "regular_tokens: [\"xyzzy\", \"<|a|>\", \"xyzzy\", \"Ġthe\"]\n"
          "special_tokens: [\"<|a|>\", \"<|b|>\", \"<|a|>\"]\n"
          "pad_token: \"<p>\"\n"
          "bos_token: {token: \"<b>\", init: \"copy:7\"}\n",
          &o);
    assert_int_equal(o.n_added, 5);
    assert_added(&o, 0, "<b>", 300);
    assert_added(&o, 1, "<p>", 301);
    assert_added(&o, 2, "<|a|>", 302);
    assert_added(&o, 3, "<|b|>", 303);
    assert_added(&o, 4, "xyzzy", 304);
    assert_int_equal(o.new_vocab, 305);
    /* bos reassigned -> copy of old bos (0), YAML copy:7 ignored; pad new -> zero */
    assert_int_equal(o.n_inits, 2);
    assert_int_equal(o.inits[0].row, 300);
    assert_int_equal(o.inits[0].kind, FZ_INIT_COPY);
    assert_int_equal(o.inits[0].copy_from, 0);
    assert_int_equal(o.inits[1].row, 301);
    assert_int_equal(o.inits[1].kind, FZ_INIT_ZERO);
    fz_meta_out_free(&o);
    fx_free(&f);

    /* a new role with an explicit copy init */
    fx_load(&f, "tok_nopad");
    build(&f, "pad_token: {token: \"<p>\", init: \"copy:7\"}\n", &o);
    assert_int_equal(o.n_inits, 1);
    assert_int_equal(o.inits[0].kind, FZ_INIT_COPY);
    assert_int_equal(o.inits[0].copy_from, 7);
    fz_meta_out_free(&o);
    fx_free(&f);
}

static void expect_error(const char *yaml, int code, const char *needle)
{
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_pad");
    f.in.add_tokens_yaml = fx_text(yaml, "my.yaml");
    assert_int_equal(fz_meta_build(&f.in, &o), code);
    if (!strstr(fz_error_msg(), needle))
        fprintf(stderr, "message: %s\n", fz_error_msg());
    assert_non_null(strstr(fz_error_msg(), needle));
    assert_null(o.config_json.data);
    fx_free(&f);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("sep_token: x\n", FZ_EINVAL, "my.yaml: sep_token: unknown key");
    expect_error("pad_token: {token: x, init: gaussian}\n", FZ_EINVAL,
                 "my.yaml: pad_token.init: bad init 'gaussian'");
    expect_error("pad_token: {token: x, init: \"copy:abc\"}\n", FZ_EINVAL, "bad init 'copy:abc'");
    expect_error("pad_token: {token: x, colour: red}\n", FZ_EINVAL,
                 "my.yaml: pad_token.colour: unknown key");
    expect_error("pad_token: {init: zero}\n", FZ_EINVAL, "my.yaml: pad_token: missing 'token'");
    expect_error("pad_token: {token: x, if_missing: maybe}\n", FZ_EINVAL,
                 "pad_token.if_missing: must be true or false");
    expect_error("special_tokens: \"<x>\"\n", FZ_EINVAL, "my.yaml: special_tokens: must be a list");
    expect_error("special_tokens: [\"<x>\", 12]\n", FZ_EINVAL,
                 "my.yaml: special_tokens[1]: must be a string");
    expect_error("eos_token: [a]\n", FZ_EINVAL,
                 "my.yaml: eos_token: must be a string or a mapping");
    expect_error("eos_token: \"a\n", FZ_EFORMAT, "my.yaml: invalid YAML at line");
    expect_error("- a\n", FZ_EINVAL, "must be a mapping");
    expect_error("regular_tokens: [zz1]\npad_token: {token: \"<|UNK|>\", init: \"copy:5000\"}\n",
                 FZ_EINVAL, "init copy:5000: not an existing token id");
}

/* Depth and size are capped before libyaml loads the document (its
 * scanner is quadratic in depth: 100k levels took a minute). */
static void test_depth_and_size_caps(void **state)
{
    (void)state;
    size_t n = 200000;
    char *deep = malloc(2 * n + 32);
    assert_non_null(deep);
    /* 65 levels of mappings: one level over the cap, named with its line */
    size_t k = (size_t)sprintf(deep, "special_tokens: ");
    for (int i = 0; i < 64; i++)
        k += (size_t)sprintf(deep + k, "{a: ");
    k += (size_t)sprintf(deep + k, "x");
    for (int i = 0; i < 64; i++)
        deep[k++] = '}';
    deep[k++] = '\n';
    deep[k] = '\0';
    expect_error(deep, FZ_EINVAL, "my.yaml: line 1: nested deeper than 64 levels");
    /* 200k levels of flow sequences: refused at the 65th, not scanned */
    memset(deep, '[', n);
    memset(deep + n, ']', n);
    deep[2 * n] = '\0';
    expect_error(deep, FZ_EINVAL, "nested deeper than 64 levels");
    /* 64 levels are still parsed (and then refused for what they say) */
    k = (size_t)sprintf(deep, "special_tokens: ");
    for (int i = 0; i < 63; i++)
        k += (size_t)sprintf(deep + k, "[");
    k += (size_t)sprintf(deep + k, "x");
    for (int i = 0; i < 63; i++)
        deep[k++] = ']';
    deep[k++] = '\n';
    deep[k] = '\0';
    expect_error(deep, FZ_EINVAL, "special_tokens[0]: must be a string");
    free(deep);
    /* over 1 MiB: refused before parsing */
    size_t big = (1u << 20) + 1;
    char *y = malloc(big + 1);
    assert_non_null(y);
    memset(y, '#', big);
    y[big] = '\0';
    expect_error(y, FZ_EINVAL, "my.yaml: 1048577 bytes; an add-tokens file is at most 1 MiB");
    free(y);
}

/* An embedding with more rows than tokens keeps them: the new token's row
 * is inside, gets its init explicitly (mean included), vocab_size stays. */
static void test_padded_rows(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_nopad");
    f.in.embed_rows = 400;
    build(&f, NULL, &o);
    assert_true(o.resize);
    assert_int_equal(o.new_vocab, 301);
    assert_int_equal(o.rows, 400);
    assert_int_equal(o.n_inits, 1);
    assert_int_equal(o.inits[0].row, 300);
    assert_int_equal(o.inits[0].kind, FZ_INIT_ZERO);
    assert_true(o.inits[0].new_token);
    json_t *cfg = fx_json(&o.config_json);
    assert_int_equal(json_integer_value(json_object_get(cfg, "vocab_size")), 400);
    json_decref(cfg);
    fz_meta_out_free(&o);
    fx_free(&f);

    fx_load(&f, "tok_nopad");
    f.in.embed_rows = 400;
    build(&f, "special_tokens: [\"<|x|>\"]\n", &o);
    assert_int_equal(o.rows, 400);
    assert_int_equal(o.n_inits, 1);
    assert_int_equal(o.inits[0].row, 300);
    assert_int_equal(o.inits[0].kind, FZ_INIT_MEAN);
    fz_meta_out_free(&o);
    fx_free(&f);

    /* no padding: rows follow the tokenizer, mean rows need no entry */
    fx_load(&f, "tok_nopad");
    f.in.embed_rows = 300;
    build(&f, "special_tokens: [\"<|x|>\"]\n", &o);
    assert_int_equal(o.rows, 301);
    assert_int_equal(o.n_inits, 0);
    fz_meta_out_free(&o);
    fx_free(&f);

    /* nothing added and the tokenizer fits: no resize */
    fx_load(&f, "tok_pad");
    f.in.embed_rows = 400;
    build(&f, NULL, &o);
    assert_false(o.resize);
    fz_meta_out_free(&o);
    fx_free(&f);
}

/* A role token the vocabulary lacks is added on load (the next id), before
 * the plan's own tokens, and makes the rows grow even with nothing else. */
static void test_role_token_missing(void **state)
{
    (void)state;
    fixture f;
    fz_meta_out o;
    fx_load(&f, "tok_nopad");
    f.in.tokenizer_config = fx_text("{\"eos_token\": \"<|eot|>\"}", "tokenizer_config.json");
    build(&f, NULL, &o);
    assert_int_equal(o.old_vocab, 300);
    assert_int_equal(o.n_role_added, 1);
    assert_int_equal(o.n_added, 2);
    assert_added(&o, 0, "<|eot|>", 300);
    assert_added(&o, 1, "[PAD]", 301);
    assert_int_equal(o.n_inits, 1); /* [PAD] zero; <|eot|> mean (grown row, no entry) */
    assert_int_equal(o.inits[0].row, 301);
    assert_false(o.tokenizer_json_unchanged);
    fz_meta_out_free(&o);
    fx_free(&f);

    fx_load(&f, "tok_nopad");
    f.in.tokenizer_config = fx_text("{\"eos_token\": \"<|eot|>\"}", "tokenizer_config.json");
    f.in.skip_default_tokens = true;
    build(&f, NULL, &o);
    assert_true(o.resize);
    assert_int_equal(o.rows, 301);
    fz_meta_out_free(&o);
    fx_free(&f);
    /* the YAML moves eos off the load-added token: the copy of its (mean) row
     * is the mean, not an error */
    fx_load(&f, "tok_nopad");
    f.in.tokenizer_config = fx_text("{\"eos_token\": \"<|eot|>\"}", "tokenizer_config.json");
    build(&f, "eos_token: \"<|im_end|>\"\n", &o);
    assert_int_equal(o.n_added, 2);
    assert_added(&o, 1, "<|im_end|>", 301);
    assert_int_equal(o.n_inits, 0);
    fz_meta_out_free(&o);
    fx_free(&f);
}

int main(void)
{
    fz_log_set_level(FZ_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_padded_rows),
        cmocka_unit_test(test_role_token_missing),
        cmocka_unit_test(test_chatml),
        cmocka_unit_test(test_default_pad),
        cmocka_unit_test(test_if_missing_false_reassigns),
        cmocka_unit_test(test_reassign_existing),
        cmocka_unit_test(test_lists_and_order),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_depth_and_size_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
