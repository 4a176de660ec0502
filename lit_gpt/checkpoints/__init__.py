"""Everything about lit-gpt's checkpoint files, and nothing else.

- ``format``: the ``lit_gpt`` section (model config, tokenizer), the plain state dict, the shape comparison.
- ``atomic``: saves that are never half-written, reads that never run code and fail in one line.
- ``sharded``: FSDP2's checkpoint folders, their crash recovery, and the strategy's save/resume hooks.
- ``read``: finding a checkpoint (a file, a folder, a run folder) and loading it outside the Trainer.
- ``convert``: ``lit-gpt convert``, a sharded folder to one file.
"""
