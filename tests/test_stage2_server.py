"""Stage-2 server rollouts (docs/stage2.md#server-rollouts) against the real rollout server
(`python -m vlqc.train.stage2.rollout_server`, swift deploy's transformers engine) serving the tiny model on CPU;
the tests that need it are marked e2e.

The learner's side is the trainer's own code: the row is encoded by ms-swift's template in train mode and split
by `split_rows`, in-process answers come from `greedy_answers` (what `rollout.backend: hf` runs), the request from
`infer_request`. The preflight's refusals are checked against small scripted HTTP servers.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from support.swift_deploy import Server, free_port, swift_deploy
from swift import get_processor, get_template
from test_openai_engine import photo
from transformers import Qwen3VLForConditionalGeneration

from vlqc.inference.checkpoint import content_fingerprint
from vlqc.train.stage2.remote import ADAPTER_NAME, RolloutClient, RolloutServerError, learner_adapter
from vlqc.train.stage2.trainer import greedy_answers, infer_request, split_rows

MAX_NEW = 24
SYSTEM = "检测图中全部对象，输出两行。"
ANSWER = '<DOMAIN=BBU>, <TASK=DETECTION>\n{"object_1": {"bbox_2d": [1, 2, 300, 400], "desc": "BBU设备"}}'


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory) -> Iterator[Server]:
    with swift_deploy(tiny_dir, tmp_path_factory.mktemp("rollout"), module="vlqc.train.stage2.rollout_server") as up:
        yield up


@pytest.fixture(scope="module")
def row(tiny_dir, tmp_path_factory) -> tuple[dict, dict]:
    """A dense train row as the trainer sees it (its source row and its split batch row)."""
    folder = tmp_path_factory.mktemp("rows")
    photo(320, 256).save(folder / "photo.png")
    source = {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "<image>检测图中对象。"},
            {"role": "assistant", "content": ANSWER},
        ],
        "images": ["photo.png"],
    }
    template = get_template(get_processor(str(tiny_dir), model_type="qwen3_vl"), template_type="qwen3_vl")
    template.set_mode("train")
    encoded = template.encode({"messages": source["messages"], "images": [str(folder / "photo.png")]})
    ids = torch.tensor([encoded["input_ids"]])
    batch = {  # one row: the collator's padding has nothing to do (it would need a model for the rope index)
        "input_ids": ids,
        "labels": torch.tensor([encoded["labels"]]),
        "attention_mask": torch.ones_like(ids),
        "pixel_values": encoded["pixel_values"],
        "image_grid_thw": encoded["image_grid_thw"],
        "mm_token_type_ids": encoded["mm_token_type_ids"][None],
    }
    (batch_row,) = split_rows(batch)
    return source | {"root": str(folder)}, batch_row | {"tokenizer": template.tokenizer}


def base_url(server: Server) -> str:
    return server.base_url.removesuffix("/v1")


def answers_here(model, row: dict) -> list[int]:
    tokenizer = row["tokenizer"]
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    with torch.no_grad():
        (tokens,) = greedy_answers(model.eval(), tokenizer, [row], stops, MAX_NEW)
    return tokens


@pytest.mark.e2e
def test_server_rollouts_equal_the_learners_own_before_and_after_an_adapter_sync(server, row, tiny_dir):
    source, batch_row = row
    client = RolloutClient.connect(base_url(server), tiny_dir, timeout_s=300, connect_timeout_s=10)
    assert client.world_size == 1 and client.adapter_step() is None
    request = infer_request(source, source["root"])
    assert request["messages"] == source["messages"][:2] and request["images"][0].startswith("data:image/png;base64,")

    def served() -> list[int]:
        (tokens,) = client.generate([request], [batch_row["prompt_ids"]], max_new_tokens=MAX_NEW, seed=0)
        return tokens

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dir)
    base = answers_here(model, batch_row)
    assert served() == base and len(base) == MAX_NEW  # the untrained model never stops

    # A LoRA whose B is not zero (peft's init would leave the model unchanged): the answers move.
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    learner = get_peft_model(model, lora, adapter_name=ADAPTER_NAME)
    tuned = answers_here(learner, batch_row)
    assert tuned != base
    client.sync(*learner_adapter(learner), step=3)
    assert client.adapter_step() == 3 and served() == tuned

    # A later sync overwrites the adapter in place: the learner's next weights, the server's next answers.
    with torch.no_grad():
        for name, weight in learner.named_parameters():
            if "lora_B" in name:
                weight.mul_(-1.0)
    again = answers_here(learner, batch_row)
    client.sync(*learner_adapter(learner), step=4)
    assert served() == again

    # Weights that do not fit the served adapter are refused whole, and the server keeps the last ones: here
    # every right tensor, zeroed (they would change the answers), plus one stray.
    config, tensors = learner_adapter(learner)
    stray = {key: torch.zeros_like(value) for key, value in tensors.items()}
    stray["base_model.model.nowhere.lora_A.weight"] = torch.zeros(4, 4)
    with pytest.raises(RolloutServerError, match=r"HTTP 400 .*does not match the served one: 1 unexpected .*0 missing"):
        client.sync(config, stray, step=5)
    assert client.adapter_step() == 4 and served() == again


@pytest.mark.e2e
def test_a_prompt_the_server_encodes_differently_is_an_error_naming_where(server, row, tiny_dir):
    source, batch_row = row
    client = RolloutClient.connect(base_url(server), tiny_dir, timeout_s=300, connect_timeout_s=10)
    other = batch_row["prompt_ids"][:5] + [batch_row["prompt_ids"][5] + 1] + batch_row["prompt_ids"][6:]
    with pytest.raises(RolloutServerError, match=r"prompt 0 was encoded differently .* first at token 5"):
        client.generate([infer_request(source, source["root"])], [other], max_new_tokens=2, seed=0)


@pytest.mark.e2e
def test_a_server_on_another_model_than_the_learners_base_is_refused(server, tiny_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    config = json.loads((other / "config.json").read_text(encoding="utf-8"))
    (other / "config.json").write_text(json.dumps({**config, "vlqc_note": "another model"}), encoding="utf-8")
    with pytest.raises(RolloutServerError, match=rf"serves {re.escape(str(tiny_dir))}, which is not .* {other}"):
        RolloutClient.connect(base_url(server), other, timeout_s=300, connect_timeout_s=10)


def test_the_content_fingerprint_follows_the_bytes_not_the_path_or_the_time(tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    (first / "config.json").write_text('{"model_type": "qwen3_vl"}', encoding="utf-8")
    (first / "model.safetensors").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(first / name, copy / name)  # new path, new modification time
    assert content_fingerprint(copy) == content_fingerprint(first)
    changed = bytearray((copy / "model.safetensors").read_bytes())
    changed[len(changed) // 2] ^= 1  # inside a sampled block
    (copy / "model.safetensors").write_bytes(bytes(changed))
    assert content_fingerprint(copy) != content_fingerprint(first)


# --- the preflight's refusals, against scripted servers ---------------------------------------------------------


def scripted(routes: dict[str, tuple[int, dict]]) -> ThreadingHTTPServer:
    """An HTTP server answering GET `routes` (path → status, JSON body) and 404 otherwise, in a thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = routes.get(self.path, (404, {"detail": "Not Found"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            return  # quiet

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_the_preflight_refuses_a_server_that_takes_no_adapter_or_has_no_world_size(tmp_path):
    swift_like = scripted({"/health/": (200, {"status": "ok"}), "/get_world_size/": (200, {"world_size": 2})})
    url = f"http://127.0.0.1:{swift_like.server_address[1]}"
    with pytest.raises(RolloutServerError, match=r"/adapter_step/: HTTP 404 .*`swift rollout` .*rollout_server"):
        RolloutClient.connect(url, tmp_path, timeout_s=5, connect_timeout_s=2)
    swift_like.shutdown()
    no_world = scripted({"/health/": (200, {"status": "ok"}), "/get_world_size/": (200, {"size": 1})})
    url = f"http://127.0.0.1:{no_world.server_address[1]}"
    with pytest.raises(RolloutServerError, match=r"/get_world_size/ answered world_size None"):
        RolloutClient.connect(url, tmp_path, timeout_s=5, connect_timeout_s=2)
    no_world.shutdown()


def test_the_preflight_gives_up_on_a_server_that_does_not_answer_in_time(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RolloutServerError, match=rf"{url}: /health/ did not answer 200 in 1.5 s"):
        RolloutClient.connect(url, tmp_path, timeout_s=5, connect_timeout_s=1.5)


def test_the_request_carries_the_photo_inline(tmp_path: Path):
    photo(64, 48).save(tmp_path / "a.jpg")
    source = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<image>u"}, {}]}
    request = infer_request(source | {"images": ["a.jpg"]}, str(tmp_path))
    assert request["images"][0].startswith("data:image/jpeg;base64,") and len(request["messages"]) == 2
