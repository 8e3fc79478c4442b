"""A ~400 MB model: fzfs streams it (peak RSS bounded, not proportional to the model),
and a SIGTERM / SIGINT / SIGHUP in the middle of writing leaves neither DEST nor a temporary
sibling behind; what a SIGKILL leaves is removed by the next materialize."""

import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from conftest import MAKE_RUNS

SIZE_MB = 400


@pytest.fixture(scope="module")
def big(session_tmp):
    out = os.path.join(session_tmp, "big-runs")
    subprocess.run([sys.executable, MAKE_RUNS, out, "--size-mb", str(SIZE_MB)], check=True,
                   capture_output=True)
    return os.path.join(out, "big")


WRAPPER = r"""
import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "RC", rc, file=sys.stderr)
"""


@pytest.mark.parametrize("opts", [["--dtype", "bfloat16"], ["--safetensors"]], ids=["bf16-bin", "f32-st"])
def test_peak_rss_is_bounded(fzfs, big, tmp_path, opts):
    dest = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", WRAPPER, fzfs.binary, "materialize", big, str(dest)] + opts,
                       capture_output=True, text=True, env=fzfs.env, timeout=300)
    line = [l for l in p.stderr.splitlines() if l.startswith("MAXRSS_KB")][-1].split()
    rss_mb, rc = int(line[1]) / 1024, int(line[3])
    assert rc == 0, p.stderr[-2000:]
    # bounded by workers x chunk (4 MiB) plus metadata, whatever the model size
    limit = 64 + 8 * (os.cpu_count() or 1)
    assert rss_mb < limit, f"peak RSS {rss_mb:.0f} MB (limit {limit}) for a {SIZE_MB} MB model: not streaming"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"])
def test_signal_mid_write_leaves_nothing(fzfs, big, tmp_path, sig):
    interrupted = 0
    for attempt in range(4):
        parent = tmp_path / f"try{attempt}"
        parent.mkdir()
        dest = parent / "dest"
        proc = subprocess.Popen([fzfs.binary, "materialize", big, str(dest), "--dtype", "float16"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=fzfs.env)
        t0 = time.monotonic()
        sent = False
        while proc.poll() is None and time.monotonic() - t0 < 60:
            names = os.listdir(parent)
            if names and names != ["dest"]:  # the temporary sibling exists: writing is under way
                time.sleep(0.02 * attempt)
                proc.send_signal(sig)
                sent = True
                break
            time.sleep(0.0005)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"fzfs did not exit within 60s of {sig.name}")
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        names = sorted(os.listdir(parent))
        if proc.returncode == 0:
            assert names == ["dest"], names  # finished before the signal landed: complete DEST only
            continue
        interrupted += 1
        assert sent
        if sig == signal.SIGKILL:
            # cannot be caught: the temporary sibling stays until the next materialize to
            # DEST, which removes it (its process is gone), says so, and writes DEST
            assert names == [f".dest.fzfs-tmp-{proc.pid}"], names
            p = fzfs.run("materialize", big, str(dest), "--dtype", "float16", timeout=300)
            assert p.returncode == 0, p.stderr[-2000:]
            assert sorted(os.listdir(parent)) == ["dest"]
            removed = [l for l in p.stderr.splitlines() if "removed" in l]
            assert len(removed) == 1 and names[0] in removed[0] and str(proc.pid) in removed[0], p.stderr
            continue
        assert names == [], f"after {sig.name}: left {names} (exit {proc.returncode})\n{err[-1000:]}"
        # the shell convention: 128 + the signal (130 for Ctrl-C), with the reason on stderr
        assert proc.returncode == 128 + sig, (proc.returncode, err[-1000:])
        assert "interrupted by signal" in err
    assert interrupted, f"never managed to interrupt fzfs mid-write in 4 attempts ({SIZE_MB} MB model)"

