"""Mount lifecycle: a non-empty mount point, a second mount on an fzfs mount, a busy
unmount and `fzfs umount --lazy`, the daemon's per-mount log file (ISO timestamps,
absolute paths, progress while a cold read computes).

Mounts go through test_mount's Mounter (always unmounted by a finalizer); every
filesystem call on a mount runs in a child process with a timeout.
"""

import os
import re
import subprocess
import sys
import time

import pytest

from conftest import Fzfs
from test_mount import (BF16_ST, MAKE_RUNS, Mounter, child, daemon_pids, is_mounted,  # noqa: F401
                        mounter, _fuse_available)

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "


def test_non_empty_mount_point_is_hidden_not_refused(runs, fzfs, mounter, tmp_path):
    mnt = tmp_path / "full"
    mnt.mkdir()
    (mnt / "x").write_text("under")
    (mnt / "y").write_text("under")
    p = mounter.mount(runs.src("llama-tied-bin"), str(mnt))
    assert f"INFO: Mount point {mnt} is not empty: its 2 entries are hidden while the view " \
           "is mounted" in p.stderr, p.stderr
    names = child("import os, sys, json; print(json.dumps(sorted(os.listdir(sys.argv[1]))))",
                  mnt)
    assert "config.json" in names and "x" not in names, names
    mounter.umount(str(mnt))
    assert sorted(os.listdir(mnt)) == ["x", "y"] and (mnt / "x").read_text() == "under"


def test_second_mount_on_an_fzfs_mount_says_so(runs, fzfs, mounter, tmp_path):
    mnt = str(tmp_path / "mnt")
    src = runs.src("llama-tied-bin")
    mounter.mount(src, mnt)
    p = fzfs.run("mount", runs.src("llama-untied-st"), mnt, "--no-cache")
    assert p.returncode == 1, p.stderr
    assert f"Mount point {mnt}: already an fzfs mount (of {os.path.realpath(src)}); unmount " \
           f"it first with `fzfs umount {mnt}`" in p.stderr, p.stderr
    assert len(daemon_pids(mnt)) == 1  # nothing stacked
    mounter.umount(mnt)
    assert not is_mounted(mnt)


HOLD = """
import os, sys
fd = os.open(os.path.join(sys.argv[1], "config.json"), os.O_RDONLY)
head = os.read(fd, 10)
print("open", flush=True)
sys.stdin.readline()
rest = b""
while True:
    b = os.read(fd, 65536)
    if not b:
        break
    rest += b
os.close(fd)
print(len(head + rest), flush=True)
"""


def test_busy_umount_hints_and_lazy_detaches(runs, fzfs, mounter, tmp_path):
    mnt = str(tmp_path / "mnt")
    src = runs.src("llama-tied-bin")
    mounter.mount(src, mnt)
    size = os.path.getsize(os.path.join(src, "config.json"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, mnt], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        p = fzfs.run("umount", mnt)
        assert p.returncode == 1 and is_mounted(mnt), p.stderr
        assert f"{mnt}: target is busy" in p.stderr, p.stderr
        assert f"`fuser -vm {mnt}`" in p.stderr and f"`fzfs umount --lazy {mnt}`" in p.stderr
        pids = daemon_pids(mnt)
        p = fzfs.run("umount", "--lazy", mnt)
        assert p.returncode == 0, p.stderr
        assert not is_mounted(mnt)
        assert "exits when the last open file on it is closed" in p.stderr, p.stderr
        # The open file still reads (its daemon still serves it) ...
        assert len(pids) == 1 and daemon_pids(mnt) == pids
        out, _ = holder.communicate("go\n", timeout=60)
        assert holder.returncode == 0 and int(out.split()[-1]) > 0, out
        # ... and the daemon goes away after the last close.
        deadline = time.time() + 20
        while daemon_pids(mnt) and time.time() < deadline:
            time.sleep(0.1)
        assert daemon_pids(mnt) == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert size > 0


def escaped(path):
    """systemd-escape -p"""
    out = []
    p = path.strip("/")
    for i, ch in enumerate(p):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch == "_" or (ch == "." and i)):
            out.append(ch)
        else:
            out.extend("\\x%02x" % b for b in ch.encode())
    return "".join(out) or "-"


