"""Chat backends for Stage-B: the in-process transformers engine, or any OpenAI-compatible server.

Both answer text-only (system, user) prompts with one entry per prompt, in order (the `ChatBackend`
protocol of `vlqc.stage_b.rollout`). A prompt that gets no answer comes back as a `BackendError` in its
slot, so the caller records the failure for that ticket alone.

`OpenAIBackend` speaks `POST <base_url>/chat/completions` (`base_url` ends in `/v1`, as with the
OpenAI client) to vLLM, SGLang, `swift deploy` and the like. Such a server cannot count prompt tokens
for us, so it is given the checkpoint's tokenizer folder and counts locally, with the chat template
rendered the way `vlqc.inference.generation.Generator.encode` renders it (thinking off).
"""

from __future__ import annotations

import http.client
import inspect
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from time import sleep
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from vlqc.errors import VlqcError
from vlqc.inference.generation import Generator, Request, Sampling
from vlqc.inference.prompts import hf_messages
from vlqc.stage_b.rollout import BackendError, ChatBackend

BACKEND_UNAVAILABLE = "backend_unavailable"
BAD_RESPONSE = "bad_response"
BAD_PROMPT = "bad_prompt"
# How much of an error body a BackendError quotes.
ERROR_BODY_CHARS = 300


# --- in-process transformers --------------------------------------------------------------------


class HFBackend:
    """`vlqc.inference.generation.Generator` on text-only prompts, `batch_size` prompts per generate call."""

    def __init__(
        self, checkpoint: str | Path, device: str = "cpu", dtype: str | torch.dtype = "float32", batch_size: int = 8
    ):
        if batch_size < 1:
            raise VlqcError(f"batch_size must be >= 1, not {batch_size}")
        self.generator = Generator(checkpoint, device=device, dtype=_torch_dtype(dtype))
        self.batch_size = batch_size

    def chat(self, prompts: Sequence[tuple[str, str]], sampling: Sampling) -> list[str | BackendError]:
        answers: list[str | BackendError] = []
        for start in range(0, len(prompts), self.batch_size):
            answers += self._generate_batch(prompts[start : start + self.batch_size], sampling)
        return answers

    def count_tokens(self, system: str, user: str) -> int:
        return self.generator.encode([Request(system, user)])["input_ids"].shape[1]

    def _generate_batch(self, prompts: Sequence[tuple[str, str]], sampling: Sampling) -> list[str | BackendError]:
        try:
            return self.generator.generate([Request(s, u) for s, u in prompts], sampling)
        except VlqcError:
            # A prompt the template refuses (e.g. an `<image>` tag in a text-only prompt) must not
            # take its batch down: run the prompts alone so that only the bad one fails.
            return [self._generate_alone(prompt, sampling) for prompt in prompts]

    def _generate_alone(self, prompt: tuple[str, str], sampling: Sampling) -> str | BackendError:
        try:
            return self.generator.generate([Request(*prompt)], sampling)[0]
        except VlqcError as exc:
            return BackendError(BAD_PROMPT, str(exc))


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise VlqcError(f"dtype must name a torch dtype such as float32 or bfloat16, not {dtype!r}")
    return value


# --- OpenAI-compatible server -------------------------------------------------------------------


class _Retryable(Exception):
    """One attempt failed in a way that may pass on retry; `error` is what to report if none does."""

    def __init__(self, error: BackendError):
        super().__init__(str(error))
        self.error = error


class OpenAIBackend:
    """Chat completions over HTTP, `concurrency` requests at a time.

    Connection errors, timeouts, HTTP 429 and 5xx are retried `max_retries` times, waiting
    `backoff_s`, 2·`backoff_s`, 4·`backoff_s`, … in between; other 4xx answers and unreadable
    bodies are not. The API key, if any, is read from the environment variable `api_key_env`.
    `tokenizer_dir` holds the served checkpoint's tokenizer, for `count_tokens`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        tokenizer_dir: str | Path,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        concurrency: int = 4,
        api_key_env: str | None = None,
    ):
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise VlqcError("OpenAIBackend needs concurrency >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self._headers = {"Content-Type": "application/json", **_auth_header(api_key_env)}
        if not Path(tokenizer_dir).is_dir():
            raise VlqcError(f"tokenizer_dir {tokenizer_dir} is not a folder")
        self.tokenizer_dir = Path(tokenizer_dir)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        # Loaded on first use: seconds for the Qwen vocabulary, and a chat-only caller never needs it.
        return AutoTokenizer.from_pretrained(self.tokenizer_dir)

    def chat(self, prompts: Sequence[tuple[str, str]], sampling: Sampling) -> list[str | BackendError]:
        bodies = [self._request_body(system, user, sampling) for system, user in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._complete, bodies))

    def count_tokens(self, system: str, user: str) -> int:
        # The same rendering as Generator.encode: its chat template call, then the plain tokenizer.
        text = self.tokenizer.apply_chat_template(
            hf_messages(system, user, []), tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return len(self.tokenizer(text)["input_ids"])

    def _request_body(self, system: str, user: str, sampling: Sampling) -> bytes:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        # Not an OpenAI field: sent only when it matters, so that strict servers accept the default.
        if sampling.repetition_penalty != 1:
            body["repetition_penalty"] = sampling.repetition_penalty
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _complete(self, body: bytes) -> str | BackendError:
        """One prompt's answer, or the error of its last attempt (never raised: it belongs to this prompt)."""
        for attempt in range(self.max_retries + 1):
            if attempt:
                sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return _completion_text(self._post(body))
            except _Retryable as failure:
                last = failure.error
            except BackendError as error:
                return error
        return last

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:  # before OSError: an HTTPError is one
            error = BackendError(f"http_{exc.code}", f"{self.url} answered {exc.code}: {_error_body(exc)}")
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(error) from exc
            raise error from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
            raise _Retryable(BackendError(BACKEND_UNAVAILABLE, f"{self.url}: {exc!r}")) from exc


def _auth_header(api_key_env: str | None) -> dict[str, str]:
    if api_key_env is None:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise VlqcError(f"the API key variable {api_key_env} is not set (or empty)")
    return {"Authorization": f"Bearer {key}"}


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", errors="replace")[:ERROR_BODY_CHARS]
    except (OSError, http.client.HTTPException) as unreadable:  # the status alone still says what happened
        return f"(body unreadable: {unreadable!r})"


def _completion_text(payload: bytes) -> str:
    """The answer of a chat completion body; BackendError('bad_response') for anything else."""
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BackendError(BAD_RESPONSE, f"not a chat completion ({exc!r}): {payload[:ERROR_BODY_CHARS]!r}") from exc
    if not isinstance(content, str):
        raise BackendError(BAD_RESPONSE, f"the answer content is {type(content).__name__}, not text")
    return content


# --- config -------------------------------------------------------------------------------------

BACKENDS: dict[str, type] = {"hf": HFBackend, "openai": OpenAIBackend}


def make_backend(config: Mapping[str, Any]) -> ChatBackend:
    """A backend from `{backend: hf|openai, ...}`; the other keys are that class's arguments."""
    settings = dict(config)
    kind = settings.pop("backend", None)
    if kind not in BACKENDS:
        raise VlqcError(f"backend must be one of {', '.join(BACKENDS)}, not {kind!r}")
    cls = BACKENDS[kind]
    try:
        inspect.signature(cls).bind(**settings)
    except TypeError as exc:
        raise VlqcError(f"{kind} backend settings {sorted(settings)}: {exc}") from exc
    return cls(**settings)
