# Config validation, mission table and helpers shared by every rule file.
import json
import os
import re
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))
# Set (not required from the user): jobs, also in per-rule conda envs, import the
# library from this checkout; `python` in a job is the interpreter running Snakemake
# (a conda env, when used, still comes first on PATH); nothing reaches for a model hub.
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    HF_HUB_OFFLINE="1",
)

from vlqc.missions import load_missions
from vlqc.schemas import check, schema_path

# Unknown keys are reported with their dotted path first; then Snakemake's own
# validator fills every default from the schema.
check(config, "config", "config")
validate(config, str(schema_path("config")))

MISSIONS = load_missions(config["missions_file"])


wildcard_constraints:
    mission="|".join(re.escape(name) for name in MISSIONS),
    dataset="|".join(re.escape(name) for name in config["datasets"]),
    step=r"\d+",


def dataset_root(wildcards):
    return config["datasets"][wildcards.dataset]["root"]


def settings_json(section, *keys):
    """`--settings` of a script (vlqc.cli): the keys of a config section that the job reads, as
    JSON. Only those, since Snakemake reruns a job whose params changed."""
    return json.dumps({key: section[key] for key in keys}, ensure_ascii=False)


def mission_domains_json():
    """Mission → domain, passed to the converter for photos without objects."""
    return json.dumps({name: m["domain"] for name, m in MISSIONS.items()}, ensure_ascii=False)


# --- model -------------------------------------------------------------------------------

from snakemake.exceptions import WorkflowError

from vlqc.train.config import config_sources, is_stage2, load_train_config

# Training runs by stage (the {stage} wildcard): SFT runs, and Stage-2 AB runs that start from an SFT run's
# merged model (docs/stage2.md). A run's folder is results/train/<stage>/<run>/.
TRAIN_RUNS = {"sft": config["train"]["runs"], "stage2": config["train"]["stage2_runs"]}


def run_stages():
    """Run name → its stage. Names are unique across the stages, so a name (train.run, init_from) says which run."""
    stages = {}
    for stage, runs in TRAIN_RUNS.items():
        for run in runs:
            if run in stages:
                raise WorkflowError(f"train: run {run!r} is named in both train.runs and train.stage2_runs")
            stages[run] = stage
    return stages


RUN_STAGE = run_stages()
TRAIN_CONFIG_FILES = {run: path for runs in TRAIN_RUNS.values() for run, path in runs.items()}

# Every run's training config is merged and checked now, so a typo fails the plan, not the job.
TRAIN_CONFIGS = {run: load_train_config(path) for run, path in TRAIN_CONFIG_FILES.items()}


def train_run_problems():
    """Runs named under the wrong stage, Stage-2 runs that start from no SFT run, a serving run that is none."""
    found = []
    for run, cfg in TRAIN_CONFIGS.items():
        where = f"train.{'runs' if RUN_STAGE[run] == 'sft' else 'stage2_runs'}.{run} ({TRAIN_CONFIG_FILES[run]})"
        if RUN_STAGE[run] == "sft" and is_stage2(cfg):
            found.append(f"{where}: a Stage-2 AB config (init_from, stage2_ab): name it under train.stage2_runs")
        elif RUN_STAGE[run] == "stage2" and not is_stage2(cfg):
            found.append(f"{where}: an SFT config (no init_from, no stage2_ab): name it under train.runs")
        elif RUN_STAGE[run] == "stage2" and cfg["init_from"] not in TRAIN_RUNS["sft"]:
            found.append(
                f"{where}: init_from {cfg['init_from']!r} is no SFT run of train.runs ({', '.join(TRAIN_RUNS['sft'])})"
            )
    if config["train"]["run"] not in RUN_STAGE:
        found.append(f"train.run: {config['train']['run']!r} is no run of train.runs or train.stage2_runs")
    return found


TRAIN_RUN_PROBLEMS = train_run_problems()
if TRAIN_RUN_PROBLEMS:
    raise WorkflowError("training runs of the config:\n  " + "\n  ".join(TRAIN_RUN_PROBLEMS))


wildcard_constraints:
    stage="|".join(TRAIN_RUNS),


