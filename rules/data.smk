# Data: synthetic demo tickets, annotation export → canonical JSONL, splits.


rule demo_tickets:
    input:
        missions=config["missions_file"],
    output:
        tickets=directory(config["demo"]["out"]),
        manifest=f"{config['demo']['out']}.json",
    log:
        "results/logs/demo_tickets.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("data"),
    params:
        settings=settings_json(
            config["demo"],
            "missions",
            "tickets_per_mission",
            "seed",
            "datalist_fraction",
            "exif_fraction",
            "fail_fraction",
            "irrelevant_fraction",
        ),
    shell:
        "python scripts/demo_tickets.py --out {output.tickets} --manifest {output.manifest}"
        " --missions-file {input.missions} --settings {params.settings:q} > {log} 2>&1"


rule convert_annotations:
    input:
        dataset_root,
    output:
        samples="results/data/{dataset}/all_samples.jsonl",
        invalid_samples="results/data/{dataset}/invalid_samples.jsonl",
        invalid_objects="results/data/{dataset}/invalid_objects.jsonl",
        summary="results/data/{dataset}/validation_summary.json",
        vocabulary="results/data/{dataset}/label_vocabulary.json",
        images=directory("results/data/{dataset}/images"),
    log:
        "results/logs/convert/{dataset}.log",
    conda:
        "../envs/data.yaml"
    threads: config["convert"]["workers"]
    resources:
        **cluster_resources("data"),
    params:
        settings=settings_json(config["convert"], "max_pixels", "factor", "mode", "summary_format", "jpeg_quality"),
        domains=mission_domains_json(),
    shell:
        "python scripts/convert.py --root {input} --out results/data/{wildcards.dataset} --workers {threads}"
        " --settings {params.settings:q} --mission-domains {params.domains:q} > {log} 2>&1"


rule split_dataset:
    input:
        "results/data/{dataset}/all_samples.jsonl",
    output:
        train="results/data/{dataset}/train.jsonl",
        val="results/data/{dataset}/val.jsonl",
        train_tiny="results/data/{dataset}/train_tiny.jsonl",
        val_tiny="results/data/{dataset}/val_tiny.jsonl",
    log:
        "results/logs/split/{dataset}.log",
    conda:
        "../envs/data.yaml"
    resources:
        **cluster_resources("data"),
    params:
        settings=settings_json(config["convert"], "val_fraction", "split_seed", "tiny_train", "tiny_val"),
    shell:
        "python scripts/split.py --samples {input} --out results/data/{wildcards.dataset}"
        " --settings {params.settings:q} > {log} 2>&1"
