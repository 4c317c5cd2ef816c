"""Eval candidates: every row the eval set may draw from, built from a dataset's canonical val split
(docs/evaluation.md#the-eval-set).

Per val photo one `dense` and one `summary` row, per val ticket one `verdict` row (text only, the
ground-truth summaries in photo order), with the prompt and target builders of training
(`vlqc.train.sft_data.image_texts`, `ticket_texts`): mission named, no guidance, no augmentation.
Images stay the canonical ones (paths relative to the split's folder); the eval-loss job fits them
to a run's pixel cap as training's data preparation does. Dense targets are in norm1000
coordinates, so that resize leaves them as they are.

Each row gets `label_len`, the token count of its assistant target with the base model's tokenizer
(no special tokens: training's label mask adds `<|im_end|>` and a newline to every row alike), and
its length bucket.

Candidates are shared by every run, so their messages have the default wording; each also carries its
prompt spec (`prompt`: task, slot, domain and template fields, `vlqc.inference.prompts.render_spec`).
An eval job words the rows with the run's `prompts` section through `worded` (docs/prompts.md), so a
checkpoint is asked in the words it was trained with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vlqc.errors import VlqcError
from vlqc.evaluation.buckets import BUCKETS, balanced_draw, bucket_of
from vlqc.inference.profiles import PromptConfig
from vlqc.inference.prompts import dense_spec, render_spec, summary_spec, verdict_spec
from vlqc.train.sft_data import MODES, group_tickets, image_texts, record_domain, ticket_rules, ticket_texts

ROW_SCHEMA = "eval_row"


def _row(
    mode: str, source: str, texts: tuple[str, str, str], images: list[str], spec: Mapping[str, Any]
) -> dict[str, Any]:
    system, user, answer = texts
    if render_spec(spec) != (system, user):  # the spec must word the very prompt training builds
        raise VlqcError(f"{mode}:{source}: its prompt spec does not render the prompt training builds")
    return {
        "id": f"{mode}:{source}",
        "mode": mode,
        "images": images,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ],
        "source": source,
        "prompt": dict(spec),
    }


def build_candidates(
    records: Sequence[Mapping[str, Any]],
    missions: Mapping[str, Mapping[str, Any]],
    count_tokens: Callable[[str], int],
    thresholds: Sequence[int],
    modes: Sequence[str],
    source: str | Path,
) -> list[dict[str, Any]]:
    """Candidate rows of the canonical records of `source` (schema eval_row), in record order with
    the verdict rows last (ticket order of first photo). `count_tokens` counts an answer's tokens."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise VlqcError(f"unknown eval modes {unknown}; known: {', '.join(MODES)}")
    source = Path(source)
    image_modes = [mode for mode in ("dense", "summary") if mode in modes]
    rows = []
    for index, record in enumerate(records if image_modes else ()):
        domain = record_domain(record, missions)
        if domain is None:
            raise VlqcError(f"{source}: record {index}: no domain and no mission, so it cannot be prompted")
        mission = record.get("ticket", {}).get("mission")
        for mode in image_modes:
            try:
                texts = image_texts(mode, record, domain, mission, missions, no_mission=False)
            except VlqcError as exc:
                raise VlqcError(f"{source}: record {index}: {exc}") from exc
            spec = summary_spec(mission, domain, missions) if mode == "summary" else dense_spec(domain)
            rows.append(_row(mode, record["sample_id"], texts, list(record["images"]), spec))
    if "verdict" in modes:
        tickets = group_tickets(records)
        rules = ticket_rules(tickets, missions, source)
        for ticket in sorted(tickets.values(), key=lambda t: t.indices[0]):
            texts = ticket_texts(ticket, records, rules[ticket.mission], missions)
            spec = verdict_spec(ticket.mission, None, [records[i]["summary"] for i in ticket.indices], missions)
            rows.append(_row("verdict", ticket.key, texts, [], spec))
    for row in rows:
        row["label_len"] = count_tokens(row["messages"][2]["content"])
        row["bucket"] = bucket_of(row["label_len"], thresholds)
    duplicates = [key for key, n in Counter(row["id"] for row in rows).items() if n > 1]
    if duplicates:
        raise VlqcError(f"{source}: rows with the same id (a sample_id or ticket twice?): {duplicates[:5]}")
    return rows


def worded(rows: Sequence[Mapping[str, Any]], prompts: PromptConfig) -> list[dict[str, Any]]:
    """`rows` (eval or golden rows) with system and user messages worded by a run's `prompts`
    (`vlqc.train.config.prompt_config` of its config). A row without a prompt spec (candidates built
    before prompt profiles) keeps its messages, which serve the default prompts only."""
    out = []
    for row in rows:
        if "prompt" not in row:
            if prompts != PromptConfig():
                raise VlqcError(
                    f"row {row['id']}: no prompt spec, so it cannot be worded by the run's prompts section: "
                    "rebuild the eval candidates (rule eval_candidates)"
                )
            out.append(dict(row))
            continue
        system, user = render_spec(row["prompt"], prompts)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}, dict(row["messages"][2])]
        out.append({**row, "messages": messages})
    return out


def token_counter(model_dir: str | Path) -> Callable[[str], int]:
    """Token count of a text with the tokenizer of `model_dir`, without special tokens."""
    from transformers import AutoTokenizer  # heavy: only the job that counts imports it

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def draw_split(
    candidates: Sequence[Mapping[str, Any]], n: int, seed: int, thresholds: Sequence[int], dataset: str, where: str
) -> dict[str, Any]:
    """The eval set (schema eval_split): n candidates balanced across buckets, drawn with `seed`. Each
    candidate's bucket must be what `thresholds` give its label_len (else the candidates are stale)."""
    stale = [row["id"] for row in candidates if row["bucket"] != bucket_of(row["label_len"], thresholds)]
    if stale:
        raise VlqcError(f"{where}: rows bucketed with other thresholds than {list(thresholds)}: {stale[:3]}")
    rows = balanced_draw(candidates, n, seed)
    if not rows:
        raise VlqcError(f"{where}: no candidates to draw from")
    return {
        "dataset": dataset,
        "seed": seed,
        "rows_requested": n,
        "len_buckets": list(thresholds),
        "bucket_counts": counts(rows, "bucket", BUCKETS),
        "mode_counts": counts(rows, "mode", MODES),
        "candidates": counts(candidates, "bucket", BUCKETS),
        "rows": [dict(row) for row in rows],
    }


def counts(rows: Sequence[Mapping[str, Any]], key: str, names: Sequence[str]) -> dict[str, int]:
    """Rows per value of `key`, every name listed (0 when absent)."""
    found = Counter(row[key] for row in rows)
    return {name: found[name] for name in names}
