# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
"""Starts and never listens: a function that never becomes ready."""
import time

print("warming up forever", flush=True)
while True:
    time.sleep(3600)
