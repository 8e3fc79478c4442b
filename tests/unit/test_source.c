/* Source discovery (FORMATS.md §1): which checkpoint is chosen, and why.
 * Only directory entries and manifests are read here, so the weight files
 * in these temp trees are empty placeholders named as the rule requires. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/helpers.h"
#include "util/error.h"
#include "view/source.h"

static char root[64];

static void put(const char *rel, const char *content)
{
    fz_test_put(root, rel, content);
}

static void dir(const char *rel)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    assert_int_equal(mkdir(p, 0755), 0);
}

static void set_mtime(const char *rel, time_t t)
{
    char p[512];
    struct timeval tv[2] = {{t, 0}, {t, 0}};
    snprintf(p, sizeof p, "%s/%s", root, rel);
    assert_int_equal(utimes(p, tv), 0);
}

static int setup(void **state)
{
    (void)state;
    snprintf(root, sizeof root, "/tmp/fz_test_source_XXXXXX");
    assert_non_null(mkdtemp(root));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd);
}

static const char *base(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void test_manifest_timestamp_wins_over_step(void **state)
{
    (void)state;
    fz_source s;
    dir("checkpoints");
    dir("checkpoints/checkpoint-100");
    dir("checkpoints/checkpoint-200");
    dir("checkpoints/checkpoint-50");
    put("checkpoints/checkpoint-100/model.safetensors", "");
    put("checkpoints/checkpoint-200/pytorch_model.bin", "");
    put("checkpoints/checkpoint-100/checkpoint_manifest.json",
        "{\"timestamp\": \"2026-03-01T10:00:00.5\", \"pytorch_version\": \"2.9.1\"}");
    put("checkpoints/checkpoint-200/checkpoint_manifest.json",
        "{\"timestamp\": \"2026-03-01T09:00:00\"}");
    /* checkpoint-50 has no weights: never chosen */
    put("checkpoints/checkpoint-50/optimizer_state.pt", "");
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_string_equal(base(s.ckpt), "checkpoint-100");
    assert_int_equal(s.step, 100);
    assert_string_equal(s.timestamp, "2026-03-01T10:00:00.5");
    assert_string_equal(s.pytorch_version, "2.9.1");
    assert_int_equal(s.kind, FZ_W_ST);
    assert_int_equal(s.nfiles, 1);
    assert_string_equal(s.files[0], "model.safetensors");
    assert_non_null(strstr(s.why, "2 valid"));
    fz_source_free(&s);
}

static void test_mtime_fallback_and_step_tiebreak(void **state)
{
    (void)state;
    fz_source s;
    dir("checkpoints");
    dir("checkpoints/checkpoint-7");
    dir("checkpoints/checkpoint-9");
    put("checkpoints/checkpoint-7/pytorch_model.bin", "");
    put("checkpoints/checkpoint-9/pytorch_model.bin", "");
    set_mtime("checkpoints/checkpoint-7", 1700000000);
    set_mtime("checkpoints/checkpoint-9", 1700000000);
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_string_equal(base(s.ckpt), "checkpoint-9");
    fz_source_free(&s);
    set_mtime("checkpoints/checkpoint-7", 1700000100);
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_string_equal(base(s.ckpt), "checkpoint-7");
    assert_null(s.timestamp);
    fz_source_free(&s);
}

static void test_index_precedence_and_shards(void **state)
{
    (void)state;
    fz_source s;
    dir("checkpoints");
    dir("checkpoints/checkpoint-3");
    put("checkpoints/checkpoint-3/pytorch_model.bin", "");
    put("checkpoints/checkpoint-3/pytorch_model.bin.index.json",
        "{\"metadata\": {}, \"weight_map\": {\"b\": \"pytorch_model-00002-of-00002.bin\", "
        "\"a\": \"pytorch_model-00001-of-00002.bin\", \"c\": "
        "\"pytorch_model-00002-of-00002.bin\"}}");
    put("checkpoints/checkpoint-3/pytorch_model-00001-of-00002.bin", "");
    put("checkpoints/checkpoint-3/pytorch_model-00002-of-00002.bin", "");
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_int_equal(s.kind, FZ_W_BIN_INDEX);
    assert_int_equal(s.nfiles, 2);
    assert_string_equal(s.files[0], "pytorch_model-00001-of-00002.bin");
    assert_string_equal(s.files[1], "pytorch_model-00002-of-00002.bin");
    fz_source_free(&s);
}

