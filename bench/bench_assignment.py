"""Why the official prototype update collapses a class's prototypes (issue 20).

The update assigns each correctly classified pixel to one prototype of its
class by `F.gumbel_softmax(Q, tau, hard=True)`, Q being the Sinkhorn
assignment [N, M] whose rows sum to 1, used as logits. The hard Gumbel
sample is a draw from softmax(Q), so the probability that it picks the
Sinkhorn argmax is softmax(Q)[argmax Q], at most e / (e + M - 1) (a one-hot
Q): 0.475 at M = 4, 0.232 at M = 10, against 1/M for a uniform pick. Each
prototype therefore moves toward the mean of a near-random subset of its
class, i.e. toward the class mean, and the M prototypes become copies.

For a trained run (its workdir), over the validation pixels (embeddings
and labels at feature resolution, the labels PyTorch-nearest as the head
resizes them):

  agreement_expected   mean over pixels of softmax(Q)[argmax Q] (exact:
                       the probability the Gumbel pick is the argmax)
  agreement_sampled    the same from `--draws` draws of the library's
                       `sample_gumbel_argmax` (a check of the above)
  uniform, bound       1/M and e / (e + M - 1)
  q_max_mean           mean of max_m Q (1 = confident, 1/M = flat)

at the run's M, and at `--m_alt` (default 10) with that many prototypes
per class taken from random pixel embeddings of the class (a stand-in for a
distinct set; the run has only its own M).

  python -m bench.bench_assignment --workdir=/tmp/study/today [--m_alt=10]
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from protoseg_jax import sharding
from protoseg_jax.heads import labels_to_feature_size, proto_head_output
from protoseg_jax.ops import l2_normalize
from protoseg_jax.prototypes import sample_gumbel_argmax
from protoseg_jax.sinkhorn import sinkhorn_knopp
from protoseg_jax.trainer import cli, input_pipeline


def agreement(q: np.ndarray, rng: jax.Array, draws: int) -> dict:
  """Gumbel-vs-argmax agreement of a Sinkhorn Q [N, M] (rows sum to 1)."""
  q = jnp.asarray(q, jnp.float32)
  m = q.shape[1]
  best = jnp.argmax(q, axis=1)
  soft = jax.nn.softmax(q, axis=1)
  expected = float(jnp.mean(jnp.take_along_axis(soft, best[:, None], axis=1)))
  hits = [float(jnp.mean(sample_gumbel_argmax(k, q) == best))
          for k in jax.random.split(rng, draws)]
  return {"M": m, "pixels": int(q.shape[0]), "agreement_expected": round(expected, 4),
          "agreement_sampled": round(float(np.mean(hits)), 4), "uniform": round(1 / m, 4),
          "bound": round(math.e / (math.e + m - 1), 4),
          "q_max_mean": round(float(jnp.mean(jnp.max(q, axis=1))), 4)}


def pixels(run, max_batches: int):
  """(unit embeddings [N, D], labels [N]) of the validation pixels."""
  batches = input_pipeline.create_eval_iterator(run.config, sharding.batch_sharding(run.mesh),
                                                run=run.classes)
  lut = run.classes.label_lut()
  embed = jax.jit(lambda v, x: proto_head_output(run.model, v, x).embeddings)
  embs, labels = [], []
  for i, batch in enumerate(batches):
    if i >= max_batches:
      break
    emb = np.asarray(embed(run.variables, batch["image"]))              # [B, h, w, D]
    y = np.asarray(labels_to_feature_size(jnp.asarray(batch["label"]), emb.shape[1:3]))
    y = np.where(np.asarray(batch["mask"])[:, None, None], y, -1)
    if lut is not None:
      lut_np = np.asarray(lut)
      y = np.where((y >= 0) & (y < len(lut_np)), lut_np[np.clip(y, 0, len(lut_np) - 1)], -1)
    embs.append(emb.reshape(-1, emb.shape[-1]))
    labels.append(y.reshape(-1))
  return np.concatenate(embs), np.concatenate(labels)


def sinkhorn_q(emb, labels, protos, config) -> np.ndarray:
  """Q [N_valid, M] of the valid pixels: Sinkhorn on their own-class similarity."""
  c, m, _ = protos.shape
  valid = (labels >= 0) & (labels < c)
  e, y = jnp.asarray(emb[valid]), jnp.asarray(labels[valid])
  p = l2_normalize(jnp.asarray(protos))
  own = jnp.einsum("nd,nmd->nm", e, p[y])
  return np.asarray(sinkhorn_knopp(own, y, c, num_iters=int(config.protoseg.sinkhorn_iters),
                                   epsilon=float(config.protoseg.sinkhorn_epsilon)))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--m_alt", type=int, default=10)
  ap.add_argument("--draws", type=int, default=20)
  ap.add_argument("--max_batches", type=int, default=8)
  a = ap.parse_args(argv)
  run = cli.load_tool_run(a.workdir, needs_prototypes=True)
  protos = np.asarray(run.variables["prototypes"]["head"]["prototypes"])
  emb, labels = pixels(run, a.max_batches)
  rng = jax.random.key(0)
  print(json.dumps({"workdir": a.workdir, "prototypes": "trained",
                    **agreement(sinkhorn_q(emb, labels, protos, run.config), rng, a.draws)}))
  gen = np.random.default_rng(0)
  alt = np.stack([emb[gen.choice(np.flatnonzero(labels == c), a.m_alt, replace=False)]
                  if np.sum(labels == c) >= a.m_alt else
                  gen.normal(size=(a.m_alt, emb.shape[1])) for c in range(protos.shape[0])])
  print(json.dumps({"workdir": a.workdir, "prototypes": f"{a.m_alt} random pixel embeddings",
                    **agreement(sinkhorn_q(emb, labels, alt, run.config), rng, a.draws)}))


if __name__ == "__main__":
  main()
