"""Model sizes against published parameter counts."""

import pytest

from keras_sngm_trainers.models import resnet


def trainable(model):
    return sum(int(v.numpy().size) for v in model.trainable_weights)


@pytest.mark.parametrize("depth, millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_cifar_resnets_match_he_et_al_table_6(depth, millions):
    # He et al. 2016, Table 6 (CIFAR-10, option A shortcuts): parameters to two digits
    assert round(trainable(resnet.cifar_resnet(depth, 10)) / 1e6, 2 if depth < 110 else 1) == millions


@pytest.mark.parametrize("depth, count", [(18, 11_689_512), (50, 25_557_032)])
def test_imagenet_resnets_match_the_reference_implementation(depth, count):
    # torchvision's resnet18 / resnet50 with 1000 classes: the same architecture counted exactly
    assert trainable(resnet.imagenet_resnet(depth, 1000)) == count
