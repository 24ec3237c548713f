# Helpers shared by the rules: the validated config, and functions from wildcards to files.
import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import yaml

from pipeline.config import (
    UNSTORED_KEYS,
    ConfigError,
    caption_path,
    efficiency_comparison,
    load_configs,
    raw_paths,
    resolve_run,
    run_seeds,
)
from pipeline.cache import manifest_path
from pipeline.methods import method

# The config is merged again from its files, the Snakefile's configfile first (unless
# --replace-workflow-config with an override, as Snakemake does), then the --configfile files and
# --config: pipeline.config.merge lets an overlay's empty mapping clear one, which Snakemake's own
# merge ignores. Errors name the file and line that set the key.
_command_line_files = [str(f) for f in workflow.overwrite_configfiles or []]
_replaced = workflow.config_settings.replace_workflow_config and bool(workflow.config_settings.overwrite_config)
_workflow_files = [] if _replaced else [
    str(f) for f in workflow.configfiles if str(f) not in _command_line_files
]
try:
    CFG = load_configs(_workflow_files + _command_line_files + [dict(workflow.config_settings.config)])
except ConfigError as e:
    raise WorkflowError(f"invalid configuration: {e}")


# Only configured names: results/tables/table7.json must not look like a run's results.
wildcard_constraints:
    dataset="|".join(re.escape(name) for name in CFG["datasets"]),
    run="|".join(re.escape(name) for name in CFG["runs"]),
    encoder=r"[A-Za-z0-9_-]+",
    states=r"h\d+(-\d+)*",
    # A store of a caption column is named <encoder>.<column>.<states>.zarr; of titles, <encoder>.<states>.zarr.
    read=r"(\.[a-z][a-z0-9_]*)?",
    column=r"[a-z][a-z0-9_]*",
    seed=r"\d+",


def names_matching(predicate):
    """A wildcard pattern matching exactly the datasets for which predicate(dataset) holds."""
    names = [re.escape(n) for n, ds in CFG["datasets"].items() if predicate(ds)]
    return "|".join(names) if names else "(?!)"


def default_targets():
    """Each listed run's result, and each listed dataset's HTML report of them."""
    runs = [f"results/{d}/{r}.json" for d, names in CFG["default_targets"].items() for r in names]
    return runs + [f"results/{d}/report.html" for d, names in CFG["default_targets"].items() if names]


def run_settings(wildcards, stage="evaluate"):
    """The resolved run (for the job's seed), passed to the stage as JSON: a change re-runs the
    job, so training does not see the evaluation settings."""
    seed = getattr(wildcards, "seed", None)
    seed = int(seed) if seed is not None else None
    run = resolve_run(CFG, wildcards.dataset, wildcards.run, seed)
    if stage == "train":
        del run["evaluate"]
    return json.dumps(run, sort_keys=True)


def dataset_inputs(wildcards):
    ds = CFG["datasets"][wildcards.dataset]
    files = {"users": ds["users"], "item_table": ds["items"]}
    for folder in ("images", "videos"):
        if ds.get(folder):
            files[folder] = ds[folder]
    return files


def k_core_arg(dataset):
    if dataset["format"] != "amazon-2018":
        return ""
    return f"--k-core {dataset['k_core']['users']} {dataset['k_core']['items']}"


# Keys that change no stored state (scheduling, placement, documentation; UNSTORED_KEYS) stay
# out of the settings that decide re-runs: moving a 70B encode to more GPUs must not redo it.
def encoder_settings(wildcards):
    enc = CFG["encoders"][wildcards.encoder]
    read = {"column": wildcards.read[1:]} if wildcards.read else {}  # a caption column, not the title
    return json.dumps({k: v for k, v in enc.items() if k not in UNSTORED_KEYS} | read, sort_keys=True)


def build_settings(wildcards):
    """What a random checkpoint is made from: its shape and build block, nothing else."""
    if wildcards.encoder in CFG["captioners"]:
        return json.dumps({"build": CFG["captioners"][wildcards.encoder]["build"]}, sort_keys=True)
    enc = CFG["encoders"][wildcards.encoder]
    keys = ("layers", "hidden_size", "max_length", "build")
    return json.dumps({k: enc[k] for k in keys}, sort_keys=True)


def captioner(wildcards):
    """The config entry of the captioner that writes a dataset's caption column."""
    captions = CFG["datasets"][wildcards.dataset]["captions"]
    if wildcards.column not in captions:
        raise WorkflowError(f"dataset '{wildcards.dataset}' has no caption column '{wildcards.column}' "
                            f"(datasets.{wildcards.dataset}.captions: {', '.join(captions) or 'none'})")
    return CFG["captioners"][captions[wildcards.column]]


