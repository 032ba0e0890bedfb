"""Bytewax dataflows (``python -m bytewax.run dataflows.flow:flow``)."""

import wallaby  # noqa: F401  (first: it sets Arrow's allocator before pyarrow is imported)
