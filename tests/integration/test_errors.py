"""Refusals and bad input: exit status 1 (2 for usage errors), a message naming the
file and the problem, no DEST, nothing left next to it, never a crash or a hang."""

import os
import shutil
import struct
import zipfile

import pytest

from conftest import CHATML_YAML, build_fzfs, builds


@pytest.fixture(params=builds("asan"))
def fzfs(request, home):
    """Every test here runs against the release binary and, when FZFS_ASAN_BIN is set,
    the ASan/UBSan build (a sanitizer report fails the test)."""
    return build_fzfs(request.param, home)


def clone(runs, name, tmp_path):
    dst = tmp_path / ("src-" + name)
    shutil.copytree(runs.src(name), dst, symlinks=True)
    return str(dst)


def out_dir(tmp_path):
    parent = tmp_path / "out"
    parent.mkdir()
    return str(parent), str(parent / "dest")


def assert_refused(p, parent, dest, words, code=1, before=()):
    assert p.returncode >= 0, f"fzfs died of signal {-p.returncode}\nstderr:\n{p.stderr[-2000:]}"
    assert p.returncode == code, f"exit {p.returncode}, expected {code}\nstderr:\n{p.stderr[-2000:]}"
    err = p.stderr.lower()
    assert any(w.lower() in err for w in words), f"stderr should name one of {words}:\n{p.stderr[-2000:]}"
    assert "traceback" not in err and "sanitizer" not in err, p.stderr[-2000:]
    if not before:
        assert not os.path.lexists(dest), "DEST was created"
    assert sorted(os.listdir(parent)) == sorted(before), f"left next to DEST: {os.listdir(parent)}"


# --------------------------------------------------------------------------- refusals

def test_dest_exists(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    os.mkdir(dest)
    with open(os.path.join(dest, "keep.txt"), "w") as f:
        f.write("mine")
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest)
    assert_refused(p, parent, dest, ["exists", dest], before=["dest"])
    assert os.listdir(dest) == ["keep.txt"]


def test_dest_is_a_file(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    with open(dest, "w") as f:
        f.write("x")
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest)
    assert_refused(p, parent, dest, ["exists", dest], before=["dest"])


def test_src_missing(fzfs, tmp_path):
    parent, dest = out_dir(tmp_path)
    missing = str(tmp_path / "no-such-run")
    p = fzfs.run("materialize", missing, dest)
    assert_refused(p, parent, dest, ["no-such-run"])


def test_no_valid_checkpoint(fzfs, runs, tmp_path):
    src = tmp_path / "empty-run"
    ck = src / "checkpoints" / "checkpoint-10"
    ck.mkdir(parents=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(runs.src("llama-tied-bin"), f), src / f)
    shutil.copy(os.path.join(runs.src("llama-tied-bin"), "checkpoints", "checkpoint-1500",
                             "optimizer_state.pt"), ck / "optimizer_state.pt")
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", str(src), dest)
    assert_refused(p, parent, dest, ["checkpoint"])


def test_empty_checkpoints_dir_and_no_root_weights(fzfs, runs, tmp_path):
    src = tmp_path / "empty-run2"
    (src / "checkpoints").mkdir(parents=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(runs.src("llama-tied-bin"), f), src / f)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", str(src), dest)
    assert_refused(p, parent, dest, ["checkpoint", "weights"])


def test_dash_c_missing(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "-c",
                 os.path.join(runs.src("llama-tied-bin"), "checkpoints", "checkpoint-999"))
    assert_refused(p, parent, dest, ["checkpoint-999"])


def test_template_missing(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "-t", str(tmp_path / "nope.jinja"))
    assert_refused(p, parent, dest, ["nope.jinja"])


def test_unknown_preset(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "--generation-config", "no_such_preset_zz")
    assert_refused(p, parent, dest, ["no_such_preset_zz"])


def test_unknown_stop_token(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "--stop-tokens", "<|EOS|>,<|nope|>")
    assert_refused(p, parent, dest, ["<|nope|>"])


