"""--dtype casts are bit-exact with torch's .to(dtype) for every non-NaN value (FORMATS.md
section 9): edge values (inf, NaN payloads, subnormals, f16 overflow, bf16 ties) and
random bit patterns, in .bin and safetensors output. No cast: bytes unchanged."""

import os

import pytest
import torch

import finalize_ref as ref

INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@pytest.mark.parametrize("dtype,fmt", [
    ("bfloat16", []), ("float16", []), ("bfloat16", ["--safetensors"]), ("float16", ["--safetensors"]),
    ("float32", []), (None, ["--safetensors"]),
], ids=["bf16-bin", "f16-bin", "bf16-st", "f16-st", "f32-bin", "nocast-st"])
def test_cast_bit_exact(materialized, runs, dtype, fmt):
    opts = (["--dtype", dtype] if dtype else []) + fmt + ["--skip-default-tokens"]
    r = materialized("edge-values", opts)
    r.check_ok()
    info = runs.info("edge-values")
    src = ref.load_state(os.path.join(runs.src("edge-values"), info["latest"]))
    got = ref.load_state(os.path.join(r.dest, "checkpoints", "checkpoint-10"))
    want_dtype = ref.DTYPES[dtype or "float32"]
    assert set(got) == set(src)
    for name in info["edge_tensors"] + ["model.norm.weight", "lm_head.weight"]:
        s, g = src[name], got[name]
        w = s.to(want_dtype)
        assert g.dtype == want_dtype and g.shape == w.shape, name
        nan = torch.isnan(w)
        assert torch.equal(torch.isnan(g), nan), f"{name}: NaN positions differ"
        gi = g.contiguous().view(INT_VIEW[want_dtype])
        wi = w.contiguous().view(INT_VIEW[want_dtype])
        bad = (gi != wi) & ~nan
        if bad.any():
            i = bad.reshape(-1).nonzero()[0].item()
            sv = s.reshape(-1)[i].view(torch.int32).item() & 0xFFFFFFFF if s.dtype == torch.float32 else None
            pytest.fail(f"{name}: {int(bad.sum())} values differ from torch .to({want_dtype}); first at "
                        f"{i}: source bits {sv:#010x}, got {gi.reshape(-1)[i].item() & 0xFFFF:#06x}, "
                        f"torch {wi.reshape(-1)[i].item() & 0xFFFF:#06x}")
        if want_dtype == torch.float32:  # no cast: every bit (NaN payloads too) kept
            assert torch.equal(gi, s.contiguous().view(torch.int32)), name
