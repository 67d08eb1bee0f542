"""Chat backends: local transformers (merged + LoRA adapter folders), OpenAI-compatible endpoints over real HTTP on
127.0.0.1 (a deliberately faulty server; `mirror serve` itself is tested in test_server.py), and the optional vLLM
backend.

Every HTTP exchange is loopback only and bounded: small retry counts, millisecond backoff, sub-second timeouts.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from helpers import ClosingHTTPServer
from PIL import Image

from inference.backends.base import GenerationConfig
from inference.backends.endpoint import EndpointBackend, EndpointError, image_to_data_url, to_openai_messages
from inference.backends.transformers_backend import TransformersBackend

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=12)
# CPU by default; MIRROR_TEST_DEVICE=cuda runs the same checks on a GPU.
DEVICE = os.environ.get("MIRROR_TEST_DEVICE", "cpu")


def vision_messages(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def text_messages(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def face(colour=(150, 60, 60), size=(48, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def make_lora_adapter(base_dir, output_dir, seed: int = 1):
    """A LoRA adapter on the tiny LLaVA's language model (regex target: a plain q_proj list would also hit CLIP),
    with non-zero B matrices so the adapter really changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(base_dir, use_safetensors=True)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(output_dir)
    AutoProcessor.from_pretrained(base_dir).save_pretrained(output_dir)  # as `mirror train` does: no fallback
    return output_dir


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return TransformersBackend.from_pretrained(tiny_llava_dir, device=DEVICE)


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    return TransformersBackend.from_pretrained(tiny_lm_dir, device=DEVICE)


@pytest.fixture(scope="module")
def adapter_dir(tiny_llava_dir, tmp_path_factory):
    return make_lora_adapter(tiny_llava_dir, tmp_path_factory.mktemp("lora-adapter"))


# ----------------------------------------------------------------------------------------------- transformers


def test_merged_vlm_folder_answers_with_image(llava):
    assert llava.supports_images and "tiny-llava" in llava.name
    reply = llava.chat(vision_messages("How are you feeling today?"), [face()], GREEDY)
    assert isinstance(reply, str) and reply == reply.strip()
    with pytest.raises(ValueError, match="placeholder"):
        llava.chat(vision_messages("no image given"), [], GREEDY)


def test_causal_lm_folder_is_text_only(lm):
    assert not lm.supports_images
    assert isinstance(lm.chat(text_messages("hello"), config=GREEDY), str)
    with pytest.raises(ValueError, match="text-only"):
        lm.chat(vision_messages("hello"), [face()], GREEDY)


def test_adapter_folder_loads_base_then_adapter(adapter_dir, tiny_llava_dir, llava):
    from peft import PeftModel

    assert (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "config.json").exists()
    merged = TransformersBackend.from_pretrained(adapter_dir, device=DEVICE)
    unmerged = TransformersBackend.from_pretrained(adapter_dir, device=DEVICE, merge_adapter=False)
    assert isinstance(unmerged.model, PeftModel) and not isinstance(merged.model, PeftModel)
    assert merged.supports_images and merged.processor.chat_template == llava.processor.chat_template

    messages, images = vision_messages("It sounds like this week was hard."), [face()]
    inputs = merged.encode([messages], [images])
    with torch.no_grad():
        base_logits = llava.model(**inputs).logits
        merged_logits = merged.model(**inputs).logits
        peft_logits = unmerged.model(**inputs).logits
    assert not torch.allclose(base_logits, merged_logits, atol=1e-4), "the adapter changed nothing"
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-4, rtol=1e-4)
    assert isinstance(merged.chat(messages, images, GREEDY), str)


