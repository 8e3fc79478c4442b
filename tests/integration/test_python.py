"""The Python wrapper (python/, installed into the venv by scripts/install-deps.sh) as a
user of transformers would use it: mount in a with-block and load, plan as a dict,
materialize, and errors that carry fzfs's own message."""

import os

import pytest
import torch

import fzfs
from conftest import FZFS_BIN, REPO

RUN = "llama-untied-st"


@pytest.fixture(autouse=True)
def _binary(monkeypatch, tmp_path):
    monkeypatch.setenv("FZFS_BIN", FZFS_BIN)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def test_installed_from_the_checkout_not_imported_from_it():
    assert not os.path.dirname(fzfs.__file__).startswith(os.path.join(REPO, "python"))
    assert fzfs.binary() == FZFS_BIN


def logits(path):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        return model(torch.arange(12).unsqueeze(0)).logits


def test_mount_then_from_pretrained_equals_materialize(runs, tmp_path):
    src = runs.src(RUN)
    dest = fzfs.materialize(src, tmp_path / "dest", dtype="bfloat16", safetensors=True)
    with fzfs.mount(src, dtype="bfloat16", safetensors=True,
                    cache_dir=tmp_path / "cache") as path:
        assert os.path.ismount(path)
        assert sorted(os.listdir(path)) == sorted(os.listdir(dest))
        mounted = logits(path)
    assert not os.path.exists(path), "the temporary mount point is removed after the block"
    assert torch.equal(mounted, logits(dest))


def test_mount_on_a_given_directory_is_kept(runs, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with fzfs.mount(runs.src(RUN), mnt, no_cache=True) as path:
        assert path == str(mnt) and os.path.ismount(path)
    assert mnt.is_dir() and not os.path.ismount(mnt)


def test_plan_is_a_dict(runs):
    info = fzfs.plan(runs.src(RUN), dtype="float16")
    assert info["source"] == runs.src(RUN)
    assert info["tokens"]["new_vocab"] >= info["tokens"]["old_vocab"]
    assert info["tensors"], "the plan lists the tensors"


def test_errors_carry_the_command_message(runs, tmp_path):
    with pytest.raises(fzfs.FzfsError) as e:
        fzfs.plan(runs.src(RUN), dtype="int3")
    assert e.value.returncode == 2 and "int3" in e.value.stderr
    with pytest.raises(fzfs.FzfsError) as e:
        with fzfs.mount(tmp_path / "no-such-run"):
            pass
    assert e.value.returncode == 1 and "no-such-run" in str(e.value)
    with pytest.raises(fzfs.FzfsError):
        fzfs.materialize(runs.src(RUN), tmp_path / "d", quantize="int3")
    assert not (tmp_path / "d").exists()


def test_missing_binary_is_explained(monkeypatch):
    monkeypatch.setenv("FZFS_BIN", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(fzfs.FzfsError, match="FZFS_BIN"):
        fzfs.binary()
