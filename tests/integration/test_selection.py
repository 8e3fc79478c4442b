"""Which checkpoint is materialized (FORMATS.md section 1), and that its weights are the
ones that end up in DEST."""

import os

import torch

import finalize_ref as ref


def _dest_tensors(dest, ckpt):
    d = os.path.join(dest, ckpt)
    return ref.load_state(d)


def _same_as_checkpoint(runs, run, dest, src_ckpt, dest_ckpt, skip=()):
    want = ref.load_state(os.path.join(runs.src(run), src_ckpt))
    got = _dest_tensors(dest, dest_ckpt)
    for k, v in want.items():
        if k in skip or k not in got:
            continue
        assert torch.equal(got[k], v), f"{k} is not {src_ckpt}'s"
    return want, got


def test_latest_skips_checkpoint_without_weights(materialized, runs):
    r = materialized("llama-tied-bin", [])
    r.check_ok()
    assert os.listdir(os.path.join(r.dest, "checkpoints")) == ["checkpoint-1500"]
    _same_as_checkpoint(runs, "llama-tied-bin", r.dest, "checkpoints/checkpoint-1500",
                        "checkpoints/checkpoint-1500")


def test_latest_is_newest_manifest_timestamp_not_highest_step(materialized, runs):
    r = materialized("llama-untied-st", ["--skip-default-tokens"])
    r.check_ok()
    assert runs.info("llama-untied-st")["latest"] == "checkpoints/checkpoint-500"
    assert os.listdir(os.path.join(r.dest, "checkpoints")) == ["checkpoint-500"]
    _same_as_checkpoint(runs, "llama-untied-st", r.dest, "checkpoints/checkpoint-500",
                        "checkpoints/checkpoint-500")


def test_dash_c_selects_older_checkpoint(materialized, runs):
    src = runs.src("llama-tied-bin")
    r = materialized("llama-tied-bin", ["-c", os.path.join(src, "checkpoints", "checkpoint-500")])
    r.check_ok()
    assert os.listdir(os.path.join(r.dest, "checkpoints")) == ["checkpoint-500"]
    want, _ = _same_as_checkpoint(runs, "llama-tied-bin", r.dest, "checkpoints/checkpoint-500",
                                  "checkpoints/checkpoint-500")
    latest = ref.load_state(os.path.join(src, "checkpoints", "checkpoint-1500"))
    assert not torch.equal(want["model.norm.weight"], latest["model.norm.weight"])


def test_dash_c_relative_path(fzfs, runs, tmp_path):
    run = runs.src("custom-code")
    dest = tmp_path / "rel-out"
    p = fzfs.run("materialize", "custom-code", str(dest), "-c", "custom-code/checkpoints/checkpoint-100",
                 cwd=os.path.dirname(run))
    assert p.returncode == 0, p.stderr
    assert os.listdir(dest / "checkpoints") == ["checkpoint-100"]
    _same_as_checkpoint(runs, "custom-code", str(dest), "checkpoints/checkpoint-100",
                        "checkpoints/checkpoint-100",
                        skip={"causal_lm.input_encoder.embedding.weight", "lm_head.weight", "lm_head.bias"})


def test_flat_source_becomes_checkpoint_0(materialized, runs):
    r = materialized("flat-hf", [])
    r.check_ok()
    assert os.listdir(os.path.join(r.dest, "checkpoints")) == ["checkpoint-0"]
