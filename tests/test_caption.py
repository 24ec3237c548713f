"""The caption stage with a tiny random LLaVA-NeXT: covers, real video frames, resume, join."""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_path
from PIL import Image

from pipeline import caption as caption_module
from pipeline.build_encoder import build_llava_next
from pipeline.caption import CaptionError, caption, load_prompt
from pipeline.data import DataError
from pipeline.item_table import join_captions

REPO = Path(__file__).resolve().parent.parent
COVER_PROMPT = REPO / "prompts" / "cover-dalle2.v1.yaml"
VIDEO_PROMPT = REPO / "prompts" / "video-sora.v1.yaml"
VIDEO = shared_path("microlens-sample", "videos", "10034.mp4", required=False)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> dict:
    """A random LLaVA-NeXT with a BPE tokenizer trained from scratch and the real processor."""
    path = tmp_path_factory.mktemp("models") / "tiny-llava"
    settings = {"path": str(path), "source": "image", "frames": 3, "max_new_tokens": 12, "batch_size": 3,
                "anyres": True, "dtype": "float32", "build": {"architecture": "llava_next", "layers": 2, "hidden_size": 64,
                                              "vocab_size": 1000, "seed": 0}}
    build_llava_next(settings, path)
    return settings


@pytest.fixture
def covers(tmp_path) -> Path:
    """8 items: 6 generated covers of different sizes, one without a cover, one unreadable."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(8):
        path = tmp_path / f"c{i}.png"
        Image.fromarray(rng.integers(0, 255, (24 + 8 * i, 40, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    images[2] = None
    Path(images[5]).write_bytes(b"not an image")
    video = [str(VIDEO) if i == 0 else None for i in range(8)]
    table = pa.table({"item_idx": pa.array(range(1, 9), pa.int32()), "item_id": [f"i{i}" for i in range(8)],
                      "title": [f"title {i}" for i in range(8)], "image": images, "video": video})
    pq.write_table(table, tmp_path / "items.parquet")
    return tmp_path / "items.parquet"


def test_the_prompt_files_load_with_their_examples(tmp_path):
    cover, video = load_prompt(COVER_PROMPT), load_prompt(VIDEO_PROMPT)
    assert (cover.name, cover.version, cover.source) == ("cover-dalle2", 1, "image")
    assert (video.name, video.version, video.source) == ("video-sora", 1, "video")
    assert "DALL-E 2" in cover.text and "\n1. " in cover.text and "\n4. " in cover.text
    assert "re-generate the video" in video.text and "\n3. " in video.text
    bad = tmp_path / "bad.yaml"
    bad.write_text(COVER_PROMPT.read_text().replace("examples:", "exemples:"))
    with pytest.raises(CaptionError, match="bad.yaml: key 'examples' is missing"):
        load_prompt(bad)


def test_covers_are_captioned_and_missing_ones_counted(covers, tiny_llava, tmp_path):
    out = tmp_path / "cover_caption.parquet"
    report = caption(covers, tiny_llava, COVER_PROMPT, "cover_caption", out)
    assert (report["items"], report["ok"], report["missing"], report["unreadable"]) == (8, 6, 1, 1)
    assert report["prompt"]["name"] == "cover-dalle2" and report["prompt"]["version"] == 1
    table = pq.read_table(out)
    assert table.column_names == ["item_idx", "item_id", "cover_caption", "status"]
    status, text = table.column("status").to_pylist(), table.column("cover_caption").to_pylist()
    assert status == ["ok", "ok", "missing", "ok", "ok", "unreadable", "ok", "ok"]
    assert all(isinstance(t, str) and t for t, s in zip(text, status) if s == "ok")
    assert all(t is None for t, s in zip(text, status) if s != "ok")
    settings = json.loads(table.schema.metadata[b"caption_settings"])
    assert settings["prompt"]["text"] == load_prompt(COVER_PROMPT).text
    # Greedy and left-padded: a batch of three gives each item what it gets alone.
    alone = caption(covers, tiny_llava | {"batch_size": 1}, COVER_PROMPT, "cover_caption", tmp_path / "alone.parquet")
    assert alone["ok"] == 6
    assert pq.read_table(tmp_path / "alone.parquet").column("cover_caption").to_pylist() == text
    # A finished column is not redone.
    assert caption(covers, tiny_llava, COVER_PROMPT, "cover_caption", out)["ok"] == 6


def test_an_interrupted_column_resumes_and_reruns_reuse_every_caption(covers, tiny_llava, tmp_path, monkeypatch):
    whole = tmp_path / "whole" / "cover_caption.parquet"
    whole.parent.mkdir()
    caption(covers, tiny_llava, COVER_PROMPT, "cover_caption", whole)

    class Interrupted(Exception):
        pass

    def stop_after_first(batch):
        raise Interrupted

    out = tmp_path / "cover_caption.parquet"
    with pytest.raises(Interrupted):
        caption(covers, tiny_llava, COVER_PROMPT, "cover_caption", out, on_batch_done=stop_after_first)
    [work] = (tmp_path / ".cover_caption.work").iterdir()
    assert not out.exists() and sorted(p.name for p in work.glob("batch-*")) == ["batch-00000.parquet"]

    seen = []
    generate = caption_module.Captioner.__call__
    monkeypatch.setattr(caption_module.Captioner, "__call__", lambda self, v: seen.append(len(v)) or generate(self, v))
    report = caption(covers, tiny_llava, COVER_PROMPT, "cover_caption", out)
    # The 7 items with a cover file: [0, 1, 3] were done before; [4, 5, 6] (5 is unreadable) and [7] now.
    assert seen == [2, 1] and report["reused"] == 3
    assert pq.read_table(out).equals(pq.read_table(whole))

    # Snakemake deletes an output before re-running its job: every caption is reused.
    out.unlink()
    seen.clear()
    assert caption(covers, tiny_llava, COVER_PROMPT, "cover_caption", out)["reused"] == 7 and seen == []
    assert pq.read_table(out).equals(pq.read_table(whole))

    # Another prompt is other captions: its own work folder, every item captioned again.
    other = tmp_path / "other.yaml"
    other.write_text(COVER_PROMPT.read_text().replace("version: 1", "version: 2"))
    caption(covers, tiny_llava, other, "cover_caption", tmp_path / "v2.parquet")
    assert seen == [3, 2, 1] and len(list((tmp_path / ".cover_caption.work").iterdir())) == 1
    assert len(list((tmp_path / ".v2.work").iterdir())) == 1


def test_one_base_tile_per_image_and_the_context_is_checked(covers, tiny_llava, tmp_path, monkeypatch):
    sizes = []
    generate = caption_module.Captioner.__call__

    def spy(self, visuals):
        inputs = self.processor(images=visuals, text=[self.prompt] * len(visuals), padding=True, return_tensors="pt")
        sizes.append(tuple(inputs["pixel_values"].shape[:2]))
        return generate(self, visuals)

    monkeypatch.setattr(caption_module.Captioner, "__call__", spy)
    caption(covers, tiny_llava | {"anyres": False, "batch_size": 8}, COVER_PROMPT, "c", tmp_path / "base.parquet")
    assert sizes == [(6, 2)]  # 6 readable covers, each the base image and one tile (anyres: up to 5)
    with pytest.raises(CaptionError, match="exceeds the model's 8192-token context"):
        caption(covers, tiny_llava | {"max_new_tokens": 9000}, COVER_PROMPT, "c", tmp_path / "long.parquet")


def test_the_real_video_is_captioned_from_three_frames(covers, tiny_llava, tmp_path, monkeypatch):
    shared_path("microlens-sample", "videos", "10034.mp4")  # skips where the video is absent
    shown = []
    generate = caption_module.Captioner.__call__
    monkeypatch.setattr(caption_module.Captioner, "__call__",
                        lambda self, v: shown.extend(len(images) for images in v) or generate(self, v))
    report = caption(covers, tiny_llava | {"source": "video"}, VIDEO_PROMPT, "video_caption",
                     tmp_path / "video_caption.parquet")
    assert (report["ok"], report["missing"], report["unreadable"]) == (1, 7, 0)
    assert shown == [3]
    assert pq.read_table(tmp_path / "video_caption.parquet").column("video_caption")[0].as_py()
    with pytest.raises(CaptionError, match="is a prompt for videos, but the captioner describes images"):
        caption(covers, tiny_llava, VIDEO_PROMPT, "video_caption", tmp_path / "x.parquet")


def test_caption_columns_join_the_item_table(covers, tmp_path):
    items = pq.read_table(covers)
    cap = pa.table({"item_idx": items.column("item_idx"), "item_id": items.column("item_id"),
                    "cover_caption": [f"c{i}" if i != 2 else None for i in range(8)], "status": ["ok"] * 8})
    joined = join_captions(items, {Path("cover_caption.parquet"): cap})
    assert joined.column_names == items.column_names + ["cover_caption"]
    assert joined.column("cover_caption").to_pylist()[:3] == ["c0", "c1", None]
    with pytest.raises(DataError, match="written for another item table"):
        join_captions(items.slice(1), {Path("cover_caption.parquet"): cap})
