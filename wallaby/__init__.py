"""wallaby: Postgres change data capture on bytewax."""

import os

# Arrow's C++ code picks its default memory pool once, when pyarrow is first imported; pyarrow's
# set_memory_pool (wallaby.core.runtime.tune_memory) changes only pyarrow's own default, not the pool of the
# Arrow code DuckDB drives to scan registered tables. That pool is mimalloc in pyarrow's wheels, which
# keeps what it freed resident: measured (300k ~5 KB-row changes into DuckDB) a 1 GB mimalloc arena
# holding 40-65 MB with nothing in use. Set before anything imports pyarrow: every worker entry point
# imports this package first. An explicit ARROW_DEFAULT_MEMORY_POOL is kept.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
