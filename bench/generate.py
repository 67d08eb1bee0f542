"""Bench `mirror generate`: sessions per minute at concurrency 1 and k against a local OpenAI-compatible endpoint.

A scripted FastAPI server on 127.0.0.1 (dataset_builder.tiny.make_chat_app) answers every request after a
simulated latency (default 0.3 s, `--latency`), with a real-format screenplay for screenplay requests and an
expression pair for expression requests; it handles concurrent requests concurrently, as vLLM or TGI do. Both
runs generate the same sessions (the bundled sample's clients x resistance styles) in this process, each into a
fresh folder with an empty LLM cache, embedded-renderer faces, text filters and dialogue safety (image filters
off). Only `llm.max_concurrency` differs, so the ratio is what bounded concurrency buys against a server. The LLM
stages (screenplays, then every client turn's expressions, turns in parallel too) and the faces + filters (CPU
work that does not depend on the endpoint) are timed apart, and both ratios printed:

    python bench/generate.py --sessions 16 --concurrency 8 --latency 0.3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import measure

SCREENPLAY = """Client: [Sits with arms folded, looking at the floor]
Therapist: Thanks for coming in today. What would you like us to focus on?
Client: [Shrugs, avoids eye contact] I'm not sure this will help, honestly.
Therapist: That's fair to say; what made you decide to come anyway?
Client: [Sighs, glances up briefly] Things at work keep piling up and I keep thinking I'll fail.
Therapist: Let's look at that thought together: what happened the last time work piled up?
Client: [Pauses, brow furrowed] I got through it, I suppose, but only just.
Therapist: Would you try noting each finished task this week, as a small experiment?
Client: [Small nod, arms loosening] I can try that."""
EXPRESSION = (
    "Expression: gaze lowered, brows drawn together, lips pressed\nContrast: steady gaze, relaxed brows, soft smile"
)


def respond(body: dict) -> str:
    system = body["messages"][0]["content"]
    return EXPRESSION if "facial expressions" in system else SCREENPLAY


def run(base_url: str, root: Path, name: str, sessions: int, concurrency: int) -> dict:
    """One generation, timed in two parts: the LLM stages (what concurrency changes) and faces + filters (CPU)."""
    from dataset_builder.generate import GenerateConfig, generate

    styles = ["none", "emotional", "cognitive", "behavioral"]
    profiles = -(-sessions // len(styles))
    config = GenerateConfig.from_dict(
        {
            "output_dir": str(root / name),
            "profiles": "sample",
            "max_profiles": profiles,
            "resistance_styles": styles,
            "llm": {"model": "bench-scripted", "base_url": base_url, "max_concurrency": concurrency},
            "image_filters": False,
            "shard_size": 8,
        }
    )
    _, text_seconds, text_peak = measure(lambda: generate(config, stages=["text"]))
    report, rest_seconds, rest_peak = measure(lambda: generate(config, stages=["faces", "filters"]))
    done = report["counts"]["screenplays_usable"]
    seconds = text_seconds + rest_seconds
    return {
        "concurrency": concurrency,
        "sessions": done,
        "seconds": round(seconds, 2),
        "sessions_per_minute": round(60 * done / seconds, 2),
        "llm_stage_seconds": round(text_seconds, 2),
        "llm_stage_sessions_per_minute": round(60 * done / text_seconds, 2),
        "faces_filters_seconds": round(rest_seconds, 2),
        "peak_rss_mib": round(max(text_peak, rest_peak) / 2**20, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=16, help="Sessions per run (rounded up to whole clients).")
    parser.add_argument("--concurrency", type=int, default=8, help="k: parallel requests of the second run.")
    parser.add_argument("--latency", type=float, default=0.3, help="Simulated seconds per request.")
    args = parser.parse_args()

    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = False  # the bench only talks to 127.0.0.1

    from dataset_builder.tiny import make_chat_app, serve_app

    app = make_chat_app(respond, latency=args.latency)
    with serve_app(app) as base_url, tempfile.TemporaryDirectory(prefix="mirror-bench-generate-") as tmp:
        root = Path(tmp)
        baseline = run(base_url, root, "c1", args.sessions, 1)
        candidate = run(base_url, root, f"c{args.concurrency}", args.sessions, args.concurrency)
    ratio = candidate["sessions_per_minute"] / baseline["sessions_per_minute"]
    llm_ratio = candidate["llm_stage_sessions_per_minute"] / baseline["llm_stage_sessions_per_minute"]
    result = {
        "latency_s": args.latency,
        "requests": app.state.num_requests,
        "baseline": baseline,
        "candidate": candidate,
        "speedup": round(ratio, 2),
        "llm_stage_speedup": round(llm_ratio, 2),
    }
    for row in (baseline, candidate):
        print(
            f"concurrency {row['concurrency']:>3}: {row['sessions']} sessions in {row['seconds']:.1f}s = "
            f"{row['sessions_per_minute']:.1f} sessions/min; LLM stages {row['llm_stage_seconds']:.1f}s = "
            f"{row['llm_stage_sessions_per_minute']:.1f} sessions/min; faces + filters {row['faces_filters_seconds']:.1f}s"
        )
    print(
        f"ratio concurrency {args.concurrency} / concurrency 1: x{ratio:.2f} sessions per minute end to end, "
        f"x{llm_ratio:.2f} in the LLM stages (faces on the CPU do not depend on the endpoint)"
    )
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "generate.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
