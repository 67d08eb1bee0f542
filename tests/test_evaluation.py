"""Evaluation units: parse_score on realistic judge outputs, the virtual client's validation and retries, the judge's
retries and cache, the face loop's retry-then-record path, the local `evaluate` metric modules, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dataset_builder.tiny import build_tiny_clip
from evaluation.client import ClientConfig, ClientFailure, VirtualClient, validate_client_output
from evaluation.faces import Check, FaceLoop, FaceLoopConfig, FaceLoopFailure
from evaluation.judges import Judge, load_rubric, parse_score
from evaluation.scripted import ScriptedBackend, judge_responder

FIXTURES = Path(__file__).parent / "fixtures"
PROFILE = {
    "id": "p-01-emotional",
    "resistance": "emotional",
    "client": {
        "name": "Nadia Petrova",
        "age": 26,
        "gender": "female",
        "occupation": "veterinary nurse",
        "personal_info": "Works long shifts.",
        "reason_for_counseling": "Headaches.",
        "distorted_thought": "If I show I'm upset they'll stop relying on me.",
        "thinking_traps": ["mind reading"],
    },
    "identity": {"key": "p-01"},
}


# ------------------------------------------------------------------------------------------------ parse_score


def test_parse_score_on_realistic_judge_outputs():
    cases = yaml.safe_load((FIXTURES / "judge_outputs.yaml").read_text(encoding="utf-8"))
    kinds = " ".join(case["text"] for case in cases)
    for needle in ("Score: 4", "{", "Score: 9", "Score: -2", "N/A", "7/10", "rate this a 4"):
        assert needle in kinds, f"fixture lacks a {needle!r} case"
    assert any(case["text"] == "" for case in cases)

    got = [parse_score(case["text"], case["low"], case["high"]) for case in cases]
    for case, value in zip(cases, got, strict=True):
        assert value == case["expected"], f"{case['text']!r}: got {value}, expected {case['expected']}"
    parsed = [value for value in got if value is not None]
    assert len(parsed) / len(cases) == pytest.approx(10 / 21)  # parse rate
    assert sum(parsed) / len(parsed) == pytest.approx(3.8)  # mean of the readable scores: no zeros added


def test_parse_score_edge_cases():
    assert parse_score("4/6", 0, 6) == 4
    assert parse_score("Score: 0", 0, 6) == 0  # a real zero is a score
    assert parse_score("Rating: 6. Score: 6", 0, 6) == 6  # the same value twice is not ambiguous
    assert parse_score("None of the items apply", 0, 6) is None
    with pytest.raises(ValueError):
        parse_score("3", 6, 0)


# ---------------------------------------------------------------------------------------------- virtual client

THERAPIST_LINE = "What brings you in today?"
MALFORMED = {
    "role prefix": ("Client: [Shrugs] It's fine.", "role prefix"),
    "empty": ("   ", "empty"),
    "echo": (f"[Looks away] {THERAPIST_LINE}", "echoes"),
    "therapist part": ("[Nods] Fine.\nTherapist: Tell me more.", "therapist's part"),
    "missing stage direction": ("I guess work has been a lot.", "missing stage direction"),
    "name prefix": ("Nadia: [Sighs] Fine.", "role prefix"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_each_malformed_client_output_is_retried_then_recorded(kind):
    output, reason = MALFORMED[kind]
    backend = ScriptedBackend("bad-client", responder=lambda messages: output)
    client = VirtualClient(backend, ClientConfig(max_retries=2))
    history = [
        {"speaker": "client", "statement": "", "stage_direction": "Sits down"},
        {"speaker": "therapist", "statement": THERAPIST_LINE, "stage_direction": None},
    ]
    with pytest.raises(ClientFailure) as failure:
        client.reply(PROFILE, history, seed=1)
    assert backend.calls == 3, "bounded: one call plus max_retries"
    assert [a["raw"] for a in failure.value.attempts] == [output] * 3
    assert all(reason in a["error"] for a in failure.value.attempts)
    assert reason in failure.value.reason


def test_first_reply_must_be_non_verbal_and_retry_recovers():
    answers = iter(["[Sits down] Hi, I'm Nadia.", "[Sits down, arms folded]"])
    backend = ScriptedBackend("client", responder=lambda messages: next(answers))
    turn = VirtualClient(backend, ClientConfig(max_retries=3)).reply(PROFILE, [], seed=0)
    assert turn.stage_direction == "Sits down, arms folded" and turn.statement == ""
    assert [a["error"] for a in turn.attempts] == ["first reply must be non-verbal only", None]


def test_end_token_only_after_two_exchanges():
    with pytest.raises(ValueError, match="before the minimum"):
        validate_client_output("[Stands up] I'm done. [/END]", first=False, may_end=False)
    turn = validate_client_output("[Stands up] Thanks, I'll try it. [/END]", first=False, may_end=True)
    assert turn.end and turn.statement == "Thanks, I'll try it." and turn.stage_direction == "Stands up"


# ------------------------------------------------------------------------------------------------------ judges


def _record(statement="I guess it's fine."):
    return {
        "id": "t/p-01-emotional",
        "profile": PROFILE,
        "turns": [
            {"speaker": "client", "statement": "", "stage_direction": "Arms folded"},
            {"speaker": "therapist", "statement": "What brings you here?", "stage_direction": None},
            {"speaker": "client", "statement": statement, "stage_direction": "Shrugs"},
        ],
    }


def test_judge_one_call_per_item_at_temperature_zero_and_cached_rerun_calls_no_model(tmp_path):
    configs = []

    def responder(messages):
        return judge_responder(messages)

    backend = ScriptedBackend("judge", responder=responder)
    original = backend.generate_batch

    def recording_generate_batch(conversations, images, config):
        configs.append(config)
        return original(conversations, images, config)

    backend.generate_batch = recording_generate_batch
    rubrics = [load_rubric(name) for name in ("ctrs", "alliance", "panas")]
    judge = Judge(backend, rubrics, cache_dir=tmp_path / "cache", backoff=0)
    first = judge.judge_session(_record())
    assert len(first["items"]) == 6 + 3 + 40 == backend.calls
    assert {c.temperature for c in configs} == {0.0}
    assert all(item["score"] is not None and not item["cached"] for item in first["items"].values())

    again = Judge(backend, rubrics, cache_dir=tmp_path / "cache", backoff=0).judge_session(_record())
    assert backend.calls == 49, "a cached rerun must call no model"
    assert {k: v["score"] for k, v in again["items"].items()} == {k: v["score"] for k, v in first["items"].items()}
    assert all(item["cached"] for item in again["items"].values())

    Judge(backend, rubrics, cache_dir=tmp_path / "cache", backoff=0).judge_session(_record("Something else."))
    # A different transcript is a new key for every item that reads it; PANAS "before" reads only the profile.
    assert backend.calls == 49 + 6 + 3 + 20


def test_judge_retries_unreadable_answers_with_backoff_then_records_missing(tmp_path):
    answers = {"n": 0}
    waits = []

    def responder(messages):
        answers["n"] += 1
        text = messages[0]["content"][0]["text"]
        if "Goal" in text:
            return "N/A" if len(messages) == 1 else "Score: 5"  # readable on the retry
        return "I would rather not say."

    rubric = load_rubric("alliance")
    judge = Judge(
        ScriptedBackend("judge", responder=responder),
        [rubric],
        tmp_path,
        max_retries=2,
        backoff=0.5,
        sleep=waits.append,
    )
    result = judge.judge_session(_record())
    goal, bond = result["items"]["alliance/goal"], result["items"]["alliance/bond"]
    assert goal["score"] == 5 and goal["raw"] == ["N/A", "Score: 5"] and goal["attempts"] == 2
    assert bond["score"] is None and bond["attempts"] == 3 and bond["raw"] == ["I would rather not say."] * 3
    assert waits == [0.5, 1.0]  # exponential backoff between retry rounds


def test_judge_call_failures_are_retried_and_not_cached(tmp_path):
    state = {"down": True}

    def responder(messages):
        if state["down"]:
            raise ConnectionError("judge server unreachable")
        return "Score: 3"

    backend = ScriptedBackend("judge", responder=responder)
    judge = Judge(backend, [load_rubric("ctrs")], tmp_path, max_retries=1, backoff=0)
    result = judge.judge_session(_record())
    assert all(item["score"] is None and "unreachable" in item["error"] for item in result["items"].values())
    assert backend.calls == 2, "one batch call plus one retry round"
    state["down"] = False
    again = Judge(backend, [load_rubric("ctrs")], tmp_path, max_retries=1, backoff=0).judge_session(_record())
    assert {item["score"] for item in again["items"].values()} == {3}, "a failed call was not cached"


# ------------------------------------------------------------------------------------------------- face loop


class RejectingVerifier:
    name = "always-reject"

    def __init__(self):
        self.seen = []

    def check(self, image, *, description, reference):
        self.seen.append(image.copy())
        return Check(self.name, False, 0.05, 0.2, "stand-in that rejects every face")


def render_face(loop: FaceLoop, **request):
    """`loop.render` for a face request: one client turn's defaults, `request` overriding any of them."""
    defaults = dict(
        identity_key="p-01",
        gender="female",
        age=26,
        stage_direction="Looks away, jaw tight",
        statement="Fine.",
        reference=None,
        seed=100,
    )
    return loop.render(**{**defaults, **request})


