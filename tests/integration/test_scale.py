"""Scale: building a view is linear in the tensor count, and the pickle machine's
memory is bounded by the pickle's size (issue 8, item 8).

A MoE checkpoint has ~100k tensors; `fzfs plan` used to be quadratic (200k tensors:
four minutes). The test counts the instructions `fzfs plan` executes on 5k and 50k tiny
tensors (valgrind's cachegrind without its cache simulation: the same count on every run,
whatever else the machine is doing, so no time is measured) and bounds the ratio: linear
is 10, n log n about 13, quadratic 100. How fast plan is lives in bench/scale.
"""

import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from make_scale import make_source, tensor_names  # noqa: E402

SMALL, LARGE = 5_000, 50_000


@pytest.fixture(scope="module")
def scale_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    return {n: make_source(str(d / f"run-{n}"), n) for n in (SMALL, LARGE)}


def plan_instructions(fzfs, src, *opts):
    """Instructions one `fzfs plan` executes (valgrind), and its stdout."""
    import shutil
    import subprocess

    vg = shutil.which("valgrind")
    assert vg, "valgrind is not installed (scripts/install-deps.sh installs it)"
    p = subprocess.run([vg, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                        fzfs.binary, "plan", src, *opts], capture_output=True, text=True,
                       env=fzfs.env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    m = re.search(r"I\s+refs:\s+([\d,]+)", p.stderr)
    assert m, p.stderr[-3000:]
    return int(m.group(1).replace(",", "")), p


@pytest.mark.parametrize("opts", [(), ("--safetensors", "--max-shard-size", "20KB")],
                         ids=["bin", "safetensors-resharded"])
def test_plan_work_grows_linearly(fzfs, scale_runs, opts):
    small, _ = plan_instructions(fzfs, scale_runs[SMALL], *opts, "--json")
    large, p = plan_instructions(fzfs, scale_runs[LARGE], *opts, "--json")
    plan = json.loads(p.stdout)
    # every tensor is planned (the ratio of a plan that dropped tensors means nothing);
    # a tied head is not written in safetensors
    names = {t["name"] for t in plan["tensors"]}
    assert names - {"lm_head.weight"} == set(tensor_names(LARGE)) - {"lm_head.weight"}
    ratio = large / small
    assert ratio < 13, (f"plan: {SMALL} tensors {small:,} instructions, {LARGE} tensors "
                        f"{large:,}: ratio {ratio:.2f} (linear 10, n log n 13, quadratic 100)")


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
