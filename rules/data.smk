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
    params:
        missions=config["demo"]["missions"],
        demo=config["demo"],
    shell:
        "python scripts/demo_tickets.py --out {output.tickets} --manifest {output.manifest}"
        " --missions-file {input.missions} --missions {params.missions:q}"
        " --tickets-per-mission {params.demo[tickets_per_mission]} --seed {params.demo[seed]}"
        " --datalist-fraction {params.demo[datalist_fraction]} --exif-fraction {params.demo[exif_fraction]}"
        " > {log} 2>&1"


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
    params:
        convert=config["convert"],
        domains=mission_domains_json(),
    shell:
        "python scripts/convert.py --root {input} --out results/data/{wildcards.dataset}"
        " --mode {params.convert[mode]} --workers {threads}"
        " --max-pixels {params.convert[max_pixels]} --factor {params.convert[factor]}"
        " --summary-format {params.convert[summary_format]} --jpeg-quality {params.convert[jpeg_quality]}"
        " --mission-domains {params.domains:q} > {log} 2>&1"


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
    params:
        convert=config["convert"],
    shell:
        "python scripts/split.py --samples {input} --out results/data/{wildcards.dataset}"
        " --val-fraction {params.convert[val_fraction]} --seed {params.convert[split_seed]}"
        " --tiny-train {params.convert[tiny_train]} --tiny-val {params.convert[tiny_val]} > {log} 2>&1"
