

rule evaluate:
    """Full ranking on validation and test -> results/{dataset}/{run}.json + per-user metrics."""
    input:
        unpack(evaluate_inputs),
    output:
        result="results/{dataset}/{run}.json",
        per_user="results/{dataset}/{run}.per_user.parquet",
        topk="results/{dataset}/{run}.topk.parquet",
    params:
        run=run_settings,
        model_dir=lambda w, input: f"--model-dir {Path(input.model).parent}" if "model" in input.keys() else "",
    log:
        "results/logs/{dataset}/evaluate.{run}.log",
    threads: CFG["train"]["threads"]
    resources:
        cpus_per_gpu=4,  # applies to a job only when it asks for a GPU
        gpu=run_gpus,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate --run {params.run:q} --items {input.item_table} "
        "--sequences {input.sequences} {params.model_dir} --threads {threads} "
        "--out {output.result} --per-user {output.per_user} --topk {output.topk} > {log} 2>&1"
