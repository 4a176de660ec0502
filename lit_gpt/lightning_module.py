"""``LitGPT``: the LightningModule that trains ``lit_gpt.model.GPT``.

The model is built in ``configure_model`` (not ``__init__``) because its vocabulary size comes from the data's
tokenizer, and because sharded strategies want to build or wrap it there. Checkpoints carry the model config and the
tokenizer as plain data, so a checkpoint alone can rebuild the model and generate, and loads with
``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, get_args

import lightning as L
import torch
from torchmetrics import MeanMetric, SumMetric

from lit_gpt.attention_kernel import AttentionKernel, attention_kernel, attention_kernel_problems
from lit_gpt.checkpoints.format import (
    BLOCK_FIELDS,
    CHECKPOINT_KEY,
    SHAPE_FIELDS,
    plain_state_dict,
    read_section,
    saved_config,
    saved_tokenizer,
    section,
    shape_differences,
)
from lit_gpt.cpu_matmul import CpuMatmul, cpu_matmul_problems
from lit_gpt.errors import LitGPTError
from lit_gpt.finetune import finetune_problems
from lit_gpt.fused_loss import IGNORE_INDEX
from lit_gpt.hub import hub_repo
from lit_gpt.init_from import WHAT_LOADS, build_model, load_pretrained, target_config
from lit_gpt.lightning_private import should_update_logs
from lit_gpt.model import GPT, GPTConfig
from lit_gpt.optim import (
    LrSchedule,
    NewtonSchulzDtype,
    OptimizerName,
    configure_adamw,
    configure_muon,
    describe_split,
    learning_rates,
    muon_split,
    newton_schulz_dtype,
    warmup_cosine,
    warmup_stable_decay,
)
from lit_gpt.parallel import uncompiled
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.transforms import Transforms, apply_transforms

DEFAULT_MUON_LR = 0.02  # nanochat's matrix learning rate; torch scales it by sqrt(max(1, rows / cols))
DEFAULT_MUON_MOMENTUM = 0.95  # Keller Jordan's and torch's default
DEFAULT_COOLDOWN = 0.2


def optimizer_problems(
    optimizer: str,
    muon_lr: float | None,
    momentum: float | None,
    weight_decay: float | None,
    config: GPTConfig,
    ns_dtype: str | None = None,
) -> list[str]:
    """What is wrong with the optimizer options, for the one-line config error."""
    if optimizer not in get_args(OptimizerName):
        return [f"optimizer must be one of {', '.join(get_args(OptimizerName))}; got {optimizer!r}"]
    muon_options = (
        ("muon_lr", muon_lr),
        ("muon_momentum", momentum),
        ("muon_weight_decay", weight_decay),
        ("muon_ns_dtype", ns_dtype),
    )
    given = [n for n, v in muon_options if v is not None]
    if optimizer != "muon":
        return (
            [f"{', '.join(given)} set Muon's options but the optimizer is {optimizer}: add --model.optimizer muon"]
            if given
            else []
        )
    problems = []
    if muon_lr is not None and not muon_lr > 0:
        problems.append(f"muon_lr must be > 0, got {muon_lr!r}")
    if momentum is not None and not 0.0 <= momentum < 1.0:
        problems.append(f"muon_momentum must be in [0, 1), got {momentum!r}")
    if weight_decay is not None and not weight_decay >= 0:
        problems.append(f"muon_weight_decay must be >= 0, got {weight_decay!r}")
    if ns_dtype is not None and ns_dtype not in get_args(NewtonSchulzDtype):
        problems.append(f"muon_ns_dtype must be one of {', '.join(get_args(NewtonSchulzDtype))}, got {ns_dtype!r}")
    if config.bigram:
        problems.append("the bigram model has no matrices inside blocks for Muon to train: use --model.optimizer adamw")
    return problems


def schedule_problems(schedule: str, cooldown_fraction: float | None) -> list[str]:
    """What is wrong with the learning-rate schedule's options."""
    if schedule not in get_args(LrSchedule):
        return [f"lr_schedule must be one of {', '.join(get_args(LrSchedule))}; got {schedule!r}"]
    if cooldown_fraction is not None and schedule != "wsd":
        return ["cooldown_fraction is the wsd schedule's: add --model.lr_schedule wsd"]
    if cooldown_fraction is not None and not 0.0 < cooldown_fraction <= 1.0:
        return [f"cooldown_fraction must be in (0, 1], got {cooldown_fraction!r}"]
    return []


