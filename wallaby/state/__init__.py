"""What wallaby keeps between runs: the checkpoint store and the flow store (SQLite or Postgres)."""
