"""`--train.compile=true`: each block compiled on its own, switched on only for the training forward + backward."""

from __future__ import annotations

import torch

from slm.config import TrainConfig
from slm.models import build_model
from slm.models.registry import preset_config
from slm.runtime import DistInfo
from slm.train.parallel import parallelize


def _compiled_calls(model) -> list[object]:
    return [u._compiled_call_impl for u in model.shard_units()]


def test_compiled_blocks_run_only_inside_a_micro_batch():
    model = build_model(preset_config("test", vocab_size=320))
    pm = parallelize(model, DistInfo(), TrainConfig(compile="true"))
    assert pm.module is model and pm.compiled is not None  # the blocks, not the model: parameter names unchanged
    assert pm.compiled.units == tuple(model.shard_units()) and len(pm.compiled.units) == model.cfg.n_layers
    assert _compiled_calls(model) == [None] * model.cfg.n_layers  # eval, samples, rollouts: eager
    with pm.micro_batch(last=True):
        assert all(callable(c) for c in _compiled_calls(model))
        assert len({id(c) for c in _compiled_calls(model)}) == model.cfg.n_layers
    assert _compiled_calls(model) == [None] * model.cfg.n_layers
    try:
        with pm.micro_batch(last=True):
            raise RuntimeError("a failing step")
    except RuntimeError:
        pass
    assert _compiled_calls(model) == [None] * model.cfg.n_layers


def test_eager_training_compiles_nothing():
    model = build_model(preset_config("test", vocab_size=320))
    pm = parallelize(model, DistInfo(), TrainConfig(compile="false"))
    assert pm.module is model and pm.compiled is None
    with pm.micro_batch(last=True):
        assert _compiled_calls(model) == [None] * model.cfg.n_layers


def test_a_model_without_blocks_is_compiled_whole(monkeypatch):
    model = build_model(preset_config("test", vocab_size=320))
    monkeypatch.setattr(model, "shard_units", lambda: [])
    pm = parallelize(model, DistInfo(), TrainConfig(compile="true"))
    assert isinstance(pm.module, torch._dynamo.eval_frame.OptimizedModule) and pm.module._orig_mod is model
    assert pm.compiled is None