def workdir_path(path):
    """`path` as rules name files: relative to the working directory when inside it, else absolute."""
    relative = os.path.relpath(path)
    return str(path) if relative.split(os.sep)[0] == os.pardir else relative


# The files each run's config extends (parents first, the config itself not included): jobs that
# read the config read them too, so they are inputs, and editing a parent reruns the run.
TRAIN_CONFIG_PARENTS = {
    run: [workdir_path(source) for source in config_sources(path)[:-1]] for run, path in TRAIN_CONFIG_FILES.items()
}


def train_config(wildcards, stage=None):
    """The config file of run {run}, which must be a run of `stage`: given, else the rule's {stage}, else sft
    (the rules of per-step SFT jobs, whose paths say sft)."""
    stage = stage or wildcards.get("stage", "sft")
    if RUN_STAGE.get(wildcards.run) != stage:
        raise WorkflowError(f"results/train/{stage}/{wildcards.run}: {wildcards.run!r} is no {stage} run of train")
    return TRAIN_CONFIG_FILES[wildcards.run]


def train_config_parents(wildcards):
    return TRAIN_CONFIG_PARENTS[wildcards.run]


def run_dir(run):
    """The folder of training run `run`: results/train/<stage>/<run>."""
    return f"results/train/{RUN_STAGE[run]}/{run}"


def base_model_dir(wildcards=None):
    return f"results/train/base/{config['base_model']['name']}"


def train_base(wildcards):
    """The model run {run} trains from (and a LoRA adapter of it merges into): base_model for an SFT run,
    the init_from SFT run's merged model for a Stage-2 run (so that run trains first)."""
    cfg = TRAIN_CONFIGS[wildcards.run]
    return f"results/train/sft/{cfg['init_from']}/merged" if is_stage2(cfg) else base_model_dir()


def base_model_settings():
    """Settings of scripts/base_model.py: link a real checkpoint, or build the tiny model."""
    return settings_json(config["base_model"], "checkpoint", "sizes", "seed")


def canonical_splits(run, part):
    """Canonical JSONL files a run trains (part=train) or validates (part=val) on."""
    return [f"results/data/{d['dataset']}/{d['split']}.jsonl" for d in TRAIN_CONFIGS[run]["data"][part]]


def canonical_images(run):
    datasets = {d["dataset"] for part in ("train", "val") for d in TRAIN_CONFIGS[run]["data"][part]}
    return [f"results/data/{dataset}/images" for dataset in sorted(datasets)]


# A saved checkpoint's folder under results/train/sft/<run>/steps/ (vlqc.train.run).
STEP_DIR = re.compile(r"step_(\d+)")


def saved_steps(run):
    """The steps at which run `run` saved a checkpoint, ascending. Known once train_sft (a Snakemake
    checkpoint) ran: until then the call makes Snakemake plan training first and ask again."""
    steps = Path(checkpoints.train_sft.get(run=run).output.steps)
    return sorted(int(found[1]) for p in steps.iterdir() if (found := STEP_DIR.fullmatch(p.name)) and p.is_dir())


def serving_model():
    """The merged checkpoint that Stage-A and Stage-B load: train.run's, an SFT or a Stage-2 run."""
    return f"{run_dir(config['train']['run'])}/merged"


def stage2_targets():
    """The merged model and eval of every Stage-2 run (rule all)."""
    return [f"results/train/stage2/{run}/{name}" for run in TRAIN_RUNS["stage2"] for name in ("merged", "eval.json")]


# --- evaluation (rules/eval.smk) ------------------------------------------------------------

EVAL = config["eval"]


def eval_candidates_file():
    """The candidates of eval.dataset: every row the eval and golden sets draw from."""
    return f"results/eval/{EVAL['dataset']}/candidates.jsonl"


def eval_split_file():
    """The configured eval set (eval.dataset, eval.split_seed, eval.rows), shared by every checkpoint and sweep point."""
    return f"results/eval/{EVAL['dataset']}/split_seed{EVAL['split_seed']}_eval{EVAL['rows']}.json"


def eval_images():
    """The photos of eval.dataset; rows name them relative to its folder (the parent of images/)."""
    return f"results/data/{EVAL['dataset']}/images"


