"""The shared training loop: EMA with its ramp, the finite-loss guard, histories, checkpoints."""

import math

import pytest
import torch
import torch.nn as nn

from mmtutor.loop import EMA, Loop, TrainConfig, TrainingDiverged


def test_ema_decay_ramps_up_then_holds_the_configured_value():
    ema = EMA(nn.Linear(2, 2), decay=0.995, rampup=0.1)
    half_life = math.log(0.5) / math.log(0.995)                 # ~138 steps
    assert ema.decay_at(0) == 0.0                               # the first update copies the model
    assert 0 < ema.decay_at(10) < ema.decay_at(100) < 0.995
    assert ema.decay_at(int(half_life / 0.1) + 1) == pytest.approx(0.995)   # reached at n = H / rampup
    assert ema.decay_at(10**6) == pytest.approx(0.995)
    # the old d = min(decay, (1+n)/(10+n)) never reached 0.999 in a 2000-step run; this one does
    slow = EMA(nn.Linear(2, 2), decay=0.999, rampup=0.5)
    assert slow.decay_at(2000) == pytest.approx(0.999)


def test_ema_average_is_the_formula():
    model = nn.Linear(3, 1, bias=False)
    ema = EMA(model, decay=0.9, rampup=1.0)
    history = []
    avg = None
    for step in range(30):
        with torch.no_grad():
            model.weight.copy_(torch.full((1, 3), float(step)))
        d = ema.decay_at(ema.n)
        ema.update(model)
        w = torch.full((1, 3), float(step))
        avg = w if avg is None else d * avg + (1 - d) * w
        history.append(d)
    torch.testing.assert_close(ema.module.weight, avg)
    assert history[-1] == pytest.approx(0.9)


def test_ema_state_round_trip_keeps_the_step_count():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.99)
    for _ in range(5):
        ema.update(model)
    other = EMA(nn.Linear(2, 2), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.n == 5
    torch.testing.assert_close(other.module.weight, ema.module.weight)


def _run(steps, losses, checkpoint_every=3, save=None, tmp=None):
    model = nn.Linear(2, 2)
    train = TrainConfig(steps=steps, batch_size=4, checkpoint_every=checkpoint_every, progress=False, log_every=1,
                        checkpoint=str(tmp / "m.pt") if tmp else None)
    loop = Loop("toy", train, {"model": model}, hint="Try something else.", save=save)
    for step in loop:
        with torch.no_grad():
            model.weight.add_(1.0)
        loop.check(loss=torch.tensor(losses(step)))
        loop.log(step, loss=losses(step))
    return model, loop


def test_loop_logs_and_times():
    model, loop = _run(5, lambda s: float(s))
    hist = loop.finish()
    assert hist["step"] == [1, 2, 3, 4, 5] and hist["loss"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert hist["steps"] == 5 and hist["total_seconds"] > 0 and hist["images_per_second"] > 0


def test_loop_restores_the_last_good_weights_and_names_the_step(tmp_path):
    saved = []
    with pytest.raises(TrainingDiverged, match=r"toy training diverged at step 4: loss became nan.*step 3.*"
                                               r"Try something else\.") as info:
        _run(10, lambda s: float("nan") if s == 4 else 1.0, save=lambda p, h: saved.append(p), tmp=tmp_path)
    assert "last good checkpoint (step 3)" in str(info.value)
    assert len(saved) == 2                               # at the start and after step 3


def test_loop_stops_at_max_seconds():
    model = nn.Linear(2, 2)
    loop = Loop("toy", TrainConfig(steps=10**6, batch_size=2, max_seconds=0.05, progress=False), {"m": model})
    n = sum(1 for _ in loop)
    assert 1 <= n < 10**6
