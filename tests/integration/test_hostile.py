"""Hostile and broken inputs (issue 8): a FIFO, device, socket or directory where a file is
expected, corrupt torch checkpoints (a name that is not UTF-8, big-endian records, a tensor in
two shards, a shape whose strides overflow), an empty Linear under --quantize, bad option
values, and temporaries left by a killed materialize. Each refusal exits 1 (2 for usage),
names the file and what to do, never hangs, and leaves neither DEST nor anything next to it.
Every test here runs against the ASan/UBSan build too when FZFS_ASAN_BIN is set."""

import json
import os
import socket
import struct
import subprocess
import sys

import pytest

# fzfs: the fixture that runs each test against the release and (FZFS_ASAN_BIN) ASan builds
from test_errors import assert_refused, clone, fzfs, latest_shard, out_dir, rewrite_zip  # noqa: F401

# A FIFO makes open(2) block until a writer comes: a regression is a hang, which
# Fzfs.run turns into a failure after this many seconds.
HANG = 60

CK = os.path.join("checkpoints", "checkpoint-1500")


def make_special(path, kind):
    """Replace `path` (or create it) with a FIFO, a directory, a socket or a device."""
    if os.path.lexists(path):
        os.remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        os.mkdir(path)
        with open(os.path.join(path, "inside"), "w") as f:
            f.write("{}")
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.close()
    elif kind == "device":
        os.symlink("/dev/null", path)  # a character device, reached through a symlink
    return path


KIND_WORDS = {"fifo": "is a FIFO, not a regular file", "dir": "is a directory, not a regular file",
              "socket": "is a socket, not a regular file",
              "device": "is a character device, not a regular file"}


def assert_special_refused(p, parent, dest, path, kind):
    assert_refused(p, parent, dest, [KIND_WORDS[kind]])
    assert path in p.stderr, f"the message should name {path}:\n{p.stderr[-2000:]}"
    assert "regular files" in p.stderr  # says what fzfs needs
    assert "does not exist" not in p.stderr and "not found" not in p.stderr, p.stderr[-2000:]


# --------------------------------------------------------------------------- item 5: special files

@pytest.mark.parametrize("name,kind", [
    ("config.json", "fifo"), ("tokenizer.json", "fifo"), ("tokenizer_config.json", "fifo"),
    ("config.json", "dir"), ("tokenizer.json", "socket"), ("tokenizer_config.json", "device"),
])
def test_special_metadata_file(fzfs, runs, tmp_path, name, kind):
    src = clone(runs, "llama-tied-bin", tmp_path)
    path = make_special(os.path.join(src, name), kind)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest, timeout=HANG)
    assert_special_refused(p, parent, dest, path, kind)


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_special_shard_is_not_missing(fzfs, runs, tmp_path, kind):
    """A shard the index lists that is a FIFO or a directory: named as such, not 'does not exist'."""
    src = clone(runs, "llama-tied-bin", tmp_path)
    path = make_special(latest_shard(src, 2), kind)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest, timeout=HANG)
    assert_special_refused(p, parent, dest, path, kind)
    assert "pytorch_model.bin.index.json" in p.stderr  # who asked for it


def test_fifo_single_weight_file(fzfs, runs, tmp_path):
    """An unsharded pytorch_model.bin that is a FIFO is refused, not skipped as 'no weights'."""
    src = clone(runs, "nopad-tied-bin", tmp_path)
    path = make_special(os.path.join(src, "checkpoints", "checkpoint-50", "pytorch_model.bin"), "fifo")
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest, timeout=HANG)
    assert_special_refused(p, parent, dest, path, "fifo")


@pytest.mark.parametrize("what", ["chat-template", "add-tokens", "preset"])
def test_fifo_option_file(fzfs, runs, tmp_path, what):
    path = make_special(str(tmp_path / f"{what}.in"), "fifo")
    opt = {"chat-template": "-t", "add-tokens": "--add-tokens", "preset": "--generation-config"}[what]
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, opt, path, timeout=HANG)
    assert_special_refused(p, parent, dest, path, "fifo")


def test_fifo_optimizer_state(fzfs, runs, tmp_path):
    src = clone(runs, "llama-tied-bin", tmp_path)
    path = make_special(os.path.join(src, CK, "optimizer_state.pt"), "fifo")
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest, "--keep-optimizer", timeout=HANG)
    assert_special_refused(p, parent, dest, path, "fifo")


def test_fifo_model_source(fzfs, runs, tmp_path):
    """A *.py at the source root that is a FIFO: refused (it was silently left out)."""
    src = clone(runs, "custom-code", tmp_path)
    path = make_special(os.path.join(src, "custom_layers.py"), "fifo")
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest, timeout=HANG)
    assert_special_refused(p, parent, dest, path, "fifo")


