"""The alignment recipe (config/train/align.yaml) and its second sweep axis, tuner.train_vit_norms: the
`swift sft` arguments, the rules around it, and which parameters ms-swift 4.6 really trains."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from vlqc.errors import SchemaError
from vlqc.train.config import VIT_NORMS_REGEX, load_train_config, swift_invocation

ALIGN = REPO / "config/train/align.yaml"


def arguments(cfg: dict, model_dir, tmp_path) -> list[str]:
    train = tmp_path / "train.jsonl"
    train.touch()
    args, _ = swift_invocation(
        cfg, model_dir=model_dir, dataset_paths=[train], val_dataset_paths=[], output_dir=tmp_path / "out"
    )
    return args


def trainable(args: list[str]) -> set[str]:
    """Names of the parameters ms-swift's own SFT pipeline leaves trainable with `args`."""
    from swift.pipelines.train.sft import SwiftSft

    sft = SwiftSft([*args, "--use_cpu", "true"])
    model = sft.prepare_model(sft.args, sft.model, template=sft.template)
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_align_trains_the_aligner_only_and_takes_no_val_pass():
    cfg = load_train_config(ALIGN)
    tuner = cfg["tuner"]
    assert tuner["train_type"] == "full" and tuner["freeze_llm"] and tuner["freeze_vit"]
    assert not tuner["freeze_aligner"] and not tuner["train_vit_norms"]
    assert cfg["data"]["val"] == [] and cfg["data"]["modes"]["verdict"] == 0


@pytest.mark.parametrize("on", [False, True])
def test_vision_norms_flag_reaches_ms_swift_only_when_on(on, tiny_dir, tmp_path):
    args = arguments(load_train_config(ALIGN, {"tuner.train_vit_norms": on}), tiny_dir, tmp_path)
    assert ("--trainable_parameters_regex" in args) is on
    if on:
        assert args[args.index("--trainable_parameters_regex") + 1] == VIT_NORMS_REGEX


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tuner.train_type": "lora"}, r"tuner\.train_vit_norms: needs train_type full .*not lora"),
        ({"tuner.freeze_vit": False}, r"tuner\.train_vit_norms: has no effect while tuner\.freeze_vit is false"),
    ],
)
def test_vision_norms_need_full_training_and_a_frozen_tower(overrides, message):
    with pytest.raises(SchemaError, match=message):
        load_train_config(ALIGN, {"tuner.train_vit_norms": True, **overrides})


def test_ms_swift_trains_the_aligner_and_with_the_flag_the_vision_layernorms_too(tiny_dir, tmp_path):
    off = trainable(arguments(load_train_config(ALIGN), tiny_dir, tmp_path))
    on = trainable(arguments(load_train_config(ALIGN, {"tuner.train_vit_norms": True}), tiny_dir, tmp_path))
    aligner = ("model.visual.merger.", "model.visual.deepstack_merger_list.")
    assert off and all(name.startswith(aligner) for name in off)
    assert {"model.visual.merger.norm.weight", "model.visual.merger.linear_fc2.weight"} <= off
    norms = on - off
    assert off < on and norms == {
        f"model.visual.blocks.{block}.{norm}.{kind}"
        for block in range(json.loads((tiny_dir / "config.json").read_text())["vision_config"]["depth"])
        for norm in ("norm1", "norm2")
        for kind in ("weight", "bias")
    }
