"""The base model folder (rule base_model): a tiny seeded Qwen3-VL, or a link to a real checkpoint.

Either way `results/train/base/<name>/` loads with `AutoProcessor` +
`AutoModelForImageTextToText` and with ms-swift (`--model_type qwen3_vl`), and holds
`vlqc_base_model.json`, a manifest saying what the folder is (sizes, seed, parameter
counts, or the linked source). The folder is built under a temporary name beside
`out_dir` and renamed, so a crash never leaves a half-built model under the final name.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    PreTrainedModel,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from vlqc import schemas
from vlqc.errors import VlqcError
from vlqc.jsonl import write_json
from vlqc.train.tokenizer import CHAT_TEMPLATE, build_qwen_tokenizer

SIZES_SCHEMA = "base_model_config"
MANIFEST = "vlqc_base_model.json"
# Qwen3-VL pads its 151,669 tokens to 151,936 embedding rows; the tiny model keeps that shape.
VOCAB_SIZE = 151936
ENDOFTEXT_ID, IM_END_ID = 151643, 151645
# Qwen3-VL's preprocessing normalises pixels to [-1, 1].
PIXEL_MEAN = PIXEL_STD = [0.5, 0.5, 0.5]


def resolve_sizes(sizes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`sizes` checked against its schema and the model's shape rules, defaults filled in."""
    given = dict(sizes or {})
    schemas.check(given, SIZES_SCHEMA, "base model sizes")
    resolved = {**schemas.defaults(SIZES_SCHEMA), **given}
    problems = _shape_problems(resolved)
    if problems:
        raise VlqcError("base model sizes are inconsistent:\n  " + "\n  ".join(problems))
    return resolved


def _shape_problems(s: Mapping[str, Any]) -> list[str]:
    problems = []
    if s["text_heads"] % s["text_kv_heads"]:
        problems.append(f"text_kv_heads ({s['text_kv_heads']}) must divide text_heads ({s['text_heads']})")
    if s["vision_hidden_size"] % s["vision_heads"]:
        problems.append(
            f"vision_heads ({s['vision_heads']}) must divide vision_hidden_size ({s['vision_hidden_size']})"
        )
    elif (s["vision_hidden_size"] // s["vision_heads"]) % 4:
        # The vision tower's 2-D rotary embedding splits each head in four.
        problems.append("vision_hidden_size / vision_heads must be a multiple of 4")
    out_of_range = [i for i in s["deepstack_visual_indexes"] if i >= s["vision_depth"]]
    if out_of_range:
        problems.append(f"deepstack_visual_indexes {out_of_range} must be < vision_depth ({s['vision_depth']})")
    if len(s["deepstack_visual_indexes"]) > s["text_layers"]:
        problems.append("there must be at least as many text_layers as deepstack_visual_indexes")
    if math.isqrt(s["vision_num_position_embeddings"]) ** 2 != s["vision_num_position_embeddings"]:
        problems.append("vision_num_position_embeddings must be a square number")
    if s["image_min_pixels"] > s["image_max_pixels"]:
        problems.append("image_min_pixels must not exceed image_max_pixels")
    return problems


def tiny_config(sizes: Mapping[str, Any]) -> Qwen3VLConfig:
    """A Qwen3VLConfig of the given (resolved) sizes, with Qwen3-VL's token ids and RoPE layout."""
    half = sizes["text_head_dim"] // 2
    # Interleaved MRoPE splits the rotary frequencies into time/height/width sections;
    # Qwen3-VL uses [24, 20, 20] of 64, scaled here to the head size.
    height = width = half * 20 // 64
    text = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": sizes["text_hidden_size"],
        "intermediate_size": sizes["text_intermediate_size"],
        "num_hidden_layers": sizes["text_layers"],
        "num_attention_heads": sizes["text_heads"],
        "num_key_value_heads": sizes["text_kv_heads"],
        "head_dim": sizes["text_head_dim"],
        "max_position_embeddings": 262144,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [half - height - width, height, width],
            "mrope_interleaved": True,
        },
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
    }
    vision = {
        "depth": sizes["vision_depth"],
        "hidden_size": sizes["vision_hidden_size"],
        "intermediate_size": sizes["vision_intermediate_size"],
        "num_heads": sizes["vision_heads"],
        "patch_size": sizes["patch_size"],
        "temporal_patch_size": sizes["temporal_patch_size"],
        "spatial_merge_size": sizes["spatial_merge_size"],
        "out_hidden_size": sizes["text_hidden_size"],
        "num_position_embeddings": sizes["vision_num_position_embeddings"],
        "deepstack_visual_indexes": list(sizes["deepstack_visual_indexes"]),
    }
    # Tied embeddings (as in Qwen3-VL-2B/4B) keep the 151,936-row matrix counted once.
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)


