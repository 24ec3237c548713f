

rule evaluate:
    """Full ranking of one seed's model on validation and test -> its result, per-user metrics and top-10s."""
    input:
        unpack(evaluate_inputs),
    output:
        result="results/{dataset}/runs/{run}/seed{seed}/result.json",
        per_user="results/{dataset}/runs/{run}/seed{seed}/per_user.parquet",
        topk="results/{dataset}/runs/{run}/seed{seed}/topk.parquet",
    params:
        run=run_settings,
        model_dir=lambda w, input: f"--model-dir {shlex.quote(str(Path(input.model).parent))}" if "model" in input.keys() else "",
    log:
        "results/logs/{dataset}/evaluate.{run}.seed{seed}.log",
    threads: lambda w: CFG["runs"][w.run]["train"]["threads"]
    resources:
        cpus_per_gpu=4,  # applies to a job only when it asks for a GPU
        gpu=run_gpus,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.evaluate --run {params.run:q} --items {input.item_table:q} "
        "--sequences {input.sequences:q} {params.model_dir} --threads {threads} "
        "--out {output.result:q} --per-user {output.per_user:q} --topk {output.topk:q} > {log:q} 2>&1"


rule aggregate:
    """A run's result over its seeds (mean and standard deviation) -> results/{dataset}/{run}.json,
    with the per-user metrics averaged over seeds for the significance tests."""
    input:
        results=lambda w: [f"results/{w.dataset}/runs/{w.run}/seed{s}/result.json" for s in run_seeds(CFG, w.run)],
        per_user=lambda w: [f"results/{w.dataset}/runs/{w.run}/seed{s}/per_user.parquet" for s in run_seeds(CFG, w.run)],
        topk=lambda w: [f"results/{w.dataset}/runs/{w.run}/seed{s}/topk.parquet" for s in run_seeds(CFG, w.run)],
    output:
        result="results/{dataset}/{run}.json",
        per_user="results/{dataset}/{run}.per_user.parquet",
        topk="results/{dataset}/{run}.topk.parquet",
    log:
        "results/logs/{dataset}/aggregate.{run}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.aggregate --results {input.results:q} --out {output.result:q} "
        "--per-user {output.per_user:q} --topk {output.topk:q} > {log:q} 2>&1"
