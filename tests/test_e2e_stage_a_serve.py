"""Stage-A engine `openai` against a real `swift deploy` of the tiny model (CPU, transformers engine).

The same photos, prompt and greedy settings go through a Stage-A rank twice: in process (engine plain)
and through the server. The photos are larger than the pixel budget, so the engine's resizing is what
the server sees. ms-swift renders the image prompt with its own `qwen3_vl` template and runs the image
processor with `do_resize=False` on what it was sent; both give the tokens and pixels of the in-process
path, so the rank rows (summaries, or failure codes quoting the answer) must be equal. The same holds for
`results/<mission>_stage_a.jsonl`, its failure file and the kept rank file when Snakemake runs the mission
with `stage_a.engine: openai` pointed at the server.

The untrained tiny model says much the same whatever the photo, so equal rows alone would not show equal
pixels; the first token's log-probabilities do: they move by ~1e-3 when the photo is resized with another
kernel, and must agree with the in-process ones to 1e-4.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from support.swift_deploy import Server, swift_deploy
from test_openai_engine import photo
from test_stage_a_infer import MISSION, MISSIONS
from workflow_env import copy_workflow, snakemake

from vlqc.inference.generation import Generator, Request, resized
from vlqc.inference.openai_engine import OpenAIGenerator, Servers
from vlqc.inference.prompts import summary_messages
from vlqc.jsonl import read_jsonl
from vlqc.stage_a.discover import Group
from vlqc.stage_a.images import load_image
from vlqc.stage_a.infer import Settings, run_rank

pytestmark = pytest.mark.e2e

SERVED_NAME = "vlqc-tiny"
BUDGET = 131072  # pixels; every photo below is larger
TOP = 5  # log-probabilities compared per photo
TARGET = f"results/{MISSION}_stage_a.jsonl"
OUTPUTS = (
    TARGET,
    f"results/{MISSION}_stage_a.failures.jsonl",
    f"results/stage_a/{MISSION}/{MISSION}_stage_a.images.rank0.jsonl",
)
SIZES = [[(640, 480), (480, 640)], [(900, 300)], [(512, 512), (700, 500), (400, 900)]]


@pytest.fixture(scope="module")
def deployment(tiny_dir, tmp_path_factory) -> Iterator[Server]:
    with swift_deploy(tiny_dir, tmp_path_factory.mktemp("deploy"), SERVED_NAME) as served:
        yield served


@pytest.fixture(scope="module")
def groups(tmp_path_factory) -> list[Group]:
    root = tmp_path_factory.mktemp("tickets")
    groups = []
    for seq, sizes in enumerate(SIZES):
        folder = root / MISSION / "审核通过" / f"G{seq}"
        folder.mkdir(parents=True)
        paths = []
        for n, (width, height) in enumerate(sizes, start=1):
            paths.append(folder / f"G{seq}_{n}.jpg")
            photo(width, height).save(paths[-1], quality=90)
        groups.append(Group(seq, MISSION, "pass", f"G{seq}", folder, tuple(paths)))
    return groups


def rank(groups, tiny_dir: Path, work: Path, **settings: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    options = {"batch_size": 4, "max_new_tokens": 24, "max_pixels": BUDGET, **settings}
    counts = run_rank(
        groups,
        mission=MISSION,
        missions=MISSIONS,
        checkpoint=tiny_dir,
        settings=Settings(**options),
        mode="per_image",
        rank=0,
        world=1,
        out=work / "rank0.jsonl",
        resume_dir=work / "resume",
    )
    return list(read_jsonl(work / "rank0.jsonl", schema="stage_a_image_row")), counts


def served(deployment: Server, **client: Any) -> dict[str, Any]:
    options = {"timeout_s": 120.0, "max_retries": 1, "concurrency": 2, **client}
    return {"engine": "openai", "openai": Servers(base_urls=(deployment.base_url,), model=SERVED_NAME, **options)}


def test_greedy_rank_rows_through_the_server_equal_the_in_process_ones(deployment, groups, tiny_dir, tmp_path):
    before = deployment.completed_requests()
    remote, counts = rank(groups, tiny_dir, tmp_path / "served", **served(deployment))
    local, _ = rank(groups, tiny_dir, tmp_path / "local")
    photos = sum(len(sizes) for sizes in SIZES)
    assert counts["generated"] == photos and deployment.completed_requests() - before == photos
    assert remote == local


def first_token_logprobs(generator: Generator, request: Request) -> torch.Tensor:
    with torch.inference_mode():
        return generator.model(**generator.encode([request])).logits[0, -1].log_softmax(-1)


def test_first_token_logprobs_through_the_server_equal_the_in_process_ones(deployment, groups, tiny_dir):
    engine = OpenAIGenerator(
        tiny_dir, servers=Servers(base_urls=(deployment.base_url,), model=SERVED_NAME), max_pixels=BUDGET
    )
    local = Generator(tiny_dir, max_pixels=BUDGET)
    prompt = summary_messages(MISSION, MISSIONS[MISSION]["domain"], MISSIONS)
    for path in [group.images[0] for group in groups]:
        request = Request(*prompt, [load_image(path)])
        completion = engine.replicas[0].client.chat.completions.create(
            model=SERVED_NAME,
            messages=engine.messages(request),
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=TOP,
        )
        remote = torch.tensor([entry.logprob for entry in completion.choices[0].logprobs.content[0].top_logprobs])
        here = first_token_logprobs(local, request)
        assert (remote - here.topk(TOP).values).abs().max() < 1e-4, (path, remote, here.topk(TOP))
        # The control: the same photo resized by PIL instead of the processor moves them well past that.
        image = request.images[0]
        other = image.resize(load_image_size(engine, image), Image.Resampling.BILINEAR)
        moved = first_token_logprobs(local, Request(*prompt, [other]))
        assert (moved - here).abs().max() > 1e-3


def load_image_size(engine: OpenAIGenerator, image: Image.Image) -> tuple[int, int]:
    height, width = resized(engine.processor, image.height, image.width)
    return width, height


def test_the_mission_through_snakemake_with_engine_openai_equals_engine_plain(deployment, groups, tiny_dir, tmp_path):
    workdir = copy_workflow(tmp_path)
    shutil.copytree(groups[0].folder.parents[2], workdir / "tickets")
    stage_a = {
        "input_root": "tickets",
        "checkpoint": str(tiny_dir),
        "max_pixels": BUDGET,
        "batch_size": 4,
        "max_new_tokens": 24,
        "sharding_mode": "per_image",
    }
    servers = {"base_urls": [deployment.base_url], "model": SERVED_NAME}
    outputs, requests = {}, {}
    for engine, extra in (("plain", {}), ("openai", {"openai": servers})):
        overlay = {"keep_intermediate_outputs": True, "stage_a": {**stage_a, "engine": engine, **extra}}
        (workdir / f"{engine}.yaml").write_text(json.dumps(overlay, ensure_ascii=False), encoding="utf-8")
        before = deployment.completed_requests()
        snakemake(workdir, "--configfile", f"{engine}.yaml", "--", TARGET)
        outputs[engine] = {name: (workdir / name).read_text(encoding="utf-8") for name in OUTPUTS}
        resolved = json.loads((workdir / f"results/stage_a/{MISSION}/resolved_config.json").read_text())
        assert resolved["stage_a"]["engine"] == engine
        requests[engine] = deployment.completed_requests() - before
        shutil.rmtree(workdir / "results")
    photos = sum(len(sizes) for sizes in SIZES)
    assert requests == {"plain": 0, "openai": photos}
    assert outputs["openai"] == outputs["plain"]
    assert len(outputs["plain"][OUTPUTS[2]].splitlines()) == photos


def test_a_killed_server_fails_the_remaining_photos_with_a_reason(deployment, groups, tiny_dir, tmp_path):
    result: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    slow = {"max_new_tokens": 64, **served(deployment, concurrency=1, max_retries=0, timeout_s=30.0)}
    run = threading.Thread(target=lambda: result.append(rank(groups, tiny_dir, tmp_path, **slow)))
    already = deployment.completed_requests()
    run.start()
    while deployment.completed_requests() == already and run.is_alive():
        time.sleep(0.05)
    deployment.kill()
    run.join(timeout=120)
    assert not run.is_alive() and result, "the rank finished and wrote its file"
    rows, counts = result[0]
    failed = [row for row in rows if not row["ok"] and row["error"]["code"] == "backend_unavailable"]
    assert failed and counts["generated"] == len(rows) - len(failed) > 0, rows
    assert all(deployment.base_url in row["error"]["message"] for row in failed)
