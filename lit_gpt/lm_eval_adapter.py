"""lit-gpt's model behind lm-evaluation-harness's LM interface, so ``lit-gpt evaluate --tasks`` runs its tasks.

``LitGPTLM`` scores requests the way the harness's own Hugging Face backend does, so a model and its
``lit-gpt export --format hf`` get the same per-choice log-likelihoods: the context's trailing spaces move to the
continuation, the whole string is encoded and split at the context's length, and an input past ``block_size`` keeps
its last ``block_size`` tokens (the harness's left truncation). Log-likelihoods are batched, longest first, padded on
the right (a causal model's earlier positions never see the padding); rolling log-likelihoods (perplexity tasks)
cut the text into the harness's disjoint windows of ``block_size``. Generation runs one request at a time on
lit-gpt's KV cache, which slides past ``block_size`` (see ``generate_tokens``), and stops at the first stop string.

A model whose tokenizer has no end-of-text token (a char model) has nothing to condition a first token on: there
the first token of an empty context or of a rolling text is the context, not scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lm_eval import utils as harness_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from torch.nn import functional as F

from lit_gpt.errors import LitGPTError, first_line
from lit_gpt.generate import generate_tokens
from lit_gpt.hub import offline_mode
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer

Request = tuple[Any, list[int], list[int]]  # (the strings, for the harness's cache; context ids, continuation ids)


class LitGPTLM(TemplateLM):
    """An lm-evaluation-harness LM over a loaded lit-gpt model and its tokenizer."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, batch_size: int = 8, max_gen_toks: int = 256) -> None:
        super().__init__()
        self.model = model.eval()
        self.lit_tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self.max_length = model.config.block_size
        self._device = next(model.parameters()).device

    @property
    def eot_token_id(self) -> int | None:
        return self.lit_tokenizer.eot_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.lit_tokenizer.encode(string)

    def tok_decode(self, ids: list[int]) -> str:
        return self.lit_tokenizer.decode(ids)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, **kwargs: Any) -> list:
        """(sum of log-probabilities of the continuation, whether greedy decoding gives it) per request."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        todo = []
        for i, (_, context, continuation) in enumerate(requests):
            if context and context[0] is None:  # an empty context and no end-of-text token to stand for it
                context, continuation = continuation[:1], continuation[1:]
            if not continuation:
                results[i] = (0.0, True)
                continue
            if len(continuation) > self.max_length:  # the harness's HF backend cannot score it either
                raise LitGPTError(
                    f"a task's answer is {len(continuation)} tokens, longer than this model's block_size "
                    f"{self.max_length}: choose a task with shorter answers or a model with a longer block_size"
                )
            ids = (context + continuation)[-(self.max_length + 1) :][:-1]  # the harness's left truncation
            todo.append((i, ids, continuation))
        todo.sort(key=lambda r: -len(r[1]))  # longest first: each batch pads to its first
        vocab = self.lit_tokenizer.vocab_size  # a padded vocabulary's extra rows are no token
        for b in range(0, len(todo), self.batch_size):
            batch = todo[b : b + self.batch_size]
            T = len(batch[0][1])
            x = torch.zeros(len(batch), T, dtype=torch.long)
            for row, (_, ids, _) in enumerate(batch):
                x[row, : len(ids)] = torch.tensor(ids)
            logits, _ = self.model(x.to(self._device))
            logprobs = F.log_softmax(logits[..., :vocab].float(), dim=-1)  # (B, T, vocab)
            for row, (i, ids, continuation) in enumerate(batch):
                n = len(continuation)
                lp = logprobs[row, len(ids) - n : len(ids)]  # (n, vocab): the positions that predict it
                target = torch.tensor(continuation, device=lp.device)
                greedy = bool((lp.argmax(-1) == target).all())
                results[i] = (lp.gather(-1, target[:, None]).sum().item(), greedy)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """The whole text's log-likelihood, in the harness's disjoint windows of ``block_size`` tokens."""
        windows: list[Request] = []
        counts = []
        for (text,) in [r.args for r in requests]:
            ids = self.tok_encode(text)
            prefix = self.prefix_token_id
            if prefix is None:  # no end-of-text token: the first token is the first window's context
                prefix, ids = (ids[0], ids[1:]) if ids else (None, [])
            pairs = harness_utils.get_rolling_token_windows(ids, prefix, self.max_length, context_len=1)
            mine = [(None, *harness_utils.make_disjoint_window(p)) for p in pairs]
            windows += mine
            counts.append(len(mine))
        scores = self._loglikelihood_tokens(windows)
        totals, at = [], 0
        for n, request in zip(counts, requests, strict=True):
            totals.append(sum(s for s, _ in scores[at : at + n]))
            at += n
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, totals[-1])
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Each context continued until a stop string or ``max_gen_toks`` tokens; the text before the stop."""
        eos = None if self.eot_token_id is None else self.tok_decode([self.eot_token_id])
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            ids = self.tok_encode(context) or ([self.eot_token_id] if self.eot_token_id is not None else [])
            if not ids:
                raise LitGPTError("a task's prompt is empty, and this model has no end-of-text token to start from")
            idx = torch.tensor([ids[-self.max_length :]], dtype=torch.long, device=self._device)
            new: list[int] = []
            text = ""
            steps = generate_tokens(
                self.model,
                idx,
                kw["max_gen_toks"],
                temperature=kw.get("temperature", 0.0),
                top_k=kw.get("top_k"),
                top_p=kw.get("top_p"),
                vocab_size=self.lit_tokenizer.vocab_size,
            )
            for token in steps:
                new.append(int(token[0]))
                text = self.tok_decode(new)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return out


