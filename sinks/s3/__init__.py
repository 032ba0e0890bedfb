"""The s3 destination."""
