"""Token-weighted eval loss: the aggregation by hand, and the loss of the tiny model against ms-swift's own."""

from __future__ import annotations

import copy

import pytest
from conftest import REPO
from PIL import Image

from vlqc.evaluation.loss import RowLoss, fit_to_cap, summarize, token_weighted
from vlqc.train.config import load_train_config

# Three rows of unequal length: per-row means 1.0, 0.2 and 1.0.
ROWS = [
    RowLoss("a", "summary", "short", loss=2.0, tokens=2, truncated=False),
    RowLoss("b", "dense", "long", loss=1.2, tokens=6, truncated=True),
    RowLoss("c", "verdict", "short", loss=4.0, tokens=4, truncated=False),
]


def mean_of_batch_means(rows, batch_size):
    """What a trainer's eval loop reports: each batch's token mean, averaged over batches."""
    means = [token_weighted(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    return sum(means) / len(means)


def test_token_weighting_by_hand_and_not_the_mean_of_batch_means():
    # Σloss / Σtokens = (2.0 + 1.2 + 4.0) / (2 + 6 + 4)
    assert token_weighted(ROWS) == pytest.approx(7.2 / 12)
    # batches [a, b] and [c]: (3.2 / 8 + 4.0 / 4) / 2 = 0.7
    assert mean_of_batch_means(ROWS, 2) == pytest.approx(0.7)
    assert token_weighted(ROWS) != pytest.approx(mean_of_batch_means(ROWS, 2))
    # mean of row means: (1.0 + 0.2 + 1.0) / 3
    assert token_weighted(ROWS) != pytest.approx(mean_of_batch_means(ROWS, 1))


def test_summary_per_bucket_and_mode():
    out = summarize(ROWS)
    assert out["eval_loss"] == pytest.approx(0.6)
    assert out["eval_loss_short"] == pytest.approx(6.0 / 6)
    assert out["eval_loss_medium"] is None  # no rows
    assert out["eval_loss_long"] == pytest.approx(0.2)
    assert (out["eval_loss_dense"], out["eval_loss_summary"], out["eval_loss_verdict"]) == pytest.approx((0.2, 1, 1))
    assert out["eval_label_tokens_total"] == 12 and out["eval_examples_total"] == 3
    assert out["eval_truncated_pct"] == pytest.approx(100 / 3)
    assert out["bucket_counts"] == {"short": 2, "medium": 0, "long": 1}
    assert out["mode_counts"] == {"dense": 1, "summary": 1, "verdict": 1}


def test_fit_to_cap_resizes_like_data_preparation():
    inside = Image.new("RGB", (96, 64), (1, 2, 3))
    assert fit_to_cap(inside, 65536, 32).tobytes() == inside.tobytes()
    big = fit_to_cap(Image.new("L", (1000, 700)), 65536, 32)
    assert big.mode == "RGB" and big.width % 32 == 0 and big.height % 32 == 0 and big.width * big.height <= 65536
    assert (big.width, big.height) == (288, 192)  # smart_resize: the aspect ratio kept within one patch


def test_row_images_are_the_pixels_data_preparation_writes(tmp_path):
    from test_sft_data import _record, config, write_canonical

    from vlqc.evaluation.loss import load_row_images
    from vlqc.train.sft_data import prepare_image

    records = [_record("big", [{"bbox_2d": [100, 100, 600, 500], "desc": "类别=BBU设备"}], None, size=(1000, 700))]
    records.append(_record("small", [], None))  # 96x64: within the cap, used as it is
    source = write_canonical(tmp_path / "canonical", records, "val.jsonl")
    cfg = config(max_pixels=65536, resize_to_cap=True)
    rows = [{"id": r["sample_id"], "images": r["images"]} for r in records]
    ours = load_row_images(rows, source.parent, cfg.max_pixels, cfg.factor)
    for n, record in enumerate(records):
        rel, _ = prepare_image(record, n, cfg, source, tmp_path / "sft")
        with Image.open(tmp_path / "sft" / rel) as prepared:
            assert ours[n][0].size == prepared.size and ours[n][0].tobytes() == prepared.convert("RGB").tobytes()
    assert ours[0][0].size == (288, 192) and rel.startswith("images/source/")


# --- against ms-swift -----------------------------------------------------------------------------


def _rows():
    system = "你是通信安装质检助手。"
    texts = [
        ("<image>输出摘要。", "无关图片"),
        (
            "<image>检测图中对象。",
            "<DOMAIN=BBU>, <TASK=DETECTION>\n" + '[{"bbox_2d": [1, 2, 300, 400], "desc": "类别=BBU设备"}]',
        ),
        ("任务: 挡风板安装检查\nImage1: 无关图片", "Verdict: 不通过\nReason: 缺少挡风板; 总结: 存在与任务相关的问题"),
    ]
    modes = ("summary", "dense", "verdict")
    rows = [
        {
            "id": f"{mode}:{n}",
            "mode": mode,
            "bucket": ("short", "long", "medium")[n],
            "images": [],
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ],
        }
        for n, (mode, (user, answer)) in enumerate(zip(modes, texts))
    ]
    images = [[Image.new("RGB", (96, 64), (200, 30, 30))], [Image.new("RGB", (64, 128), (20, 90, 200))], []]
    return rows, images


@pytest.fixture(scope="module")
def scorer(tiny_dir):
    from vlqc.evaluation.loss import Scorer

    return Scorer(tiny_dir, tiny_dir, load_train_config(REPO / "config/train/demo.yaml"))


def test_one_batch_equals_the_loss_ms_swift_computes(tiny_dir, scorer):
    """ms-swift's number comes from ms-swift's own code path: its model loader (`get_model_processor`, as
    `swift sft` loads the model), its template in train mode, its collator, and `Template.compute_sft_loss`
    inside `Template.forward_context`, which is what `Seq2SeqTrainer.compute_loss` (training and, through
    `prediction_step`, `eval_loss`) returns for our runs: no loss_scale, label smoother, loss_type, DFT or
    channel loss, no sequence parallelism, so the loss is the model's mean over the batch's label tokens.
    (On the demo checkpoint the same per-row numbers reproduce the eval_loss ms-swift logged: 0.36302659.)
    """
    import torch
    from swift import get_model_processor, get_template

    rows, images = _rows()
    model, processor = get_model_processor(str(tiny_dir), model_type="qwen3_vl", torch_dtype=torch.float32)
    template = get_template(processor, template_type="qwen3_vl", padding_side="left")
    template.set_mode("train")
    template.model = model
    encoded = [
        template.encode({"messages": row["messages"], **({"images": ims} if ims else {})})
        for row, ims in zip(rows, images)
    ]
    batch = template.data_collator(encoded)
    batch.pop("text_position_ids")  # as Seq2SeqTrainer.compute_loss does
    with torch.inference_mode(), template.forward_context(model, batch):
        expected = template.compute_sft_loss(model.eval(), batch).loss.item()

    one_batch = scorer.row_losses(rows, images, batch_size=3)
    assert token_weighted(one_batch) == pytest.approx(expected, rel=1e-5)
    # Batching changes nothing but rounding; the mean of batch means would differ (unequal lengths).
    single = scorer.row_losses(rows, images, batch_size=1)
    assert [r.tokens for r in single] == [r.tokens for r in one_batch]
    assert len({r.tokens for r in single}) == 3
    assert token_weighted(single) == pytest.approx(expected, rel=1e-5)
    assert mean_of_batch_means(single, 1) != pytest.approx(expected, rel=1e-3)
    # The label mask: the answer, <|im_end|> and "\n".
    tokenizer = processor.tokenizer
    answers = [len(tokenizer.encode(row["messages"][2]["content"], add_special_tokens=False)) for row in rows]
    assert [r.tokens for r in single] == [n + 2 for n in answers]


def test_a_row_over_the_length_limit_is_cut_and_counted(tiny_dir, scorer):
    from vlqc.evaluation.loss import Scorer

    rows, images = _rows()
    full = scorer.row_losses(rows, images, batch_size=3)
    cfg = copy.deepcopy(load_train_config(REPO / "config/train/demo.yaml"))
    cfg["global_max_length"] = len(scorer.encode(rows[2], [])[0]["input_ids"]) - 5
    short = Scorer(tiny_dir, tiny_dir, cfg).row_losses(rows[2:], images[2:], batch_size=1)
    assert short[0].truncated and not full[2].truncated
    assert 0 < short[0].tokens <= full[2].tokens - 5
    assert summarize(short)["eval_truncated_pct"] == 100.0
