"""The options every destination has ("Destination Metadata + Append/Soft Delete" in USAGE.md).

Each destination's own model lives beside its sink (``sinks/<name>/options.py``,
found by type through :mod:`wallaby.core.registry`) and extends
:class:`DestinationOptions`. This base stays in core because what reads these
fields is below the sinks: :mod:`operators.metadata` (the metadata columns,
soft deletes, append mode) and the preflight may not import a sink. The shared
parsing helpers and the source's model are in :mod:`wallaby.core.options`.
"""

from __future__ import annotations

from wallaby.core.options import Bool, Options, RequiredText, choice


class DestinationOptions(Options):
    """"Destination Metadata + Append/Soft Delete": on every destination."""

    meta_enabled: Bool = False
    meta_synced_at: RequiredText = "__ds_synced_at"
    meta_deleted: RequiredText = "__ds_is_deleted"
    meta_watermark: RequiredText = "__ds_watermark"  # "-" disables the watermark column
    meta_op: RequiredText = "__ds_op"
    watermark_source: choice("timestamp", "lsn") = "timestamp"
    soft_delete: Bool = False
    append_mode: Bool = False

    @property
    def watermark_column(self) -> str | None:
        return None if self.meta_watermark == "-" else self.meta_watermark


__all__ = ["DestinationOptions"]
