"""Training configs (config/train/*.yaml): `extends:` merging, strict parsing, ms-swift arguments.

A file may name parents with `extends:` (a path or a list of paths, relative to the file).
Parents merge left to right and the file itself last: mappings merge key by key, anything
else (lists included) is replaced. Dotted overrides (a sweep point's `tuner.learning_rate`)
apply last. The merged document is checked against `schemas/train_config.schema.json` with
every problem in one error, then schema defaults and derived values are filled in. A `.json`
file is a config resolved that way (`resolved_config.json` of a run, `config.json` of a sweep
point): it loads through the same checks and resolves to itself. `swift_invocation` turns the
result into the `swift sft` arguments and environment of ms-swift 4.6.

A config with `init_from` and a `stage2_ab` section (always both) is a Stage-2 AB run (docs/stage2.md):
its base model is the SFT run `init_from`'s merged model, it trains on dense rows alone, and its
trainer reads the resolved `stage2_ab` section from environment variable STAGE2_ENV (`stage2_env`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from vlqc.errors import SchemaError, VlqcError
from vlqc.inference.profiles import PromptConfig
from vlqc.schemas import load, problems, with_defaults
from vlqc.train.augment import load_config as load_augmentation

SCHEMA = "train_config"
# Qwen3-VL: patch 16 × spatial merge 2, so one visual token per 32×32 pixels.
PIXELS_PER_TOKEN = 32 * 32
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "target_modules")
# The environment variable that carries a Stage-2 run's settings (`stage2_env`) to its trainer.
STAGE2_ENV = "VLQC_STAGE2_AB"
# The weights of data.modes other than dense: a Stage-2 run must set them to 0.
NON_DENSE_MODES = ("summary", "verdict")
# tuner.train_vit_norms: the LayerNorms of Qwen3-VL's vision blocks (the model type is always qwen3_vl);
# ms-swift searches each parameter name with it. The aligner's norms (visual.merger.norm,
# visual.deepstack_merger_list.*.norm) are not matched: they follow freeze_aligner.
VIT_NORMS_REGEX = r"^model\.visual\.blocks\.\d+\.norm[12]\."


def load_train_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The merged, validated config of `path` with every default and derived value filled in.

    `overrides`: dotted key (`tuner.learning_rate`) → value, set on the merged document before it
    is checked, so an override is held to the schema as the files are.
    """
    given, sources = _merge(Path(path))
    top = sources[-1]
    where = str(top) if len(sources) == 1 else f"{top} (merged with {', '.join(map(str, sources[:-1]))})"
    if overrides:
        where += " with " + ", ".join(f"{key}={json.dumps(value)}" for key, value in overrides.items())
        for key, value in overrides.items():
            _set_dotted(given, key, value, where)
    found = config_problems(given)
    if not found:
        cfg = with_defaults(load(SCHEMA), given)
        # A resolved .json holds every default, so which keys were written by hand is unknown there.
        found = _consistency_problems(cfg, {} if top.suffix == ".json" else given)
    if found:
        raise SchemaError(f"{where} does not match schema {SCHEMA}:\n  " + "\n  ".join(found))

    length, cap = cfg["global_max_length"], cfg["template"]["max_pixels"]
    cfg["model"]["max_length"] = cfg["template"]["max_length"] = length
    cfg["data"]["augmentation"] = load_augmentation(cfg["data"]["augmentation"], cap, f"{where}: data.augmentation")
    if cfg["custom"]["run_name"] is None:
        cfg["custom"]["run_name"] = top.stem
    return cfg


def config_sources(path: str | Path) -> list[Path]:
    """The YAML files `path` is merged from, in merge order (parents first), each once."""
    return _merge(Path(path))[1]


# --- extends -------------------------------------------------------------------------------


def _merge(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, list[Path]]:
    path = path.resolve()
    if path in chain:
        raise VlqcError("training config extends itself: " + " → ".join(map(str, (*chain, path))))
    doc = _read(path, chain[-1] if chain else None)
    parents = doc.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise VlqcError(f"{path}: extends must be a path or a list of paths, not {parents!r}")
    merged: dict = {}
    sources: list[Path] = []
    for parent in parents:
        parent_doc, parent_sources = _merge(path.parent / parent, (*chain, path))
        merged = _deep_merge(merged, parent_doc)
        sources += [s for s in parent_sources if s not in sources]
    return _deep_merge(merged, doc), [*sources, path]


