"""MirrorTherapist: loading, strategies, prompt parity with training, stage-direction hygiene, safety, batching."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from test_backends import DEVICE, make_lora_adapter

from inference.backends.base import GenerationConfig
from inference.backends.transformers_backend import TransformersBackend
from inference.prompts import CBT_TECHNIQUES, load_prompt, therapist_messages, therapist_prompt_text
from inference.safety import AI_DISCLOSURE, CrisisDetector, SafetyConfig
from inference.therapist import (
    STRATEGIES,
    UNCLEAR_EMOTION,
    MirrorTherapist,
    Reply,
    TherapistConfig,
    match_technique,
    parse_plan,
    read_default_strategy,
)

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=10)
SMALL = TherapistConfig(plan_max_new_tokens=24, caption_max_new_tokens=8)  # keeps the tiny model's gibberish short
CLIENT = {
    "name": "Dana Whitfield",
    "age": 34,
    "gender": "female",
    "occupation": "pharmacy technician",
    "education": "associate degree",
    "marital_status": "divorced",
    "family": "one son, aged 9",
    "personal_info": "Dana works long shifts [rubs her eyes] and rarely sees friends.",
    "reason_for_counseling": "She feels she is failing as a parent.",
    "distorted_thought": "If I make one mistake at work, everyone will see I'm incompetent.",
    "thinking_traps": ["catastrophizing", "mind reading"],
}
# (statement, stage direction): the first client turn is non-verbal, as in every dataset session.
TURNS = [("", "Sits on the edge of the chair, eyes on the floor"), ("[picks at her sleeve] fine. I guess.", "Shrugs")]
# Words only the stage directions contain (the prompt file itself uses e.g. "looks away" as a caption example).
STAGE_WORDS = ("edge of the chair", "picks at", "sleeve", "Shrugs", "rubs her eyes")


def face(colour=(150, 60, 60)) -> Image.Image:
    return Image.new("RGB", (40, 40), colour)


class Recorder:
    """Wraps a backend and records every call (messages, images, config) without changing behaviour."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []
        self.name, self.supports_images = backend.name, backend.supports_images

    def chat(self, messages, images=None, config=None):
        return self.chat_batch([messages], [images or []], config)[0]

    def chat_batch(self, conversations, images=None, config=None):
        images = images or [[] for _ in conversations]
        self.calls.extend((m, i, config) for m, i in zip(conversations, images, strict=True))
        return self.backend.chat_batch(conversations, images, config)


class Scripted:
    """A backend whose replies are given in advance (for plan and caption parsing)."""

    def __init__(self, replies, supports_images=True):
        self.replies, self.calls = list(replies), []
        self.name, self.supports_images = "scripted", supports_images

    def chat(self, messages, images=None, config=None):
        return self.chat_batch([messages], [images or []], config)[0]

    def chat_batch(self, conversations, images=None, config=None):
        self.calls.extend(conversations)
        return [self.replies.pop(0) for _ in conversations]


@pytest.fixture(scope="module")
def detector():
    # Lexicon-only: fast, and the lexicon is what fires on the explicit phrases used here. The full default
    # (with sentence embeddings) runs in the `mirror chat` subprocess test.
    return CrisisDetector(SafetyConfig(use_embeddings=False))


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return TransformersBackend.from_pretrained(tiny_llava_dir, device=DEVICE)


def run_session(therapist, turns=TURNS, image=None):
    session = therapist.start_session(CLIENT)
    replies = [
        session.respond(statement, image=(image or face()) if i == 0 else None, stage_direction=direction)
        for i, (statement, direction) in enumerate(turns)
    ]
    return session, replies


def expected_messages(strategy, history, reply: Reply):
    """The training prompt for this turn: the SFT row's messages with the assistant reply removed."""
    plan = reply.plan
    kwargs = {"cbt_technique": plan.technique, "cbt_plan": plan.plan} if plan else {}
    if strategy == "cactus_plan":
        return therapist_messages(CLIENT, history, "cactus_plan", **kwargs)
    row = therapist_messages(CLIENT, history, strategy, reply=reply.text, emotion=reply.emotion, **kwargs)
    assert row[-1]["role"] == "assistant"
    return row[:-1]


