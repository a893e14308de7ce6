#!/usr/bin/env python3
"""Input lines for compare-redactor.sh that are too big or too many to check
in: huge values, and seeded random texts made of the fragments that
exercise the scanners' edges (like the Rust redactor's proptest strategies).

    gen-extra.py COUNT SEED > extra.jsonl
"""
import json, random, sys

count, seed = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout
def line(value):
    out.write(json.dumps({"value": value}, ensure_ascii=False) + "\n")

# Huge values (up to the host's limit of 1,000,000 bytes per output record) with and without anything to mask.
line("user bob@example.com from 10.0.0.1 Bearer tok.en; " * 18000)
line("x" * 999_000)
line("1." * 300000)
line("\\" * 100001 + "nBearer x")
line("@" * 200000)
line("a" * 100000 + "@" + "b." * 100000 + "cc")
line("bearer " * 100000)
line("255.255.255.255 " * 50000)

rng = random.Random(seed)
fixed = ["@", ".", " ", "\\", "\\n", "\\t", "\\\\", "\\/", "\\u00e9", "\\u0020", "\\u12", "Bearer ",
         "bearer\t", "bob", "example.com", "é", "😀", "[token]", "[email]", "-", "_", ":", "\"", "\n"]
alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+/=@-~%"
def fragment():
    r = rng.random()
    if r < 0.45:
        return rng.choice(fixed)
    if r < 0.7:
        return str(rng.choice([rng.randrange(10), rng.randrange(256), rng.randrange(1000), rng.randrange(10000)]))
    if r < 0.95:
        return "".join(rng.choice(alnum) for _ in range(rng.randrange(1, 7)))
    return chr(rng.choice([rng.randrange(0x20, 0x7f), rng.randrange(0xa0, 0x800), rng.randrange(0x10000, 0x10400)]))
for _ in range(count):
    line("".join(fragment() for _ in range(rng.randrange(0, 30))))
