/* Fuzz target: the JSON reader (fz_json_parse) and emitter
 * (formats/jsonout.c) together.
 *
 * Promises checked, for every output dialect (HF save_pretrained with and
 * without ensure_ascii, Python json.dump indent 0 / -1 / 4, the tokenizers
 * library's serde_json): what the emitter writes is JSON the reader accepts,
 * it parses back to a tree equal to the one emitted (key order aside), and
 * emitting that tree again gives the same bytes: emit(parse(emit(x))) ==
 * emit(x). No string from the input can turn into raw JSON. */
#include "fuzz_common.h"

#include <jansson.h>

#include "formats/jsonout.h"

typedef struct {
    const char *name;
    fz_json_style style;
    bool tokenizers;
} dialect;

static int emit(const dialect *d, const json_t *v, fz_buf *out)
{
    return d->tokenizers ? fz_json_emit_tokenizers(v, out) : fz_json_emit(v, &d->style, out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const dialect dialects[] = {
        {"HF ascii", FZ_JSON_HF(true), false},     {"HF utf-8", FZ_JSON_HF(false), false},
        {"python indent 0", FZ_JSON_PY(0), false}, {"python compact", FZ_JSON_PY(-1), false},
        {"python indent 4", FZ_JSON_PY(4), false}, {"tokenizers", {0}, true},
    };
    fz_fuzz_quiet();
    fz_error_clear();
    json_t *x = fz_json_parse((const char *)data, size, "fuzz.json");
    if (!x) {
        fz_fuzz_check_error(FZ_EFORMAT);
        return 0;
    }
    for (size_t i = 0; i < sizeof dialects / sizeof dialects[0]; i++) {
        const dialect *d = &dialects[i];
        fz_buf a = FZ_BUF_INIT, b = FZ_BUF_INIT;
        int rc = emit(d, x, &a);
        FZ_FUZZ_CHECK(rc == 0, "%s: emit failed: %s", d->name, fz_error_msg());
        json_t *y = fz_json_parse((const char *)a.data, a.len, "emitted.json");
        FZ_FUZZ_CHECK(y, "%s: the emitted text is not JSON: %s\n%.*s", d->name, fz_error_msg(),
                      (int)(a.len > 2000 ? 2000 : a.len), (const char *)a.data);
        FZ_FUZZ_CHECK(json_equal(x, y), "%s: the emitted text reads back as another tree\n%.*s",
                      d->name, (int)(a.len > 2000 ? 2000 : a.len), (const char *)a.data);
        rc = emit(d, y, &b);
        FZ_FUZZ_CHECK(rc == 0, "%s: second emit failed: %s", d->name, fz_error_msg());
        FZ_FUZZ_CHECK(a.len == b.len && !memcmp(a.data, b.data, a.len),
                      "%s: emit(parse(emit(x))) differs from emit(x)", d->name);
        json_decref(y);
        fz_buf_free(&a);
        fz_buf_free(&b);
    }
    json_decref(x);
    return 0;
}
