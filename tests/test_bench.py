"""The benchmark scripts still run and report what docs/benchmarks.md shows (tiny model, few steps)."""

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY

sys.path.insert(0, str(ROOT / "scripts"))

import benchmarks_doc  # noqa: E402


def within_rounding(shown: float, num: float, den: float, printed: str) -> bool:
    """A ratio printed to 2 decimals agrees with num / den, where both were printed rounded like `printed`: a tiny
    model's 3.1 ms can be 3.05 or 3.15, so the bounds widen by half a unit in the last printed digit."""
    half = 0.5 * 10 ** -len(printed.partition(".")[2])
    return (num - half) / (den + half) - 0.005 <= shown <= (num + half) / (den - half) + 0.005


def test_bench_train_times_the_trainer_and_the_plain_loop_in_one_run(tmp_path, corpus):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--steps", "40", "--rounds", "1"]
    cmd += [*TINY, "--data.source", str(corpus), "--data.cache_dir", str(tmp_path)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    trainer = re.search(r"Lightning Trainer: \*\*([\d.]+) ms/step, ([\d,]+) tokens/s\*\* \(median of (\d+)", r.stdout)
    plain = re.search(r"plain PyTorch loop.*?: ([\d.]+) ms/step", r.stdout)
    ratio = re.search(r"Trainer / plain loop step time: \*\*([\d.]+)x\*\*", r.stdout)
    assert trainer and plain and ratio, r.stdout
    lit_ms, plain_ms = float(trainer.group(1)), float(plain.group(1))
    assert int(trainer.group(3)) >= 20  # Trainer steps timed, after warm-up and block switches
    assert within_rounding(float(ratio.group(1)), lit_ms, plain_ms, trainer.group(1))  # the ratio of the medians shown
    # the same work both ways: a broken timer lands far outside (wide, as a loaded CI host once ran a step 20x slower)
    assert 0.2 < lit_ms / plain_ms < 5
    assert "MFU" in r.stdout
    # nanoGPT's own model and optimizer, timed in the same blocks: the comparison with nanoGPT from one run
    nano = re.search(r"nanoGPT's own model and optimizer.*?: ([\d.]+) ms/step", r.stdout)
    versus = re.search(r"lit-gpt through the Trainer over nanoGPT, tokens/s, this run: \*\*([\d.]+)x\*\*", r.stdout)
    assert nano and versus, r.stdout
    assert within_rounding(float(versus.group(1)), float(nano.group(1)), lit_ms, nano.group(1))
    # a sanity bound, not a speed claim: one round of 40 tiny steps beside other xdist workers read 0.28x once
    # on a slow 2-core host; a broken timer lands orders of magnitude off
    assert 0.1 < float(versus.group(1)) < 10


def test_bench_startup_times_the_cli_with_and_without_the_hook():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_startup.py"), "--rounds", "1", "--only", "help"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    row = re.search(r"^\| `lit-gpt fit --help` \| ([\d.]+) s \| ([\d.]+) s \| \*\*([\d.]+)x\*\* \|$", r.stdout, re.M)
    assert row, r.stdout
    ours, before, ratio = map(float, row.groups())
    assert 0 < ours and 0 < before and ratio == pytest.approx(ours / before, abs=0.01)
    assert "optional packages installed here:" in r.stdout


def test_bench_progress_bar_times_each_redraw_rate_against_none():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_progress_bar.py"), "--rounds", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    frame = re.search(r"one frame of the bar: ([\d.]+) ms", r.stdout)
    ratios = re.findall(r"redrawn (\d+) times a second, from a thread: \*\*([\d.]+)x\*\*", r.stdout)
    assert frame and float(frame.group(1)) > 0, r.stdout
    assert [fps for fps, _ in ratios] == ["10", "2"], r.stdout
    # the same steps: a broken timer lands orders of magnitude off (wide, for a loaded CI host's noise)
    assert all(0.2 < float(x) < 5 for _, x in ratios), r.stdout


def test_a_benchmark_replaces_its_own_section_and_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks_doc, "DOC", tmp_path / "benchmarks.md")
    benchmarks_doc.write_section("a", "2026-01-01", "cpu", "cmd a", ["- one"])
    benchmarks_doc.write_section("b", "2026-01-01", "cpu", "cmd b", ["- two"])
    benchmarks_doc.write_section("a", "2026-01-02", "cpu", "cmd a", ["- three"])
    text = (tmp_path / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks")
    assert "- three" in text and "- one" not in text and "- two" in text
    assert text.index("## a") < text.index("## b")  # replaced in place, not appended


def test_a_section_names_the_processor_and_its_bf16_instructions():
    line = benchmarks_doc.machine("gloo")
    assert line.endswith(", gloo") and f"{os.cpu_count()} cores" in line and "torch " in line
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # hosts of one machine kind differ here, and bf16 speed with them
        name = next(x for x in cpuinfo.read_text().splitlines() if x.startswith("model name")).split(":", 1)[1]
        assert name.strip() in line and re.search(r"\((AMX-BF16|AVX512-BF16|no bf16 instructions)\)", line)


def test_bench_gpt2_times_optimizer_steps_for_each_grid_point(tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_gpt2.py"), "--tiny", "--steps", "3", "--warmup", "2"]
    cmd += ["--batch", "2,4x1", "--accumulate", "2", "--compile", "off", "--attention", "auto,math"]
    cmd += ["--json", str(rows_file), "--profile", "2"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout[r.stdout.index("| micro-batch") :]  # the summary, after the rows printed as they came
    rows = re.findall(r"^\| (\d+) x 64 x (\d) \| off \| (\w+) \| off \| ([\d.]+) \| ([\d,]+) \|", table, re.M)
    rows = {(int(b), int(a), attn): (float(ms), int(tps.replace(",", ""))) for b, a, attn, ms, tps in rows}
    # "4x1" overrides --accumulate for its own rows; a plain "2" takes it
    assert set(rows) == {(2, 2, "auto"), (2, 2, "math"), (4, 1, "auto"), (4, 1, "math")}, r.stdout
    for (batch, accumulate, _), (ms, tps) in rows.items():  # an optimizer step's micro-batches over its time
        assert abs(tps - batch * 64 * accumulate / (ms / 1e3)) / tps < 0.02
    saved = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert {(row["batch"], row["accumulate"], row["attention"]) for row in saved} == set(rows)
    # --profile: each row's time by kernel family, after the timed steps
    assert table.count("Where a step's time goes") == 4
    shares = re.findall(r"^\| [^|]+ \| ([\d.]+) \| ([\d.]+)% \|$", table, re.M)
    assert len(shares) >= 4 and sum(float(ms) for ms, _ in shares) > 0


def test_bench_gpt2_keeps_the_grid_going_past_a_row_that_fails(tmp_path):
    # cuDNN attention does not exist on a CPU: that row says why, and the next one still runs
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_gpt2.py"), "--tiny", "--steps", "2", "--warmup", "2"]
    cmd += ["--batch", "2", "--compile", "off", "--attention", "cudnn,auto"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout[r.stdout.index("| micro-batch") :]
    assert re.search(r"^\| 2 x 64 x 1 \| off \| cudnn \| off \| failed: \w+", table, re.M), table
    assert re.search(r"^\| 2 x 64 x 1 \| off \| auto \| off \| [\d.]+ \|", table, re.M), table


def test_bench_litgpt_trains_both_projects_on_the_same_batches(tmp_path, corpus):
    pytest.importorskip("litgpt", reason="pip install --no-deps litgpt==0.5.13 psutil (as .ci/run does)")
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_litgpt.py"), "--source", str(corpus), "--steps", "60"]
    # --arms: the eager run (for compile's loss check); the two compiled ones are always made
    cmd += ["--eval-every", "20", "--rounds", "1", "--quick", "--gen-rounds", "1", "--arms", "ours-eager"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(r"^\| (litgpt|lit-gpt) .*?\| ([\d.]+) s \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|$", r.stdout, re.M)
    assert [name for name, *_ in rows] == ["litgpt", "lit-gpt", "lit-gpt"], r.stdout
    litgpt, compiled, eager = [[float(v.replace(",", "")) for v in row[1:]] for row in rows]
    for wall, tokens_per_sec, val, full_val in (litgpt, compiled, eager):
        assert wall > 0 and tokens_per_sec > 0
        assert val < 3.9 and abs(full_val - val) < 0.15  # both learned; 20 batches estimate the whole split
    assert abs(compiled[2] - eager[2]) < 1e-3  # compiling changes the speed, not the loss curve
    assert re.search(r"^\| shakespeare_char .*\| 255 \| [\d,]+ \| [\d,]+ \| \*\*[\d.]+x\*\* \|$", r.stdout, re.M)


def test_bench_gives_every_speed_figure_from_one_process(tmp_path, corpus):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--steps", "30", "--rounds", "1", "--tokens", "20"]
    cmd += [*TINY, "--data.source", str(corpus), "--data.cache_dir", str(tmp_path)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Trainer / plain loop step time" in r.stdout and "MFU" in r.stdout
    rows = re.findall(r"^\| (shakespeare_char\S*) .*? \| ([\d,]+) \| [\d.]+ ms \|", r.stdout, re.M)
    assert len(rows) == 8 and all(int(tps.replace(",", "")) > 0 for _, tps in rows), r.stdout  # 2 models x 4 ways
    assert re.search(r"peak RSS of this process .*: [\d,]+ MiB", r.stdout)


def test_bench_rotary_cache_reads_each_token_once_with_the_ring():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_rotary_cache.py"), "--model", "shakespeare_char_cpu"]
    r = subprocess.run([*cmd, "--tokens", "150", "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    read = dict(re.findall(r"- (cache as a ring|cache, window sliding|no cache)\b.*over ([\d,]+) tokens", r.stdout))
    read = {arm: int(n.replace(",", "")) for arm, n in read.items()}
    # 150 tokens with block 64: the ring reads each once; the slide reads 48 instead of 1 at the forward passes
    # 64, 81, 98, 115, 132 and 149; without a cache each pass reads the whole context
    assert read["cache as a ring"] == 150, r.stdout
    assert read["cache, window sliding"] == 150 + 6 * (48 - 1), r.stdout
    assert read["no cache"] > 60 * 100, r.stdout
    assert re.search(r"the ring over the slide: \*\*[\d.]+x\*\*", r.stdout), r.stdout


def test_time_to_loss_reports_the_first_exact_validation_under_the_target(tmp_path, corpus):
    import time_to_loss

    config = str(ROOT / "configs" / "shakespeare_char_cpu.yaml")
    common = shlex.join([*TINY, "--data.source", str(corpus), "--trainer.max_steps", "40"])
    doc = tmp_path / "speedrun.md"
    doc.write_text("# Speedrun\n\nhand-written text that stays\n")
    runs = time_to_loss.main([
        "--target", "adamw", "--eval_every", "20", "--log_every", "10", "--arm", "adamw", f"--config {config}",
        "--arm", "muon", f"--config {config} --model.optimizer muon", "--common", common, "--write",
        "--doc", str(doc), "--section", "Tiny",
    ])  # fmt: skip
    assert [r.arm for r in runs] == ["adamw", "muon"]
    target = runs[0].val[-1][1]  # --target adamw: where the adamw arm (one seed) ends
    assert runs[0].reached["steps"] <= 40
    for r in runs:
        assert [s for s, _ in r.val] == [20, 40]  # numbered as the steps they followed, every token of the split
        first = next((s for s, v in r.val if v <= target), None)
        assert r.reached.get("steps") == first
        if first:
            assert r.reached["tokens"] == first * 8 * 32 and 0 < r.reached["seconds"] < r.wall_s
    text = doc.read_text()
    assert "hand-written text that stays" in text and "## Tiny" in text and "adamw's final val loss" in text
    assert "| adamw |" in text and "| muon |" in text and (tmp_path / "speedrun_tiny.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("script", "runs"),
    [
        ("bench_precision", ["32-true", "bf16-mixed"]),
        ("bench_muon", ["adamw", "muon, Newton-Schulz in bfloat16", "muon, Newton-Schulz in float32"]),
    ],
)
def test_step_time_benchmarks_time_each_run_from_its_own_clock(tmp_path, corpus, monkeypatch, script, runs):
    # bench_precision: float32 against bf16-mixed; bench_muon: AdamW against Muon in both Newton-Schulz dtypes
    bench = importlib.import_module(script)
    monkeypatch.chdir(tmp_path)
    ms = bench.main([
        "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), "--steps", "10", "--log_every", "2",
        "--rounds", "1", *TINY, "--data.source", str(corpus),
    ])  # fmt: skip
    assert list(ms) == runs
    assert all(0 < v < 10_000 for v in ms.values()), ms  # a broken clock reads 0 or the whole run's start-up


def test_bench_serve_loads_the_server_with_concurrent_streaming_clients():
    import bench_serve

    figures = bench_serve.main([
        "--model", "configs/shakespeare_char_cpu.yaml", "--clients", "1", "3", "--requests", "2", "--max_tokens", "12",
    ])  # fmt: skip
    rows = figures["configs/shakespeare_char_cpu.yaml"]
    assert [r["clients"] for r in rows] == [1, 3] and [r["requests"] for r in rows] == [2, 6]
    assert all(r["failed"] == 0 and r["mean_tokens"] == 12 for r in rows), rows
    assert all(0 < r["ttft_p50"] <= r["latency_p50"] and r["tokens_per_s"] > 0 for r in rows), rows