def captioner_settings(wildcards):
    entry = captioner(wildcards)
    return json.dumps({k: v for k, v in entry.items() if k not in UNSTORED_KEYS}, sort_keys=True)


def caption_inputs(wildcards):
    entry = captioner(wildcards)
    # Prompts ship with the workflow: a relative path is read from the workflow's folder.
    files = {"item_table": f"results/{wildcards.dataset}/items.parquet",
             "prompt": str(Path(workflow.basedir) / entry["prompt"])}
    if "build" in entry:
        files["model"] = entry["path"]
    return files


def caption_files(wildcards):
    return [f"results/{wildcards.dataset}/captions/{c}.parquet" for c in CFG["datasets"][wildcards.dataset]["captions"]]


def encoder(wildcards):
    """The config entry of the encoder a job runs."""
    return CFG["encoders"][wildcards.encoder]


def entry_resource(entry, key, grows=False):
    """A resource of a job from its encoder's or captioner's entry (`entry(wildcards)`: gpus,
    mem_mb, runtime); with `grows`, multiplied by the attempt, so a job retried after running out
    of memory or time gets more."""
    if grows:
        return lambda wildcards, attempt: entry(wildcards)[key] * attempt
    return lambda wildcards: entry(wildcards)[key]


def encoder_shards(name):
    return CFG["encoders"][name].get("shards") or CFG["encode"]["shards"]


def encoders_with(predicate):
    """A wildcard pattern matching exactly the encoders whose shard count satisfies predicate."""
    names = [re.escape(n) for n in CFG["encoders"] if predicate(encoder_shards(n))]
    return "|".join(names) if names else "(?!)"


def shard_parts(wildcards):
    """The part stores a sharded store is gathered from."""
    n = encoder_shards(wildcards.encoder)
    return [f"results/{wildcards.dataset}/cache/parts/{wildcards.encoder}{wildcards.read}.{wildcards.states}"
            f".part{i}of{n}.zarr" for i in range(n)]


def run_gpus(wildcards):
    """Training and evaluation ask for a GPU when any tower's encoder needs one: such caches are
    large (Llama-3-70B: 7 x 8192 per item) and meant for GPU nodes."""
    if wildcards.run not in CFG["runs"]:
        return 0
    run = CFG["runs"][wildcards.run]
    towers = [run.get(t) for t in ("text", "image")] if method(run["method"]).content else []
    return int(any(CFG["encoders"][e]["gpus"] > 0 for e in towers if e))


def encoder_inputs(wildcards):
    files = {"item_table": f"results/{wildcards.dataset}/items.parquet"}
    if wildcards.read:  # a caption column: only its own file, so other columns' changes re-run nothing here
        files["captions"] = caption_path(wildcards.dataset, wildcards.read[1:])
    if "build" in CFG["encoders"][wildcards.encoder]:
        files["model"] = CFG["encoders"][wildcards.encoder]["path"]
    return files


def device_map(entry):
    """A resource, not a param: placement changes no result, so it must not re-run a job
    (moving a 70B encode to more GPUs), and params would."""
    return lambda wildcards: entry(wildcards).get("device_map") or "none"


def captions_arg(wildcards, input):
    return f"--captions {shlex.quote(input.captions)}" if "captions" in input.keys() else ""


def kept_states_arg(wildcards):
    return " ".join(wildcards.states[1:].split("-"))


def run_caches(wildcards):
    return run_inputs(wildcards.dataset, wildcards.run)


def run_inputs(dataset, run_name):
    """A cached run's stores (their manifests, which the encode rules write); an uncached run's
    built encoders (hub models need no input); the caption columns its towers read."""
    run = resolve_run(CFG, dataset, run_name)
    caches = [str(manifest_path(tower["cache"])) for tower in run["towers"].values() if "cache" in tower]
    built = [CFG["encoders"][t["encoder"]]["path"] for t in run["towers"].values()
             if "cache" not in t and "build" in CFG["encoders"][t["encoder"]]]
    captions = sorted({t["captions"] for t in run["towers"].values() if "captions" in t})
    return caches + built + captions


def tables(dataset):
    return {"item_table": f"results/{dataset}/items.parquet", "sequences": f"results/{dataset}/sequences.parquet"}


def evaluate_inputs(wildcards):
    files = tables(wildcards.dataset)
    if method(CFG["runs"][wildcards.run]["method"]).trains:
        files["model"] = f"results/{wildcards.dataset}/runs/{wildcards.run}/seed{wildcards.seed}/model.safetensors"
        files["caches"] = run_caches(wildcards)
    return files


