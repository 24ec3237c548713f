"""Which hidden states a tower keeps (paper section III-E, Tables VII and VIII).

Indices are hidden-state indices: 0 is the embedding output, i is the output of block i (1-based),
so an L-block encoder has states 0..L. Every scheme keeps the embedding output (the first
SANB's input); an explicit list is taken as given. Only the kept states are encoded and stored.

A tower's selection is written as in Table VIII:
- `all`: every block (w/o LayerDrop);
- `symmetric`: the even-numbered blocks 2, 4, ..., L (IISAN-VS);
- `n(scheme)`: n blocks chosen by a scheme:
  - `even_all`: evenly spread over all blocks, counted down from the last one with stride
    floor((L - 1) / (n - 1)) (the reference's group LayerDrop);
  - `top` / `down`: the last n / the first n blocks;
  - `even_topM` / `even_downM` (e.g. `even_top12`): evenly spread, as even_all, over the top /
    bottom M blocks;
- an explicit list of hidden-state indices, e.g. [0, 5, 20, 35, 50, 65, 80].
"""
import re

SPEC = re.compile(r"^(\d+)\((even_all|top|down|even_top\d+|even_down\d+)\)$")


def all_states(num_layers: int) -> list[int]:
    return list(range(num_layers + 1))


def symmetric(num_layers: int) -> list[int]:
    """LayerDrop of IISAN-VS: drop every odd block, keep [0, 2, 4, ..., L]."""
    if num_layers % 2:
        raise ValueError(f"symmetric LayerDrop needs an even number of blocks, got {num_layers}")
    return list(range(0, num_layers + 1, 2))


def _even(first: int, last: int, n: int) -> list[int]:
    """n blocks evenly spread over blocks first..last (1-based), counted down from `last`."""
    span = last - first + 1
    if not 1 <= n <= span:
        raise ValueError(f"cannot pick {n} of {span} blocks")
    if n == 1:
        return [last]
    stride = (span - 1) // (n - 1)
    return sorted(last - j * stride for j in range(n))


def blocks(num_layers: int, n: int, scheme: str) -> list[int]:
    """The 1-based blocks that `n(scheme)` keeps of an encoder with `num_layers` blocks."""
    if not 1 <= n <= num_layers:
        raise ValueError(f"{n}({scheme}): cannot keep {n} of {num_layers} blocks")
    if scheme == "even_all":
        return _even(1, num_layers, n)
    if scheme == "top":
        return list(range(num_layers - n + 1, num_layers + 1))
    if scheme == "down":
        return list(range(1, n + 1))
    part = re.fullmatch(r"even_(top|down)(\d+)", scheme)
    if part:
        m = int(part.group(2))
        if not n <= m <= num_layers:
            raise ValueError(f"{n}({scheme}): needs {n} <= {m} <= {num_layers} blocks")
        first, last = (num_layers - m + 1, num_layers) if part.group(1) == "top" else (1, m)
        return _even(first, last, n)
    raise ValueError(f"unknown LayerDrop scheme '{scheme}'")


def group(layers: int, other_layers: int) -> list[int]:
    """Group LayerDrop of IISAN-VA for the deeper tower (the reference's lists; eq. 5 of the
    paper is off by one): n = L_other / 2 blocks, evenly spread over all blocks (`n(even_all)`),
    so it keeps as many states as the other, symmetric tower."""
    n = other_layers // 2
    try:
        return [0] + blocks(layers, n, "even_all")
    except ValueError as e:
        raise ValueError(f"group LayerDrop: {e}") from None


def check(states: list[int], num_layers: int, where: str) -> list[int]:
    """Validate an explicit list of kept states against an encoder's depth."""
    bad = [s for s in states if s < 0 or s > num_layers]
    if bad:
        raise ValueError(f"{where}: hidden-state indices {bad} out of range 0..{num_layers}")
    if sorted(set(states)) != list(states):
        raise ValueError(f"{where}: kept states must be strictly increasing, got {states}")
    return list(states)


def from_spec(spec, num_layers: int, where: str) -> list[int]:
    """Kept states for one tower from its spec: `all`, `symmetric`, `n(scheme)` or a list."""
    if isinstance(spec, list):
        return check(spec, num_layers, where)
    if spec == "all":
        return all_states(num_layers)
    if spec == "symmetric":
        return symmetric(num_layers)
    match = SPEC.match(str(spec))
    if not match:
        raise ValueError(f"{where}: '{spec}' is not all, symmetric, n(scheme) or a list of indices "
                         f"(schemes: even_all, top, down, even_topM, even_downM)")
    try:
        return [0] + blocks(num_layers, int(match.group(1)), match.group(2))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def tag(states: list[int]) -> str:
    """Short, filename-safe name of a selection, e.g. h0-2-4-6."""
    return "h" + "-".join(str(s) for s in states)
