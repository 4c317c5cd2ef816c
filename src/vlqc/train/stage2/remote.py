"""Channel-B rollouts on a rollout server (`stage2_ab.rollout.backend: server`; docs/stage2.md#server-rollouts).

The learner speaks `swift rollout`'s protocol (`GET /health/`, `GET /get_world_size/`, `POST /infer/` with
`return_details`, which returns the prompt's and the answer's token ids) and syncs its LoRA adapter with
vlqc's `POST /update_adapter/` (vlqc.train.stage2.rollout_server).

Contract:
- `connect` is the preflight, run once before training: one server, healthy within `connect_timeout_s`,
  answering a world size of at least 1 and the adapter sync endpoint, serving the learner's base model (its
  content fingerprint). Anything else is a RolloutServerError that names the URL and what it answered.
- `sync` sends the learner's adapter and checks the server took it (the step it answers is the one sent).
- `generate` asks for greedy answers (temperature 0, no repetition penalty: the in-process rollout's
  settings) and checks that every prompt the server encoded is token for token the learner's: a different
  template, processor or pixel budget would make the rollout answer another prompt than the one trained.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from peft import get_peft_model_state_dict
from safetensors.torch import save

from vlqc.errors import VlqcError
from vlqc.inference.checkpoint import content_fingerprint

ADAPTER_NAME = "default"  # peft's: the learner's adapter, and the one the server keeps in step with it


def learner_adapter(model) -> tuple[dict[str, Any], dict[str, Any]]:
    """A peft model's adapter as `sync` sends it: its config as JSON (sets as lists, as peft saves it) and its
    state dict, keys without the adapter name."""
    config = {
        key: sorted(value) if isinstance(value, set) else value
        for key, value in model.peft_config[ADAPTER_NAME].to_dict().items()
    }
    return config, get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)


class RolloutServerError(VlqcError):
    pass


@dataclass
class RolloutClient:
    url: str  # without a trailing slash
    timeout_s: float
    world_size: int
    session: requests.Session

    @classmethod
    def connect(cls, url: str, base_model: str | Path, *, timeout_s: float, connect_timeout_s: float) -> RolloutClient:
        """The preflight: waits for `/health/` up to `connect_timeout_s`, then reads the world size and the
        adapter step (which only a server that takes adapters answers), and checks the server's model is the
        learner's `base_model` (the adapter syncs only what training changes)."""
        url = url.rstrip("/")
        session = requests.Session()
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                if session.get(f"{url}/health/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass  # not listening yet: retried until the deadline
            if time.monotonic() > deadline:
                raise RolloutServerError(f"rollout server {url}: /health/ did not answer 200 in {connect_timeout_s} s")
            time.sleep(1)
        server = cls(url, timeout_s, 0, session)
        world = server._get("/get_world_size/").get("world_size")
        if not isinstance(world, int) or world < 1:
            raise RolloutServerError(f"rollout server {url}: /get_world_size/ answered world_size {world!r}")
        server.world_size = world
        try:
            server.adapter_step()
        except RolloutServerError as exc:
            raise RolloutServerError(
                f"{exc}: the learner syncs its adapter over HTTP, which `swift rollout` (NCCL through vLLM) and "
                "`swift deploy` do not take; serve the run's base model with `python -m "
                "vlqc.train.stage2.rollout_server` (docs/stage2.md#server-rollouts)"
            ) from None
        served = server._get("/model_fingerprint/")
        if served.get("fingerprint") != content_fingerprint(base_model):
            raise RolloutServerError(
                f"rollout server {url} serves {served.get('path')}, which is not the learner's base model "
                f"{base_model} (their content fingerprints differ): start it with --model on the base model"
            )
        return server

    def adapter_step(self) -> int | None:
        """The step of the adapter the server holds (None: none yet, it serves its base model)."""
        return self._get("/adapter_step/")["step"]

    def sync(self, config: dict[str, Any], tensors: dict[str, Any], step: int) -> None:
        """Load the learner's adapter (peft's config and state dict, keys without the adapter name)."""
        payload = {
            "step": step,
            "config": config,
            "tensors": base64.b64encode(save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})).decode(),
        }
        answer = self._post("/update_adapter/", payload)
        if answer.get("step") != step:
            raise RolloutServerError(f"rollout server {self.url}: adapter of step {step} sent, {answer} answered")

    def generate(
        self, prompts: list[dict[str, Any]], prompt_ids: list[list[int]], *, max_new_tokens: int, seed: int
    ) -> list[list[int]]:
        """Greedy answers' token ids to `prompts` (`swift rollout` infer requests: messages, images) as the server
        returns them: ms-swift drops pad tokens (Qwen's `<|endoftext|>`), a closing `<|im_end|>` stays; the
        builder reads an answer's end from its text, not its last token. `prompt_ids`: the learner's encodings
        of the same prompts."""
        config = {
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "repetition_penalty": 1.0,
            "seed": seed,
            "return_details": True,
        }
        answers = self._post("/infer/", {"infer_requests": prompts, "request_config": config})
        if not isinstance(answers, list) or len(answers) != len(prompts):
            raise RolloutServerError(f"rollout server {self.url}: /infer/ answered {str(answers)[:300]}")
        out = []
        for i, (answer, expected) in enumerate(zip(answers, prompt_ids)):
            if "choices" not in answer:
                raise RolloutServerError(f"rollout server {self.url}: prompt {i} failed: {str(answer)[:300]}")
            got = answer.get("prompt_token_ids")
            if got != expected:
                raise RolloutServerError(f"rollout server {self.url}: prompt {i} {prompt_difference(got, expected)}")
            out.append(list(answer["choices"][0]["token_ids"]))
        return out

    def _get(self, path: str) -> Any:
        return self._request("get", path)

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        return self._request("post", path, json=payload)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, f"{self.url}{path}", timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise RolloutServerError(f"rollout server {self.url}{path}: {exc}") from exc
        if response.status_code != 200:
            status = f"HTTP {response.status_code} {response.text[:300]}"
            raise RolloutServerError(f"rollout server {self.url}{path}: {status}")
        return response.json()


def prompt_difference(got: list[int] | None, expected: list[int]) -> str:
    """Where the server's prompt encoding departs from the learner's, for the error."""
    if got is None:
        return "came back without prompt_token_ids (the server must return details: swift rollout / deploy)"
    at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    return (
        f"was encoded differently by the server ({len(got)} tokens) than by the learner ({len(expected)}), first at "
        f"token {at}: server {got[at : at + 5]}, learner {expected[at : at + 5]} (same model, template and pixel "
        "budget on both sides?)"
    )
