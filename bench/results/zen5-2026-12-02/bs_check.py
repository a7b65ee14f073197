# Batch sizes of the bf16 step (ad hoc, 2026-12-02, AMD EPYC family 26, 2 threads): best of 2 medians of 6 steps.
# Run as `python bs_check.py` beside step_times.py; output: bs_check.txt
import sys; sys.argv=['x','2']
exec(open('step_times.py').read().split("print(machine_info())")[0])
for k in ('speed93','pool16','fast93'):
    for bs in (256, 512, 1024):
        t = min(step_time(resnet(**MODELS[k]), True, bs=bs, steps=6) for _ in range(2))
        print(k, bs, f"{t*1e3:.0f} ms, {60000/bs*t:.1f} s/epoch", flush=True)
