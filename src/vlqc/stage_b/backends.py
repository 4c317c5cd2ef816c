"""Chat backends for Stage-B: the in-process transformers engine, or any OpenAI-compatible server.

Both answer text-only (system, user) prompts with one entry per prompt, in order (the `ChatBackend`
protocol of `vlqc.stage_b.rollout`). A prompt that gets no answer comes back as a `BackendError` in its
slot, so the caller records the failure for that ticket alone.

`OpenAIBackend` calls `chat.completions.create` of the `openai` client (`base_url` ends in `/v1`)
on vLLM, SGLang, `swift deploy` and the like. Such a server cannot count prompt tokens
for us, so it is given the checkpoint's tokenizer folder and counts locally, with the chat template
rendered the way `vlqc.inference.generation.Generator.encode` renders it (thinking off).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from openai import APIConnectionError, APIStatusError, OpenAI, omit
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from vlqc.errors import VlqcError
from vlqc.inference.generation import Generator, Request, Sampling
from vlqc.inference.prompts import hf_messages
from vlqc.schemas import defaults
from vlqc.stage_b.rollout import BackendError, ChatBackend

BACKEND_UNAVAILABLE = "backend_unavailable"
BAD_RESPONSE = "bad_response"
BAD_PROMPT = "bad_prompt"
# How much of an error body a BackendError quotes.
ERROR_BODY_CHARS = 300
# The config schema's `stage_b.openai` section is the one home of these defaults.
OPENAI_DEFAULTS = defaults("config", "stage_b.openai")


# --- in-process transformers --------------------------------------------------------------------


class HFBackend:
    """`vlqc.inference.generation.Generator` on text-only prompts, `batch_size` prompts per generate call.
    `checkpoint`: a model folder, or a LoRA adapter folder on `base` (vlqc.inference.checkpoint)."""

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        batch_size: int,
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        base: str | Path | None = None,
        attn_implementation: str | None = None,
    ):
        if batch_size < 1:
            raise VlqcError(f"batch_size must be >= 1, not {batch_size}")
        self.generator = Generator(
            checkpoint, device=device, dtype=_torch_dtype(dtype), base=base, attn_implementation=attn_implementation
        )
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


class OpenAIBackend:
    """Chat completions through the `openai` client, `concurrency` requests at a time.

    The client owns transport, timeouts and retries: `timeout_s` bounds connecting and each wait for
    the answer, and connection errors, timeouts, 408, 409, 429 and 5xx are retried up to
    `max_retries` times with the client's exponential backoff (or the server's `Retry-After`). The
    API key is read from the environment variable `api_key_env`; without one no `Authorization`
    header is sent (not even `OPENAI_API_KEY`, which the client would pick up on its own).
    `tokenizer_dir` holds the served checkpoint's tokenizer, for `count_tokens`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        tokenizer_dir: str | Path,
        timeout_s: float = OPENAI_DEFAULTS["timeout_s"],
        max_retries: int = OPENAI_DEFAULTS["max_retries"],
        concurrency: int = OPENAI_DEFAULTS["concurrency"],
        api_key_env: str | None = OPENAI_DEFAULTS["api_key_env"],
    ):
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise VlqcError("OpenAIBackend needs concurrency >= 1, max_retries >= 0, timeout_s > 0")
        if not Path(tokenizer_dir).is_dir():
            raise VlqcError(f"tokenizer_dir {tokenizer_dir} is not a folder")
        self.model = model
        self.concurrency = concurrency
        self.tokenizer_dir = Path(tokenizer_dir)
        api_key = _api_key(api_key_env)
        # Without a key the client refuses to start, so it gets a placeholder that every request then
        # drops with `omit` (the client's documented way to remove a header).
        self._headers = {} if api_key else {"Authorization": omit}
        self.client = OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=max_retries)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        # Loaded on first use: seconds for the Qwen vocabulary, and a chat-only caller never needs it.
        return AutoTokenizer.from_pretrained(self.tokenizer_dir)

    def chat(self, prompts: Sequence[tuple[str, str]], sampling: Sampling) -> list[str | BackendError]:
        options = self.sampling_options(sampling)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda prompt: self._complete(*prompt, options), prompts))

    def count_tokens(self, system: str, user: str) -> int:
        # The same rendering as Generator.encode: its chat template call, then the plain tokenizer.
        text = self.tokenizer.apply_chat_template(
            hf_messages(system, user, []), tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return len(self.tokenizer(text)["input_ids"])

    @staticmethod
    def sampling_options(sampling: Sampling) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            options["seed"] = sampling.seed
        # Not an OpenAI field (ms-swift and vLLM read it from the body): sent only when it matters, so
        # that strict servers accept the default.
        if sampling.repetition_penalty != 1:
            options["extra_body"] = {"repetition_penalty": sampling.repetition_penalty}
        return options

    def _complete(self, system: str, user: str, options: Mapping[str, Any]) -> str | BackendError:
        return self.complete([{"role": "system", "content": system}, {"role": "user", "content": user}], options)

    def complete(self, messages: list[dict[str, Any]], options: Mapping[str, Any]) -> str | BackendError:
        """The answer to chat `messages` (Stage-A's carry images), or the error of its last attempt (never
        raised: it belongs to this prompt). `options`: `sampling_options` of the call."""
        where = str(self.client.base_url)
        try:
            completion = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                extra_headers=self._headers,
                **options,
            )
        except APIStatusError as exc:  # an answer of 4xx, or of 408/409/429/5xx on the last attempt
            return BackendError(f"http_{exc.status_code}", f"{where}: {str(exc)[:ERROR_BODY_CHARS]}")
        except APIConnectionError as exc:  # refused, reset, timed out (APITimeoutError), on every attempt
            return BackendError(BACKEND_UNAVAILABLE, f"{where}: {exc.message} ({exc.__cause__!r})")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the client's parse of a JSON-typed body
            return BackendError(BAD_RESPONSE, f"{where} answered a body that is not JSON: {exc!r}")
        return _answer_text(completion)


def _api_key(api_key_env: str | None) -> str | None:
    if api_key_env is None:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise VlqcError(f"the API key variable {api_key_env} is not set (or empty)")
    return key


def _answer_text(completion: Any) -> str | BackendError:
    """The answer text, or BackendError('bad_response'). The client does not validate what it parses:
    another JSON shape comes back as a ChatCompletion with fields missing, or as a list; a body of
    another content type as its text."""
    try:
        content = completion.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        return BackendError(BAD_RESPONSE, f"not a chat completion ({exc!r}): {str(completion)[:ERROR_BODY_CHARS]}")
    if not isinstance(content, str):
        return BackendError(BAD_RESPONSE, f"the answer content is {type(content).__name__}, not text")
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
