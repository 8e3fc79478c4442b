#include "transform/recipe.h"

#include <stdlib.h>
#include <string.h>

#include "transform/cast.h"
#include "util/checked.h"
#include "util/error.h"
#include "util/io.h"

/* Elements read from the source per pread when copying a contiguous run. */
#define FZ_RUN_ELEMS (1u << 18)
/* A strided run is read as one covering span when the span is at most this. */
#define FZ_GATHER_SPAN (8u << 20)

static uint64_t row_len_of(int ndim, const uint64_t *shape)
{
    uint64_t n = 1;
    for (int i = 1; i < ndim; i++)
        n *= shape[i];
    return n;
}

static int cmp_rule(const void *a, const void *b)
{
    const fz_row_init *x = a, *y = b;
    return x->row < y->row ? -1 : x->row > y->row;
}

static void memo_init(fz_recipe *r)
{
    pthread_mutex_init(&r->mean_lock, NULL);
    pthread_cond_init(&r->mean_cond, NULL);
    r->inited = true;
}

/* An empty recipe over tensor *src, read from fd. */
static void recipe_start(fz_recipe *r, int fd, const char *src_path, const fz_tensor *src)
{
    memset(r, 0, sizeof *r);
    r->fd = fd;
    r->src_path = src_path;
    r->src = *src;
}

int fz_recipe_init(fz_recipe *r, int fd, const char *src_path, const fz_tensor *src,
                   fz_dtype out_dtype, uint64_t out_rows, const fz_row_init *rules, size_t n_rules)
{
    recipe_start(r, fd, src_path, src);
    r->out_dtype = out_dtype;
    r->val_dtype = out_dtype;
    r->part = FZ_PART_PLAIN;
    r->ndim = src->ndim;
    memcpy(r->shape, src->shape, sizeof r->shape);
    r->cast = src->dtype != out_dtype;
    if (r->cast && !fz_cast_supported(src->dtype, out_dtype))
        return fz_error_set(FZ_EINVAL, "%s: tensor '%s': cannot cast %s to %s", src_path, src->name,
                            fz_dtype_torch_name(src->dtype), fz_dtype_torch_name(out_dtype));
    uint64_t src_rows = src->ndim ? src->shape[0] : 1;
    r->resize = out_rows != src_rows || n_rules > 0;
    if (r->resize) {
        if (src->ndim == 0)
            return fz_error_set(FZ_EINVAL, "%s: tensor '%s' is a scalar and cannot be resized",
                                src_path, src->name);
        if (!fz_dtype_is_float(out_dtype) || !fz_dtype_is_float(src->dtype))
            return fz_error_set(FZ_EINVAL,
                                "%s: tensor '%s' is not floating point and cannot be "
                                "resized",
                                src_path, src->name);
        r->shape[0] = out_rows;
        if (n_rules) {
            r->rules = malloc(n_rules * sizeof *rules);
            if (!r->rules)
                return fz_error_set(FZ_ENOMEM, "out of memory");
            memcpy(r->rules, rules, n_rules * sizeof *rules);
            qsort(r->rules, n_rules, sizeof *rules, cmp_rule);
            r->n_rules = n_rules;
            for (size_t i = 0; i < n_rules; i++) {
                if (r->rules[i].row >= out_rows ||
                    (r->rules[i].kind == FZ_INIT_COPY && r->rules[i].copy_from >= src_rows))
                    return fz_error_set(FZ_EINVAL,
                                        "%s: tensor '%s': row rule %llu -> %llu is out "
                                        "of range (%llu source rows, %llu output rows)",
                                        src_path, src->name, (unsigned long long)r->rules[i].row,
                                        (unsigned long long)r->rules[i].copy_from,
                                        (unsigned long long)src_rows, (unsigned long long)out_rows);
                if (i && r->rules[i].row == r->rules[i - 1].row)
                    return fz_error_set(FZ_EINVAL, "%s: tensor '%s': two rules for row %llu",
                                        src_path, src->name, (unsigned long long)r->rules[i].row);
            }
        }
    }
    r->gather = !fz_tensor_is_contiguous(src);
    uint64_t numel;
    if (!fz_prod_u64(r->shape, r->ndim, &numel) ||
        !fz_mul_u64(numel, fz_dtype_size(out_dtype), &r->nbytes))
        return fz_error_set(FZ_ERANGE, "%s: tensor '%s' output size overflows", src_path,
                            src->name);
    memo_init(r);
    return 0;
}

