"""Chat data through the pipeline: conversations from JSONL and parquet, a mask byte per token
carried into the shards, rows that start at conversations, and targets only on answers."""

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import data
from engine.chat_template import ChatTokenizer, encode_chat
from engine.contract import config
from engine.contract.errors import UsageError
from engine.data import sources, tokens
from engine.data.loaders import ShardLoader
from engine.tokenizer import CharTokenizer

NAMES = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo"]


def pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        out.append((f"what is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def conversations(n: int = 300) -> list[dict]:
    out = []
    for i, (q, a) in enumerate(pairs(n)):
        messages = [{"role": "system", "content": f"you are {NAMES[i % 10]}."}] if i % 2 else []
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        out.append({"messages": messages})
    return out


def make_cfg(tmp_path: Path, source: Path | str, **data_over) -> config.Config:
    cfg = config.Config(name="c", out_dir=str(tmp_path / "runs"))
    cfg.model = config.ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=48)
    cfg.tokenizer = config.TokenizerConfig(kind="char")
    cfg.data = config.DataConfig(source=str(source), val_fraction=0.2,
                                 cache_dir=str(tmp_path / "cache"), num_workers=1, **data_over)  # fmt: skip
    cfg.train = config.TrainConfig(device="cpu", batch_size=8, seed=3)
    return config.validate(cfg)


def test_a_messages_jsonl_is_found_to_be_chat_and_a_text_file_is_not(tmp_path):
    chat = write_jsonl(tmp_path / "c.jsonl", conversations(5))
    text = tmp_path / "t.txt"
    text.write_text("hello\n")
    assert sources.resolve(str(chat)).chat
    assert not sources.resolve(str(text)).chat
    assert not sources.resolve(str(chat), format="text").chat
    with pytest.raises(UsageError, match="is plain text"):
        sources.resolve(str(text), format="chat")
    assert sources.resolve("builtin:chat").chat


def test_jsonl_pairs_and_parquet_give_the_same_tokens_and_masks(tmp_path):
    qa = pairs(200)
    by_messages = write_jsonl(
        tmp_path / "m.jsonl",
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
         for q, a in qa],
    )  # fmt: skip
    by_pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": q, "completion": a} for q, a in qa])
    pq.write_table(
        pa.table({"prompt": [q for q, _ in qa], "completion": [a for _, a in qa]}),
        tmp_path / "p.parquet", row_group_size=64,
    )  # fmt: skip
    pq.write_table(
        pa.table({"messages": [
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in qa
        ]}),
        tmp_path / "m.parquet",
    )  # fmt: skip
    tok = ChatTokenizer(CharTokenizer.train(["".join(q + a for q, a in qa)]))
    got = []
    for path in (by_messages, by_pairs, tmp_path / "p.parquet", tmp_path / "m.parquet"):
        source = sources.resolve(str(path))
        assert source.chat
        units = [tokens.encode_unit(tok, u, 0.0, "H") for u in source.units]
        got.append(
            (
                [t for u in units for t in u.train.tolist()],
                [m for u in units for m in u.train_mask.tolist()],
            )
        )
    assert all(g == got[0] for g in got[1:])


def test_the_mask_marks_exactly_the_assistant_tokens_in_the_shards(tmp_path):
    records = conversations()
    cfg = make_cfg(
        tmp_path,
        write_jsonl(tmp_path / "c.jsonl", records),
    )
    prepared = data.prepare(cfg)
    tok = prepared.tokenizer
    assert isinstance(tok, ChatTokenizer) and prepared.manifest["chat"]
    ds = prepared.dataset
    ids = np.concatenate([np.fromfile(s.path, dtype=ds.dtype) for s in ds.shards("train")])
    mask = np.concatenate([np.fromfile(s.path, dtype=np.uint8) for s in ds.masks("train")])
    assert len(ids) == len(mask)
    trained_text = tok.decode(ids[(mask & tokens.TRAINED) > 0].tolist())
    answers = {r["messages"][-1]["content"] + "<|end|>" for r in records}
    pieces = trained_text.split("<|end|>")[:-1]
    assert pieces and all(p + "<|end|>" in answers for p in pieces)
    starts = np.flatnonzero(mask & tokens.START)
    assert len(starts) == prepared.manifest["splits"]["train"]["documents"]
    assert set(ids[starts].tolist()) <= {tok.role_id("system"), tok.role_id("user")}


def test_rows_start_at_a_conversation_and_only_answers_are_targets(tmp_path):
    cfg = make_cfg(tmp_path, write_jsonl(tmp_path / "c.jsonl", conversations()))
    prepared = data.prepare(cfg)
    tok = prepared.tokenizer
    loader = ShardLoader(prepared.dataset, "train", batch_size=8, block_size=48, seed=1)
    for _ in range(5):
        x, y = loader.next()
        assert set(x[:, 0].tolist()) <= {tok.role_id("system"), tok.role_id("user")}
        for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
            ids = [*row_x, None]
            for j, target in enumerate(row_y):
                if target == -1:
                    continue
                # a target is an answer token: after the latest role tag comes "assistant"
                tags = [t for t in ids[: j + 1] if t in tok.special_ids.values()]
                last_role = next(t for t in reversed(tags) if t != tok.end_id)
                assert last_role == tok.role_id("assistant")
        assert (y != -1).any()


def test_held_out_conversations_are_whole_and_apart_from_training(tmp_path):
    records = conversations()
    cfg = make_cfg(tmp_path, write_jsonl(tmp_path / "c.jsonl", records))
    prepared = data.prepare(cfg)
    splits = prepared.manifest["splits"]
    assert splits["val"]["documents"] > 10 and splits["train"]["documents"] > 100
    assert splits["val"]["documents"] + splits["train"]["documents"] == len(records)
    ds, tok = prepared.dataset, prepared.tokenizer

    def texts(split):
        ids = np.concatenate([np.fromfile(s.path, dtype=ds.dtype) for s in ds.shards(split)])
        return tok.decode(ids.tolist()).split("<|endoftext|>")[:-1]

    train, val = texts("train"), texts("val")
    assert len(val) == splits["val"]["documents"]
    assert not set(train) & set(val)  # a repeated conversation stays on one side


def test_the_template_in_the_shards_is_the_template_of_generation(tmp_path):
    records = conversations(20)
    cfg = make_cfg(
        tmp_path,
        write_jsonl(tmp_path / "c.jsonl", records),
    )
    cfg.data.val_fraction = 0.0
    prepared = data.prepare(cfg)
    ds = prepared.dataset
    ids = np.concatenate([np.fromfile(s.path, dtype=ds.dtype) for s in ds.shards("train")])
    tok = prepared.tokenizer
    expected = []
    for r in records:
        expected += [*encode_chat(tok, r["messages"]).ids, tok.eot_id]
    assert ids.tolist() == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"messages": [{"role": "robot", "content": "x"}]}', r"c.jsonl:2: message 0 has role"),
        ('{"text": "plain"}', r"c.jsonl:2: no 'messages' nor 'prompt' and 'completion'"),
    ],
)
def test_a_bad_conversation_record_names_its_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(conversations(1)[0]) + "\n" + line + "\n")
    cfg = make_cfg(tmp_path, path)
    with pytest.raises(UsageError, match=message):
        data.prepare(cfg)


def test_chat_data_is_not_streamed(tmp_path):
    cfg = make_cfg(tmp_path, write_jsonl(tmp_path / "c.jsonl", conversations(20)), streaming=True)
    tok = data.build_tokenizer_for(cfg)
    with pytest.raises(UsageError, match="prepared, not streamed"):
        data.make_loaders(cfg, None, tok)
