"""Recovery after pruning: the model as Flax NNX modules with masked LoRA (`modules`), the fine-tuning
losses (`losses`), training windows (`data`) and the compiled optax loop with orbax checkpoints (`train`)."""
