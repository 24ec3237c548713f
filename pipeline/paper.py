"""The paper's published numbers (paper/values.yaml), which the tables and figures show beside ours."""
from pathlib import Path

import yaml

VALUES = Path(__file__).resolve().parent.parent / "paper" / "values.yaml"


def paper_values(table: str, path: Path = VALUES) -> dict:
    """{dataset: {row key: {metric: value}}} of one table, as published."""
    return yaml.safe_load(Path(path).read_text()).get(table, {})
