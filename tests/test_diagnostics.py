"""protoseg_jax.diagnostics: every statistic against a plain NumPy computation."""

import jax
import numpy as np
import pytest

from protoseg_jax import prototype_stats as dg

C, M, D = 3, 4, 8


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def case():
  rng = np.random.default_rng(0)
  protos = rng.normal(size=(C, M, D)).astype(np.float32) * 3.0     # not unit: diagnostics normalise
  protos[1, 3] = protos[1, 0] * 2.0                                # a near-copy in class 1
  labels = rng.integers(0, C, size=(2, 5, 6))
  labels[0, 0, :3] = 255                                           # ignored pixels
  labels[labels == 2] = 0                                          # class 2 absent
  emb = _unit(rng.normal(size=(2, 5, 6, D))).astype(np.float32)
  return protos, emb, labels


def _np_stats(protos, emb, labels, min_fraction=0.0, threshold=0.99):
  p = _unit(protos.astype(np.float64))
  cos = np.zeros((C, M, M))
  for c in range(C):
    for i in range(M):
      for j in range(M):
        cos[c, i, j] = p[c, i] @ p[c, j]
  mean_cos = np.array([np.mean([cos[c, i, j] for i in range(M) for j in range(M) if i != j])
                       for c in range(C)])
  max_cos = np.array([max(cos[c, i, j] for i in range(M) for j in range(M) if i != j)
                      for c in range(C)])
  distinct = np.array([sum(all(cos[c, k, j] < threshold for j in range(k)) for k in range(M))
                       for c in range(C)])
  counts = np.zeros((C, M), np.int64)
  for e, y in zip(emb.reshape(-1, D), labels.reshape(-1)):
    if 0 <= y < C:
      counts[y, int(np.argmax(p[y] @ e))] += 1
  frac = np.full((C, M), np.nan)
  used = np.zeros(C, np.int64)
  for c in range(C):
    n = counts[c].sum()
    if n:
      frac[c] = counts[c] / n
      used[c] = sum(counts[c, k] >= 1 and counts[c, k] / n >= min_fraction for k in range(M))
  return dict(cos=cos, mean_cos=mean_cos, max_cos=max_cos, distinct=distinct, counts=counts,
              frac=frac, used=used)


def test_prototype_statistics_match_numpy(case):
  protos, _, _ = case
  ref = _np_stats(*case)
  np.testing.assert_allclose(dg.pairwise_cosine(protos), ref["cos"], atol=1e-5)
  np.testing.assert_allclose(dg.mean_pairwise_cosine(protos), ref["mean_cos"], atol=1e-5)
  np.testing.assert_allclose(dg.max_pairwise_cosine(protos), ref["max_cos"], atol=1e-5)
  np.testing.assert_array_equal(dg.distinct_prototypes(protos), ref["distinct"])
  assert list(ref["distinct"]) == [4, 3, 4]                  # the planted copy


@pytest.mark.parametrize("min_fraction", [0.0, 0.2])
def test_usage_statistics_match_numpy(case, min_fraction):
  protos, emb, labels = case
  ref = _np_stats(*case, min_fraction=min_fraction)
  counts = dg.usage_counts(protos, emb, labels)
  np.testing.assert_array_equal(counts, ref["counts"])
  assert int(np.sum(counts)) == int(np.sum(labels < C))      # ignored pixels not counted
  np.testing.assert_allclose(dg.usage_fraction(counts), ref["frac"], atol=1e-6)
  np.testing.assert_array_equal(dg.used_prototypes(counts, min_fraction), ref["used"])
  np.testing.assert_array_equal(dg.present_classes(counts), [True, True, False])
  idx = dg.retrieved_prototype(protos, emb, labels)
  assert idx.shape == labels.shape and np.all((np.asarray(idx) == -1) == (labels >= C))


def test_scalars_match_numpy_and_jit(case):
  protos, emb, labels = case
  ref = _np_stats(*case)
  s = jax.jit(lambda p: dg.scalars(p, "train"))({"head": {"prototypes": protos}})
  assert set(s) == {"train/proto_mean_cosine", "train/proto_max_cosine",
                    "train/proto_distinct_frac"}
  np.testing.assert_allclose(s["train/proto_mean_cosine"], ref["mean_cos"].mean(), atol=1e-5)
  np.testing.assert_allclose(s["train/proto_max_cosine"], ref["max_cos"].max(), atol=1e-5)
  np.testing.assert_allclose(s["train/proto_distinct_frac"], ref["distinct"].sum() / (C * M))
  s = dg.scalars(protos, "val/", embeddings=emb, labels=labels)
  present = ref["counts"].sum(-1) > 0
  np.testing.assert_allclose(s["val/proto_used_frac"], ref["used"][present].sum() / (M * present.sum()))


