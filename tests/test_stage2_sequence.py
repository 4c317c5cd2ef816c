"""vlqc.train.stage2.sequence: channel-B sequences built from fixed rollouts with the real Qwen tokenizer,
their exact masks (the supervised and masked runs decoded back to text), the reuse of the rollout's own
token ids, and the fall-backs to channel A."""

from __future__ import annotations

import pytest

from vlqc.errors import VlqcError
from vlqc.inference.answers import DenseAnswer, DenseObject, parse_dense
from vlqc.inference.prompts import render_dense
from vlqc.train.stage2.sequence import IGNORE_INDEX, ChannelB, FallBack, build_channel_b, token_bytes

HEADER = "<DOMAIN=BBU>, <TASK=DETECTION>\n"
BOX = DenseObject("bbox_2d", (100, 100, 500, 500), "类别=BBU设备,品牌=华为")
LINE = DenseObject("line", (2, 2, 998, 998), "类别=光纤")
FAR = DenseObject("bbox_2d", (900, 900, 950, 950), "类别=标签")  # far from BOX and LINE: never matched
PROMPT = [151644, 872, 198, 151652, 151655, 151653]  # any ids: the prompt is copied, all masked
SUFFIX_TEXT = "<|im_end|>\n"


@pytest.fixture(scope="module")
def tokenizer():
    from vlqc.train.tokenizer import build_qwen_tokenizer  # the tiny model's tokenizer, without the model

    return build_qwen_tokenizer()


def value(obj: DenseObject) -> str:
    """One object's value as render_dense writes it."""
    text = render_dense([obj], "BBU")
    return text[len(HEADER) + len('{"object_1": ') : -1]


def truth(*objects: DenseObject) -> DenseAnswer:
    return parse_dense(render_dense(objects, "BBU"))


def build(tokenizer, rollout: list[int], gt: DenseAnswer) -> ChannelB | FallBack:
    return build_channel_b(
        PROMPT,
        rollout,
        gt,
        tokenizer,
        suffix_ids=tokenizer.encode(SUFFIX_TEXT),
        iou_threshold=0.5,
        line_threshold=25,
    )


def rollout_of(tokenizer, text: str, end: bool = True) -> list[int]:
    """A rollout as the model would write it: the text's ids, then `<|im_end|>` unless cut."""
    return tokenizer.encode(text) + ([tokenizer.convert_tokens_to_ids("<|im_end|>")] if end else [])


def runs(tokenizer, built: ChannelB) -> list[tuple[str, bool]]:
    """The answer and suffix as runs of (text, supervised); the prompt must be all masked."""
    assert built.input_ids[: len(PROMPT)] == PROMPT and built.labels[: len(PROMPT)] == [IGNORE_INDEX] * len(PROMPT)
    assert len(built.labels) == len(built.input_ids)
    out: list[list] = []
    for token_id, label in zip(built.input_ids[len(PROMPT) :], built.labels[len(PROMPT) :]):
        assert label in (IGNORE_INDEX, token_id)
        piece, supervised = token_bytes(tokenizer, [token_id])[0], label != IGNORE_INDEX
        if out and out[-1][1] == supervised:
            out[-1][0] += piece
        else:
            out.append([piece, supervised])
    return [(piece.decode("utf-8"), supervised) for piece, supervised in out]


def answer_ids(tokenizer, built: ChannelB) -> list[int]:
    return built.input_ids[len(PROMPT) : len(built.input_ids) - len(tokenizer.encode(SUFFIX_TEXT))]


def leading_tokens(tokenizer, ids: list[int], text: str) -> int:
    """How many of `ids` lie wholly inside the first len(text) characters they spell."""
    limit, at = len(text.encode()), 0
    for n, piece in enumerate(token_bytes(tokenizer, ids)):
        at += len(piece)
        if at > limit:
            return n
    return len(ids)


def counts(built: ChannelB) -> tuple[int, ...]:
    s = built.stats
    return s.parsed, s.pred, s.gt, s.matched, s.false_positives, s.false_negatives


