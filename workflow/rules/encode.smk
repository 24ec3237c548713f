rule encode:
    """Frozen forward passes over all items; only the kept states go into the Zarr store.

    Resumable: the work lives in <store>.partial until every chunk is written. The rule's output is
    the store's manifest (<store>.json, written once the store is complete); the store itself is
    the stage's own, so Snakemake never deletes it: a catalogue that grew is encoded by appending
    its new items, and a store for other settings is replaced only once the new one is complete
    (--replace). A text encoder reads the titles, or a caption column
    (<encoder>.<column>.<states>.zarr) from its captions file.
    Uses the GPUs the job sees (CUDA), else the CPU; asks the scheduler for the encoder's `gpus`.
    Encoders with `shards` > 1 are encoded by encode_shard and gather_shards instead.
    """
    input:
        unpack(encoder_inputs),
    output:
        "results/{dataset}/cache/{encoder}{read}.{states}.json",
    wildcard_constraints:
        encoder=encoders_with(lambda shards: shards == 1),
    params:
        settings=encoder_settings,
        states=kept_states_arg,
        chunk_items=CFG["encode"]["chunk_items"],
        sort_chunks=CFG["encode"]["sort_chunks"],
        missing_image=CFG["encode"]["missing_image"],
        captions=captions_arg,
        part="--replace",  # encode_shard: --shard I N; gather_shards: --gather PART ...
        store=lambda w, output: Path(output[0]).with_suffix(".zarr"),
    log:
        "results/logs/{dataset}/encode.{encoder}{read}.{states}.log",
    benchmark:
        "results/benchmarks/{dataset}/encode.{encoder}{read}.{states}.tsv"
    threads: CFG["encode"]["threads"]
    resources:
        cpus_per_gpu=8,  # applies to a job only when it asks for a GPU
        gpu=entry_resource(encoder, "gpus"),
        mem_mb=entry_resource(encoder, "mem_mb", grows=True),
        runtime=entry_resource(encoder, "runtime", grows=True),
        device_map=device_map(encoder),
    conda:
        "../../envs/models.yaml"
    shell:
        "python -m pipeline.encode --items {input.item_table:q} --settings {params.settings:q} "
        "--states {params.states} --chunk-items {params.chunk_items} --sort-chunks {params.sort_chunks} "
        "--missing-image {params.missing_image} "
        "{params.captions} {params.part} --threads {threads} --device-map {resources.device_map} --out {params.store:q} "
        "> {log:q} 2>&1"


use rule encode as encode_shard with:
    # One shard of a sharded encode: a part store with a chunk-aligned range of the item rows,
    # resumable like a whole store. Deleted once gather_shards has assembled the store.
    output:
        temp(directory("results/{dataset}/cache/parts/{encoder}{read}.{states}.part{shard}of{shards}.zarr")),
    wildcard_constraints:
        encoder=encoders_with(lambda shards: shards > 1),
        shard=r"\d+",
        shards=r"\d+",
    params:
        part=lambda w: f"--shard {w.shard} {w.shards}",
        store=lambda w, output: output[0],
    log:
        "results/logs/{dataset}/encode.{encoder}{read}.{states}.part{shard}of{shards}.log",
    benchmark:
        "results/benchmarks/{dataset}/encode.{encoder}{read}.{states}.part{shard}of{shards}.tsv"


use rule encode as gather_shards with:
    # Assemble a sharded encode's parts into the store, after checking that every part was written
    # for this request and that together they hold every item row once.
    input:
        unpack(encoder_inputs),
        parts=shard_parts,
    output:
        "results/{dataset}/cache/{encoder}{read}.{states}.json",
    wildcard_constraints:
        encoder=encoders_with(lambda shards: shards > 1),
    params:
        part=lambda w, input: "--gather " + " ".join(shlex.quote(part) for part in input.parts),
    log:
        "results/logs/{dataset}/gather.{encoder}{read}.{states}.log",
    benchmark:
        "results/benchmarks/{dataset}/gather.{encoder}{read}.{states}.tsv"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
        device_map="none",
