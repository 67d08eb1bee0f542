"""Bench `mirror build`: sessions/s and peak memory against a plain `Dataset.from_list` + `to_parquet` baseline.

The bundled sample is replicated to N sessions (new ids, same rendered faces), then both run in this process:

    python bench/build.py --sessions 1000

The baseline writes the same validated rows (images already embedded) to one parquet file and nothing else;
`mirror build` additionally validates every record and image, runs the filters and writes all four configs
(the `sft` config alone holds about 25 rows per session) and the card. The ratio says what that costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import measure


def replicate(raw_dir: Path, out_dir: Path, n_sessions: int) -> Path:
    """N sessions, each with its own image files (copies), so no step can profit from shared files."""
    records = [json.loads(line) for line in (raw_dir / "sessions.jsonl").read_text().splitlines() if line.strip()]
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "sessions.jsonl", "w", encoding="utf-8") as handle:
        for index in range(n_sessions):
            record = json.loads(json.dumps(records[index % len(records)]))
            record["id"] = f"{record['id']}-copy{index:05d}"
            for turn in record["turns"]:
                if turn["image"]:
                    target = Path("images") / f"copy{index:05d}" / Path(turn["image"]).name
                    (out_dir / target).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(raw_dir / turn["image"], out_dir / target)
                    turn["image"] = target.as_posix()
            handle.write(json.dumps(record) + "\n")
    shutil.copyfile(raw_dir / "profiles.jsonl", out_dir / "profiles.jsonl")
    shutil.copytree(raw_dir / "images", out_dir / "images", dirs_exist_ok=True)  # profile identity faces
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000, help="Number of sessions to build (>= 1000 for the bar).")
    parser.add_argument("--workdir", type=Path, default=None, help="Scratch folder (default: a temp dir).")
    args = parser.parse_args(argv)

    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    from dataset_builder.build import SAMPLE_DIR, build_dataset, render_faces
    from dataset_builder.schema import SESSION_FEATURES
    from dataset_builder.validation import ImagePolicy, validate_session

    disable_progress_bar()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mirror-bench-build-"))
    rendered = render_faces(SAMPLE_DIR, work / "sample-raw")
    raw = replicate(rendered, work / f"raw-{args.sessions}", args.sessions)

    # Rows for the baseline: the same records, validated and with images embedded, prepared outside the timing.
    policy = ImagePolicy()
    held = {"rows": [validate_session(json.loads(line), raw, policy) for line in (raw / "sessions.jsonl").open()]}
    gc.collect()

    def baseline():
        Dataset.from_list(held["rows"], features=SESSION_FEATURES).to_parquet(str(work / "baseline.parquet"))

    def ours():
        return build_dataset(raw, work / "mirror-out")

    _, base_s, base_mem = measure(baseline)
    held.clear()
    gc.collect()
    result, ours_s, ours_mem = measure(ours)
    n = args.sessions
    print(f"sessions: {n}  sft rows: {result.num_rows['sft']}  images per session: ~{_images_per_session(rendered):.1f}")
    print(f"baseline (from_list + to_parquet, sessions only): {n / base_s:8.1f} sessions/s  "
          f"peak +{base_mem / 2**20:7.1f} MiB")
    print(f"mirror build (validate + 4 configs + card):      {n / ours_s:8.1f} sessions/s  "
          f"peak +{ours_mem / 2**20:7.1f} MiB")
    print(f"ratio (mirror / baseline): time x{ours_s / base_s:.2f}, peak memory x{ours_mem / max(base_mem, 1):.2f}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def _images_per_session(raw: Path) -> float:
    records = [json.loads(line) for line in (raw / "sessions.jsonl").read_text().splitlines() if line.strip()]
    return sum(1 for r in records for t in r["turns"] if t["image"]) / len(records)


if __name__ == "__main__":
    main()
