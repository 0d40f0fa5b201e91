"""Progress bars and loud notes on the console."""

from __future__ import annotations

import sys


def progress_bar(iterable=None, **kwargs):
    """A ``tqdm`` progress bar (imported on first use)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def loud(msg: str) -> None:
    """Print ``msg`` to stderr between two lines of ``!`` so that it stands out in a long log."""
    bar = "!" * 100
    print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr, flush=True)
