/* Unit tests for formats/pickle.c and pickle_write.c: the restricted machine
 * on hand-built streams (allowed and refused globals, malformed input,
 * limits), and writer -> reader round trips. Real torch pickles are covered
 * through test_torchbin.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "formats/pickle.h"
#include "util/error.h"

/* Small stream builder. */
static void raw(fz_buf *b, const char *s, size_t n)
{
    assert_int_equal(fz_buf_append(b, s, n), 0);
}
#define RAW(b, lit) raw(b, lit, sizeof(lit) - 1)

static void ustr(fz_buf *b, const char *s)
{
    assert_int_equal(fz_buf_putc(b, 'X'), 0);
    assert_int_equal(fz_buf_put_u32le(b, (uint32_t)strlen(s)), 0);
    raw(b, s, strlen(s));
}

/* The §2.4 stream (hf-formats.md): one f32 tensor (4,3), no memo. With
 * `storage` as the storage global line and `numel` as a raw integer opcode. */
static void one_tensor(fz_buf *b, const char *storage_global, const char *numel, size_t nlen)
{
    RAW(b, "\x80\x02"
           "ccollections\nOrderedDict\n)R(");
    ustr(b, "model.embed_tokens.weight");
    RAW(b, "ctorch._utils\n_rebuild_tensor_v2\n((");
    ustr(b, "storage");
    raw(b, storage_global, strlen(storage_global));
    ustr(b, "0");
    ustr(b, "cpu");
    raw(b, numel, nlen);
    RAW(b, "tQK\x00K\x04K\x03\x86K\x03K\x01\x86\x89"
           "ccollections\nOrderedDict\n)RtRu.");
}

/* {"a": _rebuild_tensor_v2(storage '0' FloatStorage numel 1, 0, <size>, <stride>, False, {})} */
static void tensor_with(fz_buf *b, const char *size_ops, const char *stride_ops)
{
    RAW(b, "\x80\x02}");
    ustr(b, "a");
    RAW(b, "ctorch._utils\n_rebuild_tensor_v2\n((");
    ustr(b, "storage");
    RAW(b, "ctorch\nFloatStorage\n");
    ustr(b, "0");
    ustr(b, "cpu");
    RAW(b, "K\x01tQK\x00");
    raw(b, size_ops, strlen(size_ops));
    raw(b, stride_ops, strlen(stride_ops));
    RAW(b, "\x89}tRs.");
}

static int run(const fz_buf *b, fz_pickle_dict *d)
{
    return fz_pickle_read_state_dict(b->data, b->len, "m.bin", d);
}

static void test_minimal(void **state)
{
    (void)state;
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    one_tensor(&b, "ctorch\nFloatStorage\n", "K\x0c", 2);
    assert_int_equal(run(&b, &d), 0);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.v[0].name, "model.embed_tokens.weight");
    assert_string_equal(d.v[0].key, "0");
    assert_int_equal(d.v[0].dtype, FZ_DT_F32);
    assert_int_equal(d.v[0].storage_nbytes, 48);
    assert_int_equal(d.v[0].storage_offset, 0);
    assert_int_equal(d.v[0].ndim, 2);
    assert_int_equal(d.v[0].shape[0], 4);
    assert_int_equal(d.v[0].shape[1], 3);
    assert_int_equal(d.v[0].stride[0], 3);
    assert_int_equal(d.v[0].stride[1], 1);
    fz_pickle_dict_free(&d);
    fz_buf_free(&b);
}

static void expect_denied(const char *stream, size_t n, const char *name)
{
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    raw(&b, stream, n);
    assert_int_equal(run(&b, &d), FZ_EDENIED);
    char want[128];
    snprintf(want, sizeof want, "m.bin: pickle global '%s' is not allowed", name);
    if (strncmp(fz_error_msg(), want, strlen(want)))
        fail_msg("message '%s', want it to start with '%s'", fz_error_msg(), want);
    assert_int_equal(d.n, 0);
    fz_buf_free(&b);
}

