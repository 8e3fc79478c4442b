#include "transform/quantize.h"

#include <math.h>
#include <string.h>

#include "transform/cast.h"

/* The recipe table (FORMATS.md §10). The compressed-tensors names in the
 * comments are the presets each row corresponds to; the group sizes and
 * strategies are ours and are written out explicitly in quantization_config,
 * so the presets' own defaults (W4A8 and W8A16 are group 128 in
 * compressed-tensors 0.20) do not matter. */
static const fz_qscheme schemes[] = {
    /* W4A8: int4 in I8, group 32; int8 per-token dynamic activations */
    {"int8-dynamic-act-int4-weight", "int-quantized", FZ_QFMT_INT8, 4, false, 32, true, 8, false},
    /* W4A16: int4 packed eight per int32, group 128 */
    {"int4-weight-only", "pack-quantized", FZ_QFMT_PACKED, 4, false, 128, false, 0, false},
    /* W8A16 (channel): int8 packed four per int32, per output channel */
    {"int8-weight-only", "pack-quantized", FZ_QFMT_PACKED, 8, false, 0, false, 0, false},
    /* W8A8: int8 in I8, per channel; int8 per-token dynamic activations */
    {"int8-dynamic-act-int8-weight", "int-quantized", FZ_QFMT_INT8, 8, false, 0, true, 8, false},
    /* FP8_DYNAMIC: e4m3fn per channel; fp8 per-token dynamic activations */
    {"float8-dynamic-act-float8-weight", "float-quantized", FZ_QFMT_FP8, 8, true, 0, true, 8, true},
};

#define N_SCHEMES (sizeof(schemes) / sizeof(schemes[0]))

const fz_qscheme *fz_qscheme_find(const char *recipe)
{
    if (!recipe)
        return NULL;
    for (size_t i = 0; i < N_SCHEMES; i++)
        if (strcmp(schemes[i].recipe, recipe) == 0)
            return &schemes[i];
    return NULL;
}

const char *fz_qscheme_names(void)
{
    return "int8-dynamic-act-int4-weight, int4-weight-only, int8-weight-only, "
           "int8-dynamic-act-int8-weight, float8-dynamic-act-float8-weight";
}

uint64_t fz_quant_ngroups(const fz_qscheme *q, uint64_t in)
{
    if (q->group == 0)
        return 1;
    return in / q->group + (in % q->group != 0);
}

uint64_t fz_quant_row_bytes(const fz_qscheme *q, uint64_t in)
{
    if (q->fmt != FZ_QFMT_PACKED)
        return in; /* one I8 or F8 byte per value */
    /* ceil(in * bits / 32) words; bits divides 32, so this is ceil(in / per_word). */
    uint64_t per_word = 32u / (uint64_t)q->bits;
    return (in / per_word + (in % per_word != 0)) * 4u;
}

/* Symmetric range: q in [-2^(b-1), 2^(b-1) - 1] for int, [-448, 448] for
 * e4m3fn. D = (q_max - q_min) / 2 is the divisor of absmax: 7.5, 127.5, 448.
 * For int this maps absmax to q_max + 0.5, so the largest |w| of a group
 * lands on 7.5 (or 127.5) and rounds to even, 8 or 128, then clamps to 7 or
 * 127 on the positive side; -absmax lands exactly on -8 or -128. */
static float range_divisor(const fz_qscheme *q)
{
    if (q->is_float)
        return 448.0f;
    return q->bits == 4 ? 7.5f : 127.5f;
}

/* torch.finfo(dtype).eps: the gap between 1 and the next value. */
static float dtype_eps(fz_dtype dt)
{
    switch (dt) {
    case FZ_DT_BF16:
        return 0x1p-7f;
    case FZ_DT_F16:
        return 0x1p-10f;
    default:
        return 0x1p-23f;
    }
}

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Write s32 as scale_dtype (torch rounding); a result of zero becomes eps.
 * The zero test is after the cast: an f16 scale can underflow to 0 even
 * when absmax is not 0. */
static void store_scale(fz_dtype dt, float s32, uint8_t *p)
{
    switch (dt) {
    case FZ_DT_BF16: {
        uint16_t h = fz_f32_to_bf16(s32);
        if ((h & 0x7FFF) == 0)
            h = fz_f32_to_bf16(dtype_eps(dt));
        put_le16(p, h);
        break;
    }
    case FZ_DT_F16: {
        uint16_t h = fz_f32_to_f16(s32);
        if ((h & 0x7FFF) == 0)
            h = fz_f32_to_f16(dtype_eps(dt));
        put_le16(p, h);
        break;
    }
    default: {
        float f = s32 == 0.0f ? dtype_eps(dt) : s32;
        uint32_t u;
        memcpy(&u, &f, 4);
        put_le32(p, u);
        break;
    }
    }
}

