

rule efficiency:
    """Training time per epoch and peak memory of the compared runs at each batch size (RQ4,
    Figure 5), measured side by side on this machine; ratios to the cached IISAN run."""
    input:
        unpack(efficiency_inputs),
    output:
        csv="results/{dataset}/efficiency.csv",
        png="results/{dataset}/efficiency.png",
    params:
        runs=efficiency_runs,
        reference=lambda w: efficiency_comparison(CFG, w.dataset)["reference"],
        batch_sizes=" ".join(str(b) for b in CFG["efficiency"]["batch_sizes"]),
        steps=CFG["efficiency"]["steps"],
        warmup=CFG["efficiency"]["warmup"],
    log:
        "results/logs/{dataset}/efficiency.log",
    benchmark:
        "results/benchmarks/{dataset}/efficiency.tsv"
    threads: CFG["efficiency"]["threads"]
    resources:
        cpus_per_gpu=4,  # applies to a job only when it asks for a GPU
        gpu=efficiency_gpus,
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.efficiency --runs {params.runs:q} --reference {params.reference} "
        "--items {input.item_table:q} --sequences {input.sequences:q} --batch-sizes {params.batch_sizes} "
        "--steps {params.steps} --warmup {params.warmup} --threads {threads} "
        "--out {output.csv:q} --plot {output.png:q} > {log:q} 2>&1"
