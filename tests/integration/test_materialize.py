"""fzfs materialize, option by option, checked with the real clients.

Each case is (id, run, options). For every case: the weight files open with torch
(weights_only, mmap) / safetensors and pass `unzip -t`; AutoModelForCausalLM loads DEST
with no missing/unexpected keys and gives the source model's logits (cast the same
way; added rows checked row by row); AutoTokenizer, chat template, GenerationConfig,
config.json and the DEST layout are what finalize.md / FORMATS.md say.
"""

import glob
import json
import os
import re
import subprocess
import zipfile

import pytest
import torch

import finalize_ref as ref
from conftest import CHATML_JINJA, CHATML_YAML

CHATML = ["--add-tokens", "{EX}/add_tokens/chatml.yaml", "-t", "{EX}/chat_templates/chatml.jinja"]

CASES = [
    ("tied-bin-default", "llama-tied-bin", []),
    ("tied-bin-safetensors", "llama-tied-bin", ["--safetensors"]),
    ("tied-bin-bf16", "llama-tied-bin", ["--dtype", "bfloat16"]),
    ("tied-bin-f32", "llama-tied-bin", ["--dtype", "float32"]),
    ("tied-bin-rootcopy", "llama-tied-bin", ["--root-copy"]),
    ("tied-bin-keepopt", "llama-tied-bin", ["--keep-optimizer"]),
    ("tied-bin-ckpt1000-f16", "llama-tied-bin",
     ["-c", "{SRC}/checkpoints/checkpoint-1000", "--dtype", "float16"]),
    ("tied-bin-chatml-precise", "llama-tied-bin", CHATML + ["--generation-config", "precise"]),
    ("untied-st-default", "llama-untied-st", []),
    ("untied-st-f32", "llama-untied-st", ["--dtype", "float32"]),
    ("untied-st-f16-st", "llama-untied-st", ["--dtype", "float16", "--safetensors"]),
    ("untied-st-skipdefault", "llama-untied-st", ["--skip-default-tokens"]),
    ("untied-st-chatml-precise", "llama-untied-st", CHATML + ["--generation-config", "precise"]),
    ("untied-st-rich-beam", "llama-untied-st",
     ["--add-tokens", "{YAML_RICH}", "--stop-tokens", "fzfsword", "--generation-config",
      "{PRESET_FILE}", "--safetensors"]),
    ("untied-st-ckpt4000-keepopt", "llama-untied-st",
     ["-c", "{SRC}/checkpoints/checkpoint-4000", "--keep-optimizer", "--skip-default-tokens"]),
    ("custom-default", "custom-code", []),
    ("custom-st-skipdefault", "custom-code", ["--safetensors", "--skip-default-tokens"]),
    ("custom-chatml-beam-st-bf16", "custom-code",
     CHATML + ["--generation-config", "{PRESET_FILE}", "--safetensors", "--dtype", "bfloat16"]),
    ("custom-keepopt-ckpt100", "custom-code",
     ["--keep-optimizer", "-c", "{SRC}/checkpoints/checkpoint-100"]),
    ("custom-rootcopy-f16", "custom-code", ["--root-copy", "--dtype", "float16"]),
    ("flat-default", "flat-hf", []),
    ("flat-st-rootcopy", "flat-hf", ["--safetensors", "--root-copy"]),
    ("flat-chatml-none", "flat-hf", CHATML + ["--generation-config", "none"]),
    ("views-default", "bin-views", []),
    ("views-st", "bin-views", ["--safetensors"]),
    ("views-bf16-rootcopy-device", "bin-views",
     ["--dtype", "bfloat16", "--root-copy", "--device", "cpu", "--log-level", "DEBUG"]),
    ("nopad-default", "nopad-tied-bin", []),
    ("nopad-chatml-nostop", "nopad-tied-bin",
     ["--add-tokens", "{EX}/add_tokens/chatml.yaml", "--no-auto-stop-tokens",
      "--stop-tokens", "<|im_start|>, <|EOS|>", "--generation-config", "precise"]),
    ("nopad-skip-homepreset", "nopad-tied-bin", ["--skip-default-tokens", "--generation-config", "homepreset"]),
    ("nopad-fgpreset-st", "nopad-tied-bin", ["--generation-config", "fgpreset", "--safetensors"]),
    ("tiny-default", "tiny-run", []),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def res(request, materialized):
    _, run, opts = request.param
    for p in opts:
        if p.startswith("{EX}/"):
            path = p.replace("{EX}", ref.REPO + "/examples")
            assert os.path.isfile(path), f"bundled example missing: {path}"
    r = materialized(run, opts)
    r.check_ok()
    return r


# --------------------------------------------------------------------------- helpers

def weights_dir(r):
    return r.dest if r.exp["opts"]["root_copy"] else os.path.join(r.dest, r.exp["dest_ckpt"])


def expected_weight_names(r):
    n = len(r.exp["src_files"])
    if r.exp["format"] == "safetensors":
        return [f"model-{i:05}-of-{n:05}.safetensors" for i in range(1, n + 1)], "model.safetensors.index.json"
    return [f"pytorch_model-{i:05}-of-{n:05}.bin" for i in range(1, n + 1)], "pytorch_model.bin.index.json"


def load_dest_file(path, **kw):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, weights_only=True, **kw)


