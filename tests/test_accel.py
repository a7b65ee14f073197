"""Tests of `miniai.accel`: mixed precision under autocast (bf16, and fp16 with loss scaling), channels-last, `to_fast`.

Everything runs on the CPU with tiny synthetic models and batches: PyTorch implements bf16 and fp16 autocast and
`GradScaler` on the CPU, so the callbacks' logic can be checked without a GPU.
"""

import copy, math, warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from miniai.learner import *
import miniai.accel as accel
from miniai.accel import *
from conftest import DLs


# ---------------------------------------------------------------------------------------------------------------------
# Helpers



def cls_batches(n, bs=8, shape=(3, 6, 6), nc=4, seed=0):
    "`n` classification batches: inputs `(bs, *shape)`, integer targets below `nc`."
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, *shape, generator=g), torch.randint(0, nc, (bs,), generator=g)) for _ in range(n)]


def tiny_cnn(seed=0, nc=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4*6*6, nc))


def tiny_lin(seed=0, ni=5, nc=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(ni, 8), nn.ReLU(), nn.Linear(8, nc))


def lin_batches(n, bs=8, ni=5, nc=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, ni, generator=g), torch.randint(0, nc, (bs,), generator=g)) for _ in range(n)]


def params_of(model): return [p.detach().clone() for p in model.parameters()]


class Record(Callback):
    "Record dtypes, the loss and autocast state at each event (runs after `MixedPrecisionCB`, order 10)."
    order = 20
    def __init__(self): self.log = []
    def after_predict(self, learn):
        self.log.append(('predict', learn.preds.dtype, torch.is_autocast_enabled('cpu')))
    def after_loss(self, learn):
        self.log.append(('loss', learn.loss.dtype, torch.is_autocast_enabled('cpu'),
                         next(learn.model.parameters()).dtype))
    def after_batch(self, learn): self.log.append(('batch', learn.loss.item(), learn.training))

    def of(self, ev): return [o for o in self.log if o[0] == ev]


@pytest.fixture(autouse=True)
def _no_autocast_leak():
    "Every test starts and must end outside autocast."
    assert not torch.is_autocast_enabled('cpu')
    yield
    assert not torch.is_autocast_enabled('cpu')


# ---------------------------------------------------------------------------------------------------------------------
# bfloat16

def test_bf16_dtypes_preds_bf16_loss_and_params_fp32():
    rec = Record()
    learn = TrainLearner(tiny_cnn(), DLs(cls_batches(2)), F.cross_entropy, lr=0.1,
                         cbs=[MixedPrecisionCB(torch.bfloat16), rec])
    learn.fit(1)
    preds, losses = rec.of('predict'), rec.of('loss')
    assert len(preds) == 4 and len(losses) == 4  # 2 train + 2 valid batches
    assert all(p[1] == torch.bfloat16 and p[2] for p in preds)            # forward ran under autocast, output bf16
    assert all(l[1] == torch.float32 for l in losses)                       # loss in float32
    assert all(l[3] == torch.float32 for l in losses)                       # weights stay float32
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())


def test_bf16_fit_changes_weights_and_loss_finite():
    rec = Record()
    learn = TrainLearner(tiny_cnn(), DLs(cls_batches(3)), F.cross_entropy, lr=0.1,
                         cbs=[MixedPrecisionCB(torch.bfloat16), rec])
    before = params_of(learn.model)
    learn.fit(1)
    after = params_of(learn.model)
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    losses = [b[1] for b in rec.of('batch')]
    assert len(losses) == 6 and all(math.isfinite(l) for l in losses)


def test_bf16_close_to_fp32():
    "A few SGD steps of a tiny model in bf16 end close to the same steps in float32 (bf16 has ~3 significant digits)."
    def run(cbs):
        rec = Record()
        learn = TrainLearner(tiny_lin(seed=3), DLs(lin_batches(5, seed=4)), F.cross_entropy, lr=0.1, cbs=cbs + [rec])
        learn.fit(1, valid=False)
        return params_of(learn.model), [b[1] for b in rec.of('batch')]
    p32, l32 = run([])
    p16, l16 = run([MixedPrecisionCB(torch.bfloat16)])
    for a, b in zip(p32, p16):
        assert not torch.equal(a, b)                       # bf16 really ran: not bit-identical ...
        torch.testing.assert_close(b, a, atol=2e-2, rtol=2e-2)  # ... but close
    torch.testing.assert_close(torch.tensor(l16), torch.tensor(l32), atol=2e-2, rtol=2e-2)


