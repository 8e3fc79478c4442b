"""--max-shard-size: re-sharding as finalize does (a shard closes once a tensor
makes it exceed the limit; that tensor stays in it). The re-sharded output must
load with the same logits as the default output, its index must cover every
tensor, and the mount must serve the same bytes."""
import json
import os

import pytest
import torch

from test_mount import Mounter, child, diff_trees
from test_quantize import LOGITS_FROM

LIMIT = 100 * 1024


def _index(dest, st):
    name = "model.safetensors.index.json" if st else "pytorch_model.bin.index.json"
    return json.load(open(os.path.join(dest, name)))


def _tensor_bytes(dest, st):
    """{shard file: [(name, nbytes), ...]} in file order."""
    out = {}
    idx = _index(dest, st)
    for f in sorted(set(idx["weight_map"].values())):
        path = os.path.join(dest, f)
        if st:
            from safetensors import safe_open
            with safe_open(path, "pt") as h:
                names = list(h.keys())
                out[f] = [(n, h.get_slice(n).get_shape(), h.get_slice(n).get_dtype()) for n in names]
        else:
            sd = torch.load(path, weights_only=True, mmap=True)
            seen, items = set(), []
            for n, t in sd.items():
                key = t.untyped_storage().data_ptr()
                items.append((n, 0 if key in seen else t.untyped_storage().nbytes()))
                seen.add(key)
            out[f] = items
    return out


@pytest.mark.parametrize("run,opts", [("llama-tied-bin", []),
                                      ("llama-untied-st", ["--safetensors"]),
                                      ("custom-code", ["--dtype", "bfloat16"]),
                                      ("bin-views", [])])
def test_reshard_loads_like_default(run, opts, runs, materialized, tmp_path):
    ref = materialized(run, opts)
    ref.check_ok()
    res = materialized(run, opts + ["--max-shard-size", "100K"])
    res.check_ok()
    st = "--safetensors" in opts
    idx = _index(res.dest, st)
    ref_idx = _index(ref.dest, st)
    assert set(idx["weight_map"]) == set(ref_idx["weight_map"])
    files = sorted(set(idx["weight_map"].values()))
    assert len(files) > len(set(ref_idx["weight_map"].values())), "nothing was re-sharded"
    n = len(files)
    suffix = ".safetensors" if st else ".bin"
    stem = "model" if st else "pytorch_model"
    assert files == [f"{stem}-{i:05d}-of-{n:05d}{suffix}" for i in range(1, n + 1)]
    for f in files:  # root symlinks point into the checkpoint
        assert os.path.islink(os.path.join(res.dest, f))
    if not st:
        # finalize's rule: everything but the last tensor of a shard fits the limit
        for f, items in _tensor_bytes(res.dest, st).items():
            sizes = [b for _, b in items]
            assert sum(sizes[:-1]) <= LIMIT, (f, sizes)
    env = {"HF_HUB_OFFLINE": "1"}
    trust = run == "custom-code"
    code = LOGITS_FROM if not trust else LOGITS_FROM.replace(
        "from_pretrained(path)", "from_pretrained(path, trust_remote_code=True)")
    logits = child(code, res.dest, ref.dest, timeout=300, env=env)
    assert logits[res.dest] == logits[ref.dest]


def test_reshard_mount_equals_materialize(runs, materialized, fzfs, tmp_path):
    res = materialized("llama-untied-st", ["--max-shard-size", "64K", "--dtype", "float16"])
    res.check_ok()
    m = Mounter(fzfs, str(tmp_path))
    try:
        mnt = str(tmp_path / "mnt")
        m.mount(runs.src("llama-untied-st"), mnt, "--max-shard-size", "64K", "--dtype", "float16")
        diff_trees(mnt, res.dest)
        m.umount(mnt)
    finally:
        m.cleanup()


def test_bad_max_shard_size_is_a_usage_error(runs, fzfs, tmp_path):
    for bad in ("0", "-5", "12Q", ""):
        p = fzfs.run("materialize", runs.src("llama-tied-bin"), str(tmp_path / "d"),
                     "--max-shard-size", bad)
        assert p.returncode == 2, (bad, p.stderr)
        assert "--max-shard-size" in p.stderr
        assert not os.path.exists(tmp_path / "d")
