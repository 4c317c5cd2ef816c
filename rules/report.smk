# Plots of every stage's outputs, collected by `snakemake --report` (docs/evaluation.md#the-report).
# Each plot is its own job, so it reruns only when the files it plots change. report_targets()
# (rules/common.smk) lists what the default target adds; sweeps train models, so their plots are
# the separate target report_sweeps.


report: "../report/workflow.rst"


PLOT_KINDS = "|".join(STAGE_B_KINDS)


# --- training ----------------------------------------------------------------------------


rule plot_loss:
    input:
        "results/train/sft/{run}/logging.jsonl",
    output:
        report(
            "results/plots/train/{run}/loss.png",
            caption="../report/loss.rst",
            category="Training",
            subcategory="{run}",
        ),
    log:
        "results/logs/plots/train/{run}/loss.log",
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/plot_training.py loss --run {wildcards.run:q} --logging {input} --out {output} > {log} 2>&1"


rule plot_eval_buckets:
    input:
        lambda wildcards: eval_loss_files(wildcards.run),
    output:
        report(
            "results/plots/train/{run}/eval_loss_buckets.png",
            caption="../report/eval_loss_buckets.rst",
            category="Training",
            subcategory="{run}",
        ),
    log:
        "results/logs/plots/train/{run}/eval_loss_buckets.log",
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/plot_training.py buckets --run {wildcards.run:q} --out {output} {input} > {log} 2>&1"


rule plot_ablation:
    input:
        "results/train/sft/{run}/ablation.json",
    output:
        report(
            "results/plots/train/{run}/ablation.png",
            caption="../report/ablation.rst",
            category="Training",
            subcategory="{run}",
        ),
    log:
        "results/logs/plots/train/{run}/ablation.log",
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/plot_training.py ablation --run {wildcards.run:q} --ablation {input} --out {output} > {log} 2>&1"


rule plot_grounding:
    input:
        lambda wildcards: final_grounding(wildcards.run),
    output:
        report(
            "results/plots/train/{run}/grounding.png",
            caption="../report/grounding.rst",
            category="Training",
            subcategory="{run}",
        ),
    log:
        "results/logs/plots/train/{run}/grounding.log",
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/plot_grounding.py --run {wildcards.run:q} --grounding {input} --out {output} > {log} 2>&1"


# --- Stage-A and Stage-B -----------------------------------------------------------------


rule plot_stage_a:
    input:
        lambda wildcards: expand("results/stage_a/{mission}/stats.json", mission=report_missions()),
    output:
        report("results/plots/stage_a/summary.png", caption="../report/stage_a.rst", category="Stage-A"),
    log:
        "results/logs/plots/stage_a/summary.log",
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/plot_stage_a.py --out {output} {input:q} > {log} 2>&1"


rule plot_stage_b_confusion:
    input:
        "results/stage_b/{mission}/{kind}/{run}/group_report.jsonl",
    output:
        report(
            "results/plots/stage_b/{mission}/{kind}/{run}/confusion.png",
            caption="../report/stage_b_confusion.rst",
            category="Stage-B",
            subcategory="{mission}",
        ),
    log:
        "results/logs/plots/stage_b/{mission}/{kind}/{run}/confusion.log",
    wildcard_constraints:
        kind=PLOT_KINDS,
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/plot_stage_b.py confusion --title {wildcards.mission:q}' {wildcards.kind}/{wildcards.run}'"
        " --group-report {input:q} --out {output:q} > {log:q} 2>&1"


rule plot_stage_b_metrics:
    input:
        "results/stage_b/{mission}/{kind}/{run}/metrics.jsonl",
    output:
        report(
            "results/plots/stage_b/{mission}/{kind}/{run}/metrics.png",
            caption="../report/stage_b_metrics.rst",
            category="Stage-B",
            subcategory="{mission}",
        ),
    log:
        "results/logs/plots/stage_b/{mission}/{kind}/{run}/metrics.log",
    wildcard_constraints:
        kind=PLOT_KINDS,
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/plot_stage_b.py metrics --title {wildcards.mission:q}' {wildcards.kind}/{wildcards.run}'"
        " --metrics {input:q} --out {output:q} > {log:q} 2>&1"


