"""Each quality filter on crafted passing and failing sessions; model filters with tiny stand-ins built from configs."""

from __future__ import annotations

import copy

import pytest
from helpers import sample_records, with_images, write_raw
from PIL import Image

from dataset_builder import filters as F


def session(*statements, client=None):
    """A session alternating client/therapist, starting with the client."""
    turns = []
    for index, text in enumerate(statements):
        speaker = "client" if index % 2 == 0 else "therapist"
        turns.append(
            {
                "speaker": speaker,
                "statement": text,
                "stage_direction": "looks away" if speaker == "client" else None,
                "image": None,
                "expression": None,
                "contrast_expression": None,
            }
        )
    client = client or {
        "personal_info": "Dana works nights at a pharmacy and has a nine year old son who "
        "lives with her in a small flat near the station.",
        "reason_for_counseling": "sleep",
        "age": 34,
        "gender": "female",
    }
    return {"id": "s", "client": client, "turns": turns, "quality": {"scores": {}, "flags": []}}


GOOD = session(
    "I guess I'm fine.",
    "What brings you here today?",
    "Work has been stressful lately.",
    "That sounds hard; tell me more about it.",
)


def test_good_session_passes_every_text_filter():
    results, failed = F.apply_filters(GOOD)
    assert not failed and {r.name for r in results} >= {
        "turn_count",
        "speaker_count",
        "word_repetition",
        "therapist_failure",
        "profile_copy",
        "pos_repetition",
        "recorded_failures",
    }


def test_turn_count_bounds_and_config():
    short = session("Hi.", "Hello.")
    assert not F.turn_count(short).passed and F.turn_count(GOOD).passed
    assert F.turn_count(short, F.FilterConfig(min_turns=2)).passed
    long = session(*(["Fine.", "Okay then."] * 11))
    assert not F.turn_count(long).passed and F.turn_count(long).score == 22


def test_speaker_count():
    three = copy.deepcopy(GOOD)
    three["turns"][2]["speaker"] = "narrator"
    assert F.speaker_count(GOOD).passed and not F.speaker_count(three).passed


def test_word_repetition():
    looping = session("I feel bad bad bad bad bad bad bad bad bad bad.", "Okay.", "Yes.", "Right.")
    result = F.word_repetition(looping)
    assert not result.passed and result.score < 0.5 and F.word_repetition(GOOD).passed


@pytest.mark.parametrize("reply", ["", "I don't know.", "As an AI, I cannot help with that."])
def test_therapist_failure(reply):
    failing = session("Hello.", reply, "Hm.", "Let's begin with what brought you here.")
    assert not F.therapist_failure(failing).passed and F.therapist_failure(GOOD).passed


def test_profile_copy():
    copying = session(
        "Dana works nights at a pharmacy and has a nine year old son who lives with me.", "I see.", "Yes.", "Go on."
    )
    assert not F.profile_copy(copying).passed and F.profile_copy(GOOD).passed


def test_pos_repetition_lexicon_tagger():
    assert F.lexicon_pos_tags("I really really quickly slowly ran") == ["PRON", "ADV", "ADV", "ADV", "ADV", "X"]
    failing = session("I am very very really quite tired.", "Okay.", "Yes.", "Right.")
    result = F.pos_repetition(failing)
    assert not result.passed and "ADV" in result.reason and result.score == 4
    assert F.pos_repetition(GOOD).passed
    # Unknown words (tag X) never form a run, so plain noun lists are not counted by the approximation.
    assert F.pos_repetition(session("Pizza pasta salad bread cheese.", "Ok.", "Ok then.", "Right.")).passed


def test_pos_tagger_spacy_missing_is_loud():
    config = F.FilterConfig(pos_tagger="spacy:en_core_web_does_not_exist")
    with pytest.raises(OSError, match="spacy"):
        F.pos_repetition(GOOD, config)
    with pytest.raises(ValueError, match="Unknown pos_tagger"):
        F.pos_repetition(GOOD, F.FilterConfig(pos_tagger="nope"))


