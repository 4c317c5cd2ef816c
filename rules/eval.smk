# Evaluation: the eval set, token-weighted eval loss and grounding metrics per checkpoint, image ablations
# (docs/evaluation.md).


rule eval_candidates:
    input:
        val="results/data/{dataset}/val.jsonl",
        base=base_model_dir(),
        missions=config["missions_file"],
    output:
        "results/eval/{dataset}/candidates.jsonl",
    log:
        "results/logs/eval/{dataset}/candidates.log",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("data"),
    params:
        settings=settings_json(EVAL, "len_buckets", "modes"),
    shell:
        "python scripts/eval_candidates.py --val {input.val} --missions {input.missions} --base {input.base}"
        " --out {output} --settings {params.settings:q} > {log} 2>&1"


rule eval_split:
    input:
        "results/eval/{dataset}/candidates.jsonl",
    output:
        "results/eval/{dataset}/split_seed{seed}_eval{n}.json",
    log:
        "results/logs/eval/{dataset}/split_seed{seed}_eval{n}.log",
    wildcard_constraints:
        seed=r"-?\d+",
        n=r"\d+",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("data"),
    params:
        settings=settings_json(EVAL, "len_buckets"),
    shell:
        "python scripts/eval_split.py --candidates {input} --dataset {wildcards.dataset:q} --seed {wildcards.seed}"
        " --rows {wildcards.n} --out {output} --settings {params.settings:q} > {log} 2>&1"


rule eval_loss:
    input:
        # Every saved step (train_sft is a checkpoint); the job reads step_{step}/.
        steps="results/train/sft/{run}/steps",
        base=base_model_dir(),
        config=train_config,
        config_parents=train_config_parents,
        split=eval_split_file(),
        images=eval_images(),
    output:
        "results/train/sft/{run}/eval_loss/step_{step}.json",
    log:
        "results/logs/eval/eval_loss/{run}/step_{step}.log",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model"),
    params:
        root=lambda wildcards, input: os.path.dirname(input.images),
        settings=settings_json(EVAL, "batch_size"),
    shell:
        "OMP_NUM_THREADS={threads} python scripts/eval_loss.py --checkpoint {input.steps}/step_{wildcards.step}"
        " --base {input.base} --config {input.config} --split {input.split} --images {params.root:q}"
        " --step {wildcards.step} --out {output} --settings {params.settings:q} > {log} 2>&1"


rule eval_ablation:
    input:
        checkpoint="results/train/sft/{run}/checkpoint",
        base=base_model_dir(),
        config=train_config,
        config_parents=train_config_parents,
        candidates=eval_candidates_file(),
        images=eval_images(),
    output:
        "results/train/sft/{run}/ablation.json",
    log:
        "results/logs/eval/ablation/{run}.log",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model"),
    params:
        root=lambda wildcards, input: os.path.dirname(input.images),
        settings=settings_json(EVAL, "batch_size", "ablation"),
    shell:
        "OMP_NUM_THREADS={threads} python scripts/eval_ablation.py --checkpoint {input.checkpoint}"
        " --base {input.base} --config {input.config} --candidates {input.candidates} --images {params.root:q}"
        " --out {output} --settings {params.settings:q} > {log} 2>&1"


rule eval_grounding:
    input:
        # Every saved step (train_sft is a checkpoint); the job reads step_{step}/.
        steps="results/train/sft/{run}/steps",
        base=base_model_dir(),
        config=train_config,
        config_parents=train_config_parents,
        val=grounding_val_file(),
        images=eval_images(),
        missions=config["missions_file"],
    output:
        metrics="results/train/sft/{run}/grounding/step_{step}.json",
        predictions="results/train/sft/{run}/grounding/step_{step}.jsonl",
    log:
        "results/logs/eval/grounding/{run}/step_{step}.log",
    conda:
        "../envs/model.yaml"
    # One thread, as golden_dump: a small model's decoding is per-step overhead more than arithmetic.
    threads: 1
    resources:
        **cluster_resources("model"),
    params:
        root=lambda wildcards, input: os.path.dirname(input.images),
        settings=settings_json(
            EVAL["grounding"], "images", "seed", "iou_thresholds", "line_threshold", "max_new_tokens", "batch_size"
        ),
    shell:
        "OMP_NUM_THREADS={threads} python scripts/eval_grounding.py --checkpoint {input.steps}/step_{wildcards.step}"
        " --base {input.base} --config {input.config} --val {input.val} --missions {input.missions:q}"
        " --images {params.root:q} --step {wildcards.step} --out {output.metrics}"
        " --predictions {output.predictions} --settings {params.settings:q} > {log} 2>&1"


# `snakemake evaluation`: the eval loss and grounding metrics of every saved checkpoint and the ablations of every run.
rule evaluation:
    input:
        lambda wildcards: [path for run in config["train"]["runs"] for path in eval_loss_files(run)],
        lambda wildcards: [path for run in config["train"]["runs"] for path in grounding_files(run)],
        expand("results/train/sft/{run}/ablation.json", run=config["train"]["runs"]),