# ------------------------------------------------------------------------------------------------------ loading


def test_from_pretrained_merged_folder_answers_with_image(tiny_llava_dir, detector):
    therapist = MirrorTherapist.from_pretrained(tiny_llava_dir, device=DEVICE, detector=detector)
    assert therapist.strategy == "base" and therapist.safety.enabled
    assert therapist.generation == GenerationConfig(temperature=0.7, top_p=0.9, max_new_tokens=128)
    session = therapist.start_session(CLIENT)
    assert AI_DISCLOSURE in session.disclosure
    reply = session.respond("", image=face(), stage_direction="looks at the floor")
    assert isinstance(reply.text, str) and reply.model_reply is not None and not reply.safety_triggered
    assert reply.messages[0]["content"][0]["type"] == "image"


def test_from_pretrained_adapter_folder_answers_with_image(tiny_llava_dir, tmp_path, detector):
    adapter = make_lora_adapter(tiny_llava_dir, tmp_path / "adapter")
    therapist = MirrorTherapist.from_pretrained(adapter, generation=GREEDY, device=DEVICE, detector=detector)
    assert therapist.backend.supports_images and therapist.strategy == "base"
    _, replies = run_session(therapist)
    assert all(isinstance(r.text, str) and r.messages for r in replies)


def test_default_strategy_from_model_folder(tiny_llava_dir, tiny_lm_dir, tmp_path, detector):
    assert read_default_strategy(str(tiny_llava_dir)) is None
    declared = tmp_path / "declared"
    shutil.copytree(tiny_llava_dir, declared)
    (declared / "mirror_config.json").write_text(json.dumps({"variant": "ec_planning"}))
    assert read_default_strategy(str(declared)) == "ec_planning"
    (declared / "mirror_config.json").unlink()
    (declared / "README.md").write_text("---\nlicense: apache-2.0\nmirror:\n  variant: planning\n---\n# card\n")
    assert read_default_strategy(str(declared)) == "planning"
    assert MirrorTherapist.from_pretrained(declared, device=DEVICE, detector=detector).strategy == "planning"
    lm = MirrorTherapist.from_pretrained(tiny_lm_dir, device=DEVICE, detector=detector)
    assert lm.strategy == "text"
    with pytest.raises(ValueError, match="text-only"):
        MirrorTherapist(lm.backend, "base", detector=detector)
    with pytest.raises(ValueError, match="Unknown strategy"):
        MirrorTherapist(lm.backend, "telepathy", detector=detector)


# ------------------------------------------------------------------------------------- prompts match training


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_prompt_matches_training_prompt_for_each_turn(strategy, llava, detector):
    recorder = Recorder(llava)
    therapist = MirrorTherapist(recorder, strategy, GREEDY, config=SMALL, detector=detector)
    session, replies = run_session(therapist)
    for turn, reply in enumerate(replies):
        history = session.history[: 2 * turn + 1]  # everything up to this turn's client statement
        assert reply.messages == expected_messages(strategy, history, reply)
    sent = [messages for messages, _, _ in recorder.calls]
    assert all(reply.messages in sent for reply in replies), "the recorded prompt is what the model was sent"
    vision = strategy in ("base", "planning", "ec_planning")
    reply_calls = [(m, imgs) for m, imgs, _ in recorder.calls if m in [r.messages for r in replies]]
    assert all(len(imgs) == (1 if vision else 0) for _, imgs in reply_calls)


def test_cactus_plan_prompt_is_text_prompt_plus_plan(detector):
    history = [{"speaker": "client", "statement": "[sighs] I don't know.", "stage_direction": "sighs"}]
    text = therapist_messages(CLIENT, history, "cactus_plan", cbt_technique="Decatastrophizing", cbt_plan="1. a 2. b")
    plan_section = load_prompt()["plan"].format(cbt_technique="Decatastrophizing", cbt_plan="1. a 2. b")
    prompt = text[0]["content"][0]["text"]
    assert plan_section in prompt and "image" not in prompt.lower()
    assert prompt.replace(plan_section + "\n\n", "") == therapist_prompt_text(CLIENT, history, "text")


