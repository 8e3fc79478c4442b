"""The embedding search, role tokens missing from the vocabulary, padded embeddings.

Every model here is made in the test session with torch/transformers: custom-code
PreTrainedModel classes (written to a .py in the run directory, auto_map in config.json)
whose embedding and head have names no list in fzfs knows, saved the way a Forgather run
leaves them (tests/fixtures/make_runs.py helpers). For each, fzfs either writes a model
that loads with trust_remote_code with no missing/unexpected/mismatched keys, whose rows
equal len(tokenizer) and whose logits equal the source's (the source weights with the new
rows filled in), or refuses before writing anything, naming --embedding-tensors.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
import make_runs  # noqa: E402

IDS = torch.tensor([[0, 5, 9, 20, 33, 47, 60, 2, 101, 250]])

# Two custom architectures. "named": backbone.token_table (an nn.Embedding) and out (a
# Linear with a bias); names no list knows but that say what they are. "plain": p (the
# embedding) and q (the head, with a bias): names that say nothing.
EMB_LM_PY = '''\
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class EmbTestConfig(PretrainedConfig):
    model_type = "fzfs-emb-test"

    def __init__(self, vocab_size=320, d_model=48, variant="named", tie_word_embeddings=False,
                 **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.variant = variant
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class Backbone(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.token_table = nn.Embedding(config.vocab_size, config.d_model)
        self.mix = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, ids):
        x = self.token_table(ids)
        return self.norm(x + nn.functional.gelu(self.mix(x)))


class NamedLM(PreTrainedModel):
    config_class = EmbTestConfig
    base_model_prefix = "backbone"
    _tied_weights_keys = {"out.weight": "backbone.token_table.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.backbone = Backbone(config)
        self.out = nn.Linear(config.d_model, config.vocab_size, bias=True)
        self.post_init()

    def _init_weights(self, module):
        pass

    def get_input_embeddings(self):
        return self.backbone.token_table

    def set_input_embeddings(self, value):
        self.backbone.token_table = value

    def get_output_embeddings(self):
        return self.out

    def set_output_embeddings(self, value):
        self.out = value

    def forward(self, input_ids=None, **kwargs):
        return CausalLMOutput(logits=self.out(self.backbone(input_ids)))


class TokEmbLM(PreTrainedModel):
    """backbone.tok_emb (unknown) with lm_head (a known name), no bias."""
    config_class = EmbTestConfig
    _tied_weights_keys = {"lm_head.weight": "backbone.tok_emb.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.backbone = nn.Module()
        self.backbone.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.backbone.mix = nn.Linear(config.d_model, config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        pass

    def get_input_embeddings(self):
        return self.backbone.tok_emb

    def set_input_embeddings(self, value):
        self.backbone.tok_emb = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, **kwargs):
        x = self.backbone.tok_emb(input_ids)
        return CausalLMOutput(logits=self.lm_head(x + nn.functional.gelu(self.backbone.mix(x))))


class PlainLM(PreTrainedModel):
    config_class = EmbTestConfig
    _tied_weights_keys = {"q.weight": "p.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.p = nn.Embedding(config.vocab_size, config.d_model)
        self.mix = nn.Linear(config.d_model, config.d_model)
        self.q = nn.Linear(config.d_model, config.vocab_size, bias=True)
        self.post_init()

    def _init_weights(self, module):
        pass

    def get_input_embeddings(self):
        return self.p

    def set_input_embeddings(self, value):
        self.p = value

    def get_output_embeddings(self):
        return self.q

    def set_output_embeddings(self, value):
        self.q = value

    def forward(self, input_ids=None, **kwargs):
        x = self.p(input_ids)
        return CausalLMOutput(logits=self.q(x + nn.functional.gelu(self.mix(x))))
'''


def _spread(model, seed):
    """Distinct, non-trivial weights (so a wrong row shows in the logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def make_custom_run(path, cls, tied, fmt, seed, tok=None, nshards=2):
    """A Forgather-style run of custom class `cls` (NamedLM / PlainLM): config, tokenizer
    and model code at the root, weights in checkpoints/checkpoint-100 (.bin or safetensors,
    sharded with an index, as the trainer writes them). Returns the source model."""
    make_runs.fresh_dir(path)
    tok = tok or make_runs.make_tokenizer(with_pad=False)
    with open(os.path.join(path, "emb_lm.py"), "w") as f:
        f.write(EMB_LM_PY)
    cfg = {"architectures": [cls], "model_type": "fzfs-emb-test",
           "auto_map": {"AutoConfig": "emb_lm.EmbTestConfig",
                        "AutoModelForCausalLM": f"emb_lm.{cls}"},
           "vocab_size": len(tok), "d_model": 48, "tie_word_embeddings": tied,
           **make_runs.token_ids(tok)}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True).eval()
    _spread(model, seed)
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    make_runs.save_tokenizer_and_config(path, tok, config)
    make_runs.write_root_extras(path)
    ckpt = os.path.join(path, "checkpoints", "checkpoint-100")
    os.makedirs(ckpt)
    sd = make_runs.state_dict_for_save(model)
    if fmt == "bin":
        make_runs.write_bin_sharded(sd, ckpt, nshards)
    else:
        # safetensors cannot hold two names over one storage: tied runs keep one copy
        sd = {k: v.clone() for k, v in sd.items()}
        make_runs.write_st_sharded(sd, ckpt, nshards)
    make_runs.write_training_state(model, ckpt, 100, os.path.basename(path),
                                   make_runs.ts(1), small_optimizer=True)
    return model


