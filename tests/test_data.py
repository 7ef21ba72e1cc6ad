import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from engine import data
from engine.contract import config
from engine.contract.errors import UsageError
from engine.data import shards, sources, split, tokens
from engine.data.loaders import ShardLoader
from engine.data.streaming import StreamingLoader

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "over", "under", "the"]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + "." for _ in range(n)]


def write_text(path: Path, n: int = 2000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sentences(n, seed)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def small_units(monkeypatch):
    """Work units of 256 KiB, so a small test file is shared out like a large one."""
    monkeypatch.setattr(sources, "UNIT_BYTES", 1 << 18)


def make_cfg(tmp_path: Path, source: Path | str, **over: object) -> config.Config:
    cfg = config.Config(name="d", out_dir=str(tmp_path / "runs"))
    cfg.model = config.ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=16)
    cfg.tokenizer = config.TokenizerConfig(kind="char")
    cfg.data = config.DataConfig(
        source=str(source), val_fraction=0.1, cache_dir=str(tmp_path / "cache"), num_workers=1
    )
    cfg.train = config.TrainConfig(device="cpu", batch_size=4, seed=3, warmup_steps=0)
    for dotted, value in over.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    return config.validate(cfg)


def shard_bytes(prepared: data.Prepared) -> dict[str, bytes]:
    return {
        s: b"".join(sh.path.read_bytes() for sh in prepared.dataset.shards(s))
        for s in shards.SPLITS
    }


# --- sources ---------------------------------------------------------------------------------------


def test_builtin_corpora_need_no_download():
    prose = sources.resolve("builtin:prose")
    code = sources.resolve("builtin:code")
    assert prose.total_bytes > 500_000 and code.total_bytes > 1_000_000
    first = next(sources.texts(prose))
    assert "statement" in first or "The" in first
    assert any("def " in t for _, t in zip(range(50), sources.texts(code), strict=False))
    with pytest.raises(UsageError, match="unknown built-in corpus 'builtin:poetry'"):
        sources.resolve("builtin:poetry")


def test_directory_source_reads_recursively_with_an_include_glob(tmp_path):
    write_text(tmp_path / "a" / "one.txt", 10)
    write_text(tmp_path / "a" / "deep" / "two.txt", 10, seed=1)
    (tmp_path / "a" / "skip.md").write_text("not me")
    source = sources.resolve(str(tmp_path / "a"), include="*.txt")
    assert sorted(Path(f.path).name for f in source.files) == ["one.txt", "two.txt"]
    assert all("not me" not in t for t in sources.texts(source))


def test_jsonl_and_parquet_sources_read_their_text_field(tmp_path):
    docs = sentences(50)
    jl = tmp_path / "docs.jsonl"
    jl.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)))
    assert list(sources.texts(sources.resolve(str(jl), text_column="body"))) == docs
    pf = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": docs, "n": list(range(50))}), pf, row_group_size=7)
    source = sources.resolve(str(pf))
    assert len(source.units) == 8  # one unit per row group: never a whole file at once
    assert list(sources.texts(source)) == docs


# --- bad input ---------------------------------------------------------------------------------------


