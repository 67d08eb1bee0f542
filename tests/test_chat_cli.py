"""`mirror chat`: a subprocess driven through stdin (disclosure first, then a reply), and the loop's commands."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_backends import DEVICE

from inference.backends.base import GenerationConfig
from inference.chat import DEFAULT_CLIENT, load_client_profile, printable, run_session
from inference.safety import AI_DISCLOSURE, CrisisDetector, SafetyConfig
from inference.therapist import MirrorTherapist, TherapistConfig

REPO = Path(__file__).resolve().parent.parent


def test_mirror_chat_subprocess_shows_disclosure_then_a_reply(tiny_llava_dir, tmp_path):
    """Piped: the client's lines are echoed, log lines (the safety layer's warning) never reach stdout or stderr
    without --verbose, and --log_file collects them."""
    face = tmp_path / "face.png"
    Image.new("RGB", (48, 48), (140, 70, 60)).save(face)
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"client": {"name": "Dana", "age": 34, "reason_for_counseling": "Stress."}}))
    log_file = tmp_path / "chat.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}  # HF_HOME: conftest's temporary folder
    command = [sys.executable, "-m", "inference.chat", "--model", str(tiny_llava_dir), "--image", str(face),
               "--client-profile", str(profile), "--temperature", "0", "--max-new-tokens", "8", "--device", "cpu",
               "--log_file", str(log_file)]  # fmt: skip
    result = subprocess.run(
        command, input="[looks away] I guess I'm fine.\nI want to kill myself\n/quit\n", capture_output=True,
        text=True, env=env, cwd=REPO, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith(AI_DISCLOSURE), out[:500]
    assert out.count("Therapist: ") == 2 and out.index(AI_DISCLOSURE) < out.index("Therapist: ")
    assert out.index("You: [looks away] I guess I'm fine.") < out.index("Therapist: ")
    assert out.index("You: I want to kill myself") < out.rindex("Therapist: ")
    assert "988" in out.rsplit("Therapist: ", 1)[1]  # the referral
    assert "WARNING" not in out and "inference.safety" not in out
    assert result.stderr == "", result.stderr[-2000:]
    assert "inference.safety" in log_file.read_text()


def test_model_output_is_shown_without_control_characters():
    assert printable("a\x03b\x1ac\x7fd\x9b[31me\x1b[0m\nline two\tend") == "ab" + "cd[31me[0m\nline two\tend"

    class Backend:
        name, supports_images = "scripted", False

        def chat(self, messages, images=None, config=None):
            return "Hello\x03 there\x1a\x7f, how\x00 are you?\x1b[2J"

        def chat_batch(self, conversations, images=None, config=None):
            return [self.chat(m) for m in conversations]

    therapist = MirrorTherapist(Backend(), "text", detector=CrisisDetector(SafetyConfig(use_embeddings=False)))
    out = io.StringIO()
    run_session(therapist, dict(DEFAULT_CLIENT), None, io.StringIO("hi\n/quit\n"), out)
    reply = out.getvalue().split("Therapist: ", 1)[1]
    assert reply.startswith("Hello there, how are you?[2J")
    assert not any(c in out.getvalue() for c in "\x00\x03\x1a\x1b\x7f")


def test_chat_options_come_from_the_dataclasses():
    from mirror_cli import parse_command

    model, therapist, generation = parse_command(
        "chat", ["--model", "m", "--strategy", "cactus_plan", "--temperature", "0", "--image", "f.png"]
    )
    assert (model.model, therapist.strategy, generation.temperature, therapist.image) == (
        "m",
        "cactus_plan",
        0,
        "f.png",
    )
    assert (generation.top_p, generation.max_new_tokens) == (0.9, 128)  # the paper's defaults
    assert model.trust_remote_code is False and therapist.verbose is False and therapist.log_file is None
    with pytest.raises(SystemExit):
        parse_command("chat", ["--model", "m", "--strategy", "nope"])


def test_client_profile_loading(tmp_path):
    assert load_client_profile(None) == DEFAULT_CLIENT
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"id": "x", "client": {"name": "Sam", "age": 40}}))
    assert load_client_profile(record)["name"] == "Sam"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a client profile"):
        load_client_profile(bad)


def test_session_loop_commands(tiny_llava_dir, tmp_path):
    face = tmp_path / "face.png"
    Image.new("RGB", (40, 40), (10, 120, 200)).save(face)
    therapist = MirrorTherapist.from_pretrained(
        tiny_llava_dir,
        "planning",
        GenerationConfig(temperature=0, max_new_tokens=6),
        config=TherapistConfig(plan_max_new_tokens=12),
        device=DEVICE,
        detector=CrisisDetector(SafetyConfig(use_embeddings=False)),
    )
    script = "\n".join(
        ["hello before any face", f"/image {tmp_path / 'missing.png'}", f"/image {face}", "/silent", "",
         "/plan", "/prompt", "/dance", "I want to kill myself", "/quit", "never read"]
    )  # fmt: skip
    out = io.StringIO()
    session = run_session(therapist, dict(DEFAULT_CLIENT), None, io.StringIO(script + "\n"), out)
    text = out.getvalue()
    assert text.startswith(AI_DISCLOSURE)
    assert (
        "reads the client's face" in text
        and "needs the client's face" in text
        and "cannot open image" in text
        and "client face set to" in text
    )
    assert "[plan] " in text and '"role": "user"' in text and "[unknown command /dance]" in text
    assert text.count("Therapist: ") == 2 and "988" in text.split("Therapist: ")[-1]
    assert [turn["statement"] for turn in session.history if turn["speaker"] == "client"] == [
        "",
        "I want to kill myself",
    ]
