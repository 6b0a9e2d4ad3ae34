"""Embedding throughput of the default int8 ONNX MiniLM on SciFact passages.

    python benchmarks/bench_embed.py [--n 2000] [--batch-sizes 16 32 64] [--threads N] [--max-length 256]

Reads ``title\\ntext`` of the first N passages of /work/shared/data/beir/scifact/corpus.jsonl (override with
``--corpus`` or RAGCONF_SCIFACT) and prints texts/s per batch size (model load excluded, one warm-up batch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from ragconf.components.embedders import OnnxEmbedder

__all__ = ["load_passages", "main"]

DEFAULT_CORPUS = Path(os.environ.get("RAGCONF_SCIFACT", "/work/shared/data/beir/scifact")) / "corpus.jsonl"


def load_passages(path: Path, n: int) -> list[str]:
    out: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            title, text = (rec.get("title") or "").strip(), (rec.get("text") or "").strip()
            out.append(f"{title}\n{text}" if title else text)
            if len(out) >= n:
                break
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)

    texts = load_passages(args.corpus, args.n)
    t0 = time.perf_counter()
    probe = OnnxEmbedder(max_length=args.max_length, threads=args.threads)
    probe.warm_up()
    load_s = time.perf_counter() - t0
    from ragconf.components.embedders import _tokenizer

    tok = _tokenizer(probe.info.tokenizer_file(), probe.max_length)
    lengths = [sum(e.attention_mask) for e in tok.encode_batch(texts)]  # batch is padded: count real tokens
    print(
        f"model {probe.model} ({probe.info.model_id}), threads={probe.threads}, "
        f"max_length={probe.max_length}, cpu_count={os.cpu_count()}"
    )
    print(
        f"{len(texts)} passages, tokens/passage mean {statistics.mean(lengths):.0f}, "
        f"truncated {sum(n >= probe.max_length for n in lengths)}; model load {load_s:.2f}s"
    )
    print(f"{'batch':>5}  {'seconds':>8}  {'texts/s':>8}  {'ms/text':>8}")
    for bs in args.batch_sizes:
        emb = OnnxEmbedder(batch_size=bs, max_length=args.max_length, threads=args.threads)
        emb.embed(texts[:bs])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            vecs = emb.embed(texts)
            best = min(best, time.perf_counter() - t)
        assert vecs.shape == (len(texts), emb.dim)
        print(f"{bs:>5}  {best:>8.2f}  {len(texts) / best:>8.1f}  {1000 * best / len(texts):>8.2f}")


if __name__ == "__main__":
    main()
