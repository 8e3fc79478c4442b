"""Session fixtures for the fzfs integration tests.

- The binary: $FZFS_BIN, default <repo>/build/fzfs.
- Training output directories: generated once per session by tests/fixtures/make_runs.py
  into a temporary directory (runs.src(name), runs.info(name)).
- fzfs runs with HOME / XDG dirs pointing into the session's temporary directory, so
  user presets and caches of the machine never leak in.
- `materialized(case_or_run, opts)` runs `fzfs materialize` once per (run, options)
  and caches the result for every test that asks for the same thing.
"""

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

_SESSION_TMP = tempfile.mkdtemp(prefix="fzfs-it-")
atexit.register(shutil.rmtree, _SESSION_TMP, True)
os.environ["HF_HOME"] = os.path.join(_SESSION_TMP, "hf-home")  # trust_remote_code module cache
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

sys.path.insert(0, os.path.dirname(__file__))
import finalize_ref  # noqa: E402

REPO = finalize_ref.REPO
EXAMPLES = os.path.join(REPO, "examples")
MAKE_RUNS = os.path.join(REPO, "tests", "fixtures", "make_runs.py")
FZFS_BIN = os.environ.get("FZFS_BIN", os.path.join(REPO, "build", "fzfs"))
# Optional sanitizer build (scripts/test.sh sets it): the refusal and corrupt-input tests
# run against it too, and any ASan/UBSan/LSan report fails them.
FZFS_ASAN_BIN = os.environ.get("FZFS_ASAN_BIN")
SANITIZER_ENV = {"ASAN_OPTIONS": "exitcode=86:detect_leaks=1:abort_on_error=0",
                 "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87",
                 "LSAN_OPTIONS": "exitcode=88"}
# Optional ThreadSanitizer build (scripts/test.sh sets it): the mount tests that run the
# daemon's threads (concurrent reads, compute pool, read-ahead, cache writer, source
# watcher, passthrough) run against it too, and a report in the daemon's log fails them.
# The forked daemon inherits TSAN_OPTIONS and writes its reports to its stderr, the log.
FZFS_TSAN_BIN = os.environ.get("FZFS_TSAN_BIN")
TSAN_ENV = {"TSAN_OPTIONS": "halt_on_error=0:exitcode=66:second_deadlock_stack=1:"
                            "suppressions=" + os.path.join(REPO, "tests", "tsan.supp")}
SANITIZER_REPORT = re.compile(r"AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error:")
TIMEOUT = 120

CHATML_YAML = os.path.join(EXAMPLES, "add_tokens", "chatml.yaml")
CHATML_JINJA = os.path.join(EXAMPLES, "chat_templates", "chatml.jinja")

# Files the tests write for option values (placeholders in case option lists).
RICH_YAML = """\
# every kind of entry: a reassigned role (its init is ignored: copy of the old row),
# a role that was missing (its init is used), specials, regular tokens
eos_token: {token: "<|eot|>", init: zero}
pad_token: {token: "<|pad|>", init: "copy:5"}
unk_token: {token: "<|UNK|>"}
special_tokens:
  - "<|im_start|>"
  - "<|tool|>"
regular_tokens:
  - "fzfsword"
  - "qqzzxx"
"""
BEAM_PRESET = {"num_beams": 4, "early_stopping": True, "length_penalty": 1.0,
               "no_repeat_ngram_size": 3, "name": "beam search", "stream": False}
HOME_PRESET_FZFS = {"max_tokens": 64, "top_k": 20, "seed": 5}
HOME_PRESET_FORGATHER_SHADOWED = {"max_tokens": 999, "temperature": 1.5}
HOME_PRESET_FORGATHER_ONLY = {"max_tokens": 16, "repetition_penalty": 1.2, "do_sample": False}


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class Runs:
    def __init__(self, out):
        self.out = out
        self.refdir = os.path.join(out, "reference")

    def src(self, name):
        return os.path.join(self.out, name)

    def info(self, name):
        return finalize_ref.load_info(self.refdir, name)


class Fzfs:
    def __init__(self, binary, home, extra_env=None):
        self.binary = binary
        self.home = home
        env = dict(os.environ)
        env.update({"HOME": home, "XDG_CONFIG_HOME": os.path.join(home, ".config"),
                    "XDG_CACHE_HOME": os.path.join(home, ".cache"), "LC_ALL": "C"})
        env.update(extra_env or {})
        self.env = env

    def run(self, *args, timeout=TIMEOUT, cwd=None):
        cmd = [self.binary] + [str(a) for a in args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                  timeout=timeout, cwd=cwd)
        except FileNotFoundError as e:
            pytest.fail(f"fzfs binary not found at {self.binary} ({e}); set FZFS_BIN")
        except subprocess.TimeoutExpired:
            pytest.fail(f"fzfs hung: {' '.join(cmd)} did not finish within {timeout}s")


