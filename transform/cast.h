/* Element-wise dtype conversion, bit-exact with torch's tensor.to(dtype) on
 * CPU for every non-NaN input (FORMATS.md §9). Pure functions, thread-safe. */
#ifndef FZ_TRANSFORM_CAST_H
#define FZ_TRANSFORM_CAST_H

#include <stddef.h>
#include <stdint.h>

#include "formats/tensor.h"

uint16_t fz_f32_to_bf16(float f);
uint16_t fz_f32_to_f16(float f);
float fz_bf16_to_f32(uint16_t h);
float fz_f16_to_f32(uint16_t h);
/* Clamp to +-448 then round to nearest even (NaN -> 0x7F; torch keeps the sign). */
uint8_t fz_f32_to_f8e4m3(float f);
float fz_f8e4m3_to_f32(uint8_t b);

/* True if fz_cast can convert src -> dst (floating types among F64, F32,
 * F16, BF16, F8_E4M3 as destination; identical dtypes always). */
int fz_cast_supported(fz_dtype src, fz_dtype dst);
/* Convert n little-endian elements from src (dtype s) to dst (dtype d).
 * src and dst must not overlap. */
void fz_cast(fz_dtype s, const void *src, fz_dtype d, void *dst, size_t n);
/* One implementation of the f32 -> bf16 array conversion (fz_cast's F32 ->
 * BF16 case); all give identical bytes. */
typedef struct {
    const char *name; /* the instruction set: "sse2", "avx2" or "scalar" */
    void (*run)(const void *src, void *dst, size_t n);
} fz_cast_kernel;

/* The f32 -> bf16 kernels this CPU can run, baseline first, best last (for
 * tests and benchmarks); *out points into static storage. fz_cast uses the
 * last one, or the first when the environment variable FZFS_CAST_BASELINE is
 * set (not empty, not "0") at the first call of fz_cast or of these two
 * functions; it is read once. */
size_t fz_cast_bf16_kernels(const fz_cast_kernel **out);
/* The kernel fz_cast uses. */
const fz_cast_kernel *fz_cast_bf16_kernel(void);

/* Widen n elements of a floating dtype to double (for reductions). */
void fz_to_f64(fz_dtype s, const void *src, double *dst, size_t n);

#endif
