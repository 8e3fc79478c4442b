/* Fuzz target: the zip central directory reader (formats/zip.c) on a file.
 *
 * Promises checked: every entry has a non-empty name without NUL, its data
 * lies inside the file, and fz_zip_find finds each name. */
#include "fuzz_common.h"

#include "formats/zip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_zip_dir d;
    fz_fuzz_quiet();
    fz_error_clear();
    int fd = fz_fuzz_memfile(data, size);
    int rc = fz_zip_read_dir(fd, "fuzz.zip", size, &d);
    if (rc) {
        fz_fuzz_check_error(rc);
        FZ_FUZZ_CHECK(d.n == 0 && d.v == NULL, "a failed read left %zu entries", d.n);
        return 0;
    }
    for (size_t i = 0; i < d.n; i++) {
        const fz_zip_entry *e = &d.v[i];
        FZ_FUZZ_CHECK(e->name && e->name[0], "entry %zu has no name", i);
        FZ_FUZZ_CHECK(e->data_offset <= size && e->size <= size - e->data_offset,
                      "entry '%s' [%llu, +%llu) lies outside the %zu-byte file", e->name,
                      (unsigned long long)e->data_offset, (unsigned long long)e->size, size);
        const fz_zip_entry *f = fz_zip_find(&d, e->name);
        FZ_FUZZ_CHECK(f && !strcmp(f->name, e->name), "fz_zip_find misses '%s'", e->name);
    }
    fz_zip_dir_free(&d);
    return 0;
}
