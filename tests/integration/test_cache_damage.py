"""A damaged cache costs recomputation, never a read, a mount or a crash (issue 8, item 6).

data.mdb is truncated, zeroed or overwritten while no mount uses it and while a mount
has it mapped; pages inside it are corrupted. The mount must keep serving the bytes
`fzfs materialize` writes, say `fzfs cache clear` in its log, and `fzfs cache verify`
must report damage with an exit status, never a signal. `fzfs cache clear` refuses
while a mount uses the cache (it would remove a file another process has mapped).
"""

import os
import random
import re

import pytest

from test_mount import BF16_ST, Mounter, diff_trees, read_all

RUN = "llama-tied-bin"


@pytest.fixture(autouse=True)
def _fuse_available():
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.fail("mount tests need root and /dev/fuse")


@pytest.fixture
def mounter(fzfs, tmp_path):
    m = Mounter(fzfs, str(tmp_path))
    yield m
    m.cleanup()


@pytest.fixture
def ref(materialized):
    r = materialized(RUN, BF16_ST)
    r.check_ok()
    return r.dest


@pytest.fixture
def filled(runs, mounter, ref, tmp_path):
    """A cache dir holding every computed chunk of RUN with BF16_ST."""
    cache, mnt = str(tmp_path / "cache"), str(tmp_path / "fill")
    mounter.mount(runs.src(RUN), mnt, *BF16_ST, cache=cache)
    read_all(mnt)
    mounter.umount(mnt)
    assert os.path.getsize(os.path.join(cache, "data.mdb")) > 64 * 4096
    return cache


def damage(cache, how):
    path = os.path.join(cache, "data.mdb")
    size = os.path.getsize(path)
    rnd = random.Random(how)
    if how == "half":
        os.truncate(path, size // 2)
    elif how == "zero":
        os.truncate(path, 0)
    elif how == "random":
        with open(path, "wb") as f:
            f.write(rnd.randbytes(size))
    elif how == "pages":  # every page but the two meta pages
        with open(path, "r+b") as f:
            for off in range(2 * 4096, size, 4096):
                f.seek(off + rnd.randrange(64))
                f.write(rnd.randbytes(64))
    else:
        raise ValueError(how)


def log_of(mnt):
    with open(mnt + ".log", errors="replace") as f:
        return f.read()


def check_no_signal(p, what):
    assert p.returncode >= 0, f"{what} killed by signal {-p.returncode}:\n{p.stderr}"
    assert "Assertion" not in p.stderr and "mdb.c" not in p.stderr, p.stderr


@pytest.mark.parametrize("how", ["half", "zero", "random", "pages"])
def test_mount_serves_right_bytes_over_a_damaged_cache(how, runs, filled, mounter, ref, fzfs,
                                                       tmp_path):
    damage(filled, how)
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src(RUN), mnt, *BF16_ST, cache=filled)
    diff_trees(mnt, ref)
    mounter.umount(mnt)
    log = log_of(mnt)
    if how in ("half", "random"):  # (an empty data.mdb is a new environment to LMDB)
        assert "fzfs cache clear" in log, log
    if how == "pages":  # values fail their checksums, or LMDB finds the tree damaged
        assert "failed verification" in log or "fzfs cache clear" in log, log
    p = fzfs.run("cache", "verify", "--cache-dir", filled)
    check_no_signal(p, "cache verify")
    if how in ("half", "random"):  # recreated empty by the mount
        assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("how", ["half", "random", "pages"])
def test_cache_tools_report_damage_without_crashing(how, filled, fzfs):
    damage(filled, how)
    for action in ("verify", "stats"):
        p = fzfs.run("cache", action, "--cache-dir", filled)
        check_no_signal(p, f"cache {action}")
        if how != "pages" or action == "verify":
            assert p.returncode == 1, (action, p.stdout, p.stderr)
            assert "damaged" in p.stderr and "fzfs cache clear" in p.stderr, p.stderr
    p = fzfs.run("cache", "clear", "--cache-dir", filled)
    assert p.returncode == 0, p.stderr
    p = fzfs.run("cache", "verify", "--cache-dir", filled)
    assert p.returncode == 0 and re.search(r"^checked: 0$", p.stdout, re.M), (p.stdout, p.stderr)


@pytest.mark.parametrize("how", ["half", "zero"])
def test_cache_truncated_under_a_mount(how, runs, filled, mounter, ref, tmp_path):
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src(RUN), mnt, *BF16_ST, cache=filled)
    damage(filled, how)  # the daemon has the file mapped: its pages past EOF are gone
    diff_trees(mnt, ref)
    read_all(mnt)
    mounter.umount(mnt)
    assert "fzfs cache clear" in log_of(mnt), log_of(mnt)


def test_cache_clear_refused_while_a_mount_uses_it(runs, filled, mounter, ref, fzfs, tmp_path):
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src(RUN), mnt, *BF16_ST, cache=filled)
    size = os.path.getsize(os.path.join(filled, "data.mdb"))
    p = fzfs.run("cache", "clear", "--cache-dir", filled)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "in use" in p.stderr and "fzfs cache clear" in p.stderr, p.stderr
    assert os.path.getsize(os.path.join(filled, "data.mdb")) == size  # untouched
    diff_trees(mnt, ref)
    mounter.umount(mnt)
    p = fzfs.run("cache", "clear", "--cache-dir", filled)
    assert p.returncode == 0, p.stderr


def test_unusable_cache_dir_is_a_warning(runs, mounter, ref, tmp_path):
    cache = str(tmp_path / "not-a-dir")
    with open(cache, "w") as f:
        f.write("a file where the cache directory should be\n")
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src(RUN), mnt, *BF16_ST, cache=cache)
    diff_trees(mnt, ref)
    mounter.umount(mnt)
    assert "serving without it" in log_of(mnt), log_of(mnt)
