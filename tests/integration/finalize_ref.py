"""What `forgather finalize` (as specified in FORMATS.md / DESIGN.md) should produce,
computed independently of fzfs with torch + transformers.

Everything here reads SRC and the fixture's reference/<run>/info.json; nothing reads
DEST. The tests compare DEST against these expectations.
"""

import json
import os
import re

import torch
import yaml

ROLES = ["bos_token", "eos_token", "pad_token", "unk_token"]
END_OF_TURN = ("<|im_end|>", "<|eot|>", "<|end_of_turn|>")
DEFAULT_TOKENS = {"pad_token": {"token": "[PAD]", "init": "zero", "if_missing": True}}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PASSTHROUGH = [
    "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "renormalize_logits", "num_beams", "num_beam_groups", "diversity_penalty", "early_stopping",
    "length_penalty", "penalty_alpha", "do_sample", "min_new_tokens", "max_new_tokens",
    "max_length", "guidance_scale", "presence_penalty", "frequency_penalty",
]
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


# --------------------------------------------------------------------------- options

def parse_opts(opts):
    """The subset of the CLI the expectations depend on."""
    o = {"checkpoint": None, "add_tokens": None, "skip_default": False, "template": None,
         "no_auto_stop": False, "stop_tokens": [], "genconf": "carry", "keep_opt": False,
         "root_copy": False, "safetensors": False, "dtype": None}
    it = iter(opts)
    for a in it:
        if a in ("-c", "--checkpoint"):
            o["checkpoint"] = next(it)
        elif a == "--add-tokens":
            o["add_tokens"] = next(it)
        elif a == "--skip-default-tokens":
            o["skip_default"] = True
        elif a in ("-t", "--chat-template-path"):
            o["template"] = next(it)
        elif a == "--no-auto-stop-tokens":
            o["no_auto_stop"] = True
        elif a == "--stop-tokens":
            o["stop_tokens"] = [t.strip() for t in next(it).split(",") if t.strip()]
        elif a == "--generation-config":
            o["genconf"] = next(it)
        elif a == "--keep-optimizer":
            o["keep_opt"] = True
        elif a == "--root-copy":
            o["root_copy"] = True
        elif a == "--safetensors":
            o["safetensors"] = True
        elif a == "--dtype":
            o["dtype"] = next(it)
        elif a in ("--device", "--log-level"):
            next(it)
    return o


# --------------------------------------------------------------------------- source

def load_info(refdir, run):
    with open(os.path.join(refdir, run, "info.json")) as f:
        return json.load(f)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def source_weight_files(ckpt_dir):
    """Weight files of a checkpoint by FORMATS.md section 1 precedence."""
    for idx in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        p = os.path.join(ckpt_dir, idx)
        if os.path.exists(p):
            wm = read_json(p)["weight_map"]
            seen = []
            for v in wm.values():
                if v not in seen:
                    seen.append(v)
            return seen
    for single in ("pytorch_model.bin", "model.safetensors"):
        if os.path.exists(os.path.join(ckpt_dir, single)):
            return [single]
    raise FileNotFoundError(ckpt_dir)


def load_weight_file(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, weights_only=True)


def load_state(ckpt_dir):
    sd = {}
    for f in source_weight_files(ckpt_dir):
        sd.update(load_weight_file(os.path.join(ckpt_dir, f)))
    return sd


def build_model(config, info, dtype):
    from transformers import AutoModelForCausalLM
    kw = {"trust_remote_code": True} if info["trust_remote_code"] else {"attn_implementation": "eager"}
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kw)
    model.eval()
    return model


