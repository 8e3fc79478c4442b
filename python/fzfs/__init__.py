"""Python access to the fzfs command.

fzfs turns a training output directory into a release-ready HuggingFace model directory,
either as a FUSE mount (`mount`) or written for real (`materialize`). This module runs the
`fzfs` binary; it does not reimplement anything. The binary is `$FZFS_BIN` when set, else
`fzfs` on PATH.
"""

import contextlib
import json
import os
import shutil
import subprocess
import tempfile

__all__ = ["FzfsError", "binary", "mount", "plan", "materialize", "umount"]
__version__ = "0.1.0"


class FzfsError(RuntimeError):
    """A fzfs command failed. `returncode` is its exit status (1 error, 2 usage error),
    `stderr` its message, `cmd` the command line."""

    def __init__(self, cmd, returncode, stderr):
        self.cmd, self.returncode, self.stderr = cmd, returncode, stderr
        msg = stderr.strip() or f"exited with status {returncode}"
        super().__init__(f"fzfs {cmd[1] if len(cmd) > 1 else ''} failed: {msg}")


def binary():
    """Path of the fzfs binary used by this module."""
    b = os.environ.get("FZFS_BIN") or shutil.which("fzfs")
    if not b:
        raise FzfsError(["fzfs"], 127, "the fzfs binary was not found: install it (meson install) "
                        "or set FZFS_BIN to its path")
    return b


def _options(opts):
    """Keyword options to command-line arguments."""
    args = []
    for key, value in opts.items():
        if value is None or value is False:
            continue
        flag = "-c" if key == "checkpoint" else "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(str(v) for v in value)]
        else:
            args += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return args


def _run(args, timeout=None):
    cmd = [binary()] + args
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise FzfsError(cmd, p.returncode, p.stderr)
    return p


def plan(src, **opts):
    """What the finalized view of `src` contains and why (`fzfs plan --json`), as a dict."""
    p = _run(["plan", os.fspath(src), "--json"] + _options(opts))
    return json.loads(p.stdout)


def materialize(src, dest, **opts):
    """Write the finalized view of `src` into the new directory `dest` (atomically).
    Returns `dest`."""
    _run(["materialize", os.fspath(src), os.fspath(dest)] + _options(opts))
    return os.fspath(dest)


def umount(path):
    """Unmount an fzfs mount."""
    _run(["umount", os.fspath(path)])


@contextlib.contextmanager
def mount(src, mountpoint=None, **opts):
    """Mount the finalized view of `src` and yield the mount point; unmount on exit.

    Without `mountpoint`, a temporary directory is made and removed afterwards. The mount
    is ready when this yields (the command returns once the mount answers); a failure to
    mount raises FzfsError with the daemon's message."""
    made = mountpoint is None
    mnt = tempfile.mkdtemp(prefix="fzfs-") if made else os.fspath(mountpoint)
    try:
        _run(["mount", os.fspath(src), mnt] + _options(opts))
        try:
            yield mnt
        finally:
            umount(mnt)
    finally:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(mnt)