def dest_state(r):
    shards, _ = expected_weight_names(r)
    sd = {}
    for s in shards:
        sd.update(load_dest_file(os.path.join(weights_dir(r), s)))
    return sd


def src_model(r):
    key = "_src_model"
    if key not in r.exp:
        r.exp[key] = ref.source_model(r.exp["src"], r.exp["info"], r.exp["ckpt_rel"])
    return r.exp[key]


def eps(dtype):
    return torch.finfo(dtype).eps


def whole_source(r, path):
    """The source weight file whose bytes `path` is exactly, or None."""
    with open(path, "rb") as f:
        data = f.read()
    for name in r.exp["src_files"]:
        src = os.path.join(r.exp["ckpt_dir"], name)
        if os.path.getsize(src) == len(data):
            with open(src, "rb") as f:
                if f.read() == data:
                    return src
    return None


def st_metadata(path):
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        return f.metadata()


# --------------------------------------------------------------------------- weights on disk

def test_weight_files_open_with_torch_and_safetensors(res):
    r = res
    wdir = weights_dir(r)
    shards, index = expected_weight_names(r)
    present = sorted(f for f in os.listdir(wdir)
                     if re.match(r"(pytorch_model|model)[-.].*(bin|safetensors)(\.index\.json)?$", f))
    assert present == sorted(shards + [index]), f"weight files in {wdir}: {present}"
    idx = ref.read_json(os.path.join(wdir, index))
    assert isinstance(idx["metadata"]["total_size"], int) and idx["metadata"]["total_size"] > 0
    dtype = ref.DTYPES[r.exp["dtype"]]
    seen = {}
    for s in shards:
        path = os.path.join(wdir, s)
        if r.exp["format"] == "bin":
            u = subprocess.run(["unzip", "-t", path], capture_output=True, text=True)
            assert u.returncode == 0, f"unzip -t {s}:\n{u.stdout}{u.stderr}"
            with zipfile.ZipFile(path) as z:
                assert z.testzip() is None
                names = z.namelist()
                stem = s[:-len(".bin")]
                assert all(n.startswith(stem + "/") for n in names), names
                assert stem + "/data.pkl" in names and stem + "/byteorder" in names
            a = torch.load(path, weights_only=True)
            b = torch.load(path, weights_only=True, mmap=True)
            assert list(a) == list(b)
            for k in a:
                assert torch.equal(a[k], b[k]), k
        else:
            from safetensors import safe_open
            # a shard written by fzfs says format pt; one passed through whole is the
            # source file itself, metadata included (none, or format pt)
            whole = whole_source(r, path)
            with safe_open(path, framework="pt") as f:
                want = {"format": "pt"} if whole is None else st_metadata(whole)
                assert f.metadata() == want, (f.metadata(), whole)
                a = {k: f.get_tensor(k) for k in f.keys()}
        for k, v in a.items():
            assert k not in seen, f"{k} in both {seen.get(k)} and {s}"
            seen[k] = s
            if v.is_floating_point():
                assert v.dtype == dtype, f"{s}:{k} is {v.dtype}, expected {dtype}"
    assert idx["weight_map"] == seen, "index weight_map does not match the shards' contents"


