"""fzfs verify: the release lint, as a user runs it.

Every output the suite materializes already passes it (conftest's `materialized()` runs
`fzfs verify` on each DEST). Here: models saved by transformers itself pass too; each kind
of breakage made by editing a good output is caught with one line naming the file and the
problem (exit 1); --json; and materialize / mount refuse to publish a model that fails.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import FZFS_ASAN_BIN, SANITIZER_ENV, Fzfs
from test_mount import Mounter, is_mounted

QUANT = ["--quantize", "int8-weight-only"]


@pytest.fixture
def mounter(fzfs, tmp_path):
    m = Mounter(fzfs, str(tmp_path))
    yield m
    m.cleanup()


def verify(fzfs, d, *opts):
    p = fzfs.run("verify", d, *opts)
    assert p.returncode in (0, 1), f"fzfs verify exited {p.returncode}:\n{p.stderr}"
    assert "sanitizer" not in p.stderr.lower() and "traceback" not in p.stderr.lower()
    return p


def copy_of(materialized, run, opts, tmp_path):
    r = materialized(run, opts)
    r.check_ok()
    d = str(tmp_path / "model")
    shutil.copytree(r.dest, d, symlinks=True)
    return d


def edit_json(path, fn):
    with open(path) as f:
        obj = json.load(f)
    fn(obj)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def shard_of(d, tensor):
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        return json.load(f)["weight_map"][tensor]


def first_shard(d, ext):
    return sorted(n for n in os.listdir(d) if n.endswith(ext) and "-of-" in n)[0]


# Each breakage: (run, options, edit(d) -> (file, words in its problem line)).

def vocab_size_changed(d):
    edit_json(os.path.join(d, "config.json"), lambda c: c.update(vocab_size=c["vocab_size"] + 1))
    return first_shard(d, ".bin"), "rows but config.json vocab_size is"


def tokenizer_token_added(d):
    with open(os.path.join(d, "config.json")) as f:
        v = json.load(f)["vocab_size"]
    edit_json(os.path.join(d, "tokenizer.json"), lambda t: t["added_tokens"].append(
        {"id": v, "content": "<|extra|>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}))
    return "tokenizer.json", f"the tokenizer has {v + 1} tokens"


def index_missing_file(d):
    def fn(idx):
        name = next(iter(idx["weight_map"]))
        idx["weight_map"][name] = "pytorch_model-00009-of-00009.bin"
    edit_json(os.path.join(d, "pytorch_model.bin.index.json"), fn)
    return "pytorch_model.bin.index.json", "'pytorch_model-00009-of-00009.bin'"


def index_tensor_renamed(d):
    def fn(idx):
        wm = idx["weight_map"]
        name = next(iter(wm))
        wm["renamed." + name] = wm.pop(name)
    edit_json(os.path.join(d, "pytorch_model.bin.index.json"), fn)
    return "pytorch_model.bin.index.json", "which has no such tensor"


def unreferenced_shard(d):
    shutil.copy(os.path.join(d, first_shard(d, ".bin")),
                os.path.join(d, "pytorch_model-00003-of-00003.bin"))
    return "pytorch_model-00003-of-00003.bin", "does not reference"


def wrong_total_size(d):
    edit_json(os.path.join(d, "pytorch_model.bin.index.json"),
              lambda i: i["metadata"].update(total_size=i["metadata"]["total_size"] + 2))
    return "pytorch_model.bin.index.json", "metadata.total_size is"


def truncated_safetensors(d):
    p = os.path.join(d, first_shard(d, ".safetensors"))
    os.truncate(p, os.path.getsize(p) // 2)
    return first_shard(d, ".safetensors"), "safetensors"


def corrupt_bin_zip(d):
    p = os.path.join(d, first_shard(d, ".bin"))
    with open(p, "r+b") as f:  # deliberately corrupt: the end-of-central-directory record
        f.seek(-22, os.SEEK_END)
        f.write(b"\0" * 22)
    return first_shard(d, ".bin"), "zip"


def tie_flag_true_untied(d):
    edit_json(os.path.join(d, "config.json"), lambda c: c.update(tie_word_embeddings=True))
    return shard_of(d, "lm_head.weight"), "tie_word_embeddings: true but 'lm_head.weight'"


def tie_flag_false_head_dropped(d):
    edit_json(os.path.join(d, "config.json"), lambda c: c.update(tie_word_embeddings=False))
    return "config.json", "no output head is stored"


def eos_out_of_range(d):
    edit_json(os.path.join(d, "generation_config.json"),
              lambda g: g.update(eos_token_id=[g["eos_token_id"], 100000]
                                 if isinstance(g["eos_token_id"], int)
                                 else g["eos_token_id"] + [100000]))
    return "generation_config.json", "100000 is outside the embedding"


def role_token_not_in_vocab(d):
    edit_json(os.path.join(d, "tokenizer_config.json"), lambda t: t.update(eos_token="<|nope|>"))
    return "tokenizer_config.json", "eos_token '<|nope|>' is not in the tokenizer's vocabulary"


def dangling_symlink(d):
    real = os.path.realpath(os.path.join(d, first_shard(d, ".bin")))
    os.remove(real)
    return first_shard(d, ".bin"), "dangling symlink"


def escaping_symlink(d):
    os.symlink("../../outside.json", os.path.join(d, "chat_template.json"))
    return "chat_template.json", "points outside the directory"


def quant_config_without_quantized(d):
    edit_json(os.path.join(d, "config.json"), lambda c: c.update(quantization_config={
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "quantization_status": "compressed", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8}}}}))
    return "config.json", "no stored tensor is quantized"


def quantized_without_config(d):
    edit_json(os.path.join(d, "config.json"), lambda c: c.pop("quantization_config"))
    return first_shard(d, ".safetensors"), "has no quantization_config"


BREAKAGES = [
    ("llama-tied-bin", [], vocab_size_changed),
    ("llama-tied-bin", [], tokenizer_token_added),
    ("llama-tied-bin", [], index_missing_file),
    ("llama-tied-bin", [], index_tensor_renamed),
    ("llama-tied-bin", [], unreferenced_shard),
    ("llama-tied-bin", [], wrong_total_size),
    ("llama-untied-st", ["--safetensors"], truncated_safetensors),
    ("llama-tied-bin", [], corrupt_bin_zip),
    ("llama-untied-st", ["--safetensors"], tie_flag_true_untied),
    ("llama-tied-bin", ["--safetensors"], tie_flag_false_head_dropped),
    ("llama-tied-bin", [], eos_out_of_range),
    ("custom-code", [], role_token_not_in_vocab),
    ("llama-tied-bin", [], dangling_symlink),
    ("llama-tied-bin", [], escaping_symlink),
    ("llama-untied-st", ["--safetensors"], quant_config_without_quantized),
    ("llama-untied-st", QUANT, quantized_without_config),
]


@pytest.mark.parametrize("run,opts,edit", BREAKAGES, ids=[b[2].__name__ for b in BREAKAGES])
def test_catches(fzfs, materialized, tmp_path, run, opts, edit):
    d = copy_of(materialized, run, opts, tmp_path)
    assert verify(fzfs, d).returncode == 0, "the unedited copy must pass"
    file, words = edit(d)
    p = verify(fzfs, d)
    assert p.returncode == 1, f"{edit.__name__} not caught:\n{p.stdout}{p.stderr}"
    lines = p.stdout.splitlines()
    assert any(l.startswith(file + ": ") and words in l for l in lines), (
        f"no line '{file}: ...{words}...' in:\n{p.stdout}")
    if FZFS_ASAN_BIN:  # the same report from the sanitizer build, and no sanitizer report
        a = verify(Fzfs(FZFS_ASAN_BIN, fzfs.home, SANITIZER_ENV), d)
        assert (a.returncode, a.stdout) == (p.returncode, p.stdout), a.stderr[-3000:]


def test_unknown_names_and_head_bias(fzfs, tmp_path):
    """A custom model whose embedding and head have names no list knows
    (backbone.token_table, out + out.bias): verify finds them by their [vocab, hidden]
    shape, the head's bias with them, and reports each when vocab_size disagrees."""
    from test_embedding import make_custom_run
    src = str(tmp_path / "named")
    make_custom_run(src, "NamedLM", False, "st", seed=3)
    dest = str(tmp_path / "named-out")
    p = fzfs.run("materialize", src, dest, "--safetensors")
    assert p.returncode == 0, p.stderr
    d = str(tmp_path / "model")
    shutil.copytree(dest, d, symlinks=True)
    assert verify(fzfs, d).returncode == 0
    with open(os.path.join(d, "config.json")) as f:
        v = json.load(f)["vocab_size"]
    edit_json(os.path.join(d, "config.json"), lambda c: c.update(vocab_size=v + 1))
    out = verify(fzfs, d).stdout
    for name in ("backbone.token_table.weight", "out.weight", "out.bias"):
        assert f"'{name}' has {v} rows but config.json vocab_size is {v + 1}" in out, out


