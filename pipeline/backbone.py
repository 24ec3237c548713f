"""A frozen encoder (BERT, ViT, a decoder LLM, ...) that maps items to pooled kept states.

Loading follows the encoder's config entry:
- only blocks 1..deepest kept are built and loaded: the later blocks' weights are skipped and
  never run (early exit), and every stored state is the full model's at its index. The last
  state a model returns may have passed its final norm: transformers' output capturing is told
  not to substitute it, and an architecture that builds its hidden states by hand (Falcon,
  remote code) keeps one margin block instead. A decoder LLM is loaded without its LM head (the
  base model of AutoModel);
- dtype (float32 / float16 / bfloat16), quantisation (bitsandbytes 8-bit or 4-bit, or a GPTQ
  checkpoint through transformers' GPTQ integration with gptqmodel and optimum);
- device_map "auto" spreads a large model over the GPUs of a node (accelerate); otherwise the model
  goes to the one GPU, or the CPU when there is none.
"""
import importlib.util

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

from pipeline.files import model_path  # noqa: F401 (re-exported: where a model loads from)
from pipeline.pooling import POOLERS

LOAD_SIDE = 1024  # images are shrunk to at most this many pixels a side as they are loaded
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Modules after the last hidden state, absent from e.g. ViT classification checkpoints.
UNUSED_MODULES = ("pooler", "head")


class BackboneError(ValueError):
    """An encoder entry that does not match its checkpoint, or a missing optional package."""


def model_class(settings: dict):
    """The transformers class that loads the encoder: AutoModel (the base model, no task head) or
    a named class such as SiglipVisionModel for the vision tower of a two-tower checkpoint."""
    name = settings.get("model_class", "AutoModel")
    cls = getattr(transformers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise BackboneError(f"model_class '{name}' is not a transformers model class")
    return cls


def _captures_hidden_states(cls, config) -> bool:
    """Whether the class records hidden states with transformers' output capturing, which
    honours config.tie_last_hidden_states (so a cut model returns its last block's raw output)."""
    try:
        target = cls._model_mapping[type(config)] if hasattr(cls, "_model_mapping") else cls
    except KeyError:  # e.g. remote code registered at load time
        return False
    return "hidden_states" in (getattr(target, "_can_record_outputs", None) or {})


def _checkpoint_config(cls, path: str, trust_remote_code: bool = False):
    """The checkpoint's config, read by the config class that `cls` loads with."""
    config_cls = AutoConfig if cls.__name__.startswith("Auto") else cls.config_class
    return config_cls.from_pretrained(path, trust_remote_code=trust_remote_code)


def _load_config(cls, path: str, settings: dict, deepest: int):
    """The checkpoint's config, checked against the entry and cut after block `deepest`."""
    config = _checkpoint_config(cls, path, settings.get("trust_remote_code", False))
    layers = getattr(config, "num_hidden_layers", None)
    width = getattr(config, "hidden_size", None)
    if (layers, width) != (settings["layers"], settings["hidden_size"]):
        raise BackboneError(
            f"{path}: the model has {layers} layers x {width}, the config says "
            f"{settings['layers']} x {settings['hidden_size']}; fix the encoder entry"
        )
    captured = _captures_hidden_states(cls, config)
    keep = max(deepest if captured else deepest + 1, 1)  # a model needs a block to report state 0
    if keep < layers:
        config.num_hidden_layers = keep
        if isinstance(getattr(config, "layer_types", None), list):  # per-block attention kinds
            config.layer_types = config.layer_types[:keep]
        if captured:  # return the last block's own output, not the full model's final norm of it
            config.tie_last_hidden_states = False
    return config


def _require(module: str, extra: str, why: str):
    if importlib.util.find_spec(module) is None:
        raise BackboneError(f"{why} needs the '{module}' package: {extra} (README, LLM encoders and GPU nodes)")


def quantization_config(settings: dict, config, path: str, dtype: torch.dtype):
    """from_pretrained's quantization_config for the entry, or None."""
    method = settings.get("quantization")
    if method in ("bnb-8bit", "bnb-4bit"):
        _require("bitsandbytes", "pip install -e '.[quantization]'", f"quantization: {method}")
        if method == "bnb-8bit":
            return transformers.BitsAndBytesConfig(load_in_8bit=True)
        return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=dtype)
    if method == "gptq":
        found = getattr(config, "quantization_config", None) or {}
        found = found if isinstance(found, dict) else found.to_dict()
        if found.get("quant_method") != "gptq":
            raise BackboneError(f"{path}: quantization: gptq, but the checkpoint's config.json has no GPTQ "
                                f"quantization_config (found {found.get('quant_method')!r})")
        _require("gptqmodel", "make gptq", "a GPTQ checkpoint")
        _require("optimum", "make gptq", "a GPTQ checkpoint")
    return None  # a GPTQ checkpoint carries its own quantization_config