static void test_denied_globals(void **state)
{
    (void)state;
    /* The classic exploit: os.system('...') via GLOBAL + REDUCE. */
    static const char os_system[] = "\x80\x02"
                                    "cos\nsystem\nX\x02\x00\x00\x00id\x85R.";
    expect_denied(os_system, sizeof os_system - 1, "os.system");
    /* builtins.eval via STACK_GLOBAL (protocol 4). */
    static const char eval4[] = "\x80\x04\x8c\x08"
                                "builtins\x8c\x04"
                                "eval\x93"
                                "X\x01\x00\x00\x00"
                                "1\x85R.";
    expect_denied(eval4, sizeof eval4 - 1, "builtins.eval");
    /* Near misses of allowed names. */
    static const char near1[] = "\x80\x02"
                                "ctorch._utils\n_rebuild_tensor\n.";
    expect_denied(near1, sizeof near1 - 1, "torch._utils._rebuild_tensor");
    static const char near2[] = "\x80\x02"
                                "ctorch\nload\n.";
    expect_denied(near2, sizeof near2 - 1, "torch.load");
    static const char near3[] = "\x80\x02"
                                "ccollections\nOrderedDictX\n.";
    expect_denied(near3, sizeof near3 - 1, "collections.OrderedDictX");
    /* A NUL inside: every byte shown, never a name that reads as an allowed one. */
    static const char nul4[] = "\x80\x04\x8c\x0e"
                               "torch._utils\0x\x8c\x12"
                               "_rebuild_tensor_v2\x93.";
    expect_denied(nul4, sizeof nul4 - 1, "torch._utils\\x00x._rebuild_tensor_v2");
    static const char nul2[] = "\x80\x02"
                               "ccollections\nOrderedDict\0os\n.";
    expect_denied(nul2, sizeof nul2 - 1, "collections.OrderedDict\\x00os");
    /* A disallowed global inside an otherwise valid state dict. */
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    one_tensor(&b, "cposix\nsystem\n", "K\x0c", 2);
    assert_int_equal(run(&b, &d), FZ_EDENIED);
    assert_non_null(strstr(fz_error_msg(), "'posix.system'"));
    fz_buf_free(&b);
}

static void expect_format(const char *stream, size_t n, const char *msg_part)
{
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    raw(&b, stream, n);
    assert_int_equal(run(&b, &d), FZ_EFORMAT);
    if (msg_part && !strstr(fz_error_msg(), msg_part))
        fail_msg("message '%s' lacks '%s'", fz_error_msg(), msg_part);
    fz_buf_free(&b);
}
#define FMT(lit, part) expect_format(lit, sizeof(lit) - 1, part)

static void test_malformed(void **state)
{
    (void)state;
    FMT("", "truncated");
    FMT("\x80\x02}", "truncated");
    FMT("\x80\x01}.", "protocol");
    FMT("\x80\x02}\xff.", "opcode 0xff");
    FMT("\x80\x02"
        "cos\nsystem",
        "unterminated");
    FMT("\x80\x02i__main__\nX\n.", "opcode 0x69"); /* INST */
    FMT("\x80\x02\x81.", "opcode 0x81");           /* NEWOBJ */
    FMT("\x80\x02h\x05.", "memo index 5 is not set");
    FMT("\x80\x02}q\x01h\x02.", "memo index 2 is not set");
    FMT("\x80\x02j\x00\x00\x00\x10.", "memo index");
    FMT("\x80\x02X\xff\xff\xff\x7f"
        "abc.",
        "past the end");
    FMT("\x80\x02\x8c\x09"
        "abc.",
        "past the end");
    FMT("\x80\x02\x95\xff\x00\x00\x00\x00\x00\x00\x00}.", "frame");
    FMT("\x80\x02t.", "MARK");
    FMT("\x80\x02(.", "underflow");
    FMT("\x80\x02}(\x85.", "underflow");
    FMT("\x80\x02s.", "underflow");
    FMT("\x80\x02}(K\x01u.", "odd");
    FMT("\x80\x02](K\x01K\x02u.", "non-dict");
    FMT("\x80\x02K\x01.", "not a flat state dict");
    FMT("\x80\x02}X\x01\x00\x00\x00"
        "aK\x01s.",
        "not a flat state dict");
    FMT("\x80\x02}X\x01\x00\x00\x00"
        "a}s.",
        "not a flat state dict");
    FMT("\x80\x02"
        "ctorch\nFloatStorage\n)R.",
        "not callable");
    FMT("\x80\x02"
        "ccollections\nOrderedDict\nK\x01\x85R.",
        "arguments");
    FMT("\x80\x02(X\x07\x00\x00\x00storageK\x01tQ.", "persistent id");
    FMT("\x80\x02K\x01K\x02"
        "b.",
        "BUILD");
    /* Unsupported storage type: allowed family, not representable. */
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    one_tensor(&b, "ctorch\nComplexFloatStorage\n", "K\x0c", 2);
    assert_int_equal(run(&b, &d), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "torch.ComplexFloatStorage"));
    fz_buf_free(&b);
}