def eval_loss_files(run):
    """The eval loss of every checkpoint run `run` saved (known once it trained, see saved_steps)."""
    return expand("results/train/sft/{run}/eval_loss/step_{step}.json", run=run, step=saved_steps(run))


# --- golden set and dumps (rules/golden.smk) ---------------------------------------------


def golden_dumps(run):
    """The golden dump (of the eval.golden_rows golden set) of every checkpoint run `run` saved; for an
    input function (the steps are known once the run trained, see saved_steps)."""
    return expand(
        "results/train/sft/{run}/qual/step_{step}_golden{n}.jsonl",
        run=run,
        step=saved_steps(run),
        n=config["eval"]["golden_rows"],
    )


# --- Stage-A -----------------------------------------------------------------------------

STAGE_A = config["stage_a"]


def stage_a_checkpoint():
    """The model Stage-A runs: a configured folder, else the pipeline's serving checkpoint."""
    return STAGE_A["checkpoint"] or serving_model()


def stage_a_max_pixels():
    """The processor's pixel budget: configured, else the serving run's training pixel cap
    (generation must see images as training did); a foreign checkpoint keeps its own."""
    if STAGE_A["max_pixels"] or STAGE_A["checkpoint"]:
        return STAGE_A["max_pixels"]
    return TRAIN_CONFIGS[config["train"]["run"]]["template"]["max_pixels"]


def stage_a_settings(*keys):
    """Settings of a Stage-A script: `keys` of the stage_a section, max_pixels resolved."""
    return settings_json({**STAGE_A, "max_pixels": stage_a_max_pixels(), "prompts": stage_a_prompts()}, *keys)


# What scripts/stage_a_infer.py reads: vlqc.stage_a.infer.Settings (seeded by sample_seed) and the launch.
STAGE_A_INFER_KEYS = (
    "batch_size",
    "engine",
    "openai",
    "attn_implementation",
    "wave_rows",
    "wave_memory_fraction",
    "compile",
    "max_new_tokens",
    "temperature",
    "top_p",
    "repetition_penalty",
    "no_mission",
    "prompts",
    "max_pixels",
    "sample_seed",
    "sharding_mode",
    "gpus",
    "shards",
)


def stage_a_ranks():
    """Ranks of one inference job (of each shard's)."""
    return STAGE_A["gpus"] or STAGE_A["cpu_ranks"]


wildcard_constraints:
    shard=r"\d+",


# The folder of one inference job: the mission's Stage-A folder, or with stage_a.shards > 1 the job's
# shard{shard} folder in it (docs/stage-a.md#shards). One shard keeps the layout from before shards.
STAGE_A_JOB_DIR = "results/stage_a/{mission}/shard{shard}" if STAGE_A["shards"] > 1 else "results/stage_a/{mission}"


def stage_a_every_shard(patterns):
    """`patterns` of one inference job, for every shard (the merge's inputs); {mission} stays a wildcard."""
    return expand(patterns, shard=range(STAGE_A["shards"]), allow_missing=True)


# Per-rank files of an inference job, named by the rank within the job; per_image rows are marked `.images`.
STAGE_A_RANK_FILES = expand(
    f"{STAGE_A_JOB_DIR}/{{mission}}_stage_a{{infix}}.rank{{rank}}.jsonl",
    infix=".images" if STAGE_A["sharding_mode"] == "per_image" else "",
    rank=range(stage_a_ranks()),
    allow_missing=True,
)


def intermediate(paths):
    """Temporary unless keep_intermediate_outputs is set."""
    return paths if config["keep_intermediate_outputs"] else temp(paths)


# --- Stage-B -----------------------------------------------------------------------------

from vlqc.stage_b.engine import OUTPUT_FILES as STAGE_B_OUTPUT_FILES, TRAIN_OUTPUT_DIRS as STAGE_B_TRAIN_DIRS
from vlqc.stage_b.engine import config_keys as stage_b_config_keys