def test_bad_sources_get_one_clear_error_naming_the_file(tmp_path):
    with pytest.raises(UsageError, match=r"nowhere\.txt does not exist"):
        sources.resolve(str(tmp_path / "nowhere.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UsageError, match=r"empty\.txt holds no text"):
        sources.resolve(str(tmp_path / "empty.txt"))
    (tmp_path / "md").mkdir()
    (tmp_path / "md" / "a.md").write_text("# hi")
    with pytest.raises(UsageError, match=r"no files matching data.include = '\*.txt'.*'\*.md'"):
        sources.resolve(str(tmp_path / "md"))
    with pytest.raises(UsageError, match="matches no files"):
        sources.resolve(str(tmp_path / "shards" / "*.parquet"))
    pf = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["x"]}), pf)
    with pytest.raises(UsageError, match=r"t\.parquet has no column 'text' \(columns: content\)"):
        _ = sources.resolve(str(pf)).units
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(UsageError, match=r"bad\.jsonl:2: not valid JSON"):
        list(sources.texts(sources.resolve(str(jl))))
    (tmp_path / "c.txt.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(UsageError, match="is compressed; decompress it first"):
        sources.resolve(str(tmp_path / "c.txt.gz"))


def test_a_corrupt_parquet_file_is_named_with_the_fix(tmp_path):
    pf = tmp_path / "broken.parquet"
    pf.write_bytes(b"PAR1 this is not parquet at all PAR1")
    with pytest.raises(
        UsageError, match=r"broken\.parquet is not a readable parquet file.*replace"
    ):
        _ = sources.resolve(str(pf)).units


def test_bytes_that_are_not_utf8_are_replaced_and_counted(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(
        ("hello world\n" * 200).encode() + b"bad \xff\xfe bytes\n" + b"more text\n" * 50
    )
    prepared = data.prepare(make_cfg(tmp_path, path))
    assert prepared.manifest["replaced_bytes"] == 2
    assert "\ufffd" in prepared.tokenizer.decode(list(range(prepared.tokenizer.vocab_size - 1)))


def test_a_single_line_larger_than_a_work_unit_is_prepared_whole(tmp_path, small_units):
    path = tmp_path / "one_line.txt"
    rng = random.Random(0)
    line = " ".join(rng.choice(WORDS) for _ in range(150_000))  # ~800 KB, no line end
    path.write_text(line, encoding="utf-8")
    cfg = make_cfg(tmp_path, path, data__num_workers=2)
    prepared = data.prepare(cfg)
    assert len(sources.resolve(str(path)).units) >= 2
    total = prepared.dataset.tokens("train") + prepared.dataset.tokens("val")
    assert total == len(line) + 1  # every character, plus the end-of-text after the document


def test_a_corrupt_shard_is_reported_with_the_fix(tmp_path):
    cfg = make_cfg(tmp_path, write_text(tmp_path / "c.txt"))
    prepared = data.prepare(cfg)
    shard = prepared.dataset.shards("train")[0].path
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 2)
    with pytest.raises(UsageError, match=rf"{shard.name} holds .* manifest expects .*--force"):
        data.prepare(cfg)
    assert data.prepare(cfg, force=True).dataset.tokens("train") == prepared.dataset.tokens("train")


# --- preparation -------------------------------------------------------------------------------------


def test_validation_split_is_stable_and_disjoint_from_training(tmp_path):
    path = write_text(tmp_path / "corpus.txt", 3000)
    source = sources.resolve(str(path))
    pieces = [piece for unit in source.units for piece in sources.read(unit)]
    keys = [piece.key for piece in pieces]
    assert keys == [p.key for unit in sources.resolve(str(path)).units for p in sources.read(unit)]
    val = {p.text for p in pieces if split.is_val(p.key, 0.1)}
    train = {p.text for p in pieces if not split.is_val(p.key, 0.1)}
    assert val and train and not val & train
    more_val = {p.text for p in pieces if split.is_val(p.key, 0.3)}
    assert val <= more_val  # raising val_fraction only moves text into validation


def test_shards_do_not_depend_on_the_number_of_workers(tmp_path, small_units):
    path = write_text(tmp_path / "corpus.txt", 10000)  # several work units
    one = data.prepare(make_cfg(tmp_path / "one", path, data__num_workers=1))
    two = data.prepare(make_cfg(tmp_path / "two", path, data__num_workers=2))
    assert len(sources.resolve(str(path)).units) > 1
    assert shard_bytes(one) == shard_bytes(two)
    m = one.manifest
    assert m["splits"]["val"]["tokens"] > 0 and m["splits"]["train"]["tokens"] > 0
    assert m["fingerprint"] and m["tokenizer"]["kind"] == "char" and m["dtype"] == "uint16"


def test_second_prepare_reuses_the_cache_and_a_change_invalidates_it(tmp_path):
    path = write_text(tmp_path / "corpus.txt", 500)
    cfg = make_cfg(tmp_path, path)
    first = data.prepare(cfg)
    again = data.prepare(cfg)
    assert not first.cached and again.cached and again.dir == first.dir
    write_text(path, 600, seed=5)  # new content: a new fingerprint
    changed = data.prepare(cfg)
    assert not changed.cached and changed.dir != first.dir
    cfg.tokenizer = config.TokenizerConfig(kind="bpe", vocab_size=300)
    retok = data.prepare(cfg)
    assert not retok.cached and retok.dir not in (first.dir, changed.dir)
    assert data.prepare(cfg).cached


def test_an_interrupted_prepare_leaves_nothing_a_later_run_trusts(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, write_text(tmp_path / "corpus.txt"))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "atomic_write_json", crash)  # dies just before the manifest
    with pytest.raises(KeyboardInterrupt):
        data.prepare(cfg)
    monkeypatch.undo()
    datasets = tmp_path / "cache" / "datasets"
    assert not any(datasets.iterdir())  # no half dataset, not even a temporary folder
    assert not data.prepare(cfg).cached


