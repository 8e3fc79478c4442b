"""Hugging Face Trainer output directories (docs/layouts.md): the output_dir of a real
transformers.Trainer run (tests/fixtures/make_trainer_runs.py), with and without a final
model saved at the root, materialized and mounted; which checkpoint is chosen and why;
-c and SRC=checkpoint-N; --keep-optimizer; no Trainer state in DEST."""

import datetime
import json
import os
import shutil
import subprocess
import sys

import pytest

from test_mount import Mounter, child, diff_trees

MAKE_TRAINER_RUNS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "fixtures", "make_trainer_runs.py")
TRAINER_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin",
                 "scaler.pt", "rng_state.pth")


class TrainerRuns:
    def __init__(self, out):
        self.out = out

    def src(self, name):
        return os.path.join(self.out, name)

    def info(self, name):
        with open(os.path.join(self.out, "reference", name, "info.json")) as f:
            return json.load(f)


@pytest.fixture(scope="session")
def trainer_runs(session_tmp):
    out = os.path.join(session_tmp, "trainer-runs")
    p = subprocess.run([sys.executable, MAKE_TRAINER_RUNS, out], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return TrainerRuns(out)


@pytest.fixture
def mounter(fzfs, tmp_path):
    m = Mounter(fzfs, str(tmp_path))
    yield m
    m.cleanup()


def materialize(fzfs, src, dest, *opts):
    p = fzfs.run("materialize", src, dest, "--no-cache", *opts)
    assert p.returncode == 0, p.stderr[-3000:]
    return str(dest)


def copy_run(trainer_runs, name, tmp_path):
    dst = str(tmp_path / name)
    shutil.copytree(trainer_runs.src(name), dst, symlinks=True)
    return dst


# Loads pairs of directories with transformers and compares logits bit for bit, and the
# tokenizers. In-process for real directories; in a child for a mount (a hung mount must
# fail the test, not hang it), one child per test since importing transformers is slow.
SAME_MODEL = """
def same_model(pairs):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    text = "the trainer saves weights every step. Hello, world!"
    res = []
    for got, want in pairs:
        tg, tw = AutoTokenizer.from_pretrained(got), AutoTokenizer.from_pretrained(want)
        ids = tw(text, return_tensors="pt")["input_ids"]
        out = {"got": got, "want": want}
        with torch.no_grad():
            mg = AutoModelForCausalLM.from_pretrained(got, dtype=torch.float32).eval()
            mw = AutoModelForCausalLM.from_pretrained(want, dtype=torch.float32).eval()
            lg, lw = mg(ids).logits, mw(ids).logits
        out["same_logits"] = bool(torch.equal(lg, lw))
        out["max_diff"] = float((lg - lw).abs().max())
        out["same_tokens"] = tg(text)["input_ids"] == tw(text)["input_ids"]
        out["same_vocab"] = tg.get_vocab() == tw.get_vocab()
        out["rows"] = mg.get_input_embeddings().weight.shape[0]
        out["vocab"] = len(tg)
        res.append(out)
    return res
"""
_ns = {}
exec(SAME_MODEL, _ns)


def compare_models(*pairs, in_child=False):
    """[(got, want, same)]: same=True asserts equal logits and tokenizer, False different
    logits (the fixture's checkpoints must differ, or a test is vacuous)."""
    if in_child:
        code = SAME_MODEL + "\nimport json, sys\na = sys.argv[1:]\n" \
            "print(json.dumps(same_model(list(zip(a[0::2], a[1::2])))))\n"
        res = child(code, *[a for got, want, _ in pairs for a in (got, want)], timeout=240)
    else:
        res = _ns["same_model"]([(got, want) for got, want, _ in pairs])
    for (got, want, same), r in zip(pairs, res):
        if same:
            assert r["same_logits"], f"logits of {got} differ from {want}'s: {r}"
            assert r["same_tokens"] and r["same_vocab"] and r["rows"] == r["vocab"], r
        else:
            assert not r["same_logits"], f"{got} and {want} have the same logits: {r}"


def dest_files(dest):
    out = set()
    for d, dirs, files in os.walk(dest):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), dest))
    return out


def assert_no_trainer_state(dest):
    names = dest_files(dest)
    leaked = [n for n in names if os.path.basename(n) in TRAINER_STATE
              or os.path.basename(n).startswith("rng_state")]
    assert not leaked, f"Trainer state reached DEST: {leaked}"


