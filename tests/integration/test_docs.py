"""The documentation says what the binary does: every command of `fzfs --help` is in the
README and the man page, and every option of every command's --help is in the man page."""

import os
import re
import subprocess

from conftest import FZFS_BIN, REPO


def commands():
    out = subprocess.run([FZFS_BIN, "--help"], capture_output=True, text=True).stdout
    block = out.split("commands:", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in block.strip().splitlines()]


def test_every_command_is_documented():
    cmds = commands()
    assert {"materialize", "plan", "mount", "umount", "cache", "verify", "status"} <= set(cmds)
    readme = open(os.path.join(REPO, "README.md")).read()
    man = open(os.path.join(REPO, "docs", "fzfs.1")).read()
    for c in cmds:
        assert f"fzfs {c}" in readme, f"README does not show `fzfs {c}`"
        assert re.search(r"fzfs %s\b" % c, man), f"the man page does not name `fzfs {c}`"


def test_every_option_is_in_the_man_page():
    man = open(os.path.join(REPO, "docs", "fzfs.1")).read().replace("\\-", "-")
    for c in commands():
        out = subprocess.run([FZFS_BIN, c, "--help"], capture_output=True, text=True).stdout
        for opt in sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out))):
            assert opt in man, f"`fzfs {c} --help` lists {opt}; the man page does not"
