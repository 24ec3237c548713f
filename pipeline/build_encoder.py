"""build_encoder: a random-initialised model saved like a real checkpoint (demo, tests, benchmarks).

A ViT with its image processor; a decoder LLM (Llama, Mistral, Gemma, Mixtral, Qwen2) saved
with its LM head, as on the hub, and a byte-level BPE tokenizer trained from scratch (no pad
token, a BOS token first, like Llama's); or a tiny LLaVA-NeXT captioner (CLIP vision tower, a
Llama language model, the real LLaVA-NeXT processor with a chat template). The pipeline then
loads it with from_pretrained like any hub model, so the real loading code runs.

Usage: python -m pipeline.build_encoder --settings JSON --out DIR
"""
import argparse
import json
import shutil
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, ViTConfig, ViTImageProcessor, ViTModel

from pipeline.vocabulary import GENERIC, THEMES

LLM_CONFIGS = {"llama": "LlamaConfig", "mistral": "MistralConfig", "gemma": "GemmaConfig",
               "mixtral": "MixtralConfig", "qwen2": "Qwen2Config"}


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
    _save(out, model, processor)


def _save(out: Path, *parts) -> None:
    """save_pretrained each part into out, complete or not at all."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in parts:
        part.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def train_tokenizer(vocab_size: int, corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text, no unknown tokens) trained on `corpus`, by default
    the demo's title words."""
    corpus = corpus or [" ".join(words) for words in THEMES] + GENERIC
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def llm_config(settings: dict, vocab_size: int):
    """The transformers config of a random decoder LLM with the entry's shape."""
    build = settings["build"]
    heads = build["num_attention_heads"]
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=settings["hidden_size"], num_hidden_layers=settings["layers"],
        num_attention_heads=heads, num_key_value_heads=build.get("num_key_value_heads") or heads,
        head_dim=settings["hidden_size"] // heads, intermediate_size=build["intermediate_size"],
        max_position_embeddings=max(128, settings.get("max_length", 30)), bos_token_id=1, eos_token_id=2,
    )
    if build["architecture"] == "mixtral":
        kwargs.update(num_local_experts=build.get("num_local_experts", 4), num_experts_per_tok=2)
    return getattr(transformers, LLM_CONFIGS[build["architecture"]])(**kwargs)


def build_llm(settings: dict, out: Path, corpus: list[str] | None = None, device: str = "cpu",
              dtype: torch.dtype = torch.float32) -> None:
    """A random decoder LLM with its LM head (as hub checkpoints are) and its tokenizer.
    device and dtype: where and in what the weights are made (an 8B model is made fastest on a GPU)."""
    build = settings["build"]
    tokenizer = train_tokenizer(build.get("vocab_size", 1000), corpus)
    torch.manual_seed(build["seed"])
    with torch.device(device):
        # Spare rows, as hub checkpoints have: a family's own tokenizer class (Qwen2's) adds tokens.
        model = transformers.AutoModelForCausalLM.from_config(llm_config(settings, len(tokenizer) + 16), dtype=dtype)
    _save(out, model, tokenizer)


# A Mistral-instruct style template, as llava-v1.6-mistral-7b-hf ships: images, then the prompt.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    " [/INST]{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}"
)


def build_llava_next(settings: dict, out: Path) -> None:
    """A random LLaVA-NeXT for image-text-to-text generation, with its real processor (anyres
    tiling over a 32-pixel base grid, so a cover is 5 small tiles) and a chat template."""
    build = settings["build"]
    tokenizer = train_tokenizer(build["vocab_size"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.pad_token = tokenizer.unk_token
    size, patch = 32, 8
    pinpoints = [[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=size, patch_size=patch)
    heads = 4
    text = transformers.LlamaConfig(
        vocab_size=len(tokenizer) + 16, hidden_size=build["hidden_size"], num_hidden_layers=build["layers"],
        num_attention_heads=heads, num_key_value_heads=2, head_dim=build["hidden_size"] // heads,
        intermediate_size=2 * build["hidden_size"], max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2, pad_token_id=tokenizer.pad_token_id)
    config = transformers.LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints, vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(build["seed"])
    model = transformers.LlavaNextForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_grid_pinpoints=pinpoints)
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE, image_token="<image>", num_additional_image_tokens=1)
    _save(out, model, processor)


BUILDERS = {"vit": build_vit, "llava_next": build_llava_next, **{name: build_llm for name in LLM_CONFIGS}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", required=True, help="the encoder's (or captioner's) config entry as JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = json.loads(args.settings)
    BUILDERS[settings["build"]["architecture"]](settings, args.out)
    print(f"built a random {settings['build']['architecture']} at {args.out}")


if __name__ == "__main__":
    main()