def efficiency_runs(wildcards):
    """The compared runs, resolved for the dataset, as a JSON list."""
    names = efficiency_comparison(CFG, wildcards.dataset)["runs"]
    if not names:
        raise WorkflowError("results/<dataset>/efficiency.csv needs efficiency.runs and efficiency.reference in the config")
    runs = [json.loads(run_settings(SimpleNamespace(dataset=wildcards.dataset, run=n), "train")) for n in names]
    return json.dumps(runs, sort_keys=True)  # a list: the table and plot keep the config's order


def efficiency_inputs(wildcards):
    files = tables(wildcards.dataset)
    names = efficiency_comparison(CFG, wildcards.dataset)["runs"]
    files["runs"] = sorted({f for n in names for f in run_inputs(wildcards.dataset, n)})
    return files


def efficiency_gpus(wildcards):
    names = efficiency_comparison(CFG, wildcards.dataset)["runs"]
    return max(run_gpus(SimpleNamespace(dataset=wildcards.dataset, run=n)) for n in names)


def report_runs(dataset):
    """The runs results/{dataset}/report.html shows: the dataset's default_targets."""
    runs = CFG["default_targets"].get(dataset)
    if not runs:
        raise WorkflowError(f"results/{dataset}/report.html shows the runs listed in default_targets.{dataset}, "
                            f"and there are none: list them there (e.g. in a --configfile)")
    return runs


def report_inputs(wildcards):
    """What the HTML report reads: each run's result and top 10s, each trained seed's log, the tables."""
    folder = f"results/{wildcards.dataset}"
    files = tables(wildcards.dataset)
    runs = report_runs(wildcards.dataset)
    files["results"] = [f"{folder}/{r}.json" for r in runs]
    files["topk"] = [f"{folder}/{r}.topk.parquet" for r in runs]
    files["logs"] = [f"{folder}/runs/{r}/seed{s}/train_log.json" for r in runs if method(CFG["runs"][r]["method"]).trains
                     for s in run_seeds(CFG, r)]
    return files


# The paper's tables and figures (paper/tables.yaml): which run on which dataset makes each row.
TABLES = yaml.safe_load((Path(workflow.basedir) / "paper" / "tables.yaml").read_text())
PAPER_VALUES = str(Path(workflow.basedir) / "paper" / "values.yaml")


def table_spec(name, demo=False):
    """A table's or figure's rows, each with its dataset, for the paper's datasets or the demo."""
    entry = TABLES[name]
    base = TABLES[entry["rows_from"]] if "rows_from" in entry else entry  # Figure 4 plots Table IV's rows
    source = base["demo"] if demo else base
    datasets = ["demo"] if demo else base["datasets"]
    rows = [r | {"dataset": d} for d in datasets for r in source["rows"]]
    if "groups" in entry and not demo:
        rows = [r for r in rows if r["group"] in entry["groups"]]
    if name == "figure6":  # the text encoder, whose size is the figure's x-axis
        rows = [r | {"model": text_model(r["dataset"], r["run"])} for r in rows]
    title = entry["title"] + (" - demo variant: the demo dataset and tiny encoders, not the paper's" if demo else "")
    spec = {"table": name, "title": title, "rows": rows}
    if source.get("improvement"):
        spec["improvement"] = source["improvement"]
    if entry.get("quoted_from"):
        spec["quoted_from"] = entry["quoted_from"]
    if entry.get("group_means"):
        spec["group_means"] = True
    return spec


def text_model(dataset, run_name):
    """Where a run's text encoder loads from (path or package, model class), and its layers."""
    enc = CFG["encoders"][resolve_run(CFG, dataset, run_name)["towers"]["text"]["encoder"]]
    return {k: enc[k] for k in ("path", "package", "model_class", "layers") if k in enc}


def table_inputs(name, demo=False):
    """Every run result a table or figure reads (and per-user metrics for its significance test)."""
    spec = table_spec(name, demo)
    files = set()
    for r in spec["rows"]:
        for key in ("run", "full_run"):
            if r.get(key):
                files.add(f"results/{r['dataset']}/{r[key]}.json")
    if "improvement" in spec:
        for d in {r["dataset"] for r in spec["rows"]}:
            for run in (spec["improvement"]["run"], spec["improvement"]["over"]):
                files.add(f"results/{d}/{run}.json")
                files.add(f"results/{d}/{run}.per_user.parquet")
    return sorted(files)


def table_files(demo=False):
    """Every table and figure target, for results/tables/all (or results/demo/tables/all)."""
    prefix = "results/demo/tables" if demo else "results/tables"
    return [f"{prefix}/{n}.{'md' if n.startswith('table') else 'png'}" for n in TABLES] + [f"{prefix}/figure5.png"]