STAGE_B = config["stage_b"]
STAGE_B_KINDS = ("eval", "train")
# A guidance file that is the output of a Stage-B run.
STAGE_B_RUN_GUIDANCE = re.compile(
    r"results/stage_b/(?P<mission>[^/]+)/(?P<kind>eval|train)/(?P<run>[^/]+)/guidance\.json"
)


def stage_b_checkpoint():
    """The model Stage-B runs (hf) or whose tokenizer counts prompt tokens (openai): configured,
    else the one Stage-A runs (production serves both stages with one set of weights)."""
    return STAGE_B["checkpoint"] or stage_a_checkpoint()


def stage_b_ranks():
    """torchrun processes of a Stage-B job: one per GPU or CPU rank with hf; one with openai (the server batches)."""
    if STAGE_B["backend"] == "openai":
        return 1
    return STAGE_B["gpus"] or STAGE_B["cpu_ranks"]


def stage_b_run_dir(kind):
    return f"results/stage_b/{{mission}}/{kind}/{{run}}"


def stage_b_outputs(kind):
    """Every file a Stage-B run of `kind` (eval, train) writes into its folder: a run starts in an empty one."""
    files = [f"{stage_b_run_dir(kind)}/{name}" for name in STAGE_B_OUTPUT_FILES]
    files += manifest_outputs(stage_b_run_dir(kind))
    if kind == "train":
        files += [directory(f"{stage_b_run_dir(kind)}/{name}") for name in STAGE_B_TRAIN_DIRS]
    return files


def stage_b_start(kind, mission, run):
    """The guidance file a run starts from: stage_b.eval_guidance (every eval run) or
    stage_b.train_guidance[run] ({mission} filled in), else the mission's seed."""
    template = STAGE_B["eval_guidance"] if kind == "eval" else STAGE_B["train_guidance"].get(run)
    if template is None:
        return f"{STAGE_B['guidance_dir']}/{mission}.json"
    return os.path.normpath(template.format(mission=mission))


def stage_b_guidance(kind):
    """Input function of a `kind` run: the guidance it starts from. A run that would start from its own
    guidance.json, directly or through other runs, is refused here, naming the chain (Snakemake would
    only report a cyclic graph)."""

    def guidance(wildcards):
        chain = [f"{kind}/{wildcards.run}"]
        path = start = stage_b_start(kind, wildcards.mission, wildcards.run)
        while (found := STAGE_B_RUN_GUIDANCE.fullmatch(path)) and found["mission"] == wildcards.mission:
            chain.append(f"{found['kind']}/{found['run']}")
            if chain[-1] in chain[:-1]:
                raise WorkflowError(
                    f"Stage-B runs of {wildcards.mission} that start from each other's guidance: "
                    f"{' → '.join(chain)} (each from the next one's guidance.json); a run starts from the seed "
                    "or from an earlier run (stage_b.train_guidance, stage_b.eval_guidance)"
                )
            path = stage_b_start(found["kind"], wildcards.mission, found["run"])
        return start

    return guidance


def stage_b_settings(kind):
    """What scripts/stage_b.py reads of the stage_b section in a run of `kind` (eval: not the train-only
    keys); which guidance file a run starts from is resolved by the rule into its input."""
    return settings_json({**STAGE_B, "prompts": stage_b_prompts()}, *stage_b_config_keys(STAGE_B, kind))


# --- the demo ----------------------------------------------------------------------------


def demo_stage_targets():
    """Stage-A summaries and Stage-B eval verdicts of every demo mission, so that the default
    target runs the product end to end: only while Stage-A reads the demo tickets (with other
    tickets, name the missions' targets yourself)."""
    if os.path.normpath(STAGE_A["input_root"]) != os.path.normpath(config["demo"]["out"]):
        return []
    missions = config["demo"]["missions"]
    return expand("results/{mission}_stage_a.jsonl", mission=missions) + expand(
        "results/stage_b/{mission}/eval/demo/verdicts.jsonl", mission=missions
    )


# --- the report ---------------------------------------------------------------------------

import shlex

REPORT = config["report"]


def report_missions():
    """Missions whose Stage-A and Stage-B plots the report shows: report.missions, else the missions
    whose Stage-A and Stage-B the default target runs."""
    if REPORT["missions"] is not None:
        return REPORT["missions"]
    return config["demo"]["missions"] if demo_stage_targets() else []


