"""`mirror demo`: the Gradio page driven in headless Chromium (disclosure, a reply, crisis referral, new session)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

from inference.backends.base import GenerationConfig
from inference.safety import AI_DISCLOSURE, SafetyConfig

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
BOT = "#mirror-chatbot [data-testid='bot']"
WAIT_MS = 20_000
CLIENT = {"name": "Sam", "age": 29, "reason_for_counseling": "Feels overwhelmed at work."}
MESSAGES = ("Work has been piling up and I can't sleep.", "I want to end my life", "you misunderstood, I'm fine")


def test_parser_defaults_are_local_and_private():
    from mirror_cli import parse_command

    _, therapist, _, demo = parse_command("demo", ["--model", "some/model"])
    assert (demo.host, demo.port, demo.share, therapist.log_client_text) == ("127.0.0.1", 7860, False, False)
    assert parse_command("demo", ["--model", "m", "--share", "False"])[3].share is False
    assert parse_command("demo", ["--model", "m", "--share"])[3].share is True


def test_importing_the_module_does_not_import_gradio():
    code = "import sys, inference.web_demo; assert 'gradio' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent, timeout=60)


def test_refuses_a_therapist_without_safety():
    pytest.importorskip("gradio")
    from inference.therapist import MirrorTherapist
    from inference.web_demo import build_demo

    class Backend:
        name, supports_images = "scripted", True

    with pytest.raises(ValueError, match="safety"):
        build_demo(MirrorTherapist(Backend(), safety=SafetyConfig(enabled=False)))


def test_web_demo_in_headless_chromium(tiny_llava_dir, tmp_path, caplog):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed")
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) not installed")
    from PIL import Image

    from inference.therapist import MirrorTherapist
    from inference.web_demo import build_demo

    caplog.set_level(logging.INFO)
    face = tmp_path / "face.png"
    Image.new("RGB", (96, 96), (205, 160, 130)).save(face)
    therapist = MirrorTherapist.from_pretrained(
        tiny_llava_dir, generation=GenerationConfig(temperature=0.0, max_new_tokens=12), device="cpu"
    )
    demo = build_demo(therapist, CLIENT)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(WAIT_MS)
                run_session(page, f"http://127.0.0.1:{port}/", face)
            finally:
                browser.close()
    finally:
        demo.close()
    for message in MESSAGES:  # client text is not logged unless the user opts in
        assert message not in caplog.text


def bot_texts(page) -> list[str]:
    return page.locator(BOT).all_inner_texts()


def send(page, text: str, expected_bot_messages: int) -> str:
    page.fill("#mirror-message textarea", text)
    page.click("#mirror-send")
    page.wait_for_function(
        "([selector, n]) => document.querySelectorAll(selector).length >= n",
        arg=[BOT, expected_bot_messages],
        timeout=WAIT_MS,
    )
    page.wait_for_function("() => !document.querySelector('#mirror-message textarea').value", timeout=WAIT_MS)
    texts = bot_texts(page)
    assert len(texts) == expected_bot_messages
    return texts[-1]


def run_session(page, url: str, face: Path) -> None:
    page.goto(url, timeout=WAIT_MS)
    page.wait_for_selector(BOT, timeout=WAIT_MS)  # the session opens with the disclosure

    disclosure = page.locator("#mirror-disclosure")
    assert disclosure.is_visible()
    assert "not a human or a licensed therapist, not for clinical use" in disclosure.inner_text()
    assert AI_DISCLOSURE[:60] in bot_texts(page)[0]
    status = page.locator("#mirror-safety-status")
    assert "Safety layer on" in status.inner_text()

    page.set_input_files("#mirror-face input[type=file]", str(face))
    page.wait_for_selector("#mirror-face img", timeout=WAIT_MS)

    reply = send(page, MESSAGES[0], 2)
    assert reply.strip() and "988" not in reply  # the (tiny, random) therapist model answered
    assert MESSAGES[0] in page.locator("#mirror-chatbot [data-testid='user']").first.inner_text()
    assert "Safety layer on" in status.inner_text()

    referral = send(page, MESSAGES[1], 3)
    assert "call or text 988" in referral and "911" in referral
    page.wait_for_selector("#mirror-safety-status [data-state='crisis']", timeout=WAIT_MS)
    assert "Safety layer active" in status.inner_text() and status.is_visible()

    retraction = send(page, MESSAGES[2], 4)  # retracting does not end crisis mode
    assert "call or text 988" in retraction
    assert "Safety layer active" in status.inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_demo.png"), full_page=True)

    page.click("#mirror-new-session")
    page.wait_for_selector("#mirror-safety-status [data-state='monitoring']", timeout=WAIT_MS)
    page.wait_for_function("sel => document.querySelectorAll(sel).length === 1", arg=BOT, timeout=WAIT_MS)
    assert AI_DISCLOSURE[:60] in bot_texts(page)[0]
