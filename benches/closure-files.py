#!/usr/bin/env python3
"""The files the binary cache benchmarks add to a store: 990 texts of 1 to
16 KiB of random words and 10 slices of 20 MiB of the host's programs and
libraries (~211 MiB in all), the same on every run (a fixed seed).

    benches/closure-files.py DIR
"""
import os, random, sys, glob
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rnd = random.Random(7)
words = [''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rnd.randint(2, 9))) for _ in range(5000)]
for i in range(990):
    size = rnd.randint(1024, 16384)
    text, n = [], 0
    while n < size:
        w = rnd.choice(words); text.append(w); n += len(w) + 1
    open(f"{out}/small-{i:04}.txt", "w").write(" ".join(text))
blobs = sorted(p for p in glob.glob("/usr/lib/x86_64-linux-gnu/*.so*") + glob.glob("/usr/bin/*") if os.path.isfile(p) and not os.path.islink(p))
data = bytearray()
for p in blobs:
    if len(data) >= 10 * 20 * 2**20: break
    data += open(p, "rb").read()
for i in range(10):
    open(f"{out}/big-{i}.bin", "wb").write(data[i * 20 * 2**20:(i + 1) * 20 * 2**20])
