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
timeout. With FZFS_ASAN_BIN or FZFS_TSAN_BIN set, the tests that mount also run against
that sanitizer build, and the daemon's log must hold no sanitizer report.
"""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import Fzfs
from test_mount import (FS_TIMEOUT, Mounter, _fuse_available, child, daemon_pids,  # noqa: F401
                        diff_trees, is_mounted)
# fz: the release build and (FZFS_ASAN_BIN, FZFS_TSAN_BIN) the sanitizer builds;
# mounter: mounts that always go away, their logs free of sanitizer reports
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


def poll(get, pred, fail, timeout, period):
    """get() once pred holds for it; pytest.fail(fail(last value)) after timeout s."""
    deadline = time.time() + timeout
    while True:
        v = get()
        if pred(v):
            return v
        if time.time() > deadline:
            pytest.fail(fail(v))
        time.sleep(period)


def status_entry(fz, mnt, pred, what, timeout=15):
    """`fzfs status --json`'s entry of mnt once pred holds (refreshed every ~2 s)."""
    def entry():
        p = fz.run("status", "--json")
        assert p.returncode == 0, p.stderr
        return {m["mountpoint"]: m for m in json.loads(p.stdout)}.get(mnt)
    return poll(entry, lambda e: e is not None and pred(e),
                lambda e: f"status of {mnt} never showed {what}: {json.dumps(e, indent=1)}",
                timeout, 0.3)


READ_FILES = """
    import json, sys
    out = {}
    for p in sys.argv[1:]:
        with open(p, "rb") as f:
            out[p] = len(f.read())
    print(json.dumps(out))
"""


# Read each file whole: its length, or -errno.
OPEN_ERRNO = """
    import json, sys
    out = {}
    for p in sys.argv[1:]:
        try:
            with open(p, "rb") as f:
                out[p] = len(f.read())
        except OSError as e:
            out[p] = -e.errno
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
    r = child(OPEN_ERRNO, os.path.join(mnt, rel), os.path.join(mnt, other))
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


# ---- a source changed under an open file ----------------------------------------------------

# Open a mounted file, say "open"; for each line on stdin read it whole with pread and
# print the length (or -errno) and whether the bytes equal the reference file.
PROBE = """
    import json, os, sys
    path, ref = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_RDONLY)
    print("open", flush=True)
    for _ in sys.stdin:
        out = {}
        try:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
            with open(ref, "rb") as f:
                out = {"len": len(data), "same": data == f.read()}
        except OSError as e:
            out = {"errno": e.errno}
        print(json.dumps(out), flush=True)
"""


class Holder:
    """A process holding a mounted file open (a passthrough open when the file is whole),
    reading it only when asked."""

    def __init__(self, path, ref):
        self.p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PROBE), path, ref],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "open", self.p.stderr.read()

    def read(self):
        self.p.stdin.write("read\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()  # the probe answers or dies; killed at close
        assert line, self.p.stderr.read()
        return json.loads(line)

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def wait_log(mnt, pattern, what, timeout=15):
    """The daemon log once `pattern` is in it."""
    return poll(lambda: read_log(mnt), lambda log: re.search(pattern, log),
                lambda log: f"the log of {mnt} never showed {what}:\n{log}", timeout, 0.05)


def torch_save_in_place(path):
    """Rewrite a .bin the way a trainer re-saving it does: torch.save truncates the same
    inode and writes new bytes (one tensor changed)."""
    import torch
    ino = os.stat(path).st_ino
    sd = torch.load(path, weights_only=True)
    k = sorted(sd)[0]
    sd[k] = sd[k] + 1
    time.sleep(0.05)
    torch.save(sd, path)
    assert os.stat(path).st_ino == ino, "torch.save made a new file: not a change in place"


def save_file_replacing(path):
    """safetensors' save_file writes a new file under the same name: a replacement."""
    from safetensors.torch import load_file, save_file
    ino = os.stat(path).st_ino
    sd = load_file(path)
    k = sorted(sd)[0]
    sd[k] = sd[k] + 1
    save_file(sd, path, metadata={"format": "pt"})
    assert os.stat(path).st_ino != ino, "save_file wrote in place: not a replacement"


