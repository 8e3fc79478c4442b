"""FUSE passthrough: a mounted file that is the whole of one unchanged source file is
read by the kernel straight from that source (Linux 6.9+, root).

Which files qualify is the view's decision (`fzfs plan` says "whole"): a weight shard
nothing changes (same format, tensors, dtype and shard), a copied *.py, the optimizer
state. For those the mount's bytes equal materialize's and the source's; safetensors'
mmap, torch.load(mmap=True) and pread work; unmounting with such files open neither
hangs nor crashes; and the forced fallback (--no-passthrough, FZFS_NO_PASSTHROUGH=1)
and the fallback after a registration the kernel refuses give the same bytes through
the daemon. Each test checks from the daemon's log and
`fzfs status` that passthrough really was (or was not) used, so a mount that silently
never engages it fails.

Like test_mount.py, every filesystem call on a mount runs in a child process with a
timeout. With FZFS_ASAN_BIN set, the tests that mount also run against the sanitizer
build, and the daemon's log must hold no sanitizer report.
"""

import errno
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import Fzfs
from test_mount import (FS_TIMEOUT, Mounter, _fuse_available, child, daemon_pids,  # noqa: F401
                        diff_trees, is_mounted)
# fz: the release build and (with FZFS_ASAN_BIN) the sanitizer build; mounter: mounts
# that always go away, their logs free of sanitizer reports
from test_mount_trust import clone, fz, mount_log as read_log, mounter  # noqa: F401
from test_mount_trust import rewrite_in_place, weight_file

ST = ["--safetensors", "--skip-default-tokens"]  # llama-untied-st: both shards whole


def plan_files(fz, src, *opts):
    p = fz.run("plan", src, *opts, "--json")
    assert p.returncode == 0, p.stderr
    return {f["path"]: f for f in json.loads(p.stdout)["files"]}


def whole_files(fz, src, *opts):
    """{mounted path: source path} of the files the plan passes through whole."""
    return {p: f["source"] for p, f in plan_files(fz, src, *opts).items()
            if f.get("content") == "whole"}


def status_entry(fz, mnt, pred, what, timeout=15):
    """`fzfs status --json`'s entry of mnt once pred holds (refreshed every ~2 s)."""
    deadline = time.time() + timeout
    while True:
        p = fz.run("status", "--json")
        assert p.returncode == 0, p.stderr
        e = {m["mountpoint"]: m for m in json.loads(p.stdout)}.get(mnt)
        if e is not None and pred(e):
            return e
        if time.time() > deadline:
            pytest.fail(f"status of {mnt} never showed {what}: {json.dumps(e, indent=1)}")
        time.sleep(0.3)


READ_FILES = """
    import json, sys
    out = {}
    for p in sys.argv[1:]:
        with open(p, "rb") as f:
            out[p] = len(f.read())
    print(json.dumps(out))
"""


def check_passthrough_used(fz, mnt, files, min_opens):
    """Read `files` (mounted paths) whole on a mount where nothing else was read yet: the
    daemon must have served none of their bytes, and counted the passthrough opens."""
    log = read_log(mnt)
    assert len(re.findall(r"INFO: FUSE passthrough on", log)) == 1, log
    sizes = child(READ_FILES, *files)
    assert all(n > 0 for n in sizes.values()), sizes
    e = status_entry(fz, mnt, lambda e: e["passthrough"]["opens"] >= min_opens,
                     f"{min_opens} passthrough opens")
    assert e["passthrough"]["on"] is True and e["passthrough"]["why_off"] is None, e
    assert e["bytes_served"] == 0 and e["reads"] == 0, e
    return e


# ---- which files are whole -----------------------------------------------------------------

