

rule encode:
    """Frozen forward passes over all items; only the kept states go into the Zarr store.

    Resumable: the work lives in <store>.partial until every chunk is written. A text encoder reads
    the titles, or a caption column (<encoder>.<column>.<states>.zarr) from items_captioned.parquet.
    Uses the GPUs the job sees (CUDA), else the CPU; asks the scheduler for the encoder's `gpus`.
    """
    input:
        unpack(encoder_inputs),
    output:
        directory("results/{dataset}/cache/{encoder}{read}.{states}.zarr"),
    params:
        settings=encoder_settings,
        states=kept_states_arg,
        chunk_items=CFG["encode"]["chunk_items"],
        missing_image=CFG["encode"]["missing_image"],
    log:
        "results/logs/{dataset}/encode.{encoder}{read}.{states}.log",
    benchmark:
        "results/benchmarks/{dataset}/encode.{encoder}{read}.{states}.tsv"
    threads: CFG["encode"]["threads"]
    resources:
        gpu=encoder_resource("gpus"),
        mem_mb=encoder_resource("mem_mb"),
        runtime=encoder_resource("runtime"),
    conda:
        "../../envs/models.yaml"
    shell:
        "python -m pipeline.encode --items {input.item_table} --settings {params.settings:q} "
        "--states {params.states} --chunk-items {params.chunk_items} --missing-image {params.missing_image} "
        "--threads {threads} "
        "--out {output} > {log} 2>&1"
