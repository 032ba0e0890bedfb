"""Change sources (the Postgres replication source)."""

import wallaby  # noqa: F401  (first: it sets Arrow's allocator before pyarrow is imported)