def load_model(settings: dict, deepest: int) -> torch.nn.Module:
    """The frozen encoder with blocks 1..deepest, in eval mode, on its device(s)."""
    path = model_path(settings)
    cls = model_class(settings)
    config = _load_config(cls, path, settings, deepest)
    dtype = DTYPES[settings.get("dtype", "float32")]
    quantization = quantization_config(settings, config, path, dtype)
    cuda = torch.cuda.is_available()
    if settings.get("device_map") == "auto" and cuda:
        device_map = "auto"
    elif settings.get("quantization"):
        device_map = "cuda:0" if cuda else "cpu"  # quantised weights are placed while loading
    else:
        device_map = None
    kwargs = {"config": config, "dtype": dtype, "trust_remote_code": settings.get("trust_remote_code", False)}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if device_map is not None:
        kwargs["device_map"] = device_map
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the skipped blocks and LM head are expected
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    # Weights the checkpoint lacks would be random: refuse, except heads no hidden state goes through.
    missing = [k for k in info["missing_keys"] if k.split(".")[0] not in UNUSED_MODULES]
    if missing:
        raise BackboneError(f"{path}: the checkpoint has no weights for {len(missing)} parameters of "
                            f"{type(model).__name__} (e.g. {', '.join(sorted(missing)[:3])}); "
                            f"check the entry's path and model_class")
    model.eval()
    if device_map is None:
        model.to(torch.device("cuda" if cuda else "cpu"))
    model.requires_grad_(False)
    return model