def final_eval_loss(run):
    """The eval-loss file of a run's last saved checkpoint."""
    return f"results/train/sft/{run}/eval_loss/step_{max(saved_steps(run))}.json"


def training_plots(run):
    return expand("results/plots/train/{run}/{plot}.png", run=run, plot=["loss", "eval_loss_buckets", "ablation"])


def stage_plots():
    """Stage-A plot and the Stage-B plots of report.stage_b_run, for report_missions()."""
    missions = report_missions()
    if not missions:
        return []
    run = REPORT["stage_b_run"]
    plots = ["results/plots/stage_a/summary.png"] if REPORT["stage_a"] else []
    plots += expand(
        "results/plots/stage_b/{mission}/eval/{run}/{plot}.png",
        mission=missions,
        run=run,
        plot=["confusion", "metrics", "outcomes"],
    )
    return plots + [f"results/plots/stage_b/eval/{run}/false_pass.png"]


def report_targets():
    """Every plot of the training runs and of the stages the report shows, and the headline page:
    what rule all builds so that `snakemake --report` has it."""
    plots = [plot for run in config["train"]["runs"] for plot in training_plots(run)]
    return plots + stage_plots() + ["results/plots/headline.html"]


def sweep_report_targets():
    """The table and heatmap of every configured sweep (each point trains a model: not in rule all)."""
    return expand(
        "results/plots/sweeps/{sweep}/{plot}", sweep=list(config["sweeps"]), plot=["summary.html", "heatmap.png"]
    )


def headline_args(wildcards, input):
    """Arguments of scripts/report_headline.py, the inputs in the order of report_headline's input."""
    args = [f"--serving-run {shlex.quote(config['train']['run'])}"]
    for run in config["train"]["runs"]:
        args.append(shlex.join(["--run", run, final_eval_loss(run), f"results/train/sft/{run}/ablation.json"]))
    if input.stage_a:
        args.append(shlex.join(["--stage-a", *input.stage_a]))
    for mission in report_missions():
        folder = f"results/stage_b/{mission}/eval/{REPORT['stage_b_run']}"
        files = [f"{folder}/metrics.jsonl", f"{folder}/group_report.jsonl", f"{folder}/need_review.json"]
        args.append(shlex.join(["--stage-b", mission, *files]))
    return " ".join(args + [f"--stage-b-run {shlex.quote(REPORT['stage_b_run'])}"])


def headline_labels(wildcards, output):
    """Labels of the headline entry: the serving run's eval loss and the worst false-pass rate."""
    from vlqc.jsonl import read_json
    from vlqc.report.headline import SCHEMA, labels

    return labels(read_json(output.json, schema=SCHEMA))


def sweep_axes(wildcards):
    """The sweep's axes, in config order, as arguments."""
    return shlex.join(config["sweeps"][wildcards.sweep]["axes"])


# --- grounding metrics (rule eval_grounding, docs/evaluation.md#grounding) ------------------------


def grounding_val_file():
    """The canonical val split of eval.dataset, whose photos the grounding metrics ask for their objects."""
    return f"results/data/{EVAL['dataset']}/val.jsonl"


def grounding_files(run):
    """The grounding metrics of every checkpoint run `run` saved (known once it trained, see saved_steps)."""
    return expand("results/train/sft/{run}/grounding/step_{step}.json", run=run, step=saved_steps(run))


def final_grounding(run):
    """The grounding metrics of a run's last saved checkpoint (the report's grounding plot)."""
    return f"results/train/sft/{run}/grounding/step_{max(saved_steps(run))}.json"


def grounding_plots():
    """The grounding plot of every training run (rule all, so that the report has it)."""
    return expand("results/plots/train/{run}/grounding.png", run=config["train"]["runs"])


# --- prompt profiles (docs/prompts.md): the prompts Stage-A and Stage-B ask their model with ----------