@pytest.fixture(scope="module")
def big50(session_tmp):
    """A ~50 MB fp32 run made by torch: its bf16 model-00001-of-00001.safetensors takes a moment to cast."""
    out = os.path.join(session_tmp, "lifecycle-big")
    if not os.path.isdir(os.path.join(out, "big")):
        subprocess.run([sys.executable, MAKE_RUNS, out, "big", "--size-mb", "50"], check=True,
                       capture_output=True, timeout=600)
    return os.path.join(out, "big")


def test_per_mount_log_file_with_timestamps_and_progress(big50, fzfs, mounter, tmp_path):
    state = tmp_path / "state"
    fz = Fzfs(fzfs.binary, fzfs.home, {"XDG_STATE_HOME": str(state)})
    mnt = str(tmp_path / "my mnt-1")
    os.makedirs(mnt)
    mounter.mounts.append(mnt)
    rel = os.path.relpath(big50, str(tmp_path))
    p = fz.run("mount", rel, mnt, "--no-cache", "--root-copy", *BF16_ST, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    log = os.path.join(str(state), "fzfs", "mnt-" + escaped(mnt) + ".log")
    assert f"INFO: the mount daemon logs to {log}" in p.stderr, p.stderr
    assert os.path.isfile(log), os.listdir(os.path.join(str(state), "fzfs"))
    n = child("""
        import os, sys
        with open(os.path.join(sys.argv[1], "model-00001-of-00001.safetensors"), "rb") as f:
            print(len(f.read()))
    """, mnt, timeout=300)
    assert n > 8 << 20
    mounter.umount(mnt)
    text = open(log).read()
    lines = text.splitlines()
    assert lines and all(re.match(ISO, ln) for ln in lines), text
    assert re.search(ISO + "INFO: Mounted " + re.escape(os.path.realpath(big50)) + " at " +
                     re.escape(mnt) + r" \(pid \d+\)$", text, re.M), text
    target = re.escape(mnt + "/model-00001-of-00001.safetensors")
    assert re.search(ISO + "INFO: computing " + target + r" \.\.\. \d{1,2}% \(\d+\.\d\d GB/s\)$",
                     text, re.M), text
    done = re.findall(ISO + "INFO: computing " + target + r": done in \d+\.\d s \(\d+\.\d MB, "
                      r"every byte computed: no cache\)$", text, re.M)
    assert len(done) == 1, text
    assert re.search(ISO + "INFO: Unmounted " + re.escape(mnt) + "$", text, re.M), text


def test_each_daemon_logs_mounted_once(runs, fzfs, mounter, tmp_path):
    """The default log is one file per mount point, appended to by every mount there: two
    mounts in a row at one mount point give two "Mounted" lines, one per daemon (its pid),
    each before its own "Unmounted" and none repeated, even with the parent's stdout a pipe
    (stdio buffers are flushed before the daemon forks). A log that seems to say "Mounted"
    twice holds two mounts."""
    state = tmp_path / "state"
    fz = Fzfs(fzfs.binary, fzfs.home, {"XDG_STATE_HOME": str(state)})
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    mounter.mounts.append(mnt)
    pids = []
    for _ in range(2):
        p = fz.run("mount", runs.src("llama-tied-bin"), mnt, "--no-cache")
        assert p.returncode == 0, p.stderr
        pids += daemon_pids(mnt)
        mounter.umount(mnt)
    assert len(pids) == 2 and pids[0] != pids[1], pids
    log = open(os.path.join(str(state), "fzfs", "mnt-" + escaped(mnt) + ".log")).read()
    events = re.findall(ISO + r"INFO: (Mounted|Unmounted) .*?(?:\(pid (\d+)\))?$", log, re.M)
    assert events == [("Mounted", str(pids[0])), ("Unmounted", ""),
                      ("Mounted", str(pids[1])), ("Unmounted", "")], log


def test_missing_dev_fuse_explains_the_container_case(runs, fzfs, tmp_path):
    """In a mount namespace whose /dev has no fuse device, as in a container without
    --device /dev/fuse."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = 'mount -t tmpfs tmpfs /dev && exec "$@"'
    p = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", fzfs.binary, "mount",
                        runs.src("llama-tied-bin"), str(mnt), "--no-cache"],
                       capture_output=True, text=True, env=fzfs.env, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "ERROR: /dev/fuse: does not exist: fzfs mount needs the FUSE device. In a " \
           "container, start it with `--device /dev/fuse --cap-add SYS_ADMIN`" in p.stderr, p.stderr
    assert "fzfs materialize" in p.stderr and "logs to" not in p.stderr, p.stderr
    assert not is_mounted(str(mnt))