def test_face_loop_retries_with_new_seeds_then_records_unverified():
    from dataset_builder.images import get_image_backend

    verifier = RejectingVerifier()
    loop = FaceLoop(get_image_backend("embedded"), [verifier], FaceLoopConfig(max_attempts=4))
    result = render_face(loop)
    assert not result.verified and isinstance(result.image, Image.Image)
    assert [a["seed"] for a in result.attempts] == [100, 101, 102, 103]
    assert all(not a["passed"] and a["checks"][0]["score"] == 0.05 for a in result.attempts)
    assert len(verifier.seen) == 4

    strict = FaceLoop(
        get_image_backend("embedded"), [RejectingVerifier()], FaceLoopConfig(max_attempts=2, on_failure="fail")
    )
    with pytest.raises(FaceLoopFailure, match="always-reject") as failure:
        render_face(strict, stage_direction="Frowns", statement="", seed=0)
    assert len(failure.value.attempts) == 2


def test_verifier_models_load_by_id_and_their_scores_are_recorded(tmp_path):
    from dataset_builder.images import FaceRequest, get_image_backend
    from evaluation.faces import ClipTextVerifier, IdentityVerifier

    model = str(build_tiny_clip(tmp_path / "tiny-clip"))  # loaded by path like a Hub id
    renderer = get_image_backend("embedded")
    reference = renderer.render(FaceRequest("p-01", "neutral", "female", 26))
    identity = IdentityVerifier(model, threshold=0.3).check(reference, description="", reference=reference)
    assert identity.passed and identity.score == pytest.approx(1.0, abs=1e-4)
    clip = ClipTextVerifier(model, threshold=-1.0).check(reference, description="looks away", reference=None)
    assert clip.passed and -1.0 <= clip.score <= 1.0

    config = FaceLoopConfig(max_attempts=2, clip_model=model, clip_threshold=1.01, identity_model=model)
    verifiers = config.build_verifiers()
    assert [v.name.split("(")[0] for v in verifiers] == ["clip_text", "identity"]
    loop = FaceLoop(renderer, verifiers, config)
    result = render_face(loop, stage_direction="looks away", statement="", reference=reference, seed=5)
    assert not result.verified and [a["seed"] for a in result.attempts] == [5, 6]
    for attempt in result.attempts:
        clip_check, identity_check = attempt["checks"]
        assert not clip_check["passed"] and clip_check["threshold"] == 1.01 and clip_check["score"] < 1.01
        assert identity_check["threshold"] == 0.3 and identity_check["score"] is not None


