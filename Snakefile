# vlqc: annotation exports → canonical data → fine-tuned Qwen3-VL → ticket verdicts.
# Run `snakemake --cores all` for the offline demo; see README for real missions.


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/stage_a.smk"
include: "rules/stage_b.smk"
include: "rules/eval.smk"
include: "rules/golden.smk"
include: "rules/sweep.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        expand(
            "results/data/{dataset}/{split}.jsonl",
            dataset=config["datasets"],
            split=["train", "val", "train_tiny", "val_tiny"],
        ),
        serving_model(),
        f"{run_dir(config['train']['run'])}/eval.json",
        stage2_targets(),
        demo_stage_targets(),
        # Per saved checkpoint (known once training ran) its golden dump and grounding metrics; the report's plots.
        lambda wildcards: [path for run in config["train"]["runs"] for path in golden_dumps(run)],
        lambda wildcards: [path for run in config["train"]["runs"] for path in grounding_files(run)],
        report_targets(),
        grounding_plots(),