def materialize(fzfs, src, dest, *opts):
    return fzfs.run("materialize", src, dest, *opts)


def vocab_keys(model):
    emb = model.get_input_embeddings().weight
    keys = []
    for k, v in model.state_dict().items():
        if v.dim() >= 1 and v.shape[0] == emb.shape[0]:
            keys.append(k)
    return keys


def check_release(dest, src_model, old_rows, inits):
    """DEST loads with no key problems, rows == len(tokenizer) == vocab_size, every tensor
    equal to the source's except the new rows, whose values follow `inits` (row -> 'zero' |
    'mean'; the head bias gets the old bias's mean); logits equal the source model's with
    the new rows filled in from DEST."""
    tok = AutoTokenizer.from_pretrained(dest)
    model, info = AutoModelForCausalLM.from_pretrained(dest, trust_remote_code=True,
                                                       output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[k], (k, info[k])
    model.eval()
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == len(tok) == model.config.vocab_size
    assert model.get_output_embeddings().weight.shape[0] == rows
    src_sd, sd = src_model.state_dict(), model.state_dict()
    assert set(src_sd) == set(sd)
    vkeys = set(vocab_keys(src_model))
    expected = {}
    for k, v in src_sd.items():
        if k not in vkeys:
            assert torch.equal(sd[k], v), k
            expected[k] = v
            continue
        assert torch.equal(sd[k][:old_rows], v[:old_rows]), f"{k}: an old row changed"
        for row, init in inits.items():
            got = sd[k][row].double()
            if v.dim() == 1:  # the head bias: the old bias's mean for every init
                want = v.double().mean()
            elif init == "zero":
                want = torch.zeros_like(got)
            else:
                want = v.double().mean(0)
            assert torch.allclose(got, want, atol=1e-6), f"{k}[{row}] ({init})"
        expected[k] = torch.cat([v, sd[k][old_rows:]])
    ref = AutoModelForCausalLM.from_config(model.config, trust_remote_code=True).eval()
    ref.load_state_dict(expected, strict=True)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, ref(IDS).logits)
    return model, tok


# ---- names no list knows -----------------------------------------------------------------

@pytest.mark.parametrize("tied,fmt", [(False, "bin"), (True, "bin"), (False, "st")],
                         ids=["untied-bin", "tied-bin", "untied-st"])
def test_unknown_names_found(fzfs, session_tmp, tied, fmt):
    """backbone.token_table.weight + out.weight + out.bias: found by shape, name hints,
    the head's bias and (in .bin) the state-dict order; [PAD] grows every vocab tensor."""
    base = os.path.join(session_tmp, "emb", f"named-{tied}-{fmt}")
    src = os.path.join(base, os.path.basename(base))  # a module name of its own (remote code)
    model = make_custom_run(src, "NamedLM", tied, fmt, seed=7)
    old = model.config.vocab_size
    plan = fzfs.run("plan", src)
    assert plan.returncode == 0, plan.stderr
    assert "backbone.token_table.weight" in plan.stdout and "out.bias" in plan.stdout
    dest = os.path.join(base, os.path.basename(base) + "-dest")
    p = materialize(fzfs, src, dest)
    assert p.returncode == 0, p.stderr
    check_release(dest, model, old, {old: "zero"})


