"""Prints 'out line <rank>' on stdout and 'err line <rank>' on stderr, plus a line without newline."""
import os
import sys

rank = os.environ["RANK"]
print(f"out line {rank}")
print(f"err line {rank}", file=sys.stderr)
sys.stdout.write(f"tail {rank}")
