"""The tiny Týr model, settings and reference scorers shared by the tests of tyrjax.tyr."""
import textwrap

import jax.numpy as jnp
import numpy as np

from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import forward, init_random_params
from tyrjax.tyr.genome import layer_index, split
from tyrjax.tyr.search.levels import ATTENTION, MLP
from tyrjax.tyr.fitness import kl_topk
from tyrjax.tyr.pipeline import TyrConfig, initial_grid
from tyrjax.tyr.supernet import BlockLevels


CFG = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)


TCFG = TyrConfig(iterations=2, generations=3, offspring=6, stages=((6, 64), (2, 128), (1, 256)), topk=16,
                 candidate_batch=4, mlp_multiple=4, interval=0.25)


def tiny_setup():
    """A tiny random model, calibration windows and the first level grid at 40 %."""
    params = init_random_params(CFG, 0, scale=0.2)
    calib = np.random.default_rng(0).integers(0, 64, (8, 32))
    grid = initial_grid(CFG, 0.4, TCFG)
    return params, calib, grid


def stacked(supernet) -> BlockLevels:
    """Every block's levels stacked (L, E, ...) in memory: the plain form the tests compare with."""
    blocks = [supernet.block(b) for b in range(supernet.n_blocks)]
    return BlockLevels(*(np.stack([getattr(b, f) for b in blocks]) for f in BlockLevels._fields))


def reference_kl(params, net: BlockLevels, genome, tokens, t_idx, t_logp) -> float:
    """A candidate's KL from the full-vocabulary logits of the stacked model with its levels."""
    blocks, (a, m) = np.arange(CFG.n_layers), split(genome)
    p = dict(params, layers=dict(params["layers"], wo=net.wo[blocks, a], w_down=net.w_down[blocks, m]))
    logits = forward(p, CFG, tokens, jnp.asarray(net.head_keep[blocks, a], jnp.float32),
                     jnp.asarray(net.ffn_keep[blocks, m], jnp.float32))
    student = jnp.take_along_axis(logits, jnp.asarray(t_idx), axis=-1)
    return float(kl_topk(student, jnp.asarray(t_logp)).mean())


def last_block_offspring(parent: np.ndarray, grid, n: int) -> np.ndarray:
    """`n` genomes that differ from `parent` in the last block only, each at other valid levels."""
    attn, mlp = layer_index(CFG.n_layers - 1, ATTENTION), layer_index(CFG.n_layers - 1, MLP)
    genomes = np.repeat(parent[None], n, 0)
    genomes[:, attn] = np.flatnonzero(grid.valid[attn])[:n]
    genomes[:, mlp] = np.flatnonzero(grid.valid[mlp])[-n:]
    return genomes


BUILD_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import tyrjax.tyr.supernet as sn_mod
    from tyrjax.model.config import ModelConfig
    from tyrjax.model.decoder import init_random_params
    from tyrjax.tyr.pipeline import TyrConfig, initial_grid
    cfg = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64)
    params = init_random_params(cfg, 0, scale=0.2)
    calib = np.random.default_rng(0).integers(0, 64, (8, 32))
    grid = initial_grid(cfg, 0.4, TyrConfig(mlp_multiple=4, interval=0.25))
    kill_after = int(sys.argv[2])
    save = sn_mod.SupernetStore.save_block
    def save_then_die(self, block, levels, stream):
        save(self, block, levels, stream)
        if block + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    sn_mod.SupernetStore.save_block = save_then_die
    net = sn_mod.build_supernet(params, cfg, calib, grid, store_dir=sys.argv[1], progress=False)
    np.savez(sys.argv[3], *[a for b in range(net.n_blocks) for a in net.block(b)])
""")
