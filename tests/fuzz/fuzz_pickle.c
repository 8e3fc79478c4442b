/* Fuzz target: the restricted pickle machine (formats/pickle.c,
 * pickle_torch.c) on a data.pkl.
 *
 * Promises checked: a state dict read from any bytes has names and storage
 * keys without NUL, unique names, ranks within FZ_MAX_DIMS and storage sizes
 * that are a multiple of the element size; written back by the project's own
 * pickle writer and read again it is the same table, entry for entry. */
#include "fuzz_common.h"

#include "formats/pickle.h"

static void same_tensor(const fz_pickle_tensor *a, const fz_pickle_tensor *b)
{
    FZ_FUZZ_CHECK(!strcmp(a->name, b->name), "name '%s' became '%s'", a->name, b->name);
    FZ_FUZZ_CHECK(!strcmp(a->key, b->key), "key of '%s' changed", a->name);
    FZ_FUZZ_CHECK(a->dtype == b->dtype, "dtype of '%s' changed", a->name);
    FZ_FUZZ_CHECK(a->storage_nbytes == b->storage_nbytes, "storage size of '%s' changed", a->name);
    FZ_FUZZ_CHECK(a->storage_offset == b->storage_offset, "offset of '%s' changed", a->name);
    FZ_FUZZ_CHECK(a->ndim == b->ndim, "rank of '%s' changed", a->name);
    for (int d = 0; d < a->ndim; d++) {
        FZ_FUZZ_CHECK(a->shape[d] == b->shape[d], "shape of '%s' changed", a->name);
        FZ_FUZZ_CHECK(a->stride[d] == b->stride[d], "stride of '%s' changed", a->name);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_pickle_dict d, again;
    fz_buf out = FZ_BUF_INIT;
    fz_fuzz_quiet();
    fz_error_clear();
    int rc = fz_pickle_read_state_dict(data, size, "data.pkl", &d);
    if (rc) {
        fz_fuzz_check_error(rc);
        FZ_FUZZ_CHECK(d.n == 0 && d.v == NULL, "a failed read left %zu entries", d.n);
        return 0;
    }
    for (size_t i = 0; i < d.n; i++) {
        const fz_pickle_tensor *t = &d.v[i];
        size_t es = fz_dtype_size(t->dtype);
        FZ_FUZZ_CHECK(es > 0, "tensor '%s' has no dtype", t->name);
        FZ_FUZZ_CHECK(t->ndim >= 0 && t->ndim <= FZ_MAX_DIMS, "rank %d", t->ndim);
        FZ_FUZZ_CHECK(t->key[0] != '\0', "tensor '%s' has an empty storage key", t->name);
        for (size_t j = 0; j < i; j++)
            FZ_FUZZ_CHECK(strcmp(t->name, d.v[j].name), "tensor '%s' twice", t->name);
    }
    rc = fz_pickle_write_state_dict(d.v, d.n, &out);
    if (rc == 0) {
        rc = fz_pickle_read_state_dict(out.data, out.len, "rewritten.pkl", &again);
        FZ_FUZZ_CHECK(rc == 0, "the rewritten pickle does not read back: %s", fz_error_msg());
        FZ_FUZZ_CHECK(again.n == d.n, "%zu entries became %zu", d.n, again.n);
        for (size_t i = 0; i < d.n; i++)
            same_tensor(&d.v[i], &again.v[i]);
        fz_pickle_dict_free(&again);
    } else {
        /* The writer refuses what torch could not have written (an untyped
         * storage whose size is not a multiple of the tensor's dtype). */
        FZ_FUZZ_CHECK(rc == FZ_EINVAL, "writer failed with %d: %s", rc, fz_error_msg());
    }
    fz_buf_free(&out);
    fz_pickle_dict_free(&d);
    return 0;
}
