"""`swift deploy` (or a server built on it) serving a checkpoint on 127.0.0.1, for the `openai` backend's and the
Stage-2 rollout server's tests and benchmarks.

    with swift_deploy(checkpoint, workdir) as server:
        OpenAIBackend(server.base_url, server.served_name, tokenizer_dir=checkpoint)

The server runs in a session of its own so that stopping it reaches the CLI's children too; it is
SIGKILLed (it holds no state worth a clean shutdown) when the block ends, whatever happened.
ms-swift's deploy rejects `--check_model` (a training-only flag), and needs `--model_type` for a
local folder because it cannot guess the type from a hub id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from vlqc.errors import VlqcError

STARTUP_DEADLINE_S = 150  # importing ms-swift and loading the model take ~25 s on 2 idle cores


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str  # ends in /v1, as an OpenAI client expects
    served_name: str
    log: Path
    startup_s: float = 0.0

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def log_tail(self) -> str:
        return self.log_text()[-3000:]

    def completed_requests(self) -> int:
        """Chat completions the server has answered with 200, by its access log."""
        return self.log_text().count('"POST /v1/chat/completions HTTP/1.1" 200')

    def serving(self) -> bool:
        """Whether the server lists our model; False while it is not listening yet."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return self.served_name in response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return  # already gone
        self.process.wait(timeout=30)


@contextmanager
def swift_deploy(
    checkpoint: Path,
    workdir: Path,
    served_name: str = "vlqc",
    max_batch_size: int | None = None,
    deadline_s: float = STARTUP_DEADLINE_S,
    module: str | None = None,
) -> Iterator[Server]:
    """A started server (VlqcError with its log tail if it exits or does not serve within the deadline).
    `module`: run `python -m <module>` with the same arguments instead of `swift deploy` (the Stage-2 rollout
    server, swift deploy with more routes)."""
    options = {
        "--model": str(checkpoint),
        "--model_type": "qwen3_vl",
        "--infer_backend": "transformers",
        "--host": "127.0.0.1",
        "--port": str(free_port()),
        "--served_model_name": served_name,
    }
    if max_batch_size is not None:
        options["--max_batch_size"] = str(max_batch_size)
    program = [sys.executable, "-m", module] if module else [str(Path(sys.executable).with_name("swift")), "deploy"]
    command = [*program, *chain.from_iterable(options.items())]
    log = workdir / "swift_deploy.log"
    started = time.perf_counter()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    server = Server(process, f"http://127.0.0.1:{options['--port']}/v1", served_name, log)
    try:
        _wait_until_serving(server, deadline_s)
        server.startup_s = time.perf_counter() - started
        yield server
    finally:
        server.kill()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(server: Server, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not server.serving():
        if server.process.poll() is not None:
            raise VlqcError(f"swift deploy exited with {server.process.returncode}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise VlqcError(f"swift deploy did not serve {server.base_url} in {deadline_s} s:\n{server.log_tail()}")
        time.sleep(0.5)
