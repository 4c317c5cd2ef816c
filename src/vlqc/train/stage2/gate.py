"""The length gate of a Stage-2 AB run (docs/stage2.md), checked before training starts.

Channel B rolls out up to `stage2_ab.rollout.max_new_tokens` tokens after a row's prompt, so every
row must leave that much room in the base model's positions: prompt length + max_new_tokens ≤
max_position_embeddings of the model's language model (Qwen3-VL: text_config). The prompt length is
ms-swift's own, measured by the run's length counter (vlqc.train.over_length.RowLengths.prompt: the
template of `swift sft`, images at the size training sees them, every token before the assistant's
answer). Every row of the files ms-swift gets (train and val) is checked; a row that does not fit is
an error naming the file, the row index and the numbers, never a rollout cut short unseen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vlqc.errors import VlqcError
from vlqc.train.config import max_positions
from vlqc.train.over_length import EXAMPLES

log = logging.getLogger(__name__)

KEY = "stage2_ab.rollout.max_new_tokens"


def check_lengths(
    files: Mapping[Path, Sequence[dict]],
    prompt_length: Callable[[dict], int],
    max_new_tokens: int,
    model_dir: str | Path,
) -> dict[str, Any]:
    """Check every row of `files` (file → its rows) against the model folder's max_position_embeddings;
    returns the report for the run manifest (`length_gate`), or raises a VlqcError naming the rows (the
    first EXAMPLES of each file) that leave no room for a rollout."""
    limit = max_positions(model_dir)
    if limit is None:
        raise VlqcError(
            f"{Path(model_dir) / 'config.json'}: gives no max_position_embeddings, so the Stage-2 length gate "
            f"({KEY} after each prompt) cannot be checked"
        )
    report: dict[str, Any] = {"max_position_embeddings": limit, "max_new_tokens": max_new_tokens, "files": {}}
    errors = []
    for path, rows in files.items():
        lengths = [prompt_length(row) for row in rows]
        over = [i for i, n in enumerate(lengths) if n + max_new_tokens > limit]
        report["files"][str(path)] = {"rows": len(rows), "longest_prompt": max(lengths, default=0)}
        if over:
            named = "; ".join(
                f"row {i}: prompt {lengths[i]} + {max_new_tokens} = {lengths[i] + max_new_tokens} tokens"
                for i in over[:EXAMPLES]
            )
            errors.append(f"{path}: {len(over)} of {len(rows)} rows: {named}")
    if errors:
        raise VlqcError(
            f"Stage-2 length gate: a row's prompt plus {KEY} {max_new_tokens} must fit max_position_embeddings "
            f"{limit} of {Path(model_dir) / 'config.json'}; lower {KEY} or leave these rows out:\n  "
            + "\n  ".join(errors)
        )
    log.info(
        "Stage-2 length gate: every prompt + %d rollout tokens fits %d positions (longest prompts: %s)",
        max_new_tokens,
        limit,
        {Path(p).name: f["longest_prompt"] for p, f in report["files"].items()},
    )
    return report
