/* Tensor recipes: gather, resize with row rules, cast, and arbitrary byte
 * ranges. The "source" is a raw little-endian storage written to a temp
 * file: the recipe only ever sees (fd, offset, strides), never a container. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "transform/cast.h"
#include "transform/recipe.h"
#include "util/error.h"

/* A temp file holding `n` floats 0.5*i + 1 behind a 16-byte prefix. */
static int make_storage(size_t n, float *vals)
{
    char path[] = "/tmp/fz_test_recipe_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    uint8_t prefix[16] = {0};
    assert_int_equal(write(fd, prefix, 16), 16);
    for (size_t i = 0; i < n; i++)
        vals[i] = 0.5f * (float)i + 1.0f;
    assert_int_equal(write(fd, vals, n * sizeof *vals), (ssize_t)(n * sizeof *vals));
    return fd;
}

static fz_tensor tensor2d(uint64_t r, uint64_t c, int64_t s0, int64_t s1, uint64_t off,
                          uint64_t storage_elems)
{
    fz_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "w";
    t.dtype = FZ_DT_F32;
    t.ndim = 2;
    t.shape[0] = r;
    t.shape[1] = c;
    t.stride[0] = s0;
    t.stride[1] = s1;
    t.storage_offset = off;
    t.data_offset = 16;
    t.storage_nbytes = storage_elems * 4;
    return t;
}

static void test_plain_is_span(void **state)
{
    (void)state;
    float v[12];
    int fd = make_storage(12, v);
    fz_tensor t = tensor2d(3, 4, 4, 1, 0, 12);
    fz_recipe r;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F32, 3, NULL, 0), 0);
    uint64_t off;
    assert_true(fz_recipe_is_span(&r, &off));
    assert_int_equal(off, 16);
    fz_recipe_free(&r);
    close(fd);
}

static void test_transpose_gather(void **state)
{
    (void)state;
    float v[12], out[12];
    int fd = make_storage(12, v);
    /* storage is 3x4 row-major; the tensor is its transpose, 4x3. */
    fz_tensor t = tensor2d(4, 3, 1, 4, 0, 12);
    fz_recipe r;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F32, 4, NULL, 0), 0);
    assert_false(fz_recipe_is_span(&r, NULL));
    assert_int_equal(r.nbytes, 48);
    assert_int_equal(fz_recipe_produce(&r, 0, 48, (uint8_t *)out), 0);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            assert_true(out[i * 3 + j] == v[j * 4 + i]);
    fz_recipe_free(&r);
    close(fd);
}

static void test_partial_view_offset(void **state)
{
    (void)state;
    float v[20], out[6];
    int fd = make_storage(20, v);
    /* rows 1..2 of a 5x4 storage, columns 1..3: offset 5, shape 2x3, stride (4,1) */
    fz_tensor t = tensor2d(2, 3, 4, 1, 5, 20);
    fz_recipe r;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F32, 2, NULL, 0), 0);
    assert_true(r.gather);
    assert_int_equal(fz_recipe_produce(&r, 0, 24, (uint8_t *)out), 0);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            assert_true(out[i * 3 + j] == v[5 + i * 4 + j]);
    fz_recipe_free(&r);
    close(fd);
}

static void test_cast_any_range(void **state)
{
    (void)state;
    float v[64];
    uint8_t whole[128], part[128];
    int fd = make_storage(64, v);
    fz_tensor t = tensor2d(8, 8, 8, 1, 0, 64);
    fz_recipe r;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_BF16, 8, NULL, 0), 0);
    assert_int_equal(r.nbytes, 128);
    assert_int_equal(fz_recipe_produce(&r, 0, 128, whole), 0);
    for (int i = 0; i < 64; i++) {
        uint16_t h;
        memcpy(&h, whole + 2 * i, 2);
        assert_int_equal(h, fz_f32_to_bf16(v[i]));
    }
    /* Every odd start and length must give the same bytes as the whole. */
    for (uint64_t off = 0; off < 128; off += 7)
        for (uint64_t len = 1; off + len <= 128; len += 5) {
            memset(part, 0xAA, sizeof part);
            assert_int_equal(fz_recipe_produce(&r, off, len, part), 0);
            assert_memory_equal(part, whole + off, len);
        }
    assert_int_not_equal(fz_recipe_produce(&r, 120, 9, part), 0);
    fz_recipe_free(&r);
    close(fd);
}

static void test_resize_rules(void **state)
{
    (void)state;
    float v[12], out[24];
    int fd = make_storage(12, v);
    fz_tensor t = tensor2d(4, 3, 3, 1, 0, 12);
    fz_row_init rules[] = {{4, FZ_INIT_ZERO, 0, false}, {1, FZ_INIT_COPY, 3, false}};
    fz_recipe r;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F32, 8, rules, 2), 0);
    assert_int_equal(r.nbytes, 8 * 3 * 4);
    assert_int_equal(fz_recipe_produce(&r, 0, r.nbytes, (uint8_t *)out), 0);
    for (int j = 0; j < 3; j++) {
        double mean = (v[j] + v[3 + j] + v[6 + j] + v[9 + j]) / 4.0;
        assert_true(out[0 * 3 + j] == v[j]);
        assert_true(out[1 * 3 + j] == v[9 + j]); /* copy of row 3 */
        assert_true(out[2 * 3 + j] == v[6 + j]);
        assert_true(out[3 * 3 + j] == v[9 + j]);
        assert_true(out[4 * 3 + j] == 0.0f);
        for (int row = 5; row < 8; row++)
            assert_true(out[row * 3 + j] == (float)mean);
    }
    fz_recipe_free(&r);
    close(fd);
}

