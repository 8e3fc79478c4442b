"""--hub: a directory ready for `hf upload`: safetensors at the root, no checkpoints/,
no symlinks (an upload follows them and would send the weights twice), none of
Forgather's own files; otherwise byte for byte the --safetensors --root-copy release."""

import os

import pytest

from conftest import tree_snapshot


@pytest.mark.parametrize("run", ["custom-code", "llama-tied-bin"])
def test_hub_layout(materialized, run):
    hub = materialized(run, ["--hub"])
    hub.check_ok()
    names = set()
    for dirpath, dirnames, filenames in os.walk(hub.dest):
        assert dirpath == hub.dest and not dirnames, "everything at the root"
        for n in filenames:
            p = os.path.join(dirpath, n)
            assert not os.path.islink(p), n
            names.add(n)
    assert ".package_files_copied" not in names
    assert not any(n.endswith(".bin") for n in names)
    assert any(n.endswith(".safetensors") for n in names)
    assert "config.json" in names and "tokenizer.json" in names

    plain = materialized(run, ["--safetensors", "--root-copy"])
    plain.check_ok()
    want = tree_snapshot(plain.dest)
    want.pop(".package_files_copied", None)
    assert tree_snapshot(hub.dest) == want


def test_hub_loads(materialized):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    hub = materialized("custom-code", ["--hub", "--dtype", "bfloat16"])
    hub.check_ok()
    model = AutoModelForCausalLM.from_pretrained(hub.dest, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(hub.dest)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_hub_excludes_keep_optimizer(fzfs, runs, tmp_path):
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), tmp_path / "d", "--hub",
                 "--keep-optimizer")
    assert p.returncode == 2 and "--hub" in p.stderr and "--keep-optimizer" in p.stderr
    assert not (tmp_path / "d").exists()


def test_plan_says_hub(fzfs, runs):
    p = fzfs.run("plan", runs.src("llama-tied-bin"), "--hub")
    assert p.returncode == 0 and "--hub" in p.stdout
