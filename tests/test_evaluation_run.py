"""Evaluation runs end to end: a real subprocess killed mid-run and resumed (every session exactly once), client
and judge over real HTTP on 127.0.0.1 (a scripted OpenAI-compatible FastAPI app), stage directions never reaching
the therapist, report JSON / markdown / PNG agreeing, model-index results, the quickstart stage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from evaluation.config import EvalConfig, from_dict, load_eval_config
from evaluation.models import BackendPool
from evaluation.pipeline import MANIFEST, check_judge, run_evaluation

ROOT = Path(__file__).resolve().parent.parent
SCRIPTED = {"backend": "scripted"}


def scripted_config(output_dir, dataset, **overrides):
    data = {
        "output_dir": str(output_dir),
        "dataset": str(dataset),
        "concurrency": 2,
        "safety_use_embeddings": False,
        "therapists": [
            {"name": "text-a", "model": {**SCRIPTED, "model": "therapist"}, "strategy": "text"},
            {"name": "text-b", "model": {**SCRIPTED, "model": "therapist"}, "strategy": "cactus_plan"},
        ],
        "client_model": {**SCRIPTED, "model": "client"},
        "judge_model": {**SCRIPTED, "model": "judge"},
        "judge": {"backoff": 0.0},
        "reference": {"enabled": False},
        "report": {"bootstrap_samples": 200},
    }
    data.update(overrides)
    return data


# -------------------------------------------------------------------------------------------- kill and resume


def test_killed_run_resumes_with_every_session_exactly_once(sample_dataset_dir, tmp_path):
    run_dir = tmp_path / "run"
    data = scripted_config(run_dir, sample_dataset_dir)
    data["client_model"]["latency"] = 0.1  # slow enough to kill mid-run
    config_path = tmp_path / "eval.yaml"
    config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    code = (
        "import sys; from evaluation.cli import EvaluateArguments, main; "
        f"sys.exit(main(EvaluateArguments(config={str(config_path)!r}, no_progress=True)))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    sessions_dir = run_dir / "sessions"
    deadline = time.monotonic() + 60
    try:
        while len(list(sessions_dir.glob("*/*.json"))) < 4:
            assert process.poll() is None, process.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no sessions written within 60 s"
            time.sleep(0.02)
    finally:
        process.kill()  # SIGKILL: no cleanup handlers run
        process.wait()
    before = {p: p.read_bytes() for p in sessions_dir.glob("*/*.json")}
    total = 2 * 8  # two therapists x the sample's eight test profiles
    assert 4 <= len(before) < total, "the kill must land mid-run"
    assert json.loads((run_dir / MANIFEST).read_text())["status"] == "running"

    config = load_eval_config(config_path)
    pool = BackendPool()
    client = pool.get(config.client_model)
    report_dir = run_evaluation(config, pool=pool, progress=False)

    records = {p: json.loads(p.read_text()) for p in sessions_dir.glob("*/*.json")}
    assert len(records) == total
    assert len({r["id"] for r in records.values()}) == total
    assert all(r["status"] == "complete" and r["end_reason"] == "client_end" for r in records.values())
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path.name} was run again"
    # The scripted client answers 4 times per session: the rerun ran only the sessions the kill left undone.
    assert client.calls == 4 * (total - len(before))
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]
    assert len(list((run_dir / "judgements").glob("*/*.json"))) == total
    manifest = json.loads((run_dir / MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["versions"]["torch"] and manifest["resumed_at"]
    assert manifest["config"]["therapists"][0]["name"] == "text-a"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["therapists"]["text-a"]["sessions"]["complete"] == 8
    planned = report["therapists"]["text-b"]["sessions"]  # cactus_plan: the profiles carry the plans
    assert (planned["plans_generated"], planned["plan_parse_failure_rate"]) == (0, None)

    with pytest.raises(FileExistsError, match="finished evaluation run"):
        run_evaluation(load_eval_config(config_path), progress=False)


def test_unfinished_run_resumes_only_with_the_same_config(sample_dataset_dir, tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="not an evaluation run"):
        run_evaluation(from_dict(EvalConfig, scripted_config(tmp_path / "foreign", sample_dataset_dir)))
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "not ours"

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / MANIFEST).write_text(json.dumps({"status": "running", "config_hash": "something else"}))
    with pytest.raises(ValueError, match="different config"):
        run_evaluation(from_dict(EvalConfig, scripted_config(run_dir, sample_dataset_dir)))


def test_client_that_keeps_failing_is_recorded_not_looped(sample_dataset_dir, tmp_path):
    from evaluation.scripted import ScriptedBackend

    config = from_dict(
        EvalConfig, scripted_config(tmp_path / "run", sample_dataset_dir, max_profiles=2, client={"max_retries": 1})
    )
    pool = BackendPool()
    bad = ScriptedBackend("client", responder=lambda messages: "[Nods] Fine.\nTherapist: And work?")
    pool.register(config.client_model, bad)
    report_dir = run_evaluation(config, pool=pool, progress=False)
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "sessions").glob("*/*.json")]
    assert len(records) == 4 and bad.calls == 4 * 2
    assert all(r["status"] == "failed" and r["failure"]["stage"] == "client" for r in records)
    assert all("therapist's part" in r["failure"]["reason"] and len(r["failure"]["attempts"]) == 2 for r in records)
    report = json.loads((report_dir / "report.json").read_text())
    assert report["therapists"]["text-a"]["sessions"]["failed"] == 2
    assert report["therapists"]["text-a"]["scores"] == {}  # failed sessions are not judged


def test_judge_must_not_be_the_therapist_under_test(sample_dataset_dir, tmp_path):
    endpoint = {"backend": "endpoint", "base_url": "http://127.0.0.1:9/v1", "model": "same-model"}
    data = scripted_config(tmp_path / "run", sample_dataset_dir, judge_model=dict(endpoint))
    data["therapists"][0]["model"] = {**endpoint, "base_url": "http://127.0.0.1:9"}  # same server, other spelling
    with pytest.raises(ValueError, match="also the therapist 'text-a'"):
        check_judge(from_dict(EvalConfig, data))
    notes = check_judge(from_dict(EvalConfig, {**data, "allow_judge_is_therapist": True}))
    assert notes and "WARNING" in notes[0]


# ------------------------------------------------------------------------------------- real HTTP, tiny VLM


class RecordingBackend:
    """Wraps the therapist backend and keeps every prompt it is sent."""

    def __init__(self, backend):
        self.backend, self.name, self.supports_images = backend, backend.name, backend.supports_images
        self.prompts: list[tuple[list, int]] = []

    def chat(self, messages, images=None, config=None):
        return self.chat_batch([messages], [images or []], config)[0]

    def chat_batch(self, conversations, images=None, config=None):
        images = images or [[] for _ in conversations]
        self.prompts += [(m, len(i)) for m, i in zip(conversations, images, strict=True)]
        return self.backend.chat_batch(conversations, images, config)


@pytest.fixture(scope="module")
def http_run(tiny_llava_dir, sample_dataset_dir, tmp_path_factory):
    from huggingface_hub import constants

    from dataset_builder.tiny import serve_app
    from evaluation.scripted import client_responder, judge_responder, openai_app
    from inference.backends import load_backend

    calls: list[dict] = []
    app = openai_app({"client": client_responder, "judge": judge_responder}, calls=calls)
    run_dir = tmp_path_factory.mktemp("http") / "run"
    with pytest.MonkeyPatch.context() as patch, serve_app(app) as base_url:
        # conftest's HF_HUB_OFFLINE=1 blocks huggingface_hub's HTTP even to loopback; these calls stay on 127.0.0.1.
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        endpoint = {"backend": "endpoint", "base_url": base_url, "max_retries": 0, "timeout": 30}
        data = scripted_config(
            run_dir,
            sample_dataset_dir,
            max_profiles=3,
            resistance=["emotional", "cognitive"],
            client_model={**endpoint, "model": "client"},
            judge_model={**endpoint, "model": "judge"},
            reference={"split": "train", "max_sessions": 1, "max_turns_per_session": 2},
            client={"max_turns": 5},
        )
        data["therapists"] = [
            {
                "name": "tiny-vlm",
                "model": {"backend": "transformers", "model": str(tiny_llava_dir), "device": "cpu"},
                "strategy": "ec_planning",
                "max_new_tokens": 8,
            },
            {"name": "text-a", "model": {**SCRIPTED, "model": "therapist"}, "strategy": "text"},
        ]
        config = from_dict(EvalConfig, data)
        pool = BackendPool()
        recorder = RecordingBackend(load_backend(str(tiny_llava_dir), device="cpu"))
        pool.register(config.therapists[0].model, recorder)
        report_dir = run_evaluation(config, pool=pool, progress=False)
    return {"report_dir": report_dir, "calls": calls, "recorder": recorder, "run_dir": run_dir}


def test_client_and_judge_talk_over_real_http(http_run):
    calls = http_run["calls"]
    by_model = {name: [c for c in calls if c["model"] == name] for name in ("client", "judge")}
    assert by_model["client"] and by_model["judge"] and len(calls) == len(by_model["client"]) + len(by_model["judge"])
    assert {c["temperature"] for c in by_model["judge"]} == {0.0}, "judges run at temperature 0"
    # One call per item for 6 sessions, except PANAS "before" (profile only): cached across the two therapists.
    assert len(by_model["judge"]) == 6 * (6 + 3 + 20) + 3 * 20
    assert by_model["client"][0]["messages"][0]["role"] == "system"
    records = [json.loads(p.read_text()) for p in (http_run["run_dir"] / "sessions").glob("*/*.json")]
    assert len(records) == 6 and all(r["status"] == "complete" for r in records)
    assert {r["resistance"] for r in records} == {"emotional", "cognitive"}


def test_stage_directions_never_reach_the_therapist(http_run):
    records = [json.loads(p.read_text()) for p in (http_run["run_dir"] / "sessions" / "tiny-vlm").glob("*.json")]
    directions = [t["stage_direction"] for r in records for t in r["turns"] if t["speaker"] == "client"]
    assert len(directions) >= 6 and all(len(d) > 10 for d in directions)
    prompts = http_run["recorder"].prompts
    assert prompts
    for messages, n_images in prompts:
        text = "\n".join(block.get("text") or "" for m in messages for block in m["content"])
        for direction in directions:  # (the tiny model's own generated plan may contain brackets: not checked)
            assert direction not in text, "a stage direction reached the therapist"
        placeholders = sum(block["type"] == "image" for m in messages for block in m["content"])
        assert n_images == placeholders
    # Every reply and caption prompt carries the face; the plan comes from the profile (paper protocol), so no
    # text-only plan request is sent.
    assert sum(n for _, n in prompts) == len(prompts)
    assert all(r["plan"]["source"] == "profile" for r in records)
    faced = [t for r in records for t in r["turns"] if t["speaker"] == "client" and t.get("image")]
    assert faced and all(t["face"]["attempts"] and t["image_sha256"] for t in faced)
    image = Image.open(http_run["run_dir"] / "sessions" / "tiny-vlm" / faced[0]["image"])
    assert image.size == (336, 336)
    assert all(t["safety"]["is_risk"] is False for r in records for t in r["turns"] if t["speaker"] == "client")


def _cell(summary):
    text = f"{summary['mean']:.2f}"
    if summary["ci_low"] is not None:
        text += f" [{summary['ci_low']:.2f}, {summary['ci_high']:.2f}]"
    return text + f" ({summary['percent_parseable']:.0f}%)"


def test_report_json_markdown_and_png_agree(http_run):
    folder = http_run["report_dir"]
    report = json.loads((folder / "report.json").read_text())
    markdown = (folder / "report.md").read_text()
    for name in ("tiny-vlm", "text-a"):
        scores = report["therapists"][name]["scores"]
        assert set(scores) >= {"ctrs/understanding", "alliance/bond", "panas/positive_change"}
        header = next(line for line in markdown.splitlines() if line.startswith("| therapist | ctrs/"))
        keys = [cell.strip() for cell in header.strip("|").split("|")][1:]
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} | ") and "[" in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert cells == [_cell(scores[k]) for k in keys]
        assert all(s["percent_parseable"] == 100.0 for s in scores.values())
        for style, by_style in report["therapists"][name]["by_resistance"].items():
            assert f"| {name} | {style} | " in markdown and by_style["ctrs/focus"]["n"] >= 1
    assert report["therapists"]["tiny-vlm"]["reference"]["overall"]["caption_similarity"] is not None
    assert re.search(r"\| tiny-vlm \| 2 \| ", markdown), "reference metrics row"
    for filename in ("ctrs.png", "alliance.png", "panas.png"):
        plotted = report["plots"][filename]
        with Image.open(folder / filename) as image:
            assert image.format == "PNG" and image.size[0] >= 600 and len(image.convert("L").getcolors(1 << 16)) > 2
        for index, name in enumerate(plotted["therapists"]):
            expected = [report["therapists"][name]["scores"][k]["mean"] for k in plotted["metrics"]]
            assert plotted["mean"][index] == expected


def test_model_index_results_for_the_model_card(http_run):
    from huggingface_hub import EvalResult

    report = json.loads((http_run["report_dir"] / "report.json").read_text())
    from evaluation.report import model_index_results

    results = model_index_results(report, "tiny-vlm")
    assert results and all(isinstance(r, EvalResult) for r in results)
    by_type = {r.metric_type: r for r in results}
    scores = report["therapists"]["tiny-vlm"]["scores"]
    assert by_type["ctrs_understanding"].metric_value == round(scores["ctrs/understanding"]["mean"], 4)
    assert by_type["semantic_similarity"].dataset_config == "sessions"
    with pytest.raises(ValueError, match="not in the report"):
        model_index_results(report, "nobody")


# ------------------------------------------------------------------------------------------------- quickstart


def test_quickstart_evaluation_runs_offline_and_says_it_is_noise(tiny_llava_dir, sample_dataset_dir, tmp_path):
    from evaluation.quickstart import run_quickstart_evaluation

    started = time.monotonic()
    folder = run_quickstart_evaluation(tiny_llava_dir, sample_dataset_dir, tmp_path / "qs", progress=False)
    assert time.monotonic() - started < 60
    report = json.loads((folder / "report.json").read_text())
    assert "noise" in " ".join(report["run"]["notes"]) and "noise" in (folder / "report.md").read_text()
    therapist = report["therapists"]["tiny-mirror"]
    assert therapist["sessions"]["total"] == 1 and therapist["reference"]["overall"]["n_turns"] == 4
    assert (folder / "ctrs.png").is_file()
    with pytest.raises(FileExistsError):
        run_quickstart_evaluation(tiny_llava_dir, sample_dataset_dir, tmp_path / "qs", progress=False)


def test_sessions_that_hit_errors_are_retried_on_resume(sample_dataset_dir, tmp_path):
    from evaluation.scripted import ScriptedBackend

    def down(messages):
        raise ConnectionError("therapist endpoint is down")

    config = from_dict(EvalConfig, scripted_config(tmp_path / "run", sample_dataset_dir, max_profiles=2))
    pool = BackendPool()
    pool.register(config.therapists[0].model, ScriptedBackend("therapist", responder=down))
    with pytest.raises(RuntimeError, match="4 session\\(s\\) hit errors"):
        run_evaluation(config, pool=pool, progress=False)
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "sessions").glob("*/*.json")]
    assert {r["status"] for r in records} == {"error"} and "endpoint is down" in records[0]["failure"]["reason"]
    assert json.loads((tmp_path / "run" / MANIFEST).read_text())["status"] == "running"

    run_evaluation(from_dict(EvalConfig, scripted_config(tmp_path / "run", sample_dataset_dir, max_profiles=2)))
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "sessions").glob("*/*.json")]
    assert len(records) == 4 and {r["status"] for r in records} == {"complete"}


def test_reference_metrics_only_run(sample_dataset_dir, tmp_path):
    data = scripted_config(
        tmp_path / "run",
        sample_dataset_dir,
        simulate=False,
        reference={"split": "train", "max_sessions": 2, "max_turns_per_session": 3},
    )
    data.pop("client_model")
    data.pop("judge_model")
    report = json.loads((run_evaluation(from_dict(EvalConfig, data), progress=False) / "report.json").read_text())
    for name in ("text-a", "text-b"):
        reference = report["therapists"][name]["reference"]
        assert reference["overall"]["n_turns"] == 6 and 0 <= reference["overall"]["rouge_l"] <= 1
        assert set(reference["by_resistance"]) and report["therapists"][name]["scores"] == {}
    predictions = json.loads((tmp_path / "run" / "reference" / "text-a.json").read_text())["predictions"]
    assert predictions[0]["prediction"] == "That sounds hard. What went through your mind when that happened?"


class SeeingTherapist:
    """A stand-in vision therapist: answers a fixed line, checks it got exactly one face per prompt."""

    name = "seeing-stand-in"
    supports_images = True

    def chat_batch(self, conversations, images=None, config=None):
        for messages, given in zip(conversations, images, strict=True):
            placeholders = sum(b["type"] == "image" for m in messages for b in m["content"])
            assert placeholders == len(given)
        return ["What do you notice in yourself right now?"] * len(conversations)

    def chat(self, messages, images=None, config=None):
        return self.chat_batch([messages], [images or []], config)[0]


def test_unfinished_vision_session_leftovers_are_replaced_on_resume(sample_dataset_dir, tmp_path):
    from evaluation.faces import image_sha256
    from evaluation.pipeline import load_profiles
    from evaluation.runner import SessionRunner, session_path

    data = scripted_config(tmp_path / "run", sample_dataset_dir, max_profiles=1)
    data["therapists"] = [{"name": "vlm", "model": {**SCRIPTED, "model": "therapist"}, "strategy": "base"}]
    config = from_dict(EvalConfig, data)
    pool = BackendPool()
    pool.register(config.therapists[0].model, SeeingTherapist())
    profile = load_profiles(config)[0]
    path = session_path(tmp_path / "run", "vlm", profile["id"])
    # What a kill leaves behind: a half-rendered .partial folder, or images renamed before the record was written.
    partial, images = path.with_name(f".{path.stem}.partial"), path.with_suffix("")
    for folder in (partial, images):
        folder.mkdir(parents=True)
        (folder / "turn-00.png").write_bytes(b"stale")
    SessionRunner(config, tmp_path / "run", pool).run([profile], progress=False)
    record = json.loads(path.read_text())
    assert record["status"] == "complete" and not partial.exists()
    faced = [t for t in record["turns"] if t.get("image")]
    assert len(faced) == 3 and sorted(p.name for p in images.iterdir()) == [
        "turn-00.png",
        "turn-02.png",
        "turn-04.png",
    ]
    for turn in faced:
        with Image.open(path.parent / turn["image"]) as image:
            assert image_sha256(image.convert("RGB")) == turn["image_sha256"]
        assert turn["face"]["verified"] and turn["face"]["attempts"][0]["checks"] == []
