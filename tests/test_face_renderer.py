"""The embedded face renderer: deterministic, identity-consistent across expressions, and expressive."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_builder.images import FaceRequest, ImageBackend, get_image_backend
from dataset_builder.images.face_renderer import (
    CATEGORIES,
    CATEGORY_PRIORITY,
    EmbeddedFaceRenderer,
    ExpressionParams,
    _identity,
    face_box,
    identity_regions,
    parse_expression,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# A spread of people (checked against their hashed identities): given, missing and derived gender and age; light,
# medium and deep skin; curly, short, long, bun and bald hair; glasses, stubble and a full beard.
CLIENTS = [
    ("sample-01", "female", 34),  # curly, medium skin
    ("sample-02", "male", 58),  # short grey hair, glasses, stubble, deep skin
    ("eval-03", "non-binary", 24),  # long hair
    ("person-5", "female", None),  # long auburn hair, glasses, light skin
    ("person-6", "male", None),  # full beard
    ("person-9", "female", None),  # bun, glasses
    ("client-3", None, None),  # bald, light skin
    ("rb-12", None, 70),  # bald, deep skin, glasses, old
]
UNTILTED = [c for c in CATEGORIES if parse_expression(c).head_tilt == 0]
TILTED = [c for c in CATEGORIES if parse_expression(c).head_tilt != 0]


@pytest.fixture(scope="module")
def renderer() -> EmbeddedFaceRenderer:
    return EmbeddedFaceRenderer()


@pytest.fixture(scope="module")
def faces(renderer) -> dict[tuple[str, str], np.ndarray]:
    """Every test client in every category, rendered once for the module."""
    return {
        (key, category): _pixels(renderer.render(FaceRequest(key, category, gender=gender, age=age)))
        for key, gender, age in CLIENTS
        for category in CATEGORIES
    }


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _crop(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return pixels[y0:y1, x0:x1]


def _face_centre(size: int) -> tuple[int, int, int, int]:
    """Brows to nose tip between the eyes: mostly skin, even under tilt (long hair and beards fill `face_box`)."""
    return (round(0.4 * size), round(0.34 * size), round(0.6 * size), round(0.52 * size))


def _dominant(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The most frequent colour in a box: flat skin or hair, robust to the features drawn over it."""
    counts = Counter(map(tuple, _crop(pixels, box).reshape(-1, 3).tolist()))
    return np.array(counts.most_common(1)[0][0])


# -- determinism, size, protocol --------------------------------------------------------------------------------


def test_same_request_gives_byte_identical_images():
    request = FaceRequest("sample-01", "Looks away, arms crossed", gender="female", age=34)
    first = EmbeddedFaceRenderer().render(request)
    second = EmbeddedFaceRenderer().render(request)
    assert first.tobytes() == second.tobytes()


def test_identity_does_not_depend_on_python_hash_seed():
    """Python's salted hash() would give each process a different person; SHA-256 must not."""
    code = (
        "import hashlib; from dataset_builder.images import FaceRequest;"
        "from dataset_builder.images.face_renderer import EmbeddedFaceRenderer;"
        "img = EmbeddedFaceRenderer().render(FaceRequest('eval-03', 'sad'));"
        "print(hashlib.sha256(img.tobytes()).hexdigest())"
    )
    expected = hashlib.sha256(EmbeddedFaceRenderer().render(FaceRequest("eval-03", "sad")).tobytes()).hexdigest()
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


@pytest.mark.parametrize("size", [None, 224, 512])
def test_size_and_mode(renderer, size):
    request = (
        FaceRequest("sample-02", "surprised") if size is None else FaceRequest("sample-02", "surprised", size=size)
    )
    image = renderer.render(request)
    assert image.mode == "RGB"
    assert image.size == (request.size, request.size)
    assert request.size == (size or 336)


def test_registered_as_the_embedded_backend():
    backend = get_image_backend("embedded")
    assert isinstance(backend, EmbeddedFaceRenderer)
    assert isinstance(backend, ImageBackend)
    assert backend.name == "embedded-face-renderer-v1"


def test_renders_fast_enough_for_dataset_generation(renderer):
    """The budget is 50 ms of one core per image (about 12 ms measured). CPU time, not wall time, so a busy CI
    machine does not fail it; the 100 ms bound still catches an order-of-magnitude regression."""
    renderer.render(FaceRequest("warm-up", "neutral"))
    start = time.process_time()
    for k, category in enumerate(CATEGORIES):
        renderer.render(FaceRequest(f"timing-{k}", category))
    assert (time.process_time() - start) / len(CATEGORIES) < 0.1


