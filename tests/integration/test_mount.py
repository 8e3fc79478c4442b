"""fzfs mount: a user's session with the FUSE view.

Mount SRC, compare the tree with what `fzfs materialize` writes, load the model with
transformers from the mount, hammer it with threads and mmap readers, reuse the LMDB
cache across mounts, and survive faults (checkpoint deleted, daemon SIGKILLed).

Every mount is unmounted by a finalizer (fzfs umount, then a FUSE connection abort
and a lazy umount if that fails), and nothing in this file touches a mount point
from the test process itself: every filesystem call on a mount runs in a child
process with a timeout, so a hung daemon fails the test instead of hanging it.
"""

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import SANITIZER_REPORT, builds


@pytest.fixture(autouse=True)
def _fuse_available():
    """Mount tests need root and /dev/fuse (CI has both): fail, never skip."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.fail("mount tests need root and /dev/fuse")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHATML_YAML = os.path.join(REPO, "examples", "add_tokens", "chatml.yaml")
MAKE_RUNS = os.path.join(REPO, "tests", "fixtures", "make_runs.py")
FS_TIMEOUT = 90  # any single child process touching a mount

BF16_ST = ["--safetensors", "--dtype", "bfloat16"]
OPTION_SETS = {
    "default": [],
    "st-bf16": BF16_ST,
    "chatml": ["--add-tokens", CHATML_YAML],
    "root-copy": ["--root-copy"],
}
TREE_RUNS = ["llama-tied-bin", "llama-untied-st", "custom-code", "bin-views", "flat-hf",
             "nopad-tied-bin"]


# ---- mounts that always go away ------------------------------------------------------

def mount_entry(path):
    """(major:minor, fstype) of the topmost mount at path, from /proc (no stat of path)."""
    path = os.path.realpath(os.path.dirname(path.rstrip("/"))) + "/" + os.path.basename(
        path.rstrip("/"))
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            a, b = line.split(" - ", 1)
            fields = a.split()
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if mp == path:
                found = (fields[2], b.split()[0])
    return found


def is_mounted(path):
    return mount_entry(path) is not None


def abort_and_detach(path):
    """Last resort for a wedged mount: abort the FUSE connection, then lazy umount."""
    e = mount_entry(path)
    if e and e[1].startswith("fuse"):
        minor = e[0].split(":")[1]
        try:
            with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
                f.write("1")
        except OSError:
            pass
    subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


def daemon_pids(mnt):
    """Pids of fzfs processes whose command line mounts at mnt."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv and mnt.encode() in argv:
            pids.append(int(d))
    return pids


class Mounter:
    def __init__(self, fzfs, tmp):
        self.fzfs, self.tmp, self.mounts = fzfs, tmp, []

    def mount(self, src, mnt, *opts, cache=None, check=True):
        os.makedirs(mnt, exist_ok=True)
        self.mounts.append(mnt)
        args = ["mount", src, mnt, "--log-file", mnt + ".log", *opts]
        args += ["--cache-dir", cache] if cache else ["--no-cache"]
        p = self.fzfs.run(*args, timeout=60)
        if check:
            assert p.returncode == 0, f"fzfs {' '.join(args)} exited {p.returncode}: {p.stderr}"
            assert is_mounted(mnt), "fzfs mount returned 0 but nothing is mounted"
        return p

    def umount(self, mnt):
        p = self.fzfs.run("umount", mnt, timeout=60)
        assert p.returncode == 0, f"fzfs umount {mnt}: {p.stderr}"
        assert not is_mounted(mnt)

    def cleanup(self):
        for mnt in self.mounts:
            if not is_mounted(mnt):
                continue
            try:
                self.fzfs.run("umount", mnt, timeout=30)
            except BaseException:
                pass
            if is_mounted(mnt):
                abort_and_detach(mnt)
            for pid in daemon_pids(mnt):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture
