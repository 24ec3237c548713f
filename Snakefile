# IISAN-Versa pipeline: prepare -> caption (optional) -> encode (Zarr caches) -> train -> evaluate.
# A bare `snakemake --cores 1` builds config.yaml's default_targets (the embedded demo).

configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/caption.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/efficiency.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        default_targets(),
    default_target: True
