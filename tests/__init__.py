import sys

# The console scripts as a test runs them (the interpreter of this run, so no PATH is needed).
WORKER = (sys.executable, "-m", "wallaby.control.worker")
SERVER = (sys.executable, "-m", "wallaby.control.server_cli")
ADMIN = (sys.executable, "-m", "wallaby.control.admin")
