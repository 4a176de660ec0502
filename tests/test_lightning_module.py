"""LitGPT's own options: every problem reported at once, before anything is built."""

import pytest

from lit_gpt.errors import LitGPTError
from lit_gpt.lightning_module import LitGPT


def test_a_negative_loss_chunk_size_is_refused_with_the_other_problems():
    with pytest.raises(LitGPTError, match=r"beta1.*loss_chunk_size must be a whole number >= 0"):
        LitGPT(loss_chunk_size=-1, beta1=2.0)


@pytest.mark.parametrize("option", [{"lora_rank": 4}, {"freeze_layers": 1}, {"freeze_embeddings": True}])
def test_finetuning_options_without_pretrained_weights_are_refused(option):
    # LoRA adapters or frozen layers on random weights train without complaint and learn nothing worth having.
    with pytest.raises(LitGPTError, match="finetune pretrained weights: give them with --model.init_from"):
        LitGPT(**option)
    LitGPT()  # plain pretraining is fine
