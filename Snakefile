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
        f"results/train/sft/{config['train']['run']}/eval.json",
        demo_stage_targets(),
        # The golden dump of every saved checkpoint (known once training ran) and the report's plots.
        lambda wildcards: [path for run in config["train"]["runs"] for path in golden_dumps(run)],
        report_targets(),
