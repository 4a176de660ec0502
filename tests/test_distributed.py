"""Scale out, proven on a CPU: DDP, FSDP2, gradient accumulation and a 2-node launch train the same model as one
process with the whole batch; sharded checkpoints consolidate into one file; bf16-mixed trains.

Every distributed run is a child process (gloo, one thread per rank), as a user launches it."""

import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gpt.checkpoints.read import load_model
from lit_gpt.cpu_matmul import onednn_available
from lit_gpt.errors import LitGPTError
from lit_gpt.global_batch import accumulation_steps
from lit_gpt.model import GPT, GPTConfig
from lit_gpt.parallel import parallelize

CONFIG = str(ROOT / "configs" / "shakespeare_char_cpu.yaml")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
STEPS = 10
B = 8  # micro-batch per device; the global batch is 2B = 16 windows of 32 tokens


def fit_args(corpus, name: str, *extra: str) -> list[str]:
    return [
        "fit", "--config", CONFIG, *TINY, "--data.source", str(corpus), "--trainer.max_steps", str(STEPS),
        "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", str(STEPS),
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.name", name,
        "--data.val_batches", "3",  # odd: on 2 ranks one runs a padding batch, so both run as many (FSDP needs it)
        *extra,
    ]  # fmt: skip


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def losses(run_dir) -> list[float]:
    return [v for _, v in scalars(run_dir)["train/loss"]]


def start(corpus, cwd, name: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **ONE_THREAD, **(env or {})}
    cmd = [sys.executable, "-m", "lit_gpt.cli", *fit_args(corpus, name, *extra)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*procs: subprocess.Popen) -> None:
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """The same 10 steps five ways: one process with batch 2B; batch B with 2 accumulation steps; the same from
    global_batch.tokens; DDP with B per rank; FSDP2 (with activation checkpointing, and the loss computed in chunks
    without the full logits) with B per rank, stopped after step 5 and resumed from its sharded checkpoint. The
    reference runs its matmuls in ATen, DDP and FSDP theirs in oneDNN where big enough (the MLP's here)."""
    cwd = tmp_path_factory.mktemp("scale")
    # 1-thread processes; the three single-process runs together (most of their time is start-up, on one core each).
    tokens = str(2 * B * 32)  # 2B windows of block_size 32
    every_5 = ["--trainer.val_check_interval", "5"]
    finish(
        start(corpus, cwd, "single", "--data.batch_size", str(2 * B), "--model.cpu_matmul", "aten"),
        start(corpus, cwd, "accumulate", "--data.batch_size", str(B), "--trainer.accumulate_grad_batches", "2"),
        start(corpus, cwd, "tokens", "--data.batch_size", str(B), "--global_batch.tokens", tokens, *every_5),
    )
    onednn = ["--model.cpu_matmul", "onednn" if onednn_available() else "aten"]
    two_ranks = [*onednn, "--data.batch_size", str(B), "--trainer.devices", "2", "--trainer.strategy"]
    finish(start(corpus, cwd, "ddp", *two_ranks, "ddp"))
    # FSDP stops after step 5 and resumes from its sharded last.ckpt: the curve must not show the seam.
    fsdp = [*two_ranks, "fsdp", "--model.activation_checkpointing", "true", "--trainer.val_check_interval", "5"]
    fsdp += ["--model.loss_chunk_size", "100"]  # 3 chunks of a rank's 8 x 32 tokens, the last one ragged
    finish(start(corpus, cwd, "fsdp", *fsdp, "--trainer.max_steps", "5"))
    finish(start(corpus, cwd, "fsdp", *fsdp, "--ckpt_path", "last"))
    return cwd / "runs"


