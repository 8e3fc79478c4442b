#include "formats/tensor.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/checked.h"
#include "util/error.h"
#include "util/vec.h"

static const struct {
    const char *st, *storage, *torch;
    size_t size;
    bool is_float;
} fz_dt[FZ_DT_COUNT] = {
    [FZ_DT_F64] = {"F64", "DoubleStorage", "float64", 8, true},
    [FZ_DT_F32] = {"F32", "FloatStorage", "float32", 4, true},
    [FZ_DT_F16] = {"F16", "HalfStorage", "float16", 2, true},
    [FZ_DT_BF16] = {"BF16", "BFloat16Storage", "bfloat16", 2, true},
    [FZ_DT_I64] = {"I64", "LongStorage", "int64", 8, false},
    [FZ_DT_I32] = {"I32", "IntStorage", "int32", 4, false},
    [FZ_DT_I16] = {"I16", "ShortStorage", "int16", 2, false},
    [FZ_DT_I8] = {"I8", "CharStorage", "int8", 1, false},
    [FZ_DT_U8] = {"U8", "ByteStorage", "uint8", 1, false},
    [FZ_DT_BOOL] = {"BOOL", "BoolStorage", "bool", 1, false},
    [FZ_DT_F8_E4M3] = {"F8_E4M3", NULL, "float8_e4m3fn", 1, true},
    [FZ_DT_F8_E5M2] = {"F8_E5M2", NULL, "float8_e5m2", 1, true},
};

size_t fz_dtype_size(fz_dtype dt)
{
    return (unsigned)dt < FZ_DT_COUNT ? fz_dt[dt].size : 0;
}

bool fz_dtype_is_float(fz_dtype dt)
{
    return (unsigned)dt < FZ_DT_COUNT && fz_dt[dt].is_float;
}

const char *fz_dtype_st_name(fz_dtype dt)
{
    return (unsigned)dt < FZ_DT_COUNT ? fz_dt[dt].st : "?";
}

const char *fz_dtype_storage_name(fz_dtype dt)
{
    return (unsigned)dt < FZ_DT_COUNT ? fz_dt[dt].storage : NULL;
}

const char *fz_dtype_torch_name(fz_dtype dt)
{
    return (unsigned)dt < FZ_DT_COUNT ? fz_dt[dt].torch : "?";
}

int fz_dtype_from_st_name(const char *s, fz_dtype *out)
{
    for (int i = 0; i < FZ_DT_COUNT; i++)
        if (strcmp(s, fz_dt[i].st) == 0) {
            *out = (fz_dtype)i;
            return 0;
        }
    return FZ_ENOTFOUND;
}

int fz_dtype_from_storage_name(const char *s, fz_dtype *out)
{
    for (int i = 0; i < FZ_DT_COUNT; i++)
        if (fz_dt[i].storage && strcmp(s, fz_dt[i].storage) == 0) {
            *out = (fz_dtype)i;
            return 0;
        }
    return FZ_ENOTFOUND;
}

int fz_dtype_from_torch_name(const char *s, fz_dtype *out)
{
    static const struct {
        const char *alias;
        fz_dtype dt;
    } aliases[] = {{"float", FZ_DT_F32}, {"half", FZ_DT_F16}, {"double", FZ_DT_F64},
                   {"long", FZ_DT_I64},  {"int", FZ_DT_I32},  {"short", FZ_DT_I16}};
    for (int i = 0; i < FZ_DT_COUNT; i++)
        if (strcmp(s, fz_dt[i].torch) == 0) {
            *out = (fz_dtype)i;
            return 0;
        }
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(s, aliases[i].alias) == 0) {
            *out = aliases[i].dt;
            return 0;
        }
    return FZ_ENOTFOUND;
}

int fz_tensor_list_push(fz_tensor_list *l, const fz_tensor *t)
{
    int rc = FZ_VEC_RESERVE(l->v, l->cap, l->n + 1);
    if (rc)
        return rc;
    l->v[l->n++] = *t;
    return 0;
}

