"""docs/results-gpu.md from what bench/gpu_paper.py kept (docs/results-gpu.json): each arm's
test accuracy beside v1 Table 2's, its seconds per epoch, and the device it ran on. With no
run (`render(None, ...)`) the page says no GPU has run it, and every cell of ours is a dash."""

from gpu_report import DASH, _f, _table, write  # noqa: F401 - write: gpu_paper's

# v1 Table 2, ResNet-20 on CIFAR-10, test accuracy (%): B=4096, poly power 1.1, no warm-up.
V1_TABLE2 = {"sngm": 91.42, "msgd": 89.25, "lars": 90.66}
V1_SMALL_BATCH = 91.63  # MSGD at B=128, lr 0.1 divided by 10 at epochs 80 and 120
NAMES = {"sngm": "SNGM", "msgd": "MSGD", "lars": "LARS (no warm-up)"}
LRS = {"sngm": 1.6, "msgd": 0.4, "lars": 0.8}


def _protocol(size):
    return (f"ResNet-{size['depth']} on CIFAR-10: 45,000 training images, 5,000 held out for validation, the "
            f"10,000 test images evaluated once, after the last epoch. B={size['batch']} as "
            f"{size['batch'] // size['micro_batch']} accumulated micro-batches of {size['micro_batch']} on one GPU "
            f"(batch-norm statistics over {size['micro_batch']} examples, as in the paper); poly power 1.1, weight "
            f"decay 1e-4, momentum 0.9, {size['epochs']} epochs, no warm-up, seed 0; v1's learning rates with no "
            "sweep. `sngm-train resnet --engine jax` on the host's own JAX, with no TensorFlow.")


def _arm_row(name, arm):
    published = V1_TABLE2[name]
    if not arm:
        return [NAMES[name], f"{LRS[name]:g}", DASH, f"{published:.2f}", DASH, DASH, DASH]
    if "test_accuracy" not in arm:
        why = (f"unmeasured: predicted {arm['predicted_s'] / 60:.1f} min" if arm.get("unmeasured")
               else f"failed: {arm.get('error')}")
        return [NAMES[name], f"{LRS[name]:g}", why, f"{published:.2f}", DASH, DASH, DASH]
    ours = 100 * arm["test_accuracy"]
    return [NAMES[name], f"{arm['lr']:g}", f"{ours:.2f}", f"{published:.2f}", f"{ours - published:+.2f}",
            _f(arm["seconds_per_epoch"], "{:.2f}"), _f(arm["wall_s"] / 60, "{:.1f}")]


def render(state, size):
    lines = ["# Results on a GPU: v1 Table 2 at B=4096", "",
             "The paper's headline at full scale: SNGM against MSGD and LARS at a batch of 4,096, with SNGM "
             "needing no warm-up.", "", _protocol(size), ""]
    if state is None:
        lines += ["**No GPU has run this yet.** A session with a GPU runs the command below and commits the page "
                  "it writes; until then every cell of ours is a dash.", ""]
    elif state.get("mode") == "smoke":
        lines += ["**SMOKE run: toy sizes on the CPU** (a few hundred images, 2 epochs). It proves every code path "
                  "and every number's source; its accuracies say nothing about the paper's claim.", ""]
    command = "make gpu-paper" if state is None else state["command"]
    lines += [f"Command: `{command}` (it plans its own time: see `bench/gpu_paper.py -h`).", ""]
    if state is not None:
        f = state["facts"]
        gpu = ", ".join(f.get("gpus") or f.get("devices") or [DASH])
        lines += _table(["device", gpu], [["NVIDIA driver", f.get("driver") or DASH], ["JAX", f.get("framework", DASH)],
                                          ["CUDA", f.get("cuda") or DASH], ["Keras", f.get("keras", DASH)],
                                          ["date", state.get("date", DASH)]]) + [""]
    arms = {} if state is None else state.get("arms", {})
    lines += _table(["method", "initial lr", "test acc. (%), ours", "v1 Table 2 (%)", "ours - v1", "s / epoch",
                     "wall (min)"], [_arm_row(name, arms.get(name)) for name in V1_TABLE2])
    lines += ["", f"For scale: v1 Table 2's small-batch baseline, MSGD at B=128, reached {V1_SMALL_BATCH:.2f}%. "
              "Seconds per epoch are the median between consecutive epochs' ends (training and the validation "
              "pass); the wall time includes start-up and compilation.", "",
              "The images are the JPEG copy of CIFAR-10 (quality about 75, so lossy): expect our accuracies a "
              "little below the published ones, which were measured on the original pixels, in PyTorch, on 8 "
              "V100s."]
    if state is not None and state.get("probe") and "error" not in state["probe"]:
        p = state["probe"]
        lines += ["", f"The plan came from a probe of {p['epochs']} SNGM epochs: {p['first_epoch_s']:.1f} s to the "
                  f"end of the first (start-up, data, compilation), then {p['epoch_s']:.2f} s an epoch."]
    return "\n".join(lines) + "\n"
