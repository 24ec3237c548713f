"""Loading, validating and resolving config.yaml.

The schema (workflow/schemas/config.schema.yaml) fills defaults and refuses unknown keys; the
cross-checks below catch what a schema cannot (a run naming an unknown encoder, a text encoder
in the image slot). Errors name the file, the line and the key.
"""
import copy
from pathlib import Path

import jsonschema
import yaml

from pipeline import layerdrop
from pipeline.methods import METHODS, method, schema_description

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
TOWERS = ("text", "image")
# Encoder keys that change no computed state (scheduling, placement, documentation).
UNSTORED_KEYS = ("family", "gpus", "mem_mb", "runtime", "device_map", "causal", "shards")


class ConfigError(ValueError):
    pass


def _with_defaults(validator_class):
    """A validator that also fills each object's missing keys with their schema defaults."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                # null for a mapping with a default means that default (an override file can
                # clear e.g. a dataset's captions with `captions: null`)
                cleared = instance.get(key, 0) is None and sub.get("type") == "object"
                if "default" in sub and (key not in instance or cleared):
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _line_of(text: str | None, path: list) -> int | None:
    """1-based line of the node at `path` in the YAML text, or None if it is not there."""
    if not text:
        return None
    node, line = yaml.compose(text), None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(key)]
            if not match:
                return None
            line, node = match[0][0].start_mark.line + 1, match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return None
    return line


def _sets(overrides: dict, path: list) -> bool:
    """Whether a --config mapping sets the key at `path`."""
    node = overrides
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return bool(path)


def _fail(files: list, path: list, message: str):
    """Raise a ConfigError naming the key and the first source (highest precedence first) that
    writes it: a YAML file with its line, or `--config` (a source given as a dict)."""
    where = ".".join(str(p) for p in path) or "(top level)"
    at = str(files[0]) if files and not isinstance(files[0], dict) else "config"
    for f in files:
        if isinstance(f, dict):
            if _sets(f, path):
                at = "--config"
                break
            continue
        line = _line_of(Path(f).read_text(), path) if Path(f).is_file() else None
        if line:
            at = f"{f}, line {line}"
            break
    raise ConfigError(f"{at}: key '{where}': {message}")


def read_yaml(path: str | Path):
    """A YAML file, its syntax errors named by file, line and column."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {e.problem or e.context}") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None


def merge(base: dict, overlay: dict) -> dict:
    """`overlay` merged into `base` key by key (nested mappings too), as Snakemake merges
    --configfile files over the workflow's config, except that an empty mapping or null replaces
    the mapping below it: `captions: {}` in an overlay clears config.yaml's captions, where
    Snakemake's merge would keep them. Returns base."""
    for key, value in overlay.items():
        if value and isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:  # a copy: later overlays merge into base, never into a caller's mapping
            base[key] = copy.deepcopy(value)
    return base


def load_configs(sources: list) -> dict:
    """The config of several YAML files (or parsed mappings, as Snakemake's --config), each merged
    over the ones before (config.yaml first, then overlays), validated; errors name the file
    that set the key."""
    raw = {}
    for source in sources:
        merge(raw, (source if isinstance(source, dict) else read_yaml(source)) or {})
    return load_config(raw, files=list(sources)[::-1])


