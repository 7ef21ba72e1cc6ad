"""The chat template: our ids are transformers' `apply_chat_template` ids, for every tokenizer
kind, and only the assistant's tokens are marked for training."""

import pytest

from engine import chat_template, export
from engine.chat_template import END, ChatTokenizer, encode_chat, with_chat
from engine.contract.errors import UsageError
from engine.tokenizer import BPETokenizer, CharTokenizer, TiktokenTokenizer, from_spec

transformers = pytest.importorskip("transformers")

TEXT = "What is a list? A list holds items in order. Hello there, café 😀 <|user|> ok\n" * 20
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is a list?"},
    {"role": "assistant", "content": "A list holds items in order."},
    {"role": "user", "content": "Hello there, café 😀"},
    {"role": "assistant", "content": "Hello! <|user|> ok"},  # a literal tag stays text for us
]


EVERY = "".join(m["content"] for m in CONVERSATION)
TOKENIZERS = {  # each built only when its tests run
    "char": lambda: CharTokenizer.train([TEXT, EVERY]),
    "bpe": lambda: BPETokenizer.train([TEXT], 300),
    "tiktoken": lambda: TiktokenTokenizer("cl100k_base"),
}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def chat_tok(request) -> ChatTokenizer:
    return with_chat(TOKENIZERS[request.param]())


@pytest.fixture(scope="module")
def theirs(chat_tok, tmp_path_factory):
    """transformers' tokenizer read from our export of `chat_tok`, once per kind (loading
    cl100k's export takes seconds)."""
    folder = tmp_path_factory.mktemp("hf")
    export.write_tokenizer(folder, chat_tok, block_size=256)
    return transformers.AutoTokenizer.from_pretrained(folder)


def test_chat_tokens_take_the_ids_past_the_base_vocabulary(chat_tok):
    base = chat_tok.base.vocab_size
    assert sorted(chat_tok.special_ids.values()) == list(range(base, base + 4))
    assert chat_tok.vocab_size == base + 4
    assert len(chat_tok.token_bytes()) == chat_tok.vocab_size


def test_the_spec_round_trips_and_says_the_tokenizer_is_for_chat(chat_tok):
    again = from_spec(chat_tok.spec())
    assert isinstance(again, ChatTokenizer)
    assert again.spec() == chat_tok.spec()
    assert not isinstance(from_spec(chat_tok.base.spec()), ChatTokenizer)


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_template_ids_equal_transformers_apply_chat_template(chat_tok, theirs, generation_prompt):
    # our literal "<|user|>" in content is text; transformers would read it as the tag
    messages = CONVERSATION[:4]
    ours = encode_chat(chat_tok, messages, add_generation_prompt=generation_prompt).ids
    got = theirs.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    assert got == ours
    assert theirs.decode(ours) == chat_tok.decode(ours)


def test_the_loss_mask_covers_exactly_the_assistant_tokens_and_their_end(chat_tok):
    enc = encode_chat(chat_tok, CONVERSATION)
    trained = [i for i, t in zip(enc.ids, enc.trained, strict=True) if t]
    answers = []
    for m in CONVERSATION:
        if m["role"] == "assistant":
            answers += [*chat_tok.encode(m["content"]), chat_tok.end_id]
    assert trained == answers
    assert chat_tok.decode(enc.ids).count(END) == len(CONVERSATION)


def test_a_literal_tag_in_content_is_text_not_a_turn(chat_tok):
    ids = chat_tok.encode("<|user|>")
    assert chat_tok.role_id("user") not in ids
    assert chat_tok.decode(ids) == "<|user|>"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
        ({"messages": [{"role": "user"}]}, "text 'content'"),
        ({"prompt": 1, "completion": "x"}, "must both be text"),
    ],
)
def test_a_malformed_conversation_is_one_clear_error(record, message):
    with pytest.raises(UsageError, match=message):
        chat_template.messages_of(record, "f.jsonl:3")


def test_prompt_completion_pairs_become_a_user_and_an_assistant_turn():
    got = chat_template.messages_of({"prompt": "Q", "completion": "A", "system": "S"}, "x")
    assert [m["role"] for m in got] == ["system", "user", "assistant"]
    assert chat_template.messages_of({"text": "plain"}, "x") is None


def test_a_conversation_that_outgrows_the_context_drops_its_oldest_exchanges_whole():
    tok = with_chat(CharTokenizer.train([TEXT, *(m["content"] for m in CONVERSATION)]))
    system, turns = CONVERSATION[0]["content"], CONVERSATION[1:]
    whole = chat_template.context(tok, "ok?", room=10_000, system=system, turns=turns)
    assert whole == chat_template.render([*CONVERSATION, {"role": "user", "content": "ok?"}], True)
    # room for all but the first exchange: it goes, the system prompt and the question stay
    room = len(tok.encode(whole, allow_special=True)) - 1
    cut = chat_template.context(tok, "ok?", room=room, system=system, turns=turns)
    assert cut == chat_template.render(
        [CONVERSATION[0], *CONVERSATION[3:], {"role": "user", "content": "ok?"}], True
    )
    # no room at all: the question alone is still asked
    assert (
        chat_template.context(tok, "ok?", room=1, turns=turns) == "<|user|>ok?<|end|><|assistant|>"
    )
