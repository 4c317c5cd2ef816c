"""Training configs: extends/merge/cycles, strict parsing with dotted paths, defaults and derived
values, and the `swift sft` arguments, checked against ms-swift 4.6's own argument parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

from vlqc.errors import SchemaError, VlqcError
from vlqc.train.config import config_problems, config_sources, load_train_config, swift_invocation

SHIPPED = ["base", "lora", "full", "demo", "align"]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A Qwen3-VL model folder as far as argument parsing needs it: its config.json."""
    from transformers import Qwen3VLConfig

    folder = tmp_path_factory.mktemp("model")
    Qwen3VLConfig().save_pretrained(folder)
    return folder


def invocation(cfg: dict, model_dir: Path, tmp_path: Path, val: bool = True) -> tuple[list[str], dict[str, str]]:
    return swift_invocation(
        cfg,
        model_dir=model_dir,
        dataset_paths=[tmp_path / "train_a.jsonl", tmp_path / "train_b.jsonl"],
        val_dataset_paths=[tmp_path / "val.jsonl"] if val else [],
        output_dir=tmp_path / "out",
    )


def flag(args: list[str], name: str) -> list[str]:
    """The values after `--name`, up to the next flag; [] when the flag is absent."""
    if f"--{name}" not in args:
        return []
    rest = args[args.index(f"--{name}") + 1 :]
    return rest[: next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]


def parse_with_ms_swift(args: list[str], monkeypatch):
    """ms-swift's own CLI parsing (`swift sft` runs exactly this) into SftArguments."""
    from swift.arguments import SftArguments
    from swift.utils import parse_args

    # SftArguments sets this one with setdefault; pinning it keeps the test's env clean.
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "unused")
    parsed, remaining = parse_args(SftArguments, args)
    assert remaining == []
    return parsed


# --- extends ---------------------------------------------------------------------------------


def test_extends_string_deep_merges_and_replaces_lists(tmp_path):
    write(
        tmp_path,
        "parent.yaml",
        """
        training: {epochs: 3, seed: 7}
        tuner: {target_modules: [q_proj, k_proj, v_proj], lora_rank: 4}
    """,
    )
    child = write(
        tmp_path,
        "child.yaml",
        """
        extends: parent.yaml
        training: {epochs: 5}
        tuner: {target_modules: [o_proj]}
    """,
    )
    cfg = load_train_config(child)
    assert cfg["training"]["epochs"] == 5  # the file overrides its parent
    assert cfg["training"]["seed"] == 7  # sibling keys of a merged mapping survive
    assert cfg["tuner"]["lora_rank"] == 4
    assert cfg["tuner"]["target_modules"] == ["o_proj"]  # lists are replaced, not concatenated


def test_extends_list_is_relative_to_each_file_and_later_entries_win(tmp_path):
    write(tmp_path, "common/a.yaml", "training: {epochs: 2, seed: 1, logging_steps: 1}\n")
    write(tmp_path, "common/b.yaml", "extends: a.yaml\ntraining: {epochs: 3, seed: 2}\n")
    write(tmp_path, "other/c.yaml", "training: {epochs: 4}\n")
    top = write(tmp_path, "runs/top.yaml", "extends: [../common/b.yaml, ../other/c.yaml]\ntraining: {seed: 9}\n")
    cfg = load_train_config(top)
    # c (later) beats b; the file itself beats both; a reaches top through b.
    assert [cfg["training"][k] for k in ("epochs", "seed", "logging_steps")] == [4, 9, 1]
    assert config_sources(top) == [
        (tmp_path / "common/a.yaml").resolve(),
        (tmp_path / "common/b.yaml").resolve(),
        (tmp_path / "other/c.yaml").resolve(),
        top.resolve(),
    ]


def test_a_file_reached_twice_is_listed_once(tmp_path):
    write(tmp_path, "root.yaml", "training: {seed: 1}\n")
    write(tmp_path, "left.yaml", "extends: root.yaml\n")
    write(tmp_path, "right.yaml", "extends: root.yaml\n")
    top = write(tmp_path, "top.yaml", "extends: [left.yaml, right.yaml]\n")
    assert [p.name for p in config_sources(top)] == ["root.yaml", "left.yaml", "right.yaml", "top.yaml"]