def load_schema() -> dict:
    """The config schema, with the methods of the registry (pipeline/methods.py) filled in."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    schema["$defs"]["run"]["properties"]["method"] = {"enum": list(METHODS), "description": schema_description()}
    return schema


def load_config(source: str | Path | dict, files: list | None = None) -> dict:
    """Validate a config, a YAML path or a parsed dict, and return it with defaults filled.

    `files`: for a dict, where it was merged from, highest precedence first: YAML files, and
    the --config mapping as a dict; errors name the file and line (or --config) that set the
    offending key.
    """
    if isinstance(source, (str, Path)):
        files = [source]
        raw = read_yaml(source) or {}
    else:
        raw, files = source, list(files or [])
    if not isinstance(raw, dict):
        _fail(files, [], "the config must be a mapping")

    cfg = copy.deepcopy(raw)
    schema = load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        while err.context:  # a key with several allowed forms: report the form that got furthest
            err = max(err.context, key=lambda e: (len(e.absolute_path), e.validator not in ("type", "enum")))
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            # name the unexpected key itself, so that its own source and line are found
            path += sorted(set(err.instance) - set(err.schema.get("properties", {})))[:1]
        _fail(files, path, err.message)

    # A run's train settings, weakest first: the schema's defaults, its method's own defaults,
    # the config's train block, the run's own train block (only the keys each names).
    for run_name, run in cfg["runs"].items():
        own = raw["runs"][run_name].get("train", {})
        run["train"] = {**cfg["train"], **method(run["method"]).train_defaults, **(raw.get("train") or {}), **own}

    _cross_check(cfg, files)
    return cfg


def _cross_check(cfg: dict, files: list):
    for ds_name, ds in cfg["datasets"].items():
        if "synthetic" in ds:  # generated by the synth rule at fixed places
            for key, path in raw_paths(ds_name).items():
                if ds.setdefault(key, path) != path:
                    _fail(files, ["datasets", ds_name, key], f"a synthetic dataset's {key} is {path}")
        if ds["download_images"]:
            if ds["format"] != "amazon-2018":
                _fail(files, ["datasets", ds_name, "download_images"], "only amazon-2018 metadata has image URLs")
            path = raw_paths(ds_name)["images"]
            if ds.setdefault("images", path) != path:
                _fail(files, ["datasets", ds_name, "images"], f"downloaded images go to {path}")
        ds.setdefault("images", None)
        for key in ("users", "items"):
            if key not in ds:
                _fail(files, ["datasets", ds_name], f"missing '{key}' (path of the {key} tsv)")
        for column, captioner in ds["captions"].items():
            where = ["datasets", ds_name, "captions", column]
            if captioner not in cfg["captioners"]:
                known = ", ".join(sorted(cfg["captioners"])) or "none"
                _fail(files, where, f"unknown captioner '{captioner}' (known: {known})")
            source = cfg["captioners"][captioner]["source"]
            has = ds["images"] or "synthetic" in ds if source == "image" else ds["videos"]
            if not has:
                _fail(files, where, f"captioner '{captioner}' describes {source}s, but the dataset has no "
                                    f"{source}s folder")
    for name, captioner in cfg["captioners"].items():
        where = ["captioners", name]
        if name in cfg["encoders"]:
            _fail(files, where, "an encoder has the same name (built models share results/models/<name>)")
        if "build" in captioner:
            built = f"results/models/{name}"
            if captioner.setdefault("path", built) != built:
                _fail(files, where + ["path"], f"a built captioner lives at {built}")
        if "path" not in captioner:
            _fail(files, where, "missing 'path' (hub id or folder of the checkpoint)")
    for enc_name, enc in cfg["encoders"].items():
        where = ["encoders", enc_name]
        if "build" in enc:  # built by the build_encoder rule at a fixed place
            built = f"results/models/{enc_name}"
            if enc.setdefault("path", built) != built:
                _fail(files, where + ["path"], f"a built encoder lives at {built}")
        if ("path" in enc) == ("package" in enc):
            _fail(files, where, "give exactly one of 'path' (hub id or folder) or 'package'")
        enc.setdefault("pooling", "mean" if enc["causal"] else "cls")
        if enc["causal"] and enc["pooling"] == "cls":
            _fail(files, where + ["pooling"], "a causal LLM's first token sees only itself: use mean, last or mean_unmasked")
    for run_name, run in cfg["runs"].items():
        where = ["runs", run_name]
        if run["train"]["embed_dim"] % run["train"]["user_heads"]:
            _fail(files, where + ["train"], "embed_dim must be a multiple of user_heads")
        ablate = run.get("ablate", [])
        if ablate and not method(run["method"]).ablatable:
            ablatable = ", ".join(name for name, m in METHODS.items() if m.ablatable)
            _fail(files, where + ["ablate"], f"ablations remove parts of the IISAN item encoder (methods {ablatable})")
        if not method(run["method"]).content:
            continue
        if ("inter" in ablate or "intra" in ablate) and not (run["text"] and run["image"]):
            _fail(files, where + ["ablate"], "the intra/inter ablations need both a text and an image tower")
        if {"inter", "intra"} <= set(ablate):
            _fail(files, where + ["ablate"], "removing both the intra and the inter towers leaves nothing")
        if run["layerdrop"] == "group" and not (run["text"] and run["image"]):
            _fail(files, where + ["layerdrop"], "group LayerDrop aligns a text tower to an image tower: name both")
        if not run["text"] and not run["image"]:
            _fail(files, where, f"method '{run['method']}' needs a 'text' or 'image' encoder")
        for tower in run["columns"]:
            if not run[tower]:
                _fail(files, where + ["columns", tower], f"the run has no {tower} tower")
        for tower in TOWERS:
            enc_name = run[tower]
            if enc_name is None:
                continue
            if enc_name not in cfg["encoders"]:
                known = ", ".join(sorted(cfg["encoders"]))
                _fail(files, where + [tower], f"unknown encoder '{enc_name}' (known: {known})")
            enc = cfg["encoders"][enc_name]
            # The second (image) tower may read text instead: two text columns (Table IX).
            if enc["modality"] != tower and tower == "text":
                _fail(files, where + [tower], f"encoder '{enc_name}' is not a text encoder")
            if tower in run["columns"] and enc["modality"] != "text":
                _fail(files, where + ["columns", tower], f"the {tower} tower's encoder '{enc_name}' reads images, "
                                                         f"not a text column")
            if method(run["method"]).tunes_backbone and (enc["quantization"] or enc["dtype"] != "float32"):
                _fail(files, where + [tower], f"method '{run['method']}' trains encoder '{enc_name}', which must "
                                              f"load in float32 without quantization")
        try:
            kept_states(cfg, run)
        except ValueError as e:
            _fail(files, where, str(e))
    comparisons = [(["efficiency"], cfg["efficiency"])]
    comparisons += [(["efficiency", "by_dataset", d], e) for d, e in cfg["efficiency"]["by_dataset"].items()]
    for where, eff in comparisons:
        for i, run_name in enumerate(eff["runs"]):
            if run_name not in cfg["runs"]:
                _fail(files, where + ["runs", i], f"unknown run '{run_name}'")
            if not method(cfg["runs"][run_name]["method"]).content:
                _fail(files, where + ["runs", i], f"run '{run_name}' has no encoders to compare")
        if eff["runs"] and eff["reference"] not in eff["runs"]:
            _fail(files, where + ["reference"], f"'{eff['reference']}' is not one of the runs compared")
        if eff["runs"] and not method(cfg["runs"][eff["reference"]]["method"]).cached:
            cached = ", ".join(name for name, m in METHODS.items() if m.cached)
            _fail(files, where + ["reference"], f"the reference is a cached run (method {cached})")
    for dataset, runs in cfg["default_targets"].items():
        if dataset not in cfg["datasets"]:
            _fail(files, ["default_targets", dataset], f"unknown dataset '{dataset}'")
        for run_name in runs:
            if run_name not in cfg["runs"]:
                _fail(files, ["default_targets", dataset], f"unknown run '{run_name}'")


def efficiency_comparison(cfg: dict, dataset: str) -> dict:
    """The runs and reference that results/<dataset>/efficiency.csv compares."""
    return cfg["efficiency"]["by_dataset"].get(dataset) or cfg["efficiency"]


def raw_paths(dataset: str) -> dict[str, str]:
    """Where the synth rule writes a synthetic dataset's raw files."""
    raw = f"results/{dataset}/raw"
    return {"users": f"{raw}/users.tsv", "items": f"{raw}/items.tsv", "images": f"{raw}/images"}


