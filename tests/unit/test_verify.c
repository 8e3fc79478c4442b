/* verify/: the checks on small model directories made here from the
 * committed torch/safetensors unit data (st_basic.safetensors: 'model.
 * embed_tokens.weight' and 'lm_head.weight' bf16 [4,3] among other
 * tensors; basic.bin: 'emb' and 'head' f32 [4,3] sharing one storage) and
 * JSON files written by the test; and the same checks over a built view
 * (examples/tiny-run), including the gate that refuses a broken one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fz_config.h"
#include "tests/unit/helpers.h"
#include "util/error.h"
#include "verify/verify.h"
#include "view/view.h"

#define DATA FZ_TEST_DATA

static const char *TOKENIZER =
    "{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 3, \"content\": \"<eos>\", "
    "\"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
    "\"special\": true}], \"model\": {\"type\": \"WordLevel\", \"vocab\": {\"<unk>\": 0, "
    "\"a\": 1, \"b\": 2}, \"unk_token\": \"<unk>\"}}";
static const char *TOKENIZER_CONFIG =
    "{\"eos_token\": \"<eos>\", \"unk_token\": \"<unk>\", \"added_tokens_decoder\": "
    "{\"3\": {\"content\": \"<eos>\", \"special\": true}}}";

static void sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    assert_int_equal(system(cmd), 0);
}

static void config(const char *dir, int vocab, const char *tie, const char *extra)
{
    char text[1024];
    snprintf(text, sizeof text,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": %d, \"hidden_size\": 3, "
             "\"tie_word_embeddings\": %s, \"bos_token_id\": 0, \"eos_token_id\": 3%s}",
             vocab, tie, extra);
    fz_test_put(dir, "config.json", text);
}

/* A clean directory: model.safetensors (untied) or pytorch_model.bin (tied). */
static char *good_dir(bool bin)
{
    char *d = fz_test_tmpdir("fz_test_verify");
    if (bin)
        sh("cp '%s/basic.bin' '%s/pytorch_model.bin'", DATA, d);
    else
        sh("cp '%s/st_basic.safetensors' '%s/model.safetensors'", DATA, d);
    config(d, 4, bin ? "true" : "false", "");
    fz_test_put(d, "tokenizer.json", TOKENIZER);
    fz_test_put(d, "tokenizer_config.json", TOKENIZER_CONFIG);
    fz_test_put(d, "generation_config.json", "{\"bos_token_id\": 0, \"eos_token_id\": [3]}");
    return d;
}

static void run(const char *dir, fz_vreport *r)
{
    fz_vfs fs;
    memset(r, 0, sizeof *r);
    assert_int_equal(fz_vfs_open_dir(&fs, dir), 0);
    assert_int_equal(fz_verify(&fs, NULL, r), 0);
    fz_vfs_close(&fs);
}

/* The report has a problem about `file` whose text contains `needle`. */
static bool has(const fz_vreport *r, const char *file, const char *needle)
{
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->v[i].file, file) && strstr(r->v[i].text, needle))
            return true;
    return false;
}

static void expect(const char *dir, const char *file, const char *needle)
{
    fz_vreport r;
    run(dir, &r);
    if (!has(&r, file, needle)) {
        fz_vreport_print(&r, stdout);
        fail_msg("no problem '%s' about '%s' in %zu problems", needle, file, r.n);
    }
    fz_vreport_free(&r);
}

static void expect_clean(const char *dir)
{
    fz_vreport r;
    run(dir, &r);
    fz_vreport_print(&r, stdout);
    assert_int_equal(r.n, 0);
    fz_vreport_free(&r);
}

static void done(char *d)
{
    fz_test_rmtree(d);
    free(d);
}

static void test_clean(void **state)
{
    (void)state;
    char *st = good_dir(false), *bin = good_dir(true);
    expect_clean(st);
    expect_clean(bin);
    done(st);
    done(bin);
}

static void test_vocab_rows(void **state)
{
    (void)state;
    char *d = good_dir(false);
    config(d, 5, "false", "");
    expect(d, "model.safetensors",
           "'model.embed_tokens.weight' has 4 rows but config.json "
           "vocab_size is 5");
    expect(d, "model.safetensors", "'lm_head.weight' has 4 rows");
    done(d);
    /* names no list knows: found by their [vocab_size, hidden] shape */
    d = good_dir(true);
    config(d, 4, "true", ", \"pad_token_id\": 4");
    expect(d, "config.json", "pad_token_id 4 is outside the embedding (4 rows)");
    done(d);
}