def _read(path: Path, extended_by: Path | None) -> dict:
    if not path.is_file():
        by = f" (extended by {extended_by})" if extended_by else ""
        raise VlqcError(f"{path}: training config not found{by}")
    text = path.read_text(encoding="utf-8")
    try:
        # JSON through its own parser: YAML 1.1 reads JSON's 1e-05 as a string.
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise VlqcError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        raise VlqcError(f"{path}: not valid YAML: {exc}") from exc
    if doc is None:  # an empty file is an empty config
        return {}
    if not isinstance(doc, dict):
        raise VlqcError(f"{path}: a training config is a mapping, not a {type(doc).__name__}")
    return doc


def _set_dotted(doc: dict, key: str, value: Any, where: str) -> None:
    """Set `a.b.c` in `doc`, making the mappings on the way; a key that is unknown to the schema is
    left for the schema check to name."""
    *parents, last = key.split(".")
    node = doc
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise VlqcError(f"{where}: {'.'.join(parents[: depth + 1])} is not a mapping, so {key} cannot be set")
    node[last] = copy.deepcopy(value)


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --- checks --------------------------------------------------------------------------------


def config_problems(doc: dict) -> list[str]:
    """Every violation of the train_config schema by `doc` (a merged or a resolved config);
    data.augmentation is checked through its `$ref` to the augment schema."""
    return problems(doc, SCHEMA)


def _consistency_problems(cfg: dict, given: dict) -> list[str]:
    """Rules across keys; `cfg` has the schema defaults, `given` is what the files say."""
    found = []
    length = cfg["global_max_length"]
    for section in ("model", "template"):
        value = cfg[section].get("max_length", length)
        if value != length:
            found.append(
                f"{section}.max_length: {value} differs from global_max_length {length}; set only global_max_length"
            )
    tuner = cfg["tuner"]
    if tuner["train_type"] == "full":
        found += [f"tuner.{key}: not used by train_type full" for key in LORA_KEYS if key in given.get("tuner", {})]
    for rate, switch in (("vit_lr", "freeze_vit"), ("aligner_lr", "freeze_aligner")):
        if tuner[rate] is not None and tuner[switch]:
            found.append(f"tuner.{rate}: has no effect while tuner.{switch} is true")
    if tuner["train_vit_norms"] and tuner["train_type"] != "full":
        found.append(
            f"tuner.train_vit_norms: needs train_type full (ms-swift trains extra parameters only there), "
            f"not {tuner['train_type']}"
        )
    if tuner["train_vit_norms"] and not tuner["freeze_vit"]:
        found.append("tuner.train_vit_norms: has no effect while tuner.freeze_vit is false (the whole tower trains)")
    if sum(cfg["data"]["modes"].values()) <= 0:
        found.append("data.modes: the weights must sum to more than 0")
    found += stage2_problems(cfg)
    found += prompt_problems(cfg["prompts"])
    cap = cfg["template"]["max_pixels"]
    pixels = cfg["data"]["augmentation"].get("max_pixels", cap)
    if pixels > cap:
        found.append(f"data.augmentation.max_pixels: {pixels} is above the training cap template.max_pixels {cap}")
    return found


def stage2_problems(cfg: Mapping[str, Any]) -> list[str]:
    """What makes `cfg` neither an SFT run nor a Stage-2 AB run: init_from without stage2_ab or the other
    way round, or a Stage-2 run whose data holds other rows than dense ones (channel B rolls out dense
    answers and matches them to the row's objects: a summary or verdict row has none to match)."""
    stage2, init_from = cfg.get("stage2_ab"), cfg.get("init_from")
    if stage2 is None:
        if init_from is None:
            return []
        return [
            f"init_from: {init_from!r} makes this a Stage-2 AB run, which needs a stage2_ab section too "
            "(stage2_ab: {} takes every default; docs/stage2.md); an SFT run has no init_from"
        ]
    found = []
    if init_from is None:
        found.append("stage2_ab: a Stage-2 AB run needs init_from: <the SFT run (train.runs) it starts from>")
    modes = cfg["data"]["modes"]
    if any(modes[mode] for mode in NON_DENSE_MODES):
        given = ", ".join(f"{mode} {modes[mode]}" for mode in NON_DENSE_MODES)
        found.append(
            f"data.modes: a Stage-2 AB run trains on dense rows only, not {given} "
            "(set data.modes: {dense: 1.0, summary: 0, verdict: 0})"
        )
    if cfg["data"]["recombined_verdicts"]:
        found.append(
            f"data.recombined_verdicts: {cfg['data']['recombined_verdicts']} verdict rows in a Stage-2 AB run, "
            "which trains on dense rows only (set it to 0)"
        )
    rollout = stage2["rollout"]
    if rollout["backend"] == "server":
        if not rollout["server"]["url"]:
            found.append("stage2_ab.rollout.server.url: backend server needs the rollout server's URL")
        if cfg["tuner"]["train_type"] != "lora":
            found.append(
                f"stage2_ab.rollout.backend: server syncs a LoRA adapter to the rollout server, and this run's "
                f"tuner.train_type is {cfg['tuner']['train_type']} (use backend hf)"
            )
    return found