@pytest.mark.parametrize("text,word", [
    ('eos_tokn: "<|im_end|>"\n', "eos_tokn"),
    ('pad_token: {token: "<|pad|>", init: "median"}\n', "median"),
    ('pad_token: {token: "<|pad|>", colour: blue}\n', "colour"),
    ('special_tokens: "<|a|>"\n', "special_tokens"),
    ('pad_token: {init: zero}\n', "token"),
    # echoed as written, not as the 18446744073709551615 strtoull saturates to
    ('pad_token: {token: "<|pad|>", init: "copy:99999999999999999999"}\n',
     "'copy:99999999999999999999': the token id is too large"),
    # yaml.safe_load refuses a second document; it was silently ignored
    ('eos_token: "<|im_end|>"\n---\npad_token: "<|pad|>"\n', "second YAML document starts at line 2"),
    ('---\neos_token: "<|im_end|>"\n---\n', "second YAML document starts at line 3"),
], ids=["unknown-key", "bad-init", "unknown-subkey", "not-a-list", "missing-token", "copy-id-overflow",
        "second-document", "empty-second-document"])
def test_bad_yaml_content(fzfs, runs, tmp_path, text, word):
    y = tmp_path / "bad.yaml"
    y.write_text(text)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "--add-tokens", str(y))
    assert_refused(p, parent, dest, [word])


def test_malformed_yaml(fzfs, runs, tmp_path):
    y = tmp_path / "broken.yaml"
    y.write_text('eos_token: ["<|im_end|>"\nspecial_tokens:\n  - : :\n')
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "--add-tokens", str(y))
    assert_refused(p, parent, dest, ["broken.yaml"])


def test_add_tokens_file_missing(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "--add-tokens", str(tmp_path / "nope.yaml"))
    assert_refused(p, parent, dest, ["nope.yaml"])


def test_root_copy_with_keep_optimizer(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "--root-copy", "--keep-optimizer")
    assert_refused(p, parent, dest, ["--root-copy", "root-copy"], code=2)


def test_keep_optimizer_without_optimizer_state(fzfs, runs, tmp_path):
    src = clone(runs, "nopad-tied-bin", tmp_path)
    os.remove(os.path.join(src, "checkpoints", "checkpoint-50", "optimizer_state.pt"))
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest, "--keep-optimizer")
    assert_refused(p, parent, dest, ["optimizer_state.pt"])


def test_keep_optimizer_on_flat_source(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("flat-hf"), dest, "--keep-optimizer")
    assert_refused(p, parent, dest, ["optimizer"])


def test_bad_preset_file(fzfs, runs, tmp_path):
    bad = tmp_path / "bad-preset.json"
    bad.write_text('{"temperature": 0.3, ')
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "--generation-config", str(bad))
    assert_refused(p, parent, dest, ["bad-preset.json"])


# --------------------------------------------------------------------------- usage errors

def test_unknown_option_is_usage_error(fzfs, runs, tmp_path):
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, "--frobnicate")
    assert_refused(p, parent, dest, ["frobnicate"], code=2)


def test_missing_dest_is_usage_error(fzfs, runs):
    p = fzfs.run("materialize", runs.src("llama-tied-bin"))
    assert p.returncode == 2, p.stderr


def test_unknown_command_is_usage_error(fzfs):
    p = fzfs.run("frobnicate")
    assert p.returncode == 2, p.stderr
    assert "frobnicate" in p.stderr


@pytest.mark.parametrize("opt", [["--dtype", "int8"], ["--device", "cuda"], ["--log-level", "LOUD"]],
                         ids=["dtype", "device", "log-level"])
def test_bad_option_value(fzfs, runs, tmp_path, opt):
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", runs.src("llama-tied-bin"), dest, *opt)
    assert p.returncode in (1, 2), f"exit {p.returncode}\n{p.stderr}"
    assert opt[1].lower() in p.stderr.lower(), p.stderr
    assert os.listdir(parent) == []


