"""A worker whose main, decorated with torch's @record, raises ValueError("boom")."""
from torch.distributed.elastic.multiprocessing.errors import record


@record
def main():
    raise ValueError("boom")


if __name__ == "__main__":
    main()
