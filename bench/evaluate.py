"""Evaluation runner throughput: simulated sessions per minute at concurrency 1 and k, against a local server.

Why: real evaluations talk to a served client, judge and therapist (vLLM, TGI) that batch concurrent requests,
so the runner's wall time should shrink with its concurrency until the server saturates. This bench serves the
scripted client and a scripted text therapist from an OpenAI-compatible FastAPI app on 127.0.0.1 whose every
request sleeps `--latency` seconds asynchronously (so the server is never the bottleneck), runs the same sessions
through `SessionRunner` at concurrency 1 (the baseline) and k in the same process, and prints the speed-up.
Target: speed-up >= 0.8 * k.

    python bench/evaluate.py                   # k = 8, 50 ms per request, 32 sessions
    python bench/evaluate.py --k 4 --latency 0.1

Results are printed and written to bench/out/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8, help="concurrency to compare with 1")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds each server request sleeps")
    parser.add_argument("--therapists", type=int, default=4, help="therapists (x 8 sample profiles = sessions)")
    parser.add_argument("--output", default=str(REPO / "bench" / "out" / "evaluate.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("inference.safety").setLevel(logging.ERROR)

    from huggingface_hub import constants

    from dataset_builder.tiny import serve_app
    from evaluation.config import EvalConfig, from_dict
    from evaluation.models import BackendPool
    from evaluation.runner import SessionRunner
    from evaluation.scripted import client_responder, openai_app, therapist_responder

    constants.HF_HUB_OFFLINE = False  # only 127.0.0.1 is contacted
    profiles = [
        json.loads(line)
        for line in (REPO / "dataset_builder" / "sample" / "profiles.jsonl").read_text().splitlines()
        if line.strip()
    ]
    app = openai_app({"client": client_responder, "therapist": therapist_responder}, latency=args.latency)
    results = {}
    with serve_app(app) as base_url, tempfile.TemporaryDirectory() as tmp:
        endpoint = {"backend": "endpoint", "base_url": base_url, "max_retries": 0, "max_concurrency": 64}
        for concurrency in (1, args.k):
            config = from_dict(
                EvalConfig,
                {
                    "output_dir": f"{tmp}/c{concurrency}",
                    "dataset": "unused",
                    "concurrency": concurrency,
                    "simulate": True,
                    "safety_use_embeddings": False,
                    "therapists": [
                        {"name": f"text-{i}", "model": {**endpoint, "model": "therapist"}, "strategy": "text"}
                        for i in range(args.therapists)
                    ],
                    "client_model": {**endpoint, "model": "client"},
                    "judge_model": {"backend": "scripted", "model": "judge"},
                },
            )
            runner = SessionRunner(config, config.output_dir, BackendPool())
            runner._detector()  # load outside the timed region
            start = time.perf_counter()
            paths = runner.run(profiles, progress=False)
            seconds = time.perf_counter() - start
            records = [json.loads(Path(p).read_text()) for p in paths]
            assert all(r["status"] == "complete" for r in records), [r["failure"] for r in records if r["failure"]]
            results[concurrency] = {
                "sessions": len(paths),
                "seconds": seconds,
                "per_minute": 60 * len(paths) / seconds,
            }
            print(
                f"concurrency {concurrency:>3}: {len(paths)} sessions in {seconds:6.2f}s = "
                f"{results[concurrency]['per_minute']:7.1f} sessions/min"
            )
    ratio = results[args.k]["per_minute"] / results[1]["per_minute"]
    target = 0.8 * args.k
    print(
        f"speed-up at concurrency {args.k}: {ratio:.2f}x (target >= {target:.1f}x) -> "
        f"{'OK' if ratio >= target else 'BELOW TARGET'}"
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {"k": args.k, "latency": args.latency, "results": results, "ratio": ratio, "target": target}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
