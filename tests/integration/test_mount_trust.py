"""Trust under change: a source that changes under a mount or a materialize never shows
through as wrong bytes, and the mount keeps the source's permissions.

A span-served source truncated under the mount gives EIO, never short data, and the
mounted file keeps its size; one rewritten in place (same size) gives EIO and the daemon
log names it; a header (safetensors JSON, zip CRCs) is never served beside changed data;
materialize refuses to publish when a source changed before the rename. Modes: a 0600
model source stays private on the mount (write bits cleared) and in DEST; a symlinked *.py
leading out of SRC is refused; `-o rw` is refused; `fzfs umount` knows its mounts whatever
`-o subtype=`.

Like test_mount.py, every filesystem call on a mount runs in a child process with a
timeout. With FZFS_ASAN_BIN or FZFS_TSAN_BIN set, every test also runs against that
sanitizer build, and the daemon's log must hold no sanitizer report.
"""

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import SANITIZER_REPORT, build_fzfs, builds
from test_status import status, wait_status
from test_mount import FS_TIMEOUT, Mounter, _fuse_available, child, is_mounted  # noqa: F401
# mounter: mounts that always go away, their logs (the daemon's stderr) free of sanitizer
# reports; it mounts with this module's fz
from test_mount import mounter  # noqa: F401

ST = ["--safetensors", "--skip-default-tokens"]  # llama-untied-st: every tensor a span


@pytest.fixture(params=builds("asan", "tsan"))
def fz(request, home):
    """fzfs, the release build and (with FZFS_ASAN_BIN, FZFS_TSAN_BIN) the sanitizer builds."""
    return build_fzfs(request.param, home)


def clone(runs, name, tmp_path):
    dst = tmp_path / ("src-" + name)
    shutil.copytree(runs.src(name), dst, symlinks=True)
    return str(dst)


def weight_file(src, runs, name, i=0):
    ckpt = os.path.join(src, runs.info(name)["latest"])
    files = sorted(f for f in os.listdir(ckpt)
                   if re.match(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$", f))
    return os.path.join(ckpt, files[i])


def rewrite_in_place(path, off=None):
    """Flip one byte in the second half of `path` (tensor data), same size, same inode."""
    time.sleep(0.05)  # past the filesystem's timestamp tick: the mtime moves
    size = os.path.getsize(path)
    off = size * 3 // 4 if off is None else off
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))


# Read a mounted file in one go; print the errno or the bytes' size and whether they
# equal the reference file, then the mounted file's size from stat. With a third
# argument, the file is opened first, "open" printed, and read once stdin has a line.
READ = """
    import json, os, sys
    path, ref = sys.argv[1], sys.argv[2]
    out = {}
    try:
        f = open(path, "rb")
        if len(sys.argv) > 3:
            print("open", flush=True)
            sys.stdin.readline()
        with f:
            data = f.read()
        out["len"] = len(data)
        with open(ref, "rb") as f:
            out["same"] = data == f.read()
    except OSError as e:
        out["errno"] = e.errno
    out["size"] = os.stat(path).st_size
    print(json.dumps(out))
"""


def mounted_read(path, ref):
    return child(READ, path, ref)