class LitGPT(L.LightningModule):
    def __init__(
        self,
        config: GPTConfig = GPTConfig(),
        learning_rate: float = 1e-3,
        min_lr: float = 1e-4,
        warmup_steps: int = 100,
        lr_decay_steps: int | None = None,
        weight_decay: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        compile: bool = False,
        compile_validation: bool | None = None,
        cpu_matmul: CpuMatmul = "auto",
        attention_kernel: AttentionKernel = "auto",
        activation_checkpointing: bool = False,
        loss_chunk_size: int = 0,
        init_from: str | None = None,
        freeze_embeddings: bool = False,
        freeze_layers: int = 0,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        optimizer: OptimizerName = "adamw",
        muon_lr: float | None = None,
        muon_momentum: float | None = None,
        muon_weight_decay: float | None = None,
        muon_ns_dtype: NewtonSchulzDtype | None = None,
        lr_schedule: LrSchedule = "cosine",
        cooldown_fraction: float | None = None,
    ) -> None:
        """A GPT language model trained with AdamW and a warm-up + cosine learning-rate schedule.

        Args:
            config: The network's shape (see GPTConfig).
            learning_rate: Peak learning rate, reached after the warm-up.
            min_lr: Learning rate at the end of the cosine decay (nanoGPT: learning_rate / 10).
            warmup_steps: Optimizer steps of linear warm-up.
            lr_decay_steps: Optimizer step at which the cosine reaches min_lr; empty means trainer.max_steps.
            weight_decay: AdamW weight decay, on matrices and embeddings only.
            beta1: AdamW beta1.
            beta2: AdamW beta2 (0.99 for small char models, 0.95 for GPT-2 scale).
            compile: Compile the model with torch.compile (first steps are slower while it compiles). The text
                sample at each validation is drawn uncompiled: compiling its graphs would take far longer than it.
            compile_validation: With compile, validate through the compiled model too, a graph of its own compiled at
                the first validation. Empty: on a GPU, where a long run's many validations repay it, but not on a
                CPU, where compiling it costs more than it saves (docs/benchmarks.md).
            cpu_matmul: Library for the float32 matmuls of the linear layers on a CPU: onednn, or aten (PyTorch's
                default: MKL on x86). auto is onednn on AMD processors with full-width AVX-512 (Zen 5 on), where
                MKL's float32 kernels are slow, and aten elsewhere (lit_gpt/cpu_matmul.py says why).
                The same results to float32 rounding; no effect on a GPU or under bf16.
            attention_kernel: The kernel that computes attention in training and validation steps. auto is
                PyTorch's own choice; flash, cudnn and efficient (the last two GPUs only) and math name one. Naming
                one makes a run fail clearly where it cannot run, instead of falling back to a slower one.
            activation_checkpointing: Recompute each Transformer block's activations in the backward pass instead
                of keeping them: less memory for about a third more compute.
            loss_chunk_size: Compute the output layer and the loss this many tokens at a time, without ever holding
                the whole (tokens x vocabulary) logits and their gradient: the same loss and gradients in less
                memory, for large vocabularies (GPT-2's). 0 is off.
            init_from: Start from these weights (weights only: fresh optimizer, step 0): a lit-gpt .ckpt or run
                folder, a folder written by lit-gpt export, a Hugging Face GPT-2 folder, or a Hub name (gpt2,
                gpt2-medium, gpt2-large, gpt2-xl, hf:OWNER/REPO; downloaded once), or a nanoGPT ckpt.pt (its
                meta.pkl found beside it or in data/DATASET/ of its folder, its parents or the working directory;
                GPT-2's BPE when there is none). The architecture and the tokenizer come from it; config sets
                block_size (at most its own), dropout and a larger vocab_size to pad to. To resume a run, use
                --ckpt_path instead.
            freeze_embeddings: Do not train the token and position embeddings nor the output layer (tied to them or
                not).
            freeze_layers: Do not train the first N Transformer blocks.
            lora_rank: Rank of LoRA adapters on the attention and MLP projections; 0 is off. With LoRA only the
                adapters train; lit-gpt export merges them into plain weights.
            lora_alpha: LoRA scaling: the adapters' output is multiplied by lora_alpha / lora_rank.
            lora_dropout: Dropout on the adapters' input.
            optimizer: adamw, or muon: torch.optim.Muon for the 2-D weight matrices inside the blocks (attention
                and MLP projections) and AdamW, at learning_rate, for everything else (embeddings, output layer,
                norms, biases, LoRA adapters). Figures: docs/benchmarks.md.
            muon_lr: Muon's peak learning rate (empty: 0.02); the schedule scales it as it scales learning_rate.
            muon_momentum: Muon's Nesterov momentum, in [0, 1) (empty: 0.95).
            muon_weight_decay: Muon's decoupled weight decay (empty: 0).
            muon_ns_dtype: The dtype of Muon's Newton-Schulz iteration. Empty: the run's, float32 under
                trainer.precision 32-true (float64 under 64-true), else bfloat16, torch's own, which is fast where
                bf16 matmuls are (GPUs, CPUs with AMX) and many times slower than float32 on CPUs without bf16
                instructions.
            lr_schedule: cosine (warm-up, cosine decay to min_lr), or wsd (warm-up, constant, linear cool-down to
                min_lr over the last cooldown_fraction of the steps): for runs of unknown length.
            cooldown_fraction: wsd's cool-down, as a fraction of lr_decay_steps (empty: 0.2).
        """
        super().__init__()
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = GPTConfig(**config)
        problems = []
        for name, value in (("learning_rate", learning_rate), ("min_lr", min_lr)):
            if not value >= 0:
                problems.append(f"{name} must be >= 0, got {value!r}")
        if warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {warmup_steps!r}")
        if lr_decay_steps is not None and lr_decay_steps <= 0:
            problems.append(f"lr_decay_steps must be positive, got {lr_decay_steps!r}")
        if weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {weight_decay!r}")
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= value < 1.0:
                problems.append(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(loss_chunk_size, int) or loss_chunk_size < 0:
            problems.append(f"loss_chunk_size must be a whole number >= 0 (0 is off), got {loss_chunk_size!r}")
        elif loss_chunk_size and config.logit_softcap:
            problems.append("loss_chunk_size does not soft-cap the logits: set loss_chunk_size 0 or logit_softcap 0")
        problems += optimizer_problems(optimizer, muon_lr, muon_momentum, muon_weight_decay, config, muon_ns_dtype)
        problems += schedule_problems(lr_schedule, cooldown_fraction)
        problems += cpu_matmul_problems(cpu_matmul)
        problems += attention_kernel_problems(attention_kernel)
        problems += finetune_problems(freeze_layers, lora_rank, lora_alpha, lora_dropout)
        if init_from is None and (lora_rank > 0 or freeze_layers > 0 or freeze_embeddings):
            # Frozen random weights, or adapters on them, train nothing worth having.
            problems.append(
                "lora_rank, freeze_layers and freeze_embeddings finetune pretrained weights: give them with "
                "--model.init_from (a .ckpt or run folder, an exported folder, or gpt2)"
            )
        if init_from is not None and hub_repo(init_from) is None and not Path(init_from).expanduser().exists():
            problems.append(f"init_from {init_from!r} does not exist: give {WHAT_LOADS}")
        if problems:
            raise LitGPTError("invalid model config: " + "; ".join(problems))
        # Plain data only: checkpoints must load with weights_only=True.
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = asdict(config)
        self.config = config
        self.model: GPT | None = None
        self.tokenizer: Tokenizer | None = None
        self.val_loss = MeanMetric()
        # val/bpb: the loss summed over the targets (nats) over the UTF-8 bytes they stand for, so runs with
        # different tokenizers compare.
        self.val_nats, self.val_bytes = SumMetric(), SumMetric()
        self._token_bytes: torch.Tensor | None = None  # (vocab_size,) bytes per id, from the tokenizer
        self.flops_per_batch: int | None = None  # read by the throughput monitor
        self._flops_shape: tuple[int, ...] | None = None  # the batch shape flops_per_batch was computed for

    # --- building -------------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_tokenizer = getattr(datamodule, "tokenizer", None)
        if data_tokenizer is not None:
            if self.tokenizer is not None and self.tokenizer.to_dict() != data_tokenizer.to_dict():
                raise LitGPTError("the data's tokenizer differs from the model's: prepare the data with the model's")
            self.tokenizer = data_tokenizer

    def configure_model(self) -> None:
        if self.model is not None:
            return
        vocab_size = self.config.vocab_size
        if self.tokenizer is not None:
            if vocab_size is not None and vocab_size < self.tokenizer.vocab_size:
                raise LitGPTError(
                    f"model.config.vocab_size is {vocab_size} but the tokenizer has {self.tokenizer.vocab_size} "
                    "tokens: leave vocab_size empty to take it from the data"
                )
            vocab_size = vocab_size or self.tokenizer.vocab_size
        if vocab_size is None and not self.hparams.get("init_from"):
            raise LitGPTError(
                "the model's vocab_size is unknown: train with a datamodule or set model.config.vocab_size"
            )
        if self.hparams.get("init_from"):  # weights, architecture and tokenizer from a pretrained model
            pre = load_pretrained(self.hparams.init_from)
            if self.tokenizer is not None and pre.tokenizer is not None:
                if self.tokenizer.to_dict() != pre.tokenizer.to_dict():
                    raise LitGPTError(
                        f"the data's tokenizer differs from that of {pre.origin}: tokenize the data with the "
                        "pretrained model's tokenizer (the CLI does when --model.init_from is set)"
                    )
            data_vocab = self.tokenizer.vocab_size if self.tokenizer is not None else None
            self.config = target_config(pre, self.config, data_vocab)
            self.model = build_model(pre, self.config)
        else:
            self.config = replace(self.config, vocab_size=vocab_size)
            self.model = GPT(self.config)
        hp = self.hparams
        self.model.loss_chunk_size = hp.get("loss_chunk_size", 0)
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        if problems := attention_kernel_problems(hp.get("attention_kernel", "auto"), device):
            raise LitGPTError(problems[0])
        # Finetuning, CPU kernels, activation checkpointing, compile and sharding: all from outside the model.
        transforms = Transforms(
            freeze_embeddings=hp.get("freeze_embeddings", False),
            freeze_layers=hp.get("freeze_layers", 0),
            lora_rank=hp.get("lora_rank", 0),
            lora_alpha=hp.get("lora_alpha", 16.0),
            lora_dropout=hp.get("lora_dropout", 0.0),
            cpu_matmul=hp.get("cpu_matmul", "auto"),
            activation_checkpointing=hp.get("activation_checkpointing", False),
            compile=hp.compile,
        )
        apply_transforms(self.model, transforms, device, self.device_mesh)

    # --- training -------------------------------------------------------------------------------------------------

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        with attention_kernel(self.hparams.get("attention_kernel", "auto")):
            _, loss = self.model(x, y)
        if self._flops_shape != tuple(x.shape):  # counting parameters every step is slow on a CPU
            self._flops_shape = tuple(x.shape)
            self.flops_per_batch = self.model.flops_per_token(x.size(1)) * x.numel()
        # Log the loss of the whole optimizer step (mean over its micro-batches and ranks), so a curve does not
        # depend on how the global batch is split; the last call of the step is the one logged.
        accumulate = self.trainer.accumulate_grad_batches
        micro = batch_idx % accumulate
        self._step_loss = loss.detach() if micro == 0 else self._step_loss + loss.detach()
        # Only on the steps the logger writes (the progress bar shows the last of them): each self.log costs
        # Python that a small model's CPU step notices.
        trainer = self.trainer
        if micro == accumulate - 1 and (should_update_logs(trainer) or trainer.fast_dev_run):
            self.log("train/loss", self._step_loss / (micro + 1), prog_bar=True, sync_dist=trainer.world_size > 1)
            # The rate(s) this step is taken with: the scheduler moves them after the optimizer step.
            rates = learning_rates(self.optimizers())
            self.log_dict({f"train/{k}": v for k, v in rates.items()}, rank_zero_only=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        eager = uncompiled() if self._validates_uncompiled() else contextlib.nullcontext()
        with eager, attention_kernel(self.hparams.get("attention_kernel", "auto")):
            _, loss = self.model(x, y)
        mask = y != IGNORE_INDEX
        scored = mask.sum()  # 0 in a padding batch (every rank runs as many batches: FixedWindows)
        loss = torch.where(scored > 0, loss, 0.0)
        self.val_loss.update(loss, weight=scored)
        if (token_bytes := self._target_bytes_table()) is not None:
            self.val_nats.update(loss.float() * scored)
            self.val_bytes.update((token_bytes[y.clamp_min(0)] * mask).sum())  # no boolean indexing: no host sync

    def _target_bytes_table(self) -> torch.Tensor | None:
        if self._token_bytes is None and self.tokenizer is not None:
            table = torch.zeros(self.model.config.vocab_size, dtype=torch.long)  # a padded vocabulary's extra ids: 0
            ids = torch.from_numpy(self.tokenizer.token_bytes())
            table[: len(ids)] = ids
            self._token_bytes = table.to(self.device)
        return self._token_bytes

    def _validates_uncompiled(self) -> bool:
        hp = self.hparams
        if not hp.compile:
            return False
        choice = hp.get("compile_validation")  # absent from checkpoints written before it existed
        return not (self.device.type == "cuda" if choice is None else choice)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # averaged over every rank's batches
        self.val_loss.reset()
        metrics = {"val/loss": loss, "val/ppl": torch.exp(loss)}
        if self._token_bytes is not None:
            nats, n_bytes = self.val_nats.compute(), self.val_bytes.compute()
            self.val_nats.reset()
            self.val_bytes.reset()
            if n_bytes > 0:
                metrics["val/bpb"] = nats / (math.log(2) * n_bytes)
        if self.trainer.sanity_checking:
            # The validation before the first step (--trainer.num_sanity_val_steps -1, the default, as nanoGPT's
            # eval at iter 0): Lightning logs nothing while sanity checking, so it goes to the loggers here.
            if self.trainer.global_step == 0 and math.isinf(self.trainer.num_sanity_val_steps):
                for logger in self.loggers:
                    logger.log_metrics({k: v.item() for k, v in metrics.items()}, step=0)
            return
        self.log_dict(metrics, prog_bar=True, sync_dist=False)

    def on_fit_start(self) -> None:
        # A resumed run validated at its start already: no second validation at the step it resumes from.
        if self.trainer.ckpt_path is not None:
            self.trainer.num_sanity_val_steps = 0

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # fp16 needs a loss scaler, which Lightning cannot combine with a fused optimizer; every other precision can.
        fused = False if str(self.trainer.precision) == "16-mixed" else None
        betas = (hp.beta1, hp.beta2)
        if hp.get("optimizer", "adamw") == "muon":
            muon_params, adamw_params = muon_split(self.model)
            if not muon_params:
                raise LitGPTError(
                    "--model.optimizer muon trains the 2-D matrices inside the blocks, and this model has none to "
                    "train (the bigram model, or every block frozen or under LoRA): use --model.optimizer adamw"
                )
            ns_dtype = newton_schulz_dtype(self.trainer.precision, hp.get("muon_ns_dtype"))
            optimizer = configure_muon(
                muon_params,
                adamw_params,
                hp.learning_rate,
                hp.weight_decay,
                betas,
                muon_lr=hp.get("muon_lr") or DEFAULT_MUON_LR,
                muon_momentum=DEFAULT_MUON_MOMENTUM if hp.get("muon_momentum") is None else hp.muon_momentum,
                muon_weight_decay=hp.get("muon_weight_decay") or 0.0,
                fused=fused,
                ns_dtype=ns_dtype,
            )
            if self.trainer.is_global_zero:
                print(describe_split(muon_params, adamw_params, ns_dtype))
        else:
            optimizer = configure_adamw(self.model, hp.learning_rate, hp.weight_decay, betas, fused)
        decay_steps = hp.lr_decay_steps or self.trainer.max_steps
        if decay_steps is None or decay_steps <= 0:
            raise LitGPTError("set trainer.max_steps (or model.lr_decay_steps) so the learning-rate decay has an end")
        min_ratio = hp.min_lr / hp.learning_rate if hp.learning_rate > 0 else 1.0
        if hp.get("lr_schedule", "cosine") == "wsd":
            cooldown = DEFAULT_COOLDOWN if hp.get("cooldown_fraction") is None else hp.cooldown_fraction

            def multiplier(step: int) -> float:
                return warmup_stable_decay(step, hp.warmup_steps, decay_steps, cooldown, min_ratio)
        else:

            def multiplier(step: int) -> float:
                return warmup_cosine(step, hp.warmup_steps, decay_steps, min_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Free the gradients as soon as they are used (nanoGPT does the same), not after the next forward pass where
        # Lightning would: a lower peak, and on a CPU faster steps from the allocator reusing the memory.
        optimizer.zero_grad(set_to_none=True)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        pass  # done right after each optimizer step, above

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # Lightning's mixed-precision plugin refuses to clip for a fused optimizer, for fear of fp16 loss scaling.
        # bf16 has no scaler (and fp16 never gets a fused optimizer, above), so the gradients are true: clip them.
        if gradient_clip_val and getattr(optimizer, "_step_supports_amp_scaling", False):
            if gradient_clip_algorithm in (None, "norm"):
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(self.model.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # --- checkpoints ----------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = section(self.model.config, self.tokenizer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = read_section(checkpoint, "this checkpoint")
        if self.model is not None and self._trainer is not None and self.trainer.state.fn == "fit":
            trained_with = checkpoint.get("hyper_parameters", {}).get("optimizer", "adamw")
            if trained_with != self.hparams.get("optimizer", "adamw"):
                raise LitGPTError(
                    f"this checkpoint was trained with --model.optimizer {trained_with}, not "
                    f"{self.hparams.get('optimizer', 'adamw')}: resume with --model.optimizer {trained_with}, or "
                    "start a new run from its weights with --model.init_from CHECKPOINT"
                )
        config = saved_config(saved, "this checkpoint")
        saved_tok = saved_tokenizer(saved, "this checkpoint")
        if saved_tok is not None:
            if self.tokenizer is not None and self.tokenizer.to_dict() != saved_tok.to_dict():
                raise LitGPTError(
                    "the checkpoint's tokenizer differs from the data's (another corpus or vocabulary): resume with "
                    "the data it was trained on"
                )
            self.tokenizer = saved_tok
        if self.model is None:  # LitGPT.load_from_checkpoint: build from what the checkpoint says
            self.config = config
            self.model = GPT(config)
            # A LoRA run's adapters, folded into the plain model built here.
            state = checkpoint["state_dict"]
            metrics = {k: v for k, v in state.items() if k.startswith("val_")}
            checkpoint["state_dict"] = {"model." + k: v for k, v in plain_state_dict(state).items()} | metrics
            return
        diff = shape_differences(config, self.model.config, SHAPE_FIELDS + BLOCK_FIELDS, skip_empty=False)
        if diff:
            raise LitGPTError("the checkpoint's model shape differs from this config: " + ", ".join(diff))