def test_face_loop_llm_expression_and_contrast():
    from dataset_builder.images import get_image_backend

    seen = []

    class Renderer:
        name = "recording"

        def render(self, request):
            seen.append(request)
            return get_image_backend("embedded").render(request)

    writer = ScriptedBackend("expr", responder=lambda m: "Expression: tight lips, eyes down\nContrast: broad smile")
    loop = FaceLoop(Renderer(), [], FaceLoopConfig(expression_source="llm"), expression_backend=writer)
    result = render_face(loop, identity_key="k", gender="male", age=40, stage_direction="Looks at the floor", seed=1)
    assert result.verified and result.expression == "tight lips, eyes down"
    assert seen[0].expression == "tight lips, eyes down" and seen[0].contrast_expression == "broad smile"
    with pytest.raises(ValueError, match="expression model"):
        FaceLoop(Renderer(), [], FaceLoopConfig(expression_source="llm"))


# ----------------------------------------------------------------------------------------------- metric modules


def test_metric_modules_load_with_evaluate_by_path():
    import evaluate

    from evaluation.metrics import METRICS_DIR, metric_path

    for module in METRICS_DIR.glob("*/*.py"):
        if module.name != "__init__.py":
            for line in module.read_text().splitlines():
                assert not (line.startswith("import ") and "," in line), f"{module}: one import per line"
    rouge = evaluate.load(metric_path("rouge_l")).compute(
        predictions=["the cat sat on the mat", "nothing alike"], references=["the cat was on the mat", "zzz"]
    )
    assert rouge["scores"] == pytest.approx([5 / 6, 0.0]) and rouge["rouge_l"] == pytest.approx(5 / 12)
    distinct = evaluate.load(metric_path("distinct_n")).compute(predictions=["a b a b", "a b"])
    assert distinct == {"distinct_1": pytest.approx(2 / 6), "distinct_2": pytest.approx(2 / 4)}
    semantic = evaluate.load(metric_path("semantic_similarity")).compute(
        predictions=["I feel anxious about work.", "I feel anxious about work."],
        references=["I feel anxious about work.", "The recipe needs two eggs."],
    )
    assert semantic["scores"][0] == pytest.approx(1.0, abs=1e-4) and semantic["scores"][1] < 0.4


