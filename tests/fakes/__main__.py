"""``python -m tests.fakes``: serve the default turn until interrupted, printing each
request, to see by hand what a CLI sends."""

from __future__ import annotations

import contextlib
import time

from tests.fakes.model_server import FakeModelServer
from tests.fakes.turns import Text


def main() -> None:
    """Serve until Ctrl-C."""
    with FakeModelServer(default=Text("Hello from the fake model server.")) as fake:
        print(f"fake model server on {fake.url}", flush=True)
        shown = 0
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(0.2)
                requests = fake.requests
                for req in requests[shown:]:
                    print(f"{req.method} {req.path} api={req.api}", flush=True)
                shown = len(requests)


if __name__ == "__main__":
    main()
