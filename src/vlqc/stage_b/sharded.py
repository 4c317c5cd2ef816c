"""Ticket-parallel Stage-B under torchrun: one backend per rank, one Stage-B driver on rank 0.

Rank 0 runs the whole Stage-B loop (rollout, guardrails, reflection, files). Each of its `chat` calls
hands prompt i to rank i % world, every rank answers its share with its own in-process backend, and
rank 0 gathers the answers back in prompt order. The other ranks only `serve` until rank 0 calls
`close`. Prompts and answers are Python objects, so the ranks talk over gloo whatever the device.

If any rank dies, torchrun stops the others (`--max-restarts=0`), so nobody waits forever. A backend that raises
is not a death: its rank finishes the call's collective first, then raises (on rank 0: before `close`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import torch.distributed as dist

from vlqc.errors import VlqcError
from vlqc.inference.sampling import Sampling
from vlqc.stage_b.rollout import BackendError, ChatBackend

log = logging.getLogger(__name__)

# One collective spans a whole chat call (each rank's generation of its share), so the
# default 30-minute gloo timeout would cut a long CPU batch short.
COLLECTIVE_TIMEOUT = timedelta(hours=6)


def init_group() -> None:
    """Join the torchrun job's gloo group (its address, rank and size come from the environment)."""
    dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)


def leave_group() -> None:
    """Wait for every rank, then close this rank's connections: a rank that simply exits can abort a peer
    whose gloo threads still read from it (SIGABRT)."""
    dist.barrier()
    dist.destroy_process_group()


class ShardedBackend:
    """A `ChatBackend` spread over the ranks of an initialised process group."""

    def __init__(self, local: ChatBackend, rank: int, world: int):
        if world < 1 or not 0 <= rank < world:
            raise VlqcError(f"rank {rank} is not in a world of {world}")
        self.local = local
        self.rank = rank
        self.world = world

    def chat(self, prompts: Sequence[tuple[str, str]], sampling: Sampling) -> list[str | BackendError]:
        if self.rank != 0:
            raise VlqcError("only rank 0 drives Stage-B; the other ranks serve")
        dist.broadcast_object_list([(list(prompts), sampling)], src=0)
        return self._answer_share(prompts, sampling)

    def count_tokens(self, system: str, user: str) -> int:
        return self.local.count_tokens(system, user)

    def serve(self) -> None:
        """Answer rank 0's chat calls until it closes (ranks other than 0)."""
        calls = answered = 0
        while True:
            message: list = [None]
            dist.broadcast_object_list(message, src=0)
            if message[0] is None:
                log.info("rank %d of %d: answered %d prompts in %d calls", self.rank, self.world, answered, calls)
                return
            prompts, sampling = message[0]
            self._answer_share(prompts, sampling)
            calls += 1
            answered += len(prompts[self.rank :: self.world])

    def close(self) -> None:
        """Tell the serving ranks that rank 0 is done (rank 0, once, also after an error)."""
        dist.broadcast_object_list([None], src=0)

    def _answer_share(self, prompts: Sequence[tuple[str, str]], sampling: Sampling) -> list[str | BackendError]:
        # A rank whose backend raises still joins the gather (with no share) and raises after it: the ranks
        # stay in step, so rank 0 can go on to `close` instead of meeting peers stuck in another collective.
        try:
            share, failure = self.local.chat(prompts[self.rank :: self.world], sampling), None
        except Exception as exc:  # re-raised below, once this collective is over
            share, failure = None, exc
        shares: list = [None] * self.world
        dist.all_gather_object(shares, share)
        if failure is not None:
            raise failure
        if self.rank:  # a serving rank only answers; rank 0 puts the answers together
            return []
        failed = [rank for rank, answered in enumerate(shares) if answered is None]
        if failed:
            raise VlqcError(f"rank(s) {failed} could not answer their share of the prompts (see their log)")
        answers: list[str | BackendError | None] = [None] * len(prompts)
        for rank, answered in enumerate(shares):
            answers[rank :: self.world] = answered
        return answers