# ------------------------------------------------------------------------------------------------------ report


def test_bootstrap_ci_and_missing_values():
    from evaluation.report import bootstrap_ci, session_scores

    mean, low, high = bootstrap_ci([1, 2, 3, 4, 5], samples=500, seed=0)
    assert mean == 3 and 1 <= low < 3 < high <= 5
    assert bootstrap_ci([], 10) == (None, None, None) and bootstrap_ci([2.0], 10) == (2.0, None, None)
    judgement = {
        "items": {
            "ctrs/understanding": {"score": 4, "group": "general"},
            "ctrs/interpersonal_effectiveness": {"score": None, "group": "general"},
            "ctrs/collaboration": {"score": 2, "group": "general"},
        }
    }
    scores = session_scores(judgement)
    assert scores["ctrs/interpersonal_effectiveness"] == (None, 0, 1)
    assert scores["ctrs/general"] == (None, 2, 3), "a group score with a missing item is missing, not a partial mean"


def test_rubric_files_are_versioned_and_complete():
    ctrs, alliance, panas = (load_rubric(name, "v1") for name in ("ctrs", "alliance", "panas"))
    assert (ctrs.low, ctrs.high, alliance.low, alliance.high, panas.low, panas.high) == (0, 6, 1, 7, 1, 5)
    assert [i.key for i in ctrs.items("p", "t")] == [
        "ctrs/understanding",
        "ctrs/interpersonal_effectiveness",
        "ctrs/collaboration",
        "ctrs/guided_discovery",
        "ctrs/focus",
        "ctrs/strategy",
    ]
    items = panas.items("profile", "TRANSCRIPT")
    assert len(items) == 40 and len({i.key for i in items}) == 40
    assert all(("TRANSCRIPT" in i.prompt) == ("/after/" in i.key) for i in items)
    with pytest.raises(FileNotFoundError, match="v9"):
        load_rubric("ctrs", "v9")