def test_extends_cycle_names_the_chain(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: c.yaml\n")
    write(tmp_path, "c.yaml", "extends: a.yaml\n")
    with pytest.raises(VlqcError, match=r"extends itself: .*a\.yaml → .*b\.yaml → .*c\.yaml → .*a\.yaml$"):
        load_train_config(tmp_path / "a.yaml")


def test_missing_parent_is_named_with_the_file_that_extends_it(tmp_path):
    child = write(tmp_path, "child.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(VlqcError, match=r"nowhere\.yaml: training config not found \(extended by .*child\.yaml\)"):
        load_train_config(child)


@pytest.mark.parametrize(
    "text, message",
    [
        ("extends: [1, 2]\n", "extends must be a path or a list of paths"),
        ("- a\n- b\n", "a training config is a mapping, not a list"),
        ("training: {epochs: [\n", "not valid YAML"),
    ],
)
def test_malformed_files_are_named(tmp_path, text, message):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(VlqcError, match=rf"bad\.yaml: {message}"):
        load_train_config(path)


# --- strict parsing ----------------------------------------------------------------------------


def test_every_unknown_key_is_reported_with_its_dotted_path_in_one_error(tmp_path):
    write(tmp_path, "parent.yaml", "model: {torch_dtyp: float32}\n")
    top = write(
        tmp_path,
        "top.yaml",
        """
        extends: parent.yaml
        learning_rate: 0.1
        tuner: {lora_rnk: 4}
        data:
          train:
            - {dataset: demo, split: train}
            - {dataset: demo, split: train_tiny, weight: 2}
          augmentation:
            crop: {prob: 0.5, coverage: 0.2}
    """,
    )
    with pytest.raises(SchemaError) as caught:
        load_train_config(top)
    message = str(caught.value)
    assert message.startswith(f"{top.resolve()} (merged with {(tmp_path / 'parent.yaml').resolve()})")
    for path in [
        "learning_rate",
        "model.torch_dtyp",
        "tuner.lora_rnk",
        "data.train[1].weight",
        "data.augmentation.crop.coverage",
    ]:
        assert f"\n  {path}: unknown key" in message


def test_wrong_types_and_values_are_reported_together(tmp_path):
    top = write(
        tmp_path,
        "top.yaml",
        """
        global_max_length: long
        training: {epochs: 2.5, resume: "yes"}
        tuner: {train_type: qlora}
        data: {val: [{dataset: demo}], augmentation: {bypass_prob: 2}}
    """,
    )
    with pytest.raises(SchemaError) as caught:
        load_train_config(top)
    message = str(caught.value)
    for expected in [
        "global_max_length: 'long' is not of type 'integer'",
        "training.epochs: 2.5 is not of type 'integer'",
        "training.resume: 'yes' is not of type 'boolean'",
        "tuner.train_type: 'qlora' is not one of",
        "data.val[0]: 'split' is a required property",
        "data.augmentation.bypass_prob: 2 is greater than",
    ]:
        assert expected in message


def test_truncation_strategy_other_than_raise_is_rejected(tmp_path):
    top = write(tmp_path, "top.yaml", "template: {truncation_strategy: left}\n")
    with pytest.raises(SchemaError, match=r"template\.truncation_strategy: 'left' is not one of \['raise'\]"):
        load_train_config(top)


@pytest.mark.parametrize(
    "text, message",
    [
        ("data: {modes: {dense: 0, summary: 0, verdict: 0}}\n", r"data\.modes: the weights must sum to more than 0"),
        ("tuner: {vit_lr: 1.0e-5}\n", r"tuner\.vit_lr: has no effect while tuner\.freeze_vit is true"),
        ("tuner: {aligner_lr: 1.0e-5}\n", r"tuner\.aligner_lr: has no effect while tuner\.freeze_aligner is true"),
        ("tuner: {train_type: full, lora_rank: 16}\n", r"tuner\.lora_rank: not used by train_type full"),
        (
            "global_max_length: 2048\ntemplate: {max_length: 1024}\n",
            r"template\.max_length: 1024 differs from global_max_length 2048",
        ),
        (
            "template: {max_pixels: 147456}\ndata: {augmentation: {max_pixels: 262144}}\n",
            r"data\.augmentation\.max_pixels: 262144 is above the training cap template\.max_pixels 147456",
        ),
    ],
)
def test_rules_across_keys(tmp_path, text, message):
    with pytest.raises(SchemaError, match=message):
        load_train_config(write(tmp_path, "top.yaml", text))


def test_augmentation_ranges_are_checked(tmp_path):
    top = write(tmp_path, "top.yaml", "data: {augmentation: {rotate: {degrees: [10, -10]}}}\n")
    with pytest.raises(
        SchemaError, match=r"data\.augmentation: range lower bound above upper bound in rotate\.degrees"
    ):
        load_train_config(top)


# --- defaults and derived values ---------------------------------------------------------------


def test_empty_config_takes_schema_defaults_and_resolves_to_a_valid_document(tmp_path):
    cfg = load_train_config(write(tmp_path, "plain.yaml", ""))
    assert config_problems(json.loads(json.dumps(cfg))) == []  # as resolved_config.json
    assert cfg["model"] == {"torch_dtype": "float32", "attn_impl": "sdpa", "max_length": 4096}
    assert cfg["template"] == {
        "truncation_strategy": "raise",
        "padding_side": "left",
        "max_pixels": 147456,
        "max_length": 4096,
    }
    assert cfg["tuner"]["train_type"] == "lora" and cfg["tuner"]["target_modules"] == ["all-linear"]
    assert cfg["data"]["augmentation"]["max_pixels"] == 147456  # follows the training cap
    assert cfg["data"]["augmentation"]["crop"]["min_coverage"] == 0.3  # augment schema defaults
    assert cfg["custom"]["run_name"] == "plain"


def test_global_max_length_sets_model_and_template_lengths(tmp_path, model_dir):
    cfg = load_train_config(write(tmp_path, "top.yaml", "global_max_length: 1536\n"))
    assert cfg["model"]["max_length"] == cfg["template"]["max_length"] == 1536
    args, _ = invocation(cfg, model_dir, tmp_path)
    assert flag(args, "max_length") == ["1536"]


def test_global_max_length_above_the_model_limit_is_an_error(tmp_path):
    model = tmp_path / "small_model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 2048}}))
    cfg = load_train_config(write(tmp_path, "top.yaml", "global_max_length: 4096\n"))
    with pytest.raises(
        VlqcError, match=r"global_max_length 4096 is above .*config\.json: max_position_embeddings 2048"
    ):
        invocation(cfg, model, tmp_path)


# --- ms-swift arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_parse_with_ms_swift(name, model_dir, tmp_path, monkeypatch):
    cfg = load_train_config(REPO / "config" / "train" / f"{name}.yaml")
    # ms-swift refuses use_liger_kernel where liger-kernel is not installed (this CPU venv); the GPU recipes
    # turn it on, and test_liger_kernel_switch_reaches_the_trainer checks that the flag gets through.
    cfg["training"]["liger_kernel"] = False
    args, env = invocation(cfg, model_dir, tmp_path)
    parsed = parse_with_ms_swift(args, monkeypatch)
    assert parsed.model_type == "qwen3_vl" and parsed.check_model is False
    assert parsed.max_length == cfg["template"]["max_length"]
    assert parsed.get_template_kwargs()["truncation_strategy"] == "raise"
    assert parsed.get_template_kwargs()["padding_side"] == cfg["template"]["padding_side"] == "left"
    assert parsed.strict is True
    assert parsed.tuner_type == ("full" if cfg["tuner"]["train_type"] == "full" else "lora")
    assert parsed.dataset == [str(tmp_path / "train_a.jsonl"), str(tmp_path / "train_b.jsonl")]
    assert parsed.val_dataset == [str(tmp_path / "val.jsonl")]
    assert parsed.output_dir == str(tmp_path / "out")  # no version folder in between
    assert parsed.num_train_epochs == 1
    assert parsed.training_args.seed == parsed.training_args.data_seed == cfg["training"]["seed"]
    assert parsed.training_args.fp16 is False and parsed.training_args.bf16 is False  # float32 on CPU
    assert env["IMAGE_MAX_TOKEN_NUM"] == str(cfg["template"]["max_pixels"] // 1024)


def test_over_length_sample_stops_training_instead_of_being_skipped(model_dir, tmp_path, monkeypatch):
    from datasets import Dataset
    from swift.dataset import LazyLLMDataset
    from swift.template import MaxLengthError

    parsed = parse_with_ms_swift(
        invocation(load_train_config(write(tmp_path, "t.yaml", "")), model_dir, tmp_path)[0], monkeypatch
    )

    def encode(row, return_length=False):
        raise MaxLengthError(f"row {row['i']} is too long")

    # This is how ms-swift wraps the training set; without --strict it would quietly pick another row.
    dataset = LazyLLMDataset(Dataset.from_list([{"i": 0}, {"i": 1}]), encode, strict=parsed.strict)
    with pytest.raises(MaxLengthError, match="row 0 is too long"):
        dataset[0]


@pytest.mark.parametrize("train_type, tuner_type, dora", [("lora", "lora", False), ("dora", "lora", True)])
def test_lora_and_dora_mapping(train_type, tuner_type, dora, model_dir, tmp_path, monkeypatch):
    cfg = load_train_config(
        write(
            tmp_path,
            "t.yaml",
            f"tuner: {{train_type: {train_type}, lora_rank: 16, lora_alpha: 8, lora_dropout: 0.1,"
            " target_modules: [q_proj, v_proj]}\n",
        )
    )
    parsed = parse_with_ms_swift(invocation(cfg, model_dir, tmp_path)[0], monkeypatch)
    assert (parsed.tuner_type, parsed.use_dora) == (tuner_type, dora)
    assert (parsed.lora_rank, parsed.lora_alpha, parsed.lora_dropout) == (16, 8, 0.1)
    assert parsed.target_modules == ["q_proj", "v_proj"]


def test_full_mapping_passes_no_adapter_flags(model_dir, tmp_path):
    cfg = load_train_config(write(tmp_path, "t.yaml", "tuner: {train_type: full}\n"))
    args, _ = invocation(cfg, model_dir, tmp_path)
    assert flag(args, "tuner_type") == ["full"]
    assert not [a for a in args if a.startswith(("--lora_", "--use_dora", "--target_modules"))]


def test_freeze_switches_and_learning_rates(model_dir, tmp_path, monkeypatch):
    cfg = load_train_config(
        write(
            tmp_path,
            "t.yaml",
            """
        tuner:
          train_type: full
          freeze_llm: true
          freeze_vit: false
          freeze_aligner: false
          learning_rate: 3.0e-5
          vit_lr: 1.0e-6
          aligner_lr: 2.0e-4
    """,
        )
    )
    parsed = parse_with_ms_swift(invocation(cfg, model_dir, tmp_path)[0], monkeypatch)
    assert (parsed.freeze_llm, parsed.freeze_vit, parsed.freeze_aligner) == (True, False, False)
    assert (parsed.learning_rate, parsed.vit_lr, parsed.aligner_lr) == (3e-5, 1e-6, 2e-4)
    # Separate rates take ms-swift's multimodal optimizer (ViT / aligner / LLM parameter groups).
    assert parsed.training_args.optimizer == "multimodal"
    # In full tuning the switches become ms-swift's frozen / trainable parameter prefixes.
    assert "model.language_model" in parsed.freeze_parameters
    assert "model.visual" not in parsed.freeze_parameters
    assert "model.visual.merger" in parsed.trainable_parameters


def test_learning_rates_left_unset_fall_back_to_learning_rate(model_dir, tmp_path, monkeypatch):
    parsed = parse_with_ms_swift(
        invocation(load_train_config(write(tmp_path, "t.yaml", "")), model_dir, tmp_path)[0], monkeypatch
    )
    assert parsed.vit_lr is None and parsed.aligner_lr is None
    assert parsed.training_args.optimizer is None
    assert (parsed.freeze_llm, parsed.freeze_vit, parsed.freeze_aligner) == (False, True, True)


@pytest.mark.parametrize("save_steps, delay, expected", [(50, 0, 50), (50, 200, 200), (300, 200, 300)])
def test_save_delay_postpones_the_first_checkpoint(save_steps, delay, expected, model_dir, tmp_path, monkeypatch):
    cfg = load_train_config(
        write(tmp_path, "t.yaml", f"training: {{save_steps: {save_steps}, save_delay_steps: {delay}}}\n")
    )
    parsed = parse_with_ms_swift(invocation(cfg, model_dir, tmp_path)[0], monkeypatch)
    assert str(parsed.training_args.save_strategy.value) == "steps"
    assert parsed.training_args.save_steps == expected


@pytest.mark.parametrize("resume, only_model", [(False, True), (True, False)])
def test_checkpoints_hold_only_the_model_unless_resume(resume, only_model, model_dir, tmp_path, monkeypatch):
    cfg = load_train_config(write(tmp_path, "t.yaml", f"training: {{resume: {str(resume).lower()}}}\n"))
    parsed = parse_with_ms_swift(invocation(cfg, model_dir, tmp_path)[0], monkeypatch)
    assert parsed.training_args.save_only_model is only_model


def test_precision_follows_torch_dtype(model_dir, tmp_path, monkeypatch):
    cfg = load_train_config(write(tmp_path, "t.yaml", "model: {torch_dtype: bfloat16}\n"))
    args, _ = invocation(cfg, model_dir, tmp_path)
    assert (flag(args, "torch_dtype"), flag(args, "bf16"), flag(args, "fp16")) == (["bfloat16"], ["true"], ["false"])


@pytest.mark.parametrize("liger", [False, True])
def test_liger_kernel_switch_reaches_the_trainer(liger, model_dir, tmp_path, monkeypatch):
    cfg = load_train_config(write(tmp_path, "t.yaml", f"training: {{liger_kernel: {str(liger).lower()}}}\n"))
    args, _ = invocation(cfg, model_dir, tmp_path)
    assert flag(args, "use_liger_kernel") == [str(liger).lower()]
    if not liger:  # ms-swift refuses the switch where liger-kernel is not installed (no GPU here)
        assert parse_with_ms_swift(args, monkeypatch).training_args.use_liger_kernel is False


def test_liger_kernel_on_a_cpu_run_is_refused_naming_the_config(tmp_path):
    from vlqc.train.run import train

    config = write(tmp_path, "t.yaml", "training: {liger_kernel: true}\n")
    with pytest.raises(VlqcError, match=r"t\.yaml: training\.liger_kernel needs a GPU"):
        train(config, tmp_path / "base", tmp_path / "data", tmp_path / "run", nproc=1, gpus=0, threads=1)


def test_no_val_split_means_no_val_dataset_flag(model_dir, tmp_path):
    cfg = load_train_config(write(tmp_path, "t.yaml", "data: {val: []}\n"))
    args, _ = invocation(cfg, model_dir, tmp_path, val=False)
    assert flag(args, "val_dataset") == [] and flag(args, "split_dataset_ratio") == ["0"]


def test_no_training_dataset_is_an_error(model_dir, tmp_path):
    cfg = load_train_config(write(tmp_path, "t.yaml", ""))
    with pytest.raises(VlqcError, match="no training dataset"):
        swift_invocation(cfg, model_dir=model_dir, dataset_paths=[], val_dataset_paths=[], output_dir=tmp_path)


def test_pixel_cap_reaches_the_qwen3_vl_image_loader(model_dir, tmp_path):
    """ms-swift's Qwen3-VL template sizes images with qwen_vl_utils.fetch_image; under our env an
    image within the cap keeps its size and a larger one would be shrunk to the cap."""
    cfg = load_train_config(write(tmp_path, "t.yaml", "template: {max_pixels: 147456}\n"))
    _, env = invocation(cfg, model_dir, tmp_path)
    script = textwrap.dedent("""
        from PIL import Image
        from qwen_vl_utils import vision_process
        from swift.model.models.qwen import compat_qwen_vl_utils, patch_qwen_vl_utils
        compat_qwen_vl_utils(image_patch_size=16)  # what ms-swift's Qwen3VLLoader runs
        patch_qwen_vl_utils(vision_process)
        for size in [(384, 384), (512, 288), (416, 384)]:
            print(*vision_process.fetch_image({"image": Image.new("RGB", size)}, image_patch_size=16).size)
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["384 384", "512 288", "384 352"]


@pytest.mark.parametrize(
    ("yaml", "find_unused"),
    [
        # A text-only batch would leave the trained vision tower (or aligner) idle.
        ("data: {modes: {verdict: 0.25}}\ntuner: {freeze_vit: false}\n", True),
        ("data: {modes: {verdict: 0.25}}\ntuner: {freeze_aligner: false}\n", True),
        ("data: {modes: {verdict: 0.0}}\ntuner: {freeze_vit: false}\n", False),  # every batch has images
        ("data: {modes: {verdict: 0.0}, recombined_verdicts: 8}\ntuner: {freeze_vit: false}\n", True),
        ("data: {modes: {verdict: 0.25}}\n", False),  # nothing visual trains (the defaults freeze both)
    ],
)
def test_ddp_looks_for_unused_parameters_only_when_a_batch_can_be_text_only(
    yaml, find_unused, model_dir, tmp_path, monkeypatch
):
    cfg = load_train_config(write(tmp_path, "t.yaml", yaml))
    args, _ = invocation(cfg, model_dir, tmp_path)
    assert parse_with_ms_swift(args, monkeypatch).training_args.ddp_find_unused_parameters is find_unused
