"""Shared fixtures: a small, valid annotation export with its image; the trained e2e workflow."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# The worked example of docs/export-format.md#worked-example, drawn on a 1200x1600 photo.
EXAMPLE_EXPORT = {
    "info": {"width": 1200, "height": 1600, "depth": 3},
    "markResult": {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {
                    "type": "Quad",
                    "coordinates": [[[210, 180], [980, 200], [975, 560], [205, 540], [210, 180]]],
                },
                "properties": {
                    "objectId": 1,
                    "area": 276000.0,
                    "groups": [],
                    "content": {"label": "bbu"},
                    "contentZh": {
                        "标签": "BBU设备",
                        "这个BBU设备是什么品牌": "华为",
                        "这个BBU设备是否显示完整": "只显示部分",
                        "这个BBU设备是否需要安装挡风板，结合图片中机柜空间状态判断": "无需安装",
                        "如果有特殊情况，请具体描述": "无法判断品牌",
                    },
                },
            },
            {
                "type": "Feature",
                "geometry": {
                    "type": "ExtentPolygon",
                    "coordinates": [[300, 600], [360, 600], [360, 650], [300, 650], [300, 600]],
                },
                "properties": {
                    "objectId": 2,
                    "area": 3000.0,
                    "groups": [],
                    "content": {"label": "connect_point"},
                    "contentZh": {
                        "这个螺丝/插头是什么种类": "BBU安装螺丝",
                        "螺丝/插头是否显示完整": "显示完整",
                        "这个螺丝/插头连接是否符合要求": "符合要求",
                    },
                },
            },
            {
                "type": "Feature",
                "geometry": {
                    "type": "LineString",
                    "coordinates": [[620, 700], [560, 900], [580, 1200], [700, 1500]],
                    "lineType": "LLLL",
                    "lineMode": 1,
                },
                "properties": {
                    "objectId": 3,
                    "groups": [],
                    "content": {"label": "fiber"},
                    "contentZh": {
                        "这条光纤是否被遮挡": "无遮挡",
                        "这条光纤是否采用保护措施": "有保护措施，保护措施为/蛇形管",
                        "这条光纤弯曲半径是否合理": "弯曲半径合理",
                    },
                },
            },
        ],
    },
}

EXAMPLE_SUMMARY = (
    '{"统计": [{"类别": "BBU安装螺丝", "可见性": {"完整": 1}, "符合性": {"符合": 1}}, '
    '{"类别": "BBU设备", "可见性": {"部分": 1}, "品牌": {"华为": 1}, "挡风板需求": {"免装": 1}}, '
    '{"类别": "光纤", "保护措施": {"有保护": 1}, "保护细节": {"蛇形管": 1}, "弯曲半径": {"半径合理": 1}}], '
    '"备注": ["无法判断品牌"]}'
)


def example_export() -> dict:
    return copy.deepcopy(EXAMPLE_EXPORT)


def write_sample(folder: Path, stem: str, export: dict | None = None, size=(1200, 1600), suffix=".jpg") -> Path:
    """Write `<stem>.json` and an image of `size` beside it; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 110, 130)).save(folder / f"{stem}{suffix}")
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(export or example_export(), ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def export_root(tmp_path: Path) -> Path:
    root = tmp_path / "exports"
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A freshly built tiny Qwen3-VL (seed 3) for the tests of one module."""
    from vlqc.train.base_model import build_tiny_base  # torch: imported only where a test needs a model

    folder = tmp_path_factory.mktemp("base") / "tiny"
    build_tiny_base(folder, sizes=None, seed=3)
    return folder


# The e2e workflow shared by the e2e modules of training and evaluation (one training for all of them).
TRAINED_OVERLAY = """
demo: {tickets_per_mission: 4, seed: 5}  # two tickets per mission and label: one goes to val
train:
  run: lora
  runs: {lora: config/train/e2e_lora.yaml, full: config/train/e2e_full.yaml}
eval:  # every row kind (the demo config leaves dense out), in small numbers
  modes: [dense, summary, verdict]
  rows: 12
  golden_rows: 6
  batch_size: 4
  ablation: {rows: 8}
  golden_decoding: {max_new_tokens: 16}
sweeps:
  e2e: {base: config/train/align.yaml, max_steps: 2, axes: {tuner.learning_rate: [1.0e-3, 3.0e-3]}}
"""
TRAINED_STEPS = 3
# Checkpoints at steps 2 and 3: evaluation has more than one to compare.
STEPS = (
    f"training: {{epochs: 1, max_steps: {TRAINED_STEPS}, per_device_train_batch_size: 2, save_steps: 2,"
    " logging_steps: 1, liger_kernel: false}\n"
)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A workflow copy with runs `lora` and `full` trained for TRAINED_STEPS steps and merged (e2e.yaml is
    TRAINED_OVERLAY)."""
    from workflow_env import trained_workflow

    configs = {"lora": "extends: lora.yaml\n" + STEPS, "full": "extends: full.yaml\n" + STEPS}
    return trained_workflow(tmp_path_factory.mktemp("train"), TRAINED_OVERLAY, configs)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Work units for pytest-xdist's `--dist loadgroup` (`make test`): a module stays on one worker, so its module
    fixtures run once, and every module that uses `trained` joins one group, so the workflow is trained once."""
    trained_modules = {item.module.__name__ for item in items if "trained" in getattr(item, "fixturenames", ())}
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("trained" if module in trained_modules else module))