def test_report_dir_json_is_plain(tmp_path):
    from evaluation.report import write_report

    report = {
        "run": {"dataset": "d", "client_model": "c", "judge_model": "j", "confidence": 0.95, "notes": ["n"]},
        "therapists": {
            "t": {
                "strategy": "text",
                "sessions": {"total": 0, "complete": 0, "failed": 0, "error": 0, "mean_turns": None},
                "scores": {},
                "by_resistance": {},
                "items": {},
                "reference": None,
            }
        },
    }
    folder = write_report(report, tmp_path / "r")
    assert json.loads((folder / "report.json").read_text())["plots"] == {}
    assert "> n" in (folder / "report.md").read_text()


# ------------------------------------------------------------------------------------------------ recipes, CLI


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_bundled_eval_recipes_load(name):
    from evaluation.config import load_eval_config
    from recipes import resolve_recipe

    config = load_eval_config(resolve_recipe(name, kind="eval"))
    assert config.therapists and config.client_model and config.judge_model
    assert all(spec.model.identity != config.judge_model.identity for spec in config.therapists)
    if name == "paper":
        strategies = {spec.strategy for spec in config.therapists}
        assert {"base", "planning", "ec_planning", "cactus_plan"} <= strategies
        assert config.client_model.backend == config.judge_model.backend == "endpoint"
        assert (config.faces.clip_threshold, config.faces.identity_threshold, config.faces.max_attempts) == (
            0.2,
            0.3,
            10,
        )
        assert config.client.max_turns == 20
    else:
        assert {config.client_model.backend, config.judge_model.backend} == {"scripted"}


def test_config_errors_name_the_file_and_key(tmp_path):
    from evaluation.cli import EvaluateArguments, main

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "output_dir: x\ndataset: y\ntherapists: [{name: t, model: {model: m, backend: scripted}}]\n"
        "client_model: {model: client, backend: scripted}\njudge_model: {model: judge, backend: scripted}\n"
        "client: {max_turnz: 3}\n"
    )
    with pytest.raises(ValueError, match=r"bad.yaml.client: unknown key\(s\) \['max_turnz'\]"):
        main(EvaluateArguments(config=str(bad)))
    with pytest.raises(FileNotFoundError, match="no recipe"):
        main(EvaluateArguments(config="no-such-recipe"))


def test_tiny_eval_recipe_points_at_the_quickstart_folders():
    import mirror_quickstart
    from evaluation.config import load_eval_config
    from recipes import resolve_recipe

    config = load_eval_config(resolve_recipe("tiny", kind="eval"))
    root = Path(mirror_quickstart.QuickstartArguments().output)
    assert Path(config.dataset) == root / mirror_quickstart.DATASET_FOLDER
    assert [Path(spec.model.model) for spec in config.therapists] == [root / mirror_quickstart.MODEL_FOLDER]


def test_evaluate_config_model_override_replaces_the_only_therapist_model():
    from evaluation.cli import EvaluateArguments, _with_therapist_model, main
    from evaluation.config import load_eval_config
    from recipes import resolve_recipe

    path = resolve_recipe("tiny", kind="eval")
    config = _with_therapist_model(load_eval_config(path), "some/other-model", path)
    assert [spec.model.model for spec in config.therapists] == ["some/other-model"]
    assert config.therapists[0].model.backend == "transformers"
    with pytest.raises(ValueError, match=r"--model: .*paper.yaml has \d+ therapists .*edit each one's model"):
        main(EvaluateArguments(config="paper", model="some/other-model"))


