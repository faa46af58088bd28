"""The one memory budget of large vocabularies: how many items (classes, label
rows) of a float32 tensor to compute at a time.

The head's similarity [N, C*M] (`prototypes.resolve_class_chunk`), the
cross-entropy's upsampled logits [B, H, W, C] (`losses.resolve_label_rows`)
and inference's label-resolution scores [B, Hl, Wl, C]
(`inference.resolve_class_chunk`) each ask `auto_chunk_size` with their own
item size, so that one pair of numbers decides for all three.

ALL_AT_ONCE_BYTES (4 GiB) keeps the unchunked program of every shipped
recipe's training (ADE20K's and COCO-Stuff's CE at 16 crops of 512x512: 2.3 /
2.7 GiB; their similarity 1.5 / 1.7 GiB) and evaluation except ADE20K's
2112x2112 label canvas; above it, chunks of about CHUNK_BYTES (256 MiB), small
enough that a chunk's temporaries (a few times its size) stay under a GiB.
"""

from __future__ import annotations

ALL_AT_ONCE_BYTES = 4 * 2**30
CHUNK_BYTES = 256 * 2**20


def auto_chunk_size(count: int, item_bytes: int) -> int:
  """Items per chunk of a tensor of `count` items of `item_bytes` bytes each.

  `count` (all at once) while count * item_bytes <= ALL_AT_ONCE_BYTES; else
  the fewest chunks of at most CHUNK_BYTES each (at least one item per chunk),
  balanced: ceil(count / chunks) items each, so that the last chunk is not
  mostly padding.
  """
  count, item_bytes = int(count), int(item_bytes)
  if item_bytes * count <= ALL_AT_ONCE_BYTES:
    return count
  per = max(1, CHUNK_BYTES // max(item_bytes, 1))
  chunks = -(-count // per)
  return -(-count // chunks)
