#include "formats/safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/checked.h"
#include "util/error.h"
#include "util/io.h"

/* Reading follows the reference reader (safetensors tensor.rs read_metadata /
 * validate, reference/hf-formats.md §1.4): header length <= 100 MB, a JSON
 * object, offsets tiling the buffer exactly, sizes = numel × element size with
 * the product checked left to right, no trailing bytes. Where we are stricter,
 * on purpose:
 * - duplicate keys are an error (serde keeps the last one silently);
 * - dtypes fzfs has no use for (F4, F6_*, U16, C64, ...) are an error naming
 *   the dtype; more than FZ_MAX_DIMS dimensions is an error;
 * - an empty tensor whose contiguous strides do not fit in int64 is an error.
 * Like serde, extra keys in a tensor entry are ignored and "__metadata__": null
 * is accepted as absent. */

/* The reference reader's limit (safetensors tensor.rs MAX_HEADER_SIZE). */
#define FZ_ST_MAX_HEADER 100000000u

/* One header entry while validating: where its bytes claim to be. */
typedef struct {
    uint64_t begin, end;
    size_t idx; /* position in the output list (header order) */
} st_span;

static uint64_t st_get_u64le(const uint8_t *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

/* A JSON value that must be a non-negative integer (serde's usize). */
static int st_json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int st_check_metadata(const json_t *meta, const char *path)
{
    const char *k;
    json_t *v;
    if (json_is_null(meta)) /* serde's Option<HashMap>: null means absent */
        return 0;
    if (!json_is_object(meta))
        return fz_error_set(FZ_EFORMAT, "%s: __metadata__ is not an object", path);
    json_object_foreach((json_t *)meta, k, v)
    {
        if (!json_is_string(v))
            return fz_error_set(FZ_EFORMAT, "%s: __metadata__ value of '%.200s' is not a string",
                                path, k);
    }
    return 0;
}

/* Parse one tensor entry into *t (name not set). */
static int st_parse_entry(const char *name, json_t *v, const char *path, fz_tensor *t,
                          st_span *span)
{
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    uint64_t numel, nbytes;
    size_t es;

    if (!json_is_object(v))
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' is not an object", path, name);
    /* Extra keys are ignored, as the reference reader (serde) ignores them. */
    if (!dt || !shape || !offs)
        return fz_error_set(
            FZ_EFORMAT, "%s: tensor '%.200s' must have dtype, shape and data_offsets", path, name);
    if (!json_is_string(dt))
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' dtype is not a string", path, name);
    if (fz_dtype_from_st_name(json_string_value(dt), &t->dtype) != 0)
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' has unknown dtype '%s'", path, name,
                            json_string_value(dt));
    if (!json_is_array(shape))
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' shape is not an array", path, name);
    if (json_array_size(shape) > FZ_MAX_DIMS)
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%.200s' has %zu dimensions (at most %d)", path,
                            name, json_array_size(shape), FZ_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    for (int i = 0; i < t->ndim; i++)
        if (st_json_u64(json_array_get(shape, (size_t)i), &t->shape[i]) != 0)
            return fz_error_set(FZ_EFORMAT,
                                "%s: tensor '%.200s' shape[%d] is not a non-negative integer", path,
                                name, i);
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        st_json_u64(json_array_get(offs, 0), &span->begin) != 0 ||
        st_json_u64(json_array_get(offs, 1), &span->end) != 0)
        return fz_error_set(FZ_EFORMAT,
                            "%s: tensor '%.200s' data_offsets is not a pair of non-negative "
                            "integers",
                            path, name);
    if (span->end < span->begin)
        return fz_error_set(FZ_EFORMAT,
                            "%s: tensor '%.200s' data_offsets [%" PRIu64 ", %" PRIu64
                            "] end before begin",
                            path, name, span->begin, span->end);

    int rc = fz_tensor_check_shape(path, name, t->dtype, t->ndim, t->shape);
    if (rc)
        return rc;
    es = fz_dtype_size(t->dtype);
    if (!fz_tensor_numel(t, &numel) || !fz_mul_u64(numel, es, &nbytes))
        return fz_error_set(FZ_ERANGE, "%s: tensor '%.200s' byte size overflows", path, name);
    if (span->end - span->begin != nbytes) {
        char dims[FZ_MAX_DIMS * 22 + 3];
        size_t o = 0;
        dims[o++] = '[';
        for (int i = 0; i < t->ndim; i++)
            o += (size_t)snprintf(dims + o, sizeof dims - o, "%s%" PRIu64, i ? ", " : "",
                                  t->shape[i]);
        snprintf(dims + o, sizeof dims - o, "]");
        return fz_error_set(FZ_EFORMAT,
                            "%s: tensor '%.200s' data_offsets [%" PRIu64 ", %" PRIu64
                            "] do not match shape %s \xc3\x97 %s",
                            path, name, span->begin, span->end, dims, fz_dtype_st_name(t->dtype));
    }

    /* Contiguous strides, checked: with a 0 dimension numel is 0 but the
     * product of the other dimensions can still overflow. */
    uint64_t st = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (st > INT64_MAX)
            return fz_error_set(FZ_ERANGE, "%s: tensor '%.200s' strides overflow", path, name);
        t->stride[i] = (int64_t)st;
        if (i > 0 && !fz_mul_u64(st, t->shape[i] ? t->shape[i] : 1, &st))
            return fz_error_set(FZ_ERANGE, "%s: tensor '%.200s' strides overflow", path, name);
    }
    t->storage_offset = 0;
    t->storage_nbytes = nbytes;
    return 0;
}

