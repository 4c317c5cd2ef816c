"""Stage-B chat backends: OpenAIBackend against a scripted local server, HFBackend on the tiny model.

The scripted server is a real HTTP server on 127.0.0.1, so retries, timeouts and hang-ups go through
the `openai` client's own transport and retry loop, as they do against a real server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from vlqc.errors import VlqcError
from vlqc.inference.generation import Request, Sampling
from vlqc.inference.prompts import VERDICT_SYSTEM
from vlqc.stage_b.backends import HFBackend, OpenAIBackend, make_backend
from vlqc.stage_b.engine import backend_config, stage_b_config
from vlqc.stage_b.rollout import BackendError


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0  # seconds to wait before answering
    headers: dict[str, str] = field(default_factory=dict)
    hang_up: bool = False  # close the connection without answering


Script = Callable[[dict[str, Any]], Reply]

GREEDY = Sampling(max_new_tokens=6)
PROMPTS = [("你是质检员。", "第一张工单"), ("你是质检员。", "第二张工单"), ("你是质检员。", "第三张工单")]
# Asks the client to retry after 10 ms instead of its own backoff, which starts at 0.5 s.
SOON = {"Retry-After-Ms": "10"}


def completion(text: str | None) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


def echo(body: dict[str, Any], delay: float = 0.0) -> Reply:
    return Reply(body=completion("echo:" + body["messages"][1]["content"]), delay=delay)


def status(code: int, headers: dict[str, str] | None = None) -> Script:
    return lambda body: Reply(code, b'{"message": "scripted"}', headers=dict(SOON if headers is None else headers))


def in_order(*scripts: Script) -> Script:
    """Each request gets the next script; the last one answers all the rest."""
    queue = list(scripts)
    lock = threading.Lock()

    def script(body: dict[str, Any]) -> Reply:
        with lock:
            current = queue.pop(0) if len(queue) > 1 else queue[0]
        return current(body)

    return script


class ScriptedServer(ThreadingHTTPServer):
    """A chat-completions endpoint on 127.0.0.1 that answers with `script` and records what it saw."""

    # A handler still sleeping for a client that timed out must not hold up shutdown.
    daemon_threads = True
    block_on_close = False

    def __init__(self, script: Script):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # header names in lower case
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.active = self.max_active = 0
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def do_POST(self) -> None:
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.arrivals.append(time.monotonic())
            server.bodies.append(body)
            server.headers.append({name.lower(): value for name, value in self.headers.items()})
            server.active += 1
            server.max_active = max(server.max_active, server.active)
        reply = server.script(body)
        time.sleep(reply.delay)
        # Done before answering: once answered, the client's next request may arrive before a later decrement.
        with server.lock:
            server.active -= 1
        if reply.hang_up:
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.headers.pop("Content-Type", "application/json"))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except ConnectionError:
            pass  # the client timed out and hung up: nobody is left to answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest output stays readable."""


@pytest.fixture
def serve() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def client(url: str, tmp_path: Path, **settings: Any) -> OpenAIBackend:
    options = {"timeout_s": 5.0, "max_retries": 2, "concurrency": 2, **settings}
    return OpenAIBackend(url, "tiny", tokenizer_dir=tmp_path, **options)


def assert_error(result: str | BackendError, code: str) -> None:
    assert isinstance(result, BackendError), result
    assert result.code == code, result


# --- OpenAIBackend: answers, retries, errors -----------------------------------------------------


def test_answers_come_back_in_prompt_order(serve, tmp_path):
    server = serve(echo)
    assert client(server.base_url, tmp_path).chat(PROMPTS, GREEDY) == [f"echo:{user}" for _, user in PROMPTS]


def test_429_and_5xx_are_retried_with_the_same_request(serve, tmp_path):
    server = serve(in_order(status(429), status(503), status(500), echo))
    answers = client(server.base_url, tmp_path, max_retries=3).chat(PROMPTS[:1], GREEDY)
    assert answers == ["echo:第一张工单"]
    assert len(server.bodies) == 4 and all(body == server.bodies[0] for body in server.bodies)


def test_a_retry_waits_as_long_as_the_server_asks(serve, tmp_path):
    server = serve(in_order(status(503, {"Retry-After": "0.6"}), echo))
    assert client(server.base_url, tmp_path).chat(PROMPTS[:1], GREEDY) == ["echo:第一张工单"]
    first, second = server.arrivals
    assert second - first >= 0.6, "longer than the client's own first backoff (at most 0.5 s)"


def test_500_after_the_last_retry_is_an_error_for_that_prompt(serve, tmp_path):
    server = serve(status(500))
    [answer] = client(server.base_url, tmp_path, max_retries=2).chat(PROMPTS[:1], GREEDY)
    assert_error(answer, "http_500")
    assert "scripted" in answer.message, "the server's message is quoted"
    assert len(server.bodies) == 3