def stage_a_prompts():
    """stage_a.prompts, else the prompts section train.run was trained with (its checkpoints carry it in
    resolved_config.json); {} (the default profiles) for a configured checkpoint."""
    if STAGE_A["prompts"] is not None:
        return STAGE_A["prompts"]
    return {} if STAGE_A["checkpoint"] else TRAIN_CONFIGS[config["train"]["run"]]["prompts"]


def stage_b_prompts():
    """stage_b.prompts, else those of the model Stage-B runs: Stage-A's, or {} for a checkpoint of its own."""
    if STAGE_B["prompts"] is not None:
        return STAGE_B["prompts"]
    return {} if STAGE_B["checkpoint"] else stage_a_prompts()


# --- Stage-A / Stage-B: LoRA adapter checkpoints and run manifests (issue 17, inference compatibility) ----

from vlqc.errors import VlqcError
from vlqc.inference.checkpoint import adapter_base, is_adapter
from vlqc.manifest import MANIFEST_FILES, SOURCES_DIR


def checkpoint_base(checkpoint, configured):
    """The base model folder a LoRA adapter `checkpoint` loads on, an input of the job ([] for a model folder):
    `configured`, else the folder the adapter's adapter_config.json names. An adapter the pipeline has yet to
    build is only known by its configured base (docs/stage-a.md#checkpoint)."""
    if os.path.isdir(checkpoint) and not is_adapter(checkpoint):
        return []
    if configured:
        return configured
    if not os.path.isdir(checkpoint):
        return []
    try:
        return str(adapter_base(checkpoint))
    except VlqcError as exc:
        raise WorkflowError(str(exc)) from exc


def stage_a_base():
    """The base of Stage-A's checkpoint when that is a configured LoRA adapter folder, else []."""
    return checkpoint_base(STAGE_A["checkpoint"], STAGE_A["base"]) if STAGE_A["checkpoint"] else []


def stage_b_base():
    """The base of Stage-B's checkpoint: its own (stage_b.checkpoint), else Stage-A's."""
    return checkpoint_base(STAGE_B["checkpoint"], STAGE_B["base"]) if STAGE_B["checkpoint"] else stage_a_base()


def base_flag(wildcards, input):
    """`--base <folder>` of a script whose job has a base model input, else nothing."""
    return f"--base {shlex.quote(str(input.base))}" if input.base else ""


def manifest_outputs(folder):
    """The run manifest files a Stage-A or Stage-B job writes into `folder` (vlqc.manifest)."""
    return [f"{folder}/{name}" for name in MANIFEST_FILES] + [directory(f"{folder}/{SOURCES_DIR}")]


# --- Cluster (issue 19): what each job asks a SLURM cluster for (profiles/slurm, docs/cluster.md) ---------------

CLUSTER = config["cluster"]


def on_cluster():
    """True where jobs run as cluster jobs: planning for an executor with no core count of its own (a cluster
    executor: Snakemake is only given --cores to run jobs locally) and the Snakemake a cluster job runs itself in
    (remote mode, whose "all cores" are the node's, not the job's)."""
    return workflow.remote_exec or workflow.resource_settings.cores is None


def machine_threads():
    """Threads of a job that uses a whole machine: every core Snakemake is given locally, cluster.model.cpus on a
    cluster (where the job asks for that many CPUs, not for the whole node)."""
    return CLUSTER["model"]["cpus"] if on_cluster() else workflow.cores


def cluster_resources(kind, gpus=0):
    """The SLURM resources of a job (snakemake-executor-plugin-slurm's names): cluster.<kind> ("data" or "model")
    sizes it, its threads are its CPUs, `gpus` > 0 asks for GPUs (the plugin's `gpu`) on cluster.gpu_partition.
    Local runs give these resources no limit, so they change nothing there."""
    resources = {
        "gpu": gpus,
        "cpus_per_task": lambda wildcards, threads: threads,
        "mem_mb": CLUSTER[kind]["mem_mb"],
        "runtime": CLUSTER[kind]["runtime"],
    }
    partition = (CLUSTER["gpu_partition"] if gpus else None) or CLUSTER["partition"]
    if partition:
        resources["slurm_partition"] = partition
    if CLUSTER["account"]:
        resources["slurm_account"] = CLUSTER["account"]
    return resources