# --------------------------------------------------------------------------- corrupt input

def rewrite_zip(path, change):
    """Rewrite a torch zip, change(name, data) -> data (or None to drop)."""
    with zipfile.ZipFile(path) as z:
        items = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    os.remove(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in items:
            data = change(name, data)
            if data is not None:
                z.writestr(name, data)


def evil_pickle(module, name, arg):
    """PROTO 2; {'model.norm.weight': module.name(arg)} built opcode by opcode."""
    a = arg.encode()
    k = b"model.norm.weight"
    return (b"\x80\x02" + b"}" + b"X" + struct.pack("<I", len(k)) + k
            + b"c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + struct.pack("<I", len(a)) + a + b"\x85" + b"R" + b"s" + b".")


def latest_shard(src, n):
    return os.path.join(src, "checkpoints", "checkpoint-1500", f"pytorch_model-0000{n}-of-00002.bin")


def test_truncated_bin(fzfs, runs, tmp_path):
    src = clone(runs, "llama-tied-bin", tmp_path)
    shard = latest_shard(src, 2)
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, ["pytorch_model-00002-of-00002.bin"])


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("posix", "system"),
                                         ("subprocess", "call")])
def test_pickle_with_disallowed_global(fzfs, runs, tmp_path, module, name):
    src = clone(runs, "llama-tied-bin", tmp_path)
    marker = tmp_path / "pwned"
    cmd = f"open('{marker}','w')" if name == "eval" else f"touch {marker}"
    if name == "call":
        cmd = f"touch {marker}"
    rewrite_zip(latest_shard(src, 2),
                lambda n, d: evil_pickle(module, name, cmd) if n.endswith("/data.pkl") else d)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, [f"{module}.{name}", f"{module} {name}"])
    assert not marker.exists(), "the pickle was executed"


def test_bin_storage_record_too_short(fzfs, runs, tmp_path):
    src = clone(runs, "llama-tied-bin", tmp_path)
    rewrite_zip(latest_shard(src, 1), lambda n, d: d[:len(d) // 2] if n.endswith("/data/0") else d)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, ["pytorch_model-00001-of-00002.bin"])


def test_bin_central_directory_offset_out_of_range(fzfs, runs, tmp_path):
    """torch writes zip64 end records; readers take the central directory offset from the
    zip64 record when present, so both copies of the offset are corrupted."""
    src = clone(runs, "llama-tied-bin", tmp_path)
    shard = latest_shard(src, 1)
    with open(shard, "r+b") as f:
        data = bytearray(f.read())
        eocd = data.rfind(b"PK\x05\x06")
        assert eocd > 0
        struct.pack_into("<I", data, eocd + 16, len(data) * 4)
        z64 = data.rfind(b"PK\x06\x06")
        if z64 >= 0:
            struct.pack_into("<Q", data, z64 + 48, len(data) * 4)
        f.seek(0)
        f.write(data)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, ["pytorch_model-00001-of-00002.bin"])


def test_bin_local_header_offset_out_of_range(fzfs, runs, tmp_path):
    src = clone(runs, "llama-tied-bin", tmp_path)
    shard = latest_shard(src, 1)
    with open(shard, "r+b") as f:
        data = bytearray(f.read())
        cd = data.find(b"PK\x01\x02")
        assert cd > 0
        struct.pack_into("<I", data, cd + 42, 0x7FFFFFF0)  # first entry's local header offset
        f.seek(0)
        f.write(data)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, ["pytorch_model-00001-of-00002.bin"])


def test_not_a_zip(fzfs, runs, tmp_path):
    src = clone(runs, "nopad-tied-bin", tmp_path)
    with open(os.path.join(src, "checkpoints", "checkpoint-50", "pytorch_model.bin"), "wb") as f:
        f.write(b"\x80\x02}q\x00." * 100)  # a legacy (non-zip) pickle file
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, ["pytorch_model.bin"])


