"""`--deepfm-variant deepctr` against DeepCTR-Torch 0.3.0 itself: the same weights copied
across, the same rows, the same output and the same regularization loss."""

import numpy as np
import pytest

from keras_sngm_trainers.models.deepfm import NUM_CATEGORICAL, NUM_DENSE, deepctr_deepfm

VOCAB, DIM = 50, 4


def _deepctr():
    torch = pytest.importorskip("torch")
    pytest.importorskip("deepctr_torch", reason="deepctr-torch is not installed (`make install-dev` installs it)")
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import DeepFM

    columns = ([SparseFeat(f"C{i}", vocabulary_size=VOCAB, embedding_dim=DIM) for i in range(1, NUM_CATEGORICAL + 1)]
               + [DenseFeat(f"I{i}", 1) for i in range(1, NUM_DENSE + 1)])
    torch.manual_seed(0)
    model = DeepFM(columns, columns, task="binary", device="cpu")  # its defaults: DNN 256-128, l2 1e-5, std 1e-4
    model.eval()
    with torch.no_grad():  # its init (std 1e-4) makes every term ~0: scale them up so that each one counts
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return torch, model


def _copy(model, torch_model):
    """torch's weights into the Keras variant, by name."""
    p = {k: v.detach().numpy() for k, v in torch_model.named_parameters()}
    stack = lambda prefix: np.concatenate([p[f"{prefix}.C{i}.weight"] for i in range(1, NUM_CATEGORICAL + 1)])  # noqa
    model.get_layer("embedding").embeddings.assign(stack("embedding_dict"))
    model.get_layer("linear_embedding").embeddings.assign(stack("linear_model.embedding_dict"))
    model.get_layer("linear_dense").kernel.assign(p["linear_model.weight"])
    for i in range(2):
        model.get_layer(f"dnn_{i}").kernel.assign(p[f"dnn.linears.{i}.weight"].T)
        model.get_layer(f"dnn_{i}").bias.assign(p[f"dnn.linears.{i}.bias"])
    model.get_layer("dnn_out").kernel.assign(p["dnn_linear.weight"].T)
    model.get_layer("logit").bias.assign(p["out.bias"])


def test_forward_pass_and_regularization_equal_deepctr_torch():
    torch, reference = _deepctr()
    import keras

    model = deepctr_deepfm(vocab=VOCAB, embedding_dim=DIM)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {
        "linear_embedding", "linear_dense", "embedding", "dnn_0", "dnn_1", "dnn_out", "logit"}
    assert model.count_params() == sum(p.numel() for p in reference.parameters())
    _copy(model, reference)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, (64, NUM_CATEGORICAL))
    dense = rng.random((64, NUM_DENSE)).astype(np.float32) * 3  # raw values, as DeepCTR feeds them
    x = torch.from_numpy(np.concatenate([ids.astype(np.float32), dense], axis=1))  # its column order: C1..C26, I1..I13
    with torch.no_grad():
        want = reference(x).numpy()[:, 0]
    logits = keras.ops.convert_to_numpy(model({"dense": dense, "categorical": ids}))[:, 0]
    got = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert 0.05 < want.std() and np.ptp(want) > 0.3  # the terms are not all ~0
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    reg = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    np.testing.assert_allclose(reg, float(reference.get_regularization_loss().detach()), rtol=1e-5)


def test_default_init_matches_deepctr_torch_statistics():
    """The initial weights follow DeepCTR-Torch's distributions: N(0, 1e-4^2) embeddings
    and DNN weights, torch's U(+-1/sqrt(fan_in)) DNN biases and last layer, zero bias."""
    model = deepctr_deepfm(vocab=VOCAB, embedding_dim=DIM)
    w = {v.path: np.asarray(v.numpy()) for v in model.weights}
    for name in ("embedding/embeddings", "linear_embedding/embeddings", "dnn_0/kernel", "dnn_1/kernel"):
        assert abs(w[name].std() - 1e-4) < 1e-5, name
    fan_in = NUM_CATEGORICAL * DIM + NUM_DENSE
    for name, bound in (("dnn_0/bias", fan_in ** -0.5), ("dnn_1/bias", 256 ** -0.5), ("dnn_out/kernel", 128 ** -0.5)):
        assert w[name].max() <= bound and w[name].min() >= -bound and w[name].max() > 0.8 * bound, name
    assert not w["logit/bias"].any()
