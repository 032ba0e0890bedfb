"""What the destinations that materialize tables share: their options (:mod:`sinks.sql.options`: type mappings,
target/staging tables) and, in time, the table engine (schema evolution, row-level apply) they write with."""
