"""Reports: per therapist and per resistance style, means with bootstrap confidence intervals and
`percent_parseable`; JSON, a markdown table and PNG plots; `model-index` results for model cards.

The JSON layout is documented in evaluation/README.md. Unparseable judge answers are missing values: they lower
`percent_parseable`, never the mean.
"""

from __future__ import annotations

import datetime
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dataset_builder.files import atomic_write

REPORT_SCHEMA_VERSION = 1
CTRS_ITEMS = ("understanding", "interpersonal_effectiveness", "collaboration", "guided_discovery", "focus", "strategy")
ALLIANCE_ITEMS = ("goal", "task", "bond")
CTRS_KEYS = [f"ctrs/{item}" for item in CTRS_ITEMS]
ALLIANCE_KEYS = [f"alliance/{item}" for item in ALLIANCE_ITEMS]
GROUPS = {"ctrs/general": CTRS_KEYS[:3], "ctrs/cbt": CTRS_KEYS[3:], "alliance/mean": ALLIANCE_KEYS}
REFERENCE_METRICS = ("semantic_similarity", "rouge_l", "distinct_1", "distinct_2", "caption_similarity")

LABELS = {
    **{f"ctrs/{item}": f"CTRS {item.replace('_', ' ')}" for item in CTRS_ITEMS},
    "ctrs/general": "CTRS general (mean of 3)",
    "ctrs/cbt": "CTRS CBT (mean of 3)",
    **{f"alliance/{item}": f"Alliance {item}" for item in ALLIANCE_ITEMS},
    "alliance/mean": "Alliance (mean of 3)",
    "panas/positive_change": "PANAS positive affect change (after - before)",
    "panas/negative_change": "PANAS negative affect change (after - before)",
}


def bootstrap_ci(values: list[float], samples: int = 1000, confidence: float = 0.95, seed: int = 0):
    """(mean, low, high); the interval is None with fewer than two values, everything None with none."""
    if not values:
        return None, None, None
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2 or samples < 1:
        return mean, None, None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(samples, len(data)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return mean, float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def session_scores(judgement: dict[str, Any]) -> dict[str, tuple[float | None, int, int]]:
    """Headline scores of one judged session: key -> (value or None, parsed answers, asked answers)."""
    items = judgement["items"]
    out: dict[str, tuple[float | None, int, int]] = {}
    for key in CTRS_KEYS + ALLIANCE_KEYS:
        if key in items:
            value = items[key]["score"]
            out[key] = (value, int(value is not None), 1)
    for key, names in GROUPS.items():
        values = [items[name]["score"] for name in names if name in items]
        if values:  # a group score needs every item: a mean of the readable ones would shift with parse failures
            parsed = sum(v is not None for v in values)
            out[key] = (float(np.mean(values)) if parsed == len(values) else None, parsed, len(values))
    for polarity in ("positive", "negative"):
        keys = [k for k, v in items.items() if k.startswith("panas/before/") and v["group"] == polarity]
        if not keys:
            continue
        changes, parsed = [], 0
        for key in keys:
            before, after = items[key]["score"], (items.get(key.replace("/before/", "/after/")) or {}).get("score")
            parsed += (before is not None) + (after is not None)
            if before is not None and after is not None:
                changes.append(after - before)
        out[f"panas/{polarity}_change"] = (float(np.mean(changes)) if changes else None, parsed, 2 * len(keys))
    return out


def _summary(per_session: list[tuple[float | None, int, int]], settings: Any) -> dict[str, Any]:
    values = [v for v, _, _ in per_session if v is not None]
    asked = sum(n for _, _, n in per_session)
    mean, low, high = bootstrap_ci(values, settings.bootstrap_samples, settings.confidence, settings.seed)
    return {
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "n": len(values),
        "n_sessions": len(per_session),
        "percent_parseable": 100.0 * sum(p for _, p, _ in per_session) / asked if asked else None,
    }


def _scores_for(judgements: list[dict[str, Any]], settings) -> dict[str, Any]:
    collected: dict[str, list] = {}
    for judgement in judgements:
        for key, value in session_scores(judgement).items():
            collected.setdefault(key, []).append(value)
    return {key: _summary(values, settings) for key, values in collected.items()}


def _items_for(judgements: list[dict[str, Any]]) -> dict[str, Any]:
    items: dict[str, Any] = {}
    for judgement in judgements:
        for key, item in judgement["items"].items():
            entry = items.setdefault(key, {"rubric": item["rubric"], "values": [], "asked": 0})
            entry["asked"] += 1
            if item["score"] is not None:
                entry["values"].append(item["score"])
    return {
        key: {
            "rubric": e["rubric"],
            "mean": float(np.mean(e["values"])) if e["values"] else None,
            "n": len(e["values"]),
            "percent_parseable": 100.0 * len(e["values"]) / e["asked"],
        }
        for key, e in items.items()
    }


def build_report(
    config: Any,
    sessions: dict[str, list[dict[str, Any]]],
    judgements: dict[str, list[dict[str, Any]]],
    reference: dict[str, dict[str, Any] | None],
) -> dict[str, Any]:
    """The report dict. `sessions`/`judgements`: therapist -> records; `reference`: therapist -> result or None.
    Each judgement carries `resistance` (copied from its session)."""
    settings = config.report
    therapists: dict[str, Any] = {}
    for spec in config.therapists:
        records = sessions.get(spec.name, [])
        judged = judgements.get(spec.name, [])
        statuses = Counter(r["status"] for r in records)
        complete = [r for r in records if r["status"] == "complete"]
        client_turns = [t for r in records for t in r["turns"] if t["speaker"] == "client"]
        styles = sorted({j["resistance"] for j in judged if j.get("resistance")})
        ref = reference.get(spec.name)
        # Plans the therapist model wrote itself (not taken from the profile): how many could not be parsed.
        generated = [r["plan"] for r in records if (r.get("plan") or {}).get("source") == "generated"]
        plan_failures = [not (plan["technique_parsed"] and plan["plan_parsed"]) for plan in generated]
        therapists[spec.name] = {
            "model": spec.model.model,
            "backend": spec.model.backend,
            "strategy": records[0]["strategy"] if records else spec.strategy,
            "sessions": {
                "total": len(records),
                **{status: statuses[status] for status in ("complete", "failed", "error")},
                "failure_reasons": dict(Counter(r["failure"]["reason"] for r in records if r.get("failure"))),
                "mean_turns": float(np.mean([r["num_turns"] for r in complete])) if complete else None,
                "ended_by_client": sum(r.get("end_reason") == "client_end" for r in complete),
                "client_turns": len(client_turns),
                "client_retries": sum(len(t.get("client_attempts") or [1]) - 1 for t in client_turns),
                "unverified_faces": sum(1 for t in client_turns if t.get("face") and not t["face"]["verified"]),
                "crisis_flags": sum(1 for t in client_turns if (t.get("safety") or {}).get("is_risk")),
                "plans_generated": len(generated),
                "plan_parse_failure_rate": sum(plan_failures) / len(plan_failures) if plan_failures else None,
            },
            "scores": _scores_for(judged, settings),
            "by_resistance": {
                style: _scores_for([j for j in judged if j.get("resistance") == style], settings) for style in styles
            },
            "items": _items_for(judged),
            "reference": None if ref is None else {"overall": ref["overall"], "by_resistance": ref["by_resistance"]},
        }
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": {
            "output_dir": str(config.output_dir),
            "dataset": config.dataset,
            "dataset_id": config.report.dataset_id or config.dataset,
            "profiles_config": config.profiles_config,
            "profiles_split": config.profiles_split,
            "reference_split": config.reference.split if config.reference.enabled else None,
            "client_model": config.client_model.model if config.client_model else None,
            "judge_model": config.judge_model.model if config.judge_model else None,
            "confidence": config.report.confidence,
            "bootstrap_samples": config.report.bootstrap_samples,
            "notes": list(config.report.notes),
        },
        "labels": LABELS,
        "therapists": therapists,
    }