def test_400_is_not_retried(serve, tmp_path):
    server = serve(status(400))
    [answer] = client(server.base_url, tmp_path, max_retries=3).chat(PROMPTS[:1], GREEDY)
    assert_error(answer, "http_400")
    assert len(server.bodies) == 1


def test_one_failing_prompt_leaves_the_others_alone(serve, tmp_path):
    def script(body: dict[str, Any]) -> Reply:
        return status(422)(body) if body["messages"][1]["content"] == "第二张工单" else echo(body)

    answers = client(serve(script).base_url, tmp_path).chat(PROMPTS, GREEDY)
    assert answers[0] == "echo:第一张工单" and answers[2] == "echo:第三张工单"
    assert_error(answers[1], "http_422")


def test_timeout_is_retried_then_backend_unavailable(serve, tmp_path):
    server = serve(lambda body: echo(body, delay=2.0))
    [answer] = client(server.base_url, tmp_path, timeout_s=0.2, max_retries=1).chat(PROMPTS[:1], GREEDY)
    assert_error(answer, "backend_unavailable")
    assert "timed out" in answer.message
    assert len(server.bodies) == 2


def test_a_hang_up_is_retried_and_a_later_answer_counts(serve, tmp_path):
    server = serve(in_order(lambda body: Reply(hang_up=True), echo))
    assert client(server.base_url, tmp_path, max_retries=1).chat(PROMPTS[:1], GREEDY) == ["echo:第一张工单"]
    assert len(server.bodies) == 2


def test_hang_ups_on_every_attempt_are_backend_unavailable(serve, tmp_path):
    server = serve(lambda body: Reply(hang_up=True))
    [answer] = client(server.base_url, tmp_path, max_retries=1).chat(PROMPTS[:1], GREEDY)
    assert_error(answer, "backend_unavailable")
    assert len(server.bodies) == 2


def test_connection_refused_is_backend_unavailable(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    answers = client(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=0).chat(PROMPTS[:2], GREEDY)
    for answer in answers:
        assert_error(answer, "backend_unavailable")
        assert f"127.0.0.1:{port}" in answer.message


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"<html>not json</html>"),
        Reply(body=b"<html>not json</html>", headers={"Content-Type": "text/html"}),
        Reply(body=b'{"choices": []}'),
        Reply(body=b'{"error": "x"}'),
        Reply(body=b'{"choices": [1]}'),
        Reply(body=completion(None)),
        Reply(body=b"[1, 2]"),
    ],
    ids=["not-json", "html", "no-choices", "no-choices-key", "choice-not-object", "null-content", "json-list"],
)
def test_unreadable_answer_is_bad_response_without_retry(serve, tmp_path, reply):
    server = serve(lambda body: Reply(reply.status, reply.body, headers=dict(reply.headers)))
    [answer] = client(server.base_url, tmp_path).chat(PROMPTS[:1], GREEDY)
    assert_error(answer, "bad_response")
    assert len(server.bodies) == 1


def test_concurrency_limit_is_respected_and_reached(serve, tmp_path):
    server = serve(lambda body: echo(body, delay=0.3))
    prompts = [("s", f"u{n}") for n in range(7)]
    answers = client(server.base_url, tmp_path, concurrency=3).chat(prompts, GREEDY)
    assert answers == [f"echo:u{n}" for n in range(7)]
    assert server.max_active == 3


# --- OpenAIBackend: request contents --------------------------------------------------------------


def test_request_body_carries_the_prompt_and_sampling(serve, tmp_path):
    server = serve(echo)
    sampling = Sampling(max_new_tokens=32, temperature=0.7, top_p=0.9, seed=11)
    client(server.base_url, tmp_path).chat(PROMPTS[:1], sampling)
    assert server.bodies == [
        {
            "model": "tiny",
            "messages": [{"role": "system", "content": "你是质检员。"}, {"role": "user", "content": "第一张工单"}],
            "max_tokens": 32,
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 11,
        }
    ]


def test_repetition_penalty_is_sent_only_when_it_is_not_1(serve, tmp_path):
    server = serve(echo)
    backend = client(server.base_url, tmp_path)
    backend.chat(PROMPTS[:1], Sampling(repetition_penalty=1.05))
    backend.chat(PROMPTS[:1], Sampling(repetition_penalty=1.0))
    assert server.bodies[0]["repetition_penalty"] == 1.05, "a top-level body field, as ms-swift and vLLM read it"
    assert "repetition_penalty" not in server.bodies[1] and "seed" not in server.bodies[1]


