"""`--train.compile=true`: the whole model compiled on one process / DDP; a sharded run's units compiled on their own
and switched on only for the training forward + backward."""

from __future__ import annotations

import torch

from slm.config import TrainConfig
from slm.models import build_model
from slm.models.registry import preset_config
from slm.runtime import DistInfo
from slm.train.parallel import CompiledUnits, ParallelModel, parallelize


def _compiled_calls(model) -> list[object]:
    return [u._compiled_call_impl for u in model.shard_units()]


def test_one_process_compiles_the_whole_model():
    model = build_model(preset_config("test", vocab_size=320))
    pm = parallelize(model, DistInfo(), TrainConfig(compile="true"))
    assert isinstance(pm.module, torch._dynamo.eval_frame.OptimizedModule) and pm.module._orig_mod is model
    assert pm.compiled is None and _compiled_calls(model) == [None] * model.cfg.n_layers


def test_compiled_units_run_only_inside_a_micro_batch():
    model = build_model(preset_config("test", vocab_size=320))
    units = CompiledUnits(model.shard_units(), model)
    pm = ParallelModel(model, distributed=False, kind="fsdp", compiled=units)
    n = model.cfg.n_layers
    assert len(units.units) == n and _compiled_calls(model) == [None] * n  # eval, samples, rollouts: eager
    with pm.micro_batch(last=True):
        calls = _compiled_calls(model)
        assert all(callable(c) for c in calls) and len({id(c) for c in calls}) == n and model.compile_loss
    assert _compiled_calls(model) == [None] * n and not model.compile_loss
    try:
        with pm.micro_batch(last=True):
            raise RuntimeError("a failing step")
    except RuntimeError:
        pass
    assert _compiled_calls(model) == [None] * n and not model.compile_loss


def test_eager_training_compiles_nothing():
    model = build_model(preset_config("test", vocab_size=320))
    pm = parallelize(model, DistInfo(), TrainConfig(compile="false"))
    assert pm.module is model and pm.compiled is None
    with pm.micro_batch(last=True):
        assert _compiled_calls(model) == [None] * model.cfg.n_layers and not model.compile_loss
