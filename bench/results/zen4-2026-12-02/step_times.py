# Step times of candidate speed-run models (ad hoc, 2026-12-02, AMD EPYC family 25 model 17; copied from ../zen5-2026-12-02): median of 12 steps after 3 warm-up,
# best of 2 rounds taken in turns, random 28x28 batches, channels-last, AdamW, in float32 and under bf16 autocast.
# Run as `python step_times.py 2` (2 threads); output: step_times.txt
import time, statistics, sys, contextlib, torch, torch.nn.functional as F
from torch import nn
from miniai.resnet import resnet
from miniai.accel import machine_info
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)

def step_time(m, amp, bs=256, steps=12):
    m = m.to(memory_format=torch.channels_last); opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x, y = torch.randn(bs, 1, 28, 28).to(memory_format=torch.channels_last), torch.randint(0, 10, (bs,))
    ts = []
    for _ in range(steps + 3):
        t0 = time.perf_counter()
        with (torch.autocast('cpu', dtype=torch.bfloat16) if amp else contextlib.nullcontext()): loss = F.cross_entropy(m(x), y)
        loss.backward(); opt.step(); opt.zero_grad(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts[3:])

MODELS = {
 'speed93': dict(nfs=(8, 16, 32, 64, 128, 256), head='flatten', first='conv'),
 'pool16': dict(nfs=(16, 32, 64, 128, 256), head='flatten', first='conv', pool_stem=True),
 'pool8': dict(nfs=(8, 16, 32, 64, 128), head='flatten', first='conv', pool_stem=True),
 'pool24': dict(nfs=(24, 48, 96, 192, 384), head='flatten', first='conv', pool_stem=True),
 'pool32': dict(nfs=(32, 64, 128, 256, 512), head='flatten', first='conv', pool_stem=True),
 'fast93': dict(first='conv'),
}
print(machine_info())
best = {}
for r in range(2):
    for k, kw in MODELS.items():
        for amp in (False, True):
            torch.manual_seed(0); t = step_time(resnet(**kw), amp); best[k, amp] = min(best.get((k, amp), 9e9), t)
print(f"{'model':10s} {'fp32 ms':>8s} {'bf16 ms':>8s}  (a step of 256; an epoch of steps: 235 of them)")
for k in MODELS: print(f"{k:10s} {best[k, False]*1e3:8.0f} {best[k, True]*1e3:8.0f}   fp32 {235*best[k, False]:5.1f} s, bf16 {235*best[k, True]:5.1f} s", flush=True)