def test_shards_mirror_source_files(res):
    r = res
    shards, _ = expected_weight_names(r)
    src_map = {}
    for i, f in enumerate(r.exp["src_files"]):
        for k in ref.load_weight_file(os.path.join(r.exp["ckpt_dir"], f)):
            src_map[k] = i
    idx_name = expected_weight_names(r)[1]
    wm = ref.read_json(os.path.join(weights_dir(r), idx_name))["weight_map"]
    for k, f in wm.items():
        assert k in src_map, f"DEST has a tensor the source does not: {k}"
        assert f == shards[src_map[k]], f"{k}: in {f}, source had it in file #{src_map[k] + 1}"
    info = r.exp["info"]
    missing = set(src_map) - set(wm)
    if info["tied"] and r.exp["format"] == "safetensors":
        assert missing == ({info["head"]} & set(src_map)), f"missing from DEST: {missing}"
    else:
        assert not missing, f"missing from DEST: {missing}"


def test_tied_weights_stored_per_format(res):
    r = res
    info = r.exp["info"]
    wm = ref.read_json(os.path.join(weights_dir(r), expected_weight_names(r)[1]))
    if not info["tied"]:
        return
    emb, head = info["embedding"], info["head"]
    if r.exp["format"] == "safetensors":
        assert emb in wm["weight_map"] and head not in wm["weight_map"], \
            "tied safetensors: the matrix must be written once, under the input-embedding name"
    else:
        groups = wm["metadata"].get("param_sharing")
        if head in wm["weight_map"]:
            assert groups and any(set(g) == {emb, head} for g in groups), \
                f".bin index of a tied model needs param_sharing [[{head}, {emb}]], got {groups}"
            if wm["weight_map"][head] == wm["weight_map"][emb]:
                sd = torch.load(os.path.join(weights_dir(r), wm["weight_map"][emb]), weights_only=True)
                assert sd[head].untyped_storage().data_ptr() == sd[emb].untyped_storage().data_ptr(), \
                    "tied names in one .bin must share one storage record"


# --------------------------------------------------------------------------- the model

def test_model_loads_with_source_logits(res):
    from transformers import AutoModelForCausalLM
    r = res
    info, plan = r.exp["info"], r.exp["plan"]
    dtype = ref.DTYPES[r.exp["dtype"]]
    kw = {"trust_remote_code": True} if info["trust_remote_code"] else {"attn_implementation": "eager"}
    model, li = AutoModelForCausalLM.from_pretrained(r.dest, dtype=dtype, output_loading_info=True, **kw)
    model.eval()
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not li.get(k), f"{k}: {li.get(k)}"
    assert model.config.vocab_size == plan["new_len"]
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    assert emb.shape[0] == plan["new_len"] and head.shape[0] == plan["new_len"]
    if info["tied"]:
        assert emb.data_ptr() == head.data_ptr(), "tied model came back untied"
        assert model.config.tie_word_embeddings is True
    else:
        assert model.config.tie_word_embeddings is False

    expected = _cast_copy(src_model(r), dtype, info)
    old = plan["old_len"]
    if plan["new_len"] != old:
        _check_new_rows(r, model, expected, dtype)
        expected.resize_token_embeddings(plan["new_len"], mean_resizing=False)
        with torch.no_grad():
            e_emb = expected.get_input_embeddings().weight
            e_emb[old:] = emb[old:]
            e_head = expected.get_output_embeddings()
            e_head.weight[old:] = head[old:]
            if getattr(e_head, "bias", None) is not None:
                e_head.bias[old:] = model.get_output_embeddings().bias[old:]

    got_sd, exp_sd = model.state_dict(), expected.state_dict()
    assert set(got_sd) == set(exp_sd)
    for k in exp_sd:
        assert got_sd[k].dtype == exp_sd[k].dtype, k
        assert torch.equal(got_sd[k], exp_sd[k]), f"tensor {k} differs from the source (cast to {dtype})"

    ids = list(range(3, old, 7))[:40]
    new_ids = [i for i, _, _ in plan["new"]]
    batch = torch.tensor([ids, list(reversed(ids))])
    with torch.no_grad():
        got = model(batch).logits
        want = expected(batch).logits
        assert torch.equal(got, want), "logits differ from the source model's"
        if new_ids:
            b2 = torch.tensor([ids[:10] + new_ids + ids[10:20]])
            assert torch.equal(model(b2).logits, expected(b2).logits), "logits with new tokens differ"


def _cast_copy(model, dtype, info):
    """A fresh model built like from_pretrained builds it (buffers such as rotary inv_freq
    stay float32), holding the source weights cast to dtype."""
    m = ref.build_model(model.config, info, dtype)
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    if info["tied"]:
        m.tie_weights()
    return m


