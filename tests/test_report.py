"""A paper table rendered from fixed run results, beside the paper's numbers."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.paper import paper_values
from pipeline.report import write_table

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
    assert round(gain["hr@10"]["relative"], 6) == round((0.07 - 0.06) / 0.07, 6) and gain["hr@10"]["significant"]
    text = out.read_text()
    assert "| 6 blocks | scientific | `bert-base` | 7.00 | 6.83 | +0.17 | 4.20 | 4.14 | +0.06 |" in text
    assert "HR@10 +14.29%*" in text
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(twin))
    header = out.with_suffix(".csv").read_text().splitlines()[0]
    assert header.startswith("label,group,dataset,run,quoted,ours_hr@10,ours_std_hr@10,paper_hr@10,diff_hr@10")


def test_seeds_show_their_spread_and_a_gain_within_it_is_not_starred(tmp_path):
    rng = np.random.default_rng(0)
    low = (rng.random(400) < 0.05).astype(float)
    high = np.maximum(low, (rng.random(400) < 0.08).astype(float))  # significant by the t-test alone
    write_run(tmp_path, "vs-2-blocks", 0.0600, 0.0350, low.tolist())
    write_run(tmp_path, "bert-base", 0.0700, 0.0420, high.tolist())
    result = json.loads((tmp_path / "scientific" / "bert-base.json").read_text())
    result |= {"seeds": [1, 2, 3], "metrics_std": {"test": {"hr@10": 0.0150, "ndcg@10": 0.0010}}}
    (tmp_path / "scientific" / "bert-base.json").write_text(json.dumps(result))
    out = tmp_path / "tables" / "table7.md"
    twin = write_table(SPEC, tmp_path, out)
    gain = twin["improvement"][0]
    assert gain["hr@10"]["p"] < 0.05 and not gain["hr@10"]["significant"]  # +1.0 points < 1.5 spread
    assert gain["ndcg@10"]["significant"]  # +0.7 points > 0.1 spread
    text = out.read_text()
    assert "| 6 blocks | scientific | `bert-base` | 7.00 ± 1.50 | 6.83 | +0.17 | 4.20 ± 0.10 |" in text
    assert "HR@10 +14.29% (p" in text and "NDCG@10 +16.67%* (p" in text


def test_table3s_improvement_uses_the_papers_formula_and_stars_only_gains(tmp_path):
    """(VA - VS) / VA, beside the paper's +6.31%; a significantly worse run gets no star."""
    rng = np.random.default_rng(1)
    low = (rng.random(400) < 0.05).astype(float)
    high = np.maximum(low, (rng.random(400) < 0.08).astype(float))
    spec = {"table": "table3", "title": "Table III",
            "rows": [{"label": "IISAN-VS", "run": "bert-base", "dataset": "scientific"},
                     {"label": "IISAN-VA", "run": "bert-large", "dataset": "scientific"}],
            "improvement": {"run": "bert-large", "over": "bert-base"}}
    write_run(tmp_path, "bert-base", 0.0683, 0.0414, low.tolist())
    write_run(tmp_path, "bert-large", 0.0729, 0.0441, high.tolist())
    gain = write_table(spec, tmp_path, tmp_path / "t3.md")["improvement"][0]["hr@10"]
    assert round(gain["relative"], 4) == round(gain["paper_relative"], 4) == 0.0631  # the paper's own numbers
    assert gain["significant"]
    assert "HR@10 +6.31%* (p = " in (tmp_path / "t3.md").read_text() and ", paper +6.31%)" in (tmp_path / "t3.md").read_text()

    write_run(tmp_path, "bert-large", 0.0600, 0.0400, low.tolist())
    write_run(tmp_path, "bert-base", 0.0700, 0.0420, high.tolist())  # VA now significantly worse
    gain = write_table(spec, tmp_path, tmp_path / "t3.md")["improvement"][0]["hr@10"]
    assert gain["relative"] < 0 and gain["p"] < 0.05 and not gain["significant"]