def source_model(src, info, ckpt_rel):
    """The source model in its stored dtype, loaded without fzfs."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(src, trust_remote_code=info["trust_remote_code"])
    model = build_model(cfg, info, DTYPES[info["dtype"]])
    sd = load_state(os.path.join(src, ckpt_rel))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    if info["tied"]:
        assert set(missing) <= {info["head"]}, missing
        model.tie_weights()
    else:
        assert not missing, missing
    return model


# --------------------------------------------------------------------------- tokens

def _role_spec(role, value):
    if isinstance(value, str):
        return value, ("zero" if role == "pad_token" else "mean"), False
    return (value["token"], value.get("init", "zero" if role == "pad_token" else "mean"),
            bool(value.get("if_missing", False)))


def token_plan(src_tok, opts_parsed):
    """New tokens (id, content, special, init), role strings after, YAML names, as FORMATS.md
    section 6 and reference section 3.2 say (roles in the fixed order bos, eos, pad, unk)."""
    o = opts_parsed
    if o["add_tokens"]:
        with open(o["add_tokens"]) as f:
            y = yaml.safe_load(f) or {}
    elif o["skip_default"]:
        y = {}
    else:
        y = DEFAULT_TOKENS
    vocab = dict(src_tok.get_vocab())
    n = len(src_tok)
    old_len = n
    new = []
    inits = {}
    roles = {r: getattr(src_tok, r) for r in ROLES}
    names = []
    for role in ROLES:
        if role not in y:
            continue
        token, init, if_missing = _role_spec(role, y[role])
        names.append(token)
        old = roles[role]
        if if_missing and old is not None:
            continue
        if old is not None and old != token:
            if token in vocab:
                roles[role] = token
                inits[vocab[token]] = init
            else:
                vocab[token] = n
                new.append((n, token, True))
                inits[n] = "copy:%d" % vocab[old]
                roles[role] = token
                n += 1
        elif old is None:
            roles[role] = token
            if token in vocab:
                inits[vocab[token]] = init
            else:
                vocab[token] = n
                new.append((n, token, True))
                inits[n] = init
                n += 1
    specials = list(y.get("special_tokens") or [])
    names += specials
    for t in specials:
        if t not in vocab:
            vocab[t] = n
            new.append((n, t, True))
            inits[n] = "mean"
            n += 1
    regular = list(y.get("regular_tokens") or [])
    names += regular
    for t in regular:
        if t not in vocab:
            vocab[t] = n
            new.append((n, t, False))
            inits[n] = "mean"
            n += 1
    return {"old_len": old_len, "new_len": n, "new": new, "inits": inits, "roles": roles,
            "names": names, "vocab": vocab, "specials": specials}


def expected_tokenizer(src, plan, template):
    """The source tokenizer mutated with transformers' own API the same way."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(src)
    for role in ROLES:
        if plan["roles"][role] is not None and plan["roles"][role] != getattr(tok, role):
            tok.add_special_tokens({role: plan["roles"][role]})
    specials = [t for _, t, sp in plan["new"] if sp and t not in plan["roles"].values()]
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials})
    regular = [t for _, t, sp in plan["new"] if not sp]
    if regular:
        tok.add_tokens(regular)
    assert len(tok) == plan["new_len"], (len(tok), plan["new_len"])
    for i, t, _ in plan["new"]:
        assert tok.convert_tokens_to_ids(t) == i, (t, i)
    if template is not None:
        tok.chat_template = template
    return tok


def stop_ids(src_cfg, plan, o):
    eos = src_cfg.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    ids = [int(eos)] if eos is not None else []

    def add(name):
        i = plan["vocab"].get(name)
        if i is None:
            raise KeyError(name)
        if i not in ids:
            ids.append(i)

    if not o["no_auto_stop"]:
        for name in plan["names"]:
            if name in END_OF_TURN:
                add(name)
        cur = plan["roles"]["eos_token"]
        if cur is not None:
            add(cur)
    for t in o["stop_tokens"]:
        add(t)
    return ids


# --------------------------------------------------------------------------- generation config

def preset_path(name, home):
    if os.path.isfile(name):
        return name
    fname = name if name.endswith(".json") else name + ".json"
    for d in (os.path.join(home, ".config", "fzfs", "generation_config"),
              os.path.join(home, ".config", "forgather", "generation_config"),
              os.path.join(REPO, "examples", "generation_config")):
        p = os.path.join(d, fname)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(name)