static void test_tokenizer(void **state)
{
    (void)state;
    char *d = good_dir(false);
    fz_test_put(
        d, "tokenizer.json",
        "{\"added_tokens\": [{\"id\": 3, \"content\": \"<eos>\"}, {\"id\": 4, \"content\": "
        "\"<new>\"}], \"model\": {\"type\": \"WordLevel\", \"vocab\": {\"<unk>\": 0, \"a\": 1, "
        "\"b\": 2}}}");
    expect(d, "tokenizer.json",
           "the tokenizer has 5 tokens but config.json vocab_size gives the "
           "embedding 4 rows: token '<new>' (id 4)");
    done(d);
    d = good_dir(false);
    fz_test_put(d, "tokenizer_config.json",
                "{\"eos_token\": {\"content\": \"<end>\"}, \"pad_token\": null, "
                "\"added_tokens_decoder\": {\"3\": {\"content\": \"b\"}}}");
    expect(d, "tokenizer_config.json", "eos_token '<end>' is not in the tokenizer's vocabulary");
    expect(d, "tokenizer_config.json",
           "added_tokens_decoder gives 'b' id 3 but tokenizer.json "
           "has another id");
    done(d);
    d = good_dir(false);
    fz_test_put(d, "generation_config.json", "{\"eos_token_id\": [3, 7], \"pad_token_id\": -1}");
    expect(d, "generation_config.json", "eos_token_id[1] 7 is outside the embedding (4 rows)");
    expect(d, "generation_config.json", "pad_token_id -1 is negative");
    done(d);
    d = good_dir(false);
    fz_test_put(d, "tokenizer.json", "{\"added_tokens\": [], \"model\": {\"vocab\": {\"a\": 0}}");
    expect(d, "tokenizer.json", "invalid JSON");
    done(d);
}

static void test_tie(void **state)
{
    (void)state;
    char *d = good_dir(false);
    config(d, 4, "true", "");
    expect(d, "model.safetensors",
           "tie_word_embeddings: true but 'lm_head.weight' is stored apart");
    done(d);
    d = good_dir(true);
    config(d, 4, "false", "");
    expect(d, "config.json",
           "tie_word_embeddings is false but 'emb' and 'head' are stored as "
           "one tensor");
    done(d);
}

static void index_json(const char *d, const char *file, const char *total, const char *more)
{
    static const char *const names[] = {"model.embed_tokens.weight",
                                        "lm_head.weight",
                                        "a.f32",
                                        "a.f64",
                                        "a.f16",
                                        "a.i64",
                                        "a.i32",
                                        "a.i16",
                                        "a.i8",
                                        "a.u8",
                                        "a.bool",
                                        "a.f8",
                                        "a.f8e5",
                                        "scalar",
                                        "empty",
                                        "layers.9.w",
                                        "layers.10.w",
                                        "B",
                                        "_x",
                                        NULL};
    char text[4096];
    int k = snprintf(text, sizeof text, "{\"metadata\": {\"total_size\": %s}, \"weight_map\": {",
                     total);
    for (int i = 0; names[i]; i++)
        k += snprintf(text + k, sizeof text - (size_t)k, "%s\"%s\": \"%s\"", i ? ", " : "",
                      names[i], file);
    snprintf(text + k, sizeof text - (size_t)k, "%s}}", more);
    fz_test_put(d, "model.safetensors.index.json", text);
}

static void test_index(void **state)
{
    (void)state;
    /* data bytes of st_basic: 2*24 bf16 + 20 + 16 + 4 + 24 + 8 + 6 + 3 + 3 + 4 + 2 + 2 + 4 + 0
     * + 4*4 = 160 */
    char *d = good_dir(false);
    sh("mv '%s/model.safetensors' '%s/model-00001-of-00001.safetensors'", d, d);
    index_json(d, "model-00001-of-00001.safetensors", "160", "");
    expect_clean(d);
    index_json(d, "model-00001-of-00001.safetensors", "161", "");
    expect(d, "model.safetensors.index.json",
           "metadata.total_size is 161 but the tensors it maps "
           "hold 160 bytes");
    index_json(d, "model-00001-of-00001.safetensors", "160",
               ", \"extra.weight\": \"model-00001-of-00001.safetensors\"");
    expect(d, "model.safetensors.index.json",
           "puts 'extra.weight' in model-00001-of-00001.safetensors, which has no such");
    index_json(d, "model-00001-of-00001.safetensors", "160",
               ", \"more.weight\": \"model-00002-of-00002.safetensors\"");
    expect(d, "model.safetensors.index.json",
           "names 'model-00002-of-00002.safetensors' (for 'more.weight' and maybe more), which "
           "does not exist");
    index_json(d, "model-00001-of-00001.safetensors", "160", "");
    sh("cp '%s/st_nometa.safetensors' '%s/model-00002-of-00002.safetensors'", DATA, d);
    expect(d, "model-00002-of-00002.safetensors",
           "a shard that model.safetensors.index.json does "
           "not reference");
    sh("rm '%s/model.safetensors.index.json'", d);
    expect(d, "model-00001-of-00001.safetensors",
           "a shard but there is no "
           "model.safetensors.index.json");
    done(d);
}