def test_api_key_comes_from_the_named_variable(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("VLQC_TEST_KEY", "sk-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ambient")
    server = serve(echo)
    client(server.base_url, tmp_path, api_key_env="VLQC_TEST_KEY").chat(PROMPTS[:1], GREEDY)
    assert server.headers[0]["authorization"] == "Bearer sk-secret"


def test_without_api_key_env_no_key_is_sent_not_even_openai_api_key(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ambient")
    server = serve(echo)
    assert client(server.base_url, tmp_path).chat(PROMPTS[:1], GREEDY) == ["echo:第一张工单"]
    assert "authorization" not in server.headers[0]


def test_missing_api_key_variable_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("VLQC_TEST_KEY", raising=False)
    with pytest.raises(VlqcError, match="VLQC_TEST_KEY"):
        client("http://127.0.0.1:9/v1", tmp_path, api_key_env="VLQC_TEST_KEY")


# --- make_backend ---------------------------------------------------------------------------------


def test_make_backend_builds_an_openai_backend(tmp_path):
    backend = make_backend(
        {
            "backend": "openai",
            "base_url": "http://127.0.0.1:8000/v1/",
            "model": "m",
            "tokenizer_dir": str(tmp_path),
            "concurrency": 5,
            "max_retries": 1,
            "timeout_s": 7.5,
        }
    )
    assert isinstance(backend, OpenAIBackend)
    assert str(backend.client.base_url) == "http://127.0.0.1:8000/v1/"
    assert (backend.concurrency, backend.client.max_retries, backend.client.timeout) == (5, 1, 7.5)


def test_the_config_section_builds_an_openai_backend_with_its_defaults(tmp_path):
    """Every key of `stage_b.openai` in the schema is an argument of OpenAIBackend, and the defaults arrive."""
    section = stage_b_config({"backend": "openai"})
    backend = make_backend(backend_config(section, tmp_path))
    defaults = section["openai"]
    assert str(backend.client.base_url) == defaults["base_url"].rstrip("/") + "/" and backend.model == defaults["model"]
    assert (backend.client.timeout, backend.client.max_retries) == (defaults["timeout_s"], defaults["max_retries"])
    assert backend.concurrency == defaults["concurrency"]


@pytest.mark.parametrize(
    "config, problem",
    [
        ({"backend": "vllm"}, "backend must be one of hf, openai"),
        ({"model": "m"}, "backend must be one of"),
        ({"backend": "openai", "base_url": "u", "model": "m", "tokenizer_dir": ".", "colour": 1}, "colour"),
        # The client has its own backoff; the key that set the old one is refused by name.
        ({"backend": "openai", "base_url": "u", "model": "m", "tokenizer_dir": ".", "backoff_s": 1}, "backoff_s"),
        ({"backend": "openai", "base_url": "u", "model": "m"}, "tokenizer_dir"),
        ({"backend": "openai", "base_url": "u", "model": "m", "tokenizer_dir": ".", "max_retries": -1}, "max_retries"),
        ({"backend": "hf"}, "checkpoint"),
    ],
)
def test_make_backend_names_what_is_wrong(config, problem):
    with pytest.raises(VlqcError, match=problem):
        make_backend(config)


# --- HFBackend on the tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf(tiny_dir) -> HFBackend:
    return HFBackend(tiny_dir, batch_size=2)


MIXED_LENGTHS = [
    (VERDICT_SYSTEM, "任务: 挡风板安装检查\nImage1: 机柜"),
    ("你是质检员。", "只有文字的问题，请仔细回答。" * 4),
    ("", "hello"),
]


def test_hf_answers_equal_one_generate_call(hf):
    answers = hf.chat(MIXED_LENGTHS, GREEDY)
    assert answers == hf.generator.generate([Request(s, u) for s, u in MIXED_LENGTHS], GREEDY)
    assert len(set(answers)) == 3 and all(answers), "three different prompts, three different answers"


def test_hf_prompt_the_template_refuses_fails_alone(hf):
    prompts = [MIXED_LENGTHS[0], ("s", "<image>文字里混进了图片标记")]
    good, bad = hf.chat(prompts, GREEDY)
    assert good == hf.chat(prompts[:1], GREEDY)[0]
    assert_error(bad, "bad_prompt")


def test_hf_count_tokens_includes_the_template_without_thinking(hf):
    tokenizer = hf.generator.processor.tokenizer
    for system, user in MIXED_LENGTHS:
        rendered = (
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        )
        assert hf.count_tokens(system, user) == len(tokenizer(rendered)["input_ids"])


def test_openai_counts_tokens_as_hf_does(hf, tiny_dir):
    remote = OpenAIBackend("http://127.0.0.1:9/v1", "tiny", tokenizer_dir=tiny_dir)
    assert [remote.count_tokens(*p) for p in MIXED_LENGTHS] == [hf.count_tokens(*p) for p in MIXED_LENGTHS]


def test_make_backend_builds_an_hf_backend(tiny_dir):
    backend = make_backend({"backend": "hf", "checkpoint": str(tiny_dir), "dtype": "bfloat16", "batch_size": 3})
    assert isinstance(backend, HFBackend) and backend.batch_size == 3
    assert backend.generator.model.dtype == torch.bfloat16
