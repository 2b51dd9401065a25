#!/usr/bin/env python3
"""Runs the program given as argv[1] (tests/task_report_json.c), parses
each line of its output with Python's json module, checks that every group
and task object has every field of the schema (docs/observability.md) with
the right type, then checks the values each scenario must produce."""
import json
import subprocess
import sys

MS = 1000 * 1000
TASK_STATES = {"pending", "running", "completed", "canceled", "failed"}
GROUP_STATES = {"running", "canceling", "completed", "canceled", "failed"}


def fail(msg):
    print("check_report_json: " + msg, file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def int_or_null(v):
    return v is None or is_int(v)


def check_task(t, where):
    keys = {"name", "state", "result", "error", "queued_ns", "started_ns", "ended_ns",
            "cancelled_ns", "response_ns", "cpu_after_request_ns", "straggler", "ignored_ns",
            "blocked_in", "blocked_at_request", "first_failure", "groups"}
    expect(set(t) == keys, f"{where}: task fields {sorted(t)}")
    expect(t["name"] is None or isinstance(t["name"], str), f"{where}: name")
    expect(t["state"] in TASK_STATES, f"{where}: state {t['state']!r}")
    ended = t["state"] in ("completed", "canceled", "failed")
    expect(is_int(t["result"]) if ended else t["result"] is None, f"{where}: result")
    expect(t["error"] is None or isinstance(t["error"], str), f"{where}: error")
    expect(is_int(t["queued_ns"]) and t["queued_ns"] >= 0, f"{where}: queued_ns")
    for k in ("started_ns", "ended_ns", "cancelled_ns", "response_ns",
              "cpu_after_request_ns", "ignored_ns"):
        expect(int_or_null(t[k]), f"{where}: {k}")
        expect(t[k] is None or t[k] >= 0, f"{where}: {k} negative")
    expect((t["ended_ns"] is not None) == ended, f"{where}: ended_ns vs state")
    expect(t["cancelled_ns"] is None or t["ended_ns"] is None or t["cancelled_ns"] <= t["ended_ns"],
           f"{where}: cancelled after it ended")
    expect(t["state"] != "pending" or t["started_ns"] is None, f"{where}: pending with a start")
    expect(isinstance(t["straggler"], bool), f"{where}: straggler")
    expect((t["ignored_ns"] is not None) == t["straggler"], f"{where}: ignored_ns")
    for k in ("blocked_in", "blocked_at_request"):
        expect(t[k] is None or isinstance(t[k], str), f"{where}: {k}")
    expect(t["state"] == "running" or t["blocked_in"] is None, f"{where}: blocked_in when not running")
    expect(isinstance(t["first_failure"], bool), f"{where}: first_failure")
    expect(isinstance(t["groups"], list), f"{where}: groups")
    for i, g in enumerate(t["groups"]):
        check_group(g, f"{where}.groups[{i}]")


def check_group(g, where, root=False):
    keys = {"name", "state", "result", "cause", "created_ns", "cancelled_ns", "grace_ns",
            "stats", "tasks", "groups"}
    if root:
        keys |= {"report_ns", "epoch_ns", "slow_callbacks"}
        for k in ("report_ns", "epoch_ns", "slow_callbacks"):
            expect(is_int(g[k]), f"{where}: {k}")
    expect(set(g) == keys, f"{where}: group fields {sorted(g)}")
    expect(g["name"] is None or isinstance(g["name"], str), f"{where}: name")
    expect(g["state"] in GROUP_STATES, f"{where}: state {g['state']!r}")
    expect(int_or_null(g["result"]), f"{where}: result")
    c = g["cause"]
    if c is not None:
        expect(set(c) == {"reason", "code", "message", "origin"}, f"{where}: cause fields")
        expect(c["reason"] in ("requested", "timeout", "failed", "signal"), f"{where}: reason")
        expect(is_int(c["code"]), f"{where}: code")
        for k in ("message", "origin"):
            expect(c[k] is None or isinstance(c[k], str), f"{where}: cause {k}")
    expect((c is None) == (g["cancelled_ns"] is None), f"{where}: cancelled_ns vs cause")
    expect(is_int(g["created_ns"]) and g["created_ns"] >= 0, f"{where}: created_ns")
    expect(int_or_null(g["grace_ns"]), f"{where}: grace_ns")
    st = g["stats"]
    expect(set(st) == {"pending", "running", "completed", "canceled", "failed", "stragglers"},
           f"{where}: stats fields")
    expect(all(is_int(v) and v >= 0 for v in st.values()), f"{where}: stats values")
    expect(isinstance(g["tasks"], list) and isinstance(g["groups"], list), f"{where}: arrays")
    for i, t in enumerate(g["tasks"]):
        check_task(t, f"{where}.tasks[{i}]")
    for i, sub in enumerate(g["groups"]):
        check_group(sub, f"{where}.groups[{i}]")
    # the stats agree with the tasks listed
    for s in ("pending", "running", "completed", "canceled", "failed"):
        expect(st[s] == sum(1 for t in g["tasks"] if t["state"] == s), f"{where}: stats.{s}")
    expect(st["stragglers"] == sum(1 for t in g["tasks"]
                                   if t["straggler"] and t["state"] == "running"),
           f"{where}: stats.stragglers")


def task(g, name):
    found = [t for t in g["tasks"] if t["name"] == name]
    expect(len(found) == 1, f"task {name!r} in {g['name']!r}")
    return found[0]


def check_alpha(a):
    expect(a["name"] == "alpha" and a["state"] == "running", "A: group")
    expect(a["cause"] is None and a["result"] is None and a["cancelled_ns"] is None, "A: not cancelled")
    expect(a["grace_ns"] == 100 * MS, "A: default grace")
    expect(a["report_ns"] == 2 * MS, "A: report time")
    expect([t["name"] for t in a["tasks"]] == ["done", "busy", "late"], "A: task order")
    done, busy, late = (task(a, n) for n in ("done", "busy", "late"))
    expect(done["state"] == "completed" and done["result"] == 0 and done["error"] == "0", "A: done")
    expect(done["queued_ns"] == 0 and done["started_ns"] == 0 and done["ended_ns"] == 0, "A: done times")
    expect(busy["state"] == "running" and busy["result"] is None, "A: busy")
    expect(busy["queued_ns"] == 1 * MS and busy["started_ns"] == 1 * MS, "A: busy times")
    expect(busy["blocked_in"] is None, "A: busy blocked_in")  # cancel_token_wait is the core's
    expect(late["state"] == "pending" and late["queued_ns"] == 2 * MS, "A: late")
    expect(a["stats"] == {"pending": 1, "running": 1, "completed": 1, "canceled": 0, "failed": 0,
                          "stragglers": 0}, "A: stats")


def check_alpha_cancelled(b):
    expect(b["state"] == "canceled" and b["result"] == 125, "B: group")  # ECANCELED
    expect(b["cause"] == {"reason": "requested", "code": 0, "message": None, "origin": "alpha"},
           f"B: cause {b['cause']}")
    expect(b["cancelled_ns"] == 3 * MS, "B: cancelled_ns")
    busy, late = task(b, "busy"), task(b, "late")
    expect(busy["state"] == "canceled" and busy["error"] == "ECANCELED", "B: busy")
    expect(busy["cancelled_ns"] == 3 * MS and busy["ended_ns"] == 8 * MS, "B: busy times")
    expect(busy["response_ns"] == 5 * MS, "B: busy response")
    expect(busy["cpu_after_request_ns"] is not None, "B: busy CPU after the request")
    expect(not busy["straggler"], "B: busy is no straggler: it returned within the grace")
    expect(late["state"] == "canceled" and late["result"] == 125, "B: late")
    expect(late["started_ns"] is None and late["ended_ns"] == 3 * MS, "B: late never ran")
    expect(late["response_ns"] == 0 and late["cpu_after_request_ns"] is None, "B: late response")


def check_beta(c):
    name = 'beta "q" \\ caf\u00e9 \u0001\n\t end'
    expect(c["name"] == name, f"C: escaped name {c['name']!r}")
    expect(c["state"] == "canceling" and c["result"] is None, "C: group state")
    expect(c["cause"] == {"reason": "failed", "code": 5, "message": "failer", "origin": name},
           f"C: cause {c['cause']}")
    expect(c["grace_ns"] == 50 * MS and c["cancelled_ns"] == 2 * MS, "C: grace, cancelled")
    expect(c["stats"] == {"pending": 0, "running": 1, "completed": 0, "canceled": 0, "failed": 1,
                          "stragglers": 1}, f"C: stats {c['stats']}")
    hog = task(c, "hog\ufffd\ufffd")  # invalid UTF-8 became U+FFFD
    failer = task(c, "failer")
    expect(failer["state"] == "failed" and failer["result"] == 5 and failer["error"] == "EIO", "C: failer")
    expect(failer["first_failure"] and not hog["first_failure"], "C: first failure")
    expect(failer["cancelled_ns"] is None and failer["response_ns"] is None
           and failer["blocked_at_request"] is None, "C: the failer was not asked: it cancelled the group")
    expect(hog["state"] == "running" and hog["straggler"], "C: hog is a straggler")
    expect(hog["ignored_ns"] == 60 * MS and hog["cancelled_ns"] == 2 * MS, "C: hog ignored it for 60 ms")
    expect(hog["blocked_in"] == "cancel_group_wait", f"C: hog blocked_in {hog['blocked_in']!r}")
    expect(hog["blocked_at_request"] == "cancel_group_wait", "C: hog blocked_at_request")
    expect(hog["cpu_after_request_ns"] is not None, "C: hog CPU after the request")
    expect(len(hog["groups"]) == 1, "C: the nested group sits under its task")
    inner = hog["groups"][0]
    expect(inner["name"] == "inner" and inner["state"] == "canceling", "C: inner group")
    expect(inner["cause"] == {"reason": "failed", "code": 5, "message": "failer", "origin": name},
           "C: the inner group carries the outer cause")
    it = task(inner, "inner-task")
    expect(it["state"] == "running" and not it["straggler"], "C: inner task: 60 ms < 100 ms grace")
    expect(c["groups"] == [], "C: no group nested in the group itself")


def main():
    out = subprocess.run([sys.argv[1]], stdout=subprocess.PIPE, check=True, timeout=100).stdout
    docs = [json.loads(line) for line in out.decode("utf-8").splitlines() if line.strip()]
    expect(len(docs) == 3, f"{len(docs)} documents, expected 3")
    for i, d in enumerate(docs):
        check_group(d, f"doc{i}", root=True)
    check_alpha(docs[0])
    check_alpha_cancelled(docs[1])
    check_beta(docs[2])
    print("check_report_json: 3 documents, every field checked")


if __name__ == "__main__":
    main()