static void test_index_rejects_bad_names(void **state)
{
    (void)state;
    fz_source s;
    put("model.safetensors.index.json",
        "{\"metadata\": {}, \"weight_map\": {\"a\": \"../../etc/passwd\"}}");
    assert_int_equal(fz_source_find(&s, root, NULL), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "model.safetensors.index.json"));
    put("model.safetensors.index.json",
        "{\"metadata\": {}, \"weight_map\": {\"a\": \"missing.safetensors\"}}");
    assert_int_equal(fz_source_find(&s, root, NULL), FZ_ENOTFOUND);
    assert_non_null(strstr(fz_error_msg(), "missing.safetensors"));
    put("model.safetensors.index.json", "{\"weight_map\": ");
    assert_int_equal(fz_source_find(&s, root, NULL), FZ_EFORMAT);
}

static void test_flat_dir_and_fallbacks(void **state)
{
    (void)state;
    fz_source s;
    /* No checkpoints/, no weights: error naming the root. */
    assert_int_equal(fz_source_find(&s, root, NULL), FZ_ENOTFOUND);
    assert_non_null(strstr(fz_error_msg(), root));
    /* Flat HF dir. */
    put("model.safetensors", "");
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_true(s.ckpt_is_root);
    assert_int_equal(s.step, -1);
    fz_source_free(&s);
    /* checkpoints/ with nothing valid falls back to the root that has weights. */
    dir("checkpoints");
    dir("checkpoints/checkpoint-1");
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_true(s.ckpt_is_root);
    fz_source_free(&s);
    /* -c must be a directory with weights. */
    char p[512];
    snprintf(p, sizeof p, "%s/checkpoints/checkpoint-1", root);
    assert_int_equal(fz_source_find(&s, root, p), FZ_ENOTFOUND);
    assert_non_null(strstr(fz_error_msg(), "no weights"));
    snprintf(p, sizeof p, "%s/nope", root);
    assert_int_equal(fz_source_find(&s, root, p), FZ_ENOTFOUND);
    assert_non_null(strstr(fz_error_msg(), "Checkpoint path does not exist"));
    put("checkpoints/checkpoint-1/model.safetensors", "");
    snprintf(p, sizeof p, "%s/checkpoints/checkpoint-1", root);
    assert_int_equal(fz_source_find(&s, root, p), 0);
    assert_int_equal(s.step, 1);
    fz_source_free(&s);
    snprintf(p, sizeof p, "%s/missing", root);
    assert_int_equal(fz_source_find(&s, p, NULL), FZ_ENOTFOUND);
    assert_non_null(strstr(fz_error_msg(), "Source directory does not exist"));
}

static void test_trainer_output_dir(void **state)
{
    (void)state;
    fz_source s;
    dir("checkpoint-10");
    dir("checkpoint-20");
    dir("checkpoint-9");
    dir("checkpoint-30");
    put("checkpoint-10/model.safetensors", "");
    put("checkpoint-20/model.safetensors", "");
    put("checkpoint-9/model.safetensors", "");
    put("checkpoint-20/config.json", "{}");
    put("checkpoint-20/tokenizer.json", "{}");
    put("checkpoint-20/optimizer.pt", "");
    /* checkpoint-30: no weights (an interrupted save) */
    put("checkpoint-30/trainer_state.json", "{\"global_step\": 30}");
    /* global_step wins over N and over mtime: checkpoint-9 was resumed past 20 */
    put("checkpoint-9/trainer_state.json", "{\"global_step\": 25, \"log_history\": []}");
    put("checkpoint-10/trainer_state.json", "{\"global_step\": 10}");
    put("checkpoint-20/trainer_state.json", "{\"global_step\": 20}");
    set_mtime("checkpoint-10", 1900000000);
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_int_equal(s.layout, FZ_LAYOUT_TRAINER);
    assert_string_equal(base(s.ckpt), "checkpoint-9");
    assert_int_equal(s.step, 9);
    assert_non_null(strstr(s.why, "global_step (25)"));
    assert_int_equal(s.nskipped, 3);
    assert_string_equal(s.skipped[0].name, "checkpoint-10");
    assert_string_equal(s.skipped[2].name, "checkpoint-30");
    assert_non_null(strstr(s.skipped[2].why, "no weights"));
    /* no config or tokenizer in the root nor in checkpoint-9: the root (error later) */
    assert_string_equal(s.config_dir, root);
    assert_null(s.optimizer);
    fz_source_free(&s);
    /* Without trainer_state.json: N decides. */
    char p[512];
    snprintf(p, sizeof p, "%s/checkpoint-9/trainer_state.json", root);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_string_equal(base(s.ckpt), "checkpoint-20");
    assert_int_equal(s.step, 20);
    assert_string_equal(s.config_dir, s.ckpt);
    assert_string_equal(s.tokenizer_dir, s.ckpt);
    assert_non_null(s.optimizer);
    assert_string_equal(base(s.optimizer), "optimizer.pt");
    fz_source_free(&s);
    /* The root's config wins when present; the tokenizer still from the checkpoint. */
    put("config.json", "{}");
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_string_equal(s.config_dir, root);
    assert_string_equal(s.tokenizer_dir, s.ckpt);
    fz_source_free(&s);
    /* A trainer_state.json that is not understood: refused, naming it. */
    put("checkpoint-20/trainer_state.json", "{\"global_step\": \"20\"}");
    assert_int_equal(fz_source_find(&s, root, NULL), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "checkpoint-20/trainer_state.json"));
    put("checkpoint-20/trainer_state.json", "{\"global_step\": ");
    assert_int_equal(fz_source_find(&s, root, NULL), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "checkpoint-20/trainer_state.json"));
    assert_non_null(strstr(fz_error_msg(), "-c"));
    /* A final model saved at the root wins; every checkpoint is skipped. */
    put("model.safetensors", "");
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_int_equal(s.layout, FZ_LAYOUT_TRAINER_FINAL);
    assert_true(s.ckpt_is_root);
    assert_int_equal(s.step, -1);
    assert_int_equal(s.nskipped, 4);
    fz_source_free(&s);
}