def test_planning_plans_once_per_session_and_reuses_it(llava, detector):
    recorder = Recorder(llava)
    therapist = MirrorTherapist(recorder, "planning", GREEDY, config=SMALL, detector=detector)
    session, replies = run_session(therapist, [*TURNS, ("Maybe.", None), ("Okay.", None)])
    plan_calls = [m for m, _, _ in recorder.calls if "Answer in exactly two lines" in str(m)]
    assert len(plan_calls) == 1 and not recorder.calls[0][1], "one text-only plan request, at session start"
    assert recorder.calls[0][2].max_new_tokens == SMALL.plan_max_new_tokens
    assert session.plan.technique in CBT_TECHNIQUES and session.plan.messages == plan_calls[0]
    assert all(reply.plan is session.plan for reply in replies)
    # The tiny model answers gibberish: the failure is recorded and the default technique used.
    assert session.plan.parse_failed and session.plan.technique == therapist.config.default_technique


def test_planning_parses_the_models_plan(detector):
    answer = "**Technique:** decatastrophising\n**Plan:** 1. name the worst case 2. weigh the evidence"
    backend = Scripted([answer, "That sounds heavy."])
    therapist = MirrorTherapist(backend, "planning", GREEDY, detector=detector)
    session = therapist.start_session(CLIENT)
    assert (session.plan.technique, session.plan.plan) == (
        "Decatastrophizing",
        "1. name the worst case 2. weigh the evidence",
    )
    assert not session.plan.parse_failed
    reply = session.respond("I always mess up.", image=face())
    assert "CBT technique for this session: Decatastrophizing" in reply.messages[0]["content"][1]["text"]


def test_given_plan_is_used_without_generating(detector):
    backend = Scripted(["Let's look at that."], supports_images=False)
    therapist = MirrorTherapist(backend, "cactus_plan", GREEDY, detector=detector)
    session = therapist.start_session(CLIENT, cbt_technique="reality testing", cbt_plan="1. test it")
    assert (session.plan.technique, session.plan.plan, session.plan.raw) == ("Reality Testing", "1. test it", None)
    session.respond("ok")
    assert len(backend.calls) == 1


@pytest.mark.parametrize(
    ("answer", "technique", "parsed"),
    [
        ("Technique: Pie Chart Technique\nPlan: 1. list causes", "Pie Chart Technique", True),
        ("technique - behavioural experiments\nplan: try it", "Behavior Experiment", True),
        ("Technique: Decatastrophication\nPlan: a", "Decatastrophizing", True),
        ("I'd go with problem solving skills. Plan: b", "Problem-Solving Skills Training", True),
        ("USER 7hi7hi gibberish", "Alternative Perspective", False),
        ("", "Alternative Perspective", False),
    ],
)
def test_plan_parsing_is_robust(answer, technique, parsed):
    plan = parse_plan(answer)
    assert plan.technique == technique and plan.technique_parsed is parsed and plan.plan
    assert plan.technique in CBT_TECHNIQUES


def test_technique_matching():
    assert match_technique("EVIDENCE BASED QUESTIONING") == "Evidence-Based Questioning"
    assert match_technique("changing rules into wishes") == "Changing Rules to Wishes"
    assert match_technique("mindfulness meditation") is None


def test_ec_planning_captions_each_turn_and_uses_it(detector):
    backend = Scripted(
        ["Technique: Reality Testing\nPlan: 1. test", "[arms crossed, looks away]", "Go on.", "", "Mm."]
    )
    therapist = MirrorTherapist(backend, "ec_planning", GREEDY, detector=detector)
    session = therapist.start_session(CLIENT)
    first = session.respond("", image=face())
    assert first.emotion == "[arms crossed, looks away]" and not first.caption_failed
    assert "emotional state and body language: arms crossed, looks away" in first.messages[0]["content"][1]["text"]
    second = session.respond("whatever")  # the face from the previous turn is reused
    assert second.emotion == UNCLEAR_EMOTION and second.caption_failed
    caption_requests = [m for m in backend.calls if "Describe in one short phrase" in str(m)]
    assert len(caption_requests) == 2


