"""Print the result targets of a sweep overlay, and with --table the candidates' validation
metrics from their results (python overlays/sweep.py [--table] [overlay.yaml]; default:
overlays/scientific-sweep.yaml, whose runs are on the scientific dataset)."""
import json
import sys
from pathlib import Path

import yaml

args = [a for a in sys.argv[1:] if a != "--table"]
overlay = Path(args[0] if args else Path(__file__).with_name("scientific-sweep.yaml"))
runs = yaml.safe_load(overlay.read_text())["runs"]
dataset = overlay.stem.removesuffix("-sweep")
if "--table" not in sys.argv:
    print(" ".join(f"results/{dataset}/{run}.json" for run in runs))
    sys.exit()
print("| run | valid HR@10 | valid NDCG@10 | best epoch / epochs | converged | s/epoch |")
print("|---|---|---|---|---|---|")
for run in runs:
    path = Path("results") / dataset / f"{run}.json"
    if not path.exists():
        print(f"| `{run}` | not run | | | | |")
        continue
    r = json.loads(path.read_text())
    v = r["metrics"]["valid"]
    print(f"| `{run}` | {100 * v['hr@10']:.2f} | {100 * v['ndcg@10']:.2f} | {r['best_epoch']} / {r['epochs']} | "
          f"{r['converged']} | {r['efficiency']['seconds_per_epoch'] or 0:.1f} |")
