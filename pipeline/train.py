"""train: IISAN-Versa (or a baseline) with early stopping on validation.

Cached methods read only the Zarr caches and the prepared tables; the uncached baselines load
their backbones and run them in every step. Writes, complete or not at all:
- model.safetensors: the best epoch's weights (validation train.select_metric, reference protocol);
- train_log.json: per-epoch loss, validation metrics, seconds and learning-rate factor, best
  epoch, whether training converged (stopped by patience before max_epochs; a run still
  improving at the cap is warned about), peak memory, parameter counts.

Usage: python -m pipeline.train --run JSON --items ITEMS.parquet --sequences SEQ.parquet --out-dir DIR
(--run is the resolved run from pipeline.config.resolve_run, as the Snakemake rule passes it.)
"""
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from pipeline.cache import CacheError, check_item_embeddings, read_states
from pipeline.data import DataError, make_splits, read_sequences
from pipeline.files import atomic_path, write_json
from pipeline.item_table import run_items
from pipeline.metrics import rank_split
from pipeline.models.build import build_model, count_parameters, make_optimizer, model_scorer
from pipeline.models.loss import log_popularity
from pipeline.models.recommender import train_step
from pipeline.runtime import device, device_name, parse_run_arguments, peak_memory_bytes, run_arguments


class TrainingError(RuntimeError):
    """Training that cannot give a usable model (a loss that is not a number)."""


def lr_factor(t: dict, steps_per_epoch: int):
    """The schedule as a function of the optimisation step: the factor on every group's rate."""
    warmup = t["warmup_epochs"] * steps_per_epoch
    total = t["max_epochs"] * steps_per_epoch

    def factor(step: int) -> float:
        if t["lr_schedule"] == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        if t["lr_schedule"] == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        return t["lr_step_gamma"] ** ((step - warmup) // (t["lr_step_epochs"] * steps_per_epoch))

    return factor


def train(run: dict, items_parquet: Path, sequences_parquet: Path, out_dir: Path, progress: bool = True) -> dict:
    t = run["train"]
    torch.manual_seed(t["seed"])
    rng = np.random.default_rng(t["seed"])
    dev = device()

    items = run_items(run, items_parquet)
    user_ids, sequences = read_sequences(sequences_parquet)
    splits = make_splits(user_ids, sequences, items.num_rows, t["max_history"], t["windows"])
    if len(splits.train_windows) == 0:
        raise DataError("no user has 2 training items (4 interactions): nothing to train on")
    model = build_model(run, splits.num_items, items, read_states(run, items, t["cache_memory_mb"])).to(dev)
    if t["compile"]:  # the encoders only: torch.unique and the losses' masks have data-dependent shapes
        model.item_encoder.compile(dynamic=True)
        model.user_encoder.compile(dynamic=True)
    optimizer = make_optimizer(model, t, dev)
    steps_per_epoch = math.ceil(len(splits.train_windows) / t["batch_size"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(t, steps_per_epoch))
    log_pop = log_popularity(splits.item_counts, dev)
    windows = torch.as_tensor(splits.train_windows, device=dev)
    valid_split = splits.valid.sample(t["validate_users"], t["seed"])

    def validate(epoch: int) -> dict:
        model.eval()
        item_embs = model.item_embeddings(splits.num_items)  # [N+1, d]
        check_item_embeddings(item_embs, f"epoch {epoch}", "check the caches and learning rates; no model was written")
        ranking = rank_split(model_scorer(model, item_embs), valid_split, splits.num_items, ks=[10],
                             protocols=["reference"], batch=t["eval_batch_size"], device=dev)
        return ranking.summary["reference"]

    select = t["select_metric"]
    history, best, best_epoch, best_state, stale = [], -math.inf, 0, None, 0
    epochs = tqdm(range(1, t["max_epochs"] + 1), desc=f"train {run['dataset']}/{run['run']}",
                  unit="epoch", disable=not progress)
    for epoch in epochs:
        model.train()
        start, losses = time.perf_counter(), []
        order = torch.as_tensor(rng.permutation(len(windows)), device=dev)
        for lo in range(0, len(windows), t["batch_size"]):
            losses.append(train_step(model, optimizer, windows[order[lo:lo + t["batch_size"]]], log_pop))
            schedule.step()
        seconds = time.perf_counter() - start
        loss = torch.stack(losses).mean().item()  # one read of the device per epoch
        if not math.isfinite(loss):
            raise TrainingError(f"epoch {epoch}: the training loss is {loss}; check the caches and learning rates")
        valid = validate(epoch)
        history.append({"epoch": epoch, "loss": loss, "seconds": round(seconds, 3),
                        "valid_seconds": round(time.perf_counter() - start - seconds, 3),
                        "lr_factor": round(schedule.get_last_lr()[0] / optimizer.param_groups[0]["initial_lr"], 6),
                        "valid_hr@10": valid["hr@10"], "valid_ndcg@10": valid["ndcg@10"]})
        epochs.set_postfix(loss=f"{loss:.3f}", **{select: f"{valid[select]:.4f}"}, best=best_epoch)
        if valid[select] > best:
            best, best_epoch, stale = valid[select], epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= t["patience"]:
                break

    if best_state is None:
        raise TrainingError(f"validation {select} was not a number in any of {len(history)} epochs; check the caches")
    # Converged: validation stopped improving for `patience` epochs before the cap.
    converged = stale >= t["patience"]
    if not converged:
        print(f"WARNING: {run['dataset']}/{run['run']} (seed {t['seed']}) did not converge: the {t['max_epochs']}-epoch "
              f"cap stopped it {stale} epochs after its best validation {select} (epoch {best_epoch}), before "
              f"{t['patience']} epochs without a gain; raise max_epochs or the learning rates", file=sys.stderr)
    trainable, total = count_parameters(model)
    best_row = history[best_epoch - 1]
    log = {
        "epochs": len(history),
        "best_epoch": best_epoch,
        "converged": converged,
        "select_metric": select,
        "best_valid_hr@10": best_row["valid_hr@10"],
        "best_valid_ndcg@10": best_row["valid_ndcg@10"],
        "seconds_per_epoch": statistics.median(h["seconds"] for h in history),
        "valid_seconds_per_epoch": statistics.median(h["valid_seconds"] for h in history),
        "peak_memory_bytes": peak_memory_bytes(dev),
        "trainable_params": trainable,
        "total_params": total,
        "device": device_name(dev),
        "train_windows": len(windows),
        "seed": t["seed"],
        "history": history,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp), metadata={"run": run["run"]})
    write_json(out_dir / "train_log.json", log)
    return log


def main(argv=None):
    parser = run_arguments(__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parse_run_arguments(parser, argv)
    try:
        log = train(args.run, args.items, args.sequences, args.out_dir)
    except (CacheError, DataError, TrainingError) as e:
        raise SystemExit(f"train: {e}")
    print(f"best epoch {log['best_epoch']} of {log['epochs']} ({'converged' if log['converged'] else 'NOT converged'}), "
          f"valid HR@10 {log['best_valid_hr@10']:.4f}, NDCG@10 {log['best_valid_ndcg@10']:.4f}, "
          f"{log['seconds_per_epoch']:.2f} s/epoch of training + {log['valid_seconds_per_epoch']:.2f} s of validation")


if __name__ == "__main__":
    main()