def test_plan_says_which_files_pass_through_whole(runs, fzfs):
    """An unchanged shard is whole (the source file, named), a changed one is not."""
    src = runs.src("llama-tied-bin")
    info = runs.info("llama-tied-bin")
    ckpt = os.path.join(src, info["latest"])
    # The tied head is kept as its own copy in shard 2, so the view makes it from the
    # embedding: shard 2 is rewritten; shard 1 holds only unchanged tensors.
    w = whole_files(fzfs, src)
    shard1 = f"{info['latest']}/pytorch_model-00001-of-00002.bin"
    shard2 = f"{info['latest']}/pytorch_model-00002-of-00002.bin"
    assert w.get(shard1) == os.path.join(ckpt, "pytorch_model-00001-of-00002.bin"), w
    assert shard2 not in w, w
    text = fzfs.run("plan", src)
    assert re.search(re.escape(shard1) + r" +\d+ +whole: the source file " +
                     re.escape(w[shard1]), text.stdout), text.stdout
    for opts in (["--dtype", "bfloat16"],  # a cast
                 ["--safetensors"],  # another format
                 ["--max-shard-size", "1G"],  # re-sharded
                 ["--add-tokens", os.path.join(os.path.dirname(__file__), "..", "..",
                                               "examples", "add_tokens", "chatml.yaml")]):
        w = whole_files(fzfs, src, *opts)
        assert not [p for p in w if p.endswith((".bin", ".safetensors"))], (opts, w)
    # safetensors source, safetensors output, nothing changed: both shards whole
    w = whole_files(fzfs, runs.src("llama-untied-st"), *ST)
    assert len([p for p in w if p.endswith(".safetensors")]) == 2, w


def test_safetensors_metadata_decides(runs, fzfs, tmp_path):
    """A safetensors shard passes through with its own __metadata__ only when that says
    format pt (or there is none): transformers refuses a file whose metadata names no
    format, which the rewritten shard (format pt) fixes."""
    from safetensors.torch import load_file, save_file
    src = clone(runs, "llama-untied-st", tmp_path)
    first, second = weight_file(src, runs, "llama-untied-st", 0), \
        weight_file(src, runs, "llama-untied-st", 1)
    save_file(load_file(first), first, metadata={"format": "pt", "note": "kept"})
    save_file(load_file(second), second, metadata={"note": "no format"})
    w = whole_files(fzfs, src, *ST)
    got = {os.path.basename(p) for p in w if p.endswith(".safetensors")}
    assert got == {os.path.basename(first)}, w


# ---- passthrough on ------------------------------------------------------------------------

@pytest.mark.parametrize("run,opts", [("llama-untied-st", ST), ("llama-tied-bin", [])],
                         ids=["safetensors", "bin-mixed"])
def test_bytes_equal_materialize(run, opts, runs, materialized, fz, mounter, tmp_path):
    ref = materialized(run, opts)
    ref.check_ok()
    whole = whole_files(fz, runs.src(run), *opts)
    shards = [p for p in whole if p.endswith((".bin", ".safetensors"))]
    assert shards, whole
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src(run), mnt, *opts)
    check_passthrough_used(fz, mnt, [os.path.join(mnt, p) for p in shards], len(shards))
    diff_trees(mnt, ref.dest)
    for p in shards:  # a whole shard is its source, byte for byte
        with open(os.path.join(ref.dest, p), "rb") as a, open(whole[p], "rb") as b:
            assert a.read() == b.read(), p
    mounter.umount(mnt)


MMAP_PREAD = """
    import json, mmap, os, random, sys, threading
    import torch
    from safetensors import safe_open
    mnt, dest = sys.argv[1], sys.argv[2]
    rels = sys.argv[3:]
    out = {"tensors": 0, "preads": 0, "maps": 0}
    for rel in rels:
        m, d = os.path.join(mnt, rel), os.path.join(dest, rel)
        with open(d, "rb") as f:
            ref = f.read()
        if rel.endswith(".safetensors"):
            with safe_open(m, framework="pt") as a, safe_open(d, framework="pt") as b:
                assert sorted(a.keys()) == sorted(b.keys())
                for k in a.keys():
                    assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
                    out["tensors"] += 1
        else:
            a = torch.load(m, weights_only=True, mmap=True)
            b = torch.load(d, weights_only=True)
            assert list(a) == list(b)
            for k in a:
                assert torch.equal(a[k], b[k]), k
                out["tensors"] += 1
        # pread at random offsets, from several threads, on several opens at once
        rng = random.Random(rel)
        jobs = [(rng.randrange(len(ref)), rng.randrange(1, 70000)) for _ in range(200)]
        errors = []
        def work(part):
            fd = os.open(m, os.O_RDONLY)
            try:
                for off, n in part:
                    if os.pread(fd, n, off) != ref[off:off + n]:
                        errors.append((off, n))
            finally:
                os.close(fd)
        ts = [threading.Thread(target=work, args=(jobs[i::4],)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors[:5]
        out["preads"] += len(jobs)
        # a plain mmap of the whole file
        with open(m, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert mm[:] == ref
            out["maps"] += 1
    print(json.dumps(out))
"""


