"""Destinations: one module per destination type."""

import wallaby  # noqa: F401  (first: it sets Arrow's allocator before pyarrow is imported)
