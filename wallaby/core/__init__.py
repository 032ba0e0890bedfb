"""The floor every other layer stands on: changes, errors, options, the flow spec, settings, logs.

Imports nothing first-party but :mod:`wallaby.v1` (the generated protocol buffers).
"""