def _check_new_rows(r, model, expected_src, dtype):
    """New embedding/head rows: zero rows are zero, mean rows the column mean of the old
    rows, copy rows equal to their source row (each matrix from its own rows)."""
    plan, info = r.exp["plan"], r.exp["info"]
    old = plan["old_len"]
    mats = [("embedding", model.get_input_embeddings().weight,
             expected_src.get_input_embeddings().weight)]
    if not info["tied"]:
        mats.append(("head", model.get_output_embeddings().weight,
                     expected_src.get_output_embeddings().weight))
    for what, got, src in mats:
        rows = ref.expected_rows(src[:old].detach(), plan, "matrix")
        atol = max(4 * eps(dtype) * src[:old].double().abs().mean().item() / old ** 0.5, 1e-6)
        for i, (want, init) in rows.items():
            g = got[i].detach().double()
            if init == "mean":
                assert torch.allclose(g, want, rtol=2 * eps(dtype), atol=atol), \
                    f"{what} row {i} ({init}): max err {(g - want).abs().max().item():.3g}"
            else:
                assert torch.equal(g, want.to(dtype).double()), f"{what} row {i} ({init}) wrong"
    head_mod = model.get_output_embeddings()
    if getattr(head_mod, "bias", None) is not None:
        src_bias = expected_src.get_output_embeddings().bias[:old].detach()
        mean = src_bias.double().mean()
        for i, (want, init) in ref.expected_rows(src_bias[:, None], plan, "bias").items():
            g = head_mod.bias[i].detach().double()
            ok_mean = torch.allclose(g, mean, rtol=2 * eps(dtype), atol=1e-6)
            # FORMATS.md: "head bias too". transformers' resize gives every new bias entry
            # the mean of the old bias; an init-specific value (0 / copied entry) is also
            # accepted for zero and copy rows.
            ok_init = init != "mean" and torch.equal(g, want[0].to(dtype).double())
            assert ok_mean or ok_init, f"lm_head.bias[{i}] ({init}) = {g.item()}, mean {mean.item()}"


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_loads_and_new_tokens_round_trip(res):
    from transformers import AutoTokenizer
    r = res
    plan = r.exp["plan"]
    tok = AutoTokenizer.from_pretrained(r.dest)
    assert len(tok) == plan["new_len"]
    for role in ref.ROLES:
        assert getattr(tok, role) == plan["roles"][role], role
    for i, t, special in plan["new"]:
        assert tok.convert_tokens_to_ids(t) == i, t
        assert tok.encode(t, add_special_tokens=False) == [i], t
        assert tok.decode([i]) == t
    exp_tok = ref.expected_tokenizer(r.exp["src"], plan, r.exp["template"])
    assert sorted(tok.all_special_tokens) == sorted(exp_tok.all_special_tokens)
    assert sorted(tok.all_special_ids) == sorted(exp_tok.all_special_ids)
    tc = ref.read_json(os.path.join(r.dest, "tokenizer_config.json"))
    for role in ref.ROLES:
        v = tc.get(role)
        v = v.get("content") if isinstance(v, dict) else v
        assert v == plan["roles"][role], f"tokenizer_config.json {role}: {v!r}"
    stm = os.path.join(r.dest, "special_tokens_map.json")
    if os.path.exists(stm):
        m = ref.read_json(stm)
        for role in ref.ROLES:
            v = m.get(role)
            v = v.get("content") if isinstance(v, dict) else v
            assert v == plan["roles"][role], f"special_tokens_map.json {role}: {v!r}"
    text = "Hello, world! " + " ".join(t for _, t, _ in plan["new"]) + " the model learns weights."
    assert tok.encode(text) == exp_tok.encode(text)
    assert tok.decode(tok.encode(text)) == exp_tok.decode(exp_tok.encode(text))
    # tokenizer.json added_tokens entries, FORMATS.md section 6
    tj = ref.read_json(os.path.join(r.dest, "tokenizer.json"))
    added = {a["id"]: a for a in tj["added_tokens"]}
    for i, t, special in plan["new"]:
        a = added[i]
        assert a == {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": not special, "special": special}, a
    src_tj = ref.read_json(os.path.join(r.exp["src"], "tokenizer.json"))
    for k in src_tj:
        if k != "added_tokens":
            assert tj[k] == src_tj[k], f"tokenizer.json[{k!r}] changed"
    assert tj["added_tokens"][:len(src_tj["added_tokens"])] == src_tj["added_tokens"]


def test_chat_template(res):
    from transformers import AutoTokenizer
    r = res
    template = r.exp["template"]
    tok = AutoTokenizer.from_pretrained(r.dest)
    jinja = os.path.join(r.dest, "chat_template.jinja")
    if template is None:
        assert not tok.chat_template, "no template given and none in the source"
        assert not os.path.exists(jinja)
        return
    with open(jinja) as f:
        assert f.read() == template, "chat_template.jinja is not the template file's text"
    assert tok.chat_template == template
    tc = ref.read_json(os.path.join(r.dest, "tokenizer_config.json"))
    if "chat_template" in tc:
        assert tc["chat_template"] == template
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is fzfs?"},
            {"role": "assistant", "content": "A view."},
            {"role": "user", "content": "Thanks"}]
    exp_tok = ref.expected_tokenizer(r.exp["src"], r.exp["plan"], template)
    got = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    want = exp_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert got == want
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    for i, t, special in r.exp["plan"]["new"]:
        if special and t in got:
            assert i in ids, f"{t} (id {i}) not tokenized as one token in the rendered chat"


