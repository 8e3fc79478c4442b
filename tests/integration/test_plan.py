"""fzfs plan [--json], --dry-run, and the CLI basics."""

import json
import os

import pytest

from conftest import tree_snapshot


def test_help_and_version(fzfs):
    for args in (["--help"], ["materialize", "--help"], ["plan", "--help"]):
        p = fzfs.run(*args)
        assert p.returncode == 0, (args, p.stderr)
        assert "materialize" in p.stdout or "--safetensors" in p.stdout, args
    p = fzfs.run("materialize", "--help")
    for opt in ("--checkpoint", "--add-tokens", "--skip-default-tokens", "--chat-template-path",
                "--no-auto-stop-tokens", "--stop-tokens", "--generation-config", "--keep-optimizer",
                "--root-copy", "--safetensors", "--dtype", "--device", "--dry-run", "--log-level"):
        assert opt in p.stdout, f"materialize --help does not mention {opt}"
    p = fzfs.run("--version")
    assert p.returncode == 0 and p.stdout.startswith("fzfs "), p.stderr
    # libfuse 3.16+ (the system's or the pinned subproject): FUSE passthrough is available
    lf = p.stdout.split("(libfuse ")[1].rstrip(")\n").split(".")
    assert (int(lf[0]), int(lf[1])) >= (3, 16), p.stdout


@pytest.mark.parametrize("run,opts,must_mention", [
    ("llama-tied-bin", [], ["checkpoint-1500"]),
    ("llama-untied-st", [], ["checkpoint-500", "model.embed_tokens.weight", "lm_head.weight", "[PAD]"]),
    ("custom-code", ["--safetensors"], ["checkpoint-200", "causal_lm.input_encoder.embedding.weight"]),
    ("flat-hf", ["--generation-config", "precise"], ["checkpoint-0"]),
    ("nopad-tied-bin", ["--add-tokens", "{EX}/add_tokens/chatml.yaml"], ["<|im_end|>", "<|im_start|>"]),
], ids=["tied", "untied-pad", "custom", "flat", "chatml"])
def test_plan_json(fzfs, runs, inputs, run, opts, must_mention):
    from conftest import expand
    opts = expand(opts, runs, run, inputs)
    before = tree_snapshot(runs.src(run))
    p = fzfs.run("plan", runs.src(run), *opts, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert isinstance(doc, dict) and doc
    text = json.dumps(doc)
    for word in must_mention:
        assert word in text, f"plan --json does not mention {word}"
    assert tree_snapshot(runs.src(run)) == before, "plan modified SRC"
    p2 = fzfs.run("plan", runs.src(run), *opts, "--json")
    assert p2.stdout == p.stdout, "plan --json is not deterministic"


def test_plan_text(fzfs, runs):
    p = fzfs.run("plan", runs.src("llama-tied-bin"))
    assert p.returncode == 0, p.stderr
    assert "checkpoint-1500" in p.stdout + p.stderr


def test_plan_reports_errors_like_materialize(fzfs, runs, tmp_path):
    p = fzfs.run("plan", runs.src("llama-tied-bin"), "--generation-config", "no_such_preset_zz")
    assert p.returncode == 1 and "no_such_preset_zz" in p.stderr
    p = fzfs.run("plan", str(tmp_path / "missing-src"))
    assert p.returncode == 1 and "missing-src" in p.stderr


@pytest.mark.parametrize("opts", [[], ["--add-tokens", "{EX}/add_tokens/chatml.yaml", "--keep-optimizer",
                                       "--safetensors", "--dtype", "bfloat16"]], ids=["default", "options"])
def test_dry_run_writes_nothing(fzfs, runs, inputs, tmp_path, opts):
    from conftest import expand
    opts = expand(opts, runs, "llama-untied-st", inputs)
    parent = tmp_path / "out"
    parent.mkdir()
    dest = parent / "dest"
    before = tree_snapshot(runs.src("llama-untied-st"))
    p = fzfs.run("materialize", runs.src("llama-untied-st"), str(dest), "--dry-run", *opts)
    assert p.returncode == 0, p.stderr
    assert not os.path.lexists(dest)
    assert os.listdir(parent) == []
    assert tree_snapshot(runs.src("llama-untied-st")) == before
    assert "checkpoint-500" in p.stdout + p.stderr


def test_dry_run_still_validates(fzfs, runs, tmp_path):
    parent = tmp_path / "out"
    parent.mkdir()
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), str(parent / "dest"), "--dry-run",
                 "-t", str(tmp_path / "missing.jinja"))
    assert p.returncode == 1 and "missing.jinja" in p.stderr
    assert os.listdir(parent) == []


def test_materialize_does_not_touch_src(fzfs, runs, tmp_path):
    before = tree_snapshot(runs.src("custom-code"))
    st = {n: os.stat(os.path.join(runs.src("custom-code"), n)).st_mtime_ns
          for n in os.listdir(runs.src("custom-code"))}
    p = fzfs.run("materialize", runs.src("custom-code"), str(tmp_path / "d"), "--keep-optimizer")
    assert p.returncode == 0, p.stderr
    assert tree_snapshot(runs.src("custom-code")) == before
    assert st == {n: os.stat(os.path.join(runs.src("custom-code"), n)).st_mtime_ns
                  for n in os.listdir(runs.src("custom-code"))}
