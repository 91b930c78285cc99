"""Content digests of offline batches: a batch's default id and its idempotency check.

:func:`content_digest` hashes a table's logical content (names, types, validity, values), not
its Arrow buffers: what sits under a null slot (0, NaN, garbage) or how the buffers are sliced
depends on how the table was built (pandas, CSV, Parquet) and must not change a batch's id.
:func:`combined_digest` adds the rejected rows of a batch. :func:`legacy_digest` is what stores
wrote before ``digest_v`` 2 (the Arrow IPC bytes), kept to recognise their batches.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from flywheel.data.quarantine import records_digest

if TYPE_CHECKING:
    import pyarrow as pa

    from flywheel.data.validation import BatchCheck

__all__ = ["combined_digest", "content_digest", "legacy_digest"]


def combined_digest(check: BatchCheck, records: pa.Table | None, *, legacy: bool = False) -> str:
    """Return the batch's content digest: of its valid rows, and of its rejected rows if any.

    ``legacy`` gives the digest stores wrote before ``digest_v`` 2 (of the Arrow IPC bytes),
    to recognise their batches when they are sent again.
    """
    digest = legacy_digest(check.accepted) if legacy else content_digest(check.accepted)
    if records is None:
        return digest
    return hashlib.sha256(f"{digest}:{records_digest(records)}".encode()).hexdigest()


def legacy_digest(table: pa.Table) -> str:
    """The digest of ``digest_v`` 1 batches: of the Arrow IPC stream of ``table``."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()


def content_digest(table: pa.Table) -> str:
    """Return the sha256 of ``table``'s logical content: names, types, validity and values.

    Not of its Arrow buffers: what sits under a null slot (0, NaN, garbage) and how the buffers
    are sliced depend on how the table was built (pandas, CSV, Parquet), and must not change a
    batch's default id. Each column hashes its validity bitmap and its values with nulls set to
    a fixed value; strings hash their normalized offsets and bytes.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    h = hashlib.sha256()
    h.update(str(table.schema.remove_metadata()).encode())
    h.update(str(table.num_rows).encode())
    for column in table.itercolumns():
        col = column.combine_chunks()
        h.update(np.packbits(pc.is_valid(col).to_numpy(zero_copy_only=False)).tobytes())
        kind = col.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            filled = pc.fill_null(col, "") if col.null_count else col
            offset_type = np.int64 if pa.types.is_large_string(kind) else np.int32
            offsets = np.frombuffer(filled.buffers()[1], dtype=offset_type)
            offsets = offsets[filled.offset : filled.offset + len(filled) + 1]
            data = filled.buffers()[2]
            h.update((offsets - offsets[0]).astype(np.int64).tobytes())
            if data is not None:
                h.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
        elif (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_temporal(kind)
        ):
            zero = pa.scalar(False if pa.types.is_boolean(kind) else 0).cast(kind)
            filled = pc.fill_null(col, zero) if col.null_count else col
            h.update(np.ascontiguousarray(filled.to_numpy(zero_copy_only=False)).tobytes())
        else:  # other types: their IPC form (rare in sources; still deterministic per build)
            sink = pa.BufferOutputStream()
            one = pa.table({"c": col})
            with pa.ipc.new_stream(sink, one.schema) as writer:
                writer.write_table(one)
            h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()
