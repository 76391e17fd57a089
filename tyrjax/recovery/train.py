"""Fine-tuning after pruning: the settings, the compiled optax step and the loop with orbax
checkpoints every K steps, from which a killed run resumes to the same result."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.blocks import device_bytes
from tyrjax.model.decoder import Params
from tyrjax.parallel.memory import GB
from tyrjax.parallel.sharding import axis_size, put_axes, spec
from tyrjax.recovery.losses import check_loss, kd_chunks, kd_loss, lm_loss, lm_loss_bytes, uses_lm, uses_teacher
from tyrjax.recovery.modules import TARGETS, Decoder, LoRASpec, check_targets
from tyrjax.tyr.fitness import FitnessChunks, Teacher

METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 1e-3, "full": 1e-4}
# Settings that change how a run uses the machine, not its result: a run resumes under other values.
RUN_ONLY_SETTINGS = ("checkpoint_every", "device_memory_gb")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Recovery fine-tuning of a pruned model.

    `method` "lora" trains rank-`rank` adapters (scaled by `alpha / rank`) on the projections named
    by `targets`; "full" trains every parameter of the blocks and the final norm. The embedding and
    the LM head stay as pruning left them. `loss` is "kd" (KL from the dense teacher at its `topk`
    tokens), "lm" (next-token loss) or "kd+lm" (their sum). Training reads `tokens` tokens of the
    calibration split of `data`, in windows of `seq_len`, `batch_size` windows per step; AdamW with
    `lr` (None: 1e-3 for LoRA, 1e-4 for full), a linear warmup over `warmup` of the steps, a cosine
    decay to a tenth, and gradients clipped to norm 1. A checkpoint is saved every
    `checkpoint_every` steps; `device_memory_gb` is the per-device budget (None: the device's)."""

    method: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = tuple(TARGETS)
    loss: str = "kd"
    tokens: int = 65536
    seq_len: int = 512
    batch_size: int = 4
    lr: float | None = None
    warmup: float = 0.05
    weight_decay: float = 0.0
    topk: int = 64
    data: str = "general"
    seed: int = 0
    checkpoint_every: int = 25
    device_memory_gb: float | None = None

    def check(self) -> None:
        """Refuse bad settings before any work."""
        if self.method not in METHODS:
            raise TyrjaxError(f"--method {self.method}: unknown; use one of {', '.join(METHODS)}")
        check_loss(self.loss)
        if self.method == "lora":
            check_targets(self.targets)
            if self.rank < 1:
                raise TyrjaxError(f"--rank {self.rank}: must be at least 1")
        for name in ("tokens", "seq_len", "batch_size", "topk", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TyrjaxError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be a positive integer")
        if self.seq_len < 2:
            raise TyrjaxError(f"--seq-len {self.seq_len}: a window needs at least 2 tokens")
        if self.lr is not None and not self.lr > 0:
            raise TyrjaxError(f"--lr {self.lr}: must be positive")
        if not 0 <= self.warmup < 1:
            raise TyrjaxError(f"--warmup {self.warmup}: must lie in [0, 1)")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.method] if self.lr is None else self.lr

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.tokens / (self.batch_size * self.seq_len)))

    @property
    def windows(self) -> int:
        return self.steps * self.batch_size

    def lora(self) -> LoRASpec | None:
        return LoRASpec(self.rank, self.alpha, tuple(self.targets), self.seed) if self.method == "lora" else None

    def settings(self) -> dict[str, Any]:
        """What a run directory records: everything but the run-only settings."""
        settings = dataclasses.asdict(self)
        for name in RUN_ONLY_SETTINGS:
            del settings[name]
        if self.method != "lora":
            for name in ("rank", "alpha", "targets"):
                del settings[name]
        return settings


class TrainResult(NamedTuple):
    """The merged parameters and what training measured."""

    params: Params
    losses: np.ndarray  # (steps,) the loss of each step
    steps: int
    tokens: int
    wall_s: float  # the training loop (teacher included), summed over resumes
    step_s: float  # the compiled steps alone (compilation included), summed over resumes
    resumed_at: int  # the step a resumed run started from (0: a fresh run)
    warm_steps: int  # the steps this process ran after its first (which compiles)
    warm_step_s: float  # their compiled steps' seconds


