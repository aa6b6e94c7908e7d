"""The demo agent: plain HTTP calls through HTTPS_PROXY, holding no credentials at all.

It prints each request it makes and the response it gets back, as JSON lines on stdout,
so the demo can show them beside what the upstream received.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

BASE = os.environ["DEMO_UPSTREAM"]  # e.g. https://localhost:PORT

CALLS = [
    ("GET", "/repos/acme/app", None, {"Accept": "application/json"}),
    (
        "POST",
        "/api/v1/orders",
        {"item": "book", "metadata": {}},
        {"Content-Type": "application/json"},
    ),
    # The agent tries to bring its own token: capgate replaces it.
    ("GET", "/repos/acme/app", None, {"Authorization": "Bearer agent-guess"}),
    # Not allowed by any capability of the role: denied with 403.
    ("DELETE", "/repos/acme/app", None, {}),
]


def call(method: str, path: str, body: object, headers: dict[str, str]) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    return {
        "method": method,
        "path": path,
        "sent_headers": headers,
        "body": body,
        "status": status,
        "response": text[:4000],
    }


def main() -> int:
    for method, path, body, headers in CALLS:
        print(json.dumps(call(method, path, body, headers)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
