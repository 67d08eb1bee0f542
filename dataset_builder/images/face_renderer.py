"""The embedded face renderer: an offline, weight-free, deterministic client face drawn with Pillow.

It lets the whole pipeline (generation, the virtual client, tests, CI) run without a GPU or weights while still
giving the vision tower the signal it must learn: *who* the client is stays fixed across a session and *what the
face shows* follows the turn's expression text.

* Identity lives in the face (shape, skin, hair, eyes, brows, glasses, beard; hair, greying and lines follow the
  age), never in the shared backdrop and top. It comes only from a SHA-256 of the identity key, gender and age,
  never from Python's salted `hash()` or global random state.
* `parse_expression` maps text to parameters with the data table `expressions.yaml`. Expressions change only the
  inner face and the head pose: the head is drawn on its own layer in a canonical frame where hair, ears, outline
  and neck never depend on the expression (`identity_regions`, `render(..., posed=False)`), then posed.
* `request.seed` adds a small deterministic variation (`vary`), so consecutive turns never give identical images.
* Drawing at `supersample` times the size and a LANCZOS reduction give Pillow's aliased primitives smooth edges.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from importlib import resources
from typing import TypeVar

from PIL import Image, ImageDraw

from .base import FaceRequest

RGB = tuple[int, int, int]
Point = tuple[float, float]
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------
# Expression: text -> parameters (the rules are data: expressions.yaml)


@dataclass(frozen=True)
class ExpressionParams:
    """Everything an expression may change; the field meanings and ranges are documented in `expressions.yaml`."""

    category: str = "neutral"
    intensity: float = 1.0
    brow_raise: float = 0.0
    brow_tilt: float = 0.0
    brow_knit: float = 0.0
    brow_asym: float = 0.0
    eye_open: float = 1.0
    lid_raise: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0
    mouth_curve: float = 0.0
    mouth_open: float = 0.0
    mouth_width: float = 1.0
    mouth_asym: float = 0.0
    lip_press: float = 0.0
    lip_bite: float = 0.0
    jaw_clench: float = 0.0
    head_tilt: float = 0.0
    head_turn: float = 0.0
    head_pitch: float = 0.0
    tears: float = 0.0


_NEUTRAL = ExpressionParams()
_FIELDS = frozenset(f.name for f in fields(ExpressionParams)) - {"category", "intensity"}
Cue = tuple[re.Pattern[str], float]


@dataclass(frozen=True)
class _Table:
    categories: tuple[str, ...]
    priority: tuple[str, ...]
    presets: dict[str, ExpressionParams]
    leading: dict[str, str]
    leading_alone: dict[str, str]
    cues: dict[str, tuple[Cue, ...]]
    masking_tension: re.Pattern[str]
    diminish: Cue
    amplify: Cue
    features: tuple[tuple[re.Pattern[str], dict[str, float], bool], ...]  # (cue, values, is_cap)


@lru_cache(maxsize=1)
def _table() -> _Table:
    return load_expression_table(resources.files(__package__).joinpath("expressions.yaml").read_text(encoding="utf-8"))


def load_expression_table(text: str, source: str = "expressions.yaml") -> _Table:
    """Parse and check an expression table; a bad table is a ValueError naming the entry that is wrong."""
    import yaml

    raw = yaml.safe_load(text)
    try:
        categories = tuple(raw["categories"])

        def params(where: str, values: dict, category: str = "neutral") -> ExpressionParams:
            unknown = set(values or {}) - _FIELDS
            if unknown:
                raise ValueError(f"{source} {where}: unknown fields {sorted(unknown)}; known: {sorted(_FIELDS)}")
            return replace(_NEUTRAL, category=category, **{k: float(v) for k, v in (values or {}).items()})

        def compiled(where: str, pattern: str) -> re.Pattern[str]:
            try:
                return re.compile(rf"\b(?:{pattern})")
            except re.error as err:
                raise ValueError(f"{source} {where}: bad pattern {pattern!r}: {err}") from err

        def intensity(kind: str) -> Cue:
            entry = raw["intensity"][kind]  # [pattern, intensity factor]
            return compiled(f"intensity.{kind}", entry[0]), float(entry[1])

        if sorted(raw["priority"]) != sorted(categories) or set(raw["presets"]) != set(categories):
            raise ValueError(f"{source}: `priority` and `presets` must name exactly the `categories` {categories}")
        for section in ("leading", "leading_alone", "cues"):
            unknown = sorted(set(raw[section]) - set(categories))
            if unknown:
                raise ValueError(f"{source} {section}: unknown categories {unknown}")
        features = []
        for k, row in enumerate(raw["features"]):
            values = row.get("set") or row.get("cap")
            params(f"features[{k}]", values)  # validates the field names
            features.append(
                (compiled(f"features[{k}]", row["cue"]), {n: float(v) for n, v in values.items()}, "cap" in row)
            )
        return _Table(
            categories=categories,
            priority=tuple(raw["priority"]),
            presets={c: params(f"presets.{c}", v, c) for c, v in raw["presets"].items()},
            leading={word: c for c, words in raw["leading"].items() for word in words},
            leading_alone={word: c for c, words in raw["leading_alone"].items() for word in words},
            cues={
                c: tuple((compiled(f"cues.{c}[{k}]", p), float(w)) for k, (p, w) in enumerate(raw["cues"].get(c, [])))
                for c in categories
            },
            masking_tension=compiled("masking_tension", raw["masking_tension"]),
            diminish=intensity("diminish"),
            amplify=intensity("amplify"),
            features=tuple(features),
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{source}: missing or malformed entry ({type(err).__name__}: {err})") from err


CATEGORIES: tuple[str, ...] = _table().categories
CATEGORY_PRIORITY: tuple[str, ...] = _table().priority
_NEGATORS = frozenset({"no", "not", "never", "without", "nor", "isn't", "doesn't", "don't", "didn't", "won't"})


def _hits(pattern: re.Pattern[str], text: str) -> int:
    """Matches not preceded, within two words of the same clause, by a negator ("not smiling", "without a smile")."""
    return sum(1 for m in pattern.finditer(text) if not _negated(text[: m.start()]))


def _negated(before: str) -> bool:
    return bool(_NEGATORS.intersection(re.split(r"[,;.:]", before)[-1].split()[-2:]))


def _intensity(clause: str) -> float:
    dim, amp = _table().diminish, _table().amplify
    return dim[1] if _hits(dim[0], clause) else amp[1] if _hits(amp[0], clause) else 1.0


def _toward(values: dict[str, float], intensity: float) -> dict[str, float]:
    """Move each value `intensity` of the way from its neutral value (1 for scales, 0 otherwise)."""
    return {k: getattr(_NEUTRAL, k) + intensity * (v - getattr(_NEUTRAL, k)) for k, v in values.items()}


def _category(clauses: list[str], text: str) -> str:
    table = _table()
    first = clauses[0] if clauses else ""
    if any(_hits(pattern, first) for pattern, _ in table.cues["masking"]):  # "small uneasy smile": not "uneasy"
        return "masking"
    if first in table.leading_alone:
        return table.leading_alone[first]
    for word in first.split():
        if word in table.leading and not _negated(first[: first.index(word)]):
            return table.leading[word]
    scores = {c: sum(w * _hits(p, text) for p, w in table.cues[c]) for c in table.categories}
    best = max(table.priority, key=lambda c: (scores[c], -table.priority.index(c)))
    if scores[best] == 0:
        return "neutral"
    if best == "happy" and _hits(table.masking_tension, text):
        return "masking"
    return best


def parse_expression(text: str) -> ExpressionParams:
    """Map a free-text expression ("tearful eyes held back, jaw set") to drawing parameters.

    See `expressions.yaml` for the three steps (category, scaled preset, feature rows). The result does not depend
    on any seed: `vary` adds the per-turn variation.
    """
    norm = re.sub(r"[-_/]+", " ", (text or "").lower().replace("\u2019", "'"))
    clauses = [c.strip() for c in re.split(r"[,;.:]+|\bbut\b", norm) if c.strip()]
    category = _category(clauses, norm)
    intensity = _intensity(clauses[0]) if clauses else 1.0
    preset = _table().presets[category]
    values = _toward({k: getattr(preset, k) for k in _FIELDS}, intensity)
    for clause in clauses:
        scale = _intensity(clause)
        for pattern, row, is_cap in _table().features:
            if not _hits(pattern, clause):
                continue
            if is_cap:
                values.update({k: min(values[k], v) for k, v in row.items()})
            else:
                values.update(_toward(row, scale))
    return replace(_NEUTRAL, category=category, intensity=intensity, **values)


def _unit(key: str, field: str) -> float:
    """A uniform number in [0, 1) for one attribute; per-field hashing keeps attributes independent and stable."""
    digest = hashlib.sha256(f"{key}\x00{field}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def vary(params: ExpressionParams, identity_key: str, seed: int) -> ExpressionParams:
    """Small, seeded variation of one turn: which side an averted gaze goes to, and a little head pose and gaze.

    The same (key, seed) always gives the same result. The jitter is small next to any expression's own change.
    """
    key = f"{identity_key}\x00{seed}"

    def jitter(field: str, amount: float) -> float:
        return (2 * _unit(key, field) - 1) * amount

    side = 1.0 if _unit(key, "side") < 0.5 else -1.0
    return replace(
        params,
        gaze_x=max(-1.0, min(1.0, params.gaze_x * side + jitter("gaze_x", 0.12))),
        gaze_y=max(-1.0, min(1.0, params.gaze_y + jitter("gaze_y", 0.1))),
        head_turn=params.head_turn * side + jitter("turn", 0.15),
        head_tilt=params.head_tilt + jitter("tilt", 2.5),
        head_pitch=params.head_pitch + jitter("pitch", 0.15),
    )


# ---------------------------------------------------------------------------------------------------------------
# Identity: key, gender, age -> a person


def _pick(key: str, field: str, options: Sequence[tuple[T, float]]) -> T:
    """Weighted choice driven by `_unit`; options with weight 0 are never picked."""
    target = _unit(key, field) * sum(weight for _, weight in options)
    for value, weight in options:
        target -= weight
        if target < 0 and weight > 0:
            return value
    return next(value for value, weight in reversed(options) if weight > 0)


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
    return _scale(c, max(0.0, _lum(against) - min_diff) / max(_lum(c), 1.0))


def _ramp(stops: Sequence[RGB], t: float) -> RGB:
    pos = t * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    return _mix(stops[i], stops[i + 1], pos - i)


# Light to deep skin, spanning roughly the Fitzpatrick range in sRGB; then the hair and eye colours by name.
_SKIN_RAMP: tuple[RGB, ...] = ((250, 226, 208), (241, 201, 174), (226, 178, 144), (199, 145, 108), (165, 114, 80))
_SKIN_RAMP += ((124, 83, 57), (88, 59, 42))
_HAIR = {"black": (28, 24, 24), "dark brown": (58, 40, 30), "brown": (98, 66, 44), "auburn": (132, 62, 36)}
_HAIR |= {"blonde": (196, 160, 104), "light blonde": (224, 198, 148)}
_EYES = {"dark brown": (62, 38, 24), "brown": (102, 64, 34), "hazel": (128, 102, 52), "green": (82, 118, 76)}
_EYES |= {"blue": (74, 116, 168), "grey": (118, 132, 144)}
_GREY_HAIR: RGB = (206, 205, 202)
# Shared by everyone, so the backdrop and clothes say nothing about who the client is.
_BACKDROP: tuple[RGB, RGB] = ((222, 223, 225), (196, 199, 204))
_CLOTHING: RGB = (74, 86, 102)
# Hair styles a presentation can have, with weights; `bald` and `receding` are added by age in `_identity`.
_STYLES = {
    "female": [("long", 4.0), ("bob", 2.5), ("bun", 1.5), ("curly", 1.5)],
    "male": [("short", 5.0), ("crop", 2.0), ("curly", 1.5)],
    "non-binary": [("short", 2.5), ("bob", 2.5), ("curly", 2.0), ("crop", 1.0)],
}


@dataclass(frozen=True)
class _Identity:
    """Everything that stays fixed for one client.

    `face_w`/`face_h` are half-sizes in canvas units; `eye_w`, `eye_gap` (eye centre to face centre), `nose_w` and
    `mouth_w` are fractions of `face_w`; `canthal`, `brow_thick` and `brow_arch` are fractions of the eye's half
    width; `hairline` is its height above the face centre in face half-heights; `greyness` and `lines` are 0..1.
    """

    gender: str
    age: int
    skin: RGB
    hair: RGB
    brow: RGB
    eye: RGB
    lip: RGB
    hair_style: str
    parting: float
    glasses: str | None
    glasses_colour: RGB
    beard: str | None
    smirk_side: float
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
    greyness: float
    lines: float


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
    hair_options = [("black", 5.0), ("dark brown", 3.0), ("brown", 1.0)]
    if not dark:
        hair_options = [("black", 1.5), ("dark brown", 2.5), ("brown", 2.5), ("auburn", 1.0), ("blonde", 1.5)]
        hair_options.append(("light blonde", 1.0 if age < 40 else 0.0))
    hair_name = _pick(key, "hair_colour", hair_options)
    base_hair = _contrast(_HAIR[hair_name], skin, 45)
    # Greying starts between 38 and 50 and is near complete thirty years later: a 52-year-old is flecked, not white.
    onset = 38 + 12 * u("grey_onset")
    greyness = min(0.92, max(0.0, (age - onset) / 30) ** 1.2)
    hair = _mix(base_hair, _GREY_HAIR, greyness)
    # Brows stay darker than scalp hair and grey later, which is what keeps a blonde or grey face readable.
    brow = _mix(_scale(base_hair, 0.72 if "blonde" in hair_name else 0.9), _GREY_HAIR, greyness * 0.45)
    brow = _contrast(brow, skin, 40)
    eye_options = [("dark brown", 3.0), ("brown", 2.0), ("hazel", 0.5)]
    if not dark:
        eye_options = [("dark brown", 1.0), ("brown", 2.0), ("hazel", 1.0), ("green", 1.0), ("blue", 2.0)]
        eye_options.append(("grey", 0.7))
    # A fixed red-brown target shifts hue, not just lightness, so lips stay readable on every skin tone.
    lip = _mix(skin, (172, 56, 76) if female else (150, 62, 68), 0.52 if female else 0.4)

    styles = list(_STYLES[gender])
    if male and age >= 40:
        styles.append(("receding", 1.5 + (age - 40) * 0.08))
    if male and age >= 50:
        styles.append(("bald", 0.6 + (age - 50) * 0.05))
    beard = None
    if male and age >= 22:
        beard = _pick(
            key, "beard", [(None, 5.0), ("stubble", 2.0), ("full", 1.5 if age >= 28 else 0.0), ("goatee", 1.0)]
        )

    return _Identity(
        gender=gender,
        age=age,
        skin=skin,
        hair=hair,
        brow=brow,
        eye=_EYES[_pick(key, "eye_colour", eye_options)],
        lip=lip,
        hair_style=_pick(key, "hair_style", styles),
        parting=u("parting") * 2 - 1,
        glasses=_pick(key, "glasses", [(None, 3.0 if age < 45 else 1.6), ("round", 1.0), ("rect", 1.0)]),
        glasses_colour=_pick(key, "frame", [((34, 30, 30), 2.0), ((92, 58, 36), 1.0), ((150, 150, 156), 1.0)]),
        beard=beard,
        smirk_side=1.0 if u("smirk_side") < 0.6 else -1.0,
        face_w=(0.262 if female else 0.285 if male else 0.272) + 0.02 * u("face_w"),
        face_h=0.365 + 0.02 * u("face_h"),
        jaw_taper=(0.42 if female else 0.24 if male else 0.33) + 0.12 * u("jaw"),
        chin_power=1.5 + 1.2 * u("chin"),
        eye_w=(0.215 if female else 0.2) + 0.03 * u("eye_w"),
        eye_gap=0.42 + 0.05 * u("eye_gap"),
        canthal=-0.05 + 0.2 * u("canthal"),
        nose_w=(0.16 if female else 0.2) + 0.06 * u("nose_w") + (0.03 if dark else 0.0),
        mouth_w=0.34 + 0.08 * u("mouth_w"),
        lip_full=(1.2 if female else 0.85) + 0.3 * u("lips") + (0.15 if dark else 0.0),
        brow_thick=(0.12 if female else 0.21) + 0.05 * u("brow_t"),
        brow_arch=(0.32 if female else 0.12) + 0.12 * u("brow_a"),
        hairline=(0.6 if female else 0.66) + 0.08 * u("hairline"),
        ear_size=0.9 + 0.2 * u("ear"),
        greyness=greyness,
        # Lines appear in the thirties and deepen slowly: faint at 40, clear at 60, strongest past 70.
        lines=min(1.0, max(0.0, (age - 32 + 6 * u("lines")) / 42)),
    )


# ---------------------------------------------------------------------------------------------------------------
# Layout shared by the renderer and the tests

_CX, _CY = 0.5, 0.5  # face centre, in units of the canvas side
_COLLAR_Y = 0.955  # where the neck meets the clothes
_PIVOT = (0.5, 0.9)  # head pose rotates the head layer about the base of the neck


def _box(size: int, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
    return (round(x0 * size), round(y0 * size), round(x1 * size), round(y1 * size))


def identity_regions(size: int) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of pure identity: hair at the crown, both temples (hair, ear or backdrop), the neck.

    In the head's own frame (`render(..., posed=False)`) they are pixel-equal across every expression of a client.
    """
    boxes = [(0.42, 0.1, 0.58, 0.14), (0.19, 0.3, 0.23, 0.36), (0.77, 0.3, 0.81, 0.36), (0.46, 0.87, 0.54, 0.9)]
    return [_box(size, *b) for b in boxes]


