"""Criteo-format data with a planted ground truth, so the best achievable AUC is known.

Labels come from an FM-style logistic model over the same features DeepFM sees:
    logit = b + sum_i w_i log(1 + I_i) + sum_f w_f[C_f] + sum_{f<g} <v_f[C_f], v_g[C_g]>
    label ~ Bernoulli(sigmoid(logit))
The Bayes-optimal scorer is the true probability, so the best achievable test AUC is
the AUC of sigmoid(logit) against the sampled test labels; `truth.json` records it.
"""

import json
import os

import numpy as np

NUM_DENSE, NUM_CAT = 13, 26


def auc(scores, labels):
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        raise ValueError(f"AUC needs both classes; got {pos} positives and {neg} negatives")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


class PlantedModel:
    def __init__(self, seed=0, dim=4, vocab_max=2000, interaction_scale=0.35, ctr=0.25):
        rng = np.random.default_rng(seed)
        self.vocab = np.maximum(3, (vocab_max ** rng.uniform(0.3, 1.0, NUM_CAT)).astype(int))
        self.cat_missing = rng.uniform(0.0, 0.3, NUM_CAT)
        self.dense_missing = rng.uniform(0.0, 0.4, NUM_DENSE)
        self.dense_mu = rng.uniform(0.0, 4.0, NUM_DENSE)
        self.w_dense = rng.normal(0, 0.15, NUM_DENSE)
        self.w_cat = [rng.normal(0, 0.3, v + 1) for v in self.vocab]  # last entry: missing
        self.v_cat = [rng.normal(0, interaction_scale / np.sqrt(dim), (v + 1, dim)) for v in self.vocab]
        self.tokens = [[f"{(hash((seed, f, j)) & 0xFFFFFFFF):08x}" for j in range(v)] for f, v in enumerate(self.vocab)]
        self.bias = 0.0
        self.rng = rng
        # Calibrate the bias (bisection) so the mean click rate is `ctr`, Criteo-like.
        _, _, logit = self._draw(20000, np.random.default_rng(seed + 1))
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(logit + mid)))) < ctr else (lo, mid)
        self.bias = (lo + hi) / 2

    def _draw(self, n, rng):
        dense = np.floor(np.exp(rng.normal(self.dense_mu, 1.2, (n, NUM_DENSE)))).astype(np.int64) - 1
        dense_missing = rng.random((n, NUM_DENSE)) < self.dense_missing
        cats = np.stack([np.minimum(rng.zipf(1.3, n) - 1, v - 1) for v in self.vocab], 1)
        cat_missing = rng.random((n, NUM_CAT)) < self.cat_missing
        idx = np.where(cat_missing, self.vocab[None, :], cats)  # missing -> its own embedding
        x = np.where(dense_missing, 0.0, np.log1p(np.maximum(dense, 0)))
        logit = self.bias + x @ self.w_dense
        vs = np.zeros((n, self.v_cat[0].shape[1]))
        sq = np.zeros(n)
        for f in range(NUM_CAT):
            logit += self.w_cat[f][idx[:, f]]
            v = self.v_cat[f][idx[:, f]]
            vs += v
            sq += (v * v).sum(1)
        logit += 0.5 * ((vs * vs).sum(1) - sq)  # sum_{f<g} <v_f, v_g>
        return (dense, dense_missing, cats, cat_missing), idx, logit

    def sample(self, n, rng):
        (dense, dense_missing, cats, cat_missing), _, logit = self._draw(n, rng)
        p = 1.0 / (1.0 + np.exp(-logit))
        y = (rng.random(n) < p).astype(np.int64)
        rows = []
        for r in range(n):
            fields = [str(y[r])]
            fields += ["" if dense_missing[r, i] else str(dense[r, i]) for i in range(NUM_DENSE)]
            fields += ["" if cat_missing[r, f] else self.tokens[f][cats[r, f]] for f in range(NUM_CAT)]
            rows.append("\t".join(fields).rstrip("\t"))  # raw Criteo strips trailing empties
        return rows, y, p


def generate(out_dir, train_rows, test_rows, seed=0, val_rows=0):
    """Writes train.tsv, [val.tsv,] test.tsv (raw Criteo format) and truth.json."""
    if train_rows < 1 or test_rows < 2:
        raise ValueError(f"need train_rows >= 1 and test_rows >= 2. Received: train_rows={train_rows}, test_rows={test_rows}")
    os.makedirs(out_dir, exist_ok=True)
    model = PlantedModel(seed)
    rng = np.random.default_rng(seed + 2)
    truth = {"seed": seed, "train_rows": train_rows, "test_rows": test_rows}
    splits = [("train", train_rows)] + ([("val", val_rows)] if val_rows else []) + [("test", test_rows)]
    for name, n in splits:
        rows, y, p = model.sample(n, rng)
        tmp = os.path.join(out_dir, f".{name}.tsv.tmp")
        with open(tmp, "w") as f:
            f.write("\n".join(rows) + "\n")
        os.replace(tmp, os.path.join(out_dir, f"{name}.tsv"))
        truth[f"{name}_positive_rate"] = float(y.mean())
        if name == "test":
            truth["best_test_auc"] = auc(p, y)
            truth["best_test_logloss"] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    with open(os.path.join(out_dir, "truth.json"), "w") as f:
        json.dump(truth, f, indent=1)
    return truth
