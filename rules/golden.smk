# Golden set and per-checkpoint golden dumps (docs/evaluation.md#golden-set-and-dumps).


def golden_file():
    """The golden set every dump answers: eval.golden_rows rows of eval.dataset's candidates."""
    return f"results/eval/{config['eval']['dataset']}/golden{config['eval']['golden_rows']}.jsonl"


def golden_dumps(run):
    """The golden dump of every checkpoint run `run` saved; an input function's value (the steps
    are known once the run trained, see saved_steps)."""
    return expand(
        "results/train/sft/{run}/qual/step_{step}_golden{n}.jsonl",
        run=run,
        step=saved_steps(run),
        n=config["eval"]["golden_rows"],
    )


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