int fz_tensor_list_append(fz_tensor_list *dst, fz_tensor_list *src)
{
    if (dst->n == 0) { /* take src's array as it is: no copy, no second array */
        fz_tensor_list empty = *dst;
        *dst = *src;
        *src = empty;
        return 0;
    }
    if (src->n > SIZE_MAX - dst->n)
        return fz_error_set(FZ_ENOMEM, "out of memory");
    int rc = FZ_VEC_RESERVE(dst->v, dst->cap, dst->n + src->n);
    if (rc)
        return rc;
    if (src->n)
        memcpy(dst->v + dst->n, src->v, src->n * sizeof *src->v);
    dst->n += src->n;
    src->n = 0; /* the names now belong to dst */
    return 0;
}

void fz_tensor_list_free(fz_tensor_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].name);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

bool fz_tensor_numel(const fz_tensor *t, uint64_t *out)
{
    return fz_prod_u64(t->shape, t->ndim, out);
}

bool fz_tensor_is_contiguous(const fz_tensor *t)
{
    uint64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] == 1)
            continue;
        if (t->stride[i] < 0 || (uint64_t)t->stride[i] != expect)
            return false;
        if (!fz_mul_u64(expect, t->shape[i], &expect) || expect > INT64_MAX)
            return false;
    }
    return true;
}

int fz_tensor_check_shape(const char *path, const char *name, fz_dtype dtype, int ndim,
                          const uint64_t *shape)
{
    uint64_t extent = fz_dtype_size(dtype);
    if (ndim < 0 || ndim > FZ_MAX_DIMS)
        return fz_error_set(FZ_EFORMAT, "%s: tensor '%s' has %d dimensions", path, name, ndim);
    for (int i = 0; i < ndim; i++)
        if (!fz_mul_u64(extent, shape[i] ? shape[i] : 1, &extent) || extent > INT64_MAX) {
            char dims[FZ_MAX_DIMS * 22 + 3];
            size_t o = 0;
            for (int d = 0; d < ndim; d++)
                o += (size_t)snprintf(dims + o, sizeof dims - o, "%s%llu", d ? ", " : "",
                                      (unsigned long long)shape[d]);
            return fz_error_set(FZ_ERANGE,
                                "%s: tensor '%s' shape (%s) overflows int64 (its "
                                "strides cannot be computed, even when it holds no element): the "
                                "file is corrupt",
                                path, name, dims);
        }
    return 0;
}

int fz_tensor_check_bounds(const fz_tensor *t, const char *path)
{
    uint64_t numel, es = fz_dtype_size(t->dtype), nel_storage;
    int rc = fz_tensor_check_shape(path, t->name, t->dtype, t->ndim, t->shape);
    if (rc)
        return rc;
    if (!fz_tensor_numel(t, &numel))
        return fz_error_set(FZ_ERANGE, "%s: tensor '%s' element count overflows", path, t->name);
    if (es == 0 || t->storage_nbytes % es)
        return fz_error_set(FZ_EFORMAT,
                            "%s: tensor '%s' storage size %llu is not a multiple of %zu", path,
                            t->name, (unsigned long long)t->storage_nbytes, (size_t)es);
    nel_storage = t->storage_nbytes / es;
    if (numel == 0)
        return t->storage_offset <= nel_storage
                   ? 0
                   : fz_error_set(FZ_ERANGE, "%s: tensor '%s' offset is past its storage", path,
                                  t->name);
    /* Largest element index addressed: offset + sum((shape-1)*stride), strides >= 0. */
    uint64_t last = t->storage_offset;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t step;
        if (t->stride[i] < 0)
            return fz_error_set(FZ_EFORMAT, "%s: tensor '%s' has a negative stride", path, t->name);
        if (!fz_mul_u64(t->shape[i] - 1, (uint64_t)t->stride[i], &step) ||
            !fz_add_u64(last, step, &last))
            return fz_error_set(FZ_ERANGE, "%s: tensor '%s' extent overflows", path, t->name);
    }
    if (last >= nel_storage)
        return fz_error_set(FZ_ERANGE,
                            "%s: tensor '%s' reaches element %llu but its storage holds %llu", path,
                            t->name, (unsigned long long)last, (unsigned long long)nel_storage);
    return 0;
}
