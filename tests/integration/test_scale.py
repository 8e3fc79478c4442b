"""Scale: building a view is O(n log n) in the tensor count, and the pickle machine's
memory is bounded by the pickle's size (issue 8, item 8).

A MoE checkpoint has ~100k tensors; `fzfs plan` used to be quadratic (200k tensors:
four minutes). The test times `fzfs plan` on 5k and 50k tiny tensors (CPU time of the
child, best of three, so the machine's load matters little) and requires the ratio to
stay far below quadratic: linear is 10, quadratic 100, the bound 30.
"""

import json
import os
import re
import resource
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from make_scale import make_source, tensor_names  # noqa: E402

SMALL, LARGE = 5_000, 50_000


@pytest.fixture(scope="module")
def scale_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    return {n: make_source(str(d / f"run-{n}"), n) for n in (SMALL, LARGE)}


def plan_cpu(fzfs, src, *opts):
    """Best CPU time (user + system) of three `fzfs plan` runs, and the last result."""
    best = None
    for _ in range(3):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = fzfs.run("plan", src, *opts, timeout=600)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert p.returncode == 0, p.stderr
        t = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        best = t if best is None else min(best, t)
    return best, p


@pytest.mark.parametrize("opts", [(), ("--safetensors", "--max-shard-size", "20KB")],
                         ids=["bin", "safetensors-resharded"])
def test_plan_time_grows_linearly(fzfs, scale_runs, opts):
    small, _ = plan_cpu(fzfs, scale_runs[SMALL], *opts)
    large, p = plan_cpu(fzfs, scale_runs[LARGE], *opts, "--json")
    plan = json.loads(p.stdout)
    # every tensor is planned (the ratio of a plan that dropped tensors means nothing);
    # a tied head is not written in safetensors
    names = {t["name"] for t in plan["tensors"]}
    assert names - {"lm_head.weight"} == set(tensor_names(LARGE)) - {"lm_head.weight"}
    ratio = large / max(small, 1e-3)
    assert ratio < 30, (f"plan: {SMALL} tensors {small:.3f} s, {LARGE} tensors {large:.3f} s "
                        f"CPU: ratio {ratio:.1f} (linear 10, quadratic 100)")


def test_pickle_memory_is_bounded_by_its_size(fzfs, tmp_path):
    """A 16 MB data.pkl of one-byte opcodes that each make an object (NONE, TUPLE1,
    APPEND: 48 bytes of objects per 3 bytes) is refused once the machine holds 8 bytes
    per pickle byte; RSS stays a small multiple of the pickle (it was 16x and more)."""
    import shutil
    import subprocess
    import zipfile

    import torch

    src = make_source(str(tmp_path / "run"), 10, shards=1)
    ckpt = os.path.join(src, "checkpoints", "checkpoint-1")
    shutil.rmtree(ckpt)
    os.makedirs(ckpt)
    good = str(tmp_path / "good.bin")
    torch.save({"w": torch.zeros(2)}, good)
    crafted = b"\x80\x02]" + b"N\x85a" * 5_500_000 + b"."
    out = os.path.join(ckpt, "pytorch_model.bin")
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = crafted if info.filename.endswith("/data.pkl") else zin.read(info)
            zout.writestr(info, data)
    p = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb %M", fzfs.binary, "plan", src],
                       capture_output=True, text=True, env=fzfs.env, timeout=300)
    assert p.returncode == 1, p.stderr
    assert "pytorch_model.bin: the pickle" in p.stderr and "bytes of memory" in p.stderr, p.stderr
    rss = int(re.search(r"maxrss_kb (\d+)", p.stderr).group(1)) * 1024
    assert rss < 12 * len(crafted), f"RSS {rss >> 20} MiB for a {len(crafted) >> 20} MiB pickle"
