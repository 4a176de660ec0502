import pytest
from hypothesis import given
from hypothesis import strategies as st

from lit_gpt.tokenizer import CharTokenizer, Tokenizer, UnknownCharactersError
from lit_gpt.tokenizer_spec import load_tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. — ü"
TOK = CharTokenizer.from_text(TEXT)


def test_round_trip_and_vocab():
    assert TOK.vocab_size == len(set(TEXT))
    assert TOK.chars == sorted(TOK.chars)
    assert TOK.decode(TOK.encode(TEXT)) == TEXT
    assert TOK.encode_array(TEXT).tolist() == TOK.encode(TEXT)


def test_json_round_trip(tmp_path):
    TOK.save(tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(loaded, CharTokenizer)
    assert loaded.encode(TEXT) == TOK.encode(TEXT)
    assert loaded.fingerprint() == TOK.fingerprint()
    assert Tokenizer.from_dict(TOK.to_dict()).chars == TOK.chars


def test_unknown_characters_are_listed():
    with pytest.raises(UnknownCharactersError) as e:
        TOK.encode("Hello, world! zq€")
    assert e.value.chars == ["!", "H", "q", "€"]


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        Tokenizer.from_dict({"kind": "nope"})


@given(st.text(alphabet=sorted(set(TEXT))))
def test_any_string_over_the_alphabet_round_trips(s):
    assert TOK.decode(TOK.encode(s)) == s


def test_char_token_bytes_are_each_characters_utf8_length():
    table = TOK.token_bytes()
    assert int(table[TOK.encode(TEXT)].sum()) == len(TEXT.encode("utf-8"))  # "—" is 3 bytes, "ü" 2
    assert table[TOK.stoi["ü"]] == 2 and table[TOK.stoi["a"]] == 1
