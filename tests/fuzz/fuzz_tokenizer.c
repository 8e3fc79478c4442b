/* Fuzz target: the tokenizer edits (transform/tokenizer.c, with
 * addtokens.c, config.c and genconfig.c behind fz_meta_build) on fuzzed
 * tokenizer files.
 *
 * The input is up to four NUL-separated parts: tokenizer.json,
 * tokenizer_config.json, special_tokens_map.json and an add-tokens YAML (an
 * empty or missing part is an absent file; without a YAML the default PAD
 * plan applies). config.json is the real one of tests/unit/data/tok_pad.
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
    fz_blob part[4] = {{NULL, 0, "tokenizer.json"}, {NULL, 0, "tokenizer_config.json"},
                       {NULL, 0, "special_tokens_map.json"}, {NULL, 0, "tokens.yaml"}};
    size_t start = 0;
    for (int k = 0; k < 4 && start <= size; k++) {
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
    fz_error_clear();
    int rc = fz_meta_build(&in, &out);
    if (rc) {
        fz_fuzz_check_error(rc);
    } else {
        fz_fuzz_check_meta(&out);
        fz_meta_out_free(&out);
    }
    free(text);
    return 0;
}
