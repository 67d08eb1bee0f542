"""The embedded face renderer: an offline, weight-free, deterministic client face drawn with Pillow.

It exists so that the whole pipeline (dataset generation, the virtual client, tests, CI) runs without a GPU or
downloaded weights, while still giving the vision tower the signal it must learn: *who* the client is stays fixed
across a session and *what the face shows* follows the turn's expression text.

Design:

* Identity comes only from a SHA-256 of the identity key (plus the optional gender and age cues), never from
  Python's salted `hash()` or global random state, so the same key is the same person in every process.
* Expression comes only from `parse_expression`, a keyword lexicon that maps free text (stage directions or
  facial descriptions) to one of `CATEGORIES` and a frozen `ExpressionParams`.
* Expressions may change only brows, eyelids, gaze, mouth, tears/sweat and head pose. Head tilt rotates the head
  layer alone, head turn and pitch slide the inner-face features, so background, clothing and hair are
  pixel-identical between any two expressions without tilt. `identity_regions` names boxes where that holds.
* Drawing happens at `supersample` times the output size and is reduced with LANCZOS, which is what gives
  Pillow's aliased primitives smooth edges.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import TypeVar

from PIL import Image, ImageDraw

from .base import FaceRequest

__all__ = [
    "CATEGORIES",
    "CATEGORY_PRIORITY",
    "EmbeddedFaceRenderer",
    "ExpressionParams",
    "face_box",
    "identity_regions",
    "parse_expression",
]

RGB = tuple[int, int, int]
Point = tuple[float, float]
T = TypeVar("T")

CATEGORIES = ("neutral", "sad", "angry", "anxious", "surprised", "happy", "sceptical", "withdrawn")

# Tie-break when two categories score equally: visible distress first (it is what a therapist must not miss and
# what a mixed cue such as "smiles through tears" mostly shows), then the asymmetric/withdrawn cues, then the
# positive ones; neutral only wins when nothing else matched.
CATEGORY_PRIORITY = ("sad", "angry", "anxious", "surprised", "sceptical", "withdrawn", "happy", "neutral")


# --------------------------------------------------------------------------------------------------------------
# Expression: text -> parameters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpressionParams:
    """Everything an expression may change. Left/right are as seen by the viewer; 0 (or 1 for scales) is neutral.

    Brow raise and tilt are in [-1, 1] (positive tilt lifts the inner end, the "worried" shape); eye openness is a
    scale of the neutral lid opening; gaze is in [-1, 1] (positive x looks to the viewer's right, positive y looks
    down); mouth curve > 0 smiles; asymmetry > 0 lifts the right corner; head tilt is in degrees (Pillow's
    counter-clockwise convention); head turn/pitch slide the inner face right/down.
    """

    category: str = "neutral"
    intensity: float = 1.0
    brow_raise_left: float = 0.0
    brow_raise_right: float = 0.0
    brow_tilt_left: float = 0.0
    brow_tilt_right: float = 0.0
    brow_knit: float = 0.0
    eye_open_left: float = 1.0
    eye_open_right: float = 1.0
    lower_lid_raise: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0
    mouth_curve: float = 0.0
    mouth_open: float = 0.0
    mouth_width: float = 1.0
    mouth_asym: float = 0.0
    lip_press: float = 0.0
    head_tilt: float = 0.0
    head_turn: float = 0.0
    head_pitch: float = 0.0
    tears: bool = False
    sweat: bool = False


_NEUTRAL = ExpressionParams()

# One preset per category at full intensity; `parse_expression` scales the distance from neutral.
_PRESETS: dict[str, ExpressionParams] = {
    "neutral": _NEUTRAL,
    "sad": ExpressionParams(
        category="sad",
        brow_raise_left=0.15,
        brow_raise_right=0.15,
        brow_tilt_left=1.0,
        brow_tilt_right=1.0,
        brow_knit=0.3,
        eye_open_left=0.72,
        eye_open_right=0.72,
        gaze_y=0.45,
        mouth_curve=-0.8,
        mouth_width=0.92,
        lip_press=0.2,
        head_pitch=0.35,
    ),
    "angry": ExpressionParams(
        category="angry",
        brow_raise_left=-0.55,
        brow_raise_right=-0.55,
        brow_tilt_left=-1.0,
        brow_tilt_right=-1.0,
        brow_knit=1.0,
        eye_open_left=0.95,
        eye_open_right=0.95,
        lower_lid_raise=0.45,
        mouth_curve=-0.45,
        mouth_width=0.88,
        lip_press=0.9,
    ),
    "anxious": ExpressionParams(
        category="anxious",
        brow_raise_left=0.45,
        brow_raise_right=0.45,
        brow_tilt_left=0.75,
        brow_tilt_right=0.75,
        brow_knit=0.6,
        eye_open_left=1.25,
        eye_open_right=1.25,
        gaze_x=-0.6,
        mouth_curve=-0.25,
        mouth_width=0.82,
        mouth_asym=-0.15,
        lip_press=0.75,
        sweat=True,
    ),
    "surprised": ExpressionParams(
        category="surprised",
        brow_raise_left=1.0,
        brow_raise_right=1.0,
        eye_open_left=1.45,
        eye_open_right=1.45,
        mouth_open=0.9,
        mouth_width=0.62,
    ),
    "happy": ExpressionParams(
        category="happy",
        brow_raise_left=0.15,
        brow_raise_right=0.15,
        eye_open_left=0.85,
        eye_open_right=0.85,
        lower_lid_raise=0.55,
        mouth_curve=1.0,
        mouth_open=0.3,
        mouth_width=1.12,
    ),
    "sceptical": ExpressionParams(
        category="sceptical",
        brow_raise_left=-0.45,
        brow_raise_right=0.95,
        brow_tilt_left=-0.35,
        brow_tilt_right=-0.2,
        eye_open_left=0.62,
        eye_open_right=1.08,
        lower_lid_raise=0.2,
        gaze_x=-0.35,
        mouth_curve=-0.1,
        mouth_asym=1.0,
        mouth_width=0.95,
        lip_press=0.5,
    ),
    "withdrawn": ExpressionParams(
        category="withdrawn",
        brow_raise_left=-0.1,
        brow_raise_right=-0.1,
        eye_open_left=0.68,
        eye_open_right=0.68,
        gaze_x=0.9,
        gaze_y=0.5,
        mouth_curve=-0.2,
        mouth_width=0.88,
        lip_press=0.55,
        head_tilt=-6.0,
        head_turn=0.55,
        head_pitch=0.6,
    ),
}


def _lexicon(*entries: tuple[str, float]) -> tuple[tuple[re.Pattern[str], float], ...]:
    return tuple((re.compile(rf"\b(?:{pattern})\b"), weight) for pattern, weight in entries)


# Weights: 2 for a named emotion or an unmistakable facial cue, 1.5 for a facial cue that leans one way, 1 for body
# language. Sceptical cues that contain another category's word ("half smile", "raised eyebrow") get 2.5 so they
# beat it. Patterns run on lower-cased text with hyphens turned into spaces ("wide-eyed" -> "wide eyed").
_POSS = r"(?:his|her|their|my|the|one|an|a)"
_LEXICON: dict[str, tuple[tuple[re.Pattern[str], float], ...]] = {
    "neutral": _lexicon(
        (r"neutral|expressionless|impassive|composed|straight face|poker face|calm(?:ly)?|steady|still", 1.0),
    ),
    "sad": _lexicon(
        (r"sad(?:ly|ness)?|sorrow\w*|grie\w+|tear(?:s|ful|fully|y|ing up)?|cry|cries|crying|sob\w*|weep\w*", 2.0),
        (r"well(?:s|ing)? up|welling|watery eyes|eyes? (?:glisten|are wet)\w*|glisten\w*|choked up|chokes up", 2.0),
        (r"(?:lower )?lip (?:trembl|quiver)\w*|(?:trembl|quiver)\w* (?:lower )?lip|wipes? \w+ eyes", 2.0),
        (r"dejected|despair\w*|hopeless\w*|miserable|gloomy|heartbroken|hurt|defeated|mournful|downcast", 2.0),
        (r"corners of (?:the|her|his|their) mouth (?:turned )?down\w*|mouth corners? down\w*|sniff\w*", 1.5),
        (r"sigh\w*|slump\w*|heavy|deflat\w*|droop\w*|sags?|sagging|shoulders? (?:drop|fall)\w*", 1.0),
    ),
    "angry": _lexicon(
        (r"angr\w+|anger|furious|fury|rage|enraged|irritat\w+|annoy\w*|frustrat\w+|hostile|livid|resent\w*", 2.0),
        (r"glar\w+|scowl\w*|frown\w*|furrow\w*|knit(?:ted)? brows?|brows? (?:drawn|knit|pulled) together", 2.0),
        (r"clench\w* (?:\w+ )?jaw|jaw (?:is )?(?:clench\w*|tight\w*|set)|grit\w* teeth|gritted|bared teeth", 2.0),
        (r"narrow\w* (?:\w+ )?eyes|eyes narrow\w*|flared nostrils|nostrils flar\w*|stern|seething", 1.5),
        (r"clench\w* fists?|fists? clench\w*|snaps?|snapped|slams?|jabs?|bristl\w+|tight lipped|defiant\w*", 1.0),
    ),
    "anxious": _lexicon(
        (r"anxious\w*|anxiety|nervous\w*|worr\w+|fear\w*|afraid|scared|panic\w*|uneas\w+|apprehensi\w+", 2.0),
        (r"tense|tension|jittery|on edge|dread\w*|frightened|alarmed|distress\w*|overwhelmed", 2.0),
        (
            r"bit(?:es|ing|ten)? (?:\w+ )?(?:lower )?lip|chew\w* (?:\w+ )?lip|fidget\w*|wring\w*|darting|eyes dart\w*",
            2.0,
        ),
        (r"restless\w*|trembl\w*|shak\w+|swallow\w*|gulps?|sweat\w*|clutch\w*|grips?|gripping|picks? at", 1.0),
        (
            r"taps? (?:\w+ )?(?:foot|feet|fingers)|bounc\w* (?:\w+ )?(?:leg|knee)|shifts? in (?:\w+ )?(?:seat|chair)",
            1.0,
        ),
        (r"lips? (?:pressed|pressing|pursed)(?: together)?|press\w* (?:\w+ )?lips(?: together)?|hesita\w+", 1.0),
    ),
    "surprised": _lexicon(
        (r"surpris\w+|shock\w*|astonish\w*|amaze\w*|startl\w+|stunned|taken aback|caught off guard|aghast", 2.0),
        (r"(?:eye)?brows (?:shoot|shot|fly|flies|go|jump)\w* up|raised (?:eye)?brows|(?:eye)?brows raised", 2.0),
        (r"raises (?:both |\w+ )?(?:eye)?brows|wide eyed|eyes (?:go |went )?wide|eyes widen\w*|widen\w* eyes", 2.0),
        (r"jaw drops?|mouth (?:falls? )?open|open mouthed|gasp\w*|double take|blinks? rapidly", 2.0),
    ),
    "happy": _lexicon(
        (r"happ\w+|smil\w+|grin\w*|laugh\w*|chuckl\w+|relie\w+|pleased|glad|cheerful|joy\w*|delight\w*", 2.0),
        (r"beam\w*|lights? up|lit up|brighten\w*|content(?:ed)?|hopeful|grateful|warm(?:ly|th)?|at ease", 2.0),
        (r"eyes crinkl\w*|relax\w*|soften\w*|eas(?:es|ing)|nods? eagerly|open posture", 1.0),
    ),
    "sceptical": _lexicon(
        (r"sceptic\w*|skeptic\w*|doubt\w*|dubious|unconvinced|disbelie\w+|incredul\w+|suspicious\w*", 2.0),
        (r"smirk\w*|sneer\w*|scoff\w*|contempt\w*|disdain\w*|dismissive\w*|sardonic\w*|sarcas\w+|snort\w*", 2.0),
        (r"roll\w* (?:\w+ )?eyes|eye roll\w*|eyes roll\w*|side eye|half smile|crooked smile|wry\w*|lopsided", 2.5),
        (rf"rais\w* {_POSS} (?:eye)?brow|arch\w* {_POSS} (?:eye)?brow|one (?:eye)?brow (?:raised|up|arched)", 2.5),
        (r"(?:raised|cocked|arched) (?:eye)?brow|(?:eye)?brow (?:raised|cocked|arched)|purs\w* (?:\w+ )?lips", 2.5),
    ),
    "withdrawn": _lexicon(
        (r"withdraw\w*|withdrawn|detached|disengag\w+|distant|closed off|shut down|shuts down|numb|guarded", 2.0),
        (
            r"look\w* away|glanc\w* away|turn\w* (?:\w+ )?(?:head )?away|avert\w*|gaze averted|avoid\w* eye contact",
            2.0,
        ),
        (
            r"no eye contact|eyes (?:on|to) the (?:floor|ground|window)|stares? (?:out|down|blankly|into (?:space|the "
            r"distance))|stares? (?:down )?at (?:the floor|the ground|\w+ hands|\w+ lap)|blank stare",
            2.0,
        ),
        (
            r"head (?:down|bowed|hung|low)|bows? (?:\w+ )?head|hangs? (?:\w+ )?head|looks? down|lowers? (?:\w+ )?gaze",
            2.0,
        ),
        (r"shrug\w*|arms? (?:crossed|folded)|cross\w* (?:\w+ )?arms|fold\w* (?:\w+ )?arms|hunch\w*|curl\w* up", 1.0),
        (r"leans? back|pulls? back|quiet\w*|silent\w*|indifferen\w+|flat|monotone|mumbl\w*|turns? aside", 1.0),
    ),
}

# Feature modifiers: cues that set one feature whichever category wins ("angry, looks away" still averts gaze).
_GAZE_AWAY = re.compile(
    r"\b(?:look\w* away|glanc\w* away|turn\w* (?:\w+ )?(?:head )?away|avert\w*|gaze averted|avoid\w* eye contact|"
    r"no eye contact|looks? (?:to the side|out the window)|stares? out)\b"
)
_GAZE_DOWN = re.compile(
    r"\b(?:downcast|looks? down|looking down|eyes (?:on|to) the (?:floor|ground)|stares? (?:at|down)\w* (?:at )?"
    r"(?:the floor|the ground|\w+ hands|\w+ lap)|head (?:down|bowed|hung|low)|bows? (?:\w+ )?head|"
    r"hangs? (?:\w+ )?head|lowers? (?:\w+ )?(?:gaze|eyes|head))\b"
)
_EYES_UP = re.compile(r"\b(?:roll\w* (?:\w+ )?eyes|eye roll\w*|eyes roll\w*)\b")
_EYES_CLOSED = re.compile(r"\b(?:(?:close|shut)\w* (?:\w+ )?eyes|eyes (?:are )?(?:closed|shut))\b")
_TEARS = re.compile(
    r"\b(?:tear(?:s|ful|fully|y|ing up)?|cry|cries|crying|sob\w*|weep\w*|well(?:s|ing)? up|welling|watery eyes|"
    r"eyes? (?:glisten|are wet)\w*|glisten\w*|wipes? \w+ eyes)\b"
)
_DIMINISH = re.compile(r"\b(?:slight\w*|small|faint\w*|hint of|barely|a little|a bit|somewhat|subtl\w+|mild\w*)\b")
_AMPLIFY = re.compile(r"\b(?:very|deeply|intense\w*|visibly|openly|broad\w*|utterly|completely|extremely)\b")
_NEGATORS = frozenset({"no", "not", "never", "without", "nor", "isn't", "doesn't", "don't", "didn't", "won't"})


def _negated(text: str, start: int) -> bool:
    """A cue is negated when one of the two words before it is a negator ("not smiling", "without a smile")."""
    return any(word in _NEGATORS for word in text[:start].split()[-2:])


def _matches(pattern: re.Pattern[str], text: str) -> bool:
    return any(not _negated(text, m.start()) for m in pattern.finditer(text))


def _scaled(preset: ExpressionParams, intensity: float) -> ExpressionParams:
    """Move every numeric field `intensity` of the way from neutral to the preset (booleans are kept)."""
    values: dict[str, object] = {"intensity": intensity}
    for field in fields(ExpressionParams):
        target = getattr(preset, field.name)
        if isinstance(target, float) and field.name != "intensity":
            start = getattr(_NEUTRAL, field.name)
            values[field.name] = start + intensity * (target - start)
    return replace(preset, **values)


def parse_expression(text: str) -> ExpressionParams:
    """Map a free-text expression or stage direction to drawing parameters.

    Every lexicon cue that is not negated adds its weight to its category; the highest score wins and ties go to
    the earlier category in `CATEGORY_PRIORITY`. Text with no cue is neutral. The winner's preset is scaled by an
    intensity (0.65 for "slight/small/faint ...", 1.15 for "very/deeply/visibly ..."), then feature modifiers that
    name one feature outright (averted or lowered gaze, eye roll, closed eyes, tears) are applied on top, so a
    mixed description keeps its most specific visible detail.
    """
    norm = re.sub(r"[-_/]+", " ", (text or "").lower().replace("\u2019", "'"))
    scores = dict.fromkeys(CATEGORIES, 0.0)
    for category, cues in _LEXICON.items():
        for pattern, weight in cues:
            scores[category] += weight * sum(1 for m in pattern.finditer(norm) if not _negated(norm, m.start()))
    best = max(CATEGORY_PRIORITY, key=lambda c: (scores[c], -CATEGORY_PRIORITY.index(c)))
    if scores[best] == 0.0:
        best = "neutral"
    intensity = 0.65 if _matches(_DIMINISH, norm) else 1.15 if _matches(_AMPLIFY, norm) else 1.0
    params = _scaled(_PRESETS[best], intensity)

    if _matches(_GAZE_AWAY, norm):
        params = replace(params, gaze_x=0.9, gaze_y=max(params.gaze_y, 0.2))
    if _matches(_GAZE_DOWN, norm):
        params = replace(
            params,
            gaze_y=0.85,
            eye_open_left=min(params.eye_open_left, 0.75),
            eye_open_right=min(params.eye_open_right, 0.75),
            head_pitch=max(params.head_pitch, 0.4),
        )
    if _matches(_EYES_UP, norm):
        params = replace(params, gaze_x=0.2, gaze_y=-1.0)
    if _matches(_EYES_CLOSED, norm):
        params = replace(params, eye_open_left=0.0, eye_open_right=0.0)
    if _matches(_TEARS, norm):
        params = replace(params, tears=True)
    return params


# --------------------------------------------------------------------------------------------------------------
# Identity: key -> a person
# --------------------------------------------------------------------------------------------------------------


def _unit(key: str, field: str) -> float:
    """A uniform number in [0, 1) for one attribute; per-field hashing keeps attributes independent and stable."""
    digest = hashlib.sha256(f"{key}\x00{field}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _pick(key: str, field: str, options: Sequence[tuple[T, float]]) -> T:
    """Weighted choice driven by `_unit`."""
    target = _unit(key, field) * sum(weight for _, weight in options)
    for value, weight in options:
        target -= weight
        if target < 0:
            return value
    return options[-1][0]


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _scale(c: Sequence[float], f: float) -> RGB:
    return (min(255, round(c[0] * f)), min(255, round(c[1] * f)), min(255, round(c[2] * f)))


def _lum(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _contrast(c: RGB, against: RGB, min_diff: float) -> RGB:
    """Darken `c` until it is at least `min_diff` luma darker than `against`, unless it is already lighter by that.

    Brown hair on brown skin is realistic but would vanish at 336 px, and the vision tower needs to see the hair.
    """
    if abs(_lum(c) - _lum(against)) >= min_diff:
        return c
    target = max(0.0, _lum(against) - min_diff)
    return _scale(c, target / max(_lum(c), 1.0))


def _ramp(stops: Sequence[RGB], t: float) -> RGB:
    """Piecewise-linear interpolation along a colour ramp, t in [0, 1]."""
    pos = t * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    return _mix(stops[i], stops[i + 1], pos - i)


def _hsv(h: float, s: float, v: float) -> RGB:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (round(r * 255), round(g * 255), round(b * 255))


# Light to deep skin, spanning roughly the Fitzpatrick range in sRGB.
_SKIN_RAMP: tuple[RGB, ...] = (
    (250, 226, 208),
    (241, 201, 174),
    (226, 178, 144),
    (199, 145, 108),
    (165, 114, 80),
    (124, 83, 57),
    (88, 59, 42),
)
_HAIR = {
    "black": (28, 24, 24),
    "dark brown": (58, 40, 30),
    "brown": (98, 66, 44),
    "auburn": (132, 62, 36),
    "blonde": (196, 160, 104),
    "light blonde": (224, 198, 148),
}
_EYES = {
    "dark brown": (62, 38, 24),
    "brown": (102, 64, 34),
    "hazel": (128, 102, 52),
    "green": (82, 118, 76),
    "blue": (74, 116, 168),
    "grey": (118, 132, 144),
}
_GREY_HAIR: RGB = (206, 205, 202)


@dataclass(frozen=True)
class _Identity:
    """Everything that stays fixed for one client.

    `face_w`/`face_h` are half-sizes in canvas units; `eye_w`, `eye_gap` (eye centre to face centre), `nose_w` and
    `mouth_w` are fractions of `face_w`; `canthal`, `brow_thick` and `brow_arch` are fractions of the eye's half
    width; `hairline` is its height above the face centre in face half-heights.
    """

    gender: str
    age: int
    skin: RGB
    hair: RGB
    brow: RGB
    eye: RGB
    lip: RGB
    background: RGB
    clothing: RGB
    neckline: str
    hair_style: str
    parting: float
    glasses: str | None
    glasses_colour: RGB
    beard: str | None
    face_w: float
    face_h: float
    jaw_taper: float
    chin_power: float
    eye_w: float
    eye_gap: float
    canthal: float
    nose_w: float
    mouth_w: float
    lip_full: float
    brow_thick: float
    brow_arch: float
    hairline: float
    ear_size: float


def _normalise_gender(gender: str | None, key: str) -> str:
    g = (gender or "").strip().lower()
    if g in {"female", "woman", "f", "w"}:
        return "female"
    if g in {"male", "man", "m"}:
        return "male"
    if g:
        return "non-binary"
    return _pick(key, "gender", [("female", 1.0), ("male", 1.0)])


@lru_cache(maxsize=512)
def _identity(key: str, gender: str | None, age: int | None) -> _Identity:
    gender = _normalise_gender(gender, key)
    age = int(age) if age is not None else 20 + int(_unit(key, "age") * 50)

    def u(field: str) -> float:
        return _unit(key, field)

    female, male = gender == "female", gender == "male"

    skin_t = u("skin")
    skin = _ramp(_SKIN_RAMP, skin_t)
    dark = skin_t > 0.55
    hair_name = _pick(
        key,
        "hair_colour",
        [("black", 5.0), ("dark brown", 3.0), ("brown", 1.0)]
        if dark
        else [
            ("black", 1.5),
            ("dark brown", 2.5),
            ("brown", 2.5),
            ("auburn", 1.0),
            ("blonde", 1.5),
            ("light blonde", 1.0),
        ],
    )
    base_hair = _HAIR[hair_name]
    greyness = min(1.0, max(0.0, (age - 38) / 30)) ** 1.2 * (0.65 + 0.35 * u("grey"))
    base_hair = _contrast(base_hair, skin, 45)
    hair = _mix(base_hair, _GREY_HAIR, greyness)
    # Brows stay darker than scalp hair and grey later, which is what keeps a blonde or grey face readable.
    brow = _mix(
        _scale(base_hair, 0.72 if hair_name in ("blonde", "light blonde") else 0.9), _GREY_HAIR, greyness * 0.5
    )
    brow = _contrast(brow, skin, 40)
    eye = _EYES[
        _pick(
            key,
            "eye_colour",
            [("dark brown", 3.0), ("brown", 2.0), ("hazel", 0.5)]
            if dark
            else [("dark brown", 1.0), ("brown", 2.0), ("hazel", 1.0), ("green", 1.0), ("blue", 2.0), ("grey", 0.7)],
        )
    ]
    # A fixed red-brown target shifts hue, not just lightness, so lips stay readable on every skin tone.
    lip = _mix(skin, (168, 58, 76) if female else (150, 62, 68), 0.5 if female else 0.42)

    if female:
        styles = [("long", 5.0), ("bun", 2.0), ("short", 1.5), ("curly", 1.5)]
    elif male:
        styles = [("short", 6.0), ("curly", 1.5), ("long", 1.0), ("bald", 0.7 + (1.5 if age >= 50 else 0.0))]
    else:
        styles = [("short", 3.5), ("long", 3.0), ("curly", 2.0), ("bun", 1.5)]
    hair_style = _pick(key, "hair_style", styles)

    glasses = _pick(key, "glasses", [(None, 3.0 if age < 45 else 1.5), ("round", 1.0), ("rect", 1.0)])
    beard = _pick(key, "beard", [(None, 5.0), ("full", 2.0), ("stubble", 2.0), ("goatee", 1.0)]) if male else None

    return _Identity(
        gender=gender,
        age=age,
        skin=skin,
        hair=hair,
        brow=brow,
        eye=eye,
        lip=lip,
        background=_hsv(u("bg_h"), 0.12 + 0.16 * u("bg_s"), 0.78 + 0.14 * u("bg_v")),
        clothing=_hsv(u("cloth_h"), 0.25 + 0.45 * u("cloth_s"), 0.3 + 0.5 * u("cloth_v")),
        neckline=_pick(key, "neckline", [("crew", 2.0), ("v", 1.0), ("collar", 1.0)]),
        hair_style=hair_style,
        parting=u("parting") * 2 - 1,
        glasses=glasses,
        glasses_colour=_pick(key, "frame", [((34, 30, 30), 2.0), ((92, 58, 36), 1.0), ((150, 150, 156), 1.0)]),
        beard=beard,
        face_w=(0.204 if female else 0.222 if male else 0.212) + 0.028 * u("face_w"),
        face_h=0.28 + 0.024 * u("face_h"),
        jaw_taper=(0.42 if female else 0.26 if male else 0.34) + 0.14 * u("jaw"),
        chin_power=1.5 + 1.2 * u("chin"),
        eye_w=0.2 + 0.03 * u("eye_w"),
        eye_gap=0.42 + 0.06 * u("eye_gap"),
        canthal=-0.05 + 0.2 * u("canthal"),
        nose_w=(0.17 if female else 0.2) + 0.06 * u("nose_w") + (0.03 if dark else 0.0),
        mouth_w=0.36 + 0.08 * u("mouth_w"),
        lip_full=(1.15 if female else 0.9) + 0.35 * u("lips") + (0.15 if dark else 0.0),
        brow_thick=(0.13 if female else 0.2) + 0.05 * u("brow_t"),
        brow_arch=(0.3 if female else 0.15) + 0.15 * u("brow_a"),
        hairline=0.6 + 0.1 * u("hairline") + (0.12 if male and age > 40 else 0.0),
        ear_size=0.9 + 0.2 * u("ear"),
    )


# --------------------------------------------------------------------------------------------------------------
# Layout helpers shared by the renderer and the tests
# --------------------------------------------------------------------------------------------------------------

_CX = 0.5  # face centre x, in units of the canvas side
_CY = 0.47  # face centre y
_COLLAR_Y = 0.845  # where the neck meets the clothes
# Head tilt rotates the head layer (neck included) about the base of the neck, so the neck bends and the collar stays.
_PIVOT = (0.5, _COLLAR_Y)


def identity_regions(size: int) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) holding only identity pixels: equal across every expression without head tilt.

    The first four are the image corners (background or clothing, outside the head layer, so they stay equal even
    under tilt); the last is the crown of the head (hair, or scalp for the bald style), which tilt moves.
    """
    c = max(1, round(0.1 * size))
    crown = (round(0.43 * size), round(0.165 * size), round(0.57 * size), round(0.205 * size))
    return [(0, 0, c, c), (size - c, 0, size, c), (0, size - c, c, size), (size - c, size - c, size, size), crown]