def test_token_width_follows_the_vocabulary():
    assert tokens.typecode(256) == "H" and tokens.typecode(65536) == "H"
    assert tokens.typecode(65537) == "I" and tokens.typecode(100277) == "I"


def test_tiktoken_datasets_are_stored_as_uint32(tmp_path):
    cfg = make_cfg(tmp_path, write_text(tmp_path / "c.txt", 200))
    cfg.tokenizer = config.TokenizerConfig(kind="tiktoken", name="cl100k_base")
    prepared = data.prepare(cfg)
    assert prepared.manifest["dtype"] == "uint32"
    ids = np.fromfile(prepared.dataset.shards("train")[0].path, dtype="<u4")
    assert ids.max() < 100277 and (ids == prepared.tokenizer.eot_id).sum() >= 1


def test_documents_are_separated_by_end_of_text(tmp_path):
    jl = tmp_path / "docs.jsonl"
    docs = sentences(40)
    jl.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    prepared = data.prepare(make_cfg(tmp_path, jl, data__val_fraction=0.0))
    ids = np.fromfile(prepared.dataset.shards("train")[0].path, dtype="<u2")
    eot = prepared.tokenizer.eot_id
    assert (ids == eot).sum() == 40 and ids[-1] == eot
    assert prepared.tokenizer.decode(ids.tolist()).split("<|endoftext|>")[:-1] == docs


# --- loaders ---------------------------------------------------------------------------------------


def prepared_corpus(tmp_path: Path) -> tuple[config.Config, data.Prepared]:
    cfg = make_cfg(tmp_path, write_text(tmp_path / "corpus.txt", 3000))
    return cfg, data.prepare(cfg)


def test_shard_batches_are_seeded_windows_of_block_size_plus_one(tmp_path):
    _, prepared = prepared_corpus(tmp_path)
    a = ShardLoader(prepared.dataset, "train", batch_size=4, block_size=16, seed=1)
    b = ShardLoader(prepared.dataset, "train", batch_size=4, block_size=16, seed=1)
    c = ShardLoader(prepared.dataset, "train", batch_size=4, block_size=16, seed=2)
    xa, ya = a.next()
    xb, _ = b.next()
    xc, _ = c.next()
    assert xa.shape == (4, 16) and xa.dtype == torch.long
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert torch.equal(xa[:, 1:], ya[:, :-1])  # targets are the inputs shifted by one
    tokens_all = np.fromfile(prepared.dataset.shards("train")[0].path, dtype="<u2")
    text = bytes(tokens_all.astype(np.uint8)).hex()  # a window must be a contiguous run
    assert bytes(xa[0].numpy().astype(np.uint8)).hex() in text


