"""The fixture runs are what they claim to be (checked with transformers, no fzfs), and
the committed examples/tiny-run is what make_runs.py produces."""

import os
import subprocess
import sys

import pytest
import torch

import finalize_ref as ref
from conftest import EXAMPLES, MAKE_RUNS, tree_snapshot

RUNS = ["llama-tied-bin", "llama-untied-st", "custom-code", "flat-hf", "bin-views", "nopad-tied-bin", "tiny-run"]


@pytest.mark.parametrize("run", RUNS)
def test_fixture_run_loads(runs, run):
    from transformers import AutoTokenizer
    info = runs.info(run)
    src = runs.src(run)
    tok = AutoTokenizer.from_pretrained(src)
    assert len(tok) == info["vocab"]
    assert (tok.pad_token is not None) == info["has_pad"]
    model = ref.source_model(src, info, info["latest"])
    assert model.get_input_embeddings().weight.shape[0] == info["vocab"]
    assert model.dtype == ref.DTYPES[info["dtype"]]
    with torch.no_grad():
        logits = model(torch.tensor([tok.encode("The model learns weights.")])).logits
    assert torch.isfinite(logits.float()).all()
    for c in info["checkpoints"]:
        for f in c["weight_files"]:
            assert os.path.isfile(os.path.join(src, c["dir"], f))
        assert os.path.isfile(os.path.join(src, c["dir"], "optimizer_state.pt"))


def test_bin_views_fixture_really_has_views(runs):
    src = runs.src("bin-views")
    info = runs.info("bin-views")
    sd = torch.load(os.path.join(src, info["latest"], "pytorch_model.bin"), weights_only=True)
    q = sd["model.layers.0.self_attn.q_proj.weight"]
    k = sd["model.layers.0.self_attn.k_proj.weight"]
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
    assert k.storage_offset() > 0
    assert not sd["model.layers.1.mlp.down_proj.weight"].is_contiguous()
    assert not sd["model.layers.1.mlp.up_proj.weight"].is_contiguous()


def test_examples_tiny_run_is_generated(tmp_path):
    subprocess.run([sys.executable, MAKE_RUNS, str(tmp_path), "tiny-run"], check=True, capture_output=True)
    want = tree_snapshot(str(tmp_path / "tiny-run"))
    got = tree_snapshot(os.path.join(EXAMPLES, "tiny-run"))
    assert sorted(got) == sorted(want)
    assert [k for k in want if want[k] != got[k]] == []