def mounter(fz, tmp_path):
    """Mounts (with conftest's fz, or a module's own) that always go away; their logs
    (the daemon's stderr) must hold no sanitizer report."""
    m = Mounter(fz, str(tmp_path))
    yield m
    m.cleanup()
    for mnt in m.mounts:
        if os.path.exists(mnt + ".log"):
            with open(mnt + ".log", errors="replace") as f:
                log = f.read()
            assert not SANITIZER_REPORT.search(log), log[-20000:]


def child(code, *args, timeout=FS_TIMEOUT, env=None):
    """Run Python code in a child with a timeout; return its stdout (JSON if it prints JSON)."""
    try:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                           capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, **(env or {})))
    except subprocess.TimeoutExpired:
        pytest.fail(f"filesystem access did not finish within {timeout}s (hung mount?)")
    assert p.returncode == 0, f"child failed:\n{p.stderr[-4000:]}"
    lines = p.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        return lines[-1]


def diff_trees(a, b):
    """diff -r without following symlinks: bytes, names and symlink targets."""
    try:
        p = subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True,
                           text=True, timeout=FS_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"diff -r {a} {b} hung")
    assert p.returncode == 0, f"mount and materialized trees differ:\n{p.stdout[:3000]}{p.stderr}"


STAT_TREE = """
    import json, os, sys
    out = {}
    root = sys.argv[1]
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = [st.st_mode >> 12, st.st_size if not os.path.isdir(p) else 0]
    print(json.dumps(out, sort_keys=True))
"""


def cache_stats(fzfs, cache):
    p = fzfs.run("cache", "stats", "--cache-dir", cache)
    assert p.returncode == 0, p.stderr
    return {k: int(v) for k, v in re.findall(r"^(\w+): (\d+)$", p.stdout, re.M)}


def read_all(mnt):
    """Read every file under mnt once (in a child); returns the number of bytes."""
    return child("""
        import os, sys
        n = 0
        for d, _, files in os.walk(sys.argv[1]):
            for f in files:
                p = os.path.join(d, f)
                if not os.path.islink(p):
                    with open(p, "rb") as fh:
                        n += len(fh.read())
        print(n)
    """, mnt)


def materialize(fzfs, src, dest, *opts):
    p = fzfs.run("materialize", src, dest, "--no-cache", *opts)
    assert p.returncode == 0, p.stderr
    return dest


@pytest.fixture(scope="module")
def big(session_tmp):
    """A ~14 MB fp32 run: several 4 MiB chunks per cast tensor file."""
    out = os.path.join(session_tmp, "mount-big")
    if not os.path.isdir(os.path.join(out, "big")):
        subprocess.run([sys.executable, MAKE_RUNS, out, "big", "--size-mb", "8"], check=True,
                       capture_output=True, timeout=300)
    return os.path.join(out, "big")


# ---- the tree ------------------------------------------------------------------------

@pytest.mark.parametrize("optset", list(OPTION_SETS))
@pytest.mark.parametrize("run", TREE_RUNS)
def test_tree_matches_materialize(run, optset, runs, materialized, mounter, tmp_path):
    opts = OPTION_SETS[optset]
    ref = materialized(run, opts)
    ref.check_ok()
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src(run), mnt, *opts)
    # Sizes are exact at stat time, before any byte is read.
    assert child(STAT_TREE, mnt) == child(STAT_TREE, ref.dest)
    diff_trees(mnt, ref.dest)
    mounter.umount(mnt)


