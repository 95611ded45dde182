"""--no-warm-standby: restarted workers start cold, not from a standby interpreter's boot code."""

import os
import subprocess
import sys

import pytest

# On attempt 0, rank 0 fails only once standby interpreters (the spawner's children still running
# the standby boot code) are up, or after a short deadline when none should come (the cold case).
WORKER = """
import os, sys, time
import psutil
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if attempt == 0:
    if os.environ["LOCAL_RANK"] != "0":
        sys.exit(0)
    deadline = time.monotonic() + (30 if os.environ["EXPECT_STANDBYS"] == "1" else 2)
    while time.monotonic() < deadline:
        others = [p for p in psutil.Process(os.getppid()).children()
                  if any("_elastiscope_standby" in arg for arg in p.cmdline())]
        if len(others) >= 2:
            break
        time.sleep(0.05)
    sys.exit(1)
with open(os.path.join(sys.argv[1], "cmdline." + os.environ["LOCAL_RANK"]), "wb") as f:
    f.write(open("/proc/self/cmdline", "rb").read())
"""


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_restarted_workers_come_from_standbys_unless_cold(tmp_path, cold):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    flags = ["--no-warm-standby"] if cold else []
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", *flags, "--nproc-per-node", "2", "--max-restarts", "1",
         "--metrics-port", "off", "--metrics-linger", "0", "--event-log", "off", str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "EXPECT_STANDBYS": "0" if cold else "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    cmdlines = [(tmp_path / f"cmdline.{rank}").read_bytes() for rank in range(2)]
    assert all(str(script).encode() in c for c in cmdlines)
    from_standby = [b"_elastiscope_standby" in c for c in cmdlines]
    if cold:
        assert not any(from_standby)
    else:  # a standby still booting when the restart comes is passed over for a cold start
        assert any(from_standby)