static float load_scale(fz_dtype dt, const uint8_t *p)
{
    switch (dt) {
    case FZ_DT_BF16:
        return fz_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
    case FZ_DT_F16:
        return fz_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
    default: {
        uint32_t u = get_le32(p);
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    }
}

static size_t scale_size(fz_dtype dt)
{
    return dt == FZ_DT_BF16 || dt == FZ_DT_F16 ? 2 : 4;
}

void fz_quant_row_scales(const fz_qscheme *q, fz_dtype scale_dtype, const float *w, uint64_t in,
                         uint8_t *scales)
{
    uint64_t g = q->group ? q->group : in;
    uint64_t ng = fz_quant_ngroups(q, in);
    float d = range_divisor(q);
    size_t ss = scale_size(scale_dtype);
    for (uint64_t k = 0; k < ng; k++) {
        uint64_t lo = k * g, hi = lo + g < in ? lo + g : in;
        /* fmaxf returns the other operand when one is NaN: NaN is skipped. */
        float absmax = 0.0f;
        for (uint64_t i = lo; i < hi; i++)
            absmax = fmaxf(absmax, fabsf(w[i]));
        store_scale(scale_dtype, absmax / d, scales + k * ss);
    }
}

/* Integer codes of a group: code = clamp(round_half_even(w / s), q_min, q_max),
 * computed as round(clamp(x)) (the same result for integer bounds, and the
 * order compressed-tensors uses); NaN becomes 0. Rounding uses the classic
 * magic-number add: for |x| <= 2^22, (x + 1.5*2^23) - 1.5*2^23 is x rounded
 * to an integer in the current rounding mode, which fzfs never changes from
 * the default round-to-nearest-even. Written branch-free so the compiler
 * vectorizes it (this loop is most of the cost of --quantize). */
static void quant_codes(const float *w, uint64_t n, float s, float qmin, float qmax, int8_t *codes)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    for (uint64_t i = 0; i < n; i++) {
        float x = w[i] / s;
        x = x == x ? x : 0.0f;
        x = x < qmin ? qmin : x;
        x = x > qmax ? qmax : x;
        float r = (x + magic) - magic;
        codes[i] = (int8_t)(int)r;
    }
}

/* Packing (compressed-tensors pack_to_int32, packed_dim 1): each code
 * becomes unsigned, u = q + 2^(bits-1), and value i of the row occupies bits
 * [i*bits, (i+1)*bits) of the row's bit string, least significant bits
 * first; the row is padded with u = 0 to a whole number of int32 words.
 * Since the words are little-endian on disk, that bit string is also the
 * byte string: for 8 bits, byte i is u[i]; for 4 bits, byte j holds u[2j]
 * in its low nibble and u[2j+1] in its high nibble. We write bytes directly,
 * which is the same file content as building the words and storing them LE.
 * Only 4 and 8 bits, which divide 32, so no value straddles a word. */
void fz_quant_row(const fz_qscheme *q, fz_dtype scale_dtype, const float *w, uint64_t in,
                  const uint8_t *scales, uint8_t *out)
{
    uint64_t g = q->group ? q->group : in;
    uint64_t ng = fz_quant_ngroups(q, in);
    size_t ss = scale_size(scale_dtype);
    int qmax = (1 << (q->bits - 1)) - 1, qmin = -(1 << (q->bits - 1));
    uint64_t nbytes = fz_quant_row_bytes(q, in);

    int8_t codes[256];
    if (q->fmt == FZ_QFMT_PACKED)
        memset(out, 0, nbytes);
    for (uint64_t k = 0; k < ng; k++) {
        uint64_t lo = k * g, hi = lo + g < in ? lo + g : in;
        float s = load_scale(scale_dtype, scales + k * ss);
        if (q->fmt == FZ_QFMT_FP8) {
            for (uint64_t i = lo; i < hi; i++) {
                /* Clamp before the cast (torch's e4m3fn cast saturates only
                 * since recent versions; the spec clamps). NaN passes through. */
                float x = w[i] / s;
                if (x > 448.0f)
                    x = 448.0f;
                if (x < -448.0f)
                    x = -448.0f;
                out[i] = fz_f32_to_f8e4m3(x);
            }
            continue;
        }
        for (uint64_t c0 = lo; c0 < hi; c0 += sizeof codes) {
            uint64_t n = hi - c0 < sizeof codes ? hi - c0 : sizeof codes;
            quant_codes(w + c0, n, s, (float)qmin, (float)qmax, codes);
            if (q->fmt == FZ_QFMT_INT8) {
                memcpy(out + c0, codes, n);
            } else if (q->bits == 8) {
                for (uint64_t i = 0; i < n; i++)
                    out[c0 + i] = (uint8_t)(codes[i] + 128);
            } else {
                for (uint64_t i = 0; i < n; i++) {
                    uint8_t u = (uint8_t)(codes[i] + 8);
                    uint64_t j = c0 + i;
                    out[j / 2] |= (uint8_t)(j & 1 ? u << 4 : u);
                }
            }
        }
    }
}