def is_stage2(cfg: Mapping[str, Any]) -> bool:
    """Whether resolved config `cfg` is a Stage-2 AB run's."""
    return cfg.get("stage2_ab") is not None


def stage2_env(
    cfg: Mapping[str, Any], dump_dir: str | Path, rows: str | Path, image_root: str | Path, base_model: str | Path
) -> dict[str, str]:
    """The environment a Stage-2 AB run's trainer reads its settings from: STAGE2_ENV, the JSON of the
    resolved stage2_ab section plus, as absolute paths, `dump_dir` (where rollout dumps go), `rows` (the
    train file ms-swift reads, whose rows carry their line number as `channel`), `image_root` (the folder
    its image paths are relative to) and `base_model` (what a rollout server must serve)."""
    if not is_stage2(cfg):
        raise VlqcError("stage2_env: the config has no stage2_ab section (an SFT run)")
    paths = {"dump_dir": dump_dir, "rows": rows, "image_root": image_root, "base_model": base_model}
    settings = {**copy.deepcopy(cfg["stage2_ab"]), **{key: str(Path(p).resolve()) for key, p in paths.items()}}
    return {STAGE2_ENV: json.dumps(settings, ensure_ascii=False, sort_keys=True)}


def prompt_problems(section: Mapping[str, Any]) -> list[str]:
    """What is wrong with a `prompts` section the schema accepted: templates naming fields their slot
    does not offer, or holding <image> (docs/prompts.md)."""
    return PromptConfig.of(section, check=False).problems()


def prompt_config(cfg: Mapping[str, Any]) -> PromptConfig:
    """The prompts a run renders (and its checkpoints were trained with), from a resolved config."""
    return PromptConfig.of(cfg.get("prompts"))


# --- ms-swift ------------------------------------------------------------------------------


