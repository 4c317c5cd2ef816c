"""ShardedBackend: rank 0's chat calls split over real gloo ranks and come back in prompt order."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta

import pytest
import torch.multiprocessing as mp

from vlqc.errors import VlqcError
from vlqc.inference.sampling import Sampling
from vlqc.stage_b import sharded
from vlqc.stage_b.rollout import BackendError
from vlqc.stage_b.sharded import ShardedBackend, init_group, leave_group

WORLD = 3


class RankEcho:
    """Answers `<rank>:<user>`, and a BackendError for a user text that asks for one."""

    def __init__(self, rank: int):
        self.rank = rank
        self.calls: list[int] = []

    def chat(self, prompts, sampling):
        self.calls.append(len(prompts))
        return [
            BackendError("bad_prompt", f"rank {self.rank} refused {user}")
            if user.startswith("bad")
            else f"{self.rank}:{user}:{sampling.max_new_tokens}"
            for _, user in prompts
        ]

    def count_tokens(self, system, user):
        return len(user)


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    init_group()
    local = RankEcho(rank)
    backend = ShardedBackend(local, rank, WORLD)
    if rank:
        backend.serve()
        result = {"calls": local.calls}
    else:
        try:
            first = backend.chat([("s", f"u{i}") for i in range(7)], Sampling(max_new_tokens=5))
            second = backend.chat([("s", "bad0"), ("s", "ok1")], Sampling(max_new_tokens=9))
            empty = backend.chat([], Sampling())
        finally:
            backend.close()
        result = {
            "first": first,
            "second": [a if isinstance(a, str) else [a.code, a.message] for a in second],
            "empty": empty,
            "calls": local.calls,
            "tokens": backend.count_tokens("s", "abcd"),
        }
    leave_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(_rank_main, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(WORLD)]


class Crashing(RankEcho):
    """Raises (not a BackendError: a bug, an out-of-memory) on a user text that asks for it."""

    def chat(self, prompts, sampling):
        if any(user == "crash" for _, user in prompts):
            raise RuntimeError(f"rank {self.rank} crashed")
        return super().chat(prompts, sampling)


def _crashing_rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    sharded.COLLECTIVE_TIMEOUT = timedelta(seconds=60)  # a regression fails the test instead of hanging it
    init_group()
    backend = ShardedBackend(Crashing(rank), rank, 2)
    if rank:
        backend.serve()
        result = "served"
    else:
        try:
            backend.chat([("s", "crash"), ("s", "ok")], Sampling())
        except RuntimeError as exc:
            result = str(exc)
        finally:
            backend.close()
    leave_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


def test_a_raising_backend_on_rank_0_lets_every_rank_close_and_leave(tmp_path):
    mp.spawn(_crashing_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    assert results == ["rank 0 crashed", "served"]


def test_answers_come_back_in_prompt_order_from_round_robin_ranks(ranks):
    assert ranks[0]["first"] == [f"{i % WORLD}:u{i}:5" for i in range(7)]


def test_a_failed_prompt_stays_in_its_own_slot(ranks):
    assert ranks[0]["second"] == [["bad_prompt", "rank 0 refused bad0"], "1:ok1:9"]


def test_every_rank_answers_its_share_of_every_call_and_stops_on_close(ranks):
    # 7 prompts over 3 ranks: 3, 2, 2; then 2 prompts: 1, 1, 0; then none at all.
    assert [r["calls"] for r in ranks] == [[3, 1, 0], [2, 1, 0], [2, 0, 0]]
    assert ranks[0]["empty"] == []


def test_prompt_tokens_are_counted_on_rank_0(ranks):
    assert ranks[0]["tokens"] == 4


def test_only_rank_0_drives():
    with pytest.raises(VlqcError, match="only rank 0 drives"):
        ShardedBackend(RankEcho(1), 1, 2).chat([("s", "u")], Sampling())
    with pytest.raises(VlqcError, match="rank 2 is not in a world of 2"):
        ShardedBackend(RankEcho(2), 2, 2)
