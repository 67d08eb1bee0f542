"""The bundled sample (dataset_builder/sample): the paper's paired design, fidelity, variety and the cue check.

Counts come from the files and the schema, not from constants: the shape the issue asks for (every client in all
four resistance styles, each CBT technique used by exactly one client) is what is asserted.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from dataset_builder.cues import check_cues, cue_warning_flags, cue_warnings
from dataset_builder.filters import MAX_TURNS, MIN_TURNS, TEXT_FILTERS, apply_filters
from dataset_builder.schema import RESISTANCE_STYLES, TECHNIQUES
from dataset_builder.validation import ImagePolicy, validate_profile, validate_session

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "dataset_builder" / "sample"


def _read(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE_DIR / name).read_text(encoding="utf-8").splitlines() if line.strip()]


SESSIONS = _read("sessions.jsonl")
PROFILES = _read("profiles.jsonl")
NO_IMAGES = ImagePolicy(require_images=False)


def _by_client() -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for record in SESSIONS:
        groups[record["identity"]["key"]].append(record)
    return groups


def _client_turns(record):
    return [turn for turn in record["turns"] if turn["speaker"] == "client"]


def _therapist_lines(records=SESSIONS):
    return [turn["statement"] for record in records for turn in record["turns"] if turn["speaker"] == "therapist"]


# ---------------------------------------------------------------------------------------------------------------
# The paired design


def test_every_client_is_played_in_all_four_styles():
    groups = _by_client()
    assert len(groups) == len(TECHNIQUES)  # one client per technique: 12 clients
    assert len(SESSIONS) == len(groups) * len(RESISTANCE_STYLES)  # 48 sessions
    for key, records in groups.items():
        assert sorted(r["resistance"] for r in records) == sorted(RESISTANCE_STYLES), key
        assert {r["id"] for r in records} == {f"{key}-{style}" for style in RESISTANCE_STYLES}
        first = records[0]
        for record in records[1:]:  # same person, thought, technique and plan in every style
            assert record["client"] == first["client"], record["id"]
            assert (record["cbt_technique"], record["cbt_plan"]) == (first["cbt_technique"], first["cbt_plan"])


def test_each_technique_is_used_by_exactly_one_client():
    techniques = [records[0]["cbt_technique"] for records in _by_client().values()]
    assert sorted(techniques) == sorted(TECHNIQUES)
    assert Counter(r["cbt_technique"] for r in SESSIONS) == dict.fromkeys(TECHNIQUES, len(RESISTANCE_STYLES))


def test_any_prefix_of_the_file_mixes_clients_and_styles():
    # Tests and quick looks take the first few records; they should not all be one client or one style.
    first = SESSIONS[: len(RESISTANCE_STYLES)]
    assert len({r["identity"]["key"] for r in first}) == len(first)
    assert {r["resistance"] for r in first} == set(RESISTANCE_STYLES)


def test_clients_are_varied_and_plausible_for_the_faces():
    clients = [records[0]["client"] for records in _by_client().values()]
    ages = [c["age"] for c in clients]
    assert all(19 <= age <= 70 for age in ages) and min(ages) <= 25 and max(ages) >= 65
    assert {c["gender"] for c in clients} == {"female", "male", "non-binary"}
    assert len({c["occupation"] for c in clients}) == len(clients)
    assert len({c["name"] for c in clients}) == len(clients)


def test_eval_profiles_carry_technique_and_plan_and_are_new_people():
    assert len(PROFILES) == 8
    training = {r["client"]["name"] for r in SESSIONS} | {r["client"]["distorted_thought"] for r in SESSIONS}
    for profile in PROFILES:
        validate_profile(profile, SAMPLE_DIR, NO_IMAGES, encode=False)
        assert profile["cbt_technique"] in TECHNIQUES, profile["id"]
        steps = re.findall(r"(?:^|\s)(\d)\.\s", profile["cbt_plan"])
        assert steps[:3] == ["1", "2", "3"], profile["id"]  # a numbered plan, not a placeholder
        assert profile["client"]["name"] not in training and profile["client"]["distorted_thought"] not in training
    assert {p["resistance"] for p in PROFILES} == set(RESISTANCE_STYLES)


# ---------------------------------------------------------------------------------------------------------------
# Shape, validation, filters


@pytest.mark.parametrize("record", SESSIONS, ids=[r["id"] for r in SESSIONS])
def test_session_validates_passes_every_filter_and_has_the_protocol_shape(record):
    validate_session(copy.deepcopy(record), SAMPLE_DIR, NO_IMAGES, encode=False)
    results, failed = apply_filters(copy.deepcopy(record))
    assert not failed, [(r.name, r.reason) for r in failed]
    assert {r.name: r.score for r in results}["cue_warnings"] == 0

    turns = record["turns"]
    assert MIN_TURNS <= len(turns) <= MAX_TURNS
    opening = turns[0]  # the paper's evaluation protocol: the client enters, non-verbal only
    assert opening["speaker"] == "client" and opening["statement"] == "" and opening["stage_direction"].strip()
    assert [t["speaker"] for t in turns] == ["client", "therapist"] * (
        len(turns) // 2
    )  # alternating, ends on therapist
    for turn in turns:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", turn["statement"].strip()) if s]
        if turn["speaker"] == "therapist":
            assert turn["stage_direction"] is None and "[" not in turn["statement"]
            assert 1 <= len(sentences) <= 2, turn["statement"]
        else:
            assert len(sentences) <= 3, turn["statement"]


def test_no_therapist_line_cites_a_cue_the_face_image_lacks():
    warnings = {r["id"]: [str(w) for w in check_cues(r)] for r in SESSIONS}
    assert {k: v for k, v in warnings.items() if v} == {}


def test_expressions_lead_with_a_category_the_renderer_draws():
    from dataset_builder.images.face_renderer import CATEGORIES, parse_expression

    for record in SESSIONS:
        for turn in _client_turns(record):
            for field in ("expression", "contrast_expression"):
                text = turn[field]
                leading = re.match(r"[a-z]+", text).group(0)
                assert leading in CATEGORIES, (record["id"], field, text)
                assert parse_expression(text).category == leading, (record["id"], field, text)


_FACE = re.compile(
    r"\b(?:eyes?|gaze|brows?|eyebrows?|mouth|lips?|smil\w*|jaw|face|head|chin|grin\w*|frown\w*|tears?|glanc\w*|"
    r"look\w*|star\w*|blink\w*|winc\w*|grimac\w*|laugh\w*|nod\w*|smirk\w*|expression|forehead|tight-lipped)\b",
    re.IGNORECASE,
)
_BODY = re.compile(
    r"\b(?:arms?|hands?|fingers?|knees?|legs?|feet|foot|shoulders?|lap|chair|phone|jacket|hood|sits?|slouch\w*|"
    r"lean\w*|shrug\w*)\b",
    re.IGNORECASE,
)


def test_stage_directions_lead_with_what_the_face_shows():
    for record in SESSIONS:
        for turn in _client_turns(record):
            direction = turn["stage_direction"]
            face, body = _FACE.search(direction), _BODY.search(direction)
            assert face, (record["id"], direction)
            assert body is None or face.start() < body.start(), (record["id"], direction)
    arms = sum(
        bool(re.search(r"\barms?\s+(?:crossed|folded)|(?:cross|fold)\w*\s+(?:\w+\s+)?arms", t["stage_direction"]))
        for r in SESSIONS
        for t in _client_turns(r)
    )
    assert arms <= 3


# ---------------------------------------------------------------------------------------------------------------
# Variety of arcs and wording


def test_therapist_wording_has_no_tics():
    lines = _therapist_lines()
    first_words = Counter(line.split()[0].strip(",.").lower() for line in lines)
    assert first_words.most_common(1)[0][1] <= 0.1 * len(lines), first_words.most_common(5)
    assert sum(line.startswith(("That's", "That is")) for line in lines) <= 5
    assert sum("as an experiment this week" in line.lower() for line in lines) <= 1
    openings = Counter(" ".join(r["turns"][1]["statement"].split()[:2]) for r in SESSIONS)
    assert openings.most_common(1)[0][1] <= 6, openings.most_common(3)
    closings = Counter(" ".join(r["turns"][-1]["statement"].split()[:2]) for r in SESSIONS)
    assert closings.most_common(1)[0][1] <= 6, closings.most_common(3)


_LEAVES = re.compile(r"\b(?:leave it here|head off|going to go|get back|stop here)\b", re.IGNORECASE)
_REFUSES = re.compile(
    r"\b(?:no|not|won't|don't)\b[^.]*\b(?:homework|worksheets?|forms?|diar(?:y|ies)|survey)\b|\bi'm not doing that\b",
    re.IGNORECASE,
)
_REPAIR = re.compile(r"\bi'?m sorry\b|\bcame across\b", re.IGNORECASE)


def test_arcs_include_early_endings_refusals_repairs_and_long_sessions():
    early = [r["id"] for r in SESSIONS if len(r["turns"]) <= 8 and _LEAVES.search(_client_turns(r)[-1]["statement"])]
    refused = [r["id"] for r in SESSIONS if any(_REFUSES.search(t["statement"]) for t in _client_turns(r))]
    repaired = [r["id"] for r in SESSIONS if any(_REPAIR.search(line) for line in _therapist_lines([r]))]
    long_sessions = [r["id"] for r in SESSIONS if len(r["turns"]) >= MAX_TURNS - 2]
    assert len(early) >= 2 and len(refused) >= 2 and len(repaired) >= 2 and len(long_sessions) >= 3
    resistant = {r["id"] for r in SESSIONS if r["resistance"] != "none"}
    assert set(early) | set(refused) <= resistant  # open clients neither walk out nor refuse
    assert len({len(r["turns"]) for r in SESSIONS}) >= 6


# ---------------------------------------------------------------------------------------------------------------
# Fidelity and safety


def test_health_anxiety_work_keeps_the_medical_red_flag_rule():
    health = [r for r in SESSIONS if re.search(r"chest|heart", r["client"]["distorted_thought"], re.IGNORECASE)]
    assert health
    for record in health:
        assert "emergency services" in record["cbt_plan"]
        lines = " ".join(_therapist_lines([record])).lower()
        assert re.search(r"chest pain", lines) and re.search(r"emergency services|ambulance", lines), record["id"]
        assert not re.search(r"\bwait\w*\s+(?:\w+\s+)?(?:minutes|hours)\b", lines), record["id"]


def test_technique_specific_moves_come_from_the_client():
    for record in SESSIONS:
        lines = _therapist_lines([record])
        if len(record["turns"]) < 10:  # a session that ended early never reached the technique
            continue
        if record["cbt_technique"] == "Alternative Perspective":
            # the therapist asks for explanations; it does not supply them as statements
            asks = [line for line in lines if re.search(r"\b(?:reasons|explanations?|else)\b", line) and "?" in line]
            assert asks, record["id"]
        if record["cbt_technique"] == "Pros and Cons Analysis":
            assert not any(re.search(r"worry (?:period|time)|postpone", line, re.IGNORECASE) for line in lines)
            assert any(re.search(r"\b(?:weigh\w*|side by side|which .* matter)", line) for line in lines), record["id"]


def test_client_words_raise_no_crisis_flag():
    from inference.safety import CrisisDetector, SafetyConfig

    statements = [t["statement"] for r in SESSIONS for t in _client_turns(r) if t["statement"]]
    results = CrisisDetector(SafetyConfig(use_embeddings=False)).detect_batch(statements)
    assert [s for s, result in zip(statements, results, strict=True) if result.is_risk or result.check_in] == []


# ---------------------------------------------------------------------------------------------------------------
# The cue check itself


def _session(expression: str, therapist: str) -> dict:
    return {
        "turns": [
            {"speaker": "client", "statement": "", "expression": expression},
            {"speaker": "therapist", "statement": therapist, "expression": None},
        ]
    }


@pytest.mark.parametrize(
    "line, cue",
    [
        ("You say it's not much, and I also notice your knee moving quite fast as you talk.", "legs or feet"),
        ("I notice your hands keep smoothing your skirt while you speak.", "hands or arms"),
        ("I noticed you turned your ring just then.", "hands or arms"),
        ("You're saying sure, but you're leaning back with your arms folded.", "shoulders or posture"),
        ("You shrugged when I asked about her.", "shoulders or posture"),
        ("Your voice went very quiet just then.", "voice"),
        ("Being careful makes sense, and I noticed you checked your pulse just as you said that.", "hands or arms"),
        ("You say nothing much, and I notice you are picking at that thread.", "clothing or props"),
        ("Good morning, I see you've brought a notebook, so what would you like to focus on?", "clothing or props"),
        ("Hello, and I see you've brought some work with you.", "clothing or props"),
    ],
)
def test_body_and_prop_cues_are_flagged_whatever_the_face_shows(line, cue):
    warnings = check_cues(_session("anxious, brows raised, lips pressed, gaze averted", line))
    assert cue in {w.cue for w in warnings} and all(w.kind == "body" for w in warnings)
    assert warnings[0].turn_index == 1 and "cannot show" in str(warnings[0])


@pytest.mark.parametrize(
    "line, expression, cue",
    [
        ("You looked away just then.", "anxious, brows raised, direct gaze", "gaze away"),
        ("Your smile didn't quite reach your eyes.", "sad, downturned mouth, eyes glistening", "smile or laugh"),
        ("I can see tears in your eyes.", "angry, jaw clenched, brows pulled down", "tears"),
        ("You rolled your eyes when I said that.", "sceptical, one eyebrow raised", "eye roll"),
        ("You look relieved.", "sad, tearful, head down", "looking relieved"),
        ("I noticed you frowned as you said it.", "happy, broad smile, relaxed face", "brows"),
    ],
)
def test_facial_cues_missing_from_the_expression_are_flagged(line, expression, cue):
    assert [(w.kind, w.cue) for w in check_cues(_session(expression, line))] == [("facial", cue)]


@pytest.mark.parametrize(
    "line, expression",
    [
        ("You looked away just then.", "withdrawn, looking away, lips pressed"),
        ("Your smile didn't quite reach your eyes.", "masking, polite smile that doesn't reach the eyes, brows tense"),
        ("You rolled your eyes when I said that.", "sceptical, eye roll, mouth twisted"),
        ("You look relieved.", "happy, small smile, brows relaxed"),
        (
            "Could you set a reminder on your phone for Tuesday?",
            "neutral, steady gaze",
        ),  # homework, not an observation
        ("What would make you smile this week?", "sad, downturned mouth"),
        ("The decision is in your hands.", "neutral, steady gaze"),
        ("How sure are you, from 0 to 100?", "neutral, steady gaze"),
        ("I notice the phone call is already sliding toward next week.", "neutral, steady gaze"),
        ("Could you ask them afterwards what they noticed about your voice?", "neutral, steady gaze"),  # homework
    ],
)
def test_cues_the_face_shows_and_non_observations_are_not_flagged(line, expression):
    assert check_cues(_session(expression, line)) == []


def test_the_face_cited_is_the_latest_client_turn():
    record = _session("happy, broad smile", "Good to see you.")
    record["turns"] += [
        {"speaker": "client", "statement": "Fine.", "expression": "withdrawn, gaze lowered, flat mouth"},
        {"speaker": "therapist", "statement": "You smiled just then.", "expression": None},
    ]
    assert [(w.turn_index, w.cue) for w in check_cues(record)] == [(3, "smile or laugh")]
    assert cue_warning_flags(record) == [f"cue_warning: {check_cues(record)[0]}"]


def test_cue_warnings_is_a_warning_level_filter():
    assert cue_warnings in TEXT_FILTERS
    record = copy.deepcopy(SESSIONS[0])
    record["turns"][3]["statement"] = "I notice your knee bouncing. What happens next?"
    result = cue_warnings(record)
    assert result.passed and result.score == 1 and "knee" in result.reason


def test_build_keeps_the_session_and_counts_its_cue_warnings_in_filtered(tmp_path):
    from datasets import load_dataset
    from helpers import sample_records, with_images, write_raw

    from dataset_builder.build import build_dataset

    records = with_images(sample_records(2), tmp_path / "raw")
    therapist = next(i for i, t in enumerate(records[1]["turns"]) if t["speaker"] == "therapist" and i > 1)
    records[1]["turns"][therapist]["statement"] = "I noticed you crossed your arms just then. What was that about?"
    result = build_dataset(write_raw(tmp_path / "raw", records), tmp_path / "out")
    assert result.num_rows["sessions"] == 2  # a warning, not a drop
    filtered = load_dataset(str(tmp_path / "out"), "filtered", split="train")
    counts = {
        row["id"]: {s["filter"]: s["score"] for s in row["scores"]}.get("cue_warnings")
        for row in filtered
        if row["kind"] == "session"
    }
    assert counts == {records[0]["id"]: 0.0, records[1]["id"]: 1.0}
    sessions = {row["id"]: row for row in load_dataset(str(tmp_path / "out"), split="train")}
    (flag,) = sessions[records[1]["id"]]["quality"]["flags"]
    assert flag.startswith(f"cue_warning: turns[{therapist}]") and "crossed your arms" in flag
    assert sessions[records[0]["id"]]["quality"]["flags"] == []
