# torch.compile against eager on training steps (ad hoc, 2026-12-02, AMD EPYC family 26, 2 threads): bf16 autocast,
# channels-last, batch 256, random data; first step (the compilation, cold cache) and median of 15 after 3 warm-up.
# Run as `python compile_check.py`; output: compile_check.txt
import time, statistics, torch, torch.nn.functional as F, sys
from torch import nn
from miniai.resnet import resnet
torch.set_num_threads(2)
def run(kw, comp, bs=256, steps=15):
    torch.manual_seed(0)
    m = resnet(**kw).to(memory_format=torch.channels_last); opt = torch.optim.AdamW(m.parameters(), 1e-3)
    fwd = torch.compile(m) if comp else m
    x, y = torch.randn(bs,1,28,28).to(memory_format=torch.channels_last), torch.randint(0,10,(bs,))
    ts=[]
    for i in range(steps+3):
        t0=time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16): loss = F.cross_entropy(fwd(x), y)
        loss.backward(); opt.step(); opt.zero_grad(); ts.append(time.perf_counter()-t0)
    return ts[0], statistics.median(ts[3:])
for name, kw in [('speed93', dict(nfs=(8,16,32,64,128,256), head='flatten', first='conv')),
                 ('speed93-relu', dict(nfs=(8,16,32,64,128,256), head='flatten', first='conv', act=nn.ReLU)),
                 ('pool16', dict(nfs=(16,32,64,128,256), head='flatten', first='conv', pool_stem=True))]:
    for comp in (False, True):
        first, med = run(kw, comp)
        print(f"{name:14s} compile={comp}: first step {first:.1f} s, median {med*1e3:.0f} ms", flush=True)
