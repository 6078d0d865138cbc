"""store.audiences.engine.decode_chunks against a plain reference decoder, records in any order."""

from __future__ import annotations

import random

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from store.audiences.engine import decode_chunks
from tagquery.bitmap_keys import CHUNK_SIZE


def _records(ids: npt.NDArray[np.int64], order: list[int] | None = None) -> tuple[bytes, list[int]]:
    """`int4send(chunk) || varbit_send(bits)` per chunk that holds any of `ids`, in `order`."""
    chunks = sorted({int(i) // CHUNK_SIZE for i in ids})
    parts = []
    for chunk in chunks:
        bits = np.zeros(CHUNK_SIZE, dtype=np.bool_)
        bits[ids[ids // CHUNK_SIZE == chunk] % CHUNK_SIZE] = True
        parts.append(chunk.to_bytes(4, "big") + CHUNK_SIZE.to_bytes(4, "big") + np.packbits(bits).tobytes())
    if order is not None:
        parts = [parts[i % len(parts)] for i in order] if parts else []
    return b"".join(parts), chunks


_ids = st.lists(st.integers(0, 6 * CHUNK_SIZE - 1), max_size=300)


@settings(max_examples=60, deadline=None)
@given(_ids, st.randoms(use_true_random=False))
def test_decodes_records_in_any_order(values: list[int], rng: random.Random) -> None:
    ids = np.array(values, dtype=np.int64)
    data, chunks = _records(ids)
    assert decode_chunks(data).tolist() == sorted(set(values))
    order = list(range(len(chunks)))
    rng.shuffle(order)
    shuffled, _ = _records(ids, order)
    assert decode_chunks(shuffled).tolist() == sorted(set(values))


def test_a_chunk_in_two_records_decodes_both_sorted() -> None:
    ids = np.array([3, CHUNK_SIZE + 5, 2 * CHUNK_SIZE + 1], dtype=np.int64)
    data, _ = _records(ids, [1, 0, 1, 2])
    assert decode_chunks(data).tolist() == [3, CHUNK_SIZE + 5, CHUNK_SIZE + 5, 2 * CHUNK_SIZE + 1]


def test_dense_and_empty() -> None:
    every = np.arange(CHUNK_SIZE, 3 * CHUNK_SIZE, dtype=np.int64)
    data, _ = _records(every)
    assert np.array_equal(decode_chunks(data), every)
    assert decode_chunks(b"").size == 0
    assert decode_chunks(None).dtype == np.int64
