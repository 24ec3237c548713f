"""build_encoder: a random-initialised encoder saved like a real checkpoint (demo and tests).

The pipeline then loads it with from_pretrained like any hub model, so the real loading code runs.

Usage: python -m pipeline.build_encoder --settings JSON --out DIR
"""
import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import ViTConfig, ViTImageProcessor, ViTModel


def build_vit(settings: dict, out: Path) -> None:
    """settings: an encoder entry of config.yaml (layers, hidden_size and its build block)."""
    build = settings["build"]
    config = ViTConfig(
        hidden_size=settings["hidden_size"],
        num_hidden_layers=settings["layers"],
        num_attention_heads=build["num_attention_heads"],
        intermediate_size=build["intermediate_size"],
        patch_size=build["patch_size"],
        image_size=build["image_size"],
    )
    torch.manual_seed(build["seed"])
    model = ViTModel(config)
    processor = ViTImageProcessor(size={"height": build["image_size"], "width": build["image_size"]})
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


BUILDERS = {"vit": build_vit}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", required=True, help="the encoder's config entry as JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = json.loads(args.settings)
    BUILDERS[settings["build"]["architecture"]](settings, args.out)
    print(f"built a random {settings['build']['architecture']} at {args.out}")


if __name__ == "__main__":
    main()
