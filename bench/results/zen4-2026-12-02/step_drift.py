# Why full runs are slower than step benchmarks (ad hoc, 2026-12-02, AMD EPYC family 25 model 17; 2 threads).
# Times every training step of a real `train`-style run of a recipe (the Learner that `make_learner` builds, real data,
# bf16 autocast + channels-last), in blocks of 47 steps (a fifth of an epoch), and each validation pass; then the same
# number of steps of a hand-written loop on a fresh model with the same batches. Prints ms a step per block.
# Run as `python step_drift.py RECIPE EPOCHS [flush]`; `flush` sets torch.set_flush_denormal(True) first.
import sys, time, statistics, contextlib, io, torch
from torch import optim
from miniai.accel import machine_info, fast_dtype
from miniai.datasets import fashion_mnist_dls
from miniai.learner import Callback
from miniai.recipes import get_recipe
from miniai.train import make_learner
torch.set_num_threads(2)
name, epochs = sys.argv[1], int(sys.argv[2])
if 'flush' in sys.argv[3:]: print('flush denormal:', torch.set_flush_denormal(True))
print(machine_info(), flush=True)

class StepTimer(Callback):
    order = 1000  # last: after every other callback's after_batch
    def __init__(self): self.steps, self.vals = [], []
    def before_epoch(self, learn): self.t_epoch = time.perf_counter()
    def before_batch(self, learn): self.t0 = time.perf_counter()
    def after_batch(self, learn):
        if learn.training: self.steps.append(time.perf_counter() - self.t0)
    def after_epoch(self, learn):
        if not learn.training: self.vals.append(time.perf_counter() - self.t_epoch)

def blocks(ts, k=47): return [1e3 * statistics.median(ts[i:i + k]) for i in range(0, len(ts), k)]

r = get_recipe(name, epochs=epochs)
dls = fashion_mnist_dls(bs=r.bs)
with contextlib.redirect_stdout(io.StringIO()): learn = make_learner(r, dls, progress=False)
timer = StepTimer(); learn.cbs.append(timer)  # not through the constructor: make_learner built the rest
t0 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()): learn.fit(r.epochs)
wall = time.perf_counter() - t0
print(f'{name}, {epochs} epochs in the Learner: {wall:.1f} s; steps {sum(timer.steps):.1f} s, validation {sum(timer.vals):.1f} s, '
      f'other {wall - sum(timer.steps) - sum(timer.vals):.1f} s')
print('  ms a step (median of each 47 steps):', ' '.join(f'{b:.0f}' for b in blocks(timer.steps)))
print('  mean ms a step in each epoch:', ' '.join(f'{1e3 * statistics.mean(timer.steps[i:i + 235]):.0f}' for i in range(0, len(timer.steps), 235)))

dtype = fast_dtype('cpu')[0]
model = r.build_model().to(memory_format=torch.channels_last)
opt = optim.AdamW(model.parameters(), r.lr, weight_decay=r.wd)
ts = []
for ep in range(epochs):
    for xb, yb in dls.train:
        t = time.perf_counter()
        with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = learn.loss_func(model(xb.contiguous(memory_format=torch.channels_last)), yb)
        loss.backward(); opt.step(); opt.zero_grad(); ts.append(time.perf_counter() - t)
print(f'hand-written loop, {epochs} epochs (default init, constant lr): steps {sum(ts):.1f} s')
print('  ms a step (median of each 47 steps):', ' '.join(f'{b:.0f}' for b in blocks(ts)))
