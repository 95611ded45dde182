"""Makes N optimizer steps and nothing else: a worker whose only progress is torch's optimizer.

    optimizer_steps.py N [--fail-first-attempt]     (also: python -m workers.optimizer_steps)

With --fail-first-attempt, attempt 0 exits 1 after its steps, so that attempt 1 (from a
standby, when the agent keeps one) runs too. ``steps(n)`` is the same for callable workers.
"""
import os
import sys


def steps(n):
    import torch

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(n):
        optimizer.zero_grad()
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
    return n


if __name__ == "__main__":
    steps(int(sys.argv[1]))
    if "--fail-first-attempt" in sys.argv and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        sys.exit(1)
