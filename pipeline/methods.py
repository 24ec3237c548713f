"""The method registry: what each `runs.<name>.method` is made of.

Config validation, model building, evaluation and the Snakemake rules all read this table and
the properties below, never a method's name, so a method is added here (one METHODS entry, plus
its modules) and nowhere else. A method is a choice of
- item encoder, a kind of ITEM_ENCODERS: `iisan` (intra- and inter-modal SANs over the kept
  states), `last_state` (each tower's last kept state -> a head; the frozen backbone and the
  tuned baselines), `id` (learned item-ID embeddings), or none;
- user encoder, one of USER_ENCODERS: `sasrec` or `gru`, or none (a method that does not train);
- where the towers' states come from: the Zarr caches (`adapt` None), or backbones run inside
  every training step and adapted by `adapt` (pipeline/models/tuning.py: frozen, fft, bitfit,
  lora, adapter);
- which states a tower keeps: the run's LayerDrop selection, or only the last one.
pipeline/models/kinds.py maps each encoder kind to its class.
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ItemEncoderKind:
    """What an item encoder reads and allows."""
    content: bool  # reads the text and image towers' states (cached or in the loop)
    ablatable: bool = False  # has intra / inter SANs and gates for a run's `ablate` to remove
    learns_ids: bool = False  # one learned embedding per item: knows only the items it trained with


ITEM_ENCODERS = {
    "iisan": ItemEncoderKind(content=True, ablatable=True),
    "last_state": ItemEncoderKind(content=True),
    "id": ItemEncoderKind(content=False, learns_ids=True),
}
USER_ENCODERS = ("sasrec", "gru")
NO_ITEM_ENCODER = ItemEncoderKind(content=False)  # a method that does not train


@dataclass(frozen=True)
class Method:
    description: str
    item_encoder: str | None = None  # a key of ITEM_ENCODERS, or None
    user_encoder: str | None = None  # one of USER_ENCODERS, or None (nothing trains)
    adapt: str | None = None  # backbones in the loop, adapted so; None = cached states (content methods)
    last_state_only: bool = False  # keep only each tower's last state (not the LayerDrop selection)
    # `train` keys this method defaults to otherwise (a config's train block or a run's own wins)
    train_defaults: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.item_encoder not in (*ITEM_ENCODERS, None) or self.user_encoder not in (*USER_ENCODERS, None):
            raise ValueError(f"unknown encoder kind in {self}: item encoders are {', '.join(ITEM_ENCODERS)}, "
                             f"user encoders {', '.join(USER_ENCODERS)}")
        if (self.item_encoder is None) != (self.user_encoder is None):
            raise ValueError(f"{self}: a method that trains names both an item and a user encoder, one that "
                             f"does not names neither")

    @property
    def trains(self) -> bool:
        return self.user_encoder is not None

    @property
    def item_kind(self) -> ItemEncoderKind:
        return ITEM_ENCODERS[self.item_encoder] if self.item_encoder else NO_ITEM_ENCODER

    @property
    def content(self) -> bool:
        """Reads text and image towers (cached or in the loop)."""
        return self.item_kind.content

    @property
    def ablatable(self) -> bool:
        """A run's `ablate` can remove parts of its item encoder."""
        return self.item_kind.ablatable

    @property
    def learns_ids(self) -> bool:
        return self.item_kind.learns_ids

    @property
    def cached(self) -> bool:
        return self.content and self.adapt is None

    @property
    def uncached(self) -> bool:
        return self.content and self.adapt is not None

    @property
    def tunes_backbone(self) -> bool:
        """Trains weights inside its backbones (they must load in float32, unquantised)."""
        return self.adapt not in (None, "frozen")


def _tuned(adapt: str, what: str) -> Method:
    return Method(f"uncached: {what}; each tower's last state -> heads, as frozen", "last_state", "sasrec",
                  adapt=adapt, last_state_only=True)


# The ID baselines as RecBole (and the SASRec / GRU4Rec papers) train them.
ID_RECIPE = {"init": "normal", "dropout": 0.5, "lr_user": 1e-3, "loss": "full", "windows": "all"}

METHODS = {
    "iisan": Method("intra- and inter-modal SANs on the cached kept states (IISAN-Versa)", "iisan", "sasrec"),
    "frozen": Method("the last cached state of each tower -> heads; only heads and user encoder train",
                     "last_state", "sasrec"),
    "sasrec-id": Method("the SASRec user encoder over learned item-ID embeddings (IDRec)", "id", "sasrec",
                        train_defaults=ID_RECIPE),
    "gru4rec-id": Method("a GRU user encoder over learned item-ID embeddings (GRU4Rec)", "id", "gru",
                         train_defaults=ID_RECIPE),
    "popularity": Method("ranking by training counts; nothing trains"),
    "fft": _tuned("fft", "every backbone weight trains (full fine-tuning)"),
    "adapter": _tuned("adapter", "Houlsby adapters in the backbones train"),
    "lora": _tuned("lora", "rank-8 LoRA on the attention projections (peft) trains"),
    "bitfit": _tuned("bitfit", "the backbones' biases train"),
    "iisan-uncached": Method("IISAN with its frozen backbones in the loop instead of caches", "iisan", "sasrec",
                             adapt="frozen"),
}


def method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}' (known: {', '.join(METHODS)})") from None


def schema_description() -> str:
    """The `runs.<name>.method` documentation, from the table above."""
    return "; ".join(f"{name} = {m.description}" for name, m in METHODS.items()) + "."