@pytest.mark.parametrize("run,opts", [("llama-untied-st", ST), ("llama-tied-bin", [])],
                         ids=["safetensors", "bin"])
def test_mmap_and_pread(run, opts, runs, materialized, fz, mounter, tmp_path):
    ref = materialized(run, opts)
    ref.check_ok()
    shards = [p for p in whole_files(fz, runs.src(run), *opts)
              if p.endswith((".bin", ".safetensors"))]
    assert shards
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src(run), mnt, *opts)
    r = child(MMAP_PREAD, mnt, ref.dest, *shards, timeout=180)
    assert r["tensors"] > 0 and r["preads"] == 200 * len(shards) and r["maps"] == len(shards), r
    # every open above (4 threads, mmap, safe_open / torch.load) went passthrough: the
    # daemon answered no read
    e = status_entry(fz, mnt, lambda e: e["passthrough"]["opens"] >= 6 * len(shards),
                     "the passthrough opens")
    assert e["bytes_served"] == 0 and e["reads"] == 0, e
    mounter.umount(mnt)


# Open a whole file and mmap it, say "open", wait for a line, then read both; print the
# number of bytes read and whether they match the reference.
HOLD = """
    import json, mmap, sys
    path, ref = sys.argv[1], sys.argv[2]
    f = open(path, "rb")
    mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    print("open", flush=True)
    sys.stdin.readline()
    with open(ref, "rb") as r:
        want = r.read()
    got = f.read()
    print(json.dumps({"len": len(got), "same": got == want and mm[:] == want}), flush=True)
    mm.close()
    f.close()
"""


@pytest.mark.parametrize("lazy", [False, True], ids=["umount-busy", "umount-lazy"])
def test_umount_with_files_open(lazy, runs, materialized, fz, mounter, tmp_path):
    run, opts = "llama-untied-st", ST
    ref = materialized(run, opts)
    ref.check_ok()
    rel = sorted(p for p in whole_files(fz, runs.src(run), *opts) if p.endswith(".safetensors"))[0]
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src(run), mnt, *opts)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD),
                               os.path.join(mnt, rel), os.path.join(ref.dest, rel)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open", holder.stderr.read()
        status_entry(fz, mnt, lambda e: e["passthrough"]["opens"] >= 1, "a passthrough open")
        pids = daemon_pids(mnt)
        assert len(pids) == 1, pids
        t0 = time.time()
        p = fz.run("umount", *(["--lazy"] if lazy else []), mnt, timeout=60)
        assert time.time() - t0 < 30, "umount took too long"
        if not lazy:  # busy: refused at once, the mount keeps serving
            assert p.returncode == 1 and is_mounted(mnt), p.stderr
            assert "busy" in p.stderr, p.stderr
        else:
            assert p.returncode == 0 and not is_mounted(mnt), p.stderr
        out, err = holder.communicate("go\n", timeout=FS_TIMEOUT)
        assert holder.returncode == 0, err
        r = json.loads(out.strip().splitlines()[-1])
        assert r == {"len": os.path.getsize(os.path.join(ref.dest, rel)), "same": True}, r
        if lazy:  # the daemon exits after the last close, cleanly
            deadline = time.time() + 20
            while daemon_pids(mnt) and time.time() < deadline:
                time.sleep(0.1)
            assert daemon_pids(mnt) == []
        else:
            mounter.umount(mnt)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    log = read_log(mnt)
    assert "Unmounted" in log and not re.search(r"ERROR|CRITICAL", log), log