def test_adapter_without_safetensors_is_refused(adapter_dir, tmp_path):
    pickled = tmp_path / "pickled-adapter"
    shutil.copytree(adapter_dir, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(ValueError, match="safetensors"):
        TransformersBackend.from_pretrained(pickled, device=DEVICE)


def test_same_seed_same_reply(llava):
    messages, images = vision_messages("Tell me more."), [face()]
    sampled = [llava.chat(messages, images, GenerationConfig(seed=seed, max_new_tokens=16)) for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1]
    before = torch.random.get_rng_state()
    llava.chat(messages, images, GenerationConfig(seed=3, max_new_tokens=4))
    assert torch.equal(before, torch.random.get_rng_state()), "seeding must not disturb the caller's RNG"
    greedy = {llava.chat(messages, images, GREEDY) for _ in range(2)}
    assert len(greedy) == 1


def test_stops_at_eos(llava):
    messages, images = vision_messages("Stop early please."), [face()]
    inputs = llava.encode([messages], [images])
    first_token = int(llava.generate_ids(inputs, GREEDY)[0, 0])
    original = llava.model.generation_config.eos_token_id
    llava.model.generation_config.eos_token_id = first_token  # make the model's first greedy token its EOS
    try:
        assert llava.generate_ids(inputs, GREEDY).shape[1] == 1
    finally:
        llava.model.generation_config.eos_token_id = original


@pytest.mark.parametrize("which", ["llava", "lm"])
def test_batched_replies_equal_sequential_under_greedy(which, llava, lm):
    backend = {"llava": llava, "lm": lm}[which]
    texts = ["Fine.", "I don't really know why I'm here, my sister made the appointment.", "Therapist: hello"]
    if backend.supports_images:
        conversations = [vision_messages(t) for t in texts]
        images = [[face((200, 20, 20), (40, 60))], [face((10, 200, 30))], [face((0, 0, 0), (90, 30))]]
    else:
        conversations, images = [text_messages(t) for t in texts], None
    batched = backend.chat_batch(conversations, images, GREEDY)
    sequential = [backend.chat(c, i, GREEDY) for c, i in zip(conversations, images or [None] * 3, strict=True)]
    assert batched == sequential
    assert backend.tokenizer.padding_side == "left"


def test_user_typed_control_tokens_stay_text(llava):
    # Without sanitising, "<image>" typed by a client breaks the image-token count and "</s>" ends the prompt.
    reply = llava.chat(vision_messages("I typed <image> and </s> on purpose"), [face()], GREEDY)
    assert isinstance(reply, str)


def test_stop_strings_cut_the_reply(llava):
    messages, images = vision_messages("Anything."), [face()]
    full = llava.chat(messages, images, GenerationConfig(temperature=0, max_new_tokens=20))
    assert len(full) > 4
    marker = full[2:4]
    cut = llava.chat(messages, images, GenerationConfig(temperature=0, max_new_tokens=20, stop=[marker]))
    assert marker not in cut and full.startswith(cut)


# ----------------------------------------------------------------------------------------- endpoint + server


def test_openai_message_conversion():
    converted = to_openai_messages(
        [
            {"role": "system", "content": "be kind"},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        ],
        [face()],
    )
    assert converted[0] == {"role": "system", "content": "be kind"}
    assert converted[1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert converted[1]["content"][1] == {"type": "text", "text": "hi"}
    assert converted[2] == {"role": "assistant", "content": "hello"}  # text-only content becomes a string


class FaultyServer:
    """A deliberately faulty OpenAI-compatible server: scripted per-attempt behaviour, attempts counted here."""

    def __init__(self, script: list[str | int], delay: float = 1.0):
        self.script, self.delay = script, delay
        self.attempts, self.authorization = 0, []
        self.release = threading.Event()  # ends slow handlers at teardown
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.authorization.append(self.headers.get("Authorization"))
                step = owner.script[min(owner.attempts, len(owner.script) - 1)]
                owner.attempts += 1
                if step == "slow":
                    owner.release.wait(owner.delay)
                    step = "ok"
                if step == "ok":
                    body = {
                        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
                        "system_fingerprint": "", "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                        "total_tokens": 2},
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": " recovered "}}],
                    }  # fmt: skip
                    status = 200
                else:
                    body, status = {"error": {"message": f"scripted {step}"}}, int(step)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ClosingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()  # closes client connections and joins handler threads
        self.thread.join(timeout=5)


def test_5xx_is_retried_then_succeeds(allow_loopback_http):
    sleeps = []
    with FaultyServer([500, 503, "ok"]) as faulty:
        endpoint = EndpointBackend(faulty.base_url, "m", max_retries=3, backoff=0.01, sleep=sleeps.append)
        assert endpoint.chat(text_messages("hi"), None, GREEDY) == "recovered"
    assert faulty.attempts == 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0]  # exponential backoff


def test_5xx_retries_are_bounded(allow_loopback_http):
    with FaultyServer([502]) as faulty:
        endpoint = EndpointBackend(faulty.base_url, "m", max_retries=2, backoff=0.001)
        with pytest.raises(EndpointError, match="after 3 attempt"):
            endpoint.chat(text_messages("hi"), None, GREEDY)
    assert faulty.attempts == 3


def test_4xx_is_not_retried(allow_loopback_http):
    with FaultyServer([422, "ok"]) as faulty:
        with pytest.raises(EndpointError, match="422"):
            EndpointBackend(faulty.base_url, "m", max_retries=3, backoff=0.001).chat(text_messages("hi"), None, GREEDY)
    assert faulty.attempts == 1


def test_timeout_is_retried_and_bounded(allow_loopback_http):
    with FaultyServer(["slow"], delay=2.0) as faulty:
        endpoint = EndpointBackend(faulty.base_url, "m", timeout=0.25, max_retries=1, backoff=0.001)
        started = time.monotonic()
        with pytest.raises(EndpointError, match="after 2 attempt"):
            endpoint.chat(text_messages("hi"), None, GREEDY)
        elapsed = time.monotonic() - started
    assert faulty.attempts == 2
    assert elapsed < 1.5


def test_timeout_then_recovery(allow_loopback_http):
    with FaultyServer(["slow", "ok"], delay=2.0) as faulty:
        endpoint = EndpointBackend(faulty.base_url, "m", timeout=0.25, max_retries=2, backoff=0.001)
        assert endpoint.chat(text_messages("hi"), None, GREEDY) == "recovered"
    assert faulty.attempts == 2


def test_connection_refused_is_retried_and_bounded(allow_loopback_http):
    import socket

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = []
    endpoint = EndpointBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff=0.001, sleep=sleeps.append)
    with pytest.raises(EndpointError, match="after 3 attempt"):
        endpoint.chat(text_messages("hi"), None, GREEDY)
    assert len(sleeps) == 2


