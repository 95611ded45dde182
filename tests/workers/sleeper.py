"""Writes its pid to OUT/pid.<rank>, then sleeps until killed (or until OUT/go exists).

    sleeper.py OUT [--ignore-sigterm]
"""
import os
import signal
import sys
import time

out = sys.argv[1]
if "--ignore-sigterm" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
rank = os.environ.get("RANK", "0")
tmp = os.path.join(out, f".pid.{rank}")
with open(tmp, "w") as f:
    f.write(str(os.getpid()))
os.replace(tmp, os.path.join(out, f"pid.{rank}"))
deadline = time.monotonic() + 60  # never outlive a broken test by much
while time.monotonic() < deadline and not os.path.exists(os.path.join(out, "go")):
    time.sleep(0.02)