rule plot_stage_b_outcomes:
    input:
        group_report="results/stage_b/{mission}/{kind}/{run}/group_report.jsonl",
        need_review="results/stage_b/{mission}/{kind}/{run}/need_review.json",
    output:
        report(
            "results/plots/stage_b/{mission}/{kind}/{run}/outcomes.png",
            caption="../report/stage_b_outcomes.rst",
            category="Stage-B",
            subcategory="{mission}",
        ),
    log:
        "results/logs/plots/stage_b/{mission}/{kind}/{run}/outcomes.log",
    wildcard_constraints:
        kind=PLOT_KINDS,
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    shell:
        "python scripts/plot_stage_b.py outcomes --title {wildcards.mission:q}' {wildcards.kind}/{wildcards.run}'"
        " --group-report {input.group_report:q} --need-review {input.need_review:q} --out {output:q} > {log:q} 2>&1"


rule plot_stage_b_false_pass:
    input:
        lambda wildcards: expand(
            "results/stage_b/{mission}/{kind}/{run}/metrics.jsonl",
            mission=report_missions(),
            kind=wildcards.kind,
            run=wildcards.run,
        ),
    output:
        report(
            "results/plots/stage_b/{kind}/{run}/false_pass.png",
            caption="../report/stage_b_false_pass.rst",
            category="Stage-B",
            subcategory="all missions",
        ),
    log:
        "results/logs/plots/stage_b/{kind}/{run}/false_pass.log",
    wildcard_constraints:
        kind=PLOT_KINDS,
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    params:
        runs=lambda wildcards, input: " ".join(
            shlex.join(["--run", mission, path]) for mission, path in zip(report_missions(), input)
        ),
    shell:
        "python scripts/plot_stage_b.py false_pass --title 'false-pass rate, {wildcards.kind} run {wildcards.run}'"
        " {params.runs} --out {output:q} > {log:q} 2>&1"


# --- headline ----------------------------------------------------------------------------


rule report_headline:
    input:
        eval_loss=lambda wildcards: [final_eval_loss(run) for run in config["train"]["runs"]],
        ablation=expand("results/train/sft/{run}/ablation.json", run=config["train"]["runs"]),
        stage_a=lambda wildcards: (
            expand("results/stage_a/{mission}/stats.json", mission=report_missions()) if REPORT["stage_a"] else []
        ),
        stage_b=lambda wildcards: expand(
            "results/stage_b/{mission}/eval/{run}/{file}",
            mission=report_missions(),
            run=REPORT["stage_b_run"],
            file=["metrics.jsonl", "group_report.jsonl", "need_review.json"],
        ),
    output:
        html=report(
            "results/plots/headline.html",
            caption="../report/headline.rst",
            category="Headline",
            labels=headline_labels,
        ),
        json="results/plots/headline.json",
    log:
        "results/logs/plots/headline.log",
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    params:
        args=headline_args,
    shell:
        "python scripts/report_headline.py {params.args} --html {output.html} --json {output.json} > {log} 2>&1"


# --- sweeps ------------------------------------------------------------------------------


rule plot_sweep_table:
    input:
        summary="results/sweeps/{sweep}/summary.csv",
        winner="results/sweeps/{sweep}/winner.json",
    output:
        report(
            "results/plots/sweeps/{sweep}/summary.html",
            caption="../report/sweep_table.rst",
            category="Sweeps",
            subcategory="{sweep}",
        ),
    log:
        "results/logs/plots/sweeps/{sweep}/summary.log",
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    params:
        axes=sweep_axes,
    shell:
        "python scripts/plot_sweep.py table --sweep {wildcards.sweep} --summary {input.summary} --winner {input.winner}"
        " --axes {params.axes}"
        " --out {output} > {log} 2>&1"


rule plot_sweep_heatmap:
    input:
        summary="results/sweeps/{sweep}/summary.csv",
        winner="results/sweeps/{sweep}/winner.json",
    output:
        report(
            "results/plots/sweeps/{sweep}/heatmap.png",
            caption="../report/sweep_heatmap.rst",
            category="Sweeps",
            subcategory="{sweep}",
        ),
    log:
        "results/logs/plots/sweeps/{sweep}/heatmap.log",
    conda:
        "../envs/report.yaml"
    resources:
        **cluster_resources("data"),
    params:
        axes=sweep_axes,
    shell:
        "python scripts/plot_sweep.py heatmap --sweep {wildcards.sweep} --summary {input.summary} --winner {input.winner}"
        " --axes {params.axes}"
        " --out {output} > {log} 2>&1"


# `snakemake --cores all report_sweeps`, then `snakemake --report results/report.html all report_sweeps`.
rule report_sweeps:
    input:
        sweep_report_targets(),