static void test_limits(void **state)
{
    (void)state;
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    /* numel 2^62 FloatStorage: the byte size overflows u64. */
    one_tensor(&b, "ctorch\nFloatStorage\n", "\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40", 10);
    assert_int_equal(run(&b, &d), FZ_ERANGE);
    assert_non_null(strstr(fz_error_msg(), "overflows"));
    fz_buf_free(&b);
    /* A LONG1 wider than 64 bits. */
    RAW(&b, "\x80\x02\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09.");
    assert_int_equal(run(&b, &d), FZ_ERANGE);
    fz_buf_free(&b);
    /* Memo index beyond the memo limit. */
    RAW(&b, "\x80\x02}r\xff\xff\xff\xff.");
    assert_int_equal(run(&b, &d), FZ_ERANGE);
    fz_buf_free(&b);
    /* Deep MARK nesting: bounded by the mark limit, not recursion. */
    for (int i = 0; i < 70000; i++)
        assert_int_equal(fz_buf_putc(&b, '('), 0);
    RAW(&b, ".");
    assert_int_equal(run(&b, &d), FZ_ERANGE);
    fz_buf_free(&b);
    /* Deeply nested tuples ((((...)))) are fine: no recursion anywhere
     * (20000 levels: within the memory bound, see test_memory_bound). */
    RAW(&b, "\x80\x02)");
    for (int i = 0; i < 20000; i++)
        assert_int_equal(fz_buf_putc(&b, (char)0x85), 0);
    RAW(&b, ".");
    assert_int_equal(run(&b, &d), FZ_EFORMAT); /* not a dict */
    fz_buf_free(&b);
    /* Negative size and rank above FZ_MAX_DIMS. */
    tensor_with(&b, "J\xff\xff\xff\xff\x85", "K\x01\x85");
    assert_int_equal(run(&b, &d), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "negative"));
    fz_buf_free(&b);
    tensor_with(&b, "(K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01t",
                "(K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01t");
    assert_int_equal(run(&b, &d), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "9 dimensions"));
    fz_buf_free(&b);
    tensor_with(&b, "K\x01\x85", "K\x01K\x01\x86");
    assert_int_equal(run(&b, &d), FZ_EFORMAT);
    fz_buf_free(&b);
}

/* The machine's memory is bounded by a multiple of the pickle's size:
 * NONE, TUPLE1, APPEND adds a one-item tuple to a list per 3 bytes (48
 * bytes of objects), so 3 MB of it would take 48 MB and more; it is
 * refused once past 8 bytes per input byte (plus 1 MiB). */
static void test_memory_bound(void **state)
{
    (void)state;
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    RAW(&b, "\x80\x02]");
    for (int i = 0; i < 1000000; i++)
        RAW(&b, "N\x85"
                "a");
    RAW(&b, ".");
    assert_int_equal(run(&b, &d), FZ_ERANGE);
    assert_non_null(strstr(fz_error_msg(), "m.bin: the pickle (3000004 bytes) needs more than"));
    assert_non_null(strstr(fz_error_msg(), "bytes of memory"));
    fz_buf_free(&b);
    /* the same shape, small: within the fixed allowance, read to the end
     * (and refused for what it is: a list, not a state dict) */
    RAW(&b, "\x80\x02]");
    for (int i = 0; i < 1000; i++)
        RAW(&b, "N\x85"
                "a");
    RAW(&b, ".");
    assert_int_equal(run(&b, &d), FZ_EFORMAT);
    fz_buf_free(&b);
}

