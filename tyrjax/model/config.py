"""ModelConfig: one frozen description for dense, masked and compact (pruned) models."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tyrjax.errors import TyrjaxError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
# A compact (pruned) model's config.json names one of these, with its per-layer widths under
# "tyrjax": a loader that does not know them refuses the directory instead of misreading it.
COMPACT_ARCHITECTURES = {
    "TyrjaxCompactLlamaForCausalLM": "llama",
    "TyrjaxCompactQwen2ForCausalLM": "qwen2",
}
COMPACT_MODEL_TYPE = "tyrjax_compact"
# The model_type transformers writes beside each architecture (its config class's).
ARCHITECTURE_MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and constants of a Llama-family decoder.

    `layer_heads`, `layer_kv_heads`, `layer_ffn` and `layer_kv_map` describe a compact
    (pruned) model: per layer, the kept query heads, kept KV heads, MLP width and, for each
    kept query head, the index of its KV head among the kept ones. They are None for a
    dense model, whose layers all have `n_heads`, `n_kv_heads` and `intermediate_size`.
    """

    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    o_bias: bool = False
    down_bias: bool = False
    architecture: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    layer_heads: tuple[int, ...] | None = None
    layer_kv_heads: tuple[int, ...] | None = None
    layer_ffn: tuple[int, ...] | None = None
    layer_kv_map: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise TyrjaxError(
                f"config: num_attention_heads={self.n_heads} is not a multiple of "
                f"num_key_value_heads={self.n_kv_heads}; fix config.json"
            )
        rope_type = self.rope_type
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise TyrjaxError(
                f"config: rope_scaling type {rope_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}"
            )

    @property
    def group_size(self) -> int:
        """Query heads per KV head in the dense model."""
        return self.n_heads // self.n_kv_heads

    @property
    def rope_type(self) -> str:
        scaling = dict(self.rope_scaling or ())
        return scaling.get("rope_type", scaling.get("type", "default"))

    @property
    def is_compact(self) -> bool:
        return self.layer_heads is not None

    def heads(self, layer: int) -> int:
        return self.layer_heads[layer] if self.layer_heads else self.n_heads

    def kv_heads(self, layer: int) -> int:
        return self.layer_kv_heads[layer] if self.layer_kv_heads else self.n_kv_heads

    def ffn(self, layer: int) -> int:
        return self.layer_ffn[layer] if self.layer_ffn else self.intermediate_size

    def kv_map(self, layer: int) -> tuple[int, ...]:
        """For each query head of `layer`, the index of the KV head it reads."""
        if self.layer_kv_map:
            return self.layer_kv_map[layer]
        return tuple(h // self.group_size for h in range(self.n_heads))

    def attn_params(self, layer: int) -> int:
        """Parameters of the q, k, v, o projections of one layer (biases included)."""
        d, hd = self.hidden_size, self.head_dim
        q, kv = self.heads(layer) * hd, self.kv_heads(layer) * hd
        n = d * q * 2 + d * kv * 2
        if self.attention_bias:
            n += q + 2 * kv
        return n + (d if self.o_bias else 0)

    def mlp_params(self, layer: int) -> int:
        return 3 * self.hidden_size * self.ffn(layer) + (self.hidden_size if self.down_bias else 0)

    def attn_mlp_params(self) -> int:
        """The parameters structured pruning counts: attention and MLP projections."""
        return sum(self.attn_params(i) + self.mlp_params(i) for i in range(self.n_layers))

    def total_params(self) -> int:
        d = self.hidden_size
        n = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        n += d * (2 * self.n_layers + 1)  # norms
        return n + self.attn_mlp_params()

    # --- Hugging Face config.json -------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        check_model_type(hf)
        archs = hf.get("architectures") or []
        known = {**SUPPORTED_ARCHITECTURES, **COMPACT_ARCHITECTURES}
        arch = next((known[a] for a in archs if a in known), None)
        if arch is None:
            model_type = hf.get("model_type")
            arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}.get(model_type)
        if arch is None:
            raise TyrjaxError(
                f"config: architecture {archs or hf.get('model_type')!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        n_heads = hf["num_attention_heads"]
        hidden = hf["hidden_size"]
        scaling = hf.get("rope_scaling") or None
        if scaling is None and isinstance(hf.get("rope_parameters"), dict):
            params = dict(hf["rope_parameters"])
            if params.get("rope_type", "default") != "default":
                scaling = params
        theta = hf.get("rope_theta")
        if theta is None:
            theta = (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        if hf.get("mlp_bias"):
            raise TyrjaxError("config: mlp_bias=true (biases on gate/up/down) is not supported; use a model without MLP biases")
        sliding = hf.get("sliding_window")
        if arch == "llama" and hf.get("model_type") == "mistral" and sliding and sliding < hf.get(
            "max_position_embeddings", 0
        ):
            raise TyrjaxError(
                "config: Mistral with a sliding window shorter than its context is not supported; "
                "use a checkpoint with sliding_window null (Mistral v0.2 and later)"
            )
        extra = hf.get("tyrjax") or {}
        if any(a in COMPACT_ARCHITECTURES for a in archs) and not extra.get("layer_heads"):
            raise TyrjaxError(f"config: {archs[0]} is a compact tyrjax model but config.json lacks its per-layer "
                              "widths (\"tyrjax\": layer_heads, ...); re-export the model with tyrjax")
        eos = hf.get("eos_token_id")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or hidden // n_heads,
            intermediate_size=hf["intermediate_size"],
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", arch == "qwen2")),
            o_bias=bool(extra.get("o_bias", arch == "llama" and hf.get("attention_bias", False))),
            down_bias=bool(extra.get("down_bias", False)),
            architecture=arch,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            layer_heads=_tuple_or_none(extra.get("layer_heads")),
            layer_kv_heads=_tuple_or_none(extra.get("layer_kv_heads")),
            layer_ffn=_tuple_or_none(extra.get("layer_ffn")),
            layer_kv_map=(
                tuple(tuple(m) for m in extra["layer_kv_map"]) if extra.get("layer_kv_map") else None
            ),
        )

    def to_hf(self) -> dict[str, Any]:
        """A config.json dict; a compact model names a tyrjax architecture (`COMPACT_ARCHITECTURES`)
        and its per-layer widths go under "tyrjax"."""
        arch = "Qwen2ForCausalLM" if self.architecture == "qwen2" else "LlamaForCausalLM"
        if self.is_compact:
            arch = next(a for a, base in COMPACT_ARCHITECTURES.items() if base == self.architecture)
        hf: dict[str, Any] = {
            "architectures": [arch],
            "model_type": COMPACT_MODEL_TYPE if self.is_compact else self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.architecture == "llama":
            hf["attention_bias"] = self.attention_bias
            hf["mlp_bias"] = False
        extra: dict[str, Any] = {}
        if self.o_bias != (self.architecture == "llama" and self.attention_bias):  # from_hf's default
            extra["o_bias"] = self.o_bias
        if self.down_bias:
            extra["down_bias"] = True
        if self.is_compact:
            extra.update(
                layer_heads=list(self.layer_heads),
                layer_kv_heads=list(self.layer_kv_heads),
                layer_ffn=list(self.layer_ffn),
                layer_kv_map=[list(m) for m in self.layer_kv_map],
            )
        if extra:
            hf["tyrjax"] = extra
        return hf

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise TyrjaxError(f"{path}: no config.json; point --model at a Hugging Face model directory") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TyrjaxError(f"{path}: not valid JSON ({e}); re-download or re-convert the model") from None
        try:
            return cls.from_hf(hf)
        except KeyError as e:
            raise TyrjaxError(f"{path}: config.json lacks the key {e}; it is not a Llama-family config") from None

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def check_model_type(hf: dict[str, Any]) -> None:
    """Refuse a config.json whose `model_type` is not the one its `architectures` entry implies
    (e.g. "gpt2" beside LlamaForCausalLM): which of the two is wrong cannot be guessed."""
    model_type = hf.get("model_type")
    if model_type is None:
        return
    for arch in hf.get("architectures") or []:
        expected = ARCHITECTURE_MODEL_TYPES.get(arch)
        if expected is not None and model_type != expected:
            raise TyrjaxError(
                f"config: model_type {model_type!r} contradicts architectures {arch!r} (whose model_type is "
                f"{expected!r}); fix whichever of the two fields is wrong in config.json"
            )


def _tuple_or_none(x: Any) -> tuple[int, ...] | None:
    return tuple(int(v) for v in x) if x else None
