/* Fuzz target: torch .bin / .pt checkpoints (formats/torchbin.c: zip +
 * pickle) read from an in-memory file.
 *
 * Promises checked: on success every tensor addresses only bytes of its own
 * storage record, the record lies inside the file, names are unique, and
 * tensors with the same storage_id agree on the record; on failure the
 * output list is untouched. */
#include "fuzz_common.h"

#include "formats/torchbin.h"
#include "util/checked.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_tensor_list l = {0};
    fz_fuzz_quiet();
    fz_error_clear();
    int fd = fz_fuzz_memfile(data, size);
    int rc = fz_torchbin_read(fd, "pytorch_model.bin", &l);
    if (rc) {
        fz_fuzz_check_error(rc);
        FZ_FUZZ_CHECK(l.n == 0, "a failed read left %zu tensors", l.n);
        fz_tensor_list_free(&l);
        return 0;
    }
    for (size_t i = 0; i < l.n; i++) {
        const fz_tensor *t = &l.v[i];
        uint64_t end;
        FZ_FUZZ_CHECK(fz_tensor_check_bounds(t, "again") == 0, "tensor '%s': %s", t->name,
                      fz_error_msg());
        FZ_FUZZ_CHECK(fz_add_u64(t->data_offset, t->storage_nbytes, &end) && end <= size,
                      "tensor '%s': storage [%llu, +%llu) outside the %zu-byte file", t->name,
                      (unsigned long long)t->data_offset, (unsigned long long)t->storage_nbytes,
                      size);
        for (size_t j = 0; j < i; j++) {
            FZ_FUZZ_CHECK(strcmp(t->name, l.v[j].name), "tensor '%s' twice", t->name);
            if (t->storage_id == l.v[j].storage_id)
                FZ_FUZZ_CHECK(t->data_offset == l.v[j].data_offset &&
                                  t->storage_nbytes == l.v[j].storage_nbytes,
                              "tensors '%s' and '%s' share storage %u but not its bytes",
                              t->name, l.v[j].name, t->storage_id);
        }
    }
    fz_tensor_list_free(&l);
    return 0;
}
