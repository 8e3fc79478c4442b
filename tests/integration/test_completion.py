"""Bash completion (completions/fzfs.bash, installed by meson install): commands,
each command's options as its --help lists them, and option values."""

import os
import subprocess

import pytest

from conftest import FZFS_BIN, REPO

SCRIPT = os.path.join(REPO, "completions", "fzfs.bash")


def complete(*words):
    """COMPREPLY for a command line whose last word is being completed."""
    arr = " ".join("'%s'" % w for w in (FZFS_BIN,) + words)
    prog = (f"source '{SCRIPT}'; COMP_WORDS=({arr}); COMP_CWORD={len(words)}; _fzfs; "
            'printf "%s\\n" "${COMPREPLY[@]}"')
    p = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.split("\n") if w]


def test_commands():
    got = complete("")
    for c in ("materialize", "plan", "mount", "umount", "cache", "verify"):
        assert c in got
    assert complete("ma") == ["materialize"]


@pytest.mark.parametrize("cmd,opt", [("materialize", "--dtype"), ("materialize", "--dry-run"),
                                     ("mount", "--log-file"), ("mount", "--workers"),
                                     ("plan", "--json"), ("mount", "--options")])
def test_options_come_from_help(cmd, opt):
    assert opt in complete(cmd, "--")


def test_every_help_option_completes():
    for cmd in ("materialize", "plan", "mount"):
        helptext = subprocess.run([FZFS_BIN, cmd, "--help"], capture_output=True,
                                  text=True).stdout
        got = set(complete(cmd, "--"))
        for line in helptext.splitlines():
            for word in line.replace(",", " ").split():
                if word.startswith("--") and word[2:3].isalpha():
                    assert word in got, (cmd, word)
                    break


def test_values():
    assert complete("materialize", "src", "dst", "--dtype", "bf") == ["bfloat16"]
    assert "int4-weight-only" in complete("mount", "--quantize", "int4")
    assert complete("cache", "st") == ["stats"]
    assert complete("plan", "--log-level", "WA") == ["WARNING"]
