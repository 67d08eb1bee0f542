"""`mirror generate` end to end against an OpenAI-compatible server on 127.0.0.1, then `mirror build`.

The server is a small FastAPI app (dataset_builder.tiny.make_chat_app) that answers with RECORDED real-format
outputs written for this test (screenplays with the quirks real LLM output has: a preamble line, markdown around a
speaker, the client's name instead of the role, a line without a stage direction, a refusal on a first attempt)
rather than with a tiny random LM, whose output would never parse. Everything else is real: HTTP through
`EndpointBackend`, the prompts, the parser, the cache, the embedded renderer, tiny filter models loaded by path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import free_port

from dataset_builder import generate as G
from dataset_builder.tiny import build_tiny_clip, build_tiny_image_classifier, make_chat_app, serve_app

REPO = Path(__file__).resolve().parent.parent

NADIA = """Here is the screenplay for the session:

Client: [Sits upright with a practised smile, hands folded tightly in her lap]
Therapist: Hi Nadia, thanks for coming in. What would be most helpful to talk about today?
Nadia: [Laughs lightly, glances at the clock] Honestly, my GP pushed me. I'm fine, it's just headaches.
Therapist: I hear that you're fine, and I also notice your hands are holding on tightly; what's it like to be here?
**Client:** [Smile fades for a moment, looks at the floor] A bit strange. I'm usually the one helping.
Therapist: That makes sense. What goes through your mind when you imagine letting someone see you upset?
Client: [Shrugs, jaw tight] That they'd think I can't cope, and stop counting on me.
Therapist: Let's weigh that together: has anyone at the clinic ever leaned on you less after a hard day?
Client: [Pauses, brow furrowed] No. Last month a colleague cried after a shift and we all just helped her.
Therapist: Would you try an experiment this week, telling one trusted colleague you've had a rough time lately?
Client: [Exhales, small nod] Maybe. Just one person.
(End of session)"""

KWAME = """Client: [Leans back with arms crossed, jaw set]
Therapist: Welcome, Kwame. What brings you here today?
Client: [Shrugs, eyes on the window] My wife thinks I need to talk. Losing the job is just how it goes.
Therapist: Thank you for telling me it was her idea; what do you make of it yourself?
Mr. Mensah: [Frowns, rubs his jaw] Getting upset changes nothing. It only makes a man look weak.
Therapist: You say it changes nothing, and I see your hands tighten as you say it.
Client: I suppose it's been a long few months.
Therapist: Could we test the idea that talking changes nothing, by trying one small conversation this week?
Client: [Sighs, unfolds his arms] With my brother, maybe. He's been asking.
Therapist: Let's plan it as an experiment and note what actually happens."""

REFUSAL = "I'm sorry, but I can't write that."


def recorded_reply(body: dict, garbage_seeds: set[int]) -> str:
    """The recorded output for a request: expressions by keyword, screenplays by client name."""
    system = body["messages"][0]["content"]
    user = body["messages"][-1]["content"]
    if "facial expressions" in system:
        current = user.split("The client's current line:")[1].split("\n")[0].lower()
        if "arms" in current or "jaw" in current:
            return "Expression: narrowed eyes, jaw clenched, mouth a flat line\nContrast: relaxed jaw, soft eyes, open smile"
        if "smile" in current or "laugh" in current:
            return "Expression: tight polite smile, eyes not smiling\nContrast: frowning brows, downturned mouth"
        return "**Expression:** gaze averted, brows slightly drawn, lips pressed\nContrast: steady eye contact, calm brows"
    if body.get("seed") in garbage_seeds:
        return REFUSAL
    return NADIA if "Name: Nadia Petrova" in user else KWAME


def garbage_seeds(seed: int = 0) -> set[int]:
    """Kwame's emotional session gets a refusal on its first attempt (a retry must recover)."""
    return {G.derive_seed(seed, "mirror-sample-e02-emotional", "screenplay", 0)}


@pytest.fixture(scope="module")
def server():
    app = make_chat_app(lambda body: recorded_reply(body, garbage_seeds()), latency=0.05)
    with serve_app(app) as base_url:
        yield base_url, app


