"""The BPE tokenizers (bpe, hf:PATH, gpt2) and their corpora on disk."""

import json

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_gpt.bpe import EOT, BPETokenizer, GPT2Tokenizer, HFTokenizer
from lit_gpt.data import TextDataModule, prepare
from lit_gpt.errors import LitGPTError
from lit_gpt.tokenizer import Tokenizer

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture(scope="module")
def bpe(corpus) -> BPETokenizer:
    return BPETokenizer.train([corpus.read_text()], vocab_size=600)


def stand_in_gpt2(n_merges: int = 3) -> tiktoken.Encoding:
    """A tiny GPT-2-like tiktoken encoding built locally: the 256 bytes plus a few merges and end-of-text."""
    ranks = {bytes([i]): i for i in range(256)}
    for word in [b"th", b"the", b" the", b"er", b"in", b"an"][:n_merges]:
        ranks[word] = len(ranks)
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


def test_trained_bpe_round_trips_and_compresses(bpe, corpus):
    text = corpus.read_text()
    ids = bpe.encode(text)
    assert bpe.vocab_size == 600 and bpe.eot_id == 0
    assert bpe.decode(ids) == text
    assert len(ids) < len(text) / 2  # merges learnt: far fewer tokens than bytes
    # Byte-level: text it never saw, accents and emoji included, still round-trips.
    assert bpe.decode(bpe.encode("Zoë’s café 🙂 naïve")) == "Zoë’s café 🙂 naïve"


def test_bpe_state_is_json_and_rebuilds_the_same_tokenizer(bpe):
    d = json.loads(json.dumps(bpe.to_dict()))  # what a checkpoint stores
    again = Tokenizer.from_dict(d)
    assert isinstance(again, BPETokenizer) and again.fingerprint() == bpe.fingerprint()
    assert again.encode("To be, or not to be") == bpe.encode("To be, or not to be")


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_any_text_round_trips_through_bpe(s):
    tok = BPE_SMALL
    assert tok.decode(tok.encode(s)) == s


BPE_SMALL = BPETokenizer.train(["To be, or not to be: that is the question."], vocab_size=300)


def test_bpe_corpus_on_disk_decodes_to_the_documents_separated_by_end_of_text(tmp_path):
    docs = [f"Document {i}: " + "words and more words. " * (i + 3) for i in range(40)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = prepare(str(tmp_path / "docs.jsonl"), "bpe", tmp_path / "cache", 0.1, bpe_vocab_size=300, num_proc=1)
    meta = json.loads((out / "meta.json").read_text())
    tok = Tokenizer.from_dict(meta["tokenizer"])
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")])
    assert meta["dtype"] == "uint16" and meta["tokens"]["train"] + meta["tokens"]["val"] == len(ids)
    assert (ids == tok.eot_id).sum() == len(docs) and ids[-1] == tok.eot_id
    assert tok.decode(ids.tolist()) == "".join(d + EOT for d in docs)
    # The tokenizer is saved beside the data as a Hugging Face tokenizer.json, and loads back as hf:PATH.
    hf = HFTokenizer.from_file(out / "tokenizer.json")
    assert hf.encode(docs[0]) == tok.encode(docs[0])


def test_hf_tokenizer_json_from_a_local_file(tmp_path, bpe, corpus):
    path = tmp_path / "tokenizer.json"
    bpe.save_pretrained(path)
    out = prepare(str(corpus), f"hf:{path}", tmp_path / "cache", num_proc=1)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "hf"
    train = np.fromfile(out / "train.bin", dtype=meta["dtype"])
    assert train[:50].tolist() == bpe.encode(corpus.read_text())[:50]
    with pytest.raises(LitGPTError, match="does not exist"):
        prepare(str(corpus), f"hf:{tmp_path / 'missing.json'}", tmp_path / "cache")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LitGPTError, match="not a Hugging Face tokenizer.json"):
        prepare(str(corpus), f"hf:{tmp_path / 'bad.json'}", tmp_path / "cache")
    with pytest.raises(LitGPTError, match="unknown tokenizer 'sentencepiece'"):
        prepare(str(corpus), "sentencepiece", tmp_path / "cache")


def test_gpt2_offline_gives_one_clear_error(monkeypatch, tmp_path, corpus):
    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(LitGPTError) as e:
        prepare(str(corpus), "gpt2", tmp_path)
    assert "TIKTOKEN_CACHE_DIR" in str(e.value) and "hf:PATH" in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob("*/meta.json")) and not list(tmp_path.glob("*.tmp*"))  # nothing half-written


def test_gpt2_through_tiktoken_with_a_stand_in_encoding(monkeypatch, tmp_path):
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: stand_in_gpt2())
    docs = ["the theme of the play", "the end"]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    dm = TextDataModule(source=str(tmp_path / "a.jsonl"), tokenizer="gpt2", text_field="body", block_size=2,
                        cache_dir=str(tmp_path / "c"), val_fraction=0.3, num_proc=1)  # fmt: skip
    dm.setup()
    assert isinstance(dm.tokenizer, GPT2Tokenizer) and dm.tokenizer.eot_id == 259
    ids = np.concatenate([np.fromfile(dm.prepared_dir / f"{s}.bin", dtype="uint16") for s in ("train", "val")])
    assert ids.tolist() == stand_in_gpt2().encode_ordinary(docs[0]) + [259] + stand_in_gpt2().encode_ordinary(
        docs[1]
    ) + [259]
    assert dm.tokenizer.decode(ids.tolist()) == EOT.join(docs) + EOT


def test_a_vocabulary_over_65536_tokens_is_stored_as_uint32(monkeypatch, tmp_path):
    big = stand_in_gpt2()
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({f"<{i}>".encode(): 256 + i for i in range(70_000)})  # unreachable, but they count
    big = tiktoken.Encoding("big", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: big)
    (tmp_path / "t.txt").write_text("hello world\n" * 50)
    out = prepare(str(tmp_path / "t.txt"), "gpt2", tmp_path / "c")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint32"
    ids = np.fromfile(out / "train.bin", dtype="uint32").tolist() + np.fromfile(out / "val.bin", "uint32").tolist()
    assert big.decode(ids) == "hello world\n" * 50


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab \n€", max_size=300), st.integers(1, 40))
def test_long_text_is_encoded_in_pieces_that_join_back(text, size):
    from lit_gpt.prepare import _pieces

    pieces = _pieces(text, size)
    assert "".join(pieces) == text and all(0 < len(p) <= size for p in pieces)


TEXTS = ["To be, or not to be", "Zoë’s café 🙂 naïve", "", "\n\n  tabs\tand 日本語"]


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_add_up_to_the_texts_utf8_length(text, bpe):
    """val/bpb divides by these: for every kind, the bytes of a text's tokens are the bytes of the text."""
    gpt2 = GPT2Tokenizer(stand_in_gpt2(n_merges=6))
    for tok in (bpe, BPE_SMALL, gpt2, HFTokenizer(bpe.json)):
        table = tok.token_bytes()
        assert table.shape == (tok.vocab_size,)
        assert int(table[tok.encode(text)].sum()) == len(text.encode("utf-8")), (type(tok).__name__, text)
        assert table[tok.eot_id] == 0  # a document separator is not text


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_token_bytes_of_any_text_through_bpe(s):
    assert int(BPE_SMALL.token_bytes()[BPE_SMALL.encode(s)].sum()) == len(s.encode("utf-8"))