CHANGES = {
    "torch.save": ("llama-tied-bin", [], torch_save_in_place),
    "truncate": ("llama-untied-st", ST, lambda p: os.truncate(p, os.path.getsize(p) // 2)),
    "replaced": ("llama-untied-st", ST, save_file_replacing),
}


@pytest.mark.parametrize("how", sorted(CHANGES))
def test_source_changed_under_an_open_file(how, runs, materialized, fz, mounter, tmp_path):
    """A whole file is open (passthrough: the daemon sees none of its reads) when its
    source is rewritten in place (torch.save of the same name) or truncated. Without any
    read or open through the mount, the daemon logs the change once at ERROR naming the
    source and `fzfs status` lists it as stale within seconds (the watcher's inotify
    event); the open file is revoked: its reads fail with EIO instead of showing the new
    bytes; a new open fails with EIO. A source replaced by a new file (safetensors'
    save_file) is no change: the open file and new opens keep the old, consistent bytes,
    and status lists it as replaced."""
    run, opts, change = CHANGES[how]
    ref = materialized(run, opts)
    ref.check_ok()
    src = clone(runs, run, tmp_path)
    whole = {p: s for p, s in whole_files(fz, src, *opts).items()
             if p.endswith((".bin", ".safetensors"))}
    rel = sorted(whole)[0]
    source, want = whole[rel], os.path.join(ref.dest, rel)
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, *opts)
    h = Holder(os.path.join(mnt, rel), want)
    try:
        assert h.read() == {"len": os.path.getsize(want), "same": True}
        status_entry(fz, mnt, lambda e: e["passthrough"]["opens"] >= 1, "a passthrough open")
        change(source)
        if how == "replaced":
            e = status_entry(fz, mnt, lambda e: source in e["replaced_sources"],
                             "the source replaced")
            assert e["stale_sources"] == [], e
            assert h.read() == {"len": os.path.getsize(want), "same": True}
            r = child(OPEN_ERRNO, os.path.join(mnt, rel))
            assert r == {os.path.join(mnt, rel): os.path.getsize(want)}, r
        else:
            # one line: the mounted files made from the source, then the source
            wait_log(mnt, r"ERROR: " + re.escape(rel) + r"(, [^:]*)?: source " +
                     re.escape(source) + " changed", "the change logged")
            e = status_entry(fz, mnt, lambda e: e["stale_sources"] == [source],
                             "the source stale", timeout=10)
            # The watcher revoked the open file before status listed the source.
            wait_log(mnt, r"WARNING: " + re.escape(os.path.join(mnt, rel)) +
                     r" was open in FUSE passthrough mode when its source changed: reads of "
                     "it now fail with an I/O error", "the open file revoked", timeout=5)
            assert h.read() == {"errno": errno.EIO}
            r = child(OPEN_ERRNO, os.path.join(mnt, rel))
            assert r == {os.path.join(mnt, rel): -errno.EIO}, r
            e = status_entry(fz, mnt, lambda e: True, "the mount")
        assert e["bytes_served"] == 0 and e["reads"] == 0, e  # nothing went through the daemon
    finally:
        h.close()
    t0 = time.time()
    mounter.umount(mnt)
    assert daemon_pids(mnt) == [], "the daemon outlived fzfs umount"
    assert time.time() - t0 < 30, "umount took too long"
    log = read_log(mnt)
    errors = [ln for ln in log.splitlines() if re.search(r"ERROR|CRITICAL", ln)]
    if how == "replaced":
        assert errors == [], log
    else:
        assert len(errors) == 1 and source in errors[0], log


def test_many_sources_in_several_directories(runs, materialized, fz, mounter, tmp_path):
    """A run with 300 copied *.py (150 at the root, 150 symlinked from the root into a
    code/ directory, so their sources live there) and its weight shards in the checkpoint:
    sources in three directories, one watch each. Changing one source in each directory
    (a rewrite in place, an append, a truncation) is found for exactly those three, with
    no read through the mount, and only their open files fail."""
    run, opts = "llama-untied-st", ST
    src = clone(runs, run, tmp_path)
    os.mkdir(os.path.join(src, "code"))
    for i in range(150):
        with open(os.path.join(src, f"mod_{i:03d}.py"), "w") as f:
            f.write(f"# module {i}\nVALUE = {i}\n")
        with open(os.path.join(src, "code", f"impl_{i:03d}.py"), "w") as f:
            f.write(f"# implementation {i}\nVALUE = {i * 7}\n")
        os.symlink(os.path.join("code", f"impl_{i:03d}.py"),
                   os.path.join(src, f"link_{i:03d}.py"))
    whole = whole_files(fz, src, *opts)
    assert len([p for p in whole if p.endswith(".py")]) == 300, sorted(whole)
    dirs = {os.path.dirname(s) for s in whole.values()}
    assert len(dirs) == 3, dirs
    shard = sorted(p for p in whole if p.endswith(".safetensors"))[0]
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, *opts)
    # mounted path -> its source, for the files changed and a few left alone
    changed = {"mod_007.py": whole["mod_007.py"], "link_009.py": whole["link_009.py"],
               shard: whole[shard]}
    kept = ["mod_008.py", "link_010.py", "link_149.py",
            sorted(p for p in whole if p.endswith(".safetensors"))[1]]
    refs = str(tmp_path / "refs")  # the bytes each file had when mounted
    os.mkdir(refs)
    holders = {}
    try:
        for rel in list(changed) + kept:
            ref = os.path.join(refs, rel.replace("/", "_"))
            shutil.copyfile(whole[rel], ref)
            holders[rel] = Holder(os.path.join(mnt, rel), ref)
        status_entry(fz, mnt, lambda e: e["passthrough"]["opens"] >= len(holders),
                     "the passthrough opens")
        with open(changed["mod_007.py"], "r+") as f:  # same size, new bytes
            f.write("#")
        with open(changed["link_009.py"], "a") as f:
            f.write("EXTRA = 1\n")
        os.truncate(changed[shard], 100)
        want = sorted(changed.values())
        e = status_entry(fz, mnt, lambda e: sorted(e["stale_sources"]) == want,
                         "exactly the three changed sources stale", timeout=10)
        assert e["replaced_sources"] == [], e
        for rel in changed:
            wait_log(mnt, r"WARNING: " + re.escape(os.path.join(mnt, rel)) + " was open",
                     f"{rel} revoked", timeout=5)
            assert holders[rel].read() == {"errno": errno.EIO}, rel
        for rel in kept:
            assert holders[rel].read() == {"len": os.path.getsize(whole[rel]), "same": True}, rel
        e = status_entry(fz, mnt, lambda e: True, "the mount")
        assert e["bytes_served"] == 0 and e["reads"] == 0, e
    finally:
        for h in holders.values():
            h.close()
    mounter.umount(mnt)
    log = read_log(mnt)
    errors = [ln for ln in log.splitlines() if re.search(r"ERROR|CRITICAL", ln)]
    assert len(errors) == 3 and all(any(s in ln for ln in errors) for s in want), log


