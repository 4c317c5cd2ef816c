# Stage-B: ticket verdicts, review queue, metrics and reports of one mission, in a run folder.
#
# Targets (<run> is any name you choose; one folder per run):
#   results/stage_b/<mission>/eval/<run>/verdicts.jsonl    one rollout with frozen guidance: the target
#                                                          for new tickets
#   results/stage_b/<mission>/train/<run>/verdicts.jsonl   stage_b.epochs rounds of rollout and reflection
#                                                          that learn guidance (<run>/guidance.json)
# Two targets rather than a config mode: each mode keeps its own audit files and a user reads the mode
# from the path. A run is a pure function of its inputs: every file it writes is an output, so its
# folder starts empty and it reads nothing of an earlier run of the same target. It starts from the seed
# <guidance_dir>/<mission>.json, or from the guidance file named by stage_b.eval_guidance (every eval
# run) or stage_b.train_guidance[<run>] (a train run that continues learning, e.g. from
# results/stage_b/{mission}/train/demo/guidance.json); that file is an input, so the run it comes from
# runs first.

# The command of both rules; they differ in the mode and in the guidance they start from.
# Threads are split evenly over the ranks, as in stage_a_infer.
STAGE_B_COMMAND = (
    "OMP_NUM_THREADS=$(( {threads} / {params.ranks} > 0 ? {threads} / {params.ranks} : 1 ))"
    " python -m torch.distributed.run --standalone --nproc_per_node={params.ranks} --max-restarts=0"
    " scripts/stage_b.py --mode {params.mode} --mission {wildcards.mission:q}"
    " --stage-a {input.stage_a:q} --missions {input.missions} --guidance {input.guidance:q}"
    " --checkpoint {input.checkpoint} {params.base} --run-dir {params.run_dir:q} --settings {params.settings:q}"
    " > {log} 2>&1"
)


rule stage_b_eval:
    input:
        stage_a="results/{mission}_stage_a.jsonl",
        guidance=stage_b_guidance("eval"),
        checkpoint=stage_b_checkpoint(),
        base=stage_b_base(),  # a LoRA adapter checkpoint's base, else none
        missions=config["missions_file"],
    output:
        stage_b_outputs("eval"),
    log:
        "results/logs/stage_b/{mission}/eval/{run}.log",
    wildcard_constraints:
        run="[^/]+",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model", gpus=STAGE_B["gpus"]),
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        settings=stage_b_settings("eval"),
        ranks=stage_b_ranks(),
        mode="eval",
        base=base_flag,
    shell:
        STAGE_B_COMMAND


rule stage_b_train:
    input:
        stage_a="results/{mission}_stage_a.jsonl",
        guidance=stage_b_guidance("train"),
        checkpoint=stage_b_checkpoint(),
        base=stage_b_base(),  # a LoRA adapter checkpoint's base, else none
        missions=config["missions_file"],
    output:
        stage_b_outputs("train"),
    log:
        "results/logs/stage_b/{mission}/train/{run}.log",
    wildcard_constraints:
        run="[^/]+",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model", gpus=STAGE_B["gpus"]),
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
        settings=stage_b_settings("train"),
        ranks=stage_b_ranks(),
        mode="train",
        base=base_flag,
    shell:
        STAGE_B_COMMAND
