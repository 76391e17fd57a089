"""GGUF -> Hugging-Face-style model directory (config.json, model.safetensors, tokenizer files), without torch.

Registries ship real pretrained weights only as GGUF files; dequantized to float32 they are the dense
models tyrjax compresses. The directory written here loads like any Hugging Face checkpoint, both in
tyrjax and in `transformers`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from tyrjax.checkpoints.hf import atomic_dir
from tyrjax.errors import TyrjaxError

SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
MARKER_FILE = "tyrjax_source.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_ROPE_FREQS = "rope_freqs.weight"

# Pre-tokenizer split patterns by `tokenizer.ggml.pre` (llama.cpp's names); any other value gets the
# GPT-2 byte-level split, which is what SmolLM2 ("smollm") and GPT-2-style vocabularies use.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


# ---------------------------------------------------------------- reading


def _open_reader(path: Path) -> Any:
    """A `gguf.GGUFReader` for `path`, or a TyrjaxError naming the path."""
    import gguf

    if not path.is_file():
        raise TyrjaxError(f"GGUF file {path} does not exist; pass the path of an existing .gguf file")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises assorted errors on truncated or foreign files
        raise TyrjaxError(
            f"GGUF file {path} is corrupt or not a GGUF file ({type(exc).__name__}: {exc}); "
            "download it again or pass another .gguf file"
        ) from exc


def _metadata(reader: Any, path: Path) -> dict[str, Any]:
    """All key/value metadata as Python values (the reader's own fields are skipped)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            value = field.contents()
        except Exception as exc:
            raise TyrjaxError(
                f"GGUF file {path}: metadata field {key!r} is unreadable ({exc}); the file is corrupt"
            ) from exc
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def _dequantize(tensor: Any, path: Path) -> np.ndarray:
    """One GGUF tensor as float32 numpy in PyTorch layout `(out, in)`."""
    import gguf

    shape = tuple(int(d) for d in reversed(tensor.shape))
    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except Exception as exc:
        raise TyrjaxError(
            f"GGUF file {path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which gguf "
            f"cannot dequantize ({exc}); upgrade the gguf package or use a file with another quantization"
        ) from exc
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(shape))


def unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a Q or K weight (or bias): back to HF's layout."""
    rows = weight.shape[0]
    grouped = weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
    return np.ascontiguousarray(grouped.swapaxes(1, 2).reshape(weight.shape))


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary row permutation (HF -> GGUF); the inverse of `unpermute_rows`."""
    rows = weight.shape[0]
    grouped = weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
    return np.ascontiguousarray(grouped.swapaxes(1, 2).reshape(weight.shape))


def _hf_name(name: str, path: Path) -> str:
    """The Hugging Face parameter name of a GGUF tensor name."""
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    match = _LAYER_RE.fullmatch(name)
    if match and match.group(2) in _LAYER_TENSORS:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_TENSORS[part]}.{kind}"
    raise TyrjaxError(
        f"GGUF file {path}: tensor {name!r} has no place in a Llama/Qwen2 decoder; "
        "this file holds a model variant tyrjax cannot convert"
    )


def _architecture(meta: dict[str, Any], path: Path) -> str:
    """`general.architecture`, checked against the supported ones."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise TyrjaxError(
            f"GGUF file {path} has architecture {arch!r}; supported GGUF architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}. Pass a model of one of those"
        )
    return arch