static void test_resize_shrink_and_bias(void **state)
{
    (void)state;
    float v[6], out[4];
    int fd = make_storage(6, v);
    fz_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "lm_head.bias";
    t.dtype = FZ_DT_F32;
    t.ndim = 1;
    t.shape[0] = 6;
    t.stride[0] = 1;
    t.data_offset = 16;
    t.storage_nbytes = 24;
    fz_recipe r;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F32, 4, NULL, 0), 0);
    assert_int_equal(fz_recipe_produce(&r, 0, 16, (uint8_t *)out), 0);
    assert_memory_equal(out, v, 16);
    fz_recipe_free(&r);
    close(fd);
}

static void test_bad_rules(void **state)
{
    (void)state;
    float v[12];
    int fd = make_storage(12, v);
    fz_tensor t = tensor2d(4, 3, 3, 1, 0, 12);
    fz_row_init bad_src[] = {{4, FZ_INIT_COPY, 9, false}};
    fz_row_init bad_row[] = {{9, FZ_INIT_ZERO, 0, false}};
    fz_recipe r;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F32, 6, bad_src, 1), FZ_EINVAL);
    assert_non_null(strstr(fz_error_msg(), "out of range"));
    fz_recipe_free(&r);
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F32, 6, bad_row, 1), FZ_EINVAL);
    fz_recipe_free(&r);
    t.dtype = FZ_DT_I32;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_I32, 6, NULL, 0), FZ_EINVAL);
    fz_recipe_free(&r);
    close(fd);
}

static void test_source_vanished(void **state)
{
    (void)state;
    float v[12];
    uint8_t out[48];
    int fd = make_storage(12, v);
    fz_tensor t = tensor2d(3, 4, 4, 1, 0, 12);
    fz_recipe r;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F16, 3, NULL, 0), 0);
    assert_int_equal(ftruncate(fd, 20), 0);
    assert_int_equal(fz_recipe_produce(&r, 0, 24, out), FZ_EIO);
    assert_non_null(strstr(fz_error_msg(), "mem"));
    fz_recipe_free(&r);
    close(fd);
}

/* The mean row, needed by many threads at once: computed once (no lock held
 * while it is), the same bytes for every reader; a failed computation
 * (source truncated) wakes the waiters, each of which then fails too. */
#define MEAN_ROWS 2000
#define MEAN_COLS 64
#define MEAN_THREADS 8

typedef struct {
    fz_recipe *r;
    int rc;
    float row[MEAN_COLS];
} mean_job;

static void *mean_worker(void *arg)
{
    mean_job *j = arg;
    j->rc = fz_recipe_produce(j->r, (uint64_t)MEAN_ROWS * MEAN_COLS * 4, MEAN_COLS * 4,
                              (uint8_t *)j->row);
    return NULL;
}

static void run_mean_threads(fz_recipe *r, mean_job *jobs)
{
    pthread_t th[MEAN_THREADS];
    for (int i = 0; i < MEAN_THREADS; i++) {
        jobs[i].r = r;
        assert_int_equal(pthread_create(&th[i], NULL, mean_worker, &jobs[i]), 0);
    }
    for (int i = 0; i < MEAN_THREADS; i++)
        pthread_join(th[i], NULL);
}

static void test_mean_concurrent(void **state)
{
    (void)state;
    static float v[MEAN_ROWS * MEAN_COLS];
    static mean_job jobs[MEAN_THREADS];
    int fd = make_storage(MEAN_ROWS * MEAN_COLS, v);
    fz_tensor t = tensor2d(MEAN_ROWS, MEAN_COLS, MEAN_COLS, 1, 0, MEAN_ROWS * MEAN_COLS);
    fz_recipe r;
    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F32, MEAN_ROWS + 1, NULL, 0), 0);
    run_mean_threads(&r, jobs);
    for (int c = 0; c < MEAN_COLS; c++) {
        double sum = 0;
        for (int i = 0; i < MEAN_ROWS; i++)
            sum += v[i * MEAN_COLS + c];
        float want = (float)(sum / MEAN_ROWS);
        for (int k = 0; k < MEAN_THREADS; k++) {
            assert_int_equal(jobs[k].rc, 0);
            assert_memory_equal(&jobs[k].row[c], &want, sizeof want);
        }
    }
    fz_recipe_free(&r);

    assert_int_equal(fz_recipe_init(&r, fd, "mem", &t, FZ_DT_F32, MEAN_ROWS + 1, NULL, 0), 0);
    assert_int_equal(ftruncate(fd, 4096), 0);
    run_mean_threads(&r, jobs);
    for (int k = 0; k < MEAN_THREADS; k++)
        assert_int_equal(jobs[k].rc, FZ_EIO);
    fz_recipe_free(&r);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_is_span),       cmocka_unit_test(test_transpose_gather),
        cmocka_unit_test(test_partial_view_offset), cmocka_unit_test(test_cast_any_range),
        cmocka_unit_test(test_resize_rules),        cmocka_unit_test(test_resize_shrink_and_bias),
        cmocka_unit_test(test_bad_rules),           cmocka_unit_test(test_source_vanished),
        cmocka_unit_test(test_mean_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
