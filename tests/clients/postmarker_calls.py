"""Runs calls of `postmarker` (Postmark's Python client) against a gateway and
prints, per call, what the client made of the answer. Used by
tests/postmark_clients.rs; reads {"host": "127.0.0.1:PORT", "calls": [...]}
from argv[1] (a file), each call {"client": "account"|"server", "token",
"method": "domains.get" (a path through PostmarkClient's managers),
"args": [...], "kwargs": {...}}.
"""

import json
import sys

from postmarker.core import PostmarkClient
from postmarker.exceptions import ClientError

spec = json.load(open(sys.argv[1]))
root = "http://%s/" % spec["host"]
results = []
for call in spec["calls"]:
    if call["client"] == "account":
        # postmarker insists on a server token even for account calls; it is
        # never sent with them.
        client = PostmarkClient(server_token="unused", account_token=call["token"], root_api_url=root, timeout=10)
    else:
        client = PostmarkClient(server_token=call["token"], root_api_url=root, timeout=10)
    try:
        # A property (bounces.deliverystats) calls on access; a method is called.
        target = client
        for name in call["method"].split("."):
            target = getattr(target, name)
        if callable(target):
            target(*call.get("args", []), **call.get("kwargs", {}))
        results.append({"ok": True})
    except ClientError as e:
        status = getattr(getattr(e.__cause__, "response", None), "status_code", None)
        results.append({"ok": False, "error": type(e).__name__, "code": e.error_code, "status": status, "message": str(e)})
print(json.dumps(results))
