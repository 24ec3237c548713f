"""caption: covers or video frames -> one caption per item, written by a LLaVA-NeXT model.

Section V-B of the paper: each cover is described with a DALL-E-2-style prompt, each video from
three evenly spaced frames with a Sora-style prompt; both prompts carry in-context examples and
live in versioned files under prompts/.

Output `<column>.parquet`: item_idx, item_id, <column> (the caption; null unless status is ok)
and status: ok, missing (the item has no cover / video file) or unreadable (the file could not be
decoded). The prompt, the model and the generation settings are stored in the file's metadata;
`--report` gets the counts. Missing and unreadable items are counted, never fatal.

Generation is greedy (deterministic) and batched, on the GPU when there is one. Every finished
batch is written to a work folder beside the output (`.<column>.work/<settings hash>/`, kept
after the column is written), keyed by item id and file: an interrupted run loses at most one
batch, and any rerun with the same model, prompt and generation settings (Snakemake deletes a
job's output before rerunning it) generates only the captions it lacks. Left padding makes a
caption independent of its batch-mates, so reused and new captions are the same as one run's.

Usage: python -m pipeline.caption --items ITEMS.parquet --settings JSON --prompt P.yaml --column C --out C.parquet
"""
import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import transformers
import yaml
from PIL import Image
from tqdm import tqdm

from pipeline.backbone import DTYPES, BackboneError, quantization_config
from pipeline.files import atomic_path, weights_fingerprint, write_json
from pipeline.frames import VideoError, evenly_spaced_points, extract_frames

FORMAT_VERSION = 1
STATUSES = ("ok", "missing", "unreadable")
BATCH_SCHEMA = pa.schema([("item_id", pa.string()), ("path", pa.string()), ("caption", pa.string()),
                          ("status", pa.string())])


class CaptionError(ValueError):
    """Bad input or settings, reported without a traceback by the command line."""


@dataclass(frozen=True)
class Prompt:
    name: str
    version: int
    source: str  # image | video
    text: str  # instruction, then the numbered in-context examples

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def load_prompt(path: str | Path) -> Prompt:
    """A prompt file (prompts/*.yaml): name, version, source, instruction, examples_intro, examples."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CaptionError(f"cannot read prompt file {path}: {e}") from None
    required = {"name": str, "version": int, "source": str, "instruction": str, "examples_intro": str, "examples": list}
    for key, kind in required.items():
        if not isinstance(spec, dict) or not isinstance(spec.get(key), kind):
            raise CaptionError(f"{path}: key '{key}' is missing or not a {kind.__name__}")
    unknown = sorted(set(spec) - set(required))
    if unknown:
        raise CaptionError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(required)})")
    if spec["source"] not in ("image", "video"):
        raise CaptionError(f"{path}: key 'source' must be image or video, not {spec['source']!r}")
    if not spec["examples"] or not all(isinstance(e, str) and e.strip() for e in spec["examples"]):
        raise CaptionError(f"{path}: key 'examples' must be a non-empty list of example captions")
    examples = "\n".join(f"{i}. {' '.join(e.split())}" for i, e in enumerate(spec["examples"], start=1))
    text = f"{' '.join(spec['instruction'].split())}\n{spec['examples_intro']}\n{examples}"
    return Prompt(spec["name"], spec["version"], spec["source"], text)


class Captioner:
    """A frozen LLaVA-NeXT that writes one caption per item from its cover or video frames."""

    def __init__(self, settings: dict, prompt: Prompt):
        path, remote = settings["path"], settings.get("trust_remote_code", False)
        self.settings, self.source = settings, settings["source"]
        self.points = evenly_spaced_points(settings["frames"]) if self.source == "video" else None
        self.processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=remote)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # generated tokens follow each prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if not getattr(self.processor, "chat_template", None):
            raise CaptionError(f"{path}: the processor has no chat template, so the prompt cannot be formatted")
        images = len(self.points) if self.points else 1
        conversation = [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": prompt.text}]}]
        self.prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        self.model = self._load(path, remote)
        self.device = self.model.get_input_embeddings().weight.device
        if not settings["anyres"]:  # one base tile per image: three video frames fit a 4k context
            crop = self.processor.image_processor.crop_size
            grid = [[crop["height"], crop["width"]]]
            self.processor.image_processor.image_grid_pinpoints = grid
            self.model.config.image_grid_pinpoints = grid
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.context = getattr(text_config, "max_position_embeddings", None)

    def _load(self, path: str, remote: bool):
        dtype = DTYPES[self.settings["dtype"]]
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=remote)
        kwargs = {"dtype": dtype, "trust_remote_code": remote}
        cuda = torch.cuda.is_available()
        try:
            quantization = quantization_config(self.settings, config, path, dtype)
        except BackboneError as e:
            raise CaptionError(str(e)) from None
        if quantization is not None:
            kwargs.update(quantization_config=quantization, device_map="cuda:0" if cuda else "cpu")
        if self.settings.get("device_map") == "auto" and cuda:
            kwargs["device_map"] = "auto"
        model, info = transformers.AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True, **kwargs)
        if info["missing_keys"]:
            raise CaptionError(f"{path}: the checkpoint has no weights for {len(info['missing_keys'])} parameters "
                               f"(e.g. {sorted(info['missing_keys'])[0]}); is it an image-text-to-text model?")
        if "device_map" not in kwargs:
            model.to("cuda" if cuda else "cpu")
        return model.eval().requires_grad_(False)

    def load(self, path: str | None) -> tuple[list[Image.Image] | None, str]:
        """(the images the model sees, status): the cover, or the video's frames."""
        if not path or not Path(path).is_file():
            return None, "missing"
        if self.source == "video":
            try:
                return extract_frames(path, self.points), "ok"
            except VideoError:
                return None, "unreadable"
        try:
            with Image.open(path) as im:
                return [im.convert("RGB")], "ok"
        except (OSError, Image.DecompressionBombError):
            return None, "unreadable"

    @torch.inference_mode()
    def __call__(self, visuals: list[list[Image.Image]]) -> list[str]:
        """One caption per item (greedy); a batch that runs out of GPU memory is split in two."""
        try:
            inputs = self.processor(images=visuals, text=[self.prompt] * len(visuals), padding=True,
                                    return_tensors="pt").to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            length = inputs["input_ids"].shape[1] + self.settings["max_new_tokens"]
            if self.context and length > self.context:
                raise CaptionError(f"a prompt of {inputs['input_ids'].shape[1]} tokens (images included) plus "
                                   f"max_new_tokens {self.settings['max_new_tokens']} exceeds the model's "
                                   f"{self.context}-token context: set anyres: false, fewer frames or fewer tokens")
            out = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                      max_new_tokens=self.settings["max_new_tokens"],
                                      pad_token_id=self.tokenizer.pad_token_id)
        except torch.OutOfMemoryError:
            if len(visuals) == 1:
                raise CaptionError("out of memory with a batch of one item: use a larger GPU, device_map: auto "
                                   "or quantization: bnb-4bit") from None
            torch.cuda.empty_cache()
            half = len(visuals) // 2
            return self(visuals[:half]) + self(visuals[half:])
        texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


