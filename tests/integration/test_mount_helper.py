"""mount(8) and /etc/fstab: `mount -t fuse.fzfs SRC MNT -o dtype=bfloat16,safetensors` and an
fstab line work, through mount.fuse3 running `fzfs SRC MNT -o OPTS` (the helper convention).

mount(8) runs helpers with a fixed PATH, so the tests use the build's binary in two ways:
the `-t fuse` form with `PROGRAM#SRC` as the source (mount.fuse3 runs PROGRAM), and the
`fuse.fzfs` type with a temporary /usr/local/sbin/fzfs symlink to the build (first on
that PATH; never replacing an existing file). Every mount is undone by a finalizer.
"""

import json
import os
import shutil
import signal
import subprocess

import pytest

from conftest import FZFS_BIN, tree_snapshot
from test_mount import abort_and_detach, is_mounted, mount_entry

OPTS = "dtype=bfloat16,safetensors,_netdev,noauto,nofail,x-systemd.automount"
RUN = "llama-untied-st"


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.fail("mount(8) tests need root and /dev/fuse")


@pytest.fixture
def mnt(tmp_path, fzfs):
    m = str(tmp_path / "mnt")
    os.makedirs(m)
    yield m
    if is_mounted(m):
        fzfs.run("umount", m, timeout=30)
    if is_mounted(m):
        abort_and_detach(m)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if m.encode() in argv and any(a.endswith(b"fzfs") for a in argv[:1]):
                os.kill(int(d), signal.SIGKILL)


def private_opts(tmp_path):
    return f"cache_dir={tmp_path}/cache,log_file={tmp_path}/mount.log"


def run(cmd, fzfs, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, env=fzfs.env, timeout=timeout)


def check_mount(mnt, src, materialized, runs):
    entry = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            a, b = line.split(" - ", 1)
            if a.split()[4] == mnt:
                entry = b.split()
    assert entry, "nothing mounted"
    fstype, source, superopts = entry[0], entry[1], entry[2]
    assert fstype == "fuse.fzfs"
    assert source == os.path.realpath(src), "fsname is the source, so findmnt/df say which run"
    assert "ro" in superopts.split(",")
    cfg = json.load(open(os.path.join(mnt, "config.json")))
    assert cfg["dtype"] == "bfloat16"
    want = materialized(RUN, ["--dtype", "bfloat16", "--safetensors"])
    want.check_ok()
    assert tree_snapshot(mnt) == tree_snapshot(want.dest)
    df = subprocess.run(["df", "--output=source,size,used,avail,pcent", mnt],
                        capture_output=True, text=True).stdout.splitlines()[-1].split()
    assert df[0] == os.path.realpath(src) and df[2] == "0" and df[4] == "-", df


def test_mount_t_fuse_with_program(runs, fzfs, mnt, tmp_path, materialized):
    src = runs.src(RUN)
    p = run(["mount", "-t", "fuse", f"{FZFS_BIN}#{src}", mnt, "-o",
             OPTS + "," + private_opts(tmp_path)], fzfs)
    assert p.returncode == 0, p.stderr
    check_mount(mnt, src, materialized, runs)
    p = run(["umount", mnt], fzfs)
    assert p.returncode == 0, p.stderr
    assert not is_mounted(mnt)


@pytest.fixture
def sbin_fzfs():
    link = "/usr/local/sbin/fzfs"
    if os.path.lexists(link):
        pytest.fail(f"{link} exists; this test puts a temporary symlink there")
    os.makedirs("/usr/local/sbin", exist_ok=True)
    os.symlink(FZFS_BIN, link)
    yield link
    os.unlink(link)


def test_mount_t_fuse_fzfs(runs, fzfs, mnt, tmp_path, materialized, sbin_fzfs):
    src = runs.src(RUN)
    p = run(["mount", "-t", "fuse.fzfs", src, mnt, "-o", OPTS + "," + private_opts(tmp_path)],
            fzfs)
    assert p.returncode == 0, p.stderr
    check_mount(mnt, src, materialized, runs)
    p = fzfs.run("umount", mnt)
    assert p.returncode == 0, p.stderr


def test_fstab_line(runs, fzfs, mnt, tmp_path, materialized, sbin_fzfs):
    src = runs.src(RUN)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# a training run, finalized\n"
                     f"{src} {mnt} fuse.fzfs {OPTS},{private_opts(tmp_path)},allow_other 0 0\n")
    p = run(["mount", "--fstab", str(fstab), mnt], fzfs)
    assert p.returncode == 0, p.stderr
    check_mount(mnt, src, materialized, runs)
    assert "allow_other" in open("/proc/self/mountinfo").read().split(mnt, 1)[1].split("\n")[0]
    p = run(["umount", mnt], fzfs)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("opts,msg", [
    ("dtype=int3", "--dtype must be one of"),
    ("dtype", "-o dtype needs a value"),
    ("safetensors=yes", "-o safetensors takes no value"),
    ("no_such_fuse_option", "no_such_fuse_option"),
])
def test_helper_form_errors(runs, fzfs, mnt, opts, msg):
    p = fzfs.run(runs.src(RUN), mnt, "-o", "rw,dev,suid," + opts)
    assert p.returncode in (1, 2) and msg in p.stderr, p.stderr
    assert not is_mounted(mnt)


def test_helper_form_is_not_taken_for_a_typo(fzfs, tmp_path):
    p = fzfs.run("materialise", "a")  # two words only: still an unknown command
    assert p.returncode == 2 and "unknown command" in p.stderr
