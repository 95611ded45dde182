"""Callable entry points for LocalElasticAgent tests (light: nothing here imports torch)."""
import os


def rank_tag(tag):
    return f"{tag}-{os.environ['RANK']}-{os.environ['LOCAL_RANK']}"


def raise_boom():
    raise ValueError("boom")


def return_or_watch_first_rank(out_dir, watch_seconds):
    """Rank 0 returns at once; the others watch it for ``watch_seconds`` after it has returned
    and return whether its process was alive the whole time."""
    import time
    from pathlib import Path

    out = Path(out_dir)
    rank = int(os.environ["RANK"])
    if rank == 0:
        (out / "returning.0").write_text(str(os.getpid()))
        return True
    marker = out / "returning.0"
    while not marker.exists():
        time.sleep(0.01)
    pid = int(marker.read_text())
    deadline = time.monotonic() + watch_seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.01)
    return True