def test_read_only_and_statfs(runs, mounter, tmp_path):
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src("llama-tied-bin"), mnt)
    r = child("""
        import errno, json, os, sys
        mnt = sys.argv[1]
        res = {}
        for what, fn in [("write", lambda: open(os.path.join(mnt, "config.json"), "r+b")),
                         ("create", lambda: open(os.path.join(mnt, "new.txt"), "wb")),
                         ("mkdir", lambda: os.mkdir(os.path.join(mnt, "d")))]:
            try:
                fn()
                res[what] = 0
            except OSError as e:
                res[what] = e.errno
        sv = os.statvfs(mnt)
        res["ro"] = bool(sv.f_flag & os.ST_RDONLY)
        res["missing"] = os.path.exists(os.path.join(mnt, "pytorch_model.bin"))
        print(json.dumps(res))
    """, mnt)
    assert r["write"] in (30, 13) and r["create"] in (30, 13) and r["mkdir"] in (30, 13), r
    assert r["ro"] and not r["missing"]
    with open("/proc/self/mountinfo") as f:
        line = [ln for ln in f if f" {mnt} " in ln][-1]
    src = os.path.realpath(runs.src("llama-tied-bin"))
    assert "fuse.fzfs" in line and f" {src} " in line and "default_permissions" in line


# ---- transformers on the mount ----------------------------------------------------------

LOAD = """
    import json, os, sys, torch
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    mnt, dest = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (2, 12))
    out = {}
    logits = []
    for d in (mnt, dest):
        m = AutoModelForCausalLM.from_pretrained(d, dtype="auto").eval()
        with torch.no_grad():
            logits.append(m(ids).logits)
    out["same_logits"] = bool(torch.equal(logits[0], logits[1]))
    out["dtype"] = str(logits[0].dtype)
    t1, t2 = AutoTokenizer.from_pretrained(mnt), AutoTokenizer.from_pretrained(dest)
    text = "hello world <|im_start|>user hi<|im_end|>"
    out["same_tokens"] = t1(text)["input_ids"] == t2(text)["input_ids"]
    out["same_vocab"] = len(t1) == len(t2)
    g1, g2 = GenerationConfig.from_pretrained(mnt), GenerationConfig.from_pretrained(dest)
    out["same_genconfig"] = g1.to_dict() == g2.to_dict()
    print(json.dumps(out))
"""


@pytest.mark.parametrize("run,opts,parallel", [
    ("llama-tied-bin", [], False),
    ("llama-tied-bin", BF16_ST, True),
    ("llama-untied-st", ["--add-tokens", CHATML_YAML], True),
])
def test_transformers_loads_from_mount(run, opts, parallel, runs, materialized, mounter,
                                       tmp_path):
    ref = materialized(run, opts)
    ref.check_ok()
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src(run), mnt, *opts, cache=str(tmp_path / "cache"))
    # transformers' parallel safetensors loader: many threads faulting on the mount at once.
    env = {"HF_ENABLE_PARALLEL_LOADING": "true", "HF_PARALLEL_LOADING_WORKERS": "8"} \
        if parallel else {}
    r = child(LOAD, mnt, ref.dest, timeout=180, env=env)
    assert r["same_logits"] and r["same_tokens"] and r["same_vocab"] and r["same_genconfig"], r
    mounter.umount(mnt)


# ---- stress ------------------------------------------------------------------------------