/* Ten shards (more than the first allocation of the file table): every
 * problem still names the right file. Each shard is st_nometa.safetensors
 * (one tensor 'w'); the index maps 'w' to the first and 'xK' to shard K. */
static void test_many_shards(void **state)
{
    (void)state;
    char *d = good_dir(false);
    char text[4096];
    int k = snprintf(text, sizeof text,
                     "{\"metadata\": {}, \"weight_map\": {\"w\": "
                     "\"model-00001-of-00010.safetensors\"");
    sh("rm '%s/model.safetensors'", d);
    for (int i = 1; i <= 10; i++) {
        sh("cp '%s/st_nometa.safetensors' '%s/model-%05d-of-00010.safetensors'", DATA, d, i);
        if (i > 1)
            k += snprintf(text + k, sizeof text - (size_t)k,
                          ", \"x%d\": \"model-%05d-of-00010.safetensors\"", i, i);
    }
    snprintf(text + k, sizeof text - (size_t)k, "}}");
    fz_test_put(d, "model.safetensors.index.json", text);
    expect(d, "model.safetensors.index.json", "puts 'x2' in model-00002-of-00010.safetensors");
    expect(d, "model-00006-of-00010.safetensors", "tensor 'w' is not mapped to this file");
    expect(d, "model-00010-of-00010.safetensors",
           "tensor 'w' is also stored in "
           "model-00001-of-00010.safetensors");
    expect(d, "model.safetensors.index.json", "... and 4 more tensors missing");
    done(d);
}

static void test_headers(void **state)
{
    (void)state;
    char *d = good_dir(false);
    sh("truncate -s 1000 '%s/model.safetensors'", d);
    expect(d, "model.safetensors", "past the end");
    done(d);
    d = good_dir(true);
    /* deliberately corrupt: the end-of-central-directory record overwritten */
    sh("printf 'XXXXXXXXXXXXXXXXXXXXXX' | dd of='%s/pytorch_model.bin' bs=1 seek=$(( $(stat -c %%s "
       "'%s/pytorch_model.bin') - 22 )) conv=notrunc status=none",
       d, d);
    expect(d, "pytorch_model.bin", "zip");
    done(d);
    d = good_dir(false);
    sh("rm '%s/model.safetensors'", d);
    expect(d, "", "no model weights");
    done(d);
}

/* examples/tiny-run's checkpoint-200 (torch .bin shards and Forgather's
 * index) with the run's config and tokenizer: a real model directory. Its
 * tied embedding and head are two copies in two shards, and the trainer's
 * index has no param_sharing: declared untied, it is consistent. */
static char *tiny_model_dir(void)
{
    char *d = fz_test_tmpdir("fz_test_verify_tiny");
    sh("cd '%s/tiny-run' && cp config.json tokenizer.json tokenizer_config.json "
       "checkpoints/checkpoint-200/pytorch_model* '%s/'",
       FZ_SOURCE_EXAMPLES_DIR, d);
    sh("sed -i 's/\"tie_word_embeddings\": true/\"tie_word_embeddings\": false/' "
       "'%s/config.json'",
       d);
    return d;
}

/* Tied copies in two shards: a problem unless the index's param_sharing
 * says they are one tensor (as fzfs's .bin index does). */
static void test_tie_param_sharing(void **state)
{
    (void)state;
    char *d = tiny_model_dir();
    expect_clean(d);
    sh("sed -i 's/\"tie_word_embeddings\": false/\"tie_word_embeddings\": true/' "
       "'%s/config.json'",
       d);
    expect(d, "pytorch_model-00002-of-00002.bin",
           "tie_word_embeddings: true but "
           "'lm_head.weight' is stored apart from the embedding 'model.embed_tokens.weight'");
    sh("sed -i 's/\"metadata\": {/\"metadata\": {\"param_sharing\": "
       "[[\"lm_head.weight\", \"model.embed_tokens.weight\"]], /' "
       "'%s/pytorch_model.bin.index.json'",
       d);
    expect_clean(d);
    done(d);
}

static void test_quantization(void **state)
{
    (void)state;
    char *d = tiny_model_dir();
    expect_clean(d);
    sh("sed -i 's/\"vocab_size\"/\"quantization_config\": {\"quant_method\": "
       "\"compressed-tensors\", \"format\": \"pack-quantized\", \"quantization_status\": "
       "\"compressed\", \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"]}}, "
       "\"ignore\": [\"lm_head\"]}, \"vocab_size\"/' '%s/config.json'",
       d);
    expect(d, "config.json",
           "no stored tensor is quantized (no *.weight_scale or *.weight_packed; "
           "'model.layers.0.self_attn.q_proj.weight' and 13 more");
    done(d);
    /* every Linear in the ignore list (by name and by regex): consistent */
    d = tiny_model_dir();
    sh("sed -i 's/\"vocab_size\"/\"quantization_config\": {\"quant_method\": "
       "\"compressed-tensors\", \"format\": \"pack-quantized\", \"quantization_status\": "
       "\"compressed\", \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"]}}, "
       "\"ignore\": [\"lm_head\", \"re:.*[.]mlp[.].*\", \"re:.*self_attn.*\"]}, "
       "\"vocab_size\"/' '%s/config.json'",
       d);
    expect_clean(d);
    done(d);
}

