"""Independent torch reference for fzfs's quantization (transform/quantize.h).

Written from the formulas in quantize.h and FORMATS.md §10, not from
compressed-tensors' compressors, so that agreement between the two is
evidence rather than tautology. It gives, for one Linear weight, exactly the
tensors fzfs stores (names local to the module):

    pack-quantized   weight_packed I32 [out, ceil(in*bits/32)], weight_scale,
                     weight_shape I64 [2]
    int-quantized    weight I8 [out, in], weight_scale
    float-quantized  weight F8_E4M3 [out, in], weight_scale

weight_scale is [out, ngroups] (group strategy) or [out, 1] (channel), in the
model dtype.

Arithmetic (quantize.h):
    w      = weight in the model dtype, widened to float32
    absmax = max |w| over the group, NaN ignored
    scale  = (absmax / D).to(model_dtype), D = 7.5 int4, 127.5 int8, 448 fp8;
             0 -> torch.finfo(model_dtype).eps
    int:  q = clamp(round_half_even(w / scale.float()), q_min, q_max), NaN -> 0
    fp8:  q = clamp(w / scale.float(), -448, 448).to(float8_e4m3fn)

Note this differs from llm-compressor, which divides in the model dtype; the
point of fzfs's rule is that it is exact and cheap in C.
"""

from __future__ import annotations

import math

import torch

__all__ = ["RECIPES", "scheme", "quantize", "codes", "dequantize", "quantization_config"]

# recipe -> (format, type, bits, group_size (0 = per channel), activations?)
RECIPES: dict[str, tuple[str, str, int, int, bool]] = {
    "int8-dynamic-act-int4-weight": ("int-quantized", "int", 4, 32, True),
    "int4-weight-only": ("pack-quantized", "int", 4, 128, False),
    "int8-weight-only": ("pack-quantized", "int", 8, 0, False),
    "int8-dynamic-act-int8-weight": ("int-quantized", "int", 8, 0, True),
    "float8-dynamic-act-float8-weight": ("float-quantized", "float", 8, 0, True),
}


def scheme(recipe: str) -> dict:
    """The recipe's parameters: format, type, bits, group (0 = channel), act."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    fmt, typ, bits, group, act = RECIPES[recipe]
    return {"format": fmt, "type": typ, "bits": bits, "group": group, "act": act}


def _group_len(group: int, cols: int) -> int:
    return group if group else cols


def _expand(scale: torch.Tensor, g: int, cols: int) -> torch.Tensor:
    """[out, ngroups] -> [out, cols]: column j uses group j // g."""
    return scale.repeat_interleave(g, dim=1)[:, :cols]


def _scales(w: torch.Tensor, s: dict, model_dtype: torch.dtype) -> torch.Tensor:
    rows, cols = w.shape
    g = _group_len(s["group"], cols)
    ng = math.ceil(cols / g) if cols else 0
    a = torch.where(torch.isnan(w), torch.zeros_like(w), w.abs())
    a = torch.nn.functional.pad(a, (0, ng * g - cols))  # zeros never raise a max
    absmax = a.reshape(rows, ng, g).amax(dim=2)
    if s["type"] == "float":
        d = 448.0
    else:
        d = 7.5 if s["bits"] == 4 else 127.5
    scale = (absmax / torch.tensor(d, dtype=torch.float32)).to(model_dtype)
    eps = torch.tensor(torch.finfo(model_dtype).eps, dtype=model_dtype)
    return torch.where(scale == 0, eps, scale)


