# SPDX-License-Identifier: Apache-2.0
"""An engine as a separate process, driven over JSON lines (a stand-in for `vllm serve`).

Why: P/D and pool sharing need engines in different processes, as pods are;
a JSON-lines pipe is the smallest protocol that carries a request with its
kv_transfer_params and returns the engine's kv_transfer_params, like the
OpenAI server's request/response fields do.

  stdin, one JSON object a line:
    {"op":"submit","id":ID,"prompt":[...],"max_tokens":N,"kv_transfer_params":{...}|null}
    {"op":"abort","id":ID}
    {"op":"dump","prompt":[...]}     -> KV digests of the prompt's cached full blocks
    {"op":"stats"}                   -> free blocks, held requests, invariant errors
    {"op":"quit"}
  stdout: {"event":"ready",...} once, then {"event":"finished",...} per finished
    request and one reply per dump/stats. Everything else the process (or a
    connector, or a C library) writes to fd 1 goes to stderr instead.

Unlike vLLM's EngineCore, which only steps while requests run or wait, this
server also steps every --idle-step-ms while finished requests still hold
blocks (a connector's delayed free), so a producer's lease expiry is seen
without a new request arriving.

Usage: engine_server.py 'ENGINE_ARGS_JSON'   (fields of engine.EngineArgs)
"""
import json
import os
import select
import sys
import time
import traceback
from dataclasses import asdict


def main():
    # Keep the protocol channel private: fd 1 becomes stderr for everyone else.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    import engine as eng
    args = eng.EngineArgs(**json.loads(sys.argv[1]))
    idle_s = float(os.environ.get("KVS_IDLE_STEP_MS", "20")) / 1000
    try:
        e = eng.Engine(args)
    except Exception:
        emit({"event": "init_failed", "error": traceback.format_exc()})
        return 1
    ktc = e.vllm_config.kv_transfer_config
    emit({"event": "ready", "pid": os.getpid(),
          "engine_id": ktc.engine_id if ktc else None})

    def out_event(o):
        d = asdict(o)
        d.pop("events", None)
        d["event"] = "finished"
        d["id"] = d.pop("request_id")
        d["token_ids"] = d.pop("new_token_ids")
        return d

    buf = b""
    fd = sys.stdin.fileno()
    running = True
    while running:
        held = bool(e.scheduler.held_requests())
        timeout = 0 if e.has_work() else (idle_s if held else 0.5)
        r, _, _ = select.select([fd], [], [], timeout)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                cmd = json.loads(line)
                op = cmd["op"]
                try:
                    if op == "submit":
                        e.add_request(cmd["id"], cmd["prompt"], cmd.get("max_tokens", 1),
                                      cmd.get("kv_transfer_params"))
                    elif op == "abort":
                        for o in e.abort([cmd["id"]]):
                            emit(out_event(o))
                    elif op == "dump":
                        emit({"event": "dump", **e.dump_prompt_blocks(cmd["prompt"])})
                    elif op == "stats":
                        emit({"event": "stats", **e.stats()})
                    elif op == "quit":
                        running = False
                    else:
                        emit({"event": "error", "error": f"unknown op {op}"})
                except Exception:
                    emit({"event": "error", "op": op, "error": traceback.format_exc()})
        if e.has_work() or e.scheduler.held_requests():
            try:
                for o in e.step():
                    emit(out_event(o))
            except Exception:
                emit({"event": "engine_dead", "error": traceback.format_exc()})
                return 1
            if not e.has_work() and e.scheduler.held_requests():
                time.sleep(idle_s)
    e.shutdown()
    emit({"event": "bye"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
