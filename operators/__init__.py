"""Dataflow steps between the source and the destinations."""

import wallaby  # noqa: F401  (first: it sets Arrow's allocator before pyarrow is imported)
