/* Fuzz target: the tokenizer edits (transform/tokenizer.c, with
 * addtokens.c, config.c and genconfig.c behind fz_meta_build) on fuzzed
 * tokenizer files.
 *
 * The input is up to nine NUL-separated parts: tokenizer.json,
 * tokenizer_config.json, special_tokens_map.json, an add-tokens YAML,
 * config.json, generation_config.json, an inference preset, a --stop-tokens
 * list and the embedding's row count in decimal (absent: unknown). An empty or missing part is an
 * absent file (without a YAML the default PAD plan applies; with a preset its translation replaces
 * the carried generation config), except config.json and
 * generation_config.json, which default to the real ones of
 * tests/unit/data/tok_pad.
 * Promises checked: a successful build passes fz_fuzz_check_meta
 * (fuzz_meta.h); a failure sets an error. */
#include "fuzz_meta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fz_meta_in base;
    static bool loaded;
    fz_fuzz_quiet();
    if (!loaded) {
        fz_fuzz_load_fixture(&base, "tok_pad");
        loaded = true;
    }
    char *text = fz_fuzz_strdup(data, size);
    fz_blob part[9] = {{NULL, 0, "tokenizer.json"},
                       {NULL, 0, "tokenizer_config.json"},
                       {NULL, 0, "special_tokens_map.json"},
                       {NULL, 0, "tokens.yaml"},
                       {NULL, 0, "config.json"},
                       {NULL, 0, "generation_config.json"},
                       {NULL, 0, "preset.json"},
                       {NULL, 0, "--stop-tokens"},
                       {NULL, 0, "embedding rows"}};
    size_t start = 0;
    for (int k = 0; k < 9 && start <= size; k++) {
        const char *nul = memchr(text + start, '\0', size - start);
        size_t end = nul ? (size_t)(nul - text) : size;
        if (end > start) {
            part[k].data = text + start;
            part[k].len = end - start;
        }
        start = end + 1;
    }
    fz_meta_in in = base;
    fz_meta_out out;
    in.tokenizer = part[0];
    in.tokenizer_config = part[1];
    in.special_tokens_map = part[2];
    in.add_tokens_yaml = part[3];
    if (part[4].data)
        in.config = part[4];
    if (part[5].data)
        in.generation_config = part[5];
    if (part[6].data) {
        in.gen_mode = FZ_GEN_PRESET;
        in.preset = part[6];
    }
    in.stop_tokens = part[7].data; /* NUL-terminated: the end of the input or a separator */
    in.embed_rows = part[8].data ? strtoull(part[8].data, NULL, 10) : 0;
    fz_error_clear();
    int rc = fz_meta_build(&in, &out);
    if (rc) {
        fz_fuzz_check_error(rc);
    } else {
        fz_fuzz_check_meta(&in, &out);
        fz_meta_out_free(&out);
    }
    free(text);
    return 0;
}
