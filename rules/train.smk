# Model: base model, SFT dataset, ms-swift training, adapter merge, evaluation.
# A training run is an SFT run (results/train/sft/<run>/, from base_model) or a Stage-2 AB run
# (results/train/stage2/<run>/, from its init_from SFT run's merged model; docs/stage2.md). Its dataset,
# merge and eval are the same jobs for both ({stage}); training is a rule each, since a Stage-2 run
# has another base and one more output (rollouts/). Both run scripts/train_sft.py: the config says which.


rule base_model:
    input:
        # A real checkpoint is read (checked, then linked); the tiny model is built from params alone.
        lambda wildcards: config["base_model"]["checkpoint"] or [],
    output:
        directory("results/train/base/{name}"),
    log:
        "results/logs/base_model/{name}.log",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("data"),
    params:
        settings=base_model_settings(),
    shell:
        "python scripts/base_model.py --out {output} --settings {params.settings:q} > {log} 2>&1"


rule sft_dataset:
    input:
        train=lambda wildcards: canonical_splits(wildcards.run, "train"),
        val=lambda wildcards: canonical_splits(wildcards.run, "val"),
        images=lambda wildcards: canonical_images(wildcards.run),
        config=train_config,
        config_parents=train_config_parents,
        missions=config["missions_file"],
    output:
        directory("results/train/{stage}/{run}/data"),
    log:
        "results/logs/{stage}_dataset/{run}.log",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/sft_dataset.py --train {input.train} --val {input.val} --config {input.config}"
        " --missions {input.missions} --out {output} > {log} 2>&1"


# A checkpoint (Snakemake's): which steps it saved is known once it ran (saved_steps).
checkpoint train_sft:
    input:
        base=base_model_dir(),
        data="results/train/sft/{run}/data",
        config=train_config,
        config_parents=train_config_parents,
    output:
        checkpoint=directory("results/train/sft/{run}/checkpoint"),
        # Every checkpoint training saved, step_<S>/ each (the last one's files are those of checkpoint/).
        steps=directory("results/train/sft/{run}/steps"),
        logging="results/train/sft/{run}/logging.jsonl",
        resolved="results/train/sft/{run}/resolved_config.json",
        runtime_env="results/train/sft/{run}/runtime_env.json",
        metadata="results/train/sft/{run}/run_metadata.json",
        sources=directory("results/train/sft/{run}/sources"),
    log:
        "results/logs/train_sft/{run}.log",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model", gpus=config["train"]["gpus"]),
    params:
        settings=settings_json(config["train"], "cpu_ranks", "gpus"),
    shell:
        "python scripts/train_sft.py --config {input.config} --base {input.base} --data {input.data}"
        " --out results/train/sft/{wildcards.run} --threads {threads} --settings {params.settings:q} > {log} 2>&1"


# A Stage-2 AB run: ms-swift's sft pipeline with the Stage-2 trainer (vlqc.train.stage2.main), on the merged
# model of its init_from SFT run, which is trained first. A checkpoint too, as train_sft, for per-step jobs.
checkpoint train_stage2:
    input:
        base=train_base,
        data="results/train/stage2/{run}/data",
        config=lambda wildcards: train_config(wildcards, "stage2"),
        config_parents=train_config_parents,
    output:
        checkpoint=directory("results/train/stage2/{run}/checkpoint"),
        steps=directory("results/train/stage2/{run}/steps"),
        logging="results/train/stage2/{run}/logging.jsonl",
        resolved="results/train/stage2/{run}/resolved_config.json",
        runtime_env="results/train/stage2/{run}/runtime_env.json",
        metadata="results/train/stage2/{run}/run_metadata.json",
        sources=directory("results/train/stage2/{run}/sources"),
        # Rollout dumps (stage2_ab.dump); the folder is made empty when dumps are off.
        rollouts=directory("results/train/stage2/{run}/rollouts"),
    log:
        "results/logs/train_stage2/{run}.log",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model", gpus=config["train"]["gpus"]),
    params:
        settings=settings_json(config["train"], "cpu_ranks", "gpus"),
    shell:
        "python scripts/train_sft.py --config {input.config} --base {input.base} --data {input.data}"
        " --out results/train/stage2/{wildcards.run} --threads {threads} --settings {params.settings:q} > {log} 2>&1"


rule merge_adapter:
    input:
        checkpoint="results/train/{stage}/{run}/checkpoint",
        base=train_base,
    output:
        directory("results/train/{stage}/{run}/merged"),
    log:
        "results/logs/merge_{stage}/{run}.log",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("model"),
    shell:
        "python scripts/merge_adapter.py --checkpoint {input.checkpoint} --base {input.base} --out {output}"
        " > {log} 2>&1"


rule eval_sft:
    input:
        model="results/train/{stage}/{run}/merged",
        config=train_config,
        config_parents=train_config_parents,
        train=lambda wildcards: canonical_splits(wildcards.run, "train")[0],
        val=lambda wildcards: canonical_splits(wildcards.run, "val")[0],
        # The photos of the val records, beside the val split.
        images=lambda wildcards: os.path.join(os.path.dirname(canonical_splits(wildcards.run, "val")[0]), "images"),
        missions=config["missions_file"],
    output:
        "results/train/{stage}/{run}/eval.json",
    log:
        "results/logs/eval_{stage}/{run}.log",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model"),
    params:
        settings=settings_json(config["train"], "eval_batch_size", "eval_max_new_tokens"),
    shell:
        "OMP_NUM_THREADS={threads} python scripts/eval_sft.py --model {input.model} --config {input.config}"
        " --train {input.train} --val {input.val} --missions {input.missions} --out {output}"
        " --settings {params.settings:q} > {log} 2>&1"
