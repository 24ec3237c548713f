# The paper's tables and figures (paper/tables.yaml), beside the paper's numbers
# (paper/values.yaml); results/demo/tables/ holds the CPU-sized variant on the demo. And each
# dataset's HTML page of its runs.


rule table:
    """One of the paper's tables from its runs: ours, the paper's and the difference; JSON and CSV twins.
    prefix "demo/" makes the demo variant."""
    input:
        runs=lambda w: table_inputs(w.table, demo=bool(w.prefix)),
        values=PAPER_VALUES,
    output:
        md="results/{prefix}tables/{table}.md",
        json="results/{prefix}tables/{table}.json",
        csv="results/{prefix}tables/{table}.csv",
    wildcard_constraints:
        prefix="(demo/)?",
        table="table[3-9]",
    params:
        spec=lambda w: json.dumps(table_spec(w.table, demo=bool(w.prefix)), sort_keys=True),
    log:
        "results/logs/{prefix}tables/{table}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.report --spec {params.spec:q} --values {input.values:q} --out {output.md:q} > {log:q} 2>&1"


rule figure:
    """Figures 4 (encoder scaling), 6 (cache on disk) and 7 (full against dropped states) from runs;
    prefix "demo/" makes the demo variant."""
    input:
        runs=lambda w: table_inputs(w.figure, demo=bool(w.prefix)),
        values=PAPER_VALUES,  # Figure 4 plots the paper's points
    output:
        png="results/{prefix}tables/{figure}.png",
        csv="results/{prefix}tables/{figure}.csv",
    wildcard_constraints:
        prefix="(demo/)?",
        figure="figure[467]",
    params:
        spec=lambda w: json.dumps(table_spec(w.figure, demo=bool(w.prefix)), sort_keys=True),
    log:
        "results/logs/{prefix}tables/{figure}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.figures {wildcards.figure} --spec {params.spec:q} --values {input.values:q} "
        "--out {output.png:q} > {log:q} 2>&1"


rule figure5:
    """Figure 5 (time per epoch and memory against batch size) is the efficiency stage's plot of the
    Scientific comparison (efficiency.by_dataset.scientific), or of the demo's."""
    input:
        png=lambda w: f"results/{'demo' if w.prefix else 'scientific'}/efficiency.png",
        csv=lambda w: f"results/{'demo' if w.prefix else 'scientific'}/efficiency.csv",
    output:
        png="results/{prefix}tables/figure5.png",
        csv="results/{prefix}tables/figure5.csv",
    wildcard_constraints:
        prefix="(demo/)?",
    log:
        "results/logs/{prefix}tables/figure5.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/data.yaml"
    shell:
        "(cp {input.png:q} {output.png:q} && cp {input.csv:q} {output.csv:q}) > {log:q} 2>&1"


rule all_tables:
    """Every table and figure of the paper (results/tables/all) or of its demo variant."""
    input:
        lambda w: table_files(demo=bool(w.prefix)),
    output:
        "results/{prefix}tables/all",
    wildcard_constraints:
        prefix="(demo/)?",
    log:
        "results/logs/{prefix}tables/all.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/data.yaml"
    shell:
        "(printf '%s\\n' {input:q} > {output:q}) > {log:q} 2>&1"


rule report_html:
    """One self-contained page of a dataset's runs: metrics, training curves, efficiency and example
    recommendations with covers (pipeline/html_report.py). It shows the runs listed in
    default_targets[dataset]; for a dataset not listed there, list its runs in a --configfile,
    e.g. `default_targets: {scientific: [iisan-vs, sasrec-id]}`, and ask for
    results/scientific/report.html."""
    input:
        unpack(report_inputs),
    output:
        "results/{dataset}/report.html",
    params:
        runs=lambda w: " ".join(report_runs(w.dataset)),
    log:
        "results/logs/{dataset}/report_html.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.html_report --dataset-dir results/{wildcards.dataset} --runs {params.runs} "
        "--out {output:q} > {log:q} 2>&1"
