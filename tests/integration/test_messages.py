"""Messages that say what to do: usage errors end with the --help hint and point to the
right option; finalize's chat-template warning comes once per command and never on
machine-readable output."""

import json
import os
import subprocess

import pytest

WARN = "Tokenizer has no chat_template"
RUN = "llama-tied-bin"  # its tokenizer has no chat template


@pytest.mark.parametrize("cmd", ["materialize", "plan"])
def test_dtype_int8_points_to_quantize(fzfs, runs, tmp_path, cmd):
    args = [cmd, runs.src(RUN)] + ([str(tmp_path / "d")] if cmd == "materialize" else [])
    p = fzfs.run(*args, "--dtype", "int8")
    assert p.returncode == 2
    assert "--quantize int8-weight-only" in p.stderr
    assert f"Try 'fzfs {cmd} --help'." in p.stderr
    assert not (tmp_path / "d").exists()


def test_dtype_typo_has_no_quantize_hint(fzfs, runs):
    p = fzfs.run("plan", runs.src(RUN), "--dtype", "bf16")
    assert p.returncode == 2 and "--quantize" not in p.stderr and "bf16" in p.stderr


@pytest.mark.parametrize("cmd", ["materialize", "plan", "mount"])
def test_bad_quantize_recipe_is_a_usage_error(fzfs, runs, tmp_path, cmd):
    extra = {"materialize": [str(tmp_path / "d")], "mount": [str(tmp_path)], "plan": []}[cmd]
    p = fzfs.run(cmd, runs.src(RUN), *extra, "--quantize", "int3")
    assert p.returncode == 2
    assert "int4-weight-only" in p.stderr and "'int3'" in p.stderr
    assert f"Try 'fzfs {cmd} --help'." in p.stderr


def test_chat_template_warning_once(fzfs, runs, tmp_path):
    p = fzfs.run("plan", runs.src(RUN))
    assert p.returncode == 0 and p.stderr.count(WARN) == 1
    p = fzfs.run("materialize", runs.src(RUN), tmp_path / "d")
    assert p.returncode == 0 and p.stderr.count(WARN) == 1
    p = fzfs.run("materialize", runs.src(RUN), tmp_path / "e", "--dry-run")
    assert p.returncode == 0 and p.stderr.count(WARN) == 1


def test_no_warning_on_plan_json(fzfs, runs):
    p = fzfs.run("plan", runs.src(RUN), "--json")
    assert p.returncode == 0 and WARN not in p.stderr
    json.loads(p.stdout)  # stdout is only the JSON document


def test_no_warning_with_a_template(fzfs, runs, inputs):
    p = fzfs.run("plan", runs.src(RUN), "-t",
                 os.path.join(inputs["EX"], "chat_templates", "chatml.jinja"))
    assert p.returncode == 0 and WARN not in p.stderr


def test_unrecognised_src_lists_the_layouts(fzfs, tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a model")
    p = fzfs.run("plan", empty)
    assert p.returncode == 1
    for word in ("Forgather", "Trainer", "checkpoint-N", "model.safetensors", "-c PATH"):
        assert word in p.stderr, (word, p.stderr)


def test_a_file_as_src_says_so(fzfs, runs, tmp_path):
    cfg = os.path.join(runs.src(RUN), "config.json")
    p = fzfs.run("materialize", cfg, tmp_path / "d")
    assert p.returncode == 1
    assert "is a file, not a directory" in p.stderr and "directory that contains" in p.stderr
    assert not (tmp_path / "d").exists()


def test_existing_empty_dest_is_accepted(fzfs, runs, materialized, tmp_path):
    from conftest import tree_snapshot
    dest = tmp_path / "dest"
    dest.mkdir()
    p = fzfs.run("materialize", runs.src(RUN), dest)
    assert p.returncode == 0, p.stderr
    want = materialized(RUN, [])
    want.check_ok()
    assert tree_snapshot(str(dest)) == tree_snapshot(want.dest)
    assert sorted(os.listdir(tmp_path)) == ["dest"], "no temporary left beside DEST"


def test_dest_with_content_is_still_refused(fzfs, runs, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / ".hidden").write_text("mine")
    p = fzfs.run("materialize", runs.src(RUN), dest)
    assert p.returncode == 1 and "already exists" in p.stderr
    assert os.listdir(dest) == [".hidden"]
