"""A paper table rendered from fixed run results, beside the paper's numbers."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.report import paper_values, write_table

SPEC = {
    "table": "table7",
    "title": "Table VII: LayerDrop in IISAN-VS on Scientific",
    "rows": [
        {"label": "2 blocks", "dataset": "scientific", "run": "vs-2-blocks"},
        {"label": "6 blocks", "dataset": "scientific", "run": "bert-base"},
    ],
    "improvement": {"run": "bert-base", "over": "vs-2-blocks"},
}


def write_run(results, run, hr, ndcg, per_user):
    folder = results / "scientific"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run}.json").write_text(json.dumps({"metrics": {"test": {"hr@10": hr, "ndcg@10": ndcg}}}))
    n = len(per_user)
    pq.write_table(pa.table({
        "user_id": [f"u{i}" for i in range(n)], "split": ["test"] * n, "protocol": ["reference"] * n,
        "target": list(range(n)), "hr@10": per_user, "ndcg@10": [v / 2 for v in per_user]}),
        folder / f"{run}.per_user.parquet")


def test_a_table_shows_ours_the_papers_and_the_difference(tmp_path):
    rng = np.random.default_rng(0)
    low = (rng.random(400) < 0.05).astype(float)
    high = np.maximum(low, (rng.random(400) < 0.08).astype(float))  # better for many users: significant
    write_run(tmp_path, "vs-2-blocks", 0.0600, 0.0350, low.tolist())
    write_run(tmp_path, "bert-base", 0.0700, 0.0420, high.tolist())
    out = tmp_path / "tables" / "table7.md"
    twin = write_table(SPEC, tmp_path, out)

    assert paper_values("table7")["scientific"]["bert-base"] == {"hr@10": 0.0683, "ndcg@10": 0.0414}
    two, six = twin["rows"]
    assert (two["ours_hr@10"], two["paper_hr@10"]) == (0.0600, 0.0646)
    assert round(six["diff_hr@10"], 6) == round(0.0700 - 0.0683, 6)
    gain = twin["improvement"][0]
    assert round(gain["hr@10"]["relative"], 6) == round(0.07 / 0.06 - 1, 6) and gain["hr@10"]["significant"]
    text = out.read_text()
    assert "| 6 blocks | scientific | `bert-base` | 7.00 | 6.83 | +0.17 | 4.20 | 4.14 | +0.06 |" in text
    assert "HR@10 +16.67%*" in text
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(twin))
    header = out.with_suffix(".csv").read_text().splitlines()[0]
    assert header.startswith("label,group,dataset,run,quoted,ours_hr@10,paper_hr@10,diff_hr@10")


def test_figure4_groups_the_encoders_from_run_results(tmp_path):
    from pipeline.figures import figure4

    rows = [{"label": "BERT-base", "group": "PLM", "run": "bert-base", "dataset": "scientific"},
            {"label": "BERT-large", "group": "PLM", "run": "bert-large", "dataset": "scientific"},
            {"label": "Llama3-8b", "group": "Base LLM", "run": "llama3-8b", "dataset": "scientific"}]
    for run, hr in (("bert-base", 0.0650), ("bert-large", 0.0700), ("llama3-8b", 0.0790)):
        write_run(tmp_path, run, hr, hr / 2, [0.0, 1.0])
    out = tmp_path / "tables" / "figure4.png"
    plotted = figure4({"rows": rows, "title": "scaling"}, tmp_path, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert [(r["run"], r["ours_hr@10"], r["paper_hr@10"]) for r in plotted] == [
        ("bert-base", 0.0650, 0.0683), ("bert-large", 0.0700, 0.0729), ("llama3-8b", 0.0790, 0.0778)]
    assert out.with_suffix(".csv").read_text().splitlines()[1] == "BERT-base,PLM,bert-base,0.065,0.0683"
