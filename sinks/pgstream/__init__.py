"""The pgstream destination."""
