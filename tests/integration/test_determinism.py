"""Two materializations of the same SRC and options are identical byte for byte (no
wall-clock time, no absolute DEST path), wherever DEST is and whatever it is called."""

import os

import pytest

from conftest import tree_snapshot, expand

CASES = [
    ("llama-tied-bin", []),
    ("llama-untied-st", ["--add-tokens", "{YAML_RICH}", "--safetensors", "--dtype", "float16",
                         "--generation-config", "precise"]),
    ("custom-code", ["--keep-optimizer", "--add-tokens", "{EX}/add_tokens/chatml.yaml",
                     "-t", "{EX}/chat_templates/chatml.jinja"]),
    ("bin-views", ["--dtype", "bfloat16"]),
    ("flat-hf", ["--root-copy"]),
]


@pytest.mark.parametrize("run,opts", CASES, ids=[c[0] for c in CASES])
def test_materialize_twice_identical(fzfs, runs, inputs, tmp_path, run, opts):
    opts = expand(opts, runs, run, inputs)
    a = tmp_path / "first" / "final-a"
    b = tmp_path / "second" / "deeper" / "other-name"
    os.makedirs(a.parent)
    os.makedirs(b.parent)
    pa = fzfs.run("materialize", runs.src(run), str(a), *opts)
    assert pa.returncode == 0, pa.stderr
    pb = fzfs.run("materialize", runs.src(run), str(b), *opts)
    assert pb.returncode == 0, pb.stderr
    sa, sb = tree_snapshot(str(a)), tree_snapshot(str(b))
    assert sorted(sa) == sorted(sb)
    diff = [k for k in sa if sa[k] != sb[k]]
    assert not diff, f"differ between the two materializations: {diff}"
    for k, (kind, data) in sa.items():
        if kind == "f":
            assert str(a).encode() not in data and str(tmp_path).encode() not in data, \
                f"{k} contains an absolute path"
            assert runs.src(run).encode() not in data, f"{k} contains the absolute SRC path"
        if kind == "l":
            assert not data.startswith("/"), f"{k} is an absolute symlink"
