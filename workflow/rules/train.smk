

rule train:
    """IISAN-Versa or a baseline (on the cached states, or with its backbones in the loop), early
    stopping on validation."""
    input:
        unpack(lambda w: tables(w.dataset)),
        caches=run_caches,
    output:
        model="results/{dataset}/runs/{run}/seed{seed}/model.safetensors",
        log="results/{dataset}/runs/{run}/seed{seed}/train_log.json",
    params:
        run=lambda w: run_settings(w, stage="train"),
        out_dir=lambda w, output: Path(output.model).parent,
    log:
        "results/logs/{dataset}/train.{run}.seed{seed}.log",
    benchmark:
        "results/benchmarks/{dataset}/train.{run}.seed{seed}.tsv"
    threads: lambda w: CFG["runs"][w.run]["train"]["threads"]
    resources:
        cpus_per_gpu=4,  # applies to a job only when it asks for a GPU
        gpu=run_gpus,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.train --run {params.run:q} --items {input.item_table:q} "
        "--sequences {input.sequences:q} --threads {threads} "
        "--out-dir {params.out_dir:q} > {log:q} 2>&1"