def test_all_matched_supervises_the_ground_truth_values_and_keeps_the_rollout_prefix(tokenizer):
    gt = truth(BOX, LINE)
    near = (
        DenseObject("bbox_2d", (102, 100, 500, 500), "类别=BBU设备,品牌=中兴"),
        DenseObject("line", (2, 2, 998, 990), "类别=光纤"),
    )
    text = render_dense(near, "BBU")
    rollout = rollout_of(tokenizer, text)
    built = build(tokenizer, rollout, gt)
    assert runs(tokenizer, built) == [(render_dense(gt.objects, "BBU") + SUFFIX_TEXT, True)]
    assert counts(built) == (2, 2, 2, 2, 0, 0)
    assert built.stats.stopped and not built.stats.truncated and built.stats.invalid_bytes == 0
    # Up to the first changed value the ids are the rollout's own.
    kept = leading_tokens(tokenizer, rollout, HEADER + '{"object_1":')
    assert kept > 10 and answer_ids(tokenizer, built)[:kept] == rollout[:kept]
    assert built.stats.reused_tokens + built.stats.new_tokens == len(answer_ids(tokenizer, built))
    assert built.rollout_text == text
    import torch  # generate() hands back tensors

    as_tensors = build_channel_b(
        torch.tensor(PROMPT),
        torch.tensor(rollout),
        gt,
        tokenizer,
        suffix_ids=torch.tensor(tokenizer.encode(SUFFIX_TEXT)),
        iou_threshold=0.5,
        line_threshold=25,
    )
    assert as_tensors == built and type(as_tensors.input_ids[0]) is int  # what generate() returns works too


def test_a_false_positive_is_masked_and_keeps_its_tokens(tokenizer):
    text = render_dense((BOX, FAR, LINE), "BBU")
    rollout = rollout_of(tokenizer, text)
    built = build(tokenizer, rollout, truth(BOX, LINE))
    assert runs(tokenizer, built) == [
        (HEADER + '{"object_1": ' + value(BOX) + ",", True),
        (' "object_2": ' + value(FAR) + ",", False),  # `"},` carries the FP's end and the separator: masked
        (' "object_3": ' + value(LINE) + "}" + SUFFIX_TEXT, True),
    ]
    assert answer_ids(tokenizer, built) == rollout[:-1]  # nothing changed: every id is the rollout's
    assert counts(built) == (3, 3, 2, 2, 1, 0) and built.stats.new_tokens == 0
    assert [(pair.pred, pair.gt) for pair in built.matching.pairs] == [(0, 0), (2, 1)]


def test_a_false_negative_is_appended_and_supervised(tokenizer):
    text = render_dense((BOX,), "BBU")
    rollout = rollout_of(tokenizer, text)
    assert token_bytes(tokenizer, rollout[-2:-1]) == [b'"}}']  # the value's end and the closing brace merge
    built = build(tokenizer, rollout, truth(BOX, LINE))
    assert runs(tokenizer, built) == [(render_dense((BOX, LINE), "BBU") + SUFFIX_TEXT, True)]
    # The merged `"}}` is widened into the appended text and tokenized afresh (`"},` ...); all before it is reused.
    assert answer_ids(tokenizer, built)[: len(rollout) - 2] == rollout[:-2]
    assert counts(built) == (1, 1, 2, 1, 0, 1) and built.stats.reused_tokens == len(rollout) - 2


def test_an_edge_inside_a_merged_token_between_a_false_positive_and_the_appended_objects(tokenizer):
    rollout = rollout_of(tokenizer, render_dense((BOX, FAR), "BBU"))
    built = build(tokenizer, rollout, truth(BOX, LINE))
    intended = render_dense((BOX, FAR, LINE), "BBU")
    assert tokenizer.decode(answer_ids(tokenizer, built)) == intended
    assert runs(tokenizer, built) == [
        (HEADER + '{"object_1": ' + value(BOX) + ",", True),
        # The fresh `"},` holds the FP's last bytes: masked, though its comma opens the appended object.
        (' "object_2": ' + value(FAR) + ",", False),
        (' "object_3": ' + value(LINE) + "}" + SUFFIX_TEXT, True),
    ]
    assert counts(built) == (2, 2, 2, 1, 1, 1)