int fz_recipe_init_quant(fz_recipe *r, int fd, const char *src_path, const fz_tensor *src,
                         fz_dtype val_dtype, const fz_qscheme *q, fz_part part)
{
    recipe_start(r, fd, src_path, src);
    r->part = part;
    r->q = q;
    r->val_dtype = val_dtype;
    r->cast = src->dtype != val_dtype;
    r->gather = !fz_tensor_is_contiguous(src);
    if (src->ndim != 2 || !fz_dtype_is_float(src->dtype) || !fz_dtype_is_float(val_dtype) ||
        (r->cast && !fz_cast_supported(src->dtype, val_dtype)) || !src->shape[0] || !src->shape[1])
        return fz_error_set(FZ_EINVAL,
                            "%s: tensor '%s' cannot be quantized (needs a non-empty "
                            "2-D floating-point weight)",
                            src_path, src->name);
    uint64_t out = src->shape[0], in = src->shape[1], rb;
    r->ndim = 2;
    r->shape[0] = out;
    if (part == FZ_PART_QSCALE) {
        r->out_dtype = val_dtype;
        r->shape[1] = fz_quant_ngroups(q, in);
        rb = r->shape[1] * fz_dtype_size(val_dtype);
    } else {
        rb = fz_quant_row_bytes(q, in);
        r->out_dtype = q->fmt == FZ_QFMT_PACKED ? FZ_DT_I32
                       : q->fmt == FZ_QFMT_FP8  ? FZ_DT_F8_E4M3
                                                : FZ_DT_I8;
        r->shape[1] = rb / fz_dtype_size(r->out_dtype);
    }
    if (!fz_mul_u64(out, rb, &r->nbytes))
        return fz_error_set(FZ_ERANGE, "%s: tensor '%s' output size overflows", src_path,
                            src->name);
    memo_init(r);
    return 0;
}

int fz_recipe_init_const(fz_recipe *r, const char *name, fz_dtype dtype, int ndim,
                         const uint64_t *shape, uint8_t *data)
{
    memset(r, 0, sizeof *r);
    r->part = FZ_PART_CONST;
    r->const_data = data;
    r->fd = -1;
    r->src_path = name;
    r->src.name = (char *)name;
    r->src.dtype = dtype;
    r->out_dtype = r->val_dtype = dtype;
    r->ndim = ndim;
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        r->shape[i] = shape[i];
        numel *= shape[i];
    }
    r->nbytes = numel * fz_dtype_size(dtype);
    memo_init(r);
    return 0;
}

void fz_recipe_free(fz_recipe *r)
{
    free(r->rules);
    free(r->const_data);
    free(r->mean_row);
    if (r->inited) {
        pthread_mutex_destroy(&r->mean_lock);
        pthread_cond_destroy(&r->mean_cond);
    }
    memset(r, 0, sizeof *r);
}

bool fz_recipe_is_span(const fz_recipe *r, uint64_t *span_offset)
{
    if (r->part != FZ_PART_PLAIN || r->cast || r->resize || r->gather)
        return false;
    if (span_offset)
        *span_offset = r->src.data_offset + r->src.storage_offset * fz_dtype_size(r->src.dtype);
    return true;
}

/* Read `n` consecutive source elements starting at source element `idx`
 * (index into the storage) and write them cast to the output dtype. */
static int copy_run(fz_recipe *r, uint64_t idx, uint64_t n, uint8_t *out, uint8_t *scratch)
{
    size_t ses = fz_dtype_size(r->src.dtype), oes = fz_dtype_size(r->val_dtype);
    while (n > 0) {
        uint64_t k = n < FZ_RUN_ELEMS ? n : FZ_RUN_ELEMS;
        uint8_t *dst = r->cast ? scratch : out;
        int rc = fz_pread_full(r->fd, dst, (size_t)(k * ses), r->src.data_offset + idx * ses,
                               r->src_path);
        if (rc)
            return rc;
        if (r->cast)
            fz_cast(r->src.dtype, scratch, r->val_dtype, out, (size_t)k);
        idx += k;
        n -= k;
        out += k * oes;
    }
    return 0;
}