@pytest.fixture(scope="module")
def filter_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-filter-models")
    return {
        "clip_model": str(build_tiny_clip(root / "clip")),
        "age_model": str(build_tiny_image_classifier(root / "age", ["0-2", "20-29", "60-69"], favour="20-29")),
        "gender_model": str(build_tiny_image_classifier(root / "gender", ["female", "male"], favour="female")),
        "nsfw_model": str(build_tiny_image_classifier(root / "nsfw", ["normal", "nsfw"], favour="normal")),
    }


# The two clients the recorded outputs were written for (the sample's first two evaluation profiles, pinned here
# so that edits to the sample cannot break the recordings).
CLIENTS = {"e01": ("Nadia Petrova", 26, "female"), "e02": ("Kwame Mensah", 57, "male")}


@pytest.fixture(scope="module")
def profiles_file(tmp_path_factory):
    from helpers import sample_profiles

    records = []
    for record, (row, (name, age, gender)) in zip(sample_profiles()[:2], CLIENTS.items(), strict=True):
        record["id"], record["source"]["row"] = f"eval-{row}", row
        record["client"].update(name=name, age=age, gender=gender)
        records.append(record)
    path = tmp_path_factory.mktemp("profiles") / "pinned.jsonl"  # records keep their source.dataset
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def recipe(tmp_path, base_url, profiles, name="gen", **overrides) -> dict:
    data = {
        "output_dir": str(tmp_path / name),
        "profiles": profiles,
        "max_profiles": 2,
        "resistance_styles": ["emotional", "cognitive"],
        "llm": {"model": "recorded-gpt-4o-mini", "base_url": base_url, "max_concurrency": 2, "max_attempts": 2},
        "image_backend": "embedded",
        "image_filters": False,
        "seed": 0,
        "shard_size": 1,
    }
    data.update(overrides)
    return data


def write_recipe(tmp_path, data) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def read_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "sessions-00000.jsonl").read_text().splitlines()]


def test_generate_build_and_load(tmp_path, server, allow_loopback_http, filter_models, profiles_file):
    from datasets import load_dataset

    from dataset_builder.build import build_dataset

    base_url, app = server
    filters = {
        **filter_models,
        "identity_model": filter_models["clip_model"],
        "min_clip_similarity": -1.0,
        "min_face_probability": 0.0,
        "min_identity_similarity": -1.0,
    }
    data = recipe(tmp_path, base_url, profiles_file, image_filters=True, filters=filters)
    assert G.main(G.GenerateArguments(config=str(write_recipe(tmp_path, data)))) == 0
    out = Path(data["output_dir"])
    records = read_records(out)
    assert [r["id"] for r in records] == [
        "mirror-sample-e01-emotional",
        "mirror-sample-e01-cognitive",
        "mirror-sample-e02-emotional",
        "mirror-sample-e02-cognitive",
    ]
    nadia = records[0]
    assert nadia["turns"][0] == {**nadia["turns"][0], "speaker": "client", "statement": ""}
    assert nadia["turns"][2]["statement"].startswith("Honestly, my GP pushed me")  # the "Nadia:" line
    assert nadia["turns"][2]["expression"] == "tight polite smile, eyes not smiling"
    assert nadia["quality"]["scores"]["dropped_screenplay_lines"] == 2.0  # preamble and "(End of session)"
    kwame = records[2]
    assert kwame["quality"]["scores"]["screenplay_attempts"] == 2.0  # the refusal was retried
    no_direction = [t for t in kwame["turns"] if t["speaker"] == "client" and t["stage_direction"] is None]
    assert no_direction and no_direction[0]["statement"] == "I suppose it's been a long few months."
    # Image filters ran with the tiny models: Kwame (57, male) fails age and gender, Nadia (26, female) passes.
    assert not any(f.startswith("failed:") for f in nadia["quality"]["flags"])
    assert any(f.startswith("failed:age_consistency") for f in kwame["quality"]["flags"])
    assert {
        "clip_similarity",
        "face_presence",
        "identity_similarity",
        "nsfw",
        "dialogue_safety",
        "pos_repetition",
    } <= set(nadia["quality"]["scores"])

    manifest = json.loads((out / "manifest.json").read_text())
    config = G.load_config(write_recipe(tmp_path, data))
    assert manifest["config"] == config.to_dict() and manifest["config_sha256"] == config.digest()
    assert manifest["models"]["screenplay"] == {
        "model": "recorded-gpt-4o-mini",
        "revision": None,
        "base_url": base_url,
    }
    assert manifest["models"]["filters"]["age_model"] == filter_models["age_model"]
    assert (
        manifest["packages"]["transformers"]
        and manifest["packages"]["mirror-therapy"]
        and manifest["seeds"]["base"] == 0
    )
    assert set(manifest["prompts"]) == {"screenplay_v1.yaml", "expression_v1.yaml"}
    assert manifest["counts"]["screenplays_usable"] == 4

    result = build_dataset(out, tmp_path / "dataset")
    sessions = load_dataset(str(result.output_dir), split="train")
    assert sorted(sessions["id"]) == ["mirror-sample-e01-cognitive", "mirror-sample-e01-emotional"]
    turn = [t for t in sessions[0]["turns"] if t["speaker"] == "client"][1]
    assert turn["image"].size == (336, 336) and sessions[0]["source"]["generator"] == "recorded-gpt-4o-mini"
    filtered = load_dataset(str(result.output_dir), "filtered", split="train").filter(lambda r: not r["kept"])
    assert sorted(filtered["id"]) == ["mirror-sample-e02-cognitive", "mirror-sample-e02-emotional"]
    assert all("age_consistency" in reason for reason in filtered["reason"])

    # A rerun is served from the shards and the cache: no new request reaches the server.
    before = app.state.num_requests
    G.generate(config)
    assert app.state.num_requests == before and read_records(out) == records


