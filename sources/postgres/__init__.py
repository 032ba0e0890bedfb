"""The Postgres source: the replication protocol, pgoutput decoding, batching, set-up and DDL capture."""
