"""Behaviour of engine.tokenizer: exact round trips, the end-of-text token, specs, the CLI."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.tokenizer as tokmod
from engine.contract.errors import UsageError
from engine.tokenizer import (
    EOT,
    BPETokenizer,
    CharTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    build_tokenizer,
    from_spec,
)
from engine.tokenizer.__main__ import main

REPO = Path(__file__).resolve().parents[1]
BPE_VOCAB = 400

SAMPLES = {
    "ascii": "Hello, world! The quick brown fox jumps over 13 lazy dogs.\n\tdone  ",
    "accented": "Ça va? naïve café, Zürich, señor, Ærø, İstanbul",
    "cjk": "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji": "hi 😀 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1️⃣",
    "whitespace": "  leading\r\n\r\ntrailing \n\n\n   ",
    "eot_literal": f"a document that mentions {EOT} in its text",
}
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)


def make_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Pseudo-words from many syllables give BPE enough distinct pairs to fill its vocabulary."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["é", "ü", "日本", "😀"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(2000)]
    return [" ".join(rng.choices(words, k=12)) + "\n" for _ in range(n_lines)]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="module")
def bpe(corpus: list[str]) -> BPETokenizer:
    return BPETokenizer.train(corpus, BPE_VOCAB)


@pytest.fixture(scope="module")
def char(corpus: list[str]) -> CharTokenizer:
    return CharTokenizer.train([*corpus, *SAMPLES.values()])


@pytest.fixture(scope="module")
def tiktoken_cl100k() -> TiktokenTokenizer:
    return TiktokenTokenizer("cl100k_base")


@pytest.fixture(params=["tiktoken", "bpe", "char"])
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    fixture = {"tiktoken": "tiktoken_cl100k", "bpe": "bpe", "char": "char"}[request.param]
    return request.getfixturevalue(fixture)


# --- every kind ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", SAMPLES.values(), ids=SAMPLES.keys())
def test_text_round_trips_exactly(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_empty_string_is_no_ids(tok: Tokenizer) -> None:
    assert tok.encode("") == []
    assert tok.decode([]) == ""


def test_eot_id_decodes_to_the_marker(tok: Tokenizer) -> None:
    text = SAMPLES["accented"]
    assert tok.decode([*tok.encode(text), tok.eot_id]) == text + EOT
    assert 0 <= tok.eot_id < tok.vocab_size


def test_allow_special_encodes_the_marker_as_eot_id(tok: Tokenizer) -> None:
    assert tok.encode(EOT, allow_special=True) == [tok.eot_id]
    ids = tok.encode(f"one{EOT}two", allow_special=True)
    assert ids == [*tok.encode("one"), tok.eot_id, *tok.encode("two")]


def test_ordinary_encoding_cannot_inject_eot(tok: Tokenizer) -> None:
    text = SAMPLES["eot_literal"]
    ids = tok.encode(text)
    assert tok.eot_id not in ids
    assert tok.decode(ids) == text


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    texts = [*SAMPLES.values(), ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]


def test_spec_rebuilds_an_identical_tokenizer(tok: Tokenizer) -> None:
    spec = json.loads(json.dumps(tok.spec()))  # what a checkpoint stores
    again = from_spec(spec)
    assert type(again) is type(tok)
    assert (again.vocab_size, again.eot_id) == (tok.vocab_size, tok.eot_id)
    for text in SAMPLES.values():
        assert again.encode(text) == tok.encode(text)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"kind": "sentencepiece"},
        {"kind": "bpe"},
        {"kind": "bpe", "json": "not json"},
        {"kind": "char", "chars": ["ab"]},
        {"kind": "char", "chars": ["a", "a"]},
        {"kind": "tiktoken", "name": 3},
    ],
)
def test_bad_spec_is_a_usage_error(spec: dict) -> None:
    with pytest.raises(UsageError, match=r"tokenizer spec|vocabulary"):
        from_spec(spec)


# --- property tests ------------------------------------------------------------------------------


@SETTINGS
@given(text=st.text())
def test_bpe_round_trips_any_unicode(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.eot_id not in ids
    assert bpe.decode(ids) == text


@SETTINGS
@given(text=st.text())
def test_tiktoken_round_trips_any_unicode(tiktoken_cl100k: TiktokenTokenizer, text: str) -> None:
    ids = tiktoken_cl100k.encode(text)
    assert tiktoken_cl100k.eot_id not in ids
    assert tiktoken_cl100k.decode(ids) == text


@SETTINGS
@given(text=st.text(min_size=1))
def test_char_round_trips_any_text_it_was_trained_on(text: str) -> None:
    tok = CharTokenizer.train([text])
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text)) + 1


# --- BPE -----------------------------------------------------------------------------------------


def test_bpe_reaches_the_requested_vocab_size(bpe: BPETokenizer) -> None:
    # make_corpus has thousands of distinct pairs, so the trainer never runs out of merges.
    assert bpe.vocab_size == BPE_VOCAB


def test_bpe_training_is_deterministic(bpe: BPETokenizer, corpus: list[str]) -> None:
    assert BPETokenizer.train(corpus, BPE_VOCAB).spec() == bpe.spec()


def test_bpe_save_loads_in_hf_tokenizers(bpe: BPETokenizer, tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    hf = HFTokenizer.from_file(str(path))
    for key in ("ascii", "cjk", "emoji"):
        text = SAMPLES[key]
        assert hf.encode(text).ids == bpe.encode(text)
        assert hf.decode(bpe.encode(text)) == text
    assert BPETokenizer.from_file(path).spec() == bpe.spec()


@pytest.mark.parametrize("vocab_size", [100, 259, 2**20 + 1, 512.0, True])
def test_bpe_rejects_vocab_size_out_of_range(vocab_size: object) -> None:
    with pytest.raises(UsageError, match=r"tokenizer\.vocab_size must be an integer from 260"):
        BPETokenizer.train(["some text"], vocab_size)  # type: ignore[arg-type]


def test_bpe_rejects_empty_corpus() -> None:
    with pytest.raises(UsageError, match="corpus is empty"):
        BPETokenizer.train(["", ""], 300)


def test_bpe_from_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nope\.json"):
        BPETokenizer.from_file(tmp_path / "nope.json")


# --- characters ----------------------------------------------------------------------------------


def test_char_vocabulary_is_sorted_characters_then_eot() -> None:
    tok = CharTokenizer.train(["cab", "ba!"])
    assert tok.encode("!abc") == [0, 1, 2, 3]
    assert (tok.eot_id, tok.vocab_size) == (4, 5)


def test_char_unknown_character_is_named() -> None:
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(UsageError, match=r"character '😀' .*3 characters from its training corpus"):
        tok.encode("ab😀")


def test_char_rejects_empty_corpus() -> None:
    with pytest.raises(UsageError, match="corpus is empty"):
        CharTokenizer.train([""])


# --- tiktoken ------------------------------------------------------------------------------------


def test_cl100k_base_loads_offline(tiktoken_cl100k: TiktokenTokenizer) -> None:
    assert (tiktoken_cl100k.vocab_size, tiktoken_cl100k.eot_id) == (100277, 100257)
    assert tiktoken_cl100k.spec() == {"kind": "tiktoken", "name": "cl100k_base"}


def test_unknown_tiktoken_encoding_lists_known_names() -> None:
    with pytest.raises(UsageError, match=r"unknown tiktoken encoding 'gpt5'.*cl100k_base.*o200k"):
        TiktokenTokenizer("gpt5")


def _o200k_in_memory() -> bool:
    import tiktoken.registry

    return "o200k_base" in tiktoken.registry.ENCODINGS


def test_uncached_tiktoken_encoding_fails_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, an encoding not in the cache is one line naming the fix. That it fails in
    seconds rather than hanging is the download timeout, proved by the test after this one."""
    if _o200k_in_memory():
        pytest.skip("o200k_base is already loaded in this process")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    try:
        TiktokenTokenizer("o200k_base")
    except UsageError as err:
        message = str(err)
    else:
        pytest.skip("o200k_base downloaded: this machine has a network")
    assert "\n" not in message
    assert "'o200k_base' needs a network download once or a cached copy" in message
    assert "TIKTOKEN_CACHE_DIR" in message and "cl100k_base works offline" in message


