# Do training steps of speed93 slow down as training goes on, or with denormal numbers? (ad hoc, 2026-12-02; output: denormal_check.txt)
import time, torch, torch.nn.functional as F
from miniai.recipes import RECIPES
from miniai.datasets import fashion_mnist_dls
torch.set_num_threads(2); torch.manual_seed(1)
dls = fashion_mnist_dls(bs=256)
m = RECIPES['speed93'].build_model().to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(m.parameters(), 1e-2)
it = iter(dls.train); t0 = time.perf_counter()
for i in range(1, 201):
    if i == 151: torch.set_flush_denormal(True); print('flush denormals on', flush=True)
    xb, yb = next(it); xb = xb.to(memory_format=torch.channels_last)
    loss = F.cross_entropy(m(xb), yb); loss.backward(); opt.step(); opt.zero_grad()
    if i % 25 == 0: t = time.perf_counter(); print(f'steps {i-24}-{i}: {(t-t0)/25*1e3:.0f} ms a step, loss {loss.item():.3f}', flush=True); t0 = t
