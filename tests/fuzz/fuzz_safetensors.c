/* Fuzz target: the safetensors header reader (formats/safetensors.c) on an
 * in-memory file.
 *
 * Promises checked: on success the tensors are contiguous, inside the file
 * and tile its data exactly; laid out again by the project's writer
 * (fz_st_layout) and read back, the same names, dtypes, shapes and offsets
 * come out. On failure the output list is untouched. */
#include "fuzz_common.h"

#include "formats/safetensors.h"
#include "util/checked.h"

static void round_trip(const fz_tensor_list *l)
{
    fz_st_entry *e = calloc(l->n + 1, sizeof *e);
    size_t *order = calloc(l->n + 1, sizeof *order);
    uint64_t *offset = calloc(l->n + 1, sizeof *offset), total = 0, nbytes;
    fz_buf file = FZ_BUF_INIT;
    fz_tensor_list again = {0};
    FZ_FUZZ_CHECK(e && order && offset, "out of memory");
    for (size_t i = 0; i < l->n; i++) {
        e[i] = (fz_st_entry){l->v[i].name, l->v[i].dtype, l->v[i].ndim, l->v[i].shape};
        FZ_FUZZ_CHECK(fz_add_u64(total, l->v[i].storage_nbytes, &total), "sizes overflow");
    }
    int rc = fz_st_layout(e, l->n, &file, order, offset);
    FZ_FUZZ_CHECK(rc == 0, "a header that reads does not lay out: %s", fz_error_msg());
    uint64_t data_start = file.len;
    FZ_FUZZ_CHECK(fz_buf_reserve(&file, total) == 0, "out of memory");
    memset(file.data + file.len, 0, total);
    file.len += total;
    int fd = fz_fuzz_memfile(file.data, file.len);
    rc = fz_st_read(fd, "rewritten.safetensors", file.len, &again);
    FZ_FUZZ_CHECK(rc == 0, "the rewritten file does not read back: %s", fz_error_msg());
    FZ_FUZZ_CHECK(again.n == l->n, "%zu tensors became %zu", l->n, again.n);
    for (size_t j = 0; j < l->n; j++) {
        const fz_tensor *a = &l->v[order[j]], *b = &again.v[j];
        FZ_FUZZ_CHECK(!strcmp(a->name, b->name), "'%s' in place of '%s'", b->name, a->name);
        FZ_FUZZ_CHECK(a->dtype == b->dtype && a->ndim == b->ndim, "'%s' changed type", a->name);
        FZ_FUZZ_CHECK(!memcmp(a->shape, b->shape, sizeof a->shape[0] * (size_t)a->ndim),
                      "'%s' changed shape", a->name);
        FZ_FUZZ_CHECK(b->data_offset == offset[order[j]] && b->data_offset >= data_start,
                      "'%s' is at %llu, the layout said %llu", a->name,
                      (unsigned long long)b->data_offset, (unsigned long long)offset[order[j]]);
        FZ_FUZZ_CHECK(fz_tensor_numel(b, &nbytes) &&
                          nbytes * fz_dtype_size(b->dtype) == b->storage_nbytes,
                      "'%s' size changed", a->name);
    }
    fz_tensor_list_free(&again);
    fz_buf_free(&file);
    free(offset);
    free(order);
    free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_tensor_list l = {0};
    fz_fuzz_quiet();
    fz_error_clear();
    int fd = fz_fuzz_memfile(data, size);
    int rc = fz_st_read(fd, "model.safetensors", size, &l);
    if (rc) {
        fz_fuzz_check_error(rc);
        FZ_FUZZ_CHECK(l.n == 0, "a failed read left %zu tensors", l.n);
        fz_tensor_list_free(&l);
        return 0;
    }
    uint64_t covered = 0, end;
    for (size_t i = 0; i < l.n; i++) {
        const fz_tensor *t = &l.v[i];
        uint64_t numel;
        FZ_FUZZ_CHECK(fz_tensor_numel(t, &numel), "tensor '%s' numel overflows", t->name);
        FZ_FUZZ_CHECK(numel == 0 || fz_tensor_is_contiguous(t), "tensor '%s' is not contiguous",
                      t->name);
        FZ_FUZZ_CHECK(fz_tensor_check_bounds(t, "again") == 0, "tensor '%s': %s", t->name,
                      fz_error_msg());
        FZ_FUZZ_CHECK(fz_add_u64(t->data_offset, t->storage_nbytes, &end) && end <= size,
                      "tensor '%s' lies outside the file", t->name);
        covered += t->storage_nbytes;
    }
    FZ_FUZZ_CHECK(l.n == 0 || covered <= size, "tensors cover %llu bytes of a %zu-byte file",
                  (unsigned long long)covered, size);
    round_trip(&l);
    fz_tensor_list_free(&l);
    return 0;
}
