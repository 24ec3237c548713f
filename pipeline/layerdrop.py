"""Which hidden states a tower keeps (paper section III-E).

Indices are hidden-state indices: 0 is the embedding output, i is the output of block i (1-based),
so an L-block encoder has states 0..L. Only the kept states are encoded and stored.
"""


def all_states(num_layers: int) -> list[int]:
    return list(range(num_layers + 1))


def symmetric(num_layers: int) -> list[int]:
    """LayerDrop of IISAN-VS: drop every odd block, keep [0, 2, 4, ..., L]."""
    if num_layers % 2:
        raise ValueError(f"symmetric LayerDrop needs an even number of blocks, got {num_layers}")
    return list(range(0, num_layers + 1, 2))


def group(text_layers: int, image_layers: int) -> list[int]:
    """Group LayerDrop of IISAN-VA (the reference's lists; eq. 5 of the paper is off by one).

    n = L_image / 2 text blocks with stride k = floor((L_text - 1) / (n - 1)), counted down from
    the last block, plus the embedding output, so the text tower keeps as many states as the
    symmetric image tower.
    """
    n = image_layers // 2
    if n < 1 or n > text_layers:
        raise ValueError(f"group LayerDrop: cannot pick {n} of {text_layers} text blocks")
    if n == 1:
        return [0, text_layers]
    stride = (text_layers - 1) // (n - 1)
    blocks = sorted(text_layers - 1 - j * stride for j in range(n))  # 0-based block numbers
    return [0] + [b + 1 for b in blocks]


def check(states: list[int], num_layers: int, where: str) -> list[int]:
    """Validate an explicit list of kept states against an encoder's depth."""
    bad = [s for s in states if s < 0 or s > num_layers]
    if bad:
        raise ValueError(f"{where}: hidden-state indices {bad} out of range 0..{num_layers}")
    if sorted(set(states)) != list(states):
        raise ValueError(f"{where}: kept states must be strictly increasing, got {states}")
    return list(states)


def tag(states: list[int]) -> str:
    """Short, filename-safe name of a selection, e.g. h0-2-4-6."""
    return "h" + "-".join(str(s) for s in states)