def test_recorded_failures_drop_in_builder(tmp_path):
    from datasets import load_dataset

    from dataset_builder.build import build_dataset

    records = with_images(sample_records(2), tmp_path / "raw")
    records[1]["quality"]["flags"] = ["failed:nsfw: turn 2: NSFW p=0.97"]
    records[1]["quality"]["scores"] = {"nsfw": 0.97}
    write_raw(tmp_path / "raw", records)
    result = build_dataset(tmp_path / "raw", tmp_path / "ds")
    assert result.num_rows["sessions"] == 1 and result.filtered == 1
    filtered = load_dataset(str(tmp_path / "ds"), "filtered", split="train").filter(lambda r: not r["kept"])
    row = filtered[0]
    assert row["id"] == records[1]["id"] and row["field"] == "recorded_failures" and "NSFW p=0.97" in row["reason"]
    assert {"filter": "nsfw", "score": pytest.approx(0.97)} in row["scores"]


def test_dialogue_safety():
    safety = F.DialogueSafety(F.FilterConfig())
    assert safety(GOOD).passed
    unsafe = session("I can't sleep.", "Maybe just stop taking your medication and see.", "Okay.", "Good.")
    result = safety(unsafe)
    assert not result.passed and "turn 1" in result.reason
    crisis = session("Hi.", "Honestly I want to kill myself too.", "What?", "Sorry.")
    assert not safety(crisis).passed
    # A risk-assessment question is good practice, not unsafe.
    asks = session("Everything is pointless.", "Have you had any thoughts of ending your life?", "No.", "Thank you.")
    assert safety(asks).passed


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from dataset_builder.tiny import build_tiny_clip, build_tiny_image_classifier

    root = tmp_path_factory.mktemp("filter-models")
    return {
        "clip": str(build_tiny_clip(root / "clip")),
        "age34": str(build_tiny_image_classifier(root / "age34", ["0-2", "20-29", "30-39", "70+"], favour="30-39")),
        "age70": str(build_tiny_image_classifier(root / "age70", ["0-2", "20-29", "30-39", "70+"], favour="70+")),
        "female": str(build_tiny_image_classifier(root / "female", ["female", "male"], favour="female")),
        "male": str(build_tiny_image_classifier(root / "male", ["female", "male"], favour="male")),
        "safe": str(build_tiny_image_classifier(root / "safe", ["normal", "nsfw"], favour="normal")),
        "nsfw": str(build_tiny_image_classifier(root / "nsfw", ["normal", "nsfw"], favour="nsfw")),
    }


def _config(models, **overrides):
    base = {
        "clip_model": models["clip"],
        "identity_model": models["clip"],
        "age_model": models["age34"],
        "gender_model": models["female"],
        "nsfw_model": models["safe"],
    }
    return F.FilterConfig(**{**base, **overrides})


FACE = Image.new("RGB", (336, 336), (210, 160, 130))
OTHER = Image.effect_noise((336, 336), 120).convert("RGB")


def test_model_filters_pass_and_fail(tiny_models):
    record = GOOD
    passing = F.ModelFilters(_config(tiny_models, min_clip_similarity=-1.0, min_face_probability=0.0))
    results, skipped = passing.score(record, {0: FACE, 2: FACE}, reference=FACE)
    by_name = {r.name: r for r in results}
    assert not skipped and all(r.passed for r in results), results
    assert set(by_name) == {
        "clip_similarity",
        "face_presence",
        "age_consistency",
        "gender_consistency",
        "identity_similarity",
        "nsfw",
    }
    assert by_name["identity_similarity"].score == pytest.approx(1.0, abs=1e-5)
    assert by_name["age_consistency"].score == pytest.approx(0.5, abs=0.01)  # 30-39 -> 34.5 vs 34

    failing = F.ModelFilters(
        _config(
            tiny_models,
            age_model=tiny_models["age70"],
            gender_model=tiny_models["male"],
            nsfw_model=tiny_models["nsfw"],
            min_identity_similarity=0.999,
            min_clip_similarity=1.01,
            min_face_probability=1.01,
        )
    )
    results, _ = failing.score(record, {0: FACE, 2: OTHER}, reference=FACE)
    by_name = {r.name: r for r in results}
    assert not any(r.passed for r in results), results
    assert "predicted age 75 vs profile 34" in by_name["age_consistency"].reason
    assert "male" in by_name["gender_consistency"].reason and "turn 2" in by_name["identity_similarity"].reason