# ------------------------------------------------------------------------------------- stage-direction hygiene


@pytest.mark.parametrize("strategy", ["ec_planning", "cactus_plan"])
def test_stage_directions_never_reach_the_model(strategy, llava, detector, monkeypatch):
    seen = []
    generate = llava.model.generate

    def spy(**inputs):
        seen.extend(llava.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=False))
        return generate(**inputs)

    monkeypatch.setattr(llava.model, "generate", spy)
    therapist = MirrorTherapist(llava, strategy, GREEDY, config=SMALL, detector=detector)
    session, replies = run_session(therapist)
    assert len(seen) >= 3  # plan (+ captions) + replies
    for prompt in seen + [llava.render(reply.messages) for reply in replies]:
        assert "[" not in prompt and not any(word in prompt for word in STAGE_WORDS), prompt
    rendered = llava.render(replies[-1].messages)
    assert "Client: fine. I guess." in rendered and "Client: (says nothing)" in rendered
    # The transcript keeps what was said and shown, for the record.
    assert (
        session.history[2]["statement"] == "[picks at her sleeve] fine. I guess."
        and session.history[2]["stage_direction"]
    )


def test_model_reply_stage_directions_and_labels_are_removed(detector):
    therapist = MirrorTherapist(Scripted(["Therapist: [leans in] Take your time."]), "base", GREEDY, detector=detector)
    reply = therapist.start_session(CLIENT).respond("hm", image=face())
    assert reply.text == "Take your time." and reply.model_reply.startswith("Therapist:")


# ----------------------------------------------------------------------------------------------------- safety


def test_safety_is_on_by_default(llava, detector):
    recorder = Recorder(llava)
    therapist = MirrorTherapist(recorder, "base", GREEDY, detector=detector)
    session = therapist.start_session(CLIENT)
    assert session.disclosure.startswith(AI_DISCLOSURE)
    session.respond("", image=face())
    asked = session.respond("Wait, am I talking to a real person?")
    assert asked.safety_triggered and asked.text.startswith(AI_DISCLOSURE) and asked.model_reply is not None
    calls = len(recorder.calls)
    crisis = session.respond("[stares] I want to kill myself.")
    assert crisis.safety_triggered and crisis.model_reply is None and crisis.messages == []
    assert "988" in crisis.text and len(recorder.calls) == calls, "no reply is generated in crisis"
    later = session.respond("Sorry, I was joking, I'm fine.")
    assert later.text == crisis.text and session.in_crisis and len(recorder.calls) == calls


def test_model_claiming_to_be_human_is_replaced(detector):
    therapist = MirrorTherapist(Scripted(["I'm a real person, trust me."]), "base", GREEDY, detector=detector)
    reply = therapist.start_session(CLIENT).respond("ok", image=face())
    assert reply.safety_triggered and reply.text == AI_DISCLOSURE


def test_disabled_safety_for_simulated_clients(llava):
    therapist = MirrorTherapist(llava, "base", GREEDY, SafetyConfig(enabled=False))
    session = therapist.start_session(CLIENT)
    reply = session.respond("I want to kill myself", image=face())
    assert session.disclosure == "" and reply.model_reply is not None and therapist.detector is None


# ----------------------------------------------------------------------------------------- sessions and batches


def test_image_required_for_vision_strategies_and_session_unchanged(llava, detector):
    session = MirrorTherapist(llava, "base", GREEDY, detector=detector).start_session(CLIENT)
    with pytest.raises(ValueError, match="needs the client's face"):
        session.respond("hello")
    assert session.history == []
    text_session = MirrorTherapist(llava, "text", GREEDY, detector=detector).start_session(CLIENT)
    assert text_session.respond("hello").messages[0]["content"][0]["type"] == "text"


def test_failed_generation_leaves_the_session_retryable(detector):
    class Broken(Scripted):
        def chat_batch(self, conversations, images=None, config=None):
            raise ConnectionError("endpoint down")

    session = MirrorTherapist(Broken([]), "base", GREEDY, detector=detector).start_session(CLIENT)
    with pytest.raises(ConnectionError):
        session.respond("hello", image=face())
    assert session.history == [] and session.replies == []