def test_bf16_works_with_traincb_and_momentum_learner():
    for learn in [Learner(tiny_lin(), DLs(lin_batches(2)), F.cross_entropy, lr=0.1,
                          cbs=[TrainCB(), MixedPrecisionCB(torch.bfloat16)]),
                  MomentumLearner(tiny_lin(), DLs(lin_batches(2)), F.cross_entropy, lr=0.1,
                                  cbs=[MixedPrecisionCB(torch.bfloat16)])]:
        rec = Record()
        before = params_of(learn.model)
        learn.fit(1, cbs=rec)
        assert all(p[1] == torch.bfloat16 for p in rec.of('predict'))
        assert not torch.equal(before[0], params_of(learn.model)[0])


# ---------------------------------------------------------------------------------------------------------------------
# autocast is entered and left at the right moments

def test_autocast_on_for_forward_and_loss_off_after_loss():
    seen = []
    def loss_func(p, y):
        seen.append(torch.is_autocast_enabled('cpu'))
        return F.cross_entropy(p, y)
    class InModel(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(5, 4)
        def forward(self, x):
            seen.append(torch.is_autocast_enabled('cpu'))
            return self.lin(x)
    class Backward(Callback):
        order = 20
        def after_loss(self, learn): seen.append(('after_loss', torch.is_autocast_enabled('cpu')))
        def after_backward(self, learn): seen.append(('after_backward', torch.is_autocast_enabled('cpu')))
        def after_batch(self, learn): seen.append(('after_batch', torch.is_autocast_enabled('cpu')))
    learn = TrainLearner(InModel(), DLs(lin_batches(1)), loss_func, lr=0.1, cbs=[MixedPrecisionCB(torch.bfloat16), Backward()])
    learn.fit(1)
    assert seen == [True, True, ('after_loss', False), ('after_backward', False), ('after_batch', False),  # train
                    True, True, ('after_loss', False), ('after_batch', False)]                           # valid
    assert not torch.is_autocast_enabled('cpu')


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_left_when_model_raises(dtype):
    class Boom(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(5, 4)
        def forward(self, x):
            assert torch.is_autocast_enabled('cpu')
            raise RuntimeError('boom')
    learn = TrainLearner(Boom(), DLs(lin_batches(1)), F.cross_entropy, lr=0.1, cbs=[MixedPrecisionCB(dtype)])
    with pytest.raises(RuntimeError, match='boom'): learn.fit(1)
    assert not torch.is_autocast_enabled('cpu')
    assert torch.get_autocast_dtype('cpu') == torch.bfloat16  # CPU autocast's default dtype is restored too


def test_autocast_left_when_batch_cancelled_inside_autocast():
    class CancelAfterPredict(Callback):
        order = 20
        def after_predict(self, learn): raise CancelBatchException()
    rec = Record()
    learn = TrainLearner(tiny_lin(), DLs(lin_batches(2)), F.cross_entropy, lr=0.1,
                         cbs=[MixedPrecisionCB(torch.bfloat16), rec, CancelAfterPredict()])
    learn.fit(1)
    assert len(rec.of('predict')) == 4 and all(p[2] for p in rec.of('predict'))
    assert not torch.is_autocast_enabled('cpu')


# ---------------------------------------------------------------------------------------------------------------------
# float16 with loss scaling

def test_fp16_metrics_see_unscaled_loss():
    "With lr=0 the weights don't move, so the loss of each batch is known beforehand in float32."
    model, batches = tiny_lin(), lin_batches(3)
    with torch.no_grad(): expected = [F.cross_entropy(model(x), y).item() for x, y in batches]
    rec, mp = Record(), MixedPrecisionCB(torch.float16)
    metrics = MetricsCB()
    metrics._log = lambda d: None
    learn = TrainLearner(model, DLs(batches), F.cross_entropy, lr=0., cbs=[mp, rec, metrics])
    learn.fit(1)
    seen = [b[1] for b in rec.of('batch') if b[2]]
    assert len(seen) == 3
    assert seen == pytest.approx(expected, rel=1e-2)  # not multiplied by the 65536 scale
    assert metrics.history[0]['train'] and metrics.history[0]['loss'] == pytest.approx(sum(expected)/3, rel=1e-2)
    assert mp.scaler is not None and mp.scaler.get_scale() == 65536.0


def test_fp16_loss_is_scaled_for_backward():
    "Callbacks running between the scaling (after_loss) and the unscaling (after_backward) see the scaled loss."
    class Peek(Callback):
        order = 20
        def after_loss(self, learn):
            if learn.training: self.scaled = learn.loss.item()
        def after_batch(self, learn):
            if learn.training: self.real = learn.loss.item()
    peek, mp = Peek(), MixedPrecisionCB(torch.float16)
    TrainLearner(tiny_lin(), DLs(lin_batches(1)), F.cross_entropy, lr=0.1, cbs=[mp, peek]).fit(1, valid=False)
    assert peek.scaled == pytest.approx(peek.real * 65536.0, rel=1e-3)


def test_fp16_gradients_unscaled_and_step_taken():
    "After `after_backward` the gradients are the real ones (close to fp32 grads), and SGD moves weights by lr*grad."
    model = tiny_lin()
    x, y = lin_batches(1)[0]
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    ref_grads = [p.grad.clone() for p in ref.parameters()]
    class Grads(Callback):
        order = 20
        def after_backward(self, learn): self.grads = [p.grad.clone() for p in learn.model.parameters()]
    g, mp = Grads(), MixedPrecisionCB(torch.float16)
    before = params_of(model)
    TrainLearner(model, DLs([(x, y)]), F.cross_entropy, lr=0.5, cbs=[mp, g]).fit(1, valid=False)
    for a, b in zip(g.grads, ref_grads): torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-2)
    for p0, p1, gr in zip(before, params_of(model), g.grads): torch.testing.assert_close(p1, p0 - 0.5*gr)
    assert mp.scaler._get_growth_tracker() == 1  # one successful step counted by the scaler's update
    assert mp.scaler.get_scale() == 65536.0


def test_fp16_overflow_skips_step_and_lowers_scale():
    model = tiny_lin()
    batches = lin_batches(2)
    hits = []
    def poison(grad):  # the first training batch's gradient overflows
        hits.append(1)
        return torch.full_like(grad, math.inf) if len(hits) == 1 else grad
    model[0].weight.register_hook(poison)
    rec, mp = Record(), MixedPrecisionCB(torch.float16)
    learn = TrainLearner(model, DLs(batches[:1]), F.cross_entropy, lr=0.5, cbs=[mp, rec])
    before = params_of(model)
    learn.fit(1, valid=False)
    assert hits == [1]
    for a, b in zip(before, params_of(model)): assert torch.equal(a, b)  # no parameter moved
    assert mp.scaler.get_scale() == 32768.0                             # backed off by half
    assert rec.of('batch') == []                                         # the batch was skipped (no after_batch)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    # The next batch, without overflow, steps normally at the lowered scale.
    learn.fit(1, valid=False)
    assert hits == [1, 1]
    assert not torch.equal(before[0], model[0].weight)
    assert len(rec.of('batch')) == 1 and math.isfinite(rec.of('batch')[0][1])


def test_fp16_inf_loss_is_divergence_and_takes_no_step():
    "An infinite loss is not an overflow the scaler can fix (that is infinite *gradients*, tested above): the run stops."
    from miniai.guards import DivergedError
    model = tiny_lin()
    mp = MixedPrecisionCB(torch.float16)
    learn = TrainLearner(model, DLs(lin_batches(1)), lambda p, y: F.cross_entropy(p, y) * math.inf, lr=0.5, cbs=[mp])
    before = params_of(model)
    with pytest.raises(DivergedError, match='loss is inf'): learn.fit(1, valid=False)
    for a, b in zip(before, params_of(model)): assert torch.equal(a, b)


def test_fp16_validation_not_scaled():
    rec, mp = Record(), MixedPrecisionCB(torch.float16)
    model, batches = tiny_lin(), lin_batches(2)
    with torch.no_grad(): expected = [F.cross_entropy(model(x), y).item() for x, y in batches]
    TrainLearner(model, DLs(batches), F.cross_entropy, lr=0.1, cbs=[mp, rec]).fit(1, train=False)
    assert [b[1] for b in rec.of('batch')] == pytest.approx(expected, rel=1e-2)
    assert all(p[1] == torch.float16 for p in rec.of('predict'))


def test_fp16_momentum_learner_keeps_momentum():
    "lr=0 and the same batch twice: after the 2nd backward the grads should be mom*g + g = 1.85 g, as in float32."
    batch = lin_batches(1)[0]
    def grads_after_second_backward(cbs):
        class G(Callback):
            order = 20
            def after_backward(self, learn): self.g = learn.model[0].weight.grad.clone()
        g = G()
        MomentumLearner(tiny_lin(), DLs([batch, batch]), F.cross_entropy, lr=0., cbs=cbs + [g], mom=0.85).fit(1, valid=False)
        return g.g
    g32 = grads_after_second_backward([])
    g16 = grads_after_second_backward([MixedPrecisionCB(torch.float16)])
    torch.testing.assert_close(g16, g32, atol=5e-3, rtol=5e-2)


# ---------------------------------------------------------------------------------------------------------------------
# Picking the dtype

@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.int8, 'bf16'])
def test_invalid_dtype_raises(dtype):
    with pytest.raises(ValueError, match='bfloat16, torch.float16 or None'): MixedPrecisionCB(dtype)  # at once, not at fit