def test_json(fzfs, materialized, tmp_path):
    d = copy_of(materialized, "llama-tied-bin", [], tmp_path)
    ok = json.loads(verify(fzfs, d, "--json").stdout)
    assert ok == {"dir": d, "ok": True, "problems": []}
    eos_out_of_range(d)
    vocab_size_changed(d)
    p = verify(fzfs, d, "--json")
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["ok"] is False
    files = {x["file"] for x in out["problems"]}
    assert {"generation_config.json", first_shard(d, ".bin")} <= files, out
    assert len(out["problems"]) == len(verify(fzfs, d).stdout.splitlines())


def test_help_and_usage(fzfs, tmp_path):
    p = fzfs.run("verify", "--help")
    assert p.returncode == 0 and "usage: fzfs verify DIR" in p.stdout and "--json" in p.stdout
    assert fzfs.run("verify").returncode == 2
    p = fzfs.run("verify", str(tmp_path / "nope"))
    assert p.returncode == 1 and "nope" in p.stderr


SAVE_PRETRAINED = r"""
import sys, torch, transformers
from transformers import LlamaConfig, LlamaForCausalLM, AutoTokenizer
out, src, tied, safe = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
tok = AutoTokenizer.from_pretrained(src)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
torch.manual_seed(0)
m = LlamaForCausalLM(cfg)
m.generation_config.eos_token_id = tok.eos_token_id
m.save_pretrained(out, safe_serialization=safe, max_shard_size="20KB")
tok.save_pretrained(out)
"""


