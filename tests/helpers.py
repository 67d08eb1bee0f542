"""Small shared helpers for tests: raw-record folders with simple images (no renderer needed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from PIL import Image

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "dataset_builder" / "sample"


def sample_records(n: int | None = None) -> list[dict]:
    records = [json.loads(line) for line in (SAMPLE_DIR / "sessions.jsonl").read_text().splitlines() if line.strip()]
    return copy.deepcopy(records[:n] if n else records)


def sample_profiles() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE_DIR / "profiles.jsonl").read_text().splitlines() if line.strip()]


def with_images(records: list[dict], raw_dir: Path) -> list[dict]:
    """Give every client turn a small PNG file under raw_dir/images (colour derived from the turn)."""
    (raw_dir / "images").mkdir(parents=True, exist_ok=True)
    for r_index, record in enumerate(records):
        for t_index, turn in enumerate(record["turns"]):
            if turn["speaker"] == "client":
                relative = f"images/{record['id']}-{t_index:02d}.png"
                Image.new("RGB", (48, 48), (r_index * 10 % 256, t_index * 20 % 256, 128)).save(raw_dir / relative)
                turn["image"] = relative
    return records


def write_raw(raw_dir: Path, records: list[dict], profiles: list[dict] | None = None) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "sessions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if profiles is not None:
        (raw_dir / "profiles.jsonl").write_text("".join(json.dumps(p) + "\n" for p in profiles), encoding="utf-8")
    return raw_dir
