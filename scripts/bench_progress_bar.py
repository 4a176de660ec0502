"""What drawing the progress bar costs a CPU training step: the CPU config's step with no redraws, with redraws at
Lightning's 10 frames a second and at lit-gpt's 2 (``ProgressBar.REDRAW_SECONDS``), in blocks interleaved in one
process so the ratios are fair on a noisy machine.

    python scripts/bench_progress_bar.py [--rounds 40] [--write]

Rich draws the bar from a thread, as Lightning's RichProgressBar does, with lit-gpt's columns, into a terminal
console (ANSI output to memory, the work a terminal's bar costs, whether or not this runs in one). The step is a plain
loop with lit-gpt's model and AdamW (4 layers, 4 heads, 128 wide, block 64, batch 12).
"""

from __future__ import annotations

import argparse
import datetime
import io
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress, TextColumn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_malloc import cpu_config_model, cpu_config_step  # noqa: E402
from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.callbacks import ProgressBar  # noqa: E402

ARMS = (0, 10, round(1 / ProgressBar.REDRAW_SECONDS))  # frames a second; 0: the bar is never drawn


def measure(rounds: int, block: int = 10) -> tuple[dict[int, list[list[float]]], float]:
    """Step times (s) per arm, a list per round (the first step of each block is dropped: it pays for the switch),
    and the seconds one frame takes to draw."""
    model, optimizer = cpu_config_model()
    x, y = torch.randint(0, 65, (2, 12, 64))

    def step() -> float:
        start = time.perf_counter()
        cpu_config_step(model, optimizer, x, y)
        return time.perf_counter() - start

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    columns = [*ProgressBar().configure_columns(None), TextColumn("{task.fields[metrics]}")]
    fps, done = [0], threading.Event()
    times: dict[int, list[list[float]]] = {arm: [] for arm in ARMS}
    with Progress(*columns, console=console, auto_refresh=False) as progress:
        task = progress.add_task("Training", total=rounds * len(ARMS) * block, metrics="loss: 2.345 tok/s: 12345")

        def draw() -> None:  # Lightning's _RefreshThread: sleep a frame, draw if the bar changed
            while not done.is_set():
                if fps[0]:
                    progress.refresh()
                time.sleep(1 / (fps[0] or 10))

        start = time.perf_counter()
        for _ in range(50):
            progress.refresh()
        frame = (time.perf_counter() - start) / 50
        thread = threading.Thread(target=draw, daemon=True)
        thread.start()
        for _ in range(20):  # warm-up
            step()
        for _ in range(rounds):
            for arm in ARMS:
                fps[0] = arm
                times[arm].append([step() for _ in range(block)][1:])
                progress.update(task, advance=block)
        done.set()
        thread.join()
    return times, frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="rounds of one block per arm")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    times, frame = measure(args.rounds)
    off = statistics.median(t for block in times[0] for t in block) * 1e3
    lines = [
        f"- one frame of the bar: {frame * 1e3:.2f} ms of Python (holding the GIL), so {frame * 10:.1%} of the time at "
        f"10 frames a second and {frame * ARMS[2]:.1%} at {ARMS[2]}",
        f"- no redraws: {off:.2f} ms/step (median of {sum(map(len, times[0]))} steps)",
    ]
    for arm in ARMS[1:]:
        # each round's blocks ran back to back: their ratio cancels the machine's drift between rounds
        ratio = statistics.median(
            statistics.median(a) / statistics.median(b) for a, b in zip(times[arm], times[0], strict=True)
        )
        lines.append(
            f"- redrawn {arm} times a second, from a thread: **{ratio:.3f}x** the step time (median of "
            f"{args.rounds} rounds' ratios)"
        )
    print("\n".join(lines))
    if args.write:
        cmd = "python scripts/bench_progress_bar.py " + " ".join(sys.argv[1:])
        write_section("bench_progress_bar", datetime.date.today().isoformat(), machine(), cmd, lines)


if __name__ == "__main__":
    main()