def read_after(path, ref, change):
    """Open `path` on the mount, then change(), then read through the open file: the
    read path's check, not open's. Returns READ's result."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(READ), path, ref, "held"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "open", p.stderr.read()
        change()
        out, err = p.communicate("go\n", timeout=FS_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def mount_copy(run, opts, runs, materialized, mounter, tmp_path, mount_opts=()):
    """Mount a private copy of `run` (its files may be changed); (reference, SRC, MNT)."""
    ref = materialized(run, opts)
    ref.check_ok()
    src = clone(runs, run, tmp_path)
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, *opts, *mount_opts)
    return ref, src, mnt


def mount_log(mnt):
    with open(mnt + ".log") as f:
        return f.read()


# ---- wrong bytes -------------------------------------------------------------------------

def test_truncated_source_is_eio_and_size_never_changes(runs, materialized, mounter, tmp_path):
    """Through the daemon's read path. With FUSE passthrough (the default for a whole
    unchanged file, as this shard is) the kernel reads an open file straight from its
    source; the daemon's source watcher then revokes that open: test_passthrough.py."""
    run = "llama-untied-st"
    ref, src, mnt = mount_copy(run, ST, runs, materialized, mounter, tmp_path,
                               ["--no-passthrough"])
    source = weight_file(src, runs, run)
    rel = os.path.relpath(source, src)
    want = os.path.join(ref.dest, rel)
    size = os.path.getsize(want)
    with open(source, "rb") as f:
        original = f.read()

    r = read_after(os.path.join(mnt, rel), want, lambda: os.truncate(source, len(original) // 2))
    assert r.get("errno") == errno.EIO, f"truncated source: expected EIO, got {r}"
    assert r["size"] == size, f"the mounted file's size changed: {r['size']} != {size}"

    with open(source, "r+b") as f:  # restored: right bytes again, or EIO; never wrong
        f.write(original)
    r = mounted_read(os.path.join(mnt, rel), want)
    assert r.get("errno") == errno.EIO or r.get("same"), r
    assert r["size"] == size, r
    mounter.umount(mnt)
    log = mount_log(mnt)
    assert len(re.findall(r"ERROR: .*" + re.escape(source) + r" changed", log)) == 1, log


def test_rewritten_source_is_eio_and_logged(runs, materialized, mounter, tmp_path):
    run = "llama-untied-st"
    ref, src, mnt = mount_copy(run, ST, runs, materialized, mounter, tmp_path)
    other = os.path.relpath(weight_file(src, runs, run, 0), src)
    r = mounted_read(os.path.join(mnt, other), os.path.join(ref.dest, other))
    assert r.get("same"), r  # the mount serves the right bytes

    source = weight_file(src, runs, run, 1)
    rel = os.path.relpath(source, src)
    rewrite_in_place(source)  # before anything of this shard was read or cached
    r = mounted_read(os.path.join(mnt, rel), os.path.join(ref.dest, rel))
    assert r.get("errno") == errno.EIO, f"rewritten source: expected EIO, got {r}"
    # The file made from the unchanged shard is still served.
    r = mounted_read(os.path.join(mnt, other), os.path.join(ref.dest, other))
    assert r.get("same"), r
    mounter.umount(mnt)
    log = mount_log(mnt)
    lines = [ln for ln in log.splitlines() if source in ln]
    assert len(lines) == 1 and "ERROR:" in lines[0] and "changed" in lines[0], log


def test_rewrite_restoring_the_mtime_is_eio(runs, materialized, mounter, tmp_path):
    """A tool that rewrites a file and puts its old mtime back (rsync -t, cp -p, touch -d)
    cannot hide the change: the inode's ctime, which no user can set, moves."""
    run = "llama-untied-st"
    ref, src, mnt = mount_copy(run, ST, runs, materialized, mounter, tmp_path)
    source = weight_file(src, runs, run)
    rel = os.path.relpath(source, src)
    st = os.stat(source)
    rewrite_in_place(source)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(source).st_mtime_ns == st.st_mtime_ns
    r = mounted_read(os.path.join(mnt, rel), os.path.join(ref.dest, rel))
    assert r.get("errno") == errno.EIO, f"rewritten source, mtime restored: got {r}"


def test_cache_never_serves_bytes_of_a_rewrite_that_restored_the_mtime(runs, fz, mounter,
                                                                        tmp_path):
    """Computed chunks are keyed by the source's identity: a source rewritten between two
    mounts, its mtime put back, must be computed again, not served from the cache."""
    run = "llama-untied-st"
    opts, cache = [*ST, "--dtype", "float32"], str(tmp_path / "cache")  # bf16 source: a cast
    src = clone(runs, run, tmp_path)
    source = weight_file(src, runs, run)
    rel = os.path.relpath(source, src)
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, *opts, cache=cache)
    first = child("""
        import sys
        with open(sys.argv[1], "rb") as f:
            print(f.read().hex())
    """, os.path.join(mnt, rel))
    mounter.umount(mnt)

    st = os.stat(source)
    size = os.path.getsize(source)
    with open(source, "r+b") as f:  # a whole value of the last tensor, so the cast differs
        f.seek(size - 64)
        f.write(bytes(64))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    dest = str(tmp_path / "dest")
    r = fz.run("materialize", src, dest, *opts, "--no-cache")
    assert r.returncode == 0, r.stderr
    with open(os.path.join(dest, rel), "rb") as f:
        want = f.read()
    assert want.hex() != first, "the rewrite did not change the cast bytes"
    mnt2 = str(tmp_path / "mnt2")
    mounter.mount(src, mnt2, *opts, cache=cache)
    r = mounted_read(os.path.join(mnt2, rel), os.path.join(dest, rel))
    assert r.get("same"), f"stale cached bytes served after a rewrite: {r}"


def test_replaced_source_is_reported_and_the_old_bytes_served(runs, materialized, mounter,
                                                             tmp_path):
    """A source replaced by rename (a new inode under the old name) does not change what
    the mount serves - the file it opened - but `fzfs status` says so."""
    run = "llama-untied-st"
    ref, src, mnt = mount_copy(run, ST, runs, materialized, mounter, tmp_path)
    source = weight_file(src, runs, run)
    rel = os.path.relpath(source, src)
    new = source + ".new"
    shutil.copyfile(source, new)
    rewrite_in_place(new)
    os.replace(new, source)
    r = mounted_read(os.path.join(mnt, rel), os.path.join(ref.dest, rel))
    assert r.get("same"), f"the mount must serve the file it opened: {r}"
    e = wait_status(mounter.fzfs, mnt, lambda e: e.get("replaced_sources"), "a replaced source")
    assert e["replaced_sources"] == [os.path.realpath(source)], e
    assert e["stale_sources"] == [], e
    text = status(mounter.fzfs).stdout
    assert re.search(r"replaced sources: \n    " + re.escape(os.path.realpath(source)), text), text


@pytest.mark.parametrize("run,opts", [("llama-untied-st", ST), ("llama-tied-bin", [])],
                         ids=["safetensors-header", "bin-zip-crcs"])
def test_header_never_served_beside_changed_data(run, opts, runs, mounter, tmp_path):
    """A generated header (the safetensors JSON; the zip's local headers and central
    directory with their CRCs) is not served once the data beside it changed."""
    src = clone(runs, run, tmp_path)
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, *opts)
    source = weight_file(src, runs, run)
    rel = os.path.relpath(source, src)
    rewrite_in_place(source)
    r = child("""
        import json, os, sys
        out = {}
        path = sys.argv[1]
        size = os.stat(path).st_size
        for what, off, n in (("head", 0, 4096), ("tail", max(0, size - 4096), 4096)):
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    out[what] = len(os.pread(fd, n, off))
                finally:
                    os.close(fd)
            except OSError as e:
                out[what] = -e.errno
        print(json.dumps(out))
    """, os.path.join(mnt, rel))
    assert r == {"head": -errno.EIO, "tail": -errno.EIO}, r
    mounter.umount(mnt)


