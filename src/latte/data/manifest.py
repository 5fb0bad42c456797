"""Caption manifests for text-to-video data: CSV with a header `path,caption`, or JSONL lines {"path", "caption"}."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from latte.errors import LatteError


def read_manifest(path: str | Path) -> list[tuple[str, str]]:
    """(video path as written, caption) pairs of a .csv or .jsonl manifest."""
    path = Path(path)
    if not path.is_file():
        raise LatteError(f"caption manifest {path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LatteError(f"{path} is not UTF-8 text (byte {exc.start}): save the manifest as UTF-8") from exc
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {"path", "caption"} - set(reader.fieldnames or ())
        if missing:
            raise LatteError(f"{path}: the CSV header needs columns path,caption "
                             f"(missing {', '.join(sorted(missing))})")
        pairs = []
        for row in reader:
            if not row["path"]:
                continue
            if not (row["caption"] or "").strip():
                raise LatteError(f"{path}:{reader.line_num}: {row['path']} has no caption")
            pairs.append((row["path"], row["caption"]))
        return pairs
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            pair = (str(entry["path"]), str(entry["caption"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LatteError(f"{path}:{number}: expected a JSON object with \"path\" and \"caption\"") from None
        if not pair[1].strip():
            raise LatteError(f"{path}:{number}: {pair[0]} has no caption")
        pairs.append(pair)
    return pairs
