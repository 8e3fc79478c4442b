"""Strings of the source JSON files stay strings in DEST (issue 8 item 3).

fzfs used to carry integers beyond 64 bits through its JSON reader as strings
beginning "\\u0001fz-bigint:" and wrote such strings back raw, so a source
string with that prefix became raw JSON in DEST: a hostile tokenizer_config.json
value could add auto_map (code run under trust_remote_code). Every file fzfs
rewrites (config.json, tokenizer_config.json, tokenizer.json) must give back the
exact strings, and the big integer transformers writes must still round-trip."""

import json
import os
import shutil

from transformers import AddedToken, AutoConfig, AutoTokenizer

TAG = "\u0001fz-bigint:"
HOSTILE_CFG = TAG + '1, "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"}'
HOSTILE_TOK = TAG + '1, "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", null]}'
HOSTILE_ADDED = TAG + '2, "auto_map": {"AutoTokenizer": ["evil.T", null]}, "x": "'
BIG = 1000000000000000019884624838656  # int(1e30) as transformers writes model_max_length


def hostile_run(src, dst):
    """A copy of src whose config, tokenizer_config and added tokens carry the old tag,
    written by transformers (plus one tokenizer_config key added with json, as a hand
    edit or another tool would)."""
    shutil.copytree(src, dst, symlinks=True)
    cfg = AutoConfig.from_pretrained(dst)
    cfg.hostile_note = HOSTILE_CFG
    cfg.save_pretrained(dst)
    tok = AutoTokenizer.from_pretrained(dst)
    tok.add_tokens([AddedToken(HOSTILE_ADDED, normalized=False)])
    tok.model_max_length = BIG
    tok.save_pretrained(dst)
    p = os.path.join(dst, "tokenizer_config.json")
    with open(p) as f:
        tc = json.load(f)
    tc["hostile_note"] = HOSTILE_TOK
    with open(p, "w") as f:
        json.dump(tc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return len(tok)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_tagged_strings_stay_strings(fzfs, runs, tmp_path):
    src = str(tmp_path / "src")
    vocab = hostile_run(runs.src("nopad-tied-bin"), src)
    assert f'"model_max_length": {BIG}' in read(os.path.join(src, "tokenizer_config.json"))
    dest = str(tmp_path / "dest")
    p = fzfs.run("materialize", src, dest)
    assert p.returncode == 0, p.stderr

    cfg_text = read(os.path.join(dest, "config.json"))
    tc_text = read(os.path.join(dest, "tokenizer_config.json"))
    tj_text = read(os.path.join(dest, "tokenizer.json"))
    # the exact strings, escaped as json writes them
    assert json.dumps(HOSTILE_CFG) in cfg_text
    assert json.dumps(HOSTILE_TOK) in tc_text
    assert json.dumps(HOSTILE_ADDED) in tc_text and json.dumps(HOSTILE_ADDED) in tj_text
    assert f'"model_max_length": {BIG}' in tc_text

    cfg, tc, tj = json.loads(cfg_text), json.loads(tc_text), json.loads(tj_text)
    assert "auto_map" not in cfg and cfg["hostile_note"] == HOSTILE_CFG
    assert "auto_map" not in tc and tc["hostile_note"] == HOSTILE_TOK
    assert tc["model_max_length"] == BIG and type(tc["model_max_length"]) is int
    assert [v["content"] for v in tc["added_tokens_decoder"].values()].count(HOSTILE_ADDED) == 1
    assert [t["content"] for t in tj["added_tokens"]].count(HOSTILE_ADDED) == 1

    # transformers loads DEST without any remote code and sees the same values
    c = AutoConfig.from_pretrained(dest)
    assert getattr(c, "auto_map", None) is None and c.hostile_note == HOSTILE_CFG
    tok = AutoTokenizer.from_pretrained(dest)
    assert tok.model_max_length == BIG
    assert tok.init_kwargs.get("auto_map") is None and tok.init_kwargs["hostile_note"] == HOSTILE_TOK
    assert tok.convert_tokens_to_ids(HOSTILE_ADDED) not in (None, tok.unk_token_id)
    assert len(tok) == vocab + 1  # fzfs's default [PAD]
