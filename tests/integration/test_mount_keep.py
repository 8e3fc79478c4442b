"""Computed files kept whole (a bf16 cast of a ~120 MB fp32 run) in the cache directory,
so that opens - in that mount, or a fresh one with the same cache - are read by the kernel
from it (FUSE passthrough), with materialize's bytes (issue 9, item 4). A safetensors
shard is computed whole at its first open, on the compute pool, straight into the cache
directory (nothing of it in LMDB), and that first open already reads it by the kernel; a
.bin shard too (its zip headers made from the CRCs its record data gave: BF16_BIN). With
--compute-on-read (ON_READ) it is computed as read, and kept once the mount has answered
every byte of it.

Each test reads `fzfs status` and the daemon's log to see which path served the bytes,
so a mount that silently never keeps, or keeps and never uses, fails. A kept file that
was changed on disk, or whose source changed, is never used; an open going through the
daemon at the time makes the next opens go through it too (the kernel refuses to mix);
unmounting while a file is being written leaves no temporary; `fzfs cache stats`,
`verify` and `clear` see the kept files.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import builds
from test_mount import BF16_ST, _fuse_available, child, diff_trees, mounter  # noqa: F401
from test_mount_compute import (fzfs_module, read_and_compare, ref120, ref120bin,  # noqa: F401
                                run120)
from test_mount_compute import BF16_BIN, ON_READ, weight_files
from test_mount_trust import fz  # noqa: F401
from test_passthrough import poll, status_entry

def log_of(mnt):
    with open(mnt + ".log", errors="replace") as f:
        return f.read()


def wait_kept(mnt, rels, timeout=120):
    """The log line of each weight file kept whole."""
    def kept():
        return {r for r in rels
                if re.search(r"INFO: kept \S*" + re.escape(r) + r" whole in the cache", log_of(mnt))}
    poll(kept, lambda k: k == set(rels),
         lambda k: f"kept only {sorted(k)} of {rels}:\n{log_of(mnt)[-3000:]}", timeout, 0.2)


def wait_stored(cache, n, timeout=120):
    """n files kept in the cache (each with its sidecar) and no temporary left: a file
    computed at its open is committed in the background."""
    def names():
        return kept_files(cache)
    poll(names, lambda k: len([x for x in k if x.endswith(".meta")]) == n
         and not any(x.endswith(".tmp") for x in k),
         lambda k: f"wanted {n} kept files, have {k}", timeout, 0.2)


def computed_at_open(mnt):
    """The files the mount computed whole at their first open (from its log)."""
    return re.findall(r"INFO: computed \S+?/(checkpoints/\S+) whole \(", log_of(mnt))


def kept_files(cache):
    d = os.path.join(cache, "files")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def data_files(cache):
    return [os.path.join(cache, "files", n) for n in kept_files(cache)
            if re.fullmatch(r"[0-9a-f]{32}", n)]


def fresh_status(fz, mnt, pred, what):
    """The mount's status entry once the daemon has written its counters and pred holds."""
    return status_entry(fz, mnt, lambda e: isinstance(e.get("reads"), int)
                        and isinstance(e.get("passthrough"), dict) and pred(e), what, timeout=20)


def read_through(fz, mnt, ref, rels):
    """Read every weight file (sequential, mmap) and compare with DEST; return how many
    bytes the daemon answered meanwhile, and its status after (status is rewritten every
    2 s: waited for before and after)."""
    time.sleep(2.5)  # the daemon rewrites its status every 2 s: let it count earlier reads
    before = fresh_status(fz, mnt, lambda e: True, "an entry")
    read_and_compare(mnt, ref, ["seq1m", "mmap"])
    time.sleep(2.5)
    after = fresh_status(fz, mnt, lambda e: True, "an entry")
    return after["bytes_served"] - before["bytes_served"], after


