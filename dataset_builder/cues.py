"""Cue check: therapist lines that cite what the client's face image does not show.

A MIRROR therapist sees the client only through one face image per turn; a training line saying "your knee is
bouncing", or "you smiled just then" when the image shows no smile, teaches the model to invent body language.
This is a warning, not a filter: the builder keeps the session, counts the warnings (the `cue_warnings` score)
and lists them in `quality.flags`. Two kinds:

* `body`: a cue a face crop cannot show (knees, hands, arms, posture, clothing, props, the voice). Verbs of
  observation ("you crossed your arms") always count; a bare noun ("your phone") only in a sentence that reports an
  observation ("I noticed", "just then"), so homework such as "set a reminder on your phone" is not flagged.
* `facial`: a facial cue (gaze, smile, tears, brows, jaw, lips, head, eyes, "you look tense") that the latest
  client turn's `expression` does not describe.

Matching is lexical (regular expressions on lower-cased text): a screen for review, not a proof.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{part})" for part in parts))


# A sentence reports an observation of the client when it contains one of these.
_OBSERVED = _rx(
    r"\bi(?:'m|\s+am|\s+also|\s+just|\s+did)?\s+notic\w*",
    r"\bnoticing\b",
    r"\bi\s+(?:can\s+)?see\b",
    r"\bi\s+saw\b",
    r"\bi'?m\s+seeing\b",
    r"\b(?:caught|spotted)\b",
    r"\bjust\s+(?:then|now)\b",
    r"\ba\s+moment\s+ago\b",
    r"\b(?:as|when|while)\s+you\s+(?:said|say|spoke|speak|talk\w*|mention\w*|were\s+\w+ing)\b",
)
_YOU = r"(?<!\bin\s)\byour\s+(?:\w+\s+)?"  # "your (left) knee", not "in your hands" (a figure of speech)
_PROPS = (
    r"(?:phone|ring|skirt|sleeves?|jacket|coat|bag|keys|watch|pen|cup|mug|tissues?|scarf|shirt|collar|notebook|"
    r"hat|hair|hood|thread|button|sleeve|strap|folder|papers)\b(?!\s+calls?\b)"
)

# name -> (always a citation, a citation only in an observing sentence)
_BODY_CUES: dict[str, tuple[re.Pattern[str] | None, re.Pattern[str] | None]] = {
    "legs or feet": (
        _rx(
            r"\byour\s+(?:\w+\s+)?(?:knees?|legs?|foot|feet)\s+(?:is|are|was|were|kept|keeps?)\s+\w+ing\b",
            r"\b(?:tapping|jiggling|bouncing|jigging)\s+your\b",
        ),
        _rx(_YOU + r"(?:knees?|legs?|foot|feet|toes)\b"),
    ),
    "hands or arms": (
        _rx(
            r"\byou\s+(?:just\s+)?(?:crossed|folded|uncrossed|clenched|clasped|wrung|rubbed|twisted|turned)\s+your\b",
            r"\barms?\s+(?:crossed|folded)\b",
            r"\bfidget\w*",
            r"\bwring\w*",
        ),
        _rx(_YOU + r"(?:hands?|fingers?|fists?|arms?|wrists?|thumbs?|nails|knuckles|pulse)\b"),
    ),
    "shoulders or posture": (
        _rx(
            r"\byou\s+(?:just\s+)?(?:shrugged|slumped|leaned|leant|hunched|sat\s+back|sank)\b",
            r"\bshrug\w*",
            r"\byou(?:'re|\s+are|\s+were)\s+(?:\w+\s+)?(?:leaning|slumped|slumping|hunched|hunching)\b",
        ),
        _rx(_YOU + r"(?:shoulders?|posture|lap)\b", r"\bthe\s+way\s+you(?:'re|\s+are|\s+were)\s+sitting\b"),
    ),
    "clothing or props": (
        _rx(
            r"\b(?:smooth|twist|turn|fiddl|play|check|hold|grip|clutch|tug|pick)\w*\s+(?:with\s+|at\s+)?"
            rf"(?:your|the|that)\s+(?:\w+\s+)?{_PROPS}"
        ),
        _rx(
            _YOU + _PROPS,
            r"\b(?:the|a|an|that|some)\s+(?:\w+\s+)?(?:tissue|chair|notebook|bag|folder|papers)\b",
            r"\byou'?ve\s+(?:\w+\s+)?brought\b",
            r"\bbrought\s+(?:\w+\s+){0,3}with\s+you\b",
        ),
    ),
    "voice": (
        _rx(r"\byou\s+(?:just\s+)?sighed\b", r"\bthat\s+sigh\b", r"\byour\s+voice\s+(?:went|dropped|shook|got|is)\b"),
        _rx(_YOU + r"(?:voice|tone)\b"),
    ),
}

# name -> (citation in any sentence, citation in an observing sentence, what the expression must mention)
_FACIAL_CUES: dict[str, tuple[re.Pattern[str] | None, re.Pattern[str] | None, re.Pattern[str]]] = {
    "gaze away": (
        _rx(
            r"\byou\s+(?:just\s+)?(?:looked|glanced|turned)\s+(?:away|down|aside|off|to\s+the\s+\w+)",
            r"\byou(?:'re|\s+are|\s+were)\s+(?:looking|glancing)\s+(?:away|down|at\s+the\s+floor|out)",
            r"\byour\s+(?:eyes|gaze)\s+(?:went|dropped|drifted|moved|flicked|darted|were|stayed|keep|kept)",
            r"\b(?:avoid\w*|lost)\s+(?:my\s+eyes|eye\s+contact)",
            r"\byou\s+(?:didn'?t|haven'?t|don'?t)\s+(?:\w+\s+)?look\w*\s+at\s+me",
        ),
        _rx(r"\blook\w*\s+away\b", r"\beye\s+contact\b", r"\bgaze\b"),
        _rx(
            r"avert\w*", r"\baway\b", r"\baside\b", r"\bdown(?:cast|ward)?\b", r"\blower\w*", r"\bfloor\b",
            r"\bwindow\b", r"\bto\s+the\s+side\b", r"\bflick\w*", r"\bdart\w*", r"\bno\s+eye\s+contact\b",
            r"\bavoid\w*",
        ),
    ),
    "smile or laugh": (
        _rx(
            r"\byou\s+(?:just\s+)?(?:smiled|laughed|grinned|smirked)\b",
            r"\byou(?:'re|\s+are|\s+were)\s+(?:\w+\s+)?(?:smiling|laughing|grinning)\b",
            r"\byour\s+(?:\w+\s+)?(?:smile|laugh|grin|smirk)\b",
        ),
        _rx(r"\bsmil\w*", r"\blaugh\w*", r"\bgrin\w*", r"\bsmirk\w*"),
        _rx(r"smil\w*", r"laugh\w*", r"grin\w*", r"smirk\w*"),
    ),
    "tears": (
        _rx(
            r"\byour\s+eyes\s+(?:are\s+|were\s+|got\s+|look\s+)?(?:wet|watery|glisten\w*|fill\w*|welling)",
            r"\byou(?:'re|\s+are|\s+were)\s+(?:\w+\s+)?(?:tearing\s+up|crying|welling\s+up)",
            r"\btears\s+in\s+your\s+eyes\b",
        ),
        _rx(r"\btear\w*", r"\bwell\w*\s+up\b"),
        _rx(r"tear\w*", r"well\w*", r"watery", r"glisten\w*", r"\bwet\b", r"\bcry\w*"),
    ),
    "brows": (
        _rx(
            r"\byou\s+(?:just\s+)?frowned\b",
            r"\byour\s+(?:eye)?brows?\b",
            r"\byour\s+forehead\b",
            r"\byou(?:'re|\s+are|\s+were)\s+frowning\b",
        ),
        _rx(r"\bfrown\w*", r"\bfurrow\w*", r"\b(?:eye)?brows?\b"),
        _rx(r"brow\w*", r"frown\w*", r"furrow\w*", r"forehead"),
    ),
    "eye roll": (
        _rx(r"\broll\w*\s+your\s+eyes\b", r"\beye\s*[- ]?roll\w*"),
        None,
        _rx(r"roll\w*\s+(?:\w+\s+)?eyes", r"eye\s*[- ]?roll\w*", r"eyes\s+roll\w*"),
    ),
    "jaw": (
        _rx(r"\byour\s+jaw\b", r"\bclench\w*\s+your\s+(?:jaw|teeth)\b"),
        _rx(r"\bjaw\b"),
        _rx(r"\bjaw\b", r"teeth"),
    ),
    "lips or mouth": (
        _rx(r"\byour\s+(?:lips?|mouth)\b", r"\bbit(?:e|ing)?\s+your\s+lip\b"),
        _rx(r"\blips?\b", r"\bmouth\b"),
        _rx(r"\blips?\b", r"\bmouth\b"),
    ),
    "head movement": (
        _rx(
            r"\byou\s+(?:just\s+)?(?:nodded|shook\s+your\s+head|tilted\s+your\s+head|lowered\s+your\s+head)",
            r"\byou(?:'re|\s+are|\s+were)\s+(?:nodding|shaking\s+your\s+head)",
            r"\byour\s+head\b",
        ),
        _rx(r"\bnod\w*", r"\bshak\w+\s+(?:your|the)\s+head\b", r"\bhead\b"),
        _rx(r"\bnod\w*", r"\bhead\b", r"\btilt\w*"),
    ),
    "narrowed eyes": (
        _rx(r"\byou\s+(?:just\s+)?narrowed\s+your\s+eyes\b", r"\byour\s+eyes\s+narrow\w*"),
        None,
        _rx(r"narrow\w*", r"squint\w*"),
    ),
    "eyes closed": (
        _rx(r"\b(?:closed|shut)\s+your\s+eyes\b", r"\byour\s+eyes\s+(?:were\s+|are\s+)?(?:closed|shut)\b"),
        None,
        _rx(r"eyes\s+(?:\w+\s+)?(?:closed|shut)", r"(?:clos|shut)\w*\s+(?:\w+\s+)?eyes"),
    ),
}

# "you look tense" / "your face looks sad": the emotion word must fit the expression's category or words.
_LOOK_EMOTION = re.compile(
    r"\b(?:you\s+(?:look|looked|looking|seem\s+to\s+look)|your\s+face\s+(?:looks?|looked|seems?|went|got|is))\s+"
    r"(?:(?:a\s+)?(?:bit|little|quite|rather|really|very|so|more|less|a\s+lot)\s+)*(\w+)"
)
_EMOTION_WORDS = {
    "happy": ("happy", "relieved", "lighter", "brighter", "pleased", "glad", "calmer", "hopeful", "softer", "amused"),
    "sad": ("sad", "low", "upset", "heavy", "tearful", "hurt", "defeated", "sadder"),
    "anxious": ("tense", "worried", "nervous", "uneasy", "anxious", "scared", "frightened", "tenser"),
    "angry": ("angry", "annoyed", "irritated", "frustrated", "cross"),
    "sceptical": ("sceptical", "skeptical", "unconvinced", "doubtful", "dubious"),
    "surprised": ("surprised", "startled", "shocked"),
    "withdrawn": ("distant", "withdrawn", "closed", "flat", "numb"),
}
_WORD_TO_CATEGORY = {word: category for category, words in _EMOTION_WORDS.items() for word in words}
# Words in an expression that show the category even when its leading word is another one ("happy, tense brows").
_CATEGORY_EVIDENCE = {
    "happy": _rx(r"happ\w*", r"smil\w*", r"reliev\w*", r"relax\w*", r"soft\w*", r"warm\w*", r"hopeful", r"bright\w*"),
    "sad": _rx(r"\bsad\w*", r"tear\w*", r"downcast", r"down\w*\s+mouth", r"heavy", r"glisten\w*", r"well\w*"),
    "anxious": _rx(
        r"anxi\w*", r"tens\w*", r"worr\w*", r"nervous", r"bit\w*\s+(?:\w+\s+)?lip", r"uneas\w*", r"fear\w*"
    ),
    "angry": _rx(r"angr\w*", r"irritat\w*", r"annoy\w*", r"frustrat\w*", r"jaw", r"glar\w*", r"narrow\w*"),
    "sceptical": _rx(
        r"scepti\w*", r"skepti\w*", r"doubt\w*", r"raised\s+(?:\w+\s+)?brow", r"smirk\w*", r"unconvinced"
    ),
    "surprised": _rx(r"surpris\w*", r"raised\s+brows", r"wide\w*", r"startl\w*"),
    "withdrawn": _rx(r"withdraw\w*", r"avert\w*", r"away", r"distant", r"flat", r"guarded", r"blank"),
}

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class CueWarning:
    """One therapist line citing a cue the client's face image does not show."""

    turn_index: int
    kind: str  # "body" or "facial"
    cue: str
    sentence: str

    def __str__(self) -> str:
        why = "a face image cannot show it"
        if self.kind != "body":
            why = "the latest client expression does not describe it"
        return f"turns[{self.turn_index}]: therapist cites {self.cue} ({why}): {self.sentence!r}"