/* Copy `n` elements spaced `stride` apart starting at source element idx. */
static int copy_strided(fz_recipe *r, uint64_t idx, int64_t stride, uint64_t n, uint8_t *out,
                        uint8_t *scratch)
{
    size_t ses = fz_dtype_size(r->src.dtype), oes = fz_dtype_size(r->val_dtype);
    uint8_t one[8];
    uint64_t span = (n - 1) * (uint64_t)stride + 1;
    if (span * ses <= FZ_GATHER_SPAN) {
        uint8_t *buf = malloc((size_t)(span * ses));
        if (!buf)
            return fz_error_set(FZ_ENOMEM, "out of memory");
        int rc = fz_pread_full(r->fd, buf, (size_t)(span * ses), r->src.data_offset + idx * ses,
                               r->src_path);
        if (rc == 0) {
            for (uint64_t i = 0; i < n; i++) {
                const uint8_t *e = buf + i * (uint64_t)stride * ses;
                if (r->cast)
                    fz_cast(r->src.dtype, e, r->val_dtype, out + i * oes, 1);
                else
                    memcpy(out + i * oes, e, ses);
            }
        }
        free(buf);
        return rc;
    }
    (void)scratch;
    for (uint64_t i = 0; i < n; i++) {
        int rc = fz_pread_full(
            r->fd, one, ses, r->src.data_offset + (idx + i * (uint64_t)stride) * ses, r->src_path);
        if (rc)
            return rc;
        if (r->cast)
            fz_cast(r->src.dtype, one, r->val_dtype, out + i * oes, 1);
        else
            memcpy(out + i * oes, one, ses);
    }
    return 0;
}

/* Copy elements [c, c+n) of source row `sr` (dims 1.. flattened). */
static int copy_source_row(fz_recipe *r, uint64_t sr, uint64_t c, uint64_t n, uint8_t *out,
                           uint8_t *scratch)
{
    const fz_tensor *t = &r->src;
    size_t oes = fz_dtype_size(r->val_dtype);
    if (!r->gather) {
        uint64_t rl = row_len_of(t->ndim, t->shape);
        return copy_run(r, t->storage_offset + sr * rl + c, n, out, scratch);
    }
    /* Strided source: walk runs along the last dimension. */
    int nd = t->ndim;
    uint64_t idx[FZ_MAX_DIMS] = {0};
    uint64_t rem = c;
    for (int d = nd - 1; d >= 1; d--) {
        idx[d] = rem % t->shape[d];
        rem /= t->shape[d];
    }
    while (n > 0) {
        uint64_t base = t->storage_offset + (nd ? sr * (uint64_t)t->stride[0] : 0);
        for (int d = 1; d < nd; d++)
            base += idx[d] * (uint64_t)t->stride[d];
        uint64_t k = 1;
        int64_t st = 1;
        if (nd >= 2) {
            k = t->shape[nd - 1] - idx[nd - 1];
            st = t->stride[nd - 1];
        }
        if (k > n)
            k = n;
        int rc = (st == 1 || k == 1) ? copy_run(r, base, k, out, scratch)
                                     : copy_strided(r, base, st, k, out, scratch);
        if (rc)
            return rc;
        out += k * oes;
        n -= k;
        if (nd >= 2) {
            idx[nd - 1] += k;
            for (int d = nd - 1; d >= 2 && idx[d] == t->shape[d]; d--) {
                idx[d] = 0;
                idx[d - 1]++;
            }
        }
    }
    return 0;
}

/* Column mean over all source rows, in the output dtype: the values are
 * cast to the output dtype first (finalize casts the model, then resizes),
 * summed in double in row order, divided, rounded to float32 and cast. */