def run_tasks(
    model: GPT,
    tokenizer: Tokenizer,
    tasks: list[str],
    tasks_dir: str | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """The harness's results for ``tasks`` (names, groups or tags; from ``tasks_dir`` too, the harness's YAML)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = None if tasks_dir is None else str(Path(tasks_dir).expanduser())
    if folder is not None and not Path(folder).is_dir():
        raise LitGPTError(f"--tasks_dir {tasks_dir!r} is not a folder: give the folder that holds the task YAML")
    # The user's own tasks alone, when that is all --tasks names: indexing the harness's thousands is slow.
    manager = None if folder is None else TaskManager(include_path=folder, include_defaults=False)
    if manager is None or not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=folder)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LitGPTError(
            f"lm-eval has no task {', '.join(map(repr, unknown))}: `lm-eval ls tasks` lists them; your own YAML "
            "goes in a folder --tasks_dir names"
        )
    lm = LitGPTLM(model, tokenizer, batch_size=batch_size)
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, num_fewshot=num_fewshot, limit=limit, log_samples=False
        )
    except Exception as e:  # a task's dataset that cannot be had is the user's to fix; anything else is a bug
        if not _from_downloads(e):
            raise
        if offline := offline_mode("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            raise LitGPTError(
                f"offline mode is on ({offline}) and a task's dataset is not in the datasets cache "
                f"({first_line(e)}): run the task once on a machine with network and copy HF_DATASETS_CACHE here, "
                "point the task's YAML at local files (--tasks_dir), or unset the variable"
            ) from None
        raise LitGPTError(
            f"could not load a task's dataset ({first_line(e)}): lm-eval fetches them from the Hugging Face Hub, so "
            "connect or run once where you can (they are cached in HF_DATASETS_CACHE)"
        ) from None
    return results


def _from_downloads(error: BaseException) -> bool:
    return isinstance(error, ConnectionError) or any(
        k.__module__.split(".")[0] in {"datasets", "huggingface_hub", "requests", "urllib3", "fsspec"}
        for k in type(error).__mro__
    )


def task_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each task's numeric metrics, named as the harness names them less its filter (``acc``, not ``acc,none``)."""
    scores: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            name, comma, fil = key.partition(",")  # metrics are 'metric,filter'; 'alias', 'sample_len' are not
            if not comma or "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            scores.setdefault(task, {})[name if fil in ("", "none") else f"{name}_{fil}"] = float(value)
    return scores
