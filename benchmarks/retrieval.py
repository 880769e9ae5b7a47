#!/usr/bin/env python
"""Retrieval cost benchmark on a synthetic, class-structured Matryoshka-like database.

Measures, in one process and interleaved over repeats (medians reported):

(a) per-size sweep: exact (brute-force) search wall-clock at each prefix size, beside the cost model
    ``N * d`` MFLOPs and mAP@10;
(b) adaptive retrieval (shortlist ``K`` with the first ``D_s`` dims, rerank at ``D_r``; exact and HNSW
    shortlist) against exact search at full width: wall-clock ratio, cost-model ratio and mAP@10.

Only query-time work is timed (indexes are built beforehand, as in a deployed system): query
normalisation, the search, and for adaptive retrieval the rerank (which gathers the shortlisted rows
of the raw database). The paper's targets for D_s=16, D_r=2048, K=200 on ImageNet-1K: ~128x by the cost
model (2624.24 / 20.91 = 125.5) and 14x wall-clock with an HNSW shortlist.

Synthetic data: 1,000 gaussian class centres; coordinate ``j`` of an item of class ``y`` is
``a_j * (a_j * mu_{y,j} + eps_j)`` with ``a_j = A * (1 + j / j0) ** -alpha``, so the class signal (and the
energy) is concentrated in the leading coordinates, like an MRL embedding; rows are L2-normalised.

Memory: the database is generated straight into the full-width exact index (N * width * 4 bytes,
8 GiB at the default 1,000,000 x 2048) and the rerank reads that storage, so there is one copy; the
sweep adds one index of N * d floats at a time. Example at a moderate size::

    python benchmarks/retrieval.py --n-database 200000 --n-queries 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrl.evaluation import (  # noqa: E402
    adaptive_retrieval,
    build_index,
    class_counts,
    l2_normalize_prefix,
    retrieval_metrics,
    retrieval_mflops,
    search_index,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-database", type=int, default=1_000_000)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--n-queries", type=int, default=10_000)
    p.add_argument("--n-classes", type=int, default=1000)
    p.add_argument("--dims", type=str, default=None,
                   help="comma-separated sweep sizes (default: 8, 16, ..., width)")
    p.add_argument("--sweep-queries", type=int, default=None,
                   help="queries used in the per-size sweep (default: all)")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--shortlist-dim", type=int, default=16)
    p.add_argument("--rerank-dim", type=int, default=None, help="default: width")
    p.add_argument("--shortlist-k", type=int, default=200)
    p.add_argument("--k", type=int, default=10, help="neighbours returned (mAP@k)")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=64)
    p.add_argument("--ef-search", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="faiss/torch threads (0: library default)")
    p.add_argument("--signal", type=float, default=2.5, help="A: leading-coordinate signal amplitude")
    p.add_argument("--j0", type=float, default=16.0, help="decay length of the signal")
    p.add_argument("--alpha", type=float, default=1.25, help="decay exponent of the signal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=50_000, help="rows generated at a time")
    return p.parse_args(argv)


class Generator:
    def __init__(self, args):
        self.rng = np.random.default_rng(args.seed)
        self.amp = (args.signal * (1 + np.arange(args.width) / args.j0) ** -args.alpha).astype(np.float32)
        self.centres = self.rng.standard_normal((args.n_classes, args.width), dtype=np.float32)
        self.n_classes = args.n_classes

    def sample(self, n):
        y = self.rng.integers(0, self.n_classes, n)
        x = self.centres[y] * self.amp
        x += self.rng.standard_normal(x.shape, dtype=np.float32)
        x *= self.amp
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, y


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def overlap(a, b):
    k = a.shape[1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))


def main(argv=None):
    args = parse_args(argv)
    from mrl.evaluation.retrieval import import_faiss

    faiss = import_faiss()

    if args.threads:
        import torch

        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    n, w = args.n_database, args.width
    rerank_dim = args.rerank_dim or w
    dims = [int(d) for d in args.dims.split(",")] if args.dims else \
        [d for d in (2 ** i for i in range(3, 32)) if d <= w]
    print(f"# retrieval benchmark: N={n:,} width={w} queries={args.n_queries:,} classes={args.n_classes} "
          f"faiss threads={faiss.omp_get_max_threads()} repeats={args.repeats} (medians)")

    gen = Generator(args)
    t_gen = time.perf_counter()
    full_index = faiss.IndexFlatIP(w)
    db_labels = np.empty(n, dtype=np.int64)
    for s in range(0, n, args.chunk):
        x, y = gen.sample(min(args.chunk, n - s))
        full_index.add(x)
        db_labels[s:s + len(y)] = y
    db = faiss.rev_swig_ptr(full_index.get_xb(), n * w).reshape(n, w)  # view: no second copy
    queries, q_labels = gen.sample(args.n_queries)
    counts = class_counts(db_labels)
    print(f"# generated in {time.perf_counter() - t_gen:.1f}s "
          f"({db.nbytes / 2**30:.2f} GiB database, unit-norm rows)")

    def map_at_k(idx):
        return retrieval_metrics(db_labels[idx], q_labels, counts, ks=(args.k,))[f"map@{args.k}"]

    # ---------------------------------------------------------------- (a) per-size sweep
    exact_map = {}
    if not args.skip_sweep:
        qs = queries[: args.sweep_queries] if args.sweep_queries else queries
        print(f"\n## (a) exact search per size ({len(qs):,} queries, k={args.k})")
        print(f"{'dim':>6} {'median s':>9} {'ms/query':>9} {'vs full':>8} {'MFLOPs/q':>10} {'cost vs full':>12} "
              f"{'mAP@' + str(args.k):>8}")
        rows = []
        for d in dims:
            if d == w:
                index = full_index
            else:
                index = faiss.IndexFlatIP(d)
                for s in range(0, n, args.chunk):
                    index.add(l2_normalize_prefix(db[s:s + args.chunk], d))
            times = []
            for _ in range(args.repeats):
                t, (_, idx) = timed(lambda: search_index(index, l2_normalize_prefix(qs, d), args.k))
                times.append(t)
            lab = q_labels[: len(qs)]
            m = retrieval_metrics(db_labels[idx], lab, counts, ks=(args.k,))[f"map@{args.k}"]
            exact_map[d] = m
            rows.append((d, statistics.median(times), m))
            if index is not full_index:
                del index
        t_full = dict((d, t) for d, t, _ in rows).get(w, rows[-1][1])
        for d, t, m in rows:
            mf = retrieval_mflops(n, d)
            print(f"{d:>6} {t:>9.3f} {1000 * t / len(qs):>9.3f} {t / t_full:>8.3f} {mf:>10.2f} "
                  f"{mf / retrieval_mflops(n, w):>12.4f} {m:>8.4f}")

    # ---------------------------------------------------------------- (b) adaptive retrieval
    ds, kk = args.shortlist_dim, args.shortlist_k
    print(f"\n## (b) adaptive retrieval: shortlist {kk} with D_s={ds}, rerank with D_r={rerank_dim}, "
          f"vs exact search at {w} ({args.n_queries:,} queries, k={args.k})")
    t0 = time.perf_counter()
    idx_ds = faiss.IndexFlatIP(ds)
    for s in range(0, n, args.chunk):
        idx_ds.add(l2_normalize_prefix(db[s:s + args.chunk], ds))
    t_build_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx_hnsw = build_index(l2_normalize_prefix(db, ds), "hnsw", args.hnsw_m, args.ef_construction)
    t_build_hnsw = time.perf_counter() - t0
    print(f"# index build (offline, not in the ratios): flat D_s={ds} {t_build_exact:.1f}s, "
          f"HNSW(M={args.hnsw_m}, efConstruction={args.ef_construction}) on D_s={ds} {t_build_hnsw:.1f}s")

    methods = {
        f"exact search @{w}": lambda: search_index(full_index, l2_normalize_prefix(queries), args.k)[1],
        f"adaptive {ds}->{rerank_dim} (exact shortlist)": lambda: adaptive_retrieval(
            db, queries, ds, rerank_dim, kk, args.k, index=idx_ds),
        f"adaptive {ds}->{rerank_dim} (HNSW shortlist)": lambda: adaptive_retrieval(
            db, queries, ds, rerank_dim, kk, args.k, index=idx_hnsw, ef_search=args.ef_search),
        f"shortlist only: HNSW top-{kk} @{ds}": lambda: search_index(
            idx_hnsw, l2_normalize_prefix(queries, ds), kk, args.ef_search)[1],
    }
    times = {name: [] for name in methods}
    results = {}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
        for name, fn in methods.items():
            t, results[name] = timed(fn)
            times[name].append(t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    names = list(methods)
    exact_name, ad_exact, ad_hnsw, sl_hnsw = names
    exact_idx = results[exact_name]
    _, exact_shortlist = search_index(idx_ds, l2_normalize_prefix(queries, ds), kk)
    cost_exact = retrieval_mflops(n, w)
    cost_adaptive = retrieval_mflops(n, ds, [(kk, rerank_dim)])

    print(f"{'method':<44} {'median s':>9} {'ms/query':>9} {'speedup':>8} {'MFLOPs/q':>10} {'cost ratio':>10} "
          f"{'mAP@' + str(args.k):>8} {'top-' + str(args.k) + ' overlap':>15}")
    for name in (exact_name, ad_exact, ad_hnsw):
        cost = cost_exact if name == exact_name else cost_adaptive
        print(f"{name:<44} {med[name]:>9.3f} {1000 * med[name] / args.n_queries:>9.3f} "
              f"{med[exact_name] / med[name]:>7.1f}x {cost:>10.2f} {cost_exact / cost:>9.1f}x "
              f"{map_at_k(results[name]):>8.4f} {overlap(results[name], exact_idx):>15.4f}")
    if ds in exact_map or not args.skip_sweep:
        print(f"{'(exact search @' + str(ds) + ', from the sweep)':<44} {'':>9} {'':>9} {'':>8} "
              f"{retrieval_mflops(n, ds):>10.2f} {cost_exact / retrieval_mflops(n, ds):>9.1f}x "
              f"{exact_map.get(ds, float('nan')):>8.4f}")
    print(f"# HNSW shortlist alone: {med[sl_hnsw]:.3f}s; recall of the exact top-{kk} shortlist: "
          f"{overlap(results[sl_hnsw], exact_shortlist):.4f}")

    paper_ratio = retrieval_mflops(1_281_167, 2048, [(200, 2048)]) / retrieval_mflops(1_281_167, 16, [(200, 2048)])
    print("\n## summary")
    print(f"wall-clock speedup, exact shortlist : {med[exact_name] / med[ad_exact]:6.1f}x")
    print(f"wall-clock speedup, HNSW shortlist  : {med[exact_name] / med[ad_hnsw]:6.1f}x   (paper, HNSW: 14x)")
    print(f"cost-model ratio (N*{w}) / (N*{ds} + {kk}*{rerank_dim}) at N={n:,}: {cost_exact / cost_adaptive:6.1f}x   "
          f"(paper's tables at ImageNet-1K N: 2624.24/20.91 = {paper_ratio:.1f}x; 2048/16 = 128x)")
    print(f"mAP@{args.k}: exact@{w} {map_at_k(exact_idx):.4f} | adaptive exact-shortlist "
          f"{map_at_k(results[ad_exact]):.4f} | adaptive HNSW-shortlist {map_at_k(results[ad_hnsw]):.4f}")


if __name__ == "__main__":
    main()
