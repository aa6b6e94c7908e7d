"""Benchmark of caps/: match time by capability count, and CEL evaluation time per transform.

A report, not a test: `python -m tests.bench.bench_caps` prints it; `run()` returns it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import yaml

from capgate.caps import RequestView, WorkspaceView, evaluate, parse_caps

SIZES = (10, 1_000, 10_000)


def _per_call(fn: Callable[[], object], min_seconds: float = 0.3) -> float:
    """Mean seconds per call, over enough calls to fill `min_seconds`."""
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        calls += 200
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def _caps_document(count: int) -> str:
    """`count` capabilities: mostly exact hosts, every tenth a wildcard, with path globs."""
    capabilities = []
    for i in range(count):
        host = f"*.tenant{i}.example.com" if i % 10 == 9 else f"svc{i}.example.com"
        capabilities.append(
            {
                "name": f"cap-{i}",
                "match": {
                    "hosts": [host],
                    "methods": ["GET", "POST"],
                    "paths": ["/v1/**", "/health"],
                },
            }
        )
    names = [c["name"] for c in capabilities]
    document = {"version": 1, "capabilities": capabilities, "roles": {"r": {"capabilities": names}}}
    return yaml.safe_dump(document, sort_keys=False)


def bench_match(count: int) -> dict[str, float]:
    """Load time and per-request match time for a file of `count` capabilities."""
    text = _caps_document(count)
    start = time.perf_counter()
    config = parse_caps(text, "bench.yaml")
    load_seconds = time.perf_counter() - start
    matcher = config.matcher("r")
    middle = count // 2
    exact_host = f"svc{middle - (middle % 10 == 9)}.example.com"
    wildcard_host = f"api.eu.tenant{(count // 10) * 10 - 1 if count >= 10 else 9}.example.com"
    requests = [
        ("https", exact_host, 443, "GET", "/v1/items/42"),
        ("https", wildcard_host, 443, "POST", "/v1/x"),
        ("https", "unknown.other.org", 443, "GET", "/v1/x"),  # miss
        ("https", exact_host, 443, "DELETE", "/v1/x"),  # host hit, method miss
    ]

    def match_all() -> None:
        for request in requests:
            matcher.match(*request)

    per_request = _per_call(match_all) / len(requests)
    return {"load_seconds": load_seconds, "match_seconds": per_request}


TRANSFORMS = """
version: 1
capabilities:
  - name: c
    match: {hosts: [api.example.com]}
    transforms:
      - header: {name: Authorization, action: set, value: '"Bearer " + secrets["token"]'}
      - query: {name: cx, action: set, value: 'request.query["q"] + "-" + workspace.id'}
      - body:
          pointer: /metadata
          action: set
          value: '{"tenant": secrets["tenant"], "user": workspace.user}'
      - path: {value: '"/v2" + request.path'}
"""


def _request() -> RequestView:
    return RequestView(
        "POST",
        "https",
        "api.example.com",
        443,
        "/repos/x",
        {"user-agent": "agent/1.0", "accept": "*/*", "content-type": "application/json"},
        {"q": "search"},
    )


def bench_cel() -> dict[str, float]:
    """Seconds per evaluate() call for each transform kind, and per request-view build.

    The request's CEL value is built once per request and shared by its transforms, so
    it is measured on its own line.
    """
    config = parse_caps(TRANSFORMS, "bench.yaml")
    workspace = WorkspaceView("ws-1", "r", "ada")
    secrets = {"token": "t" * 40, "tenant": "acme"}
    request = _request()
    results = {}
    for transform in config.capabilities[0].transforms:
        results[transform.label] = _per_call(
            lambda t=transform: evaluate(t, request, workspace, secrets)
        )
    results["request view -> CEL"] = _per_call(lambda: _request().cel_value)
    return results


def run() -> dict:
    """Every figure of the report, in seconds."""
    match = {count: bench_match(count) for count in SIZES}
    base = match[SIZES[0]]["match_seconds"]
    for figures in match.values():
        figures["ratio_to_10"] = figures["match_seconds"] / base
    return {"match": match, "cel": bench_cel()}


def main() -> None:
    report = run()
    print("caps match time per request (host-indexed):")
    for count, figures in report["match"].items():
        micros = figures["match_seconds"] * 1e6
        ratio = figures["ratio_to_10"]
        load_ms = figures["load_seconds"] * 1e3
        print(
            f"  {count:>6} capabilities: {micros:7.2f} µs/request "
            f"(x{ratio:.2f} vs 10; file load {load_ms:.0f} ms)"
        )
    print("CEL evaluation per call (evaluate(), CompiledRunner):")
    for label, seconds in report["cel"].items():
        print(f"  {label:<22} {seconds * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