def test_ddp_fsdp_and_accumulation_give_the_loss_curve_of_one_process(runs):
    reference = losses(runs / "single" / "version_0")
    assert len(reference) == STEPS and reference[-1] < reference[0]
    for name in ("accumulate", "tokens", "ddp", "fsdp"):
        curve = losses(runs / name / "version_0")
        assert curve == pytest.approx(reference, abs=1e-4), name
    # The same 3 validation batches of B windows: on 2 ranks, 2 on one and 1 (plus a padding batch that counts for
    # nothing) on the other.
    val = scalars(runs / "accumulate" / "version_0")["val/loss"][-1][1]
    for name in ("tokens", "ddp", "fsdp"):
        assert scalars(runs / name / "version_0")["val/loss"][-1][1] == pytest.approx(val, abs=1e-4), name


@pytest.fixture(scope="module")
def muon_runs(tmp_path_factory, corpus):
    """The same 10 steps with Muon four ways: one process with batch 2B, accumulation 2, DDP and FSDP2 (whose
    parameters are sharded DTensors: Newton-Schulz must see each whole matrix), FSDP2 stopped after step 5 and
    resumed from its sharded checkpoint with both optimizers' state; and AdamW from the same start.

    In float32, as the AdamW runs above: Newton-Schulz runs in the run's float32 (torch's alone would round it to
    bfloat16, which turns float32's summation-order differences between 2 micro-batches or 2 ranks into losses
    about 2e-4 apart by step 10)."""
    cwd = tmp_path_factory.mktemp("muon")
    aten = ["--model.cpu_matmul", "aten"]
    muon = ["--model.optimizer", "muon", *aten]
    finish(
        start(corpus, cwd, "single", *muon, "--data.batch_size", str(2 * B)),
        start(corpus, cwd, "accumulate", *muon, "--data.batch_size", str(B), "--trainer.accumulate_grad_batches", "2"),
        start(corpus, cwd, "adamw", *aten, "--data.batch_size", str(2 * B)),
    )
    two_ranks = [*muon, "--data.batch_size", str(B), "--trainer.devices", "2", "--trainer.strategy"]
    finish(start(corpus, cwd, "ddp", *two_ranks, "ddp"))
    fsdp = [*two_ranks, "fsdp", "--trainer.val_check_interval", "5"]
    finish(start(corpus, cwd, "fsdp", *fsdp, "--trainer.max_steps", "5"))
    finish(start(corpus, cwd, "fsdp", *fsdp, "--ckpt_path", "last"))
    return cwd / "runs"


def test_muon_trains_the_same_curve_on_ddp_fsdp_and_with_accumulation(muon_runs):
    reference = losses(muon_runs / "single" / "version_0")
    assert len(reference) == STEPS
    adamw = losses(muon_runs / "adamw" / "version_0")
    assert reference[-1] < adamw[-1] - 0.05  # Muon is not AdamW under another name: it gets further in 10 steps
    for name in ("accumulate", "ddp", "fsdp"):
        curve = losses(muon_runs / name / "version_0")
        assert curve == pytest.approx(reference, abs=1e-4), name


def test_throughput_counts_each_ranks_flops_once(runs):
    # FLOP/s per token/s, all ranks together, as the throughput monitor logs them, is the model's FLOPs per token
    # on one process and on two ranks alike (counting the global batch's FLOPs on each rank would double MFU).
    model, _, _ = load_model(runs / "single" / "version_0" / "checkpoints" / "last.ckpt")
    for name in ("single", "ddp"):
        s = scalars(runs / name / "version_0")
        flops, tokens = s["train/model_flops_per_sec"][-1][1], s["train/tokens_per_sec"][-1][1]
        assert flops / tokens == pytest.approx(model.flops_per_token(), rel=1e-3), name


