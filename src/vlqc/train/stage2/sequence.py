"""Stage-2 channel B: the training sequence built from a greedy rollout of the dense answer (docs/stage2.md#channel-b,
docs/answers.md#the-dense-answer). Pure logic: no model, no trainer.

Contract:
- `build_channel_b(prompt_ids, rollout_ids, gt, tokenizer, suffix_ids=, iou_threshold=, line_threshold=)`
  returns a `ChannelB` (input_ids, labels, `RolloutStats`, the rollout text and the matching) or a
  `FallBack` (a reason code and a detail): the caller trains that sample on channel A instead and counts
  the reason. Deterministic: the same ids, ground truth and thresholds give the same result.
- `input_ids` = prompt ids + answer ids + `suffix_ids`; `labels[i]` is `input_ids[i]` where supervised and
  -100 elsewhere (ms-swift shifts inside the loss), the prompt all -100, `suffix_ids` (the template's
  end-of-answer tokens after the JSON, `<|im_end|>` ...) always supervised.
- `gt` is the ground truth read strictly (`parse_dense(target)`: a domain and its objects); its objects
  are written exactly as `vlqc.inference.prompts.render_dense` writes them (docs/answers.md#the-dense-answer).

The algorithm:
1. Rollout text from the rollout's own ids: trailing special tokens (end of turn, eos, padding) are
   stripped (`stopped` says whether there were any; none means the rollout was cut at max_new_tokens);
   each id maps to its exact bytes (byte-level BPE: the token's characters through the inverse of GPT-2's
   byte-to-unicode table; an added token by its content), so token boundaries are byte offsets. The text
   is the longest UTF-8-valid prefix of those bytes (a multi-byte character cut at max_new_tokens ends it;
   `invalid_bytes` counts what follows). No re-tokenisation anywhere in this step. An id past the
   tokenizer's vocabulary (the embedding's padding rows, which an undertrained model can write) has no
   bytes: fall back, `unknown_token`.
2. `parse_dense(text, strict=False)` (salvage) gives the objects and, for each, its key and value span.
   The rollout must begin with the canonical `<DOMAIN=D>, <TASK=DETECTION>\\n{` of the ground truth's domain
   D, else fall back: `no_header` (salvage reads no domain), `domain_mismatch`, `bad_start` (another task,
   spacing, a fence, the list form, no JSON).
3. The kept prefix: the rollout's entries in order while each is a kept object whose key text is exactly
   `"object_<n>": ` (n = 1, 2, ... consecutive) and which follows the previous one after exactly `, `.
   The first entry salvage dropped (cut, malformed, bad key, broken rule) or any other deviation ends it:
   later entries are discarded, even those salvage kept.
4. `vlqc.evaluation.grounding.match` pairs the kept prefix's objects with the ground truth's (geometry
   only, one to one, deterministic).
5. The intended answer text, region by region, over the rollout's bytes:
   header line and `{` (rollout's, supervised); per kept entry its key (rollout's; supervised when
   matched, masked when a false positive) and its value (matched: the matched ground-truth object's
   value as render_dense writes it, supervised; false positive: the rollout's own, masked); the `, `
   between entries (rollout's, supervised); then everything after the last kept entry is replaced by
   the missed ground-truth objects in ground-truth order as `, "object_<K+1>": {...}`, ... and the
   closing `}` (supervised).
6. Tokens: where a region keeps the rollout's bytes, the rollout's token ids are reused verbatim. A region
   whose text changes is widened outward to rollout token boundaries that are also UTF-8 character
   boundaries (further out where a token starts or ends inside a character), overlapping widened
   regions merge, and each merged piece (its new text with the rollout bytes the widening took in) is
   tokenized afresh. So `tokenizer.decode(answer ids)` is exactly the intended text. A fresh piece
   must tokenize back to its own bytes (the Qwen tokenizer NFC-normalizes: a non-NFC rollout piece would
   change): else fall back, `retokenized_text`.
7. Labels: a token is supervised only when every byte it carries is supervised text. A token that
   straddles a masked false positive and its neighbour (byte-level BPE merges `"},`, ` "`, `{"` and
   `"}}` across entry edges) is masked: a false positive stays loss-neutral even where this costs the
   separator or closing brace merged into its tokens.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from vlqc.errors import VlqcError
from vlqc.evaluation.grounding import Matching, match
from vlqc.inference.answers import DenseAnswer, parse_dense
from vlqc.inference.prompts import JSON_SEPARATORS, render_dense

IGNORE_INDEX = -100  # label of a position without loss (ms-swift, transformers)
ENTRY_SEPARATOR, KEY_SEPARATOR = JSON_SEPARATORS  # ", " between entries, ": " after a key
# Why a rollout is trained on channel A instead (module docstring).
FALLBACK_REASONS = ("unknown_token", "no_header", "domain_mismatch", "bad_start", "retokenized_text")


@dataclass(frozen=True)
class RolloutStats:
    rollout_tokens: int  # generated ids as given, trailing special tokens included
    stopped: bool  # ended with a special token (end of turn, eos, padding), not cut at max_new_tokens
    invalid_bytes: int  # rollout bytes after the longest UTF-8-valid prefix
    truncated: bool  # salvage found the answer cut (a `truncated` drop)
    parsed: int  # objects salvage kept anywhere in the rollout
    dropped: int  # pieces salvage dropped
    pred: int  # objects of the kept prefix (those matched); parsed - pred were discarded after a break
    gt: int
    matched: int
    false_positives: int  # kept, unmatched: masked
    false_negatives: int  # missed ground truth: appended
    reused_tokens: int  # answer tokens taken verbatim from the rollout
    new_tokens: int  # answer tokens tokenized afresh (ground-truth values, appended objects, widened edges)


@dataclass(frozen=True)
class ChannelB:
    input_ids: list[int]
    labels: list[int]
    stats: RolloutStats
    rollout_text: str  # what was parsed
    matching: Matching  # kept-prefix objects (pred) against the ground truth


@dataclass(frozen=True)
class FallBack:
    reason: str  # one of FALLBACK_REASONS
    detail: str
    rollout_text: str


@dataclass(frozen=True)
class _Region:
    """Bytes [start, end) of the rollout become `out`; supervised or masked."""

    start: int
    end: int
    out: bytes
    supervised: bool


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[bytes]:
    """The exact bytes of each token of a byte-level BPE tokenizer (an added token: its content)."""
    added = tokenizer.added_tokens_decoder
    table = _unicode_to_byte()
    pieces = []
    for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))):
        if token_id in added:
            pieces.append(added[token_id].content.encode())
            continue
        try:
            pieces.append(bytes(table[char] for char in token))
        except (KeyError, TypeError):
            raise VlqcError(f"token id {token_id} ({token!r}) is not a byte-level BPE token") from None
    return pieces


def build_channel_b(
    prompt_ids: Sequence[int],
    rollout_ids: Sequence[int],
    gt: DenseAnswer,
    tokenizer: PreTrainedTokenizerBase,
    *,
    suffix_ids: Sequence[int],
    iou_threshold: float,
    line_threshold: float,
) -> ChannelB | FallBack:
    """The channel-B sequence of one rollout (module docstring), or why the sample falls back to channel A."""
    if gt.domain is None:
        raise VlqcError("the ground truth of a channel-B sample needs its domain (parse its target strictly)")
    ends = set(tokenizer.all_special_ids)
    prompt_ids, rollout_ids = [int(i) for i in prompt_ids], [int(i) for i in rollout_ids]  # tensors too
    kept_ids = list(rollout_ids)
    while kept_ids and kept_ids[-1] in ends:
        kept_ids.pop()
    # The embedding has rows past the tokenizer's vocabulary (padding); an undertrained model can emit them.
    tokens = tokenizer.convert_ids_to_tokens(kept_ids)
    if None in tokens:
        at = tokens.index(None)
        detail = f"token id {kept_ids[at]} (at {at}) is past the tokenizer's vocabulary of {len(tokenizer)}"
        return FallBack("unknown_token", detail, tokenizer.decode(kept_ids[:at], skip_special_tokens=False))
    pieces = token_bytes(tokenizer, kept_ids)
    raw = b"".join(pieces)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = raw[: exc.start].decode("utf-8")
    parsed = parse_dense(text, strict=False)

    prefix = render_dense((), gt.domain)[:-1]  # the header line and "{"
    if parsed.domain is None:
        return FallBack("no_header", f"no <DOMAIN=…>, <TASK=…> line: {text[:60]!r}", text)
    if parsed.domain != gt.domain:
        return FallBack("domain_mismatch", f"the rollout says {parsed.domain}, the ground truth {gt.domain}", text)
    if not text.startswith(prefix):
        return FallBack("bad_start", f"the rollout does not start with {prefix!r}: {text[:60]!r}", text)

    spans = _kept_prefix(text, parsed.spans, len(prefix))
    pred = parsed.objects[: len(spans)]
    matching = match(pred, gt.objects, iou_threshold=iou_threshold, line_threshold=line_threshold)
    regions = _regions(text, raw, spans, matching, gt, len(prefix))
    built = _tokens(raw, pieces, kept_ids, regions, tokenizer)
    if isinstance(built, str):
        return FallBack("retokenized_text", built, text)
    answer_ids, answer_labels, reused = built

    stats = RolloutStats(
        rollout_tokens=len(rollout_ids),
        stopped=len(kept_ids) < len(rollout_ids),
        invalid_bytes=len(raw) - len(text.encode()),
        truncated=any(d.reason == "truncated" for d in parsed.dropped),
        parsed=len(parsed.objects),
        dropped=len(parsed.dropped),
        pred=len(pred),
        gt=len(gt.objects),
        matched=len(matching.pairs),
        false_positives=len(matching.unmatched_pred),
        false_negatives=len(matching.unmatched_gt),
        reused_tokens=reused,
        new_tokens=len(answer_ids) - reused,
    )
    return ChannelB(
        input_ids=[*prompt_ids, *answer_ids, *map(int, suffix_ids)],
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_labels + [int(i) for i in suffix_ids],
        stats=stats,
        rollout_text=text,
        matching=matching,
    )


def _key(n: int) -> str:
    return json.dumps(f"object_{n}") + KEY_SEPARATOR


def _kept_prefix(text: str, spans: Sequence[tuple[int, int, int]], start: int) -> list[tuple[int, int, int]]:
    """The spans of the unbroken run of canonical entries right after the opening brace at `start` - 1."""
    kept: list[tuple[int, int, int]] = []
    end = start
    for n, (key_start, value_start, value_end) in enumerate(spans, 1):
        lead = ENTRY_SEPARATOR if kept else ""
        if text[end:key_start] != lead or text[key_start:value_start] != _key(n):
            break
        kept.append((key_start, value_start, value_end))
        end = value_end
    return kept


def _regions(
    text: str,
    raw: bytes,
    spans: list[tuple[int, int, int]],
    matching: Matching,
    gt: DenseAnswer,
    prefix_len: int,
) -> list[_Region]:
    """The intended answer as regions tiling the rollout's bytes (module docstring, step 5)."""
    offsets = [0]
    for char in text:
        offsets.append(offsets[-1] + len(char.encode()))

    def keep(start: int, end: int, supervised: bool) -> _Region:
        return _Region(offsets[start], offsets[end], raw[offsets[start] : offsets[end]], supervised)

    values = _gt_values(gt)
    gt_of = {pair.pred: pair.gt for pair in matching.pairs}
    regions = [keep(0, prefix_len, True)]
    end = prefix_len
    for n, (key_start, value_start, value_end) in enumerate(spans):
        if n:
            regions.append(keep(end, key_start, True))
        matched = n in gt_of
        regions.append(keep(key_start, value_start, matched))
        if matched:
            regions.append(_Region(offsets[value_start], offsets[value_end], values[gt_of[n]].encode(), True))
        else:
            regions.append(keep(value_start, value_end, False))
        end = value_end
    tail = "".join(
        (ENTRY_SEPARATOR if n > 1 else "") + _key(n) + values[j]
        for n, j in enumerate(matching.unmatched_gt, len(spans) + 1)
    )
    regions.append(_Region(offsets[end], len(raw), (tail + "}").encode(), True))
    return regions


