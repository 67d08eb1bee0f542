"""The session runner: profiles x therapists, bounded concurrency, each finished session written atomically at once.

A record's presence means its session is finished (face images are rendered into a `.partial` folder, renamed just
before the record is written), so a killed run resumes by starting unfinished sessions from scratch. Client or face
failures are results and are kept; unexpected errors are recorded with status `error` and run again on resume. The
safety layer is off for simulated clients (replies must reach them unchanged), but the crisis detector's verdict on
every client turn is recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from dataset_builder.files import atomic_write

from .client import ClientConfig, ClientFailure, VirtualClient, load_client_prompt
from .config import EvalConfig, TherapistSpec
from .faces import FaceLoop, FaceLoopFailure, image_sha256

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "_"


def stable_seed(*parts: Any) -> int:
    """A seed from names, stable across runs and processes (Python's hash() is salted)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode("utf-8")).hexdigest()
    return int(digest[:8], 16)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, ensure_ascii=False, indent=1))


def session_path(run_dir: Path, therapist: str, profile_id: str) -> Path:
    return Path(run_dir) / "sessions" / safe_name(therapist) / f"{safe_name(profile_id)}.json"


def read_session(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def plain_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile without its image (records stay JSON)."""
    identity = dict(profile.get("identity") or {})
    identity.pop("image", None)
    return {**{k: v for k, v in profile.items() if k != "identity"}, "identity": identity}


def build_therapists(config: EvalConfig, pool) -> dict[str, Any]:
    """One MirrorTherapist per therapist spec, safety layer off (simulated clients only)."""
    from inference.backends.base import GenerationConfig
    from inference.safety import SafetyConfig
    from inference.therapist import MirrorTherapist, TherapistConfig, read_default_strategy

    therapists = {}
    for spec in config.therapists:
        backend = pool.get(spec.model)
        strategy = spec.strategy
        if strategy is None and spec.model.backend in ("transformers", "vllm"):
            strategy = read_default_strategy(spec.model.model, spec.model.revision)
        generation = GenerationConfig(
            temperature=spec.temperature, top_p=spec.top_p, max_new_tokens=spec.max_new_tokens
        )
        settings = TherapistConfig(prompt_version=spec.prompt_version)
        therapists[spec.name] = MirrorTherapist(backend, strategy, generation, SafetyConfig(enabled=False), settings)
    return therapists


class SessionRunner:
    """Runs simulated sessions for `config` into `run_dir`, with models from a `BackendPool`. `face_loop` and
    `detector` override the ones built from the config (tests pass stand-ins)."""

    def __init__(self, config: EvalConfig, run_dir: str | os.PathLike, pool, *, face_loop=None, detector=None):
        self.config, self.run_dir, self.pool = config, Path(run_dir), pool
        self.client = VirtualClient(pool.get(config.client_model), config.client)
        self.therapists = build_therapists(config, pool)
        self.face_loop = face_loop
        self.detector = detector
        self._setup_lock = threading.Lock()
        self._detect_lock = threading.Lock()  # one crisis detector shared by the worker threads

    def _faces(self) -> FaceLoop:
        with self._setup_lock:
            if self.face_loop is None:
                from dataset_builder.images import get_image_backend

                faces = self.config.faces
                expression = self.pool.get(self.config.expression_model) if self.config.expression_model else None
                image_backend = get_image_backend(faces.image_backend, **faces.image_backend_kwargs)
                self.face_loop = FaceLoop(image_backend, faces.build_verifiers(), faces, expression)
            return self.face_loop

    def _detector(self):
        with self._setup_lock:
            if self.detector is None and self.config.safety_screening:
                from inference.safety import CrisisDetector, SafetyConfig

                self.detector = CrisisDetector(SafetyConfig(use_embeddings=self.config.safety_use_embeddings))
            return self.detector

    def is_done(self, spec: TherapistSpec, profile: dict[str, Any]) -> bool:
        record = read_session(session_path(self.run_dir, spec.name, profile["id"]))
        if record is None or record.get("status") == "error":
            return False
        return not (self.config.retry_failed and record.get("status") == "failed")

    def run(self, profiles: list[dict[str, Any]], progress: bool = True) -> list[Path]:
        """Run every unfinished (therapist, profile) session; returns the record paths of all units."""
        from tqdm.auto import tqdm

        units = [(spec, profile) for spec in self.config.therapists for profile in profiles]
        todo = [(spec, profile) for spec, profile in units if not self.is_done(spec, profile)]
        done = len(units) - len(todo)
        bar = tqdm(total=len(units), initial=done, desc="Simulated sessions", unit="session", disable=not progress)
        if todo and self.config.safety_screening:
            self._detector()  # load once before the threads start
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool, bar:
            futures = [pool.submit(self.run_one, spec, profile) for spec, profile in todo]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return [session_path(self.run_dir, spec.name, profile["id"]) for spec, profile in units]

    def run_one(self, spec: TherapistSpec, profile: dict[str, Any]) -> Path:
        """Simulate one session and write its record; returns the record path."""
        from inference.therapist import VISION_STRATEGIES, MirrorTherapist

        path = session_path(self.run_dir, spec.name, profile["id"])
        image_dir = path.with_suffix("")
        partial = path.with_name(f".{path.stem}.partial")
        for stale in (partial, image_dir):  # leftovers of an unfinished attempt of this same session
            if stale.exists():
                shutil.rmtree(stale)
        template = self.therapists[spec.name]
        seed = stable_seed(self.config.seed, spec.name, profile["id"])
        generation = dataclasses.replace(template.generation, seed=seed)
        therapist = MirrorTherapist(template.backend, template.strategy, generation, template.safety, template.config)
        vision = therapist.strategy in VISION_STRATEGIES
        client_config: ClientConfig = self.config.client
        started = time.time()
        turns: list[dict[str, Any]] = []  # also the history the client model sees
        record: dict[str, Any] = {
            "record_version": RECORD_VERSION,
            "id": f"{spec.name}/{profile['id']}",
            "profile_id": profile["id"],
            "therapist": spec.name,
            "strategy": therapist.strategy,
            "resistance": profile.get("resistance"),
            "profile": plain_profile(profile),
            "models": {
                "therapist": therapist.backend.name,
                "therapist_revision": spec.model.revision,
                "client": self.client.backend.name,
                "client_revision": self.config.client_model.revision,
            },
            "prompt_versions": {
                "therapist": spec.prompt_version,
                "client": load_client_prompt(client_config.prompt_version)["version"],
            },
            "seeds": {"session": seed},
            "status": "complete",
            "end_reason": None,
            "failure": None,
            "plan": None,
            "turns": turns,
        }
        try:
            session = therapist.start_sessions([profile])[0]  # the profile's cbt_technique + cbt_plan, if any
            if session.plan is not None:
                record["plan"] = {k: v for k, v in dataclasses.asdict(session.plan).items() if k != "messages"}
            reference = None
            if vision:
                faces = self._faces()
                record["models"]["image_backend"] = faces.image_backend.name
                record["models"]["face_verifiers"] = [v.name for v in faces.verifiers]
                record["prompt_versions"]["expression"] = self.config.faces.expression_prompt_version
                reference = self._reference_face(profile, faces)
            while True:
                client_turn = self.client.reply(profile, turns, seed=seed + 7919 * (len(turns) + 1))
                turn: dict[str, Any] = {
                    "speaker": "client",
                    "statement": client_turn.statement,
                    "stage_direction": client_turn.stage_direction,
                    "raw": client_turn.raw,
                    "client_attempts": client_turn.attempts,
                    "end": client_turn.end,
                }
                detector = self._detector()
                if detector is not None:
                    with self._detect_lock:
                        verdict = detector.detect(client_turn.statement)
                    turn["safety"] = {k: getattr(verdict, k) for k in ("is_risk", "category", "score", "reason")}
                turns.append(turn)
                if client_turn.end or len(turns) >= client_config.max_turns:
                    record["end_reason"] = "client_end" if client_turn.end else "max_turns"
                    break
                image = None
                if vision:
                    face = faces.render(
                        identity_key=(profile.get("identity") or {}).get("key") or profile["id"],
                        gender=profile["client"].get("gender"),
                        age=profile["client"].get("age"),
                        stage_direction=client_turn.stage_direction,
                        statement=client_turn.statement,
                        reference=reference,
                        seed=seed + 104729 * len(turns),
                    )
                    partial.mkdir(parents=True, exist_ok=True)
                    name = f"turn-{len(turns) - 1:02d}.png"
                    face.image.save(partial / name)
                    image = face.image
                    turn["image"] = f"{image_dir.name}/{name}"
                    turn["image_sha256"] = image_sha256(face.image)
                    fields = ("verified", "expression", "contrast_expression", "expression_raw", "attempts")
                    turn["face"] = {k: getattr(face, k) for k in fields}
                # Only the verbal statement reaches the therapist; the stage direction is never passed.
                reply = session.respond(client_turn.statement, image=image, stage_direction=None)
                audit = {key: getattr(reply, key) for key in ("model_reply", "emotion", "caption_failed")}
                turns.append({"speaker": "therapist", "statement": reply.text, "stage_direction": None, **audit})
                if len(turns) >= client_config.max_turns:
                    record["end_reason"] = "max_turns"
                    break
        except (ClientFailure, FaceLoopFailure) as failure:
            record["status"] = "failed"
            stage = "client" if isinstance(failure, ClientFailure) else "faces"
            record["failure"] = {"stage": stage, "reason": failure.reason, "attempts": failure.attempts}
        except Exception as error:  # recorded; the session runs again on resume
            logger.error("session %s/%s: %s: %s", spec.name, profile["id"], type(error).__name__, error)
            record["status"] = "error"
            record["failure"] = {
                "stage": "error",
                "reason": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=5),
            }
        record["num_turns"] = len(turns)
        record["duration_s"] = round(time.time() - started, 3)
        if partial.exists():
            os.replace(partial, image_dir)
        atomic_write_json(path, record)
        return path

    def _reference_face(self, profile: dict[str, Any], faces: FaceLoop):
        """The client's reference face: the profile's identity image, else a neutral render of the identity."""
        from dataset_builder.images import FaceRequest
        from inference.therapist import load_image

        identity, client = profile.get("identity") or {}, profile["client"]
        if identity.get("image") is not None:
            return load_image(identity["image"])
        key = identity.get("key") or profile["id"]
        request = FaceRequest(key, "neutral expression", gender=client.get("gender"), age=client.get("age"), seed=0)
        return faces.image_backend.render(request)