static int st_span_cmp(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int fz_st_read(int fd, const char *path, uint64_t file_size, fz_tensor_list *out)
{
    uint8_t lenbuf[8];
    uint8_t *hbuf = NULL;
    json_t *root = NULL;
    st_span *spans = NULL;
    fz_tensor_list got = {0};
    uint64_t n, data_start, pos;
    size_t nt = 0, k;
    const char *key;
    json_t *val;
    json_error_t jerr;
    int rc;

    if (file_size < 8)
        return fz_error_set(FZ_EFORMAT, "%s: file is %" PRIu64 " bytes, too short for a header",
                            path, file_size);
    if ((rc = fz_pread_exact(fd, lenbuf, 8, 0, path)) != 0)
        return rc;
    n = st_get_u64le(lenbuf);
    if (n > FZ_ST_MAX_HEADER)
        return fz_error_set(FZ_EFORMAT, "%s: header length %" PRIu64 " exceeds %u bytes", path, n,
                            FZ_ST_MAX_HEADER);
    data_start = 8 + n; /* cannot overflow: n <= 1e8 */
    if (data_start > file_size)
        return fz_error_set(FZ_EFORMAT,
                            "%s: header length %" PRIu64 " runs past the end of the file (%" PRIu64
                            " bytes)",
                            path, n, file_size);
    if (!(hbuf = malloc(n ? n : 1))) {
        rc = fz_error_set(FZ_ENOMEM, "%s: out of memory for a %" PRIu64 "-byte header", path, n);
        goto done;
    }
    if ((rc = fz_pread_exact(fd, hbuf, n, 8, path)) != 0)
        goto done;

    root = json_loadb((const char *)hbuf, n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        rc = fz_error_set(FZ_EFORMAT, "%s: header is not valid JSON: %s (at byte %d)", path,
                          jerr.text, jerr.position);
        goto done;
    }
    if (!json_is_object(root)) {
        rc = fz_error_set(FZ_EFORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    if ((spans = calloc(json_object_size(root) + 1, sizeof *spans)) == NULL) {
        rc = fz_error_set(FZ_ENOMEM, "%s: out of memory", path);
        goto done;
    }

    /* jansson keeps object keys in file order, so this walks the header order. */
    json_object_foreach(root, key, val)
    {
        fz_tensor t = {0};
        if (strcmp(key, "__metadata__") == 0) {
            if ((rc = st_check_metadata(val, path)) != 0)
                goto done;
            continue;
        }
        if ((rc = st_parse_entry(key, val, path, &t, &spans[nt])) != 0)
            goto done;
        if (!(t.name = strdup(key))) {
            rc = fz_error_set(FZ_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        t.storage_id = (uint32_t)nt; /* n <= 1e8 bytes, so fewer than 2^32 tensors */
        t.data_offset = data_start + spans[nt].begin; /* checked below via the tiling */
        spans[nt].idx = nt;
        if ((rc = fz_tensor_list_push(&got, &t)) != 0) {
            free(t.name);
            goto done;
        }
        nt++;
    }

    /* The reference rule: sorted by data_offsets, the entries tile the byte buffer
     * exactly from 0 (no gap, no overlap, no aliasing), and the buffer ends at EOF. */
    qsort(spans, nt, sizeof *spans, st_span_cmp);
    pos = 0;
    for (k = 0; k < nt; k++) {
        const st_span *s = &spans[k];
        if (s->begin != pos) {
            rc = fz_error_set(FZ_EFORMAT,
                              "%s: tensor '%.200s' data_offsets [%" PRIu64 ", %" PRIu64 "] %s: "
                              "expected it to begin at %" PRIu64,
                              path, got.v[s->idx].name, s->begin, s->end,
                              s->begin > pos ? "leave a gap" : "overlap another tensor", pos);
            goto done;
        }
        pos = s->end;
    }
    if (!fz_add_u64(pos, data_start, &pos) || pos != file_size) {
        rc = fz_error_set(
            FZ_EFORMAT,
            "%s: tensor data ends at byte %" PRIu64 " but the file has %" PRIu64 " bytes%s", path,
            pos, file_size, pos < file_size ? " (trailing bytes)" : " (truncated)");
        goto done;
    }

    rc = fz_tensor_list_append(out, &got);

done:
    fz_tensor_list_free(&got);
    free(spans);
    json_decref(root);
    free(hbuf);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Writer layout.
 *
 * The reference writer (safetensors tensor.rs `prepare`) sorts by its Dtype
 * enum in reverse declaration order, then by name in byte order. For the
 * dtypes fzfs knows, that enum order is
 *   BOOL < U8 < I8 < F8_E5M2 < F8_E4M3 < I16 < F16 < BF16 < I32 < F32 < F64 < I64
 * (checked against safetensors 0.8 save_file), so the file starts with I64
 * and ends with BOOL. With the header padded to a multiple of 8 this puts
 * every tensor at an offset aligned to its element size. */
static const int st_rank[FZ_DT_COUNT] = {
    [FZ_DT_BOOL] = 0,    [FZ_DT_U8] = 1,  [FZ_DT_I8] = 2,   [FZ_DT_F8_E5M2] = 3,
    [FZ_DT_F8_E4M3] = 4, [FZ_DT_I16] = 5, [FZ_DT_F16] = 6,  [FZ_DT_BF16] = 7,
    [FZ_DT_I32] = 8,     [FZ_DT_F32] = 9, [FZ_DT_F64] = 10, [FZ_DT_I64] = 11,
};

typedef struct {
    int rank;
    const char *name;
    size_t idx;
} st_key;

static int st_key_cmp(const void *a, const void *b)
{
    const st_key *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank > y->rank ? -1 : 1;
    return strcmp(x->name, y->name); /* strcmp compares as unsigned char: byte order */
}

static json_t *st_entry_json(const fz_st_entry *e, uint64_t begin, uint64_t end)
{
    json_t *shape = json_array();
    if (!shape || begin > INT64_MAX || end > INT64_MAX) {
        json_decref(shape);
        return NULL;
    }
    for (int d = 0; d < e->ndim; d++)
        if (e->shape[d] > INT64_MAX ||
            json_array_append_new(shape, json_integer((json_int_t)e->shape[d])) != 0) {
            json_decref(shape);
            return NULL;
        }
    /* Key order as the Rust writer: dtype, shape, data_offsets. "o" steals shape. */
    return json_pack("{s:s, s:o, s:[I, I]}", "dtype", fz_dtype_st_name(e->dtype), "shape", shape,
                     "data_offsets", (json_int_t)begin, (json_int_t)end);
}

int fz_st_layout(const fz_st_entry *e, size_t n, fz_buf *hdr, size_t *order, uint64_t *offset)
{
    st_key *keys = NULL;
    uint64_t *rel = NULL;
    json_t *root = NULL, *meta = NULL;
    char *text = NULL;
    uint64_t pos = 0, hlen;
    size_t len, j;
    int rc;

    if (!(keys = calloc(n + 1, sizeof *keys)) || !(rel = calloc(n + 1, sizeof *rel))) {
        rc = fz_error_set(FZ_ENOMEM, "safetensors layout: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned)e[i].dtype >= FZ_DT_COUNT || e[i].ndim < 0 || e[i].ndim > FZ_MAX_DIMS) {
            rc = fz_error_set(FZ_EINVAL,
                              "safetensors layout: tensor '%.200s' has a bad dtype or rank",
                              e[i].name);
            goto done;
        }
        keys[i] = (st_key){st_rank[e[i].dtype], e[i].name, i};
    }
    qsort(keys, n, sizeof *keys, st_key_cmp);

    root = json_object();
    meta = json_pack("{s:s}", "format", "pt");
    if (!root || !meta) {
        json_decref(meta);
        rc = fz_error_set(FZ_ENOMEM, "safetensors layout: out of memory");
        goto done;
    }
    if (json_object_set_new(root, "__metadata__", meta) != 0) { /* steals meta */
        rc = fz_error_set(FZ_ENOMEM, "safetensors layout: out of memory");
        goto done;
    }
    for (j = 0; j < n; j++) {
        const fz_st_entry *t = &e[keys[j].idx];
        uint64_t numel, nbytes, end;
        json_t *ent;
        if (j && strcmp(keys[j - 1].name, t->name) == 0) {
            rc = fz_error_set(FZ_EINVAL, "safetensors layout: tensor name '%.200s' appears twice",
                              t->name);
            goto done;
        }
        if (strcmp(t->name, "__metadata__") == 0) {
            rc = fz_error_set(FZ_EINVAL, "safetensors layout: '__metadata__' is reserved");
            goto done;
        }
        if (!fz_prod_u64(t->shape, t->ndim, &numel) ||
            !fz_mul_u64(numel, fz_dtype_size(t->dtype), &nbytes) ||
            !fz_add_u64(pos, nbytes, &end)) {
            rc = fz_error_set(FZ_ERANGE, "safetensors layout: tensor '%.200s' size overflows",
                              t->name);
            goto done;
        }
        if (!(ent = st_entry_json(t, pos, end))) {
            rc = fz_error_set(FZ_ERANGE, "safetensors layout: tensor '%.200s' cannot be encoded",
                              t->name);
            goto done;
        }
        if (json_object_set_new(root, t->name, ent) != 0) { /* steals ent */
            rc = fz_error_set(
                FZ_EINVAL, "safetensors layout: tensor name '%.200s' is not valid UTF-8", t->name);
            goto done;
        }
        order[j] = keys[j].idx;
        rel[keys[j].idx] = pos;
        pos = end;
    }

    /* Compact separators and insertion order: what the Rust writer emits. */
    if (!(text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
        rc = fz_error_set(FZ_ENOMEM, "safetensors layout: out of memory");
        goto done;
    }
    len = strlen(text);
    hlen = ((uint64_t)len + 7) & ~(uint64_t)7;
    if (hlen > FZ_ST_MAX_HEADER) {
        rc = fz_error_set(FZ_ERANGE, "safetensors layout: header of %" PRIu64 " bytes exceeds %u",
                          hlen, FZ_ST_MAX_HEADER);
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        if (!fz_add_u64(8 + hlen, rel[i], &offset[i])) {
            rc = fz_error_set(FZ_ERANGE, "safetensors layout: offsets overflow");
            goto done;
        }
    if ((rc = fz_buf_reserve(hdr, 8 + (size_t)hlen + 1)) != 0 ||
        (rc = fz_buf_put_u64le(hdr, hlen)) != 0 || (rc = fz_buf_append(hdr, text, len)) != 0)
        goto done;
    for (; len < hlen; len++)
        if ((rc = fz_buf_putc(hdr, ' ')) != 0)
            goto done;
    rc = 0;

done:
    free(text);
    json_decref(root);
    free(rel);
    free(keys);
    return rc;
}
