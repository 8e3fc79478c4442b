"""The fixture runs are what they claim to be (checked with transformers, no fzfs), and
the committed examples/tiny-run is what make_runs.py produces."""

import hashlib
import os
import platform
import subprocess
import sys

import pytest
import torch

import finalize_ref as ref
from conftest import EXAMPLES, MAKE_RUNS, tree_snapshot

CAST_VECTORS = os.path.join(os.path.dirname(MAKE_RUNS), "make_cast_vectors.py")
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


def tree_digests(root):
    """{relpath: 'f:<sha256>' | 'l:<target>' | 'd:None'} for a whole tree."""
    return {rel: kind + ":" + (hashlib.sha256(v).hexdigest() if kind == "f" else str(v))
            for rel, (kind, v) in tree_snapshot(root).items()}


# ATEN_CPU_CAPABILITY values in the order torch ranks them (torch picks the highest the
# CPU has when the variable is unset; a value above that would run instructions the CPU
# lacks).
CAPABILITIES = {"x86_64": ["default", "avx2", "avx512"], "AMD64": ["default", "avx2", "avx512"],
                "aarch64": ["default", "sve256"], "arm64": ["default", "sve256"]}


def _capability(value):
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if value is not None:
        env["ATEN_CPU_CAPABILITY"] = value
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                       env=env, check=True, capture_output=True, text=True)
    return r.stdout.strip().lower(), env


def test_fixtures_are_the_same_bytes_on_every_cpu_capability(tmp_path):
    """Every run make_runs.py writes (and the cast vectors header) must be byte-identical
    whichever SIMD kernels torch uses (the committed examples/tiny-run is compared with a
    run made on another CPU): generate them under each ATEN_CPU_CAPABILITY torch offers
    on this CPU."""
    order = CAPABILITIES.get(platform.machine())
    if order is None:
        pytest.skip(f"no ATEN_CPU_CAPABILITY list for {platform.machine()}")
    native, _ = _capability(None)
    assert native in order, f"torch reports capability {native!r}, not one of {order}"
    digests, skipped = {}, {}
    for cap in order:
        if order.index(cap) > order.index(native):
            skipped[cap] = f"this CPU's best is {native}"
            continue
        got, env = _capability(cap)
        if got != cap:
            skipped[cap] = f"torch refuses it (runs {got})"
            continue
        out = tmp_path / cap
        r = subprocess.run([sys.executable, MAKE_RUNS, str(out)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        digests[cap] = tree_digests(str(out))
        r = subprocess.run([sys.executable, CAST_VECTORS], env=env, capture_output=True)
        assert r.returncode == 0, r.stderr[-2000:]
        digests[cap]["cast_vectors.h"] = "f:" + hashlib.sha256(r.stdout).hexdigest()
    print(f"compared {sorted(digests)}; not run: {skipped}")
    if len(digests) < 2 and platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"only {sorted(digests)} runnable here ({skipped})")
    assert len(digests) >= 2, f"need two capabilities to compare, have {sorted(digests)} ({skipped})"
    base = digests["default"]
    assert len(base) > 100 and "tiny-run/checkpoints/checkpoint-200/pytorch_model-00001-of-00002.bin" in base
    for cap, d in digests.items():
        assert sorted(d) == sorted(base), cap
        assert [k for k in base if base[k] != d[k]] == [], f"{cap} differs from default"


def test_examples_tiny_run_is_generated(tmp_path):
    subprocess.run([sys.executable, MAKE_RUNS, str(tmp_path), "tiny-run"], check=True, capture_output=True)
    want = tree_snapshot(str(tmp_path / "tiny-run"))
    got = tree_snapshot(os.path.join(EXAMPLES, "tiny-run"))
    assert sorted(got) == sorted(want)
    assert [k for k in want if want[k] != got[k]] == []