NSFW_STAND_IN_LABELS = ["normal", "drawing", "neutral", "sketch", "painting", "photo", "nsfw"]


def _tiny_nsfw_classifier(folder: Path) -> tuple[str, float]:
    """A tiny random ViT whose "nsfw" label is the least likely of seven (so the pipeline's default top 5 would drop
    it): the folder, and the model's own softmax probability of "nsfw" for the rendered face, computed here."""
    import torch
    from transformers import ViTForImageClassification, ViTImageProcessor

    from dataset_builder.images import FaceRequest, get_image_backend
    from dataset_builder.tiny import build_tiny_image_classifier

    build_tiny_image_classifier(folder, NSFW_STAND_IN_LABELS, seed=3)
    model = ViTForImageClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.bias.zero_()
        model.classifier.bias[NSFW_STAND_IN_LABELS.index("nsfw")] = -3.0
    model.save_pretrained(folder)

    face = get_image_backend("embedded").render(FaceRequest("p-01", "Looks away, jaw tight", "female", 26, seed=100))
    inputs = ViTImageProcessor.from_pretrained(folder)(images=face.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        probabilities = model.eval()(**inputs).logits.softmax(dim=-1)[0]
    assert probabilities.argsort()[0] == NSFW_STAND_IN_LABELS.index("nsfw")  # the least likely label
    return str(folder), float(probabilities[NSFW_STAND_IN_LABELS.index("nsfw")])


def test_nsfw_verifier_scores_the_models_own_probability_and_follows_the_threshold(tmp_path):
    from dataset_builder.images import get_image_backend
    from evaluation.faces import NSFWVerifier

    model, probability = _tiny_nsfw_classifier(tmp_path / "tiny-nsfw")  # loaded by path like a Hub id
    assert 0.0 < probability < 0.2

    passing = FaceLoopConfig(max_attempts=3, nsfw_model=model, nsfw_threshold=probability * 2)
    (verifier,) = passing.build_verifiers()
    assert isinstance(verifier, NSFWVerifier) and verifier.name == f"nsfw({model})"
    result = render_face(FaceLoop(get_image_backend("embedded"), [verifier], passing))
    assert result.verified and [a["seed"] for a in result.attempts] == [100]
    check = result.attempts[0]["checks"][0]
    assert check["passed"] and check["threshold"] == probability * 2
    assert check["score"] == pytest.approx(probability, rel=1e-4)

    rejecting = FaceLoopConfig(max_attempts=3, nsfw_model=model, nsfw_threshold=probability / 2)
    result = render_face(FaceLoop(get_image_backend("embedded"), rejecting.build_verifiers(), rejecting))
    assert not result.verified and [a["seed"] for a in result.attempts] == [100, 101, 102]
    assert len({a["sha256"] for a in result.attempts}) == 3  # a new face per seed, each one recorded
    for attempt in result.attempts:
        (check,) = attempt["checks"]
        assert not attempt["passed"] and not check["passed"] and check["threshold"] == probability / 2
        assert check["score"] > probability / 2
    assert result.attempts[0]["checks"][0]["score"] == pytest.approx(probability, rel=1e-4)  # seed 100's face


def test_nsfw_verifier_refuses_a_model_without_the_configured_label(tmp_path):
    from dataset_builder.tiny import build_tiny_image_classifier

    model = str(build_tiny_image_classifier(tmp_path / "gender", ["female", "male"]))
    config = FaceLoopConfig(nsfw_model=model, nsfw_labels=["nsfw"])
    with pytest.raises(ValueError, match=r"NSFW model .*gender.* has labels \['female', 'male'\].*'nsfw'"):
        config.build_verifiers()
    with pytest.raises(ValueError, match="nsfw_labels"):
        FaceLoopConfig(nsfw_labels="nsfw")
