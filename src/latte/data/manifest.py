"""Caption manifests for text-to-video data: CSV with a header `path,caption`, or JSONL lines {"path", "caption"}."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from latte.errors import LatteError


def read_manifest(path: str | Path) -> list[tuple[str, str]]:
    """(video path as written, caption) pairs of a .csv or .jsonl manifest."""
    path = Path(path)
    if not path.is_file():
        raise LatteError(f"caption manifest {path} not found")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"path", "caption"} - set(reader.fieldnames or ())
            if missing:
                raise LatteError(f"{path}: the CSV header needs columns path,caption "
                                 f"(missing {', '.join(sorted(missing))})")
            return [(row["path"], row["caption"] or "") for row in reader if row["path"]]
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            pairs.append((str(entry["path"]), str(entry["caption"])))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LatteError(f"{path}:{number}: expected a JSON object with \"path\" and \"caption\"") from None
    return pairs