def test_clip_score_is_the_cosine_of_the_model(tiny_models):
    import torch
    from transformers import AutoModel, AutoProcessor

    filters = F.ModelFilters(_config(tiny_models))
    result = filters.clip_similarity(GOOD, {0: FACE})[0]
    model, processor = (
        AutoModel.from_pretrained(tiny_models["clip"]),
        AutoProcessor.from_pretrained(tiny_models["clip"]),
    )
    inputs = processor(text=["A facial photo with looks away"], images=[FACE], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    expected = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert result.score == pytest.approx(expected, abs=1e-4)
    assert result.passed == (expected >= 0.2)


def test_missing_model_is_loud(tiny_models):
    config = _config(tiny_models, nsfw_model="no-such-org/no-such-nsfw-model")
    with pytest.raises(F.ModelUnavailable, match=r"filter nsfw: cannot load.*on_missing_model: skip"):
        F.ModelFilters(config).score(GOOD, {0: FACE}, reference=FACE)
    skipping = F.ModelFilters(
        _config(tiny_models, nsfw_model="no-such-org/no-such-nsfw-model", on_missing_model="skip", age_model=None)
    )
    results, skipped = skipping.score(GOOD, {0: FACE}, reference=None)
    assert any(s.startswith("skipped:nsfw: cannot load") for s in skipped)
    assert "skipped:age_consistency: disabled in the config (no model id)" in skipped
    assert "skipped:identity_similarity: no reference face" in skipped
    assert "nsfw" not in {r.name for r in results}


def test_generation_judged_records_drop_only_on_recorded_failures():
    short = session("Hi.", "Hello.")  # fails turn_count at the default thresholds
    short["quality"]["flags"] = [F.JUDGED_FLAG]  # judged by a recipe that allowed 2 turns
    results, failed = F.apply_filters(short)
    assert not failed and not next(r for r in results if r.name == "turn_count").passed
    short["quality"]["flags"].append("failed:nsfw: turn 0: NSFW p=0.90")
    assert [r.name for r in F.apply_filters(short)[1]] == ["recorded_failures"]


def test_dialogue_safety_classifier_by_id(tmp_path):
    from dataset_builder.tiny import build_tiny_text_classifier

    unsafe = build_tiny_text_classifier(tmp_path / "unsafe", ["safe", "unsafe"], favour="unsafe")
    safe = build_tiny_text_classifier(tmp_path / "safe", ["safe", "unsafe"], favour="safe")
    failing = F.DialogueSafety(F.FilterConfig(safety_model=str(unsafe)))(GOOD)
    assert not failing.passed and "classifier unsafe p=1.00" in failing.reason and failing.score > 0.99
    assert F.DialogueSafety(F.FilterConfig(safety_model=str(safe)))(GOOD).passed
    with pytest.raises(F.ModelUnavailable, match="no-such-org/safety"):
        F.DialogueSafety(F.FilterConfig(safety_model="no-such-org/safety"))


def test_image_classifier_filters_read_every_label_not_the_pipelines_top_five(tmp_path, tiny_models):
    """The image-classification pipeline keeps only its top 5 labels unless asked for all: an NSFW label ranked
    seventh must still count with the model's own probability."""
    import torch
    from transformers import ViTForImageClassification, ViTImageProcessor

    from dataset_builder.tiny import build_tiny_image_classifier

    labels = ["normal", "drawing", "neutral", "sketch", "painting", "photo", "nsfw"]
    folder = build_tiny_image_classifier(tmp_path / "nsfw7", labels, seed=3)
    model = ViTForImageClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.bias.zero_()
        model.classifier.bias[labels.index("nsfw")] = -3.0  # the least likely label for any image
    model.save_pretrained(folder)
    inputs = ViTImageProcessor.from_pretrained(folder)(images=FACE, return_tensors="pt")
    with torch.no_grad():
        probabilities = model.eval()(**inputs).logits.softmax(dim=-1)[0]
    assert int(probabilities.argsort()[0]) == labels.index("nsfw")
    expected = float(probabilities[labels.index("nsfw")])

    filters = F.ModelFilters(_config(tiny_models, nsfw_model=str(folder), nsfw_threshold=expected / 2))
    result = filters.nsfw({0: FACE})
    assert result.score == pytest.approx(expected, rel=1e-4) and not result.passed