def _fmt(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("mean") is None:
        pp = summary.get("percent_parseable") if summary else None
        return "n/a" + (f" ({pp:.0f}% parseable)" if pp is not None else "")
    text = f"{summary['mean']:.2f}"
    if summary.get("ci_low") is not None:
        text += f" [{summary['ci_low']:.2f}, {summary['ci_high']:.2f}]"
    if summary.get("percent_parseable") is not None:
        text += f" ({summary['percent_parseable']:.0f}%)"
    return text


def headline_keys(report: dict[str, Any]) -> list[str]:
    keys = dict.fromkeys(key for data in report["therapists"].values() for key in data["scores"])
    order = list(LABELS)
    return sorted(keys, key=lambda k: order.index(k) if k in order else len(order))


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown section after a blank line: `## title`, a blank line, then a table of `header` and `rows`."""
    row_lines = ["| " + " | ".join(map(str, row)) + " |" for row in [header, *rows]]
    return ["", f"## {title}", "", row_lines[0], "|" + "---|" * len(header), *row_lines[1:]]


def to_markdown(report: dict[str, Any]) -> str:
    keys, therapists = headline_keys(report), report["therapists"]
    confidence = round(report["run"]["confidence"] * 100)
    lines = [
        "# MIRROR evaluation report",
        "",
        f"Dataset `{report['run']['dataset']}`, client `{report['run']['client_model']}`, judge "
        f"`{report['run']['judge_model']}`. Cells: mean [{confidence}% bootstrap CI] (percent of judge answers "
        "parseable). Unparseable answers are missing values, not zeros.",
    ]
    if report["run"]["notes"]:
        lines += ["", *(f"> {note}" for note in report["run"]["notes"])]
    columns = ("total", "complete", "failed", "error")
    sessions = [
        [name, d["strategy"], *(d["sessions"][k] for k in columns), _num(d["sessions"]["mean_turns"], ".1f")]
        for name, d in therapists.items()
    ]
    lines += _table("Sessions", ["therapist", "strategy", "sessions", *columns[1:], "mean turns"], sessions)
    if keys:
        scores = [[name, *(_fmt(d["scores"].get(k)) for k in keys)] for name, d in therapists.items()]
        lines += _table("Judge scores", ["therapist", *keys], scores)
        by_style = [
            [name, style, *(_fmt(style_scores.get(k)) for k in keys)]
            for name, d in therapists.items()
            for style, style_scores in d["by_resistance"].items()
        ]
        lines += _table("By resistance style", ["therapist", "resistance", *keys], by_style)
    reference = [
        [name, d["reference"]["overall"].get("n_turns", 0)]
        + [_num(d["reference"]["overall"].get(m), ".3f") for m in REFERENCE_METRICS]
        for name, d in therapists.items()
        if d["reference"]
    ]
    if reference:
        title = "Reference metrics (next turn given the gold history)"
        lines += _table(title, ["therapist", "turns", *REFERENCE_METRICS], reference)
    return "\n".join(lines) + "\n"


# PNG -> (metrics, title, y range: the rubric's full scale, so bars of different runs compare at a glance)
FIGURES = {
    "ctrs.png": (CTRS_KEYS, "CTRS items (0-6)", (0, 6)),
    "alliance.png": (ALLIANCE_KEYS, "Working alliance (1-7)", (0, 7)),
    "panas.png": (["panas/positive_change", "panas/negative_change"], "PANAS change after the session", None),
}


def plot_data(report: dict[str, Any]) -> dict[str, Any]:
    """What each PNG shows (kept in the JSON so plots and numbers can be checked against each other)."""
    names = list(report["therapists"])
    scores = [report["therapists"][n]["scores"] for n in names]
    out = {}
    for filename, (keys, _, _) in FIGURES.items():
        if any(k in s for s in scores for k in keys):
            out[filename] = {"therapists": names, "metrics": keys}
            for field in ("mean", "ci_low", "ci_high"):
                out[filename][field] = [[s.get(k, {}).get(field) for k in keys] for s in scores]
    return out


def _draw(filename: str, data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, names = data["metrics"], data["therapists"]
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4), dpi=100)
    x = np.arange(len(keys))
    for index, name in enumerate(names):
        means = [v if v is not None else math.nan for v in data["mean"][index]]
        err = [
            [m - lo if lo is not None and m == m else 0 for m, lo in zip(means, data["ci_low"][index], strict=True)],
            [hi - m if hi is not None and m == m else 0 for m, hi in zip(means, data["ci_high"][index], strict=True)],
        ]
        ax.bar(x + index * width - 0.4 + width / 2, means, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(
        x, [LABELS.get(k, k).replace("CTRS ", "").replace("Alliance ", "") for k in keys], rotation=20, ha="right"
    )
    _, title, y_range = FIGURES[filename]
    ax.set_title(title)
    if y_range:
        ax.set_ylim(*y_range)
    else:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict[str, Any], folder: str | Path) -> Path:
    """Write report.json, report.md and the PNG plots into `folder` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = {**report, "plots": plot_data(report)}
    for filename, data in report["plots"].items():
        _draw(filename, data, folder / filename)
    (folder / "report.md").write_text(to_markdown(report), encoding="utf-8")
    atomic_write(folder / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    return folder


def model_index_results(report: dict[str, Any], therapist: str) -> list[Any]:
    """`huggingface_hub.EvalResult`s for one therapist of a report, for the model card's `model-index`:
    every headline judge score with a mean, then the reference metrics."""
    from huggingface_hub import EvalResult

    if therapist not in report["therapists"]:
        raise ValueError(f"therapist {therapist!r} is not in the report; it has {sorted(report['therapists'])}")
    data, run = report["therapists"][therapist], report["run"]
    judged = dict(
        task_name="Simulated CBT sessions with resistant clients (LLM judge)",
        dataset_name="Mirror test profiles",
        dataset_config=run["profiles_config"],
        dataset_split=run["profiles_split"],
    )
    gold = dict(
        task_name="Next therapist turn given the gold history",
        dataset_name="Mirror sessions",
        dataset_config="sessions",
        dataset_split=run["reference_split"],
    )
    results = []
    for key in headline_keys(report):
        summary = data["scores"].get(key)
        if summary and summary["mean"] is not None:
            args = {"judge": run["judge_model"], "client": run["client_model"]}
            args.update(n=summary["n"], percent_parseable=summary["percent_parseable"])
            results.append((judged, key.replace("/", "_"), LABELS.get(key, key), summary["mean"], args))
    for metric, value in ((data.get("reference") or {}).get("overall") or {}).items():
        if metric != "n_turns" and value is not None:
            results.append((gold, metric, metric.replace("_", " "), value, None))
    return [
        EvalResult(
            task_type="text-generation",
            dataset_type=run["dataset_id"],
            metric_type=metric_type,
            metric_name=name,
            metric_value=round(value, 4),
            metric_args=args,
            **task,
        )
        for task, metric_type, name, value, args in results
    ]
