# The paper's tables and figures (paper/tables.yaml), beside the paper's numbers
# (paper/values.yaml); results/demo/tables/ holds the CPU-sized variant on the demo.


rule table:
    """One of the paper's tables from its runs: ours, the paper's and the difference; JSON and CSV twins."""
    input:
        runs=lambda w: table_inputs(w.table),
        values=PAPER_VALUES,
    output:
        md="results/tables/{table}.md",
        json="results/tables/{table}.json",
        csv="results/tables/{table}.csv",
    wildcard_constraints:
        table="table[3-9]",
    params:
        spec=lambda w: json.dumps(table_spec(w.table), sort_keys=True),
    log:
        "results/logs/tables/{table}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.report --spec {params.spec:q} --values {input.values} --out {output.md} > {log} 2>&1"


use rule table as demo_table with:
    input:
        runs=lambda w: table_inputs(w.table, demo=True),
        values=PAPER_VALUES,
    output:
        md="results/demo/tables/{table}.md",
        json="results/demo/tables/{table}.json",
        csv="results/demo/tables/{table}.csv",
    params:
        spec=lambda w: json.dumps(table_spec(w.table, demo=True), sort_keys=True),
    log:
        "results/logs/demo/tables/{table}.log",


rule figure:
    """Figures 4 (encoder scaling), 6 (cache on disk) and 7 (full against dropped states) from runs."""
    input:
        runs=lambda w: table_inputs(w.figure),
        values=PAPER_VALUES,  # Figure 4 plots the paper's points
    output:
        png="results/tables/{figure}.png",
        csv="results/tables/{figure}.csv",
    wildcard_constraints:
        figure="figure[467]",
    params:
        spec=lambda w: json.dumps(table_spec(w.figure), sort_keys=True),
    log:
        "results/logs/tables/{figure}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m pipeline.figures {wildcards.figure} --spec {params.spec:q} --values {input.values} "
        "--out {output.png} > {log} 2>&1"


use rule figure as demo_figure with:
    input:
        runs=lambda w: table_inputs(w.figure, demo=True),
        values=PAPER_VALUES,
    output:
        png="results/demo/tables/{figure}.png",
        csv="results/demo/tables/{figure}.csv",
    params:
        spec=lambda w: json.dumps(table_spec(w.figure, demo=True), sort_keys=True),
    log:
        "results/logs/demo/tables/{figure}.log",


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
        "(cp {input.png} {output.png} && cp {input.csv} {output.csv}) > {log} 2>&1"


rule all_tables:
    """Every table and figure of the paper (results/tables/all) or of its demo variant."""
    input:
        lambda w: table_files(demo=w.prefix == "demo/"),
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
        "(printf '%s\\n' {input} > {output}) > {log} 2>&1"
