"""`mirror demo`: a local web page to chat with a MIRROR therapist model, with your face from an upload or webcam.

Runs on 127.0.0.1 and creates no public share link unless `--share` is given. The AI disclosure is shown at the top
and opens every session; the safety layer is always on: each message is screened before a reply is generated, and
once in crisis the referral replaces every reply and a banner says so until "New session". Client text is not
logged unless `--log_client_text` is given; uploads sit in Gradio's temporary cache, cleared periodically.

Built on `gr.Blocks`, not `gr.ChatInterface(multimodal=True)`: that textbox attaches files to one message and has
no webcam, while the face here is a standing input kept across turns, and the banner and "New session" reset a
per-tab session, which ChatInterface would need as many extra inputs, outputs and state for.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from typing import Any

from .backends.base import GenerationConfig, ModelLoadArguments
from .chat import (
    DEFAULT_CLIENT,
    TherapistArguments,
    build_therapist,
    load_client_profile,
    open_face_image,
    setup_logging,
)
from .safety import AI_DISCLOSURE, get_referral
from .server import is_loopback
from .therapist import VISION_STRATEGIES, MirrorTherapist

logger = logging.getLogger(__name__)


@dataclass
class DemoArguments:
    """What only `mirror demo` takes: where the page is served."""

    host: str = field(
        default="127.0.0.1", metadata={"help": "Interface to bind; 0.0.0.0 exposes the page to the network."}
    )
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    share: bool = field(
        default=False,
        metadata={"help": "Create a public Gradio share link (off: it sends all traffic through Gradio's relay)."},
    )


ARGUMENTS = (ModelLoadArguments, TherapistArguments, GenerationConfig, DemoArguments)

# Stable DOM ids, for browser tests and custom CSS.
IDS = {
    "disclosure": "mirror-disclosure",
    "safety": "mirror-safety-status",
    "chatbot": "mirror-chatbot",
    "image": "mirror-face",
    "textbox": "mirror-message",
    "send": "mirror-send",
    "new_session": "mirror-new-session",
}
SAFETY_ON = "Safety layer on: every message is screened for crisis risk before the model may reply."
SAFETY_ACTIVE = (
    "Safety layer active: crisis support resources were shown. The therapist model will not reply for the rest "
    "of this session; every message gets the crisis referral. Start a new session to reset."
)


def _banner(body: str, state: str, border: str, background: str) -> str:
    style = f"padding:10px 14px;border-radius:8px;border:1px solid {border};background:{background};color:#1f2937"
    return f'<div data-state="{state}" style="{style}">{body}</div>'


def disclosure_html(therapist: MirrorTherapist) -> str:
    """The banner at the top of the page: the AI disclosure and where to turn in a crisis."""
    referral = get_referral(therapist.safety.locale, therapist.safety.referral_table)
    body = (
        f"<strong>MIRROR research demo &mdash; AI model, not a human or a licensed therapist, not for clinical "
        f"use.</strong><br>{html.escape(AI_DISCLOSURE)}<br>{html.escape(referral.short)}"
    )
    return _banner(body, "disclosure", "#d97706", "#fffbeb")


def safety_html(in_crisis: bool) -> str:
    """The safety status: a quiet note normally, a red banner once the session is in crisis."""
    if in_crisis:
        return _banner(f"<strong>{html.escape(SAFETY_ACTIVE)}</strong>", "crisis", "#dc2626", "#fef2f2")
    return _banner(html.escape(SAFETY_ON), "monitoring", "#9ca3af", "#f9fafb")


def build_demo(therapist: MirrorTherapist, client_profile: dict | None = None, face: Any = None) -> Any:
    """The Gradio Blocks app for `therapist`; `client_profile` is the client the model is told it talks to
    (default: a neutral profile), `face` a PIL image the face box starts with. Each browser tab gets its own
    session."""
    import gradio as gr

    if not therapist.safety.enabled:
        raise ValueError("the web demo talks to people: build the therapist with the safety layer enabled")
    client = {**DEFAULT_CLIENT, **(client_profile or {})}
    needs_face = therapist.strategy in VISION_STRATEGIES

    def new_session():
        session = therapist.start_session(client)
        messages = [{"role": "assistant", "content": session.disclosure}]
        return session, messages, "", safety_html(False)

    def respond(text, image, session, messages):
        text = (text or "").strip()
        if session is None:  # the page's load event did not run (e.g. an API call)
            session, messages, _, _ = new_session()
        if not text:
            raise gr.Error("Type a message first.")
        if needs_face and image is None and session.image is None:
            raise gr.Error("Add a photo of your face (upload or webcam) first: this model reads your expression.")
        try:
            reply = session.respond(text, image=image)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        except Exception:
            logger.exception("therapist reply failed")  # the traceback only: never the client's text
            raise gr.Error("The model could not reply. Please try again.") from None
        messages = [*messages, {"role": "user", "content": text}, {"role": "assistant", "content": reply.text}]
        return session, messages, "", safety_html(session.in_crisis)

    with gr.Blocks(title="MIRROR therapist demo", analytics_enabled=False, delete_cache=(600, 1800)) as demo:
        gr.HTML(disclosure_html(therapist), elem_id=IDS["disclosure"])
        status = gr.HTML(safety_html(False), elem_id=IDS["safety"])
        session_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                label = "Your face" + (" (required)" if needs_face else " (not used by this model)")
                image = gr.Image(
                    value=face, sources=["upload", "webcam"], type="pil", label=label, elem_id=IDS["image"], height=300
                )
                new_button = gr.Button("New session", variant="secondary", elem_id=IDS["new_session"])
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(
                    label="Session",
                    elem_id=IDS["chatbot"],
                    height=440,
                    buttons=["copy_all"],  # no "share": it would post the conversation to Hugging Face
                    feedback_options=None,
                    watermark="(Written by an AI research model, not a human or a licensed therapist.)",
                )
                with gr.Row():
                    textbox = gr.Textbox(
                        placeholder="What would you like to talk about?",
                        show_label=False,
                        lines=2,
                        scale=4,
                        elem_id=IDS["textbox"],
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id=IDS["send"])
        outputs = [session_state, chatbot, textbox, status]
        inputs = [textbox, image, session_state, chatbot]
        send.click(respond, inputs, outputs, api_visibility="private")
        textbox.submit(respond, inputs, outputs, api_visibility="private")
        new_button.click(lambda: (*new_session(), None), None, [*outputs, image], api_visibility="private")
        # The chat's own trash button starts a new session too: the display and the session never disagree.
        chatbot.clear(new_session, None, outputs, api_visibility="private")
        demo.load(new_session, None, outputs, api_visibility="private")
    return demo


def main(
    model: ModelLoadArguments, arguments: TherapistArguments, generation: GenerationConfig, demo: DemoArguments
) -> int:
    setup_logging(arguments)
    client = load_client_profile(arguments.client_profile)
    face = open_face_image(arguments.image) if arguments.image else None
    therapist = build_therapist(model, arguments, generation)
    if demo.share or not is_loopback(demo.host):
        print("Note: the demo is reachable beyond this machine; client messages and faces will cross the network.")
    app = build_demo(therapist, client, face)
    app.queue(default_concurrency_limit=1).launch(
        server_name=demo.host, server_port=demo.port, share=demo.share, footer_links=["gradio", "settings"]
    )
    return 0


if __name__ == "__main__":
    import sys

    import mirror_cli

    sys.exit(mirror_cli.main(["demo", *sys.argv[1:]], prog="mirror demo"))