# inotify refused, as on a kernel without it (inotify_init1 fails) or for a user out of
# watches (fs.inotify.max_user_watches reached: inotify_add_watch fails with ENOSPC).
NO_INOTIFY = {
    "no-inotify": "int inotify_init1(int flags) { (void)flags; errno = ENOSYS; return -1; }",
    "out-of-watches": "int inotify_add_watch(int fd, const char *path, uint32_t mask)\n"
                      "{ (void)fd; (void)path; (void)mask; errno = ENOSPC; return -1; }",
}


@pytest.mark.parametrize("case", sorted(NO_INOTIFY))
def test_without_inotify_changes_are_still_found(case, runs, materialized, fz, mounter,
                                                  tmp_path):
    """Without inotify the daemon says so at DEBUG and finds a change as before: the
    status refresh (every 2 s) finds it, logs it once, and the open file is revoked."""
    shim = tmp_path / "shim.c"
    shim.write_text("#include <errno.h>\n#include <stdint.h>\n" + NO_INOTIFY[case] + "\n")
    so = str(tmp_path / "shim.so")
    cc = subprocess.run(["cc", "-shared", "-fPIC", "-o", so, str(shim)], capture_output=True,
                        text=True)
    assert cc.returncode == 0, cc.stderr
    env = dict(fz.env, LD_PRELOAD=so)
    if "ASAN_OPTIONS" in env:  # the shim comes before the sanitizer runtime
        env["ASAN_OPTIONS"] += ":verify_asan_link_order=0"
    shimmed = Mounter(Fzfs(fz.binary, fz.home, env), str(tmp_path))
    run, opts = "llama-untied-st", ST
    src = clone(runs, run, tmp_path)
    whole = {p: s for p, s in whole_files(fz, src, *opts).items() if p.endswith(".safetensors")}
    rel = sorted(whole)[0]
    source = whole[rel]
    ref = str(tmp_path / "ref")
    shutil.copyfile(source, ref)
    mnt = str(tmp_path / "mnt")
    mounter.mounts.append(mnt)  # cleaned up with the others
    shimmed.mount(src, mnt, *opts, "--log-level", "DEBUG")
    log = wait_log(mnt, r"DEBUG: source watcher: (no inotify|cannot watch)", "why not")
    want = "no inotify" if case == "no-inotify" else "cannot watch " + re.escape(
        os.path.dirname(source)) + r" \(No space left on device\)"
    assert re.search(r"DEBUG: source watcher: " + want, log), log
    h = Holder(os.path.join(mnt, rel), ref)
    try:
        assert h.read() == {"len": os.path.getsize(ref), "same": True}
        rewrite_in_place(source)
        status_entry(fz, mnt, lambda e: e["stale_sources"] == [source], "the source stale")
        wait_log(mnt, r"WARNING: " + re.escape(os.path.join(mnt, rel)) + " was open",
                 "the open file revoked", timeout=5)
        assert h.read() == {"errno": errno.EIO}
    finally:
        h.close()
    mounter.umount(mnt)
    log = read_log(mnt)
    errors = [ln for ln in log.splitlines() if re.search(r"ERROR|CRITICAL", ln)]
    assert len(errors) == 1 and source in errors[0], log
