"""fzfs status [--json] and fzfs cache stats --json: what is mounted, by which daemon, with
which options, where it logs, what its cache did, and which sources changed under it.

Mounts go through test_mount's Mounter (always unmounted by a finalizer); every
filesystem call on a mount runs in a child process with a timeout.
"""

import json
import os
import re
import shutil
import signal
import time

import pytest

from test_mount import (BF16_ST, Mounter, child, daemon_pids, is_mounted,  # noqa: F401
                        mounter, read_all, _fuse_available)


def status(fzfs, *args):
    p = fzfs.run("status", *args)
    assert p.returncode == 0, p.stderr
    return p


def status_json(fzfs):
    return {m["mountpoint"]: m for m in json.loads(status(fzfs, "--json").stdout)}


def wait_status(fzfs, mnt, pred, what, timeout=15):
    """The status entry of mnt once pred(entry) holds (the daemon refreshes every ~2 s)."""
    deadline = time.time() + timeout
    while True:
        e = status_json(fzfs).get(mnt)
        if e is not None and pred(e):
            return e
        if time.time() > deadline:
            pytest.fail(f"status of {mnt} never showed {what}: {json.dumps(e, indent=1)}")
        time.sleep(0.3)


def whole_bytes(fzfs, src, *opts):
    """Bytes of the files `fzfs plan` says are whole source files."""
    p = fzfs.run("plan", src, *opts, "--json")
    assert p.returncode == 0, p.stderr
    return sum(f["size"] for f in json.loads(p.stdout)["files"] if f.get("content") == "whole")


def test_status_lists_two_mounts_with_their_facts(runs, fzfs, mounter, tmp_path):
    cache = str(tmp_path / "cache")
    m1, m2 = str(tmp_path / "m1"), str(tmp_path / "m2")
    src1, src2 = runs.src("llama-tied-bin"), runs.src("llama-untied-st")
    mounter.mount(src1, m1, *BF16_ST, cache=cache)
    mounter.mount(src2, m2, "--root-copy")
    st = status_json(fzfs)
    assert {m1, m2} <= set(st), st.keys()
    a, b = st[m1], st[m2]
    assert a["source"] == os.path.realpath(src1) and b["source"] == os.path.realpath(src2)
    assert a["options"]["view"] == "--safetensors --dtype bfloat16", a["options"]
    assert b["options"]["view"] == "--root-copy", b["options"]
    assert "fsname=" + os.path.realpath(src1) in a["options"]["fuse"]
    assert "subtype=fzfs" in a["options"]["fuse"] and "ro" in a["options"]["fuse"].split(",")
    assert a["daemon_alive"] and b["daemon_alive"] and a["problem"] is None
    assert [a["daemon_pid"]] == daemon_pids(m1) and [b["daemon_pid"]] == daemon_pids(m2)
    assert a["log_file"] == m1 + ".log" and b["log_file"] == m2 + ".log"
    assert a["cache"]["dir"] == cache and b["cache"] is None
    assert a["stale_sources"] == [] and b["stale_sources"] == []
    assert a["cache"]["misses"] == 0 and a["bytes_served"] == 0

    text = status(fzfs).stdout
    for mnt, e, src in ((m1, a, src1), (m2, b, src2)):
        block = text.split(mnt + "\n", 1)[1].split("\n\n", 1)[0]
        assert f"source:        {os.path.realpath(src)}" in block, text
        assert f"daemon:        pid {e['daemon_pid']}" in block, text
        assert f"log:           {mnt}.log" in block, text
        assert "stale sources: none" in block, text
    assert f"cache:         {cache} (hits 0, misses 0" in text, text
    assert "options:       --safetensors --dtype bfloat16" in text, text

    # Reads move the counters: cold reads miss (and fill), a remount on the same cache hits.
    # A file passed through whole (.package_files_copied here) is read by the kernel from
    # its source (FUSE passthrough), not by the daemon: its bytes are not counted.
    sizes = read_all(m1) - whole_bytes(fzfs, src1, *BF16_ST)
    e = wait_status(fzfs, m1, lambda e: e["cache"]["misses"] > 0 and
                    e["bytes_served"] >= sizes, "misses and all bytes served")
    assert e["cache"]["hits"] == 0 and e["cache"]["fills"] == e["cache"]["misses"], e["cache"]
    assert e["reads"] > 0
    assert status_json(fzfs)[m2]["bytes_served"] == 0  # the other mount's counters are its own
    mounter.umount(m1)
    assert m1 not in status_json(fzfs)
    mounter.mount(src1, m1, *BF16_ST, cache=cache)
    read_all(m1)
    e = wait_status(fzfs, m1, lambda e: e["cache"]["hits"] > 0, "cache hits")
    assert e["cache"]["misses"] == 0, e["cache"]
    mounter.umount(m1)
    mounter.umount(m2)
    assert status(fzfs).stdout.strip() == "No fzfs mounts." or not (
        {m1, m2} & set(status_json(fzfs)))


