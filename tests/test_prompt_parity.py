"""Training and inference cannot drift apart: replaying a dataset session through `MirrorTherapist` sends the model
exactly the user turn of the dataset's `sft` row for every therapist turn, for every variant."""

import pytest

from inference.backends.base import GenerationConfig
from inference.prompts import load_prompt
from inference.safety import SafetyConfig
from inference.therapist import MirrorTherapist


class ReplayBackend:
    """Answers each reply request with the dataset's therapist statement (so the history stays the dataset's)
    and each emotion-caption request with the current stage direction; records what it was sent."""

    name = "replay"
    supports_images = True

    def __init__(self, therapist_statements, stage_directions):
        self.statements, self.directions = list(therapist_statements), list(stage_directions)
        self.calls = []

    def chat(self, messages, images=None, config=None):
        return self.chat_batch([messages], [images or []], config)[0]

    def chat_batch(self, conversations, images=None, config=None):
        replies = []
        for messages, imgs in zip(conversations, images or [[] for _ in conversations], strict=True):
            self.calls.append((messages, imgs))
            text = " ".join(b["text"] for b in messages[-1]["content"] if b["type"] == "text")
            is_caption = text.strip() == load_prompt()["emotion_caption_instruction"].strip()
            replies.append(self.directions.pop(0) if is_caption else self.statements.pop(0))
        return replies


@pytest.fixture(scope="module")
def dataset(sample_dataset_dir):
    from datasets import load_dataset

    return (load_dataset(str(sample_dataset_dir), split="train"),
            load_dataset(str(sample_dataset_dir), "sft", split="train"))


@pytest.mark.parametrize("variant", ["base", "planning", "ec_planning", "text"])
@pytest.mark.parametrize("session_index", [0, 13])
def test_replayed_session_sends_the_sft_prompts(dataset, variant, session_index):
    sessions, sft = dataset
    session_row = sessions[session_index]
    turns = session_row["turns"]
    assert turns[0]["speaker"] == "client"
    expected = sft.filter(lambda r: r["session_id"] == session_row["id"] and r["variant"] == variant
                          and r["task"] == "response").sort("turn_index")
    backend = ReplayBackend(
        [t["statement"] for t in turns if t["speaker"] == "therapist"],
        [t["stage_direction"] for t in turns if t["speaker"] == "client"],
    )
    therapist = MirrorTherapist(backend, variant, GenerationConfig(temperature=0.0),
                                safety=SafetyConfig(use_embeddings=False))
    session = therapist.start_session(session_row["client"], cbt_technique=session_row["cbt_technique"],
                                      cbt_plan=session_row["cbt_plan"])
    sent = []
    for index, turn in enumerate(turns):
        if turn["speaker"] != "client":
            continue
        if index + 1 >= len(turns):
            break  # the session ends on the client: no therapist reply to compare
        reply = session.respond(turn["statement"], image=turn["image"], stage_direction=turn["stage_direction"])
        assert reply.text == turns[index + 1]["statement"]
        sent.append(reply)
    assert len(sent) == len(expected) > 0
    for reply, row in zip(sent, expected, strict=True):
        assert reply.messages == row["messages"][:1], row["id"]
        if variant != "text":  # the image sent is the client's face of that turn, as in the sft row
            (images,) = [i for m, i in backend.calls if m == reply.messages]
            assert list(images[0].getdata()) == list(row["images"][0].getdata())