@pytest.mark.parametrize("fz", builds("tsan"), indirect=True)
def test_read_once_then_read_by_the_kernel(run120, ref120, fz, mounter, tmp_path):
    rels = weight_files(ref120)
    cache = str(tmp_path / "cache")
    mnt = str(tmp_path / "mnt")
    mounter.mount(run120, mnt, *BF16_ST, *ON_READ, cache=cache)
    if "FUSE passthrough on" not in log_of(mnt):
        pytest.fail("passthrough is off on this machine: " + log_of(mnt)[-2000:])
    n, _ = read_through(fz, mnt, ref120, rels)
    assert n >= sum(os.path.getsize(os.path.join(ref120, r)) for r in rels)  # computed
    wait_kept(mnt, rels)
    assert len(data_files(cache)) == len(rels), kept_files(cache)
    # The same mount: new opens are read by the kernel from the kept copy.
    n, e = read_through(fz, mnt, ref120, rels)
    assert n == 0, e
    assert e["passthrough"]["kept_opens"] >= 2 * len(rels), e
    assert e["passthrough"]["kept_files"] == len(rels), e
    mounter.umount(mnt)
    # A fresh mount with the same cache: the first read is the kernel's too.
    mnt2 = str(tmp_path / "mnt2")
    mounter.mount(run120, mnt2, *BF16_ST, cache=cache)
    n, e = read_through(fz, mnt2, ref120, rels)
    assert n == 0 and e["passthrough"]["kept_opens"] >= 2 * len(rels), e
    r = child("""
        import sys, torch
        from safetensors import safe_open
        a, b = sys.argv[1], sys.argv[2]
        with safe_open(a, framework="pt") as x, safe_open(b, framework="pt") as y:
            assert sorted(x.keys()) == sorted(y.keys())
            n = 0
            for k in x.keys():
                assert torch.equal(x.get_tensor(k), y.get_tensor(k)), k
                n += 1
        print(n)
    """, os.path.join(mnt2, rels[0]), os.path.join(ref120, rels[0]), timeout=120)
    assert r > 10, r
    diff_trees(mnt2, ref120)
    mounter.umount(mnt2)
    s = fz.run("cache", "stats", "--cache-dir", cache, "--json")
    assert s.returncode == 0, s.stderr
    stats = json.loads(s.stdout)
    assert stats["files"] == len(rels), stats
    assert stats["file_bytes"] == sum(os.path.getsize(os.path.join(ref120, r)) for r in rels)
    v = fz.run("cache", "verify", "--cache-dir", cache)
    assert v.returncode == 0 and re.search(r"^bad: 0$", v.stdout, re.M), (v.stdout, v.stderr)
    c = fz.run("cache", "clear", "--cache-dir", cache)
    assert c.returncode == 0, c.stderr
    assert data_files(cache) == [], kept_files(cache)


def keep_once(fz, mounter, run, ref, cache, mnt, mode="read"):
    """Keep every weight file: read in full under ON_READ, or computed at open."""
    rels = weight_files(ref)
    mounter.mount(run, mnt, *BF16_ST, *(ON_READ if mode == "read" else []), cache=cache)
    read_and_compare(mnt, ref, ["seq1m"])
    if mode == "read":
        wait_kept(mnt, rels)
    else:
        assert sorted(computed_at_open(mnt)) == rels, log_of(mnt)[-3000:]
        wait_stored(cache, len(rels))
    mounter.umount(mnt)
    files = data_files(cache)
    assert len(files) == len(rels), kept_files(cache)
    return rels, files