def test_stalled_tiktoken_download_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _o200k_in_memory():
        pytest.skip("o200k_base is already loaded in this process")
    # A proxy that accepts connections and never answers: without a timeout tiktoken waits forever.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        proxy = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(var, proxy)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
        monkeypatch.setattr(tokmod, "_DOWNLOAD_TIMEOUT_S", 0.5)
        errors: list[Exception] = []

        def load() -> None:
            try:
                TiktokenTokenizer("o200k_base")
            except Exception as err:
                errors.append(err)

        # A thread, so that a regression fails this test instead of hanging the whole run.
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "tiktoken download still hanging after 10 s"
        assert len(errors) == 1 and isinstance(errors[0], UsageError)
        assert "needs a network download" in str(errors[0])


# --- build_tokenizer -----------------------------------------------------------------------------


def test_build_tokenizer_trains_or_loads(bpe: BPETokenizer, corpus: list[str], tmp_path) -> None:
    assert build_tokenizer("bpe", vocab_size=BPE_VOCAB, texts=corpus).spec() == bpe.spec()
    bpe.save(tmp_path / "tokenizer.json")
    assert build_tokenizer("bpe", path=str(tmp_path / "tokenizer.json")).spec() == bpe.spec()
    char = build_tokenizer("char", texts=["hello"])
    char.save(tmp_path / "chars.json")  # type: ignore[attr-defined]
    assert build_tokenizer("char", path=str(tmp_path / "chars.json")).spec() == char.spec()
    assert isinstance(build_tokenizer("tiktoken"), TiktokenTokenizer)


