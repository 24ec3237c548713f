# IISAN-Versa pipeline: prepare -> caption (optional) -> encode (Zarr caches) -> train -> evaluate.
# A bare `snakemake --cores 1` builds config.yaml's default_targets (the embedded demo).

import shlex
import sys
from pathlib import Path

from pipeline.config import ConfigError, read_yaml

# Jobs run the interpreter that runs Snakemake (the project's .venv), whatever the caller's PATH;
# with --sdm conda each rule's own environment (envs/) runs them instead.
if not any("conda" in str(m).lower() for m in workflow.deployment_settings.deployment_method):
    shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"; ")

try:  # Snakemake's own message for a YAML syntax error names neither line nor column
    if Path("config.yaml").exists():  # (with --configfile, Snakemake runs without one)
        read_yaml("config.yaml")
except ConfigError as e:
    raise WorkflowError(str(e))


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


# Seconds of file merging: on a cluster they run beside Snakemake instead of queueing as jobs.
localrules:
    all,
    aggregate,
    all_tables,


rule all:
    input:
        default_targets(),
    default_target: True
