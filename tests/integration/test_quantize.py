"""--quantize: compressed-tensors output checked with real clients.

A Llama whose Linear input sizes are multiples of 128 (so every recipe's
groups divide them) is random-initialised here, saved the way a run leaves
it, and finalized with each recipe. The stored tensors are compared bit for
bit with an independent torch implementation of the formulas (quant_ref.py),
transformers + compressed-tensors must load the result with no missing or
unexpected keys and dequantize to exactly quant_ref.dequantize, each weight
must be within half a quantization step of the original, and the logits must
stay close to the unquantized model's.
"""
import json
import os
import subprocess

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import quant_ref
from conftest import REPO

RECIPES = list(quant_ref.RECIPES)
# Max abs logit error allowed against the unquantized model (logits ~ O(1)).
LOGIT_TOL = {"int4-weight-only": 0.5, "int8-dynamic-act-int4-weight": 0.5, "int8-weight-only": 0.05,
             "int8-dynamic-act-int8-weight": 0.08, "float8-dynamic-act-float8-weight": 0.2}
TOKENS = torch.tensor([[1, 5, 9, 20, 33, 47, 60, 2]])


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog %d times" % i for i in range(200)]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300,
                                                      special_tokens=["<s>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def _save_run(path, hidden, inter, dtype, tied=False):
    torch.manual_seed(hidden + inter)
    tok = _tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1)
    model = LlamaForCausalLM(cfg).to(dtype)
    # a training run: config + tokenizer at the root, weights in a checkpoint
    cfg.save_pretrained(path)
    tok.save_pretrained(path)
    ck = os.path.join(path, "checkpoints", "checkpoint-40")
    model.save_pretrained(ck)
    for f in os.listdir(ck):
        if f.endswith(".json"):
            os.remove(os.path.join(ck, f))
    return path


@pytest.fixture(scope="module")
def qruns(session_tmp):
    base = os.path.join(session_tmp, "qruns")
    return {"bf16": _save_run(os.path.join(base, "bf16"), 128, 256, torch.bfloat16),
            "f32": _save_run(os.path.join(base, "f32"), 128, 384, torch.float32),
            "ragged": _save_run(os.path.join(base, "ragged"), 64, 160, torch.float32, tied=True)}


def _source_state(src):
    sd = {}
    ck = os.path.join(src, "checkpoints", "checkpoint-40", "model.safetensors")
    with safe_open(ck, "pt") as f:
        for k in f.keys():
            sd[k] = f.get_tensor(k)
    return sd


def _dest_state(dest):
    sd = {}
    for root, _, files in os.walk(dest):
        for name in files:
            if name.endswith(".safetensors"):
                with safe_open(os.path.join(root, name), "pt") as f:
                    for k in f.keys():
                        sd[k] = f.get_tensor(k)
    return sd


