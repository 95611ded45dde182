"""A worker whose main, decorated with torch's ``@record``, raises on one rank.

    raise_under_record.py --rank R --message TEXT

``@record`` writes the exception (type, message, traceback) to TORCHELASTIC_ERROR_FILE, which
is what the agent reports as the failure. The other ranks wait to be stopped.
"""

import argparse
import os
import time

from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--message", required=True)
    args = p.parse_args()
    if int(os.environ["RANK"]) == args.rank:
        raise ValueError(args.message)
    time.sleep(60)


if __name__ == "__main__":
    main()