def test_no_fast_bf16_on_cpu_warns_and_trains_fp32(monkeypatch):
    monkeypatch.setattr(accel, 'cpu_has_fast_bf16', lambda: False)
    rec, mp = Record(), MixedPrecisionCB()
    learn = TrainLearner(tiny_lin(), DLs(lin_batches(2)), F.cross_entropy, lr=0.1, cbs=[mp, rec])
    before = params_of(learn.model)
    with pytest.warns(UserWarning, match='float32'): learn.fit(1)
    assert mp.active_dtype is None and mp.scaler is None
    assert len(rec.of('predict')) == 4
    assert all(p[1] == torch.float32 and not p[2] for p in rec.of('predict'))
    assert not torch.equal(before[0], learn.model[0].weight)


def test_fast_bf16_cpu_picks_bf16_without_warning(monkeypatch):
    monkeypatch.setattr(accel, 'cpu_has_fast_bf16', lambda: True)
    rec, mp = Record(), MixedPrecisionCB()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        TrainLearner(tiny_lin(), DLs(lin_batches(1)), F.cross_entropy, lr=0.1, cbs=[mp, rec]).fit(1)
    assert mp.active_dtype == torch.bfloat16 and mp.scaler is None
    assert all(p[1] == torch.bfloat16 for p in rec.of('predict'))