def _gt_values(gt: DenseAnswer) -> list[str]:
    """Each ground-truth object's value, exactly as render_dense writes it."""
    rendered = render_dense(gt.objects, gt.domain)
    spans = parse_dense(rendered, strict=False).spans
    if len(spans) != len(gt.objects):
        raise VlqcError(f"the ground truth does not read back from its rendering: {rendered[:80]!r}")
    return [rendered[value_start:value_end] for _, value_start, value_end in spans]


def _tokens(
    raw: bytes,
    pieces: list[bytes],
    ids: list[int],
    regions: list[_Region],
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[list[int], list[int], int] | str:
    """Answer ids and labels over `regions` (module docstring, steps 6 and 7), and how many ids are the
    rollout's; or, as a string, why a fresh piece did not tokenize back to its text."""
    starts = [0]
    for piece in pieces:
        starts.append(starts[-1] + len(piece))
    bounds = starts  # token boundaries, 0 and len(raw) included

    def char_edge(at: int) -> bool:
        return at == len(raw) or raw[at] & 0xC0 != 0x80  # not a UTF-8 continuation byte

    def widen(start: int, end: int) -> tuple[int, int]:
        low = bisect.bisect_right(bounds, start) - 1
        while not char_edge(bounds[low]):
            low -= 1
        high = bisect.bisect_left(bounds, end)
        while not char_edge(bounds[high]):
            high += 1
        return bounds[low], bounds[high]

    groups: list[list] = []  # [start, end, region indices]
    for index, region in enumerate(regions):
        if region.out == raw[region.start : region.end]:
            continue
        start, end = widen(region.start, region.end)
        if groups and (start < groups[-1][1] or start == groups[-1][0]):
            groups[-1][0], groups[-1][1] = min(groups[-1][0], start), max(groups[-1][1], end)
            groups[-1][2].append(index)
        else:
            groups.append([start, end, [index]])

    supervised = bytearray(len(raw))
    for region in regions:
        if region.supervised and region.out == raw[region.start : region.end]:
            supervised[region.start : region.end] = b"\x01" * (region.end - region.start)

    token_at = {start: index for index, start in enumerate(starts[:-1])}
    answer_ids: list[int] = []
    labels: list[int] = []
    reused = 0
    pos, next_group = 0, 0
    while True:
        if next_group < len(groups) and groups[next_group][0] == pos:
            start, end, edited = groups[next_group]
            fresh = _fresh(raw, regions, start, end, set(edited), tokenizer)
            if isinstance(fresh, str):
                return fresh
            answer_ids += fresh[0]
            labels += fresh[1]
            pos, next_group = end, next_group + 1
            continue
        if pos == len(raw):
            break
        index = token_at[pos]
        end = starts[index + 1]
        answer_ids.append(ids[index])
        labels.append(ids[index] if all(supervised[pos:end]) else IGNORE_INDEX)
        reused += 1
        pos = end

    intended = b"".join(region.out for region in regions)
    if b"".join(token_bytes(tokenizer, answer_ids)) != intended:
        raise VlqcError(f"channel B built {len(answer_ids)} ids that do not spell the intended answer")
    return answer_ids, labels, reused


def _fresh(
    raw: bytes,
    regions: list[_Region],
    start: int,
    end: int,
    edited: set[int],
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[list[int], list[int]] | str:
    """Rollout bytes [start, end) with the edited regions' new text, tokenized afresh, and their labels."""
    text = bytearray()
    supervised = bytearray()
    for index, region in enumerate(regions):
        if index in edited:
            piece = region.out
        elif region.end > start and region.start < end:
            piece = raw[max(region.start, start) : min(region.end, end)]
        else:
            continue
        text += piece
        supervised += (b"\x01" if region.supervised else b"\x00") * len(piece)
    ids = tokenizer.encode(text.decode("utf-8"), add_special_tokens=False)
    pieces = token_bytes(tokenizer, ids)
    if b"".join(pieces) != text:
        return f"re-tokenizing {bytes(text).decode('utf-8')[:60]!r} changes its text"
    labels, at = [], 0
    for token_id, piece in zip(ids, pieces):
        labels.append(token_id if all(supervised[at : at + len(piece)]) else IGNORE_INDEX)
        at += len(piece)
    return ids, labels