def caption_settings(settings: dict, prompt: Prompt, column: str) -> dict:
    """What a caption depends on: the model, the prompt and the generation settings."""
    return {
        "format_version": FORMAT_VERSION,
        "column": column,
        "model": settings["path"],
        "weights_fingerprint": weights_fingerprint(settings["path"]),
        "source": settings["source"],
        "frames": settings["frames"] if settings["source"] == "video" else None,
        "anyres": settings["anyres"],
        "prompt": {"name": prompt.name, "version": prompt.version, "sha256": prompt.sha256, "text": prompt.text},
        "max_new_tokens": settings["max_new_tokens"],
        "dtype": settings["dtype"],
        "quantization": settings.get("quantization"),
    }


def work_folder(out: Path, expected: dict) -> Path:
    """Where finished batches for these settings live: kept after the column is written, so a
    rerun (Snakemake deletes a job's output first) reuses every caption already generated."""
    key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:12]
    return out.parent / f".{out.stem}.work" / key


def finished(work: Path) -> dict[tuple[str, str], tuple[str | None, str]]:
    """(item_id, file path) -> (caption, status) of every finished batch in the work folder."""
    done = {}
    for path in sorted(work.glob("batch-*.parquet")):
        batch = pq.read_table(path).to_pydict()
        for item_id, file, text, status in zip(batch["item_id"], batch["path"], batch["caption"], batch["status"]):
            done[(item_id, file)] = (text, status)
    return done


