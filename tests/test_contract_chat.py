import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.contract import events as cp
from engine.contract.framing import ProtocolError


def test_a_request_round_trips_and_leaves_unset_settings_to_the_engine():
    request = cp.ChatRequest(id=7, prompt="Hi", temperature=0.5, chat=True)
    line = request.to_json()
    assert json.loads(line) == {"id": 7, "prompt": "Hi", "temperature": 0.5, "chat": True}
    assert cp.parse_chat_request(line) == request


@pytest.mark.parametrize(
    ("line", "message", "rid"),
    [
        ("not json", "not JSON", None),
        ("[1, 2]", "JSON object", None),
        ('{"id": 3, "promt": "x"}', "unknown request field 'promt'", 3),
        ('{"id": "a", "prompt": 5}', "'prompt' must be str", "a"),
        ('{"id": 1, "prompt": "x", "max_tokens": 2.5}', "'max_tokens' must be int", 1),
        ('{"id": 1, "prompt": "x", "top_k": true}', "'top_k' must be int", 1),
        ('{"id": 1, "prompt": "x", "chat": 1}', "'chat' must be bool", 1),
        ('{"id": 2}', "needs a 'prompt'", 2),
    ],
)
def test_bad_requests_name_the_field_and_keep_the_id(line, message, rid):
    with pytest.raises(cp.ChatRequestError, match=message) as caught:
        cp.parse_chat_request(line)
    assert caught.value.id == rid


def test_a_reset_alone_is_a_request():
    assert cp.parse_chat_request('{"reset": true}') == cp.ChatRequest(reset=True)


@given(st.text(), st.one_of(st.integers(), st.text(), st.none()))
def test_token_replies_round_trip_any_text(text, rid):
    reply = cp.ChatToken(id=rid, text=text)
    line = reply.to_json()
    assert "\n" not in line
    assert cp.parse_chat_reply(line) == reply


def test_every_reply_shape_parses_back():
    for reply in (
        cp.ChatReady(checkpoint="runs/a/checkpoints/best.pt", step=5, params=123, block_size=64),
        cp.ChatEnd(id=1, tokens=10, tokens_per_s=12.5, truncated_prompt=True),
        cp.ChatError(id=None, message="bad"),
    ):
        record = json.loads(reply.to_json())
        assert record["type"] == reply.type
        assert cp.parse_chat_reply(reply.to_json()) == reply


def test_unknown_replies_are_refused():
    with pytest.raises(ProtocolError, match="unknown message type"):
        cp.parse_chat_reply('{"type": "nope"}')