def test_changed_source_is_refused_at_open(runs, materialized, fz, mounter, tmp_path):
    """A source rewritten in place before a file is opened: the open fails with EIO (the
    kernel is never handed a changed source) and the log names it once. The unchanged
    shard still passes through."""
    run, opts = "llama-untied-st", ST
    ref = materialized(run, opts)
    ref.check_ok()
    src = clone(runs, run, tmp_path)
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, *opts)
    source = weight_file(src, runs, run, 1)
    rel = os.path.relpath(source, src)
    other = os.path.relpath(weight_file(src, runs, run, 0), src)
    rewrite_in_place(source)
    check_passthrough_used(fz, mnt, [os.path.join(mnt, other)], 1)
    r = child("""
        import json, os, sys
        out = {}
        for p in sys.argv[1:]:
            try:
                with open(p, "rb") as f:
                    out[p] = len(f.read())
            except OSError as e:
                out[p] = -e.errno
        print(json.dumps(out))
    """, os.path.join(mnt, rel), os.path.join(mnt, other))
    assert r[os.path.join(mnt, rel)] == -errno.EIO, r
    assert r[os.path.join(mnt, other)] == os.path.getsize(os.path.join(ref.dest, other)), r
    mounter.umount(mnt)
    log = read_log(mnt)
    lines = [ln for ln in log.splitlines() if source in ln]
    assert len(lines) == 1 and "ERROR:" in lines[0] and "changed" in lines[0], log


# ---- the fallback --------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["option", "env"])
def test_forced_fallback_gives_the_same_bytes(how, runs, materialized, home, mounter,
                                              tmp_path, fz):
    run, opts = "llama-untied-st", ST
    ref = materialized(run, opts)
    ref.check_ok()
    shards = [p for p in whole_files(fz, runs.src(run), *opts) if p.endswith(".safetensors")]
    mnt = str(tmp_path / "mnt")
    if how == "env":
        m = Mounter(Fzfs(fz.binary, home, dict(fz.env, FZFS_NO_PASSTHROUGH="1")), str(tmp_path))
        m.mount(runs.src(run), mnt, *opts)
        mounter.mounts.append(mnt)  # cleaned up with the others
        why = "FZFS_NO_PASSTHROUGH"
    else:
        mounter.mount(runs.src(run), mnt, *opts, "--no-passthrough")
        why = "--no-passthrough"
    diff_trees(mnt, ref.dest)
    sizes = child(READ_FILES, *[os.path.join(mnt, p) for p in shards])
    e = status_entry(fz, mnt, lambda e: e["bytes_served"] >= sum(sizes.values()),
                     "the shards' bytes served by the daemon")
    assert e["passthrough"]["on"] is False and e["passthrough"]["opens"] == 0, e
    assert why in e["passthrough"]["why_off"], e
    st = fz.run("status")
    assert re.search(r"passthrough: +off: forced off by " + re.escape(why), st.stdout), st.stdout
    mounter.umount(mnt)
    log = read_log(mnt)
    assert len(re.findall(r"INFO: FUSE passthrough off: forced off by " + re.escape(why),
                          log)) == 1, log


def test_failed_registration_falls_back(runs, materialized, fz, mounter, tmp_path):
    """A source the kernel refuses as a backing file (here: one on another fzfs mount,
    itself a FUSE passthrough filesystem: too deep a stack, ELOOP) turns passthrough off
    with one warning naming the file and the reason; every byte is then served by the
    daemon, the same bytes."""
    run, opts = "llama-untied-st", ST
    ref = materialized(run, opts)
    ref.check_ok()
    m1, m2 = str(tmp_path / "m1"), str(tmp_path / "m2")
    mounter.mount(runs.src(run), m1, *opts)
    mounter.mount(m1, m2, *opts)  # the view of a view: the same files, whole again
    try:
        shards = sorted(p for p in whole_files(fz, m1, *opts) if p.endswith(".safetensors"))
        assert len(shards) == 2, shards
        sizes = child(READ_FILES, *[os.path.join(m2, p) for p in shards])
        e = status_entry(fz, m2, lambda e: e["bytes_served"] >= sum(sizes.values()),
                         "the shards' bytes served by the daemon")
        assert e["passthrough"]["on"] is False and e["passthrough"]["opens"] == 0, e
        assert "registering" in e["passthrough"]["why_off"], e
        diff_trees(m2, ref.dest)
    finally:
        mounter.umount(m2)
        mounter.umount(m1)
    log = read_log(m2)
    warn = [ln for ln in log.splitlines() if "FUSE passthrough off from now on" in ln]
    assert len(warn) == 1 and "WARNING:" in warn[0] and "stacked filesystem" in warn[0], log
    assert m1 in warn[0] and not re.search(r"ERROR|CRITICAL", log), log