@pytest.mark.parametrize("tied,nshards", [(False, 2), (True, 1), (True, 2)],
                         ids=["untied", "tied-one-storage", "tied-copies"])
def test_unknown_embedding_known_head(fzfs, session_tmp, tied, nshards):
    """backbone.tok_emb.weight with a head called lm_head.weight (issue 7's model): the other
    name over the head's storage, or the one [vocab, hidden] matrix left, is the embedding."""
    base = os.path.join(session_tmp, "emb", f"tokemb-{tied}-{nshards}")
    src = os.path.join(base, os.path.basename(base))  # a module name of its own (remote code)
    model = make_custom_run(src, "TokEmbLM", tied, "bin", seed=14, nshards=nshards)
    old = model.config.vocab_size
    dest = os.path.join(base, os.path.basename(base) + "-dest")
    p = materialize(fzfs, src, dest)
    assert p.returncode == 0, p.stderr
    check_release(dest, model, old, {old: "zero"})


def test_unknown_names_safetensors_tied_copies(fzfs, session_tmp):
    """Tied by the config only (two equal copies in safetensors shards)."""
    base = os.path.join(session_tmp, "emb", "named-tied-st")
    src = os.path.join(base, os.path.basename(base))  # a module name of its own (remote code)
    model = make_custom_run(src, "NamedLM", True, "st", seed=8)
    dest = os.path.join(base, os.path.basename(base) + "-dest")
    p = materialize(fzfs, src, dest)
    assert p.returncode == 0, p.stderr
    check_release(dest, model, model.config.vocab_size, {model.config.vocab_size: "zero"})


def _refused(p, dest):
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "--embedding-tensors" in p.stderr, p.stderr
    assert not os.path.exists(dest)


@pytest.mark.parametrize("fmt", ["st", "bin"])
def test_uninformative_names_refused_then_named(fzfs, session_tmp, fmt):
    """p.weight / q.weight + q.bias in safetensors: the bias alone is not enough, so plan,
    materialize and mount refuse, listing the candidates; --embedding-tensors p.weight,q.weight
    (the bias found by itself) gives a correct release. In .bin the state-dict order adds
    its vote and the guess is certain."""
    base = os.path.join(session_tmp, "emb", f"plain-{fmt}")
    src = os.path.join(base, os.path.basename(base))  # a module name of its own (remote code)
    model = make_custom_run(src, "PlainLM", False, fmt, seed=9)
    old = model.config.vocab_size
    dest = os.path.join(base, os.path.basename(base) + "-dest")
    if fmt == "st":
        p = fzfs.run("plan", src)
        assert p.returncode == 1 and "--embedding-tensors" in p.stderr, p.stdout + p.stderr
        for name in ("p.weight", "q.weight", "q.bias"):
            assert name in p.stderr, p.stderr
        _refused(materialize(fzfs, src, dest), dest)
        mnt = os.path.join(base, "mnt")
        os.makedirs(mnt)
        m = fzfs.run("mount", src, mnt, "--log-file", mnt + ".log")
        try:
            assert m.returncode != 0 and "--embedding-tensors" in m.stderr, m.stderr
            assert not os.path.ismount(mnt)
        finally:
            if os.path.ismount(mnt):
                fzfs.run("umount", mnt)
        # the vocabulary unchanged: nothing to refuse
        keep = os.path.join(base, os.path.basename(base) + "-keep")
        p = materialize(fzfs, src, keep, "--skip-default-tokens")
        assert p.returncode == 0, p.stderr
        p = materialize(fzfs, src, dest, "--embedding-tensors", "p.weight,q.weight")
    else:
        p = materialize(fzfs, src, dest)
    assert p.returncode == 0, p.stderr
    check_release(dest, model, old, {old: "zero"})


