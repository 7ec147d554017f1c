"""A real local Ray cluster for tests: ``ray start --head`` on 127.0.0.1, killed as a whole.

Ray is found through one setting: it is importable (the extra ``ttsgym[ray]``, which ``make test``
installs). Without it the tests skip with the reason; ``TTSGYM_REQUIRE_RAY=1`` (CI) turns the
skip into a failure. The head runs in its own process group with its own short temp dir (Ray's
socket paths must stay under 107 bytes), and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every
Ray port on loopback (otherwise Ray swaps 127.0.0.1 for the machine's public address).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import command_lines

# Loopback only, no usage reports, and no token auth: Ray 2.5x turns token auth on for `ray start`
# whenever ~/.ray/auth_token exists (any earlier local ray.init() writes one), and a driver then
# needs RAY_AUTH_MODE=token too; a loopback test cluster is the same either way, so off for both.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "disabled"}


def need_ray() -> None:
    if importlib.util.find_spec("ray") is not None:
        return
    reason = "Ray is not installed (pip install -e '.[ray]'; `make test` installs it)"
    if os.environ.get("TTSGYM_REQUIRE_RAY") == "1":
        pytest.fail(reason + "; TTSGYM_REQUIRE_RAY=1 forbids skipping")
    pytest.skip(reason)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str
    pgid: int
    temp_dir: Path

    def worker_pids(self, title: str) -> list[int]:
        """Ray worker processes whose title starts with ``title`` (e.g. ``ray::ttsgym.eval``)."""
        return [pid for pid, cmd in command_lines() if cmd.startswith(title)]

    def kill(self) -> None:
        """SIGKILL the head's processes (GCS, raylet, ...); its workers exit when their raylet goes."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self._alive():
            time.sleep(0.2)

    def _alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True


def start_cluster(num_cpus: int = 2) -> Cluster:
    need_ray()
    ray_bin = Path(sys.executable).with_name("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="ttsray-", dir="/tmp"))
    port = free_port()
    for key, value in LOOPBACK_ENV.items():  # this process is a driver of the cluster too
        os.environ.setdefault(key, value)
    env = {**os.environ, **LOOPBACK_ENV}
    cmd = [str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", str(num_cpus), "--include-dashboard=false", "--disable-usage-stats",
           "--temp-dir", str(temp_dir)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"ray start failed ({proc.returncode}):\n{out[-3000:]}")
    return Cluster(address=f"127.0.0.1:{port}", pgid=proc.pid, temp_dir=temp_dir)


def stop_cluster(cluster: Cluster) -> None:
    cluster.kill()
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