@pytest.fixture(scope="session")
def session_tmp():
    yield _SESSION_TMP
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def runs(session_tmp):
    out = os.path.join(session_tmp, "runs")
    subprocess.run([sys.executable, MAKE_RUNS, out], check=True, capture_output=True)
    return Runs(out)


@pytest.fixture(scope="session")
def home(session_tmp):
    h = os.path.join(session_tmp, "home")
    os.makedirs(h, exist_ok=True)
    _write(os.path.join(h, ".config", "fzfs", "generation_config", "homepreset.json"),
           json.dumps(HOME_PRESET_FZFS))
    _write(os.path.join(h, ".config", "forgather", "generation_config", "homepreset.json"),
           json.dumps(HOME_PRESET_FORGATHER_SHADOWED))
    _write(os.path.join(h, ".config", "forgather", "generation_config", "fgpreset.json"),
           json.dumps(HOME_PRESET_FORGATHER_ONLY))
    return h


@pytest.fixture(scope="session")
def inputs(session_tmp):
    """Files passed as option values."""
    d = os.path.join(session_tmp, "inputs")
    os.makedirs(d, exist_ok=True)
    paths = {"YAML_RICH": os.path.join(d, "rich.yaml"),
             "PRESET_FILE": os.path.join(d, "beam-preset.json")}
    _write(paths["YAML_RICH"], RICH_YAML)
    _write(paths["PRESET_FILE"], json.dumps(BEAM_PRESET, indent=1))
    paths["EX"] = EXAMPLES
    return paths


@pytest.fixture(scope="session")
def fzfs(home):
    return Fzfs(FZFS_BIN, home)


def builds(*sanitizers):
    """"release", then those of "asan", "tsan" whose binary is set: a fixture's params."""
    have = {"asan": FZFS_ASAN_BIN, "tsan": FZFS_TSAN_BIN}
    return ["release"] + [s for s in sanitizers if have[s]]


def build_fzfs(build, home):
    """Fzfs for one of builds(): the release binary, or a sanitizer build with its options."""
    if build == "release":
        return Fzfs(FZFS_BIN, home)
    binary, env, var = {"asan": (FZFS_ASAN_BIN, SANITIZER_ENV, "FZFS_ASAN_BIN"),
                        "tsan": (FZFS_TSAN_BIN, TSAN_ENV, "FZFS_TSAN_BIN")}[build]
    assert os.access(binary, os.X_OK), f"{var}={binary} is not executable"
    return Fzfs(binary, home, env)


@pytest.fixture
def fz(request, home):
    """The build a test mounts with (test_mount.py's mounter): release, or one of builds()
    when the test parametrizes fz (indirect=True) or a module overrides this fixture."""
    return build_fzfs(getattr(request, "param", "release"), home)


class Result:
    def __init__(self, run, opts, dest, proc, exp):
        self.run, self.opts, self.dest, self.proc, self.exp = run, opts, dest, proc, exp

    def check_ok(self):
        p = self.proc
        assert p.returncode == 0, (
            f"fzfs materialize {self.run} {' '.join(self.opts)} exited {p.returncode}\n"
            f"stderr:\n{p.stderr[-3000:]}")
        assert os.path.isdir(self.dest), f"exit 0 but {self.dest} missing"


def expand(opts, runs, run, inputs):
    out = []
    for a in opts:
        a = a.replace("{SRC}", runs.src(run))
        for k, v in inputs.items():
            a = a.replace("{%s}" % k, v)
        out.append(a)
    return out


@pytest.fixture(scope="session")
def materialized(fzfs, runs, inputs, session_tmp, home):
    cache = {}
    counter = [0]

    def get(run, opts=()):
        opts = expand(list(opts), runs, run, inputs)
        key = (run, tuple(opts))
        if key not in cache:
            counter[0] += 1
            parent = os.path.join(session_tmp, "dests", "d%03d" % counter[0])
            os.makedirs(parent)
            dest = os.path.join(parent, "%s-out%03d" % (run, counter[0]))
            proc = fzfs.run("materialize", runs.src(run), dest, *opts)
            if proc.returncode == 0 and "--dry-run" not in opts:  # every DEST passes verify
                v = fzfs.run("verify", dest)
                assert v.returncode == 0, f"fzfs verify {dest}:\n{v.stdout}{v.stderr}"
            exp = finalize_ref.expectation(runs.src(run), runs.info(run), opts, home)
            cache[key] = Result(run, opts, dest, proc, exp)
        return cache[key]

    return get


def tree_snapshot(root):
    """{relpath: ('d'|'l'|'f', target or bytes)} for comparing trees byte for byte."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                snap[rel] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                snap[rel] = ("d", None)
            else:
                with open(p, "rb") as f:
                    snap[rel] = ("f", f.read())
    return snap