def parameter_count(path: str, model_class_name: str = "AutoModel") -> int:
    """Parameters of the whole base model at `path` (every block, no LM head), counted from its
    config on the meta device: no weights are read, and a quantised checkpoint counts its logical
    weights, not its packed ones."""
    cls = model_class({"model_class": model_class_name})
    config = _checkpoint_config(cls, path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # from_config would try to set up the quantiser
    with torch.device("meta"):
        model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    return sum(p.numel() for p in model.parameters())


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the inputs go: the device of the input embeddings (the first of a device map)."""
    try:
        return next(model.get_input_embeddings().parameters()).device
    except (NotImplementedError, AttributeError, StopIteration):
        return next(model.parameters()).device


def pooled_states(model, inputs: dict, states: list[int], pool, device: torch.device) -> torch.Tensor:
    """The model's kept hidden states, pooled: inputs on `device` -> [B, K, D] float32 on `device`."""
    batch = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    # Only the kept states are held (the others come back as None).
    hidden = model(**batch, output_hidden_states=states).hidden_states  # [B, T, D] or None
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones(hidden[states[0]].shape[:2], dtype=torch.long, device=device)
    # Under a device map the kept states may sit on several GPUs.
    return torch.stack([pool(hidden[s].float(), mask.to(hidden[s].device)).to(device) for s in states], dim=1)


class Backbone:
    """A frozen encoder that maps a list of items to pooled kept states [B, K, D]."""

    def __init__(self, settings: dict, states: list[int]):
        path = model_path(settings)
        self.settings, self.states = settings, list(states)
        self.modality = settings["modality"]
        self.column = settings.get("column", "title")  # the text a text encoder reads
        self.pool = POOLERS[settings["pooling"]]
        self.model = load_model(settings, deepest=max(states))
        self.device = input_device(self.model)
        if self.modality == "text":
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=settings.get("trust_remote_code", False))
            self.tokenizer.padding_side = "right"  # the poolers expect real tokens first
            if self.tokenizer.pad_token is None:  # decoder LLMs (Llama, Mistral) ship without one
                self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
            # The reference's unmasked mean averages over all max_length positions, so every
            # title is padded to max_length: the result must not depend on its batch-mates.
            self.padding = "max_length" if settings["pooling"] == "mean_unmasked" else True
        else:
            self.processor = AutoImageProcessor.from_pretrained(path)

    def tokens(self, items: list[dict]) -> tuple[dict, list[str]]:
        """A text encoder's tokenizer output (lists, truncated, unpadded) for the items with text,
        and a status per item (ok, or no_text: a caption that could not be generated)."""
        status = ["ok" if i[self.column] is not None else "no_text" for i in items]
        texts = [i[self.column] for i in items if i[self.column] is not None]
        encoded = self.tokenizer(texts, truncation=True, max_length=self.settings["max_length"]) if texts else {}
        return dict(encoded), status

    def collate(self, tokens: dict, rows) -> dict:
        """Rows of tokens(...) as one right-padded batch of tensors."""
        to_max = {"max_length": self.settings["max_length"]} if self.padding == "max_length" else {}
        return dict(self.tokenizer.pad({k: [v[r] for r in rows] for k, v in tokens.items()}, padding=self.padding,
                                       return_tensors="pt", **to_max))

    @staticmethod
    def load_image(item: dict):
        """(RGB image or None, status): status is ok, no_image or unreadable. An image is
        shrunk to at most LOAD_SIDE pixels a side as it is loaded (the processors resize to 224
        or so anyway): a JPEG is decoded at a reduced scale; a PNG (or other format) is decoded
        whole, once, and shrunk before the next image is opened, so a batch holds one full decode
        at most. One over PIL's decompression-bomb limit is unreadable, named in the log, like a
        broken file."""
        if not item["image"]:
            return None, "no_image"
        try:
            with Image.open(item["image"]) as im:
                im.draft("RGB", (LOAD_SIDE, LOAD_SIDE))  # JPEG: decode at a reduced scale
                im.thumbnail((LOAD_SIDE, LOAD_SIDE))
                return im.convert("RGB"), "ok"
        except (OSError, Image.DecompressionBombError) as e:
            print(f"item {item.get('item_id')}: image {item['image']} is unreadable ({e})")
            return None, "unreadable"

    def inputs(self, items: list[dict]) -> tuple[dict | None, list[str]]:
        """Model inputs for the usable items, and a status per item (ok, no_image, unreadable,
        no_text: a caption that could not be generated)."""
        if self.modality == "text":
            tokens, status = self.tokens(items)
            return (self.collate(tokens, range(len(tokens["input_ids"]))) if tokens else None), status
        loaded = [self.load_image(i) for i in items]
        images = [im for im, status in loaded if status == "ok"]
        inputs = dict(self.processor(images=images, return_tensors="pt")) if images else None
        return inputs, [status for _, status in loaded]

    @torch.inference_mode()
    def forward(self, inputs: dict) -> torch.Tensor:
        """Pooled kept states [B, K, D] (float32, on the model's device) of a batch of inputs."""
        return pooled_states(self.model, inputs, self.states, self.pool, self.device)

    def __call__(self, items: list[dict]) -> tuple[np.ndarray, list[str]]:
        """Pooled kept states [B_ok, K, D] of the usable items, and every item's status."""
        inputs, status = self.inputs(items)
        if inputs is None:
            return np.zeros((0, len(self.states), self.settings["hidden_size"]), np.float32), status
        return self.forward(inputs).cpu().numpy(), status
