/* Fuzz target: the JSON readers (fz_json_parse, and the flat-token reader
 * of formats/jsontok.c) and the emitter (formats/jsonout.c) together.
 *
 * The flat-token reader accepts exactly what jansson accepts
 * (JSON_REJECT_DUPLICATES | JSON_DECODE_ANY) and reads the same tree;
 * with FZ_JTOK_BIGINT it reads what fz_json_parse reads. One exception:
 * jansson skips a NUL byte right after a number or true/false/null (its
 * lexer puts the byte back as "nothing"), which the reader refuses.
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
#include "formats/jsontok.h"

typedef struct {
    const char *name;
    fz_json_style style;
    bool tokenizers;
} dialect;

static int emit(const dialect *d, const json_t *v, fz_buf *out)
{
    return d->tokenizers ? fz_json_emit_tokenizers(v, out) : fz_json_emit(v, &d->style, out);
}

/* The flat-token reader against jansson (and, with big integers, against
 * fz_json_parse, whose tree x is when the text parsed). */
static void same_as_jansson(const uint8_t *data, size_t size, const json_t *x)
{
    json_error_t e;
    json_t *want =
        json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
    fz_jdoc d;
    size_t at;
    const char *why;
    int rc = fz_jtok_parse(&d, (const char *)data, size, 0, &at, &why);
    bool nul = memchr(data, 0, size) != NULL;
    FZ_FUZZ_CHECK(rc == 0 ? want != NULL : want == NULL || nul, "jsontok %s (%s), jansson %s (%s)",
                  rc ? "refuses" : "accepts", rc ? why : "", want ? "accepts" : "refuses",
                  want ? "" : e.text);
    if (want && rc == 0) {
        json_t *got = fz_jtok_to_json(&d, 0);
        FZ_FUZZ_CHECK(got && json_equal(want, got), "jsontok reads another tree than jansson");
        json_decref(got);
    }
    fz_jtok_free(&d);
    json_decref(want);
    if (!x)
        return;
    rc = fz_jtok_parse(&d, (const char *)data, size, FZ_JTOK_BIGINT, &at, &why);
    FZ_FUZZ_CHECK(rc == 0 || nul, "jsontok refuses (%s) what fz_json_parse reads", why);
    if (rc) {
        fz_jtok_free(&d);
        return;
    }
    json_t *got = fz_jtok_to_json(&d, 0);
    fz_buf a = FZ_BUF_INIT, b = FZ_BUF_INIT;
    FZ_FUZZ_CHECK(got && !fz_json_emit(x, &FZ_JSON_PY(-1), &a) &&
                      !fz_json_emit(got, &FZ_JSON_PY(-1), &b) && a.len == b.len &&
                      !memcmp(a.data, b.data, a.len),
                  "jsontok with big integers reads another tree than fz_json_parse");
    fz_buf_free(&a);
    fz_buf_free(&b);
    json_decref(got);
    fz_jtok_free(&d);
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
    same_as_jansson(data, size, x);
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