def expression_boxes(size: int) -> dict[str, tuple[int, int, int, int]]:
    """Boxes around the brows, the eyes and the mouth in the head's own frame, where expressions show."""
    boxes = {"brows": (0.3, 0.34, 0.7, 0.44), "eyes": (0.3, 0.42, 0.7, 0.52), "mouth": (0.38, 0.64, 0.62, 0.76)}
    return {name: _box(size, *b) for name, b in boxes.items()}


def face_box(size: int) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) around brows, eyes, nose and mouth in the head's own frame."""
    return _box(size, 0.16, 0.22, 0.84, 0.8)


# ---------------------------------------------------------------------------------------------------------------
# Drawing


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


def _mirror(points: list[Point], cx: float) -> list[Point]:
    return [(2 * cx - x, y) for x, y in reversed(points)]


@lru_cache(maxsize=8)
def _backdrop(s: int) -> Image.Image:
    """The shared backdrop and top (everything behind the head layer); cached, callers copy it."""
    column = Image.new("RGB", (1, s))
    column.putdata([_mix(_BACKDROP[0], _BACKDROP[1], y / (s - 1)) for y in range(s)])
    canvas = column.resize((s, s), Image.Resampling.NEAREST)
    d = ImageDraw.Draw(canvas)
    cx, y0 = _CX * s, _COLLAR_Y * s
    left = _through((cx - 0.1 * s, y0 - 0.02 * s), (cx - 0.28 * s, y0 + 0.005 * s), (cx - 0.5 * s, y0 + 0.04 * s))
    d.polygon([*left, (cx - 0.55 * s, 1.05 * s), (cx + 0.55 * s, 1.05 * s), *_mirror(left, cx)], fill=_CLOTHING)
    return canvas


