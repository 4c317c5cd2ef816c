# Config validation, mission table and helpers shared by every rule file.
import json
import os
import re
import sys
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

min_version("9.0")

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))
# Set (not required from the user): jobs, also in per-rule conda envs, import the
# library from this checkout, and nothing ever reaches for a model hub.
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    HF_HUB_OFFLINE="1",
)

from vlqc.schemas import check, schema_path

# Unknown keys are reported with their dotted path first; then Snakemake's own
# validator fills every default from the schema.
check(config, "config", "config")
validate(config, str(schema_path("config")))

with open(config["missions_file"], encoding="utf-8") as fh:
    MISSIONS = yaml.safe_load(fh)
check(MISSIONS, "missions", config["missions_file"])


wildcard_constraints:
    mission="|".join(re.escape(name) for name in MISSIONS),
    dataset="|".join(re.escape(name) for name in config["datasets"]),


def dataset_root(wildcards):
    return config["datasets"][wildcards.dataset]["root"]


def mission_domains_json():
    """Mission → domain, passed to the converter for photos without objects."""
    return json.dumps({name: m["domain"] for name, m in MISSIONS.items()}, ensure_ascii=False)