STRESS = """
    import json, mmap, os, random, sys, threading
    mnt, dest, seed, nthreads, nreads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    files = []
    for d, _, names in os.walk(dest):
        for n in names:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                files.append(os.path.relpath(p, dest))
    files.sort()
    ref = {}
    for rel in files:
        with open(os.path.join(dest, rel), "rb") as f:
            ref[rel] = f.read()
    big = [r for r in files if len(ref[r]) > 65536] or files
    errors, counts = [], {"reads": 0, "bytes": 0, "maps": 0}
    lock = threading.Lock()

    def reader(tid):
        rnd = random.Random(seed * 1000 + tid)
        fds = {}
        try:
            for _ in range(nreads):
                rel = rnd.choice(big if rnd.random() < 0.8 else files)
                data = ref[rel]
                if not data:
                    continue
                off = rnd.randrange(len(data))
                ln = rnd.choice([1, 13, 4096, 65536, 1 << 20, rnd.randrange(1, 5 << 20)])
                if rel not in fds:
                    fds[rel] = os.open(os.path.join(mnt, rel), os.O_RDONLY)
                got = os.pread(fds[rel], ln, off)
                if got != data[off:off + ln]:
                    with lock:
                        errors.append(f"{rel} [{off}, +{ln}) differs")
                with lock:
                    counts["reads"] += 1
                    counts["bytes"] += len(got)
        finally:
            for fd in fds.values():
                os.close(fd)

    def mapper(tid):
        rnd = random.Random(seed * 7919 + tid)
        order = list(files)
        rnd.shuffle(order)
        access = mmap.ACCESS_COPY if tid % 2 else mmap.ACCESS_READ  # MAP_PRIVATE / MAP_SHARED
        for rel in order:
            data = ref[rel]
            if not data:
                continue
            with open(os.path.join(mnt, rel), "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=access)
                try:
                    for _ in range(20):
                        off = rnd.randrange(len(data))
                        ln = rnd.randrange(1, 1 << 18)
                        if m[off:off + ln] != data[off:off + ln]:
                            with lock:
                                errors.append(f"mmap {rel} [{off}, +{ln}) differs")
                    if m[:] != data:
                        with lock:
                            errors.append(f"mmap {rel}: whole file differs")
                finally:
                    m.close()
            with lock:
                counts["maps"] += 1

    th = [threading.Thread(target=reader, args=(i,)) for i in range(nthreads)]
    th += [threading.Thread(target=mapper, args=(i,)) for i in range(4)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    counts["errors"] = errors[:10]
    counts["nerrors"] = len(errors)
    print(json.dumps(counts))
"""


@pytest.mark.parametrize("fz", builds("tsan"), indirect=True)  # the daemon's threads under TSan
@pytest.mark.parametrize("opts", [["--dtype", "bfloat16"], BF16_ST], ids=["bin-bf16", "st-bf16"])
def test_stress_threads_and_mmap_cold_then_warm(opts, big, fzfs, mounter, tmp_path):
    dest = materialize(fzfs, big, str(tmp_path / "dest"), *opts)
    cache = str(tmp_path / "cache")
    for phase, seed in (("cold", 1), ("warm", 2)):
        mnt = str(tmp_path / f"mnt-{phase}")
        mounter.mount(big, mnt, *opts, cache=cache)
        r = child(STRESS, mnt, dest, seed, 16, 60, timeout=180)
        assert r["nerrors"] == 0, f"{phase}: {r['errors']}"
        assert r["reads"] >= 16 * 50 and r["maps"] > 0
        mounter.umount(mnt)
    s = cache_stats(fzfs, cache)
    assert s["hits"] > 0 and s["fills"] > 0, s


# ---- cache -------------------------------------------------------------------------------

def corrupt_values(cache, needle):
    """Flip a byte wherever `needle` (bytes of a computed chunk) sits in data.mdb."""
    path = os.path.join(cache, "data.mdb")
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        hits = [m.start() for m in re.finditer(re.escape(needle), data)]
        for at in hits:
            data[at + len(needle) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)
    return len(hits)


def computed_window(dest_file, size=48):
    """Bytes from the middle of a bf16 safetensors file's tensor data (all computed)."""
    with open(dest_file, "rb") as f:
        data = f.read()
    hlen = int.from_bytes(data[:8], "little")
    start = 8 + hlen
    mid = start + (len(data) - start) // 2
    return data[mid:mid + size]


def test_cache_reused_across_mounts_and_by_materialize(runs, materialized, fzfs, mounter,
                                                       tmp_path):
    run, opts = "llama-tied-bin", BF16_ST
    ref = materialized(run, opts)
    ref.check_ok()
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")

    mounter.mount(runs.src(run), mnt, *opts, cache=cache)
    diff_trees(mnt, ref.dest)
    mounter.umount(mnt)
    first = cache_stats(fzfs, cache)
    assert first["fills"] > 0 and first["entries"] > 0, first

    # A second mount: every computed chunk comes from LMDB.
    mounter.mount(runs.src(run), mnt, *opts, cache=cache)
    diff_trees(mnt, ref.dest)
    mounter.umount(mnt)
    second = cache_stats(fzfs, cache)
    assert second["fills"] == first["fills"], (first, second)
    assert second["hits"] >= first["hits"] + first["entries"], (first, second)

    # materialize reads through the same cache (hits), without storing.
    dest = str(tmp_path / "dest")
    p = fzfs.run("materialize", runs.src(run), dest, *opts, "--cache-dir", cache)
    assert p.returncode == 0, p.stderr
    diff_trees(dest, ref.dest)
    third = cache_stats(fzfs, cache)
    assert third["fills"] == second["fills"] and third["hits"] > second["hits"], (second, third)


