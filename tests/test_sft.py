"""Supervised fine-tuning end to end: a tiny model pretrained on text, fine-tuned on chat data
through `train.init_from`, answers a question it never saw from the pattern of those it did, and
`engine.generate` holds a conversation with it through the template."""

import io
import json
import random
from pathlib import Path

import pytest

from engine import checkpoint
from engine.chat import ChatSession, repl
from engine.chat_template import ChatTokenizer
from engine.contract import config
from engine.contract.sampling import Sampling
from engine.generate import __main__ as generate_cli
from engine.tokenizer import CharTokenizer, from_spec
from engine.train import train

pytestmark = pytest.mark.slow

GREET = {"hello": "hi {}!", "bye": "see you, {}."}
HELD = ("bye", "gus")  # never asked in training; "gus" only ever greeted with hello
GREEDY = Sampling(max_tokens=16, temperature=0)


def names() -> list[str]:
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    found = {"".join(rng.choice(letters) for _ in range(3)) for _ in range(300)}
    return [*sorted(found - {"gus", "zed"}), "gus"]


def run_cfg(tmp: Path, name: str, source: Path, steps: int, init: str = "") -> config.Config:
    cfg = config.Config(name=name, out_dir=str(tmp / "runs"))
    cfg.model = config.ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)
    cfg.tokenizer = config.TokenizerConfig(kind="char")
    cfg.data = config.DataConfig(source=str(source), val_fraction=0.1,
                                 cache_dir=str(tmp / "cache"), num_workers=1)  # fmt: skip
    cfg.train = config.TrainConfig(
        device="cpu", batch_size=16, max_steps=steps, lr=3e-3, min_lr=3e-4, warmup_steps=10,
        eval_interval=steps, eval_steps=2, sample_interval=steps, sample_prompts=["hello abc"],
        sample_tokens=12, init_from=init,
    )  # fmt: skip
    cfg.checkpoint.interval = steps
    cfg.log.interval = 50
    return config.validate(cfg)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sft")
    pairs = [(g, n) for n in names() for g in GREET if (g, n) != HELD]
    text = "\n".join(f"{g} {n}. {GREET[g].format(n)}" for g, n in pairs) * 2
    (tmp / "text.txt").write_text(text, encoding="utf-8")
    # pairs, and conversations with a system prompt and a second turn, in both layouts
    records = []
    for i, (g, n) in enumerate(pairs):
        if i % 2:
            records.append({"prompt": f"{g} {n}", "completion": GREET[g].format(n)})
            continue
        messages = [{"role": "system", "content": "be kind"}] if i % 4 == 0 else []
        for g2, n2 in pairs[i : i + 2]:
            messages += [{"role": "user", "content": f"{g2} {n2}"},
                         {"role": "assistant", "content": GREET[g2].format(n2)}]  # fmt: skip
        records.append({"messages": messages})
    (tmp / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records * 2))
    train(run_cfg(tmp, "base", tmp / "text.txt", 60), quiet=True)
    train(run_cfg(tmp, "sft", tmp / "qa.jsonl", 400, init=str(tmp / "runs" / "base")), quiet=True)
    return tmp / "runs" / "sft"


def session(run: Path, system: str = "") -> ChatSession:
    state = checkpoint.load_weights(run)
    return ChatSession(checkpoint.build_model(state), from_spec(state["tokenizer"]), system)


def test_fine_tuning_a_base_model_on_chat_data_adds_the_chat_tokens(tuned):
    state = checkpoint.load_weights(tuned)
    tok = from_spec(state["tokenizer"])
    assert isinstance(tok, ChatTokenizer) and isinstance(tok.base, CharTokenizer)
    assert state["config"]["model"]["vocab_size"] >= tok.vocab_size
    base = checkpoint.load_weights(tuned.parent / "base")
    assert from_spec(base["tokenizer"]).spec() == tok.base.spec()
    log = (tuned / "metrics.jsonl").read_text()
    sample = [json.loads(line) for line in log.splitlines() if '"sample"' in line][-1]
    # live samples ask as a user and stop at <|end|> (sampled, so only the shape is certain)
    assert sample["text"].startswith("hi ") and "<|" not in sample["text"]


def test_the_tuned_model_answers_a_held_out_question_from_the_pattern(tuned):
    chat = session(tuned)
    assert "".join(chat.reply("bye gus", GREEDY)) == "see you, gus."
    assert "".join(chat.reply("bye zed", GREEDY)) == "see you, zed."  # a name never seen
    assert chat.last.finish == "stop"


def test_generate_holds_a_multi_turn_conversation_through_the_template(tuned):
    chat = session(tuned, system="be kind")
    seen = []

    def read(_: str) -> str:
        seen.append(list(chat.turns))
        return ["hello zed", "bye gus", "/system", "quit"][len(seen) - 1]

    out = io.StringIO()
    repl(chat, GREEDY, read=read, out=out)
    text = out.getvalue()
    assert "hi zed!\n" in text and "\nsee you, " in text  # the second answer fits its question
    # the second question was asked with the first turn in context; /system forgot them
    assert seen[2] == [
        {"role": "user", "content": "hello zed"}, {"role": "assistant", "content": "hi zed!"},
        {"role": "user", "content": "bye gus"}, seen[2][3],
    ]  # fmt: skip
    assert "system prompt set to none" in text and chat.turns == []


def test_the_generate_command_answers_a_chat_prompt(tuned, capsys):
    args = [str(tuned), "--prompt", "bye gus", "--temperature", "0", "--max-tokens", "16"]
    assert generate_cli.main(args) == 0
    assert capsys.readouterr().out == "see you, gus.\n"


def test_the_studio_pipe_says_a_model_is_chat_tuned_and_takes_a_system_prompt(tuned):
    import io as _io

    from engine.chat import serve

    chat = session(tuned)
    lines = [
        '{"id": 1, "prompt": "bye gus", "temperature": 0, "max_tokens": 16, "system": "be kind"}',
    ]
    out = _io.StringIO()
    serve(chat, GREEDY, source=str(tuned), step=400, lines=lines, out=out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert replies[0]["type"] == "ready" and replies[0]["chat_tuned"] is True
    assert chat.system == "be kind"
    assert "<|" not in "".join(r.get("text", "") for r in replies if r["type"] == "token")
    assert replies[-1]["type"] == "end"