def _tensors(
    reader: Any, meta: dict[str, Any], arch: str, path: Path
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """HF-named float32 tensors, plus llama.cpp's `rope_freqs` vector when the file has one."""
    n_head = _uniform(meta[f"{arch}.attention.head_count"], "head_count", path)
    n_kv = _uniform(meta.get(f"{arch}.attention.head_count_kv", n_head), "head_count_kv", path)
    tensors, rope_freqs = {}, None
    for tensor in reader.tensors:
        values = _dequantize(tensor, path)
        if tensor.name == _ROPE_FREQS:
            rope_freqs = values.reshape(-1)
            continue
        # llama.cpp permutes Q/K rows (weights and biases) only for the llama architecture.
        if arch == "llama" and ".attn_q." in tensor.name:
            values = unpermute_rows(values, n_head)
        elif arch == "llama" and ".attn_k." in tensor.name:
            values = unpermute_rows(values, n_kv)
        tensors[_hf_name(tensor.name, path)] = values
    return tensors, rope_freqs


# ---------------------------------------------------------------- config


def _f32(value: float) -> float:
    """A float32 metadata value with its short decimal spelling (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _uniform(value: Any, key: str, path: Path) -> int:
    """An int that GGUF may store per layer; all layers must agree for a dense model."""
    values = {int(v) for v in value} if isinstance(value, (list, tuple, np.ndarray)) else {int(value)}
    if len(values) != 1:
        raise TyrjaxError(
            f"GGUF file {path}: {key} differs between layers ({sorted(values)}); tyrjax needs uniform layers"
        )
    return values.pop()


def _llama3_rope_factors(factor: float, low: float, high: float, original: int, theta: float, dim: int) -> np.ndarray:
    """The `rope_freqs` llama.cpp writes for HF's llama3 rope scaling (convert_hf_to_gguf.py)."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out)


def _rope_scaling(
    meta: dict[str, Any], arch: str, rope_freqs: np.ndarray | None, theta: float, head_dim: int, path: Path
) -> dict | None:
    """HF `rope_scaling` from the GGUF scaling keys, or llama3 parameters recovered from `rope_freqs`."""
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear"))
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if rope_freqs is not None:
        factor = float(np.max(rope_freqs))
        original = int(original or 8192)
        expected = _llama3_rope_factors(factor, 1.0, 4.0, original, theta, head_dim)
        if expected.shape != rope_freqs.shape or not np.allclose(expected, rope_freqs, rtol=1e-4):
            raise TyrjaxError(
                f"GGUF file {path}: its rope_freqs tensor is not llama3 rope scaling with factor {factor}, "
                "low/high frequency factors 1/4; tyrjax cannot reproduce this rope"
            )
        return {
            "rope_type": "llama3",
            "factor": _f32(factor),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": original,
        }
    if kind in (None, "none") and factor in (None, 1.0):
        return None
    scaling = {"rope_type": kind or "linear", "factor": _f32(factor)}
    if original:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def _hf_config(
    meta: dict[str, Any], arch: str, tensors: dict[str, np.ndarray], rope_freqs: np.ndarray | None, path: Path
) -> dict:
    """An HF `config.json` dict for the decoder this GGUF describes."""
    key = lambda name: f"{arch}.{name}"  # noqa: E731
    hidden = int(meta[key("embedding_length")])
    n_head = _uniform(meta[key("attention.head_count")], "head_count", path)
    n_kv = _uniform(meta.get(key("attention.head_count_kv"), n_head), "head_count_kv", path)
    head_dim = int(meta.get(key("attention.key_length"), hidden // n_head))
    theta = _f32(meta.get(key("rope.freq_base"), 10000.0))
    config: dict[str, Any] = {
        "architectures": [SUPPORTED_ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": _uniform(meta[key("feed_forward_length")], "feed_forward_length", path),
        "num_hidden_layers": int(meta[key("block_count")]),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(meta[key("attention.layer_norm_rms_epsilon")]),
        "rope_theta": theta,
        "max_position_embeddings": int(meta.get(key("context_length"), 2048)),
        "vocab_size": int(tensors["model.embed_tokens.weight"].shape[0]),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if meta.get("tokenizer.ggml.padding_token_id") is not None:
        config["pad_token_id"] = meta["tokenizer.ggml.padding_token_id"]
    if arch == "llama":
        config["attention_bias"] = "model.layers.0.self_attn.q_proj.bias" in tensors
        config["mlp_bias"] = False
    else:
        config["use_sliding_window"] = False
    scaling = _rope_scaling(meta, arch, rope_freqs, theta, head_dim, path)
    if scaling:
        config["rope_scaling"] = scaling
    return config


def _tokenizer_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The `tokenizer.*` keys with the `tokenizer.ggml.` / `tokenizer.` prefix removed."""
    out = {}
    for key, value in meta.items():
        if key.startswith("tokenizer.ggml."):
            out[key[len("tokenizer.ggml.") :]] = value
        elif key.startswith("tokenizer."):
            out[key[len("tokenizer.") :]] = value
    return out


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], dict[str, Any]]:
    """`(hf_config, hf_named_float32_tensors, tokenizer_metadata)` of a llama/qwen2 GGUF file.

    Tensors are dequantized to float32 in the PyTorch `(out, in)` layout, with llama.cpp's Q/K row
    permutation undone, so each equals what transformers loads from the same file.
    """
    path = Path(path)
    reader = _open_reader(path)
    meta = _metadata(reader, path)
    arch = _architecture(meta, path)
    try:
        tensors, rope_freqs = _tensors(reader, meta, arch, path)
        if "model.embed_tokens.weight" not in tensors:
            raise KeyError("token_embd.weight")
        config = _hf_config(meta, arch, tensors, rope_freqs, path)
    except (KeyError, ValueError) as exc:
        raise TyrjaxError(
            f"GGUF file {path} lacks or garbles {exc} for a {arch} model; the file is incomplete or corrupt"
        ) from exc
    return config, tensors, _tokenizer_metadata(meta)


# ---------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def _byte_level_vocab(tokens: list[str]) -> dict[str, int]:
    """Token -> id, with any token not spelled in the byte alphabet respelled from its UTF-8 bytes."""
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    return {
        token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(tokens)
    }


def _pre_tokenizer(pre: str | None) -> Any:
    """The split this vocabulary's merges were learned with (llama.cpp's `tokenizer.ggml.pre`)."""
    from tokenizers import Regex, pre_tokenizers

    split = _PRE_TOKENIZER_SPLITS.get(pre or "")
    if split is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _special_token(tok: dict[str, Any], name: str) -> str | None:
    """The token string of `bos_token_id` etc., or None when the file names none."""
    index = tok.get(name)
    return tok["tokens"][index] if index is not None and 0 <= index < len(tok["tokens"]) else None


def _post_processor(tok: dict[str, Any]) -> Any:
    """Adds BOS/EOS on `add_special_tokens=True` exactly when the GGUF says llama.cpp does."""
    from tokenizers import processors

    bos, eos = _special_token(tok, "bos_token_id"), _special_token(tok, "eos_token_id")
    pre = [bos] if tok.get("add_bos_token") and bos else []
    post = [eos] if tok.get("add_eos_token") and eos else []
    ids = {**({bos: tok["bos_token_id"]} if pre else {}), **({eos: tok["eos_token_id"]} if post else {})}
    single = " ".join([*pre, "$A:0", *post])
    pair = " ".join([*pre, "$A:0", *post, *pre, "$B:1", *post])
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(ids.items()))


def build_tokenizer(tok: dict[str, Any], source: str = "GGUF") -> Any:
    """A `tokenizers.Tokenizer` (byte-level BPE) from GGUF tokenizer metadata, as transformers builds it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    if tok.get("model") != "gpt2" or "merges" not in tok:
        raise TyrjaxError(
            f"{source}: tokenizer model {tok.get('model')!r} is not supported; tyrjax converts byte-level BPE "
            "tokenizers (tokenizer.ggml.model = 'gpt2', with merges). Use a model with such a tokenizer"
        )
    merges = [tuple(m.split(" ", 1)) for m in tok["merges"]]
    tokenizer = Tokenizer(
        models.BPE(
            vocab=_byte_level_vocab(tok["tokens"]),
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tokenizer.pre_tokenizer = _pre_tokenizer(tok.get("pre"))
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tokenizer.post_processor = _post_processor(tok)
    alphabet = set(_bytes_to_unicode().values())
    types = list(tok.get("token_type") or ())
    named = [_special_token(tok, k) for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")]
    special = [t for t, kind in zip(tok["tokens"], types) if (kind == _CONTROL or t in named) and set(t) <= alphabet]
    special += [t for t in dict.fromkeys(named) if t and t not in special and set(t) <= alphabet]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    user = [t for t, kind in zip(tok["tokens"], types) if kind == _USER_DEFINED and set(t) <= alphabet]
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    return tokenizer


def _tokenizer_configs(tok: dict[str, Any], config: dict) -> tuple[dict, dict]:
    """`tokenizer_config.json` and `special_tokens_map.json` contents."""
    names = {
        "bos_token": "bos_token_id",
        "eos_token": "eos_token_id",
        "unk_token": "unknown_token_id",
        "pad_token": "padding_token_id",
    }
    specials = {name: _special_token(tok, key) for name, key in names.items() if _special_token(tok, key) is not None}
    types = list(tok.get("token_type") or ())
    extra = [t for t, kind in zip(tok["tokens"], types) if kind == _CONTROL and t not in specials.values()]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": bool(tok.get("add_bos_token", False)),
        "add_eos_token": bool(tok.get("add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }
    if tok.get("chat_template"):
        tokenizer_config["chat_template"] = tok["chat_template"]
    special_map = {**specials, "additional_special_tokens": extra} if extra else dict(specials)
    return tokenizer_config, special_map


# ---------------------------------------------------------------- writing


def write_tokenizer_files(directory: Path, tok: dict[str, Any], config: dict, tokenizer: Any = None) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for GGUF tokenizer metadata."""
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(tok)
    tokenizer.save(str(Path(directory) / "tokenizer.json"))
    tokenizer_config, special_map = _tokenizer_configs(tok, config)
    _write_json(Path(directory) / "tokenizer_config.json", tokenizer_config)
    _write_json(Path(directory) / "special_tokens_map.json", special_map)


def _is_previous_conversion(out_dir: Path) -> bool:
    """Whether `out_dir` is absent, empty, or written by `convert_gguf` (so it may be replaced)."""
    if not out_dir.exists():
        return True
    return out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / MARKER_FILE).is_file())


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_model_dir(
    target: Path, gguf_path: Path, config: dict, tensors: dict[str, np.ndarray], tok: dict[str, Any], tokenizer: Any
) -> None:
    """All files of a converted model into the (fresh) directory `target`."""
    from safetensors.numpy import save_file

    _write_json(target / "config.json", config)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer_files(target, tok, config, tokenizer)
    _write_json(
        target / MARKER_FILE,
        {
            "converted_by": "tyrjax.checkpoints.gguf",
            "source": str(gguf_path.resolve()),
            "source_bytes": gguf_path.stat().st_size,
        },
    )


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write `out_dir` = config.json + model.safetensors (float32) + tokenizer files from a GGUF file.

    The directory appears complete or not at all (built beside it, then renamed). An existing
    non-empty `out_dir` is replaced only when it is itself an earlier conversion.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not _is_previous_conversion(out_dir):
        raise TyrjaxError(
            f"output directory {out_dir} exists and is not an earlier GGUF conversion; "
            "choose an empty or new directory, or remove it"
        )
    config, tensors, tok = read_gguf(gguf_path)
    tokenizer = build_tokenizer(tok, source=f"GGUF file {gguf_path}")
    with atomic_dir(out_dir) as tmp:
        _write_model_dir(tmp, gguf_path, config, tensors, tok, tokenizer)
    return out_dir
