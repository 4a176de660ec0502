"""Checking a whole ``lit-gpt fit`` config before anything is built, so every problem is reported at once, in one
line, instead of the first one surfacing as a traceback from deep inside Lightning (a zero ``val_check_interval``
is a ``ZeroDivisionError`` at the first step, ``max_steps: 0`` silently trains nothing)."""

from __future__ import annotations

from typing import Any

from lit_gpt.errors import LitGPTError
from lit_gpt.model import config_problems


def trainer_problems(trainer: Any) -> list[str]:
    """What is wrong with the ``trainer`` section (only the keys lit-gpt's defaults rely on)."""
    get = trainer.get if hasattr(trainer, "get") else lambda k, d=None: getattr(trainer, k, d)
    problems = []
    max_steps = get("max_steps")
    if isinstance(max_steps, int) and (max_steps == 0 or max_steps < -1):
        problems.append(
            f"trainer.max_steps must be a positive number of optimizer steps (or -1: no limit), got {max_steps}"
        )
    for key in ("log_every_n_steps", "accumulate_grad_batches"):
        value = get(key)
        if isinstance(value, int) and value <= 0:
            problems.append(f"trainer.{key} must be a positive integer, got {value}")
    interval = get("val_check_interval")
    if isinstance(interval, int) and not isinstance(interval, bool) and interval <= 0:
        problems.append(f"trainer.val_check_interval must be a positive number of steps, got {interval}")
    elif isinstance(interval, float) and not 0.0 < interval <= 1.0:
        problems.append(f"trainer.val_check_interval as a fraction of an epoch must be in (0, 1], got {interval}")
    clip = get("gradient_clip_val")
    if isinstance(clip, (int, float)) and clip < 0:
        problems.append(f"trainer.gradient_clip_val must be >= 0 (0: no clipping), got {clip}")
    return problems + hardware_problems(get)


NO_GPU_HINT = "use --trainer.accelerator cpu --trainer.precision 32-true"


def hardware_problems(get: Any) -> list[str]:
    """What Lightning's accelerator connector would refuse in the Trainer's constructor (devices, nodes, strategy,
    accelerator), found before anything is built so it joins the other problems in one line."""
    from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator
    from lightning.pytorch.strategies import StrategyRegistry

    problems = []
    devices = get("devices")
    count = int(devices) if isinstance(devices, str) and devices.strip().lstrip("-").isdigit() else devices
    no_devices = devices == [] or (type(count) is int and (count == 0 or count < -1))
    if no_devices:
        problems.append(
            "trainer.devices must be a positive number of devices per node, -1 or 'auto' (all of them), or a list of "
            f"device indices, got {devices!r}"
        )
    num_nodes = get("num_nodes")
    if isinstance(num_nodes, int) and num_nodes < 1:
        problems.append(f"trainer.num_nodes must be a positive integer, got {num_nodes}")
    strategy = get("strategy")
    known = StrategyRegistry.available_strategies()
    if isinstance(strategy, str) and strategy.lower() != "auto" and strategy.lower() not in known:
        problems.append(
            f"trainer.strategy {strategy!r} is not a strategy: use auto, ddp, fsdp (lit-gpt's FSDP2), another name "
            "Lightning registers (e.g. ddp_find_unused_parameters_true, deepspeed_stage_2), or a strategy's class path"
        )
    accelerator = get("accelerator")
    names = sorted(AcceleratorRegistry.available_accelerators())
    if isinstance(accelerator, str) and accelerator not in ("auto", "gpu", *names):
        problems.append(f"trainer.accelerator {accelerator!r} is not an accelerator: use auto, gpu, {', '.join(names)}")
    elif accelerator in ("gpu", "cuda", "mps"):
        usable = {"cuda": CUDAAccelerator.is_available(), "mps": MPSAccelerator.is_available()}
        if not (usable["cuda"] or usable["mps"] if accelerator == "gpu" else usable[accelerator]):
            what = {"gpu": "GPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)"}[accelerator]
            problems.append(f"trainer.accelerator is {accelerator!r} but there is no {what} here: {NO_GPU_HINT}")
    return problems


def _constructor_problem(build: Any) -> list[str]:
    """The message of the ``LitGPTError`` a constructor raises on its own arguments, if any."""
    try:
        build()
    except LitGPTError as e:
        return [str(e)]
    except Exception:  # an unusual config shape: the real instantiation will report it
        return []
    return []


def _attention_problems(model: Any, trainer: Any) -> list[str]:
    """A GPU-only attention kernel for a run that will train on the CPU."""
    from lit_gpt.attention_kernel import attention_kernel_problems  # here: this module stays light (no torch)

    kernel = model.get("attention_kernel") if model is not None and hasattr(model, "get") else None
    accelerator = trainer.get("accelerator") if hasattr(trainer, "get") else None
    if not isinstance(kernel, str) or not isinstance(accelerator, str):
        return []
    import torch

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return attention_kernel_problems(kernel, torch.device("cpu")) if on_cpu else []


def check_fit_config(config: Any) -> None:
    """Raise one ``LitGPTError`` listing every problem in a parsed fit/validate config (a jsonargparse Namespace)."""
    from lit_gpt.data import TextDataModule  # here, not at the top: keeps this module light for the docs script
    from lit_gpt.lightning_module import LitGPT

    problems = []
    model = config.get("model")
    shape = model.get("config") if model is not None and hasattr(model, "get") else None
    if shape is not None:
        problems += [f"model.config.{p}" for p in config_problems(shape)]
    if model is not None and hasattr(model, "as_dict"):
        options = {k: v for k, v in model.as_dict().items() if k != "config" and not k.startswith("_")}
        problems += _constructor_problem(lambda: LitGPT(**options))
    data = config.get("data")
    if data is not None and hasattr(data, "as_dict"):
        problems += _constructor_problem(lambda: TextDataModule(**data.as_dict()))
    trainer = config.get("trainer")
    if trainer is not None:
        problems += trainer_problems(trainer)
        problems += [f"model.{p}" for p in _attention_problems(model, trainer)]
    if problems:
        raise LitGPTError("; ".join(problems))
