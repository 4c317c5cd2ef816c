# Stage-A: per-image summaries for every selected group of a mission, merged per mission.
# With stage_a.shards K > 1, inference runs as K jobs (wildcard shard), each its own torchrun, in
# results/stage_a/{mission}/shard{shard}/; they share the resume folder, each rank writing its own file.

# What each inference rank did (images, generate seconds), summed by the merge into stats.json.
STAGE_A_RANK_STATS = expand(
    f"{STAGE_A_JOB_DIR}/rank{{rank}}.stats.json", rank=range(stage_a_ranks()), allow_missing=True
)


rule stage_a_select:
    input:
        STAGE_A["input_root"],
    output:
        "results/stage_a/{mission}/selection.jsonl",
    log:
        "results/logs/stage_a/{mission}/select.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("data"),
    params:
        settings=stage_a_settings("pass_group_number", "fail_group_number", "sample_seed"),
    shell:
        "python scripts/stage_a_select.py --root {input} --mission {wildcards.mission:q}"
        " --settings {params.settings:q} --out {output} > {log} 2>&1"


rule stage_a_verify:
    input:
        selection="results/stage_a/{mission}/selection.jsonl",
        photos=STAGE_A["input_root"],  # the selection names photos under it
        checkpoint=stage_a_checkpoint(),
        base=stage_a_base(),  # a LoRA adapter checkpoint's base (its processor), else none
    output:
        "results/stage_a/{mission}/verify.jsonl",
    log:
        "results/logs/stage_a/{mission}/verify.log",
    conda:
        "../envs/model.yaml"
    resources:
        **cluster_resources("data"),
    params:
        settings=stage_a_settings("max_pixels"),
        base=base_flag,
    shell:
        "python scripts/stage_a_verify.py --selection {input.selection} --checkpoint {input.checkpoint} {params.base}"
        " --settings {params.settings:q} --out {output} > {log} 2>&1"


rule stage_a_infer:
    input:
        selection="results/stage_a/{mission}/selection.jsonl",
        verify="results/stage_a/{mission}/verify.jsonl",
        photos=STAGE_A["input_root"],
        checkpoint=stage_a_checkpoint(),
        base=stage_a_base(),
        missions=config["missions_file"],
    output:
        rows=intermediate(STAGE_A_RANK_FILES),
        stats=intermediate(STAGE_A_RANK_STATS),
        # The job's run manifest (docs/stage-a.md#run-manifest): settings, checkpoint identity, versions.
        manifest=manifest_outputs(STAGE_A_JOB_DIR),
    log:
        "results/logs/stage_a/{mission}/infer.shard{shard}.log"
        if STAGE_A["shards"] > 1
        else "results/logs/stage_a/{mission}/infer.log",
    conda:
        "../envs/model.yaml"
    threads: machine_threads()
    resources:
        **cluster_resources("model", gpus=STAGE_A["gpus"]),
    params:
        ranks=stage_a_ranks(),
        shard=lambda wildcards: f"--shard {wildcards.shard}" if STAGE_A["shards"] > 1 else "",
        folder=lambda wildcards, output: os.path.dirname(output.rows[0]),
        out=lambda wildcards, output: output.rows[0].replace(".rank0.jsonl", ".rank{rank}.jsonl"),
        stats=lambda wildcards, output: output.stats[0].replace("rank0.stats.json", "rank{rank}.stats.json"),
        settings=stage_a_settings(*STAGE_A_INFER_KEYS),
        base=base_flag,
    shell:
        # Threads split evenly over the ranks: oversubscribed cores slow generation severalfold.
        "OMP_NUM_THREADS=$(( {threads} / {params.ranks} > 0 ? {threads} / {params.ranks} : 1 ))"
        " python -m torch.distributed.run --standalone --nproc_per_node={params.ranks} --max-restarts=0"
        " scripts/stage_a_infer.py --selection {input.selection} --mission {wildcards.mission:q}"
        " --missions {input.missions} --checkpoint {input.checkpoint} {params.base}"
        " --out {params.out:q} --stats {params.stats:q} --resume-dir results/stage_a/{wildcards.mission:q}/resume"
        " --manifest-dir {params.folder:q} {params.shard}"
        " --settings {params.settings:q} > {log} 2>&1"


rule stage_a_merge:
    input:
        selection="results/stage_a/{mission}/selection.jsonl",
        ranks=stage_a_every_shard(STAGE_A_RANK_FILES),
        rank_stats=stage_a_every_shard(STAGE_A_RANK_STATS),
    output:
        merged="results/{mission}_stage_a.jsonl",
        failures="results/{mission}_stage_a.failures.jsonl",
        stats="results/stage_a/{mission}/stats.json",
    log:
        "results/logs/stage_a/{mission}/merge.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("data"),
    params:
        ranks=stage_a_ranks(),
    shell:
        # Once merged, the resume entries of the inference jobs are no longer needed.
        "python scripts/stage_a_merge.py --selection {input.selection} --mission {wildcards.mission:q}"
        " --out {output.merged} --failures {output.failures} --stats {output.stats} --ranks-per-shard {params.ranks}"
        " {input.ranks} --rank-stats {input.rank_stats} > {log} 2>&1"
        " && rm -rf results/stage_a/{wildcards.mission:q}/resume"