def test_collapsed_prototypes():
  rng = np.random.default_rng(1)
  one = rng.normal(size=(C, 1, D)).astype(np.float32)
  protos = np.repeat(one, M, axis=1)                          # identical within each class
  np.testing.assert_allclose(dg.mean_pairwise_cosine(protos), np.ones(C), atol=1e-5)
  np.testing.assert_allclose(dg.max_pairwise_cosine(protos), np.ones(C), atol=1e-5)
  np.testing.assert_array_equal(dg.distinct_prototypes(protos), np.ones(C))
  emb = _unit(rng.normal(size=(40, D))).astype(np.float32)
  labels = np.arange(40) % C
  counts = np.asarray(dg.usage_counts(protos, emb, labels))
  np.testing.assert_array_equal(dg.used_prototypes(counts), np.ones(C))   # ties -> prototype 0
  np.testing.assert_array_equal(counts[:, 1:], 0)
  s = dg.scalars(protos, "train", embeddings=emb, labels=labels)
  np.testing.assert_allclose(s["train/proto_mean_cosine"], 1.0, atol=1e-5)
  np.testing.assert_allclose(s["train/proto_used_frac"], 1 / M)
  np.testing.assert_allclose(s["train/proto_distinct_frac"], 1 / M)


def test_single_prototype_gives_nan_cosine_and_table_prints(case):
  protos, emb, labels = case
  assert np.all(np.isnan(dg.mean_pairwise_cosine(protos[:, :1])))
  assert set(dg.scalars(protos[:, :1], "train")) == {"train/proto_distinct_frac"}
  table = dg.format_table(protos, ["a", "b", "c"], dg.usage_counts(protos, emb, labels))
  assert "(no pixels)" in table.splitlines()[4] and table.splitlines()[3].startswith("b ")
  assert "distinct 91.7% of 3x4" in table