def test_cpu_has_fast_bf16_returns_bool():
    assert isinstance(cpu_has_fast_bf16(), bool)


# ---------------------------------------------------------------------------------------------------------------------
# Channels-last

def test_channels_last_model_and_inputs():
    class Peek(Callback):
        order = 20
        def after_predict(self, learn):
            self.x_cl = learn.batch[0].is_contiguous(memory_format=torch.channels_last)
            self.w_cl = learn.model[0].weight.is_contiguous(memory_format=torch.channels_last)
            self.y = learn.batch[1]
    model, batches = tiny_cnn(), cls_batches(1)
    assert not model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not batches[0][0].is_contiguous(memory_format=torch.channels_last)
    peek = Peek()
    learn = TrainLearner(model, DLs(batches), F.cross_entropy, lr=0.1, cbs=[ChannelsLastCB(), peek])
    learn.fit(1)
    assert peek.x_cl and peek.w_cl
    assert torch.equal(peek.y, batches[0][1])     # targets passed through untouched
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_leaves_non_4d_inputs():
    seen = []
    class Peek(Callback):
        order = 20
        def before_batch(self, learn): seen.append((type(learn.batch), learn.batch[0].shape, learn.batch[0].is_contiguous()))
    batches = lin_batches(1)
    TrainLearner(tiny_lin(), DLs(batches), F.cross_entropy, lr=0.1, cbs=[ChannelsLastCB(), Peek()]).fit(1, valid=False)
    assert seen == [(tuple, torch.Size([8, 5]), True)]