static int compute_mean(fz_recipe *r, uint8_t *scratch, uint8_t **mean_out)
{
    int rc = 0;
    uint64_t rows = r->src.shape[0], rl = row_len_of(r->ndim, r->shape);
    size_t oes = fz_dtype_size(r->out_dtype);
    double *sum = calloc(rl ? rl : 1, sizeof *sum);
    double *tmp = malloc((rl ? rl : 1) * sizeof *tmp);
    uint8_t *row = malloc((rl ? rl : 1) * oes);
    float *f = malloc((rl ? rl : 1) * sizeof *f);
    uint8_t *mean = calloc(rl ? rl : 1, oes);
    if (!sum || !tmp || !row || !f || !mean) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (uint64_t i = 0; i < rows; i++) {
        rc = copy_source_row(r, i, 0, rl, row, scratch);
        if (rc)
            goto done;
        fz_to_f64(r->out_dtype, row, tmp, (size_t)rl);
        for (uint64_t j = 0; j < rl; j++)
            sum[j] += tmp[j];
    }
    if (rows) {
        if (r->out_dtype == FZ_DT_F64) {
            for (uint64_t j = 0; j < rl; j++)
                sum[j] /= (double)rows;
            memcpy(mean, sum, rl * sizeof(double));
        } else {
            for (uint64_t j = 0; j < rl; j++)
                f[j] = (float)(sum[j] / (double)rows);
            fz_cast(FZ_DT_F32, f, r->out_dtype, mean, (size_t)rl);
        }
    }
done:
    if (rc)
        free(mean);
    else
        *mean_out = mean;
    free(sum);
    free(tmp);
    free(row);
    free(f);
    return rc;
}

/* The mean row, computed once: the first thread to need it computes it
 * with no lock held (it reads the whole source matrix) while later ones wait
 * on the condition; the result is published under the lock. A failed
 * computation publishes nothing and the next reader tries again. */
static int get_mean(fz_recipe *r, uint8_t *scratch)
{
    pthread_mutex_lock(&r->mean_lock);
    while (r->mean_busy)
        pthread_cond_wait(&r->mean_cond, &r->mean_lock);
    if (r->mean_done) {
        pthread_mutex_unlock(&r->mean_lock);
        return 0;
    }
    r->mean_busy = true;
    pthread_mutex_unlock(&r->mean_lock);
    uint8_t *mean = NULL;
    int rc = compute_mean(r, scratch, &mean);
    pthread_mutex_lock(&r->mean_lock);
    r->mean_busy = false;
    if (rc == 0) {
        r->mean_row = mean;
        r->mean_done = true;
    }
    pthread_cond_broadcast(&r->mean_cond);
    pthread_mutex_unlock(&r->mean_lock);
    return rc;
}

static const fz_row_init *find_rule(const fz_recipe *r, uint64_t row)
{
    size_t lo = 0, hi = r->n_rules;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r->rules[mid].row < row)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < r->n_rules && r->rules[lo].row == row ? &r->rules[lo] : NULL;
}

