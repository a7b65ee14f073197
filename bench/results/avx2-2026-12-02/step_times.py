# Step times of candidate speed-run models (ad hoc, 2026-12-02): median of 12 steps after 3 warm-up, best of 2 rounds,
# random 28x28 batches of 256, float32, channels-last, AdamW. Run as `python step_times.py 2` (2 threads); output: step_times.txt
import time, statistics, torch, torch.nn.functional as F, sys
from torch import nn
from miniai.resnet import resnet
from miniai.init import init_weights
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv)>1 else 2)
def st(m, bs=256, steps=12):
    m = m.to(memory_format=torch.channels_last); opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x, y = torch.randn(bs,1,28,28).to(memory_format=torch.channels_last), torch.randint(0,10,(bs,))
    ts=[]
    for _ in range(steps+3):
        t0=time.perf_counter(); loss=F.cross_entropy(m(x),y); loss.backward(); opt.step(); opt.zero_grad(); ts.append(time.perf_counter()-t0)
    return statistics.median(ts[3:])
C = {
 'speed93': dict(nfs=(8,16,32,64,128,256), head='flatten', first='conv'),
 'speed93-relu': dict(nfs=(8,16,32,64,128,256), head='flatten', first='conv', act=nn.ReLU),
 'pool16': dict(nfs=(16,32,64,128,256), head='flatten', first='conv', pool_stem=True),
 'pool16-relu': dict(nfs=(16,32,64,128,256), head='flatten', first='conv', pool_stem=True, act=nn.ReLU),
 'pool8': dict(nfs=(8,16,32,64,128), head='flatten', first='conv', pool_stem=True),
 'pool24': dict(nfs=(24,48,96,192,384), head='flatten', first='conv', pool_stem=True),
 'pool32': dict(nfs=(32,64,128,256,512), head='flatten', first='conv', pool_stem=True),
 'fast93': dict(first='conv'),
}
res={}
for r in range(2):
    for k,kw in C.items():
        t=st(resnet(**kw)); res[k]=min(res.get(k,9),t)
for k,t in res.items(): print(f"{k:14s} {t*1e3:6.0f} ms/step  {235*t:5.1f} s/epoch-steps", flush=True)