def st_shard(src):
    return os.path.join(src, "checkpoints", "checkpoint-500", "model-00001-of-00002.safetensors")


def _st_parts(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    return n, data[8:8 + n], data[8 + n:]


@pytest.mark.parametrize("kind", ["huge-length", "not-json", "offset-past-end", "shape-mismatch",
                                  "trailing-bytes", "empty-file"])
def test_malformed_safetensors(fzfs, runs, tmp_path, kind):
    import json
    src = clone(runs, "llama-untied-st", tmp_path)
    path = st_shard(src)
    n, header, body = _st_parts(path)
    h = json.loads(header)
    if kind == "huge-length":
        blob = struct.pack("<Q", 1 << 40) + header + body
    elif kind == "not-json":
        bad = b"{" + b"x" * (n - 1)
        blob = struct.pack("<Q", n) + bad + body
    else:
        name = next(k for k in h if k != "__metadata__")
        if kind == "offset-past-end":
            h[name]["data_offsets"][1] = len(body) + 4096
        elif kind == "shape-mismatch":
            h[name]["shape"] = [s + 1 for s in h[name]["shape"]]
        hb = json.dumps(h).encode()
        hb += b" " * (-len(hb) % 8)
        blob = struct.pack("<Q", len(hb)) + hb + body
        if kind == "trailing-bytes":
            blob += b"\0" * 64
        if kind == "empty-file":
            blob = b""
    with open(path, "wb") as f:
        f.write(blob)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, ["model-00001-of-00002.safetensors"])


@pytest.mark.parametrize("fname,content", [
    ("config.json", '{"vocab_size": 320, "hidden_size": '),
    ("config.json", '[1, 2, 3]\n'),
    ("tokenizer.json", '{"added_tokens": ['),
    ("tokenizer_config.json", 'not json'),
], ids=["config-truncated", "config-not-object", "tokenizer-truncated", "tokenizer-config-garbage"])
def test_malformed_json_metadata(fzfs, runs, tmp_path, fname, content):
    src = clone(runs, "llama-tied-bin", tmp_path)
    with open(os.path.join(src, fname), "w") as f:
        f.write(content)
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert_refused(p, parent, dest, [fname])


def test_malformed_index_json(fzfs, runs, tmp_path):
    src = clone(runs, "llama-tied-bin", tmp_path)
    with open(os.path.join(src, "checkpoints", "checkpoint-1500", "pytorch_model.bin.index.json"), "w") as f:
        f.write('{"weight_map": {"a": ')
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest, "-c", os.path.join(src, "checkpoints", "checkpoint-1500"))
    assert_refused(p, parent, dest, ["pytorch_model.bin.index.json"])


def test_index_names_missing_shard(fzfs, runs, tmp_path):
    src = clone(runs, "llama-tied-bin", tmp_path)
    os.remove(latest_shard(src, 2))
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest, "-c", os.path.join(src, "checkpoints", "checkpoint-1500"))
    assert_refused(p, parent, dest, ["pytorch_model-00002-of-00002.bin"])


def test_malformed_source_manifest_is_not_a_crash(fzfs, runs, tmp_path):
    """A manifest that does not parse: the checkpoint falls back to its mtime (FORMATS.md 1)
    or fzfs refuses; either way no crash and, on success, a loadable DEST."""
    src = clone(runs, "custom-code", tmp_path)
    with open(os.path.join(src, "checkpoints", "checkpoint-200", "checkpoint_manifest.json"), "w") as f:
        f.write("{\"timestamp\": ")
    parent, dest = out_dir(tmp_path)
    p = fzfs.run("materialize", src, dest)
    assert p.returncode in (0, 1), f"exit {p.returncode}\n{p.stderr}"
    if p.returncode == 1:
        assert_refused(p, parent, dest, ["checkpoint_manifest.json"])
    else:
        assert os.listdir(parent) == ["dest"]


def test_chatml_yaml_is_bundled():
    assert os.path.isfile(CHATML_YAML)
