# Sweeps: a grid of training runs scored by eval loss and image ablations (docs/evaluation.md#sweeps).
# Target of a whole sweep: results/sweeps/<sweep>/summary.csv (with winner.json beside it).

from vlqc.evaluation.sweep import grid, one_point, point_config

SWEEPS = config["sweeps"]
SWEEP_POINTS = {name: {p.name: p for p in grid(name, sweep)} for name, sweep in SWEEPS.items()}
# Every point's config is resolved now, so a bad axis value fails the plan, not the job.
SWEEP_CONFIGS = {
    (name, point): point_config(name, SWEEPS[name], p)
    for name, points in SWEEP_POINTS.items()
    for point, p in points.items()
}
# The base config and its parents: the inputs of every job that reads a point's config.
SWEEP_SOURCES = {name: [workdir_path(s) for s in config_sources(sweep["base"])] for name, sweep in SWEEPS.items()}
SWEEP_RUN = "results/sweeps/{sweep}/{point}"
# What each point's data job reads: canonical splits (train, val) and the photos of their datasets.
SWEEP_DATA = {
    key: {
        part: [f"results/data/{d['dataset']}/{d['split']}.jsonl" for d in cfg["data"][part]]
        for part in ("train", "val")
    }
    | {
        "images": [
            f"results/data/{dataset}/images"
            for dataset in sorted({d["dataset"] for part in ("train", "val") for d in cfg["data"][part]})
        ]
    }
    for key, cfg in SWEEP_CONFIGS.items()
}


wildcard_constraints:
    sweep="|".join(re.escape(name) for name in SWEEPS),
    point="|".join(re.escape(point) for points in SWEEP_POINTS.values() for point in points),


rule sweep_config:
    input:
        sources=lambda wildcards: SWEEP_SOURCES[wildcards.sweep],
    output:
        f"{SWEEP_RUN}/config.json",
    log:
        "results/logs/sweep_config/{sweep}/{point}.log",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("data"),
    params:
        # The sweep narrowed to this point: a change to another point's values leaves this one alone.
        settings=lambda w: json.dumps(
            {w.sweep: one_point(SWEEPS[w.sweep], SWEEP_POINTS[w.sweep][w.point])}, ensure_ascii=False
        ),
    shell:
        "python scripts/sweep_config.py --sweep {wildcards.sweep} --point {wildcards.point} --out {output}"
        " --settings {params.settings:q} > {log} 2>&1"


rule sweep_dataset:
    input:
        train=lambda w: SWEEP_DATA[w.sweep, w.point]["train"],
        val=lambda w: SWEEP_DATA[w.sweep, w.point]["val"],
        images=lambda w: SWEEP_DATA[w.sweep, w.point]["images"],
        config=f"{SWEEP_RUN}/config.json",
        missions=config["missions_file"],
    output:
        directory(f"{SWEEP_RUN}/data"),
    log:
        "results/logs/sweep_dataset/{sweep}/{point}.log",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/sft_dataset.py --train {input.train} --val {input.val} --config {input.config}"
        " --missions {input.missions} --out {output} > {log} 2>&1"


rule sweep_train:
    input:
        base=base_model_dir(),
        data=f"{SWEEP_RUN}/data",
        config=f"{SWEEP_RUN}/config.json",
    output:
        checkpoint=directory(f"{SWEEP_RUN}/checkpoint"),
        steps=directory(f"{SWEEP_RUN}/steps"),
        logging=f"{SWEEP_RUN}/logging.jsonl",
        resolved=f"{SWEEP_RUN}/resolved_config.json",
        runtime_env=f"{SWEEP_RUN}/runtime_env.json",
        metadata=f"{SWEEP_RUN}/run_metadata.json",
        sources=directory(f"{SWEEP_RUN}/sources"),
    log:
        "results/logs/sweep_train/{sweep}/{point}.log",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model", gpus=config["train"]["gpus"]),
    params:
        settings=settings_json(config["train"], "cpu_ranks", "gpus"),
    shell:
        "python scripts/train_sft.py --config {input.config} --base {input.base} --data {input.data}"
        " --out results/sweeps/{wildcards.sweep}/{wildcards.point} --threads {threads} --settings {params.settings:q}"
        " > {log} 2>&1"


rule sweep_summary:
    input:
        eval_loss=lambda w: expand(f"results/sweeps/{w.sweep}/{{point}}/eval_loss.json", point=SWEEP_POINTS[w.sweep]),
        ablation=lambda w: expand(f"results/sweeps/{w.sweep}/{{point}}/ablation.json", point=SWEEP_POINTS[w.sweep]),
        logging=lambda w: expand(f"results/sweeps/{w.sweep}/{{point}}/logging.jsonl", point=SWEEP_POINTS[w.sweep]),
    output:
        summary="results/sweeps/{sweep}/summary.csv",
        winner="results/sweeps/{sweep}/winner.json",
    log:
        "results/logs/sweep_summary/{sweep}.log",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("data"),
    params:
        settings=lambda wildcards: json.dumps({wildcards.sweep: SWEEPS[wildcards.sweep]}, ensure_ascii=False),
    shell:
        "python scripts/sweep_summary.py --sweep {wildcards.sweep} --root results/sweeps/{wildcards.sweep}"
        " --summary {output.summary} --winner {output.winner} --settings {params.settings:q} > {log} 2>&1"


rule sweep_eval_loss:
    input:
        checkpoint=f"{SWEEP_RUN}/checkpoint",
        base=base_model_dir(),
        config=f"{SWEEP_RUN}/config.json",
        split=eval_split_file(),
        images=eval_images(),
    output:
        f"{SWEEP_RUN}/eval_loss.json",
    log:
        "results/logs/sweep_eval_loss/{sweep}/{point}.log",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model"),
    params:
        settings=settings_json(config["eval"], "batch_size"),
        # The rows' image paths are relative to the dataset's folder.
        images=lambda wildcards, input: os.path.dirname(input.images),
    shell:
        "OMP_NUM_THREADS={threads} python scripts/eval_loss.py --checkpoint {input.checkpoint} --base {input.base}"
        " --config {input.config} --split {input.split} --images {params.images} --out {output}"
        " --settings {params.settings:q} > {log} 2>&1"


rule sweep_ablation:
    input:
        checkpoint=f"{SWEEP_RUN}/checkpoint",
        base=base_model_dir(),
        config=f"{SWEEP_RUN}/config.json",
        candidates=eval_candidates_file(),
        images=eval_images(),
    output:
        f"{SWEEP_RUN}/ablation.json",
    log:
        "results/logs/sweep_ablation/{sweep}/{point}.log",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model"),
    params:
        settings=settings_json(config["eval"], "batch_size", "ablation"),
        images=lambda wildcards, input: os.path.dirname(input.images),
    shell:
        "OMP_NUM_THREADS={threads} python scripts/eval_ablation.py --checkpoint {input.checkpoint}"
        " --base {input.base} --config {input.config} --candidates {input.candidates} --images {params.images}"
        " --out {output} --settings {params.settings:q} > {log} 2>&1"