def test_eval_usage_counts_match_numpy_on_padded_batches():
  """The jitted usage step behind val/proto_* against a per-example NumPy count:
  embeddings cut to each image, its original-size label resized (nearest) to
  that, mapped through a label map (class 1 held out), masked rows skipped."""
  import flax.linen as nn
  from protoseg_jax import held_out
  from protoseg_jax.heads import ProtoSegHead, proto_head_output

  class Tiny(nn.Module):            # stride 4, like the segmentors' heads
    @nn.compact
    def __call__(self, x, train=False):
      f = nn.Dense(6)(nn.avg_pool(x, (4, 4), strides=(4, 4)))
      return ProtoSegHead(num_classes=C, num_prototypes=M, embed_dim=D)(f, train=train)

  rng = np.random.default_rng(2)
  model = Tiny()
  variables = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0),
                                                          np.zeros((1, 16, 20, 3))))
  protos = np.asarray(dg.prototype_array(variables["prototypes"]), np.float64)
  ids = held_out.model_class_ids(C + 1, 1)                 # dataset 0..3 -> model 0..2
  lut = held_out.label_lut(ids, 255)

  def batch(image_hws, label_hws, mask):
    lab = np.full((len(mask), 24, 24), 255, np.int32)
    for b, (lh, lw) in enumerate(label_hws):
      lab[b, :lh, :lw] = rng.choice([0, 1, 2, 3, 255], size=(lh, lw), p=[.3, .2, .2, .2, .1])
    looks = rng.choice([0, 1, 2, 9, 255], size=lab.shape, p=[.3, .3, .2, .1, .1])  # 9: >= MAX_LOOKS
    return {"image": rng.normal(size=(len(mask), 16, 20, 3)).astype(np.float32),
            "image_hw": np.asarray(image_hws, np.int32), "label": lab,
            "label_hw": np.asarray(label_hws, np.int32), "mask": np.asarray(mask),
            "appearance": looks.astype(np.int32)}

  batches = [batch([(16, 20), (13, 9), (0, 0)], [(24, 22), (11, 14), (0, 0)], [True, True, False]),
             batch([(7, 18), (16, 20), (16, 20)], [(9, 23), (20, 24), (24, 24)], [True, True, True])]
  want, images = np.zeros((C, M), np.int64), 0
  want_looks = np.zeros((C, dg.MAX_LOOKS, M), np.int64)
  embed = jax.jit(lambda v, x: proto_head_output(model, v, x).embeddings)
  for bt in batches:
    emb = np.asarray(embed(variables, bt["image"]), np.float64)   # [B, 4, 5, D]
    for b in np.flatnonzero(bt["mask"]):
      (ih, iw), (lh, lw) = bt["image_hw"][b], bt["label_hw"][b]
      fh, fw = -(-ih * 4 // 16), -(-iw * 5 // 20)
      label = bt["label"][b, :lh, :lw]            # PyTorch nearest: floor(i * lh / fh)
      rows, cols = (np.arange(fh) * lh) // fh, (np.arange(fw) * lw) // fw
      y = lut[label[rows][:, cols]]
      look = bt["appearance"][b, :lh, :lw][rows][:, cols]
      for e, c, a in zip(emb[b, :fh, :fw].reshape(-1, D), y.reshape(-1), look.reshape(-1)):
        if c < C:
          want[c, int(np.argmax(_unit(protos[c]) @ e))] += 1
          if a < dg.MAX_LOOKS:
            want_looks[c, a, int(np.argmax(_unit(protos[c]) @ e))] += 1
      images += 1
  # num_batches=2: a third batch is not read.
  step = dg.jit_usage_step(model, lut)
  counts, n, looks = dg.eval_usage(step, variables, iter(batches + [batches[1]]), 2)
  np.testing.assert_array_equal(counts, want)
  np.testing.assert_array_equal(looks, want_looks)
  assert n == images == 5 and want.sum() > 40 and want_looks[:, 1:3].sum() > 10
  no_looks = [{k: v for k, v in bt.items() if k != "appearance"} for bt in batches]
  counts2, n2 = dg.eval_usage_counts(dg.jit_usage_step(model, lut), variables, iter(no_looks), 2)
  np.testing.assert_array_equal(counts2, want)

  # The log entries of these counts (class 2 made absent).
  want[2] = 0
  record, tb = dg.usage_summaries(want, images, ["a", "b", "c"], prefix="val")
  present = want.sum(-1) > 0
  used = (want > 0).sum(-1)
  np.testing.assert_allclose(record["val/proto_used_frac"], used[present].sum() / (M * 2), rtol=1e-6)
  assert record["val/proto_used"] == {"a": used[0], "b": used[1], "c": None}
  np.testing.assert_allclose(record["val/proto_usage"]["b"], want[1] / want[1].sum(), atol=1e-6)
  assert record["val/proto_usage"]["c"] is None and record["val/proto_images"] == 5
  assert set(tb) == {"val/proto_used_frac", "val/proto_used/a", "val/proto_used/b"}


def _pixels(table):
  """The (look, prototype) pixel lists behind a contingency table [A, M]."""
  a, m = np.nonzero(table)
  reps = table[a, m]
  return np.repeat(a, reps), np.repeat(m, reps)


@pytest.mark.parametrize("seed", range(4))
def test_appearance_nmi_equals_sklearn(seed):
  """val/proto_appearance_nmi's per-class value is sklearn's
  normalized_mutual_info_score (arithmetic) of look vs retrieved prototype."""
  from sklearn.metrics import normalized_mutual_info_score
  rng = np.random.default_rng(seed)
  looks = rng.integers(0, 30, size=(5, dg.MAX_LOOKS, M))
  looks[0, 2:] = 0                                   # two looks
  looks[1] = 0
  looks[1, 0] = rng.integers(1, 9, M)                # one look: no NMI
  looks[2] = 0
  looks[2, 0, 0], looks[2, 1, 1], looks[2, 2, 2] = 5, 7, 3   # each look its own prototype
  looks[3] = 0
  looks[3, :3, 0] = [4, 6, 2]                        # one prototype for all looks
  got = dg.appearance_nmi(looks)
  assert np.isnan(got[1]) and got[2] == pytest.approx(1.0) and got[3] == 0.0
  for c in (0, 2, 3, 4):
    a, m = _pixels(looks[c])
    want = normalized_mutual_info_score(a, m, average_method="arithmetic")
    np.testing.assert_allclose(got[c], want, rtol=1e-9, atol=1e-12)
  assert dg.mean_appearance_nmi(looks) == pytest.approx(np.nanmean(got))
  record, tb = dg.usage_summaries(looks.sum(1), 3, list("abcde"), looks=looks)
  assert record["val/proto_appearance_nmi"] == pytest.approx(np.nanmean(got))
  assert record["val/proto_appearance_nmi_per_class"]["b"] is None
  assert tb["val/proto_appearance_nmi/c"] == pytest.approx(1.0)
  table = dg.format_table(rng.normal(size=(5, M, D)), list("abcde"), looks.sum(1), looks=looks)
  assert "look_nmi" in table and "appearance NMI" in table
  rows = table.splitlines()[2:7]                     # one per class, "-" where no NMI
  assert len({len(r) for r in rows}) == 1, rows
