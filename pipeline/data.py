"""Leave-one-out splits and training windows from sequences.parquet."""
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq


class DataError(ValueError):
    pass


@dataclass
class EvalSplit:
    """One evaluation target per user: the encoder input, the full history before it, the target."""
    user_ids: list[str]
    inputs: np.ndarray  # [U, max_history] item indices, left padded with 0
    histories: list[np.ndarray]  # every item before the target, in order
    targets: np.ndarray  # [U]


    def sample(self, n: int | None, seed: int) -> "EvalSplit":
        """n users drawn without replacement (seeded), in their original order; all when n is None
        or not smaller than the split."""
        if n is None or n >= len(self.targets):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self.targets), size=n, replace=False))
        return EvalSplit([self.user_ids[r] for r in rows], self.inputs[rows], [self.histories[r] for r in rows],
                         self.targets[rows])


@dataclass
class Splits:
    train_windows: np.ndarray  # [W, max_history + 1] training windows, left padded
    item_counts: np.ndarray  # [N+1] frequency of each item in the training parts
    valid: EvalSplit
    test: EvalSplit
    num_items: int


def left_pad(seq, length: int) -> np.ndarray:
    seq = list(seq)[-length:]
    return np.array([0] * (length - len(seq)) + seq, dtype=np.int64)


def seen_matrix(histories: list[np.ndarray]) -> np.ndarray:
    """The distinct items of each history as rows of an int32 matrix [U, H], 0-padded."""
    distinct = [np.unique(h) for h in histories]
    lengths = np.array([len(h) for h in distinct], dtype=np.int64)
    out = np.zeros((len(distinct), max(1, int(lengths.max(initial=0)))), dtype=np.int32)
    if lengths.sum():
        rows = np.repeat(np.arange(len(distinct)), lengths)
        cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = np.concatenate(distinct)
    return out


def read_sequences(path) -> tuple[list[str], list[list[int]]]:
    table = pq.read_table(path)
    return table.column("user_id").to_pylist(), table.column("items").to_pylist()


def make_splits(user_ids: list[str], sequences: list[list[int]], num_items: int, max_history: int = 10,
                windows: str = "last") -> Splits:
    """Test target = last item, validation = second to last, training = the rest.

    Training windows (max_history + 1 items, left padded): `last`, each user's last training
    items (the reference's; every position of a window is a target); `all`, one window ending
    at each training item after the first (every prefix, as RecBole augments; the window's
    last position is its target)."""
    if windows not in ("last", "all"):
        raise ValueError(f"unknown windows {windows!r} (last or all)")
    rows, counts = [], np.zeros(num_items + 1, dtype=np.int64)
    short = [u for u, seq in zip(user_ids, sequences) if len(seq) < 3]
    if short:
        raise DataError(f"{len(short)} users (e.g. '{short[0]}') have fewer than 3 items; leave-one-out needs 3")
    for seq in sequences:
        train = seq[:-2]
        np.add.at(counts, train, 1)
        ends = [len(train)] if windows == "last" else range(2, len(train) + 1)
        for end in ends:
            if end >= 2:  # a window needs an input and a next item
                rows.append(left_pad(train[:end], max_history + 1))

    def split(offset: int) -> EvalSplit:
        histories = [np.array(s[:len(s) - offset], dtype=np.int64) for s in sequences]
        return EvalSplit(
            user_ids=list(user_ids),
            inputs=np.stack([left_pad(h, max_history) for h in histories]),
            histories=histories,
            targets=np.array([s[len(s) - offset] for s in sequences], dtype=np.int64),
        )

    train_windows = np.stack(rows) if rows else np.zeros((0, max_history + 1), dtype=np.int64)
    return Splits(train_windows, counts, split(2), split(1), num_items)
