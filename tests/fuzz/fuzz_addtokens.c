/* Fuzz target: the add-tokens YAML (transform/addtokens.c), parsed and then
 * applied by fz_meta_build to a real tokenizer: tests/unit/data/tok_pad (with
 * bos/eos/pad/unk) for inputs of even length, tok_nopad (no pad token) for
 * odd ones.
 *
 * Promises checked: a parsed spec holds non-empty tokens without NUL; a
 * successful build passes fz_fuzz_check_meta (fuzz_meta.h); a failure sets
 * an error. */
#include "fuzz_meta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fz_meta_in base[2];
    static bool loaded;
    fz_fuzz_quiet();
    if (!loaded) {
        fz_fuzz_load_fixture(&base[0], "tok_pad");
        fz_fuzz_load_fixture(&base[1], "tok_nopad");
        loaded = true;
    }
    char *text = fz_fuzz_strdup(data, size);
    fz_addtok_spec spec;
    fz_error_clear();
    int rc = fz_addtok_parse(text, size, "tokens.yaml", &spec);
    if (rc) {
        fz_fuzz_check_error(rc);
        free(text);
        return 0; /* fz_meta_build would stop at the same parse */
    }
    for (int r = 0; r < FZ_ROLE_N; r++)
        if (spec.roles[r].present)
            FZ_FUZZ_CHECK(spec.roles[r].token && spec.roles[r].token[0], "role %d", r);
    for (size_t i = 0; i < spec.n_special; i++)
        FZ_FUZZ_CHECK(spec.special[i][0], "empty special token");
    for (size_t i = 0; i < spec.n_regular; i++)
        FZ_FUZZ_CHECK(spec.regular[i][0], "empty regular token");
    fz_addtok_spec_free(&spec);
    /* one tokenizer per input (by the length's parity): twice the inputs per second */
    fz_meta_in in = base[size % 2];
    fz_meta_out out;
    in.add_tokens_yaml = (fz_blob){text, size, "tokens.yaml"};
    fz_error_clear();
    rc = fz_meta_build(&in, &out);
    if (rc) {
        fz_fuzz_check_error(rc);
    } else {
        fz_fuzz_check_meta(&in, &out);
        fz_meta_out_free(&out);
    }
    free(text);
    return 0;
}
