"""Run the tagsmith CLI in a child process with a slow fake model (for crash tests).

    python tests/fake_cli.py LOG_FILE tagsmith-args...

Model strings ``fake/...`` are served by a FakeLLM whose answers derive from the request
(tests/policies.py); every completed backend call appends one line (a hash of the
request) to LOG_FILE. FAKE_LATENCY sets the seconds per call."""

from __future__ import annotations

import hashlib
import json
import os
import sys

from tagsmith.agents.fake import FakeLLM
from tagsmith.agents.gateway import register_backend
from tagsmith.cli import main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import policies  # noqa: E402


def request_digest(request: dict) -> str:
    return hashlib.sha256(json.dumps(request["messages"], sort_keys=True).encode()).hexdigest()[:16]


def make_reply(log_path: str, policy):
    def reply(request: dict):
        out = policy(request)
        with open(log_path, "a") as f:
            f.write(request_digest(request) + "\n")
            f.flush()
        return out
    return reply


probe_policy = policies.probe_reply

if __name__ == "__main__":
    log = sys.argv[1]
    latency = float(os.environ.get("FAKE_LATENCY", "0.1"))
    register_backend("fake", lambda cfg: FakeLLM(default=make_reply(log, policies.reply_for), latency_s=latency))
    sys.exit(main(sys.argv[2:]))