def kept_states(cfg: dict, run: dict) -> dict[str, list[int]]:
    """Hidden-state indices each tower of a run keeps, by tower name."""
    depth = {t: cfg["encoders"][run[t]]["layers"] for t in TOWERS if run[t]}
    if method(run["method"]).last_state_only:
        return {tower: [layers] for tower, layers in depth.items()}
    scheme = run["layerdrop"]
    kept = {}
    for tower, layers in depth.items():
        if isinstance(scheme, dict):
            if tower not in scheme:
                raise ValueError(f"layerdrop names no selection for the {tower} tower "
                                 f"(give all, symmetric, n(scheme) or a list)")
            kept[tower] = layerdrop.from_spec(scheme[tower], layers, f"layerdrop.{tower}")
        elif scheme == "none":
            kept[tower] = layerdrop.all_states(layers)
        elif scheme == "group" and layers > min(depth.values()):  # the deeper tower is grouped
            kept[tower] = layerdrop.group(layers, min(depth.values()))
        else:
            kept[tower] = layerdrop.symmetric(layers)
    if isinstance(scheme, dict):
        extra = sorted(set(scheme) - set(depth))
        if extra:
            raise ValueError(f"layerdrop names the {', '.join(extra)} tower, which the run does not have")
    return kept


def cache_path(dataset: str, encoder: str, states: list[int], column: str = "title") -> str:
    """Where the encode rule writes a store; a text column other than the title is named."""
    read = "" if column == "title" else f".{column}"
    return f"results/{dataset}/cache/{encoder}{read}.{layerdrop.tag(states)}.zarr"