def test_corrupt_value_is_recomputed_not_served(runs, materialized, fzfs, mounter, tmp_path):
    run, opts = "llama-tied-bin", BF16_ST
    ref = materialized(run, opts)
    ref.check_ok()
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    mounter.mount(runs.src(run), mnt, *opts, cache=cache)
    read_all(mnt)
    mounter.umount(mnt)
    before = cache_stats(fzfs, cache)

    ckpt = runs.info(run)["latest"]
    shard = sorted(f for f in os.listdir(os.path.join(ref.dest, ckpt))
                   if f.endswith(".safetensors"))[0]
    needle = computed_window(os.path.join(ref.dest, ckpt, shard))
    assert corrupt_values(cache, needle) > 0, "chunk bytes not found in data.mdb"

    mounter.mount(runs.src(run), mnt, *opts, cache=cache)
    diff_trees(mnt, ref.dest)
    mounter.umount(mnt)
    after = cache_stats(fzfs, cache)
    assert after["corrupt"] > before["corrupt"], (before, after)
    assert after["fills"] > before["fills"], (before, after)  # recomputed

    # `fzfs cache verify` finds (and drops) a corrupt value too.
    assert corrupt_values(cache, needle) > 0
    p = fzfs.run("cache", "verify", "--cache-dir", cache)
    assert p.returncode == 0, p.stderr
    assert int(re.search(r"^bad: (\d+)", p.stdout, re.M).group(1)) >= 1, p.stdout


def test_tiny_cache_still_serves_right_bytes(big, fzfs, mounter, tmp_path):
    opts = BF16_ST
    dest = materialize(fzfs, big, str(tmp_path / "dest"), *opts)
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    mounter.mount(big, mnt, *opts, "--cache-size", "1M", cache=cache)
    diff_trees(mnt, dest)
    r = child(STRESS, mnt, dest, 3, 8, 20, timeout=180)
    assert r["nerrors"] == 0, r["errors"]
    mounter.umount(mnt)
    s = cache_stats(fzfs, cache)
    assert s["map_size"] <= 2 << 20 and s["bytes"] <= s["map_size"], s


# ---- faults ------------------------------------------------------------------------------

def test_checkpoint_removed_while_mounted(runs, fzfs, mounter, tmp_path):
    run = "llama-tied-bin"
    src = str(tmp_path / run)
    shutil.copytree(runs.src(run), src, symlinks=True)
    opts = ["--dtype", "bfloat16"]
    dest = materialize(fzfs, src, str(tmp_path / "dest"), *opts)
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, *opts)
    shutil.rmtree(os.path.join(src, runs.info(run)["latest"]))
    diff_trees(mnt, dest)
    mounter.umount(mnt)


def test_failed_read_is_eio_and_logged(runs, fzfs, mounter, tmp_path):
    run = "llama-tied-bin"
    src = str(tmp_path / run)
    shutil.copytree(runs.src(run), src, symlinks=True)
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, *BF16_ST)
    ckpt = runs.info(run)["latest"]
    for f in os.listdir(os.path.join(src, ckpt)):
        if f.startswith("pytorch_model-"):
            os.truncate(os.path.join(src, ckpt, f), 1000)  # the held-open source shrinks
    shard = "model-00001-of-00002.safetensors"
    err = child("""
        import os, sys
        try:
            with open(sys.argv[1], "rb") as f:
                f.read()
            print("ok")
        except OSError as e:
            print(e.errno)
    """, os.path.join(mnt, ckpt, shard))
    assert err == 5, f"expected EIO, got {err}"
    mounter.umount(mnt)
    with open(mnt + ".log") as f:
        log = f.read()
    assert re.search(r"ERROR: .*" + re.escape(f"{ckpt}/{shard}") +
                     r".*pytorch_model-0000\d-of-00002\.bin", log), log