def build_processor(sizes: Mapping[str, Any]) -> Qwen3VLProcessor:
    """Tokenizer + Qwen2-VL image processor + Qwen3-VL video processor with the model's patch geometry."""
    geometry = {
        "patch_size": sizes["patch_size"],
        "temporal_patch_size": sizes["temporal_patch_size"],
        "merge_size": sizes["spatial_merge_size"],
    }
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": sizes["image_min_pixels"], "longest_edge": sizes["image_max_pixels"]},
        image_mean=PIXEL_MEAN,
        image_std=PIXEL_STD,
        **geometry,
    )
    video_processor = Qwen3VLVideoProcessor(image_mean=PIXEL_MEAN, image_std=PIXEL_STD, **geometry)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=build_qwen_tokenizer(),
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def generation_config() -> GenerationConfig:
    # Greedy by default so that pipeline runs are reproducible; callers that sample say so.
    return GenerationConfig(
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=[IM_END_ID, ENDOFTEXT_ID],
        pad_token_id=ENDOFTEXT_ID,
        do_sample=False,
    )


def new_tiny_model(sizes: Mapping[str, Any], seed: int) -> Qwen3VLForConditionalGeneration:
    """A randomly initialised tiny model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(tiny_config(sizes))
    model.generation_config = generation_config()
    return model.eval()


def parameter_counts(model: PreTrainedModel) -> dict[str, int]:
    """Parameters by part; shared (tied) tensors are counted once."""
    counts = {"total": 0, "embedding": 0, "vision": 0, "language_model": 0}
    for name, param in model.named_parameters(remove_duplicate=True):
        n = param.numel()
        counts["total"] += n
        if name.endswith("embed_tokens.weight"):
            counts["embedding"] += n
        elif ".visual." in f".{name}":
            counts["vision"] += n
        else:
            counts["language_model"] += n
    counts["non_embedding"] = counts["total"] - counts["embedding"]
    return counts


def build_tiny_base(
    out_dir: Path, sizes: Mapping[str, Any] | None = None, seed: int = schemas.defaults("config", "base_model")["seed"]
) -> dict[str, Any]:
    """Write the tiny model, processor, tokenizer and generation config to `out_dir`; returns the manifest."""
    resolved = resolve_sizes(sizes)
    model = new_tiny_model(resolved, seed)
    processor = build_processor(resolved)
    manifest = {
        "kind": "tiny",
        "seed": seed,
        "sizes": resolved,
        "parameters": parameter_counts(model),
        "dtype": str(model.dtype).removeprefix("torch."),
        "versions": _versions(),
    }
    with _staging(Path(out_dir)) as folder:
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        _write_manifest(folder, manifest)
    return manifest


def link_real_checkpoint(src: Path, out_dir: Path) -> dict[str, Any]:
    """Check that the local checkpoint `src` loads, then make `out_dir` a folder of links to its files."""
    src = Path(src).resolve()
    info = check_checkpoint(src)
    manifest = {"kind": "linked", "source": str(src), **info, "versions": _versions()}
    with _staging(Path(out_dir)) as folder:
        for entry in sorted(src.iterdir()):
            # A linked folder gets a manifest of its own, not the source's (if it has one).
            if entry.name != MANIFEST:
                (folder / entry.name).symlink_to(entry)
        _write_manifest(folder, manifest)
    return manifest


def check_checkpoint(src: Path) -> dict[str, Any]:
    """Load config, processor and (on the meta device, so no weights are read) the model of `src`.

    Raises VlqcError naming the folder when any part does not load or weights are missing.
    """
    if not src.is_dir():
        raise VlqcError(f"base model checkpoint {src} is not a folder")
    try:
        config = AutoConfig.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as error:
        raise VlqcError(f"base model checkpoint {src}: config.json does not load: {error}") from error
    if config.model_type != "qwen3_vl":
        raise VlqcError(f"base model checkpoint {src} is a {config.model_type!r} model, not qwen3_vl (Qwen3-VL)")
    try:
        AutoProcessor.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise VlqcError(f"base model checkpoint {src}: the processor does not load: {error}") from error
    try:
        model, loading = AutoModelForImageTextToText.from_pretrained(
            src, local_files_only=True, device_map="meta", output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise VlqcError(f"base model checkpoint {src}: the weights do not load: {error}") from error
    if loading["missing_keys"] or loading["mismatched_keys"]:
        raise VlqcError(
            f"base model checkpoint {src}: weights missing {sorted(loading['missing_keys'])[:5]} "
            f"or of the wrong shape {list(loading['mismatched_keys'])[:5]}"
        )
    return {"model_type": config.model_type, "parameters": parameter_counts(model)}


def _versions() -> dict[str, str]:
    return {"transformers": transformers.__version__, "torch": torch.__version__}


def _write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    write_json(folder / MANIFEST, manifest)


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside `out_dir` that becomes `out_dir` if the block succeeds."""
    if out_dir.is_symlink() or (out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir()))):
        raise VlqcError(f"{out_dir} already exists and is not an empty folder; remove it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        _make_readable(staging)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _make_readable(folder: Path) -> None:
    """mkdtemp (and transformers' shard writer) leave owner-only modes; a model folder is shared output."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