def _cited(sentence: str, observed: bool, always: re.Pattern[str] | None, when_observed: re.Pattern[str] | None):
    """Whether `sentence` cites a cue: by an always-citing phrase, or a cue word in an observing sentence."""
    if always and always.search(sentence):
        return True
    return bool(observed and when_observed and when_observed.search(sentence))


def _facial_warnings(sentence: str, observed: bool, expression: str) -> Iterable[str]:
    for cue, (always, when_observed, evidence) in _FACIAL_CUES.items():
        if _cited(sentence, observed, always, when_observed) and not evidence.search(expression):
            yield cue
    leading = re.match(r"\s*([a-z]+)", expression)  # the expression's category word
    for match in _LOOK_EMOTION.finditer(sentence):
        category = _WORD_TO_CATEGORY.get(match.group(1))
        if category is None:
            continue
        if (leading and leading.group(1)) != category and not _CATEGORY_EVIDENCE[category].search(expression):
            yield f"looking {match.group(1)}"


def check_cues(record: Mapping[str, Any]) -> list[CueWarning]:
    """Warnings for every therapist line of `record` (a raw or validated session) that cites an unseen cue."""
    warnings: list[CueWarning] = []
    expression = ""  # before the first client turn there is no face to cite
    for index, turn in enumerate(record.get("turns") or []):
        if turn.get("speaker") == "client":
            expression = (turn.get("expression") or "").lower()
            continue
        for sentence in _SENTENCE.split((turn.get("statement") or "").lower().replace("\u2019", "'")):
            observed = bool(_OBSERVED.search(sentence))
            body = [cue for cue, patterns in _BODY_CUES.items() if _cited(sentence, observed, *patterns)]
            warnings += [CueWarning(index, "body", cue, sentence) for cue in body]
            facial = _facial_warnings(sentence, observed, expression)
            warnings += [CueWarning(index, "facial", cue, sentence) for cue in facial]
    return warnings


def cue_warning_flags(record: Mapping[str, Any]) -> list[str]:
    """The warnings of `check_cues` as `quality.flags` strings (`cue_warning: turns[5]: ...`)."""
    return [f"cue_warning: {warning}" for warning in check_cues(record)]


def cue_warnings(record: Mapping[str, Any], config: Any = None):
    """Warning-level text filter (`filters.TEXT_FILTERS`): it always passes, and its score is the number of
    therapist lines citing unseen cues, so the count shows in `quality.scores` and in the `filtered` config."""
    from .filters import FilterResult  # imported here: filters imports this module

    warnings = check_cues(record)
    return FilterResult("cue_warnings", float(len(warnings)), True, "; ".join(str(w) for w in warnings))