# -- identity consistency -------------------------------------------------------------------------------------


def test_most_categories_keep_the_head_still():
    # Otherwise the pixel-equality test below would check almost nothing.
    assert len(UNTILTED) >= 6
    assert TILTED == ["withdrawn"]


@pytest.mark.parametrize("key", [key for key, _, _ in CLIENTS])
@pytest.mark.parametrize("category", UNTILTED)
def test_untilted_expressions_change_nothing_outside_the_face(faces, key, category):
    neutral, other = faces[key, "neutral"], faces[key, category]
    for box in identity_regions(neutral.shape[0]):
        assert np.array_equal(_crop(neutral, box), _crop(other, box)), box
    outside = np.ones(neutral.shape[:2], dtype=bool)
    x0, y0, x1, y1 = face_box(neutral.shape[0])
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(neutral[outside], other[outside])


@pytest.mark.parametrize(
    "expression", ["Eyes welling up", "Rolls eyes", "Clenches jaw", "Tearful, looks down", "very happy"]
)
def test_free_text_expressions_keep_the_identity_regions(renderer, expression):
    assert parse_expression(expression).head_tilt == 0
    neutral = _pixels(renderer.render(FaceRequest("sample-02", "neutral", gender="male", age=58)))
    other = _pixels(renderer.render(FaceRequest("sample-02", expression, gender="male", age=58)))
    assert not np.array_equal(neutral, other)
    for box in identity_regions(neutral.shape[0]):
        assert np.array_equal(_crop(neutral, box), _crop(other, box)), box


def test_identity_regions_carry_identity(faces):
    """The regions are not blank: every pair of clients differs in at least one of them."""
    size = faces[CLIENTS[0][0], "neutral"].shape[0]
    for (a, _, _), (b, _, _) in itertools.combinations(CLIENTS, 2):
        assert any(
            not np.array_equal(_crop(faces[a, "neutral"], box), _crop(faces[b, "neutral"], box))
            for box in identity_regions(size)
        ), (a, b)


@pytest.mark.parametrize("key", [key for key, _, _ in CLIENTS])
@pytest.mark.parametrize("category", TILTED)
def test_head_tilt_moves_the_head_but_keeps_skin_hair_and_background(faces, key, category):
    neutral, tilted = faces[key, "neutral"], faces[key, category]
    size = neutral.shape[0]
    *corners, crown = identity_regions(size)
    # The background and clothes are not on the head layer, so tilt leaves them alone...
    for box in corners:
        assert np.array_equal(_crop(neutral, box), _crop(tilted, box)), box
    # ...while the head really moved (otherwise this test would be vacuous)...
    assert not np.array_equal(_crop(neutral, crown), _crop(tilted, crown))
    # ...and it is still the same skin and the same hair.
    assert np.abs(_dominant(neutral, _face_centre(size)) - _dominant(tilted, _face_centre(size))).max() <= 3
    _, gender, age = next(client for client in CLIENTS if client[0] == key)
    if _identity(key, gender, age).hair_style != "bald":
        assert np.abs(_dominant(neutral, crown) - _dominant(tilted, crown)).max() <= 3


def test_beards_only_for_men_and_some_men_have_them():
    keys = [f"beard-{k}" for k in range(200)]
    assert all(_identity(key, "female", 40).beard is None for key in keys)
    assert all(_identity(key, "non-binary", 40).beard is None for key in keys)
    assert sum(_identity(key, "male", 40).beard is not None for key in keys) > 40


def test_hair_greys_with_age():
    grey = np.array([206, 205, 202])
    for k in range(50):
        young = np.array(_identity(f"age-{k}", None, 25).hair)
        old = np.array(_identity(f"age-{k}", None, 70).hair)
        assert np.abs(old - grey).sum() < np.abs(young - grey).sum()


def test_different_clients_look_different(faces):
    """Same expression, different key: background, clothes, hair and skin change, so the whole image does."""
    for category in ("neutral", "sad"):
        for (a, _, _), (b, _, _) in itertools.combinations(CLIENTS, 2):
            assert np.abs(faces[a, category] - faces[b, category]).mean() > 10, (a, b, category)


