"""The Stage-2 rollout server: ms-swift's `swift deploy` (transformers engine) with the endpoints a learner
needs to roll out on it, and to keep its weights those of the learner (docs/stage2.md#server-rollouts).

    python -m vlqc.train.stage2.rollout_server --model <the run's base model> --model_type qwen3_vl \\
        --infer_backend transformers --port 8000 [any other `swift deploy` argument]

Added to `swift deploy`'s routes (its `/health/` and `/infer/`, the protocol `swift rollout` speaks too):
- `GET /get_world_size/`: `{"world_size": 1}`, as `swift rollout` answers it (one process generates here).
- `POST /update_adapter/`: `{"step": S, "config": <adapter_config.json>, "tensors": <base64 safetensors>}`,
  the learner's LoRA adapter as peft saves it. The first one wraps the served model in that adapter; later
  ones overwrite its weights in place. Keys or shapes that do not match the served adapter's are refused
  (HTTP 400) before anything is copied, instead of a silent partial load. Answers `{"step": S, "tensors": n}`.
- `GET /adapter_step/`: `{"step": S}` of the last adapter loaded (null before the first).
- `GET /model_fingerprint/`: `{"path": …, "fingerprint": …}` of the served model folder
  (`vlqc.inference.checkpoint.content_fingerprint`): the learner checks it is its own base model.

`swift rollout` syncs weights over NCCL through vLLM; this server takes them over HTTP, so a learner needs
nothing but the URL (no shared folder, no vLLM). Requests are served one at a time by the engine's queue
and an update is applied between them: the learner updates, then asks for rollouts.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import Request
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load, save_file
from swift.pipelines.infer.deploy import SwiftDeploy
from swift.tuners import Swift

from vlqc.inference.checkpoint import content_fingerprint
from vlqc.train.stage2.remote import ADAPTER_NAME


class RolloutServer(SwiftDeploy):
    def __init__(self, args=None) -> None:
        super().__init__(args)
        self.adapter_step: int | None = None
        self.model_dir = self.infer_engine.model_dir
        self.fingerprint = content_fingerprint(self.model_dir)

    def _register_app(self) -> None:
        super()._register_app()
        self.app.get("/get_world_size/")(self.get_world_size)
        self.app.post("/update_adapter/")(self.update_adapter)
        self.app.get("/adapter_step/")(self.get_adapter_step)
        self.app.get("/model_fingerprint/")(self.get_model_fingerprint)

    async def get_world_size(self) -> dict[str, int]:
        return {"world_size": 1}

    async def get_adapter_step(self) -> dict[str, int | None]:
        return {"step": self.adapter_step}

    async def get_model_fingerprint(self) -> dict[str, str]:
        return {"path": str(self.model_dir), "fingerprint": self.fingerprint}

    async def update_adapter(self, raw_request: Request):
        error = self._check_api_key(raw_request)
        if error:
            return self.create_error_response(HTTPStatus.BAD_REQUEST, error)
        body = await raw_request.json()
        try:
            tensors = load(base64.b64decode(body["tensors"]))
            self.load_adapter(body["config"], tensors)
        except (KeyError, ValueError, TypeError) as exc:
            return self.create_error_response(HTTPStatus.BAD_REQUEST, f"update_adapter: {exc}")
        self.adapter_step = int(body["step"])
        return {"step": self.adapter_step, "tensors": len(tensors)}

    def load_adapter(self, config: dict[str, Any], tensors: dict[str, Any]) -> None:
        engine = self.infer_engine
        if not isinstance(engine.model, PeftModel):
            # ms-swift builds an adapter from a saved folder (its LoRA config has keys peft's lacks), as its
            # engine loads `--adapters`; the folder lives only while it loads.
            with tempfile.TemporaryDirectory(prefix="vlqc-adapter-") as folder:
                (Path(folder) / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
                save_file(tensors, str(Path(folder) / "adapter_model.safetensors"))
                engine.model = Swift.from_pretrained(engine.model, folder, adapter_name=ADAPTER_NAME)
            engine.model.eval()
            return
        # Checked before anything is copied: a refused adapter leaves the served one as it was.
        served = get_peft_model_state_dict(engine.model, adapter_name=ADAPTER_NAME)
        unexpected, missing = sorted(tensors.keys() - served.keys()), sorted(served.keys() - tensors.keys())
        reshaped = sorted(k for k in tensors.keys() & served.keys() if tensors[k].shape != served[k].shape)
        if unexpected or missing or reshaped:
            raise ValueError(
                f"the adapter does not match the served one: {len(unexpected)} unexpected keys (first "
                f"{unexpected[:3]}), {len(missing)} missing (first {missing[:3]}), {len(reshaped)} of another "
                f"shape (first {reshaped[:3]})"
            )
        set_peft_model_state_dict(engine.model, tensors, adapter_name=ADAPTER_NAME)


def main(argv: list[str] | None = None) -> None:
    RolloutServer(sys.argv[1:] if argv is None else argv).main()


if __name__ == "__main__":
    main()
