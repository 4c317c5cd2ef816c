"""OpenAIBackend against a real `swift deploy` server on the tiny model (CPU, transformers engine).

The server renders text-only prompts with ms-swift's own `qwen3_vl` template, not the checkpoint's
jinja chat template; for a system + user prompt both give the same tokens (ChatML, no think block),
so greedy answers must equal HFBackend's and the server's prompt token count must equal ours.
One known difference: ms-swift drops an EMPTY system message (`if not system` in its template), where
the jinja template renders an empty system block. Stage-B always sends VERDICT_SYSTEM, so the
prompts here all have a system text.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import pytest
from test_stage_b_backends import tiny_dir  # noqa: F401 (a fixture; a shared one belongs in conftest)

from vlqc.generation import Sampling
from vlqc.prompts import VERDICT_SYSTEM
from vlqc.stage_b.backends import HFBackend, OpenAIBackend
from vlqc.stage_b.rollout import BackendError

pytestmark = pytest.mark.e2e

SERVED_NAME = "vlqc-tiny"
STARTUP_DEADLINE_S = 150  # importing ms-swift and loading the model take ~25 s on 2 idle cores
GREEDY = Sampling(max_new_tokens=8)
PROMPTS = [
    (VERDICT_SYSTEM, "任务: 挡风板安装检查\n重点: 挡风板\nImage1: 无关图片"),
    ("你是质检员。", "只有文字的问题，请仔细回答。"),
    ("你是质检员。", "hello"),
]


@dataclass
class Deployment:
    process: subprocess.Popen
    base_url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def log_tail(self) -> str:
        return self.log_text()[-3000:]

    def completed_requests(self) -> int:
        return self.log_text().count('"POST /v1/chat/completions HTTP/1.1" 200')

    def kill(self) -> None:
        """SIGKILL the whole process group: the CLI's children included."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return  # already gone
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def deployment(tiny_dir, tmp_path_factory) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("deploy")
    port = free_port()
    options = {
        "--model": str(tiny_dir),
        "--model_type": "qwen3_vl",  # a local folder: ms-swift cannot guess the type from a hub id
        "--infer_backend": "transformers",  # `pt` is the deprecated 3.x name
        "--host": "127.0.0.1",
        "--port": str(port),
        "--served_model_name": SERVED_NAME,
    }
    command = [str(Path(sys.executable).with_name("swift")), "deploy", *chain.from_iterable(options.items())]
    log = workdir / "swift_deploy.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    served = Deployment(process, f"http://127.0.0.1:{port}/v1", log)
    try:
        wait_until_serving(served)
        yield served
    finally:
        served.kill()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(served: Deployment) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            pytest.fail(f"swift deploy exited with {served.process.returncode}:\n{served.log_tail()}")
        try:
            with urllib.request.urlopen(f"{served.base_url}/models", timeout=2) as response:
                if SERVED_NAME in response.read().decode():
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)  # not listening yet
    pytest.fail(f"swift deploy did not serve /v1/models within {STARTUP_DEADLINE_S} s:\n{served.log_tail()}")


def server_prompt_tokens(served: Deployment, system: str, user: str) -> int:
    body = {
        "model": SERVED_NAME,
        "max_tokens": 1,
        "temperature": 0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }
    request = urllib.request.Request(
        f"{served.base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["usage"]["prompt_tokens"]


def client(served: Deployment, tiny_dir: Path, **settings) -> OpenAIBackend:
    options = {"timeout_s": 60.0, "max_retries": 1, "backoff_s": 0.1, "concurrency": 2, **settings}
    return OpenAIBackend(served.base_url, SERVED_NAME, tokenizer_dir=tiny_dir, **options)


def test_greedy_answers_and_token_counts_match_hf(deployment, tiny_dir):
    remote = client(deployment, tiny_dir)
    answers = remote.chat(PROMPTS, GREEDY)
    assert all(isinstance(a, str) and a for a in answers), answers
    local = HFBackend(tiny_dir)
    assert answers == local.chat(PROMPTS, GREEDY)
    assert [server_prompt_tokens(deployment, *p) for p in PROMPTS] == [remote.count_tokens(*p) for p in PROMPTS]


def test_killed_server_turns_the_remaining_prompts_into_errors(deployment, tiny_dir):
    prompts = [("你是质检员。", f"第{n}张工单，请给出结论。") for n in range(8)]
    remote = client(deployment, tiny_dir, concurrency=1)
    answers: list[str | BackendError] = []
    run = threading.Thread(target=lambda: answers.extend(remote.chat(prompts, Sampling(max_new_tokens=24))))
    already = deployment.completed_requests()
    run.start()
    while deployment.completed_requests() == already and run.is_alive():
        time.sleep(0.05)
    deployment.kill()
    run.join(timeout=60)
    assert not run.is_alive() and len(answers) == len(prompts)
    served = [a for a in answers if isinstance(a, str)]
    failed = [a for a in answers if isinstance(a, BackendError)]
    assert served and failed, answers
    assert answers == served + failed, "one at a time: answered prompts first, then only failures"
    assert {error.code for error in failed} == {"backend_unavailable"}
