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
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.swift_deploy import Server, swift_deploy

from vlqc.inference.generation import Sampling
from vlqc.inference.prompts import VERDICT_SYSTEM
from vlqc.stage_b.backends import HFBackend, OpenAIBackend
from vlqc.stage_b.rollout import BackendError

pytestmark = pytest.mark.e2e

SERVED_NAME = "vlqc-tiny"
GREEDY = Sampling(max_new_tokens=8)
PROMPTS = [
    (VERDICT_SYSTEM, "任务: 挡风板安装检查\n重点: 挡风板\nImage1: 无关图片"),
    ("你是质检员。", "只有文字的问题，请仔细回答。"),
    ("你是质检员。", "hello"),
]


@pytest.fixture(scope="module")
def deployment(tiny_dir, tmp_path_factory) -> Iterator[Server]:
    with swift_deploy(tiny_dir, tmp_path_factory.mktemp("deploy"), SERVED_NAME) as served:
        yield served


def server_prompt_tokens(served: Server, system: str, user: str) -> int:
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


def client(served: Server, tiny_dir: Path, **settings) -> OpenAIBackend:
    options = {"timeout_s": 60.0, "max_retries": 1, "concurrency": 2, **settings}
    return OpenAIBackend(served.base_url, SERVED_NAME, tokenizer_dir=tiny_dir, **options)


def test_greedy_answers_and_token_counts_match_hf(deployment, tiny_dir):
    remote = client(deployment, tiny_dir)
    answers = remote.chat(PROMPTS, GREEDY)
    assert all(isinstance(a, str) and a for a in answers), answers
    local = HFBackend(tiny_dir, batch_size=len(PROMPTS))
    assert answers == local.chat(PROMPTS, GREEDY)
    assert [server_prompt_tokens(deployment, *p) for p in PROMPTS] == [remote.count_tokens(*p) for p in PROMPTS]


def test_repetition_penalty_reaches_the_server_through_extra_body(deployment, tiny_dir):
    penalised = Sampling(max_new_tokens=8, repetition_penalty=2.0)
    answers = client(deployment, tiny_dir).chat(PROMPTS, penalised)
    assert answers == HFBackend(tiny_dir, batch_size=len(PROMPTS)).chat(PROMPTS, penalised)
    assert answers != client(deployment, tiny_dir).chat(PROMPTS, GREEDY), "the penalty changed what the server said"


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