class _Painter:
    """Draws one head on a transparent supersampled layer; coordinates are in canvas units times `s`."""

    def __init__(self, ident: _Identity, p: ExpressionParams, s: int) -> None:
        self.i, self.p, self.s = ident, p, s
        self.cx, self.cy = _CX * s, _CY * s
        self.w, self.h = ident.face_w * s, ident.face_h * s
        self.skin = ident.skin
        self.shadow = _mix(_scale(ident.skin, 0.8), (120, 40, 40), 0.08)
        self.line = _mix(_scale(ident.skin, 0.58), (60, 20, 20), 0.1)
        self.neck_w = self.w * (0.44 if ident.gender == "female" else 0.52)
        # Head turn and pitch slide the inner face; ears, outline and hair stay put in the head's own frame.
        self.dx = p.head_turn * self.w * 0.14
        self.dy = p.head_pitch * self.h * 0.05
        self.ew = ident.eye_w * self.w
        self.ey0 = self.cy - 0.06 * self.h  # the eye line before head pitch
        self.ey = self.ey0 + self.dy
        self.ny = self.cy + 0.3 * self.h + self.dy * 1.1
        self.my = self.cy + 0.56 * self.h + self.dy * 1.15

    def width(self, frac: float) -> int:
        return max(1, round(frac * self.s))

    def draw(self, head: Image.Image) -> None:
        d = ImageDraw.Draw(head)
        p = self.p
        back_to_front = (self.hair_back, self.neck, self.ears, self.face, self.cheeks, self.age_lines, self.beard)
        for part in (*back_to_front, self.nose):
            part(d)
        for side in (-1, 1):
            self.eye(head, d, side)
            self.brow(d, side)
        if p.brow_knit >= 0.4:
            self.frown_lines(d)
        if p.jaw_clench >= 0.3:
            self.jaw_lines(d)
        self.mouth(d)
        if p.tears >= 0.75:
            self.tear_tracks(d)
        self.glasses(d)
        self.hair_front(d)

    # -- silhouette -----------------------------------------------------------------------------------------
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
        n = bumps * 6
        pts = []
        for k in range(n):
            a = a0 + (a1 - a0) * k / (n - 1)
            r = 1 + 0.045 * abs(math.sin(bumps * math.pi * k / (n - 1)))
            pts.append((cx + rx * r * math.cos(a), cy - ry * r * math.sin(a)))
        return pts

    def neck(self, d: ImageDraw.ImageDraw) -> None:
        nw = self.neck_w
        col = _mix(self.skin, self.shadow, 0.55)
        d.rectangle((self.cx - nw, self.cy + 0.3 * self.h, self.cx + nw, (_COLLAR_Y + 0.06) * self.s), fill=col)
        # The collar line of the shared top, drawn on the head layer so it follows the neck.
        y0 = _COLLAR_Y * self.s
        left = (self.cx - nw * 1.25, y0 - 0.02 * self.s)
        arc = _through(left, (self.cx, y0 + 0.01 * self.s), (self.cx + nw * 1.25, left[1]))
        d.polygon([*arc, (self.cx + nw * 1.25, 1.1 * self.s), (self.cx - nw * 1.25, 1.1 * self.s)], fill=_CLOTHING)
        d.line(arc, fill=_scale(_CLOTHING, 0.7), width=self.width(0.008), joint="curve")

    def hair_back(self, d: ImageDraw.ImageDraw) -> None:
        i, cx, cy, s, w, h = self.i, self.cx, self.cy, self.s, self.w, self.h
        back = _scale(i.hair, 0.82)
        if i.hair_style in ("long", "bob"):
            end = 0.97 * s if i.hair_style == "long" else cy + 0.72 * h
            flare = 1.3 if i.hair_style == "long" else 1.2
            top = _ellipse_pts(cx, cy - 0.12 * h, w * 1.14, h * 0.98 + 0.03 * s, math.pi, 0)
            right = _through((cx + w * 1.14, cy - 0.12 * h), (cx + w * 1.2, (cy + end) / 2), (cx + w * flare, end))
            bottom = _through((cx + w * flare, end), (cx, end + 0.02 * s), (cx - w * flare, end))
            d.polygon(top + right + bottom + _mirror(right, cx), fill=back)
        elif i.hair_style == "curly" and i.gender != "male":
            d.polygon(self.bumpy(cx, cy - 0.05 * h, w * 1.38, h * 1.08, 0, 2 * math.pi, 22), fill=back)
        elif i.hair_style == "bun":
            r = 0.055 * s
            top = cy - h - 0.01 * s
            box = (cx - r, top - 1.5 * r, cx + r, top + 0.5 * r)
            d.ellipse(box, fill=i.hair, outline=back, width=self.width(0.004))

    def ears(self, d: ImageDraw.ImageDraw) -> None:
        i = self.i
        ey = self.cy + 0.1 * self.h
        rx, ry = 0.16 * self.w * i.ear_size, 0.27 * self.h * i.ear_size
        for side in (-1, 1):
            ex = self.cx + side * self.w * 0.97
            d.ellipse((ex - rx, ey - ry, ex + rx, ey + ry), fill=self.skin, outline=self.line, width=self.width(0.003))
            inner = (ex - rx * 0.3 + side * rx * 0.15, ey - ry * 0.6, ex + rx * 0.6 + side * rx * 0.15, ey + ry * 0.5)
            d.arc(inner, 300 if side > 0 else 120, 60 if side > 0 else 240, fill=self.shadow, width=self.width(0.005))

    def face(self, d: ImageDraw.ImageDraw) -> None:
        # Flat shading: a shadowed face with a lit face laid over it, offset toward the light (upper left).
        outline = self.face_outline()
        d.polygon(outline, fill=_mix(self.skin, self.shadow, 0.6))
        d.polygon(self.face_outline(0.955, (-0.03 * self.w, -0.02 * self.h)), fill=self.skin)
        d.line([*outline, outline[0]], fill=self.line, width=self.width(0.0035))

    # -- identity details on the inner face -------------------------------------------------------------------
    def cheeks(self, d: ImageDraw.ImageDraw) -> None:
        # Blush shows less on deeper skin; a real smile lifts the cheeks.
        blush = _mix(self.skin, (225, 105, 105), 0.12 * (_lum(self.skin) / 255) ** 2 + 0.03 * self.p.lid_raise)
        lift = self.p.lid_raise * 0.03 * self.s
        for side in (-1, 1):
            x, y = self.cx + self.dx + side * self.w * 0.52, self.ny - 0.01 * self.s - lift
            d.ellipse((x - self.w * 0.18, y - self.w * 0.11, x + self.w * 0.18, y + self.w * 0.11), fill=blush)

    def age_lines(self, d: ImageDraw.ImageDraw) -> None:
        depth = self.i.lines
        if depth <= 0.1:
            return
        col = _mix(self.skin, self.line, 0.15 + 0.5 * depth)
        lw = self.width(0.003)
        cx = self.cx + self.dx
        nw, mw = self.i.nose_w * self.w, self.i.mouth_w * self.w
        for side in (-1, 1):  # nasolabial folds, from the late thirties
            fold = _through(
                (cx + side * nw * 1.1, self.ny - 0.3 * nw),
                (cx + side * nw * 1.65, self.ny + 0.45 * nw),
                (cx + side * mw * 1.2, self.my + 0.05 * nw),
            )
            d.line(fold, fill=col, width=lw, joint="curve")
        if depth < 0.4:  # forehead lines and crow's feet from about fifty
            return
        for k in range(1 + int(depth > 0.65) + int(depth > 0.85)):
            y = self.cy - self.h * (0.5 + 0.075 * k)
            ends = (y + 0.003 * self.s, y - 0.003 * self.s)
            line = _through((cx - self.w * 0.34, ends[0]), (cx, ends[1]), (cx + self.w * 0.34, ends[0]))
            d.line(line, fill=col, width=lw, joint="curve")
        for side in (-1, 1):
            ox = cx + side * (self.i.eye_gap * self.w + self.ew * 1.2)
            for k in (-1, 1) if depth < 0.7 else (-1, 0, 1):
                crow = [(ox, self.ey + k * self.ew * 0.2), (ox + side * self.ew * 0.28, self.ey + k * self.ew * 0.38)]
                d.line(crow, fill=col, width=lw)

    def beard(self, d: ImageDraw.ImageDraw) -> None:
        i = self.i
        if i.beard is None:
            return
        cx, mw, nw = self.cx + self.dx, i.mouth_w * self.w, i.nose_w * self.w
        # Beards usually read darker than scalp hair, and a pale beard on pale skin would look like a mask.
        hair = _contrast(_scale(i.hair, 0.85), self.skin, 60)
        if i.beard == "goatee":
            top = self.ny + 0.25 * nw
            corner = self.my + 0.01 * self.s
            pts = _through((cx - mw * 1.15, corner), (cx, top - 0.01 * self.s), (cx + mw * 1.15, corner))
            chin = self.cy + self.h * 0.9
            pts += _through((cx + mw * 0.8, chin), (cx, self.cy + self.h * 1.03), (cx - mw * 0.8, chin))
            d.polygon(pts, fill=hair)
            return
        # Stubble is a faint shadow of dark hair roots, not a patch of hair colour.
        col = hair if i.beard == "full" else _mix(self.skin, _scale(hair, 0.55), 0.22)
        bulk = 0.012 * self.s if i.beard == "full" else 0.0
        lower = [(x, y + bulk * (y - self.cy) / self.h) for x, y in self.face_outline()[30:91] if y >= self.cy]
        corner_y = self.my - 0.15 * mw
        inner = (
            _through((cx - self.w * 0.93, self.cy), (cx - self.w * 0.72, self.ny), (cx - mw * 1.12, corner_y))
            + _through(
                (cx - mw * 0.95, self.ny + 0.55 * nw), (cx, self.ny + 0.25 * nw), (cx + mw * 0.95, self.ny + 0.55 * nw)
            )
            + _through((cx + mw * 1.12, corner_y), (cx + self.w * 0.72, self.ny), (cx + self.w * 0.93, self.cy))
        )
        d.polygon(lower + inner, fill=col)

    def nose(self, d: ImageDraw.ImageDraw) -> None:
        nw = self.i.nose_w * self.w
        nx, ny = self.cx + self.dx * 1.25, self.ny
        lw = self.width(0.004)
        # Light comes from the viewer's upper left, so the bridge shadow falls on the right of the nose.
        bridge = _through(
            (nx + nw * 0.3, self.ey + self.ew * 0.3),
            (nx + nw * 0.5, (self.ey + ny) / 2 + 0.02 * self.s),
            (nx + nw * 0.62, ny - nw * 0.55),
        )
        d.line(bridge, fill=_mix(self.skin, self.shadow, 0.7), width=lw)
        tip = (nx - nw * 0.32, ny - nw * 0.62, nx + nw * 0.22, ny - nw * 0.22)
        d.ellipse(tip, fill=_mix(self.skin, (255, 255, 255), 0.14))
        for side in (-1, 1):
            ax = nx + side * nw * 0.72
            box = (ax - nw * 0.36, ny - nw * 0.55, ax + nw * 0.36, ny + nw * 0.15)
            d.arc(box, 300 if side < 0 else 120, 60 if side < 0 else 240, fill=self.line, width=lw)
            nostril_x = nx + side * nw * 0.38
            nostril = (nostril_x - nw * 0.2, ny - nw * 0.08, nostril_x + nw * 0.2, ny + nw * 0.12)
            d.ellipse(nostril, fill=_scale(self.skin, 0.45))
        d.arc((nx - nw * 0.35, ny - nw * 0.45, nx + nw * 0.35, ny + nw * 0.12), 30, 150, fill=self.shadow, width=lw)

    # -- expression features ---------------------------------------------------------------------------------
    def eye_centre(self, side: int) -> Point:
        return self.cx + self.dx + side * self.i.eye_gap * self.w, self.ey

    def eye(self, img: Image.Image, d: ImageDraw.ImageDraw, side: int) -> None:
        i, p, ew = self.i, self.p, self.ew
        ex, ey = self.eye_centre(side)
        # One raised brow pulls its lid open a little; the lowered one narrows its eye.
        openness = max(0.0, p.eye_open * (1 + 0.12 * p.brow_asym * side))
        inward = -side  # the inner corner points at the nose
        outer, inner = (ex - inward * ew, ey - i.canthal * ew), (ex + inward * ew, ey)
        lash = _mix(_scale(i.brow, 0.5), (20, 14, 12), 0.6)
        up_h = ew * 0.56 * openness
        lo_h = ew * 0.36 * (1 - 0.6 * p.lid_raise) * (1 + 0.5 * max(0.0, openness - 1))
        upper, lower = [], []
        for k in range(24):
            t = k / 23
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
            d.line(_through(outer, (ex, ey + ew * 0.12), inner), fill=lash, width=self.width(0.006), joint="curve")
            return
        ir = ew * 0.47
        ix, iy = ex + p.gaze_x * ew * 0.55, ey - ew * 0.04 + p.gaze_y * ew * 0.34
        poly = upper + lower[::-1]
        x0, y0 = math.floor(min(x for x, _ in poly)) - 2, math.floor(min(y for _, y in poly)) - 2
        x1, y1 = math.ceil(max(x for x, _ in poly)) + 2, math.ceil(max(y for _, y in poly)) + 2
        layer = img.crop((x0, y0, x1, y1))
        ld = ImageDraw.Draw(layer)
        sclera = _mix((240, 236, 230), (236, 200, 200), min(1.0, p.tears))  # tearful eyes redden
        ld.rectangle((0, 0, x1 - x0, y1 - y0), fill=(*sclera, 255))
        lx, ly = ix - x0, iy - y0
        iris = (lx - ir, ly - ir, lx + ir, ly + ir)
        ld.ellipse(iris, fill=i.eye, outline=_scale(i.eye, 0.55), width=self.width(0.003))
        pr = ir * 0.45
        ld.ellipse((lx - pr, ly - pr, lx + pr, ly + pr), fill=(18, 14, 14))
        for hr, hx, hy in ((ir * 0.22, -0.42, -0.42), (ir * 0.14 * (p.tears > 0.25), 0.35, 0.4)):  # glints; wet: two
            gx, gy = lx + ir * hx, ly + ir * hy
            ld.ellipse((gx - hr, gy - hr, gx + hr, gy + hr), fill=(255, 255, 255))
        lid_shadow = [(x - x0, y - y0 + ew * 0.07) for x, y in upper]
        ld.line(lid_shadow, fill=_mix(sclera, self.line, 0.45), width=max(1, round(ew * 0.12)))
        mask = Image.new("L", layer.size, 0)
        ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
        img.paste(layer, (x0, y0), mask)
        if p.tears >= 0.25:  # a bright wet line pooled on the lower lid
            d.line(lower, fill=_mix(self.skin, (200, 80, 90), 0.35), width=self.width(0.008), joint="curve")
            d.line(lower[3:-2], fill=(232, 244, 252), width=self.width(0.007), joint="curve")
        else:
            d.line(lower, fill=_mix(self.skin, self.line, 0.6), width=self.width(0.003), joint="curve")
        d.line(upper, fill=lash, width=self.width(0.009 if i.gender == "female" else 0.0065), joint="curve")
        if i.gender == "female":  # a few lashes flicking out at the outer corner
            for k in (1, 3, 5):
                x, y = upper[k]
                d.line([(x, y), (x - inward * ew * 0.16, y - ew * 0.2)], fill=lash, width=self.width(0.003))

    def brow(self, d: ImageDraw.ImageDraw, side: int) -> None:
        i, p, ew = self.i, self.p, self.ew
        ex, _ = self.eye_centre(side)
        raise_ = p.brow_raise + p.brow_asym * (0.75 if side * self.i.smirk_side > 0 else -0.35)
        tilt = p.brow_tilt
        inward = -side
        base = self.ey - ew * 1.25 - raise_ * ew * 0.6
        knit = p.brow_knit
        inner = (ex + inward * ew * (1.0 + 0.14 * knit), base - tilt * ew * 0.4 + knit * ew * 0.12)
        outer = (ex - inward * ew * 1.2, base + ew * 0.12 + tilt * ew * 0.22)
        arch = ew * (i.brow_arch + 0.25 * max(0.0, raise_) - 0.15 * max(0.0, tilt))
        mid = ((inner[0] + outer[0]) / 2 - inward * ew * 0.15, (inner[1] + outer[1]) / 2 - arch)
        spine = _through(inner, mid, outer, 16)
        thick = i.brow_thick * ew * 1.7
        top = [(x, y - thick * (1 - 0.55 * k / 15) / 2) for k, (x, y) in enumerate(spine)]
        bottom = [(x, y + thick * (1 - 0.55 * k / 15) / 2) for k, (x, y) in enumerate(spine)]
        d.polygon(top + bottom[::-1], fill=i.brow)

    def frown_lines(self, d: ImageDraw.ImageDraw) -> None:
        """Vertical creases between knitted brows: strain, worry or anger, whichever the rest of the face says."""
        ew, x = self.ew, self.cx + self.dx
        col = _mix(self.skin, self.line, 0.45 + 0.45 * min(1.0, self.p.brow_knit))
        for side in (-1, 1):
            crease = _through(
                (x + side * ew * 0.2, self.ey - ew * 0.95),
                (x + side * ew * 0.28, self.ey - ew * 1.3),
                (x + side * ew * 0.22, self.ey - ew * 1.7),
                8,
            )
            d.line(crease, fill=col, width=self.width(0.0035))

    def jaw_lines(self, d: ImageDraw.ImageDraw) -> None:
        """A clenched jaw bulges the masseter: a short shadow curve at each jaw angle."""
        col = _mix(self.skin, self.line, 0.55)
        for side in (-1, 1):
            x = self.cx + side * self.w * 0.8
            curve = _through(
                (x, self.cy + 0.3 * self.h),
                (x - side * self.w * 0.05, self.cy + 0.45 * self.h),
                (x - side * self.w * 0.02, self.cy + 0.6 * self.h),
                8,
            )
            d.line(curve, fill=col, width=self.width(0.004))

    def mouth(self, d: ImageDraw.ImageDraw) -> None:
        i, p = self.i, self.p
        mw0 = i.mouth_w * self.w
        w = mw0 * p.mouth_width * (1 + 0.08 * max(0.0, p.mouth_curve))
        lift = mw0 * 0.34
        asym = p.mouth_asym * i.smirk_side
        mx = self.cx + self.dx * 1.1 + asym * w * 0.12
        left = (mx - w, self.my - p.mouth_curve * lift + min(0.0, asym) * lift)
        right = (mx + w, self.my - p.mouth_curve * lift - max(0.0, asym) * lift)
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
            lo_outer.append((x, li + mw0 * 0.2 * full * b**0.6 * (1 - 0.6 * p.lip_bite)))
        d.polygon(up_outer + up_inner[::-1], fill=_scale(i.lip, 0.88))
        d.polygon(lo_inner + lo_outer[::-1], fill=i.lip)
        if gap > 0.002 * self.s:
            d.polygon(up_inner + lo_inner[::-1], fill=(72, 28, 32))
            teeth = [(x, min(y + gap * 0.32, ly)) for (x, y), (_, ly) in zip(up_inner, lo_inner, strict=True)]
            d.polygon(up_inner[3:-3] + teeth[3:-3][::-1], fill=(238, 232, 222))
        else:
            d.line(centre, fill=_mix(i.lip, (24, 8, 8), 0.6), width=self.width(0.004), joint="curve")
        if p.lip_bite >= 0.3:  # upper teeth resting on the middle of the lower lip
            teeth = [(x, y + 0.011 * self.s) for x, y in centre[7:18]]
            d.polygon(centre[7:18] + teeth[::-1], fill=(236, 230, 220), outline=_scale(i.lip, 0.7))
        else:
            mid = len(lo_outer) // 2
            d.line(lo_outer[mid - 3 : mid + 4], fill=_mix(i.lip, (255, 255, 255), 0.25), width=self.width(0.003))
        corner_col = _mix(self.skin, self.line, 0.55)
        lw = self.width(0.0035)
        for sgn, (cx_, cy_) in ((-1, left), (1, right)):
            lifted = p.mouth_curve + asym * sgn
            if lifted > 0.3:  # smile or smirk dimple
                box = (cx_ + sgn * w * 0.02 - w * 0.12, cy_ - w * 0.2, cx_ + sgn * w * 0.02 + w * 0.12, cy_ + w * 0.16)
                d.arc(box, 300 if sgn > 0 else 120, 60 if sgn > 0 else 240, fill=corner_col, width=lw)
            if p.lip_press > 0.5 or p.mouth_curve < -0.3:  # tight or turned-down corner
                d.line([(cx_, cy_), (cx_ + sgn * w * 0.1, cy_ + w * 0.1)], fill=corner_col, width=lw)

    def tear_tracks(self, d: ImageDraw.ImageDraw) -> None:
        ew = self.ew
        tear = _mix(self.skin, (205, 232, 255), 0.55)
        for side in (-1, 1):
            ex, ey = self.eye_centre(side)
            x, y = ex + side * ew * 0.25, ey + ew * 0.35
            streak = _through((x, y), (x + side * ew * 0.12, y + ew * 1.1), (x + side * ew * 0.05, y + ew * 2.2))
            d.line(streak, fill=tear, width=self.width(0.0055), joint="curve")
            bx, by = streak[-1]
            r = ew * 0.16
            d.polygon([(bx - r, by), (bx, by - r * 2.2), (bx + r, by)], fill=(200, 226, 248))
            d.ellipse((bx - r, by - r, bx + r, by + r), fill=(200, 226, 248))

    def glasses(self, d: ImageDraw.ImageDraw) -> None:
        i, ew = self.i, self.ew
        if i.glasses is None:
            return
        col, lw = i.glasses_colour, self.width(0.006)
        rims = []
        for side in (-1, 1):
            ex, _ = self.eye_centre(side)
            box = (ex - ew * 1.4, self.ey - ew * 1.0, ex + ew * 1.4, self.ey + ew * 1.05)
            if i.glasses == "round":
                d.ellipse(box, outline=col, width=lw)
            else:
                d.rounded_rectangle(box, radius=ew * 0.45, outline=col, width=lw)
            glare = _mix(self.skin, (255, 255, 255), 0.5)
            glint = [(box[0] + ew * 0.5, box[1] + ew * 0.55), (box[0] + ew * 0.85, box[1] + ew * 0.25)]
            d.line(glint, fill=glare, width=self.width(0.003))
            rims.append(box)
            # The arms run to the ears, which do not move with the inner face: pin their outer part there.
            hinge = (self.cx + self.dx + side * self.w * 0.8, self.ey0 - ew * 0.4)
            ear = (self.cx + side * self.w * 0.97, self.ey0 - ew * 0.2)
            d.line([(box[0] if side < 0 else box[2], self.ey - ew * 0.5), hinge, ear], fill=col, width=lw)
        rim_y = self.ey - ew * 0.3
        bridge = _through((rims[0][2], rim_y), (self.cx + self.dx, self.ey - ew * 0.55), (rims[1][0], rim_y))
        d.line(bridge, fill=col, width=lw, joint="curve")

    def hair_front(self, d: ImageDraw.ImageDraw) -> None:
        i, cx, cy, w, h, s = self.i, self.cx, self.cy, self.w, self.h, self.s
        style = i.hair_style
        cc = cy - 0.12 * h  # the crown ellipse is centred a little above the face centre, like the skull
        if style == "bald":
            # Scalp shine, and a fringe of short hair hugging the skull from the temples to behind the ears.
            top = cy - h
            shine = (cx - w * 0.4, top + 0.02 * s, cx + w * 0.05, top + 0.055 * s)
            d.ellipse(shine, fill=_mix(self.skin, (255, 255, 255), 0.15))
            outline, inner = self.face_outline(1.025), self.face_outline(0.9)
            for a, b in ((18, 33), (88, 103)):
                d.polygon(outline[a:b] + inner[a:b][::-1], fill=i.hair)
            return
        hairline = cy - i.hairline * h - (0.1 * h if style == "receding" else 0.0)
        part_x = cx + i.parting * w * 0.45
        if style == "curly":
            big = i.gender != "male"
            centre_y, rx_, ry_ = (cy - 0.05 * h, w * 1.38, h * 1.08) if big else (cc, w * 1.1, h * 0.95)
            outer = self.bumpy(cx, centre_y, rx_, ry_, math.pi, 0, 12)
            rx, ry = w * 1.2, h * 1.0
        else:
            rx = w * {"long": 1.12, "bob": 1.12, "short": 1.07, "crop": 1.03, "receding": 1.04}.get(style, 1.03)
            ry = cc - (cy - h - {"bun": 0.012, "crop": 0.012, "receding": 0.014}.get(style, 0.028) * s)
            outer = _ellipse_pts(cx, cc, rx, ry, math.pi, 0)
        temple = (w * 0.86, cy - 0.4 * h)
        if style in ("long", "bob"):
            # Curtains from a parting, falling past the cheeks.
            end = 0.64 if style == "long" else 0.5
            right = [
                (cx + w * 1.14, cy + 0.3 * h),
                (cx + w * 1.06, cy + end * h),
                (cx + w * 0.82, cy + (end - 0.12) * h),
                (cx + w * 0.8, cy - 0.05 * h),
            ]
            dip = 0.045 * s
        else:
            right = [(cx + w * 0.99, cy + 0.02 * h), (cx + w * 0.9, cy + 0.02 * h)]
            dip = {"short": 0.02, "curly": 0.02, "receding": -0.01}.get(style, 0.005) * s
        if style in ("short", "crop", "receding"):
            # A cropped cut: hair hugs the skull, the hairline recedes a little at the temples (more with age).
            recess = 0.05 * h + (0.08 * h if style == "receding" else 0.0)
            line = [(cx + w * 0.9, cy - 0.3 * h), (cx + w * 0.74, hairline + recess)]
            line.append((cx + w * 0.5, hairline + 0.02 * h))
            line += _through(
                (cx + w * 0.5, hairline + 0.02 * h), (part_x, hairline - 0.01 * h), (cx - w * 0.5, hairline + 0.02 * h)
            )
            line += [(cx - w * 0.74, hairline + recess), (cx - w * 0.9, cy - 0.3 * h)]
        else:
            line = _through(
                (cx + temple[0], temple[1]), (cx + w * 0.42, hairline + dip), (part_x, hairline - 0.012 * s)
            )
            line += _through(
                (part_x, hairline - 0.012 * s), (cx - w * 0.42, hairline + dip * 0.6), (cx - temple[0], temple[1])
            )
        d.polygon(outer + right + line + [(2 * cx - x, y) for x, y in reversed(right)], fill=i.hair)
        # Texture: two strands following the crown and one highlight where the light (upper left) hits.
        strand = _scale(i.hair, 0.75) if sum(i.hair) > 200 else _mix(i.hair, (255, 255, 255), 0.12)
        for frac, a0, a1 in ((0.9, 0.74, 0.4), (0.8, 0.66, 0.34)):
            arc = _ellipse_pts(cx, cc, rx * frac, ry * frac, math.pi * a0, math.pi * a1, 16)
            d.line(arc, fill=strand, width=self.width(0.003), joint="curve")
        shine = _ellipse_pts(cx, cc, rx * 0.86, ry * 0.93, math.pi * 0.7, math.pi * 0.56, 8)
        d.line(shine, fill=_mix(i.hair, (255, 255, 255), 0.22), width=self.width(0.006), joint="curve")


