

rule caption:
    """Covers or video frames -> one caption per item, written by a LLaVA-NeXT model with a
    versioned prompt (prompts/). Resumable per batch; missing or undecodable files are counted
    in the report, not fatal. Uses the GPUs the job sees, else the CPU."""
    input:
        unpack(caption_inputs),
    output:
        captions="results/{dataset}/captions/{column}.parquet",
        report="results/{dataset}/captions/{column}.json",
    wildcard_constraints:
        dataset=names_matching(lambda ds: ds["captions"]),
    params:
        settings=captioner_settings,
    log:
        "results/logs/{dataset}/caption.{column}.log",
    benchmark:
        "results/benchmarks/{dataset}/caption.{column}.tsv"
    threads: CFG["encode"]["threads"]
    resources:
        cpus_per_gpu=8,  # applies to a job only when it asks for a GPU
        gpu=entry_resource(captioner, "gpus"),
        mem_mb=entry_resource(captioner, "mem_mb", grows=True),
        runtime=entry_resource(captioner, "runtime", grows=True),
        device_map=device_map(captioner),
    conda:
        "../../envs/models.yaml"
    shell:
        "python -m pipeline.caption --items {input.item_table:q} --settings {params.settings:q} "
        "--prompt {input.prompt:q} --column {wildcards.column} --threads {threads} --device-map {resources.device_map} "
        "--out {output.captions:q} --report {output.report:q} > {log:q} 2>&1"


rule join_captions:
    """The item table with every caption column of the dataset, read by caption-column towers."""
    input:
        item_table="results/{dataset}/items.parquet",
        captions=caption_files,
    output:
        "results/{dataset}/items_captioned.parquet",
    wildcard_constraints:
        dataset=names_matching(lambda ds: ds["captions"]),
    log:
        "results/logs/{dataset}/join_captions.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.join_captions --items {input.item_table:q} --captions {input.captions:q} "
        "--out {output:q} > {log:q} 2>&1"