def test_rewritten_source_is_listed_stale(runs, fzfs, mounter, tmp_path):
    src = str(tmp_path / "run")
    shutil.copytree(runs.src("llama-untied-st"), src, symlinks=True)
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, *BF16_ST)
    assert status_json(fzfs)[mnt]["stale_sources"] == []
    ckpt = os.path.join(src, "checkpoints", sorted(os.listdir(os.path.join(src, "checkpoints")))[-1])
    shard = os.path.join(ckpt, sorted(f for f in os.listdir(ckpt) if f.endswith(".safetensors"))[0])
    time.sleep(0.01)
    with open(shard, "r+b") as f:  # in place: same inode, new mtime
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    e = wait_status(fzfs, mnt, lambda e: e["stale_sources"], "a stale source")
    assert e["stale_sources"] == [os.path.realpath(shard)], e["stale_sources"]
    text = status(fzfs).stdout
    assert re.search(r"stale sources: \n    " + re.escape(os.path.realpath(shard)) +
                     r" \(changed after mounting", text), text
    mounter.umount(mnt)
    with open(mnt + ".log") as f:
        log = f.read()
    assert "source " + os.path.realpath(shard) + " changed after fzfs opened it" in log, log


def alive(pid):
    """Whether pid is a process not yet dead: its command line goes early in its exit,
    and closing its files (an inotify instance waits for a grace period) comes after, so
    only a zombie or a missing entry is dead."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_dead_daemon_is_reported_with_the_fix(runs, fzfs, mounter, tmp_path):
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src("llama-tied-bin"), mnt)
    pids = daemon_pids(mnt)
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.time() + 10
    while alive(pids[0]) and time.time() < deadline:
        time.sleep(0.05)
    e = status_json(fzfs)[mnt]
    assert e["daemon_alive"] is False and e["daemon_pid"] is None, e
    assert e["source"] == os.path.realpath(runs.src("llama-tied-bin"))
    assert f"`fzfs umount {mnt}`" in e["problem"], e
    text = status(fzfs).stdout
    block = text.split(mnt + "\n", 1)[1].split("\n\n", 1)[0]
    assert "daemon:        not running" in block and f"fzfs umount {mnt}" in block, text
    mounter.umount(mnt)
    assert mnt not in status_json(fzfs)


def test_cache_stats_json(runs, fzfs, mounter, tmp_path):
    cache = str(tmp_path / "cache")
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src("llama-tied-bin"), mnt, *BF16_ST, cache=cache)
    read_all(mnt)
    mounter.umount(mnt)
    p = fzfs.run("cache", "stats", "--json", "--cache-dir", cache)
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    text = fzfs.run("cache", "stats", "--cache-dir", cache).stdout
    want = dict(re.findall(r"^(\w+): (\d+)$", text, re.M))
    assert j["cache"] == cache
    assert {k: str(v) for k, v in j.items() if k != "cache"} == want, (j, text)
    assert j["entries"] > 0 and j["misses"] > 0 and j["fills"] == j["misses"]
    p = fzfs.run("cache", "verify", "--json", "--cache-dir", cache)
    assert p.returncode == 2 and "--json is for `fzfs cache stats` only" in p.stderr, p.stderr


def test_mount_without_a_visible_pid_file_is_unknown_not_dead(runs, fzfs, mounter, tmp_path):
    """Another user's mount keeps its pid file where this user cannot look: status must not
    call a live mount dead (nor tell the user to unmount it)."""
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src("llama-tied-bin"), mnt)
    e = status_json(fzfs)[mnt]
    pidfile = f"/run/fzfs/{e['device']}.pid"  # root's pid files
    assert os.path.isfile(pidfile)
    os.rename(pidfile, pidfile + ".hidden")
    try:
        e = status_json(fzfs)[mnt]
        assert e["daemon_alive"] is None and e["daemon_pid"] is None, e
        assert e["problem"].startswith("no daemon found: mounted by another user"), e
        assert "fzfs umount" not in e["problem"]
        block = status(fzfs).stdout.split(mnt + "\n", 1)[1].split("\n\n", 1)[0]
        assert "daemon:        unknown" in block, block
    finally:
        os.rename(pidfile + ".hidden", pidfile)
    assert status_json(fzfs)[mnt]["daemon_alive"] is True
    mounter.umount(mnt)