/* Produce whole output elements [e0, e1) into out. */
static int produce_elems(fz_recipe *r, uint64_t e0, uint64_t e1, uint8_t *out, uint8_t *scratch)
{
    size_t oes = fz_dtype_size(r->out_dtype);
    uint64_t rl = row_len_of(r->ndim, r->shape);
    uint64_t src_rows = r->ndim ? r->src.shape[0] : 1;
    if (rl == 0)
        return 0;
    /* Fast path: contiguous source, no resize: one run. */
    if (!r->resize && !r->gather)
        return copy_run(r, r->src.storage_offset + e0, e1 - e0, out, scratch);
    uint64_t e = e0;
    while (e < e1) {
        uint64_t row = e / rl, c = e % rl;
        uint64_t n = rl - c;
        if (n > e1 - e)
            n = e1 - e;
        fz_init_kind kind = FZ_INIT_COPY;
        uint64_t sr = row;
        const fz_row_init *rule = NULL;
        if (r->resize) {
            rule = find_rule(r, row);
            if (rule) {
                kind = rule->kind;
                sr = rule->copy_from;
            } else if (row >= src_rows) {
                kind = FZ_INIT_MEAN;
            }
        }
        int rc = 0;
        switch (kind) {
        case FZ_INIT_ZERO:
            memset(out, 0, n * oes);
            break;
        case FZ_INIT_MEAN:
            rc = get_mean(r, scratch);
            if (rc == 0)
                memcpy(out, r->mean_row + c * oes, n * oes);
            break;
        case FZ_INIT_COPY:
            if (!r->gather && !r->resize) {
                rc = copy_run(r, r->src.storage_offset + e, n, out, scratch);
            } else {
                /* Merge consecutive plain source rows of a contiguous source into one run. */
                uint64_t m = n;
                if (!r->gather && c == 0 && !rule) {
                    uint64_t nr = row + 1;
                    while (e + m + rl <= e1 && nr < src_rows && !find_rule(r, nr)) {
                        m += rl;
                        nr++;
                    }
                }
                if (m > n) {
                    rc = copy_run(r, r->src.storage_offset + sr * rl, m, out, scratch);
                    n = m;
                } else {
                    rc = copy_source_row(r, sr, c, n, out, scratch);
                }
            }
            break;
        }
        if (rc)
            return rc;
        out += n * oes;
        e += n;
    }
    return 0;
}

/* Quantized parts: output rows map one to one to source rows, and a row's
 * scales depend on that row only, so rows [r0, r1) need source rows [r0, r1). */
static int produce_quant(fz_recipe *r, uint64_t off, uint64_t len, uint8_t *out)
{
    int rc = 0;
    uint64_t in = r->src.shape[1];
    uint64_t rb = r->nbytes / (r->shape[0] ? r->shape[0] : 1);
    uint64_t r0 = off / rb, r1 = (off + len + rb - 1) / rb;
    size_t ves = fz_dtype_size(r->val_dtype);
    uint64_t ngroups = fz_quant_ngroups(r->q, in);
    /* Source rows are read a block at a time (about FZ_RUN_ELEMS values) so
     * a chunk costs a few large preads, not one per row. */
    uint64_t block = in && in < FZ_RUN_ELEMS ? FZ_RUN_ELEMS / in : 1;
    uint8_t *vals = malloc((size_t)(block * in * ves) + 1);
    float *w = malloc((size_t)in * sizeof *w + 1);
    uint8_t *scales = malloc((size_t)(ngroups * ves) + 1);
    uint8_t *row = malloc((size_t)rb + 1);
    uint8_t *scratch = r->cast ? malloc((size_t)FZ_RUN_ELEMS * fz_dtype_size(r->src.dtype)) : NULL;
    if (!vals || !w || !scales || !row || (r->cast && !scratch)) {
        rc = fz_error_set(FZ_ENOMEM, "out of memory");
        goto done;
    }
    for (uint64_t b0 = r0; b0 < r1; b0 += block) {
        uint64_t nb = r1 - b0 < block ? r1 - b0 : block;
        if (!r->gather)
            rc = copy_run(r, r->src.storage_offset + b0 * in, nb * in, vals, scratch);
        for (uint64_t k = 0; k < nb && rc == 0 && r->gather; k++)
            rc = copy_source_row(r, b0 + k, 0, in, vals + k * in * ves, scratch);
        if (rc)
            goto done;
        for (uint64_t k = 0; k < nb; k++) {
            uint64_t i = b0 + k;
            fz_cast(r->val_dtype, vals + k * in * ves, FZ_DT_F32, w, (size_t)in);
            fz_quant_row_scales(r->q, r->val_dtype, w, in, scales);
            if (r->part == FZ_PART_QSCALE)
                memcpy(row, scales, (size_t)rb);
            else
                fz_quant_row(r->q, r->val_dtype, w, in, scales, row);
            /* The slice of this row inside [off, off+len). */
            uint64_t a = i * rb, b = a + rb;
            uint64_t lo = a > off ? a : off, hi = b < off + len ? b : off + len;
            memcpy(out + (lo - off), row + (lo - a), (size_t)(hi - lo));
        }
    }
done:
    free(vals);
    free(w);
    free(scales);
    free(row);
    free(scratch);
    return rc;
}

