#!/usr/bin/env bash
# The main job: ResNet-20 + SNGM on CIFAR-10 under `horovodrun -np 2` (Gloo, loopback),
# on a short schedule, leaving a TensorBoard run directory.
# Data, first found: $DATA_DIR; ../shared/data/cifar10-jpeg.tar; a TFDS cache or download.
# Knobs (environment): EPOCHS (4), TRAIN_SUBSET (10000), NP (2), LOGDIR (runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-4}
TRAIN_SUBSET=${TRAIN_SUBSET:-10000}
NP=${NP:-2}
LOGDIR=${LOGDIR:-runs/demo}
DATA_FLAGS=()
if [ -n "${DATA_DIR:-}" ]; then
    DATA_FLAGS=(--data-dir "$DATA_DIR")
elif [ -f ../shared/data/cifar10-jpeg.tar ]; then
    DATA_FLAGS=(--data-dir ../shared/data/cifar10-jpeg.tar)   # CIFAR-10 as lossy JPEG
fi
TRAIN=(sngm-train resnet --depth 20 --dataset cifar10 "${DATA_FLAGS[@]}" --optimizer sngm
       --batch-size 256 --micro-batch 128 --lr 0.4 --schedule poly --power 1.1 --weight-decay 1e-4
       --epochs "$EPOCHS" --train-subset "$TRAIN_SUBSET" --validation-split 0.1 --test-subset 2000 --logdir "$LOGDIR" --log-every 2
       --diagnostics-every 5)
rm -rf "$LOGDIR"
if command -v horovodrun >/dev/null && python -c "import horovod.tensorflow" 2>/dev/null; then
    echo "+ horovodrun --gloo -np $NP -H localhost:$NP ${TRAIN[*]}"
    horovodrun --gloo -np "$NP" -H "localhost:$NP" "${TRAIN[@]}"
else
    echo "Horovod not installed: training in one process."
    "${TRAIN[@]}"
fi
echo
echo "What TensorBoard shows (read back from the event files):"
python tools/show_run.py "$LOGDIR"
echo
echo "Done. Run directory: $LOGDIR (config.json, history.json, checkpoints)."
echo "Open it with:  .venv/bin/tensorboard --logdir $(dirname "$LOGDIR")   then browse http://localhost:6006"
