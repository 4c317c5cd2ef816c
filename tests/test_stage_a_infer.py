"""Stage-A rank logic with a scripted backend: sharding, cleaning, failures, resume.

The same code runs on the real tiny model in tests/test_e2e_stage_a.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from vlqc.errors import SampleError, SchemaError, VlqcError
from vlqc.jsonl import read_jsonl
from vlqc.missions import load_missions
from vlqc.stage_a.discover import Group
from vlqc.stage_a.infer import ResumeLog, Settings, clean_summary, fingerprint, run_rank
from vlqc.stage_a.jobs import dealing_rank, image_jobs, rank_batches, read_selection, write_selection

MISSION = "挡风板安装检查"
SUMMARY = '{"统计": [{"类别": "BBU设备", "可见性": {"完整": 1}}]}'
MISSIONS = load_missions(REPO / "config/missions.yaml")


def make_groups(tmp_path: Path, sizes: list[int]) -> list[Group]:
    groups = []
    for seq, n in enumerate(sizes):
        folder = tmp_path / MISSION / "审核通过" / f"G{seq}"
        folder.mkdir(parents=True)
        images = []
        for i in range(1, n + 1):
            path = folder / f"G{seq}_{i}.jpg"
            Image.new("RGB", (64 + 8 * i, 48), (40 * i % 255, 80, 120)).save(path)
            images.append(path)
        groups.append(Group(seq, MISSION, "pass", f"G{seq}", folder, tuple(images)))
    return groups


class Scripted:
    """Stands in for Generator: answers from a function of the image width; counts calls."""

    def __init__(self, answer=lambda width: f"<DOMAIN=BBU>, <TASK=SUMMARY>\n{SUMMARY}"):
        self.answer = answer
        self.batches: list[int] = []

    def __call__(self, checkpoint, **kwargs):
        return self

    def check_image(self, image, where):
        if image.width > 20 * image.height:
            raise SampleError("unprocessable_image", "too wide", where)

    def generate(self, requests, sampling):
        self.batches.append(len(requests))
        return [self.answer(r.images[0].width) for r in requests]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def run(groups, tmp_path, checkpoint, backend, mode="per_group", rank=0, world=1, settings=None):
    settings = settings or Settings(batch_size=3)
    out = tmp_path / f"out.rank{rank}.jsonl"
    counts = run_rank(
        groups,
        mission=MISSION,
        missions=MISSIONS,
        checkpoint=checkpoint,
        settings=settings,
        mode=mode,
        rank=rank,
        world=world,
        out=out,
        resume_dir=tmp_path / "resume",
        load_generator=backend,
    )
    return list(read_jsonl(out, schema="stage_a_image_row")), counts


# --- sharding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["per_group", "per_image"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_image_lands_on_exactly_one_rank(tmp_path, mode, world):
    groups = make_groups(tmp_path, [1, 12, 3, 1, 5])
    seen = [
        (job.group_seq, job.image_index)
        for rank in range(world)
        for batch in rank_batches(groups, mode, rank, world, batch_size=4)
        for job in batch
    ]
    assert sorted(seen) == sorted((g.seq, i) for g in groups for i in range(1, len(g.images) + 1))


def test_per_group_batches_never_mix_groups_and_follow_round_robin(tmp_path):
    groups = make_groups(tmp_path, [1, 12, 3, 1, 5])
    batches = rank_batches(groups, "per_group", rank=1, world=2, batch_size=4)
    assert all(len({job.group_seq for job in batch}) == 1 for batch in batches)
    assert [b[0].group_seq for b in batches] == [1, 1, 1, 3]


def test_per_image_spreads_a_skewed_set_evenly(tmp_path):
    groups = make_groups(tmp_path, [12, 1, 1, 1])
    loads = [sum(map(len, rank_batches(groups, "per_image", r, 2, 4))) for r in range(2)]
    group_loads = [sum(map(len, rank_batches(groups, "per_group", r, 2, 4))) for r in range(2)]
    assert loads == [8, 7] and group_loads == [13, 2]


def test_rank_batches_rejects_bad_arguments(tmp_path):
    groups = make_groups(tmp_path, [1])
    with pytest.raises(VlqcError, match="sharding_mode"):
        rank_batches(groups, "per_batch", 0, 1, 1)
    with pytest.raises(VlqcError, match="rank"):
        rank_batches(groups, "per_group", 2, 2, 1)


# --- shards (stage_a.shards) ---------------------------------------------------------------------


def _shard_loads(groups, mode, shards, world):
    """(shard, rank) → the image jobs that rank of that shard job generates."""
    return {
        (shard, rank): [
            job for batch in rank_batches(groups, mode, *dealing_rank(rank, world, shard, shards), 4) for job in batch
        ]
        for shard in range(shards)
        for rank in range(world)
    }


@pytest.mark.parametrize("mode", ["per_group", "per_image"])
def test_shards_deal_every_image_to_exactly_one_rank_of_one_shard(tmp_path, mode):
    groups = make_groups(tmp_path, [1, 12, 3, 1, 5, 2, 7])
    seen = [(job.group_seq, job.image_index) for jobs in _shard_loads(groups, mode, 3, 2).values() for job in jobs]
    assert sorted(seen) == sorted((g.seq, i) for g in groups for i in range(1, len(g.images) + 1))


def test_per_image_spreads_a_skewed_set_evenly_over_shards_and_ranks(tmp_path):
    groups = make_groups(tmp_path, [20, 1, 1, 1, 1])  # 24 photos, one group holding most of them
    loads = {worker: len(jobs) for worker, jobs in _shard_loads(groups, "per_image", 4, 2).items()}
    assert sorted(set(loads.values())) == [3]  # 8 ranks of 4 shards, 3 photos each
    by_group = {worker: len(jobs) for worker, jobs in _shard_loads(groups, "per_group", 4, 2).items()}
    assert by_group[0, 0] == 20  # per_group leaves the big group on one rank of one shard


def test_one_shard_deals_as_before_and_k_shards_of_r_ranks_as_one_job_of_k_times_r(tmp_path):
    groups = make_groups(tmp_path, [4, 1, 6, 2])
    for mode in ("per_group", "per_image"):
        plain = {rank: rank_batches(groups, mode, rank, 4, 4) for rank in range(4)}
        one_shard = {rank: rank_batches(groups, mode, *dealing_rank(rank, 4, 0, 1), 4) for rank in range(4)}
        assert one_shard == plain
        two_by_two = {
            shard * 2 + rank: rank_batches(groups, mode, *dealing_rank(rank, 2, shard, 2), 4)
            for shard in range(2)
            for rank in range(2)
        }
        assert two_by_two == plain


@pytest.mark.parametrize("rank, world, shard, shards", [(0, 2, 2, 2), (0, 1, -1, 2), (2, 2, 0, 1), (0, 1, 0, 0)])
def test_dealing_rank_rejects_a_shard_or_rank_out_of_range(rank, world, shard, shards):
    with pytest.raises(VlqcError, match="shard"):
        dealing_rank(rank, world, shard, shards)


def test_shard_jobs_write_their_own_resume_files_and_a_rerun_with_other_shards_reuses_them(tmp_path, checkpoint):
    groups = make_groups(tmp_path, [3, 1, 2])
    done = {}
    for shard in range(2):
        backend = Scripted()
        out = tmp_path / f"shard{shard}" / "out.rank0.jsonl"
        done[shard] = run_rank(
            groups,
            mission=MISSION,
            missions=MISSIONS,
            checkpoint=checkpoint,
            settings=Settings(batch_size=2),
            mode="per_image",
            rank=0,
            world=1,
            shard=shard,
            shards=2,
            out=out,
            resume_dir=tmp_path / "resume",
            load_generator=backend,
        )
        assert done[shard]["images"] == 3 and sum(backend.batches) == 3
    # Each shard's rank 0 writes the resume file of its rank among both shards' ranks.
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    # One shard of two ranks now: every answer is reused, whichever shard got it.
    again = Scripted()
    _, counts = run(groups, tmp_path, checkpoint, again, mode="per_image", rank=1, world=2)
    assert counts["resumed"] == 3 and counts["generated"] == 0 and again.batches == []


def test_selection_round_trip(tmp_path):
    groups = make_groups(tmp_path, [2, 0, 1])
    write_selection(tmp_path / "selection.jsonl", groups)
    assert read_selection(tmp_path / "selection.jsonl") == groups
    assert [j.path.name for j in image_jobs(groups[0])] == ["G0_1.jpg", "G0_2.jpg"]


# --- cleaning -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"<DOMAIN=BBU>, <TASK=SUMMARY>\n{SUMMARY}", SUMMARY),
        (f"  {SUMMARY}\n", SUMMARY),
        ("无关图片", "无关图片"),
    ],
)
def test_clean_summary_keeps_the_summary_line(text, expected):
    assert clean_summary(text) == expected


@pytest.mark.parametrize(
    "text, code",
    [
        ("", "empty_summary"),
        ("<DOMAIN=BBU>, <TASK=SUMMARY>\n", "empty_summary"),
        ('{"统计": [{"类别": "BBU设备", "可见性": {"完整"', "unparseable_summary"),
        ("BBU设备 x2", "unparseable_summary"),
    ],
)
def test_clean_summary_rejects_what_is_not_a_summary(text, code):
    with pytest.raises(SampleError) as info:
        clean_summary(text)
    assert info.value.code == code


# --- a rank -------------------------------------------------------------------------------------


def test_rank_writes_one_ok_row_per_image_in_batches(tmp_path, checkpoint):
    groups = make_groups(tmp_path, [2, 4])
    backend = Scripted()
    rows, counts = run(groups, tmp_path, checkpoint, backend)
    assert backend.batches == [2, 3, 1]  # per_group: a batch never spans groups
    assert [(r["group_seq"], r["image_index"]) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3), (1, 4)]
    assert all(r["ok"] and r["summary"] == SUMMARY for r in rows)
    generate_s = counts.pop("generate_s")
    assert counts == {"images": 6, "resumed": 0, "generated": 6, "failed": 0} and generate_s >= 0


def test_bad_items_fail_alone(tmp_path, checkpoint):
    groups = make_groups(tmp_path, [3, 2])
    groups[0].images[1].write_bytes(b"")  # zero bytes
    Image.new("RGB", (2100, 100)).save(groups[1].images[0])  # the scripted processor refuses it
    answers = Scripted(lambda width: "garbage" if width == 80 else SUMMARY)  # image 2 of a group is 80 px wide
    rows, counts = run(groups, tmp_path, checkpoint, answers, mode="per_image")
    by_key = {(r["group_seq"], r["image_index"]): r for r in rows}
    assert by_key[0, 2]["error"]["code"] == "empty_file"
    assert by_key[1, 1]["error"]["code"] == "unprocessable_image"
    assert by_key[1, 2]["error"]["code"] == "unparseable_summary"
    assert by_key[0, 1]["ok"] and by_key[0, 3]["ok"]
    assert counts["failed"] == 3 and len(rows) == 5


def test_resume_skips_finished_images_with_the_same_fingerprint(tmp_path, checkpoint):
    groups = make_groups(tmp_path, [3, 3])
    first = Scripted()
    run(groups, tmp_path, checkpoint, first, mode="per_image", rank=0, world=2)
    # A rerun with one rank (another world size) regenerates only what rank 0 of 2 did not do.
    second = Scripted()
    rows, counts = run(groups, tmp_path, checkpoint, second, mode="per_image", rank=0, world=1)
    assert counts["resumed"] == 3 and counts["generated"] == 3 and sum(second.batches) == 3
    assert len(rows) == 6
    # Other settings: nothing is reused.
    third = Scripted()
    _, counts = run(groups, tmp_path, checkpoint, third, settings=Settings(batch_size=3, max_new_tokens=7))
    assert counts["resumed"] == 0 and sum(third.batches) == 6


def test_resume_keeps_unparseable_answers_and_retries_load_failures_and_changed_photos(tmp_path, checkpoint):
    groups = make_groups(tmp_path, [3])
    empty = groups[0].images[2].read_bytes()
    groups[0].images[2].write_bytes(b"")
    run(groups, tmp_path, checkpoint, Scripted(lambda width: "garbage" if width == 72 else SUMMARY))
    Image.new("RGB", (90, 48)).save(groups[0].images[1])  # the photo was replaced since
    groups[0].images[2].write_bytes(empty)  # and the empty one restored
    again = Scripted()
    rows, counts = run(groups, tmp_path, checkpoint, again)
    # Image 1's answer is kept (greedy would repeat it); image 2 changed, image 3 failed to load.
    assert counts["resumed"] == 1 and again.batches == [2]
    assert [r["ok"] for r in rows] == [False, True, True]
    assert rows[0]["error"]["code"] == "unparseable_summary"


def test_a_torn_resume_line_is_ignored(tmp_path, checkpoint, caplog):
    log = ResumeLog(tmp_path / "resume", 0, "fp")
    log.add("k1", SUMMARY)
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.write('{"fingerprint": "fp", "key": "k2", "te')
    assert log.load() == {"k1": SUMMARY}
    assert "torn resume entry" in caplog.text


def test_fingerprint_follows_weights_prompt_and_settings_but_not_batch_size(checkpoint):
    prompt = ("system", "<image>user")
    base = fingerprint(checkpoint, prompt, Settings())
    assert fingerprint(checkpoint, prompt, Settings(batch_size=1)) == base
    assert fingerprint(checkpoint, prompt, Settings(wave_rows=1, wave_memory_fraction=0.9)) == base
    assert fingerprint(checkpoint, prompt, Settings(temperature=0.5)) != base
    assert fingerprint(checkpoint, ("system", "<image>other"), Settings()) != base
    assert fingerprint(checkpoint, prompt, Settings(engine="fast")) != base
    assert fingerprint(checkpoint, prompt, Settings(compile="never")) != base
    (checkpoint / "model.safetensors").write_bytes(b"other weights")
    assert fingerprint(checkpoint, prompt, Settings()) != base


def test_the_fingerprint_of_an_adapter_follows_its_base_and_its_attention_kernels(tmp_path, checkpoint):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(checkpoint)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"lora")
    prompt = ("system", "<image>user")
    first = fingerprint(adapter, prompt, Settings())
    assert fingerprint(adapter, prompt, Settings(), base=checkpoint) == first  # the same base, named or declared
    assert fingerprint(adapter, prompt, Settings(attn_implementation="eager")) != first
    (checkpoint / "model.safetensors").write_bytes(b"other base weights")
    assert fingerprint(adapter, prompt, Settings()) != first


def test_no_rank_file_when_a_rank_crashes(tmp_path, checkpoint):
    groups = make_groups(tmp_path, [2, 2])

    class Crashing(Scripted):
        def generate(self, requests, sampling):
            if self.batches:
                raise RuntimeError("device lost")
            return super().generate(requests, sampling)

    with pytest.raises(RuntimeError):
        run(groups, tmp_path, checkpoint, Crashing())
    assert not (tmp_path / "out.rank0.jsonl").exists()
    entries = [json.loads(line) for line in (tmp_path / "resume" / "rank0.jsonl").read_text().splitlines()]
    assert len(entries) == 2  # the first batch survives for the rerun


def test_an_unknown_engine_or_compile_choice_is_refused():
    with pytest.raises(VlqcError, match="engine must be one of"):
        Settings(engine="turbo")
    with pytest.raises(VlqcError, match="compile must be one of"):
        Settings(compile="yes")


def test_settings_from_the_stage_a_section():
    settings = Settings.from_config({"batch_size": 3, "sample_seed": 9, "engine": "fast"})
    assert (settings.batch_size, settings.seed, settings.engine) == (3, 9, "fast")
    assert Settings.from_config({}) == Settings()  # the defaults are the schema's either way
    with pytest.raises(SchemaError, match=r"stage_a\.batch_size: 0 is less than the minimum of 1"):
        Settings.from_config({"batch_size": 0})


@pytest.mark.parametrize("knobs", [{"wave_rows": 0}, {"wave_memory_fraction": 0.0}, {"wave_memory_fraction": 1.5}])
def test_wave_settings_out_of_range_are_rejected(knobs):
    with pytest.raises(VlqcError, match="wave_rows must be >= 1 and wave_memory_fraction in"):
        Settings(**knobs)
