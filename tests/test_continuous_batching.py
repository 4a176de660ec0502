"""The running batch behind ``lit-gpt serve``: sequences that join and leave between steps get the tokens they would
get alone, as ``generate`` decodes them, past block_size too."""

import pytest
import torch

from lit_gpt.continuous_batching import RunningBatch, Sampling
from lit_gpt.generate import generate_tokens
from lit_gpt.model import GPT, GPTConfig

PROMPTS = [[1, 2, 3], [5] * 10, [7, 8], list(range(16))]


def model(position: str) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, position=position)
    return GPT(config).eval()


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_sequences_joining_and_leaving_a_batch_decode_as_generate_does_alone(position):
    gpt = model(position)
    new = 40  # past block_size 16: learned positions slide their window, rotary ones ring
    alone = [[int(t[0]) for t in generate_tokens(gpt, torch.tensor([p]), new, temperature=0)] for p in PROMPTS]
    batch = RunningBatch(gpt, max_batch_size=3)  # 4 sequences through 3 rows: one waits for a row to free
    got: dict[int, list[int]] = {k: [] for k in range(len(PROMPTS))}
    waiting, step = list(range(len(PROMPTS))), 0
    while waiting or len(batch):
        if waiting and batch.has_room() and step % 3 == 0:  # join at different steps, so lengths differ
            k = waiting.pop(0)
            batch.add(k, PROMPTS[k], Sampling(temperature=0))
        for k, token in batch.step().items():
            got[k].append(token)
            if len(got[k]) == new:
                batch.remove(k)  # not always the last row: the last row's sequence moves into its row
        step += 1
    assert [got[k] for k in range(len(PROMPTS))] == alone


def test_a_seeded_sequence_draws_the_same_tokens_alone_or_in_a_batch():
    gpt = model("learned")

    def run(keys: list[int]) -> dict[int, list[int]]:
        batch, out = RunningBatch(gpt, max_batch_size=4), {k: [] for k in keys}
        for k in keys:
            batch.add(k, PROMPTS[k], Sampling(temperature=1.0, top_k=10, seed=100 + k))
        for _ in range(30):
            for k, token in batch.step().items():
                out[k].append(token)
        return out

    alone, together = run([2]), run([0, 1, 2, 3])
    assert alone[2] == together[2]
    assert len({tuple(v) for v in together.values()}) == 4  # and the seeds do differ


def test_a_full_batch_and_a_bad_prompt_are_refused():
    batch = RunningBatch(model("learned"), max_batch_size=1)
    with pytest.raises(ValueError, match="1 to 16 tokens"):
        batch.add("long", list(range(17)), Sampling())
    batch.add("a", [1], Sampling())
    assert not batch.has_room() and "a" in batch
    with pytest.raises(ValueError, match="full"):
        batch.add("b", [1], Sampling())