def test_fifo_plan_and_mount(fzfs, runs, tmp_path):
    """plan and mount refuse the same way (mount before mounting anything)."""
    src = clone(runs, "llama-tied-bin", tmp_path)
    path = make_special(os.path.join(src, "tokenizer.json"), "fifo")
    p = fzfs.run("plan", src, timeout=HANG)
    assert p.returncode == 1 and KIND_WORDS["fifo"] in p.stderr and path in p.stderr, p.stderr
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = fzfs.run("mount", src, str(mnt), "-f", timeout=HANG)
    assert p.returncode == 1 and KIND_WORDS["fifo"] in p.stderr and path in p.stderr, p.stderr
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []


# --------------------------------------------------------------------------- item 4: corrupt .bin

def rename_tensor(shard, old, new):
    """Rename a tensor in a torch-saved shard by rewriting its data.pkl (BINUNICODE key)."""
    o = b"X" + struct.pack("<I", len(old)) + old
    n = b"X" + struct.pack("<I", len(new)) + new

    def change(name, data):
        if name.endswith("/data.pkl"):
            assert data.count(o) == 1, f"{old!r} not found once in {shard}"
            return data.replace(o, n)
        return data
    rewrite_zip(shard, change)


def empty_tensor_with_overflowing_strides(src):
    """(0, 2^62, 4) holds no element, but its strides overflow int64 (UBSan in tensor.c).
    Made by torch with a legal (0, 123456789, 4), then the 123456789 patched in data.pkl."""
    import torch
    shard = latest_shard(src, 2)
    sd = torch.load(shard, weights_only=True)
    sd["extra.empty"] = torch.empty((0, 123456789, 4))
    torch.save(sd, shard)
    index = os.path.join(src, CK, "pytorch_model.bin.index.json")
    with open(index) as f:
        idx = json.load(f)
    idx["weight_map"]["extra.empty"] = os.path.basename(shard)
    with open(index, "w") as f:
        json.dump(idx, f)
    old = b"J" + struct.pack("<i", 123456789)
    new = b"\x8a\x08" + struct.pack("<q", 2 ** 62)  # LONG1, 8 bytes
    rewrite_zip(shard, lambda n, d: d.replace(old, new) if n.endswith("/data.pkl") else d)


def byteorder(value):
    return lambda src: rewrite_zip(latest_shard(src, 1),
                                   lambda n, d: value if n.endswith("/byteorder") else d)


SHARD1, SHARD2 = "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
# case: (how to corrupt a clone of llama-tied-bin, what stderr must say)
CORRUPT_BIN = {
    # the index used to drop such a tensor, and fzfs exited 0
    "name-not-utf8": (lambda src: rename_tensor(latest_shard(src, 2), b"model.norm.weight",
                                                b"model.norm.\xff\xfeight"),
                      [SHARD2, "UTF-8", "model.norm.\\xFF\\xFEight"]),
    "big-endian": (byteorder(b"big"), [SHARD1, "big-endian", "little-endian", "save"]),
    "unknown-byteorder": (byteorder(b"middle"), [SHARD1, "'middle'"]),
    # shard 2 also holds a tensor of shard 1: the index can only point at one copy
    "tensor-in-two-shards": (lambda src: rename_tensor(latest_shard(src, 2), b"model.norm.weight",
                                                       b"model.layers.0.mlp.up_proj.weight"),
                             [SHARD1, SHARD2, "model.layers.0.mlp.up_proj.weight", "stored twice"]),
    "empty-shape-overflows": (empty_tensor_with_overflowing_strides,
                              [SHARD2, "extra.empty", "overflows"]),
}


@pytest.mark.parametrize("case", list(CORRUPT_BIN))
def test_corrupt_bin(fzfs, runs, tmp_path, case):
    corrupt, says = CORRUPT_BIN[case]
    src = clone(runs, "llama-tied-bin", tmp_path)
    corrupt(src)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, says[:1])
    for s in says:
        assert s in p.stderr, f"stderr should say {s!r}:\n{p.stderr[-2000:]}"


# --------------------------------------------------------------------------- item 7: shapes

@pytest.fixture(scope="module")
def zero_width_run(session_tmp):
    """A real llama whose MLP is empty (intermediate_size 0): down_proj is [64, 0],
    gate/up_proj [0, 64]. Built by transformers, saved as a training run."""
    import torch
    from test_quantize import _save_run
    return _save_run(os.path.join(session_tmp, "zero-width-run"), 64, 0, torch.float32)


@pytest.mark.parametrize("recipe", ["int8-weight-only", "int4-weight-only",
                                    "float8-dynamic-act-float8-weight"])