@pytest.mark.parametrize("tied,safe", [(1, 1), (0, 1), (1, 0), (0, 0)],
                         ids=["tied-st", "untied-st", "tied-bin", "untied-bin"])
def test_transformers_saved_models_pass(fzfs, runs, tmp_path, tied, safe):
    """Not ours: a model and tokenizer saved by transformers' save_pretrained (sharded)."""
    d = str(tmp_path / "hf")
    p = subprocess.run([sys.executable, "-c", SAVE_PRETRAINED, d, runs.src("flat-hf"),
                        str(tied), str(safe)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert any("index.json" in n for n in os.listdir(d)), "expected a sharded save"
    v = verify(fzfs, d)
    assert v.returncode == 0, v.stdout + v.stderr


def test_mounted_view_passes(fzfs, runs, mounter, tmp_path):
    mnt = str(tmp_path / "mnt")
    mounter.mount(runs.src("custom-code"), mnt, *QUANT)
    v = verify(fzfs, mnt)
    assert v.returncode == 0, v.stdout + v.stderr
    mounter.umount(mnt)


def hostile_eos(src):
    edit_json(os.path.join(src, "tokenizer_config.json"),
              lambda t: t.update(eos_token="<|not-in-vocab|>"))


def hostile_id(src):
    edit_json(os.path.join(src, "config.json"), lambda c: c.update(sep_token_id=100000))


@pytest.mark.parametrize("spoil", [hostile_eos, hostile_id], ids=lambda f: f.__name__)
def test_materialize_and_mount_never_publish_a_failing_model(fzfs, runs, mounter, tmp_path,
                                                              spoil):
    """A source that today yields a broken model: materialize refuses (no DEST, no temp
    sibling, a message saying why) and so does mount; or, if fzfs repairs the source, what
    it publishes passes verify."""
    src = str(tmp_path / "src")
    shutil.copytree(runs.src("llama-tied-bin"), src, symlinks=True)
    spoil(src)
    parent = tmp_path / "out"
    parent.mkdir()
    dest = str(parent / "dest")
    p = fzfs.run("materialize", src, dest)
    if p.returncode == 0:
        assert verify(fzfs, dest).returncode == 0
    else:
        assert p.returncode == 1, p.stderr
        assert "fails verification" in p.stderr and "nothing was written" in p.stderr, p.stderr
        assert any(l.startswith("ERROR: verify: ") for l in p.stderr.splitlines()), p.stderr
        assert os.listdir(parent) == [], f"left behind: {os.listdir(parent)}"
    mnt = str(tmp_path / "mnt")
    m = mounter.mount(src, mnt, check=False)
    if m.returncode == 0:
        assert is_mounted(mnt)
        assert verify(fzfs, mnt).returncode == 0
        mounter.umount(mnt)
    else:
        assert m.returncode == 1 and "nothing was mounted" in m.stderr, m.stderr
        assert not is_mounted(mnt)
    assert (p.returncode == 0) == (m.returncode == 0), "materialize and mount disagree"


def test_reads_no_tensor_data(fzfs, materialized, tmp_path):
    """Headers only: the bytes verify reads (rchar of its process, counted by the kernel
    into the waiting shell) stay far below the weight bytes of a model whose weights are
    padded to 64 MiB. The padding is a real tensor added to a real output."""
    d = copy_of(materialized, "llama-untied-st", ["--safetensors"], tmp_path)
    script = r"""
import json, os, sys, torch
from safetensors.torch import load_file, save_file
d = sys.argv[1]
idx_path = os.path.join(d, "model.safetensors.index.json")
idx = json.load(open(idx_path))
shard = sorted(set(idx["weight_map"].values()))[0]
p = os.path.realpath(os.path.join(d, shard))
sd = load_file(p)
sd["extra.padding"] = torch.zeros(16 << 20)
os.remove(p)
save_file(sd, p, metadata={"format": "pt"})
idx["weight_map"]["extra.padding"] = shard
idx["metadata"]["total_size"] += 64 << 20
json.dump(idx, open(os.path.realpath(idx_path), "w"), indent=4)
"""
    subprocess.run([sys.executable, "-c", script, d], check=True, timeout=300)
    p = subprocess.run(["sh", "-c", '"$0" verify "$1" >/dev/null; echo rc=$?; cat /proc/$$/io',
                        fzfs.binary, d], capture_output=True, text=True, env=fzfs.env, timeout=120)
    assert "rc=0" in p.stdout, p.stdout + p.stderr
    rchar = int(next(l.split()[1] for l in p.stdout.splitlines() if l.startswith("rchar:")))
    assert rchar < (8 << 20), f"verify read {rchar} bytes of a model with 64 MiB of weights"
