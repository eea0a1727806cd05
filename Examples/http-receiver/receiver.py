#!/usr/bin/env python3
"""A Warren HTTP handler in plain Python: refuses calls whose signature or timestamp is wrong, then
runs the job. This demo's job takes as long and answers with the status its payload asks for
({"sleep": 1.5, "status": 503, "retry_after": 2}), to show each outcome, and reports progress
through the call's X-Warren-Progress-URL when asked ({"steps": 3}).
Usage: WARREN_HTTP_HANDLER_SECRET=... receiver.py [PORT]"""
import hashlib, hmac, json, os, sys, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["WARREN_HTTP_HANDLER_SECRET"].encode()

class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        stamp = self.headers.get("X-Warren-Timestamp", "")
        signed = "v1=" + hmac.new(SECRET, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signed, self.headers.get("X-Warren-Signature", "")):
            return self.answer(401, {"error": "bad signature"})
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:  # a replay of an old call
            return self.answer(401, {"error": "stale timestamp"})
        job = json.loads(body)
        time.sleep(job.get("sleep", 0))
        progress = self.headers.get("X-Warren-Progress-URL")
        for step in range(1, job.get("steps", 0) + 1):  # a POST with no body is a heartbeat
            report = json.dumps({"done": step, "total": job["steps"], "message": f"step {step}"}).encode()
            urllib.request.urlopen(urllib.request.Request(progress, data=report, method="POST"), timeout=5)
        answer = {"job_id": self.headers["X-Warren-Job-Id"], "done": job}
        if progress and "steps" in job:
            answer["progress_url"] = progress
        self.answer(job.get("status", 200), answer, job.get("retry_after"))

    def answer(self, status, document, retry_after=None):
        data = json.dumps(document).encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 9000), Receiver)
print(f"listening port={server.server_port}", file=sys.stderr, flush=True)
server.serve_forever()
