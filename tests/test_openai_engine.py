"""Stage-A engine `openai` against scripted local servers: images, replicas, failures, the rank around it.

The servers are Stage-B's scripted HTTP servers (real sockets, so the `openai` client's own retries
run); the image processor is the tiny model's. tests/test_e2e_stage_a_serve.py runs a real `swift deploy`.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from test_stage_a_infer import MISSION, MISSIONS, SUMMARY, make_groups
from test_stage_b_backends import Reply, completion, serve, status  # noqa: F401  (serve: the fixture)

from vlqc.inference.generation import Request, load_processor, resized
from vlqc.inference.openai_engine import OpenAIGenerator, Servers
from vlqc.inference.prompts import IMAGE_TAG, hf_messages
from vlqc.inference.sampling import Sampling
from vlqc.jsonl import read_jsonl
from vlqc.stage_a.infer import Settings, run_rank
from vlqc.stage_b.rollout import BackendError

BUDGET = 65536  # pixels: a photo of the tests is shrunk
ANSWER = f"<DOMAIN=BBU>, <TASK=SUMMARY>\n{SUMMARY}"


def engine(tiny_dir: Path, urls: list[str], **settings: Any) -> OpenAIGenerator:
    options = {"timeout_s": 5.0, "max_retries": 1, "concurrency": 2, **settings}
    return OpenAIGenerator(tiny_dir, servers=Servers(base_urls=tuple(urls), model="tiny", **options), max_pixels=BUDGET)


def photo(width: int = 640, height: int = 400) -> Image.Image:
    """A photo with detail in it, so that a resampling kernel matters."""
    image = Image.effect_mandelbrot((width, height), (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")
    return Image.merge("RGB", (image.getchannel(0), image.rotate(180).getchannel(1), image.transpose(0).getchannel(2)))


def decoded(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))


def image_urls(body: dict[str, Any]) -> list[str]:
    return [part["image_url"]["url"] for part in body["messages"][1]["content"] if part["type"] == "image_url"]


# --- what goes over the wire ------------------------------------------------------------------------


def test_the_data_url_carries_the_pixels_the_in_process_processor_would_see(tiny_dir):
    original = photo()
    sent = decoded(engine(tiny_dir, ["http://127.0.0.1:9/v1"]).data_url(original))
    processor = load_processor(tiny_dir, BUDGET)
    assert (sent.height, sent.width) == resized(processor, original.height, original.width)
    assert sent.width * sent.height <= BUDGET < original.width * original.height
    here, there = (processor.image_processor(images=[i], return_tensors="pt") for i in (original, sent))
    assert torch.equal(here["image_grid_thw"], there["image_grid_thw"])
    assert torch.equal(here["pixel_values"], there["pixel_values"])
    # A plain PIL resize to the same size gives other pixels: the processor's own kernel is what makes them equal.
    plain = original.resize(sent.size, Image.Resampling.BILINEAR)
    assert not torch.equal(
        processor.image_processor(images=[plain], return_tensors="pt")["pixel_values"], here["pixel_values"]
    )


def test_messages_are_the_prompt_parts_in_order_with_images_as_urls(tiny_dir):
    generator = engine(tiny_dir, ["http://127.0.0.1:9/v1"])
    images = [photo(), photo(300, 500)]
    user = f"图1{IMAGE_TAG}图2{IMAGE_TAG}请总结"
    messages = generator.messages(Request("系统", user, images))
    reference = hf_messages("系统", user, images)
    assert messages[0] == reference[0] == {"role": "system", "content": "系统"}
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert [p.get("text") for p in parts] == [p.get("text") for p in reference[1]["content"]]
    assert [decoded(p["image_url"]["url"]).size for p in parts[1::2]] == [
        decoded(generator.data_url(i)).size for i in images
    ]


def test_requests_carry_the_model_and_the_sampling(serve, tiny_dir):  # noqa: F811
    server = serve(lambda body: Reply(body=completion(ANSWER)))
    sampling = Sampling(max_new_tokens=7, temperature=0.5, top_p=0.9, repetition_penalty=1.1, seed=5)
    assert engine(tiny_dir, [server.base_url]).generate([Request("s", IMAGE_TAG, [photo()])], sampling) == [ANSWER]
    (body,) = server.bodies
    assert body["model"] == "tiny"
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (7, 0.5, 0.9, 5)
    assert body["repetition_penalty"] == 1.1


# --- replicas and failures ----------------------------------------------------------------------------


def test_requests_are_spread_over_the_replicas_with_concurrency_per_replica(serve, tiny_dir):  # noqa: F811
    replicas = [
        serve(lambda body: Reply(body=completion(str(decoded(image_urls(body)[0]).width)), delay=0.2)) for _ in range(2)
    ]
    generator = engine(tiny_dir, [r.base_url for r in replicas], concurrency=2)
    requests = [Request("s", IMAGE_TAG, [photo(w, 200)]) for w in range(320, 640, 16)]
    answers = generator.generate(requests, Sampling(max_new_tokens=4))
    sent = [decoded(generator.data_url(r.images[0])).width for r in requests]
    assert answers == [str(w) for w in sent], "answers come back in request order"
    assert all(r.bodies for r in replicas), "both replicas got work"
    assert sum(len(r.bodies) for r in replicas) == len(requests), "each request went to one replica once"
    assert [r.max_active for r in replicas] == [2, 2]


def test_a_request_the_server_keeps_failing_fails_alone_with_the_reason(serve, tiny_dir):  # noqa: F811
    images = [photo(640, 400), photo(400, 640), photo(500, 500)]
    generator = engine(tiny_dir, ["http://127.0.0.1:9/v1"])
    width = {decoded(generator.data_url(i)).width: n for n, i in enumerate(images)}
    server = serve(
        lambda body: (
            status(503)(body) if width[decoded(image_urls(body)[0]).width] == 1 else Reply(body=completion(ANSWER))
        )
    )
    answers = engine(tiny_dir, [server.base_url], max_retries=2).generate(
        [Request("s", IMAGE_TAG, [i]) for i in images], Sampling(max_new_tokens=4)
    )
    assert answers[0] == answers[2] == ANSWER
    assert isinstance(answers[1], BackendError) and answers[1].code == "http_503", answers[1]
    assert len(server.bodies) == 2 + 3, "the failing request was retried twice, the others sent once"


def test_an_unreachable_replica_is_left_out_and_its_request_goes_to_another(serve, tiny_dir, caplog):  # noqa: F811
    good = serve(lambda body: Reply(body=completion(ANSWER), delay=0.05))
    dead = "http://127.0.0.1:9/v1"
    generator = engine(tiny_dir, [dead, good.base_url, dead], max_retries=0, concurrency=2)
    requests = [Request("s", IMAGE_TAG, [photo(320 + 16 * n, 240)]) for n in range(7)]
    assert generator.generate(requests, Sampling(max_new_tokens=4)) == [ANSWER] * 7
    assert len(good.bodies) == 7
    assert caplog.text.count(f"{dead} dropped for this call") == 2


def test_when_no_replica_answers_every_photo_fails_with_the_reason(tiny_dir):
    dead = ["http://127.0.0.1:9/v1", "http://127.0.0.1:7/v1"]
    answers = engine(tiny_dir, dead, max_retries=0).generate(
        [Request("s", IMAGE_TAG, [photo(320 + 16 * n, 240)]) for n in range(5)], Sampling(max_new_tokens=4)
    )
    assert [a.code for a in answers] == ["backend_unavailable"] * 5, answers
    assert all(isinstance(a, BackendError) for a in answers)


# --- a Stage-A rank on engine openai ----------------------------------------------------------------------


def test_a_rank_records_unanswered_photos_as_failures_and_retries_them_on_a_rerun(serve, tiny_dir, tmp_path):  # noqa: F811
    groups = make_groups(tmp_path, [2, 3])  # photos 72..96 pixels wide, by their index in the group
    failing = {"on": True}

    def script(body: dict[str, Any]) -> Reply:
        if failing["on"] and decoded(image_urls(body)[0]).width == resized_width(tiny_dir, 88, 48):
            return status(500)(body)
        return Reply(body=completion(ANSWER))

    server = serve(script)
    settings = Settings(
        batch_size=4, engine="openai", openai=Servers(base_urls=(server.base_url,), model="tiny", max_retries=0)
    )

    def rank() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out = tmp_path / "rank0.jsonl"
        counts = run_rank(
            groups,
            mission=MISSION,
            missions=MISSIONS,
            checkpoint=tiny_dir,
            settings=settings,
            mode="per_image",
            rank=0,
            world=1,
            out=out,
            resume_dir=tmp_path / "resume",
        )
        return list(read_jsonl(out, schema="stage_a_image_row")), counts

    rows, counts = rank()
    failed = [r for r in rows if not r["ok"]]
    assert [(r["group_id"], r["image_index"], r["error"]["code"]) for r in failed] == [("G1", 3, "http_500")]
    assert "500" in failed[0]["error"]["message"] and server.base_url in failed[0]["error"]["message"]
    assert all(r["summary"] == SUMMARY for r in rows if r["ok"])
    assert (counts["images"], counts["generated"], counts["failed"]) == (5, 4, 1)
    resumed = [json.loads(line) for line in (tmp_path / "resume/rank0.jsonl").read_text().splitlines()]
    assert len(resumed) == 4, "an unanswered photo leaves no resume entry"

    failing["on"] = False
    rows, counts = rank()
    assert all(r["ok"] for r in rows) and (counts["resumed"], counts["generated"]) == (4, 1)


def resized_width(tiny_dir: Path, width: int, height: int) -> int:
    return resized(load_processor(tiny_dir), height, width)[1]


def test_the_served_model_name_is_in_the_fingerprint_and_the_transport_is_not(tmp_path):
    from vlqc.stage_a.infer import fingerprint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    prompt = ("s", "u")
    served = Settings(engine="openai", openai=Servers(model="a"))
    moved = Settings(
        engine="openai", openai=Servers(base_urls=("http://x/v1", "http://y/v1"), model="a", concurrency=9)
    )
    assert fingerprint(folder, prompt, served) == fingerprint(folder, prompt, moved)
    assert fingerprint(folder, prompt, served) != fingerprint(
        folder, prompt, Settings(engine="openai", openai=Servers(model="b"))
    )
    assert fingerprint(folder, prompt, served) != fingerprint(folder, prompt, Settings())


def test_settings_read_the_openai_section():
    settings = Settings.from_config(
        {"engine": "openai", "openai": {"base_urls": ["http://a/v1", "http://b/v1"], "concurrency": 3}}
    )
    assert settings.openai == Servers(base_urls=("http://a/v1", "http://b/v1"), concurrency=3)
    assert Settings.from_config({}).openai == Servers()


@pytest.mark.parametrize("section", [{"base_urls": []}, {"base_urls": "http://a/v1"}, {"concurrency": 0}, {"url": "x"}])
def test_a_bad_openai_section_is_refused_with_its_path(section):
    from vlqc.errors import SchemaError

    with pytest.raises(SchemaError, match=r"stage_a\.openai"):
        Settings.from_config({"engine": "openai", "openai": section})
