import pytest

from tyrjax.checkpoints.hf import save_hf
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random model that uses the real SmolLM2 tokenizer (same vocabulary size)."""
    from tyrjax.checkpoints.assets import default_model_dir

    cfg = ModelConfig(vocab_size=49152, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                      intermediate_size=48, max_position_embeddings=1024, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny") / "model"
    save_hf(init_random_params(cfg, 3), cfg, out, tokenizer_dir=default_model_dir())
    return out
