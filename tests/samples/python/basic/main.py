"""Appwrite 0.13-style Python function: main(req, res) returns res.send/res.json."""
import subprocess
import sys
import time


def main(req, res):
    payload = req.payload
    if payload == "echo":
        env = {k: v for k, v in req.env.items() if k.startswith("APPWRITE_FUNCTION_") or k == "GREETING"}
        return res.json({"payload": payload, "headers": req.headers, "env": env})
    if payload == "unicode":
        return res.send("héllo ☃ %d" % len(payload))
    if payload == "print":
        print("to stdout")
        print("to stderr", file=sys.stderr)
        return res.send("printed")
    if payload == "child":
        subprocess.run(["sh", "-c", "echo from a child"])
        return res.send("ran")
    if payload == "status":
        return res.send("short and stout", 418)
    if payload == "raise":
        raise RuntimeError("boom")
    if payload == "sleep":
        time.sleep(30)
        return res.send("late")
    return res.send("default:" + payload)
