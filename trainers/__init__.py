"""Horovod data-parallel trainers for large-batch training with keras_sngm."""
