/* Tensor metadata shared by every container reader and writer: the dtype
 * table (safetensors, torch storage and torch dtype names) and the tensor
 * descriptor a reader produces. Pure data; no I/O. Thread-safe (immutable). */
#ifndef FZ_FORMATS_TENSOR_H
#define FZ_FORMATS_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    FZ_DT_F64,
    FZ_DT_F32,
    FZ_DT_F16,
    FZ_DT_BF16,
    FZ_DT_I64,
    FZ_DT_I32,
    FZ_DT_I16,
    FZ_DT_I8,
    FZ_DT_U8,
    FZ_DT_BOOL,
    FZ_DT_F8_E4M3, /* torch.float8_e4m3fn, safetensors "F8_E4M3" */
    FZ_DT_F8_E5M2,
    FZ_DT_COUNT
} fz_dtype;

size_t fz_dtype_size(fz_dtype dt);
bool fz_dtype_is_float(fz_dtype dt);
/* safetensors name ("F32"); NULL-free for every valid dtype. */
const char *fz_dtype_st_name(fz_dtype dt);
/* torch storage class name ("FloatStorage"), NULL for dtypes torch pickles
 * through UntypedStorage + _rebuild_tensor_v3 (float8). */
const char *fz_dtype_storage_name(fz_dtype dt);
/* torch dtype attribute name ("float32", "bfloat16"). */
const char *fz_dtype_torch_name(fz_dtype dt);
/* Reverse lookups: 0 on success, FZ_ENOTFOUND (no message set) otherwise.
 * fz_dtype_from_torch_name also accepts the aliases float, half, double, long, int. */
int fz_dtype_from_st_name(const char *s, fz_dtype *out);
int fz_dtype_from_storage_name(const char *s, fz_dtype *out);
int fz_dtype_from_torch_name(const char *s, fz_dtype *out);

#define FZ_MAX_DIMS 8

/* One tensor as found in a source weight file. */
typedef struct {
    char *name; /* owned, NUL-terminated */
    fz_dtype dtype;
    int ndim; /* 0..FZ_MAX_DIMS */
    uint64_t shape[FZ_MAX_DIMS];
    int64_t stride[FZ_MAX_DIMS]; /* in elements (contiguous for safetensors) */
    uint64_t storage_offset;     /* in elements, from the start of the storage */
    uint64_t data_offset;        /* absolute file offset of the storage's first byte */
    uint64_t storage_nbytes;     /* size of the whole storage record in bytes */
    uint32_t storage_id;         /* tensors of one file with equal ids share a storage */
} fz_tensor;

typedef struct {
    fz_tensor *v;
    size_t n, cap;
} fz_tensor_list;

/* Append a copy of *t (taking ownership of t->name). 0 or FZ_ENOMEM. */
int fz_tensor_list_push(fz_tensor_list *l, const fz_tensor *t);
/* Move every tensor of *src to the end of *dst, all or nothing: 0 (src is
 * left empty, dst owns the names), or FZ_ENOMEM with both unchanged. A
 * reader collects a file's tensors in a list of its own and hands them over
 * with this, so a failed read leaves the caller's list as it was. */
int fz_tensor_list_append(fz_tensor_list *dst, fz_tensor_list *src);
void fz_tensor_list_free(fz_tensor_list *l);

/* Number of elements (false on overflow). */
bool fz_tensor_numel(const fz_tensor *t, uint64_t *out);
/* True when the tensor is C-contiguous (strides of size-1 dims ignored).
 * False when its extent overflows (fz_tensor_check_shape refuses those). */
bool fz_tensor_is_contiguous(const fz_tensor *t);
/* Check that a shape can be indexed at all: the product of its dimensions,
 * a zero dimension counted as 1, times the element size fits in int64 (what
 * torch itself can stride). An empty tensor is no exception: (0, 2^62, 4)
 * holds nothing but its strides overflow. Checked so that no later
 * computation on the dimensions can overflow. 0 or FZ_ERANGE naming `path`
 * and tensor `name`. */
int fz_tensor_check_shape(const char *path, const char *name, fz_dtype dtype, int ndim,
                          const uint64_t *shape);
/* Check the shape (above) and that every element the tensor addresses lies
 * inside its storage. Returns 0 or FZ_ERANGE/FZ_EFORMAT with a message naming
 * `path` and the tensor. */
int fz_tensor_check_bounds(const fz_tensor *t, const char *path);

#endif