def test_a_rollout_cut_inside_an_object_keeps_what_precedes_it(tokenizer):
    full = render_dense((BOX, LINE), "BBU")
    text = full[: full.index("类别=光纤") + 2]
    built = build(tokenizer, rollout_of(tokenizer, text, end=False), truth(BOX, LINE))
    assert runs(tokenizer, built) == [(full + SUFFIX_TEXT, True)]
    assert counts(built) == (1, 1, 2, 1, 0, 1)
    assert built.stats.truncated and not built.stats.stopped


def test_a_cut_rollout_whose_first_object_is_a_false_positive(tokenizer):
    full = render_dense((FAR, BOX), "BBU")
    rollout = rollout_of(tokenizer, full[: full.index("[100, 100") + 4], end=False)
    built = build(tokenizer, rollout, truth(BOX))
    assert runs(tokenizer, built) == [
        (HEADER, True),
        ('{"object_1": ' + value(FAR) + ",", False),  # `{"` merges the brace into the FP's key: masked
        (' "object_2": ' + value(BOX) + "}" + SUFFIX_TEXT, True),
    ]
    assert counts(built) == (1, 1, 1, 0, 1, 1) and built.stats.truncated


def test_no_objects(tokenizer):
    empty = rollout_of(tokenizer, HEADER + "{}")
    built = build(tokenizer, empty, truth())
    assert runs(tokenizer, built) == [(HEADER + "{}" + SUFFIX_TEXT, True)]
    assert answer_ids(tokenizer, built) == empty[:-1] and counts(built) == (0, 0, 0, 0, 0, 0)
    missed = build(tokenizer, empty, truth(BOX))
    assert runs(tokenizer, missed) == [(render_dense((BOX,), "BBU") + SUFFIX_TEXT, True)]
    assert counts(missed) == (0, 0, 1, 0, 0, 1)
    said = build(tokenizer, rollout_of(tokenizer, render_dense((FAR,), "BBU")), truth())
    assert runs(tokenizer, said) == [(HEADER, True), ('{"object_1": ' + value(FAR) + "}", False), (SUFFIX_TEXT, True)]


def test_the_prefix_is_the_rollouts_own_ids_not_a_re_encoding(tokenizer):
    text = render_dense((BOX, LINE), "BBU")
    rollout = [i for char in text for i in tokenizer.encode(char)]  # one character at a time: not BPE's choice
    gt = truth(BOX, DenseObject("line", (2, 2, 998, 990), "类别=光纤"))
    built = build(tokenizer, rollout, gt)
    assert runs(tokenizer, built) == [(render_dense(gt.objects, "BBU") + SUFFIX_TEXT, True)]
    ids = answer_ids(tokenizer, built)
    kept = leading_tokens(tokenizer, rollout, text[: text.index('{"line"')])
    assert ids[:kept] == rollout[:kept] != tokenizer.encode(text[: text.index('{"line"')])
    assert not built.stats.stopped and built.stats.reused_tokens >= kept


def test_a_broken_entry_ends_the_kept_prefix(tokenizer):
    gt = truth(BOX, LINE)
    renumbered = render_dense((BOX, LINE), "BBU").replace('"object_2"', '"object_3"')
    built = build(tokenizer, rollout_of(tokenizer, renumbered), gt)
    assert tokenizer.decode(answer_ids(tokenizer, built)) == render_dense((BOX, LINE), "BBU")
    assert counts(built) == (2, 1, 2, 1, 0, 1)  # salvage read both; the prefix stops at the wrong key
    malformed = render_dense((BOX, FAR, LINE), "BBU").replace("[900, 900, 950, 950]", "[900, 900, 950]")
    built = build(tokenizer, rollout_of(tokenizer, malformed), gt)
    assert runs(tokenizer, built) == [(render_dense((BOX, LINE), "BBU") + SUFFIX_TEXT, True)]
    assert counts(built) == (2, 1, 2, 1, 0, 1) and built.stats.dropped == 1