def test_materialize_refuses_when_a_source_changes_before_publishing(runs, fz, tmp_path):
    """The test hook blocks materialize after every byte is written, just before its last
    source check, until a byte arrives on the FIFO: the source changes exactly there."""
    run = "llama-untied-st"
    src = clone(runs, run, tmp_path)
    source = weight_file(src, runs, run)
    fifo = str(tmp_path / "pause")
    os.mkfifo(fifo)
    parent = tmp_path / "out"
    parent.mkdir()
    dest = str(parent / "dest")
    env = dict(fz.env, FZFS_TEST_PAUSE_BEFORE_PUBLISH=fifo)
    proc = subprocess.Popen([fz.binary, "materialize", src, dest, "--no-cache", *ST],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        fd, deadline = None, time.time() + 60
        while fd is None and proc.poll() is None and time.time() < deadline:
            try:  # succeeds once materialize waits on the FIFO
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                assert e.errno == errno.ENXIO, e
                time.sleep(0.01)
        if fd is not None:
            rewrite_in_place(source)
            os.write(fd, b"x")
            os.close(fd)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert fd is not None, "materialize never reached the pause before publishing"
    assert proc.returncode == 1, f"exit {proc.returncode}\n{err}"
    assert source in err and "changed" in err and "not written" in err, err
    assert os.listdir(parent) == [], os.listdir(parent)  # no DEST, no temporary left
    assert not SANITIZER_REPORT.search(err), err


# ---- permissions -------------------------------------------------------------------------

NOBODY = 65534
AS_NOBODY = """
    import json, os, sys
    d = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)  # as root: the path may be 0700
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    out = {}
    for name in sys.argv[2:]:
        try:
            os.close(os.open(name, os.O_RDONLY, dir_fd=d))
            out[name] = 0
        except OSError as e:
            out[name] = e.errno
    print(json.dumps(out))
"""


def test_modes_follow_the_source(runs, fz, mounter, tmp_path):
    run = "custom-code"
    src = clone(runs, run, tmp_path)
    os.chmod(src, 0o751)  # others may pass through SRC, not list it
    os.chmod(os.path.join(src, "custom_lm.py"), 0o600)
    os.chmod(os.path.join(src, "custom_layers.py"), 0o755)
    names = ("", "custom_lm.py", "custom_layers.py", "config.json", "checkpoints")
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt, "-o", "allow_other")
    modes = child("""
        import json, os, stat, sys
        print(json.dumps([stat.S_IMODE(os.stat(os.path.join(sys.argv[1], n)).st_mode)
                          for n in sys.argv[2:]]))
    """, mnt, *names)
    # On the read-only mount: copies keep their source's bits, generated files and
    # directories follow SRC's; write bits cleared.
    assert dict(zip(names, modes)) == {"": 0o551, "custom_lm.py": 0o400,
                                       "custom_layers.py": 0o555, "config.json": 0o440,
                                       "checkpoints": 0o551}, [oct(m) for m in modes]
    # allow_other: another user reads only what the source lets others read.
    r = child(AS_NOBODY, mnt, "custom_lm.py", "config.json", "custom_layers.py")
    assert r == {"custom_lm.py": errno.EACCES, "config.json": errno.EACCES,
                 "custom_layers.py": 0}, r
    mounter.umount(mnt)

    dest = str(tmp_path / "dest")
    p = fz.run("materialize", src, dest, "--no-cache")
    assert p.returncode == 0, p.stderr
    um = os.umask(0)
    os.umask(um)
    got = [stat.S_IMODE(os.stat(os.path.join(dest, n)).st_mode) for n in names]
    want = [0o751, 0o600, 0o755, 0o640, 0o751]
    assert got == [m & ~um for m in want], [oct(m) for m in got]


