"""The `tinyshakespeare` source's download path, with the network replaced by local bytes (no network here)."""

import io
import urllib.request

import pytest
from conftest import SHARED

from lit_gpt import corpus, sources
from lit_gpt.errors import LitGPTError

TINY = SHARED / "data" / "tinyshakespeare.txt"


def serve(monkeypatch, payload: bytes | Exception) -> list[str]:
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        if isinstance(payload, Exception):
            raise payload
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


@pytest.mark.skipif(not TINY.exists(), reason="needs ../shared/data/tinyshakespeare.txt as the served file")
def test_download_is_verified_cached_and_not_repeated(monkeypatch, tmp_path):
    calls = serve(monkeypatch, TINY.read_bytes())
    text = sources.load_text("tinyshakespeare", tmp_path)
    assert text.startswith("First Citizen:") and len(text) == 1_115_394
    assert calls == [corpus.TINYSHAKESPEARE_URL]
    assert sources.load_text("tinyshakespeare", tmp_path) == text
    assert len(calls) == 1  # the cached, verified copy is reused
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_corrupted_download_is_refused_and_not_cached(monkeypatch, tmp_path):
    serve(monkeypatch, b"First Citizen:\nnot quite the right file\n")
    with pytest.raises(LitGPTError, match="expected sha256"):
        sources.load_text("tinyshakespeare", tmp_path)
    assert not (tmp_path / "tinyshakespeare.txt").exists()


def test_offline_says_what_to_use_instead(monkeypatch, tmp_path):
    serve(monkeypatch, OSError("Name or service not known"))
    with pytest.raises(LitGPTError, match="--data.source shakespeare"):
        sources.load_text("tinyshakespeare", tmp_path)