def face_box(size: int) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) around brows, eyes, nose and mouth, where expressions show."""
    return (round(0.25 * size), round(0.27 * size), round(0.75 * size), round(0.74 * size))


# --------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------


def _through(p0: Point, mid: Point, p2: Point, n: int = 20) -> list[Point]:
    """Quadratic Bezier from p0 to p2 that passes through `mid` at its halfway point."""
    c = (2 * mid[0] - (p0[0] + p2[0]) / 2, 2 * mid[1] - (p0[1] + p2[1]) / 2)
    out = []
    for i in range(n):
        t = i / (n - 1)
        a, b, d = (1 - t) ** 2, 2 * (1 - t) * t, t * t
        out.append((a * p0[0] + b * c[0] + d * p2[0], a * p0[1] + b * c[1] + d * p2[1]))
    return out


def _ellipse_pts(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 40) -> list[Point]:
    """Points on an ellipse from angle a0 to a1 (radians, y up as in maths, so pi/2 is the top)."""
    return [
        (cx + rx * math.cos(a0 + (a1 - a0) * i / (n - 1)), cy - ry * math.sin(a0 + (a1 - a0) * i / (n - 1)))
        for i in range(n)
    ]


class _Painter:
    """Draws one face on a supersampled canvas; coordinates below are in canvas units times `s`."""

    def __init__(self, ident: _Identity, p: ExpressionParams, s: int) -> None:
        self.i, self.p, self.s = ident, p, s
        self.cx, self.cy = _CX * s, _CY * s
        self.w, self.h = ident.face_w * s, ident.face_h * s
        self.skin = ident.skin
        self.shadow = _mix(_scale(ident.skin, 0.8), (120, 40, 40), 0.08)
        self.line = _mix(_scale(ident.skin, 0.58), (60, 20, 20), 0.1)
        self.neck_w = self.w * (0.46 if ident.gender == "female" else 0.54)
        self.neck_col = _mix(self.skin, self.shadow, 0.55)
        # Head turn and pitch slide the inner face; ears, outline and hair stay put.
        self.dx = p.head_turn * self.w * 0.24
        self.dy = p.head_pitch * self.h * 0.05
        self.ew = ident.eye_w * self.w
        self.ey0 = self.cy - 0.06 * self.h  # the eye line before head pitch
        self.ey = self.ey0 + self.dy
        self.ny = self.cy + 0.3 * self.h + self.dy * 1.1
        self.my = self.cy + 0.56 * self.h + self.dy * 1.15

    def width(self, frac: float) -> int:
        return max(1, round(frac * self.s))

    # -- body layer ----------------------------------------------------------------------------------------
    def neck(self, d: ImageDraw.ImageDraw) -> None:
        """The neck from the jaw to just above the collar, on the head layer so long hair falls behind it."""
        nw = self.neck_w
        d.rectangle(
            (self.cx - nw, self.cy + 0.3 * self.h, self.cx + nw, (_COLLAR_Y - 0.01) * self.s), fill=self.neck_col
        )

    def body(self, img: Image.Image) -> None:
        """Backdrop-layer neck, shoulders and neckline: none of it moves with the head."""
        d = ImageDraw.Draw(img)
        s, cx, i, neck_w, neck_col = self.s, self.cx, self.i, self.neck_w, self.neck_col
        d.rectangle((cx - neck_w, self.cy, cx + neck_w, 0.95 * s), fill=neck_col)
        # Shoulders: a smooth trapezius slope from the collar out past the image edge.
        y0 = _COLLAR_Y * s - 0.005 * s
        left = _through((cx - neck_w * 0.9, y0), (cx - 0.24 * s, y0 + 0.035 * s), (cx - 0.44 * s, y0 + 0.11 * s))
        right = [(2 * cx - x, y) for x, y in reversed(left)]
        d.polygon([*left, (cx - 0.52 * s, 1.05 * s), (cx + 0.52 * s, 1.05 * s), *right], fill=i.clothing)
        cloth_dark = _scale(i.clothing, 0.75)
        if i.neckline == "v":
            v = [(cx - neck_w * 0.95, y0), (cx, y0 + 0.1 * s), (cx + neck_w * 0.95, y0)]
            d.polygon(v, fill=neck_col)
            d.line(v, fill=cloth_dark, width=self.width(0.008), joint="curve")
        elif i.neckline == "collar":
            for side in (-1, 1):
                flap = [
                    (cx + side * neck_w * 1.05, y0 - 0.015 * s),
                    (cx + side * 0.012 * s, y0 + 0.045 * s),
                    (cx + side * neck_w * 1.6, y0 + 0.07 * s),
                ]
                d.polygon(flap, fill=_scale(i.clothing, 1.15), outline=cloth_dark, width=self.width(0.003))
        else:
            arc = _through((cx - neck_w * 0.98, y0), (cx, y0 + 0.03 * s), (cx + neck_w * 0.98, y0))
            d.polygon(arc, fill=neck_col)
            d.line(arc, fill=cloth_dark, width=self.width(0.008), joint="curve")

    # -- head layer: silhouette -------------------------------------------------------------------------------
    def face_outline(self, shrink: float = 1.0, shift: Point = (0.0, 0.0)) -> list[Point]:
        i, pts = self.i, []
        for k in range(120):
            t = 2 * math.pi * k / 120
            x0, y0 = math.sin(t), -math.cos(t)
            f = 1.0 if y0 < 0.05 else 1 - i.jaw_taper * ((y0 - 0.05) / 0.95) ** i.chin_power
            pts.append((self.cx + shift[0] + self.w * x0 * f * shrink, self.cy + shift[1] + self.h * y0 * shrink))
        return pts

    def bumpy(self, cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, bumps: int) -> list[Point]:
        """An elliptical arc with `bumps` scallops: the silhouette of curly hair."""
        pts = []
        n = bumps * 6
        for k in range(n):
            a = a0 + (a1 - a0) * k / (n - 1)
            r = 1 + 0.045 * abs(math.sin(bumps * math.pi * k / (n - 1)))
            pts.append((cx + rx * r * math.cos(a), cy - ry * r * math.sin(a)))
        return pts

    def hair_back(self, d: ImageDraw.ImageDraw) -> None:
        i, cx, cy, s, w, h = self.i, self.cx, self.cy, self.s, self.w, self.h
        back = _scale(i.hair, 0.82)
        if i.hair_style == "long":
            top = _ellipse_pts(cx, cy - 0.12 * h, w * 1.16, h * 0.98 + 0.03 * s, math.pi, 0)
            right = _through((cx + w * 1.16, cy - 0.12 * h), (cx + w * 1.24, cy + 0.6 * h), (cx + w * 1.38, 0.88 * s))
            bottom = _through((cx + w * 1.38, 0.88 * s), (cx, 0.905 * s), (cx - w * 1.38, 0.88 * s))
            left = [(2 * cx - x, y) for x, y in reversed(right)]
            d.polygon(top + right + bottom + left, fill=back)
        elif i.hair_style == "curly":
            d.polygon(self.bumpy(cx, cy - 0.1 * h, w * 1.4, h * 1.1, 0, 2 * math.pi, 22), fill=back)
        elif i.hair_style == "bun":
            r = 0.06 * s
            top = cy - h - 0.012 * s
            d.ellipse(
                (cx - r, top - 1.55 * r, cx + r, top + 0.45 * r), fill=i.hair, outline=back, width=self.width(0.004)
            )

    def ears(self, d: ImageDraw.ImageDraw) -> None:
        i = self.i
        ey = self.cy + 0.1 * self.h
        rx, ry = 0.16 * self.w * i.ear_size, 0.28 * self.h * i.ear_size
        for side in (-1, 1):
            ex = self.cx + side * self.w * 0.97
            d.ellipse((ex - rx, ey - ry, ex + rx, ey + ry), fill=self.skin, outline=self.line, width=self.width(0.003))
            inner = (
                ex - rx * 0.45 + side * rx * 0.15,
                ey - ry * 0.6,
                ex + rx * 0.45 + side * rx * 0.15,
                ey + ry * 0.5,
            )
            d.arc(inner, 300 if side > 0 else 120, 60 if side > 0 else 240, fill=self.shadow, width=self.width(0.005))

    def face(self, d: ImageDraw.ImageDraw) -> None:
        # Flat shading: a shadowed face with a lit face laid over it, offset toward the light (upper left).
        d.polygon(self.face_outline(), fill=_mix(self.skin, self.shadow, 0.6))
        d.polygon(self.face_outline(0.955, (-0.03 * self.w, -0.02 * self.h)), fill=self.skin)
        d.line(self.face_outline() + self.face_outline()[:1], fill=self.line, width=self.width(0.0035))
        if self.i.hair_style == "bald":
            # Scalp shine, and a fringe of short hair hugging the skull from the temples to behind the ears.
            cx, top = self.cx, self.cy - self.h
            d.ellipse(
                (cx - self.w * 0.4, top + 0.02 * self.s, cx + self.w * 0.05, top + 0.055 * self.s),
                fill=_mix(self.skin, (255, 255, 255), 0.15),
            )
            outline = self.face_outline(1.025)
            inner = self.face_outline(0.9)
            for a, b in ((18, 33), (88, 103)):  # right and left side, temple to ear (outline runs clockwise)
                d.polygon(outline[a:b] + inner[a:b][::-1], fill=self.i.hair)

    # -- head layer: identity details on the inner face ---------------------------------------------------------
    def cheeks(self, d: ImageDraw.ImageDraw) -> None:
        # Blush shows less on deeper skin; a fixed mix would paint red patches there.
        blush = _mix(self.skin, (225, 105, 105), 0.1 * (_lum(self.skin) / 255) ** 2)
        for side in (-1, 1):
            x, y = self.cx + self.dx + side * self.w * 0.55, self.ny - 0.01 * self.s
            d.ellipse((x - self.w * 0.2, y - self.w * 0.12, x + self.w * 0.2, y + self.w * 0.12), fill=blush)

    def age_lines(self, d: ImageDraw.ImageDraw) -> None:
        age = self.i.age
        if age < 35:
            return
        depth = min(1.0, (age - 30) / 40)
        col = _mix(self.skin, self.line, 0.35 + 0.35 * depth)
        lw = self.width(0.0035)
        cx, dx = self.cx + self.dx, self.dx
        nw, mw = self.i.nose_w * self.w, self.i.mouth_w * self.w
        for side in (-1, 1):  # nasolabial folds
            d.line(
                _through(
                    (cx + side * nw * 1.15, self.ny - 0.35 * nw),
                    (cx + side * nw * 1.75, self.ny + 0.4 * nw),
                    (cx + side * mw * 1.22, self.my + 0.1 * nw),
                ),
                fill=col,
                width=lw,
                joint="curve",
            )
        if age < 45:
            return
        for k in range(2 if age < 60 else 3):  # forehead lines
            y = self.cy - self.h * (0.42 + 0.08 * k)
            d.line(
                _through(
                    (cx - self.w * 0.38, y + 0.004 * self.s),
                    (cx, y - 0.004 * self.s),
                    (cx + self.w * 0.38, y + 0.004 * self.s),
                ),
                fill=col,
                width=lw,
                joint="curve",
            )
        for side in (-1, 1):  # crow's feet
            ox = self.cx + dx + side * (self.i.eye_gap * self.w + self.ew * 1.18)
            for k in (-1, 0, 1):
                d.line(
                    [(ox, self.ey + k * self.ew * 0.22), (ox + side * self.ew * 0.32, self.ey + k * self.ew * 0.42)],
                    fill=col,
                    width=lw,
                )
            ex = self.cx + dx + side * self.i.eye_gap * self.w
            d.arc(
                (ex - self.ew * 0.8, self.ey - self.ew * 0.2, ex + self.ew * 0.8, self.ey + self.ew * 0.95),
                30,
                150,
                fill=col,
                width=lw,
            )

    def beard(self, d: ImageDraw.ImageDraw) -> None:
        i = self.i
        if i.beard is None:
            return
        cx, mw, nw = self.cx + self.dx, i.mouth_w * self.w, i.nose_w * self.w
        # Beards usually read darker than scalp hair, and a pale beard on pale skin would look like a mask.
        hair = _contrast(_scale(i.hair, 0.85), self.skin, 60)
        if i.beard == "goatee":
            top = self.ny + 0.25 * nw
            pts = _through(
                (cx - mw * 1.15, self.my + 0.01 * self.s),
                (cx, top - 0.01 * self.s),
                (cx + mw * 1.15, self.my + 0.01 * self.s),
            ) + _through(
                (cx + mw * 0.8, self.cy + self.h * 0.9),
                (cx, self.cy + self.h * 1.03),
                (cx - mw * 0.8, self.cy + self.h * 0.9),
            )
            d.polygon(pts, fill=hair)
            return
        # Stubble is a faint shadow of dark hair roots, not a patch of hair colour.
        col = hair if i.beard == "full" else _mix(self.skin, _scale(hair, 0.55), 0.2)
        bulk = 0.012 * self.s if i.beard == "full" else 0.0  # a full beard sits a little proud of the jaw
        y_start = self.cy
        # The jaw from the right sideburn round the chin to the left one (the outline runs clockwise from the top).
        lower = [
            (x + self.dx * 0.5, y + bulk * (y - y_start) / self.h)
            for x, y in self.face_outline()[30:91]
            if y >= y_start
        ]
        # Inner edge, left to right: down the cheek to the mouth corner, then a moustache over the upper lip.
        corner_y = self.my - 0.15 * mw
        inner = (
            _through((cx - self.w * 0.93, y_start), (cx - self.w * 0.72, self.ny), (cx - mw * 1.12, corner_y))
            + _through(
                (cx - mw * 0.95, self.ny + 0.55 * nw), (cx, self.ny + 0.25 * nw), (cx + mw * 0.95, self.ny + 0.55 * nw)
            )
            + _through((cx + mw * 1.12, corner_y), (cx + self.w * 0.72, self.ny), (cx + self.w * 0.93, y_start))
        )
        d.polygon(lower + inner, fill=col)

    def nose(self, d: ImageDraw.ImageDraw) -> None:
        nw = self.i.nose_w * self.w
        nx, ny = self.cx + self.dx * 1.25, self.ny
        lw = self.width(0.004)
        # Light comes from the viewer's upper left, so the bridge shadow falls on the right of the nose.
        d.line(
            _through(
                (nx + nw * 0.3, self.ey + self.ew * 0.3),
                (nx + nw * 0.5, (self.ey + ny) / 2 + 0.02 * self.s),
                (nx + nw * 0.62, ny - nw * 0.55),
            ),
            fill=_mix(self.skin, self.shadow, 0.7),
            width=lw,
        )
        d.ellipse(
            (nx - nw * 0.32, ny - nw * 0.62, nx + nw * 0.22, ny - nw * 0.22),
            fill=_mix(self.skin, (255, 255, 255), 0.14),
        )
        for side in (-1, 1):
            ax = nx + side * nw * 0.72
            box = (ax - nw * 0.36, ny - nw * 0.55, ax + nw * 0.36, ny + nw * 0.15)
            d.arc(box, 300 if side < 0 else 120, 60 if side < 0 else 240, fill=self.line, width=lw)
            d.ellipse(
                (nx + side * nw * 0.38 - nw * 0.2, ny - nw * 0.08, nx + side * nw * 0.38 + nw * 0.2, ny + nw * 0.12),
                fill=_scale(self.skin, 0.45),
            )
        d.arc((nx - nw * 0.35, ny - nw * 0.45, nx + nw * 0.35, ny + nw * 0.12), 30, 150, fill=self.shadow, width=lw)

    # -- head layer: expression features ----------------------------------------------------------------------
    def eye(self, img: Image.Image, d: ImageDraw.ImageDraw, side: int, openness: float) -> None:
        i, p, ew = self.i, self.p, self.ew
        ex, ey = self.cx + self.dx + side * i.eye_gap * self.w, self.ey
        inward = -side  # the inner corner points at the nose
        outer = (ex - inward * ew, ey - i.canthal * ew)
        inner = (ex + inward * ew, ey)
        lash = _mix(_scale(i.brow, 0.5), (20, 14, 12), 0.6)
        n = 24
        up_h = ew * 0.56 * openness
        lo_h = ew * 0.36 * (1 - 0.6 * p.lower_lid_raise) * (1 + 0.5 * max(0.0, openness - 1))
        upper, lower = [], []
        for k in range(n):
            t = k / (n - 1)
            x = outer[0] + (inner[0] - outer[0]) * t
            base = outer[1] + (inner[1] - outer[1]) * t
            upper.append((x, base - up_h * math.sin(math.pi * t**1.15) ** 0.8))
            lower.append((x, base + lo_h * math.sin(math.pi * t**0.85) ** 1.1))
        crease_h = ew * 0.56 * max(openness, 0.7) + ew * 0.28
        crease = [
            (
                outer[0] + (inner[0] - outer[0]) * t,
                outer[1] + (inner[1] - outer[1]) * t - crease_h * math.sin(math.pi * t**1.1) ** 0.8,
            )
            for t in (k / 15 for k in range(2, 15))
        ]
        d.line(crease, fill=_mix(self.skin, self.line, 0.45), width=self.width(0.003), joint="curve")
        if openness < 0.15:  # closed: a single lid line sagging a little
            shut = _through(outer, (ex, ey + ew * 0.12), inner)
            d.line(shut, fill=lash, width=self.width(0.006), joint="curve")
            return
        ir = ew * 0.47
        ix = ex + p.gaze_x * ew * 0.5
        iy = ey - ew * 0.04 + p.gaze_y * ew * 0.32
        poly = upper + lower[::-1]
        x0 = math.floor(min(x for x, _ in poly)) - 2
        y0 = math.floor(min(y for _, y in poly)) - 2
        x1 = math.ceil(max(x for x, _ in poly)) + 2
        y1 = math.ceil(max(y for _, y in poly)) + 2
        layer = img.crop((x0, y0, x1, y1))
        ld = ImageDraw.Draw(layer)
        sclera = (240, 236, 230) if not p.tears else (236, 226, 226)
        ld.rectangle((0, 0, x1 - x0, y1 - y0), fill=(*sclera, 255))
        lx, ly = ix - x0, iy - y0
        ld.ellipse(
            (lx - ir, ly - ir, lx + ir, ly + ir), fill=i.eye, outline=_scale(i.eye, 0.55), width=self.width(0.003)
        )
        pr = ir * 0.45
        ld.ellipse((lx - pr, ly - pr, lx + pr, ly + pr), fill=(18, 14, 14))
        hr = ir * 0.22
        ld.ellipse(
            (lx - ir * 0.42 - hr, ly - ir * 0.42 - hr, lx - ir * 0.42 + hr, ly - ir * 0.42 + hr), fill=(255, 255, 255)
        )
        ld.line(
            [(x - x0, y - y0 + ew * 0.07) for x, y in upper],
            fill=_mix(sclera, self.line, 0.45),
            width=max(1, round(ew * 0.12)),
        )
        mask = Image.new("L", layer.size, 0)
        ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
        img.paste(layer, (x0, y0), mask)
        d.line(lower, fill=_mix(self.skin, self.line, 0.6), width=self.width(0.003), joint="curve")
        if p.tears:
            d.line(lower[4:-3], fill=(214, 234, 246), width=self.width(0.005), joint="curve")
        d.line(upper, fill=lash, width=self.width(0.008 if i.gender == "female" else 0.006), joint="curve")
        if i.gender == "female":  # a few lashes flicking out at the outer corner
            for k in (1, 3, 5):
                x, y = upper[k]
                d.line([(x, y), (x - inward * ew * 0.16, y - ew * 0.2)], fill=lash, width=self.width(0.003))

    def brow(self, d: ImageDraw.ImageDraw, side: int, raise_: float, tilt: float) -> None:
        i, p, ew = self.i, self.p, self.ew
        ex = self.cx + self.dx + side * i.eye_gap * self.w
        inward = -side
        base = self.ey - ew * 1.3 - raise_ * ew * 0.5
        inner = (ex + inward * ew * (1.0 + 0.12 * p.brow_knit), base - tilt * ew * 0.32 + p.brow_knit * ew * 0.1)
        outer = (ex - inward * ew * 1.2, base + ew * 0.12 + tilt * ew * 0.18)
        arch = ew * (i.brow_arch + 0.25 * max(0.0, raise_) - 0.15 * max(0.0, tilt))
        mid = ((inner[0] + outer[0]) / 2 - inward * ew * 0.15, (inner[1] + outer[1]) / 2 - arch)
        spine = _through(inner, mid, outer, 16)
        thick = i.brow_thick * ew * 1.6
        top = [(x, y - thick * (1 - 0.55 * k / 15) / 2) for k, (x, y) in enumerate(spine)]
        bottom = [(x, y + thick * (1 - 0.55 * k / 15) / 2) for k, (x, y) in enumerate(spine)]
        d.polygon(top + bottom[::-1], fill=i.brow)

    def frown_lines(self, d: ImageDraw.ImageDraw) -> None:
        """Vertical creases between knitted brows, the strongest single cue of anger or strain."""
        ew, x = self.ew, self.cx + self.dx
        col = _mix(self.skin, self.line, 0.8)
        for side in (-1, 1):
            d.line(
                _through(
                    (x + side * ew * 0.22, self.ey - ew * 1.0),
                    (x + side * ew * 0.3, self.ey - ew * 1.35),
                    (x + side * ew * 0.24, self.ey - ew * 1.75),
                    8,
                ),
                fill=col,
                width=self.width(0.0035),
            )

    def mouth(self, d: ImageDraw.ImageDraw) -> None:
        i, p = self.i, self.p
        mw0 = i.mouth_w * self.w
        w = mw0 * p.mouth_width * (1 + 0.08 * max(0.0, p.mouth_curve))
        lift = mw0 * 0.34
        mx = self.cx + self.dx * 1.1 + p.mouth_asym * w * 0.12
        left = (mx - w, self.my - p.mouth_curve * lift)
        right = (mx + w, self.my - p.mouth_curve * lift - p.mouth_asym * lift)
        centre = _through(left, (mx, self.my + 0.1 * p.mouth_curve * lift), right, 25)
        gap = p.mouth_open * mw0 * 0.6
        full = i.lip_full * (1 - 0.7 * p.lip_press)
        up_inner, lo_inner, up_outer, lo_outer = [], [], [], []
        for k, (x, y) in enumerate(centre):
            t = k / (len(centre) - 1)
            b = math.sin(math.pi * t)
            bow = 1 - 0.3 * math.exp(-(((t - 0.5) / 0.07) ** 2))
            ui, li = y - gap * 0.25 * b, y + gap * 0.75 * b**0.9
            up_inner.append((x, ui))
            lo_inner.append((x, li))
            up_outer.append((x, ui - mw0 * 0.15 * full * b**0.5 * bow))
            lo_outer.append((x, li + mw0 * 0.2 * full * b**0.6))
        lip_dark = _scale(i.lip, 0.88)
        d.polygon(up_outer + up_inner[::-1], fill=lip_dark)
        d.polygon(lo_inner + lo_outer[::-1], fill=i.lip)
        if gap > 0.002 * self.s:
            d.polygon(up_inner + lo_inner[::-1], fill=(72, 28, 32))
            teeth = [(x, min(y + gap * 0.32, ly)) for (x, y), (_, ly) in zip(up_inner, lo_inner, strict=True)]
            d.polygon(up_inner[3:-3] + teeth[3:-3][::-1], fill=(238, 232, 222))
        else:
            d.line(centre, fill=_mix(i.lip, (24, 8, 8), 0.6), width=self.width(0.004), joint="curve")
        mid = len(lo_outer) // 2
        shine = _mix(i.lip, (255, 255, 255), 0.25)
        d.line(lo_outer[mid - 3 : mid + 4], fill=shine, width=self.width(0.003))
        corner_col = _mix(self.skin, self.line, 0.55)
        lw = self.width(0.0035)
        for sgn, (cx_, cy_) in ((-1, left), (1, right)):
            curve = p.mouth_curve - (p.mouth_asym if sgn > 0 else 0.0)
            if curve > 0.3 or (sgn > 0 and p.mouth_asym > 0.3):  # smile or smirk dimple
                d.arc(
                    (cx_ + sgn * w * 0.02 - w * 0.12, cy_ - w * 0.2, cx_ + sgn * w * 0.02 + w * 0.12, cy_ + w * 0.16),
                    300 if sgn > 0 else 120,
                    60 if sgn > 0 else 240,
                    fill=corner_col,
                    width=lw,
                )
            elif p.lip_press > 0.3 or p.mouth_curve < -0.3:  # tight or turned-down corner
                d.line([(cx_, cy_), (cx_ + sgn * w * 0.1, cy_ + w * 0.1)], fill=corner_col, width=lw)

    def tears(self, d: ImageDraw.ImageDraw) -> None:
        ew = self.ew
        tear = _mix(self.skin, (205, 232, 255), 0.55)
        for side in (-1, 1):
            x = self.cx + self.dx + side * (self.i.eye_gap * self.w + ew * 0.25)
            y = self.ey + ew * 0.35
            streak = _through((x, y), (x + side * ew * 0.12, y + ew * 1.1), (x + side * ew * 0.05, y + ew * 2.2))
            d.line(streak, fill=tear, width=self.width(0.0055), joint="curve")
            bx, by = streak[-1]
            r = ew * 0.16
            d.polygon([(bx - r, by), (bx, by - r * 2.2), (bx + r, by)], fill=(200, 226, 248))
            d.ellipse((bx - r, by - r, bx + r, by + r), fill=(200, 226, 248))
            d.ellipse((bx - r * 0.5, by - r * 0.6, bx - r * 0.05, by - r * 0.15), fill=(255, 255, 255))

    def sweat(self, d: ImageDraw.ImageDraw) -> None:
        ew = self.ew
        x = self.cx + self.dx + self.w * 0.62
        y = self.ey - ew * 2.1
        r = ew * 0.28
        d.polygon([(x - r, y), (x, y - r * 2.4), (x + r, y)], fill=(190, 222, 248))
        d.ellipse((x - r, y - r, x + r, y + r), fill=(190, 222, 248), outline=(120, 160, 200), width=self.width(0.002))
        d.ellipse((x - r * 0.5, y - r * 0.5, x - r * 0.05, y - r * 0.05), fill=(255, 255, 255))

    def glasses(self, d: ImageDraw.ImageDraw) -> None:
        i, ew = self.i, self.ew
        if i.glasses is None:
            return
        col, lw = i.glasses_colour, self.width(0.006)
        rims = []
        for side in (-1, 1):
            ex = self.cx + self.dx + side * i.eye_gap * self.w
            box = (ex - ew * 1.4, self.ey - ew * 1.0, ex + ew * 1.4, self.ey + ew * 1.05)
            if i.glasses == "round":
                d.ellipse(box, outline=col, width=lw)
            else:
                d.rounded_rectangle(box, radius=ew * 0.45, outline=col, width=lw)
            glare = _mix(self.skin, (255, 255, 255), 0.5)
            d.line(
                [(box[0] + ew * 0.5, box[1] + ew * 0.55), (box[0] + ew * 0.85, box[1] + ew * 0.25)],
                fill=glare,
                width=self.width(0.003),
            )
            rims.append(box)
            # The arms run to the ears, which do not move with head pitch; pinning their outer part to the
            # unpitched eye line keeps everything outside `face_box` identical across expressions.
            hinge = (self.cx + self.dx + side * self.w * 0.8, self.ey0 - ew * 0.4)
            ear = (self.cx + side * self.w * 0.97, self.ey0 - ew * 0.2)
            d.line([(box[0] if side < 0 else box[2], self.ey - ew * 0.5), hinge], fill=col, width=lw)
            d.line([hinge, ear], fill=col, width=lw)
        bridge = _through(
            (rims[0][2], self.ey - ew * 0.3),
            (self.cx + self.dx, self.ey - ew * 0.55),
            (rims[1][0], self.ey - ew * 0.3),
        )
        d.line(bridge, fill=col, width=lw, joint="curve")

    def hair_front(self, d: ImageDraw.ImageDraw) -> None:
        i, cx, cy, w, h, s = self.i, self.cx, self.cy, self.w, self.h, self.s
        style = i.hair_style
        if style == "bald":
            return
        hl = cy - i.hairline * h
        part_x = cx + i.parting * w * 0.45
        cc = cy - 0.12 * h  # the crown ellipse is centred a little above the face centre, like the skull
        if style == "curly":
            outer = self.bumpy(cx, cy - 0.1 * h, w * 1.4, h * 1.1, math.pi, 0, 12)
            rx, ry = w * 1.3, h * 1.1
        else:
            rx = w * (1.12 if style == "long" else 1.07 if style == "short" else 1.03)
            ry = cc - (cy - h - (0.012 if style == "bun" else 0.028) * s)
            outer = _ellipse_pts(cx, cc, rx, ry, math.pi, 0)
        temple = (w * 0.86, cy - 0.4 * h)
        if style == "long":
            # Curtains from a parting, falling past the cheeks to a point at the jaw.
            dip = 0.045 * s
            right = [
                (cx + w * 1.14, cy + 0.3 * h),
                (cx + w * 1.06, cy + 0.64 * h),
                (cx + w * 0.8, cy + 0.52 * h),
                (cx + w * 0.78, cy - 0.05 * h),
            ]
        else:
            dip = 0.02 * s if style in ("short", "curly") else 0.005 * s
            right = [(cx + w * 0.99, cy + 0.02 * h), (cx + w * 0.9, cy + 0.02 * h)]
        hairline = _through(
            (cx + temple[0], temple[1]), (cx + w * 0.42, hl + dip), (part_x, hl - 0.012 * s)
        ) + _through((part_x, hl - 0.012 * s), (cx - w * 0.42, hl + dip * 0.6), (cx - temple[0], temple[1]))
        left = [(2 * cx - x, y) for x, y in reversed(right)]
        d.polygon(outer + right + hairline + left, fill=i.hair)
        # Texture: two strands following the crown and one highlight where the light (upper left) hits.
        strand = _scale(i.hair, 0.75) if sum(i.hair) > 200 else _mix(i.hair, (255, 255, 255), 0.12)
        lw = self.width(0.003)
        for frac, a0, a1 in ((0.9, 0.74, 0.4), (0.8, 0.66, 0.34)):
            d.line(
                _ellipse_pts(cx, cc, rx * frac, ry * frac, math.pi * a0, math.pi * a1, 16),
                fill=strand,
                width=lw,
                joint="curve",
            )
        d.line(
            _ellipse_pts(cx, cc, rx * 0.86, ry * 0.93, math.pi * 0.7, math.pi * 0.56, 8),
            fill=_mix(i.hair, (255, 255, 255), 0.22),
            width=self.width(0.006),
            joint="curve",
        )


class EmbeddedFaceRenderer:
    """Offline Pillow face renderer implementing the `ImageBackend` protocol.

    `supersample` trades speed for edge quality: 2 already hides the aliasing at 336 px, at about 12 ms of one core.
    `request.seed` and `request.contrast_expression` are deliberately unused: the person must be the same for the
    same key whatever the seed, and contrast expressions are only a negative prompt for diffusion backends.
    """

    name = "embedded-face-renderer-v1"

    def __init__(self, supersample: int = 2) -> None:
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.supersample = supersample

    def render(self, request: FaceRequest) -> Image.Image:
        """Return the client's face showing `request.expression`, RGB, `request.size` square."""
        if request.size < 16:
            raise ValueError(f"image size must be at least 16 px, got {request.size}")
        ident = _identity(request.identity_key, request.gender, request.age)
        params = parse_expression(request.expression)
        s = request.size * self.supersample
        painter = _Painter(ident, params, s)

        # A soft vertical gradient keeps the backdrop from looking like a flat sticker; one column stretched
        # sideways costs far less than compositing two full-size layers.
        column = Image.new("RGB", (1, s))
        bottom = _scale(ident.background, 0.82)
        column.putdata([_mix(ident.background, bottom, y / (s - 1)) for y in range(s)])
        canvas = column.resize((s, s), Image.Resampling.NEAREST)
        painter.body(canvas)

        # The head lives on its own transparent layer so head tilt can rotate it without touching the rest.
        head = Image.new("RGBA", (s, s), (*ident.background, 0))
        d = ImageDraw.Draw(head)
        painter.hair_back(d)
        painter.neck(d)
        painter.ears(d)
        painter.face(d)
        painter.cheeks(d)
        painter.age_lines(d)
        painter.beard(d)
        painter.nose(d)
        for side, openness in ((-1, params.eye_open_left), (1, params.eye_open_right)):
            painter.eye(head, d, side, openness)
        painter.brow(d, -1, params.brow_raise_left, params.brow_tilt_left)
        painter.brow(d, 1, params.brow_raise_right, params.brow_tilt_right)
        if params.brow_knit >= 0.5:
            painter.frown_lines(d)
        painter.mouth(d)
        if params.tears:
            painter.tears(d)
        if params.sweat:
            painter.sweat(d)
        painter.glasses(d)
        painter.hair_front(d)
        if params.head_tilt:
            # NEAREST is enough on the supersampled canvas (the LANCZOS reduction smooths its steps) and is about
            # twenty times faster than BICUBIC.
            head = head.rotate(
                params.head_tilt,
                resample=Image.Resampling.NEAREST,
                center=(_PIVOT[0] * s, _PIVOT[1] * s),
                fillcolor=(*ident.background, 0),
            )
        canvas.paste(head, (0, 0), head)
        if self.supersample == 1:
            return canvas
        return canvas.resize((request.size, request.size), Image.Resampling.LANCZOS)