def test_shard_loader_resumes_exactly_and_resets_for_evaluation(tmp_path):
    _, prepared = prepared_corpus(tmp_path)
    whole = ShardLoader(prepared.dataset, "train", batch_size=4, block_size=16, seed=1)
    expected = [whole.next()[0] for _ in range(6)]
    first = ShardLoader(prepared.dataset, "train", batch_size=4, block_size=16, seed=1)
    got = [first.next()[0] for _ in range(3)]
    state = first.state_dict()
    second = ShardLoader(prepared.dataset, "train", batch_size=4, block_size=16, seed=1)
    second.load_state_dict(state)
    got += [second.next()[0] for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    second.reset()
    assert torch.equal(second.next()[0], expected[0])


def test_ranks_read_disjoint_slices_of_the_same_global_batch(tmp_path):
    _, prepared = prepared_corpus(tmp_path)
    single = ShardLoader(prepared.dataset, "train", batch_size=8, block_size=16, seed=4)
    ranks = [
        ShardLoader(prepared.dataset, "train", batch_size=4, block_size=16, seed=4, rank=r,
                    world_size=2)
        for r in range(2)
    ]  # fmt: skip
    for _ in range(3):
        whole = single.next()[0]
        parts = torch.cat([loader.next()[0] for loader in ranks])
        assert torch.equal(whole, parts)


def test_prefetching_gives_the_same_batches(tmp_path):
    _, prepared = prepared_corpus(tmp_path)
    plain = ShardLoader(prepared.dataset, "train", batch_size=4, block_size=16, seed=1)
    ahead = ShardLoader(prepared.dataset, "train", batch_size=4, block_size=16, seed=1, prefetch=3)
    for _ in range(5):
        assert torch.equal(plain.next()[0], ahead.next()[0])
    state = ahead.state_dict()
    assert state["row"] == 20
    ahead.reset()
    plain.reset()
    assert torch.equal(plain.next()[0], ahead.next()[0])
    ahead.close()


def test_a_validation_split_smaller_than_a_window_is_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path, write_text(tmp_path / "c.txt", 30), data__val_fraction=0.01)
    prepared = data.prepare(cfg)
    with pytest.raises(UsageError, match=r"val split .* fewer than model.block_size \+ 1 = 2049"):
        ShardLoader(prepared.dataset, "val", batch_size=2, block_size=2048)


def test_streaming_resume_gives_the_batches_of_an_uninterrupted_loader(tmp_path, small_units):
    path = write_text(tmp_path / "corpus.txt", 10000)
    source = sources.resolve(str(path))
    tok = tokens.build_tokenizer_for(make_cfg(tmp_path, path), source)

    def loader() -> StreamingLoader:
        return StreamingLoader(source, tok, "train", batch_size=3, block_size=32,
                               val_fraction=0.1, seed=2)  # fmt: skip

    whole = loader()
    expected = [whole.next()[0] for _ in range(40)]
    whole.close()
    first = loader()
    got = [first.next()[0] for _ in range(17)]
    state = first.state_dict()
    first.close()
    second = loader()
    second.load_state_dict(state)
    got += [second.next()[0] for _ in range(23)]
    second.close()
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_streaming_ranks_never_share_a_unit(tmp_path, small_units):
    path = write_text(tmp_path / "corpus.txt", 10000)  # several units
    source = sources.resolve(str(path))
    tok = tokens.build_tokenizer_for(make_cfg(tmp_path, path), source)
    assert len(source.units) >= 2
    mine = [
        StreamingLoader(source, tok, "train", batch_size=2, block_size=16, val_fraction=0.1,
                        seed=0, rank=r, world_size=2).units_for(0)
        for r in range(2)
    ]  # fmt: skip
    assert mine[0] and mine[1] and not set(mine[0]) & set(mine[1])
    assert len(mine[0]) + len(mine[1]) == len(source.units)


