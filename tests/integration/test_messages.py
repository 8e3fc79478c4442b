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