# --- the model's state --------------------------------------------------------------------------
def trainable_filter(method: str):
    """The variables a method trains: LoRA factors, or every `nnx.Param` (the blocks and the final norm)."""
    return nnx.LoRAParam if method == "lora" else nnx.Param


def split_model(model: Decoder, method: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graph, trained variables, the rest)."""
    return nnx.split(model, trainable_filter(method), ...)


def _replicated_or_own(x: jax.Array, mesh: Mesh) -> NamedSharding:
    s = getattr(x, "sharding", None)
    if isinstance(s, NamedSharding) and s.mesh == mesh:
        return s
    return NamedSharding(mesh, PartitionSpec())


def place(tree: Any, mesh: Mesh | None) -> Any:
    """On a mesh, every array keeps its own layout there or is replicated; off a mesh, as it is."""
    if mesh is None:
        return tree
    return jax.device_put(tree, jax.tree.map(lambda x: _replicated_or_own(x, mesh), tree))


def shardings_of(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


# --- the step ------------------------------------------------------------------------------------
def optimizer(config: FinetuneConfig) -> optax.GradientTransformation:
    steps = config.steps
    warmup = int(config.warmup * steps)
    lr = config.learning_rate
    schedule = optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(steps, warmup + 1), lr / 10)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=config.weight_decay))


def model_loss(model: Decoder, tokens: jax.Array, t_idx: jax.Array | None, t_logp: jax.Array | None, loss: str,
               chunks: FitnessChunks | None) -> jax.Array:
    """The training loss of `model` on the windows `tokens`, given the teacher's top-k where used."""
    h = model.hidden(tokens)
    head = model.head()
    total = jnp.zeros((), jnp.float32)
    if uses_teacher(loss):
        total = total + kd_loss(head, model.cfg, h, t_idx, t_logp, chunks)
    if uses_lm(loss):
        total = total + lm_loss(head, model.cfg, h, tokens)
    return total


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss: str, chunks: FitnessChunks | None,
                    state_shardings: tuple[Any, Any, Any] | None = None) -> Callable:
    """One compiled step `(trained, rest, opt_state, tokens, t_idx, t_logp) -> (trained, opt_state, loss)`:
    the same shapes every step, so it compiles once. On a mesh, `state_shardings` (of trained, rest
    and the optimiser state) pins the layouts in and out."""

    def step(trained, rest, opt_state, tokens, t_idx, t_logp):
        def loss_of(t):
            return model_loss(nnx.merge(graphdef, t, rest), tokens, t_idx, t_logp, loss, chunks)

        value, grads = jax.value_and_grad(loss_of)(trained)
        updates, opt_state = tx.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state, value

    if state_shardings is None:
        return jax.jit(step, donate_argnums=(0, 2))
    trained_s, rest_s, opt_s = state_shardings
    return jax.jit(step, donate_argnums=(0, 2), in_shardings=(trained_s, rest_s, opt_s, None, None, None),
                   out_shardings=(trained_s, opt_s, None))


def batch_windows(windows: np.ndarray, step: int, batch_size: int) -> np.ndarray:
    return windows[step * batch_size:(step + 1) * batch_size]


# --- memory -------------------------------------------------------------------------------------
def activation_bytes(cfg: ModelConfig, windows: int, length: int) -> int:
    """Per-device bytes of the activations a backward pass keeps for `windows` of `length` tokens."""
    per_layer = 0
    for i in range(cfg.n_layers):
        per_layer = max(per_layer, 12 * cfg.hidden_size + 4 * cfg.ffn(i) + 4 * cfg.heads(i) * cfg.head_dim
                        + 2 * cfg.heads(i) * length)
    return 4 * windows * length * per_layer * cfg.n_layers