def run_dir(results: Path, run_name: str, seed: int) -> Path:
    """Where a run's seed is trained and evaluated, in a dataset's results folder."""
    return Path(results) / "runs" / run_name / f"seed{seed}"


def caption_path(dataset: str, column: str) -> str:
    """Where the caption rule writes a caption column."""
    return f"results/{dataset}/captions/{column}.parquet"


def text_columns(cfg: dict, dataset: str, run: dict) -> dict[str, str]:
    """The item-table column each text tower of a run reads, checked against the dataset."""
    columns = {}
    for tower in TOWERS:
        if not method(run["method"]).content or not run[tower]:
            continue
        if cfg["encoders"][run[tower]]["modality"] != "text":
            continue
        column = run["columns"].get(tower, "title")
        captions = cfg["datasets"][dataset]["captions"]
        if column != "title" and column not in captions:
            have = ", ".join(["title", *captions])
            raise ConfigError(f"run '{run['name']}' reads column '{column}' in its {tower} tower, which dataset "
                              f"'{dataset}' does not have (its text columns: {have}; add it under "
                              f"datasets.{dataset}.captions)")
        columns[tower] = column
    return columns


def run_seeds(cfg: dict, run_name: str) -> list[int]:
    """The seeds a run trains with: its `seeds`, else its train.seed."""
    run = cfg["runs"][run_name]
    return list(run.get("seeds") or [run["train"]["seed"]])


def resolve_run(cfg: dict, dataset: str, run_name: str, seed: int | None = None) -> dict:
    """Everything the train and evaluate stages need to know about one run on one dataset, for
    one of its seeds (default: the first)."""
    if dataset not in cfg["datasets"]:
        raise ConfigError(f"unknown dataset '{dataset}' (known: {', '.join(sorted(cfg['datasets']))})")
    if run_name not in cfg["runs"]:
        raise ConfigError(f"unknown run '{run_name}' (known: {', '.join(sorted(cfg['runs']))})")
    run = cfg["runs"][run_name] | {"name": run_name}
    seeds = run_seeds(cfg, run_name)
    if seed is None:
        seed = seeds[0]
    elif seed not in seeds:
        raise ConfigError(f"run '{run_name}' has no seed {seed} (its seeds: {seeds})")
    towers = {}
    if method(run["method"]).content:
        columns = text_columns(cfg, dataset, run)
        for tower, states in kept_states(cfg, run).items():
            enc = cfg["encoders"][run[tower]]
            # Only a caption column is named, so title runs keep their settings (and results).
            column = columns.get(tower, "title")
            read = {"column": column} if column != "title" else {}
            towers[tower] = {
                "encoder": run[tower],
                "model": enc.get("package") or enc["path"],
                "pooling": enc["pooling"],
                "hidden_size": enc["hidden_size"],
                "kept_states": states,
                **read,
                **({"captions": caption_path(dataset, column)} if read else {}),
            }
            # The encoder's settings: an uncached run loads its backbone with them; a cached run
            # checks its stores' whole identity against them.
            towers[tower]["settings"] = {k: v for k, v in enc.items() if k not in UNSTORED_KEYS} | read
            if method(run["method"]).cached:
                towers[tower]["cache"] = cache_path(dataset, run[tower], states, column)
    return {
        "dataset": dataset,
        "run": run_name,
        "method": run["method"],
        "towers": towers,
        # Only ablation runs carry the key, so adding it re-ran no existing run.
        **({"ablate": run["ablate"]} if run.get("ablate") else {}),
        # Threads change no result, so they stay out of the settings that decide re-runs.
        "train": {k: v for k, v in run["train"].items() if k != "threads"} | {"seed": seed},
        "evaluate": cfg["evaluate"],
    }
