/* The restricted pickle machine for torch state dicts (data.pkl), and the
 * matching writer.
 *
 * The reader executes nothing: it understands the opcodes torch.save emits
 * (protocols 2-5), allows only the globals a state dict needs (OrderedDict,
 * the tensor/parameter rebuild functions, torch storage classes, torch
 * dtypes, torch.Size) and applies them symbolically, producing a table of
 * tensor descriptors. Every length, memo index and stack depth is checked
 * against the input and fixed limits; no recursion depends on the input.
 * The writer emits protocol 2 that torch.load(weights_only=True) accepts.
 * Thread-safety: none needed; functions share no state. */
#ifndef FZ_FORMATS_PICKLE_H
#define FZ_FORMATS_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "formats/tensor.h"
#include "util/buf.h"

/* One entry of a flat state dict: name -> view of a storage record. */
typedef struct {
    char *name;              /* owned by the table (reader); borrowed (writer) */
    char *key;               /* storage key, the record is data/<key>; same ownership */
    fz_dtype dtype;          /* element type of the tensor */
    uint64_t storage_nbytes; /* size of the whole storage in bytes */
    uint64_t storage_offset; /* in elements of dtype */
    int ndim;                /* 0..FZ_MAX_DIMS */
    uint64_t shape[FZ_MAX_DIMS];
    int64_t stride[FZ_MAX_DIMS]; /* in elements */
} fz_pickle_tensor;

typedef struct {
    fz_pickle_tensor *v;
    size_t n;
} fz_pickle_dict;

/* Run the pickle `data[0..len)` and return its flat state dict in pickle
 * order. `path` is used only in messages. The top-level object must be a dict
 * (or OrderedDict) of str -> tensor; names are unique.
 * Errors: FZ_EFORMAT (truncated, unknown opcode, bad memo index, wrong types,
 * nested or non-tensor values: "not a flat state dict"), FZ_EDENIED (a global
 * outside the allowlist; the message names it, e.g. "pickle global
 * 'os.system' is not allowed"), FZ_ERANGE (a limit exceeded or an integer
 * that does not fit), FZ_ENOMEM. On success the caller frees *out with
 * fz_pickle_dict_free; on error *out is empty. */
int fz_pickle_read_state_dict(const uint8_t *data, size_t len, const char *path,
                              fz_pickle_dict *out);
void fz_pickle_dict_free(fz_pickle_dict *d);

/* Append to *out a protocol-2 pickle of an OrderedDict name -> tensor, in
 * the order given, as torch.save writes it: _rebuild_tensor_v2 with persistent
 * id ('storage', torch.<X>Storage, key, 'cpu', numel), or for float8
 * _rebuild_tensor_v3 with torch.UntypedStorage (numel in bytes) and the dtype.
 * storage_nbytes must be a multiple of the element size; shape and stride
 * are written as given. The caller keeps ownership of `t`. Errors: FZ_EINVAL
 * (bad dtype, ndim, or storage size), FZ_ENOMEM. */
int fz_pickle_write_state_dict(const fz_pickle_tensor *t, size_t n, fz_buf *out);

#endif