static void test_symlinks(void **state)
{
    (void)state;
    char *d = good_dir(false);
    sh("mkdir '%s/sub' && mv '%s/model.safetensors' '%s/sub/' && ln -s sub/model.safetensors "
       "'%s/model.safetensors'",
       d, d, d, d);
    sh("ln -s ../sub/x.json '%s/sub/dangling.json' && ln -s ../../etc/hostname '%s/sub/out' && "
       "ln -s /etc/hostname '%s/abs' && ln -s loop '%s/loop'",
       d, d, d, d);
    expect(d, "sub/dangling.json", "dangling symlink: its target '../sub/x.json' does not exist");
    expect(d, "sub/out", "points outside the directory");
    expect(d, "abs", "points outside the directory");
    expect(d, "loop", "symlink loop");
    fz_vreport r;
    run(d, &r);
    assert_int_equal(r.n, 4); /* the model through the good link is checked and clean */
    fz_vreport_free(&r);
    done(d);
}

static void test_json_output(void **state)
{
    (void)state;
    char *d = good_dir(false);
    fz_test_put(d, "generation_config.json", "{\"eos_token_id\": 9}");
    fz_vreport r;
    fz_buf b = FZ_BUF_INIT;
    run(d, &r);
    assert_int_equal(fz_vreport_json(&r, "D", &b), 0);
    assert_non_null(strstr((char *)b.data, "\"ok\": false"));
    assert_non_null(strstr((char *)b.data, "\"file\": \"generation_config.json\""));
    fz_buf_free(&b);
    fz_vreport_free(&r);
    done(d);
}

/* ---- over a view ---- */

static fz_view *view_of(const char *src, bool safetensors)
{
    fz_view *v = NULL;
    fz_view_opts o = {
        .src = src, .generation_config = "carry", .device = "cpu", .safetensors = safetensors};
    if (fz_view_build(&v, &o) != 0)
        fail_msg("view of %s: %s", src, fz_error_msg());
    return v;
}

static void test_view(void **state)
{
    (void)state;
    char src[512];
    snprintf(src, sizeof src, "%s/tiny-run", FZ_SOURCE_EXAMPLES_DIR);
    for (int st = 0; st < 2; st++) {
        fz_view *v = view_of(src, st);
        fz_vfs fs;
        fz_vreport r = {0};
        fz_verify_opts o = {0};
        fz_view_role_names(v, &o.embedding, &o.head, &o.head_bias);
        assert_non_null(o.embedding);
        assert_int_equal(fz_vfs_open_view(&fs, v), 0);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        assert_int_equal(fz_verify(&fs, &o, &r), 0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        fz_vreport_print(&r, stdout);
        assert_int_equal(r.n, 0);
        printf("verify over the view (%s): %.2f ms\n", st ? "safetensors" : ".bin",
               (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
        assert_int_equal(fz_verify_gate_view(v, "MNT"), 0);
        fz_vreport_free(&r);
        fz_vfs_close(&fs);
        fz_view_free(v);
    }
}

/* A source whose config.json names a token id outside its vocabulary: the
 * view carries the field, and the gate refuses what it would publish. */
static void test_view_gate(void **state)
{
    (void)state;
    char *d = fz_test_tmpdir("fz_test_verify_src");
    sh("cp -a '%s/tiny-run/.' '%s/'", FZ_SOURCE_EXAMPLES_DIR, d);
    sh("sed -i 's/\"eos_token_id\"/\"sep_token_id\": 100000, \"eos_token_id\"/' '%s/config.json'",
       d);
    fz_view *v = view_of(d, false);
    assert_int_equal(fz_verify_gate_view(v, "MNT"), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "MNT: the finalized model fails verification (1 "
                                           "problem above); nothing was mounted"));
    fz_view_free(v);
    done(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean),        cmocka_unit_test(test_vocab_rows),
        cmocka_unit_test(test_tokenizer),    cmocka_unit_test(test_tie),
        cmocka_unit_test(test_index),        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_quantization), cmocka_unit_test(test_symlinks),
        cmocka_unit_test(test_json_output),  cmocka_unit_test(test_view),
        cmocka_unit_test(test_view_gate),    cmocka_unit_test(test_tie_param_sharing),
        cmocka_unit_test(test_many_shards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