# --------------------------------------------------------------------------- generation config

def test_generation_config(res, tmp_path):
    from transformers import GenerationConfig
    r = res
    want = r.exp["generation_config"]
    path = os.path.join(r.dest, "generation_config.json")
    if want is None:
        assert not os.path.lexists(path), "--generation-config none must not write the file"
        return
    got = ref.read_json(path)
    assert got == want, f"generation_config.json:\n got  {got}\n want {want}"
    for k, v in want.items():  # types too (1.0 stays a float)
        assert type(got[k]) is type(v), k
    gc = GenerationConfig.from_pretrained(r.dest)
    assert gc.eos_token_id == want["eos_token_id"]
    gc.save_pretrained(str(tmp_path))
    again = GenerationConfig.from_pretrained(str(tmp_path))
    assert again.eos_token_id == want["eos_token_id"]


# --------------------------------------------------------------------------- config.json

def _same_json(a, b, path="$"):
    assert type(a) is type(b), f"{path}: {a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _same_json(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same_json(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_config_json(res):
    from transformers import AutoConfig
    r = res
    plan, info = r.exp["plan"], r.exp["info"]
    src = dict(r.exp["src_cfg"])
    with open(os.path.join(r.dest, "config.json")) as f:
        text = f.read()
    got = json.loads(text)
    assert text.endswith("}\n")
    want = dict(src)
    want["vocab_size"] = plan["new_len"]
    bos, pad = plan["roles"]["bos_token"], plan["roles"]["pad_token"]
    if bos is not None:
        want["bos_token_id"] = plan["vocab"][bos]
    if pad is not None:
        want["pad_token_id"] = plan["vocab"][pad]
    want["tie_word_embeddings"] = info["tied"]
    if r.exp["opts"]["dtype"]:
        want["dtype"] = r.exp["opts"]["dtype"]
        want["torch_dtype"] = r.exp["opts"]["dtype"]
    _same_json(got, want)
    assert got["eos_token_id"] == src["eos_token_id"], "config.json eos_token_id must stay as in the source"
    AutoConfig.from_pretrained(r.dest, trust_remote_code=info["trust_remote_code"])


# --------------------------------------------------------------------------- layout

