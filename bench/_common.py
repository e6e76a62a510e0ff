"""Shared by the benchmarks: the ResNet-50-like variable shapes, the bytes each update
must move, and round-robin timing (slow drifts of the machine hit every cell alike)."""

import statistics
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


def median_seconds(step, warmup, steps):
    """The median seconds of `steps` calls of `step()` after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_timer():
    """A Keras callback whose `times` are the seconds between the ends of consecutive train
    steps of a `fit`."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.t = [], None

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self.t is not None:
                self.times.append(now - self.t)
            self.t = now

    return StepTimer()


def round_robin(cells, repeats):
    """{key: [seconds, ...]}: each cell's `run()` timed once per round, `repeats` rounds."""
    times = {key: [] for key in cells}
    for _ in range(repeats):
        for key, run in cells.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return times