int fz_recipe_produce(fz_recipe *r, uint64_t off, uint64_t len, uint8_t *out)
{
    int rc = 0;
    size_t oes = fz_dtype_size(r->out_dtype);
    if (off > r->nbytes || len > r->nbytes - off)
        return fz_error_set(FZ_ERANGE, "tensor '%s': read past its end", r->src.name);
    if (len == 0)
        return 0;
    if (r->part == FZ_PART_CONST) {
        memcpy(out, r->const_data + off, (size_t)len);
        return 0;
    }
    if (r->part != FZ_PART_PLAIN)
        return produce_quant(r, off, len, out);
    uint8_t *scratch = NULL, *edge = NULL;
    if (r->cast) {
        scratch = malloc((size_t)FZ_RUN_ELEMS * fz_dtype_size(r->src.dtype));
        if (!scratch)
            return fz_error_set(FZ_ENOMEM, "out of memory");
    }
    uint64_t e0 = off / oes, e1 = (off + len + oes - 1) / oes;
    if (off % oes == 0 && len % oes == 0) {
        rc = produce_elems(r, e0, e1, out, scratch);
    } else {
        /* Unaligned request: produce the covering elements, copy the slice. */
        edge = malloc((size_t)((e1 - e0) * oes));
        if (!edge) {
            rc = fz_error_set(FZ_ENOMEM, "out of memory");
            goto done;
        }
        rc = produce_elems(r, e0, e1, edge, scratch);
        if (rc == 0)
            memcpy(out, edge + (off - e0 * oes), (size_t)len);
    }
done:
    free(scratch);
    free(edge);
    return rc;
}

int fz_recipe_describe(const fz_recipe *r, fz_buf *out)
{
    const fz_tensor *t = &r->src;
    if (r->part == FZ_PART_CONST) {
        int rc = fz_buf_printf(out, "const %s %s len=%llu:", t->name, fz_dtype_torch_name(t->dtype),
                               (unsigned long long)r->nbytes);
        for (uint64_t i = 0; i < r->nbytes && !rc; i++)
            rc = fz_buf_printf(out, "%02x", r->const_data[i]);
        return rc;
    }
    int rc = fz_buf_printf(out, "src=%s@%llu dtype=%s off=%llu shape=[", t->name,
                           (unsigned long long)t->data_offset, fz_dtype_torch_name(t->dtype),
                           (unsigned long long)t->storage_offset);
    for (int i = 0; i < t->ndim && !rc; i++)
        rc = fz_buf_printf(out, "%s%llu", i ? "," : "", (unsigned long long)t->shape[i]);
    if (!rc)
        rc = fz_buf_puts(out, "] stride=[");
    for (int i = 0; i < t->ndim && !rc; i++)
        rc = fz_buf_printf(out, "%s%lld", i ? "," : "", (long long)t->stride[i]);
    if (!rc)
        rc = fz_buf_puts(out, "]");
    if (!rc && r->gather)
        rc = fz_buf_puts(out, " gather");
    if (!rc && r->resize) {
        rc = fz_buf_printf(out, " resize=%llu", (unsigned long long)r->shape[0]);
        for (size_t i = 0; i < r->n_rules && !rc; i++)
            rc = fz_buf_printf(out, " row%llu=%s%llu", (unsigned long long)r->rules[i].row,
                               r->rules[i].kind == FZ_INIT_ZERO   ? "zero"
                               : r->rules[i].kind == FZ_INIT_MEAN ? "mean"
                                                                  : "copy:",
                               r->rules[i].kind == FZ_INIT_COPY
                                   ? (unsigned long long)r->rules[i].copy_from
                                   : 0ULL);
    }
    if (!rc && r->cast)
        rc = fz_buf_printf(out, " cast=%s", fz_dtype_torch_name(r->val_dtype));
    if (!rc && r->part == FZ_PART_QWEIGHT)
        rc = fz_buf_printf(out, " quantize=%s", r->q->recipe);
    if (!rc && r->part == FZ_PART_QSCALE)
        rc = fz_buf_printf(out, " quantize-scale=%s", r->q->recipe);
    return rc;
}
