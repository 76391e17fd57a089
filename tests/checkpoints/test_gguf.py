"""GGUF -> HF conversion: tensors, config and tokenizer equal what transformers reads from the same file."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from tyrjax.checkpoints.assets import default_gguf_path
from tyrjax.errors import TyrjaxError
from tyrjax.checkpoints.gguf import (
    MARKER_FILE,
    _bytes_to_unicode,
    _llama3_rope_factors,
    convert_gguf,
    permute_rows,
    read_gguf,
    write_tokenizer_files,
    TOKENIZER_FILES,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return {'a': [x ** 2 for _ in range(10)]}  # comment\n",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🤖🎉, Ελληνικά, русский",
    "   leading spaces,\ttabs\t\tand\n\n\nnewlines   and trailing   ",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "Numbers 1234567890 and 3.14159, dates 2024-01-31, hex 0xDEADBEEF",
    "<|endoftext|><repo_name>tyrjax<file_sep>x.py",
    "",
]


# ---------------------------------------------------------------- tiny GGUF files


def _tiny_tokenizer(writer: gguf.GGUFWriter) -> None:
    """A byte-level vocabulary: <|endoftext|> (control), the 256 byte symbols, three merged tokens."""
    b2u = _bytes_to_unicode()
    tokens = ["<|endoftext|>"] + [b2u[b] for b in range(256)] + ["Ġt", "he", "Ġthe"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)


def write_tiny_gguf(
    path: Path,
    arch: str = "llama",
    bias: bool = False,
    untied: bool = False,
    rope_freqs: np.ndarray | None = None,
    theta: float = 10000.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A tiny random decoder as GGUF in llama.cpp's layout; returns its tensors in HF layout."""
    vocab, d, ffn, layers, heads, kv = 260, 32, 48, 2, 4, 2
    hd = d // heads
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(1e-6)
    _tiny_tokenizer(writer)
    hf: dict[str, np.ndarray] = {}
    # llama.cpp permutes Q/K rows only for the llama architecture.
    q_perm, k_perm = (heads, kv) if arch == "llama" else (None, None)

    def add(gguf_name: str, hf_name: str, shape: tuple[int, ...], perm: int | None = None) -> None:
        value = rng.standard_normal(shape).astype(np.float32)
        hf[hf_name] = value
        writer.add_tensor(gguf_name, permute_rows(value, perm) if perm else value)

    add("token_embd.weight", "model.embed_tokens.weight", (vocab, d))
    for i in range(layers):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight", (d,))
        add(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", (heads * hd, d), q_perm)
        add(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", (kv * hd, d), k_perm)
        add(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight", (kv * hd, d))
        if bias:
            add(f"blk.{i}.attn_q.bias", p + "self_attn.q_proj.bias", (heads * hd,), q_perm)
            add(f"blk.{i}.attn_k.bias", p + "self_attn.k_proj.bias", (kv * hd,), k_perm)
            add(f"blk.{i}.attn_v.bias", p + "self_attn.v_proj.bias", (kv * hd,))
        add(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight", (d, heads * hd))
        add(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight", (d,))
        add(f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", (ffn, d))
        add(f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", (ffn, d))
        add(f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", (d, ffn))
    add("output_norm.weight", "model.norm.weight", (d,))
    if untied:
        add("output.weight", "lm_head.weight", (vocab, d))
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


# ---------------------------------------------------------------- the real SmolLM2 file


@pytest.fixture(scope="module")
def smollm_gguf() -> Path:
    return default_gguf_path()


@pytest.fixture(scope="module")
def smollm(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """read_gguf of the real file (read once: parsing it takes seconds), its config and tokenizer files in a dir.

    `convert_gguf` only saves these same arrays; the tiny-file tests below cover the whole write path.
    """
    config, tensors, tok = read_gguf(smollm_gguf)
    directory = tmp_path_factory.mktemp("smollm2")
    (directory / "config.json").write_text(json.dumps(config))
    write_tokenizer_files(directory, tok, config)
    return directory, tensors


def test_smollm2_tensors_and_config_equal_transformers(smollm_gguf: Path, smollm: tuple[Path, dict]) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    directory, ours = smollm
    model = AutoModelForCausalLM.from_pretrained(smollm_gguf.parent, gguf_file=smollm_gguf.name, dtype=torch.float32)
    reference = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert set(ours) == set(reference) - {"lm_head.weight"}  # tied head: stored once, as the embedding
    assert len(ours) == 30 * 9 + 2
    for name, value in ours.items():
        assert value.dtype == np.float32 and value.shape == reference[name].shape, name
        assert np.allclose(value, reference[name], rtol=0, atol=1e-6), name
    np.testing.assert_array_equal(reference["lm_head.weight"], ours["model.embed_tokens.weight"])

    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float32"
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (576, 1536, 30)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert (config["vocab_size"], config["max_position_embeddings"]) == (49152, 8192)
    assert (config["rms_norm_eps"], config["rope_theta"]) == (1e-5, 100000.0)
    assert config["tie_word_embeddings"] is True and "rope_scaling" not in config
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    hf_cfg, our_cfg = model.config, AutoConfig.from_pretrained(directory)
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ):
        assert getattr(our_cfg, key) == getattr(hf_cfg, key), key
    assert our_cfg.rms_norm_eps == pytest.approx(hf_cfg.rms_norm_eps, rel=1e-6)


def test_smollm2_tokenizer_ids_equal_transformers(smollm_gguf: Path, smollm: tuple[Path, dict]) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    directory, _ = smollm
    reference = AutoTokenizer.from_pretrained(smollm_gguf.parent, gguf_file=smollm_gguf.name)
    ours = Tokenizer.from_file(str(directory / "tokenizer.json"))
    ours_hf = AutoTokenizer.from_pretrained(directory)
    for text in TEXTS:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text, add_special_tokens=False).ids == expected, text
        assert ours_hf(text, add_special_tokens=False)["input_ids"] == expected, text
        assert ours.encode(text).ids == reference(text)["input_ids"], text
        assert ours.decode(expected, skip_special_tokens=False) == reference.decode(expected), text
    assert ours.encode("<|im_start|>").ids == [1] and ours.get_vocab_size() == 49152
    assert (ours_hf.bos_token, ours_hf.eos_token, ours_hf.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    chat = [{"role": "user", "content": "Hi"}]
    assert ours_hf.apply_chat_template(chat, tokenize=False) == reference.apply_chat_template(chat, tokenize=False)
    special_map = json.loads((directory / "special_tokens_map.json").read_text())
    assert special_map["bos_token"] == "<|im_start|>" and "<repo_name>" in special_map["additional_special_tokens"]


def test_reconverting_over_a_previous_conversion(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.gguf"
    write_tiny_gguf(tiny)
    out = tmp_path / "model"
    convert_gguf(tiny, out)
    (out / "config.json").write_text("{}")
    convert_gguf(tiny, out)  # a previous conversion is replaced whole
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", MARKER_FILE, *TOKENIZER_FILES]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "tiny.gguf"]


# ---------------------------------------------------------------- errors


def test_corrupt_gguf_names_the_path_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "random.gguf"
    bad.write_bytes(np.random.default_rng(0).bytes(100_000))
    out = tmp_path / "out" / "model"
    with pytest.raises(TyrjaxError, match="random.gguf"):
        convert_gguf(bad, out)
    assert not out.exists() and not out.parent.exists()
    with pytest.raises(TyrjaxError, match="missing.gguf"):
        convert_gguf(tmp_path / "missing.gguf", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.gguf"]


def test_truncated_gguf_is_a_tyrjax_error(tmp_path: Path) -> None:
    whole, cut = tmp_path / "whole.gguf", tmp_path / "cut.gguf"
    write_tiny_gguf(whole)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 4096])
    with pytest.raises(TyrjaxError, match="cut.gguf"):
        convert_gguf(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_lists_the_supported(tmp_path: Path) -> None:
    path = tmp_path / "gemma.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TyrjaxError) as info:
        convert_gguf(path, tmp_path / "out")
    message = str(info.value)
    assert "gemma3" in message and "llama" in message and "qwen2" in message and str(path) in message
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.gguf"
    write_tiny_gguf(tiny)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(TyrjaxError, match="mine"):
        convert_gguf(tiny, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------- tiny files: layout and config


@pytest.mark.parametrize("bias,untied", [(False, False), (True, True)])
def test_tiny_llama_unpermutes_back_to_hf_layout_exactly(tmp_path: Path, bias: bool, untied: bool) -> None:
    path = tmp_path / "tiny.gguf"
    expected = write_tiny_gguf(path, "llama", bias=bias, untied=untied)
    config, tensors, tok = read_gguf(path)
    assert set(tensors) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["attention_bias"] is bias and config["tie_word_embeddings"] is (not untied)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 8)
    assert tok["model"] == "gpt2" and len(tok["tokens"]) == 260


def test_tiny_llama_and_qwen2_equal_transformers(tmp_path: Path) -> None:
    """An independent check of the layout: llama.cpp permutes Q/K for llama, not for qwen2."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for arch, bias, untied in [("llama", False, False), ("qwen2", True, True)]:
        path = tmp_path / f"{arch}.gguf"
        write_tiny_gguf(path, arch, bias=bias, untied=untied, seed=1)
        model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
        reference = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        out = convert_gguf(path, tmp_path / f"{arch}-hf")
        ours = load_file(str(out / "model.safetensors"))
        assert set(ours) == set(reference) - ({"lm_head.weight"} if not untied else set())
        for name, value in ours.items():
            np.testing.assert_array_equal(value, reference[name], err_msg=f"{arch} {name}")
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == arch and config["tie_word_embeddings"] is (not untied)
        text = "the theme: then the end"
        expected = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)(text, add_special_tokens=False)[
            "input_ids"
        ]
        assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(text, add_special_tokens=False).ids == expected
        assert 259 in expected  # the merged "Ġthe" is used


def test_llama3_rope_scaling_recovered_from_rope_freqs(tmp_path: Path) -> None:
    path = tmp_path / "rope.gguf"
    freqs = _llama3_rope_factors(8.0, 1.0, 4.0, 8192, 500000.0, 8)
    assert 1.0 < freqs[2] < 8.0 and freqs[3] == 8.0  # head_dim 8 spans all three regimes
    write_tiny_gguf(path, rope_freqs=freqs, theta=500000.0)
    config, tensors, _ = read_gguf(path)
    assert config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert not any("rope" in name for name in tensors)


def test_load_model_takes_a_gguf_directly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--model file.gguf` converts once into the cache and gives transformers' logits."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from tyrjax.checkpoints.loading import load_model
    from tyrjax.model.decoder import forward

    monkeypatch.setenv("TYRJAX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "qwen2", bias=True, untied=True, seed=2)
    model = load_model(str(path))
    assert model.cfg.architecture == "qwen2" and model.tokenizer is not None
    assert load_model(str(path)).directory == model.directory  # converted once, then reused
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    tokens = np.arange(12)[None]
    with torch.no_grad():
        expected = reference(torch.as_tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward(model.params, model.cfg, tokens)), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
