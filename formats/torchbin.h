/* torch.save zip checkpoints (.bin / .pt): read the tensor table of a state
 * dict, and lay out a new archive for writing.
 *
 * Reading parses the zip central directory (zip.h) and runs data.pkl through
 * the restricted pickle machine (pickle.h); no tensor data is read.
 * Writing is split so the view can serve the archive lazily: the layout
 * (every record's offset, every header's length, the total size) is known
 * up front; header bytes that hold a CRC-32 are produced once the CRCs are.
 * Thread-safety: none needed; functions share no state. */
#ifndef FZ_FORMATS_TORCHBIN_H
#define FZ_FORMATS_TORCHBIN_H

#include "formats/tensor.h"
#include "formats/zip.h"
#include "util/buf.h"

/* Read the state dict of the torch zip file open on `fd` (`path` is only used
 * in messages). Tensors are appended to *out in pickle order, with absolute
 * data offsets; tensors sharing a storage record get the same storage_id.
 * Errors: FZ_EIO, FZ_EFORMAT (not a zip, compressed record, bad pickle...),
 * FZ_EDENIED (disallowed pickle global, named), FZ_ERANGE (out-of-bounds
 * offsets/sizes). On error *out holds nothing new. */
int fz_torchbin_read(int fd, const char *path, fz_tensor_list *out);
/* fz_torchbin_read, and on success *stem (malloc'd): the directory every
 * record of the archive is under ("<stem>/data.pkl", ...), which torch.save
 * names after the file. */
int fz_torchbin_read_stem(int fd, const char *path, fz_tensor_list *out, char **stem);

/* One tensor to write: a contiguous view (offset 0) of storage record
 * `record`. Tied tensors name the same record. */
typedef struct {
    const char *name;
    fz_dtype dtype;
    int ndim;
    const uint64_t *shape;
    uint32_t record;
} fz_torchbin_entry;

/* Serialise the pickle (protocol 2, OrderedDict of _rebuild_tensor_v2 /
 * _rebuild_tensor_v3 calls; FORMATS.md §3) for `n` entries whose records hold
 * `record_nbytes[r]` bytes each. Appends to *out. 0 or FZ_ENOMEM/FZ_EINVAL. */
int fz_torchbin_pickle(const fz_torchbin_entry *e, size_t n, const uint64_t *record_nbytes,
                       size_t nrecords, fz_buf *out);

/* Lay out a torch archive named `stem` (file name without .bin): records
 * <stem>/data.pkl (pkl_len bytes), <stem>/byteorder, <stem>/data/0..K-1
 * (record_nbytes[k]), <stem>/version, in that order, each data start 64-byte
 * aligned. On success *L owns its memory (fz_zipw_free). Record indices in
 * *L: 0 = data.pkl, 1 = byteorder, 2+k = data/k, K+2 = version. */
int fz_torchbin_layout(fz_zipw_layout *L, const char *stem, uint64_t pkl_len,
                       const uint64_t *record_nbytes, size_t nrecords);

/* What record i of a layout made by fz_torchbin_layout (with `nrecords`
 * storage records) holds; for FZ_TB_DATA, *data = the storage index k. */
typedef enum { FZ_TB_PICKLE, FZ_TB_BYTEORDER, FZ_TB_DATA, FZ_TB_VERSION } fz_torchbin_role;
fz_torchbin_role fz_torchbin_record_role(size_t i, size_t nrecords, size_t *data);

/* The exact bytes of the byteorder and version records. */
extern const uint8_t fz_torchbin_byteorder[6]; /* "little" */
extern const uint8_t fz_torchbin_version[2];   /* "3\n" */

#endif
