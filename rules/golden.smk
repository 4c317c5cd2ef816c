# Golden set and per-checkpoint golden dumps (docs/evaluation.md#golden-set-and-dumps).


rule golden_set:
    input:
        "results/eval/{dataset}/candidates.jsonl",
    output:
        "results/eval/{dataset}/golden{n}.jsonl",
    log:
        "results/logs/golden_set/{dataset}_golden{n}.log",
    wildcard_constraints:
        n=r"\d+",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("data"),
    params:
        settings=settings_json(config["eval"], "golden_seed"),
    shell:
        "python scripts/golden_set.py --candidates {input} --rows {wildcards.n} --out {output}"
        " --settings {params.settings:q} > {log} 2>&1"


rule golden_dump:
    input:
        # Every saved step (train_sft is a checkpoint); the job reads step_{step}/.
        steps="results/train/sft/{run}/steps",
        base=base_model_dir(),
        config=train_config,
        config_parents=train_config_parents,
        golden=f"results/eval/{config['eval']['dataset']}/golden{{n}}.jsonl",
        # The golden rows' image paths are relative to the dataset's folder, the parent of images/.
        images=f"results/data/{config['eval']['dataset']}/images",
    output:
        "results/train/sft/{run}/qual/step_{step}_golden{n}.jsonl",
    log:
        "results/logs/golden_dump/{run}/step_{step}_golden{n}.log",
    wildcard_constraints:
        n=r"\d+",
    conda:
        "../envs/model.yaml"
    # One thread: a small model's decoding is per-step overhead more than arithmetic (a 64-row demo dump
    # took 21 s with one thread, 17 s with two on 2 idle cores; 44 s and 89 s on busy ones), so two dumps
    # run side by side.
    threads: 1
    resources:
        **cluster_resources("model"),
    params:
        root=lambda wildcards, input: os.path.dirname(input.images),
        settings=settings_json(
            config["eval"]["golden_decoding"], "temperature", "top_p", "max_new_tokens", "seed", "batch_size"
        ),
    shell:
        "OMP_NUM_THREADS={threads} python scripts/golden_dump.py --checkpoint {input.steps}/step_{wildcards.step}"
        " --base {input.base} --config {input.config} --golden {input.golden} --images {params.root:q}"
        " --out {output} --settings {params.settings:q} > {log} 2>&1"


# `snakemake golden`: the golden dumps of every checkpoint of every run.
rule golden:
    input:
        lambda wildcards: [path for run in config["train"]["runs"] for path in golden_dumps(run)],
