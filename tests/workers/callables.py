"""Callable entry points for LocalElasticAgent tests (light: nothing here imports torch)."""
import os


def rank_tag(tag):
    return f"{tag}-{os.environ['RANK']}-{os.environ['LOCAL_RANK']}"


def raise_boom():
    raise ValueError("boom")
