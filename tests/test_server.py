"""`mirror serve` (inference/server.py) over real HTTP on 127.0.0.1: the OpenAI wire format (with `EndpointBackend`,
the official `openai` client and raw sockets), streaming, malformed requests, the API key checked before the body
is read, crisis screening of every user turn (the model is not called), and the loopback-only `--no_safety`.

Every exchange is loopback only and bounded (socket timeouts of a few seconds).
"""

import json
import logging
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import fields

import pytest
from PIL import Image

from inference.backends.base import ChatBackend, GenerationConfig, ModelLoadArguments
from inference.backends.endpoint import EndpointBackend, EndpointError
from inference.backends.transformers_backend import TransformersBackend, Usage
from inference.safety import SafetyConfig, SafetySession
from inference.server import ARGUMENTS, ServeArguments, check_no_safety_host, is_loopback, main, serve_in_thread

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=12)
NO_SAFETY = SafetyConfig(enabled=False)
RISKY = "I've decided to kill myself this weekend."


def text_messages(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def face(colour=(150, 60, 60), size=(48, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


class CountingBackend(ChatBackend):
    """A small ChatBackend: counts its calls, answers a fixed text and reports usage like a real backend (the reply
    is 'cut' when it is as long as max_new_tokens)."""

    name = "counting"
    supports_images = False

    def __init__(self, reply: str = "Let us look at the evidence for that thought together.") -> None:
        self.reply, self.calls, self.last_usage = reply, 0, None

    def chat_batch(self, conversations, images=None, config=None):
        self.calls += len(conversations)
        config = config or GenerationConfig()
        words = self.reply.split()[: config.max_new_tokens]
        self.last_usage = Usage(prompt_tokens=7, completion_tokens=len(words))
        return [" ".join(words)] * len(conversations)


@pytest.fixture(autouse=True)
def allow_loopback_http(monkeypatch):
    """conftest sets HF_HUB_OFFLINE=1, which makes huggingface_hub (EndpointBackend) refuse every request,
    loopback included; lift it in this process only. Every server here is on 127.0.0.1."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return TransformersBackend.from_pretrained(tiny_llava_dir, device="cpu")


def post(url: str, body, headers: dict | None = None, timeout: float = 30):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def raw_exchange(port: int, head: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, bytes]:
    """Send raw request bytes; return the status and the whole answer. A server that waits for a body we never send
    would hang here: the socket timeout turns that into a test failure."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(head.encode("latin-1") + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


# --------------------------------------------------------------------------------------------------------------
# The OpenAI wire format (moved from test_backends.py and extended)
# --------------------------------------------------------------------------------------------------------------


def test_endpoint_talks_to_mirror_serve_over_http(llava):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Tell me about your week."}]}]
    images = [face((30, 90, 200), (64, 40))]
    with serve_in_thread(llava, model_name="tiny-mirror") as server:
        endpoint = EndpointBackend(server.base_url, "tiny-mirror", timeout=30, max_retries=0)
        remote = endpoint.chat(messages, images, GREEDY)
        batch = endpoint.chat_batch([messages, text_messages("And today?")], [images, []], GREEDY)
        with urllib.request.urlopen(server.base_url + "/models", timeout=5) as response:
            models = json.load(response)
    # PNG data URLs are lossless, so the served model sees the same pixels and answers the same.
    assert remote == llava.chat(messages, images, GREEDY)
    assert batch == [remote, llava.chat(text_messages("And today?"), None, GREEDY)]
    assert models["data"][0]["id"] == "tiny-mirror"


def test_official_openai_client_plain_and_streaming(llava):
    openai = pytest.importorskip("openai")
    with serve_in_thread(llava, model_name="tiny-mirror", api_key="s3cret") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="s3cret", max_retries=0, timeout=60)
        assert [model.id for model in client.models.list()] == ["tiny-mirror"]
        request = dict(
            model="tiny-mirror", messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=8
        )
        plain = client.chat.completions.create(**request)
        chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
    assert plain.choices[0].message.content == llava.chat(text_messages("hello"), None, GenerationConfig(0.0, 0.9, 8))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == plain.choices[0].message.content
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_streaming_over_raw_http_is_server_sent_events():
    backend = CountingBackend("one two three four")
    with serve_in_thread(backend, safety=NO_SAFETY) as server:
        request = urllib.request.Request(
            server.base_url + "/chat/completions",
            json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            lines = [line.decode() for line in response.read().splitlines() if line.strip()]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "one two three four"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_finish_reason_is_length_when_max_tokens_cut_the_reply(llava):
    backend = CountingBackend("one two three four five six")
    with serve_in_thread(backend, safety=NO_SAFETY) as server:
        url = server.base_url + "/chat/completions"
        status, cut = post(url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        _, whole = post(url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50})
    assert status == 200 and cut["choices"][0]["message"]["content"] == "one two three"
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 3
    assert whole["choices"][0]["finish_reason"] == "stop"
    # The same rule on a real model's token counts.
    with serve_in_thread(llava, safety=NO_SAFETY) as server:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
        status, answer = post(server.base_url + "/chat/completions", body)
    assert status == 200 and answer["usage"]["completion_tokens"] <= 3
    cut_by_limit = answer["usage"]["completion_tokens"] == 3
    assert answer["choices"][0]["finish_reason"] == ("length" if cut_by_limit else "stop")


# --------------------------------------------------------------------------------------------------------------
# Malformed requests
# --------------------------------------------------------------------------------------------------------------


def test_server_rejects_bad_requests(llava):
    remote_image = {"type": "image_url", "image_url": {"url": "http://example.com/face.png"}}
    with serve_in_thread(llava, safety=NO_SAFETY) as server:
        url = server.base_url + "/chat/completions"
        status, body = post(url, {"messages": [{"role": "user", "content": [remote_image]}]})
        assert status == 400 and "data URL" in body["error"]["message"]
        assert post(url, {"messages": []})[0] == 400
        assert post(url, {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"})[0] == 400
        assert post(url, {"messages": [{"role": "user", "content": "hi"}], "n": 2})[0] == 400
        assert post(url, [1, 2])[0] == 400
        status, body = post(url, b"{not json")
        assert status == 400 and "invalid JSON" in body["error"]["message"]
        status, body = post(server.base_url + "/nope", {"messages": []})
        assert status == 404 and body["error"]["type"] == "not_found_error"
        # Through the client: a 4xx is not retried.
        with pytest.raises(EndpointError, match="400"):
            EndpointBackend(server.base_url, "m", max_retries=3, backoff=0.001).chat(
                [{"role": "user", "content": [{"type": "image"}]}], [face()], GenerationConfig(max_new_tokens=0)
            )


@pytest.mark.parametrize("length", ["-5", "abc", "12abc", "1e3"])
def test_negative_or_malformed_content_length_is_400_not_a_hang(length):
    backend = CountingBackend()
    with serve_in_thread(backend, safety=NO_SAFETY) as server:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
        status, _ = raw_exchange(server.port, head)
    assert status == 400 and backend.calls == 0


def test_too_large_body_is_413_before_it_is_read():
    backend = CountingBackend()
    with serve_in_thread(backend, safety=NO_SAFETY, max_body_bytes=1000) as server:
        # Declared too large: refused from the headers, without sending (or reading) the body.
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
        assert raw_exchange(server.port, head)[0] == 413
        # Sent for real, just over the limit.
        body = json.dumps({"messages": [{"role": "user", "content": "x" * 1200}]}).encode()
        assert post(server.base_url + "/chat/completions", body)[0] == 413
        # Chunked (no Content-Length): counted while read.
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        assert raw_exchange(server.port, head, chunked)[0] == 413
    assert backend.calls == 0


def test_api_key_is_checked_before_the_body_is_read():
    backend = CountingBackend()
    with serve_in_thread(backend, safety=NO_SAFETY, api_key="s3cret") as server:
        # A body is announced but never sent: only a server that answers from the headers replies in time.
        for authorization in ("", "Authorization: Bearer wrong\r\n", "Authorization: s3cret\r\n"):
            head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{authorization}Content-Length: 400\r\n\r\n"
            status, answer = raw_exchange(server.port, head)
            assert status == 401 and b"s3cret" not in answer
        assert raw_exchange(server.port, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 401
        ok = EndpointBackend(server.base_url, "m", api_key="s3cret", max_retries=0)
        assert ok.chat(text_messages("hi"), None, GREEDY)
        wrong = EndpointBackend(server.base_url, "m", api_key="nope", max_retries=2, backoff=0.001)
        with pytest.raises(EndpointError, match="401") as error:
            wrong.chat(text_messages("hi"), None, GREEDY)
        assert "nope" not in str(error.value) and "nope" not in repr(wrong)
    assert backend.calls == 1


# --------------------------------------------------------------------------------------------------------------
# Crisis screening
# --------------------------------------------------------------------------------------------------------------


def test_risky_user_turn_gets_the_referral_and_the_model_is_not_called(caplog):
    backend = CountingBackend()
    referral = SafetySession().referral_text
    with serve_in_thread(backend) as server, caplog.at_level(logging.DEBUG):
        url = server.base_url + "/chat/completions"
        status, body = post(url, {"messages": [{"role": "user", "content": f"{RISKY} zebra-4417"}]})
        assert status == 200 and body["choices"][0]["message"]["content"] == referral
        assert body["choices"][0]["finish_reason"] == "stop" and backend.calls == 0
        # Stateless requests: the risky turn is in the history, the last turn retracts it; still the referral.
        history = [
            {"role": "user", "content": RISKY},
            {"role": "assistant", "content": referral},
            {"role": "user", "content": "Sorry, I didn't mean it. Can we talk about my job?"},
        ]
        assert post(url, {"messages": history})[1]["choices"][0]["message"]["content"] == referral
        # Streamed too.
        streamed = urllib.request.urlopen(
            urllib.request.Request(url, json.dumps({"messages": history, "stream": True}).encode()), timeout=10
        ).read()
        assert backend.calls == 0 and b"988" in streamed
        # A safe conversation reaches the model.
        status, body = post(url, {"messages": [{"role": "user", "content": "Work was stressful this week."}]})
        assert body["choices"][0]["message"]["content"] == backend.reply and backend.calls == 1
    assert "zebra-4417" not in caplog.text and "kill myself" not in caplog.text  # client text is not logged


def test_ambiguous_turn_gets_the_safety_question_across_stateless_requests():
    backend = CountingBackend()
    question = SafetySession().check_in.question
    with serve_in_thread(backend) as server:
        url = server.base_url + "/chat/completions"
        history = [{"role": "user", "content": "I can't take this anymore."}]
        assert post(url, {"messages": history})[1]["choices"][0]["message"]["content"] == question
        history.append({"role": "assistant", "content": question})
        no = post(url, {"messages": [*history, {"role": "user", "content": "No, I just mean work."}]})[1]
        assert no["choices"][0]["message"]["content"] == backend.reply and backend.calls == 1
        yes = post(url, {"messages": [*history, {"role": "user", "content": "yes"}]})[1]
        assert yes["choices"][0]["message"]["content"] == SafetySession().referral_text and backend.calls == 1


def test_no_safety_serves_the_raw_model_on_loopback_only(tmp_path):
    backend = CountingBackend()
    with serve_in_thread(backend, safety=NO_SAFETY) as server:
        body = post(server.base_url + "/chat/completions", {"messages": [{"role": "user", "content": RISKY}]})[1]
    assert body["choices"][0]["message"]["content"] == backend.reply and backend.calls == 1
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host)
        check_no_safety_host(host)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(ValueError, match="--no_safety"):
            check_no_safety_host(host)
    with pytest.raises(ValueError, match="--no_safety"):
        with serve_in_thread(backend, host="0.0.0.0", safety=NO_SAFETY):
            pass
    # The command itself refuses before loading anything (the model path does not even exist).
    with pytest.raises(ValueError, match=r"refused on '0\.0\.0\.0'"):
        main(ModelLoadArguments(model=str(tmp_path / "nope")), ServeArguments(host="0.0.0.0", no_safety=True),
             GenerationConfig())  # fmt: skip


def test_replies_name_a_local_model_by_its_folder_and_crisis_replies_carry_usage(tmp_path):
    backend = CountingBackend()
    backend.name = str(tmp_path / "mirror-tiny-therapist")
    (tmp_path / "mirror-tiny-therapist").mkdir()
    with serve_in_thread(backend) as server:
        with urllib.request.urlopen(server.base_url + "/models", timeout=5) as response:
            assert [model["id"] for model in json.load(response)["data"]] == ["mirror-tiny-therapist"]
        status, body = post(server.base_url + "/chat/completions", {"messages": [{"role": "user", "content": RISKY}]})
    assert status == 200 and body["model"] == "mirror-tiny-therapist" and backend.calls == 0
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_port_in_use_fails_before_the_model_loads(tiny_llava_dir, monkeypatch):
    import inference.backends

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(inference.backends, "load_backend", must_not_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"^port {port} is in use; pick another --port \(0 = a free one\)$"):
            main(ModelLoadArguments(model=str(tiny_llava_dir)), ServeArguments(port=port), GenerationConfig())


# --------------------------------------------------------------------------------------------------------------
# The subcommand
# --------------------------------------------------------------------------------------------------------------


def test_arguments_follow_the_subcommand_contract():
    assert ARGUMENTS[0] is ModelLoadArguments and ServeArguments in ARGUMENTS
    for config_class in ARGUMENTS:
        for item in fields(config_class):
            assert item.metadata.get("help"), (config_class.__name__, item.name)
    assert ServeArguments().host == "127.0.0.1" and not ServeArguments().no_safety


@pytest.mark.parametrize("case", ["missing", "dataset", "unknown_id_offline", "no_safety_remote"])
def test_startup_errors_are_one_line_and_exit_2(case, tmp_path, sample_dataset_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the subprocess must not reach the Hub
    models = {
        "missing": str(tmp_path / "no-such-model"),
        "dataset": str(sample_dataset_dir),
        "unknown_id_offline": "nobody-here/no-such-mirror-model",
    }
    model = models.get(case, "x")
    argv = ["serve", "--model", model, "--port", "0"]
    if case == "no_safety_remote":
        argv += ["--host", "0.0.0.0", "--no_safety"]
    code = "import sys, mirror_cli; sys.exit(mirror_cli.main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mirror serve: error:"), result.stderr
