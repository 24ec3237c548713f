# The embedded demo: a synthetic dataset and random-initialised encoders.


rule synth:
    """Generate a synthetic dataset (users tsv, items tsv, one image per item) from its config."""
    output:
        users="results/{dataset}/raw/users.tsv",
        item_table="results/{dataset}/raw/items.tsv",
        images=directory("results/{dataset}/raw/images"),
    wildcard_constraints:
        dataset=names_matching(lambda ds: "synthetic" in ds),
    params:
        settings=lambda w: json.dumps(CFG["datasets"][w.dataset]["synthetic"], sort_keys=True),
    log:
        "results/logs/{dataset}/synth.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m pipeline.synth --users {output.users:q} --items {output.item_table:q} "
        "--images {output.images:q} --settings {params.settings:q} > {log:q} 2>&1"


rule build_encoder:
    """Save a random-initialised encoder or captioner with save_pretrained, to be loaded like a real one."""
    output:
        directory("results/models/{encoder}"),
    params:
        settings=build_settings,
    log:
        "results/logs/models/{encoder}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/models.yaml"
    shell:
        "python -m pipeline.build_encoder --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"
