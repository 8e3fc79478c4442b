/* Quantization kernels for compressed-tensors output (FORMATS.md §10):
 * symmetric per-channel or per-group scales, round half to even, clamp,
 * int4 packing into int32, fp8 e4m3fn. Pure functions on one weight row at
 * a time (scales depend only on the row), so any range of output rows can be
 * produced from the same source rows without a global pass. Thread-safe.
 *
 * Arithmetic, exactly (so a torch reimplementation matches bit for bit):
 *   w      = the row's values in the model dtype, widened to float32
 *   absmax = max |w| over the group (float32)
 *   s32    = absmax / D  (float32 division; D = 7.5 int4, 127.5 int8, 448 fp8)
 *   scale  = s32 cast to the scale dtype (the model dtype, torch rounding);
 *            a zero scale becomes that dtype's eps (torch.finfo(dtype).eps)
 *   int:  q = clamp(round_half_even(w / float32(scale)), q_min, q_max)
 *   fp8:  q = float8_e4m3fn(clamp(w / float32(scale), -448, 448))
 * NaN weights: absmax ignores NaN; an int q of NaN becomes 0, fp8 keeps NaN. */
#ifndef FZ_TRANSFORM_QUANTIZE_H
#define FZ_TRANSFORM_QUANTIZE_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/tensor.h"

typedef enum {
    FZ_QFMT_PACKED, /* pack-quantized: <m>.weight_packed I32 + weight_scale + weight_shape */
    FZ_QFMT_INT8,   /* int-quantized: <m>.weight I8 (int4 or int8 values) + weight_scale */
    FZ_QFMT_FP8,    /* float-quantized: <m>.weight F8_E4M3 + weight_scale */
} fz_qformat;

typedef struct {
    const char *recipe; /* finalize's name, e.g. "int4-weight-only" */
    const char *format; /* compressed-tensors format string, e.g. "pack-quantized" */
    fz_qformat fmt;
    int bits;         /* 4 or 8 */
    bool is_float;    /* fp8 */
    uint32_t group;   /* group size along the input dim; 0 = per channel */
    bool act_dynamic; /* input activations quantized dynamically per token */
    int act_bits;     /* 8 */
    bool act_float;   /* fp8 activations */
} fz_qscheme;

/* The five recipes. NULL if `recipe` is unknown. */
const fz_qscheme *fz_qscheme_find(const char *recipe);
/* "a, b, c": every recipe name, for error messages. */
const char *fz_qscheme_names(void);

/* Output shapes for a [out, in] weight. */
uint64_t fz_quant_ngroups(const fz_qscheme *q, uint64_t in);
/* Bytes of one output row of the quantized weight (packed words or I8/F8). */
uint64_t fz_quant_row_bytes(const fz_qscheme *q, uint64_t in);

/* Scales of one row: `in` float32 values -> ngroups values of scale_dtype
 * (F32, F16 or BF16) written to `scales`. */
void fz_quant_row_scales(const fz_qscheme *q, fz_dtype scale_dtype, const float *w, uint64_t in,
                         uint8_t *scales);
/* Quantize one row with the scales above into `out` (fz_quant_row_bytes). */
void fz_quant_row(const fz_qscheme *q, fz_dtype scale_dtype, const float *w, uint64_t in,
                  const uint8_t *scales, uint8_t *out);

#endif
