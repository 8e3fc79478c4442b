"""The README's main job, executed as a user would paste it.

The shell and Python blocks of "The main job" section are taken from README.md as they
are written; only the run path, the mount point and the `fzfs` binary are replaced by the
test's. If the README changes so that its example stops working, this test fails.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import FZFS_BIN, REPO

SECTION = "## The main job"


def main_job_blocks():
    text = open(os.path.join(REPO, "README.md")).read()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    blocks = re.findall(r"```(\w+)\n(.*?)```", text[start:end], re.S)
    return blocks


def test_readme_main_job_blocks_exist():
    kinds = [k for k, _ in main_job_blocks()]
    assert kinds[:3] == ["sh", "python", "sh"], kinds


def test_readme_main_job_runs(runs, fzfs, tmp_path):
    blocks = main_job_blocks()
    mount_cmd, py, umount_cmd = blocks[0][1], blocks[1][1], blocks[2][1]
    run = "llama-tied-bin"
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)

    def subst(s):
        s = s.replace("output_models/my_run", runs.src(run)).replace("/mnt/my_run", mnt)
        return re.sub(r"^fzfs ", FZFS_BIN + " ", s, flags=re.M)

    p = subprocess.run(["bash", "-ec", subst(mount_cmd)], env=fzfs.env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    try:
        q = subprocess.run([sys.executable, "-c", subst(py)], env=fzfs.env,
                           capture_output=True, text=True, timeout=300)
        assert q.returncode == 0, q.stderr[-3000:]
        # generate printed the prompt followed by 20 new tokens
        assert q.stdout.strip(), "the README example printed nothing"
    finally:
        u = subprocess.run(["bash", "-ec", subst(umount_cmd)], env=fzfs.env,
                           capture_output=True, text=True, timeout=120)
        if u.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    assert u.returncode == 0, u.stderr
    assert not os.path.ismount(mnt)