def test_respond_batch_equals_sequential_under_greedy(llava, detector):
    therapist = MirrorTherapist(llava, "planning", GREEDY, config=SMALL, detector=detector)
    clients = [CLIENT, {**CLIENT, "name": "Sam", "age": 51}, {**CLIENT, "reason_for_counseling": "Can't sleep."}]
    faces = [face((200, 0, 0)), face((0, 200, 0)), face((0, 0, 200))]
    batch_sessions = therapist.start_sessions(clients)
    sequential_sessions = [therapist.start_session(client) for client in clients]
    assert [s.plan.raw for s in batch_sessions] == [s.plan.raw for s in sequential_sessions]
    for statements in (["", "", ""], ["No.", "I suppose so, yes.", "[sighs] It's been a long month."]):
        batched = therapist.respond_batch(batch_sessions, statements, faces)
        sequential = [s.respond(t, image=f) for s, t, f in zip(sequential_sessions, statements, faces, strict=True)]
        assert [r.text for r in batched] == [r.text for r in sequential]
        assert [r.messages for r in batched] == [r.messages for r in sequential]


def test_same_seed_same_session(llava, detector):
    sampled = GenerationConfig(seed=11, max_new_tokens=12)
    texts = []
    for _ in range(2):
        _, replies = run_session(MirrorTherapist(llava, "base", sampled, detector=detector))
        texts.append([r.text for r in replies])
    assert texts[0] == texts[1]


def test_therapist_over_an_endpoint_matches_local(llava, detector, monkeypatch):
    from huggingface_hub import constants

    from inference.backends.endpoint import EndpointBackend
    from inference.server import serve_in_thread

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # loopback only; see test_backends
    with serve_in_thread(llava) as server:
        remote = MirrorTherapist(EndpointBackend(server.base_url, llava.name, max_retries=0), "base", GREEDY,
                                 detector=detector)  # fmt: skip
        _, remote_replies = run_session(remote)
    _, local_replies = run_session(MirrorTherapist(llava, "base", GREEDY, detector=detector))
    assert [r.text for r in remote_replies] == [r.text for r in local_replies]
    assert torch.is_grad_enabled()  # the backend's inference_mode did not leak


# ------------------------------------------------------------------------------- plans from profiles (issue 8)

PROFILE = {
    "id": "eval-x",
    "client": CLIENT,
    "resistance": "emotional",
    "cbt_technique": "Evidence-Based Questioning",
    "cbt_plan": "1. Agree an agenda. 2. Weigh the evidence for the thought.",
}


@pytest.mark.parametrize("strategy", ["planning", "ec_planning", "cactus_plan"])
def test_session_started_from_a_profile_uses_its_plan(strategy, detector):
    answers = ["[looks down]", "Go on."] if strategy == "ec_planning" else ["Go on."]
    backend = Scripted(answers, supports_images=strategy != "cactus_plan")
    therapist = MirrorTherapist(backend, strategy, GREEDY, detector=detector)
    session = therapist.start_session(PROFILE)
    assert backend.calls == [], "no plan is generated when the profile carries one"
    assert (session.plan.technique, session.plan.plan, session.plan.source) == (
        PROFILE["cbt_technique"],
        PROFILE["cbt_plan"],
        "profile",
    )
    assert session.client == CLIENT
    reply = session.respond("fine", image=None if strategy == "cactus_plan" else face())
    prompt = " ".join(b["text"] for b in reply.messages[0]["content"] if b["type"] == "text")
    assert f"CBT technique for this session: {PROFILE['cbt_technique']}" in prompt and PROFILE["cbt_plan"] in prompt
    assert therapist.plan_parse_failure_rate is None, "no plan generated, no rate"
    # A plan given by the caller wins over the profile's; a profile without a plan is planned by the model.
    given = therapist.start_session(PROFILE, cbt_technique="Reality Testing", cbt_plan="1. test it").plan
    assert (given.technique, given.source) == ("Reality Testing", "given")


