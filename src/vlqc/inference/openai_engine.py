"""Stage-A summaries from OpenAI-compatible servers (vLLM, SGLang, `swift deploy`): engine `openai`.

`OpenAIGenerator` stands in for `vlqc.inference.generation.Generator` in a Stage-A rank: the same
(system, user) prompts with `<image>` tags, the same `Sampling`, one answer text per request in order;
the rank cleans and parses answers with the same code whichever engine wrote them.

What goes over the wire is what the in-process engine would feed its model. Each photo is resized here
by the checkpoint's own image processor to its pixel budget (`max_pixels`, as in-process), then sent
losslessly as a PNG data URL. The size is a multiple of the patch grid within the budget, so a server
whose budget is at least as large resizes nothing and sees the pixels the in-process processor would
(docs/stage-a.md#served-engines).

Requests are spread over the replicas (`base_urls`) through one shared queue, `concurrency` in flight
per replica, so a faster replica takes more of them. Transport, timeouts and retries are the `openai`
client's, through Stage-B's `OpenAIBackend`, one per replica. A replica that cannot be reached after the
client's retries is left out for the rest of the call and its request goes to the others (the next call
tries it again). A request that still fails comes back as a `BackendError` (a `SampleError`) in its
slot: that photo fails with the reason (`http_<status>`, `backend_unavailable`, `bad_response`) and the
others go on.
"""

from __future__ import annotations

import base64
import io
import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision.transforms.v2 import functional as tvF
from transformers.image_utils import SizeDict

from vlqc.errors import SampleError, VlqcError
from vlqc.inference.checkpoint import processor_dir
from vlqc.inference.generation import Request, check_image, load_processor
from vlqc.inference.prompts import hf_messages
from vlqc.inference.sampling import Sampling
from vlqc.schemas import defaults
from vlqc.stage_b.backends import BACKEND_UNAVAILABLE, OpenAIBackend
from vlqc.stage_b.rollout import BackendError

log = logging.getLogger(__name__)

# The config schema's `stage_a.openai` section is the one home of these defaults.
SERVER_DEFAULTS = defaults("config", "stage_a.openai")


@dataclass(frozen=True)
class Servers:
    """The `stage_a.openai` config section: where the model is served and how the client talks to it."""

    base_urls: tuple[str, ...] = tuple(SERVER_DEFAULTS["base_urls"])
    model: str = SERVER_DEFAULTS["model"]
    timeout_s: float = SERVER_DEFAULTS["timeout_s"]
    max_retries: int = SERVER_DEFAULTS["max_retries"]
    concurrency: int = SERVER_DEFAULTS["concurrency"]  # per replica
    api_key_env: str | None = SERVER_DEFAULTS["api_key_env"]

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> Servers:
        return cls(**{**section, "base_urls": tuple(section["base_urls"])})

    def __post_init__(self):
        if not self.base_urls:
            raise VlqcError("stage_a.openai.base_urls names no server")


class OpenAIGenerator:
    """Summaries of Stage-A requests from the servers of `servers`; see the module docstring.

    `checkpoint` (a model folder, or a LoRA adapter folder on `base`) is the model the servers serve:
    here it gives the image processor that sizes the photos, and the tokenizer folder of each replica's
    `OpenAIBackend`. `device`, `dtype` and `attn_implementation` of the in-process engines are the
    servers' business and not taken."""

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        servers: Servers,
        max_pixels: int | None = None,
        base: str | Path | None = None,
    ):
        self.processor = load_processor(checkpoint, max_pixels, base)
        self.servers = servers
        self.replicas = [
            OpenAIBackend(
                url,
                servers.model,
                tokenizer_dir=processor_dir(checkpoint, base),
                timeout_s=servers.timeout_s,
                max_retries=servers.max_retries,
                concurrency=servers.concurrency,
                api_key_env=servers.api_key_env,
            )
            for url in servers.base_urls
        ]

    def check_image(self, image: Image.Image, where: str) -> None:
        check_image(self.processor, image, where)

    def data_url(self, image: Image.Image) -> str:
        """The photo at the processor's size for it, as a lossless PNG data URL."""
        ip = self.processor.image_processor
        size = ip.size if isinstance(ip.size, SizeDict) else SizeDict(**ip.size)
        # The processor's own resize (smart_resize to the budget, its kernel on uint8 pixels), as it
        # would run it in process; the server's processor then finds nothing to resize.
        pixels = ip.resize(tvF.pil_to_tensor(image)[None], size, ip.resample, factor=ip.patch_size * ip.merge_size)
        buffer = io.BytesIO()
        tvF.to_pil_image(pixels[0]).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def messages(self, request: Request) -> list[dict[str, Any]]:
        """OpenAI chat messages of a request: `hf_messages`' parts, each image as an `image_url` part."""
        system, user = hf_messages(request.system, request.user, [self.data_url(i) for i in request.images])
        content = [
            {"type": "image_url", "image_url": {"url": part["image"]}} if part["type"] == "image" else part
            for part in user["content"]
        ]
        return [system, {"role": "user", "content": content}]

    def generate(self, requests: Sequence[Request], sampling: Sampling = Sampling()) -> list[str | SampleError]:
        """One answer text per request, in order; a request the servers did not answer: its `BackendError`."""
        options = OpenAIBackend.sampling_options(sampling)
        answers: list[str | SampleError | None] = [None] * len(requests)
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(requests)):
            todo.put(index)
        down: set[int] = set()  # replicas that could not be reached in this call
        lock = threading.Lock()

        def serve(replica: int) -> None:
            # Each worker takes the next request when its last one is answered.
            while replica not in down:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                answer = self.replicas[replica].complete(self.messages(requests[index]), options)
                if isinstance(answer, BackendError) and answer.code == BACKEND_UNAVAILABLE:
                    with lock:
                        # Unreachable after the client's retries: the other replicas take this request and the
                        # rest of the call; the last one left records its failures instead.
                        if len(down) < len(self.replicas) - 1 or replica in down:
                            if replica not in down:
                                log.warning("%s dropped for this call: %s", self.servers.base_urls[replica], answer)
                            down.add(replica)
                            todo.put(index)
                            return
                answers[index] = answer

        # A request put back after the other replicas' workers ran out of work waits for the next round; each
        # round after the first follows a replica going down, so there are at most as many rounds as replicas.
        while not todo.empty():
            workers = [n for n in range(len(self.replicas)) if n not in down for _ in range(self.servers.concurrency)]
            with ThreadPoolExecutor(max_workers=len(workers)) as pool:
                for done in [pool.submit(serve, replica) for replica in workers]:
                    done.result()  # a worker's own error (not a server's) stops the rank
        return answers  # every slot is filled: the queue is empty and every worker returned
