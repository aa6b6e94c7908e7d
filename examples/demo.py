"""`make demo`: the main job end to end on a throwaway home.

Initialises a home, stores a demo credential and two secrets, starts a local HTTPS demo
upstream, and runs the demo agent through `capgate exec`. Then it shows, side by side,
what the agent sent, what the upstream received (stored values redacted on screen) and
the policy decisions. It exits non-zero when the agent's calls did not come out
authenticated, or when any stored value reached the agent.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "demo"))

import upstream as demo_upstream  # noqa: E402

CAPGATE = [sys.executable, "-m", "capgate.proxy"]


def capgate(home: Path, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "CAPGATE_HOME": str(home)}
    done = subprocess.run(
        [*CAPGATE, *args], input=stdin, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        sys.exit(f"capgate {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def redact(text: str, values: dict[str, str]) -> str:
    for label, value in values.items():
        text = text.replace(value, f"<{label}>")
    return text


def show(title: str, rows: list[str]) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))
    for row in rows:
        print(row)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="capgate-demo-"))
    try:
        return run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> int:
    home, updir = work / "home", work / "upstream"
    values = {
        "credential:demo-github": "ghp_demo_" + secrets.token_hex(12),
        "secret:internal-token": "itok_" + secrets.token_hex(12),
        "secret:tenant-id": "tenant_" + secrets.token_hex(6),
    }
    capgate(home, "init")
    capgate(
        home,
        "cred",
        "add",
        "demo-github",
        "--provider",
        "github_pat",
        "--kind",
        "api_key",
        stdin=values["credential:demo-github"],
    )
    capgate(home, "secret", "set", "internal-token", stdin=values["secret:internal-token"])
    capgate(home, "secret", "set", "tenant-id", stdin=values["secret:tenant-id"])
    capgate(home, "user", "add", "demo")

    server = demo_upstream.serve(updir)
    port = server.server_address[1]
    caps = work / "caps.yaml"
    caps.write_text(
        (HERE / "demo" / "caps.yaml.in").read_text().replace("@UPSTREAM@", f"localhost:{port}")
    )
    print(capgate(home, "caps", "check", str(caps)).rstrip())

    env = {**os.environ, "CAPGATE_HOME": str(home), "DEMO_UPSTREAM": f"https://localhost:{port}"}
    agent = subprocess.run(
        [
            *CAPGATE,
            "exec",
            "--caps",
            str(caps),
            "--role",
            "demo",
            "--user",
            "demo",
            "--upstream-ca",
            str(updir / "ca.pem"),
            "--",
            sys.executable,
            str(HERE / "demo" / "agent.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    server.shutdown()
    calls = [json.loads(line) for line in agent.stdout.splitlines() if line.startswith("{")]
    received_file = updir / "received.jsonl"
    received = (
        [json.loads(line) for line in received_file.read_text().splitlines()]
        if received_file.exists()
        else []
    )

    show(
        "what the agent sent, and the upstream's echo of Authorization as the agent got it",
        [
            f"{c['method']:6} {c['path']:18} sent={c['sent_headers']} -> {c['status']} "
            f"echo={_echoed_authorization(c)}"
            for c in calls
        ],
    )
    show(
        "what the upstream received (stored values shown as <name>)",
        [
            redact(
                f"{r['method']:6} {r['path']:22} "
                + json.dumps(
                    {
                        k: v
                        for k, v in r["headers"].items()
                        if k.lower()
                        in {
                            "authorization",
                            "x-internal-auth",
                            "x-request-source",
                            "x-github-api-version",
                        }
                    }
                )
                + (f" body={r['body']}" if r["body"] else ""),
                values,
            )
            for r in received
        ],
    )
    decisions = capgate(home, "decisions", "--json")
    show(
        "policy decisions",
        [
            redact(_decision_line(json.loads(line)), values)
            for line in decisions.splitlines()
            if line.strip()
        ],
    )
    return verdict(agent, calls, received, values)


def _decision_line(d: dict) -> str:
    where = f"{d['host']}:{d['port']}{d['path']}"
    return (
        f"{d['decision']:8} {d.get('reason') or '-':14} {d['method']:6} {where} "
        f"capability={d.get('capability')} status={d.get('upstream_status')}"
    )


def _echoed_authorization(call: dict) -> str:
    """What the agent saw of the upstream's echo: scrubbed to [REDACTED:...] by capgate."""
    try:
        echo = json.loads(call["response"])["you_sent"]["headers"]
    except (ValueError, KeyError, TypeError):
        return "-"
    return echo.get("Authorization") or echo.get("X-Internal-Auth") or "-"


def verdict(
    agent: subprocess.CompletedProcess,
    calls: list[dict],
    received: list[dict],
    values: dict[str, str],
) -> int:
    problems = []
    if agent.returncode != 0:
        problems.append(f"the agent exited {agent.returncode}: {agent.stderr[-2000:]}")
    agent_view = agent.stdout + agent.stderr
    problems += [f"{label} reached the agent" for label, v in values.items() if v in agent_view]
    stamped = [
        r
        for r in received
        if r["headers"].get("Authorization") == f"Bearer {values['credential:demo-github']}"
    ]
    if len(stamped) < 2:
        problems.append("the upstream did not receive the demo credential on the GET calls")
    if not any(values["secret:tenant-id"] in r["body"] for r in received):
        problems.append("the tenant-id secret was not injected into the POST body")
    if not any(c["method"] == "DELETE" and c["status"] == 403 for c in calls):
        problems.append("the DELETE call was not denied")
    show(
        "verdict",
        problems or ["ok: calls came out authenticated; no stored value reached the agent"],
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