def test_a_problem_every_rank_meets_is_reported_once(tmp_path, corpus):
    # Both ranks see the loss diverge (they decide together) and stop with the same message: one line, not two.
    diverge = ["--model.learning_rate", "1000", "--trainer.gradient_clip_val", "0", "--trainer.val_check_interval", "4"]
    ddp = ["--data.batch_size", str(B), "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    temp = tmp_path / "temp"  # the system temp folder of this job: the ranks agree through a file there
    temp.mkdir()
    (temp / "lit-gpt-error-127.0.0.1-1.json").write_text("{}")  # a killed job's, long ago
    os.utime(temp / "lit-gpt-error-127.0.0.1-1.json", (time.time() - 3600,) * 2)
    p = start(corpus, tmp_path, "nan", *ddp, *diverge, env={"TMPDIR": str(temp)})
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("lit-gpt: error")]
    assert len(lines) == 1 and "the training loss became" in lines[0], err[-3000:]
    deadline = time.monotonic() + 10  # rank 0's marker stays for SAID_BY_RANK_ZERO_WAIT after it spoke
    while list(temp.glob("*lit-gpt-error-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list(temp.glob("*lit-gpt-error-*")), "the job left its marker (or a dead job's) in the temp folder"


def test_global_batch_tokens_derives_accumulation_and_validation_counts_optimizer_steps(runs):
    # Accumulation 2 from the tokens, and val_check_interval 5 means after optimizer steps 5 and 10 (and the
    # validation before the first step), not after every 5 micro-batches (4 validations).
    assert [step for step, _ in scalars(runs / "tokens" / "version_0")["val/loss"]] == [0, 5, 10]
    hparams = (runs / "tokens" / "version_0" / "config.yaml").read_text()
    assert "tokens: 512" in hparams


def test_fsdp_writes_sharded_checkpoints_that_convert_to_the_same_weights(runs, tmp_path):
    sharded = runs / "fsdp" / "version_0" / "checkpoints" / "last.ckpt"
    assert sharded.is_dir() and (sharded / ".metadata").is_file()
    assert sorted(p.name for p in sharded.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # a shard per rank
    out = tmp_path / "model.ckpt"
    r = run_cli("convert", "--checkpoint", str(runs / "fsdp" / "version_0"), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    consolidated = torch.load(out, weights_only=True)
    ddp = torch.load(runs / "ddp" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert consolidated["global_step"] == STEPS and consolidated["lit_gpt"] == ddp["lit_gpt"]
    assert consolidated["state_dict"].keys() == ddp["state_dict"].keys()
    for key, value in ddp["state_dict"].items():
        torch.testing.assert_close(consolidated["state_dict"][key], value, atol=1e-5, rtol=0)
    # generate reads the consolidated file, and the sharded folder directly
    for checkpoint in (out, sharded):
        g = run_cli("generate", "--checkpoint", str(checkpoint), "--max_new_tokens", "30", cwd=tmp_path)
        assert g.returncode == 0, g.stderr[-3000:]
        assert len(g.stdout) == 1 + 30 + 1  # the prompt "\n", 30 characters, a newline
    again = run_cli("convert", "--checkpoint", str(out), "--out", str(tmp_path / "x.ckpt"), cwd=tmp_path)
    assert again.returncode == 2 and "already a single-file checkpoint" in again.stderr


def test_fsdp_and_ddp_log_a_text_sample_from_rank_zero(runs):
    # Under FSDP the shards are gathered first: sampling on rank 0 alone would hang in FSDP's all-gathers.
    for name, steps in (("ddp", [STEPS]), ("fsdp", [5, STEPS])):
        acc = EventAccumulator(str(runs / name / "version_0"), size_guidance={"tensors": 0})
        acc.Reload()
        assert [e.step for e in acc.Tensors("sample/text_summary")] == steps, name


def test_two_nodes_on_localhost_train_log_once_and_write_one_checkpoint(tmp_path, corpus, runs):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **ONE_THREAD}
    args = fit_args(corpus, "two_nodes", "--data.batch_size", str(B), "--trainer.strategy", "ddp",
                    "--trainer.num_nodes", "2", "--trainer.devices", "1")  # fmt: skip
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "-m",
                "lit_gpt.cli",
                *args,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    finish(*nodes)
    run_dirs = list((tmp_path / "runs" / "two_nodes").iterdir())
    assert [d.name for d in run_dirs] == ["version_0"]  # rank 0 alone logs
    assert len(list(run_dirs[0].glob("events.out.tfevents.*"))) == 1
    ckpts = sorted(p.name for p in (run_dirs[0] / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts  # last and best: written once, by rank 0
    # 2 nodes x B is the global batch 2B: the same curve as one process
    assert losses(run_dirs[0]) == pytest.approx(losses(runs / "single" / "version_0"), abs=1e-4)


def test_bf16_mixed_trains_with_a_finite_falling_loss(tmp_path, corpus):
    r = run_cli(*fit_args(corpus, "bf16", "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "30"),
                cwd=tmp_path, env=ONE_THREAD)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    curve = losses(tmp_path / "runs" / "bf16" / "version_0")
    assert len(curve) == 30 and all(math.isfinite(v) for v in curve)
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.2


def test_global_batch_tokens_that_do_not_divide_say_what_to_change_once(tmp_path, corpus):
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    r = run_cli(*fit_args(corpus, "bad", "--data.batch_size", "8", "--global_batch.tokens", "1000", *ddp), cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "global_batch.tokens = 1000 is not a positive multiple of" in r.stderr and "x 2 = 512" in r.stderr
    assert r.stderr.count("lit-gpt: error:") == 1 and "Traceback" not in r.stderr  # checked before ranks start


def test_accumulation_steps_for_nanogpts_gpt2_batch():
    # 491,520 tokens per step: 12 x 1024 x 8 GPUs x 5, or 40 micro-batches on one GPU, or 5 on 8 nodes of 1 GPU.
    assert accumulation_steps(491_520, 12, 1024, 8) == 5
    assert accumulation_steps(491_520, 12, 1024, 1) == 40
    with pytest.raises(LitGPTError, match="12 x 1024 x 16 = 196608"):
        accumulation_steps(491_520, 12, 1024, 16)


def test_activation_checkpointing_keeps_parameter_names_and_gradients():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
    plain, checkpointed = GPT(config), GPT(config)
    checkpointed.load_state_dict(plain.state_dict())
    parallelize(checkpointed, None, activation_checkpointing=True)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # checkpoints stay interchangeable
    x = torch.randint(0, 50, (3, 16))
    saved = []
    for model in (plain, checkpointed):
        kept = [0]

        def pack(t, kept=kept):
            kept[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x, x)[1]
        loss.backward()  # recomputes the checkpointed blocks
        saved.append(kept[0])
    assert saved[1] < saved[0] / 2  # the blocks' activations were not kept for the backward pass
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_the_gpt2_cluster_config_resolves(tmp_path):
    r = run_cli("fit", "--config", str(ROOT / "configs" / "gpt2_124m.yaml"), "--print_config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for line in ("precision: bf16-mixed", "tokens: 524288", "block_size: 1024", "n_embd: 768", "batch_size: 16"):
        assert line in r.stdout
    # The README launches it on 1 GPU, 1 node of 8, torchrun's 2 nodes of 8 and sbatch's 4 nodes of 8: each must
    # divide the global batch into whole micro-batches.
    assert [accumulation_steps(524_288, 16, 1024, gpus) for gpus in (1, 2, 4, 8, 16, 32)] == [32, 16, 8, 4, 2, 1]


FAKE_SRUN = """#!/bin/bash
# srun on one machine: SLURM_NTASKS copies of the command with their task's variables; forwards SIGUSR1 as srun does.
echo $$ > "$SRUN_PID_FILE"
[[ $1 == --kill-on-bad-exit=1 ]] && shift
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$@" &
    pids+=($!)
done
trap 'kill -USR1 "${pids[@]}"' USR1
rc=0
for p in "${pids[@]}"; do
    while true; do wait "$p"; s=$?; kill -0 "$p" 2>/dev/null || break; done
    [[ $s == 0 ]] || rc=$s
done
exit $rc
"""


def test_slurm_script_launches_ranks_and_requeues_after_saving_on_sigusr1(tmp_path, corpus):
    """scripts/slurm/pretrain.sbatch under a stand-in srun and scontrol: 2 tasks found by Lightning's SLURM
    detection; SIGUSR1 (SLURM's warning before the time limit) saves last.ckpt on every rank at the same step and
    requeues the job; the requeued job resumes from there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" >> "$SCONTROL_LOG"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    job_id = str(40000 + os.getpid() % 10000)
    pid_file = tmp_path / "srun.pid"
    env = {
        **os.environ, **ONE_THREAD, "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "lit-gpt", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NUM_NODES": "1", "SLURM_NODELIST": "localhost", "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        "SRUN_PID_FILE": str(pid_file),
    }  # fmt: skip
    script = str(ROOT / "scripts" / "slurm" / "pretrain.sbatch")
    args = fit_args(corpus, "slurm", "--data.batch_size", str(B), "--trainer.strategy", "ddp")[2:]  # CONFIG, options

    def job(max_steps: int) -> subprocess.Popen:
        return subprocess.Popen(
            ["bash", script, *args, "--trainer.max_steps", str(max_steps)], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    first = job(100_000)
    run_dir = tmp_path / "runs" / "slurm" / f"slurm-{job_id}"  # the job id names the run: a requeue continues it
    deadline = time.time() + 180
    while not list(run_dir.glob("events.out.tfevents.*")) or not scalars(run_dir).get("train/loss"):
        if first.poll() is not None or time.time() > deadline:
            first.kill()
            pytest.fail(first.communicate()[0][-3000:])
        time.sleep(0.5)
    os.kill(int(pid_file.read_text()), signal.SIGUSR1)  # SLURM signals srun, which passes it to every task
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGUSR1, out[-3000:]
    assert [line.startswith("lit-gpt: stopped by SIGUSR1") for line in out.splitlines()].count(True) == 1, out[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", job_id]
    saved_step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert saved_step > 0

    before = set(run_dir.glob("events.out.tfevents.*"))
    second = job(saved_step + 3)  # the requeued job: same job id, same command
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    (events,) = set(run_dir.glob("events.out.tfevents.*")) - before  # into the same run folder
    steps = [step for step, _ in scalars(events)["train/loss"]]
    assert len(steps) == 3 and steps[0] in (saved_step, saved_step + 1)  # on from the saved step, not from scratch
    assert steps == list(range(steps[0], steps[0] + 3))


def test_a_rank_killed_mid_run_ends_the_job_in_one_line_and_it_resumes(tmp_path, corpus):
    # SIGKILL (as the out-of-memory killer sends) to rank 1 during a DDP run: rank 0's collective loses its peer.
    # The job ends within seconds, with one line naming the rank and how to resume, and a non-zero exit; then
    # --ckpt_path last carries it to the end.
    import psutil

    ddp = ["--data.batch_size", str(B), "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    longer = ["--trainer.max_steps", "400", "--trainer.val_check_interval", "5", "--data.val_batches", "1"]
    p = start(corpus, tmp_path, "killed", *ddp, *longer)
    last = tmp_path / "runs" / "killed" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    children = psutil.Process(p.pid).children()
    assert last.exists() and children, "the run never saved a checkpoint"
    children[0].kill()
    t0 = time.monotonic()
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 30 and p.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "Connection" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("lit-gpt: error")]
    assert len(lines) == 1, err[-3000:]
    assert "rank 1 (killed: SIGKILL" in lines[0] and "--ckpt_path last to resume" in lines[0], lines[0]
    assert str(last) in lines[0] or "runs/killed/version_0/checkpoints/last.ckpt" in lines[0], lines[0]
    # Killed a few steps after the first checkpoint (step 5): resumed, it goes on to step 20 from that checkpoint.
    resumed = start(corpus, tmp_path, "killed", *ddp, *longer[2:], "--trainer.max_steps", "20", "--ckpt_path", "last")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert scalars(last.parents[1])["train/loss"][-1][0] == 20