def translate_preset(p):
    out = {}
    if "max_tokens" in p:
        out["max_new_tokens"] = int(p["max_tokens"])
    for k, v in p.items():
        if k != "max_tokens" and k in PASSTHROUGH:
            out[k] = v
    if "do_sample" not in out:
        if any(out.get(k) is not None for k in ("temperature", "top_p", "top_k", "min_p")):
            out["do_sample"] = True
        elif (out.get("num_beams") or 1) > 1:
            out["do_sample"] = False
    return out


def expected_generation_config(src, src_cfg, plan, o, home):
    """dict, or None when no file must be written."""
    mode = o["genconf"]
    if mode == "none":
        return None
    ids = stop_ids(src_cfg, plan, o)
    vocab = plan["vocab"]
    if mode == "carry":
        p = os.path.join(src, "generation_config.json")
        base = read_json(p) if os.path.isfile(p) else {}
        carried = base.get("eos_token_id")
        if carried is not None:
            # original EOS first, then the carried list, then new stop ids, deduplicated
            carried = carried if isinstance(carried, list) else [carried]
            merged = []
            for i in ids[:1] + carried + ids[1:]:
                if i not in merged:
                    merged.append(i)
            ids = merged
    else:
        base = translate_preset(read_json(preset_path(mode, home)))
    bos = plan["roles"]["bos_token"]
    pad = plan["roles"]["pad_token"]
    if bos is not None:
        base["bos_token_id"] = vocab[bos]
    if pad is not None:
        base["pad_token_id"] = vocab[pad]
    if ids:
        base["eos_token_id"] = ids[0] if len(ids) == 1 else list(ids)
    elif plan["roles"]["eos_token"] is not None:
        base["eos_token_id"] = vocab[plan["roles"]["eos_token"]]
    return base


# --------------------------------------------------------------------------- everything

def step_of(ckpt_rel):
    m = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(os.path.normpath(ckpt_rel)))
    return int(m.group(1)) if m else None


def expectation(src, info, opts, home):
    from transformers import AutoTokenizer
    o = parse_opts(opts)
    if o["checkpoint"]:
        ckpt_rel = os.path.relpath(os.path.abspath(o["checkpoint"]), src)
    else:
        ckpt_rel = info["latest"]
    step = step_of(ckpt_rel)
    src_cfg = read_json(os.path.join(src, "config.json"))
    src_tok = AutoTokenizer.from_pretrained(src)
    plan = token_plan(src_tok, o)
    template = None
    if o["template"]:
        with open(o["template"]) as f:
            template = f.read()
    elif os.path.isfile(os.path.join(src, "chat_template.jinja")):
        with open(os.path.join(src, "chat_template.jinja")) as f:
            template = f.read()
    manifest = None
    mp = os.path.join(src, ckpt_rel, "checkpoint_manifest.json")
    if os.path.isfile(mp):
        manifest = read_json(mp)
    return {
        "opts": o, "info": info, "src": src, "ckpt_rel": ckpt_rel,
        "ckpt_dir": os.path.join(src, ckpt_rel),
        "dest_ckpt": "checkpoints/checkpoint-%d" % (step if step is not None else 0),
        "src_files": source_weight_files(os.path.join(src, ckpt_rel)),
        "dtype": o["dtype"] or info["dtype"],
        "format": "safetensors" if o["safetensors"] else "bin",
        "plan": plan, "template": template, "src_cfg": src_cfg,
        "generation_config": expected_generation_config(src, src_cfg, plan, o, home),
        "stop_ids": stop_ids(src_cfg, plan, o),
        "src_manifest": manifest,
    }


def expected_rows(old, plan, kind):
    """New rows for one matrix (kind 'matrix') or a bias (kind 'bias'), float64.
    Returns {id: (tensor, init)}."""
    old64 = old.double()
    mean = old64.mean(0)
    out = {}
    for i, _, _ in plan["new"]:
        init = plan["inits"].get(i, "mean")
        if init == "mean":
            out[i] = (mean, init)
        elif init == "zero":
            out[i] = (torch.zeros_like(mean), init)
        elif init.startswith("copy:"):
            out[i] = (old64[int(init[5:])], init)
        else:
            raise ValueError(init)
    return out