def test_a_character_cut_by_max_new_tokens(tokenizer):
    rare = DenseObject("bbox_2d", (900, 900, 950, 950), "类别=标签,备注=龘")
    text = render_dense((BOX, rare), "BBU")
    ids = tokenizer.encode(text)
    whole = leading_tokens(tokenizer, ids, text[: text.index("龘")])
    assert len(token_bytes(tokenizer, [ids[whole]])[0]) < len("龘".encode())  # the character takes 2 tokens
    built = build(tokenizer, ids[: whole + 1], truth(BOX))
    assert runs(tokenizer, built) == [(render_dense((BOX,), "BBU") + SUFFIX_TEXT, True)]
    assert built.stats.invalid_bytes > 0 and built.stats.truncated and counts(built) == (1, 1, 1, 1, 0, 0)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no_header"),
        ("我看到了一台BBU。", "no_header"),
        ("<DOMAIN=RRU>, <TASK=DETECTION>\n{}", "domain_mismatch"),
        (HEADER + '```json\n{"object_1": ' + value(BOX) + "}", "bad_start"),
        ("<DOMAIN=BBU>, <TASK=SUMMARY>\n{}", "bad_start"),
        ("<DOMAIN=BBU>，<TASK=DETECTION>\n{}", "bad_start"),
        (HEADER + "[" + value(BOX) + "]", "bad_start"),
        (HEADER + "没有对象", "bad_start"),
    ],
)
def test_fall_backs_name_their_reason(tokenizer, text, reason):
    fallen = build(tokenizer, rollout_of(tokenizer, text), truth(BOX))
    assert isinstance(fallen, FallBack) and fallen.reason == reason and fallen.rollout_text == text


def test_an_id_past_the_vocabulary_falls_back_with_the_text_before_it(tokenizer):
    # Qwen3-VL's embedding has rows past the tokenizer's 151669 ids; a random 2B model wrote 151681 on a GPU.
    before = tokenizer.encode(HEADER + '{"object_1": ')
    fallen = build(tokenizer, [*before, len(tokenizer) + 12, *tokenizer.encode("}")], truth(BOX))
    assert isinstance(fallen, FallBack) and fallen.reason == "unknown_token"
    assert (
        fallen.rollout_text == HEADER + '{"object_1": ' and f"{len(tokenizer) + 12} (at {len(before)})" in fallen.detail
    )


def test_text_the_tokenizer_would_change_falls_back(tokenizer):
    # A ground-truth desc that is not NFC: the Qwen tokenizer normalizes it, so the appended text cannot be kept.
    decomposed = DenseObject("bbox_2d", (600, 600, 700, 700), "类别=标签,备注=Cafe\u0301")
    fallen = build(tokenizer, rollout_of(tokenizer, render_dense((BOX,), "BBU")), truth(BOX, decomposed))
    assert isinstance(fallen, FallBack) and fallen.reason == "retokenized_text"


def test_the_ground_truth_needs_its_domain(tokenizer):
    with pytest.raises(VlqcError, match="domain"):
        build(tokenizer, rollout_of(tokenizer, HEADER + "{}"), DenseAnswer(None, (BOX,), ()))


def test_token_bytes_are_exact_and_refuse_unknown_ids(tokenizer):
    text = '<DOMAIN=BBU>, {"类别": "龘"}\n'
    ids = tokenizer.encode(text + SUFFIX_TEXT)
    assert b"".join(token_bytes(tokenizer, ids)) == (text + SUFFIX_TEXT).encode()
    with pytest.raises(VlqcError, match="not a byte-level BPE token"):
        token_bytes(tokenizer, [len(tokenizer) + 5])