def test_unusable_output_is_recorded_with_reason(tmp_path, allow_loopback_http, profiles_file):
    app = make_chat_app(
        lambda body: REFUSAL if "Nadia" in body["messages"][-1]["content"] else recorded_reply(body, set())
    )
    with serve_app(app) as base_url:
        data = recipe(tmp_path, base_url, profiles_file)
        report = G.generate(G.GenerateConfig.from_dict(data))
    assert report["counts"]["unusable"] == 2 and report["counts"]["screenplays_usable"] == 2
    reasons = {u["id"]: u["reason"] for u in report["unusable"]}
    assert (
        reasons["mirror-sample-e01-emotional"]
        == "attempt 1: only 0 parsable line(s); attempt 2: only 0 parsable line(s)"
    )
    on_disk = json.loads((Path(data["output_dir"]) / "generation-report.json").read_text())
    assert on_disk["unusable"] == report["unusable"]

    from datasets import load_dataset

    from dataset_builder.build import build_dataset

    result = build_dataset(data["output_dir"], tmp_path / "dataset")
    assert result.num_rows["sessions"] == 2  # Kwame's two sessions
    filtered = load_dataset(str(tmp_path / "dataset"), "filtered", split="train").filter(lambda r: not r["kept"])
    assert sorted(filtered["id"]) == sorted(reasons)
    row = filtered.filter(lambda r: r["id"] == "mirror-sample-e01-emotional")[0]
    assert row["field"] == "recorded_failures" and "screenplay_unusable: attempt 1: only 0 parsable" in row["reason"]
    assert REFUSAL in row["record"]  # the raw output is kept for the audit


@pytest.fixture(scope="module")
def uninterrupted(server, profiles_file, tmp_path_factory):
    """The records of one uninterrupted single-process run (the reference of the resume and accelerate tests)."""
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        data = recipe(tmp_path_factory.mktemp("reference"), server[0], profiles_file, name="uninterrupted")
        G.generate(G.GenerateConfig.from_dict(data))
    return read_records(Path(data["output_dir"]))


def test_kill_and_resume_gives_the_same_records(tmp_path, server, allow_loopback_http, profiles_file, uninterrupted):
    base_url, _ = server

    data = recipe(tmp_path, base_url, profiles_file, name="resumed")
    path = write_recipe(tmp_path, data)
    # The child talks to 127.0.0.1; huggingface_hub reads TRANSFORMERS_OFFLINE as HF_HUB_OFFLINE too.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from dataset_builder import generate as G; "
            f"sys.exit(G.main(G.GenerateArguments(config={str(path)!r})))",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shards = Path(data["output_dir"]) / ".work" / "screenplays"
    deadline = time.monotonic() + 25
    while not list(shards.glob("shard-*.jsonl")):
        assert child.poll() is None, "the child finished before it could be killed"
        assert time.monotonic() < deadline, "no screenplay shard appeared"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (Path(data["output_dir"]) / "sessions-00000.jsonl").exists(), "killed too late to test resuming"
    G.generate(G.load_config(path))
    assert read_records(Path(data["output_dir"])) == uninterrupted  # image paths are relative to the folder


