"""`MirrorTherapist`: a MIRROR therapist model (or a text-only baseline) behind a session API with safety on.

The strategies are described in inference/README.md. Every prompt comes from `inference.prompts`, the module that
also renders the SFT dataset, so a model is asked at inference exactly what it was trained on, and bracketed stage
directions never reach it. Safety (`inference.safety`) is on by default: the disclosure opens each session, each
client turn is screened before a reply is generated, and the referral replaces the reply once in crisis.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .backends import load_backend
from .backends.base import ChatBackend, GenerationConfig, Messages
from .prompts import (
    CBT_TECHNIQUES,
    DEFAULT_PROMPT_VERSION,
    TRAINING_RECORD_NAME,
    emotion_caption_messages,
    load_prompt,
    plan_messages,
    strip_stage_directions,
    therapist_messages,
)
from .safety import CrisisDetector, SafetyConfig, SafetyDecision, SafetySession

logger = logging.getLogger(__name__)

# Each strategy renders the prompt variant (inference.prompts.VARIANTS) of the same name.
STRATEGIES = ("base", "planning", "ec_planning", "text", "cactus_plan")
VISION_STRATEGIES = ("base", "planning", "ec_planning")
PLANNING_STRATEGIES = ("planning", "ec_planning", "cactus_plan")
MIRROR_CONFIG_NAME = "mirror_config.json"
UNCLEAR_EMOTION = "unclear"


@dataclass
class TherapistConfig:
    """Therapist settings other than the strategy, sampling and safety (which have their own arguments)."""

    prompt_version: str = field(
        default=DEFAULT_PROMPT_VERSION, metadata={"help": "Prompt file version (inference/prompts/therapist_*.yaml)."}
    )
    default_technique: str = field(
        default="Alternative Perspective",
        metadata={"help": "CBT technique used when the generated plan names none of the 12 (recorded as a failure)."},
    )
    plan_max_new_tokens: int = field(
        default=256, metadata={"help": "Token budget of the once-per-session plan (a technique line and a plan)."}
    )
    caption_max_new_tokens: int = field(
        default=32, metadata={"help": "Token budget of the per-turn emotion caption (one short phrase)."}
    )

    def __post_init__(self) -> None:
        if self.default_technique not in CBT_TECHNIQUES:
            raise ValueError(f"default_technique must be one of {list(CBT_TECHNIQUES)}")


@dataclass
class SessionPlan:
    """The session's CBT technique and plan, with what the model actually said, for auditing."""

    technique: str
    plan: str
    raw: str | None = None  # the model's answer; None when the plan was given, not generated
    source: str = "generated"  # "profile" (the client profile's plan), "given" (by the caller) or "generated"
    technique_parsed: bool = True  # False: no known technique found, `technique` is the default
    plan_parsed: bool = True  # False: no plan text found, `plan` is the technique name
    messages: Messages | None = None  # the plan request sent to the model

    @property
    def parse_failed(self) -> bool:
        return not (self.technique_parsed and self.plan_parsed)


@dataclass
class Reply:
    """One therapist turn as shown to the client, with everything needed to audit it."""

    text: str  # what the client is shown (after the safety layer)
    safety_triggered: bool  # the safety layer changed or replaced the model's reply (referral, disclosure)
    messages: Messages  # the therapist prompt sent to the model; [] when safety pre-empted generation
    plan: SessionPlan | None  # the session plan used (planning strategies)
    emotion: str | None = None  # the emotion caption used (ec_planning)
    caption_failed: bool = False  # the caption was empty, so UNCLEAR_EMOTION was used
    model_reply: str | None = None  # the model's raw output; None when it was not called
    safety: SafetyDecision | None = None  # the safety layer's decision for the client turn
    strategy: str = "base"


_TECHNIQUE_LINE = re.compile(r"^[\s*#>_-]*(?:cbt\s+)?technique[\s*_]*[:\-–]\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_PLAN_START = re.compile(
    r"^[\s*#>_-]*(?:cbt\s+)?(?:session\s+)?plan[\s*_]*[:\-–]\s*|\bplan[\s*_]*:\s*", re.IGNORECASE | re.MULTILINE
)
_NON_WORD = re.compile(r"[^a-z0-9]+")


def _normalise(text: str) -> str:
    # British spellings and "behavioural" variants map onto the CACTUS names.
    text = text.lower().replace("behaviour", "behavior").replace("catastrophis", "catastrophiz")
    return " " + _NON_WORD.sub(" ", text).strip() + " "


_NORMALISED_TECHNIQUES = {_normalise(name): name for name in CBT_TECHNIQUES}