def test_quantize_empty_linear(fzfs, zero_width_run, tmp_path, recipe):
    """--quantize on a [64, 0] weight divided by zero (SIGFPE, or exit 0 with a bad file):
    empty Linears stay unquantized, listed in `ignore`, and the model loads and runs."""
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", zero_width_run, dest, "--quantize", recipe, "--skip-default-tokens")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "sanitizer" not in p.stderr.lower() and "runtime error" not in p.stderr, p.stderr[-2000:]
    with open(os.path.join(dest, "config.json")) as f:
        ignore = json.load(f)["quantization_config"]["ignore"]
    for m in ("model.layers.0.mlp.down_proj", "model.layers.1.mlp.gate_proj",
              "model.layers.1.mlp.up_proj"):
        assert m in ignore, ignore
    code = r"""
import sys, torch
from transformers import AutoModelForCausalLM
m, info = AutoModelForCausalLM.from_pretrained(sys.argv[1], output_loading_info=True)
assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
w = m.model.layers[0].mlp.down_proj.weight
assert tuple(w.shape) == (64, 0), w.shape
out = m(torch.tensor([[1, 5, 9, 20]])).logits
assert torch.isfinite(out).all()
print("OK")
"""
    r = subprocess.run([sys.executable, "-c", code, dest], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


# --------------------------------------------------------------------------- item 13: messages

def test_pickle_global_with_nul_is_shown_escaped(fzfs, runs, tmp_path):
    """'torch._utils\\0x._rebuild_tensor_v2' used to print as the allowed name."""
    src = clone(runs, "llama-tied-bin", tmp_path)
    k = b"model.norm.weight"
    evil = (b"\x80\x02}" + b"X" + struct.pack("<I", len(k)) + k
            + b"ctorch._utils\x00x\n_rebuild_tensor_v2\n" + b")R" + b"s.")
    rewrite_zip(latest_shard(src, 2), lambda n, d: evil if n.endswith("/data.pkl") else d)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, ["not allowed"])
    assert "'torch._utils\\x00x._rebuild_tensor_v2'" in p.stderr, p.stderr


def test_yaml_document_end_marker_is_fine(fzfs, runs, tmp_path):
    y = tmp_path / "one.yaml"
    y.write_text('---\neos_token: "<|im_end|>"\n...\n')
    p = fzfs.run("plan", runs.src("llama-tied-bin"), "--add-tokens", str(y))
    assert p.returncode == 0, p.stderr


def test_empty_dest_is_refused_before_any_work(fzfs, tmp_path):
    """The DEST check comes first: with a SRC that does not even exist, the error is DEST's."""
    p = fzfs.run("materialize", str(tmp_path / "no-such-src"), "", timeout=30)
    assert p.returncode == 2, p.stderr
    assert "DEST is empty" in p.stderr and "no-such-src" not in p.stderr, p.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", ["parent-missing", "parent-is-file", "dest-exists"])
def test_bad_dest_is_refused_before_any_work(fzfs, tmp_path, case):
    parent, _ = out_dir(tmp_path)
    if case == "parent-missing":
        dest = os.path.join(parent, "missing", "dest")
    elif case == "parent-is-file":
        with open(os.path.join(parent, "file"), "w") as f:
            f.write("x")
        dest = os.path.join(parent, "file", "dest")
    else:
        dest = os.path.join(parent, "dest")
        os.mkdir(dest)
        with open(os.path.join(dest, "mine.txt"), "w") as f:  # an empty one would be accepted
            f.write("x")
    before = sorted(os.listdir(parent))
    p = fzfs.run("materialize", str(tmp_path / "no-such-src"), dest, timeout=30)
    assert p.returncode == 1, p.stderr
    assert dest in p.stderr and "no-such-src" not in p.stderr, p.stderr
    assert sorted(os.listdir(parent)) == before


# --------------------------------------------------------------------------- item 9: stale temps

def dead_pid():
    """A PID that just exited (and is not reused in the blink of a test)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_processes_are_removed(fzfs, runs, tmp_path):
    """What kill -9 leaves (.DEST.fzfs-tmp-PID of a process that no longer exists) is removed
    by the next materialize to DEST and reported; a live process's temp, another DEST's, and
    anything that is not our directory are left alone."""
    parent, dest = out_dir(tmp_path)
    dead = dead_pid()
    stale = os.path.join(parent, f".dest.fzfs-tmp-{dead}")
    os.makedirs(os.path.join(stale, "checkpoints", "checkpoint-1500"))
    with open(os.path.join(stale, "checkpoints", "checkpoint-1500", "pytorch_model-00001-of-00002.bin"), "wb") as f:
        f.write(b"\0" * 4096)
    os.symlink("/nonexistent", os.path.join(stale, "dangling"))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        keep = [f".dest.fzfs-tmp-{live.pid}",    # a materialize still running
                f".other.fzfs-tmp-{dead}",        # another DEST's
                f".dest.fzfs-tmp-{dead}x",        # not our name pattern
                f".dest.fzfs-tmp-{os.getpid()}"]  # alive (this test)
        for k in keep:
            os.mkdir(os.path.join(parent, k))
        dead2 = dead_pid()
        with open(os.path.join(parent, f".dest.fzfs-tmp-{dead2}"), "w") as f:
            f.write("a file, not a temp directory")  # not a directory: never removed
        keep.append(f".dest.fzfs-tmp-{dead2}")
        p = fzfs.run("materialize", runs.src("tiny-run"), dest)
        assert p.returncode == 0, p.stderr[-2000:]
        assert not os.path.lexists(stale)
        assert sorted(os.listdir(parent)) == sorted(keep + ["dest"])
        lines = [l for l in p.stderr.splitlines() if "removed" in l]
        assert len(lines) == 1 and stale in lines[0] and str(dead) in lines[0], p.stderr
    finally:
        live.kill()
        live.wait()