def test_build_tokenizer_rejects_unknown_kind() -> None:
    with pytest.raises(UsageError, match=r"tokenizer\.kind must be one of tiktoken, bpe, char"):
        build_tokenizer("wordpiece")


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_build_tokenizer_needs_a_path_or_texts(kind: str) -> None:
    with pytest.raises(UsageError, match=r"tokenizer\.path"):
        build_tokenizer(kind)


def test_import_is_cheap() -> None:
    heavy = "{'torch', 'tiktoken', 'tokenizers', 'requests'}"
    code = f"import sys, engine.tokenizer; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# --- command line --------------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path, corpus: list[str]) -> Path:
    folder = tmp_path / "src"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.txt").write_text("".join(corpus[:200]), encoding="utf-8")
    (folder / "nested" / "b.txt").write_text("".join(corpus[200:]), encoding="utf-8")
    (folder / "skip.md").write_text("ignored by --include", encoding="utf-8")
    return folder


def test_cli_trains_bpe_from_a_folder(source: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tok.json"
    assert main(["train", str(source), "--vocab-size", str(BPE_VOCAB), "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip()
    assert "\n" not in summary and f"vocab size {BPE_VOCAB}" in summary and "2 files" in summary
    tok = BPETokenizer.from_file(out)
    assert tok.vocab_size == BPE_VOCAB
    assert tok.decode(tok.encode(SAMPLES["emoji"])) == SAMPLES["emoji"]


def test_cli_writes_tokenizer_json_in_cwd_by_default(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(source / "a.txt"), "--vocab-size", "300"]) == 0
    assert BPETokenizer.from_file(tmp_path / "tokenizer.json").vocab_size == 300


def test_cli_trains_char_spec(source: Path, tmp_path: Path, corpus: list[str]) -> None:
    out = tmp_path / "chars.json"
    assert main(["train", str(source), "--kind", "char", "--out", str(out)]) == 0
    assert CharTokenizer.from_file(out).spec() == CharTokenizer.train(corpus).spec()


def test_cli_refuses_to_overwrite_without_force(source: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tokenizer.json"
    out.write_text("keep me", encoding="utf-8")
    argv = ["train", str(source), "--vocab-size", "300", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert out.read_text(encoding="utf-8") == "keep me"
    assert main([*argv, "--force"]) == 0
    assert BPETokenizer.from_file(out).vocab_size == 300


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("folder-without-txt", "no files matching --include = '*.txt'"),
        ("empty-file", "holds no text"),
    ],
)
def test_cli_bad_source_is_one_line_and_exit_2(tmp_path: Path, capsys, case: str, message: str):
    src = tmp_path / case
    if case == "folder-without-txt":
        src.mkdir()
        (src / "notes.md").write_text("not a .txt file", encoding="utf-8")
    elif case == "empty-file":
        src.touch()
    assert main(["train", str(src), "--out", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out.json").exists()


def test_cli_module_entry_exits_2_on_missing_source(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "engine.tokenizer", "train", str(tmp_path / "missing")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    assert not (tmp_path / "tokenizer.json").exists()