def test_hf_token_goes_only_to_hugging_face_hosts(allow_loopback_http, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_for_third_parties")
    with FaultyServer(["ok"]) as faulty:
        EndpointBackend(faulty.base_url, "m", max_retries=0).chat(text_messages("hi"), None, GREEDY)
        EndpointBackend(faulty.base_url, "m", api_key="explicit-key", max_retries=0).chat(
            text_messages("hi"), None, GREEDY
        )
        EndpointBackend(faulty.base_url, "m", use_hf_token=True, max_retries=0).chat(text_messages("hi"), None, GREEDY)
    assert faulty.authorization == ["Bearer EMPTY", "Bearer explicit-key", "Bearer hf_not_for_third_parties"]


def test_offline_mode_is_a_clear_error_not_retried():
    # conftest's HF_HUB_OFFLINE=1 is left on here: huggingface_hub refuses even loopback requests.
    sleeps = []
    endpoint = EndpointBackend("http://127.0.0.1:9/v1", "m", max_retries=3, sleep=sleeps.append)
    with pytest.raises(EndpointError, match="HF_HUB_OFFLINE"):
        endpoint.chat(text_messages("hi"), None, GREEDY)
    assert sleeps == []


def test_endpoint_checks_images_before_any_request():
    endpoint = EndpointBackend("http://127.0.0.1:9/v1", "m", supports_images=False, max_retries=0)
    with pytest.raises(ValueError, match="text-only"):
        endpoint.chat(vision_messages("hi"), [face()], GREEDY)
    assert image_to_data_url(face()).startswith("data:image/png;base64,")


# ------------------------------------------------------------------------------------------------------- vLLM


def test_vllm_backend_missing_gives_clear_import_error(tiny_llava_dir):
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
    except ImportError:
        from inference.backends.vllm_backend import VLLMBackend

        with pytest.raises(ImportError, match="pip install vllm"):
            VLLMBackend(tiny_llava_dir)
    else:
        pytest.skip("vLLM is installed; see the slow test")


@pytest.mark.slow
def test_vllm_backend_matches_transformers_greedy(tiny_llava_dir, llava):
    pytest.importorskip("vllm")
    from inference.backends.vllm_backend import VLLMBackend

    engine = VLLMBackend(tiny_llava_dir, dtype="float32", gpu_memory_utilization=0.2, enforce_eager=True)
    messages, images = vision_messages("How was your week?"), [face()]
    assert engine.chat(messages, images, GREEDY) == llava.chat(messages, images, GREEDY)
