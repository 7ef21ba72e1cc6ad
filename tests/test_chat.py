import dataclasses
import io
import json

import pytest
import torch

from engine.chat import SETTINGS, ChatSession, repl, serve
from engine.contract import events as cp
from engine.contract.config import ModelConfig
from engine.contract.sampling import LIMITS, Sampling
from engine.generate import generate
from engine.model import GPT
from engine.tokenizer import CharTokenizer

TOK = CharTokenizer.train(["the cat sat on a mat\n"])
GREEDY = Sampling(max_tokens=6, temperature=0)


@pytest.fixture
def session():
    torch.manual_seed(1)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=24, vocab_size=64)
    model = GPT(cfg).eval()
    with torch.no_grad():  # sharper than the initial weights, so replies vary with the context
        for p in model.parameters():
            p.mul_(3.0)
    return ChatSession(model, TOK)


def run_repl(session, lines, sampling=GREEDY):
    feed = iter(lines)

    def read(prompt):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    code = repl(session, sampling, read=read, out=out)
    return code, out.getvalue()


def test_repl_prints_each_reply_as_the_model_continues_the_prompt(session):
    code, out = run_repl(session, ["the cat", "quit"])
    assert code == 0
    assert generate(session.model, TOK, "the cat", 6, temperature=0) + "\n" in out


def test_repl_commands_change_the_settings_and_bad_ones_say_why(session):
    _, out = run_repl(
        session, ["/temp 0", "/tokens 3", "/topk 5", "/topp 0.9", "/topp 2", "/temp x", "/nope"]
    )
    assert "temperature = 0.0" in out and "max tokens = 3" in out
    assert "top k = 5" in out and "top p = 0.9" in out
    assert "error: top-p must be above 0 and at most 1" in out
    assert "error: /temp takes a number, got 'x'" in out
    assert "error: unknown command /nope" in out


def test_repl_settings_take_their_types_and_limits_from_the_one_sampling_definition(session):
    _, out = run_repl(session, ["/help", "/penalty 1.3", "/penalty 0", "/tokens 2.5"])
    for command, name in SETTINGS.items():  # /help says what each accepts, as LIMITS does
        assert f"{LIMITS[name].label}: {LIMITS[name].describe()}" in out, command
    assert "repetition penalty = 1.3" in out
    assert "error: repetition penalty must be above 0 (1: off), got 0.0" in out
    assert "error: /tokens takes a whole number, got '2.5'" in out


def test_repl_tokens_setting_limits_the_reply(session):
    _, out = run_repl(session, ["/tokens 2", "the"], Sampling(max_tokens=20, temperature=0))
    reply = generate(session.model, TOK, "the", 2, temperature=0)
    assert "\n" + reply + "\n" in out.replace("> ", "")


def test_chat_mode_keeps_the_conversation_in_context_and_reset_forgets_it(session):
    first = generate(session.model, TOK, "the cat", 6, temperature=0)
    second = generate(session.model, TOK, f"the cat{first}\na mat", 6, temperature=0)
    _, out = run_repl(session, ["/chat on", "the cat", "a mat"])
    assert second != generate(session.model, TOK, "a mat", 6, temperature=0)  # context matters
    assert session.history == f"the cat{first}\na mat{second}"
    assert out.endswith(second + "\n\n")  # the last newline is the goodbye on end of input
    run_repl(session, ["/reset"])
    assert session.history == ""


def test_chat_off_treats_each_prompt_alone(session):
    _, out = run_repl(session, ["the cat", "a mat"])
    assert session.history == ""
    assert generate(session.model, TOK, "a mat", 6, temperature=0) + "\n" in out


def test_repl_reports_a_prompt_it_cannot_encode_and_carries_on(session):
    _, out = run_repl(session, ["the dog", "the cat"])
    assert "error: character 'd' is not in the char tokenizer's vocabulary" in out
    assert generate(session.model, TOK, "the cat", 6, temperature=0) in out


def serve_lines(session, requests, sampling=GREEDY):
    out = io.StringIO()
    lines = [r if isinstance(r, str) else json.dumps(r) for r in requests]
    assert serve(session, sampling, source="ckpt.pt", step=3, lines=lines, out=out) == 0
    return [cp.parse_chat_reply(line) for line in out.getvalue().splitlines()]


def test_serve_streams_tokens_then_an_end_for_each_request(session):
    replies = serve_lines(session, [{"id": 1, "prompt": "the cat", "max_tokens": 5}])
    ready, *tokens, end = replies
    assert ready == cp.ChatReady("ckpt.pt", 3, session.model.num_params(), 24)
    assert all(isinstance(t, cp.ChatToken) and t.id == 1 for t in tokens)
    expected = generate(session.model, TOK, "the cat", 5, temperature=0)
    assert "".join(t.text for t in tokens) == expected
    assert end == cp.ChatEnd(1, len(expected), end.tokens_per_s, False) and end.tokens_per_s > 0


def test_serve_answers_a_bad_request_with_an_error_and_keeps_serving(session):
    replies = serve_lines(
        session,
        [
            "{oops",
            {"id": 2, "prompt": "x", "temperature": -1},
            {"id": 3, "prompt": "the dog"},
            {"id": 4, "prompt": "the", "max_tokens": 2},
        ],
    )
    errors = [r for r in replies if isinstance(r, cp.ChatError)]
    assert [e.id for e in errors] == [None, 2, 3]
    assert "temperature must be from 0 to 5" in errors[1].message
    assert isinstance(replies[-1], cp.ChatEnd) and replies[-1].id == 4


def test_serve_request_settings_override_the_defaults(session):
    sampled = Sampling(max_tokens=6, temperature=1.5, top_k=0, seed=9)
    replies = serve_lines(
        session, [{"id": 1, "prompt": "a", "max_tokens": 3, "temperature": 0}], sampled
    )
    text = "".join(r.text for r in replies if isinstance(r, cp.ChatToken))
    assert text == generate(session.model, TOK, "a", 3, temperature=0)


def test_serve_chat_requests_share_a_conversation_until_reset(session):
    replies = serve_lines(
        session,
        [
            {"id": "a", "prompt": "the cat", "chat": True},
            {"id": "b", "prompt": "a mat", "chat": True},
            {"id": "r", "reset": True},
        ],
    )
    first = generate(session.model, TOK, "the cat", 6, temperature=0)
    second = "".join(r.text for r in replies if isinstance(r, cp.ChatToken) and r.id == "b")
    assert second == generate(session.model, TOK, f"the cat{first}\na mat", 6, temperature=0)
    assert replies[-1] == cp.ChatEnd("r", 0, 0.0, False) and session.history == ""


def test_serve_reports_a_truncated_prompt(session):
    long = "the cat sat on a mat " * 3
    replies = serve_lines(session, [{"id": 1, "prompt": long, "max_tokens": 2}])
    assert replies[-1].truncated_prompt is True


def test_a_reply_cut_short_still_joins_the_conversation(session):
    pieces = session.reply("the cat", dataclasses.replace(GREEDY, max_tokens=6), chat=True)
    shown = next(pieces)
    pieces.close()  # what Ctrl-C does to the terminal's loop
    assert session.history == "the cat" + shown
