#!/usr/bin/env python3
"""hitratio-sim.py — a trace simulation beside scripts/hitratio.sh (an experiment, not the
daemons): the hit ratio of eviction policies holding K objects of equal size on the same key
streams the script sends (N keys; uniform, and Zipf with exponent S), a warm-up of R requests,
then R measured.

Policies: `fifo-2nd-chance` (what the arena does per ring: FIFO; an object accessed since it
was written gets copied to the tail once instead of being evicted — CLOCK), `lru`, and
`s3-fifo` (Yang et al., SOSP 2023: a small FIFO of 10 % of K admits new objects; one accessed
there moves to the main FIFO, others leave to a ghost FIFO of K keys, from which a returning
key enters the main FIFO directly; the main FIFO reinserts objects with a frequency counter
above 0, decremented, max 3).

Usage: scripts/hitratio-sim.py [K] [N] [R] [S]    defaults 5000 20000 200000 0.99
"""
import bisect
import random
import sys
from collections import OrderedDict, deque


def keys(dist, n, count, s, seed):
    rng = random.Random(seed)
    if dist == "uniform":
        return [rng.randrange(n) for _ in range(count)]
    cdf, acc = [], 0.0
    for i in range(1, n + 1):
        acc += 1 / i**s
        cdf.append(acc)
    return [bisect.bisect_left(cdf, rng.random() * acc) for _ in range(count)]


def clock(k, trace):
    q, bit, hits = deque(), {}, []
    for x in trace:
        if x in bit:
            bit[x] = 1
            hits.append(1)
            continue
        hits.append(0)
        while len(q) >= k:
            y = q.popleft()
            if bit[y]:
                bit[y] = 0
                q.append(y)
            else:
                del bit[y]
        q.append(x)
        bit[x] = 0
    return hits


def lru(k, trace):
    c, hits = OrderedDict(), []
    for x in trace:
        if x in c:
            c.move_to_end(x)
            hits.append(1)
            continue
        hits.append(0)
        if len(c) >= k:
            c.popitem(last=False)
        c[x] = True
    return hits


def s3fifo(k, trace):
    ks = max(1, k // 10)
    km = k - ks
    small, main, ghost = deque(), deque(), OrderedDict()
    freq, where, hits = {}, {}, []

    def evict_main():
        while main:
            y = main.popleft()
            if freq[y] > 0:
                freq[y] -= 1
                main.append(y)
            else:
                del freq[y], where[y]
                return

    def evict_small():
        while small:
            y = small.popleft()
            if freq[y] > 0:
                freq[y] = 0
                if len(main) >= km:
                    evict_main()
                main.append(y)
                where[y] = "m"
            else:
                del freq[y], where[y]
                ghost[y] = True
                if len(ghost) > k:
                    ghost.popitem(last=False)
                return

    for x in trace:
        if x in where:
            freq[x] = min(freq[x] + 1, 3)
            hits.append(1)
            continue
        hits.append(0)
        if x in ghost:
            del ghost[x]
            if len(main) >= km:
                evict_main()
            main.append(x)
            where[x] = "m"
        else:
            if len(small) >= ks:
                evict_small()
            small.append(x)
            where[x] = "s"
        freq[x] = 0
    return hits


def main():
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    r = int(sys.argv[3]) if len(sys.argv) > 3 else 200000
    s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.99
    print(f"K={k} objects of N={n}, {r} warm-up + {r} measured requests, Zipf s={s}")
    print(f"{'dist':<8} {'fifo-2nd-chance':>16} {'lru':>8} {'s3-fifo':>8}")
    for dist in ["uniform", "zipf"]:
        trace = keys(dist, n, 2 * r, s, 7)
        row = [sum(p(k, trace)[r:]) / r for p in (clock, lru, s3fifo)]
        print(f"{dist:<8} {row[0]:>16.4f} {row[1]:>8.4f} {row[2]:>8.4f}")


main()
