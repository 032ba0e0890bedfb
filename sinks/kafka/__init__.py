"""The kafka destination."""