def test_sigkilled_daemon_is_cleaned_up_and_cache_reopens(runs, materialized, fzfs, mounter,
                                                         tmp_path):
    run, opts = "llama-tied-bin", BF16_ST
    ref = materialized(run, opts)
    ref.check_ok()
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "mnt")
    mounter.mount(runs.src(run), mnt, *opts, cache=cache)
    read_all(mnt)
    pids = daemon_pids(mnt)
    assert pids, "no daemon process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while daemon_pids(mnt) and time.time() < deadline:
        time.sleep(0.05)
    # The process is gone (or a zombie) a moment before its last thread closes /dev/fuse:
    # a request sent in that moment is ended by the kernel with ECONNABORTED when the
    # connection goes; every later one is ENOTCONN.
    errs = child("""
        import errno, json, os, sys, time
        seen = []
        for _ in range(200):
            try:  # open always reaches the daemon (stat may be answered from the attr cache)
                os.close(os.open(os.path.join(sys.argv[1], "config.json"), os.O_RDONLY))
                seen.append("ok")
            except OSError as e:
                seen.append(e.errno)
                if e.errno == errno.ENOTCONN:
                    break
            time.sleep(0.05)
        print(json.dumps(seen))
    """, mnt, timeout=30)
    assert errs[-1] == errno.ENOTCONN and set(errs) <= {errno.ECONNABORTED, errno.ENOTCONN}, \
        f"expected ENOTCONN on the dead mount, got {errs}"
    assert is_mounted(mnt)
    mounter.umount(mnt)

    p = fzfs.run("cache", "verify", "--cache-dir", cache)
    assert p.returncode == 0 and re.search(r"^bad: 0$", p.stdout, re.M), p.stdout + p.stderr
    mounter.mount(runs.src(run), mnt, *opts, cache=cache)
    diff_trees(mnt, ref.dest)
    mounter.umount(mnt)


def test_sigterm_unmounts_foreground_mount(runs, fzfs, tmp_path, mounter):
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    mounter.mounts.append(mnt)
    proc = subprocess.Popen([fzfs.binary, "mount", "-f", runs.src("llama-tied-bin"), mnt,
                             "--no-cache"], env=fzfs.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while not is_mounted(mnt) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert is_mounted(mnt), "foreground mount never appeared"
        assert child("import os, sys; print(len(os.listdir(sys.argv[1])))", mnt) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_mount_errors(runs, fzfs, tmp_path, mounter):
    src = runs.src("llama-tied-bin")
    # A non-empty mount point is accepted (test_lifecycle.py).
    p = fzfs.run("mount", src, str(tmp_path / "missing"), "--no-cache")
    assert p.returncode == 1 and "does not exist" in p.stderr, p.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    mounter.mounts.append(str(empty))
    bad = str(tmp_path / "no-such-run")
    pm = fzfs.run("mount", bad, str(empty), "--no-cache")
    pz = fzfs.run("materialize", bad, str(tmp_path / "dest"))
    assert pm.returncode == pz.returncode == 1
    assert pm.stderr == pz.stderr, (pm.stderr, pz.stderr)
    assert not is_mounted(str(empty))

    p = fzfs.run("mount", src, str(empty), "--no-cache", "-o", "no_such_fuse_option")
    assert p.returncode != 0 and not is_mounted(str(empty))

    p = fzfs.run("umount", str(empty))
    assert p.returncode == 1 and "not mounted" in p.stderr
