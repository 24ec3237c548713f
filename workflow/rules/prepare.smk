

rule download_images:
    """Fetch each item's first image (Amazon 2018 metadata) with retries; failures to a manifest.

    Needs a network; never runs when the images folder already exists.
    """
    input:
        meta=lambda w: CFG["datasets"][w.dataset]["items"],
    output:
        images=directory("results/{dataset}/raw/images"),
        manifest="results/{dataset}/download_failures.tsv",
    wildcard_constraints:
        dataset=names_matching(lambda ds: ds["download_images"]),
    log:
        "results/logs/{dataset}/download_images.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=600,
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.download_images --meta {input.meta:q} --out {output.images:q} "
        "--manifest {output.manifest:q} > {log:q} 2>&1"


rule prepare:
    """Raw files -> items.parquet, sequences.parquet, stats.json (what was dropped and why)."""
    input:
        unpack(dataset_inputs),
    output:
        item_table="results/{dataset}/items.parquet",
        sequences="results/{dataset}/sequences.parquet",
        stats="results/{dataset}/stats.json",
    params:
        folders=lambda w, input: " ".join(f"--{k} {shlex.quote(input[k])}" for k in ("images", "videos") if k in input.keys()),
        format=lambda w: CFG["datasets"][w.dataset]["format"],
        k_core=lambda w: k_core_arg(CFG["datasets"][w.dataset]),
        min_interactions=lambda w: CFG["datasets"][w.dataset]["min_interactions"],
        keep=lambda w: "--keep-unused-items" if CFG["datasets"][w.dataset]["keep_items_without_interactions"] else "",
        out_dir=lambda w, output: Path(output.item_table).parent,
    log:
        "results/logs/{dataset}/prepare.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.prepare --format {params.format} --users {input.users:q} --items {input.item_table:q} {params.folders} "
        "--min-interactions {params.min_interactions} {params.keep} {params.k_core} --out-dir {params.out_dir:q} > {log:q} 2>&1"