class EmbeddedFaceRenderer:
    """Offline Pillow face renderer implementing the `ImageBackend` protocol.

    `supersample` trades speed for edge quality: 2 already hides the aliasing at 336 px. `request.seed` drives only
    the small per-turn variation (`vary`); the person depends on the identity key, gender and age alone.
    `request.contrast_expression` is unused: it is a negative prompt for diffusion backends.
    """

    name = "embedded-face-renderer-v2"

    def __init__(self, supersample: int = 2) -> None:
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.supersample = supersample

    def params(self, request: FaceRequest) -> ExpressionParams:
        """The parameters `render` draws for this request: the parsed expression plus the seeded variation."""
        return vary(parse_expression(request.expression), request.identity_key, request.seed)

    def render(self, request: FaceRequest, *, posed: bool = True) -> Image.Image:
        """Return the client's face showing `request.expression`, RGB, `request.size` square.

        `posed=False` leaves out the head pose (tilt and shift of the whole head), giving the head in its own
        frame: what the identity tests compare.
        """
        if request.size < 16:
            raise ValueError(f"image size must be at least 16 px, got {request.size}")
        ident = _identity(request.identity_key, request.gender, request.age)
        params = self.params(request)
        s = request.size * self.supersample
        canvas = _backdrop(s).copy()
        head = Image.new("RGBA", (s, s), (*_BACKDROP[0], 0))
        _Painter(ident, params, s).draw(head)
        if posed:
            # NEAREST is enough on the supersampled canvas (the LANCZOS reduction smooths its steps) and is about
            # twenty times faster than BICUBIC. Turning and lowering the head also carry the whole head a little.
            shift = (params.head_turn * 0.03 * s, params.head_pitch * 0.04 * s)
            pivot, clear = (_PIVOT[0] * s, _PIVOT[1] * s), (*_BACKDROP[0], 0)
            nearest = Image.Resampling.NEAREST
            head = head.rotate(params.head_tilt, nearest, center=pivot, translate=shift, fillcolor=clear)
        canvas.paste(head, (0, 0), head)
        if self.supersample == 1:
            return canvas
        return canvas.resize((request.size, request.size), Image.Resampling.LANCZOS)