def _materialize(fzfs, session_tmp, src, name, *opts):
    dest = os.path.join(session_tmp, "qdest", name)
    if not os.path.isdir(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        p = fzfs.run("materialize", src, dest, "--skip-default-tokens", *opts)
        assert p.returncode == 0, p.stderr
    return dest


def _load(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[k], f"{k}: {info[k]}"
    return model.eval()


def _linear_modules(sd):
    return sorted(k[:-len(".weight")] for k, v in sd.items()
                  if k.endswith(".weight") and v.ndim == 2 and "embed" not in k
                  and not k.startswith("lm_head"))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("run,dtype", [("bf16", None), ("f32", "bfloat16"), ("f32", None)])
def test_recipe_loads_and_matches_reference(fzfs, session_tmp, qruns, recipe, run, dtype):
    src = qruns[run]
    opts = ["--quantize", recipe] + (["--dtype", dtype] if dtype else [])
    dest = _materialize(fzfs, session_tmp, src, f"{run}-{dtype}-{recipe}", *opts)
    model_dtype = getattr(torch, dtype) if dtype else _source_state(src)["model.norm.weight"].dtype
    ssd, dsd = _source_state(src), _dest_state(dest)
    mods = _linear_modules(ssd)
    assert mods, "fixture has no Linear weights"

    # config: exactly the reference block, accepted by compressed-tensors' own parser
    cfg = json.load(open(os.path.join(dest, "config.json")))
    qc = cfg["quantization_config"]
    assert qc == quant_ref.quantization_config(recipe, ["lm_head"])
    from compressed_tensors.quantization import QuantizationConfig
    parsed = QuantizationConfig.model_validate(qc)
    assert parsed.quantization_status == "compressed"

    # stored tensors: bit-exact with the independent torch implementation
    for m in mods:
        w = ssd[m + ".weight"].to(model_dtype)
        exp = quant_ref.quantize(w, recipe, model_dtype)
        for part, t in exp.items():
            got = dsd[f"{m}.{part}"]
            assert got.dtype == t.dtype and got.shape == t.shape, (m, part, got.dtype, t.dtype)
            assert torch.equal(got.view(torch.uint8) if got.dtype == torch.float8_e4m3fn else got,
                               t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t), (m, part)
        assert m + ".weight" not in dsd or exp.get("weight") is not None
    # everything else unchanged (cast only)
    for k, v in ssd.items():
        if k[:-len(".weight")] not in mods:
            assert torch.equal(dsd[k], v.to(model_dtype)), k

    # transformers + compressed-tensors: dequantized weights equal the reference's,
    # within half a step of the original
    model = _load(dest)
    with torch.no_grad():
        quantized_logits = model(TOKENS).logits.float()  # pack-quantized decompresses here
    params = dict(model.named_parameters())
    for m in mods:
        parts = quant_ref.quantize(ssd[m + ".weight"][:1].to(model_dtype), recipe, model_dtype)
        stored = {p: dsd[f"{m}.{p}"] for p in parts}
        dq = quant_ref.dequantize(stored, recipe, model_dtype)
        got = params[m + ".weight"].detach()
        if got.dtype.is_floating_point and got.dtype != torch.float8_e4m3fn:
            # decompressed at load: must be exactly the reference dequantization
            assert torch.equal(got, dq.to(got.dtype)), m
        else:
            # kept compressed (int-/float-quantized): the codes themselves
            codes = quant_ref.codes(stored, recipe)
            assert torch.equal(got.view(torch.uint8) if got.dtype == torch.float8_e4m3fn else got.to(torch.int32),
                               codes.view(torch.uint8) if codes.dtype == torch.float8_e4m3fn else codes.to(torch.int32)), m
        w = ssd[m + ".weight"].to(model_dtype).float()
        scale = stored["weight_scale"].float()
        g = quant_ref.scheme(recipe)["group"] or w.shape[1]
        step = scale.repeat_interleave(g, dim=1)[:, : w.shape[1]]
        err = (dq.float() - w).abs()
        if quant_ref.scheme(recipe)["type"] == "float":
            # fp8 e4m3: 3 mantissa bits, relative error <= 2^-4 of the scaled value, plus rounding
            bound = (w.abs() * 2 ** -4 + step * 2 ** -9) * 1.01 + 1e-6
        else:
            bound = step * 0.5 * 1.01 + w.abs() * 2 ** -7 + 1e-6
        assert bool((err <= bound).all()), (m, float((err - bound).max()))

    # logits close to the unquantized model's (same dtype)
    ref = _load(_materialize(fzfs, session_tmp, src, f"{run}-{dtype}-plain",
                             *(["--dtype", dtype] if dtype else []), "--safetensors"))
    with torch.no_grad():
        a = ref(TOKENS).logits.float()
    b = quantized_logits
    err = (a - b).abs().max().item()
    print(f"{recipe} {run} dtype={dtype}: max abs logit error {err:.4f}")
    assert err < LOGIT_TOL[recipe], err


def test_ragged_groups_are_left_unquantized(fzfs, session_tmp, qruns):
    """hidden 64 < group 128: compressed-tensors cannot load such a grouped weight,
    so those Linears stay plain and are listed in `ignore`; the model still runs."""
    src = qruns["ragged"]
    p = fzfs.run("plan", src, "--quantize", "int4-weight-only", "--json")
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    ignore = plan["quantize"]["ignore"]
    assert "lm_head" in ignore
    assert "model.layers.0.self_attn.q_proj" in ignore         # in = 64
    assert "model.layers.0.mlp.down_proj" in ignore            # in = 160
    dest = _materialize(fzfs, session_tmp, src, "ragged-int4", "--quantize", "int4-weight-only")
    dsd = _dest_state(dest)
    assert "model.layers.0.self_attn.q_proj.weight" in dsd
    model = _load(dest)
    with torch.no_grad():
        assert torch.isfinite(model(TOKENS).logits).all()
    # int8 per channel has no groups: everything but the head quantized, tied head not stored
    dest = _materialize(fzfs, session_tmp, src, "ragged-int8", "--quantize", "int8-weight-only")
    dsd = _dest_state(dest)
    assert "model.layers.0.self_attn.q_proj.weight_packed" in dsd
    assert "lm_head.weight" not in dsd
    _load(dest)


def test_quantize_ignore_regex(fzfs, session_tmp, qruns):
    src = qruns["bf16"]
    dest = _materialize(fzfs, session_tmp, src, "ignore-mlp", "--quantize",
                        "int8-dynamic-act-int8-weight", "--quantize-ignore", r"\.mlp\.")
    dsd = _dest_state(dest)
    cfg = json.load(open(os.path.join(dest, "config.json")))
    ign = cfg["quantization_config"]["ignore"]
    assert "model.layers.1.mlp.up_proj" in ign
    assert dsd["model.layers.1.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert dsd["model.layers.1.self_attn.q_proj.weight"].dtype == torch.int8
    _load(dest)


def test_quantize_with_added_tokens_and_layouts(fzfs, session_tmp, qruns):
    src = qruns["bf16"]
    yaml = os.path.join(REPO, "examples", "add_tokens", "chatml.yaml")
    for layout in ([], ["--root-copy"]):
        dest = os.path.join(session_tmp, "qdest", "chatml" + "".join(layout))
        p = fzfs.run("materialize", src, dest, "--quantize", "float8-dynamic-act-float8-weight",
                     "--add-tokens", yaml, *layout)
        assert p.returncode == 0, p.stderr
        assert "safetensors" in p.stderr  # the implied --safetensors is said once
        model = _load(dest)
        base = len(PreTrainedTokenizerFast.from_pretrained(src))
        assert model.get_input_embeddings().weight.shape[0] == base + 3  # 3 ChatML tokens
        if not layout:
            assert os.path.islink(os.path.join(dest, "model.safetensors.index.json"))
            assert os.path.isdir(os.path.join(dest, "checkpoints", "checkpoint-40"))
        else:
            assert not os.path.exists(os.path.join(dest, "checkpoints"))


def test_unknown_recipe_is_a_usage_error(fzfs, session_tmp, qruns):
    dest = os.path.join(session_tmp, "qdest", "nope")
    p = fzfs.run("materialize", qruns["bf16"], dest, "--quantize", "int3-magic")
    assert p.returncode == 2, p.stderr
    for r in RECIPES:
        assert r in p.stderr
    assert not os.path.exists(dest)


LOGITS_FROM = """
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    out = {}
    for path in sys.argv[1:]:
        m = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            out[path] = m(torch.tensor([[1, 5, 9, 20, 33, 47, 60, 2]])).logits.float().flatten().tolist()
    print(json.dumps(out))
"""


@pytest.mark.parametrize("recipe,dtype", [("int4-weight-only", None),
                                          ("float8-dynamic-act-float8-weight", "bfloat16"),
                                          ("int8-dynamic-act-int4-weight", None),
                                          ("int8-weight-only", "float16"),
                                          ("int8-dynamic-act-int8-weight", "bfloat16")])
def test_quantized_mount_equals_materialized(fzfs, session_tmp, qruns, tmp_path, recipe, dtype):
    """The mount computes quantized chunks lazily (through a cold, then warm cache) and
    serves exactly the materialized bytes; transformers loads the same model from both."""
    from test_mount import Mounter, child, diff_trees
    src = qruns["f32"]
    opts = ["--quantize", recipe] + (["--dtype", dtype] if dtype else [])
    dest = _materialize(fzfs, session_tmp, src, f"mount-{recipe}-{dtype}", *opts)
    m = Mounter(fzfs, str(tmp_path))
    cache = str(tmp_path / "cache")
    try:
        for round_ in ("cold", "warm"):
            mnt = str(tmp_path / f"mnt-{round_}")
            m.mount(src, mnt, "--skip-default-tokens", *opts, cache=cache)
            # sizes are exact before anything is computed
            for root, _, files in os.walk(dest):
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), dest)
                    assert os.lstat(os.path.join(mnt, rel)).st_size == os.lstat(os.path.join(root, f)).st_size, rel
            diff_trees(mnt, dest)
            logits = child(LOGITS_FROM, mnt, dest, timeout=300)
            assert logits[mnt] == logits[dest]
            m.umount(mnt)
        stats = fzfs.run("cache", "stats", "--cache-dir", cache)
        assert stats.returncode == 0, stats.stderr
    finally:
        m.cleanup()


def test_custom_code_model_quantizes_and_loads(fzfs, runs, session_tmp):
    """A remote-code model with Forgather's parameter names (head with a bias,
    tied embedding): per-channel recipes quantize its Linears and it loads."""
    src = runs.src("custom-code")
    plain = os.path.join(session_tmp, "qdest", "custom-plain")
    quant = os.path.join(session_tmp, "qdest", "custom-w8a8")
    os.makedirs(os.path.dirname(plain), exist_ok=True)
    for dest, opts in ((plain, ["--safetensors"]), (quant, ["--quantize", "int8-dynamic-act-int8-weight"])):
        if not os.path.isdir(dest):
            p = fzfs.run("materialize", src, dest, *opts)
            assert p.returncode == 0, p.stderr
    dsd = _dest_state(quant)
    assert any(k.endswith(".weight_scale") for k in dsd)
    assert "causal_lm.input_encoder.embedding.weight" in dsd
    cfg = json.load(open(os.path.join(quant, "config.json")))
    assert cfg["quantization_config"]["ignore"] == ["lm_head"]
    out = {}
    for path in (plain, quant):
        model, info = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True,
                                                           output_loading_info=True)
        for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            assert not info[k], (path, k, info[k])
        with torch.no_grad():
            out[path] = model.eval()(TOKENS[:, :6]).logits.float()
    err = (out[plain] - out[quant]).abs().max().item()
    print(f"custom-code int8-dynamic-act-int8-weight: max abs logit error {err:.4f}")
    assert err < LOGIT_TOL["int8-dynamic-act-int8-weight"]