def test_index_param_sharing_ties_candidates(fzfs, session_tmp):
    """The source index's metadata.param_sharing is tie evidence: p.weight and q.weight in
    safetensors are refused as two unknown matrices (above), but listed as one group in
    the index they are one matrix under two names: the first is the embedding, the other
    the head, and the plan is certain."""
    base = os.path.join(session_tmp, "emb", "plain-shared")
    src = os.path.join(base, os.path.basename(base))  # a module name of its own (remote code)
    make_custom_run(src, "PlainLM", False, "st", seed=9)
    p = fzfs.run("plan", src)
    assert p.returncode == 1 and "--embedding-tensors" in p.stderr, p.stdout + p.stderr
    index = os.path.join(src, "checkpoints", "checkpoint-100", "model.safetensors.index.json")
    with open(index) as f:
        idx = json.load(f)
    idx["metadata"]["param_sharing"] = [["q.weight", "p.weight"]]
    with open(index, "w") as f:
        json.dump(idx, f)
    p = fzfs.run("plan", src, "--json")
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert (plan["embedding"], plan["head"]) == ("p.weight", "q.weight"), plan


def test_embedding_tensors_emb_only_tied(fzfs, session_tmp):
    """--embedding-tensors EMB on a tied model: the head over the same storage and the head's
    bias are found from it (the search alone finds them too: one matrix under two names)."""
    base = os.path.join(session_tmp, "emb", "plain-tied")
    src = os.path.join(base, os.path.basename(base))
    model = make_custom_run(src, "PlainLM", True, "bin", seed=15, nshards=1)
    old = model.config.vocab_size
    for label, opts in (("search", ()), ("named", ("--embedding-tensors", "p.weight"))):
        plan = fzfs.run("plan", src, *opts)
        assert plan.returncode == 0, plan.stderr
        assert "Head:        q.weight, bias q.bias" in plan.stdout, plan.stdout
        dest = os.path.join(base, f"{os.path.basename(base)}-{label}")
        p = materialize(fzfs, src, dest, *opts)
        assert p.returncode == 0, p.stderr
        check_release(dest, model, old, {old: "zero"})


def test_extra_vocab_tensor_refused(fzfs, session_tmp):
    """A vocab-sized tensor that is neither embedding, head nor its bias (here a second
    [vocab] vector) makes the guess uncertain even with telling names."""
    base = os.path.join(session_tmp, "emb", "extra")
    src = os.path.join(base, os.path.basename(base))  # a module name of its own (remote code)
    make_custom_run(src, "NamedLM", False, "bin", seed=10)
    ckpt = os.path.join(src, "checkpoints", "checkpoint-100")
    idx = json.load(open(os.path.join(ckpt, "pytorch_model.bin.index.json")))
    shard = os.path.join(ckpt, idx["weight_map"]["out.bias"])
    sd = torch.load(shard, weights_only=True)
    sd["token_freq"] = torch.ones(sd["out.bias"].shape[0])
    torch.save(sd, shard)
    idx["weight_map"]["token_freq"] = os.path.basename(shard)
    json.dump(idx, open(os.path.join(ckpt, "pytorch_model.bin.index.json"), "w"), indent=4)
    dest = os.path.join(base, os.path.basename(base) + "-dest")
    p = materialize(fzfs, src, dest)
    _refused(p, dest)
    assert "token_freq" in p.stderr


# ---- role tokens missing from the vocabulary -----------------------------------------

def test_role_token_missing(fzfs, session_tmp):
    """tokenizer_config.json names an eos_token in no vocabulary: transformers' tokenizer adds
    it on load (next id), so DEST's tokenizer has it at the same id and the model grows a
    row for it (the mean, as HF's resize gives), then [PAD] after it."""
    base = os.path.join(session_tmp, "emb", "role")
    src = os.path.join(base, os.path.basename(base))  # a module name of its own (remote code)
    model = make_custom_run(src, "NamedLM", False, "bin", seed=12)
    old = model.config.vocab_size
    tc_path = os.path.join(src, "tokenizer_config.json")
    tc = json.load(open(tc_path))
    tc["eos_token"] = "<|eot|>"
    json.dump(tc, open(tc_path, "w"), indent=2)
    src_tok = AutoTokenizer.from_pretrained(src)
    assert len(src_tok) == old + 1 and src_tok.eos_token_id == old  # what HF does on load
    dest = os.path.join(base, os.path.basename(base) + "-dest")
    p = materialize(fzfs, src, dest)
    assert p.returncode == 0, p.stderr
    _, tok = check_release(dest, model, old, {old: "mean", old + 1: "zero"})
    assert len(tok) == old + 2
    assert tok.eos_token == "<|eot|>" and tok.eos_token_id == old
    assert tok.convert_tokens_to_ids("[PAD]") == old + 1 == tok.pad_token_id
    # without the default PAD the role token alone still grows the model
    dest2 = os.path.join(base, os.path.basename(base) + "-dest-skip")
    p = materialize(fzfs, src, dest2, "--skip-default-tokens")
    assert p.returncode == 0, p.stderr
    _, tok = check_release(dest2, model, old, {old: "mean"})
    assert len(tok) == old + 1 and tok.eos_token_id == old


