"""Write the quickstart's tiny model where ``examples/quickstart/fleet.yaml`` expects it.

    .venv/bin/python examples/quickstart/make_model.py

It writes ``examples/quickstart/models/tiny.gguf`` (about 0.5 MB of random weights; see
``fleetd.tools.tiny_gguf``), the same bytes every time, and does nothing when the file is already there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fleetd.tools.tiny_gguf import write_tiny_model

MODEL = Path(__file__).resolve().parent / "models" / "tiny.gguf"


def main() -> int:
    if MODEL.exists():
        sys.stdout.write(f"{MODEL} is already there\n")
        return 0
    MODEL.parent.mkdir(parents=True, exist_ok=True)
    partial = MODEL.with_suffix(".gguf.partial")
    write_tiny_model(partial)
    partial.replace(MODEL)  # a crash mid-write leaves no half model under the name the manifest uses
    sys.stdout.write(f"wrote {MODEL} ({MODEL.stat().st_size} bytes)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