def test_different_config_refuses_to_resume(tmp_path, server, allow_loopback_http, profiles_file):
    base_url, _ = server
    data = recipe(tmp_path, base_url, profiles_file, max_profiles=1, resistance_styles=["none"])
    G.generate(G.GenerateConfig.from_dict(data))
    with pytest.raises(ValueError, match="different config"):
        G.generate(G.GenerateConfig.from_dict({**data, "seed": 1}))
    # Where and how fast it runs is not part of the config's identity: another URL or concurrency resumes.
    moved = {
        **data,
        "llm": {**data["llm"], "base_url": base_url.replace("127.0.0.1", "localhost"), "max_concurrency": 1},
    }
    assert G.GenerateConfig.from_dict(moved).digest() == G.GenerateConfig.from_dict(data).digest()


def test_config_errors_and_parsers():
    with pytest.raises(ValueError, match=r"unknown generation config key\(s\) \['modle'\]"):
        G.GenerateConfig.from_dict({"modle": "x"})
    with pytest.raises(ValueError, match="unknown resistance style"):
        G.GenerateConfig.from_dict({"resistance_styles": ["angry"]})
    with pytest.raises(ValueError, match="unknown key"):
        G.GenerateConfig.from_dict({"llm": {"temp": 1}})
    assert G.parse_expressions("Expression: a b c\nContrasting expression: d e f") == ("a b c", "d e f")
    assert G.parse_expressions("Sure! Here you go.") is None


def test_identities_matched_on_gender_and_age(tmp_path, profiles_file):
    from PIL import Image

    pool = []
    for key, gender, age in [("f25", "female", 25), ("f60", "female", 60), ("m30", "male", 30), ("m58", "male", 58)]:
        Image.new("RGB", (8, 8)).save(tmp_path / f"{key}.png")
        pool.append({"key": key, "gender": gender, "age": age, "image": f"{key}.png"})
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pool))
    loaded = G.load_identity_pool(str(tmp_path / "pool.jsonl"))
    _, profiles = G.load_profiles(G.GenerateConfig(profiles=profiles_file))  # Nadia 26 female, Kwame 57 male
    matched = G.match_identities(profiles, loaded, 0, "mirror-sample")
    assert [m["key"] for m in matched] == ["f25", "m58"] and matched[0]["image"] == str(tmp_path / "f25.png")
    assert [m["key"] for m in G.match_identities(profiles, None, 0, "s")] == ["s-e01", "s-e02"]


def test_cactus_export_profiles(tmp_path):
    intake = (
        "Name:\nLaura Saunders\nAge:\n45\nGender:\nfemale\nOccupation: Office Manager\n\n2. Presenting Problem\n"
        "Worries about work.\n\n3. Reason for Seeking Counseling\nShe cannot sleep before meetings.\n"
    )
    rows = [
        {
            "intake_form": intake,
            "thought": "They think I'm useless.",
            "patterns": "Mind Reading",
            "cbt_technique": "Reality Testing",
            "cbt_plan": "1. ...",
            "attitude": "positive",
            "dialogue": "...",
        }
    ] * 3
    path = tmp_path / "cactus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    name, profiles = G.load_profiles(G.GenerateConfig(profiles=str(path)))
    assert name == "cactus" and len(profiles) == 1  # one client, several attitude rows
    client = profiles[0]["client"]
    assert (
        client["name"] == "Laura Saunders" and client["reason_for_counseling"] == "She cannot sleep before meetings."
    )
    assert profiles[0]["cbt_technique"] == "Reality Testing" and client["thinking_traps"] == ["mind reading"]


def test_prompts_carry_the_paper_rules():
    prompt = G.load_prompt("screenplay", "v1")
    assert set(prompt["resistance_personas"]) == set(G.RESISTANCE_STYLES) and len(prompt["examples"]) == 2
    assert "chest pain" in prompt["system"] and "medical" in prompt["system"]
    for example in prompt["examples"]:  # the few-shot examples parse cleanly with our own parser
        parsed = G.parse_screenplay(example)
        assert parsed.num_dropped == 0 and G.check_screenplay(parsed.turns) is None


