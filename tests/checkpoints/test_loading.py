"""load_model: every form of --model to a `Model`, in the asked dtype, with its tokenizer; clear errors."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models

from hf_reference import tiny_hf_model
from tyrjax.checkpoints.hf import LAYER_TENSORS, save_orbax
from tyrjax.checkpoints.loading import DTYPES, Model, gguf_cache_dir, load_model, parse_dtype, require_tokenizer
from tyrjax.checkpoints.streaming import StreamedBlocks
from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params, is_stacked

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random Llama saved by transformers, and the torch model."""
    directory = tmp_path_factory.mktemp("loading") / "llama"
    model = tiny_hf_model(directory, "llama", seed=3)
    return directory, model


def save_tokenizer(directory: Path, n_tokens: int) -> None:
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(n_tokens)}, unk_token="w0"))
    tok.save(str(directory / "tokenizer.json"))


def test_hf_directory_gives_the_transformers_weights(hf_dir):
    directory, torch_model = hf_dir
    model = load_model(str(directory))
    assert isinstance(model, Model)
    assert (model.source, model.directory, model.tokenizer) == (str(directory), directory, None)
    assert model.cfg == ModelConfig.from_json_file(directory / "config.json")
    assert is_stacked(model.params) and model.params["layers"]["wq"].shape[0] == model.cfg.n_layers
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    for key, (name, transposed) in LAYER_TENSORS.items():
        if key in model.params["layers"]:
            for i in range(model.cfg.n_layers):
                expected = state[name.format(i)]
                np.testing.assert_array_equal(np.asarray(model.params["layers"][key][i]),
                                              expected.T if transposed else expected, err_msg=f"{key} {i}")
    for key, name in (("embed", "model.embed_tokens.weight"), ("final_norm", "model.norm.weight")):
        np.testing.assert_array_equal(np.asarray(model.params[key]), state[name])
    np.testing.assert_array_equal(np.asarray(model.params["lm_head"]), state["lm_head.weight"].T)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_casts_every_parameter(hf_dir, dtype):
    directory, _ = hf_dir
    full = load_model(str(directory)).params
    low = load_model(str(directory), dtype).params
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(low)} == {jnp.dtype(dtype)}
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(low)):
        np.testing.assert_array_equal(np.asarray(a.astype(dtype)), np.asarray(b))


def test_unknown_dtype_names_the_supported_ones(hf_dir):
    assert parse_dtype("bfloat16") == jnp.bfloat16 and set(DTYPES) == {"float32", "bfloat16", "float16"}
    with pytest.raises(TyrjaxError, match="--dtype 'int8' is not supported; use one of float32, bfloat16, float16"):
        load_model(str(hf_dir[0]), "int8")


def test_streamed_serves_the_same_blocks(hf_dir):
    directory, _ = hf_dir
    held = load_model(str(directory)).params
    streamed = load_model(str(directory), streamed=True)
    assert isinstance(streamed.params, StreamedBlocks) and streamed.cfg.n_layers == 3
    for key in ("embed", "final_norm", "lm_head"):
        np.testing.assert_array_equal(np.asarray(streamed.params.head[key]), np.asarray(held[key]))
    np.testing.assert_array_equal(np.asarray(streamed.params.block(2)["w_down"]), np.asarray(held["layers"]["w_down"][2]))


def test_orbax_run_directory(tmp_path):
    cfg = ModelConfig(vocab_size=30, hidden_size=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
                      intermediate_size=24, attention_bias=True)
    params = init_random_params(cfg, 0)
    save_orbax(params, cfg, tmp_path / "run")
    model = load_model(str(tmp_path / "run"))
    assert model.cfg == cfg and is_stacked(model.params) and model.directory == tmp_path / "run"
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    low = load_model(str(tmp_path / "run"), "bfloat16").params
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(low)} == {jnp.dtype(jnp.bfloat16)}
    with pytest.raises(TyrjaxError, match="orbax checkpoint.*drop --stream"):
        load_model(str(tmp_path / "run"), streamed=True)


def test_tokenizer_from_the_model_or_another_directory(tmp_path):
    cfg = ModelConfig(vocab_size=30, hidden_size=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4,
                      intermediate_size=8)
    save_orbax(init_random_params(cfg, 0), cfg, tmp_path / "run")
    without = load_model(str(tmp_path / "run"))
    with pytest.raises(TyrjaxError, match=f"{tmp_path / 'run'}: the model has no tokenizer.json; pass --tokenizer DIR"):
        require_tokenizer(without)
    elsewhere = tmp_path / "tok"
    elsewhere.mkdir()
    save_tokenizer(elsewhere, 30)
    model = load_model(str(tmp_path / "run"), tokenizer=str(elsewhere))
    assert require_tokenizer(model).get_vocab_size() == 30 and model.directory == tmp_path / "run"
    with pytest.raises(TyrjaxError, match=f"--tokenizer {tmp_path}: no tokenizer.json in that directory"):
        load_model(str(tmp_path / "run"), tokenizer=str(tmp_path))
    save_tokenizer(tmp_path / "run", 25)  # fewer tokens than the vocabulary (padding rows) is fine
    assert load_model(str(tmp_path / "run")).tokenizer.get_vocab_size() == 25
    (tmp_path / "run" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TyrjaxError, match="tokenizer.json: unreadable tokenizer"):
        load_model(str(tmp_path / "run"))


def test_paths_that_are_not_models(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TyrjaxError, match="not a directory or a .gguf file"):
        load_model(str(tmp_path / "weights.bin"))
    with pytest.raises(TyrjaxError, match="missing.gguf: no such GGUF file"):
        load_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text(json.dumps(ModelConfig(
        vocab_size=30, hidden_size=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4, intermediate_size=8).to_hf()))
    with pytest.raises(TyrjaxError, match="config_only: no model.safetensors or model.safetensors.index.json"):
        load_model(str(tmp_path / "config_only"))


def test_gguf_conversions_are_cached_per_file_version(tmp_path, monkeypatch):
    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"version one")
    first = gguf_cache_dir(path)
    assert first == gguf_cache_dir(path) and first.parent == tmp_path / "cache" / "gguf"
    assert first.name.startswith("model-")
    path.write_bytes(b"version two, longer")
    assert gguf_cache_dir(path) != first