def test_channels_last_same_result():
    x, y = cls_batches(1)[0]
    m1 = tiny_cnn()
    with torch.no_grad(): ref = m1(x)
    rec = []
    class P(Callback):
        order = 20
        def after_predict(self, learn): rec.append(learn.preds.detach().clone())
    TrainLearner(m1, DLs([(x, y)]), F.cross_entropy, lr=0.1, cbs=[ChannelsLastCB(), P()]).fit(1, train=False)
    torch.testing.assert_close(rec[0], ref)


# ---------------------------------------------------------------------------------------------------------------------
# to_fast

def test_to_fast_adds_callbacks_once():
    other = MetricsCB()
    learn = TrainLearner(tiny_cnn(), DLs(cls_batches(1)), F.cross_entropy, lr=0.1, cbs=[other])
    assert learn.to_fast(torch.bfloat16) is learn
    learn.to_fast(torch.bfloat16)
    mps = [cb for cb in learn.cbs if isinstance(cb, MixedPrecisionCB)]
    cls = [cb for cb in learn.cbs if isinstance(cb, ChannelsLastCB)]
    assert len(mps) == 1 and len(cls) == 1 and mps[0].dtype == torch.bfloat16
    assert other in learn.cbs and len(learn.cbs) == 3
    learn.to_fast(channels_last=False)
    assert [type(cb) for cb in learn.cbs] == [MetricsCB, MixedPrecisionCB]
    assert learn.cbs[1].dtype is None


def test_to_fast_fit_runs_bf16_channels_last():
    class Peek(Callback):
        order = 20
        def after_predict(self, learn):
            self.dtype = learn.preds.dtype
            self.cl = learn.batch[0].is_contiguous(memory_format=torch.channels_last)
    peek = Peek()
    learn = TrainLearner(tiny_cnn(), DLs(cls_batches(2)), F.cross_entropy, lr=0.1).to_fast(torch.bfloat16)
    before = params_of(learn.model)
    learn.fit(1, cbs=[peek])  # extra per-fit callbacks still work on the learner's callback list
    assert peek.dtype == torch.bfloat16 and peek.cl
    assert not torch.equal(before[0], learn.model[0].weight)
    assert peek not in learn.cbs and len(learn.cbs) == 2


def test_machine_info_one_line():
    s = machine_info()
    assert isinstance(s, str) and '\n' not in s
    assert f'torch {torch.__version__}' in s and 'core' in s


def test_machine_info_names_the_cpu_generation(tmp_path):
    "The family and model numbers tell apart processors that share a name (AVX2-only and AVX-512 BF16 'AMD EPYC's)."
    info = tmp_path/'cpuinfo'
    info.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n')
    assert (accel._cpuinfo('model name', info), accel._cpuinfo('cpu family', info), accel._cpuinfo('model', info)) == ('AMD EPYC', '25', '17')
    assert accel._cpuinfo('flags', info) is None and accel._cpuinfo('model', tmp_path/'absent') is None
    family, model = accel._cpuinfo('cpu family'), accel._cpuinfo('model')
    if family and model: assert f'(family {family}, model {model})' in machine_info()


def test_fast_dtype_says_why(monkeypatch):
    "The path follows the processor: bf16 where it is native, float32 elsewhere, each with its reason."
    monkeypatch.setattr(accel, 'cpu_has_fast_bf16', lambda: True)
    dtype, why = fast_dtype('cpu')
    assert dtype == torch.bfloat16 and 'native bfloat16' in why and cpu_features()['capability'] in why
    monkeypatch.setattr(accel, 'cpu_has_fast_bf16', lambda: False)
    dtype, why = fast_dtype('cpu')
    assert dtype is None and 'slower than float32' in why
    assert fast_dtype('mps')[0] is None


def test_to_fast_prints_its_choice_once(monkeypatch, capsys):
    monkeypatch.setattr(accel, 'cpu_has_fast_bf16', lambda: False)
    learn = TrainLearner(tiny_lin(), DLs(lin_batches(1)), F.cross_entropy, lr=0.1).to_fast(channels_last=False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # said once, as a line, not as a warning
        learn.fit(1); learn.fit(1)
    out = capsys.readouterr().out
    assert out.count('to_fast: float32 on cpu (this CPU') == 1 and 'no native bfloat16' in out