def caption(items_parquet: Path, settings: dict, prompt_path: Path, column: str, out: Path,
            on_batch_done=None) -> dict:
    """Write the caption column at `out`; return its report. Every finished batch is kept in the
    work folder, so an interrupted or repeated run generates only the captions it lacks."""
    items = pq.read_table(items_parquet)
    prompt = load_prompt(prompt_path)
    source = settings["source"]
    if prompt.source != source:
        raise CaptionError(f"{prompt_path} is a prompt for {prompt.source}s, but the captioner describes {source}s")
    expected = caption_settings(settings, prompt, column)
    if out.exists():
        metadata = pq.read_schema(out).metadata or {}
        if b"caption_settings" not in metadata:
            raise CaptionError(f"{out} is not a caption column written by this stage; delete it to caption")
        if json.loads(metadata[b"caption_settings"]) != expected:
            raise CaptionError(f"{out} was written with other settings; delete it to caption again")
        print(f"{out} is complete; nothing to do")
        return summary(pq.read_table(out), column, expected, seconds=0.0)

    work = work_folder(out, expected)
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "settings.json", expected)  # for people: which settings these captions are for
    done = finished(work)
    ids, paths = items.column("item_id").to_pylist(), items.column(source).to_pylist()
    todo = [row for row, (i, p) in enumerate(zip(ids, paths)) if p and (i, p) not in done]
    size = settings["batch_size"]
    batches = [todo[lo:lo + size] for lo in range(0, len(todo), size)]
    first = 1 + max((int(p.stem.split("-")[1]) for p in work.glob("batch-*.parquet")), default=-1)
    reused = sum(1 for i, p in zip(ids, paths) if p and (i, p) in done)
    start = time.perf_counter()
    captioner = Captioner(settings, prompt) if batches else None
    bar = tqdm(total=reused + len(todo), initial=reused, unit="item", desc=f"caption {column}", smoothing=0.1)
    for b, rows in enumerate(batches):
        loaded = [captioner.load(paths[row]) for row in rows]
        visible = [images for images, status in loaded if status == "ok"]
        texts = iter(captioner(visible) if visible else [])
        batch = {
            "item_id": [ids[row] for row in rows],
            "path": [paths[row] for row in rows],
            "caption": [next(texts) if status == "ok" else None for _, status in loaded],
            "status": [status for _, status in loaded],
        }
        with atomic_path(work / f"batch-{first + b:05d}.parquet") as tmp:
            pq.write_table(pa.table(batch, schema=BATCH_SCHEMA), tmp)
        done.update({(i, p): (t, st) for i, p, t, st in zip(*batch.values())})
        bar.update(len(rows))
        if on_batch_done:
            on_batch_done(b)
    bar.close()

    rows = [done.get((i, p), (None, "missing")) if p else (None, "missing") for i, p in zip(ids, paths)]
    table = pa.table({
        "item_idx": items.column("item_idx"),
        "item_id": items.column("item_id"),
        column: pa.array([text for text, _ in rows], pa.string()),
        "status": pa.array([status for _, status in rows], pa.string()),
    }).replace_schema_metadata({"caption_settings": json.dumps(expected, sort_keys=True)})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return summary(table, column, expected, seconds=time.perf_counter() - start) | {"reused": reused}


def summary(table: pa.Table, column: str, settings: dict, seconds: float) -> dict:
    """The report of a caption column: items per status, empty captions, what wrote them."""
    status, captions = table.column("status").to_pylist(), table.column(column).to_pylist()
    return {
        "column": column,
        "items": table.num_rows,
        **{s: status.count(s) for s in STATUSES},
        "empty_captions": sum(1 for c, s in zip(captions, status) if s == "ok" and not c),
        "seconds": round(seconds, 3),
        "captioner": {k: settings[k] for k in ("model", "source", "frames", "max_new_tokens", "dtype")},
        "prompt": {k: settings["prompt"][k] for k in ("name", "version", "sha256")},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=Path, required=True, help="items.parquet (image and video paths)")
    parser.add_argument("--settings", required=True, help="the captioner's config entry as JSON")
    parser.add_argument("--prompt", type=Path, required=True, help="prompt file (prompts/*.yaml)")
    parser.add_argument("--column", required=True, help="name of the caption column")
    parser.add_argument("--out", type=Path, required=True, help="the caption column's Parquet file")
    parser.add_argument("--report", type=Path, default=None, help="JSON with the counts per status")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device-map", choices=["auto", "none"], default="none",
                        help="auto: spread the model over the GPUs this job sees (accelerate)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        settings = json.loads(args.settings) | {"device_map": None if args.device_map == "none" else args.device_map}
        report = caption(args.items, settings, args.prompt, args.column, args.out)
    except CaptionError as e:
        raise SystemExit(f"caption: {e}")
    if args.report:
        write_json(args.report, report)
    print(json.dumps(report, indent=2))
    if report["missing"] or report["unreadable"]:
        print(f"caption: {report['missing']} items have no {report['captioner']['source']} file and "
              f"{report['unreadable']} could not be decoded; their {args.column} is null")


if __name__ == "__main__":
    main()
