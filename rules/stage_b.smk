# Stage-B: ticket verdicts, review queue, metrics and reports of one mission, in a run folder.
#
# Targets (<run> is any name you choose; one folder per run):
#   results/stage_b/<mission>/<run>/verdicts.jsonl         eval: one rollout with frozen guidance, the
#                                                          target for new tickets
#   results/stage_b/<mission>/<run>_train/verdicts.jsonl   train: stage_b.epochs rounds of rollout and
#                                                          reflection that learn guidance
# Two targets rather than a config mode: each mode keeps its own audit files and a user reads the mode
# from the path. Eval judges with the seed <guidance_dir>/<mission>.json, or with stage_b.eval_guidance,
# e.g. results/stage_b/{mission}/demo_train/guidance.json to judge new tickets with what a train run
# learned. The other files of a run are outputs too (vlqc.stage_b.engine.OUTPUT_FILES); guidance.json,
# snapshots/ and hypotheses.json are not: Snakemake deletes outputs before a job runs, and a train rerun
# continues from them (stage_b.reset_guidance starts over from the seed).


ruleorder: stage_b_train > stage_b_eval


# The command of both rules; they differ in params.mode, the guidance file and the run folder.
# Threads are split evenly over the ranks, as in stage_a_infer.
STAGE_B_COMMAND = (
    "OMP_NUM_THREADS=$(( {threads} / {params.ranks} > 0 ? {threads} / {params.ranks} : 1 ))"
    " python -m torch.distributed.run --standalone --nproc_per_node={params.ranks} --max-restarts=0"
    " scripts/stage_b.py --mode {params.mode} --mission {wildcards.mission:q}"
    " --stage-a {input.stage_a:q} --missions {input.missions} --guidance {input.guidance:q}"
    " --checkpoint {input.checkpoint} --run-dir {params.run_dir:q} --settings {params.settings:q}"
    " > {log} 2>&1"
)


rule stage_b_eval:
    input:
        stage_a="results/{mission}_stage_a.jsonl",
        guidance=stage_b_eval_guidance,
        checkpoint=stage_b_checkpoint(),
        missions=config["missions_file"],
    output:
        stage_b_outputs("results/stage_b/{mission}/{run}"),
    log:
        "results/logs/stage_b/{mission}/{run}.log",
    wildcard_constraints:
        run="[^/]+",
    conda:
        "../envs/model.yaml"
    threads: workflow.cores
    resources:
        gpu=STAGE_B["gpus"],
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        settings=stage_b_settings(),
        ranks=stage_b_ranks(),
        mode="eval",
    shell:
        STAGE_B_COMMAND


rule stage_b_train:
    input:
        stage_a="results/{mission}_stage_a.jsonl",
        guidance=stage_b_seed,
        checkpoint=stage_b_checkpoint(),
        missions=config["missions_file"],
    output:
        stage_b_outputs("results/stage_b/{mission}/{run}_train"),
    log:
        "results/logs/stage_b/{mission}/{run}_train.log",
    wildcard_constraints:
        run="[^/]+",
    conda:
        "../envs/model.yaml"
    threads: workflow.cores
    resources:
        gpu=STAGE_B["gpus"],
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        settings=stage_b_settings(),
        ranks=stage_b_ranks(),
        mode="train",
    shell:
        STAGE_B_COMMAND