def _pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes [rows, cols] -> I32 words: u = q + 2^(bits-1), value i at
    bits [i*bits, (i+1)*bits) of the row, least significant first, u = 0
    padding to a whole word."""
    rows, cols = q.shape
    per = 32 // bits
    nw = math.ceil(cols / per)
    u = q.to(torch.int64) + (1 << (bits - 1))
    u = torch.nn.functional.pad(u, (0, nw * per - cols)).reshape(rows, nw, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    word = (u << shifts).sum(dim=2)  # in [0, 2^32)
    word = torch.where(word >= 2**31, word - 2**32, word)
    return word.to(torch.int32)


def _unpack(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    rows, nw = packed.shape
    per = 32 // bits
    w = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per, dtype=torch.int64) * bits
    u = (w.unsqueeze(2) >> shifts) & ((1 << bits) - 1)
    u = u.reshape(rows, nw * per)[:, :cols]
    return (u - (1 << (bits - 1))).to(torch.int8)


def quantize(weight: torch.Tensor, recipe: str, model_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors fzfs stores for one Linear weight [out, in] (module-local
    names). `weight` is first cast to model_dtype (as fzfs reads it)."""
    s = scheme(recipe)
    if weight.dim() != 2:
        raise ValueError("weight must be 2-D [out, in]")
    w = weight.to(model_dtype).to(torch.float32)
    rows, cols = w.shape
    g = _group_len(s["group"], cols)
    scale = _scales(w, s, model_dtype)
    x = w / _expand(scale.to(torch.float32), g, cols)
    if s["type"] == "float":
        q = x.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        return {"weight": q, "weight_scale": scale}
    qmin, qmax = -(1 << (s["bits"] - 1)), (1 << (s["bits"] - 1)) - 1
    r = torch.round(x.clamp(qmin, qmax))  # torch.round: half to even
    q = torch.where(torch.isnan(r), torch.zeros_like(r), r).to(torch.int8)
    if s["format"] == "int-quantized":
        return {"weight": q, "weight_scale": scale}
    return {
        "weight_packed": _pack(q, s["bits"]),
        "weight_scale": scale,
        "weight_shape": torch.tensor([rows, cols], dtype=torch.int64),
    }


def codes(tensors: dict[str, torch.Tensor], recipe: str) -> torch.Tensor:
    """The quantized values [out, in] (I8 codes or F8), unpacked if needed."""
    s = scheme(recipe)
    if s["format"] == "pack-quantized":
        cols = int(tensors["weight_shape"][1])
        return _unpack(tensors["weight_packed"], s["bits"], cols)
    return tensors["weight"]


def dequantize(tensors: dict[str, torch.Tensor], recipe: str, model_dtype: torch.dtype) -> torch.Tensor:
    """q * scale in the model dtype ([out, in]); the product is rounded once to
    model_dtype, as compressed-tensors' dequantize does (q.to(scale.dtype) *
    scale)."""
    s = scheme(recipe)
    q = codes(tensors, recipe)
    cols = q.shape[1]
    scale = tensors["weight_scale"].to(model_dtype)
    g = _group_len(s["group"], cols)
    return q.to(model_dtype) * _expand(scale, g, cols)


def _args(num_bits: int, typ: str, strategy: str, group_size, dynamic: bool) -> dict:
    # Only these fields: QuantizationArgs is extra="forbid" in compressed-tensors,
    # and the older line has no scale_dtype/zp_dtype (reference/hf-formats.md §5a).
    return {
        "num_bits": num_bits,
        "type": typ,
        "symmetric": True,
        "strategy": strategy,
        "group_size": group_size,
        "dynamic": dynamic,
        "actorder": None,
        "block_structure": None,
        "observer": None if dynamic else "minmax",
        "observer_kwargs": {},
    }


def quantization_config(recipe: str, ignore: list[str]) -> dict:
    """config.json's quantization_config block for `recipe` (hf-formats.md §5a)."""
    s = scheme(recipe)
    if s["group"]:
        weights = _args(s["bits"], s["type"], "group", s["group"], False)
    else:
        weights = _args(s["bits"], s["type"], "channel", None, False)
    acts = _args(8, s["type"], "token", None, True) if s["act"] else None
    return {
        "quant_method": "compressed-tensors",
        "format": s["format"],
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": acts,
                "output_activations": None,
            }
        },
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
    }