def test_faces_under_accelerate_launch_two_processes(
    tmp_path, server, allow_loopback_http, profiles_file, uninterrupted
):
    """Multi-GPU face rendering, exercised on CPU: the text stage here, then `accelerate launch --num_processes 2
    --cpu -m dataset_builder.generate --stages faces`, then the filters; same records as one single-process run."""
    base_url, _ = server

    data = recipe(tmp_path, base_url, profiles_file, name="split")
    path = write_recipe(tmp_path, data)
    G.generate(G.load_config(path), stages=["text"])
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "dataset_builder.generate",
        "--config",
        str(path),
        "--stages",
        "faces",
    ]
    done = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("generate: faces") >= 2  # one progress bar per process
    G.generate(G.load_config(path), stages=["filters"])
    assert read_records(Path(data["output_dir"])) == uninterrupted


def test_stages_in_the_wrong_order_are_refused(tmp_path, server, allow_loopback_http, profiles_file):
    base_url, _ = server
    config = G.GenerateConfig.from_dict(
        recipe(tmp_path, base_url, profiles_file, max_profiles=1, resistance_styles=["none"])
    )
    with pytest.raises(FileNotFoundError, match="run the text stage first"):
        G.generate(config, stages=["faces"])
    G.generate(config, stages=["text"])
    with pytest.raises(FileNotFoundError, match="run the faces stage"):
        G.generate(config, stages=["filters"])
    with pytest.raises(ValueError, match="unknown stage"):
        G.generate(config, stages=["paint"])


def test_cli_generate_and_a_dead_server(tmp_path, allow_loopback_http, profiles_file, server):
    import mirror_cli

    base_url, _ = server
    data = recipe(tmp_path, base_url, profiles_file, max_profiles=1, resistance_styles=["none"])
    path = write_recipe(tmp_path, data)
    assert mirror_cli.main(["generate", "--config", str(path), "--stages", "text"]) == 0
    dead = recipe(
        tmp_path, "http://127.0.0.1:9/v1", profiles_file, name="dead", max_profiles=1, resistance_styles=["none"]
    )
    dead["llm"].update(max_concurrency=1, request_retries=0)
    dead_path = tmp_path / "dead.yaml"
    dead_path.write_text(yaml.safe_dump(dead))
    assert mirror_cli.main(["generate", "--config", str(dead_path)]) == 2  # one line, exit 2, nothing lost
    assert not list((Path(dead["output_dir"]) / ".work" / "screenplays").glob("shard-*"))


def test_cactus_from_the_hub_takes_the_export_path(monkeypatch):
    """The Hub is unreachable here: `datasets.load_dataset` (the network edge) returns rows in CACTUS's layout."""
    import datasets

    intake = "Name: Ana Ruiz\nAge: 29\nGender: female\nOccupation: Nurse\n\n3. Reason for Seeking Counseling\nPanic at work.\n"
    rows = [
        {
            "intake_form": intake,
            "thought": "I will faint.",
            "patterns": "Catastrophizing",
            "cbt_technique": "Decatastrophizing",
            "cbt_plan": "1. ...",
            "attitude": a,
        }
        for a in ("positive", "negative")
    ]
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or rows)
    name, profiles = G.load_profiles(G.GenerateConfig(profiles="hub", profiles_revision="v1"))
    assert calls == [((G.CACTUS_REPO_ID,), {"split": "train", "revision": "v1"})]
    assert (
        name == "cactus" and len(profiles) == 1 and profiles[0]["client"]["reason_for_counseling"] == "Panic at work."
    )


def test_response_cache_survives_a_torn_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = G.ResponseCache(path)
    cache.put("a", "reply a")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"key": "b", "rep')  # killed mid-write
    cache = G.ResponseCache(path)
    cache.put("c", "reply c")
    reloaded = G.ResponseCache(path)
    assert reloaded.get("a") == "reply a" and reloaded.get("c") == "reply c" and reloaded.get("b") is None


@pytest.mark.parametrize("name", ["paper-cactus", "sample-local"])
def test_bundled_recipes_load(name):
    import inspect

    from dataset_builder.images.diffusers_backend import DiffusersFaceBackend
    from recipes import resolve_recipe

    config = G.load_config(resolve_recipe(name, kind="data"))
    assert config.llm.temperature == 0.7 and config.llm.top_p == 0.9  # the paper's sampling
    assert config.filters.min_clip_similarity == 0.2 and config.filters.max_age_gap == 10
    accepted = set(inspect.signature(DiffusersFaceBackend).parameters)
    assert set(config.image_options) <= accepted  # every option reaches the backend
