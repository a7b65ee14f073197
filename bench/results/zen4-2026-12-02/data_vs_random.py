# Does a training step's time depend on what it trains on? (ad hoc, 2026-12-02, AMD EPYC family 25 model 17; 2 threads)
# The same model and optimizer step on: one fixed random batch (as step_times.py does), one fixed real batch, and a
# fresh real batch each step (as training does); bf16 autocast, channels-last, batch 256. Median ms of 30 steps, three
# rounds taken in turns. Run as `python data_vs_random.py RECIPE`.
import sys, time, statistics, torch, torch.nn.functional as F
from torch import optim
from miniai.accel import machine_info
from miniai.datasets import fashion_mnist_dls
from miniai.recipes import get_recipe
torch.set_num_threads(2)
print(machine_info(), flush=True)
r = get_recipe(sys.argv[1] if len(sys.argv) > 1 else 'target93')
dls = fashion_mnist_dls(bs=r.bs)
it = iter(dls.train)
real_x, real_y = next(it)
rand_x, rand_y = torch.randn_like(real_x), torch.randint(0, 10, real_y.shape)
print('real batch:', real_x.shape, real_x.dtype, f'mean {real_x.mean():.3f} std {real_x.std():.3f}, zeros {(real_x == real_x.min()).float().mean():.1%}', flush=True)
model = r.build_model().to(memory_format=torch.channels_last)
opt = optim.AdamW(model.parameters(), 1e-3)

def step(x, y):
    t = time.perf_counter()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
    loss.backward(); opt.step(); opt.zero_grad(); return time.perf_counter() - t

def fresh():
    global it
    try: return next(it)
    except StopIteration: it = iter(dls.train); return next(it)

kinds = {'fixed random': lambda: (rand_x, rand_y), 'fixed real': lambda: (real_x, real_y), 'fresh real': fresh,
         'fresh random': lambda: (torch.randn_like(real_x), rand_y)}
res = {k: [] for k in kinds}
for rnd in range(3):
    for k, f in kinds.items():
        ts = [step(*f()) for _ in range(33)][3:]; res[k].append(1e3 * statistics.median(ts))
for k, v in res.items(): print(f'{k:14s} ' + ' '.join(f'{t:5.0f}' for t in v) + ' ms (median of 30 steps, per round)')