# ---- padded embeddings are kept ------------------------------------------------------

def make_padded_llama(path, rows, seed=13):
    """A Llama whose embedding/head have `rows` rows for a smaller tokenizer (Qwen-style)."""
    make_runs.fresh_dir(path)
    tok = make_runs.make_tokenizer(with_pad=False)
    cfg = make_runs.llama_config(tok, tied=False)
    cfg.vocab_size = rows
    model = make_runs.new_llama(cfg, seed)
    make_runs.save_tokenizer_and_config(path, tok, cfg)
    ckpt = os.path.join(path, "checkpoints", "checkpoint-10")
    os.makedirs(ckpt)
    make_runs.write_st_sharded(make_runs.state_dict_for_save(model), ckpt, 1)
    make_runs.write_training_state(model, ckpt, 10, "padded", make_runs.ts(1), small_optimizer=True)
    return model, tok


def test_padded_embedding_kept(fzfs, session_tmp):
    base = os.path.join(session_tmp, "emb", "padded")
    src = os.path.join(base, os.path.basename(base))  # a module name of its own (remote code)
    rows = 400
    model, tok = make_padded_llama(src, rows)
    n = len(tok)
    assert n < rows
    plan = fzfs.run("plan", src)
    assert plan.returncode == 0, plan.stderr
    assert f"{rows - n - 1} padding rows kept" in plan.stdout, plan.stdout
    dest = os.path.join(base, os.path.basename(base) + "-dest")
    p = materialize(fzfs, src, dest, "--safetensors")
    assert p.returncode == 0, p.stderr
    cfg = json.load(open(os.path.join(dest, "config.json")))
    assert cfg["vocab_size"] == rows
    dtok = AutoTokenizer.from_pretrained(dest)
    assert len(dtok) == n + 1 and dtok.pad_token == "[PAD]" and dtok.pad_token_id == n
    out, info = LlamaForCausalLM.from_pretrained(dest, output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[k], (k, info[k])
    src_sd, sd = model.state_dict(), out.state_dict()
    for k, v in src_sd.items():
        if v.shape[0] == rows and v.dim() == 2:
            assert sd[k].shape[0] == rows, k
            assert torch.equal(sd[k][:n], v[:n]) and torch.equal(sd[k][n + 1:], v[n + 1:]), k
            assert torch.equal(sd[k][n], torch.zeros_like(v[n])), f"{k}: [PAD] row is not zero"
        else:
            assert torch.equal(sd[k], v), k
    # a mean-initialised token in a padding row gets the mean of the source rows
    yaml = os.path.join(base, "tokens.yaml")
    with open(yaml, "w") as f:
        f.write("special_tokens:\n  - \"<|im_start|>\"\n")
    dest2 = os.path.join(base, os.path.basename(base) + "-dest-mean")
    p = materialize(fzfs, src, dest2, "--safetensors", "--add-tokens", yaml)
    assert p.returncode == 0, p.stderr
    sd2 = LlamaForCausalLM.from_pretrained(dest2).state_dict()
    emb = src_sd["model.embed_tokens.weight"]
    assert sd2["model.embed_tokens.weight"].shape[0] == rows
    assert torch.allclose(sd2["model.embed_tokens.weight"][n].double(), emb.double().mean(0), atol=1e-6)
    assert torch.equal(sd2["model.embed_tokens.weight"][n + 1:], emb[n + 1:])