def test_changed_kept_file_is_not_used(run120, ref120, fzfs, mounter, tmp_path):
    """A kept file written to after it was kept is refused (removed, with a warning), and
    the file is computed again: the same bytes as materialize."""
    cache = str(tmp_path / "cache")
    rels, files = keep_once(fzfs, mounter, run120, ref120, cache, str(tmp_path / "m1"))
    with open(files[0], "r+b") as f:  # one byte flipped, well inside the data
        f.seek(os.path.getsize(files[0]) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    mnt = str(tmp_path / "m2")
    mounter.mount(run120, mnt, *BF16_ST, *ON_READ, cache=cache)
    read_and_compare(mnt, ref120, ["seq1m", "mmap"])
    e = fresh_status(fzfs, mnt, lambda e: e["reads"] > 0, "reads through the daemon")
    assert e["bytes_served"] > 0, e
    log = log_of(mnt)
    assert re.search(r"WARNING: .*" + re.escape(os.path.basename(files[0])), log), log[-3000:]
    # the chunks stored by the first mount: the progress line says they came from the cache
    done = re.findall(r"INFO: computing \S+: done in \d+\.\d s \(\d+\.\d MB; meanwhile (\d+) "
                      r"chunks computed, (\d+) served from the cache\)", log)
    assert done and int(done[0][1]) > 0, log[-3000:]
    # read in full again, the file is kept anew: the same bytes as DEST this time
    wait_kept(mnt, rels)
    mounter.umount(mnt)
    with open(files[0], "rb") as a, open(os.path.join(ref120, rels[0]), "rb") as b:
        assert a.read() == b.read()


def touch_weights(src):
    for d, _, names in os.walk(os.path.join(src, "checkpoints")):
        for n in names:
            if n.endswith((".bin", ".safetensors")):
                os.utime(os.path.join(d, n))  # same bytes, another mtime


def test_source_changed_finds_nothing_kept(run120, ref120, fzfs, mounter, tmp_path):
    """The key names the sources' identity: a source touched since keeping finds no kept
    file (its bytes are computed from the source as it is now)."""
    src = str(tmp_path / "src")
    subprocess.run(["cp", "-a", run120, src], check=True)
    cache = str(tmp_path / "cache")
    rels, _ = keep_once(fzfs, mounter, src, ref120, cache, str(tmp_path / "m1"))
    touch_weights(src)
    mnt = str(tmp_path / "m2")
    mounter.mount(src, mnt, *BF16_ST, *ON_READ, cache=cache)
    read_and_compare(mnt, ref120, ["seq1m"])
    e = fresh_status(fzfs, mnt, lambda e: e["reads"] > 0, "reads through the daemon")
    assert e["passthrough"]["kept_opens"] == 0 and e["bytes_served"] > 0, e
    mounter.umount(mnt)
    # Computed at open: the same, the file is computed again (not found kept).
    cache3 = str(tmp_path / "cache3")
    keep_once(fzfs, mounter, src, ref120, cache3, str(tmp_path / "m3"), mode="open")
    touch_weights(src)
    mnt = str(tmp_path / "m4")
    mounter.mount(src, mnt, *BF16_ST, cache=cache3)
    read_and_compare(mnt, ref120, ["seq1m"])
    assert sorted(computed_at_open(mnt)) == rels, log_of(mnt)[-3000:]
    mounter.umount(mnt)


# Hold one open of a file (through the daemon), then read it again with new opens while
# it is held, then after closing it: print what each step read.
HOLD_THEN_READ = """
    import hashlib, json, sys
    path = sys.argv[1]
    held = open(path, "rb")
    first = hashlib.sha256(held.read()).hexdigest()
    print(json.dumps({"held": first}), flush=True)
    sys.stdin.readline()
    with open(path, "rb") as f:
        during = hashlib.sha256(f.read()).hexdigest()
    held.close()
    print(json.dumps({"during": during}), flush=True)
"""


def test_open_through_the_daemon_holds_off_the_kept_copy(run120, ref120, fzfs, mounter,
                                                         tmp_path):
    """The kernel refuses a passthrough open of a file open through the page cache: while
    such an open is held, new opens go through the daemon too; once it is closed, the kept
    copy is used."""
    rels = weight_files(ref120)
    rel = rels[0]
    with open(os.path.join(ref120, rel), "rb") as f:
        want = __import__("hashlib").sha256(f.read()).hexdigest()
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    mounter.mount(run120, mnt, *BF16_ST, *ON_READ, cache=cache)
    p = subprocess.Popen([sys.executable, "-c", __import__("textwrap").dedent(HOLD_THEN_READ),
                          os.path.join(mnt, rel)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(p.stdout.readline())["held"] == want
        wait_kept(mnt, [rel])  # kept while the first open is still held
        p.stdin.write("go\n")
        p.stdin.flush()
        assert json.loads(p.stdout.readline())["during"] == want
        assert p.wait(timeout=60) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    e = fresh_status(fzfs, mnt, lambda e: True, "an entry")
    assert e["passthrough"]["kept_opens"] == 0, e
    n, e = read_through(fzfs, mnt, ref120, rels)
    assert n == 0 and e["passthrough"]["kept_opens"] >= 2 * len(rels), e
    mounter.umount(mnt)


@pytest.mark.parametrize("mode", ["read", "open", "open-bin"])
def test_unmount_while_keeping_leaves_no_temporary(mode, run120, fzfs, mounter, tmp_path,
                                                   request):
    """An unmount right after the read that starts keeping: the daemon stops writing, and
    the cache holds either the whole kept file or nothing of it. A file computed whole at
    its open (a safetensors or a .bin shard, whose header blocks are checksummed at the
    commit) is committed before the daemon exits."""
    opts, ref = FORMATS["bin" if mode == "open-bin" else "safetensors"]
    ref = request.getfixturevalue(ref)
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    mounter.mount(run120, mnt, *opts, *(ON_READ if mode == "read" else []), cache=cache)
    rels = weight_files(ref)
    read_and_compare(mnt, ref, ["seq1m"])
    mounter.umount(mnt)
    names = kept_files(cache)
    assert all(re.fullmatch(r"[0-9a-f]{32}(\.meta)?", n) for n in names), names
    if mode != "read":  # computed whole before the read returned: committed at unmount
        assert len(data_files(cache)) == len(rels), names
    v = fzfs.run("cache", "verify", "--cache-dir", cache)
    assert v.returncode == 0 and re.search(r"^bad: 0$", v.stdout, re.M), (v.stdout, v.stderr)


def test_nothing_kept_without_passthrough(run120, ref120, fzfs, mounter, tmp_path):
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    mounter.mount(run120, mnt, *BF16_ST, "--no-passthrough", cache=cache)
    read_and_compare(mnt, ref120, ["seq1m"])
    mounter.umount(mnt)
    assert data_files(cache) == [], kept_files(cache)
    assert not re.search(r"INFO: kept |whole at its first open", log_of(mnt)), log_of(mnt)[-3000:]


# torch.load of each weight file (safetensors' load_file for a .safetensors), and
# from_pretrained of the whole model, through the mount and from DEST: every tensor equal.
LOAD_BOTH = """
    import os, sys, torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    mnt, dest, rels = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    n = 0
    for rel in rels:
        load = (load_file if rel.endswith(".safetensors")
                else lambda p: torch.load(p, weights_only=True))
        a, b = load(os.path.join(mnt, rel)), load(os.path.join(dest, rel))
        assert sorted(a) == sorted(b), rel
        for k in a:
            assert a[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]), (rel, k)
            n += 1
    x = AutoModelForCausalLM.from_pretrained(mnt, dtype=torch.bfloat16).state_dict()
    y = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.bfloat16).state_dict()
    assert sorted(x) == sorted(y)
    for k in x:
        assert torch.equal(x[k], y[k]), k
    print(n)
"""

# The view options and the DEST fixture of each output format.
FORMATS = {"safetensors": (BF16_ST, "ref120"), "bin": (BF16_BIN, "ref120bin")}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("fz", builds("tsan"), indirect=True)
def test_computed_whole_at_first_open(fmt, run120, fz, mounter, tmp_path, request):
    """The default: the first open of a cast shard computes it whole into the cache
    directory and is itself read by the kernel - the daemon answers no read, LMDB holds
    nothing - and a fresh mount with the same cache finds it kept. A .bin shard too: its
    record data first, which gives every record's CRC, then its zip headers from those
    CRCs, each byte once (not even a CRC in LMDB). torch.load and from_pretrained through
    the mount get materialize's tensors."""
    opts, ref = FORMATS[fmt][0], request.getfixturevalue(FORMATS[fmt][1])
    rels = weight_files(ref)
    assert rels and all(r.endswith("." + fmt) for r in rels), rels
    size = sum(os.path.getsize(os.path.join(ref, r)) for r in rels)
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    mounter.mount(run120, mnt, *opts, cache=cache)
    if "FUSE passthrough on" not in log_of(mnt):
        pytest.fail("passthrough is off on this machine: " + log_of(mnt)[-2000:])
    n, e = read_through(fz, mnt, ref, rels)
    assert n == 0, e
    assert e["passthrough"]["kept_opens"] >= 2 * len(rels), e
    assert child(LOAD_BOTH, mnt, ref, ",".join(rels), timeout=300) > 10
    assert sorted(computed_at_open(mnt)) == rels, log_of(mnt)[-3000:]  # once each
    wait_stored(cache, len(rels))
    s = json.loads(fz.run("cache", "stats", "--cache-dir", cache, "--json").stdout)
    assert s["files"] == len(rels) and s["file_bytes"] == size, s
    assert s["entries"] == 0, s  # stored once: nothing of it in LMDB
    mounter.umount(mnt)
    assert re.search(r"INFO: cache: .* not stored \(write queue full\); %d files computed whole "
                     r"at their first open$" % len(rels), log_of(mnt), re.M), log_of(mnt)[-2000:]
    mnt2 = str(tmp_path / "mnt2")
    mounter.mount(run120, mnt2, *opts, cache=cache)
    n, e = read_through(fz, mnt2, ref, rels)
    assert n == 0 and e["passthrough"]["kept_opens"] >= 2 * len(rels), e
    assert computed_at_open(mnt2) == [], log_of(mnt2)[-3000:]
    diff_trees(mnt2, ref)
    mounter.umount(mnt2)
    v = fz.run("cache", "verify", "--cache-dir", cache)
    assert v.returncode == 0 and re.search(r"^bad: 0$", v.stdout, re.M), (v.stdout, v.stderr)
    want = set()
    for r in rels:
        with open(os.path.join(ref, r), "rb") as f:
            want.add(f.read())
    files = data_files(cache)
    assert len(files) == len(rels), kept_files(cache)
    for f in files:
        with open(f, "rb") as a:
            assert a.read() in want, f


# Open one file from many threads at once (the first opens of a fresh mount): each
# thread reads it in full; print the digests.
MANY_OPENS = """
    import hashlib, json, sys, threading
    path, n = sys.argv[1], int(sys.argv[2])
    out = [None] * n
    go = threading.Barrier(n)
    def one(i):
        go.wait()
        with open(path, "rb") as f:
            out[i] = hashlib.sha256(f.read()).hexdigest()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps(out))
"""


def test_concurrent_first_opens_compute_once(run120, ref120, fzfs, mounter, tmp_path):
    """Opens racing the first one wait for its computation and share its result: one
    computation, every open read by the kernel, materialize's bytes."""
    rel = weight_files(ref120)[0]
    with open(os.path.join(ref120, rel), "rb") as f:
        want = __import__("hashlib").sha256(f.read()).hexdigest()
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    mounter.mount(run120, mnt, *BF16_ST, cache=cache)
    r = child(MANY_OPENS, os.path.join(mnt, rel), "8", timeout=300)
    assert r == [want] * 8, r
    assert computed_at_open(mnt) == [rel], log_of(mnt)[-3000:]
    e = fresh_status(fzfs, mnt, lambda e: e["passthrough"]["kept_opens"] >= 8, "8 kept opens")
    assert e["bytes_served"] == 0, e
    mounter.umount(mnt)


def test_too_large_for_the_cache_is_computed_as_read(run120, ref120, fzfs, mounter, tmp_path):
    """A file larger than half the cache's map is never kept: its first open says so in
    the log and it is served through the daemon, with the same bytes."""
    rels = weight_files(ref120)
    size = os.path.getsize(os.path.join(ref120, rels[0]))
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    mounter.mount(run120, mnt, *BF16_ST, "--cache-size", f"{size // 2 // (1 << 20)}M",
                  cache=cache)
    read_and_compare(mnt, ref120, ["seq1m", "mmap"])
    e = fresh_status(fzfs, mnt, lambda e: e["reads"] > 0, "reads through the daemon")
    assert e["bytes_served"] >= size and e["passthrough"]["kept_opens"] == 0, e
    log = log_of(mnt)
    assert re.search(r"INFO: \S+ is computed as it is read, not whole at its open: .*larger than "
                     r"half the cache's map size", log), log[-3000:]
    assert computed_at_open(mnt) == [], log[-3000:]
    mounter.umount(mnt)
    assert data_files(cache) == [], kept_files(cache)


def test_changed_kept_file_is_computed_again_at_open(run120, ref120, fzfs, mounter, tmp_path):
    """A kept file written to after it was kept is refused with a warning and computed
    whole again at the next open: the same bytes as materialize, kept anew."""
    cache = str(tmp_path / "cache")
    rels, files = keep_once(fzfs, mounter, run120, ref120, cache, str(tmp_path / "m1"),
                            mode="open")
    with open(files[0], "r+b") as f:
        f.seek(os.path.getsize(files[0]) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    mnt = str(tmp_path / "m2")
    mounter.mount(run120, mnt, *BF16_ST, cache=cache)
    read_and_compare(mnt, ref120, ["seq1m", "mmap"])
    log = log_of(mnt)
    assert re.search(r"WARNING: .*" + re.escape(os.path.basename(files[0])), log), log[-3000:]
    assert sorted(computed_at_open(mnt)) == rels, log[-3000:]
    wait_stored(cache, len(rels))
    mounter.umount(mnt)
    for f in data_files(cache):
        with open(f, "rb") as a, open(os.path.join(ref120, rels[0]), "rb") as b:
            assert a.read() == b.read()


def test_progress_lines_while_computing_at_open(run120, ref120, fzfs, mounter, tmp_path):
    """A file computed whole at its open logs its progress (at most every
    FZFS_PROGRESS_SECONDS; 1 ms here, so nearly every block), so `tail -f` on the log shows
    what an open is waiting for; a value that is not a number of seconds is refused before
    anything is mounted."""
    from conftest import Fzfs
    from test_mount import is_mounted
    rel = weight_files(ref120)[0]
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    plain = mounter.fzfs
    mounter.fzfs = Fzfs(fzfs.binary, fzfs.home, {"FZFS_PROGRESS_SECONDS": "0.001"})
    try:
        mounter.mount(run120, mnt, *BF16_ST, cache=cache)
    finally:
        mounter.fzfs = plain
    read_and_compare(mnt, ref120, ["seq1m"])
    mounter.umount(mnt)
    log = log_of(mnt)
    pct = [int(p) for p in re.findall(r"INFO: computing \S+/" + re.escape(rel) +
                                      r" whole \.\.\. (\d{1,2})% \(\d+\.\d\d GB/s\)$", log, re.M)]
    assert len(pct) >= 2 and pct == sorted(pct), log[-3000:]
    assert computed_at_open(mnt) == [rel], log[-3000:]
    bad = Fzfs(fzfs.binary, fzfs.home, {"FZFS_PROGRESS_SECONDS": "soon"})
    mnt2 = str(tmp_path / "mnt2")
    os.makedirs(mnt2)
    p = bad.run("mount", run120, mnt2, "--no-cache", "--log-file", mnt2 + ".log")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "FZFS_PROGRESS_SECONDS must be a number of seconds in (0, 3600]" in p.stderr, p.stderr
    assert "got 'soon'" in p.stderr and not is_mounted(mnt2)