static void test_duplicate_names(void **state)
{
    (void)state;
    fz_pickle_tensor t[2] = {0};
    t[0].name = "a";
    t[0].key = "0";
    t[0].dtype = FZ_DT_F32;
    t[0].storage_nbytes = 4;
    t[1] = t[0];
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    assert_int_equal(fz_pickle_write_state_dict(t, 2, &b), 0);
    assert_int_equal(run(&b, &d), FZ_EFORMAT);
    assert_non_null(strstr(fz_error_msg(), "'a' appears twice"));
    fz_buf_free(&b);
}

/* Tensor names are Python str: bytes that are not UTF-8 (or hold a NUL) are
 * refused, naming the tensor with its bytes escaped. */
static void test_names_must_be_utf8(void **state)
{
    (void)state;
    const char *bad[] = {"model.\xff\xfe.weight", "a\xed\xa0\x80", "a\xc0\xae"};
    const char *shown[] = {"'model.\\xFF\\xFE.weight'", "'a\\xED\\xA0\\x80'", "'a\\xC0\\xAE'"};
    for (int i = 0; i < 3; i++) {
        fz_pickle_tensor t = {0};
        t.name = (char *)bad[i];
        t.key = "0";
        t.dtype = FZ_DT_F32;
        t.storage_nbytes = 4;
        fz_buf b = FZ_BUF_INIT;
        fz_pickle_dict d;
        assert_int_equal(fz_pickle_write_state_dict(&t, 1, &b), 0);
        assert_int_equal(run(&b, &d), FZ_EFORMAT);
        if (!strstr(fz_error_msg(), shown[i]) || !strstr(fz_error_msg(), "UTF-8"))
            fail_msg("message '%s' should show %s", fz_error_msg(), shown[i]);
        fz_buf_free(&b);
    }
}

static void check_same(const fz_pickle_tensor *a, const fz_pickle_tensor *b)
{
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->key, b->key);
    assert_int_equal(a->dtype, b->dtype);
    assert_int_equal(a->storage_nbytes, b->storage_nbytes);
    assert_int_equal(a->storage_offset, b->storage_offset);
    assert_int_equal(a->ndim, b->ndim);
    for (int k = 0; k < a->ndim; k++) {
        assert_int_equal(a->shape[k], b->shape[k]);
        assert_int_equal(a->stride[k], b->stride[k]);
    }
}

