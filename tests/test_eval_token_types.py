"""Token-type accuracy of the eval loss job (docs/prompts.md#token-types): characters of a dense answer
typed by hand, tokens typed through their offsets, accuracies by hand, and the tiny model's hits against
its own full logits."""

from __future__ import annotations

import pytest
from conftest import REPO
from PIL import Image

from vlqc.evaluation.loss import RowLoss, char_types, summarize, token_types
from vlqc.schemas import validate
from vlqc.train.config import load_train_config

HEADER = "<DOMAIN=BBU>, <TASK=DETECTION>\n"
BODY = (
    '{"object_1": {"bbox_2d": [12, 5, 300, 400], "desc": "类别=BBU设备"}, '
    '"object_2": {"poly": [1, 2, 3, 4, 5, 6, 7, 8], "poly_points": 4, "desc": "类别=挡风板"}, '
    '"object_3": {"line": [10, 20, 30, 40], "line_points": 2, "desc": "类别=光纤,备注=\\"弯\\""}}'
)
ANSWER = HEADER + BODY


def _spans(types: list[str], kind: str) -> str:
    return "".join(c for c, t in zip(ANSWER, types) if t == kind)


def test_characters_of_a_dense_answer_by_type():
    types = char_types(ANSWER)
    assert _spans(types, "desc") == '类别=BBU设备类别=挡风板类别=光纤,备注=\\"弯\\"'
    # Every digit of the three arrays, nothing of the point counts (4, 2) or the keys (object_1).
    assert _spans(types, "coordinate") == "1253004001234567810203040"
    assert set(_spans(types, "format")) >= set('{}[]":, <>=\n_') and "poly_points" in _spans(types, "format")
    # The old list answer types the same way.
    old = HEADER + '[{"bbox_2d": [7, 8, 9, 10], "desc": "类别=标签"}]'
    typed = char_types(old)
    assert "".join(c for c, t in zip(old, typed) if t == "coordinate") == "78910"
    assert "".join(c for c, t in zip(old, typed) if t == "desc") == "类别=标签"


def test_tokens_take_the_type_of_what_they_cover():
    start = ANSWER.index("[12")
    desc = ANSWER.index("类别=BBU")
    offsets = [
        (0, len(HEADER)),  # the header line: format
        (start, start + 1),  # "[": format
        (start + 1, start + 2),  # "1": coordinate
        (start + 2, start + 4),  # "2,": a digit and a comma: coordinate
        (desc - 1, desc),  # the opening quote: format
        (desc, desc + 2),  # "类别": desc
        (desc + 7, desc + 9),  # the last desc character and the closing quote: desc
    ]
    assert token_types(ANSWER, offsets) == ["format", "format", "coordinate", "coordinate", "format", "desc", "desc"]


def test_accuracy_per_type_and_mode_by_hand():
    rows = [
        # Dense row: 10 tokens, 6 hits; desc 4 tokens 3 hits, coordinate 4 tokens 1 hit, format 2 tokens 2 hits.
        RowLoss("d", "dense", "long", 5.0, 10, False, 6, {"desc": (4, 3), "coordinate": (4, 1), "format": (2, 2)}),
        # Another dense row: desc 1/2, coordinate 0/0, format 3/3.
        RowLoss("e", "dense", "short", 1.0, 5, False, 4, {"desc": (2, 1), "coordinate": (0, 0), "format": (3, 3)}),
        RowLoss("s", "summary", "short", 2.0, 5, False, 5),
    ]
    out = summarize(rows)
    assert out["eval_token_acc"] == pytest.approx(15 / 20)
    assert out["eval_token_acc_dense"] == pytest.approx(10 / 15)
    assert out["eval_token_acc_summary"] == 1.0 and out["eval_token_acc_verdict"] is None
    assert out["dense_token_types"] == {
        "desc": {"tokens": 6, "acc": pytest.approx(4 / 6)},
        "coordinate": {"tokens": 4, "acc": 0.25},
        "format": {"tokens": 5, "acc": 1.0},
    }
    assert summarize(rows[2:])["dense_token_types"]["desc"] == {"tokens": 0, "acc": None}


# --- the tiny model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer(tiny_dir):
    from vlqc.evaluation.loss import Scorer

    return Scorer(tiny_dir, tiny_dir, load_train_config(REPO / "config/train/demo.yaml"))


def _row(mode: str, user: str, answer: str) -> dict:
    return {
        "id": f"{mode}:x",
        "mode": mode,
        "bucket": "long",
        "images": [],
        "messages": [
            {"role": "system", "content": "你是通信安装质检助手。"},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ],
    }


def test_hits_and_types_of_the_tiny_model_against_its_full_logits(scorer):
    import torch

    rows = [_row("dense", "<image>检测图中对象。", ANSWER), _row("summary", "<image>输出摘要。", "无关图片")]
    images = [[Image.new("RGB", (96, 64), (200, 30, 30))], [Image.new("RGB", (64, 64), (20, 90, 200))]]
    dense, summary = scorer.row_losses(rows, images, batch_size=2)

    encoded = scorer.encode(rows[0], images[0])[0]
    labels = [t for t in encoded["labels"] if t != -100]
    types = scorer.label_types(rows[0], labels)
    assert len(types) == len(labels) == dense.tokens
    tokenizer = scorer.tokenizer
    coordinate_text = "".join(tokenizer.decode([t]) for t, k in zip(labels, types) if k == "coordinate")
    assert coordinate_text.replace(" ", "").replace(",", "") == "1253004001234567810203040"
    assert types[-2:] == ["format", "format"]  # <|im_end|> and the newline
    assert {k: n for k, (n, _) in dense.types.items()} == {t: types.count(t) for t in ("desc", "coordinate", "format")}
    assert summary.types == {}

    # The hits by a plain forward of the whole row: argmax at each position before a label.
    batch = scorer.template.data_collator([encoded])
    batch.pop("text_position_ids", None)
    label_row = batch.pop("labels")[0]
    with torch.inference_mode():
        logits = scorer.model(**batch).logits[0]
    positions = (label_row != -100).nonzero()[:, 0]
    predicted = logits[positions - 1].argmax(-1)
    hits = (predicted == label_row[positions]).tolist()
    assert dense.hits == sum(hits)
    assert dense.types["coordinate"][1] == sum(h for h, k in zip(hits, types) if k == "coordinate")
    # A random model hits little: make every other label the model's own prediction (the input ids, and so
    # the predictions, stay), and the hits must be exactly those positions, in label order.
    chosen = label_row.clone()
    chosen[positions[::2]] = predicted[::2]
    expected = (chosen[positions] == predicted).tolist()
    assert sum(expected) >= len(expected) // 2
    _, counts, found = scorer._batch_losses({**batch, "labels": chosen[None]})
    assert counts == [len(labels)] and found == [expected]

    doc = summarize([dense, summary]) | {"step": 1, "checkpoint": "c", "split": "s", "seconds": 0.0}
    validate(doc, "eval_loss")


def test_labels_that_are_not_the_answer_cannot_be_typed(scorer):
    from vlqc.errors import VlqcError

    row = _row("dense", "<image>检测图中对象。", ANSWER)
    with pytest.raises(VlqcError, match="label tokens are not its answer's tokens"):
        scorer.label_types(row, [1, 2, 3])
