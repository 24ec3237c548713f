"""The GPU benchmark script, run at its smoke scale so that it is always exercised."""
import json
import math
import subprocess
import sys

from conftest import REPO


def test_llm_bench_runs_at_smoke_scale(tmp_path):
    subprocess.run([sys.executable, "bench/llm_encode_train.py", "--scale", "smoke", "--out", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True)
    report = json.loads((tmp_path / "llm_encode_train.smoke.json").read_text())
    encode = report["encode"]
    assert encode["items"] == 200 and encode["items_per_s"] > 0 and encode["tokens"] > encode["items"]
    assert encode["kept_states"] == [0, 1, 2, 3, 4, 5, 6] and encode["blocks_run"] == 6
    bert, big = report["train"]
    assert bert["towers"] == {"text": "7 x 32", "image": "7 x 32"}
    assert big["towers"] == {"text": "7 x 256", "image": "7 x 32"}  # 70B-shaped: 7 kept states, 8x wider
    assert big["cache_bytes"] > bert["cache_bytes"] > 0
    assert all(t["seconds_per_epoch"] > 0 and t["peak_memory_bytes"] > 0 for t in report["train"])
    assert "70B-shaped / BERT-base-shaped" in (tmp_path / "llm_encode_train.smoke.md").read_text()


def test_efficiency_bench_runs_at_smoke_scale(tmp_path):
    subprocess.run([sys.executable, "bench/efficiency_bert_vit.py", "--scale", "smoke", "--out", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True)
    report = json.loads((tmp_path / "efficiency.smoke.json").read_text())
    runs = [r["run"] for r in report["rows"]]
    assert runs == ["iisan-vs", "iisan-uncached", "fft", "adapter", "lora", "bitfit"]
    by = {r["run"]: r for r in report["rows"]}
    assert by["iisan-vs"]["time_ratio"] == 1.0 and by["fft"]["trainable_params"] > by["lora"]["trainable_params"]
    assert (tmp_path / "efficiency.smoke.png").exists() and (tmp_path / "efficiency.smoke.csv").exists()


def absent_split(tmp_path) -> str:
    """An overlay naming Scientific files that do not exist: the benchmarks fall back to synthetic data."""
    overlay = tmp_path / "absent.yaml"
    overlay.write_text(f"datasets:\n  scientific: {{users: {tmp_path}/absent/u.tsv, items: {tmp_path}/absent/i.tsv}}\n")
    return str(overlay)


def test_rank_bench_prints_its_ratio(tmp_path):
    done = subprocess.run([sys.executable, "bench/rank_throughput.py", "--overlay", absent_split(tmp_path),
                           "--microlens-users", "500", "--repeats", "1", "--out", str(tmp_path)],
                          cwd=REPO, check=True, capture_output=True, text=True)
    ratio = float(done.stdout.strip().splitlines()[-1].removeprefix("ratio: "))
    rows = json.loads((tmp_path / "rank_throughput.json").read_text())["rows"]
    assert [r["users"] for r in rows] == [500, 12076] and rows[-1]["ratio"] == ratio > 0


def test_encode_bench_prints_its_ratio(tmp_path):
    done = subprocess.run([sys.executable, "bench/encode_throughput.py", "--overlay", absent_split(tmp_path), "--limit", "40",
                           "--threads", "1", "--out", str(tmp_path)], cwd=REPO, check=True, capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1].startswith("ratio: ")
    rows = json.loads((tmp_path / "encode_throughput.json").read_text())["rows"]
    assert {r["encoder"] for r in rows} >= {"project", "plain"} and all(r["items"] == 40 for r in rows)


def test_scale_bench_agrees_between_its_paths(tmp_path):
    subprocess.run([sys.executable, "bench/scale.py", "--sizes", "600", "--users", "60", "--threads", "1",
                    "--workdir", str(tmp_path / "work"), "--out", str(tmp_path)], cwd=REPO, check=True, capture_output=True)
    rows = json.loads((tmp_path / "scale.json").read_text())["rows"]
    assert [(r["items"], r["shape"]) for r in rows] == [(600, "4 x 384"), (600, "7 x 8192")]
    agree = ("loss", "valid_hr@10", "valid_ndcg@10", "weights_sha256")  # the same training and ranking, bit for bit
    for r in rows:
        assert {k: r["memory"][k] for k in agree} == {k: r["stream"][k] for k in agree}
        assert math.isfinite(r["memory"]["loss"]) and r["memory"]["loss"] > 0
    assert all(r["memory"]["valid_hr@10"] > 0 for r in rows)  # hits to compare, not two zeros
