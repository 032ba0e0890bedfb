"""The http destination."""