def test_table8_has_a_mean_row_after_each_group(tmp_path):
    spec = {"table": "table8", "title": "Table VIII", "group_means": True,
            "rows": [{"label": "Full", "group": "24 + 12", "run": "va-no-layerdrop", "dataset": "scientific"},
                     {"label": "12(even_all)+12(all)", "group": "12 + 12", "run": "va-12even_all-12all",
                      "dataset": "scientific"},
                     {"label": "12(top)+12(all)", "group": "12 + 12", "run": "va-12top-12all", "dataset": "scientific"}]}
    for run, hr in (("va-no-layerdrop", 0.0680), ("va-12even_all-12all", 0.0700), ("va-12top-12all", 0.0720)):
        write_run(tmp_path, run, hr, hr / 2, [0.0, 1.0])
    rows = write_table(spec, tmp_path, tmp_path / "t8.md")["rows"]
    assert [(r["label"], r["mean"]) for r in rows] == [
        ("Full", False), ("12(even_all)+12(all)", False), ("12(top)+12(all)", False), ("Mean (12 + 12)", True)]
    mean = rows[-1]
    assert round(mean["ours_hr@10"], 6) == 0.0710 and mean["paper_hr@10"] == 0.0691  # the paper's mean of 12 + 12
    assert "| 12 + 12: Mean (12 + 12) | scientific | mean | 7.10 | 6.91 | +0.19 |" in (tmp_path / "t8.md").read_text()


def test_rows_not_rerun_are_quoted_with_their_source(tmp_path):
    folder = tmp_path / "microlens"
    folder.mkdir()
    (folder / "sasrec-id.json").write_text(json.dumps({"metrics": {"test": {"hr@10": 0.0950, "ndcg@10": 0.0500}}}))
    spec = {"table": "table5", "title": "Table V", "quoted_from": "the MicroLens benchmark",
            "rows": [{"label": "DSSM", "group": "IDRec (CF)", "paper": "DSSM", "dataset": "microlens"},
                     {"label": "SASRec", "group": "IDRec (SR)", "run": "sasrec-id", "dataset": "microlens"}]}
    twin = write_table(spec, tmp_path, tmp_path / "table5.md")
    assert [(r["quoted"], r["ours_hr@10"], r["paper_hr@10"]) for r in twin["rows"]] == [
        (True, None, 0.0394), (False, 0.0950, 0.0909)]
    text = (tmp_path / "table5.md").read_text()
    assert "| IDRec (CF): DSSM | microlens | quoted | - | 3.94 | - | - | 1.93 | - |" in text
    assert "| IDRec (SR): SASRec | microlens | `sasrec-id` | 9.50 | 9.09 | +0.41 |" in text
    assert "Rows marked quoted are not rerun: the MicroLens benchmark." in text


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


def test_figure6_orders_the_encoders_by_size_and_measures_their_stores(tmp_path):
    import zarr
    from transformers import AutoModel, BertConfig, BertModel, LlamaConfig, LlamaModel

    from pipeline.figures import figure6

    models = {"bert": BertModel(BertConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                           intermediate_size=32, vocab_size=500)),
              "llama": LlamaModel(LlamaConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=16, vocab_size=50))}
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
    folder = tmp_path / "scientific"
    folder.mkdir()

    def write_store_and_run(run, states, width):
        store = zarr.open_group(str(tmp_path / f"{run}.zarr"), mode="w")
        store.create_array("states", shape=(10, len(states), width), dtype="float16")[:] = 1.0  # 9 items + padding
        store.attrs.update({"kept_states": states, "items": 9, "hidden_size": width})
        result = {"config": {"towers": {"text": {"cache": str(tmp_path / f"{run}.zarr"), "kept_states": states}}}}
        (folder / f"{run}.json").write_text(json.dumps(result))
        return sum(f.stat().st_size for f in (tmp_path / f"{run}.zarr").rglob("*") if f.is_file())

    bert_kept = write_store_and_run("bert", [0, 2, 4], 16)
    bert_all = write_store_and_run("bert-all", [0, 1, 2, 3, 4], 16)
    llama_kept = write_store_and_run("llama", [0, 2], 8)
    rows = [{"label": "BERT", "run": "bert", "full_run": "bert-all", "dataset": "scientific",
             "model": {"path": str(tmp_path / "bert"), "layers": 4}},
            {"label": "Llama", "run": "llama", "dataset": "scientific",
             "model": {"path": str(tmp_path / "llama"), "layers": 2}}]
    out = tmp_path / "tables" / "figure6.png"
    plotted = figure6({"rows": rows, "title": "cache"}, tmp_path, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    size = {name: sum(p.numel() for p in AutoModel.from_pretrained(tmp_path / name).parameters()) for name in models}
    assert size["llama"] < size["bert"]
    assert [(r["run"], r["parameters"], r["kept_states"], r["dropped_bytes"], r["full_bytes"], r["full_measured"])
            for r in plotted] == [
        ("llama", size["llama"], 2, llama_kept, round(llama_kept * 3 / 2), False),  # scaled: 3 states of which 2 kept
        ("bert", size["bert"], 3, bert_kept, bert_all, True)]
