# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""Exits before it listens, saying why: a function that crashes on start."""
import sys

print("boom: DATABASE_URL is not set", flush=True)
sys.exit(1)
