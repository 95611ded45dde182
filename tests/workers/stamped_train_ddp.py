"""examples/train_ddp.py as it is, with the worker's own clock stamped for the goodput test:

    stamped_train_ddp.py STAMP_DIR <train_ddp.py arguments>

Each worker appends JSON lines to ``STAMP_DIR/<restart count>.<rank>``: ``first_step`` (the
time its first optimizer step of the attempt ended, by a step hook registered after the
agent's) and ``crash`` (the time the script's exception left ``main``, right after torch's
``@record`` wrote the error file). Nothing else of the example changes.
"""
import json
import os
import runpy
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "..", "examples", "train_ddp.py")


def stamp(directory, what):
    name = f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}.{os.environ.get('RANK', '0')}"
    with open(os.path.join(directory, name), "a") as f:
        f.write(json.dumps({what: time.time()}) + "\n")


def main():
    directory, args = sys.argv[1], sys.argv[2:]
    import torch.optim.optimizer as optim

    first = []

    def on_step(optimizer, a, kw):
        if not first:
            first.append(True)
            stamp(directory, "first_step")

    optim.register_optimizer_step_post_hook(on_step)
    example = runpy.run_path(EXAMPLE, run_name="train_ddp")
    try:
        example["main"](args)
    except BaseException:
        stamp(directory, "crash")
        raise


if __name__ == "__main__":
    main()
