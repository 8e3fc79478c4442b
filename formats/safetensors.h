/* safetensors: read a file's header into tensor descriptors, validated as
 * strictly as the reference reader; lay out a header for writing.
 * No tensor data is read. No shared state. */
#ifndef FZ_FORMATS_SAFETENSORS_H
#define FZ_FORMATS_SAFETENSORS_H

#include <stdbool.h>

#include "formats/tensor.h"
#include "util/buf.h"

/* Read the header of the safetensors file open on `fd` (size `file_size`).
 * Tensors are appended to *out in header order, contiguous, each with its
 * own storage_id. Errors name `path`: FZ_EFORMAT (bad JSON, unknown dtype,
 * gaps/overlaps, trailing bytes, header > 100 MB...), FZ_ERANGE, FZ_EIO. */
int fz_st_read(int fd, const char *path, uint64_t file_size, fz_tensor_list *out);

/* What fz_st_read_info also tells about the file, from the same parse. */
typedef struct {
    bool format_pt; /* no __metadata__ (or null), or one whose "format" is "pt":
                     * transformers loads the file as PyTorch weights */
} fz_st_info;

/* fz_st_read, and *info (when not NULL) on success. */
int fz_st_read_info(int fd, const char *path, uint64_t file_size, fz_tensor_list *out,
                    fz_st_info *info);

typedef struct {
    const char *name;
    fz_dtype dtype;
    int ndim;
    const uint64_t *shape;
} fz_st_entry;

/* Lay out a safetensors file for `n` tensors: tensors ordered as the
 * reference writer orders them (its dtype enum order reversed: I64, F64, F32,
 * I32, BF16, F16, ... then name), header
 * {"__metadata__":{"format":"pt"}, ...} padded with spaces to a multiple of
 * 8. Appends the 8-byte length + header to *hdr; fills order[j] = index of
 * the j-th tensor in the file and offset[i] = absolute file offset of tensor
 * i's data (both arrays of n, caller-allocated). */
int fz_st_layout(const fz_st_entry *e, size_t n, fz_buf *hdr, size_t *order, uint64_t *offset);

#endif
