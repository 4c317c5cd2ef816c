"""What a checkpoint folder is, before anything loads it: a full model, or a LoRA adapter on a base.

Stage-A, Stage-B and evaluation take either as `checkpoint`. A LoRA (or DoRA) folder as ms-swift saves it
(`adapter_config.json` + adapter weights, results/train/sft/<run>/checkpoint) needs its base model: the one
configured (`stage_a.base`, `stage_b.base`), else the folder its `adapter_config.json` names
(`base_model_name_or_path`) when that exists here. Its processor (tokenizer, chat template, image
processor) is its own when the folder has one, else the base's.

No torch here: the workflow asks these questions while it plans jobs (rules/common.smk).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vlqc.errors import VlqcError
from vlqc.jsonl import read_json

ADAPTER_CONFIG = "adapter_config.json"
# Files that identify a model folder's weights and architecture; the fingerprint reads these.
IDENTITY_FILES = ("config.json", ADAPTER_CONFIG)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
# A folder with one of these carries its own processor (transformers' AutoProcessor files).
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json")


def is_adapter(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / ADAPTER_CONFIG).is_file()


def declared_base(checkpoint: str | Path) -> str | None:
    """The base an adapter folder names (`base_model_name_or_path` of its adapter_config.json), if any."""
    doc = read_json(Path(checkpoint) / ADAPTER_CONFIG)
    base = doc.get("base_model_name_or_path") if isinstance(doc, dict) else None
    return base if isinstance(base, str) and base else None


def adapter_base(checkpoint: str | Path, base: str | Path | None = None) -> Path | None:
    """The base model folder a LoRA adapter `checkpoint` loads on; None for a full model folder.

    `base` (configured) wins; without it the adapter's own `base_model_name_or_path`, when that folder
    exists. Otherwise a VlqcError names the adapter folder and says what to set."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise VlqcError(f"{checkpoint}: no such checkpoint folder")
    if not is_adapter(checkpoint):
        if not (checkpoint / "config.json").is_file():
            raise VlqcError(f"{checkpoint}: neither a model (config.json) nor a LoRA adapter ({ADAPTER_CONFIG})")
        return None
    if base is not None:
        if not (Path(base) / "config.json").is_file():
            raise VlqcError(f"{base}: the base model of the LoRA adapter {checkpoint} is not a model folder")
        return Path(base)
    declared = declared_base(checkpoint)
    if declared is not None and (Path(declared) / "config.json").is_file():
        return Path(declared)
    named = f"names base {declared!r}, which is not a model folder here" if declared else "names no base"
    raise VlqcError(
        f"{checkpoint} is a LoRA adapter that {named}: set its base model folder "
        "(stage_a.base or stage_b.base in the config, --base for a script)"
    )


def processor_dir(checkpoint: str | Path, base: str | Path | None = None) -> Path:
    """Where the processor of `checkpoint` comes from: the folder itself, or an adapter's base when the
    adapter folder carries none."""
    checkpoint = Path(checkpoint)
    if is_adapter(checkpoint) and not any((checkpoint / name).is_file() for name in PROCESSOR_FILES):
        return adapter_base(checkpoint, base)
    return checkpoint  # a model folder (what it lacks, the loader names)


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 of a model folder's identity: its config files' bytes, and the names, sizes and modification
    times of its weight files (hashing gigabytes of weights would cost minutes)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in IDENTITY_FILES:
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    for pattern in WEIGHT_PATTERNS:
        for weights in sorted(folder.glob(pattern)):
            stat = weights.stat()
            digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def content_fingerprint(folder: str | Path, samples: int = 64, block: int = 1 << 16) -> str:
    """sha256 of what a model folder holds, wherever it was copied: its config.json's bytes, and for each
    weight file its name, size and `samples` blocks of `block` bytes spread evenly over it (a few MiB read,
    not gigabytes: two fine-tunes of one architecture differ in nearly every block)."""
    folder = Path(folder)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for pattern in WEIGHT_PATTERNS:
        for weights in sorted(folder.glob(pattern)):
            size = weights.stat().st_size
            digest.update(f"{weights.name}:{size}".encode())
            with weights.open("rb") as fh:
                for i in range(samples):
                    fh.seek(max(0, size - block) * i // max(1, samples - 1))
                    digest.update(fh.read(block))
    return digest.hexdigest()


def checkpoint_identity(checkpoint: str | Path, base: str | Path | None = None) -> dict[str, Any]:
    """What a job ran, for its manifest: the checkpoint folder, its kind (`model`, `lora_adapter`, or `other`:
    e.g. the tokenizer folder of Stage-B's openai backend) and fingerprint, and for an adapter its base's."""
    checkpoint = Path(checkpoint)
    identity: dict[str, Any] = {"path": str(checkpoint), "fingerprint": folder_fingerprint(checkpoint), "base": None}
    if is_adapter(checkpoint):
        resolved = adapter_base(checkpoint, base)
        identity["base"] = {"path": str(resolved), "fingerprint": folder_fingerprint(resolved)}
        return {**identity, "kind": "lora_adapter"}
    return {**identity, "kind": "model" if (checkpoint / "config.json").is_file() else "other"}
