"""`mirror chat`: a subprocess driven through stdin (disclosure first, then a reply), and the loop's commands."""

from __future__ import annotations

import argparse
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
from inference.chat import DEFAULT_CLIENT, load_client_profile, make_parser, run_session
from inference.safety import AI_DISCLOSURE, CrisisDetector, SafetyConfig
from inference.therapist import MirrorTherapist, TherapistConfig

REPO = Path(__file__).resolve().parent.parent


def test_mirror_chat_subprocess_shows_disclosure_then_a_reply(tiny_llava_dir, tmp_path):
    face = tmp_path / "face.png"
    Image.new("RGB", (48, 48), (140, 70, 60)).save(face)
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"client": {"name": "Dana", "age": 34, "reason_for_counseling": "Stress."}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}  # HF_HOME: conftest's temporary folder
    command = [sys.executable, "-m", "inference.chat", "--model", str(tiny_llava_dir), "--image", str(face),
               "--client-profile", str(profile), "--temperature", "0", "--max-new-tokens", "8", "--device", "cpu"]  # fmt: skip
    result = subprocess.run(
        command, input="[looks away] I guess I'm fine.\n/quit\n", capture_output=True, text=True, env=env, cwd=REPO,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith(AI_DISCLOSURE), out[:500]
    assert out.count("Therapist: ") == 1 and out.index(AI_DISCLOSURE) < out.index("Therapist: ")


def test_parser_works_standalone_and_as_subcommand():
    args = make_parser().parse_args(["--model", "m", "--strategy", "cactus_plan", "--temperature", "0"])
    assert (args.model, args.strategy, args.temperature) == ("m", "cactus_plan", 0)
    assert (args.top_p, args.max_new_tokens) == (0.9, 128)  # the paper's defaults
    root = argparse.ArgumentParser(prog="mirror")
    make_parser(root.add_subparsers(dest="command"))
    args = root.parse_args(["chat", "--model", "m", "--image", "f.png"])
    assert args.command == "chat" and args.image == "f.png" and callable(args.func)
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--model", "m", "--strategy", "nope"])


def test_client_profile_loading(tmp_path):
    assert load_client_profile(None) == DEFAULT_CLIENT
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"id": "x", "client": {"name": "Sam", "age": 40}}))
    assert load_client_profile(record)["name"] == "Sam"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit):
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
    assert "needs the client's face" in text and "cannot open image" in text and "client face set to" in text
    assert "[plan] " in text and '"role": "user"' in text and "[unknown command /dance]" in text
    assert text.count("Therapist: ") == 2 and "988" in text.split("Therapist: ")[-1]
    assert [turn["statement"] for turn in session.history if turn["speaker"] == "client"] == [
        "",
        "I want to kill myself",
    ]
