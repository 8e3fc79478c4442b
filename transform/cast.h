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
/* Widen n elements of a floating dtype to double (for reductions). */
void fz_to_f64(fz_dtype s, const void *src, double *dst, size_t n);

#endif
