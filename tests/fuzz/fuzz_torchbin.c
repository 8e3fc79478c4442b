/* Fuzz target: torch .bin / .pt checkpoints (formats/torchbin.c: zip +
 * pickle) read from an in-memory file.
 *
 * Promises checked: on success every tensor addresses only bytes of its own
 * storage record, the record lies inside the file, names are unique, and
 * tensors with the same storage_id agree on the record; the tensors written
 * as fzfs writes a .bin (fz_torchbin_pickle + fz_torchbin_layout, one
 * contiguous record each, into a sparse file) read back with the same names,
 * dtypes, shapes and record offsets. On failure the output list is
 * untouched. */
#include "fuzz_common.h"

#include "formats/torchbin.h"
#include "util/checked.h"

/* Above this the rewritten (sparse) archive is not tried. */
#define MAX_REWRITE (64ull << 30)

static void put(int fd, const void *p, size_t n, uint64_t off)
{
    FZ_FUZZ_CHECK(n == 0 || pwrite(fd, p, n, (off_t)off) == (ssize_t)n, "pwrite");
}

static void round_trip(const fz_tensor_list *l)
{
    static int fd = -1;
    fz_torchbin_entry *e = calloc(l->n + 1, sizeof *e);
    uint64_t *nb = calloc(l->n + 1, sizeof *nb), total = 0;
    uint32_t *crcs = calloc(l->n + 3, sizeof *crcs);
    fz_buf pkl = FZ_BUF_INIT;
    fz_zipw_layout L;
    fz_tensor_list again = {0};
    FZ_FUZZ_CHECK(e && nb && crcs, "out of memory");
    for (size_t i = 0; i < l->n; i++) {
        const fz_tensor *t = &l->v[i];
        uint64_t numel;
        FZ_FUZZ_CHECK(fz_tensor_numel(t, &numel), "numel of '%s'", t->name);
        if (!fz_mul_u64(numel, fz_dtype_size(t->dtype), &nb[i]) ||
            !fz_add_u64(total, nb[i], &total) || total > MAX_REWRITE)
            goto done; /* a huge broadcast view: fine to read, too big to rewrite here */
        e[i] = (fz_torchbin_entry){t->name, t->dtype, t->ndim, t->shape, (uint32_t)i};
    }
    int rc = fz_torchbin_pickle(e, l->n, nb, l->n, &pkl);
    FZ_FUZZ_CHECK(rc == 0, "the tensors read do not pickle: %s", fz_error_msg());
    rc = fz_torchbin_layout(&L, "pytorch_model", pkl.len, nb, l->n);
    FZ_FUZZ_CHECK(rc == 0, "the tensors read do not lay out: %s", fz_error_msg());
    if (fd < 0)
        FZ_FUZZ_CHECK((fd = memfd_create("fzfs-fuzz-rewrite", MFD_CLOEXEC)) >= 0, "memfd_create");
    FZ_FUZZ_CHECK(ftruncate(fd, 0) == 0 && ftruncate(fd, (off_t)L.total_size) == 0, "ftruncate");
    uint8_t *buf = malloc(L.cd_len > 4096 ? L.cd_len : 4096);
    FZ_FUZZ_CHECK(buf, "out of memory");
    for (size_t i = 0; i < L.n; i++) {
        FZ_FUZZ_CHECK(L.rec[i].header_len <= 4096, "local header of %u bytes", L.rec[i].header_len);
        fz_zipw_local_header(&L, i, 0, buf);
        put(fd, buf, L.rec[i].header_len, L.rec[i].header_off);
    }
    put(fd, pkl.data, pkl.len, L.rec[0].data_off);
    put(fd, "little", 6, L.rec[1].data_off);
    put(fd, "3\n", 2, L.rec[L.n - 1].data_off);
    fz_zipw_central(&L, crcs, buf);
    put(fd, buf, L.cd_len, L.cd_off);
    free(buf);
    rc = fz_torchbin_read(fd, "rewritten.bin", &again);
    FZ_FUZZ_CHECK(rc == 0, "the rewritten archive does not read back: %s", fz_error_msg());
    FZ_FUZZ_CHECK(again.n == l->n, "%zu tensors became %zu", l->n, again.n);
    for (size_t i = 0; i < l->n; i++) {
        const fz_tensor *a = &l->v[i], *b = &again.v[i];
        FZ_FUZZ_CHECK(!strcmp(a->name, b->name), "'%s' in place of '%s'", b->name, a->name);
        FZ_FUZZ_CHECK(a->dtype == b->dtype && a->ndim == b->ndim, "'%s' changed type", a->name);
        FZ_FUZZ_CHECK(!memcmp(a->shape, b->shape, sizeof a->shape[0] * (size_t)a->ndim),
                      "'%s' changed shape", a->name);
        FZ_FUZZ_CHECK(b->storage_offset == 0 && b->storage_nbytes == nb[i] &&
                          b->data_offset == L.rec[2 + i].data_off,
                      "'%s' is not its own record", a->name);
    }
    fz_tensor_list_free(&again);
    fz_zipw_free(&L);
done:
    fz_buf_free(&pkl);
    free(crcs);
    free(nb);
    free(e);
}

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
                              "tensors '%s' and '%s' share storage %u but not its bytes", t->name,
                              l.v[j].name, t->storage_id);
        }
    }
    round_trip(&l);
    fz_tensor_list_free(&l);
    return 0;
}