def test_plan_parse_failure_rate_is_counted(detector):
    backend = Scripted(["Technique: Reality Testing\nPlan: 1. test", "no idea", "Technique: Pie Chart Technique"])
    therapist = MirrorTherapist(backend, "planning", GREEDY, detector=detector)
    profile_without_plan = {**PROFILE, "cbt_technique": None, "cbt_plan": None}
    sessions = therapist.start_sessions([CLIENT, profile_without_plan, {**CLIENT, "name": "Sam"}])
    assert [s.plan.source for s in sessions] == ["generated"] * 3
    assert [s.plan.parse_failed for s in sessions] == [False, True, True]  # the third names no plan
    assert therapist.plans_generated == 3 and therapist.plan_parse_failure_rate == pytest.approx(2 / 3)


# ------------------------------------------------------------------ no silent strategy or processor fallback


class _HubStub:
    """A real HTTP server on 127.0.0.1 answering every Hub file request with one status (and error code)."""

    def __init__(self, status: int, error_code: str | None = None):
        import http.server
        import threading

        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                stub.requests.append(self.path)
                self.send_response(status)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

            def log_message(self, *args):
                pass

        self.requests: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _point_hub_at(monkeypatch, url):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # loopback only
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 5)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 5)


def test_unreachable_model_strategy_detection_raises_naming_the_model(monkeypatch):
    # Offline, no cache: the model's files cannot be read.
    with pytest.raises(OSError, match=r"strategy of model 'mirror-test/no-such-therapist'") as offline:
        read_default_strategy("mirror-test/no-such-therapist")
    assert "--strategy" in str(offline.value)
    # Online, a Hub answering 401 for every file (private repository, bad token): an error, not the base prompt.
    with _HubStub(401) as url:
        _point_hub_at(monkeypatch, url)
        with pytest.raises(OSError, match=r"mirror-test/private-therapist.*revision 'v2'"):
            read_default_strategy("mirror-test/private-therapist", revision="v2")


def test_strategy_detection_on_a_readable_repo_without_declaration_is_none(monkeypatch):
    with _HubStub(404, "EntryNotFound") as url:
        _point_hub_at(monkeypatch, url)
        assert read_default_strategy("mirror-test/plain-model") is None


def test_declared_unknown_strategy_and_training_record(tiny_llava_dir, tmp_path):
    declared = tmp_path / "declared"
    shutil.copytree(tiny_llava_dir, declared)
    (declared / "mirror_config.json").write_text(json.dumps({"variant": "telepathy"}))
    with pytest.raises(ValueError, match="telepathy"):
        read_default_strategy(str(declared))
    (declared / "mirror_config.json").unlink()
    # What `mirror train` writes: the variant sits under mirror_args / card.
    record = {"mirror_args": {"variant": "cactus_plan"}, "card": {"variant": "cactus_plan"}}
    (declared / "mirror_training.json").write_text(json.dumps(record))
    assert read_default_strategy(str(declared)) == "cactus_plan"


def test_adapter_processor_mismatch_is_refused(tiny_llava_dir, tmp_path, caplog):
    from transformers import AutoTokenizer

    adapter = make_lora_adapter(tiny_llava_dir, tmp_path / "adapter")
    bare = tmp_path / "bare-adapter"  # weights only: no processor saved with them
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, bare / name)
    with pytest.raises(ValueError, match="holds no processor"):
        TransformersBackend.from_pretrained(bare, device=DEVICE)
    # The base model's processor only as an explicit, logged choice.
    with caplog.at_level("WARNING"):
        chosen = TransformersBackend.from_pretrained(bare, device=DEVICE, processor_source=str(tiny_llava_dir))
    assert chosen.supports_images and "processor_source" in caplog.text
    # Training saved another chat template with the adapter (a tokenizer only): the base processor's differs.
    other = tmp_path / "other-template"
    shutil.copytree(bare, other)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="image processor"):  # a tokenizer alone is not a VLM's processor
        TransformersBackend.from_pretrained(other, device=DEVICE)
    with pytest.raises(ValueError, match="different chat template"):
        TransformersBackend.from_pretrained(other, device=DEVICE, processor_source=str(tiny_llava_dir))
    # Unreadable processor files next to the adapter: an error, not the base model's processor.
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "processor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot be loaded"):
        TransformersBackend.from_pretrained(broken, device=DEVICE)