def test_symlinked_source_leaving_src_is_refused(runs, fz, mounter, tmp_path):
    run = "custom-code"
    src = clone(runs, run, tmp_path)
    secret = tmp_path / "secret.py"
    secret.write_text("TOKEN = 'do not publish'\n")
    # A link inside SRC is followed: its target is part of the run.
    os.symlink("custom_layers.py", os.path.join(src, "alias_layers.py"))
    mnt = str(tmp_path / "mnt")
    mounter.mount(src, mnt)
    r = child("""
        import json, os, sys
        with open(os.path.join(sys.argv[1], "alias_layers.py")) as f:
            a = f.read()
        with open(os.path.join(sys.argv[2], "custom_layers.py")) as f:
            print(json.dumps(a == f.read()))
    """, mnt, src)
    assert r is True
    mounter.umount(mnt)

    os.symlink(str(secret), os.path.join(src, "modeling_extra.py"))
    mnt2 = str(tmp_path / "mnt2")
    p = mounter.mount(src, mnt2, check=False)
    assert p.returncode == 1 and not is_mounted(mnt2), p.stderr
    assert "modeling_extra.py" in p.stderr and "outside" in p.stderr, p.stderr
    parent = tmp_path / "out"
    parent.mkdir()
    p = fz.run("materialize", src, str(parent / "dest"), "--no-cache")
    assert p.returncode == 1 and "modeling_extra.py" in p.stderr, p.stderr
    assert os.listdir(parent) == []


def test_rw_is_refused_and_umount_knows_its_subtype(runs, fz, mounter, tmp_path):
    src = runs.src("llama-tied-bin")
    mnt = str(tmp_path / "mnt")
    p = mounter.mount(src, mnt, "-o", "rw", check=False)
    assert p.returncode == 2 and "-o rw" in p.stderr and "read-only" in p.stderr, p.stderr
    assert not is_mounted(mnt)

    mounter.mount(src, mnt, "-o", "subtype=mymodel")
    with open("/proc/self/mountinfo") as f:
        line = [ln for ln in f if f" {mnt} " in ln][-1]
    assert "fuse.mymodel" in line, line
    mounter.umount(mnt)
