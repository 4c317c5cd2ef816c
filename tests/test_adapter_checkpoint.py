"""A LoRA adapter folder plus its base serves as a checkpoint without a merge step (docs/stage-a.md#checkpoint):
on the real tiny model it generates what its merged folder generates, with the plain and the fast engine;
and `attn_implementation` reaches from_pretrained, refusing what cannot load."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from peft import LoraConfig, get_peft_model
from PIL import Image
from transformers import AutoModelForImageTextToText

from vlqc.errors import VlqcError
from vlqc.inference.checkpoint import adapter_base, checkpoint_identity, processor_dir
from vlqc.inference.fast_generation import FastGenerator
from vlqc.inference.generation import Generator, Request, Sampling, check_attn_implementation, load_model
from vlqc.stage_b.backends import HFBackend
from vlqc.train.base_model import build_tiny_base
from vlqc.train.merge import merge_checkpoint

BIN = Path(sys.executable).parent
MAX_PIXELS = 147456
REQUESTS = [
    Request("你是质检助手。", "<image>总结这张图片。", [Image.new("RGB", (96, 64), (200, 30, 30))]),
    Request("你是质检助手。", "<image>这张图片里有什么？", [Image.new("RGB", (160, 128), (30, 200, 30))]),
    Request("你是质检助手。", "只有文字的问题。", []),
]
SAMPLING = Sampling(max_new_tokens=12)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny base, a LoRA adapter on it as ms-swift saves one (no processor files; the base named by absolute
    path in adapter_config.json), and the adapter merged by the pipeline's merge step."""
    root = tmp_path_factory.mktemp("adapter")
    base = root / "base"
    build_tiny_base(base, sizes=None, seed=3)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)")
    )
    torch.manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero (a no-op adapter): give it weights that change the answers
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    assert not (adapter / "tokenizer_config.json").exists() and not (adapter / "config.json").exists()
    merged = merge_checkpoint(adapter, base, root / "merged")
    return {"root": root, "base": base, "adapter": adapter, "merged": merged}


def test_the_adapter_names_its_base_and_lends_its_processor(folders):
    adapter, base = folders["adapter"], folders["base"]
    assert adapter_base(adapter) == base  # base_model_name_or_path, which exists here
    assert adapter_base(folders["merged"]) is None
    assert processor_dir(adapter) == base and processor_dir(folders["merged"]) == folders["merged"]
    identity = checkpoint_identity(adapter)
    assert identity["kind"] == "lora_adapter" and identity["base"]["path"] == str(base)
    assert checkpoint_identity(folders["merged"])["base"] is None


def test_an_adapter_generates_what_its_merged_model_generates(folders):
    merged = Generator(folders["merged"], max_pixels=MAX_PIXELS).generate(REQUESTS, SAMPLING)
    adapter = Generator(folders["adapter"], max_pixels=MAX_PIXELS).generate(REQUESTS, SAMPLING)
    configured = Generator(folders["adapter"], max_pixels=MAX_PIXELS, base=folders["base"]).generate(REQUESTS, SAMPLING)
    base = Generator(folders["base"], max_pixels=MAX_PIXELS).generate(REQUESTS, SAMPLING)
    assert adapter == merged == configured
    assert adapter != base, "the adapter changes the answers (else the test proves nothing)"


def test_the_fast_engine_and_the_stage_b_backend_take_an_adapter(folders):
    plain = Generator(folders["merged"], max_pixels=MAX_PIXELS).generate(REQUESTS, SAMPLING)
    fast = FastGenerator(folders["adapter"], max_pixels=MAX_PIXELS, base=folders["base"])
    fast.max_wave_rows, fast.memory_fraction, fast.compile = 8, 0.5, "never"
    assert fast.generate(REQUESTS, SAMPLING) == plain
    backend = HFBackend(folders["adapter"], batch_size=2, base=folders["base"])
    text = [(r.system, r.user) for r in REQUESTS if not r.images]
    assert backend.chat(text, SAMPLING) == [plain[-1]]


def test_an_adapter_without_a_base_is_an_error_naming_the_folder(folders, tmp_path):
    moved = tmp_path / "lonely"
    shutil.copytree(folders["adapter"], moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/nowhere/base"}))
    with pytest.raises(VlqcError, match=rf"{moved} is a LoRA adapter that names base '/nowhere/base'.*stage_a.base"):
        Generator(moved)
    with pytest.raises(VlqcError, match="not a model folder"):
        adapter_base(moved, tmp_path / "empty")
    # A configured base is used instead of the one the adapter names.
    assert adapter_base(moved, folders["base"]) == folders["base"]
    with pytest.raises(VlqcError, match="neither a model"):
        adapter_base(tmp_path)


def test_attn_implementation_reaches_the_model_and_refuses_what_cannot_load(folders):
    eager = load_model(folders["adapter"], attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    assert load_model(folders["merged"], attn_implementation="sdpa").config._attn_implementation == "sdpa"
    with pytest.raises(VlqcError, match="one of sdpa, eager, flash_attention_2"):
        check_attn_implementation("flash")
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        with pytest.raises(VlqcError, match="flash_attention_2 needs the flash-attn package"):
            load_model(folders["merged"], attn_implementation="flash_attention_2")


def test_the_workflow_gives_stage_a_and_stage_b_the_adapter_and_its_base(folders, tmp_path):
    """An adapter folder as stage_a.checkpoint: its base (named by the adapter) is an input of the jobs that
    load it and reaches their scripts; Stage-B follows Stage-A's model; each job declares its run manifest."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(json.dumps({"stage_a": {"checkpoint": str(folders["adapter"])}}), encoding="utf-8")
    target = "results/stage_b/挡风板安装检查/eval/demo/verdicts.jsonl"
    result = subprocess.run(
        [str(BIN / "snakemake"), "-n", "-p", "--forceall", target, "--configfile", str(overlay)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = dict(re.findall(r"^rule (\w+):\n((?:    .*\n)+)", result.stdout, flags=re.M))
    for rule in ("stage_a_verify", "stage_a_infer", "stage_b_eval"):
        assert str(folders["base"]) in jobs[rule].split("output:")[0], rule  # an input
        assert f"--checkpoint {folders['adapter']} --base {folders['base']}" in result.stdout
    assert "results/stage_a/挡风板安装检查/run_metadata.json" in jobs["stage_a_infer"]
    assert "results/stage_b/挡风板安装检查/eval/demo/run_metadata.json" in jobs["stage_b_eval"]
    assert "merge_adapter" not in jobs, "no merge step"
    # The default serving model is a merged folder: no base, no flag.
    result = subprocess.run(
        [str(BIN / "snakemake"), "-n", "-p", "--forceall", target], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0 and "merge_adapter" in result.stdout
    stage_commands = [line for line in result.stdout.splitlines() if re.search(r"scripts/stage_(a|b)", line)]
    assert len(stage_commands) == 5 and not [line for line in stage_commands if "--base" in line]