def match_technique(text: str | None) -> str | None:
    """The CBT technique `text` names, or None.

    Exact or contained names first (case, punctuation, British spelling ignored; the earliest mention wins), then
    the closest fuzzy match of any run of words about as long as a name, for misspelt or shortened names
    ("Decatastrophication", "problem solving skills"); a match needs a similarity ratio of at least 0.8.
    """
    if not text:
        return None
    normalised = _normalise(text)
    found = [(normalised.find(key), name) for key, name in _NORMALISED_TECHNIQUES.items() if key in normalised]
    if found:
        return min(found)[1]
    words = normalised.split()
    best_ratio, best_name = 0.0, None
    for key, name in _NORMALISED_TECHNIQUES.items():
        key = key.strip()
        length = len(key.split())
        for size in sorted({max(1, length - 1), length, length + 1}):
            for start in range(max(1, len(words) - size + 1)):
                ratio = difflib.SequenceMatcher(None, " ".join(words[start : start + size]), key).ratio()
                if ratio > best_ratio:
                    best_ratio, best_name = ratio, name
    return best_name if best_ratio >= 0.8 else None


def parse_plan(text: str | None, default_technique: str = "Alternative Perspective") -> SessionPlan:
    """Parse a `Technique: ... / Plan: ...` answer robustly; never raises.

    The technique comes from the `Technique:` line when there is one, else from anywhere in the answer; if none
    of the 12 can be found the default is used and `technique_parsed` is False. The plan is the text after
    `Plan:`, else whatever the answer says besides the technique line; if nothing is left, the technique name
    stands in and `plan_parsed` is False.
    """
    raw = text or ""
    line = _TECHNIQUE_LINE.search(raw)
    technique = match_technique(line.group(1)) if line else None
    if technique is None:
        technique = match_technique(raw)
    technique_parsed = technique is not None
    plan_match = _PLAN_START.search(raw)
    plan = _TECHNIQUE_LINE.sub("", raw[plan_match.end() :] if plan_match else raw).strip().strip("*").strip()
    if technique_parsed and _normalise(plan) == _normalise(technique):
        plan = ""  # the answer was only the technique's name
    plan_parsed = bool(plan)
    technique = technique or default_technique
    return SessionPlan(technique, plan or technique, text, technique_parsed=technique_parsed, plan_parsed=plan_parsed)


def load_image(image: Image.Image | str | os.PathLike | None) -> Image.Image | None:
    """Accept a PIL image or a path; always RGB (what the processors and the dataset use)."""
    if image is None:
        return None
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.copy()
    return image if image.mode == "RGB" else image.convert("RGB")


