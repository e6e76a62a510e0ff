"""Shared by the benchmarks: the ResNet-50-like variable shapes, the bytes each update
must move, and round-robin timing (slow drifts of the machine hit every cell alike)."""

import time


# Floats read + written per parameter by each update (4 bytes each):
# SGD: read g, m, w; write m, w. SNGM/BlockSNGM: + one more read of g for the norm.
# LARS: + one more read of g and of w for the two per-variable norms.
FLOATS_PER_PARAM = {"SGD": 5, "SNGM": 6, "BlockSNGM": 6, "LARS": 7}


def resnet50_like_shapes(last_stage_blocks=2, classes=1000):
    """Conv kernels and BN gamma/beta of a ResNet-50 (bottlenecks [3, 4, 6, last])."""
    shapes = [(7, 7, 3, 64), (64,), (64,)]
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, last_stage_blocks)):
        for b in range(blocks):
            for k, ci, co in ((1, cin, width), (3, width, width), (1, width, 4 * width)):
                shapes += [(k, k, ci, co), (co,), (co,)]
            if b == 0:
                shapes += [(1, 1, cin, 4 * width), (4 * width,), (4 * width,)]
            cin = 4 * width
    return shapes + [(cin, classes), (classes,)]


def round_robin(cells, repeats):
    """{key: [seconds, ...]}: each cell's `run()` timed once per round, `repeats` rounds."""
    times = {key: [] for key in cells}
    for _ in range(repeats):
        for key, run in cells.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return times