def step_chunks(cfg: ModelConfig, config: FinetuneConfig, state_bytes: int, trained_bytes: int, mesh: Mesh | None,
                budget_bytes: int) -> FitnessChunks | None:
    """Check that one step fits `budget_bytes` per device: the model, three copies of what is trained
    (gradients, two Adam moments), the activations and the loss's logits; the top-k chunks of the KD
    loss are the largest that fit beside them. Stops naming --batch-size and --device-memory."""
    local = -(-config.batch_size // (axis_size(mesh, "batch") if mesh is not None else 1))
    fixed = state_bytes + 3 * trained_bytes + activation_bytes(cfg, local, config.seq_len)
    if uses_lm(config.loss):
        fixed += lm_loss_bytes(cfg, local, config.seq_len)
    if fixed > budget_bytes:
        need = math.ceil(fixed / GB * 100) / 100
        raise TyrjaxError(f"fine-tuning needs about {need:g} GB per device for --batch-size {config.batch_size} of "
                          f"--seq-len {config.seq_len} (model, optimiser state, activations), but the budget is "
                          f"{budget_bytes / GB:.3g} GB; lower --batch-size or --seq-len, or pass --device-memory {need:g}")
    if not uses_teacher(config.loss):
        return None
    return kd_chunks(cfg, local, config.seq_len, min(config.topk, cfg.vocab_size), budget_bytes, fixed)


# --- checkpoints --------------------------------------------------------------------------------
CHECKPOINT_DIR = "checkpoints"


def _manager(directory: Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_checkpoint(directory: Path, step: int, state: Any, losses: np.ndarray, seconds: tuple[float, float]) -> None:
    """The trained variables and optimiser state after `step` steps, the losses so far and the
    seconds (loop, steps alone) spent; orbax writes each checkpoint whole or not at all."""
    import orbax.checkpoint as ocp

    tree = {"state": {f"{i:06d}": x for i, x in enumerate(jax.tree.leaves(state))},
            "losses": np.asarray(losses, np.float32), "seconds": np.asarray(seconds, np.float64)}
    with _manager(directory) as manager:
        manager.save(step, args=ocp.args.StandardSave(tree))
        manager.wait_until_finished()


def restore_checkpoint(directory: Path, like: Any, steps: int) -> tuple[int, Any, np.ndarray, np.ndarray] | None:
    """(step, state, losses, seconds) of the latest checkpoint in `directory`, its state in the
    structure and layout of `like`; None when there is none."""
    import orbax.checkpoint as ocp

    if not Path(directory).is_dir():
        return None
    leaves, treedef = jax.tree.flatten(like)
    with _manager(directory) as manager:
        step = manager.latest_step()
        if step is None:
            return None
        abstract = {"state": {f"{i:06d}": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                              for i, x in enumerate(leaves)},
                    "losses": np.zeros(steps, np.float32), "seconds": np.zeros(2, np.float64)}
        try:
            tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001  (orbax raises many kinds of error for a bad checkpoint)
            raise TyrjaxError(f"{directory}: cannot restore fine-tuning checkpoint {step} ({e}); delete the "
                              "directory to start the fine-tuning afresh") from None
    state = jax.tree.unflatten(treedef, [tree["state"][f"{i:06d}"] for i in range(len(leaves))])
    return step, state, np.asarray(tree["losses"]), np.asarray(tree["seconds"])


# --- the loop -----------------------------------------------------------------------------------
TeacherFn = Callable[[np.ndarray], Teacher]


def shard_masks(masks: list[dict[str, np.ndarray]], mesh: Mesh | None, head_dim: int) -> list[dict[str, Any]]:
    """The keep-masks laid out like the weights they mask."""
    if mesh is None:
        return masks
    from tyrjax.model.axes import axes_of_layer

    return [put_axes(m, axes_of_layer(m), mesh, head_dim) for m in masks]


def train(params: Params, cfg: ModelConfig, windows: np.ndarray, config: FinetuneConfig, *,
          masks: list[dict[str, np.ndarray]] | None = None, teacher: TeacherFn | None = None,
          checkpoint_dir: Path | None = None, mesh: Mesh | None = None, budget_bytes: int,
          progress: bool = True, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Fine-tune `params` on `windows` (config.windows, config.seq_len): one compiled step per batch
    of `config.batch_size` windows, in order. `masks` keep a sparse model's zeros; `teacher` gives
    the dense model's top-k for a batch (needed by the KD loss). With `checkpoint_dir`, a checkpoint
    every `config.checkpoint_every` steps and at the end; a rerun resumes from the latest one. On a
    `mesh` the parameters take their logical layouts (`model.axes`: FSDP and tensor axes split them),
LoRA factors and optimiser scalars are replicated, and the windows of a batch split over the data axes."""
    from tqdm.auto import tqdm

    if uses_teacher(config.loss) and teacher is None:
        raise TyrjaxError(f"--loss {config.loss} distils from a teacher; pass --teacher DENSE_MODEL or use --loss lm")
    steps = config.steps
    if mesh is not None:
        from tyrjax.model.axes import shard_params

        params = shard_params(params, cfg, mesh)
    model = Decoder(params, cfg, shard_masks(masks, mesh, cfg.head_dim) if masks else None, config.lora())
    graphdef, trained, rest = split_model(model, config.method)
    del model
    tx = optimizer(config)
    # The step donates what it trains: copies, so the caller's arrays (maybe the teacher's) stay alive.
    trained, rest = jax.tree.map(jnp.copy, place(trained, mesh)), place(rest, mesh)
    opt_state = place(tx.init(trained), mesh)
    chunks = step_chunks(cfg, config, device_bytes(rest), device_bytes(trained), mesh, budget_bytes)
    shardings = None if mesh is None else (shardings_of(trained), shardings_of(rest), shardings_of(opt_state))
    step_fn = make_train_step(graphdef, tx, config.loss, chunks, shardings)
    batch_sharding = None if mesh is None else NamedSharding(mesh, spec(("batch",), (config.batch_size,), mesh))

    start, losses, seconds = 0, np.full(steps, np.nan, np.float32), np.zeros(2)
    warm_steps, warm_s = 0, 0.0
    if checkpoint_dir is not None:
        restored = restore_checkpoint(checkpoint_dir, (trained, opt_state), steps)
        if restored is not None:
            start, (trained, opt_state), losses, seconds = restored
    bar = tqdm(total=steps, initial=start, desc=f"finetune {config.method}", unit="step", disable=not progress)
    tokens_per_step = config.batch_size * config.seq_len
    for step in range(start, steps):
        t0 = time.perf_counter()
        tokens = batch_windows(windows, step, config.batch_size)
        t_idx = t_logp = None
        if teacher is not None and uses_teacher(config.loss):
            top = teacher(tokens)
            t_idx, t_logp = _put(top.idx, batch_sharding), _put(top.logp, batch_sharding)
        t1 = time.perf_counter()
        trained, opt_state, value = step_fn(trained, rest, opt_state, _put(tokens, batch_sharding), t_idx, t_logp)
        losses[step] = float(value)
        t2 = time.perf_counter()
        seconds = seconds + (t2 - t0, t2 - t1)
        if step > start:
            warm_steps, warm_s = warm_steps + 1, warm_s + (t2 - t1)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[step]:.4f}", tok_s=f"{tokens_per_step / (t2 - t0):,.0f}")
        done = step + 1
        if checkpoint_dir is not None and (done % config.checkpoint_every == 0 or done == steps):
            save_checkpoint(checkpoint_dir, done, (trained, opt_state), losses, tuple(seconds))
        if on_step is not None:
            on_step(done, float(losses[step]))
    bar.close()
    merged = nnx.merge(graphdef, trained, rest).merged_params()
    return TrainResult(merged, losses, steps, steps * tokens_per_step, round(float(seconds[0]), 3),
                       round(float(seconds[1]), 3), start, warm_steps, round(warm_s, 3))


def _put(x: np.ndarray, sharding: NamedSharding | None) -> jax.Array:
    if sharding is None:
        return jnp.asarray(x)
    return jax.device_put(np.asarray(x), sharding)