def read_default_strategy(path_or_id: str, revision: str | None = None) -> str | None:
    """The strategy a model folder declares: `mirror_config.json` {"variant"|"strategy": ...}, else the training
    record `mirror train` writes, else the model card's front matter (`variant`, `strategy` or
    `mirror: {variant: ...}`); None when none of these files exists.

    Never a silent guess (a `planning` model would quietly run with the `base` prompt): Hub files that cannot be
    read raise `OSError` naming the model, an unknown declared strategy raises `ValueError`.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    local = Path(path_or_id).expanduser()
    where = f"{path_or_id!r}" + (f" (revision {revision!r})" if revision else "")

    def find(filename: str) -> Path | None:
        if local.is_dir():
            return local / filename if (local / filename).is_file() else None
        try:
            return Path(hf_hub_download(path_or_id, filename, revision=revision))
        except RemoteEntryNotFoundError:  # the repository is readable and has no such file: it declares nothing
            return None
        except Exception as error:
            raise OSError(
                f"Cannot detect the therapist strategy of model {where}: reading {filename} failed "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no message'}). Check the "
                "model id, your access (HF_TOKEN) and the network, or pass the strategy explicitly (--strategy)."
            ) from error

    values: dict[str, Any] = {}
    # `mirror train` records the variant in mirror_training.json; mirror_config.json is for hand-made folders.
    config_path = find(MIRROR_CONFIG_NAME) or find(TRAINING_RECORD_NAME)
    if config_path:
        try:
            values = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path.name} of model {where} is not valid JSON: {error}") from error
        # The training record nests the run's arguments (`mirror_args`) and the card data (`card`) with the variant.
        for section in ("card", "mirror_args"):
            if isinstance(values.get(section), dict):
                values = {**values, **values[section]}
    elif card_path := find("README.md"):
        from huggingface_hub import metadata_load

        values = metadata_load(card_path) or {}
        values = {**values, **(values.get("mirror") or {})} if isinstance(values.get("mirror"), dict) else values
    strategy = values.get("strategy") or values.get("variant")
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(
            f"Model {where} declares strategy {strategy!r}, which is not one of {list(STRATEGIES)}; pass the "
            "strategy explicitly"
        )
    return strategy


class MirrorTherapist:
    """A therapist model (any ChatBackend) with a strategy (default `base` for backends that see images, else
    `text`), sampling settings (paper defaults), prompt settings and the safety layer: on by default,
    `SafetyConfig(enabled=False)` only for simulated clients. `detector` is a CrisisDetector to share (loading one
    takes seconds); built from `safety` when None.
    """

    def __init__(
        self,
        backend: ChatBackend,
        strategy: str | None = None,
        generation: GenerationConfig | None = None,
        safety: SafetyConfig | None = None,
        config: TherapistConfig | None = None,
        *,
        detector: CrisisDetector | None = None,
    ) -> None:
        strategy = strategy or ("base" if backend.supports_images else "text")
        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {strategy!r}; expected one of {list(STRATEGIES)}")
        if strategy in VISION_STRATEGIES and not backend.supports_images:
            raise ValueError(
                f"Strategy {strategy!r} shows the model the client's face, but {backend.name!r} is text-only; "
                "use 'text' or 'cactus_plan'"
            )
        self.backend = backend
        self.strategy = strategy
        self.generation = generation or GenerationConfig()
        self.safety = safety or SafetyConfig()
        self.config = config or TherapistConfig()
        self.detector = detector
        if self.detector is None and self.safety.enabled:
            self.detector = CrisisDetector(self.safety)
        # Plans this therapist generated and how many of them failed to parse (the rate is reported in logs and
        # by the evaluation; a fine-tuned model without `plan` rows fails almost always).
        self.plans_generated = 0
        self.plan_parse_failures = 0

    @property
    def plan_parse_failure_rate(self) -> float | None:
        """Share of the plans generated so far that named no known technique or no plan; None before any."""
        return self.plan_parse_failures / self.plans_generated if self.plans_generated else None

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        strategy: str | None = None,
        generation: GenerationConfig | None = None,
        safety: SafetyConfig | None = None,
        config: TherapistConfig | None = None,
        *,
        backend: str = "transformers",
        revision: str | None = None,
        device: str | None = None,
        dtype: Any = None,
        trust_remote_code: bool = False,
        detector: CrisisDetector | None = None,
        **backend_kwargs: Any,
    ) -> MirrorTherapist:
        """Load a therapist from a model folder or Hub id (merged model or LoRA adapter).

        The strategy defaults to the one the folder declares (`read_default_strategy`), else `base` for VLMs and
        `text` for causal LMs. `backend_kwargs` go to the backend, e.g. `processor_source=` (transformers backend).
        """
        path_or_hub_id = str(path_or_hub_id)
        options = {"revision": revision, "device": device, "dtype": dtype, "trust_remote_code": trust_remote_code}
        model = load_backend(path_or_hub_id, backend=backend, **options, **backend_kwargs)
        strategy = strategy or read_default_strategy(path_or_hub_id, revision)
        return cls(model, strategy, generation, safety, config, detector=detector)

    def start_session(
        self, client: dict[str, Any], *, cbt_technique: str | None = None, cbt_plan: str | None = None
    ) -> TherapistSession:
        """Open a session for a client profile (as in the `profiles` config) or its `client` mapping; show
        `session.disclosure` first. Planning strategies take the plan from `cbt_technique` + `cbt_plan`, else from
        the profile when it carries both (the paper's protocol), else generate it now, once."""
        return self.start_sessions([client], cbt_technique=cbt_technique, cbt_plan=cbt_plan)[0]

    def start_sessions(
        self, clients: list[dict[str, Any]], *, cbt_technique: str | None = None, cbt_plan: str | None = None
    ) -> list[TherapistSession]:
        """Open several sessions (profiles or client mappings, see `start_session`), generating the plans that are
        needed in one batch (evaluation over many profiles)."""
        if (cbt_technique is None) != (cbt_plan is None):
            raise ValueError("Pass both cbt_technique and cbt_plan, or neither")
        profiles = [_split_profile(item) for item in clients]
        plans: list[SessionPlan | None] = [None] * len(clients)
        if self.strategy in PLANNING_STRATEGIES:
            to_generate = []
            for index, (_, technique, plan_text) in enumerate(profiles):
                if cbt_technique and cbt_plan:
                    plans[index] = _given_plan(cbt_technique, cbt_plan, "given")
                elif technique and plan_text:
                    plans[index] = _given_plan(technique, plan_text, "profile")
                else:
                    to_generate.append(index)
            if to_generate:
                generated = self.generate_plans([profiles[index][0] for index in to_generate])
                for index, plan in zip(to_generate, generated, strict=True):
                    plans[index] = plan
        return [
            TherapistSession(self, dict(client), plan, SafetySession(self.safety, detector=self.detector))
            for (client, _, _), plan in zip(profiles, plans, strict=True)
        ]

    def generate_plans(self, clients: list[dict[str, Any]]) -> list[SessionPlan]:
        """Ask the model for each client's technique and plan (the `plan` task's request); parse failures fall back
        to `config.default_technique`, are counted and logged with the running failure rate."""
        version = self.config.prompt_version
        requests = [plan_messages(client, version=version) for client in clients]
        plan_config = dataclasses.replace(self.generation, max_new_tokens=self.config.plan_max_new_tokens)
        answers = self.backend.chat_batch(requests, [[] for _ in requests], plan_config)
        plans = []
        for request, answer in zip(requests, answers, strict=True):
            plan = parse_plan(answer, self.config.default_technique)
            plan.messages = request
            self.plans_generated += 1
            if plan.parse_failed:
                self.plan_parse_failures += 1
                message = "plan parse failure (technique_parsed=%s plan_parsed=%s); using technique %r"
                logger.warning(message, plan.technique_parsed, plan.plan_parsed, plan.technique)
            plans.append(plan)
        if plans:
            failures, generated = self.plan_parse_failures, self.plans_generated
            rate = 100 * self.plan_parse_failure_rate
            logger.info("plan parse failures so far: %d of %d generated plans (%.1f %%)", failures, generated, rate)
        return plans

    def prompt_messages(
        self,
        client: dict[str, Any],
        history: list[dict[str, Any]],
        plan: SessionPlan | None = None,
        emotion: str | None = None,
    ) -> Messages:
        """The therapist prompt for the next reply under this strategy (what the model is sent)."""
        plan_fields = {"cbt_technique": plan.technique, "cbt_plan": plan.plan} if plan else {}
        version = self.config.prompt_version
        return therapist_messages(client, history, self.strategy, emotion=emotion, version=version, **plan_fields)

    def caption_emotions(self, images: list[Image.Image]) -> list[tuple[str, bool]]:
        """(caption, failed) per image: the model's own reading of the client's face (ec_planning)."""
        if not images:
            return []
        messages = emotion_caption_messages(version=self.config.prompt_version)
        caption_config = dataclasses.replace(self.generation, max_new_tokens=self.config.caption_max_new_tokens)
        captions = self.backend.chat_batch([messages] * len(images), [[image] for image in images], caption_config)
        results = []
        for caption in captions:
            # The same cleaning the prompt applies, so an all-bracket caption counts as empty.
            cleaned = strip_stage_directions(caption.strip().strip("[] "))
            results.append((caption.strip(), False) if cleaned else (UNCLEAR_EMOTION, True))
        return results

    def respond_batch(
        self,
        sessions: list[TherapistSession],
        client_statements: list[str],
        images: list[Image.Image | str | os.PathLike | None] | None = None,
        stage_directions: list[str | None] | None = None,
    ) -> list[Reply]:
        """One reply per session, generated in one batch (captions in another); same result as
        `session.respond` per session under greedy decoding."""
        count = len(sessions)
        images = [None] * count if images is None else images
        stage_directions = [None] * count if stage_directions is None else stage_directions
        if not (len(client_statements) == len(images) == len(stage_directions) == count):
            raise ValueError("sessions, client_statements, images and stage_directions must have the same length")
        if any(session.therapist is not self for session in sessions):
            raise ValueError("every session must belong to this therapist")

        loaded = [load_image(image) for image in images]
        faceless = any(image is None and s.image is None for s, image in zip(sessions, loaded, strict=True))
        if self.strategy in VISION_STRATEGIES and faceless:  # checked for every session before changing any
            raise ValueError(f"Strategy {self.strategy!r} needs the client's face: pass image= on the first turn")

        pending = []  # (index, session, turn image, decision)
        replies: list[Reply | None] = [None] * count
        for index, (session, statement, image, direction) in enumerate(
            zip(sessions, client_statements, loaded, stage_directions, strict=True)
        ):
            turn_image = session._add_client_turn(statement or "", image, direction)
            decision = session.safety.check_client_turn(statement)
            if not decision.allow_model_reply:
                text = decision.message or ""
                replies[index] = Reply(text, True, [], session.plan, safety=decision, strategy=self.strategy)
                session._add_therapist_turn(text, replies[index])
            else:
                pending.append((index, session, turn_image, decision))
        if not pending:
            return replies

        try:
            emotions: list[tuple[str | None, bool]] = [(None, False)] * len(pending)
            if self.strategy == "ec_planning":
                emotions = self.caption_emotions([turn_image for _, _, turn_image, _ in pending])
            conversations, conversation_images = [], []
            for (_, session, turn_image, _), (emotion, _) in zip(pending, emotions, strict=True):
                conversations.append(self.prompt_messages(session.client, session.history, session.plan, emotion))
                conversation_images.append([turn_image] if self.strategy in VISION_STRATEGIES else [])
            model_replies = self.backend.chat_batch(conversations, conversation_images, self.generation)
        except Exception:
            # Leave the sessions as they were, so the caller can retry the same turn (e.g. after an endpoint error).
            for _, session, _, _ in pending:
                session.history.pop()
            raise

        for (index, session, _, decision), (emotion, failed), messages, raw in zip(
            pending, emotions, conversations, model_replies, strict=True
        ):
            cleaned = self.clean_reply(raw)
            shown = session.safety.filter_reply(client_statements[index], cleaned)
            reply = Reply(
                text=shown,
                safety_triggered=decision.action != "allow" or shown != cleaned,
                messages=messages,
                plan=session.plan,
                emotion=emotion,
                caption_failed=failed,
                model_reply=raw,
                safety=decision,
                strategy=self.strategy,
            )
            session._add_therapist_turn(shown, reply)
            replies[index] = reply
        return replies

    def clean_reply(self, text: str) -> str:
        """Remove stage directions and a leading speaker label: the training targets have neither."""
        label = load_prompt(self.config.prompt_version)["speaker_names"]["therapist"]
        text = strip_stage_directions(text)
        if text.lower().startswith(label.lower() + ":"):
            text = text[len(label) + 1 :].strip()
        return text

    def __repr__(self) -> str:
        return f"MirrorTherapist(backend={self.backend!r}, strategy={self.strategy!r})"


def _split_profile(item: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """(client mapping, cbt_technique, cbt_plan) of a client profile or of a bare client mapping."""
    if not isinstance(item, dict):
        raise ValueError(f"A client must be a mapping (a profile or its `client` field), got {type(item).__name__}")
    client = item["client"] if isinstance(item.get("client"), dict) else item
    return client, item.get("cbt_technique") or None, item.get("cbt_plan") or None


def _given_plan(technique: str, plan: str, source: str) -> SessionPlan:
    matched = match_technique(technique)
    if matched is None:
        raise ValueError(f"cbt_technique must be one of {list(CBT_TECHNIQUES)}, got {technique!r}")
    return SessionPlan(matched, plan, source=source)


class TherapistSession:
    """One conversation: the client's profile, the verbal history (the dataset's turn format; statements kept as
    given, stage directions included, which are removed only when a prompt is rendered), the plan and safety state."""

    def __init__(
        self, therapist: MirrorTherapist, client: dict[str, Any], plan: SessionPlan | None, safety: SafetySession
    ) -> None:
        self.therapist = therapist
        self.client = client
        self.plan = plan
        self.safety = safety
        self.history: list[dict[str, Any]] = []
        self.replies: list[Reply] = []
        self.image: Image.Image | None = None  # the client's latest face
        self.disclosure = safety.start()

    def respond(
        self,
        client_statement: str,
        image: Image.Image | str | os.PathLike | None = None,
        stage_direction: str | None = None,
    ) -> Reply:
        """The therapist's reply to the client's turn; `client_statement` may be "" (a non-verbal turn). `image` is
        the client's face now (PIL image or path; None: the previous one). `stage_direction` is recorded for
        transcripts; the model never sees it, nor bracketed text in the statement."""
        return self.therapist.respond_batch([self], [client_statement], [image], [stage_direction])[0]

    def _add_client_turn(self, statement: str, image: Image.Image | None, stage_direction: str | None):
        if image is not None:
            self.image = image
        self.history.append({"speaker": "client", "statement": statement, "stage_direction": stage_direction})
        return self.image

    def _add_therapist_turn(self, text: str, reply: Reply) -> None:
        self.history.append({"speaker": "therapist", "statement": text, "stage_direction": None})
        self.replies.append(reply)

    @property
    def in_crisis(self) -> bool:
        return self.safety.in_crisis

    def transcript(self) -> list[dict[str, Any]]:
        """A copy of the history in the dataset's turn format."""
        return [dict(turn) for turn in self.history]