def swift_invocation(
    cfg: dict[str, Any],
    *,
    model_dir: str | Path,
    dataset_paths: Sequence[str | Path],
    val_dataset_paths: Sequence[str | Path],
    output_dir: str | Path,
) -> tuple[list[str], dict[str, str]]:
    """`swift sft` arguments (ms-swift 4.6) and the environment variables they need.

    `cfg` comes from `load_train_config`. `dataset_paths` are the built ms-swift JSONL files
    and hold all `training.epochs` passes already, so ms-swift runs one pass over them.
    """
    if not dataset_paths:
        raise VlqcError("swift_invocation: no training dataset given")
    model, template, tuner, training = (cfg[key] for key in ("model", "template", "tuner", "training"))
    _check_model_length(Path(model_dir), model["max_length"])
    lora = tuner["train_type"] != "full"
    options: dict[str, Any] = {
        "model": str(model_dir),
        "model_type": "qwen3_vl",
        "check_model": False,  # a local folder: nothing to compare with a hub
        "torch_dtype": model["torch_dtype"],
        # Stated both ways: for float32 weights ms-swift would switch fp16 autocast on.
        "bf16": model["torch_dtype"] == "bfloat16",
        "fp16": model["torch_dtype"] == "float16",
        "attn_impl": model["attn_impl"],
        "max_length": template["max_length"],
        "padding_side": template["padding_side"],
        # 4.6 has no `raise` choice: `delete` makes its template raise MaxLengthError, and
        # strict re-raises it where it would otherwise quietly fetch another sample. The training
        # job has already redrawn or refused over-length rows (data.over_length, vlqc.train.over_length).
        "truncation_strategy": "delete",
        "strict": True,
        "tuner_type": "lora" if lora else "full",
        "freeze_llm": tuner["freeze_llm"],
        "freeze_vit": tuner["freeze_vit"],
        "freeze_aligner": tuner["freeze_aligner"],
        "learning_rate": tuner["learning_rate"],
        "vit_lr": tuner["vit_lr"],
        "aligner_lr": tuner["aligner_lr"],
        # Applied after the freeze switches: these train although freeze_vit holds the rest of the tower.
        "trainable_parameters_regex": VIT_NORMS_REGEX if tuner["train_vit_norms"] else None,
        "dataset": [str(p) for p in dataset_paths],
        "val_dataset": [str(p) for p in val_dataset_paths],
        "split_dataset_ratio": 0,  # evaluation data comes only from val_dataset
        "output_dir": str(output_dir),
        "add_version": False,  # checkpoints directly under output_dir
        "num_train_epochs": 1,
        "max_steps": training["max_steps"],
        "per_device_train_batch_size": training["per_device_train_batch_size"],
        "gradient_accumulation_steps": training["gradient_accumulation_steps"],
        "lr_scheduler_type": training["lr_scheduler_type"],
        "warmup_ratio": training["warmup_ratio"],
        "weight_decay": training["weight_decay"],
        "seed": training["seed"],
        "data_seed": training["seed"],
        "logging_steps": training["logging_steps"],
        # transformers saves at multiples of save_steps (and at the last step): a delay can
        # only be had by making the first multiple late enough.
        "save_strategy": "steps",
        "save_steps": max(training["save_steps"], training["save_delay_steps"]),
        "save_total_limit": training["save_total_limit"],
        "save_only_model": not training["resume"],
        "gradient_checkpointing": training["gradient_checkpointing"],
        "dataloader_num_workers": training["dataloader_num_workers"],
        "use_liger_kernel": training["liger_kernel"],
        # A batch of text-only (verdict) rows leaves a trainable vision tower without gradients,
        # which DDP refuses unless it looks for unused parameters; elsewhere that look only costs time.
        "ddp_find_unused_parameters": _text_only_batches_possible(cfg),
        "report_to": training["report_to"],
    }
    if lora:
        options |= {
            "lora_rank": tuner["lora_rank"],
            "lora_alpha": tuner["lora_alpha"],
            "lora_dropout": tuner["lora_dropout"],
            "target_modules": tuner["target_modules"],
            "use_dora": tuner["train_type"] == "dora",
        }
    args: list[str] = []
    for flag, value in options.items():
        if value is None or value == []:  # left to ms-swift's default
            continue
        args += [f"--{flag}", *(_cli(v) for v in (value if isinstance(value, list) else [value]))]
    env = {
        # ms-swift's Qwen3-VL template resizes every image with qwen_vl_utils.fetch_image,
        # capped at IMAGE_MAX_TOKEN_NUM tokens; at our cap, no image within it is resized.
        "IMAGE_MAX_TOKEN_NUM": str(template["max_pixels"] // PIXELS_PER_TOKEN),
        "HF_HUB_OFFLINE": "1",
    }
    return args, env


def _text_only_batches_possible(cfg: dict[str, Any]) -> bool:
    tuner = cfg["tuner"]
    vision_trains = not (tuner["freeze_vit"] and tuner["freeze_aligner"]) or tuner["train_vit_norms"]
    verdict_rows = cfg["data"]["modes"]["verdict"] > 0 or cfg["data"]["recombined_verdicts"] > 0
    return vision_trains and verdict_rows


def _cli(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def max_positions(model_dir: str | Path) -> int | None:
    """max_position_embeddings of the model folder's language model (Qwen3-VL: its text_config), None
    when its config.json gives none."""
    config_path = Path(model_dir) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise VlqcError(f"{config_path}: cannot read the model config: {exc}") from exc
    return config.get("text_config", config).get("max_position_embeddings")


def _check_model_length(model_dir: Path, length: int) -> None:
    limit = max_positions(model_dir)
    if limit is not None and length > limit:
        raise VlqcError(
            f"global_max_length {length} is above {model_dir / 'config.json'}: max_position_embeddings {limit}"
        )
