"""How a problem reaches the user under multi-process training: one line for the job when the ranks agree."""

import os
import subprocess
import sys

from lit_gpt import errors

RANK_ONE = """
import sys
from lit_gpt.errors import report
report(sys.argv[1])
"""


def rank_one(message: str, port: str) -> str:
    env = {**os.environ, "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    env.pop("RANK", None)
    r = subprocess.run([sys.executable, "-c", RANK_ONE, message], env=env, capture_output=True, text=True, timeout=60)
    return r.stderr


def test_rank_zero_reports_and_other_ranks_add_only_what_it_did_not_say(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(errors.tempfile, "gettempdir", lambda: str(tmp_path))
    port = "29999"
    for name, value in {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RANK", raising=False)
    errors.report("the val split is too short")
    assert capsys.readouterr().err == "lit-gpt: error: the val split is too short\n"
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the child ("rank 1", launched by this "rank 0") looks there too
    assert rank_one("the val split is too short", port) == ""  # rank 0 said it: silent
    other = rank_one("rank 1's share of the stream holds no documents", port)
    assert other == "lit-gpt: error (rank 1): rank 1's share of the stream holds no documents\n"


def test_one_process_prints_its_line(monkeypatch, capsys):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    errors.report("model.config.n_embd (30) must be divisible by n_head (4)")
    assert capsys.readouterr().err == "lit-gpt: error: model.config.n_embd (30) must be divisible by n_head (4)\n"
