"""zstd levels on 256 KiB frames of the benchmark database: speed (CPU time) and size.

    python bench/zstd_levels.py bench/work/600mib/base/production/snippets.db [LEVEL ...]

Every 4th frame of the file (spread over all of it), best of four rounds of
process CPU time, so other load on the machine skews it little. This is what
chose the repository's default level (see docs/format.md).
"""

from __future__ import annotations

import sys
import time

import zstandard

FRAME = 256 * 1024


def main(path: str, levels: tuple[int, ...]) -> None:
    data = open(path, "rb").read()  # noqa: SIM115 - a one-shot read
    frames = [data[i : i + FRAME] for i in range(0, len(data), FRAME)][::4]
    total = sum(map(len, frames))
    best: dict[int, list[float]] = {}
    for _round in range(4):
        for level in levels:
            compressor = zstandard.ZstdCompressor(level=level)
            start = time.process_time()
            packed = [compressor.compress(f) for f in frames]
            compress_s = time.process_time() - start
            decompressor = zstandard.ZstdDecompressor()
            start = time.process_time()
            for p in packed:
                decompressor.decompress(p)
            decompress_s = time.process_time() - start
            ratio = sum(map(len, packed)) / total
            old = best.setdefault(level, [compress_s, decompress_s, ratio])
            old[0], old[1] = min(old[0], compress_s), min(old[1], decompress_s)
    print(f"{total / 2**20:.0f} MiB in {len(frames)} frames of {FRAME // 1024} KiB")
    for level, (compress_s, decompress_s, ratio) in best.items():
        print(
            f"level {level:2d}: compress {total / compress_s / 1e6:5.0f} MB/s  "
            f"decompress {total / decompress_s / 1e6:5.0f} MB/s  size {ratio:.3f} of input"
        )


if __name__ == "__main__":
    main(sys.argv[1], tuple(int(x) for x in sys.argv[2:]) or (1, 3, -1, -2, -3))