def utc_iso(ns):
    """datetime.fromtimestamp(mtime, utc).isoformat(), exact to the microsecond."""
    dt = datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc)
    return dt.replace(microsecond=(ns // 1000) % 10**6).isoformat()


def newest_weight_mtime(ckpt):
    idx = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = set(json.load(f)["weight_map"].values())
    else:
        files = {"model.safetensors"}
    return max(os.stat(os.path.join(ckpt, n)).st_mtime_ns for n in files)


def manifest(dest, ckpt):
    with open(os.path.join(dest, "checkpoints", ckpt, "checkpoint_manifest.json")) as f:
        return json.load(f)


def plan_json(fzfs, *args):
    p = fzfs.run("plan", *args, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# ---- which checkpoint, and what DEST holds ---------------------------------------------

def test_output_dir_latest_is_highest_global_step(fzfs, trainer_runs, tmp_path):
    src = trainer_runs.src("trainer-st")
    info = trainer_runs.info("trainer-st")
    assert info["latest"] == "checkpoint-6" and len(info["checkpoints"]) == 3
    dest = materialize(fzfs, src, tmp_path / "out")
    assert os.listdir(os.path.join(dest, "checkpoints")) == ["checkpoint-6"]
    compare_models((dest, os.path.join(src, "checkpoint-6"), True))
    assert_no_trainer_state(dest)
    m = manifest(dest, "checkpoint-6")
    assert m["checkpoint_path"] == "checkpoints/checkpoint-6"
    assert list(m["components"]) == ["model"]
    # No source manifest: the newest mtime of the chosen checkpoint's weights, in UTC.
    assert m["timestamp"] == utc_iso(newest_weight_mtime(os.path.join(src, "checkpoint-6")))
    assert datetime.datetime.fromisoformat(m["timestamp"]).tzinfo is not None


def test_highest_global_step_beats_newer_mtime(fzfs, trainer_runs, tmp_path):
    src = copy_run(trainer_runs, "trainer-st", tmp_path)
    old = os.path.join(src, "checkpoint-2")
    later = os.stat(os.path.join(src, "checkpoint-6")).st_mtime + 3600
    for d, _, files in os.walk(old):
        for n in files:
            os.utime(os.path.join(d, n), (later, later))
    os.utime(old, (later, later))
    doc = plan_json(fzfs, src)
    assert doc["checkpoint"]["step"] == 6, doc["checkpoint"]
    assert os.path.basename(doc["checkpoint"]["path"]) == "checkpoint-6"


def test_final_model_at_root_wins(fzfs, trainer_runs, tmp_path):
    src = trainer_runs.src("trainer-final")
    info = trainer_runs.info("trainer-final")
    assert info["root_model"]
    dest = materialize(fzfs, src, tmp_path / "out")
    assert os.listdir(os.path.join(dest, "checkpoints")) == ["checkpoint-0"]
    # The root model, which differs from the first checkpoint's.
    compare_models((dest, src, True), (dest, os.path.join(src, "checkpoint-2"), False))
    assert_no_trainer_state(dest)
    m = manifest(dest, "checkpoint-0")
    assert m["timestamp"] == utc_iso(newest_weight_mtime(src))


def test_dash_c_and_checkpoint_dir_as_src(fzfs, trainer_runs, tmp_path):
    src = trainer_runs.src("trainer-st")
    c2 = os.path.join(src, "checkpoint-2")
    dest = materialize(fzfs, src, tmp_path / "c", "-c", c2)
    assert os.listdir(os.path.join(dest, "checkpoints")) == ["checkpoint-2"]
    dest_c = dest
    # SRC is the checkpoint directory itself: its step is kept.
    c4 = os.path.join(src, "checkpoint-4")
    dest = materialize(fzfs, c4, tmp_path / "dir", "--safetensors")
    assert os.listdir(os.path.join(dest, "checkpoints")) == ["checkpoint-4"]
    assert manifest(dest, "checkpoint-4")["checkpoint_path"] == "checkpoints/checkpoint-4"
    compare_models((dest_c, c2, True), (dest_c, os.path.join(src, "checkpoint-6"), False),
                   (dest, c4, True))
    assert_no_trainer_state(dest)
    doc = plan_json(fzfs, c4)
    assert doc["layout"]["name"] == "checkpoint-dir" and doc["checkpoint"]["step"] == 4
    # -c into the final-model run picks that checkpoint over the root model, but config and
    # tokenizer still come from the root (the root's win when present).
    fsrc = trainer_runs.src("trainer-final")
    doc = plan_json(fzfs, fsrc, "-c", os.path.join(fsrc, "checkpoint-4"))
    assert doc["checkpoint"]["step"] == 4 and doc["checkpoint"]["config_dir"] == fsrc


def test_keep_optimizer_carries_optimizer_pt(fzfs, trainer_runs, tmp_path):
    src = trainer_runs.src("trainer-st")
    dest = materialize(fzfs, src, tmp_path / "out", "--keep-optimizer")
    cdir = os.path.join(dest, "checkpoints", "checkpoint-6")
    opt = os.path.join(cdir, "optimizer_state.pt")
    with open(opt, "rb") as a, open(os.path.join(src, "checkpoint-6", "optimizer.pt"), "rb") as b:
        assert a.read() == b.read(), "optimizer.pt not carried byte for byte"
    m = manifest(dest, "checkpoint-6")
    assert list(m["components"]) == ["model", "optimizer"]
    assert m["components"]["optimizer"]["size_bytes"] == os.path.getsize(opt)
    leaked = [n for n in dest_files(dest) if os.path.basename(n) in TRAINER_STATE]
    assert not leaked, leaked
    # A root model has no optimizer: refused, naming the directory.
    p = fzfs.run("materialize", trainer_runs.src("trainer-final"), tmp_path / "no",
                 "--keep-optimizer")
    assert p.returncode == 1 and "optimizer.pt" in p.stderr, p.stderr
    assert not os.path.lexists(tmp_path / "no")


def test_training_args_bin_is_never_opened(fzfs, trainer_runs, tmp_path):
    """training_args.bin is a pickle of Python objects: a FIFO in its place would block
    whoever opens it, so a run that finishes never opened it."""
    for name in ("trainer-st", "trainer-final"):
        src = copy_run(trainer_runs, name, tmp_path)
        fifos = 0
        for d, _, files in os.walk(src):
            if "training_args.bin" in files:
                os.unlink(os.path.join(d, "training_args.bin"))
                os.mkfifo(os.path.join(d, "training_args.bin"))
                fifos += 1
        assert fifos >= 3
        for args in (["plan", src], ["materialize", src, str(tmp_path / (name + "-out"))],
                     ["materialize", src, str(tmp_path / (name + "-c")), "-c",
                      os.path.join(src, "checkpoint-4")]):
            p = fzfs.run(*args, timeout=60)
            assert p.returncode == 0, p.stderr


def test_unreadable_trainer_state_is_refused(fzfs, trainer_runs, tmp_path):
    src = copy_run(trainer_runs, "trainer-st", tmp_path)
    state = os.path.join(src, "checkpoint-6", "trainer_state.json")
    with open(state, "r+") as f:
        f.truncate(40)
    p = fzfs.run("materialize", src, tmp_path / "out")
    assert p.returncode == 1, p.stderr
    assert state in p.stderr and "-c" in p.stderr, p.stderr
    assert not os.path.lexists(tmp_path / "out")
    # -c names another checkpoint: the broken state is not read.
    materialize(fzfs, src, tmp_path / "c4", "-c", os.path.join(src, "checkpoint-4"))


# ---- plan --------------------------------------------------------------------------------

def test_plan_says_layout_reason_and_skipped(fzfs, trainer_runs):
    src = trainer_runs.src("trainer-st")
    p = fzfs.run("plan", src)
    assert p.returncode == 0, p.stderr
    assert "hf-trainer" in p.stdout and "Trainer output_dir" in p.stdout, p.stdout
    assert "highest global_step (6)" in p.stdout, p.stdout
    for c in ("checkpoint-2", "checkpoint-4"):
        assert f"skipped:   {c}: lower global_step" in p.stdout, p.stdout
    doc = plan_json(fzfs, src)
    assert doc["layout"]["name"] == "hf-trainer"
    ck = doc["checkpoint"]
    assert ck["step"] == 6 and not ck["is_root"] and "global_step" in ck["why"]
    assert [s["name"] for s in ck["skipped"]] == ["checkpoint-2", "checkpoint-4"]
    assert ck["config_dir"] == ck["path"] == os.path.join(src, "checkpoint-6")

    fsrc = trainer_runs.src("trainer-final")
    doc = plan_json(fzfs, fsrc)
    assert doc["layout"]["name"] == "hf-trainer+final-model"
    ck = doc["checkpoint"]
    assert ck["is_root"] and ck["path"] == fsrc and "save_model" in ck["why"]
    assert [s["name"] for s in ck["skipped"]] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    p = fzfs.run("plan", fsrc)
    assert p.returncode == 0 and "skipped:   checkpoint-6" in p.stdout, p.stdout


# ---- mount -------------------------------------------------------------------------------

def test_mount_matches_materialize_and_loads(fzfs, trainer_runs, mounter, tmp_path):
    pairs = []
    for run in ("trainer-st", "trainer-final"):
        src = trainer_runs.src(run)
        dest = materialize(fzfs, src, tmp_path / (run + "-out"), "--safetensors")
        assert_no_trainer_state(dest)
        mnt = str(tmp_path / (run + "-mnt"))
        mounter.mount(src, mnt, "--safetensors")
        diff_trees(mnt, dest)
        want = src if trainer_runs.info(run)["root_model"] else os.path.join(src, "checkpoint-6")
        pairs.append((mnt, want, True))
    compare_models(*pairs, in_child=True)
    for mnt, _, _ in pairs:
        mounter.umount(mnt)


# ---- checkpoints whose weights are split across ranks ------------------------------------

SHARDED = r"""
import os, sys, torch
from safetensors.torch import load_file
kind, ckpt = sys.argv[1], sys.argv[2]
name = next(f for f in os.listdir(ckpt) if f.startswith("model") and f.endswith(".safetensors"))
sd = load_file(os.path.join(ckpt, name))
for f in os.listdir(ckpt):
    if f.startswith("model") and (f.endswith(".safetensors") or f.endswith(".index.json")):
        os.remove(os.path.join(ckpt, f))
step = os.path.basename(ckpt).split("-")[1]
if kind == "deepspeed":  # what DeepSpeed's engine.save_checkpoint writes on one rank
    d = os.path.join(ckpt, f"global_step{step}")
    os.makedirs(d)
    torch.save({"module": sd}, os.path.join(d, "mp_rank_00_model_states.pt"))
    torch.save({"optimizer_state_dict": {}}, os.path.join(d, "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    with open(os.path.join(ckpt, "latest"), "w") as f:
        f.write(f"global_step{step}")
else:  # FSDP SHARDED_STATE_DICT, as accelerate saves it: torch.distributed.checkpoint
    import torch.distributed.checkpoint as dcp
    dcp.save(sd, checkpoint_id=os.path.join(ckpt, "pytorch_model_fsdp_0"))
"""


def make_sharded(kind, ckpt):
    p = subprocess.run([sys.executable, "-c", SHARDED, kind, ckpt], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def test_deepspeed_checkpoints_are_refused_with_the_way_to_consolidate(fzfs, trainer_runs,
                                                                       tmp_path):
    src = str(tmp_path / "out")
    shutil.copytree(trainer_runs.src("trainer-st"), src)
    ckpts = sorted(d for d in os.listdir(src) if d.startswith("checkpoint-"))
    for d in ckpts:
        make_sharded("deepspeed", os.path.join(src, d))
    r = fzfs.run("materialize", src, str(tmp_path / "dest"))
    assert r.returncode != 0
    assert "DeepSpeed ZeRO" in r.stderr and "zero_to_fp32.py" in r.stderr, r.stderr
    assert "global_step" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "dest")
    r = fzfs.run("plan", os.path.join(src, ckpts[-1]))  # SRC = the checkpoint itself
    assert r.returncode != 0 and "zero_to_fp32.py" in r.stderr, r.stderr
    r = fzfs.run("plan", src, "-c", os.path.join(src, ckpts[-1]))
    assert r.returncode != 0 and "zero_to_fp32.py" in r.stderr, r.stderr


def test_newest_fsdp_sharded_checkpoint_skipped_with_a_warning(fzfs, trainer_runs, tmp_path):
    src = str(tmp_path / "out")
    shutil.copytree(trainer_runs.src("trainer-st"), src)
    ckpts = sorted((d for d in os.listdir(src) if d.startswith("checkpoint-")),
                   key=lambda d: int(d.split("-")[1]))
    make_sharded("fsdp", os.path.join(src, ckpts[-1]))
    r = fzfs.run("plan", src, "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    skipped = {k["name"]: k["why"] for k in plan["checkpoint"]["skipped"]}
    assert "FSDP sharded state dict" in skipped[ckpts[-1]], skipped
    assert "accelerate merge-weights" in skipped[ckpts[-1]], skipped
    assert "WARNING" in r.stderr and ckpts[-1] in r.stderr and "FSDP" in r.stderr, r.stderr