static void test_checkpoint_dir_as_src(void **state)
{
    (void)state;
    fz_source s;
    char p[512];
    dir("checkpoint-42");
    put("checkpoint-42/model.safetensors", "");
    snprintf(p, sizeof p, "%s/checkpoint-42", root);
    assert_int_equal(fz_source_find(&s, p, NULL), 0);
    assert_int_equal(s.layout, FZ_LAYOUT_CHECKPOINT);
    assert_int_equal(s.step, 42);
    assert_true(s.ckpt_is_root);
    assert_null(s.timestamp);
    fz_source_free(&s);
    /* Its manifest is carried, as with -c. */
    put("checkpoint-42/checkpoint_manifest.json",
        "{\"timestamp\": \"2026-03-01T10:00:00\", \"pytorch_version\": \"2.9.1\"}");
    assert_int_equal(fz_source_find(&s, p, NULL), 0);
    assert_string_equal(s.timestamp, "2026-03-01T10:00:00");
    assert_string_equal(s.pytorch_version, "2.9.1");
    fz_source_free(&s);
    /* Trainer output_dir whose checkpoints hold no weights, and no root weights. */
    dir("out");
    dir("out/checkpoint-1");
    snprintf(p, sizeof p, "%s/out", root);
    assert_int_equal(fz_source_find(&s, p, NULL), FZ_ENOTFOUND);
    assert_non_null(strstr(fz_error_msg(), "checkpoint-"));
}

static void test_manifest_timestamp_with_offset(void **state)
{
    (void)state;
    fz_source s;
    dir("checkpoints");
    dir("checkpoints/checkpoint-1");
    dir("checkpoints/checkpoint-2");
    put("checkpoints/checkpoint-1/model.safetensors", "");
    put("checkpoints/checkpoint-2/model.safetensors", "");
    /* 10:00+00:00 is later than 11:00+02:00 (09:00 UTC) */
    put("checkpoints/checkpoint-1/checkpoint_manifest.json",
        "{\"timestamp\": \"2026-03-01T10:00:00+00:00\"}");
    put("checkpoints/checkpoint-2/checkpoint_manifest.json",
        "{\"timestamp\": \"2026-03-01T11:00:00.5+02:00\"}");
    assert_int_equal(fz_source_find(&s, root, NULL), 0);
    assert_int_equal(s.layout, FZ_LAYOUT_FORGATHER);
    assert_string_equal(base(s.ckpt), "checkpoint-1");
    assert_int_equal(s.nskipped, 1);
    assert_non_null(strstr(s.skipped[0].why, "11:00:00.5+02:00"));
    fz_source_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_manifest_timestamp_wins_over_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mtime_fallback_and_step_tiebreak, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_precedence_and_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_index_rejects_bad_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flat_dir_and_fallbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trainer_output_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_dir_as_src, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_timestamp_with_offset, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