def test_layout(res):
    r = res
    o, info = r.exp["opts"], r.exp["info"]
    dest, src = r.dest, r.exp["src"]
    parent = os.path.dirname(dest)
    assert os.listdir(parent) == [os.path.basename(dest)], f"leftovers next to DEST: {os.listdir(parent)}"
    shards, index = expected_weight_names(r)
    root = set(os.listdir(dest))
    py = sorted(os.path.basename(p) for p in glob.glob(os.path.join(src, "*.py")))
    required = {"config.json", "tokenizer.json", "tokenizer_config.json"} | set(py)
    required |= set(shards) | {index}
    if os.path.exists(os.path.join(src, ".package_files_copied")):
        required.add(".package_files_copied")
    if r.exp["generation_config"] is not None:
        required.add("generation_config.json")
    if r.exp["template"] is not None:
        required.add("chat_template.jinja")
    if not o["root_copy"]:
        required.add("checkpoints")
    allowed = required | {"special_tokens_map.json"}
    assert required <= root, f"missing at DEST root: {sorted(required - root)}"
    assert root <= allowed, f"unexpected at DEST root: {sorted(root - allowed)}"
    for name in py + [".package_files_copied"]:
        if name in required:
            with open(os.path.join(src, name), "rb") as a, open(os.path.join(dest, name), "rb") as b:
                assert a.read() == b.read(), f"{name} not copied verbatim"
            assert not os.path.islink(os.path.join(dest, name))
    ck = r.exp["dest_ckpt"]
    if o["root_copy"]:
        for name in shards + [index]:
            p = os.path.join(dest, name)
            assert os.path.isfile(p) and not os.path.islink(p), f"--root-copy: {name} must be a real file"
        assert not os.path.exists(os.path.join(dest, "checkpoints"))
        return
    assert os.listdir(os.path.join(dest, "checkpoints")) == [os.path.basename(ck)]
    for name in shards + [index]:
        p = os.path.join(dest, name)
        assert os.path.islink(p), f"{name} at root must be a symlink"
        target = os.readlink(p)
        assert target == f"{ck}/{name}", f"{name} -> {target}, expected relative {ck}/{name}"
        assert os.path.isfile(p)
    links = [n for n in root if os.path.islink(os.path.join(dest, n))]
    assert sorted(links) == sorted(shards + [index]), f"symlinks at root: {links}"
    cdir = os.path.join(dest, ck)
    kept = set(os.listdir(cdir))
    want = set(shards) | {index, "checkpoint_manifest.json"}
    if o["keep_opt"]:
        want.add("optimizer_state.pt")
        with open(os.path.join(r.exp["ckpt_dir"], "optimizer_state.pt"), "rb") as a, \
                open(os.path.join(cdir, "optimizer_state.pt"), "rb") as b:
            assert a.read() == b.read(), "optimizer_state.pt not carried byte for byte"
    assert kept == want, f"{ck} holds {sorted(kept)}, expected {sorted(want)}"
    for n in kept:
        assert not os.path.islink(os.path.join(cdir, n))
    _check_manifest(r, cdir, shards, index)


def _check_manifest(r, cdir, shards, index):
    o = r.exp["opts"]
    with open(os.path.join(cdir, "checkpoint_manifest.json")) as f:
        m = json.load(f)
    assert list(m) == ["checkpoint_path", "world_size", "timestamp", "components",
                       "training_args_hash", "forgather_version", "pytorch_version", "metadata"]
    assert m["checkpoint_path"] == r.exp["dest_ckpt"], m["checkpoint_path"]
    assert m["world_size"] == 1
    srcm = r.exp["src_manifest"]
    if srcm is not None:
        assert m["timestamp"] == srcm["timestamp"], "timestamp must be carried from the source manifest"
        assert m["pytorch_version"] == srcm["pytorch_version"]
    else:
        # No source manifest (flat source): the newest mtime of the weight files read, in
        # UTC as datetime.fromtimestamp(t, utc).isoformat() writes it (Forgather parses it
        # with datetime.fromisoformat).
        import datetime
        ns = max(os.stat(os.path.join(r.exp["ckpt_dir"], n)).st_mtime_ns
                 for n in r.exp["src_files"])
        want = datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc)
        want = want.replace(microsecond=(ns // 1000) % 10**6).isoformat()
        assert m["timestamp"] == want, (m["timestamp"], want)
    assert m["training_args_hash"] is None and m["forgather_version"] is None
    assert m["metadata"] == {"finalized": True}
    want_keys = ["model"] + (["optimizer"] if o["keep_opt"] else [])
    assert list(m["components"]) == want_keys

    def comp(key, size):
        return {"key": key, "sharing_pattern": "replicated", "ranks": [0], "replicated_across": [0],
                "group_name": None, "size_bytes": size, "checksum": None, "metadata": {}}

    model_size = sum(os.path.getsize(os.path.join(cdir, n)) for n in shards + [index])
    assert m["components"]["model"] == comp("model", model_size)
    assert list(m["components"]["model"]) == list(comp("model", 0))
    if o["keep_opt"]:
        assert m["components"]["optimizer"] == comp(
            "optimizer", os.path.getsize(os.path.join(cdir, "optimizer_state.pt")))