def test_streaming_validation_is_a_fixed_set_of_val_pieces(tmp_path):
    path = write_text(tmp_path / "corpus.txt", 5000)
    source = sources.resolve(str(path))
    tok = tokens.build_tokenizer_for(make_cfg(tmp_path, path), source)
    val = StreamingLoader(source, tok, "val", batch_size=2, block_size=16, val_fraction=0.1,
                          max_batches=3)  # fmt: skip
    first = [val.next()[0] for _ in range(3)]
    val.reset()
    assert all(torch.equal(a, val.next()[0]) for a in first)
    val_text = "".join(
        p.text for u in source.units for p in sources.read(u) if split.is_val(p.key, 0.1)
    )
    assert tok.decode(first[0][0].tolist()) in val_text


def test_make_loaders_follows_data_streaming(tmp_path):
    cfg, prepared = prepared_corpus(tmp_path)
    train, val = data.make_loaders(cfg, prepared, prepared.tokenizer)
    assert isinstance(train, ShardLoader) and isinstance(val, ShardLoader)
    cfg.data.streaming = True
    train, val = data.make_loaders(cfg, None, prepared.tokenizer)
    assert isinstance(train, StreamingLoader) and isinstance(val, StreamingLoader)
    x, _ = train.next()
    assert x.shape == (4, 16)
    train.close()


# --- command line ------------------------------------------------------------------------------------


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPT_STUDIO_CACHE": str(cwd or Path.cwd()), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "engine.data", *args], capture_output=True,
                          text=True, env=env, cwd=cwd)  # fmt: skip


def test_inspect_prints_documents_bytes_tokens_and_a_preview(tmp_path):
    jl = tmp_path / "docs.jsonl"
    jl.write_text("\n".join(json.dumps({"text": d}) for d in sentences(30)))
    out = run("inspect", str(jl), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "documents  30" in out.stdout and "tokens     about" in out.stdout
    assert sentences(30)[0][:20] in out.stdout
    bad = run("inspect", str(tmp_path / "missing"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: data.source:")
    assert bad.stderr.count("\n") == 1


NON_ASCII = [
    "Привет, мир: тёмная вода.",
    "Héllo wörld, ça va?",
    "日本語のテキストです。",
    "plain words",
]


@pytest.mark.parametrize("kind", ["text", "jsonl"])
def test_inspect_counts_characters_and_text_bytes_of_non_ascii_text_exactly(tmp_path, kind):
    rng = random.Random(1)
    docs = [" ".join(rng.choice(NON_ASCII) for _ in range(rng.randint(1, 6))) for _ in range(150)]
    if kind == "text":
        path = tmp_path / "u.txt"
        path.write_text("\n".join(docs), encoding="utf-8")
        text = "\n".join(docs)
    else:  # escaped as json.dumps writes it: é is 6 bytes in the file, 2 in the text
        path = tmp_path / "u.jsonl"
        path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
        text = "".join(docs)
    assert path.stat().st_size < 1 << 16  # under the sample's share of one unit: read whole
    info = sources.summary(sources.resolve(str(path)))
    assert info["chars_estimate"] == len(text)
    assert info["text_bytes_estimate"] == len(text.encode("utf-8"))
    assert info["chars_estimate"] < 0.7 * info["bytes"]  # a byte count would be far too high


def test_prepare_command_reports_events_for_the_studio(tmp_path):
    cfg = make_cfg(tmp_path, write_text(tmp_path / "c.txt", 300))
    path = config.save(cfg, tmp_path / "c.toml")
    out = run("prepare", str(path), "--events", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    progress = [r for r in records if r["type"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] > 0 and progress[-1]["tokens"] > 0
    ready = [r for r in records if r["type"] == "data_ready"]  # typed, not a log line to match
    assert len(ready) == 1 and ready[0]["train_tokens"] > 0 and not ready[0]["cached"]
    again = run("prepare", str(path), cwd=tmp_path)
    assert "using prepared data" in again.stdout