# -- expressiveness -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [key for key, _, _ in CLIENTS])
def test_every_pair_of_categories_differs_on_the_face(faces, key):
    """A mean absolute difference of 1.0 over the face box (about 170x160 px at 336) is what ~1% of its pixels
    changing by ~100 levels gives: roughly one pair of eyebrows moved off its own footprint. Identical
    expressions give exactly 0, since rendering is deterministic."""
    box = face_box(faces[key, "neutral"].shape[0])
    for a, b in itertools.combinations(CATEGORIES, 2):
        diff = np.abs(_crop(faces[key, a], box) - _crop(faces[key, b], box)).mean()
        assert diff > 1.0, (key, a, b, diff)


@pytest.mark.parametrize(("key", "gender", "age"), CLIENTS)
def test_tears_are_drawn(renderer, key, gender, age):
    """Tears are a modifier on top of the category, so compare "sad" with "sad, tearful": two streaks and drops
    change a few hundred pixels clearly (more than 32 levels); 150 is well above anti-aliasing noise (which is 0
    here, as everything else is identical)."""
    plain, tearful = parse_expression("sad"), parse_expression("sad, tearful")
    assert tearful == dataclasses.replace(plain, tears=True)
    box = face_box(336)
    a = _crop(_pixels(renderer.render(FaceRequest(key, "sad", gender=gender, age=age))), box)
    b = _crop(_pixels(renderer.render(FaceRequest(key, "sad, tearful", gender=gender, age=age))), box)
    assert (np.abs(a - b).max(axis=2) > 32).sum() > 150


def test_categories_and_priority_are_consistent():
    assert CATEGORIES == ("neutral", "sad", "angry", "anxious", "surprised", "happy", "sceptical", "withdrawn")
    assert sorted(CATEGORY_PRIORITY) == sorted(CATEGORIES)
    assert CATEGORY_PRIORITY[-1] == "neutral"


@pytest.mark.parametrize("category", CATEGORIES)
def test_category_names_parse_to_themselves(category):
    assert parse_expression(category).category == category


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Looks away, arms crossed", "withdrawn"),
        ("Rolls eyes", "sceptical"),
        ("Eyes welling up", "sad"),
        ("Clenches jaw", "angry"),
        ("Fidgets with sleeve, biting lip", "anxious"),
        ("Eyebrows shoot up", "surprised"),
        ("Small relieved smile", "happy"),
        ("downcast eyes, lips pressed together, slumped shoulders", "sad"),
        ("Shrugs, avoids eye contact", "withdrawn"),
        ("Sits on the edge of the chair, eyes on the floor", "withdrawn"),
        ("frowning, jaw clenched", "angry"),
        ("glares at the therapist", "angry"),
        ("raised eyebrow, smirk", "sceptical"),
        ("Scoffs", "sceptical"),
        ("wide-eyed, mouth open", "surprised"),
        ("tense, biting lip", "anxious"),
        ("tearful, voice shaking", "sad"),
        ("relaxed face, direct eye contact, gentle smile", "happy"),
        ("Stares out the window", "withdrawn"),
        ("calm, neutral expression", "neutral"),
        ("", "neutral"),
        ("The chair is blue", "neutral"),
        ("not smiling", "neutral"),
    ],
)
def test_parse_expression_maps_phrases(text, expected):
    assert parse_expression(text).category == expected


def test_ties_follow_the_documented_priority():
    # "smil..." and "tears" both score 2: sad comes before happy in CATEGORY_PRIORITY.
    assert CATEGORY_PRIORITY.index("sad") < CATEGORY_PRIORITY.index("happy")
    params = parse_expression("smiles through tears")
    assert params.category == "sad"
    assert params.tears


def test_feature_modifiers_and_intensity():
    assert parse_expression("Eyes welling up").tears
    assert not parse_expression("sad").tears
    assert not parse_expression("no tears, jaw clenched").tears
    assert parse_expression("angry, looks away").category == "angry"
    assert parse_expression("angry, looks away").gaze_x > 0.5
    assert parse_expression("Rolls eyes").gaze_y < -0.5
    assert parse_expression("eyes on the floor").gaze_y > 0.5
    small, plain, strong = (parse_expression(t) for t in ("small smile", "smile", "very broad smile"))
    assert small.intensity < plain.intensity < strong.intensity
    assert 0 < small.mouth_curve < plain.mouth_curve < strong.mouth_curve


def test_neutral_params_and_frozen():
    params = parse_expression("")
    assert params == ExpressionParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.mouth_curve = 1.0  # type: ignore[misc]
