/* Zip containers as torch uses them: every record STORED (no compression).
 *
 * Reader: finds the end-of-central-directory (and zip64 records), walks the
 * central directory and reads each local header to find where the data
 * really starts. Everything is bounds-checked against the file size.
 * Writer: computes a layout (offsets and header lengths known before any
 * data exists), then produces local headers and the central directory once
 * the CRC-32 of each record is known. No state is shared between calls. */
#ifndef FZ_FORMATS_ZIP_H
#define FZ_FORMATS_ZIP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *name;           /* owned */
    uint64_t data_offset; /* absolute file offset of the first data byte */
    uint64_t size;        /* stored size == uncompressed size */
    uint32_t crc32;       /* as recorded in the central directory */
} fz_zip_entry;

typedef struct {
    fz_zip_entry *v;
    size_t n;
} fz_zip_dir;

/* Read the central directory of the zip open on `fd` whose size is
 * `file_size`. Errors: FZ_EIO, FZ_EFORMAT (no EOCD, compressed or encrypted
 * record, bad signature), FZ_ERANGE (a record outside the file). Messages
 * name `path`. On success the caller frees with fz_zip_dir_free. */
int fz_zip_read_dir(int fd, const char *path, uint64_t file_size, fz_zip_dir *out);
void fz_zip_dir_free(fz_zip_dir *d);
/* Find an entry by exact name; NULL if absent. */
const fz_zip_entry *fz_zip_find(const fz_zip_dir *d, const char *name);

typedef struct {
    const char *name;    /* in the layout's names block */
    uint64_t size;       /* data bytes */
    uint64_t header_off; /* offset of the local header */
    uint32_t header_len; /* local header length incl. name and extra (alignment, zip64) */
    uint64_t data_off;   /* header_off + header_len; 64-byte aligned */
} fz_zipw_rec;

typedef struct {
    fz_zipw_rec *rec;
    char *names; /* owned: every record's name, one block */
    size_t n;
    uint64_t cd_off; /* central directory (+ zip64 EOCD + locator + EOCD) */
    uint64_t cd_len;
    uint64_t total_size; /* file size */
} fz_zipw_layout;

/* Compute the layout of records `names[i]` with `sizes[i]` bytes, in order,
 * data aligned to 64 bytes by an "FB" extra field. 0 or FZ_ENOMEM/FZ_ERANGE. */
int fz_zipw_layout_new(fz_zipw_layout *L, const char *const *names, const uint64_t *sizes,
                       size_t n);
void fz_zipw_free(fz_zipw_layout *L);
/* Write the local header of record i (rec[i].header_len bytes) into out. */
void fz_zipw_local_header(const fz_zipw_layout *L, size_t i, uint32_t crc, uint8_t *out);
/* Write the central directory and end records (cd_len bytes) into out. */
void fz_zipw_central(const fz_zipw_layout *L, const uint32_t *crcs, uint8_t *out);

#endif