static void test_roundtrip(void **state)
{
    (void)state;
    static const fz_pickle_tensor in[] = {
        {"emb", "0", FZ_DT_BF16, 2 * 12, 0, 2, {4, 3}, {3, 1}},
        {"head", "0", FZ_DT_BF16, 2 * 12, 0, 2, {4, 3}, {3, 1}},
        {"scalar", "1", FZ_DT_F32, 4, 0, 0, {0}, {0}},
        {"big", "2", FZ_DT_I8, 3ull << 31, 0, 1, {3ull << 31}, {1}}, /* LONG1 numel */
        {"huge", "3", FZ_DT_F16, 2ull << 40, 5, 1, {70000}, {1}},    /* M / J ints */
        {"q", "4", FZ_DT_F8_E4M3, 16, 0, 2, {4, 4}, {4, 1}},         /* v3 + untyped */
        {"r", "5", FZ_DT_F8_E5M2, 8, 0, 1, {8}, {1}},
        {"five", "6", FZ_DT_BOOL, 32, 0, 5, {2, 2, 2, 2, 2}, {16, 8, 4, 2, 1}},
        {"i64", "7", FZ_DT_I64, 8, 0, 1, {1}, {1}},
        {"ünï", "8", FZ_DT_F64, 8, 0, 1, {1}, {1}},
    };
    size_t n = sizeof in / sizeof in[0];
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    RAW(&b, "junk"); /* appends after existing bytes */
    assert_int_equal(fz_pickle_write_state_dict(in, n, &b), 0);
    assert_memory_equal(b.data, "junk\x80\x02", 6);
    assert_int_equal(fz_pickle_read_state_dict(b.data + 4, b.len - 4, "w", &d), 0);
    assert_int_equal(d.n, n);
    for (size_t i = 0; i < n; i++)
        check_same(&in[i], &d.v[i]);
    fz_pickle_dict_free(&d);
    /* The writer uses the protocol-2 forms torch does. */
    assert_non_null(memmem(b.data, b.len, "\x8a\x05\x00\x00\x00\x80\x01", 7)); /* 3*2^31 */
    /* torch.UntypedStorage is refused by weights_only; torch writes this: */
    assert_non_null(memmem(b.data, b.len, "ctorch.storage\nUntypedStorage\n", 30));
    assert_non_null(memmem(b.data, b.len, "ctorch\nfloat8_e4m3fn\n", 21));
    assert_non_null(memmem(b.data, b.len, "ctorch\nBFloat16Storage\n", 23));

    /* Every truncation and every single-byte change: an error or a result,
     * never a crash (run under ASan). */
    size_t len = b.len - 4;
    uint8_t *c = malloc(len);
    for (size_t cut = 0; cut < len; cut++)
        assert_int_not_equal(fz_pickle_read_state_dict(b.data + 4, cut, "w", &d), 0);
    for (size_t i = 0; i < len; i++) {
        static const uint8_t vals[] = {0x00, 0x01, 0x7f, 0x80, 0xff, '(', 't', 'u', 'h', 'q', 'R'};
        for (size_t k = 0; k < sizeof vals; k++) {
            memcpy(c, b.data + 4, len);
            c[i] = vals[k];
            if (fz_pickle_read_state_dict(c, len, "w", &d) == 0)
                fz_pickle_dict_free(&d);
        }
    }
    free(c);
    fz_buf_free(&b);

    /* Bad writer input. */
    fz_pickle_tensor bad = in[0];
    bad.storage_nbytes = 23;
    assert_int_equal(fz_pickle_write_state_dict(&bad, 1, &b), FZ_EINVAL);
    assert_int_equal(b.len, 0);
    bad = in[0];
    bad.ndim = FZ_MAX_DIMS + 1;
    assert_int_equal(fz_pickle_write_state_dict(&bad, 1, &b), FZ_EINVAL);
    fz_buf_free(&b);
}

static void test_many(void **state)
{
    (void)state;
    /* > 1000 entries (SETITEMS batches) and > 256 memo slots are not reached
     * by globals, but names are many: check order is kept. */
    enum { N = 2500 };
    fz_pickle_tensor *t = calloc(N, sizeof *t);
    char(*names)[16] = calloc(N, sizeof *names);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "w.%d", N - i);
        t[i].name = names[i];
        t[i].key = names[i] + 2;
        t[i].dtype = (fz_dtype)(i % FZ_DT_COUNT);
        t[i].storage_nbytes = 8;
        t[i].ndim = 1;
        t[i].shape[0] = 1;
        t[i].stride[0] = 1;
    }
    fz_buf b = FZ_BUF_INIT;
    fz_pickle_dict d;
    assert_int_equal(fz_pickle_write_state_dict(t, N, &b), 0);
    assert_int_equal(run(&b, &d), 0);
    assert_int_equal(d.n, N);
    for (int i = 0; i < N; i++)
        check_same(&t[i], &d.v[i]);
    fz_pickle_dict_free(&d);
    fz_buf_free(&b);
    free(t);
    free(names);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal),         cmocka_unit_test(test_denied_globals),
        cmocka_unit_test(test_malformed),       cmocka_unit_test(test_limits),
        cmocka_unit_test(test_duplicate_names), cmocka_unit_test(test_names_must_be_utf8),
        cmocka_unit_test(test_roundtrip),       cmocka_unit_test(test_many),
        cmocka_unit_test(test_memory_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
